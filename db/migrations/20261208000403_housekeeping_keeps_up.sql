-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '120s';

-- Housekeeping that keeps up (issue 21).
--
-- 1. Refused requests to a webhook trigger are aggregated. Each bad-signature
--    POST (unauthenticated: anyone who knows a trigger's URL can send one)
--    wrote an inbox row, so a flood of them grew flow_trigger_deliveries
--    without bound until retention. Now a refused request counts into one row
--    per trigger, hour (refused_hour), verdict and source (the sender's
--    address, an IPv6 one by its /64): refusals counts them, received_at is
--    the first, last_received_at the latest, reason and headers are the
--    first's. A trigger keeps at most TOLSTOY_HOOK_REFUSED_SOURCES sources an
--    hour (sql/triggers.sql, refuse); the requests of any further source count
--    into the source '*'. So an hour of refusals is at most that many rows
--    plus one per verdict, whatever their number. Rows refused before this
--    migration have no refused_hour and stay as they were.
--
-- 2. Parked unknown outcomes time out. A step whose call's outcome is unknown
--    (outcome_unknown, onUnknownOutcome: wait) parks its run until a person
--    resolves it; a run nobody resolves kept its month's partitions (every
--    organization's history of that month) from retention forever, as
--    tolstoy_maintain_history keeps a month with a queued, running or waiting
--    run. tolstoy_expire_unknown_outcomes fails such steps once they have
--    waited TOLSTOY_UNKNOWN_OUTCOME_TIMEOUT_DAYS (30 by default), as a person
--    resolving them "failed" would, and queues their runs, which then end
--    (or go on, past a step that is not critical) like any other. The workers'
--    upkeep calls it; a partial index finds those steps.

-- ---- 1. refused requests, aggregated ---------------------------------------------

-- New columns: their checks hold for every existing row (null, or the default) without a scan.
alter table flow_trigger_deliveries add column source text
    constraint flow_trigger_deliveries_source_length check (char_length(source) between 1 and 64);
alter table flow_trigger_deliveries add column refused_hour timestamptz;
alter table flow_trigger_deliveries add column refusals integer not null default 1
    constraint flow_trigger_deliveries_refusals_positive check (refusals >= 1);
alter table flow_trigger_deliveries add column last_received_at timestamptz;

comment on column flow_trigger_deliveries.source is
    'A refused request''s sender: its address (an IPv6 address by its /64), or * for the requests of sources past '
    'the cap of that trigger and hour; null for verified requests.';
comment on column flow_trigger_deliveries.refused_hour is
    'The hour a row of refused requests counts (one row per trigger, hour, verdict and source); null for verified '
    'requests and for rows refused before 20261208000403, one per request.';
comment on column flow_trigger_deliveries.refusals is
    'How many requests the row stands for (1 for a verified request).';
comment on column flow_trigger_deliveries.last_received_at is
    'When the latest refused request this row counts was received (null: only the one at received_at).';

-- The refusal upsert's conflict target, and how many sources an hour of a trigger has.
-- squawk-ignore require-concurrent-index-creation
create unique index flow_trigger_deliveries_refusal_key
    on flow_trigger_deliveries (org_id, trigger_id, refused_hour, verdict, source)
    where verdict <> 'valid';

-- ---- 2. parked unknown outcomes time out -----------------------------------------

-- Small: only the steps parked on an unknown outcome.
-- squawk-ignore require-concurrent-index-creation
create index flow_run_steps_outcome_unknown_idx on flow_run_steps (updated_at) where status = 'outcome_unknown';

grant update on flow_run_steps to tolstoy_engine;

create function tolstoy_expire_unknown_outcomes(timeout_days integer, batch integer)
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

alter function tolstoy_expire_unknown_outcomes(integer, integer) owner to tolstoy_engine;
-- Crosses organizations: the workers' upkeep only (db/grants.sql grants it to tolstoy_worker).
revoke execute on function tolstoy_expire_unknown_outcomes(integer, integer) from public;

comment on function tolstoy_expire_unknown_outcomes(integer, integer) is
    'Fails up to batch steps parked on an unknown outcome for more than timeout_days (as a "failed" resolution '
    'would) and queues their runs, so no run waits forever and retention can drop its month; returns how many.';

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '120s';

drop function tolstoy_expire_unknown_outcomes(integer, integer);
revoke update on flow_run_steps from tolstoy_engine;
-- squawk-ignore require-concurrent-index-deletion
drop index flow_run_steps_outcome_unknown_idx;
-- squawk-ignore require-concurrent-index-deletion
drop index flow_trigger_deliveries_refusal_key;
alter table flow_trigger_deliveries drop column last_received_at;
alter table flow_trigger_deliveries drop column refusals;
alter table flow_trigger_deliveries drop column refused_hour;
alter table flow_trigger_deliveries drop column source;
