-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Flows that start themselves: triggers on a flow, and the inbox of webhook
-- deliveries. Two new tables, no change to existing ones (only new grants to
-- the tolstoy_engine role that owns the cross-tenant functions).
--
-- * flow_triggers: a webhook (POST /hooks/{id}, signed with the trigger's
--   secret, stored encrypted by the application) or a cron schedule in an IANA
--   time zone, whose next due time (next_run_at) the workers advance.
-- * flow_trigger_deliveries: every request to a webhook trigger, written in the
--   same transaction as the run it queued; the sender's delivery id is unique
--   per trigger, so a redelivery returns the first run instead of a second.
--
-- Two paths cross tenants and run as tolstoy_engine (security definer):
-- tolstoy_hook_target, for the public webhook route, which knows only the
-- trigger id; and tolstoy_claim_schedules, for workers, which lock due
-- schedules of any organization with SKIP LOCKED. Firing a claimed schedule
-- (tolstoy_fire_schedules) acts for each schedule's organization under
-- row-level security, like tolstoy_checkpoint.

create table flow_triggers (
    org_id uuid not null,
    id uuid not null default gen_random_uuid(),
    flow_id uuid not null,
    type text not null,
    enabled boolean not null default true,
    -- webhook: the signing secret (encrypted with the organization's data key) and how it is checked.
    secret bytea,
    verification text,
    -- schedule: cron, zone, what to do with times missed while no worker ran, next due time.
    cron text,
    timezone text,
    catch_up text,
    next_run_at timestamptz,
    last_fired_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint flow_triggers_pkey primary key (org_id, id),
    constraint flow_triggers_flow_id_fkey foreign key (org_id, flow_id)
        references flows (org_id, id) on delete restrict,
    constraint flow_triggers_type check (type in ('webhook', 'schedule')),
    constraint flow_triggers_verification check (verification in ('tolstoy', 'github', 'stripe', 'slack')),
    constraint flow_triggers_catch_up check (catch_up in ('one', 'none')),
    constraint flow_triggers_cron_length check (char_length(cron) between 1 and 200),
    constraint flow_triggers_timezone_length check (char_length(timezone) between 1 and 100),
    constraint flow_triggers_webhook_fields check (
        type <> 'webhook' or (secret is not null and verification is not null and cron is null)),
    constraint flow_triggers_schedule_fields check (
        type <> 'schedule' or (cron is not null and timezone is not null and catch_up is not null
                               and secret is null))
);

comment on table flow_triggers is
    'What starts a flow besides the API: a signed webhook (POST /hooks/{id}) or a cron schedule.';
comment on column flow_triggers.secret is
    'Webhook signing secret, encrypted by the application with the organization''s data key; shown once.';
comment on column flow_triggers.verification is
    'How a webhook request is verified: tolstoy (X-Tolstoy-Signature), github, stripe or slack.';
comment on column flow_triggers.cron is 'Schedule: cron expression (5 fields, or 6 with seconds last).';
comment on column flow_triggers.timezone is 'Schedule: IANA time zone the cron expression reads wall-clock time in.';
comment on column flow_triggers.catch_up is
    'Schedule: after downtime, one = fire once for every missed time, none = skip them.';
comment on column flow_triggers.next_run_at is
    'Schedule: next due time; a worker that fires it advances it in the same transaction. Null: none left.';

-- The public webhook route knows only the trigger id (a random UUID) before it
-- knows the organization: the one index not led by org_id. Not unique: the
-- primary key is (org_id, id), and gen_random_uuid() does not repeat.
create index flow_triggers_id_idx on flow_triggers (id);
create index flow_triggers_org_id_flow_id_created_at_id_idx
    on flow_triggers (org_id, flow_id, created_at desc, id desc);
-- The workers' way in: enabled schedules by due time, across organizations.
create index flow_triggers_due_idx on flow_triggers (next_run_at)
    where type = 'schedule' and enabled and next_run_at is not null;

create trigger flow_triggers_touch_updated_at
    before update on flow_triggers
    for each row execute function tolstoy_touch_updated_at();

create table flow_trigger_deliveries (
    org_id uuid not null,
    id uuid not null default gen_random_uuid(),
    trigger_id uuid not null,
    -- valid: verified, run queued; invalid, stale, replayed: refused (401), kept without the body.
    verdict text not null,
    reason text,
    delivery_id text,
    signature text,
    headers jsonb not null default '{}',
    body bytea,
    execution_id uuid,
    received_at timestamptz not null default now(),
    constraint flow_trigger_deliveries_pkey primary key (org_id, id),
    -- A trigger's deliveries belong to it and go with it.
    constraint flow_trigger_deliveries_trigger_id_fkey foreign key (org_id, trigger_id)
        references flow_triggers (org_id, id) on delete cascade,
    constraint flow_trigger_deliveries_verdict check (verdict in ('valid', 'invalid', 'stale', 'replayed')),
    constraint flow_trigger_deliveries_delivery_id_length check (char_length(delivery_id) between 1 and 200),
    constraint flow_trigger_deliveries_headers_object check (jsonb_typeof(headers) = 'object'),
    constraint flow_trigger_deliveries_valid_has_run check (verdict <> 'valid' or body is not null)
);

comment on table flow_trigger_deliveries is
    'Inbox of webhook triggers: each request as received (headers that matter, raw body of verified ones), '
    'its signature verdict and the run it queued, written in the run''s transaction.';
comment on column flow_trigger_deliveries.delivery_id is
    'The sender''s id of the event (X-GitHub-Delivery, Stripe event id, Slack event_id, X-Tolstoy-Delivery).';
comment on column flow_trigger_deliveries.signature is
    'The verified signature: a second request bearing it is a replay.';
comment on column flow_trigger_deliveries.execution_id is
    'The run this delivery queued (flow_runs.id; no foreign key across monthly partitions).';

create index flow_trigger_deliveries_org_id_trigger_id_received_at_id_idx
    on flow_trigger_deliveries (org_id, trigger_id, received_at desc, id desc);
-- A redelivered event returns the first run; a replayed signature is refused.
create unique index flow_trigger_deliveries_delivery_id_key
    on flow_trigger_deliveries (org_id, trigger_id, delivery_id) where verdict = 'valid';
create unique index flow_trigger_deliveries_signature_key
    on flow_trigger_deliveries (org_id, trigger_id, signature) where verdict = 'valid';

alter table flow_triggers enable row level security;
alter table flow_triggers force row level security;
create policy tenant_isolation on flow_triggers
    using (org_id = tolstoy_current_org()) with check (org_id = tolstoy_current_org());
alter table flow_trigger_deliveries enable row level security;
alter table flow_trigger_deliveries force row level security;
create policy tenant_isolation on flow_trigger_deliveries
    using (org_id = tolstoy_current_org()) with check (org_id = tolstoy_current_org());

-- The cross-tenant functions below run as tolstoy_engine: it reads triggers and
-- locks due schedules (select for update needs update), nothing else.
grant select, update on flow_triggers to tolstoy_engine;
create policy engine_access on flow_triggers to tolstoy_engine using (true) with check (true);

-- The public webhook route: what verifying a request needs, before any tenant is known.
create function tolstoy_hook_target(hook uuid)
returns table (org_id uuid, flow_id uuid, enabled boolean, verification text, secret bytea)
language sql stable security definer set search_path = public, pg_temp as $$
    select t.org_id, t.flow_id, t.enabled, t.verification, t.secret
    from flow_triggers t
    where t.id = hook and t.type = 'webhook'
$$;

comment on function tolstoy_hook_target(uuid) is
    'For POST /hooks/{id}: the organization, flow, state and encrypted secret of a webhook trigger.';

-- Workers: lock up to max_schedules enabled schedules due at as_of (default now()) of
-- any organization; SKIP LOCKED, so each is handed to one worker. The locks last
-- until the worker's transaction ends, after it fired them (tolstoy_fire_schedules).
create function tolstoy_claim_schedules(worker text, max_schedules integer, as_of timestamptz)
returns table (org_id uuid, id uuid, flow_id uuid, cron text, timezone text, catch_up text,
               next_run_at timestamptz, now timestamptz)
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    if worker is null or worker = '' or max_schedules < 1 or max_schedules > 1000 then
        raise exception 'tolstoy_claim_schedules: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    return query
    select t.org_id, t.id, t.flow_id, t.cron, t.timezone, t.catch_up, t.next_run_at, coalesce(as_of, now())
    from flow_triggers t
    where t.type = 'schedule' and t.enabled and t.next_run_at <= coalesce(as_of, now())
    order by t.next_run_at
    limit max_schedules
    for update skip locked;
end;
$$;

comment on function tolstoy_claim_schedules(text, integer, timestamptz) is
    'Locks (SKIP LOCKED) up to max_schedules enabled schedules of any organization due at as_of (null: now).';

-- When the next schedule of any organization falls due, so an idle worker knows
-- when to wake (the claim of runs returns it with its answer).
create function tolstoy_next_schedule() returns timestamptz
language sql stable security definer set search_path = public, pg_temp as $$
    select min(t.next_run_at) from flow_triggers t
    where t.type = 'schedule' and t.enabled and t.next_run_at is not null
$$;

comment on function tolstoy_next_schedule() is 'The earliest next_run_at of an enabled schedule, across organizations.';

-- Fire claimed schedules: for each, acting for its organization (row-level
-- security), advance next_run_at only if it still is the due time the worker saw
-- (so firing twice is impossible even without the claim's lock) and, unless the
-- time is skipped, queue a run of the flow's current version in the same
-- transaction. The run's Idempotency-Key names the trigger and the due time: a
-- second queueing of the same time returns the first run.
--
-- fires = [{org_id, id, due, next_run_at, scheduled_at (null: skip)}]
create function tolstoy_fire_schedules(as_of timestamptz, fires jsonb)
returns jsonb
language plpgsql as $$
declare
    fire jsonb;
    org uuid;
    flow uuid;
    flow_version integer;
    scheduled timestamptz;
    queued uuid;
    fired jsonb := '[]';
    previous text := current_setting('app.org_id', true);
begin
    if jsonb_typeof(fires) is distinct from 'array' or jsonb_array_length(fires) > 1000 then
        raise exception 'tolstoy_fire_schedules: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    for fire in select * from jsonb_array_elements(fires) loop
        org := (fire ->> 'org_id')::uuid;
        scheduled := (fire ->> 'scheduled_at')::timestamptz;
        perform set_config('app.org_id', org::text, true);
        update flow_triggers t
        set next_run_at = (fire ->> 'next_run_at')::timestamptz,
            last_fired_at = case when scheduled is null then t.last_fired_at else coalesce(as_of, now()) end
        where t.org_id = org and t.id = (fire ->> 'id')::uuid and t.type = 'schedule' and t.enabled
          and t.next_run_at = (fire ->> 'due')::timestamptz and t.next_run_at <= coalesce(as_of, now())
          and ((fire ->> 'next_run_at') is null or (fire ->> 'next_run_at')::timestamptz > t.next_run_at)
          and (scheduled is null or scheduled between t.next_run_at and coalesce(as_of, now()))
        returning t.flow_id into flow;
        continue when not found or scheduled is null;
        select f.version into flow_version from flows f where f.org_id = org and f.id = flow;
        select (q.run).id into queued
        from tolstoy_queue_run(org, flow, flow_version, null,
                               jsonb_build_object('trigger', jsonb_build_object(
                                   'id', fire ->> 'id', 'type', 'schedule',
                                   'scheduledAt', to_char(scheduled at time zone 'UTC',
                                                          'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))),
                               format('tolstoy:schedule:%s:%s', fire ->> 'id',
                                      extract(epoch from scheduled)::numeric),
                               null) as q;
        fired := fired || jsonb_build_object('trigger_id', fire ->> 'id', 'org_id', org, 'execution_id', queued,
                                             'scheduled_at', scheduled);
    end loop;
    perform set_config('app.org_id', coalesce(previous, ''), true);
    return fired;
end;
$$;

comment on function tolstoy_fire_schedules(timestamptz, jsonb) is
    'Advances claimed schedules (only from the due time the worker saw) and queues their runs, each acting '
    'for its organization; returns [{trigger_id, org_id, execution_id, scheduled_at}] of the runs queued.';

alter function tolstoy_hook_target(uuid) owner to tolstoy_engine;
alter function tolstoy_claim_schedules(text, integer, timestamptz) owner to tolstoy_engine;
alter function tolstoy_next_schedule() owner to tolstoy_engine;
revoke execute on function tolstoy_hook_target(uuid) from public;
revoke execute on function tolstoy_claim_schedules(text, integer, timestamptz) from public;
revoke execute on function tolstoy_next_schedule() from public;
revoke execute on function tolstoy_fire_schedules(timestamptz, jsonb) from public;

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop function tolstoy_fire_schedules(timestamptz, jsonb);
drop function tolstoy_next_schedule();
drop function tolstoy_claim_schedules(text, integer, timestamptz);
drop function tolstoy_hook_target(uuid);
-- The inbox goes first: it references the triggers. Their policies and indexes go with them.
drop table flow_trigger_deliveries;
drop table flow_triggers;
