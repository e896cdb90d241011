-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '300s';

-- The flow engine, made durable in the ways a run can be broken:
--
-- * Run history is partitioned by month (flow_runs and flow_run_steps by the
--   run's creation time, execution_logs by the log's), so retention drops whole
--   partitions (tolstoy_maintain_history) instead of deleting rows.
-- * A run carries a plan: the steps of its flow version and the definitions of
--   the actions (and their tools) those steps call, copied when it is queued, so
--   editing an action never changes a run in flight.
-- * A step's real output is what later steps see. Where it holds secrets it is
--   kept encrypted (flow_run_steps.sealed) next to the masked copy people see.
-- * Leases are fenced: a claim hands out a token (lease_token) that every write
--   must present together with an unexpired lease, or it is refused (TL001).
-- * A run reclaimed after its worker vanished counts a recovery; past the limit
--   it fails instead of crashing the next worker too.
-- * A call whose outcome is unknown (the worker died mid-call on a non-idempotent
--   request) parks the run in the new status 'waiting' until a person resolves it.
--
-- Existing rows are copied into the new tables (old runs get a plan rebuilt from
-- their flow version and today's actions).

alter type flow_run_status add value if not exists 'waiting' after 'running';

comment on type flow_run_status is
    'Lifecycle of a flow run: queued → running → completed | failed | cancelled; waiting = parked until '
    'something outside the engine happens (an unknown outcome resolved).';

-- ---- tools that honour an Idempotency-Key ---------------------------------------

-- A tool that says so may be sent a non-idempotent call (POST, PATCH) again after
-- a worker died during it: the repeated Idempotency-Key makes it the same request.
alter table tools add column honors_idempotency_key boolean not null default false;

comment on column tools.honors_idempotency_key is
    'The tool treats a repeated Idempotency-Key as the same request, so a call whose outcome is unknown may be resent.';

-- ---- moving the old tables aside ---------------------------------------------

-- The three tables are replaced by partitioned ones of the same names: the old
-- ones (and their index names, which are schema-wide) step aside, their rows are
-- copied over below, then they are dropped. Squawk's warnings about renames and
-- drops are expected here and silenced statement by statement.

-- squawk-ignore renaming-table
alter table flow_run_steps rename to flow_run_steps_unpartitioned;
-- squawk-ignore renaming-object
alter index flow_run_steps_pkey rename to flow_run_steps_unpartitioned_pkey;
-- squawk-ignore renaming-table
alter table flow_runs rename to flow_runs_unpartitioned;
-- squawk-ignore renaming-object
alter index flow_runs_pkey rename to flow_runs_unpartitioned_pkey;
-- squawk-ignore renaming-object
alter index flow_runs_org_id_flow_id_idempotency_key_key rename to flow_runs_unpartitioned_idempotency_key;
-- squawk-ignore renaming-object
alter index flow_runs_org_id_flow_id_created_at_id_idx rename to flow_runs_unpartitioned_flow_idx;
-- squawk-ignore renaming-object
alter index flow_runs_org_id_user_id_idx rename to flow_runs_unpartitioned_user_idx;
-- squawk-ignore renaming-object
alter index flow_runs_org_id_retry_of_idx rename to flow_runs_unpartitioned_retry_idx;
-- squawk-ignore renaming-object
alter index flow_runs_queued_run_after_idx rename to flow_runs_unpartitioned_queued_idx;
-- squawk-ignore renaming-object
alter index flow_runs_running_lease_expires_at_idx rename to flow_runs_unpartitioned_lease_idx;
-- squawk-ignore renaming-table
alter table execution_logs rename to execution_logs_unpartitioned;
-- squawk-ignore renaming-object
alter index execution_logs_pkey rename to execution_logs_unpartitioned_pkey;
-- squawk-ignore renaming-object
alter index execution_logs_org_id_created_at_id_idx rename to execution_logs_unpartitioned_created_idx;
-- squawk-ignore renaming-object
alter index execution_logs_org_id_flow_id_created_at_id_idx rename to execution_logs_unpartitioned_flow_idx;
-- squawk-ignore renaming-object
alter index execution_logs_org_id_execution_id_created_at_id_idx rename to execution_logs_unpartitioned_execution_idx;
-- squawk-ignore renaming-object
alter index execution_logs_org_id_user_id_created_at_id_idx rename to execution_logs_unpartitioned_user_idx;
-- squawk-ignore renaming-object
alter index execution_logs_org_id_status_created_at_id_idx rename to execution_logs_unpartitioned_status_idx;

-- squawk-ignore ban-drop-function
drop function tolstoy_claim_runs(text, integer, double precision);
-- squawk-ignore ban-drop-function
drop function tolstoy_renew_leases(text, double precision);
-- squawk-ignore ban-drop-function
drop function tolstoy_next_wake();
-- squawk-ignore ban-drop-function
drop function tolstoy_queue_stats();

-- ---- execution_logs, partitioned by the log's month ---------------------------

create table execution_logs (
    org_id uuid not null,
    id uuid not null default gen_random_uuid(),
    flow_id uuid,
    user_id uuid,
    execution_id text not null,
    step_key text not null,
    status execution_status not null,
    inputs jsonb not null,
    outputs jsonb,
    error jsonb,
    duration_ms integer,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    -- The partition key is part of every unique key of a partitioned table.
    constraint execution_logs_pkey primary key (org_id, id, created_at),
    constraint execution_logs_flow_id_fkey foreign key (org_id, flow_id)
        references flows (org_id, id) on delete restrict,
    constraint execution_logs_user_id_fkey foreign key (org_id, user_id)
        references users (org_id, id) on delete restrict,
    constraint execution_logs_execution_id_length check (char_length(execution_id) between 1 and 200),
    constraint execution_logs_step_key_length check (char_length(step_key) between 1 and 200),
    constraint execution_logs_inputs_object check (jsonb_typeof(inputs) = 'object'),
    constraint execution_logs_outputs_object check (outputs is null or jsonb_typeof(outputs) = 'object')
) partition by range (created_at);

comment on table execution_logs is
    'Audit trail: one row per step event of a flow run (written by clients or the engine); monthly partitions.';
comment on column execution_logs.user_id is 'Actor (X-User-ID) who wrote the log or started the run; null for system runs.';
comment on column execution_logs.execution_id is 'Groups the logs of one run; chosen by the client or the engine.';
comment on column execution_logs.error is 'Any JSON value describing the failure; null when the step did not fail.';
comment on column execution_logs.duration_ms is 'Milliseconds the step took, for logs written by the engine; null otherwise.';

create index execution_logs_org_id_created_at_id_idx on execution_logs (org_id, created_at desc, id desc);
create index execution_logs_org_id_id_idx on execution_logs (org_id, id);
create index execution_logs_org_id_flow_id_created_at_id_idx
    on execution_logs (org_id, flow_id, created_at desc, id desc);
create index execution_logs_org_id_execution_id_created_at_id_idx
    on execution_logs (org_id, execution_id, created_at desc, id desc);
create index execution_logs_org_id_user_id_created_at_id_idx
    on execution_logs (org_id, user_id, created_at desc, id desc);
create index execution_logs_org_id_status_created_at_id_idx
    on execution_logs (org_id, status, created_at desc, id desc);

-- ---- flow_runs, partitioned by the run's month --------------------------------

create table flow_runs (
    org_id uuid not null,
    id uuid not null default gen_random_uuid(),
    flow_id uuid not null,
    flow_version integer not null,
    user_id uuid,
    status flow_run_status not null default 'queued',
    variables jsonb not null default '{}',
    plan jsonb not null,
    error jsonb,
    idempotency_key text,
    retry_of uuid,
    root_run_id uuid not null,
    run_after timestamptz not null default now(),
    cancel_requested boolean not null default false,
    claims integer not null default 0,
    recoveries integer not null default 0,
    lease_owner text,
    lease_token integer,
    lease_expires_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    started_at timestamptz,
    finished_at timestamptz,
    constraint flow_runs_pkey primary key (org_id, id, created_at),
    -- A run pins the version it started with; that version can never change.
    constraint flow_runs_flow_version_fkey foreign key (org_id, flow_id, flow_version)
        references flow_versions (org_id, flow_id, version) on delete restrict,
    constraint flow_runs_flow_id_fkey foreign key (org_id, flow_id)
        references flows (org_id, id) on delete restrict,
    constraint flow_runs_user_id_fkey foreign key (org_id, user_id)
        references users (org_id, id) on delete restrict,
    constraint flow_runs_variables_object check (jsonb_typeof(variables) = 'object'),
    constraint flow_runs_plan_object check (jsonb_typeof(plan) = 'object'),
    constraint flow_runs_idempotency_key_length check (char_length(idempotency_key) between 1 and 200),
    constraint flow_runs_lease_complete check ((lease_owner is null) = (lease_expires_at is null))
) partition by range (created_at);

comment on table flow_runs is
    'One execution of a flow version; also the work queue the workers claim from. Monthly partitions.';
comment on column flow_runs.id is 'Exposed as executionId; execution_logs.execution_id holds it as text.';
comment on column flow_runs.plan is
    'What the run executes, copied when it was queued: {steps, actions: [action with its tool]}.';
comment on column flow_runs.retry_of is
    'The run this one retries (at most one retry per run; no foreign key across monthly partitions).';
comment on column flow_runs.root_run_id is
    'First run of a retry chain; Idempotency-Keys sent to tools derive from it, so a retry repeats them.';
comment on column flow_runs.run_after is 'Not claimable before this time: set by delay steps and retry backoff.';
comment on column flow_runs.cancel_requested is 'Set by the cancel route; a worker stops the run within one heartbeat.';
comment on column flow_runs.claims is 'How many times a worker claimed the run; the claim number is the lease token.';
comment on column flow_runs.recoveries is 'Claims after a worker vanished (its lease expired); past the limit the run fails.';
comment on column flow_runs.lease_token is
    'Fencing token of the current claim: writes must present it with an unexpired lease.';
comment on column flow_runs.lease_expires_at is 'A running run whose lease expired belongs to no worker and is claimed again.';

create index flow_runs_org_id_id_idx on flow_runs (org_id, id);
create index flow_runs_org_id_flow_id_created_at_id_idx on flow_runs (org_id, flow_id, created_at desc, id desc);
create index flow_runs_org_id_user_id_idx on flow_runs (org_id, user_id);
-- Idempotent execute and one retry per run are checked under an advisory lock
-- (tolstoy_queue_run): a unique index of a partitioned table must include the month.
create index flow_runs_org_id_flow_id_idempotency_key_idx
    on flow_runs (org_id, flow_id, idempotency_key) where idempotency_key is not null;
create index flow_runs_org_id_retry_of_idx on flow_runs (org_id, retry_of) where retry_of is not null;
-- The claim's two ways in, each small however long the history: due queued runs,
-- and running runs whose lease will expire.
create index flow_runs_queued_run_after_idx on flow_runs (run_after) where status = 'queued';
create index flow_runs_running_lease_expires_at_idx on flow_runs (lease_expires_at) where status = 'running';

-- ---- flow_run_steps, partitioned with their run -------------------------------

create table flow_run_steps (
    org_id uuid not null,
    run_id uuid not null,
    run_created_at timestamptz not null,
    step_id text not null,
    status text not null,
    attempt integer not null default 1,
    inputs jsonb,
    outputs jsonb,
    sealed bytea,
    error jsonb,
    wake_at timestamptz,
    call_started_at timestamptz,
    started_at timestamptz not null default now(),
    finished_at timestamptz,
    duration_ms integer,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint flow_run_steps_pkey primary key (org_id, run_id, step_id, run_created_at),
    constraint flow_run_steps_status check (status in ('running', 'waiting', 'completed', 'failed', 'skipped',
                                                      'outcome_unknown')),
    constraint flow_run_steps_attempt_positive check (attempt >= 1)
) partition by range (run_created_at);

comment on table flow_run_steps is
    'Durable step checkpoints of a run; finished ones are skipped when the run resumes. Partitioned with the run '
    '(run_created_at), so a month of runs and their steps are dropped together; no foreign key spans them.';
comment on column flow_run_steps.attempt is 'Retry attempt (1 = first try); part of the Idempotency-Key sent to tools.';
comment on column flow_run_steps.outputs is 'What people see of the output: secrets masked.';
comment on column flow_run_steps.sealed is
    'The real output, encrypted by the application, when it differs from outputs (it held secrets).';
comment on column flow_run_steps.wake_at is 'For waiting steps: when the delay or retry backoff ends.';
comment on column flow_run_steps.call_started_at is
    'Set just before an outbound call; a running step with it set and no result is a call whose outcome is unknown.';

-- ---- partitions -----------------------------------------------------------------

-- One partition per month of each history table, named <table>_pYYYY_MM, and a
-- default partition that stays empty as long as tolstoy_maintain_history runs.
create function tolstoy_ensure_partitions(first_month date, months integer) returns integer
language plpgsql as $$
declare
    parent text;
    month date;
    name text;
    created integer := 0;
begin
    foreach parent in array array['flow_runs', 'flow_run_steps', 'execution_logs'] loop
        for i in 0 .. months - 1 loop
            month := date_trunc('month', first_month)::date + make_interval(months => i);
            name := format('%s_p%s', parent, to_char(month, 'YYYY_MM'));
            if to_regclass(name) is null then
                execute format('create table %I partition of %I for values from (%L) to (%L)',
                               name, parent, month::timestamptz, (month + interval '1 month')::timestamptz);
                created := created + 1;
            end if;
        end loop;
    end loop;
    return created;
end;
$$;

comment on function tolstoy_ensure_partitions(date, integer) is
    'Creates the missing monthly partitions of the run history tables for months starting at first_month.';

create table flow_runs_default partition of flow_runs default;
create table flow_run_steps_default partition of flow_run_steps default;
create table execution_logs_default partition of execution_logs default;

-- Partitions from the month of the oldest row that exists to three months ahead.
do $$
declare
    oldest date := date_trunc('month', least(
        coalesce((select min(created_at) from flow_runs_unpartitioned), now()),
        coalesce((select min(created_at) from execution_logs_unpartitioned), now())))::date;
begin
    perform tolstoy_ensure_partitions(oldest, ((extract(year from now()) - extract(year from oldest)) * 12
                                               + extract(month from now()) - extract(month from oldest))::integer + 4);
end;
$$;

-- ---- the existing rows ------------------------------------------------------------

insert into execution_logs (org_id, id, flow_id, user_id, execution_id, step_key, status, inputs, outputs,
                            error, duration_ms, created_at, updated_at)
select org_id, id, flow_id, user_id, execution_id, step_key, status, inputs, outputs,
       error, duration_ms, created_at, updated_at
from execution_logs_unpartitioned;

insert into flow_runs (org_id, id, flow_id, flow_version, user_id, status, variables, plan, error,
                       idempotency_key, retry_of, root_run_id, run_after, cancel_requested, claims,
                       created_at, updated_at, started_at, finished_at)
select r.org_id, r.id, r.flow_id, r.flow_version, r.user_id,
       -- A running run of the old engine has no lease token: it queues again.
       case when r.status = 'running' then 'queued'::flow_run_status else r.status end,
       r.variables,
       jsonb_build_object('steps', v.steps, 'actions', coalesce((
           select jsonb_agg(jsonb_build_object(
                      'id', a.id, 'key', a.key, 'tool_id', a.tool_id, 'method', a.method, 'endpoint', a.endpoint,
                      'headers', a.headers, 'input_schema', a.input_schema, 'execute_if', a.execute_if,
                      'version', a.version, 'tool', jsonb_build_object('id', t.id, 'name', t.name,
                                                                        'base_url', t.base_url,
                                                                        'auth_type', t.auth_type,
                                                                        'honors_idempotency_key',
                                                                        t.honors_idempotency_key)))
           from actions a join tools t on t.org_id = a.org_id and t.id = a.tool_id
           where a.org_id = r.org_id), '[]')),
       r.error, r.idempotency_key, r.retry_of, coalesce(r.retry_of, r.id), r.run_after, r.cancel_requested,
       r.claims, r.created_at, r.updated_at, r.started_at, r.finished_at
from flow_runs_unpartitioned r
join flow_versions v on v.org_id = r.org_id and v.flow_id = r.flow_id and v.version = r.flow_version;

insert into flow_run_steps (org_id, run_id, run_created_at, step_id, status, attempt, inputs, outputs, error,
                            wake_at, started_at, finished_at, duration_ms, created_at, updated_at)
select s.org_id, s.run_id, r.created_at, s.step_id, s.status, s.attempt, s.inputs, s.outputs, s.error,
       s.wake_at, s.started_at, s.finished_at, s.duration_ms, s.created_at, s.updated_at
from flow_run_steps_unpartitioned s
join flow_runs_unpartitioned r on r.org_id = s.org_id and r.id = s.run_id;

-- squawk-ignore ban-drop-table
drop table flow_run_steps_unpartitioned;
-- squawk-ignore ban-drop-table
drop table flow_runs_unpartitioned;
-- squawk-ignore ban-drop-table
drop table execution_logs_unpartitioned;

-- ---- triggers, row-level security, grants -------------------------------------------

create trigger execution_logs_touch_updated_at
    before update on execution_logs
    for each row execute function tolstoy_touch_updated_at();
create trigger flow_runs_touch_updated_at
    before update on flow_runs
    for each row execute function tolstoy_touch_updated_at();
create trigger flow_run_steps_touch_updated_at
    before update on flow_run_steps
    for each row execute function tolstoy_touch_updated_at();
create trigger flow_runs_notify
    after insert or update of status, run_after on flow_runs
    for each row when (new.status = 'queued')
    execute function flow_runs_notify();

do $$
declare
    tenant_table text;
begin
    foreach tenant_table in array array['execution_logs', 'flow_runs', 'flow_run_steps'] loop
        execute format('alter table %I enable row level security', tenant_table);
        execute format('alter table %I force row level security', tenant_table);
        execute format(
            'create policy tenant_isolation on %I using (org_id = tolstoy_current_org()) '
            'with check (org_id = tolstoy_current_org())', tenant_table);
    end loop;
end;
$$;

-- The cross-tenant queue functions below run as tolstoy_engine.
grant select, update on flow_runs to tolstoy_engine;
grant select on flow_run_steps to tolstoy_engine;
grant insert on execution_logs to tolstoy_engine;
create policy engine_access on flow_runs to tolstoy_engine using (true) with check (true);
create policy engine_access on flow_run_steps to tolstoy_engine using (true);
create policy engine_access on execution_logs to tolstoy_engine using (true) with check (true);

-- ---- queueing ---------------------------------------------------------------------------

-- Queue a run of a flow version with its plan, and its first execution log row.
-- An Idempotency-Key (or, for a retry, the run retried) is looked up under an
-- advisory lock, so two concurrent requests with the same key make one run. A
-- retry repeats the original exactly (same plan, same root of the retry chain,
-- so the same Idempotency-Keys reach the tools) and starts with its completed
-- steps. Returns the run (the row itself: a statement calling this function
-- does not see the row it inserted) and whether it is new.
create function tolstoy_queue_run(org uuid, flow uuid, queue_run_version integer, actor uuid, vars jsonb,
                                  key text, retrying uuid)
returns table (run flow_runs, created boolean)
language plpgsql as $$
declare
    existing flow_runs;
    queued flow_runs;
    original flow_runs;
    steps jsonb;
    run_plan jsonb;
    root uuid;
    new_id uuid := gen_random_uuid();
    new_created_at timestamptz := now();
begin
    if key is not null then
        perform pg_advisory_xact_lock(hashtextextended(format('run-key:%s:%s:%s', org, flow, key), 0));
        select * into existing from flow_runs r
        where r.org_id = org and r.flow_id = flow and r.idempotency_key = key;
    elsif retrying is not null then
        perform pg_advisory_xact_lock(hashtextextended(format('run-retry:%s:%s', org, retrying), 0));
        select * into existing from flow_runs r where r.org_id = org and r.retry_of = retrying;
    end if;
    if existing.id is not null then
        run := existing;
        created := false;
        return next;
        return;
    end if;
    if retrying is not null then
        select * into original from flow_runs r where r.org_id = org and r.id = retrying;
        run_plan := original.plan;
        root := original.root_run_id;
    else
        select v.steps into steps from flow_versions v
        where v.org_id = org and v.flow_id = flow and v.version = queue_run_version;
        run_plan := jsonb_build_object('steps', steps, 'actions', coalesce((
            select jsonb_agg(jsonb_build_object(
                       'id', a.id, 'key', a.key, 'tool_id', a.tool_id, 'method', a.method, 'endpoint', a.endpoint,
                       'headers', a.headers, 'input_schema', a.input_schema, 'execute_if', a.execute_if,
                       'version', a.version, 'tool', jsonb_build_object('id', t.id, 'name', t.name,
                                                                         'base_url', t.base_url,
                                                                         'auth_type', t.auth_type,
                                                                        'honors_idempotency_key',
                                                                        t.honors_idempotency_key)))
            from actions a join tools t on t.org_id = a.org_id and t.id = a.tool_id
            where a.org_id = org
              and (a.key in (select jsonb_path_query(steps, 'strict $.**.actionKey') #>> '{}')
                   or a.id::text in (select jsonb_path_query(steps, 'strict $.**.actionId') #>> '{}'))), '[]'));
    end if;
    insert into flow_runs (org_id, id, flow_id, flow_version, user_id, variables, plan, idempotency_key,
                           retry_of, root_run_id, created_at)
    values (org, new_id, flow, queue_run_version, actor, vars, run_plan, key, retrying, coalesce(root, new_id),
            new_created_at)
    returning * into queued;
    if retrying is not null then
        -- Skipped by executeIf (no error) is final; skipped because a dependency failed is not.
        insert into flow_run_steps (org_id, run_id, run_created_at, step_id, status, attempt, inputs, outputs,
                                    sealed, error, started_at, finished_at, duration_ms)
        select s.org_id, new_id, new_created_at, s.step_id, s.status, s.attempt, s.inputs, s.outputs, s.sealed,
               s.error, s.started_at, s.finished_at, s.duration_ms
        from flow_run_steps s
        where s.org_id = org and s.run_id = retrying and s.run_created_at = original.created_at
          and (s.status = 'completed' or (s.status = 'skipped' and s.error is null));
    end if;
    insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
    values (org, flow, actor, new_id::text, '$flow', 'queued', vars);
    run := queued;
    created := true;
    return next;
end;
$$;

comment on function tolstoy_queue_run(uuid, uuid, integer, uuid, jsonb, text, uuid) is
    'Queues a run with its plan (steps + the actions they call, with their tools) and its queued log row, or '
    'returns the run an Idempotency-Key (or, for a retry, the retried run) already made. One retry per run.';

-- What a worker needs of a run it claimed: the run, its plan and its checkpoints
-- (sealed outputs as base64), so resuming costs no further query.
create function tolstoy_run_payload(r flow_runs) returns jsonb
language sql stable as $$
    select jsonb_build_object(
        'org_id', r.org_id, 'id', r.id, 'created_at', r.created_at, 'flow_id', r.flow_id,
        'flow_version', r.flow_version, 'user_id', r.user_id, 'variables', r.variables, 'plan', r.plan,
        'token', r.lease_token, 'root_run_id', r.root_run_id, 'claims', r.claims, 'recoveries', r.recoveries,
        'checkpoints', coalesce((
            select jsonb_agg(jsonb_build_object(
                       'step_id', s.step_id, 'status', s.status, 'attempt', s.attempt, 'inputs', s.inputs,
                       'outputs', s.outputs, 'sealed', encode(s.sealed, 'base64'), 'error', s.error,
                       'wake_at', s.wake_at, 'call_started_at', s.call_started_at)
                   order by s.started_at)
            from flow_run_steps s
            where s.org_id = r.org_id and s.run_id = r.id and s.run_created_at = r.created_at), '[]'))
$$;

comment on function tolstoy_run_payload(flow_runs) is 'A claimed run as a worker receives it: the row, its plan and its checkpoints.';

-- Claim up to max_runs runs of any organization: first runs whose worker
-- vanished (a recovery; past max_recoveries such a run fails instead, so a run
-- that kills its worker cannot kill them all), then due queued runs, each with
-- SKIP LOCKED under a new lease token. Also says when the next run falls due,
-- so an idle worker sleeps until then (or until NOTIFY wakes it).
create function tolstoy_claim_runs(worker text, max_runs integer, lease_seconds double precision,
                                   max_recoveries integer)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    claimed jsonb := '[]';
    lost record;
    due record;
    taken flow_runs;
    lease interval := make_interval(secs => lease_seconds);
    failure jsonb;
begin
    if worker is null or worker = '' or max_runs < 1 or max_runs > 1000 or lease_seconds <= 0
            or max_recoveries < 0 then
        raise exception 'tolstoy_claim_runs: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    for lost in
        select r.org_id, r.id, r.created_at, r.flow_id, r.user_id, r.recoveries
        from flow_runs r
        where r.status = 'running' and r.lease_expires_at < now()
        order by r.lease_expires_at
        limit max_runs
        for update skip locked
    loop
        if lost.recoveries >= max_recoveries then
            failure := jsonb_build_object(
                'name', 'RecoveryLimit',
                'message', format('The run stopped its worker %s times (the limit is %s); it is not tried again.',
                                  lost.recoveries + 1, max_recoveries));
            update flow_runs
            set status = 'failed', error = failure, finished_at = now(), recoveries = recoveries + 1,
                lease_owner = null, lease_token = null, lease_expires_at = null
            where org_id = lost.org_id and id = lost.id and created_at = lost.created_at;
            insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error)
            values (lost.org_id, lost.flow_id, lost.user_id, lost.id::text, '$flow', 'failed', '{}', failure);
        else
            update flow_runs
            set claims = claims + 1, lease_token = claims + 1, recoveries = recoveries + 1,
                lease_owner = worker, lease_expires_at = now() + lease
            where org_id = lost.org_id and id = lost.id and created_at = lost.created_at
            returning * into taken;
            claimed := claimed || tolstoy_run_payload(taken);
        end if;
    end loop;
    for due in
        select r.org_id, r.id, r.created_at
        from flow_runs r
        where r.status = 'queued' and r.run_after <= now()
        order by r.run_after
        limit max_runs - jsonb_array_length(claimed)
        for update skip locked
    loop
        update flow_runs
        set status = 'running', claims = claims + 1, lease_token = claims + 1, lease_owner = worker,
            lease_expires_at = now() + lease, started_at = coalesce(started_at, now())
        where org_id = due.org_id and id = due.id and created_at = due.created_at
        returning * into taken;
        if taken.claims = 1 then
            insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
            values (taken.org_id, taken.flow_id, taken.user_id, taken.id::text, '$flow', 'running', taken.variables);
        end if;
        claimed := claimed || tolstoy_run_payload(taken);
    end loop;
    return jsonb_build_object(
        'runs', claimed,
        'next_due', least((select min(r.run_after) from flow_runs r where r.status = 'queued'),
                          (select min(r.lease_expires_at) from flow_runs r where r.status = 'running')));
end;
$$;

comment on function tolstoy_claim_runs(text, integer, double precision, integer) is
    'Claims up to max_runs runs for worker (expired leases first, then due queued runs), returns them with '
    '{runs, next_due}; a run past max_recoveries fails instead.';

-- Heartbeat: extend the leases of the runs this worker is executing right now,
-- presenting each run's token; a lease that already expired is not renewed (it
-- may have been claimed by another worker). Returns the runs still held, and
-- whether a cancel was asked for, so it reaches a run within one heartbeat.
create function tolstoy_renew_leases(worker text, orgs uuid[], runs uuid[], tokens integer[],
                                     lease_seconds double precision)
returns table (run_id uuid, cancel boolean)
language sql security definer set search_path = public, pg_temp as $$
    update flow_runs r
    set lease_expires_at = now() + make_interval(secs => lease_seconds)
    from unnest(orgs, runs, tokens) as held(org_id, id, token)
    where r.org_id = held.org_id and r.id = held.id and r.lease_owner = worker and r.lease_token = held.token
      and r.status = 'running' and r.lease_expires_at > now() and lease_seconds > 0
    returning r.id, r.cancel_requested
$$;

comment on function tolstoy_renew_leases(text, uuid[], uuid[], integer[], double precision) is
    'Heartbeat: renews the unexpired leases the worker holds with these tokens; returns them with cancel flags.';

-- One engine step is one call of this function: it checks the lease (owner,
-- token, not expired; TL001 otherwise), writes the step checkpoints and the
-- execution log events, and moves the run (continue with a longer lease,
-- pause until a time, wait for a person, or finish), all in one transaction.
--
-- writes = {"lease_seconds": n,
--           "steps": [{step_id, status, attempt, inputs, outputs, sealed (base64), error,
--                      wake_in_ms, call_started, duration_ms}],
--           "events": [{step_key, status, inputs, error, duration_ms}],
--           "run": {"action": "continue" | "pause" | "wait" | "finish", "after_ms": n,
--                   "status": ..., "error": ...}}
create function tolstoy_checkpoint(worker text, org uuid, run uuid, token integer, writes jsonb)
returns jsonb
language plpgsql as $$
declare
    current flow_runs;
    step jsonb;
    event jsonb;
    transition jsonb := coalesce(writes -> 'run', '{"action": "continue"}');
    outcome text;
begin
    perform set_config('app.org_id', org::text, true);
    select * into current from flow_runs r
    where r.org_id = org and r.id = run and r.lease_owner = worker and r.lease_token = token
      and r.status = 'running' and r.lease_expires_at > now()
    for update;
    if not found then
        raise exception 'The lease on run % is lost.', run using errcode = 'TL001';
    end if;
    for step in select * from jsonb_array_elements(coalesce(writes -> 'steps', '[]')) loop
        insert into flow_run_steps as s (org_id, run_id, run_created_at, step_id, status, attempt, inputs, outputs,
                                         sealed, error, wake_at, call_started_at, started_at, finished_at,
                                         duration_ms)
        values (org, run, current.created_at, step ->> 'step_id', step ->> 'status',
                coalesce((step ->> 'attempt')::integer, 1), step -> 'inputs', step -> 'outputs',
                decode(step ->> 'sealed', 'base64'), step -> 'error',
                now() + make_interval(secs => (step ->> 'wake_in_ms')::double precision / 1000),
                case when (step ->> 'call_started')::boolean then now() end,
                -- Steps checkpointed together keep their order (now() is the same for all of them).
                clock_timestamp(),
                case when step ->> 'status' in ('completed', 'skipped', 'failed') then clock_timestamp() end,
                (step ->> 'duration_ms')::integer)
        on conflict (org_id, run_id, step_id, run_created_at) do update
        set status = excluded.status, attempt = excluded.attempt,
            inputs = coalesce(excluded.inputs, s.inputs), outputs = excluded.outputs, sealed = excluded.sealed,
            error = excluded.error, wake_at = excluded.wake_at,
            call_started_at = case when excluded.status = 'running' then excluded.call_started_at
                                   else s.call_started_at end,
            finished_at = excluded.finished_at, duration_ms = excluded.duration_ms,
            started_at = case when s.status in ('completed', 'skipped', 'failed') then now() else s.started_at end;
    end loop;
    for event in select * from jsonb_array_elements(coalesce(writes -> 'events', '[]')) loop
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error,
                                    duration_ms, created_at)
        values (org, current.flow_id, current.user_id, run::text, event ->> 'step_key',
                (event ->> 'status')::execution_status, coalesce(event -> 'inputs', '{}'),
                nullif(event -> 'error', 'null'), (event ->> 'duration_ms')::integer, clock_timestamp());
    end loop;
    case transition ->> 'action'
        when 'continue' then
            update flow_runs
            set lease_expires_at = now() + make_interval(secs => coalesce((writes ->> 'lease_seconds')::double precision,
                                                                          30))
            where org_id = org and id = run and created_at = current.created_at;
        when 'pause' then
            -- A cancel asked for while the step ran ends the run instead of sleeping.
            outcome := case when current.cancel_requested then 'cancelled' else 'queued' end;
            update flow_runs
            set status = outcome::flow_run_status,
                run_after = now() + make_interval(secs => coalesce((transition ->> 'after_ms')::double precision, 0)
                                                         / 1000),
                finished_at = case when outcome = 'cancelled' then now() end,
                error = case when outcome = 'cancelled' then '{"message": "Cancelled"}'::jsonb else error end,
                lease_owner = null, lease_token = null, lease_expires_at = null
            where org_id = org and id = run and created_at = current.created_at;
            if outcome = 'cancelled' then
                insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error)
                values (org, current.flow_id, current.user_id, run::text, '$flow', 'cancelled', '{}',
                        '{"message": "Cancelled"}');
            end if;
        when 'wait' then
            update flow_runs
            set status = 'waiting', lease_owner = null, lease_token = null, lease_expires_at = null
            where org_id = org and id = run and created_at = current.created_at;
        when 'finish' then
            update flow_runs
            set status = (transition ->> 'status')::flow_run_status, error = nullif(transition -> 'error', 'null'),
                finished_at = now(), lease_owner = null, lease_token = null, lease_expires_at = null
            where org_id = org and id = run and created_at = current.created_at;
        else
            raise exception 'tolstoy_checkpoint: unknown run action %', transition ->> 'action'
                using errcode = 'invalid_parameter_value';
    end case;
    return jsonb_build_object('cancel', current.cancel_requested);
end;
$$;

comment on function tolstoy_checkpoint(text, uuid, uuid, integer, jsonb) is
    'One engine step: checks the worker''s lease (TL001 when lost), writes step checkpoints and log events, and '
    'moves the run (continue, pause, wait, finish) in one transaction. Acts for org under row-level security.';

-- Retention, run by a worker on a schedule: monthly partitions are created
-- months_ahead ahead, and those wholly older than retention_days are dropped
-- (runs and their steps together; a month that still holds an unfinished run is
-- kept and reported). Nothing is deleted row by row. Runs as the owner of the
-- tables (only an owner may create or drop partitions); one caller at a time.
create function tolstoy_maintain_history(today date, retention_days integer, months_ahead integer)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    cutoff date;
    created integer;
    dropped text[] := '{}';
    kept text[] := '{}';
    part record;
    busy boolean;
begin
    if today is null or months_ahead < 0 or months_ahead > 24 or retention_days < 1 then
        raise exception 'tolstoy_maintain_history: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    if not pg_try_advisory_xact_lock(hashtextextended('tolstoy_maintain_history', 0)) then
        return jsonb_build_object('skipped', true);
    end if;
    -- Waiting behind live traffic is worse than trying again at the next tick.
    perform set_config('lock_timeout', '5s', true);
    created := tolstoy_ensure_partitions(date_trunc('month', today)::date, months_ahead + 1);
    if retention_days is not null then
        cutoff := today - retention_days;
        for part in
            select c.relname, to_date(substring(c.relname from '_p(\d{4}_\d{2})$'), 'YYYY_MM') as month,
                   p.relname as parent
            from pg_inherits i
            join pg_class c on c.oid = i.inhrelid
            join pg_class p on p.oid = i.inhparent
            where p.relname in ('flow_runs', 'execution_logs') and c.relname ~ '_p\d{4}_\d{2}$'
            order by 2
        loop
            continue when (part.month + interval '1 month')::date > cutoff;
            if part.parent = 'flow_runs' then
                execute format('select exists (select 1 from %I where status in (''queued'', ''running'', ''waiting''))',
                               part.relname) into busy;
                if busy then
                    kept := kept || part.relname;
                    continue;
                end if;
                execute format('drop table if exists %I', 'flow_run_steps_p' || to_char(part.month, 'YYYY_MM'));
                dropped := dropped || ('flow_run_steps_p' || to_char(part.month, 'YYYY_MM'));
            end if;
            execute format('drop table %I', part.relname);
            dropped := dropped || part.relname;
        end loop;
    end if;
    return jsonb_build_object('created', created, 'dropped', to_jsonb(dropped), 'kept', to_jsonb(kept));
end;
$$;

comment on function tolstoy_maintain_history(date, integer, integer) is
    'Creates monthly history partitions ahead and drops those older than retention_days (null: keep all); '
    'returns {created, dropped, kept}.';

create function tolstoy_queue_stats()
returns table (queued bigint, due bigint, oldest_due_age_seconds double precision)
language sql stable security definer set search_path = public, pg_temp as $$
    select count(*),
           count(*) filter (where run_after <= now()),
           coalesce(extract(epoch from now() - min(run_after) filter (where run_after <= now())), 0)::float8
    from flow_runs
    where status = 'queued'
$$;

comment on function tolstoy_queue_stats() is
    'Queue depth across organizations for /metrics: queued runs, due ones, age of the oldest due one.';

alter function tolstoy_claim_runs(text, integer, double precision, integer) owner to tolstoy_engine;
alter function tolstoy_renew_leases(text, uuid[], uuid[], integer[], double precision) owner to tolstoy_engine;
alter function tolstoy_queue_stats() owner to tolstoy_engine;
revoke execute on function tolstoy_claim_runs(text, integer, double precision, integer) from public;
revoke execute on function tolstoy_renew_leases(text, uuid[], uuid[], integer[], double precision) from public;
revoke execute on function tolstoy_queue_stats() from public;
revoke execute on function tolstoy_maintain_history(date, integer, integer) from public;
revoke execute on function tolstoy_ensure_partitions(date, integer) from public;

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '300s';

drop function tolstoy_queue_stats();
drop function tolstoy_maintain_history(date, integer, integer);
drop function tolstoy_checkpoint(text, uuid, uuid, integer, jsonb);
drop function tolstoy_renew_leases(text, uuid[], uuid[], integer[], double precision);
drop function tolstoy_claim_runs(text, integer, double precision, integer);
drop function tolstoy_run_payload(flow_runs);
drop function tolstoy_queue_run(uuid, uuid, integer, uuid, jsonb, text, uuid);

-- squawk-ignore renaming-table
alter table flow_run_steps rename to flow_run_steps_partitioned;
-- squawk-ignore renaming-object
alter index flow_run_steps_pkey rename to flow_run_steps_partitioned_pkey;
-- squawk-ignore renaming-table
alter table flow_runs rename to flow_runs_partitioned;
-- squawk-ignore renaming-object
alter index flow_runs_pkey rename to flow_runs_partitioned_pkey;
-- squawk-ignore renaming-object
alter index flow_runs_org_id_flow_id_created_at_id_idx rename to flow_runs_partitioned_flow_idx;
-- squawk-ignore renaming-object
alter index flow_runs_org_id_user_id_idx rename to flow_runs_partitioned_user_idx;
-- squawk-ignore renaming-object
alter index flow_runs_queued_run_after_idx rename to flow_runs_partitioned_queued_idx;
-- squawk-ignore renaming-object
alter index flow_runs_running_lease_expires_at_idx rename to flow_runs_partitioned_lease_idx;
-- squawk-ignore renaming-object
alter index flow_runs_org_id_retry_of_idx rename to flow_runs_partitioned_retry_idx;
-- squawk-ignore renaming-object
alter index flow_runs_org_id_flow_id_idempotency_key_idx rename to flow_runs_partitioned_key_idx;
-- squawk-ignore renaming-object
alter index flow_runs_org_id_id_idx rename to flow_runs_partitioned_id_idx;
-- squawk-ignore renaming-table
alter table execution_logs rename to execution_logs_partitioned;
-- squawk-ignore renaming-object
alter index execution_logs_org_id_id_idx rename to execution_logs_partitioned_id_idx;
-- squawk-ignore renaming-object
alter index execution_logs_pkey rename to execution_logs_partitioned_pkey;
-- squawk-ignore renaming-object
alter index execution_logs_org_id_created_at_id_idx rename to execution_logs_partitioned_created_idx;
-- squawk-ignore renaming-object
alter index execution_logs_org_id_flow_id_created_at_id_idx rename to execution_logs_partitioned_flow_idx;
-- squawk-ignore renaming-object
alter index execution_logs_org_id_execution_id_created_at_id_idx rename to execution_logs_partitioned_execution_idx;
-- squawk-ignore renaming-object
alter index execution_logs_org_id_user_id_created_at_id_idx rename to execution_logs_partitioned_user_idx;
-- squawk-ignore renaming-object
alter index execution_logs_org_id_status_created_at_id_idx rename to execution_logs_partitioned_status_idx;

create table execution_logs (
    org_id uuid not null,
    id uuid not null default gen_random_uuid(),
    flow_id uuid,
    user_id uuid,
    execution_id text not null,
    step_key text not null,
    status execution_status not null,
    inputs jsonb not null,
    outputs jsonb,
    error jsonb,
    duration_ms integer,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint execution_logs_pkey primary key (org_id, id),
    constraint execution_logs_flow_id_fkey foreign key (org_id, flow_id)
        references flows (org_id, id) on delete restrict,
    constraint execution_logs_user_id_fkey foreign key (org_id, user_id)
        references users (org_id, id) on delete restrict,
    constraint execution_logs_execution_id_length check (char_length(execution_id) between 1 and 200),
    constraint execution_logs_step_key_length check (char_length(step_key) between 1 and 200),
    constraint execution_logs_inputs_object check (jsonb_typeof(inputs) = 'object'),
    constraint execution_logs_outputs_object check (outputs is null or jsonb_typeof(outputs) = 'object')
);
create index execution_logs_org_id_created_at_id_idx on execution_logs (org_id, created_at desc, id desc);
create index execution_logs_org_id_flow_id_created_at_id_idx
    on execution_logs (org_id, flow_id, created_at desc, id desc);
create index execution_logs_org_id_execution_id_created_at_id_idx
    on execution_logs (org_id, execution_id, created_at desc, id desc);
create index execution_logs_org_id_user_id_created_at_id_idx
    on execution_logs (org_id, user_id, created_at desc, id desc);
create index execution_logs_org_id_status_created_at_id_idx
    on execution_logs (org_id, status, created_at desc, id desc);
insert into execution_logs select org_id, id, flow_id, user_id, execution_id, step_key, status, inputs, outputs,
                                  error, duration_ms, created_at, updated_at
                           from execution_logs_partitioned;

create table flow_runs (
    org_id uuid not null,
    id uuid not null default gen_random_uuid(),
    flow_id uuid not null,
    flow_version integer not null,
    user_id uuid,
    status flow_run_status not null default 'queued',
    variables jsonb not null default '{}',
    outputs jsonb,
    error jsonb,
    idempotency_key text,
    retry_of uuid,
    run_after timestamptz not null default now(),
    cancel_requested boolean not null default false,
    claims integer not null default 0,
    lease_owner text,
    lease_expires_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    started_at timestamptz,
    finished_at timestamptz,
    constraint flow_runs_pkey primary key (org_id, id),
    constraint flow_runs_flow_version_fkey foreign key (org_id, flow_id, flow_version)
        references flow_versions (org_id, flow_id, version) on delete restrict,
    constraint flow_runs_flow_id_fkey foreign key (org_id, flow_id)
        references flows (org_id, id) on delete restrict,
    constraint flow_runs_user_id_fkey foreign key (org_id, user_id)
        references users (org_id, id) on delete restrict,
    constraint flow_runs_retry_of_fkey foreign key (org_id, retry_of)
        references flow_runs (org_id, id) on delete restrict,
    constraint flow_runs_variables_object check (jsonb_typeof(variables) = 'object'),
    constraint flow_runs_idempotency_key_length check (char_length(idempotency_key) between 1 and 200),
    constraint flow_runs_lease_complete check ((lease_owner is null) = (lease_expires_at is null))
);
create unique index flow_runs_org_id_flow_id_idempotency_key_key
    on flow_runs (org_id, flow_id, idempotency_key) where idempotency_key is not null;
create index flow_runs_org_id_flow_id_created_at_id_idx on flow_runs (org_id, flow_id, created_at desc, id desc);
create index flow_runs_org_id_user_id_idx on flow_runs (org_id, user_id);
create index flow_runs_org_id_retry_of_idx on flow_runs (org_id, retry_of);
create index flow_runs_queued_run_after_idx on flow_runs (run_after) where status = 'queued';
create index flow_runs_running_lease_expires_at_idx on flow_runs (lease_expires_at) where status = 'running';
-- The old engine knows no 'waiting' (the enum keeps the value: PostgreSQL cannot drop one).
insert into flow_runs (org_id, id, flow_id, flow_version, user_id, status, variables, error, idempotency_key,
                       retry_of, run_after, cancel_requested, claims, created_at, updated_at, started_at, finished_at)
select org_id, id, flow_id, flow_version, user_id,
       case when status in ('running', 'waiting') then 'queued'::flow_run_status else status end,
       variables, error, idempotency_key, retry_of, run_after, cancel_requested, claims, created_at, updated_at,
       started_at, finished_at
from flow_runs_partitioned
order by created_at;

create table flow_run_steps (
    org_id uuid not null,
    run_id uuid not null,
    step_id text not null,
    status text not null,
    attempt integer not null default 1,
    inputs jsonb,
    outputs jsonb,
    error jsonb,
    wake_at timestamptz,
    started_at timestamptz not null default now(),
    finished_at timestamptz,
    duration_ms integer,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint flow_run_steps_pkey primary key (org_id, run_id, step_id),
    constraint flow_run_steps_run_id_fkey foreign key (org_id, run_id)
        references flow_runs (org_id, id) on delete cascade,
    constraint flow_run_steps_status check (status in ('running', 'waiting', 'completed', 'failed', 'skipped')),
    constraint flow_run_steps_attempt_positive check (attempt >= 1)
);
insert into flow_run_steps (org_id, run_id, step_id, status, attempt, inputs, outputs, error, wake_at, started_at,
                            finished_at, duration_ms, created_at, updated_at)
select org_id, run_id, step_id,
       case when status = 'outcome_unknown' then 'running' else status end,
       attempt, inputs, outputs, error, wake_at, started_at, finished_at, duration_ms, created_at, updated_at
from flow_run_steps_partitioned;

drop table flow_run_steps_partitioned;
drop table flow_runs_partitioned;
drop table execution_logs_partitioned;
drop function tolstoy_ensure_partitions(date, integer);
alter table tools drop column honors_idempotency_key;

create trigger execution_logs_touch_updated_at
    before update on execution_logs
    for each row execute function tolstoy_touch_updated_at();
create trigger flow_runs_touch_updated_at
    before update on flow_runs
    for each row execute function tolstoy_touch_updated_at();
create trigger flow_run_steps_touch_updated_at
    before update on flow_run_steps
    for each row execute function tolstoy_touch_updated_at();
create trigger flow_runs_notify
    after insert or update of status, run_after on flow_runs
    for each row when (new.status = 'queued')
    execute function flow_runs_notify();

do $$
declare
    tenant_table text;
begin
    foreach tenant_table in array array['execution_logs', 'flow_runs', 'flow_run_steps'] loop
        execute format('alter table %I enable row level security', tenant_table);
        execute format('alter table %I force row level security', tenant_table);
        execute format(
            'create policy tenant_isolation on %I using (org_id = tolstoy_current_org()) '
            'with check (org_id = tolstoy_current_org())', tenant_table);
    end loop;
end;
$$;

grant select, update on flow_runs to tolstoy_engine;
create policy engine_access on flow_runs to tolstoy_engine using (true) with check (true);

create function tolstoy_claim_runs(worker text, max_runs integer, lease_seconds double precision)
returns table (org_id uuid, id uuid, flow_id uuid, flow_version integer, user_id uuid,
               variables jsonb, claims integer)
language sql security definer set search_path = public, pg_temp as $$
    with due as (
        select r.org_id, r.id
        from flow_runs r
        where (r.status = 'queued' and r.run_after <= now())
           or (r.status = 'running' and r.lease_expires_at < now())
        order by r.run_after, r.created_at
        limit max_runs
        for update skip locked
    )
    update flow_runs r
    set status = 'running',
        claims = r.claims + 1,
        lease_owner = worker,
        lease_expires_at = now() + make_interval(secs => lease_seconds),
        started_at = coalesce(r.started_at, now())
    from due
    where r.org_id = due.org_id and r.id = due.id
    returning r.org_id, r.id, r.flow_id, r.flow_version, r.user_id, r.variables, r.claims
$$;

create function tolstoy_renew_leases(worker text, lease_seconds double precision) returns integer
language sql security definer set search_path = public, pg_temp as $$
    with renewed as (
        update flow_runs
        set lease_expires_at = now() + make_interval(secs => lease_seconds)
        where lease_owner = worker and status = 'running'
        returning 1
    )
    select count(*)::integer from renewed
$$;

create function tolstoy_next_wake() returns timestamptz
language sql stable security definer set search_path = public, pg_temp as $$
    select min(run_after) from flow_runs where status = 'queued'
$$;

create function tolstoy_queue_stats()
returns table (queued bigint, due bigint, oldest_due_age_seconds double precision)
language sql stable security definer set search_path = public, pg_temp as $$
    select count(*),
           count(*) filter (where run_after <= now()),
           coalesce(extract(epoch from now() - min(run_after) filter (where run_after <= now())), 0)::float8
    from flow_runs
    where status = 'queued'
$$;

alter function tolstoy_claim_runs(text, integer, double precision) owner to tolstoy_engine;
alter function tolstoy_renew_leases(text, double precision) owner to tolstoy_engine;
alter function tolstoy_next_wake() owner to tolstoy_engine;
alter function tolstoy_queue_stats() owner to tolstoy_engine;
revoke execute on function tolstoy_claim_runs(text, integer, double precision) from public;
revoke execute on function tolstoy_renew_leases(text, double precision) from public;
revoke execute on function tolstoy_next_wake() from public;
revoke execute on function tolstoy_queue_stats() from public;
