-- Flow triggers (flow_triggers) and the inbox of webhook deliveries
-- (flow_trigger_deliveries). The API's queries name the org_id; the public
-- webhook route first finds its trigger's organization through
-- tolstoy_hook_target, and the workers claim due schedules through
-- tolstoy_claim_schedules (both cross tenants: security definer).

-- ---- the API: triggers --------------------------------------------------------

-- name: list
-- One keyset page of a flow's triggers, newest first.
select org_id, id, flow_id, type, enabled, verification, cron, timezone, catch_up, next_run_at, last_fired_at,
       last_skipped_at, last_skip_reason, created_at, updated_at
from flow_triggers
where org_id = :org_id and flow_id = :flow_id
  and (:after_created_at::timestamptz is null
       or (created_at, id) < (:after_created_at::timestamptz, :after_id::uuid))
order by created_at desc, id desc
limit :limit;

-- name: get^
-- One trigger of a flow.
select org_id, id, flow_id, type, enabled, verification, cron, timezone, catch_up, next_run_at, last_fired_at,
       last_skipped_at, last_skip_reason, created_at, updated_at
from flow_triggers
where org_id = :org_id and flow_id = :flow_id and id = :id;

-- name: get_for_update^
-- One trigger of a flow, locked until the end of the transaction.
select org_id, id, flow_id, type, enabled, verification, cron, timezone, catch_up, next_run_at, last_fired_at,
       last_skipped_at, last_skip_reason, created_at, updated_at
from flow_triggers
where org_id = :org_id and flow_id = :flow_id and id = :id
for update;

-- name: insert^
-- Create a trigger (webhook: encrypted secret and verification; schedule: cron, zone, catch-up, first due time).
insert into flow_triggers (org_id, flow_id, type, enabled, secret, verification, cron, timezone, catch_up,
                           next_run_at)
values (:org_id, :flow_id, :type, :enabled, :secret, :verification, :cron, :timezone, :catch_up, :next_run_at)
returning org_id, id, flow_id, type, enabled, verification, cron, timezone, catch_up, next_run_at, last_fired_at,
          last_skipped_at, last_skip_reason, created_at, updated_at;

-- name: set_enabled^
-- Enable or disable a trigger; a schedule enabled again starts from its next time after now.
update flow_triggers
set enabled = :enabled, next_run_at = :next_run_at
where org_id = :org_id and flow_id = :flow_id and id = :id
returning org_id, id, flow_id, type, enabled, verification, cron, timezone, catch_up, next_run_at, last_fired_at,
          last_skipped_at, last_skip_reason, created_at, updated_at;

-- name: delete!
-- Delete a trigger with its inbox.
delete from flow_triggers
where org_id = :org_id and flow_id = :flow_id and id = :id;

-- ---- the API: the inbox ------------------------------------------------------------

-- name: deliveries
-- One keyset page of a trigger's deliveries, newest first (bodies are not listed).
select org_id, id, trigger_id, verdict, reason, delivery_id, headers, execution_id, received_at,
       received_at as created_at, octet_length(body) as body_bytes, source, refusals,
       coalesce(last_received_at, received_at) as last_received_at
from flow_trigger_deliveries
where org_id = :org_id and trigger_id = :trigger_id
  and (:after_created_at::timestamptz is null
       or (received_at, id) < (:after_created_at::timestamptz, :after_id::uuid))
order by received_at desc, id desc
limit :limit;

-- name: delivery^
-- One delivery of a trigger, with its stored body.
select org_id, id, trigger_id, verdict, delivery_id, execution_id, body, received_at
from flow_trigger_deliveries
where org_id = :org_id and trigger_id = :trigger_id and id = :id;

-- ---- the public webhook route ------------------------------------------------------

-- name: hook_target^
-- What verifying a request to a webhook trigger needs, before its organization is known.
select org_id, flow_id, enabled, verification, secret
from tolstoy_hook_target(:id::uuid);

-- name: receive^
-- Record a verified delivery; nothing (null) when its sender delivery id or its signature was
-- recorded before (a concurrent twin waits here for the first to commit).
insert into flow_trigger_deliveries (org_id, trigger_id, verdict, delivery_id, signature, headers, body)
values (:org_id, :trigger_id, 'valid', :delivery_id, :signature, :headers, :body)
on conflict do nothing
returning id;

-- name: earlier^
-- The verified delivery a repeated one repeats: the same sender delivery id first, else the same signature.
select id, execution_id, delivery_id is not distinct from :delivery_id::text and :delivery_id::text is not null
       as same_delivery
from flow_trigger_deliveries
where org_id = :org_id and trigger_id = :trigger_id and verdict = 'valid'
  and (delivery_id = :delivery_id::text or signature = :signature::text)
order by (delivery_id = :delivery_id::text) desc nulls last
limit 1;

-- name: refuse!
-- Count a refused request (no body: it was not verified) into its trigger's row for this hour,
-- verdict and :source; the first request of a row gives it its reason, delivery id and headers.
-- Past :max_sources sources in the hour (of any verdict), a new source counts into the source '*':
-- an hour of refusals is at most :max_sources rows and one per verdict (two requests racing in may
-- each add a source). Nothing here reads the unbounded count, only up to :max_sources rows.
insert into flow_trigger_deliveries as d (org_id, trigger_id, verdict, reason, delivery_id, headers, source,
                                          refused_hour, last_received_at)
select :org_id, :trigger_id, :verdict, :reason, :delivery_id, :headers,
       case when exists (select 1 from flow_trigger_deliveries e
                         where e.org_id = :org_id and e.trigger_id = :trigger_id and e.refused_hour = h.hour
                           and e.verdict = :verdict and e.source = :source::text)
                 or (select count(*)
                     from (select 1 from flow_trigger_deliveries e
                           where e.org_id = :org_id and e.trigger_id = :trigger_id and e.refused_hour = h.hour
                             and e.verdict <> 'valid' and e.source <> '*'
                           limit :max_sources::integer) as seen) < :max_sources::integer
            then :source::text else '*' end,
       h.hour, tolstoy_now()
from (select date_bin('1 hour', tolstoy_now(), timestamptz '2000-01-01 00:00:00+00') as hour) as h
on conflict (org_id, trigger_id, refused_hour, verdict, source) where verdict <> 'valid'
do update set refusals = d.refusals + 1, last_received_at = excluded.last_received_at;

-- name: queue^
-- Queue a run of the flow's current version with these variables and record it on the delivery
-- (same transaction as the delivery row); :trace_parent: the sender's W3C traceparent, or null.
with run as (
    select (q.run).id, (q.run).flow_id, (q.run).flow_version, (q.run).status, (q.run).retry_of
    from flows f
    cross join lateral tolstoy_queue_run_v4(f.org_id, f.id, f.version, :user_id::uuid, :variables::jsonb, null,
                                            null, false, null, null, :trace_parent::text) as q
    where f.org_id = :org_id and f.id = :flow_id
), noted as (
    update flow_trigger_deliveries d
    set execution_id = run.id
    from run
    where d.org_id = :org_id and d.id = :delivery_id::uuid
)
select id, flow_id, flow_version, status, retry_of
from run;

-- ---- the workers -------------------------------------------------------------------

-- name: claim_schedules
-- Lock up to :limit due schedules of any organization (SKIP LOCKED) until the transaction ends.
select org_id, id, flow_id, cron, timezone, catch_up, next_run_at, now
from tolstoy_claim_schedules(:worker, :limit, :as_of::timestamptz);

-- name: fire_schedules$
-- Advance the claimed schedules and queue their runs; [{trigger_id, org_id, execution_id, scheduled_at}].
select tolstoy_fire_schedules(:as_of::timestamptz, :fires::jsonb);

-- name: next_schedule^
-- When the next enabled schedule of any organization falls due (null: none), and the database's now.
select tolstoy_next_schedule() as next_schedule, tolstoy_now() as now;

-- name: secrets_to_reencrypt
-- The next batch (ids after :after_id) of an organization's webhook trigger secrets not encrypted
-- with data key :version, locked, for `tolstoy secrets rotate --reencrypt`.
select org_id, id, secret
from flow_triggers
where org_id = :org_id and id > :after_id::uuid and secret is not null
  and tolstoy_key_version(secret) is distinct from :version::integer
order by id
limit :limit
for update;

-- name: secrets_reencrypted!
-- Store a batch of re-encrypted webhook trigger secrets.
update flow_triggers t
set secret = n.secret
from unnest(:ids::uuid[], :values::bytea[]) as n(id, secret)
where t.org_id = :org_id and t.id = n.id;
