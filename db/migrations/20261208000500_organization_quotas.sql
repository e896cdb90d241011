-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic. The index below reads every
-- partition of flow_runs once (see there), hence the longer statement timeout.
set local lock_timeout = '5s';
set local statement_timeout = '300s';

-- Quotas per organization (issue 21): nothing limited what one organization may hold. The operator
-- sets defaults in configuration and overrides per organization; over a quota, a new run is refused
-- (the API answers 429 naming the quota) and nothing of it is written.
--
-- * organization_quotas: the operator's overrides, one row per organization (null: the default).
--   Written by the admin login (tolstoy_admin, PUT /organizations/{id}/quotas) as that organization.
-- * The defaults reach SQL as the transaction setting tolstoy.quotas, a JSON object the services set
--   with the tenant in each unit of work's first statement (sql/session.sql):
--   {"queuedRuns": n, "storedBytes": n, "retentionDays": n | null}. A session that does not set it (a
--   DBA's psql) is bound by the overrides only.
-- * tolstoy_admit_run(org), called by tolstoy_queue_run before it writes a new run (never for the run
--   an Idempotency-Key or a retry already made), is the one gate every new run passes: execute, retry,
--   webhook triggers, schedules (tolstoy_fire_schedules), subflow children (tolstoy_subflow). It raises
--   TQ001 (queuedRuns) or TQ002 (storedBytes), with the quota, its limit and the usage as JSON in the
--   error's DETAIL; the statement fails, so nothing of the run is written.
-- * queuedRuns counts the runs not finished: queued (or sleeping), running, or waiting (for a signal,
--   a child, a resolution). A waiting run goes back to the queue by itself, never through admission,
--   so counting it is what makes the bound exact: new runs are the only way the count rises.
--   organization_usage.runs is an upper bound of that count, raised by each admission under the
--   row's lock (so two admissions of one organization never both pass the last free place) and
--   replaced by an exact count (flow_runs_org_id_unfinished_idx) only when the bound reaches the quota.
-- * storedBytes counts the run history of the months within retention: the sizes as stored
--   (pg_column_size: compressed, out of line included) of a run's variables, plan and error, its steps'
--   inputs, outputs, sealed outputs and errors, and its execution log rows' inputs, outputs and errors.
--   A run is measured once, when it finishes (flow_runs_count_stored_bytes writes flow_runs.stored_bytes
--   and a delta row), so runs in flight count from their end; deleting finished runs (the purge) writes
--   the negative delta. Log rows of no run (a client's, POST /execution-logs; a direct action call's)
--   count when written, changed or deleted (execution_logs_count_stored_bytes). history_bytes is
--   append-only for the writers (no lock, so no writer ever waits on another or deadlocks); admission
--   folds an organization's rows into one per month when they are many. Months past TOLSTOY_RUN_RETENTION_DAYS stop counting when the upkeep may drop them.
-- * tolstoy_fire_schedules: a slot refused by a quota is skipped (the schedule moves on to its next
--   time) and recorded on the trigger (last_skipped_at, last_skip_reason); schedules are fired in
--   organization order, so two workers firing the same organizations take their admission locks in
--   the same order. tolstoy_subflow: a child refused by a quota fails the subflow step with
--   QuotaExceeded (its message names the quota) instead of failing the whole statement.
-- * tolstoy_usage(): the current organization's unfinished runs and stored bytes, for
--   GET /organizations/{id}/usage (the admin login reads it too, without any grant on runs).

-- ---- what the operator set ---------------------------------------------------------------

create table organization_quotas (
    org_id uuid not null,
    queued_runs integer,
    stored_bytes bigint,
    requests_per_second integer,
    request_burst integer,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint organization_quotas_pkey primary key (org_id),
    constraint organization_quotas_org_id_fkey foreign key (org_id) references organizations (id) on delete cascade,
    constraint organization_quotas_queued_runs_range check (queued_runs between 0 and 100000000),
    constraint organization_quotas_stored_bytes_range check (stored_bytes between 0 and 1000000000000000),
    constraint organization_quotas_requests_per_second_range check (requests_per_second between 1 and 1000000),
    constraint organization_quotas_request_burst_range check (request_burst between 1 and 1000000)
);

comment on table organization_quotas is
    'The operator''s quota overrides of one organization (null: the configured default); PUT /organizations/{id}/quotas.';
comment on column organization_quotas.queued_runs is
    'Most runs not finished (queued, running or waiting) at once; 0 refuses every new run.';
comment on column organization_quotas.stored_bytes is 'Most bytes of run history within retention before new runs are refused.';
comment on column organization_quotas.requests_per_second is 'API requests per second, per API process (token bucket rate).';
comment on column organization_quotas.request_burst is 'API requests one burst may hold, per API process (token bucket size).';

alter table organization_quotas enable row level security;
alter table organization_quotas force row level security;
create policy tenant_isolation on organization_quotas
    using (org_id = tolstoy_current_org()) with check (org_id = tolstoy_current_org());

create trigger organization_quotas_touch_updated_at
    before update on organization_quotas
    for each row execute function tolstoy_touch_updated_at();

-- ---- what an organization holds ----------------------------------------------------------

create table organization_usage (
    org_id uuid not null,
    runs integer not null default 0,
    counted_at timestamptz,
    constraint organization_usage_pkey primary key (org_id),
    constraint organization_usage_org_id_fkey foreign key (org_id) references organizations (id) on delete cascade
);

comment on table organization_usage is
    'Per organization, the row each admission of a new run locks (tolstoy_admit_run), one admission at a time.';
comment on column organization_usage.runs is
    'An upper bound of the runs not finished: raised by each admission, set to an exact count when it reaches the quota.';
comment on column organization_usage.counted_at is 'When runs was last set to an exact count.';

alter table organization_usage enable row level security;
alter table organization_usage force row level security;
create policy tenant_isolation on organization_usage
    using (org_id = tolstoy_current_org()) with check (org_id = tolstoy_current_org());

create table history_bytes (
    org_id uuid not null,
    id uuid not null default gen_random_uuid(),
    month date not null,
    bytes bigint not null,
    constraint history_bytes_pkey primary key (org_id, id),
    constraint history_bytes_org_id_fkey foreign key (org_id) references organizations (id) on delete cascade
);

comment on table history_bytes is
    'Bytes of run history per organization and month, as deltas: a finished run adds its size, a purge takes it back; '
    'admission folds them. Append-only for the writers.';
comment on column history_bytes.month is 'First day (UTC) of the month of the run''s partition.';

alter table history_bytes enable row level security;
alter table history_bytes force row level security;
create policy tenant_isolation on history_bytes
    using (org_id = tolstoy_current_org()) with check (org_id = tolstoy_current_org());
-- Runs finish in transactions acting for no organization too (tolstoy_claim_runs fails a run past its
-- recovery limit): the measuring triggers write as tolstoy_engine, whatever the transaction's tenant.
grant select, insert on history_bytes to tolstoy_engine;
grant select on execution_logs to tolstoy_engine;
create policy engine_access on history_bytes to tolstoy_engine using (true) with check (true);

alter table flow_runs add column stored_bytes bigint;

comment on column flow_runs.stored_bytes is
    'Bytes of history the run holds (its variables, plan, error, steps and log rows, as stored), measured when it finished.';

-- "The unfinished runs of an organization": the exact count of admission and of GET .../usage.
-- Partial: finished runs, nearly all of the history, are not in it. A partitioned table cannot be
-- indexed concurrently: the build reads each partition once, holding writes to flow_runs meanwhile
-- (docs/operations.md says how to build it ahead on a large history).
-- squawk-ignore require-concurrent-index-creation
create index flow_runs_org_id_unfinished_idx on flow_runs (org_id)
    where status in ('queued', 'running', 'waiting');

-- ---- measuring run history ---------------------------------------------------------------

create function tolstoy_history_month(at timestamptz) returns date
language sql immutable as $$
    select date_trunc('month', at at time zone 'UTC')::date
$$;

comment on function tolstoy_history_month(timestamptz) is
    'The month (first day, UTC) a run created at this time counts its stored bytes in.';

create function flow_runs_count_stored_bytes() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    new.stored_bytes := pg_column_size(new.variables) + pg_column_size(new.plan)
        + coalesce(pg_column_size(new.error), 0)
        + coalesce((select sum(coalesce(pg_column_size(s.inputs), 0) + coalesce(pg_column_size(s.outputs), 0)
                               + coalesce(pg_column_size(s.sealed), 0) + coalesce(pg_column_size(s.error), 0))
                    from flow_run_steps s
                    where s.org_id = new.org_id and s.run_id = new.id and s.run_created_at = new.created_at), 0)
        -- A run's log rows are never older than the run: the bound prunes older months' partitions. A
        -- client's rows count when written (execution_logs_count_stored_bytes), whatever execution id they borrow.
        + coalesce((select sum(pg_column_size(l.inputs) + coalesce(pg_column_size(l.outputs), 0)
                               + coalesce(pg_column_size(l.error), 0))
                    from execution_logs l
                    where l.org_id = new.org_id and l.execution_id = new.id::text
                      and l.created_at >= new.created_at and l.source = 'engine'), 0);
    insert into history_bytes (org_id, month, bytes)
    values (new.org_id, tolstoy_history_month(new.created_at), new.stored_bytes);
    return new;
end;
$$;

comment on function flow_runs_count_stored_bytes() is
    'BEFORE UPDATE OF status trigger of a run that finishes: measures the history it holds (stored_bytes) and adds '
    'it to its organization''s history_bytes. Security definer (tolstoy_engine), so it measures whoever moves the run.';

alter function flow_runs_count_stored_bytes() owner to tolstoy_engine;
-- A trigger function: no one calls it. Making a partition clones the trigger, which takes
-- the right to run it: the history's owner makes them (tolstoy_ensure_partitions).
revoke execute on function flow_runs_count_stored_bytes() from public;
grant execute on function flow_runs_count_stored_bytes() to tolstoy_history;

create trigger flow_runs_count_stored_bytes
    before update of status on flow_runs
    for each row
    when (old.status in ('queued', 'running', 'waiting') and new.status in ('completed', 'failed', 'cancelled'))
    execute function flow_runs_count_stored_bytes();

create function flow_runs_uncount_stored_bytes() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    insert into history_bytes (org_id, month, bytes)
    select g.org_id, tolstoy_history_month(g.created_at), -sum(g.stored_bytes)
    from gone g
    where g.stored_bytes is not null
    group by 1, 2;
    return null;
end;
$$;

comment on function flow_runs_uncount_stored_bytes() is
    'AFTER DELETE statement trigger of flow_runs: deleted runs (the purge of finished ones) give their stored bytes back.';

alter function flow_runs_uncount_stored_bytes() owner to tolstoy_engine;
-- A trigger function: no one calls it. Making a partition clones the trigger, which takes
-- the right to run it: the history's owner makes them (tolstoy_ensure_partitions).
revoke execute on function flow_runs_uncount_stored_bytes() from public;
grant execute on function flow_runs_uncount_stored_bytes() to tolstoy_history;

create trigger flow_runs_uncount_stored_bytes
    after delete on flow_runs
    referencing old table as gone
    for each statement execute function flow_runs_uncount_stored_bytes();

create function execution_logs_count_stored_bytes() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    -- An AFTER ROW trigger sees the rows as stored (compressed, out of line included), as the purge's
    -- and a run's measures do; RETURNING would show an inserted value uncompressed.
    if tg_op in ('UPDATE', 'DELETE') then
        insert into history_bytes (org_id, month, bytes)
        values (old.org_id, tolstoy_history_month(old.created_at),
                -(pg_column_size(old.inputs) + coalesce(pg_column_size(old.outputs), 0)
                  + coalesce(pg_column_size(old.error), 0)));
    end if;
    if tg_op in ('INSERT', 'UPDATE') then
        insert into history_bytes (org_id, month, bytes)
        values (new.org_id, tolstoy_history_month(new.created_at),
                pg_column_size(new.inputs) + coalesce(pg_column_size(new.outputs), 0)
                + coalesce(pg_column_size(new.error), 0));
    end if;
    return null;
end;
$$;

comment on function execution_logs_count_stored_bytes() is
    'AFTER ROW trigger of the execution log rows that belong to no run (a client''s, a direct action call''s): '
    'what they store counts in their organization''s history_bytes when written, changed or deleted. A run''s own '
    'rows count with the run when it finishes (flow_runs_count_stored_bytes).';

alter function execution_logs_count_stored_bytes() owner to tolstoy_engine;
-- A trigger function: no one calls it. Making a partition clones the triggers, which takes
-- the right to run it: the history's owner makes them (tolstoy_ensure_partitions).
revoke execute on function execution_logs_count_stored_bytes() from public;
grant execute on function execution_logs_count_stored_bytes() to tolstoy_history;

create function tolstoy_log_of_no_run(l execution_logs) returns boolean
language sql immutable as $$
    select l.source = 'client' or l.flow_id is null
$$;

comment on function tolstoy_log_of_no_run(execution_logs) is
    'Whether an execution log row belongs to no run: a client wrote it (whatever execution id it names) or it names '
    'no flow (a direct action call). Such rows count in stored bytes when written; a run''s own, when it finishes.';

-- The triggers' condition takes the whole row, through the function: the older migrations' own tests
-- take the columns it reads down and up again under it (execution_log_source).
create trigger execution_logs_count_stored_bytes_insert
    after insert on execution_logs
    for each row when (tolstoy_log_of_no_run(new))
    execute function execution_logs_count_stored_bytes();

create trigger execution_logs_count_stored_bytes_update
    after update of inputs, outputs, error on execution_logs
    for each row when (tolstoy_log_of_no_run(old))
    execute function execution_logs_count_stored_bytes();

create trigger execution_logs_count_stored_bytes_delete
    after delete on execution_logs
    for each row when (tolstoy_log_of_no_run(old))
    execute function execution_logs_count_stored_bytes();

-- ---- the gate ----------------------------------------------------------------------------

create function tolstoy_quota_defaults() returns jsonb
language sql stable as $$
    select nullif(current_setting('tolstoy.quotas', true), '')::jsonb
$$;

comment on function tolstoy_quota_defaults() is
    'The configured quota defaults the services set for this transaction (tolstoy.quotas): '
    '{queuedRuns, storedBytes, retentionDays}, or null.';

create function tolstoy_stored_bytes(org uuid, retention_days integer) returns bigint
language sql stable as $$
    select greatest(coalesce(sum(h.bytes), 0), 0)::bigint
    from history_bytes h
    where h.org_id = org
      -- tolstoy_maintain_history drops a month once its end is past retention.
      and (retention_days is null or (h.month + interval '1 month')::date > current_date - retention_days)
$$;

comment on function tolstoy_stored_bytes(uuid, integer) is
    'Bytes of run history an organization stores in the months retention keeps (null: every month).';

create function tolstoy_admit_run(org uuid) returns void
language plpgsql as $$
declare
    defaults jsonb := tolstoy_quota_defaults();
    quota organization_quotas;
    max_runs integer;
    max_bytes bigint;
    retention integer := (defaults ->> 'retentionDays')::integer;
    held integer;
    deltas integer;
    stored bigint;
begin
    select * into quota from organization_quotas q where q.org_id = org;
    max_runs := coalesce(quota.queued_runs, (defaults ->> 'queuedRuns')::integer);
    max_bytes := coalesce(quota.stored_bytes, (defaults ->> 'storedBytes')::bigint);
    if max_runs is null and max_bytes is null then
        return;
    end if;
    -- One admission of this organization at a time, until the transaction that queues the run ends.
    select u.runs into held from organization_usage u where u.org_id = org for update;
    if not found then
        insert into organization_usage (org_id) values (org) on conflict (org_id) do nothing;
        select u.runs into held from organization_usage u where u.org_id = org for update;
    end if;
    if max_bytes is not null then
        select count(*), greatest(coalesce(sum(h.bytes) filter (
                   where retention is null or (h.month + interval '1 month')::date > current_date - retention), 0), 0)
        into deltas, stored
        from history_bytes h
        where h.org_id = org;
        if deltas > 64 then
            -- Fold the deltas into one row per month still kept (deltas written meanwhile are not
            -- seen, so they stay, and nothing is counted twice).
            with gone as (
                delete from history_bytes h where h.org_id = org returning h.month, h.bytes
            )
            insert into history_bytes (org_id, month, bytes)
            select org, g.month, sum(g.bytes)
            from gone g
            where retention is null or (g.month + interval '1 month')::date > current_date - retention
            group by g.month
            having sum(g.bytes) <> 0;
        end if;
        if stored >= max_bytes then
            raise exception 'The organization stores % bytes of run history, at or over its storedBytes quota (%): '
                            'new runs are refused until retention or a purge of finished runs frees some.',
                            stored, max_bytes
                using errcode = 'TQ002',
                      detail = jsonb_build_object('quota', 'storedBytes', 'limit', max_bytes, 'used', stored)::text;
        end if;
    end if;
    if max_runs is not null then
        if held >= max_runs then
            select count(*) into held
            from flow_runs r
            where r.org_id = org and r.status in ('queued', 'running', 'waiting');
            if held >= max_runs then
                raise exception 'The organization has % runs queued, running or waiting, as many as its queuedRuns '
                                'quota allows (%): new runs are refused until some finish.', held, max_runs
                    using errcode = 'TQ001',
                          detail = jsonb_build_object('quota', 'queuedRuns', 'limit', max_runs, 'used', held)::text;
            end if;
            update organization_usage u set runs = held + 1, counted_at = now() where u.org_id = org;
        else
            update organization_usage u set runs = held + 1 where u.org_id = org;
        end if;
    end if;
end;
$$;

comment on function tolstoy_admit_run(uuid) is
    'The quotas a new run of org must pass (queuedRuns: TQ001, storedBytes: TQ002), one admission of org at a time; '
    'tolstoy_queue_run calls it before writing a new run. Acts for org under row-level security.';

-- The same as in who_may_act_as_a_user, plus the admission of a new run (the one line marked below).
create or replace function tolstoy_queue_run(org uuid, flow uuid, queue_run_version integer, actor uuid, vars jsonb,
                                             key text, retrying uuid, acting boolean default false)
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
    -- Quotas (TQ001, TQ002): a run is admitted before anything of it is written.
    perform tolstoy_admit_run(org);
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
                           retry_of, root_run_id, created_at, acts_as_user)
    values (org, new_id, flow, queue_run_version, actor, vars, run_plan, key, retrying, coalesce(root, new_id),
            new_created_at, coalesce(acting, false) and actor is not null)
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

comment on function tolstoy_queue_run(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean) is
    'Queues a run with its plan (steps + the actions they call, with their tools) and its queued log row, or '
    'returns the run an Idempotency-Key (or, for a retry, the retried run) already made. One retry per run. '
    'acting: the one who queues it may act as actor (acts_as_user). A new run passes tolstoy_admit_run first '
    '(quotas: TQ001, TQ002).';

-- ---- schedules and subflows over a quota -------------------------------------------------

alter table flow_triggers add column last_skipped_at timestamptz;
alter table flow_triggers add column last_skip_reason text;

comment on column flow_triggers.last_skipped_at is
    'Schedule: the last due time (as fired) whose run a quota refused; the schedule went on to its next time.';
comment on column flow_triggers.last_skip_reason is 'Schedule: why that run was refused (the quota''s message).';

-- The same as in flow_triggers, plus: fires in organization order, and a run a quota refuses skips its slot.
create or replace function tolstoy_fire_schedules(as_of timestamptz, fires jsonb) returns jsonb
language plpgsql as $$
declare
    fire jsonb;
    org uuid;
    flow uuid;
    flow_version integer;
    scheduled timestamptz;
    queued uuid;
    refusal text;
    fired jsonb := '[]';
    previous text := current_setting('app.org_id', true);
begin
    if jsonb_typeof(fires) is distinct from 'array' or jsonb_array_length(fires) > 1000 then
        raise exception 'tolstoy_fire_schedules: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    -- Admission locks each organization's usage row until this transaction ends: in organization
    -- order, two workers firing schedules of the same organizations cannot wait on each other.
    for fire in select f.value from jsonb_array_elements(fires) as f
                order by f.value ->> 'org_id', f.value ->> 'id' loop
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
        begin
            select (q.run).id into queued
            from tolstoy_queue_run(org, flow, flow_version, null,
                                   jsonb_build_object('trigger', jsonb_build_object(
                                       'id', fire ->> 'id', 'type', 'schedule',
                                       'scheduledAt', to_char(scheduled at time zone 'UTC',
                                                              'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))),
                                   format('tolstoy:schedule:%s:%s', fire ->> 'id',
                                          extract(epoch from scheduled)::numeric),
                                   null) as q;
        exception when sqlstate 'TQ001' or sqlstate 'TQ002' then
            -- Over a quota: the slot is skipped (the schedule has moved on) and the trigger says why.
            get stacked diagnostics refusal = message_text;
            update flow_triggers t
            set last_skipped_at = coalesce(as_of, now()), last_skip_reason = refusal
            where t.org_id = org and t.id = (fire ->> 'id')::uuid;
            continue;
        end;
        fired := fired || jsonb_build_object('trigger_id', fire ->> 'id', 'org_id', org, 'execution_id', queued,
                                             'scheduled_at', scheduled);
    end loop;
    perform set_config('app.org_id', coalesce(previous, ''), true);
    return fired;
end;
$$;

comment on function tolstoy_fire_schedules(timestamptz, jsonb) is
    'Advances claimed schedules (only from the due time the worker saw) and queues their runs, each acting for its '
    'organization, in organization order; a run a quota refuses skips its slot (last_skipped_at, last_skip_reason). '
    'Returns [{trigger_id, org_id, execution_id, scheduled_at}] of the runs queued.';

-- The same as in one_child_per_step_chain, plus: a child a quota refuses fails the step (QuotaExceeded) instead
-- of the statement.
create or replace function tolstoy_subflow(worker text, org uuid, run uuid, token integer, writes jsonb, spec jsonb)
returns jsonb
language plpgsql as $$
declare
    answer jsonb;
    parent flow_runs;
    child flow_runs;
    latest flow_runs;
    step text := spec ->> 'step_id';
    target uuid := (spec ->> 'flow_id')::uuid;
    target_version integer := (spec ->> 'version')::integer;
    max_depth integer := coalesce((spec ->> 'max_depth')::integer, 10);
    created boolean := false;
    adopted boolean := false;
    parked boolean := false;
    outputs jsonb;
    sealed jsonb;
    refusal text;
    refused text;
begin
    if step is null or jsonb_typeof(spec -> 'variables') is distinct from 'object' then
        raise exception 'tolstoy_subflow: invalid spec' using errcode = 'invalid_parameter_value';
    end if;
    -- Lease check, the parent's row locked until commit, the pending writes.
    answer := tolstoy_checkpoint(worker, org, run, token, writes);
    select * into parent from flow_runs r where r.org_id = org and r.id = run;
    select * into child from flow_runs c
    where c.org_id = org and c.parent_run_id = run and c.parent_step_id = step
    order by c.created_at desc
    limit 1;
    if child.id is null then
        if parent.cancel_requested then
            return answer || '{"cancel": true}';
        end if;
        if parent.depth + 1 > max_depth then
            return answer || jsonb_build_object('error', jsonb_build_object(
                'name', 'SubflowDepthExceeded',
                'message', format('A child run here would be nested %s deep, more than the limit of %s '
                                  '(TOLSTOY_SUBFLOW_MAX_DEPTH).', parent.depth + 1, max_depth)));
        end if;
        begin
            -- The child chain this step of an earlier run of the parent's chain started (newest first), and
            -- the newest run of that child chain. A failure handler's step has none: it handles this run's failure.
            if parent.retry_of is not null and step not like 'onFailure.%' then
                with recursive earlier(id) as (
                    select parent.retry_of
                    union all
                    select r.retry_of
                    from flow_runs r join earlier e on r.org_id = org and r.id = e.id
                    where r.retry_of is not null
                )
                select * into latest from flow_runs c
                where c.org_id = org and c.parent_run_id in (select e.id from earlier e) and c.parent_step_id = step
                order by c.created_at desc
                limit 1;
                if latest.id is not null then
                    with recursive later(id, created_at) as (
                        select latest.id, latest.created_at
                        union all
                        select r.id, r.created_at
                        from flow_runs r join later l on r.org_id = org and r.retry_of = l.id
                    )
                    select r.* into latest
                    from later l join flow_runs r on r.org_id = org and r.id = l.id and r.created_at = l.created_at
                    order by l.created_at desc
                    limit 1;
                    if latest.status in ('completed', 'failed', 'cancelled') then
                        -- Continue its chain: its completed steps are kept, its calls sent under the same keys.
                        select (q.run).* into child
                        from tolstoy_queue_run(org, latest.flow_id, latest.flow_version, parent.user_id,
                                               latest.variables, null, latest.id) as q;
                    elsif latest.parent_run_id is null then
                        -- A retry of the child made by hand, under way: it is this step's child from now on.
                        child := latest;
                        adopted := true;
                    else
                        -- Under way for an earlier run of the chain (cancelled with it, as a rule): no second child
                        -- while it runs. Park until it ends (flow_runs_wake_parent wakes this run), then continue
                        -- its chain. The step waits, whatever its "wait" says.
                        update flow_run_steps s
                        set status = 'waiting'
                        where s.org_id = org and s.run_id = run and s.run_created_at = parent.created_at
                          and s.step_id = step;
                        update flow_runs r
                        set status = 'waiting', lease_owner = null, lease_token = null, lease_expires_at = null
                        where r.org_id = org and r.id = run and r.created_at = parent.created_at;
                        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
                        values (org, parent.flow_id, parent.user_id, run::text, step, 'pending',
                                jsonb_build_object('waitingForExecutionId', latest.id, 'flowId', latest.flow_id,
                                                   'parentExecutionId', latest.parent_run_id));
                        return answer || jsonb_build_object('created', false, 'parked', true, 'waitingFor', latest.id);
                    end if;
                end if;
            end if;
            if child.id is null then
                if target_version is null then
                    select f.version into target_version from flows f where f.org_id = org and f.id = target;
                elsif not exists (select 1 from flow_versions v
                                  where v.org_id = org and v.flow_id = target and v.version = target_version) then
                    return answer || jsonb_build_object('error', jsonb_build_object(
                        'name', 'SubflowNotFound',
                        'message', format('Flow %s has no version %s.', target, target_version)));
                end if;
                if target_version is null then
                    return answer || jsonb_build_object('error', jsonb_build_object(
                        'name', 'SubflowNotFound', 'message', format('Flow %s does not exist (any more).', target)));
                end if;
                select (q.run).* into child
                from tolstoy_queue_run(org, target, target_version, parent.user_id, spec -> 'variables', null, null)
                    as q;
            end if;
        exception when sqlstate 'TQ001' or sqlstate 'TQ002' then
            -- Over a quota: the step fails (a parent waiting for room would hold a place of the quota itself).
            get stacked diagnostics refusal = message_text, refused = pg_exception_detail;
            return answer || jsonb_build_object('error', jsonb_build_object(
                'name', 'QuotaExceeded', 'message', refusal, 'quota', refused::jsonb ->> 'quota'));
        end;
        update flow_runs c
        set parent_run_id = run, parent_step_id = step, depth = parent.depth + 1
        where c.org_id = org and c.id = child.id and c.created_at = child.created_at
        returning * into child;
        -- The parent's log says which child the step started (or took over).
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
        values (org, parent.flow_id, parent.user_id, run::text, step, 'pending',
                jsonb_build_object('childExecutionId', child.id, 'flowId', child.flow_id,
                                   'flowVersion', child.flow_version, 'wait', (spec ->> 'wait')::boolean,
                                   'retryOf', child.retry_of)
                || case when adopted then '{"adopted": true}'::jsonb else '{}'::jsonb end);
        created := not adopted;
    end if;
    if child.status = 'completed' then
        select coalesce(jsonb_object_agg(s.step_id, s.outputs), '{}'),
               coalesce(jsonb_object_agg(s.step_id, encode(s.sealed, 'base64')) filter (where s.sealed is not null),
                        '{}')
        into outputs, sealed
        from flow_run_steps s
        where s.org_id = org and s.run_id = child.id and s.run_created_at = child.created_at
          and s.status = 'completed' and strpos(s.step_id, '[') = 0;
    elsif (spec ->> 'wait')::boolean and child.status not in ('failed', 'cancelled') then
        if parent.cancel_requested then
            return answer || '{"cancel": true}' || jsonb_build_object('created', created);
        end if;
        update flow_runs r
        set status = 'waiting', lease_owner = null, lease_token = null, lease_expires_at = null
        where r.org_id = org and r.id = run and r.created_at = parent.created_at;
        parked := true;
    end if;
    return answer || jsonb_build_object(
        'created', created, 'parked', parked,
        'child', jsonb_build_object('id', child.id, 'flow_id', child.flow_id, 'flow_version', child.flow_version,
                                    'status', child.status, 'error', child.error, 'outputs', outputs,
                                    'sealed', sealed));
end;
$$;

comment on function tolstoy_subflow(text, uuid, uuid, integer, jsonb, jsonb) is
    'A subflow step: tolstoy_checkpoint, then find or queue the step''s child run (one child chain per step of a '
    'retry chain: a retry continues the chain an earlier run''s step started, and waits while its newest run is '
    'under way), and park the parent while a waited-for child runs. A child a quota refuses is '
    '{error: {name: QuotaExceeded}}. Acts for org under row-level security.';

-- ---- what GET /organizations/{id}/usage reads --------------------------------------------

create function tolstoy_usage()
returns table (queued_runs bigint, stored_bytes bigint)
language plpgsql stable security definer set search_path = public, pg_temp as $$
declare
    org uuid := tolstoy_current_org();
begin
    if org is null then
        raise exception 'tolstoy_usage: no organization is set' using errcode = 'invalid_parameter_value';
    end if;
    return query
    select (select count(*) from flow_runs r where r.org_id = org and r.status in ('queued', 'running', 'waiting')),
           tolstoy_stored_bytes(org, (tolstoy_quota_defaults() ->> 'retentionDays')::integer);
end;
$$;

comment on function tolstoy_usage() is
    'The current organization''s runs not finished and bytes of run history within retention (security definer: '
    'the admin login reads them without any grant on runs, for the organization it acts for only).';

alter function tolstoy_usage() owner to tolstoy_engine;
revoke execute on function tolstoy_usage() from public;

-- Privileges: db/grants.sql (organization_quotas, organization_usage, history_bytes, tolstoy_usage).

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop function tolstoy_usage();

-- tolstoy_subflow as run_ids_name_their_month defined it.
create or replace function tolstoy_subflow(worker text, org uuid, run uuid, token integer, writes jsonb, spec jsonb)
returns jsonb
language plpgsql as $$
declare
    answer jsonb;
    parent flow_runs;
    child flow_runs;
    latest flow_runs;
    step text := spec ->> 'step_id';
    target uuid := (spec ->> 'flow_id')::uuid;
    target_version integer := (spec ->> 'version')::integer;
    max_depth integer := coalesce((spec ->> 'max_depth')::integer, 10);
    created boolean := false;
    adopted boolean := false;
    parked boolean := false;
    outputs jsonb;
    sealed jsonb;
begin
    if step is null or jsonb_typeof(spec -> 'variables') is distinct from 'object' then
        raise exception 'tolstoy_subflow: invalid spec' using errcode = 'invalid_parameter_value';
    end if;
    -- Lease check, the parent's row locked until commit, the pending writes.
    answer := tolstoy_checkpoint(worker, org, run, token, writes);
    select * into parent from flow_runs r
    where r.org_id = org and r.id = run and r.created_at between tolstoy_run_from(run) and tolstoy_run_until(run);
    select * into child from flow_runs c
    where c.org_id = org and c.parent_run_id = run and c.parent_step_id = step
      and c.created_at >= tolstoy_run_from(run)  -- a child is queued after its parent
    order by c.created_at desc
    limit 1;
    if child.id is null then
        if parent.cancel_requested then
            return answer || '{"cancel": true}';
        end if;
        if parent.depth + 1 > max_depth then
            return answer || jsonb_build_object('error', jsonb_build_object(
                'name', 'SubflowDepthExceeded',
                'message', format('A child run here would be nested %s deep, more than the limit of %s '
                                  '(TOLSTOY_SUBFLOW_MAX_DEPTH).', parent.depth + 1, max_depth)));
        end if;
        -- The child chain this step of an earlier run of the parent's chain started (newest first), and
        -- the newest run of that child chain. A failure handler's step has none: it handles this run's failure.
        if parent.retry_of is not null and step not like 'onFailure.%' then
            with recursive earlier(id) as (
                select parent.retry_of
                union all
                select r.retry_of
                from flow_runs r
                join earlier e on r.org_id = org and r.id = e.id
                                  and r.created_at between tolstoy_run_from(e.id) and tolstoy_run_until(e.id)
                where r.retry_of is not null
            )
            select * into latest from flow_runs c
            where c.org_id = org and c.parent_run_id in (select e.id from earlier e) and c.parent_step_id = step
              -- Children are queued after their parents, the chain's first run the oldest.
              and c.created_at >= (select min(tolstoy_run_from(e.id)) from earlier e)
            order by c.created_at desc
            limit 1;
            if latest.id is not null then
                with recursive later(id, created_at) as (
                    select latest.id, latest.created_at
                    union all
                    select r.id, r.created_at
                    from flow_runs r
                    join later l on r.org_id = org and r.retry_of = l.id
                                    and r.created_at >= l.created_at  -- a retry is queued after its run
                )
                select r.* into latest
                from later l join flow_runs r on r.org_id = org and r.id = l.id and r.created_at = l.created_at
                order by l.created_at desc
                limit 1;
                if latest.status in ('completed', 'failed', 'cancelled') then
                    -- Continue its chain: its completed steps are kept, its calls sent under the same keys.
                    select (q.run).* into child
                    from tolstoy_queue_run(org, latest.flow_id, latest.flow_version, parent.user_id,
                                           latest.variables, null, latest.id) as q;
                elsif latest.parent_run_id is null then
                    -- A retry of the child made by hand, under way: it is this step's child from now on.
                    child := latest;
                    adopted := true;
                else
                    -- Under way for an earlier run of the chain (cancelled with it, as a rule): no second child
                    -- while it runs. Park until it ends (flow_runs_wake_parent wakes this run), then continue
                    -- its chain. The step waits, whatever its "wait" says.
                    update flow_run_steps s
                    set status = 'waiting'
                    where s.org_id = org and s.run_id = run and s.run_created_at = parent.created_at
                      and s.step_id = step;
                    update flow_runs r
                    set status = 'waiting', lease_owner = null, lease_token = null, lease_expires_at = null
                    where r.org_id = org and r.id = run and r.created_at = parent.created_at;
                    insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
                    values (org, parent.flow_id, parent.user_id, run::text, step, 'pending',
                            jsonb_build_object('waitingForExecutionId', latest.id, 'flowId', latest.flow_id,
                                               'parentExecutionId', latest.parent_run_id));
                    return answer || jsonb_build_object('created', false, 'parked', true, 'waitingFor', latest.id);
                end if;
            end if;
        end if;
        if child.id is null then
            if target_version is null then
                select f.version into target_version from flows f where f.org_id = org and f.id = target;
            elsif not exists (select 1 from flow_versions v
                              where v.org_id = org and v.flow_id = target and v.version = target_version) then
                return answer || jsonb_build_object('error', jsonb_build_object(
                    'name', 'SubflowNotFound',
                    'message', format('Flow %s has no version %s.', target, target_version)));
            end if;
            if target_version is null then
                return answer || jsonb_build_object('error', jsonb_build_object(
                    'name', 'SubflowNotFound', 'message', format('Flow %s does not exist (any more).', target)));
            end if;
            select (q.run).* into child
            from tolstoy_queue_run(org, target, target_version, parent.user_id, spec -> 'variables', null, null)
                as q;
        end if;
        update flow_runs c
        set parent_run_id = run, parent_step_id = step, depth = parent.depth + 1
        where c.org_id = org and c.id = child.id and c.created_at = child.created_at
        returning * into child;
        -- The parent's log says which child the step started (or took over).
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
        values (org, parent.flow_id, parent.user_id, run::text, step, 'pending',
                jsonb_build_object('childExecutionId', child.id, 'flowId', child.flow_id,
                                   'flowVersion', child.flow_version, 'wait', (spec ->> 'wait')::boolean,
                                   'retryOf', child.retry_of)
                || case when adopted then '{"adopted": true}'::jsonb else '{}'::jsonb end);
        created := not adopted;
    end if;
    if child.status = 'completed' then
        select coalesce(jsonb_object_agg(s.step_id, s.outputs), '{}'),
               coalesce(jsonb_object_agg(s.step_id, encode(s.sealed, 'base64')) filter (where s.sealed is not null),
                        '{}')
        into outputs, sealed
        from flow_run_steps s
        where s.org_id = org and s.run_id = child.id and s.run_created_at = child.created_at
          and s.status = 'completed' and strpos(s.step_id, '[') = 0;
    elsif (spec ->> 'wait')::boolean and child.status not in ('failed', 'cancelled') then
        if parent.cancel_requested then
            return answer || '{"cancel": true}' || jsonb_build_object('created', created);
        end if;
        update flow_runs r
        set status = 'waiting', lease_owner = null, lease_token = null, lease_expires_at = null
        where r.org_id = org and r.id = run and r.created_at = parent.created_at;
        parked := true;
    end if;
    return answer || jsonb_build_object(
        'created', created, 'parked', parked,
        'child', jsonb_build_object('id', child.id, 'flow_id', child.flow_id, 'flow_version', child.flow_version,
                                    'status', child.status, 'error', child.error, 'outputs', outputs,
                                    'sealed', sealed));
end;
$$;

comment on function tolstoy_subflow(text, uuid, uuid, integer, jsonb, jsonb) is
    'A subflow step: tolstoy_checkpoint, then find or queue the step''s child run (one child chain per step of a '
    'retry chain: a retry continues the chain an earlier run''s step started, and waits while its newest run is '
    'under way), and park the parent while a waited-for child runs. Acts for org under row-level security.';

-- tolstoy_fire_schedules as flow_triggers defined it.
create or replace function tolstoy_fire_schedules(as_of timestamptz, fires jsonb) returns jsonb
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
    'Advances claimed schedules (only from the due time the worker saw) and queues their runs, each acting for its '
    'organization; returns [{trigger_id, org_id, execution_id, scheduled_at}] of the runs queued.';

alter table flow_triggers drop column last_skip_reason;
alter table flow_triggers drop column last_skipped_at;

-- tolstoy_queue_run as run_ids_name_their_month defined it (without the admission).
create or replace function tolstoy_queue_run(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                             vars jsonb, key text, retrying uuid, acting boolean default false)
returns table (run flow_runs, created boolean)
language plpgsql as $_$
declare
    existing flow_runs;
    queued flow_runs;
    original flow_runs;
    steps jsonb;
    run_plan jsonb;
    root uuid;
    -- The id carries the time the run is queued, its created_at: lookups by id find its month.
    new_id uuid := tolstoy_new_run_id(now());
    new_created_at timestamptz := now();
begin
    if key is not null then
        perform pg_advisory_xact_lock(hashtextextended(format('run-key:%s:%s:%s', org, flow, key), 0));
        select * into existing from flow_runs r
        where r.org_id = org and r.flow_id = flow and r.idempotency_key = key;
    elsif retrying is not null then
        perform pg_advisory_xact_lock(hashtextextended(format('run-retry:%s:%s', org, retrying), 0));
        select * into existing from flow_runs r
        where r.org_id = org and r.retry_of = retrying and r.created_at >= tolstoy_run_from(retrying);
    end if;
    if existing.id is not null then
        run := existing;
        created := false;
        return next;
        return;
    end if;
    if retrying is not null then
        select * into original from flow_runs r
        where r.org_id = org and r.id = retrying
          and r.created_at between tolstoy_run_from(retrying) and tolstoy_run_until(retrying);
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
                           retry_of, root_run_id, created_at, acts_as_user)
    values (org, new_id, flow, queue_run_version, actor, vars, run_plan, key, retrying, coalesce(root, new_id),
            new_created_at, coalesce(acting, false) and actor is not null)
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
$_$;

comment on function tolstoy_queue_run(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean) is
    'Queues a run with its plan (steps + the actions they call, with their tools) and its queued log row, or '
    'returns the run an Idempotency-Key (or, for a retry, the retried run) already made. One retry per run. '
    'acting: the one who queues it may act as actor (acts_as_user).';

drop function tolstoy_admit_run(uuid);
drop function tolstoy_stored_bytes(uuid, integer);
drop function tolstoy_quota_defaults();

drop trigger execution_logs_count_stored_bytes_delete on execution_logs;
drop trigger execution_logs_count_stored_bytes_update on execution_logs;
drop trigger execution_logs_count_stored_bytes_insert on execution_logs;
drop function execution_logs_count_stored_bytes();
drop function tolstoy_log_of_no_run(execution_logs);
drop trigger flow_runs_uncount_stored_bytes on flow_runs;
drop function flow_runs_uncount_stored_bytes();
drop trigger flow_runs_count_stored_bytes on flow_runs;
drop function flow_runs_count_stored_bytes();
drop function tolstoy_history_month(timestamptz);

-- A partitioned table's index cannot be dropped concurrently; the column goes in the same transaction.
-- squawk-ignore require-concurrent-index-deletion
drop index flow_runs_org_id_unfinished_idx;
alter table flow_runs drop column stored_bytes;

revoke select on execution_logs from tolstoy_engine;
drop table history_bytes;
drop table organization_usage;
drop table organization_quotas;
