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
    -- Whether this checkpoint counts the worker time (below): always when the run leaves running; for a
    -- run that goes on, once a second at most, so that a quick run's checkpoints before its last write
    -- neither the organization's row nor its own.
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
    counting := transition ->> 'action' <> 'continue' or current.accounted_at is null
                or current.accounted_at <= clock_now - interval '1 second';
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
    'the worker time against the organization (at most once a second while the run goes on), and moves the run '
    '(continue, renewing the lease once half of it is gone; pause, wait, finish, handback, fault; a pending cancel '
    'ends it cancelled rather than unfinished) in one transaction. Acts for org under row-level security.';

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
