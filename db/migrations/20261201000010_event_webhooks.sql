-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Outbound event webhooks: an organization subscribes URLs to events of its
-- runs (flow.*, step.*) and of its direct action calls (action.*), and the
-- workers deliver them, signed.
--
-- * webhooks: what to send where. The signing secret and the custom header
--   values are encrypted by the application with the organization's data key
--   (like tool credentials); only the header names are kept in clear.
-- * webhook_deliveries: the outbox, one row per event and subscribed webhook.
--   Rows are written by triggers on flow_runs and flow_run_steps, i.e. by the
--   very statement that changes a run or a step (tolstoy_claim_runs,
--   tolstoy_checkpoint, a cancel or a resolution through the API): an event
--   exists if and only if its change committed, and the engine sends no extra
--   statement for it. Direct action calls write theirs with their execution
--   log row (one statement).
-- * Delivery is a queue of its own: workers claim due deliveries of any
--   organization with SKIP LOCKED under a lease (tolstoy_claim_deliveries, as
--   tolstoy_engine), send them, and record each attempt
--   (tolstoy_record_delivery, acting for the organization, fenced by the
--   lease token). A webhook's deliveries go out one at a time in event order
--   (seq): a delivery found behind an unfinished earlier one of its webhook is
--   put off until that one's next attempt, and brought forward when it
--   finishes. Every pending delivery keeps a next_attempt_at, so none can be
--   forgotten.
-- * Deliveries (delivered or given up) and the inbound trigger inbox
--   (flow_trigger_deliveries) are deleted past a retention period by
--   tolstoy_prune_deliveries, which the workers' upkeep runs.

create table webhooks (
    org_id uuid not null,
    id uuid not null default gen_random_uuid(),
    name text not null,
    url text not null,
    event_types text[] not null,
    enabled boolean not null default true,
    -- Encrypted by the application (the organization's data key): the HMAC secret, the header values.
    secret bytea not null,
    headers bytea,
    header_names text[] not null default '{}',
    -- Set when the workers disable a webhook that kept failing; cleared when it is enabled again.
    disabled_reason text,
    -- Since when every attempt failed (null: the last one succeeded, or none was made).
    failing_since timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint webhooks_pkey primary key (org_id, id),
    -- Configuration of the organization, like its API keys: it goes with the organization.
    constraint webhooks_org_id_fkey foreign key (org_id) references organizations (id) on delete cascade,
    constraint webhooks_name_length check (char_length(name) between 1 and 200),
    constraint webhooks_url_length check (char_length(url) between 1 and 2048),
    constraint webhooks_event_types_known check (
        cardinality(event_types) >= 1
        and event_types <@ array['flow.started', 'flow.completed', 'flow.failed', 'flow.cancelled',
                                 'step.started', 'step.completed', 'step.failed', 'step.skipped',
                                 'step.outcome_unknown', 'action.executed', 'action.failed', 'webhook.test']),
    constraint webhooks_disabled_reason_length check (char_length(disabled_reason) <= 1000)
);

comment on table webhooks is 'Outbound event webhooks: an organization''s URLs subscribed to event types.';
comment on column webhooks.secret is
    'HMAC-SHA256 signing secret, encrypted by the application with the organization''s data key; shown once.';
comment on column webhooks.headers is
    'Custom headers sent with every delivery: a JSON object encrypted like the secret (values may be credentials).';
comment on column webhooks.header_names is 'The names of the custom headers, shown with masked values.';
comment on column webhooks.disabled_reason is 'Why the workers disabled the webhook (its deliveries kept failing).';
comment on column webhooks.failing_since is
    'First failed attempt since the last successful one; past the give-up period the webhook is disabled.';

create index webhooks_org_id_created_at_id_idx on webhooks (org_id, created_at desc, id desc);

create trigger webhooks_touch_updated_at
    before update on webhooks
    for each row execute function tolstoy_touch_updated_at();

create table webhook_deliveries (
    org_id uuid not null,
    -- Sent as X-Webhook-Delivery: the same for every attempt.
    id uuid not null default gen_random_uuid(),
    -- Event order across the database: a webhook's deliveries go out in this order.
    seq bigint generated always as identity,
    webhook_id uuid not null,
    -- The envelope's id: the same for every webhook the event went to.
    event_id uuid not null,
    event_type text not null,
    data jsonb not null,
    event_created_at timestamptz not null default clock_timestamp(),
    -- pending: to send (again) at next_attempt_at (or look again then, when an earlier delivery of the
    -- webhook is unfinished); sending: claimed by a worker until lease_expires_at;
    -- delivered; failed: given up (final 4xx, or retried past the give-up period);
    -- cancelled: the webhook was disabled before it went out.
    state text not null default 'pending',
    next_attempt_at timestamptz,
    attempts integer not null default 0,
    attempt_log jsonb not null default '[]',
    lease_owner text,
    lease_token integer,
    lease_expires_at timestamptz,
    first_attempt_at timestamptz,
    last_attempt_at timestamptz,
    last_status_code integer,
    last_error text,
    finished_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint webhook_deliveries_pkey primary key (org_id, id),
    -- A webhook's deliveries belong to it and go with it.
    constraint webhook_deliveries_webhook_id_fkey foreign key (org_id, webhook_id)
        references webhooks (org_id, id) on delete cascade,
    constraint webhook_deliveries_state check (state in ('pending', 'sending', 'delivered', 'failed', 'cancelled')),
    constraint webhook_deliveries_data_object check (jsonb_typeof(data) = 'object'),
    constraint webhook_deliveries_attempt_log_array check (jsonb_typeof(attempt_log) = 'array'),
    constraint webhook_deliveries_lease_complete check ((lease_owner is null) = (lease_expires_at is null)),
    -- A pending delivery always has a time at which it is looked at again: none is forgotten.
    constraint webhook_deliveries_pending_due check (state <> 'pending' or next_attempt_at is not null)
);

comment on table webhook_deliveries is
    'Outbox of event webhooks: one row per event and subscribed webhook, written in the transaction of the '
    'change it describes; also the queue workers deliver from, in seq order per webhook.';
comment on column webhook_deliveries.next_attempt_at is
    'When a pending delivery is due: sent then, or put off again while an earlier one of its webhook is unfinished.';
comment on column webhook_deliveries.attempt_log is
    'Every attempt: [{attempt, at, statusCode, durationMs, error}] (a claim whose worker vanished included).';
comment on column webhook_deliveries.lease_token is 'Fencing token of the current claim (the attempt number).';

create index webhook_deliveries_org_id_webhook_id_created_at_id_idx
    on webhook_deliveries (org_id, webhook_id, created_at desc, id desc);
-- The claim's two ways in (due pending deliveries, expired leases) and the
-- head of each webhook's line; all small however long the history.
create index webhook_deliveries_due_idx on webhook_deliveries (next_attempt_at) where state = 'pending';
create index webhook_deliveries_lease_idx on webhook_deliveries (lease_expires_at) where state = 'sending';
create index webhook_deliveries_line_idx on webhook_deliveries (org_id, webhook_id, seq)
    where state in ('pending', 'sending');
-- Pruning finished deliveries by age.
create index webhook_deliveries_finished_idx on webhook_deliveries (created_at)
    where state in ('delivered', 'failed', 'cancelled');
-- Pruning the inbound trigger inbox by age. Not concurrently (a migration is one
-- transaction): the inbox is new in this release, and small; writes to it wait
-- for the build (lock_timeout above bounds the wait for the lock).
-- squawk-ignore require-concurrent-index-creation
create index flow_trigger_deliveries_received_at_idx on flow_trigger_deliveries (received_at);

create trigger webhook_deliveries_touch_updated_at
    before update on webhook_deliveries
    for each row execute function tolstoy_touch_updated_at();

alter table webhooks enable row level security;
alter table webhooks force row level security;
create policy tenant_isolation on webhooks
    using (org_id = tolstoy_current_org()) with check (org_id = tolstoy_current_org());
alter table webhook_deliveries enable row level security;
alter table webhook_deliveries force row level security;
create policy tenant_isolation on webhook_deliveries
    using (org_id = tolstoy_current_org()) with check (org_id = tolstoy_current_org());

-- tolstoy_engine (the owner of the cross-tenant functions) reads webhooks,
-- claims deliveries, writes the events of the runs it claims or fails, and
-- prunes both inboxes.
grant select on webhooks to tolstoy_engine;
grant select, insert, update, delete on webhook_deliveries to tolstoy_engine;
grant select, delete on flow_trigger_deliveries to tolstoy_engine;
create policy engine_access on webhooks to tolstoy_engine using (true);
create policy engine_access on webhook_deliveries to tolstoy_engine using (true) with check (true);
create policy engine_access on flow_trigger_deliveries to tolstoy_engine using (true);

-- ---- writing events ---------------------------------------------------------------

-- The timestamps of event data, as the API spells them.
create function tolstoy_iso(t timestamptz) returns text
language sql immutable as $$
    select to_char(t at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

comment on function tolstoy_iso(timestamptz) is 'A timestamp as the API shows it: ISO 8601 UTC with milliseconds.';

-- One event of an organization, fanned out to its enabled webhooks subscribed
-- to the type (insert … select: nothing when none is), due now; the claim keeps
-- it behind earlier deliveries of its webhook. Runs as its caller, under
-- row-level security.
create function tolstoy_webhook_emit(org uuid, kind text, payload jsonb) returns integer
language plpgsql as $$
declare
    event uuid := gen_random_uuid();
    fanned integer;
begin
    insert into webhook_deliveries (org_id, webhook_id, event_id, event_type, data, next_attempt_at)
    select w.org_id, w.id, event, kind, payload, now()
    from webhooks w
    where w.org_id = org and w.enabled and kind = any(w.event_types);
    get diagnostics fanned = row_count;
    return fanned;
end;
$$;

comment on function tolstoy_webhook_emit(uuid, text, jsonb) is
    'Writes one event to the outbox for each enabled webhook of org subscribed to its type; returns how many.';

-- flow.started when a run is first claimed; flow.completed/failed/cancelled when it ends.
create function tolstoy_run_webhook_events() returns trigger
language plpgsql as $$
declare
    payload jsonb := jsonb_build_object(
        'executionId', new.id, 'flowId', new.flow_id, 'flowVersion', new.flow_version, 'userId', new.user_id,
        'status', new.status, 'error', new.error, 'retryOf', new.retry_of,
        'startedAt', tolstoy_iso(new.started_at), 'finishedAt', tolstoy_iso(new.finished_at));
begin
    if old.started_at is null and new.started_at is not null then
        perform tolstoy_webhook_emit(new.org_id, 'flow.started', payload || '{"status": "running"}');
    end if;
    if new.status is distinct from old.status and new.status in ('completed', 'failed', 'cancelled') then
        perform tolstoy_webhook_emit(new.org_id, 'flow.' || new.status::text, payload);
    end if;
    return null;
end;
$$;

comment on function tolstoy_run_webhook_events() is
    'AFTER UPDATE trigger on flow_runs: the run''s flow.* events, in the statement that changes the run.';

create trigger flow_runs_webhook_events
    after update on flow_runs
    for each row
    when ((old.started_at is null and new.started_at is not null)
          or (new.status is distinct from old.status and new.status in ('completed', 'failed', 'cancelled')))
    execute function tolstoy_run_webhook_events();

-- step.started when a step first gets a checkpoint (or runs again after it had
-- finished); step.completed/failed/skipped/outcome_unknown when it reaches that
-- status. A step checkpointed straight as completed or failed (a transform)
-- gets step.started first. Retries of a step (running ↔ waiting) and a foreach
-- step's items (ids with brackets) make no event.
create function tolstoy_step_webhook_events() returns trigger
language plpgsql as $$
declare
    kinds text[];
    kind text;
    flow uuid;
begin
    if tg_op = 'INSERT' then
        kinds := case new.status
                     when 'skipped' then array['step.skipped']
                     when 'running' then array['step.started']
                     when 'waiting' then array['step.started']
                     else array['step.started', 'step.' || new.status] end;
    elsif new.status in ('completed', 'failed', 'skipped', 'outcome_unknown') then
        kinds := array['step.' || new.status];
    elsif old.status in ('completed', 'failed', 'skipped') then
        kinds := array['step.started'];
    else
        return null;
    end if;
    -- Most organizations subscribe to no step events: one index probe, nothing more.
    if not exists (select 1 from webhooks w
                   where w.org_id = new.org_id and w.enabled and w.event_types && kinds) then
        return null;
    end if;
    select r.flow_id into flow from flow_runs r
    where r.org_id = new.org_id and r.id = new.run_id and r.created_at = new.run_created_at;
    foreach kind in array kinds loop
        perform tolstoy_webhook_emit(new.org_id, kind, jsonb_build_object(
            'executionId', new.run_id, 'flowId', flow, 'stepId', new.step_id,
            'status', case when kind = 'step.started' then 'running' else new.status end,
            'attempt', new.attempt, 'error', case when kind = 'step.started' then null else new.error end,
            'durationMs', case when kind = 'step.started' then null else new.duration_ms end,
            'outputs', case when kind = 'step.completed' then new.outputs end));
    end loop;
    return null;
end;
$$;

comment on function tolstoy_step_webhook_events() is
    'AFTER INSERT/UPDATE trigger on flow_run_steps: the step.* events, in the statement that writes the step.';

-- Rows written by this transaction's engine step start at clock_timestamp() (so
-- at or after now()); the completed steps a retried run copies from the
-- original (tolstoy_queue_run) keep the original's older start, and make no event.
create trigger flow_run_steps_webhook_events_insert
    after insert on flow_run_steps
    for each row
    when (strpos(new.step_id, '[') = 0 and new.started_at >= now())
    execute function tolstoy_step_webhook_events();
create trigger flow_run_steps_webhook_events_update
    after update of status on flow_run_steps
    for each row
    when (strpos(new.step_id, '[') = 0 and new.status is distinct from old.status)
    execute function tolstoy_step_webhook_events();

-- Idle workers wake on the channel queued runs use, then learn from their next
-- claim (tolstoy_next_delivery) that a delivery is due.
-- A statement that inserted nothing (an event nobody subscribes to) wakes nobody.
create function webhook_deliveries_notify() returns trigger
language plpgsql as $$
begin
    if exists (select 1 from inserted) then
        perform pg_notify('tolstoy_runs', 'webhook');
    end if;
    return null;
end;
$$;

comment on function webhook_deliveries_notify() is
    'AFTER INSERT statement trigger: NOTIFY tolstoy_runs when deliveries were queued, so an idle worker delivers.';

create trigger webhook_deliveries_notify
    after insert on webhook_deliveries
    referencing new table as inserted
    for each statement execute function webhook_deliveries_notify();

-- A webhook switched off (by a person or for failing) cancels what it had not sent yet.
create function webhooks_cancel_pending() returns trigger
language plpgsql as $$
begin
    update webhook_deliveries
    set state = 'cancelled', next_attempt_at = null, finished_at = now(),
        last_error = coalesce(new.disabled_reason, 'The webhook was disabled.')
    where org_id = new.org_id and webhook_id = new.id and state = 'pending';
    return null;
end;
$$;

comment on function webhooks_cancel_pending() is
    'AFTER UPDATE trigger on webhooks: a webhook disabled cancels its pending deliveries.';

create trigger webhooks_cancel_pending
    after update of enabled on webhooks
    for each row when (old.enabled and not new.enabled)
    execute function webhooks_cancel_pending();

-- ---- delivering ---------------------------------------------------------------------

-- Claim up to max_deliveries deliveries of any organization: first those whose
-- worker vanished (lease expired; the lost attempt is logged), then due pending
-- ones, each with SKIP LOCKED under a new lease token, and only the first
-- unfinished one of its webhook's line (one found behind an earlier one is put
-- off until that one's next attempt, at least a second). Returns {deliveries: [delivery with its webhook's
-- url and encrypted secret and headers], next_due}.
create function tolstoy_claim_deliveries(worker text, max_deliveries integer, lease_seconds double precision)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    claimed jsonb := '[]';
    candidate record;
    taken webhook_deliveries;
    hook webhooks;
    lease interval := make_interval(secs => lease_seconds);
    ahead timestamptz;
begin
    if worker is null or worker = '' or max_deliveries < 1 or max_deliveries > 1000 or lease_seconds <= 0
            or lease_seconds > 3600 then
        raise exception 'tolstoy_claim_deliveries: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    for candidate in
        select d.org_id, d.id
        from webhook_deliveries d
        where d.state = 'sending' and d.lease_expires_at < now()
        order by d.lease_expires_at
        limit max_deliveries
        for update skip locked
    loop
        update webhook_deliveries d
        set attempts = d.attempts + 1, lease_token = d.attempts + 1, lease_owner = worker,
            lease_expires_at = now() + lease, last_attempt_at = now(),
            attempt_log = d.attempt_log || jsonb_build_object(
                'attempt', d.attempts, 'at', tolstoy_iso(d.last_attempt_at), 'statusCode', null,
                'durationMs', null, 'error', 'The worker sending it vanished; sent again.')
        where d.org_id = candidate.org_id and d.id = candidate.id
        returning * into taken;
        select * into hook from webhooks w where w.org_id = taken.org_id and w.id = taken.webhook_id;
        claimed := claimed || jsonb_build_object(
            'org_id', taken.org_id, 'id', taken.id, 'webhook_id', taken.webhook_id, 'event_id', taken.event_id,
            'event_type', taken.event_type, 'data', taken.data, 'created_at', tolstoy_iso(taken.event_created_at),
            'token', taken.lease_token, 'url', hook.url, 'secret', encode(hook.secret, 'base64'),
            'headers', encode(hook.headers, 'base64'));
    end loop;
    for candidate in
        select d.org_id, d.id, d.webhook_id, d.seq
        from webhook_deliveries d
        where d.state = 'pending' and d.next_attempt_at <= now()
        order by d.next_attempt_at, d.seq
        limit max_deliveries - jsonb_array_length(claimed)
        for update skip locked
    loop
        -- Read committed: this sees whatever finished before the row was locked.
        select case when e.state = 'pending' then e.next_attempt_at else e.lease_expires_at end into ahead
        from webhook_deliveries e
        where e.org_id = candidate.org_id and e.webhook_id = candidate.webhook_id
          and e.state in ('pending', 'sending') and e.seq < candidate.seq
        order by e.seq
        limit 1;
        if found then
            update webhook_deliveries
            set next_attempt_at = greatest(ahead, now() + interval '1 second')
            where org_id = candidate.org_id and id = candidate.id;
            continue;
        end if;
        select * into hook from webhooks w where w.org_id = candidate.org_id and w.id = candidate.webhook_id;
        if not hook.enabled then  -- disabled while this one was queued: it is not sent
            update webhook_deliveries
            set state = 'cancelled', next_attempt_at = null, finished_at = now(),
                last_error = coalesce(hook.disabled_reason, 'The webhook was disabled.')
            where org_id = candidate.org_id and id = candidate.id;
            continue;
        end if;
        update webhook_deliveries d
        set state = 'sending', attempts = d.attempts + 1, lease_token = d.attempts + 1, lease_owner = worker,
            lease_expires_at = now() + lease, first_attempt_at = coalesce(d.first_attempt_at, now()),
            last_attempt_at = now()
        where d.org_id = candidate.org_id and d.id = candidate.id
        returning * into taken;
        claimed := claimed || jsonb_build_object(
            'org_id', taken.org_id, 'id', taken.id, 'webhook_id', taken.webhook_id, 'event_id', taken.event_id,
            'event_type', taken.event_type, 'data', taken.data, 'created_at', tolstoy_iso(taken.event_created_at),
            'token', taken.lease_token, 'url', hook.url, 'secret', encode(hook.secret, 'base64'),
            'headers', encode(hook.headers, 'base64'));
    end loop;
    return jsonb_build_object('deliveries', claimed, 'next_due', tolstoy_next_delivery(), 'now', now());
end;
$$;

comment on function tolstoy_claim_deliveries(text, integer, double precision) is
    'Claims up to max_deliveries webhook deliveries of any organization (expired leases first, then due ones, '
    'one per webhook line), returns {deliveries, next_due, now}.';

-- When the next delivery falls due (a pending one's time, or a lease that will expire).
create function tolstoy_next_delivery() returns timestamptz
language sql stable security definer set search_path = public, pg_temp as $$
    select least((select min(d.next_attempt_at) from webhook_deliveries d where d.state = 'pending'),
                 (select min(d.lease_expires_at) from webhook_deliveries d where d.state = 'sending'))
$$;

comment on function tolstoy_next_delivery() is
    'The earliest time a webhook delivery of any organization falls due (null: none is waiting).';

-- Record one attempt of a claimed delivery, acting for its organization, fenced
-- by the lease token (a delivery claimed again by another worker ignores the
-- late answer). outcome: delivered; retry (after retry_in_ms, unless that is
-- past give_up_seconds since the first attempt: then failed); failed (final).
-- A webhook failing for give_up_seconds is disabled with the reason; a success
-- clears its failing streak. A finished delivery lets the next in line go.
--
-- result = {outcome, status_code, duration_ms, error, retry_in_ms, give_up_seconds}
create function tolstoy_record_delivery(worker text, org uuid, delivery uuid, token integer, result jsonb)
returns jsonb
language plpgsql as $$
declare
    current webhook_deliveries;
    outcome text := result ->> 'outcome';
    give_up interval := make_interval(secs => coalesce((result ->> 'give_up_seconds')::double precision, 86400));
    retry_at timestamptz := now() + make_interval(secs => coalesce((result ->> 'retry_in_ms')::double precision, 0)
                                                          / 1000);
    hook webhooks;
    disabled text;
begin
    if outcome is null or outcome not in ('delivered', 'retry', 'failed') then
        raise exception 'tolstoy_record_delivery: invalid outcome' using errcode = 'invalid_parameter_value';
    end if;
    perform set_config('app.org_id', org::text, true);
    select * into current from webhook_deliveries d
    where d.org_id = org and d.id = delivery and d.lease_owner = worker and d.lease_token = token
      and d.state = 'sending'
    for update;
    if not found then
        return jsonb_build_object('recorded', false);
    end if;
    -- No key update: events being written for this webhook (their foreign key's key-share lock) do
    -- not hold this up.
    select * into hook from webhooks w where w.org_id = org and w.id = current.webhook_id for no key update;
    if outcome <> 'delivered' and hook.enabled and now() - hook.failing_since >= give_up then
        -- Failing for the whole period: the webhook is disabled, this delivery given up with it.
        disabled := format('Disabled at %s: every delivery failed since %s (last: %s).',
                           tolstoy_iso(now()), tolstoy_iso(hook.failing_since),
                           coalesce('HTTP ' || (result ->> 'status_code'), left(result ->> 'error', 300),
                                    'no answer'));
        outcome := 'failed';
    elsif outcome = 'retry' and (retry_at - current.first_attempt_at > give_up or not hook.enabled) then
        outcome := 'failed';
    end if;
    update webhook_deliveries d
    set state = case outcome when 'delivered' then 'delivered' when 'retry' then 'pending' else 'failed' end,
        next_attempt_at = case when outcome = 'retry' then retry_at end,
        finished_at = case when outcome <> 'retry' then now() end,
        last_status_code = (result ->> 'status_code')::integer,
        last_error = left(result ->> 'error', 1000),
        lease_owner = null, lease_token = null, lease_expires_at = null,
        attempt_log = d.attempt_log || jsonb_build_object(
            'attempt', token, 'at', tolstoy_iso(d.last_attempt_at),
            'statusCode', (result ->> 'status_code')::integer,
            'durationMs', (result ->> 'duration_ms')::integer, 'error', left(result ->> 'error', 1000))
    where d.org_id = org and d.id = delivery;
    if outcome = 'delivered' then
        if hook.failing_since is not null then
            update webhooks set failing_since = null where org_id = org and id = hook.id;
        end if;
    elsif disabled is not null then
        -- Its deliveries not sent yet are cancelled (webhooks_cancel_pending).
        update webhooks set enabled = false, disabled_reason = disabled where org_id = org and id = hook.id;
    elsif hook.failing_since is null then
        update webhooks set failing_since = now() where org_id = org and id = hook.id;
    end if;
    if outcome <> 'retry' then
        -- The next in line may go now (a claim may have put it off until this one's next attempt).
        update webhook_deliveries d
        set next_attempt_at = least(d.next_attempt_at, now())
        where d.org_id = org and d.id = (select n.id from webhook_deliveries n
                                         where n.org_id = org and n.webhook_id = current.webhook_id
                                           and n.state = 'pending'
                                         order by n.seq limit 1);
    end if;
    return jsonb_build_object('recorded', true, 'outcome', outcome, 'disabled', disabled);
end;
$$;

comment on function tolstoy_record_delivery(text, uuid, uuid, integer, jsonb) is
    'Records one attempt of a claimed webhook delivery (fenced by its lease token): delivered, retry later or '
    'failed; disables a webhook failing for the give-up period. Acts for org under row-level security.';

-- ---- retention ------------------------------------------------------------------------

-- Delete finished webhook deliveries and inbound trigger deliveries older than
-- retention_days (null: keep them), at most batch rows of each per call. The
-- workers' hourly upkeep calls it in the statement of tolstoy_maintain_history
-- (sql/runs.sql maintain_history). Returns {deliveries, inbox}: how many went.
create function tolstoy_prune_deliveries(retention_days integer, batch integer)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    cutoff timestamptz;
    outbox integer;
    inbox integer;
begin
    if retention_days < 1 or batch is null or batch < 1 or batch > 100000 then
        raise exception 'tolstoy_prune_deliveries: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    if retention_days is null then
        return jsonb_build_object('deliveries', 0, 'inbox', 0);
    end if;
    cutoff := now() - make_interval(days => retention_days);
    delete from webhook_deliveries d
    where (d.org_id, d.id) in (select o.org_id, o.id from webhook_deliveries o
                               where o.state in ('delivered', 'failed', 'cancelled') and o.created_at < cutoff
                               limit batch);
    get diagnostics outbox = row_count;
    delete from flow_trigger_deliveries t
    where (t.org_id, t.id) in (select i.org_id, i.id from flow_trigger_deliveries i
                               where i.received_at < cutoff
                               limit batch);
    get diagnostics inbox = row_count;
    return jsonb_build_object('deliveries', outbox, 'inbox', inbox);
end;
$$;

comment on function tolstoy_prune_deliveries(integer, integer) is
    'Deletes up to batch finished webhook deliveries and inbound trigger deliveries older than retention_days.';

alter function tolstoy_claim_deliveries(text, integer, double precision) owner to tolstoy_engine;
alter function tolstoy_next_delivery() owner to tolstoy_engine;
alter function tolstoy_prune_deliveries(integer, integer) owner to tolstoy_engine;
revoke execute on function tolstoy_claim_deliveries(text, integer, double precision) from public;
revoke execute on function tolstoy_next_delivery() from public;
revoke execute on function tolstoy_prune_deliveries(integer, integer) from public;
revoke execute on function tolstoy_record_delivery(text, uuid, uuid, integer, jsonb) from public;

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop function tolstoy_prune_deliveries(integer, integer);
drop function tolstoy_record_delivery(text, uuid, uuid, integer, jsonb);
drop function tolstoy_claim_deliveries(text, integer, double precision);
drop function tolstoy_next_delivery();
drop trigger flow_run_steps_webhook_events_update on flow_run_steps;
drop trigger flow_run_steps_webhook_events_insert on flow_run_steps;
drop trigger flow_runs_webhook_events on flow_runs;
drop function tolstoy_step_webhook_events();
drop function tolstoy_run_webhook_events();
drop function tolstoy_webhook_emit(uuid, text, jsonb);
drop function tolstoy_iso(timestamptz);
drop policy engine_access on flow_trigger_deliveries;
revoke select, delete on flow_trigger_deliveries from tolstoy_engine;
-- squawk-ignore require-concurrent-index-deletion
drop index flow_trigger_deliveries_received_at_idx;
-- The outbox first: it references the webhooks. Their triggers, policies and indexes go with them.
drop table webhook_deliveries;
drop function webhook_deliveries_notify();
drop table webhooks;
drop function webhooks_cancel_pending();
