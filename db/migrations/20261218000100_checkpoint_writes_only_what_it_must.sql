-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- A checkpoint of a run that goes on ("continue": the one before a call, say) wrote to three places
-- whatever it had to say: the organization's worker time, the run's row (its lease and when its time
-- was counted) and the log (an insert of no rows still sets up its routing to the month's partition).
-- Now the worker time is counted at most once a second while the run goes on, and always when it
-- leaves running; the lease is renewed by the worker's heartbeat, and here only once half of it is
-- gone; the log insert runs when there are rows. A quick run's "continue" checkpoint then writes its
-- steps and nothing else (docs/performance.md, "What PostgreSQL does per run").
--
-- The two callers that may park the run right after their checkpoint (tolstoy_subflow, and
-- tolstoy_checkpoint_slots when the step takes a slot) ask it to count the worker time at once
-- (writes.count_time): time not counted before a run leaves running would never be, as its next claim
-- starts counting afresh.
create or replace function tolstoy_checkpoint(worker text, org uuid, run uuid, token integer, writes jsonb)
returns jsonb
language plpgsql as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    -- The run's month, computed here once: in the lease check's query the planner would compute each
    -- bound anew on every plan it makes for it, through the SQL-function executor (about 45 µs each).
    month_from timestamptz := tolstoy_run_from(run);
    month_until timestamptz := tolstoy_run_until(run);
    current flow_runs;
    transition jsonb := coalesce(writes -> 'run', '{"action": "continue"}');
    fault jsonb := coalesce(transition -> 'error', '{}');
    half_life double precision := coalesce((writes ->> 'half_life_seconds')::double precision, 300);
    max_handbacks integer := coalesce((writes ->> 'max_handbacks')::integer, 20);
    outcome flow_run_status;
    progress boolean := false;
    lease interval := make_interval(secs => coalesce((writes ->> 'lease_seconds')::double precision, 30));
    -- Whether this checkpoint counts the worker time (below): always when the run leaves running, or when
    -- the caller may park it right after (writes.count_time: tolstoy_subflow, tolstoy_checkpoint_slots);
    -- for a run that goes on, once a second at most, so that a quick run's checkpoints before its last
    -- write neither the organization's row nor its own.
    counting boolean;
begin
    perform set_config('app.org_id', org::text, true);
    select * into current from flow_runs r
    where r.org_id = org and r.id = run and r.lease_owner = worker and r.lease_token = token
      and r.created_at between month_from and month_until
      and r.status = 'running' and r.lease_expires_at > clock_now
    for update;
    if not found then
        raise exception 'The lease on run % is lost.', run using errcode = 'TL001';
    end if;
    -- The steps in one insert, in their order (started_at read per row, so steps checkpointed together
    -- keep it), as the log rows below: an insert into the partitioned flow_run_steps sets up its routing
    -- to the month's partition once per statement. A step given twice keeps its last write (an insert
    -- may not update one row twice).
    with written as (
        insert into flow_run_steps as s (org_id, run_id, run_created_at, step_id, status, attempt, inputs, outputs,
                                         sealed, error, wake_at, call_started_at, started_at, finished_at,
                                         duration_ms)
        select org, run, current.created_at, e.step ->> 'step_id', e.step ->> 'status',
               coalesce((e.step ->> 'attempt')::integer, 1), e.step -> 'inputs', e.step -> 'outputs',
               decode(e.step ->> 'sealed', 'base64'), e.step -> 'error',
               clock_now + make_interval(secs => (e.step ->> 'wake_in_ms')::double precision / 1000),
               case when (e.step ->> 'call_started')::boolean then clock_now end,
               tolstoy_clock_timestamp(),
               case when e.step ->> 'status' in ('completed', 'skipped', 'failed') then tolstoy_clock_timestamp() end,
               (e.step ->> 'duration_ms')::integer
        from (select distinct on (w.step ->> 'step_id') w.step, w.n
              from jsonb_array_elements(coalesce(writes -> 'steps', '[]')) with ordinality as w(step, n)
              order by w.step ->> 'step_id', w.n desc) as e
        order by e.n
        on conflict (org_id, run_id, step_id, run_created_at) do update
        set status = excluded.status, attempt = excluded.attempt,
            inputs = coalesce(excluded.inputs, s.inputs), outputs = excluded.outputs, sealed = excluded.sealed,
            error = excluded.error, wake_at = excluded.wake_at,
            call_started_at = case when excluded.status = 'running' then excluded.call_started_at
                                   else s.call_started_at end,
            finished_at = excluded.finished_at, duration_ms = excluded.duration_ms,
            started_at = case when s.status in ('completed', 'skipped', 'failed') then clock_now else s.started_at end
        returning s.step_id, s.status
    )
    select coalesce(bool_or(w.status in ('completed', 'skipped', 'failed') and strpos(w.step_id, '[') = 0), false)
    into progress
    from written w;
    -- The log rows in one statement, in their order (created_at read per row): an insert into the
    -- partitioned table sets up its routing to the month's partition (the partition, its indexes, its
    -- policies) once per statement, which cost about 0.2 ms a row when each row had its own; none at
    -- all when there are none.
    if jsonb_array_length(coalesce(writes -> 'events', '[]')) > 0 then
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error,
                                    duration_ms, created_at)
        select org, current.flow_id, current.user_id, run::text, e.event ->> 'step_key',
               (e.event ->> 'status')::execution_status, coalesce(e.event -> 'inputs', '{}'),
               nullif(e.event -> 'error', 'null'), (e.event ->> 'duration_ms')::integer, tolstoy_clock_timestamp()
        from jsonb_array_elements(writes -> 'events') as e(event);
    end if;
    -- The worker time since the last count (the claim, or a checkpoint that counted), against the
    -- organization, decayed: what fair claims weigh it by. Counted at most once a second while the run
    -- goes on (a second's lag in what a claim weighs), and always when it leaves running.
    counting := transition ->> 'action' <> 'continue' or coalesce((writes ->> 'count_time')::boolean, false)
                or current.accounted_at is null or current.accounted_at <= clock_now - interval '1 second';
    if counting then
        insert into organization_worker_time as w (org_id, seconds, counted_at)
        values (org, greatest(extract(epoch from clock_now - coalesce(current.accounted_at, clock_now)), 0), clock_now)
        on conflict (org_id) do update
        set seconds = w.seconds * exp(greatest(-ln(2) * greatest(extract(epoch from clock_now - w.counted_at), 0)
                                               / half_life, -50))
                      + excluded.seconds,
            counted_at = greatest(w.counted_at, clock_now);
    end if;
    if progress and (current.strikes > 0 or current.handbacks > 0) then
        -- The run got past the step it was in when it was last struck: whatever stopped its worker
        -- then was not this run.
        update flow_runs set strikes = 0, handbacks = 0
        where org_id = org and id = run and created_at = current.created_at;
        current.strikes := 0;
        current.handbacks := 0;
    end if;
    case transition ->> 'action'
        when 'continue' then
            -- The lease is renewed by the worker's heartbeat; here only once half of it is gone, as a beat
            -- the heartbeat may have missed. A quick run's checkpoint then updates nothing of its row
            -- (docs/performance.md, "What PostgreSQL does per run").
            if counting or current.lease_expires_at < clock_now + lease / 2 then
                update flow_runs
                set lease_expires_at = clock_now + lease,
                    accounted_at = case when counting then clock_now else accounted_at end
                where org_id = org and id = run and created_at = current.created_at;
            end if;
        when 'pause' then
            outcome := tolstoy_release_run(current, 'queued', (transition ->> 'after_ms')::double precision, null);
        when 'wait' then
            outcome := tolstoy_release_run(current, 'waiting', null, null);
        when 'handback' then
            update flow_runs set handbacks = handbacks + 1
            where org_id = org and id = run and created_at = current.created_at;
            outcome := tolstoy_release_run(
                current, case when current.handbacks + 1 > max_handbacks then 'failed' else 'queued' end::flow_run_status,
                (transition ->> 'after_ms')::double precision,
                jsonb_build_object(
                    'name', 'HandbackLimit', 'sqlstate', fault ->> 'sqlstate',
                    'message', format('The run was handed back to the queue %s times in a row after transient '
                                      'faults of the database (the limit is %s, TOLSTOY_MAX_HANDBACKS); it is not '
                                      'tried again. The last: %s (SQLSTATE %s).', current.handbacks + 1,
                                      max_handbacks, left(fault ->> 'message', 500),
                                      coalesce(fault ->> 'sqlstate', 'none'))));
        when 'fault' then
            outcome := tolstoy_run_fault(current, fault, coalesce((writes ->> 'max_recoveries')::integer, 3),
                                         (transition ->> 'after_ms')::double precision);
        when 'finish' then
            update flow_runs
            set status = (transition ->> 'status')::flow_run_status, error = nullif(transition -> 'error', 'null'),
                finished_at = clock_now, lease_owner = null, lease_token = null, lease_expires_at = null
            where org_id = org and id = run and created_at = current.created_at;
            outcome := (transition ->> 'status')::flow_run_status;
        else
            raise exception 'tolstoy_checkpoint: unknown run action %', transition ->> 'action'
                using errcode = 'invalid_parameter_value';
    end case;
    return jsonb_build_object('cancel', current.cancel_requested, 'status', coalesce(outcome, 'running'));
end;
$$;

comment on function tolstoy_checkpoint(text, uuid, uuid, integer, jsonb) is
    'One engine step: checks the worker''s lease (TL001 when lost), writes step checkpoints and log events, counts '
    'the worker time against the organization (at most once a second while the run goes on, unless writes.count_time), '
    'and moves the run '
    '(continue, renewing the lease once half of it is gone; pause, wait, finish, handback, fault; a pending cancel '
    'ends it cancelled rather than unfinished) in one transaction. Acts for org under row-level security.';

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
    -- Lease check, the parent's row locked until commit, the pending writes; the worker time counted now,
    -- as the parent may be parked below.
    answer := tolstoy_checkpoint(worker, org, run, token, coalesce(writes, '{}') || '{"count_time": true}');
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

create or replace function tolstoy_checkpoint_slots(worker text, org uuid, run uuid, token integer, writes jsonb,
                                                    call jsonb)
returns jsonb
language plpgsql as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    current flow_runs;
    slot jsonb := nullif(call -> 'slot', 'null');
    step text := slot ->> 'step_id';
    slot_key text := coalesce(slot ->> 'key', '');
    slot_limit integer := (slot ->> 'limit')::integer;
    since jsonb := coalesce(nullif(slot -> 'since', 'null'), to_jsonb(clock_now));
    started jsonb;
    shown jsonb;
    answer jsonb;
    outcome flow_run_status;
begin
    if slot is not null and (slot_limit is null or slot_limit < 1 or step is null) then
        raise exception 'tolstoy_checkpoint_slots: invalid slot %', slot using errcode = 'invalid_parameter_value';
    end if;
    -- The log row saying the call starts is written once the slot is known: a step that waits did not start.
    started := (select e from jsonb_array_elements(coalesce(writes -> 'events', '[]')) as e
                where e ->> 'step_key' = step and e ->> 'status' = 'started' limit 1);
    if started is not null then
        writes := jsonb_set(writes, '{events}', coalesce((
            select jsonb_agg(e) from jsonb_array_elements(writes -> 'events') as e
            where not (e ->> 'step_key' = step and e ->> 'status' = 'started')), '[]'));
    end if;
    -- The checkpoint first (lease, writes, budget), so that the flow's slot lock is the last lock this statement
    -- waits for, as it is for a run that frees slots when it leaves running (flow_runs_release_step_slots): one
    -- that holds it never waits for a lock the other holds.
    -- With a slot to take, the worker time is counted now: without one the run is parked below.
    answer := tolstoy_checkpoint_call(worker, org, run, token,
                                      case when slot is null then writes
                                           else coalesce(writes, '{}') || '{"count_time": true}' end,
                                      call - 'slot' - 'release');
    select * into current from flow_runs r
    where r.org_id = org and r.id = run and r.created_at between tolstoy_run_from(run) and tolstoy_run_until(run);
    perform pg_advisory_xact_lock(tolstoy_slot_lock(org, current.flow_id));
    -- The steps whose end this statement records free their slots.
    if jsonb_array_length(coalesce(call -> 'release', '[]')) > 0 then
        perform tolstoy_release_step_slots(org, run, array(select jsonb_array_elements_text(call -> 'release')));
    end if;
    if slot is null or current.status <> 'running' or coalesce((answer #>> '{budget,wait}')::double precision, 0) > 0
       or coalesce((answer #>> '{budget,refused}')::boolean, false) then
        -- No slot to take, or the call does not start now (it waits for its budget, or waited too long).
        return answer;
    end if;
    -- The slot the run holds already (a recovered run, or one a release handed it), or a free one.
    if exists (select 1 from flow_step_slots h
               where h.org_id = org and h.flow_id = current.flow_id and h.step_id = step and h.key = slot_key
                 and h.run_id = run)
       or slot_limit > (select count(*) from flow_step_slots h
                        where h.org_id = org and h.flow_id = current.flow_id and h.step_id = step
                          and h.key = slot_key) then
        insert into flow_step_slots (org_id, flow_id, step_id, key, run_id, run_created_at, taken_at)
        values (org, current.flow_id, step, slot_key, run, current.created_at, clock_now)
        on conflict do nothing;
        if not current.takes_step_slots then
            update flow_runs set takes_step_slots = true
            where org_id = org and id = run and created_at = current.created_at;
        end if;
        if started is not null then
            insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
            values (org, current.flow_id, current.user_id, run::text, step, 'started',
                    coalesce(started -> 'inputs', '{}'));
        end if;
        return answer || jsonb_build_object('slot', jsonb_build_object('taken', true));
    end if;
    -- No slot: the step waits instead of calling, its run parked with no due time (a release hands it the
    -- slot and wakes it), holding no thread, lease or attempt. Its inputs say what it waits for, and since when.
    shown := jsonb_build_object('concurrency', jsonb_build_object(
        'key', slot -> 'key', 'limit', slot_limit, 'since', since));
    update flow_run_steps s
    set status = 'waiting', call_started_at = null, wake_at = null,
        inputs = case when jsonb_typeof(s.inputs) = 'object' then s.inputs else '{}' end || shown
    where s.org_id = org and s.run_id = run and s.run_created_at = current.created_at and s.step_id = step;
    if slot -> 'since' is null or slot -> 'since' = 'null' then
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
        values (org, current.flow_id, current.user_id, run::text, step, 'pending', shown);
    end if;
    outcome := tolstoy_release_run(current, 'queued', 0, null);
    update flow_runs
    set run_after = 'infinity', waiting_for = 'concurrency',
        waiting_on = jsonb_build_object('key', slot -> 'key', 'limit', slot_limit), waiting_step = step,
        waiting_since = (since #>> '{}')::timestamptz, waiting_until = null
    where org_id = org and id = run and created_at = current.created_at and status = 'queued';
    return answer || jsonb_build_object('status', outcome, 'slot', jsonb_build_object('waiting', true) || shown);
end;
$$;

comment on function tolstoy_checkpoint_slots(text, uuid, uuid, integer, jsonb, jsonb) is
    'tolstoy_checkpoint_call with step slots, in the same statement: the checkpoint, then (under the flow''s slot '
    'lock) the slots of the steps whose end it records are freed (call.release, each handed to the oldest run '
    'waiting for it) and the slot of the step whose call starts is taken (call.slot: {step_id, key, limit, since}; '
    'kept when the run holds it already). Without a free slot the step is checkpointed waiting (inputs.concurrency) '
    'and the run parked queued with no due time (waiting_for concurrency) until a release hands it the slot.';

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create or replace function tolstoy_checkpoint(worker text, org uuid, run uuid, token integer, writes jsonb)
returns jsonb
language plpgsql as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    -- The run's month, computed here once: in the lease check's query the planner would compute each
    -- bound anew on every plan it makes for it, through the SQL-function executor (about 45 µs each).
    month_from timestamptz := tolstoy_run_from(run);
    month_until timestamptz := tolstoy_run_until(run);
    current flow_runs;
    transition jsonb := coalesce(writes -> 'run', '{"action": "continue"}');
    fault jsonb := coalesce(transition -> 'error', '{}');
    half_life double precision := coalesce((writes ->> 'half_life_seconds')::double precision, 300);
    max_handbacks integer := coalesce((writes ->> 'max_handbacks')::integer, 20);
    outcome flow_run_status;
    progress boolean := false;
begin
    perform set_config('app.org_id', org::text, true);
    select * into current from flow_runs r
    where r.org_id = org and r.id = run and r.lease_owner = worker and r.lease_token = token
      and r.created_at between month_from and month_until
      and r.status = 'running' and r.lease_expires_at > clock_now
    for update;
    if not found then
        raise exception 'The lease on run % is lost.', run using errcode = 'TL001';
    end if;
    -- The steps in one insert, in their order (started_at read per row, so steps checkpointed together
    -- keep it), as the log rows below: an insert into the partitioned flow_run_steps sets up its routing
    -- to the month's partition once per statement. A step given twice keeps its last write (an insert
    -- may not update one row twice).
    with written as (
        insert into flow_run_steps as s (org_id, run_id, run_created_at, step_id, status, attempt, inputs, outputs,
                                         sealed, error, wake_at, call_started_at, started_at, finished_at,
                                         duration_ms)
        select org, run, current.created_at, e.step ->> 'step_id', e.step ->> 'status',
               coalesce((e.step ->> 'attempt')::integer, 1), e.step -> 'inputs', e.step -> 'outputs',
               decode(e.step ->> 'sealed', 'base64'), e.step -> 'error',
               clock_now + make_interval(secs => (e.step ->> 'wake_in_ms')::double precision / 1000),
               case when (e.step ->> 'call_started')::boolean then clock_now end,
               tolstoy_clock_timestamp(),
               case when e.step ->> 'status' in ('completed', 'skipped', 'failed') then tolstoy_clock_timestamp() end,
               (e.step ->> 'duration_ms')::integer
        from (select distinct on (w.step ->> 'step_id') w.step, w.n
              from jsonb_array_elements(coalesce(writes -> 'steps', '[]')) with ordinality as w(step, n)
              order by w.step ->> 'step_id', w.n desc) as e
        order by e.n
        on conflict (org_id, run_id, step_id, run_created_at) do update
        set status = excluded.status, attempt = excluded.attempt,
            inputs = coalesce(excluded.inputs, s.inputs), outputs = excluded.outputs, sealed = excluded.sealed,
            error = excluded.error, wake_at = excluded.wake_at,
            call_started_at = case when excluded.status = 'running' then excluded.call_started_at
                                   else s.call_started_at end,
            finished_at = excluded.finished_at, duration_ms = excluded.duration_ms,
            started_at = case when s.status in ('completed', 'skipped', 'failed') then clock_now else s.started_at end
        returning s.step_id, s.status
    )
    select coalesce(bool_or(w.status in ('completed', 'skipped', 'failed') and strpos(w.step_id, '[') = 0), false)
    into progress
    from written w;
    -- The log rows in one statement, in their order (created_at read per row): an insert into the
    -- partitioned table sets up its routing to the month's partition (the partition, its indexes, its
    -- policies) once per statement, which cost about 0.2 ms a row when each row had its own.
    insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error,
                                duration_ms, created_at)
    select org, current.flow_id, current.user_id, run::text, e.event ->> 'step_key',
           (e.event ->> 'status')::execution_status, coalesce(e.event -> 'inputs', '{}'),
           nullif(e.event -> 'error', 'null'), (e.event ->> 'duration_ms')::integer, tolstoy_clock_timestamp()
    from jsonb_array_elements(coalesce(writes -> 'events', '[]')) as e(event);
    -- The worker time since the last count (the claim, or the previous checkpoint), against the
    -- organization, decayed: what fair claims weigh it by.
    insert into organization_worker_time as w (org_id, seconds, counted_at)
    values (org, greatest(extract(epoch from clock_now - coalesce(current.accounted_at, clock_now)), 0), clock_now)
    on conflict (org_id) do update
    set seconds = w.seconds * exp(greatest(-ln(2) * greatest(extract(epoch from clock_now - w.counted_at), 0)
                                           / half_life, -50))
                  + excluded.seconds,
        counted_at = greatest(w.counted_at, clock_now);
    if progress and (current.strikes > 0 or current.handbacks > 0) then
        -- The run got past the step it was in when it was last struck: whatever stopped its worker
        -- then was not this run.
        update flow_runs set strikes = 0, handbacks = 0
        where org_id = org and id = run and created_at = current.created_at;
        current.strikes := 0;
        current.handbacks := 0;
    end if;
    case transition ->> 'action'
        when 'continue' then
            update flow_runs
            set lease_expires_at = clock_now + make_interval(secs => coalesce((writes ->> 'lease_seconds')::double precision,
                                                                          30)),
                accounted_at = clock_now
            where org_id = org and id = run and created_at = current.created_at;
        when 'pause' then
            outcome := tolstoy_release_run(current, 'queued', (transition ->> 'after_ms')::double precision, null);
        when 'wait' then
            outcome := tolstoy_release_run(current, 'waiting', null, null);
        when 'handback' then
            update flow_runs set handbacks = handbacks + 1
            where org_id = org and id = run and created_at = current.created_at;
            outcome := tolstoy_release_run(
                current, case when current.handbacks + 1 > max_handbacks then 'failed' else 'queued' end::flow_run_status,
                (transition ->> 'after_ms')::double precision,
                jsonb_build_object(
                    'name', 'HandbackLimit', 'sqlstate', fault ->> 'sqlstate',
                    'message', format('The run was handed back to the queue %s times in a row after transient '
                                      'faults of the database (the limit is %s, TOLSTOY_MAX_HANDBACKS); it is not '
                                      'tried again. The last: %s (SQLSTATE %s).', current.handbacks + 1,
                                      max_handbacks, left(fault ->> 'message', 500),
                                      coalesce(fault ->> 'sqlstate', 'none'))));
        when 'fault' then
            outcome := tolstoy_run_fault(current, fault, coalesce((writes ->> 'max_recoveries')::integer, 3),
                                         (transition ->> 'after_ms')::double precision);
        when 'finish' then
            update flow_runs
            set status = (transition ->> 'status')::flow_run_status, error = nullif(transition -> 'error', 'null'),
                finished_at = clock_now, lease_owner = null, lease_token = null, lease_expires_at = null
            where org_id = org and id = run and created_at = current.created_at;
            outcome := (transition ->> 'status')::flow_run_status;
        else
            raise exception 'tolstoy_checkpoint: unknown run action %', transition ->> 'action'
                using errcode = 'invalid_parameter_value';
    end case;
    return jsonb_build_object('cancel', current.cancel_requested, 'status', coalesce(outcome, 'running'));
end;
$$;

comment on function tolstoy_checkpoint(text, uuid, uuid, integer, jsonb) is
    'One engine step: checks the worker''s lease (TL001 when lost), writes step checkpoints and log events, counts '
    'the worker time against the organization, and moves the run (continue, pause, wait, finish, handback, fault; '
    'a pending cancel ends it cancelled rather than unfinished) in one transaction. Acts for org under row-level '
    'security.';

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

create or replace function tolstoy_checkpoint_slots(worker text, org uuid, run uuid, token integer, writes jsonb,
                                                    call jsonb)
returns jsonb
language plpgsql as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    current flow_runs;
    slot jsonb := nullif(call -> 'slot', 'null');
    step text := slot ->> 'step_id';
    slot_key text := coalesce(slot ->> 'key', '');
    slot_limit integer := (slot ->> 'limit')::integer;
    since jsonb := coalesce(nullif(slot -> 'since', 'null'), to_jsonb(clock_now));
    started jsonb;
    shown jsonb;
    answer jsonb;
    outcome flow_run_status;
begin
    if slot is not null and (slot_limit is null or slot_limit < 1 or step is null) then
        raise exception 'tolstoy_checkpoint_slots: invalid slot %', slot using errcode = 'invalid_parameter_value';
    end if;
    -- The log row saying the call starts is written once the slot is known: a step that waits did not start.
    started := (select e from jsonb_array_elements(coalesce(writes -> 'events', '[]')) as e
                where e ->> 'step_key' = step and e ->> 'status' = 'started' limit 1);
    if started is not null then
        writes := jsonb_set(writes, '{events}', coalesce((
            select jsonb_agg(e) from jsonb_array_elements(writes -> 'events') as e
            where not (e ->> 'step_key' = step and e ->> 'status' = 'started')), '[]'));
    end if;
    -- The checkpoint first (lease, writes, budget), so that the flow's slot lock is the last lock this statement
    -- waits for, as it is for a run that frees slots when it leaves running (flow_runs_release_step_slots): one
    -- that holds it never waits for a lock the other holds.
    answer := tolstoy_checkpoint_call(worker, org, run, token, writes, call - 'slot' - 'release');
    select * into current from flow_runs r
    where r.org_id = org and r.id = run and r.created_at between tolstoy_run_from(run) and tolstoy_run_until(run);
    perform pg_advisory_xact_lock(tolstoy_slot_lock(org, current.flow_id));
    -- The steps whose end this statement records free their slots.
    if jsonb_array_length(coalesce(call -> 'release', '[]')) > 0 then
        perform tolstoy_release_step_slots(org, run, array(select jsonb_array_elements_text(call -> 'release')));
    end if;
    if slot is null or current.status <> 'running' or coalesce((answer #>> '{budget,wait}')::double precision, 0) > 0
       or coalesce((answer #>> '{budget,refused}')::boolean, false) then
        -- No slot to take, or the call does not start now (it waits for its budget, or waited too long).
        return answer;
    end if;
    -- The slot the run holds already (a recovered run, or one a release handed it), or a free one.
    if exists (select 1 from flow_step_slots h
               where h.org_id = org and h.flow_id = current.flow_id and h.step_id = step and h.key = slot_key
                 and h.run_id = run)
       or slot_limit > (select count(*) from flow_step_slots h
                        where h.org_id = org and h.flow_id = current.flow_id and h.step_id = step
                          and h.key = slot_key) then
        insert into flow_step_slots (org_id, flow_id, step_id, key, run_id, run_created_at, taken_at)
        values (org, current.flow_id, step, slot_key, run, current.created_at, clock_now)
        on conflict do nothing;
        if not current.takes_step_slots then
            update flow_runs set takes_step_slots = true
            where org_id = org and id = run and created_at = current.created_at;
        end if;
        if started is not null then
            insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
            values (org, current.flow_id, current.user_id, run::text, step, 'started',
                    coalesce(started -> 'inputs', '{}'));
        end if;
        return answer || jsonb_build_object('slot', jsonb_build_object('taken', true));
    end if;
    -- No slot: the step waits instead of calling, its run parked with no due time (a release hands it the
    -- slot and wakes it), holding no thread, lease or attempt. Its inputs say what it waits for, and since when.
    shown := jsonb_build_object('concurrency', jsonb_build_object(
        'key', slot -> 'key', 'limit', slot_limit, 'since', since));
    update flow_run_steps s
    set status = 'waiting', call_started_at = null, wake_at = null,
        inputs = case when jsonb_typeof(s.inputs) = 'object' then s.inputs else '{}' end || shown
    where s.org_id = org and s.run_id = run and s.run_created_at = current.created_at and s.step_id = step;
    if slot -> 'since' is null or slot -> 'since' = 'null' then
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
        values (org, current.flow_id, current.user_id, run::text, step, 'pending', shown);
    end if;
    outcome := tolstoy_release_run(current, 'queued', 0, null);
    update flow_runs
    set run_after = 'infinity', waiting_for = 'concurrency',
        waiting_on = jsonb_build_object('key', slot -> 'key', 'limit', slot_limit), waiting_step = step,
        waiting_since = (since #>> '{}')::timestamptz, waiting_until = null
    where org_id = org and id = run and created_at = current.created_at and status = 'queued';
    return answer || jsonb_build_object('status', outcome, 'slot', jsonb_build_object('waiting', true) || shown);
end;
$$;

comment on function tolstoy_checkpoint_slots(text, uuid, uuid, integer, jsonb, jsonb) is
    'tolstoy_checkpoint_call with step slots, in the same statement: the checkpoint, then (under the flow''s slot '
    'lock) the slots of the steps whose end it records are freed (call.release, each handed to the oldest run '
    'waiting for it) and the slot of the step whose call starts is taken (call.slot: {step_id, key, limit, since}; '
    'kept when the run holds it already). Without a free slot the step is checkpointed waiting (inputs.concurrency) '
    'and the run parked queued with no due time (waiting_for concurrency) until a release hands it the slot.';
