-- Outbound event webhooks (webhooks) and their outbox of deliveries
-- (webhook_deliveries). The API's queries name the org_id; the workers claim
-- deliveries of every organization through tolstoy_claim_deliveries (security
-- definer) and record each attempt through tolstoy_record_delivery, which acts
-- for the delivery's organization. Events of runs are written by triggers (see
-- the event_webhooks migration), those of direct action calls by action_logged.

-- ---- the API: webhooks ----------------------------------------------------------

-- name: list
-- One keyset page of the organization's webhooks, newest first (secrets stay encrypted).
select org_id, id, name, url, event_types, enabled, header_names, disabled_reason, failing_since,
       created_at, updated_at
from webhooks
where org_id = :org_id
  and (:after_created_at::timestamptz is null
       or (created_at, id) < (:after_created_at::timestamptz, :after_id::uuid))
order by created_at desc, id desc
limit :limit;

-- name: get^
-- One webhook.
select org_id, id, name, url, event_types, enabled, header_names, disabled_reason, failing_since,
       created_at, updated_at
from webhooks
where org_id = :org_id and id = :id;

-- name: get_for_update^
-- One webhook with its encrypted secret and headers, locked until the end of the transaction.
select org_id, id, name, url, event_types, enabled, secret, headers, header_names, disabled_reason,
       failing_since, created_at, updated_at
from webhooks
where org_id = :org_id and id = :id
for update;

-- name: insert^
-- Create a webhook (secret and headers encrypted by the application).
insert into webhooks (org_id, name, url, event_types, enabled, secret, headers, header_names)
values (:org_id, :name, :url, :event_types::text[], :enabled, :secret, :headers, :header_names::text[])
returning org_id, id, name, url, event_types, enabled, header_names, disabled_reason, failing_since,
          created_at, updated_at;

-- name: update^
-- Replace a webhook's fields; enabling it again forgets why it was disabled and its failing streak.
update webhooks
set name = :name, url = :url, event_types = :event_types::text[], enabled = :enabled, secret = :secret,
    headers = :headers, header_names = :header_names::text[],
    disabled_reason = case when :enabled then null else disabled_reason end,
    failing_since = case when :enabled and not enabled then null else failing_since end
where org_id = :org_id and id = :id
returning org_id, id, name, url, event_types, enabled, header_names, disabled_reason, failing_since,
          created_at, updated_at;

-- name: toggle^
-- Switch a webhook on or off (off cancels its pending deliveries, by trigger).
update webhooks
set enabled = not enabled,
    disabled_reason = null,
    failing_since = case when enabled then failing_since end
where org_id = :org_id and id = :id
returning org_id, id, name, url, event_types, enabled, header_names, disabled_reason, failing_since,
          created_at, updated_at;

-- name: delete!
-- Delete a webhook with its deliveries.
delete from webhooks
where org_id = :org_id and id = :id;

-- name: emit$
-- Queue one event for the webhook(s) of the organization subscribed to its type (webhook.test:
-- only the webhook named, whatever it subscribes to); returns the delivery id.
insert into webhook_deliveries (org_id, webhook_id, event_id, event_type, data, next_attempt_at)
select w.org_id, w.id, gen_random_uuid(), :event_type, :data::jsonb, now()
from webhooks w
where w.org_id = :org_id and w.id = :id
returning id;

-- ---- the API: deliveries -------------------------------------------------------------

-- name: deliveries
-- One keyset page of a webhook's deliveries, newest first, each with its attempts.
select org_id, id, webhook_id, event_id, event_type, data, state, attempts, attempt_log, next_attempt_at,
       last_status_code, last_error, first_attempt_at, last_attempt_at, finished_at, event_created_at,
       created_at, updated_at
from webhook_deliveries
where org_id = :org_id and webhook_id = :webhook_id
  and (:after_created_at::timestamptz is null
       or (created_at, id) < (:after_created_at::timestamptz, :after_id::uuid))
order by created_at desc, id desc
limit :limit;

-- name: delivery^
-- One delivery of a webhook.
select org_id, id, webhook_id, event_id, event_type, data, state, attempts, attempt_log, next_attempt_at,
       last_status_code, last_error, first_attempt_at, last_attempt_at, finished_at, event_created_at,
       created_at, updated_at
from webhook_deliveries
where org_id = :org_id and webhook_id = :webhook_id and id = :id;

-- ---- direct action calls -------------------------------------------------------------

-- name: action_logged^
-- The execution log row of a direct action call and its action.executed / action.failed event,
-- written by one statement (so in one transaction).
with logged as (
    insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, outputs, error,
                                duration_ms)
    values (:org_id, null, :user_id, :execution_id, :step_key, :status::execution_status, :inputs, :outputs,
            :error, :duration_ms)
    returning id
), emitted as (
    select tolstoy_webhook_emit(:org_id::uuid, :event_type::text, :data::jsonb) as fanned
)
select logged.id, emitted.fanned
from logged, emitted;

-- ---- tolstoy secrets rotate --reencrypt ----------------------------------------------

-- name: secrets_to_reencrypt
-- The next batch (ids after :after_id) of an organization's webhook secrets not encrypted with
-- data key :version, locked.
select org_id, id, secret
from webhooks
where org_id = :org_id and id > :after_id::uuid
  and tolstoy_key_version(secret) is distinct from :version::integer
order by id
limit :limit
for update;

-- name: secrets_reencrypted!
-- Store a batch of re-encrypted webhook secrets.
update webhooks w
set secret = n.secret
from unnest(:ids::uuid[], :values::bytea[]) as n(id, secret)
where w.org_id = :org_id and w.id = n.id;

-- name: headers_to_reencrypt
-- The next batch (ids after :after_id) of an organization's webhook custom headers not encrypted
-- with data key :version, locked.
select org_id, id, headers
from webhooks
where org_id = :org_id and id > :after_id::uuid and headers is not null
  and tolstoy_key_version(headers) is distinct from :version::integer
order by id
limit :limit
for update;

-- name: headers_reencrypted!
-- Store a batch of re-encrypted webhook custom headers.
update webhooks w
set headers = n.headers
from unnest(:ids::uuid[], :values::bytea[]) as n(id, headers)
where w.org_id = :org_id and w.id = n.id;

-- ---- the workers -----------------------------------------------------------------------

-- name: claim$
-- Claim up to :limit due deliveries of any organization; {deliveries, next_due, now}.
select tolstoy_claim_deliveries(:worker, :limit, :lease_seconds);

-- name: record$
-- Record one attempt of a claimed delivery (fenced by its lease token); {recorded, outcome, disabled}.
select tolstoy_record_delivery(:worker, :org_id, :id, :token, :result);
