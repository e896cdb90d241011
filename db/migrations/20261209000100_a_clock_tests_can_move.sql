-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- A clock the tests can move (issue 24): every time-based decision of the SQL functions (leases,
-- run_after, wake_at, timeouts, schedules, retention, API key expiry) reads tolstoy_now() instead
-- of now(), and tolstoy_now() is now() plus the offset in tolstoy_clock. In production the offset
-- is zero and stays so: only the schema owner (and a superuser) may change the table; the service
-- roles may not even read it, they only call tolstoy_now() (security definer, owned by
-- tolstoy_engine). Tests move it instead of sleeping through a lease or a timeout.
--
-- Each function below is its newest body (db/functions/) with now() read once into clock_now (or
-- replaced by tolstoy_now()), current_date by the clock's date and clock_timestamp() by
-- tolstoy_clock_timestamp(); the down puts each previous body back.

create table tolstoy_clock (
    ahead interval not null default interval '0'
);

comment on table tolstoy_clock is
    'One row: how far tolstoy_now() is ahead of now(). Zero in production; tests move it. Only the schema owner '
    'may change it (no service role holds any privilege on it).';
comment on column tolstoy_clock.ahead is 'Added to now() by tolstoy_now() and to clock_timestamp() by tolstoy_clock_timestamp().';

insert into tolstoy_clock (ahead) values (interval '0');

-- tolstoy_now() reads it as its owner; nobody else is granted anything.
grant select on tolstoy_clock to tolstoy_engine;

create or replace function tolstoy_now() returns timestamptz
language sql stable security definer set search_path = public, pg_temp as $$
    -- now() (the transaction's start), moved by what tolstoy_clock says: nothing in production.
    select now() + (select c.ahead from tolstoy_clock c)
$$;

comment on function tolstoy_now() is
    'The database''s clock for every time-based decision: now() plus tolstoy_clock.ahead (zero in production; '
    'only the schema owner may move it, for tests). Stable within a transaction, as now() is.';

create or replace function tolstoy_clock_timestamp() returns timestamptz
language sql volatile security definer set search_path = public, pg_temp as $$
    select clock_timestamp() + (select c.ahead from tolstoy_clock c)
$$;

comment on function tolstoy_clock_timestamp() is
    'clock_timestamp() moved as tolstoy_now() is: the time as the statement runs (a lease taken late in a long '
    'claim, the order of steps checkpointed together).';

alter function tolstoy_now() owner to tolstoy_engine;
alter function tolstoy_clock_timestamp() owner to tolstoy_engine;

-- ---- the functions whose decisions read the clock -----------------------------------------------

create or replace function tolstoy_claim_runs_v2(worker text, max_runs integer, lease_seconds double precision,
                                                 max_recoveries integer, half_life_seconds double precision)
returns table (run jsonb, meta jsonb)
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    lease interval := make_interval(secs => lease_seconds);
    claimed integer := 0;
    lost record;
    due record;
    taken flow_runs;
    payload jsonb;
    failure jsonb;
    state text;
    problem text;
begin
    if worker is null or worker = '' or max_runs < 1 or max_runs > 1000 or lease_seconds <= 0
            or max_recoveries < 0 or half_life_seconds is null or half_life_seconds <= 0 then
        raise exception 'tolstoy_claim_runs_v2: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    for lost in
        select r.org_id, r.id, r.created_at
        from flow_runs r
        where r.status = 'running' and r.lease_expires_at < clock_now
        order by r.lease_expires_at
        limit max_runs
        for update skip locked
    loop
        select * into taken from flow_runs r
        where r.org_id = lost.org_id and r.id = lost.id and r.created_at = lost.created_at;
        if taken.cancel_requested then
            update flow_runs set recoveries = recoveries + 1
            where org_id = taken.org_id and id = taken.id and created_at = taken.created_at;
            perform tolstoy_release_run(taken, 'cancelled', null, null);
        elsif taken.strikes >= max_recoveries then
            failure := jsonb_build_object(
                'name', 'RecoveryLimit',
                'message', format('The run stopped its worker %s times in a row without finishing a step (the limit '
                                  'is %s, TOLSTOY_MAX_RECOVERIES); it is not tried again.',
                                  taken.strikes + 1, max_recoveries));
            update flow_runs set recoveries = recoveries + 1, strikes = strikes + 1
            where org_id = taken.org_id and id = taken.id and created_at = taken.created_at;
            perform tolstoy_release_run(taken, 'failed', null, failure);
        else
            payload := null;
            begin
                update flow_runs
                set claims = claims + 1, lease_token = claims + 1, recoveries = recoveries + 1,
                    strikes = strikes + 1, lease_owner = worker, lease_expires_at = tolstoy_clock_timestamp() + lease,
                    accounted_at = tolstoy_clock_timestamp()
                where org_id = taken.org_id and id = taken.id and created_at = taken.created_at
                returning * into taken;
                payload := tolstoy_run_payload(taken);
            exception when data_exception or integrity_constraint_violation or program_limit_exceeded then
                get stacked diagnostics state = returned_sqlstate, problem = message_text;
                -- The block's update is undone (not what it left in taken): read the run again. Its
                -- lease is still the expired one, released by the fault (a strike, as a recovery is).
                update flow_runs set recoveries = recoveries + 1
                where org_id = lost.org_id and id = lost.id and created_at = lost.created_at
                returning * into taken;
                perform tolstoy_run_fault(taken, jsonb_build_object('sqlstate', state, 'message', problem),
                                          max_recoveries, least(1000 * power(2, taken.strikes), 60000));
            end;
            if payload is not null then
                claimed := claimed + 1;
                run := payload;
                meta := null;
                return next;
            end if;
        end if;
    end loop;
    for due in
        with recursive orgs (org_id, first_due) as (
            -- The organizations with queued runs, one index probe each (a loose index scan), with
            -- the earliest run_after of each.
            (select r.org_id, r.run_after
             from flow_runs r
             where r.status = 'queued'
             order by r.org_id, r.run_after
             limit 1)
            union all
            select later.org_id, later.run_after
            from orgs o
            cross join lateral (select r.org_id, r.run_after
                                from flow_runs r
                                where r.status = 'queued' and r.org_id > o.org_id
                                order by r.org_id, r.run_after
                                limit 1) as later
        ), running as (
            select r.org_id, count(*) as n
            from flow_runs r
            where r.status = 'running'
            group by r.org_id
        ), ready as (
            select o.org_id,
                   coalesce(running.n, 0)
                   + coalesce(w.seconds * exp(greatest(-ln(2) * greatest(extract(epoch from clock_now - w.counted_at), 0)
                                                       / half_life_seconds, -50)), 0)
                     * ln(2) / half_life_seconds as load
            from orgs o
            left join running on running.org_id = o.org_id
            left join organization_worker_time w on w.org_id = o.org_id
            where o.first_due <= clock_now
        )
        select c.org_id, c.id, c.created_at
        from ready
        cross join lateral (select r.org_id, r.id, r.created_at, r.run_after
                            from flow_runs r
                            where r.status = 'queued' and r.org_id = ready.org_id and r.run_after <= clock_now
                            order by r.run_after, r.id
                            limit max_runs) as c
        order by ready.load + row_number() over (partition by c.org_id order by c.run_after, c.id),
                 c.run_after, c.id
    loop
        exit when claimed >= max_runs;
        -- Another worker may have taken it since (SKIP LOCKED, and the status seen anew).
        select * into taken from flow_runs r
        where r.org_id = due.org_id and r.id = due.id and r.created_at = due.created_at and r.status = 'queued'
        for update skip locked;
        continue when not found;
        payload := null;
        begin
            update flow_runs
            set status = 'running', claims = claims + 1, lease_token = claims + 1, lease_owner = worker,
                lease_expires_at = tolstoy_clock_timestamp() + lease, started_at = coalesce(started_at, clock_now),
                accounted_at = tolstoy_clock_timestamp()
            where org_id = due.org_id and id = due.id and created_at = due.created_at
            returning * into taken;
            if taken.claims = 1 then
                insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
                values (taken.org_id, taken.flow_id, taken.user_id, taken.id::text, '$flow', 'running',
                        taken.variables);
            end if;
            payload := tolstoy_run_payload(taken);
        exception when data_exception or integrity_constraint_violation or program_limit_exceeded then
            get stacked diagnostics state = returned_sqlstate, problem = message_text;
            -- The block's update is undone (not what it left in taken): read the run again.
            select * into taken from flow_runs r
            where r.org_id = due.org_id and r.id = due.id and r.created_at = due.created_at;
            perform tolstoy_run_fault(taken, jsonb_build_object('sqlstate', state, 'message', problem),
                                      max_recoveries, least(1000 * power(2, taken.strikes), 60000));
        end;
        if payload is not null then
            claimed := claimed + 1;
            run := payload;
            meta := null;
            return next;
        end if;
    end loop;
    run := null;
    meta := jsonb_build_object(
        'next_due', least((select min(r.run_after) from flow_runs r where r.status = 'queued'),
                          (select min(r.lease_expires_at) from flow_runs r where r.status = 'running')));
    return next;
end;
$$;

create or replace function tolstoy_renew_leases(worker text, orgs uuid[], runs uuid[], tokens integer[],
                                                lease_seconds double precision)
returns table (run_id uuid, cancel boolean)
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    if worker is null or worker = '' or lease_seconds is null or lease_seconds <= 0 or lease_seconds > 3600
            or cardinality(orgs) is distinct from cardinality(runs)
            or cardinality(runs) is distinct from cardinality(tokens) or cardinality(runs) > 1000 then
        raise exception 'tolstoy_renew_leases: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    return query
    update flow_runs r
    set lease_expires_at = tolstoy_now() + make_interval(secs => lease_seconds)
    from unnest(orgs, runs, tokens) as held(org_id, id, token)
    where r.org_id = held.org_id and r.id = held.id and r.lease_owner = worker and r.lease_token = held.token
      and r.created_at between tolstoy_run_from(held.id) and tolstoy_run_until(held.id)
      and r.status = 'running' and r.lease_expires_at > tolstoy_now()
    returning r.id, r.cancel_requested;
end;
$$;

create or replace function tolstoy_release_run(r flow_runs, becomes flow_run_status, after_ms double precision,
                                               error jsonb)
returns flow_run_status
language plpgsql as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    outcome flow_run_status := case when r.cancel_requested then 'cancelled'::flow_run_status else becomes end;
    shown jsonb := case outcome when 'cancelled' then '{"message": "Cancelled"}'::jsonb
                                when 'failed' then error end;
begin
    update flow_runs f
    set status = outcome,
        run_after = case when outcome = 'queued'
                         then clock_now + make_interval(secs => coalesce(after_ms, 0) / 1000) else f.run_after end,
        finished_at = case when outcome in ('cancelled', 'failed') then clock_now end,
        error = coalesce(shown, f.error),
        lease_owner = null, lease_token = null, lease_expires_at = null
    where f.org_id = r.org_id and f.id = r.id and f.created_at = r.created_at;
    if outcome in ('cancelled', 'failed') then
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error)
        values (r.org_id, r.flow_id, r.user_id, r.id::text, '$flow', outcome::text::execution_status, '{}', shown);
    end if;
    return outcome;
end;
$$;

create or replace function tolstoy_queue_stats()
returns table (queued bigint, due bigint, oldest_due_age_seconds double precision)
language sql stable security definer set search_path = public, pg_temp as $$
    -- The clock read once, not once per queued run.
    select q.queued, q.due, coalesce(extract(epoch from c.now - q.oldest_due), 0)::float8
    from (select tolstoy_now() as now) as c
    cross join lateral (select count(*) as queued, count(*) filter (where r.run_after <= c.now) as due,
                               min(r.run_after) filter (where r.run_after <= c.now) as oldest_due
                        from flow_runs r
                        where r.status = 'queued') as q
$$;

create or replace function tolstoy_checkpoint(worker text, org uuid, run uuid, token integer, writes jsonb)
returns jsonb
language plpgsql as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    current flow_runs;
    step jsonb;
    event jsonb;
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
      and r.created_at between tolstoy_run_from(run) and tolstoy_run_until(run)
      and r.status = 'running' and r.lease_expires_at > clock_now
    for update;
    if not found then
        raise exception 'The lease on run % is lost.', run using errcode = 'TL001';
    end if;
    for step in select * from jsonb_array_elements(coalesce(writes -> 'steps', '[]')) loop
        insert into flow_run_steps as s (org_id, run_id, run_created_at, step_id, status, attempt, inputs, outputs,
                                         sealed, error, wake_at, call_started_at, started_at, finished_at,
                                         duration_ms)
        values (org, run, current.created_at, step ->> 'step_id', step ->> 'status',
                coalesce((step ->> 'attempt')::integer, 1), step -> 'inputs', step -> 'outputs',
                decode(step ->> 'sealed', 'base64'), step -> 'error',
                clock_now + make_interval(secs => (step ->> 'wake_in_ms')::double precision / 1000),
                case when (step ->> 'call_started')::boolean then clock_now end,
                -- Steps checkpointed together keep their order (clock_now is the same for all of them).
                tolstoy_clock_timestamp(),
                case when step ->> 'status' in ('completed', 'skipped', 'failed') then tolstoy_clock_timestamp() end,
                (step ->> 'duration_ms')::integer)
        on conflict (org_id, run_id, step_id, run_created_at) do update
        set status = excluded.status, attempt = excluded.attempt,
            inputs = coalesce(excluded.inputs, s.inputs), outputs = excluded.outputs, sealed = excluded.sealed,
            error = excluded.error, wake_at = excluded.wake_at,
            call_started_at = case when excluded.status = 'running' then excluded.call_started_at
                                   else s.call_started_at end,
            finished_at = excluded.finished_at, duration_ms = excluded.duration_ms,
            started_at = case when s.status in ('completed', 'skipped', 'failed') then clock_now else s.started_at end;
        progress := progress or (step ->> 'status' in ('completed', 'skipped', 'failed')
                                 and strpos(step ->> 'step_id', '[') = 0);
    end loop;
    for event in select * from jsonb_array_elements(coalesce(writes -> 'events', '[]')) loop
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error,
                                    duration_ms, created_at)
        values (org, current.flow_id, current.user_id, run::text, event ->> 'step_key',
                (event ->> 'status')::execution_status, coalesce(event -> 'inputs', '{}'),
                nullif(event -> 'error', 'null'), (event ->> 'duration_ms')::integer, tolstoy_clock_timestamp());
    end loop;
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

create or replace function tolstoy_prune_signals(retention_days integer, batch integer)
returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
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
        where s.created_at < clock_now - make_interval(days => retention_days)
          and not exists (select 1 from flow_runs r
                          where r.org_id = s.org_id and r.id = s.run_id
                            and r.created_at between tolstoy_run_from(s.run_id) and tolstoy_run_until(s.run_id))
        limit batch);
    get diagnostics pruned = row_count;
    return pruned;
end;
$$;

create or replace function tolstoy_claim_schedules(worker text, max_schedules integer, as_of timestamptz)
returns table (org_id uuid, id uuid, flow_id uuid, cron text, timezone text, catch_up text,
               next_run_at timestamptz, now timestamptz)
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    if worker is null or worker = '' or max_schedules < 1 or max_schedules > 1000 then
        raise exception 'tolstoy_claim_schedules: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    return query
    select t.org_id, t.id, t.flow_id, t.cron, t.timezone, t.catch_up, t.next_run_at, coalesce(as_of, tolstoy_now())
    from flow_triggers t
    where t.type = 'schedule' and t.enabled and t.next_run_at <= coalesce(as_of, tolstoy_now())
    order by t.next_run_at
    limit max_schedules
    for update skip locked;
end;
$$;

create or replace function tolstoy_fire_schedules(as_of timestamptz, fires jsonb) returns jsonb
language plpgsql as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
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
            last_fired_at = case when scheduled is null then t.last_fired_at else coalesce(as_of, clock_now) end
        where t.org_id = org and t.id = (fire ->> 'id')::uuid and t.type = 'schedule' and t.enabled
          and t.next_run_at = (fire ->> 'due')::timestamptz and t.next_run_at <= coalesce(as_of, clock_now)
          and ((fire ->> 'next_run_at') is null or (fire ->> 'next_run_at')::timestamptz > t.next_run_at)
          and (scheduled is null or scheduled between t.next_run_at and coalesce(as_of, clock_now))
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
            set last_skipped_at = coalesce(as_of, clock_now), last_skip_reason = refusal
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

create or replace function tolstoy_place_deliveries() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    line record;
    delivery record;
begin
    -- Placed already by an earlier firing of this commit (or deleted since): one key lookup, so a
    -- transaction writing thousands of events does not look for the unplaced ones thousands of times.
    if (select d.placed from webhook_deliveries d where d.org_id = new.org_id and d.id = new.id)
            is distinct from false then
        return null;
    end if;
    for line in
        select distinct d.org_id, d.webhook_id
        from webhook_deliveries d
        where not d.placed
        order by d.org_id, d.webhook_id
    loop
        insert into webhook_lines as l (org_id, webhook_id, due_at)
        values (line.org_id, line.webhook_id, clock_now)
        on conflict (org_id, webhook_id) do update
        set due_at = coalesce(l.due_at, excluded.due_at);
    end loop;
    -- In the order they were written: a transaction's own events keep their order.
    for delivery in
        select d.org_id, d.id from webhook_deliveries d where not d.placed order by d.seq
    loop
        update webhook_deliveries
        set seq = default, placed = true
        where org_id = delivery.org_id and id = delivery.id;
    end loop;
    return null;
end;
$$;

create or replace function tolstoy_claim_deliveries(worker text, max_deliveries integer,
                                                    lease_seconds double precision)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    claimed jsonb := '[]';
    candidate record;
    line webhook_lines;
    head webhook_deliveries;
    taken webhook_deliveries;
    hook webhooks;
    lease interval := make_interval(secs => lease_seconds);
begin
    if worker is null or worker = '' or max_deliveries < 1 or max_deliveries > 1000 or lease_seconds <= 0
            or lease_seconds > 3600 then
        raise exception 'tolstoy_claim_deliveries: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    for candidate in
        select x.org_id, x.webhook_id
        from (select l.org_id, l.webhook_id, l.served_at,
                     row_number() over (partition by l.org_id order by l.served_at nulls first, l.webhook_id) as turn
              from webhook_lines l
              where l.due_at <= clock_now) as x
        cross join lateral (select max(o.served_at) as served_at
                            from webhook_lines o where o.org_id = x.org_id) as org_turn
        order by x.turn, org_turn.served_at nulls first, x.served_at nulls first, x.org_id, x.webhook_id
        -- Spare candidates: another worker claiming at the same moment holds some of the first.
        limit max_deliveries * 2 + 8
    loop
        exit when jsonb_array_length(claimed) >= max_deliveries;
        select * into line from webhook_lines l
        where l.org_id = candidate.org_id and l.webhook_id = candidate.webhook_id and l.due_at <= clock_now
        for update skip locked;
        continue when not found;
        select * into head from webhook_deliveries d
        where d.org_id = line.org_id and d.webhook_id = line.webhook_id and d.state in ('pending', 'sending')
        order by d.seq
        limit 1
        for update skip locked;
        if not found then
            -- Finished meanwhile, or its first delivery locked (being cancelled): look again later.
            update webhook_lines l
            set due_at = case when exists (select 1 from webhook_deliveries d
                                           where d.org_id = line.org_id and d.webhook_id = line.webhook_id
                                             and d.state in ('pending', 'sending'))
                              then clock_now + interval '1 second' end
            where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
            continue;
        end if;
        if head.state = 'sending' and head.lease_expires_at >= clock_now then
            update webhook_lines l set due_at = head.lease_expires_at
            where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
            continue;
        end if;
        if head.state = 'pending' and head.next_attempt_at > clock_now then
            update webhook_lines l set due_at = head.next_attempt_at
            where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
            continue;
        end if;
        select * into hook from webhooks w where w.org_id = line.org_id and w.id = line.webhook_id;
        if head.state = 'pending' and not hook.enabled then
            -- Disabled while these were queued: they are not sent.
            update webhook_deliveries d
            set state = 'cancelled', next_attempt_at = null, finished_at = clock_now,
                last_error = coalesce(hook.disabled_reason, 'The webhook was disabled.')
            where d.org_id = line.org_id and d.webhook_id = line.webhook_id and d.state = 'pending';
            update webhook_lines l
            set due_at = (select d.lease_expires_at from webhook_deliveries d
                          where d.org_id = line.org_id and d.webhook_id = line.webhook_id and d.state = 'sending'
                          order by d.seq limit 1)
            where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
            continue;
        end if;
        if head.state = 'sending' then
            -- Its worker vanished: the attempt it made is logged as lost, and it is sent again.
            update webhook_deliveries d
            set attempts = d.attempts + 1, lease_token = d.attempts + 1, lease_owner = worker,
                lease_expires_at = clock_now + lease, last_attempt_at = clock_now,
                attempt_log = d.attempt_log || jsonb_build_object(
                    'attempt', d.attempts, 'at', tolstoy_iso(d.last_attempt_at), 'statusCode', null,
                    'durationMs', null, 'error', 'The worker sending it vanished; sent again.', 'location', null)
            where d.org_id = head.org_id and d.id = head.id
            returning * into taken;
        else
            update webhook_deliveries d
            set state = 'sending', attempts = d.attempts + 1, lease_token = d.attempts + 1, lease_owner = worker,
                lease_expires_at = clock_now + lease, first_attempt_at = coalesce(d.first_attempt_at, clock_now),
                last_attempt_at = clock_now
            where d.org_id = head.org_id and d.id = head.id
            returning * into taken;
        end if;
        update webhook_lines l
        set due_at = taken.lease_expires_at, served_at = tolstoy_clock_timestamp()
        where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
        claimed := claimed || jsonb_build_object(
            'org_id', taken.org_id, 'id', taken.id, 'webhook_id', taken.webhook_id, 'event_id', taken.event_id,
            'event_type', taken.event_type, 'data', taken.data, 'created_at', tolstoy_iso(taken.event_created_at),
            'token', taken.lease_token, 'url', hook.url, 'secret', encode(hook.secret, 'base64'),
            'headers', encode(hook.headers, 'base64'));
    end loop;
    return jsonb_build_object('deliveries', claimed, 'next_due', tolstoy_next_delivery(), 'now', clock_now);
end;
$$;

create or replace function tolstoy_record_delivery(worker text, org uuid, delivery uuid, token integer,
                                                   result jsonb)
returns jsonb
language plpgsql as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    current webhook_deliveries;
    outcome text := result ->> 'outcome';
    give_up interval := make_interval(secs => coalesce((result ->> 'give_up_seconds')::double precision, 86400));
    retry_at timestamptz := clock_now + make_interval(secs => coalesce((result ->> 'retry_in_ms')::double precision, 0)
                                                          / 1000);
    hook webhooks;
    line uuid;
    disabled text;
begin
    if outcome is null or outcome not in ('delivered', 'retry', 'failed') then
        raise exception 'tolstoy_record_delivery: invalid outcome' using errcode = 'invalid_parameter_value';
    end if;
    perform set_config('app.org_id', org::text, true);
    select d.webhook_id into line from webhook_deliveries d where d.org_id = org and d.id = delivery;
    if not found then
        return jsonb_build_object('recorded', false);
    end if;
    perform 1 from webhook_lines l where l.org_id = org and l.webhook_id = line for update;
    select * into current from webhook_deliveries d
    where d.org_id = org and d.id = delivery and d.lease_owner = worker and d.lease_token = token
      and d.state = 'sending'
    for update;
    if not found then
        return jsonb_build_object('recorded', false);
    end if;
    -- No key update: events being written for this webhook (their foreign key's key-share lock) do
    -- not hold this up.
    select * into hook from webhooks w where w.org_id = org and w.id = current.webhook_id for no key update;
    if outcome <> 'delivered' and hook.enabled and clock_now - hook.failing_since >= give_up then
        -- Failing for the whole period: the webhook is disabled, this delivery given up with it.
        disabled := format('Disabled at %s: every delivery failed since %s (last: %s).',
                           tolstoy_iso(clock_now), tolstoy_iso(hook.failing_since),
                           coalesce('HTTP ' || (result ->> 'status_code'), left(result ->> 'error', 300),
                                    'no answer'));
        outcome := 'failed';
    elsif outcome = 'retry' and (retry_at - current.first_attempt_at > give_up or not hook.enabled) then
        outcome := 'failed';
    end if;
    update webhook_deliveries d
    set state = case outcome when 'delivered' then 'delivered' when 'retry' then 'pending' else 'failed' end,
        next_attempt_at = case when outcome = 'retry' then retry_at end,
        finished_at = case when outcome <> 'retry' then clock_now end,
        last_status_code = (result ->> 'status_code')::integer,
        last_error = left(result ->> 'error', 1000),
        lease_owner = null, lease_token = null, lease_expires_at = null,
        attempt_log = d.attempt_log || jsonb_build_object(
            'attempt', token, 'at', tolstoy_iso(d.last_attempt_at),
            'statusCode', (result ->> 'status_code')::integer,
            'durationMs', (result ->> 'duration_ms')::integer, 'error', left(result ->> 'error', 1000),
            'location', left(result ->> 'location', 2048))
    where d.org_id = org and d.id = delivery;
    if outcome = 'delivered' then
        if hook.failing_since is not null then
            update webhooks set failing_since = null where org_id = org and id = hook.id;
        end if;
    elsif disabled is not null then
        -- Its deliveries not sent yet are cancelled (webhooks_cancel_pending).
        update webhooks set enabled = false, disabled_reason = disabled where org_id = org and id = hook.id;
    elsif hook.failing_since is null then
        update webhooks set failing_since = clock_now where org_id = org and id = hook.id;
    end if;
    update webhook_lines l
    set due_at = (select case when n.state = 'sending' then n.lease_expires_at else n.next_attempt_at end
                  from webhook_deliveries n
                  where n.org_id = org and n.webhook_id = current.webhook_id and n.state in ('pending', 'sending')
                  order by n.seq
                  limit 1)
    where l.org_id = org and l.webhook_id = current.webhook_id;
    return jsonb_build_object('recorded', true, 'outcome', outcome, 'disabled', disabled);
end;
$$;

create or replace function tolstoy_prune_deliveries(retention_days integer, batch integer)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    cutoff timestamptz;
    outbox integer;
    inbox integer;
begin
    if retention_days < 1 or batch is null or batch < 1 or batch > 100000 then
        raise exception 'tolstoy_prune_deliveries: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    if retention_days is null then
        return jsonb_build_object('deliveries', 0, 'inbox', 0);
    end if;
    cutoff := clock_now - make_interval(days => retention_days);
    delete from webhook_deliveries d
    where (d.org_id, d.id) in (select o.org_id, o.id from webhook_deliveries o
                               where o.state in ('delivered', 'failed', 'cancelled') and o.created_at < cutoff
                               limit batch);
    get diagnostics outbox = row_count;
    delete from flow_trigger_deliveries t
    where (t.org_id, t.id) in (select i.org_id, i.id from flow_trigger_deliveries i
                               where i.received_at < cutoff
                               limit batch);
    get diagnostics inbox = row_count;
    return jsonb_build_object('deliveries', outbox, 'inbox', inbox);
end;
$$;

create or replace function tolstoy_admit_run(org uuid) returns void
language plpgsql as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
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
                   where retention is null or (h.month + interval '1 month')::date > clock_now::date - retention), 0), 0)
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
            where retention is null or (g.month + interval '1 month')::date > clock_now::date - retention
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
            update organization_usage u set runs = held + 1, counted_at = clock_now where u.org_id = org;
        else
            update organization_usage u set runs = held + 1 where u.org_id = org;
        end if;
    end if;
end;
$$;

create or replace function tolstoy_stored_bytes(org uuid, retention_days integer) returns bigint
language sql stable as $$
    select greatest(coalesce(sum(h.bytes), 0), 0)::bigint
    from history_bytes h
    where h.org_id = org
      -- tolstoy_maintain_history drops a month once its end is past retention.
      and (retention_days is null or (h.month + interval '1 month')::date > tolstoy_now()::date - retention_days)
$$;

create or replace function tolstoy_maintain_history(today date, retention_days integer, months_ahead integer)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    cutoff date;
    created integer;
    dropped text[] := '{}';
    kept text[] := '{}';
    part record;
    busy boolean;
begin
    -- A day after today would let the caller drop history that is not yet past retention.
    if today is null or today > clock_now::date or months_ahead < 0 or months_ahead > 24 or retention_days < 1 then
        raise exception 'tolstoy_maintain_history: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    if not pg_try_advisory_xact_lock(hashtextextended('tolstoy_maintain_history', 0)) then
        return jsonb_build_object('skipped', true);
    end if;
    -- Waiting behind live traffic is worse than trying again at the next tick.
    perform set_config('lock_timeout', '5s', true);
    created := tolstoy_ensure_partitions(date_trunc('month', today)::date, months_ahead + 1);
    if retention_days is not null then
        cutoff := today - retention_days;
        for part in
            select c.relname, to_date(substring(c.relname from '_p(\d{4}_\d{2})$'), 'YYYY_MM') as month,
                   p.relname as parent
            from pg_inherits i
            join pg_class c on c.oid = i.inhrelid
            join pg_class p on p.oid = i.inhparent
            where p.relname in ('flow_runs', 'execution_logs') and c.relname ~ '_p\d{4}_\d{2}$'
            order by 2
        loop
            continue when (part.month + interval '1 month')::date > cutoff;
            if part.parent = 'flow_runs' then
                execute format('select exists (select 1 from %I where status in (''queued'', ''running'', ''waiting''))',
                               part.relname) into busy;
                if busy then
                    kept := kept || part.relname;
                    continue;
                end if;
                execute format('drop table if exists %I', 'flow_run_steps_p' || to_char(part.month, 'YYYY_MM'));
                dropped := dropped || ('flow_run_steps_p' || to_char(part.month, 'YYYY_MM'));
            end if;
            execute format('drop table %I', part.relname);
            dropped := dropped || part.relname;
        end loop;
    end if;
    return jsonb_build_object('created', created, 'dropped', to_jsonb(dropped), 'kept', to_jsonb(kept));
end;
$$;

create or replace function tolstoy_prune_audit(retention_days integer, batch integer)
returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    pruned integer;
begin
    if retention_days < 1 or batch is null or batch < 1 or batch > 100000 then
        raise exception 'tolstoy_prune_audit: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    if retention_days is null then
        return 0;
    end if;
    delete from audit_events e
    where (e.org_id, e.id) in (select o.org_id, o.id from audit_events o
                               where o.created_at < clock_now - make_interval(days => retention_days)
                               limit batch);
    get diagnostics pruned = row_count;
    return pruned;
end;
$$;

create or replace function tolstoy_authenticate(hash bytea) returns table (org_id uuid, key_id uuid)
language sql security definer set search_path = public, pg_temp as $$
    with found as (
        select k.org_id, k.id
        from api_keys k
        where k.key_hash = hash and k.revoked_at is null
    ), touched as (
        update api_keys k
        set last_used_at = tolstoy_now()
        from found
        where k.org_id = found.org_id and k.id = found.id
          and (k.last_used_at is null or k.last_used_at < tolstoy_now() - interval '1 minute')
    )
    select found.org_id, found.id from found
$$;

create or replace function tolstoy_enter_key(hash bytea, acting_user uuid, timeout_ms integer) returns uuid
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    found uuid;
begin
    perform set_config('statement_timeout', timeout_ms::text || 'ms', true);
    select k.org_id into found
    from api_keys k
    where k.key_hash = hash and k.revoked_at is null and (k.expires_at is null or k.expires_at > clock_now);
    if found is null then
        raise exception 'The API key is not valid, has expired or has been revoked.' using errcode = 'TS003';
    end if;
    -- Recorded at most once a minute, so authentication stays a read.
    update api_keys k
    set last_used_at = clock_now
    where k.key_hash = hash
      and (k.last_used_at is null or k.last_used_at < clock_now - interval '1 minute');
    perform set_config('app.org_id', found::text, true);
    if acting_user is not null and not exists (select 1 from users u where u.org_id = found and u.id = acting_user) then
        raise exception 'Not a user of this organization.' using errcode = 'TS002';
    end if;
    return found;
end;
$$;

create or replace function tolstoy_key_grant(hash bytea)
returns table (org_id uuid, scopes text[], user_id uuid)
language plpgsql stable security definer set search_path = public, pg_temp as $$
begin
    return query
    select k.org_id, k.scopes, k.user_id
    from api_keys k
    where k.key_hash = hash and k.revoked_at is null and (k.expires_at is null or k.expires_at > tolstoy_now());
    if not found then
        raise exception 'The API key is not valid, has expired or has been revoked.' using errcode = 'TS003';
    end if;
end;
$$;

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create or replace function tolstoy_claim_runs_v2(worker text, max_runs integer, lease_seconds double precision,
                                                 max_recoveries integer, half_life_seconds double precision)
returns table (run jsonb, meta jsonb)
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    lease interval := make_interval(secs => lease_seconds);
    claimed integer := 0;
    lost record;
    due record;
    taken flow_runs;
    payload jsonb;
    failure jsonb;
    state text;
    problem text;
begin
    if worker is null or worker = '' or max_runs < 1 or max_runs > 1000 or lease_seconds <= 0
            or max_recoveries < 0 or half_life_seconds is null or half_life_seconds <= 0 then
        raise exception 'tolstoy_claim_runs_v2: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    for lost in
        select r.org_id, r.id, r.created_at
        from flow_runs r
        where r.status = 'running' and r.lease_expires_at < now()
        order by r.lease_expires_at
        limit max_runs
        for update skip locked
    loop
        select * into taken from flow_runs r
        where r.org_id = lost.org_id and r.id = lost.id and r.created_at = lost.created_at;
        if taken.cancel_requested then
            update flow_runs set recoveries = recoveries + 1
            where org_id = taken.org_id and id = taken.id and created_at = taken.created_at;
            perform tolstoy_release_run(taken, 'cancelled', null, null);
        elsif taken.strikes >= max_recoveries then
            failure := jsonb_build_object(
                'name', 'RecoveryLimit',
                'message', format('The run stopped its worker %s times in a row without finishing a step (the limit '
                                  'is %s, TOLSTOY_MAX_RECOVERIES); it is not tried again.',
                                  taken.strikes + 1, max_recoveries));
            update flow_runs set recoveries = recoveries + 1, strikes = strikes + 1
            where org_id = taken.org_id and id = taken.id and created_at = taken.created_at;
            perform tolstoy_release_run(taken, 'failed', null, failure);
        else
            payload := null;
            begin
                update flow_runs
                set claims = claims + 1, lease_token = claims + 1, recoveries = recoveries + 1,
                    strikes = strikes + 1, lease_owner = worker, lease_expires_at = clock_timestamp() + lease,
                    accounted_at = clock_timestamp()
                where org_id = taken.org_id and id = taken.id and created_at = taken.created_at
                returning * into taken;
                payload := tolstoy_run_payload(taken);
            exception when data_exception or integrity_constraint_violation or program_limit_exceeded then
                get stacked diagnostics state = returned_sqlstate, problem = message_text;
                -- The block's update is undone (not what it left in taken): read the run again. Its
                -- lease is still the expired one, released by the fault (a strike, as a recovery is).
                update flow_runs set recoveries = recoveries + 1
                where org_id = lost.org_id and id = lost.id and created_at = lost.created_at
                returning * into taken;
                perform tolstoy_run_fault(taken, jsonb_build_object('sqlstate', state, 'message', problem),
                                          max_recoveries, least(1000 * power(2, taken.strikes), 60000));
            end;
            if payload is not null then
                claimed := claimed + 1;
                run := payload;
                meta := null;
                return next;
            end if;
        end if;
    end loop;
    for due in
        with recursive orgs (org_id, first_due) as (
            -- The organizations with queued runs, one index probe each (a loose index scan), with
            -- the earliest run_after of each.
            (select r.org_id, r.run_after
             from flow_runs r
             where r.status = 'queued'
             order by r.org_id, r.run_after
             limit 1)
            union all
            select later.org_id, later.run_after
            from orgs o
            cross join lateral (select r.org_id, r.run_after
                                from flow_runs r
                                where r.status = 'queued' and r.org_id > o.org_id
                                order by r.org_id, r.run_after
                                limit 1) as later
        ), running as (
            select r.org_id, count(*) as n
            from flow_runs r
            where r.status = 'running'
            group by r.org_id
        ), ready as (
            select o.org_id,
                   coalesce(running.n, 0)
                   + coalesce(w.seconds * exp(greatest(-ln(2) * greatest(extract(epoch from now() - w.counted_at), 0)
                                                       / half_life_seconds, -50)), 0)
                     * ln(2) / half_life_seconds as load
            from orgs o
            left join running on running.org_id = o.org_id
            left join organization_worker_time w on w.org_id = o.org_id
            where o.first_due <= now()
        )
        select c.org_id, c.id, c.created_at
        from ready
        cross join lateral (select r.org_id, r.id, r.created_at, r.run_after
                            from flow_runs r
                            where r.status = 'queued' and r.org_id = ready.org_id and r.run_after <= now()
                            order by r.run_after, r.id
                            limit max_runs) as c
        order by ready.load + row_number() over (partition by c.org_id order by c.run_after, c.id),
                 c.run_after, c.id
    loop
        exit when claimed >= max_runs;
        -- Another worker may have taken it since (SKIP LOCKED, and the status seen anew).
        select * into taken from flow_runs r
        where r.org_id = due.org_id and r.id = due.id and r.created_at = due.created_at and r.status = 'queued'
        for update skip locked;
        continue when not found;
        payload := null;
        begin
            update flow_runs
            set status = 'running', claims = claims + 1, lease_token = claims + 1, lease_owner = worker,
                lease_expires_at = clock_timestamp() + lease, started_at = coalesce(started_at, now()),
                accounted_at = clock_timestamp()
            where org_id = due.org_id and id = due.id and created_at = due.created_at
            returning * into taken;
            if taken.claims = 1 then
                insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
                values (taken.org_id, taken.flow_id, taken.user_id, taken.id::text, '$flow', 'running',
                        taken.variables);
            end if;
            payload := tolstoy_run_payload(taken);
        exception when data_exception or integrity_constraint_violation or program_limit_exceeded then
            get stacked diagnostics state = returned_sqlstate, problem = message_text;
            -- The block's update is undone (not what it left in taken): read the run again.
            select * into taken from flow_runs r
            where r.org_id = due.org_id and r.id = due.id and r.created_at = due.created_at;
            perform tolstoy_run_fault(taken, jsonb_build_object('sqlstate', state, 'message', problem),
                                      max_recoveries, least(1000 * power(2, taken.strikes), 60000));
        end;
        if payload is not null then
            claimed := claimed + 1;
            run := payload;
            meta := null;
            return next;
        end if;
    end loop;
    run := null;
    meta := jsonb_build_object(
        'next_due', least((select min(r.run_after) from flow_runs r where r.status = 'queued'),
                          (select min(r.lease_expires_at) from flow_runs r where r.status = 'running')));
    return next;
end;
$$;

create or replace function tolstoy_renew_leases(worker text, orgs uuid[], runs uuid[], tokens integer[],
                                                lease_seconds double precision)
returns table (run_id uuid, cancel boolean)
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    if worker is null or worker = '' or lease_seconds is null or lease_seconds <= 0 or lease_seconds > 3600
            or cardinality(orgs) is distinct from cardinality(runs)
            or cardinality(runs) is distinct from cardinality(tokens) or cardinality(runs) > 1000 then
        raise exception 'tolstoy_renew_leases: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    return query
    update flow_runs r
    set lease_expires_at = now() + make_interval(secs => lease_seconds)
    from unnest(orgs, runs, tokens) as held(org_id, id, token)
    where r.org_id = held.org_id and r.id = held.id and r.lease_owner = worker and r.lease_token = held.token
      and r.created_at between tolstoy_run_from(held.id) and tolstoy_run_until(held.id)
      and r.status = 'running' and r.lease_expires_at > now()
    returning r.id, r.cancel_requested;
end;
$$;

create or replace function tolstoy_release_run(r flow_runs, becomes flow_run_status, after_ms double precision,
                                               error jsonb)
returns flow_run_status
language plpgsql as $$
declare
    outcome flow_run_status := case when r.cancel_requested then 'cancelled'::flow_run_status else becomes end;
    shown jsonb := case outcome when 'cancelled' then '{"message": "Cancelled"}'::jsonb
                                when 'failed' then error end;
begin
    update flow_runs f
    set status = outcome,
        run_after = case when outcome = 'queued'
                         then now() + make_interval(secs => coalesce(after_ms, 0) / 1000) else f.run_after end,
        finished_at = case when outcome in ('cancelled', 'failed') then now() end,
        error = coalesce(shown, f.error),
        lease_owner = null, lease_token = null, lease_expires_at = null
    where f.org_id = r.org_id and f.id = r.id and f.created_at = r.created_at;
    if outcome in ('cancelled', 'failed') then
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error)
        values (r.org_id, r.flow_id, r.user_id, r.id::text, '$flow', outcome::text::execution_status, '{}', shown);
    end if;
    return outcome;
end;
$$;

create or replace function tolstoy_queue_stats()
returns table (queued bigint, due bigint, oldest_due_age_seconds double precision)
language sql stable security definer set search_path = public, pg_temp as $$
    select count(*),
           count(*) filter (where run_after <= now()),
           coalesce(extract(epoch from now() - min(run_after) filter (where run_after <= now())), 0)::float8
    from flow_runs
    where status = 'queued'
$$;

create or replace function tolstoy_checkpoint(worker text, org uuid, run uuid, token integer, writes jsonb)
returns jsonb
language plpgsql as $$
declare
    current flow_runs;
    step jsonb;
    event jsonb;
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
      and r.created_at between tolstoy_run_from(run) and tolstoy_run_until(run)
      and r.status = 'running' and r.lease_expires_at > now()
    for update;
    if not found then
        raise exception 'The lease on run % is lost.', run using errcode = 'TL001';
    end if;
    for step in select * from jsonb_array_elements(coalesce(writes -> 'steps', '[]')) loop
        insert into flow_run_steps as s (org_id, run_id, run_created_at, step_id, status, attempt, inputs, outputs,
                                         sealed, error, wake_at, call_started_at, started_at, finished_at,
                                         duration_ms)
        values (org, run, current.created_at, step ->> 'step_id', step ->> 'status',
                coalesce((step ->> 'attempt')::integer, 1), step -> 'inputs', step -> 'outputs',
                decode(step ->> 'sealed', 'base64'), step -> 'error',
                now() + make_interval(secs => (step ->> 'wake_in_ms')::double precision / 1000),
                case when (step ->> 'call_started')::boolean then now() end,
                -- Steps checkpointed together keep their order (now() is the same for all of them).
                clock_timestamp(),
                case when step ->> 'status' in ('completed', 'skipped', 'failed') then clock_timestamp() end,
                (step ->> 'duration_ms')::integer)
        on conflict (org_id, run_id, step_id, run_created_at) do update
        set status = excluded.status, attempt = excluded.attempt,
            inputs = coalesce(excluded.inputs, s.inputs), outputs = excluded.outputs, sealed = excluded.sealed,
            error = excluded.error, wake_at = excluded.wake_at,
            call_started_at = case when excluded.status = 'running' then excluded.call_started_at
                                   else s.call_started_at end,
            finished_at = excluded.finished_at, duration_ms = excluded.duration_ms,
            started_at = case when s.status in ('completed', 'skipped', 'failed') then now() else s.started_at end;
        progress := progress or (step ->> 'status' in ('completed', 'skipped', 'failed')
                                 and strpos(step ->> 'step_id', '[') = 0);
    end loop;
    for event in select * from jsonb_array_elements(coalesce(writes -> 'events', '[]')) loop
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error,
                                    duration_ms, created_at)
        values (org, current.flow_id, current.user_id, run::text, event ->> 'step_key',
                (event ->> 'status')::execution_status, coalesce(event -> 'inputs', '{}'),
                nullif(event -> 'error', 'null'), (event ->> 'duration_ms')::integer, clock_timestamp());
    end loop;
    -- The worker time since the last count (the claim, or the previous checkpoint), against the
    -- organization, decayed: what fair claims weigh it by.
    insert into organization_worker_time as w (org_id, seconds, counted_at)
    values (org, greatest(extract(epoch from now() - coalesce(current.accounted_at, now())), 0), now())
    on conflict (org_id) do update
    set seconds = w.seconds * exp(greatest(-ln(2) * greatest(extract(epoch from now() - w.counted_at), 0)
                                           / half_life, -50))
                  + excluded.seconds,
        counted_at = greatest(w.counted_at, now());
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
            set lease_expires_at = now() + make_interval(secs => coalesce((writes ->> 'lease_seconds')::double precision,
                                                                          30)),
                accounted_at = now()
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
                finished_at = now(), lease_owner = null, lease_token = null, lease_expires_at = null
            where org_id = org and id = run and created_at = current.created_at;
            outcome := (transition ->> 'status')::flow_run_status;
        else
            raise exception 'tolstoy_checkpoint: unknown run action %', transition ->> 'action'
                using errcode = 'invalid_parameter_value';
    end case;
    return jsonb_build_object('cancel', current.cancel_requested, 'status', coalesce(outcome, 'running'));
end;
$$;

create or replace function flow_runs_wake_parent() returns trigger
language plpgsql as $$
declare
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
    set status = 'queued', run_after = now()
    where p.org_id = new.org_id and p.id = any(chain) and p.status = 'waiting'
      and p.created_at between chain_from and chain_until
      and exists (select 1 from flow_run_steps s
                  where s.org_id = p.org_id and s.run_id = p.id and s.run_created_at = p.created_at
                    and s.run_created_at between chain_from and chain_until
                    and s.step_id = new.parent_step_id and s.status = 'waiting');
    return null;
end;
$$;

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

create or replace function tolstoy_prune_signals(retention_days integer, batch integer)
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
          and not exists (select 1 from flow_runs r
                          where r.org_id = s.org_id and r.id = s.run_id
                            and r.created_at between tolstoy_run_from(s.run_id) and tolstoy_run_until(s.run_id))
        limit batch);
    get diagnostics pruned = row_count;
    return pruned;
end;
$$;

create or replace function tolstoy_claim_schedules(worker text, max_schedules integer, as_of timestamptz)
returns table (org_id uuid, id uuid, flow_id uuid, cron text, timezone text, catch_up text,
               next_run_at timestamptz, now timestamptz)
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    if worker is null or worker = '' or max_schedules < 1 or max_schedules > 1000 then
        raise exception 'tolstoy_claim_schedules: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    return query
    select t.org_id, t.id, t.flow_id, t.cron, t.timezone, t.catch_up, t.next_run_at, coalesce(as_of, now())
    from flow_triggers t
    where t.type = 'schedule' and t.enabled and t.next_run_at <= coalesce(as_of, now())
    order by t.next_run_at
    limit max_schedules
    for update skip locked;
end;
$$;

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

create or replace function tolstoy_place_deliveries() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    line record;
    delivery record;
begin
    -- Placed already by an earlier firing of this commit (or deleted since): one key lookup, so a
    -- transaction writing thousands of events does not look for the unplaced ones thousands of times.
    if (select d.placed from webhook_deliveries d where d.org_id = new.org_id and d.id = new.id)
            is distinct from false then
        return null;
    end if;
    for line in
        select distinct d.org_id, d.webhook_id
        from webhook_deliveries d
        where not d.placed
        order by d.org_id, d.webhook_id
    loop
        insert into webhook_lines as l (org_id, webhook_id, due_at)
        values (line.org_id, line.webhook_id, now())
        on conflict (org_id, webhook_id) do update
        set due_at = coalesce(l.due_at, excluded.due_at);
    end loop;
    -- In the order they were written: a transaction's own events keep their order.
    for delivery in
        select d.org_id, d.id from webhook_deliveries d where not d.placed order by d.seq
    loop
        update webhook_deliveries
        set seq = default, placed = true
        where org_id = delivery.org_id and id = delivery.id;
    end loop;
    return null;
end;
$$;

create or replace function tolstoy_claim_deliveries(worker text, max_deliveries integer,
                                                    lease_seconds double precision)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    claimed jsonb := '[]';
    candidate record;
    line webhook_lines;
    head webhook_deliveries;
    taken webhook_deliveries;
    hook webhooks;
    lease interval := make_interval(secs => lease_seconds);
begin
    if worker is null or worker = '' or max_deliveries < 1 or max_deliveries > 1000 or lease_seconds <= 0
            or lease_seconds > 3600 then
        raise exception 'tolstoy_claim_deliveries: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    for candidate in
        select x.org_id, x.webhook_id
        from (select l.org_id, l.webhook_id, l.served_at,
                     row_number() over (partition by l.org_id order by l.served_at nulls first, l.webhook_id) as turn
              from webhook_lines l
              where l.due_at <= now()) as x
        cross join lateral (select max(o.served_at) as served_at
                            from webhook_lines o where o.org_id = x.org_id) as org_turn
        order by x.turn, org_turn.served_at nulls first, x.served_at nulls first, x.org_id, x.webhook_id
        -- Spare candidates: another worker claiming at the same moment holds some of the first.
        limit max_deliveries * 2 + 8
    loop
        exit when jsonb_array_length(claimed) >= max_deliveries;
        select * into line from webhook_lines l
        where l.org_id = candidate.org_id and l.webhook_id = candidate.webhook_id and l.due_at <= now()
        for update skip locked;
        continue when not found;
        select * into head from webhook_deliveries d
        where d.org_id = line.org_id and d.webhook_id = line.webhook_id and d.state in ('pending', 'sending')
        order by d.seq
        limit 1
        for update skip locked;
        if not found then
            -- Finished meanwhile, or its first delivery locked (being cancelled): look again later.
            update webhook_lines l
            set due_at = case when exists (select 1 from webhook_deliveries d
                                           where d.org_id = line.org_id and d.webhook_id = line.webhook_id
                                             and d.state in ('pending', 'sending'))
                              then now() + interval '1 second' end
            where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
            continue;
        end if;
        if head.state = 'sending' and head.lease_expires_at >= now() then
            update webhook_lines l set due_at = head.lease_expires_at
            where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
            continue;
        end if;
        if head.state = 'pending' and head.next_attempt_at > now() then
            update webhook_lines l set due_at = head.next_attempt_at
            where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
            continue;
        end if;
        select * into hook from webhooks w where w.org_id = line.org_id and w.id = line.webhook_id;
        if head.state = 'pending' and not hook.enabled then
            -- Disabled while these were queued: they are not sent.
            update webhook_deliveries d
            set state = 'cancelled', next_attempt_at = null, finished_at = now(),
                last_error = coalesce(hook.disabled_reason, 'The webhook was disabled.')
            where d.org_id = line.org_id and d.webhook_id = line.webhook_id and d.state = 'pending';
            update webhook_lines l
            set due_at = (select d.lease_expires_at from webhook_deliveries d
                          where d.org_id = line.org_id and d.webhook_id = line.webhook_id and d.state = 'sending'
                          order by d.seq limit 1)
            where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
            continue;
        end if;
        if head.state = 'sending' then
            -- Its worker vanished: the attempt it made is logged as lost, and it is sent again.
            update webhook_deliveries d
            set attempts = d.attempts + 1, lease_token = d.attempts + 1, lease_owner = worker,
                lease_expires_at = now() + lease, last_attempt_at = now(),
                attempt_log = d.attempt_log || jsonb_build_object(
                    'attempt', d.attempts, 'at', tolstoy_iso(d.last_attempt_at), 'statusCode', null,
                    'durationMs', null, 'error', 'The worker sending it vanished; sent again.', 'location', null)
            where d.org_id = head.org_id and d.id = head.id
            returning * into taken;
        else
            update webhook_deliveries d
            set state = 'sending', attempts = d.attempts + 1, lease_token = d.attempts + 1, lease_owner = worker,
                lease_expires_at = now() + lease, first_attempt_at = coalesce(d.first_attempt_at, now()),
                last_attempt_at = now()
            where d.org_id = head.org_id and d.id = head.id
            returning * into taken;
        end if;
        update webhook_lines l
        set due_at = taken.lease_expires_at, served_at = clock_timestamp()
        where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
        claimed := claimed || jsonb_build_object(
            'org_id', taken.org_id, 'id', taken.id, 'webhook_id', taken.webhook_id, 'event_id', taken.event_id,
            'event_type', taken.event_type, 'data', taken.data, 'created_at', tolstoy_iso(taken.event_created_at),
            'token', taken.lease_token, 'url', hook.url, 'secret', encode(hook.secret, 'base64'),
            'headers', encode(hook.headers, 'base64'));
    end loop;
    return jsonb_build_object('deliveries', claimed, 'next_due', tolstoy_next_delivery(), 'now', now());
end;
$$;

create or replace function tolstoy_record_delivery(worker text, org uuid, delivery uuid, token integer,
                                                   result jsonb)
returns jsonb
language plpgsql as $$
declare
    current webhook_deliveries;
    outcome text := result ->> 'outcome';
    give_up interval := make_interval(secs => coalesce((result ->> 'give_up_seconds')::double precision, 86400));
    retry_at timestamptz := now() + make_interval(secs => coalesce((result ->> 'retry_in_ms')::double precision, 0)
                                                          / 1000);
    hook webhooks;
    line uuid;
    disabled text;
begin
    if outcome is null or outcome not in ('delivered', 'retry', 'failed') then
        raise exception 'tolstoy_record_delivery: invalid outcome' using errcode = 'invalid_parameter_value';
    end if;
    perform set_config('app.org_id', org::text, true);
    select d.webhook_id into line from webhook_deliveries d where d.org_id = org and d.id = delivery;
    if not found then
        return jsonb_build_object('recorded', false);
    end if;
    perform 1 from webhook_lines l where l.org_id = org and l.webhook_id = line for update;
    select * into current from webhook_deliveries d
    where d.org_id = org and d.id = delivery and d.lease_owner = worker and d.lease_token = token
      and d.state = 'sending'
    for update;
    if not found then
        return jsonb_build_object('recorded', false);
    end if;
    -- No key update: events being written for this webhook (their foreign key's key-share lock) do
    -- not hold this up.
    select * into hook from webhooks w where w.org_id = org and w.id = current.webhook_id for no key update;
    if outcome <> 'delivered' and hook.enabled and now() - hook.failing_since >= give_up then
        -- Failing for the whole period: the webhook is disabled, this delivery given up with it.
        disabled := format('Disabled at %s: every delivery failed since %s (last: %s).',
                           tolstoy_iso(now()), tolstoy_iso(hook.failing_since),
                           coalesce('HTTP ' || (result ->> 'status_code'), left(result ->> 'error', 300),
                                    'no answer'));
        outcome := 'failed';
    elsif outcome = 'retry' and (retry_at - current.first_attempt_at > give_up or not hook.enabled) then
        outcome := 'failed';
    end if;
    update webhook_deliveries d
    set state = case outcome when 'delivered' then 'delivered' when 'retry' then 'pending' else 'failed' end,
        next_attempt_at = case when outcome = 'retry' then retry_at end,
        finished_at = case when outcome <> 'retry' then now() end,
        last_status_code = (result ->> 'status_code')::integer,
        last_error = left(result ->> 'error', 1000),
        lease_owner = null, lease_token = null, lease_expires_at = null,
        attempt_log = d.attempt_log || jsonb_build_object(
            'attempt', token, 'at', tolstoy_iso(d.last_attempt_at),
            'statusCode', (result ->> 'status_code')::integer,
            'durationMs', (result ->> 'duration_ms')::integer, 'error', left(result ->> 'error', 1000),
            'location', left(result ->> 'location', 2048))
    where d.org_id = org and d.id = delivery;
    if outcome = 'delivered' then
        if hook.failing_since is not null then
            update webhooks set failing_since = null where org_id = org and id = hook.id;
        end if;
    elsif disabled is not null then
        -- Its deliveries not sent yet are cancelled (webhooks_cancel_pending).
        update webhooks set enabled = false, disabled_reason = disabled where org_id = org and id = hook.id;
    elsif hook.failing_since is null then
        update webhooks set failing_since = now() where org_id = org and id = hook.id;
    end if;
    update webhook_lines l
    set due_at = (select case when n.state = 'sending' then n.lease_expires_at else n.next_attempt_at end
                  from webhook_deliveries n
                  where n.org_id = org and n.webhook_id = current.webhook_id and n.state in ('pending', 'sending')
                  order by n.seq
                  limit 1)
    where l.org_id = org and l.webhook_id = current.webhook_id;
    return jsonb_build_object('recorded', true, 'outcome', outcome, 'disabled', disabled);
end;
$$;

create or replace function tolstoy_prune_deliveries(retention_days integer, batch integer)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    cutoff timestamptz;
    outbox integer;
    inbox integer;
begin
    if retention_days < 1 or batch is null or batch < 1 or batch > 100000 then
        raise exception 'tolstoy_prune_deliveries: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    if retention_days is null then
        return jsonb_build_object('deliveries', 0, 'inbox', 0);
    end if;
    cutoff := now() - make_interval(days => retention_days);
    delete from webhook_deliveries d
    where (d.org_id, d.id) in (select o.org_id, o.id from webhook_deliveries o
                               where o.state in ('delivered', 'failed', 'cancelled') and o.created_at < cutoff
                               limit batch);
    get diagnostics outbox = row_count;
    delete from flow_trigger_deliveries t
    where (t.org_id, t.id) in (select i.org_id, i.id from flow_trigger_deliveries i
                               where i.received_at < cutoff
                               limit batch);
    get diagnostics inbox = row_count;
    return jsonb_build_object('deliveries', outbox, 'inbox', inbox);
end;
$$;

create or replace function tolstoy_admit_run(org uuid) returns void
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

create or replace function tolstoy_stored_bytes(org uuid, retention_days integer) returns bigint
language sql stable as $$
    select greatest(coalesce(sum(h.bytes), 0), 0)::bigint
    from history_bytes h
    where h.org_id = org
      -- tolstoy_maintain_history drops a month once its end is past retention.
      and (retention_days is null or (h.month + interval '1 month')::date > current_date - retention_days)
$$;

create or replace function tolstoy_maintain_history(today date, retention_days integer, months_ahead integer)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    cutoff date;
    created integer;
    dropped text[] := '{}';
    kept text[] := '{}';
    part record;
    busy boolean;
begin
    -- A day after today would let the caller drop history that is not yet past retention.
    if today is null or today > current_date or months_ahead < 0 or months_ahead > 24 or retention_days < 1 then
        raise exception 'tolstoy_maintain_history: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    if not pg_try_advisory_xact_lock(hashtextextended('tolstoy_maintain_history', 0)) then
        return jsonb_build_object('skipped', true);
    end if;
    -- Waiting behind live traffic is worse than trying again at the next tick.
    perform set_config('lock_timeout', '5s', true);
    created := tolstoy_ensure_partitions(date_trunc('month', today)::date, months_ahead + 1);
    if retention_days is not null then
        cutoff := today - retention_days;
        for part in
            select c.relname, to_date(substring(c.relname from '_p(\d{4}_\d{2})$'), 'YYYY_MM') as month,
                   p.relname as parent
            from pg_inherits i
            join pg_class c on c.oid = i.inhrelid
            join pg_class p on p.oid = i.inhparent
            where p.relname in ('flow_runs', 'execution_logs') and c.relname ~ '_p\d{4}_\d{2}$'
            order by 2
        loop
            continue when (part.month + interval '1 month')::date > cutoff;
            if part.parent = 'flow_runs' then
                execute format('select exists (select 1 from %I where status in (''queued'', ''running'', ''waiting''))',
                               part.relname) into busy;
                if busy then
                    kept := kept || part.relname;
                    continue;
                end if;
                execute format('drop table if exists %I', 'flow_run_steps_p' || to_char(part.month, 'YYYY_MM'));
                dropped := dropped || ('flow_run_steps_p' || to_char(part.month, 'YYYY_MM'));
            end if;
            execute format('drop table %I', part.relname);
            dropped := dropped || part.relname;
        end loop;
    end if;
    return jsonb_build_object('created', created, 'dropped', to_jsonb(dropped), 'kept', to_jsonb(kept));
end;
$$;

create or replace function tolstoy_prune_audit(retention_days integer, batch integer)
returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    pruned integer;
begin
    if retention_days < 1 or batch is null or batch < 1 or batch > 100000 then
        raise exception 'tolstoy_prune_audit: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    if retention_days is null then
        return 0;
    end if;
    delete from audit_events e
    where (e.org_id, e.id) in (select o.org_id, o.id from audit_events o
                               where o.created_at < now() - make_interval(days => retention_days)
                               limit batch);
    get diagnostics pruned = row_count;
    return pruned;
end;
$$;

create or replace function tolstoy_authenticate(hash bytea) returns table (org_id uuid, key_id uuid)
language sql security definer set search_path = public, pg_temp as $$
    with found as (
        select k.org_id, k.id
        from api_keys k
        where k.key_hash = hash and k.revoked_at is null
    ), touched as (
        update api_keys k
        set last_used_at = now()
        from found
        where k.org_id = found.org_id and k.id = found.id
          and (k.last_used_at is null or k.last_used_at < now() - interval '1 minute')
    )
    select found.org_id, found.id from found
$$;

create or replace function tolstoy_enter_key(hash bytea, acting_user uuid, timeout_ms integer) returns uuid
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    found uuid;
begin
    perform set_config('statement_timeout', timeout_ms::text || 'ms', true);
    select k.org_id into found
    from api_keys k
    where k.key_hash = hash and k.revoked_at is null and (k.expires_at is null or k.expires_at > now());
    if found is null then
        raise exception 'The API key is not valid, has expired or has been revoked.' using errcode = 'TS003';
    end if;
    -- Recorded at most once a minute, so authentication stays a read.
    update api_keys k
    set last_used_at = now()
    where k.key_hash = hash
      and (k.last_used_at is null or k.last_used_at < now() - interval '1 minute');
    perform set_config('app.org_id', found::text, true);
    if acting_user is not null and not exists (select 1 from users u where u.org_id = found and u.id = acting_user) then
        raise exception 'Not a user of this organization.' using errcode = 'TS002';
    end if;
    return found;
end;
$$;

create or replace function tolstoy_key_grant(hash bytea)
returns table (org_id uuid, scopes text[], user_id uuid)
language plpgsql stable security definer set search_path = public, pg_temp as $$
begin
    return query
    select k.org_id, k.scopes, k.user_id
    from api_keys k
    where k.key_hash = hash and k.revoked_at is null and (k.expires_at is null or k.expires_at > now());
    if not found then
        raise exception 'The API key is not valid, has expired or has been revoked.' using errcode = 'TS003';
    end if;
end;
$$;

drop function tolstoy_clock_timestamp();
drop function tolstoy_now();
drop table tolstoy_clock;
