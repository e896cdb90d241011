-- A step's checkpoint (the one write path of a leased run), subflows, and what wakes a parked run.
--
-- The current source of these functions (db/functions/README.md says how to change one).

create or replace function tolstoy_checkpoint(worker text, org uuid, run uuid, token integer, writes jsonb)
returns jsonb
language plpgsql set plan_cache_mode = force_generic_plan as $$
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
language plpgsql set plan_cache_mode = force_generic_plan as $$
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

create or replace function flow_runs_wake_parent() returns trigger
language plpgsql as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    chain uuid[];
    -- The months the chain's runs are in: from the parent's to its newest retry's.
    chain_from timestamptz := tolstoy_run_from(new.parent_run_id);
    chain_until timestamptz;
begin
    -- The parent and its retries (one retry per run: a path from the parent on). The run waiting for this
    -- child is the parent, or a retry of it that waits for the child its chain started (tolstoy_subflow).
    chain := array(
        with recursive later(id, created_at) as (
            select new.parent_run_id, chain_from
            union all
            select r.id, r.created_at
            from flow_runs r
            join later l on r.org_id = new.org_id and r.retry_of = l.id
                            and r.created_at >= l.created_at  -- a retry is queued after its run
        )
        select l.id from later l);
    chain_until := (select max(tolstoy_run_until(c)) from unnest(chain) as c);
    perform 1 from flow_runs p
    where p.org_id = new.org_id and p.id = any(chain) and p.created_at between chain_from and chain_until
    order by p.created_at
    for update;
    -- A new statement, so a new snapshot: it sees a run that parked while this waited for the lock.
    update flow_runs p
    set status = 'queued', run_after = clock_now
    where p.org_id = new.org_id and p.id = any(chain) and p.status = 'waiting'
      and p.created_at between chain_from and chain_until
      and exists (select 1 from flow_run_steps s
                  where s.org_id = p.org_id and s.run_id = p.id and s.run_created_at = p.created_at
                    and s.run_created_at between chain_from and chain_until
                    and s.step_id = new.parent_step_id and s.status = 'waiting');
    return null;
end;
$$;

comment on function flow_runs_wake_parent() is
    'AFTER UPDATE trigger: a child run that finished queues its parent again when the parent waits for it, or '
    'the retry of the parent that waits for it.';

-- Why a parked run waits (flow_runs.waiting_for and its details, the run's waitingFor in the API), set
-- when the run parks and cleared when it leaves: a BEFORE UPDATE trigger, so every function that parks or
-- wakes a run (tolstoy_checkpoint through tolstoy_release_run, tolstoy_subflow, tolstoy_send_signal,
-- tolstoy_resolve_step, flow_runs_wake_parent, the claim, a cancel) keeps it right without knowing of it.
-- Parking (running -> queued or waiting) reads the run's steps that wait, which the same transaction has
-- just checkpointed: an unknown outcome first (a person must act), then a signal, a child run (a waiting
-- step with no wake time), a retry's back-off (a waiting step with the error of its last attempt), a delay
-- (time alone), the earliest wake first within a kind. A statement that sets
-- waiting_for itself (a wait for rate budget, say) is left as it set it. Leaving (claimed, finished,
-- woken from waiting, or woken early by a signal: run_after moved earlier) clears it.
create or replace function flow_runs_waiting_for() returns trigger
language plpgsql as $$
declare
    parked record;
begin
    if new.waiting_for is distinct from old.waiting_for then
        return new;
    end if;
    if new.status in ('queued', 'waiting') and old.status = 'running' then
        select w.step_id, w.kind, w.since, w.wake_at, w.signal, w.budget
        into parked
        from (select s.step_id, s.started_at, s.wake_at,
                     case when s.status = 'outcome_unknown' then 'outcomeUnknown'
                          when s.inputs ? 'onTimeout' and (s.inputs ? 'signal' or s.inputs ? 'signals') then 'signal'
                          when s.wake_at is null then 'child'
                          -- A call waiting for its credential's rate budget (rate_budgets.sql): its inputs
                          -- say which budget, its wake_at when the call may go.
                          when jsonb_typeof(s.inputs -> 'rateLimit') = 'object' then 'rateLimit'
                          when s.error is not null and s.error <> 'null' then 'retry'
                          else 'delay' end as kind,
                     case when s.status = 'outcome_unknown' then coalesce(s.call_started_at, s.updated_at)
                          else s.started_at end as since,
                     coalesce(s.inputs -> 'signals', s.inputs -> 'signal') as signal,
                     s.inputs -> 'rateLimit' as budget
              from flow_run_steps s
              where s.org_id = new.org_id and s.run_id = new.id and s.run_created_at = new.created_at
                and s.status in ('waiting', 'outcome_unknown')) as w
        order by array_position(array['outcomeUnknown', 'signal', 'child', 'rateLimit', 'retry', 'delay'], w.kind),
                 w.wake_at nulls last, w.started_at, w.step_id
        limit 1;
        if parked.step_id is null then
            new.waiting_for := null;
            new.waiting_on := null;
            new.waiting_step := null;
            new.waiting_since := null;
            new.waiting_until := null;
            return new;
        end if;
        new.waiting_for := parked.kind;
        new.waiting_step := parked.step_id;
        new.waiting_since := parked.since;
        new.waiting_until := case when parked.kind in ('signal', 'rateLimit', 'retry', 'delay') then parked.wake_at end;
        new.waiting_on := case parked.kind
            when 'signal' then parked.signal
            when 'rateLimit' then jsonb_build_object('toolId', parked.budget -> 'toolId',
                                                     'scope', parked.budget -> 'scope')
            when 'child' then (select to_jsonb(c.id)
                               from flow_runs c
                               where c.org_id = new.org_id and c.parent_run_id = new.id
                                 and c.parent_step_id = parked.step_id
                                 and c.created_at >= tolstoy_run_from(new.id)  -- a child is queued after its parent
                               order by c.created_at desc
                               limit 1)
            else to_jsonb(parked.step_id) end;
        return new;
    end if;
    if new.status not in ('queued', 'waiting') or (old.status = 'waiting' and new.status = 'queued')
       or new.run_after < old.run_after then
        new.waiting_for := null;
        new.waiting_on := null;
        new.waiting_step := null;
        new.waiting_since := null;
        new.waiting_until := null;
    end if;
    return new;
end;
$$;

comment on function flow_runs_waiting_for() is
    'BEFORE UPDATE trigger on flow_runs: when a run parks, records why (waiting_for, waiting_on, waiting_step, '
    'waiting_since, waiting_until) from the steps that wait; clears it when the run is claimed, finishes or is '
    'woken; keeps what the statement set itself.';

create or replace function flow_runs_plan_on_failure() returns trigger
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

create or replace function tolstoy_expire_unknown_outcomes(timeout_days integer, batch integer)
returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    expired integer;
begin
    if timeout_days is null or timeout_days < 1 or batch is null or batch < 1 or batch > 100000 then
        raise exception 'tolstoy_expire_unknown_outcomes: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    -- Nearly always there is none: say so from the partial index alone, before any plan that joins the
    -- run partitions (with little to go on, the planner may read each one whole to join nothing).
    if not exists (select 1 from flow_run_steps s
                   where s.status = 'outcome_unknown'
                     and s.updated_at < clock_now - make_interval(days => timeout_days)) then
        return 0;
    end if;
    -- Each step as a person's "failed" resolution records it (runs.py on_post_resolve): the step failed
    -- with an OutcomeUnknown error, a log row, the run queued to go on. Runs being resolved right now
    -- (locked) are left to the next pass.
    with due as (
        select s.org_id, s.run_id, s.run_created_at, s.step_id, s.attempt, r.flow_id, r.user_id
        from flow_run_steps s
        join flow_runs r on r.org_id = s.org_id and r.id = s.run_id and r.created_at = s.run_created_at
        where s.status = 'outcome_unknown' and s.updated_at < clock_now - make_interval(days => timeout_days)
          and r.status = 'waiting'
        order by s.updated_at
        limit batch
        for update of s, r skip locked
    ), failed as (
        update flow_run_steps s
        set status = 'failed', call_started_at = null, finished_at = clock_now,
            error = jsonb_build_object(
                'name', 'OutcomeUnknown', 'timedOut', true,
                'message', format('Nobody resolved the unknown outcome of this call within %s days '
                                  '(TOLSTOY_UNKNOWN_OUTCOME_TIMEOUT_DAYS): the step failed.', timeout_days))
        from due
        where s.org_id = due.org_id and s.run_id = due.run_id and s.run_created_at = due.run_created_at
          and s.step_id = due.step_id
        returning s.org_id, s.run_id, s.run_created_at, s.step_id, s.error
    ), logged as (
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error)
        select due.org_id, due.flow_id, due.user_id, due.run_id::text, due.step_id, 'failed',
               jsonb_build_object('resolved', 'failed', 'attempt', due.attempt, 'timedOut', true), failed.error
        from due
        join failed on failed.org_id = due.org_id and failed.run_id = due.run_id and failed.step_id = due.step_id
    ), queued as (
        update flow_runs r
        set status = 'queued', run_after = clock_now
        from (select distinct org_id, run_id, run_created_at from due) d
        where r.org_id = d.org_id and r.id = d.run_id and r.created_at = d.run_created_at and r.status = 'waiting'
    )
    select count(*) into expired from failed;
    return expired;
end;
$$;

comment on function tolstoy_expire_unknown_outcomes(integer, integer) is
    'Fails up to batch steps parked on an unknown outcome for more than timeout_days (as a "failed" resolution '
    'would) and queues their runs, so no run waits forever and retention can drop its month; returns how many.';
