-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- One place says what a flow version's plan is (issue 25): tolstoy_queue_run builds a new run's plan
-- with tolstoy_plan_for (20261210000200), as tolstoy_move_run does for a run moved to a version, instead
-- of its own copy of the same query. The plan also carries the version's onFailure steps from the
-- start (flow_runs_plan_on_failure, which added them at insert, now finds them there); what a run does
-- is unchanged. Only the function's body changes: the previous release's workers read the same plans.

create or replace function tolstoy_queue_run(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                             vars jsonb, key text, retrying uuid, acting boolean default false)
returns table (run flow_runs, created boolean)
language plpgsql as $_$
declare
    existing flow_runs;
    queued flow_runs;
    original flow_runs;
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
    -- Quotas (TQ001, TQ002): a run is admitted before anything of it is written.
    perform tolstoy_admit_run(org);
    if retrying is not null then
        select * into original from flow_runs r
        where r.org_id = org and r.id = retrying
          and r.created_at between tolstoy_run_from(retrying) and tolstoy_run_until(retrying);
        run_plan := original.plan;
        root := original.root_run_id;
    else
        -- The version's plan as a move to it builds it too (plans.sql). No such version: the insert's
        -- foreign key refuses the run, as it always did.
        run_plan := coalesce(tolstoy_plan_for(org, flow, queue_run_version), '{"steps": null, "actions": []}');
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
    'acting: the one who queues it may act as actor (acts_as_user). A new run passes tolstoy_admit_run first '
    '(quotas: TQ001, TQ002).';


-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

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
    -- Quotas (TQ001, TQ002): a run is admitted before anything of it is written.
    perform tolstoy_admit_run(org);
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
    'acting: the one who queues it may act as actor (acts_as_user). A new run passes tolstoy_admit_run first '
    '(quotas: TQ001, TQ002).';
