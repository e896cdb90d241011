-- migrate:up

set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- A subflow's child run joins its parent's trace (issue 27, docs/observability.md): tolstoy_subflow, in the
-- update that links the child to its parent, sets the child's trace_parent to the parent's run span (in the
-- parent's caller's trace, or the parent's own), unless the child already has one. No statement more.

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
        -- The child joins its parent's trace, under the parent's run span (tolstoy/tracing.py run_ids: the
        -- trace is the parent's caller's, or the parent's id; the run span's id is the first 8 bytes of a
        -- sha256 of the run's id), so a run and its subflows are one trace.
        update flow_runs c
        set parent_run_id = run, parent_step_id = step, depth = parent.depth + 1,
            trace_parent = coalesce(c.trace_parent, format('00-%s-%s-01',
                coalesce(substr(parent.trace_parent, 4, 32), replace(parent.id::text, '-', '')),
                coalesce(nullif(substr(encode(sha256(convert_to('tolstoy-run-span:', 'UTF8') || uuid_send(parent.id)),
                                              'hex'), 1, 16), '0000000000000000'), '0000000000000001')))
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
    'while a waited-for child runs. The child joins the parent''s trace (flow_runs.trace_parent). Acts for org '
    'under row-level security.';

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
