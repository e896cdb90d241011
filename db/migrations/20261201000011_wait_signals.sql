-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Two step features of the engine (issue 14): runs that wait for a signal, and
-- flow-level failure handlers.
--
-- * flow_run_signals: a signal sent to a run (POST …/signals/{signal}, or an
--   approval link), stored in the same transaction that wakes the run. The
--   wait step that consumes it records its id (step_id), so a worker that dies
--   after taking a signal takes the same one again. Idempotency-Keys and
--   approval links are unique per run.
-- * flows.on_failure / flow_versions.on_failure: the steps a run executes when
--   it fails. They are part of a flow's definition: changing them makes a new
--   version, like steps. A run's plan gets them (with the actions they call)
--   when it is queued, by a trigger, so whatever queues a run need not know.
-- * tolstoy_take_signal: the wait step's read, which first locks the run's row
--   so it serializes with a signal being stored (the API locks the same row):
--   a run never parks while a signal for it is being committed.
--
-- No existing function of the queue (claim, checkpoint, renew) changes; a
-- waiting run is parked as a sleeping one (queued, run_after = its timeout).
--
-- Two existing things change: tolstoy_queue_run no longer copies the
-- original's onFailure checkpoints into a retry (they run again if the retry
-- fails), and the signals of runs dropped past retention are deleted
-- (tolstoy_prune_signals, called with tolstoy_maintain_history).

-- ---- onFailure in flow definitions ------------------------------------------------

-- A new column is all null: its check has nothing to scan.
alter table flows add column on_failure jsonb
    constraint flows_on_failure_array check (on_failure is null or jsonb_typeof(on_failure) = 'array');
alter table flow_versions add column on_failure jsonb;

comment on column flows.on_failure is
    'Steps run when a run of the flow fails (validated by the API); null: none. Versioned with steps.';
comment on column flow_versions.on_failure is 'The onFailure steps of this version (null: none).';

-- Same as before, with on_failure: a new version when steps or onFailure change.
create or replace function flows_bump_version() returns trigger
language plpgsql as $$
begin
    if new.steps is distinct from old.steps or new.on_failure is distinct from old.on_failure then
        new.version := old.version + 1;
    else
        new.version := old.version;
    end if;
    return new;
end;
$$;

comment on function flows_bump_version() is 'BEFORE UPDATE trigger: version + 1 when steps or on_failure change.';

create or replace function flows_record_version() returns trigger
language plpgsql as $$
begin
    if tg_op = 'INSERT' or new.version <> old.version then
        insert into flow_versions (org_id, flow_id, version, steps, on_failure)
        values (new.org_id, new.id, new.version, new.steps, new.on_failure);
    end if;
    return null;
end;
$$;

comment on function flows_record_version() is
    'AFTER INSERT/UPDATE trigger: stores each new version of steps (and on_failure) in flow_versions.';

-- A run's plan gets its version's onFailure steps, and the actions they call
-- that its steps do not (as tolstoy_queue_run copies them: with their tools).
-- A retry copies the original's plan, which has them already.
create function flow_runs_plan_on_failure() returns trigger
language plpgsql as $$
declare
    handlers jsonb;
begin
    if new.plan ? 'onFailure' then
        return new;
    end if;
    select v.on_failure into handlers
    from flow_versions v
    where v.org_id = new.org_id and v.flow_id = new.flow_id and v.version = new.flow_version;
    if handlers is null then
        return new;
    end if;
    new.plan := new.plan || jsonb_build_object(
        'onFailure', handlers,
        'actions', coalesce(new.plan -> 'actions', '[]') || coalesce((
            select jsonb_agg(jsonb_build_object(
                       'id', a.id, 'key', a.key, 'tool_id', a.tool_id, 'method', a.method, 'endpoint', a.endpoint,
                       'headers', a.headers, 'input_schema', a.input_schema, 'execute_if', a.execute_if,
                       'version', a.version, 'tool', jsonb_build_object('id', t.id, 'name', t.name,
                                                                         'base_url', t.base_url,
                                                                         'auth_type', t.auth_type,
                                                                         'honors_idempotency_key',
                                                                         t.honors_idempotency_key)))
            from actions a join tools t on t.org_id = a.org_id and t.id = a.tool_id
            where a.org_id = new.org_id
              and (a.key in (select jsonb_path_query(handlers, 'strict $.**.actionKey') #>> '{}')
                   or a.id::text in (select jsonb_path_query(handlers, 'strict $.**.actionId') #>> '{}'))
              and a.id::text not in (select jsonb_path_query(coalesce(new.plan -> 'actions', '[]'),
                                                             'strict $[*].id') #>> '{}')), '[]'));
    return new;
end;
$$;

comment on function flow_runs_plan_on_failure() is
    'BEFORE INSERT trigger on flow_runs: adds the version''s onFailure steps (and the actions they call) to the plan.';

create trigger flow_runs_plan_on_failure
    before insert on flow_runs
    for each row execute function flow_runs_plan_on_failure();

-- A retry starts with the original's completed steps, but not with its onFailure
-- steps (checkpoints "onFailure.<id>"): they ran for the original's failure,
-- and run again only if the retry fails too. Otherwise as in durable_engine.
create or replace function tolstoy_queue_run(org uuid, flow uuid, queue_run_version integer, actor uuid, vars jsonb,
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
          and (s.status = 'completed' or (s.status = 'skipped' and s.error is null))
          -- The original's failure handlers ran for its failure, not for this run's.
          and s.step_id not like 'onFailure.%';
    end if;
    insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
    values (org, flow, actor, new_id::text, '$flow', 'queued', vars);
    run := queued;
    created := true;
    return next;
end;
$$;

-- ---- signals ----------------------------------------------------------------------

create table flow_run_signals (
    org_id uuid not null,
    id uuid not null default gen_random_uuid(),
    run_id uuid not null,
    signal text not null,
    payload jsonb,
    -- Who sent it: the acting user (X-User-ID) through the API, or the approver named by a link.
    user_id uuid,
    approver text,
    idempotency_key text,
    link_id uuid,
    -- The wait step that took it (its checkpoint id), and when.
    step_id text,
    consumed_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint flow_run_signals_pkey primary key (org_id, id),
    constraint flow_run_signals_user_id_fkey foreign key (org_id, user_id)
        references users (org_id, id) on delete restrict,
    constraint flow_run_signals_signal_format check (signal ~ '^[A-Za-z0-9_.-]{1,100}$'),
    constraint flow_run_signals_idempotency_key_length check (char_length(idempotency_key) between 1 and 200),
    constraint flow_run_signals_approver_length check (char_length(approver) between 1 and 320),
    constraint flow_run_signals_consumed check ((step_id is null) = (consumed_at is null))
);

comment on table flow_run_signals is
    'Signals sent to runs (API or approval link); a wait step of the run takes the oldest one of its name.';
comment on column flow_run_signals.run_id is 'flow_runs.id (no foreign key across monthly partitions).';
comment on column flow_run_signals.payload is 'What the wait step that takes the signal returns.';
comment on column flow_run_signals.idempotency_key is 'Idempotency-Key of the request: a repeat answers this row.';
comment on column flow_run_signals.link_id is 'The approval link used (each link delivers at most one signal).';
comment on column flow_run_signals.step_id is 'Checkpoint id of the wait step that took the signal; null while pending.';

create index flow_run_signals_org_id_run_id_signal_idx on flow_run_signals (org_id, run_id, signal, created_at);
create unique index flow_run_signals_idempotency_key_key
    on flow_run_signals (org_id, run_id, idempotency_key) where idempotency_key is not null;
create unique index flow_run_signals_link_id_key on flow_run_signals (org_id, link_id) where link_id is not null;

create trigger flow_run_signals_touch_updated_at
    before update on flow_run_signals
    for each row execute function tolstoy_touch_updated_at();

alter table flow_run_signals enable row level security;
alter table flow_run_signals force row level security;
create policy tenant_isolation on flow_run_signals
    using (org_id = tolstoy_current_org()) with check (org_id = tolstoy_current_org());

-- The wait step's read: lock the run's row (a signal is stored under the same
-- lock, so it is either committed before this reads, or stored after the run
-- parked and then wakes it), then take the oldest pending signal of that name,
-- or the one this step took already (a worker died before checkpointing it).
-- Acts for org under row-level security, like tolstoy_checkpoint.
create function tolstoy_take_signal(org uuid, run uuid, step text, signal_name text)
returns table (id uuid, payload jsonb, approver text, user_id uuid, created_at timestamptz)
language plpgsql as $$
begin
    perform 1 from flow_runs r where r.org_id = org and r.id = run for update;
    -- A new statement, so a new snapshot: it sees a signal committed while this waited for the lock.
    return query
    update flow_run_signals s
    set step_id = step, consumed_at = coalesce(s.consumed_at, now())
    where s.org_id = org and s.id = (
        select p.id from flow_run_signals p
        where p.org_id = org and p.run_id = run and p.signal = signal_name
          and (p.step_id is null or p.step_id = step)
        order by p.step_id is null, p.created_at
        limit 1
        for update)
    returning s.id, s.payload, s.approver, s.user_id, s.created_at;
end;
$$;

comment on function tolstoy_take_signal(uuid, uuid, text, text) is
    'A wait step''s signal: locks the run, then takes the oldest pending signal of the name (or the one the '
    'step took before); no row when none is pending.';

revoke execute on function tolstoy_take_signal(uuid, uuid, text, text) from public;

-- ---- retention ----------------------------------------------------------------------

-- Signals go with their runs: a purge deletes them (sql/runs.sql purge); those
-- of runs whose monthly partition tolstoy_maintain_history dropped (it drops,
-- it does not delete) are deleted here, by the workers' upkeep in the same
-- statement (sql/runs.sql maintain_history), at most batch per call. A signal is
-- never older than its run, so one older than retention_days whose run is gone
-- went with a dropped partition. Crosses tenants: runs as tolstoy_engine.
create index flow_run_signals_created_at_idx on flow_run_signals (created_at);

grant select, delete on flow_run_signals to tolstoy_engine;
create policy engine_access on flow_run_signals to tolstoy_engine using (true);

create function tolstoy_prune_signals(retention_days integer, batch integer)
returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    pruned integer;
begin
    if retention_days < 1 or batch is null or batch < 1 or batch > 100000 then
        raise exception 'tolstoy_prune_signals: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    if retention_days is null then
        return 0;
    end if;
    delete from flow_run_signals g
    where (g.org_id, g.id) in (
        select s.org_id, s.id from flow_run_signals s
        where s.created_at < now() - make_interval(days => retention_days)
          and not exists (select 1 from flow_runs r where r.org_id = s.org_id and r.id = s.run_id)
        limit batch);
    get diagnostics pruned = row_count;
    return pruned;
end;
$$;

comment on function tolstoy_prune_signals(integer, integer) is
    'Deletes up to batch signals older than retention_days whose run is gone (its partition was dropped).';

alter function tolstoy_prune_signals(integer, integer) owner to tolstoy_engine;
revoke execute on function tolstoy_prune_signals(integer, integer) from public;

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop function tolstoy_prune_signals(integer, integer);
drop function tolstoy_take_signal(uuid, uuid, text, text);

-- tolstoy_queue_run as durable_engine defined it.
create or replace function tolstoy_queue_run(org uuid, flow uuid, queue_run_version integer, actor uuid, vars jsonb,
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

drop table flow_run_signals;
drop trigger flow_runs_plan_on_failure on flow_runs;
drop function flow_runs_plan_on_failure();

create or replace function flows_record_version() returns trigger
language plpgsql as $$
begin
    if tg_op = 'INSERT' or new.version <> old.version then
        insert into flow_versions (org_id, flow_id, version, steps)
        values (new.org_id, new.id, new.version, new.steps);
    end if;
    return null;
end;
$$;

comment on function flows_record_version() is 'AFTER INSERT/UPDATE trigger: stores each new version of steps in flow_versions.';

create or replace function flows_bump_version() returns trigger
language plpgsql as $$
begin
    if new.steps is distinct from old.steps then
        new.version := old.version + 1;
    else
        new.version := old.version;
    end if;
    return new;
end;
$$;

comment on function flows_bump_version() is 'BEFORE UPDATE trigger: version + 1 when steps change.';

alter table flow_versions drop column on_failure;
alter table flows drop column on_failure;
