-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- The upkeep's look for timed-out unknown outcomes reads no run partition when
-- there is none (20261208000403's tolstoy_expire_unknown_outcomes).
--
-- Each upkeep batch calls tolstoy_expire_unknown_outcomes, and with no step
-- parked on an unknown outcome (the usual case) its join of the steps to their
-- runs could still be planned as a hash join that reads every monthly flow_runs
-- partition whole to join nothing: every month of every organization's history,
-- at every batch. It now first asks the partial index
-- flow_run_steps_outcome_unknown_idx whether any step is due and returns 0 when
-- none is. Same arguments, owner and grants (create or replace keeps them).

create or replace function tolstoy_expire_unknown_outcomes(timeout_days integer, batch integer)
returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    expired integer;
begin
    if timeout_days is null or timeout_days < 1 or batch is null or batch < 1 or batch > 100000 then
        raise exception 'tolstoy_expire_unknown_outcomes: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    -- Nearly always there is none: say so from the partial index alone, before any plan that joins the
    -- run partitions (with little to go on, the planner may read each one whole to join nothing).
    if not exists (select 1 from flow_run_steps s
                   where s.status = 'outcome_unknown'
                     and s.updated_at < now() - make_interval(days => timeout_days)) then
        return 0;
    end if;
    -- Each step as a person's "failed" resolution records it (runs.py on_post_resolve): the step failed
    -- with an OutcomeUnknown error, a log row, the run queued to go on. Runs being resolved right now
    -- (locked) are left to the next pass.
    with due as (
        select s.org_id, s.run_id, s.run_created_at, s.step_id, s.attempt, r.flow_id, r.user_id
        from flow_run_steps s
        join flow_runs r on r.org_id = s.org_id and r.id = s.run_id and r.created_at = s.run_created_at
        where s.status = 'outcome_unknown' and s.updated_at < now() - make_interval(days => timeout_days)
          and r.status = 'waiting'
        order by s.updated_at
        limit batch
        for update of s, r skip locked
    ), failed as (
        update flow_run_steps s
        set status = 'failed', call_started_at = null, finished_at = now(),
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
        set status = 'queued', run_after = now()
        from (select distinct org_id, run_id, run_created_at from due) d
        where r.org_id = d.org_id and r.id = d.run_id and r.created_at = d.run_created_at and r.status = 'waiting'
    )
    select count(*) into expired from failed;
    return expired;
end;
$$;

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- The body of 20261208000403.
create or replace function tolstoy_expire_unknown_outcomes(timeout_days integer, batch integer)
returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    expired integer;
begin
    if timeout_days is null or timeout_days < 1 or batch is null or batch < 1 or batch > 100000 then
        raise exception 'tolstoy_expire_unknown_outcomes: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    -- Each step as a person's "failed" resolution records it (runs.py on_post_resolve): the step failed
    -- with an OutcomeUnknown error, a log row, the run queued to go on. Runs being resolved right now
    -- (locked) are left to the next pass.
    with due as (
        select s.org_id, s.run_id, s.run_created_at, s.step_id, s.attempt, r.flow_id, r.user_id
        from flow_run_steps s
        join flow_runs r on r.org_id = s.org_id and r.id = s.run_id and r.created_at = s.run_created_at
        where s.status = 'outcome_unknown' and s.updated_at < now() - make_interval(days => timeout_days)
          and r.status = 'waiting'
        order by s.updated_at
        limit batch
        for update of s, r skip locked
    ), failed as (
        update flow_run_steps s
        set status = 'failed', call_started_at = null, finished_at = now(),
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
        set status = 'queued', run_after = now()
        from (select distinct org_id, run_id, run_created_at from due) d
        where r.org_id = d.org_id and r.id = d.run_id and r.created_at = d.run_created_at and r.status = 'waiting'
    )
    select count(*) into expired from failed;
    return expired;
end;
$$;
