-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Re-run from a step (issue 25): POST /flows/{id}/executions/{executionId}/rerun starts a new run
-- linked to a finished one (rerun_of) that keeps the checkpoints of the steps not downstream of its
-- fromStep and runs the rest again. It is queued by the retry's function, generalised
-- (tolstoy_queue_run_v2, with the argument rerunning; tolstoy_queue_run, whose signature the previous
-- release's queries call, is it without one): a retry continues its chain under the same
-- Idempotency-Keys; a re-run is a chain of its own (its root is itself), so every call it sends is a
-- new effect under a new key. A re-run may reach into a subflow step's child ("call/charge"): the
-- plan carries what to re-run of the child, and tolstoy_subflow queues that child as a re-run of the
-- original's.

alter table flow_runs add column rerun_of uuid;

comment on column flow_runs.rerun_of is
    'The run this one re-runs from a step (POST …/rerun); null otherwise. Its kept steps'' checkpoints were '
    'copied from it; its calls are new effects (root_run_id is the re-run itself).';

-- The re-runs of a run (the run view lists them): small, only re-runs are in it. Declared on the parent
-- only: `tolstoy db up` builds each partition's concurrently (docs/operations.md, "Indexes on the run
-- history").
-- squawk-ignore require-concurrent-index-creation
create index flow_runs_org_id_rerun_of_idx on only flow_runs (org_id, rerun_of, created_at)
    where rerun_of is not null;

create function tolstoy_plan(org uuid, steps jsonb, on_failure jsonb default null) returns jsonb
language sql stable as $$
    select jsonb_build_object('steps', steps, 'actions', coalesce((
        select jsonb_agg(jsonb_build_object(
                   'id', a.id, 'key', a.key, 'tool_id', a.tool_id, 'method', a.method, 'endpoint', a.endpoint,
                   'headers', a.headers, 'input_schema', a.input_schema, 'execute_if', a.execute_if,
                   'version', a.version, 'tool', jsonb_build_object('id', t.id, 'name', t.name,
                                                                     'base_url', t.base_url,
                                                                     'auth_type', t.auth_type,
                                                                     'honors_idempotency_key',
                                                                     t.honors_idempotency_key)))
        from actions a join tools t on t.org_id = a.org_id and t.id = a.tool_id
        cross join lateral (select jsonb_build_array(steps, coalesce(on_failure, '[]')) as called) c
        where a.org_id = org
          and (a.key in (select jsonb_path_query(c.called, 'strict $.**.actionKey') #>> '{}')
               or a.id::text in (select jsonb_path_query(c.called, 'strict $.**.actionId') #>> '{}'))), '[]'))
       || case when on_failure is not null then jsonb_build_object('onFailure', on_failure) else '{}' end
$$;

comment on function tolstoy_plan(uuid, jsonb, jsonb) is
    'A run''s plan of these steps (and onFailure steps, when given): the steps and the actions they call (with '
    'their tools) as they are now. tolstoy_queue_run freezes it into a new run (flow_runs_plan_on_failure adds '
    'the version''s onFailure), a re-run''s preview reads it, tolstoy_plan_for builds a version''s for a move.';

create function tolstoy_queue_run_v2(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                                vars jsonb, key text, retrying uuid, acting boolean,
                                                rerunning jsonb)
returns table (run flow_runs, created boolean)
language plpgsql as $_$
declare
    existing flow_runs;
    queued flow_runs;
    original flow_runs;
    steps jsonb;
    run_plan jsonb;
    root uuid;
    -- The run whose checkpoints this one starts with: a retry's, or a re-run's (rerunning ->> 'of').
    source uuid := coalesce(retrying, (rerunning ->> 'of')::uuid);
    -- A re-run's kept steps: their checkpoints (and their foreach items') are copied; keepItemsOf: the
    -- items of these foreach steps are copied (the step itself runs again) except dropItems.
    keep text[] := array(select jsonb_array_elements_text(coalesce(rerunning -> 'keep', '[]')));
    keep_items_of text[] := array(select jsonb_array_elements_text(coalesce(rerunning -> 'keepItemsOf', '[]')));
    drop_items text[] := array(select jsonb_array_elements_text(coalesce(rerunning -> 'dropItems', '[]')));
    -- The id carries the time the run is queued, its created_at: lookups by id find its month.
    new_id uuid := tolstoy_new_run_id(now());
    new_created_at timestamptz := now();
begin
    if retrying is not null and rerunning is not null then
        raise exception 'tolstoy_queue_run_v2: a run is a retry or a re-run, not both'
            using errcode = 'invalid_parameter_value';
    end if;
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
    if source is not null then
        select * into original from flow_runs r
        where r.org_id = org and r.id = source
          and r.created_at between tolstoy_run_from(source) and tolstoy_run_until(source);
        if original.id is null then
            raise exception 'tolstoy_queue_run_v2: no run % to start from', source using errcode = 'no_data_found';
        end if;
        run_plan := original.plan;
        -- A retry continues its chain (the same Idempotency-Keys); a re-run is a chain of its own: its
        -- calls are new effects, under keys of its own.
        root := case when retrying is not null then original.root_run_id end;
    end if;
    if source is null or rerunning ? 'steps' then
        -- A new run's plan: the version's steps (a re-run's, with the configs it changed), the actions as now.
        steps := coalesce(rerunning -> 'steps', (select v.steps from flow_versions v
                                                  where v.org_id = org and v.flow_id = flow
                                                    and v.version = queue_run_version));
        run_plan := tolstoy_plan(org, steps);
    end if;
    if rerunning is not null then
        -- What the re-run reaches into (a subflow step's child re-run from one of its steps, tolstoy_subflow):
        -- in the plan, so a retry of the re-run has it too.
        run_plan := (run_plan - 'rerun') || jsonb_build_object('rerun', jsonb_strip_nulls(jsonb_build_object(
            'of', source, 'fromStep', rerunning -> 'fromStep', 'children', rerunning -> 'children')));
    end if;
    insert into flow_runs (org_id, id, flow_id, flow_version, user_id, variables, plan, idempotency_key,
                           retry_of, rerun_of, root_run_id, created_at, acts_as_user)
    values (org, new_id, flow, queue_run_version, actor, vars, run_plan, key, retrying, (rerunning ->> 'of')::uuid,
            coalesce(root, new_id), new_created_at, coalesce(acting, false) and actor is not null)
    returning * into queued;
    if source is not null then
        -- Skipped by executeIf (no error) is final; skipped because a dependency failed is not.
        insert into flow_run_steps (org_id, run_id, run_created_at, step_id, status, attempt, inputs, outputs,
                                    sealed, error, started_at, finished_at, duration_ms)
        select s.org_id, new_id, new_created_at, s.step_id, s.status, s.attempt, s.inputs, s.outputs, s.sealed,
               s.error, s.started_at, s.finished_at, s.duration_ms
        from flow_run_steps s
        where s.org_id = org and s.run_id = source and s.run_created_at = original.created_at
          and (s.status = 'completed' or (s.status = 'skipped' and s.error is null))
          -- The original's failure handlers ran for its failure, not for this run's.
          and s.step_id not like 'onFailure.%'
          -- A re-run keeps only the steps not downstream of its fromStep (and a foreach's items but one).
          and (rerunning is null
               or split_part(s.step_id, '[', 1) = any(keep)
               or (strpos(s.step_id, '[') > 0 and split_part(s.step_id, '[', 1) = any(keep_items_of)
                   and s.step_id <> all(drop_items)));
    end if;
    insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
    values (org, flow, actor, new_id::text, '$flow', 'queued', vars);
    run := queued;
    created := true;
    return next;
end;
$_$;

comment on function tolstoy_queue_run_v2(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean, jsonb) is
    'Queues a run with its plan (steps + the actions they call, with their tools) and its queued log row, or '
    'returns the run an Idempotency-Key (or, for a retry, the retried run) already made. One retry per run. '
    'acting: the one who queues it may act as actor (acts_as_user). rerunning: a re-run of the run named by its '
    '"of" ({of, fromStep, steps?, keep, keepItemsOf, dropItems, children}): the checkpoints of its kept steps '
    'are copied, its plan is the original''s (or built from "steps"), its root is itself (new Idempotency-Keys). '
    'A new run passes tolstoy_admit_run first (quotas: TQ001, TQ002).';

-- The previous release's queries (and schedules, inbound hooks, subflow steps) call it by this name and
-- signature: it stays, as the new one without a re-run (expand before contract).
create or replace function tolstoy_queue_run(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                             vars jsonb, key text, retrying uuid, acting boolean default false)
returns table (run flow_runs, created boolean)
language sql as $$
    select q.run, q.created
    from tolstoy_queue_run_v2(org, flow, queue_run_version, actor, vars, key, retrying, acting, null) as q
$$;

comment on function tolstoy_queue_run(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean) is
    'tolstoy_queue_run_v2 without a re-run: queues a run (or finds the one an Idempotency-Key or a retry made).';

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
        begin
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
                        -- "child" for the previous release's workers, which read it before anything else.
                    return answer || jsonb_build_object(
                        'created', false, 'parked', true, 'waitingFor', latest.id,
                        'child', jsonb_build_object('id', latest.id, 'flow_id', latest.flow_id,
                                                    'flow_version', latest.flow_version, 'status', latest.status,
                                                    'error', latest.error, 'outputs', null, 'sealed', null));
                    end if;
                end if;
            end if;
            if child.id is null and step not like 'onFailure.%'
                    and parent.plan #> array['rerun', 'children', step] is not null then
                -- A re-run that reaches into this step's child (fromStep "<step>/<its step>"): the child is a
                -- re-run of the original's child from that step, with its variables.
                select * into latest from flow_runs c
                where c.org_id = org and c.id = (parent.plan #>> array['rerun', 'children', step, 'of'])::uuid
                  and c.created_at
                      between tolstoy_run_from((parent.plan #>> array['rerun', 'children', step, 'of'])::uuid)
                          and tolstoy_run_until((parent.plan #>> array['rerun', 'children', step, 'of'])::uuid);
                if latest.id is null then
                    return answer || jsonb_build_object('error', jsonb_build_object(
                        'name', 'SubflowNotFound',
                        'message', format('The child run this step re-runs (%s) is gone (purged).',
                                          parent.plan #>> array['rerun', 'children', step, 'of'])));
                end if;
                select (q.run).* into child
                from tolstoy_queue_run_v2(org, latest.flow_id, latest.flow_version, parent.user_id,
                                          latest.variables, null, null, false,
                                          parent.plan #> array['rerun', 'children', step]) as q;
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
    'under way; a re-run reaching into the step''s child queues a re-run of that child), and park the parent '
    'while a waited-for child runs. Acts for org under row-level security.';


-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

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
        begin
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
                        -- "child" for the previous release's workers, which read it before anything else.
                    return answer || jsonb_build_object(
                        'created', false, 'parked', true, 'waitingFor', latest.id,
                        'child', jsonb_build_object('id', latest.id, 'flow_id', latest.flow_id,
                                                    'flow_version', latest.flow_version, 'status', latest.status,
                                                    'error', latest.error, 'outputs', null, 'sealed', null));
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
    'under way), and park the parent while a waited-for child runs. Acts for org under row-level security.';

drop function tolstoy_plan(uuid, jsonb, jsonb);
drop function tolstoy_queue_run_v2(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean, jsonb);

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

-- squawk-ignore require-concurrent-index-deletion
drop index flow_runs_org_id_rerun_of_idx;

alter table flow_runs drop column rerun_of;
