-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic. The statement timeout bounds the
-- one index build below (queued runs only, read from each month of flow_runs).
set local lock_timeout = '5s';
set local statement_timeout = '300s';

-- No run can stop the engine, and no organization can have it to itself (issues 20 and 21).
--
-- * Faults are told apart (tolstoy/errors.py FAULT_CLASSES, docs/flows.md). A transient fault of
--   the database hands the run back to the queue as it was: the new run action "handback" (counted
--   in flow_runs.handbacks; past the worker's limit the run fails, naming it). A fault of the run's
--   own data (a program limit, a data exception) counts against the run: the action "fault"
--   (counted in flow_runs.strikes; past the recovery limit the run fails, naming the fault).
-- * Recoveries count against the run that was in flight: flow_runs.strikes counts the recoveries
--   (and faults) since the run last finished a step, and only strikes meet the recovery limit. A
--   worker that dies (or lets go of its runs) leaves every run it held to its lease; each is
--   recovered, but a run that goes on to finish a step was not what stopped its worker, and its
--   strikes go back to 0. The run that stopped it never gets past its step. flow_runs.recoveries
--   still counts every recovery, for the record.
-- * The claim loads each run on its own (tolstoy_claim_runs_v2): one whose state cannot be loaded
--   (its checkpoints past jsonb's 256 MB, say) is charged a strike and left for later, and the
--   claim goes on with the others. It returns one row per run instead of one jsonb array of all
--   of them, which a few large runs together could push past the same limit.
-- * Cancel is durable: a run whose cancel is pending is handed over with cancel_requested (the
--   worker ends it at once), and every transition that would leave it unfinished (pause, wait,
--   handback, fault, a recovery) ends it cancelled instead. The API ends at once a running run
--   whose lease expired (sql/runs.sql request_cancel): no worker is there to pass a step boundary.
-- * Claims are fair across organizations: due runs are taken round-robin across organizations,
--   each weighed by the worker time it holds now and used lately (organization_worker_time, kept
--   by tolstoy_checkpoint, decaying with a half-life); within an organization, in order.
--
-- Compatibility: the worker of the previous release calls tolstoy_claim_runs (kept, now a wrapper
-- around tolstoy_claim_runs_v2) and tolstoy_checkpoint with the actions it knows (unchanged
-- meaning, a pending cancel honoured by "wait" too). Drop tolstoy_claim_runs in a later release.

alter table flow_runs add column strikes integer not null default 0;
alter table flow_runs add column handbacks integer not null default 0;
alter table flow_runs add column accounted_at timestamptz;

comment on column flow_runs.strikes is
    'Recoveries (its lease expired) and faults of its own (data the database refused) since the run last '
    'finished a step; past TOLSTOY_MAX_RECOVERIES it fails (RecoveryLimit).';
comment on column flow_runs.handbacks is
    'Times the run was handed back to the queue after a transient fault of the database since it last finished '
    'a step; past TOLSTOY_MAX_HANDBACKS it fails (HandbackLimit).';
comment on column flow_runs.accounted_at is
    'Up to when the worker time of the current lease is counted in organization_worker_time.';
comment on column flow_runs.recoveries is
    'Claims after the run''s lease expired (its worker vanished, or let go of it): every one, for the record. '
    'The recovery limit reads strikes.';

-- Due queued runs by organization, in order: the claim's walk over the organizations that have
-- queued runs (one probe each) and its look at each one's first runs. Partial: queued runs only.
-- A partitioned table cannot be indexed concurrently; the build reads each month once, under a
-- lock that holds writes back for as long (bounded by the statement timeout above).
-- squawk-ignore require-concurrent-index-creation
create index flow_runs_queued_org_id_run_after_idx on flow_runs (org_id, run_after, id)
    where status = 'queued';

-- ---- worker time per organization ------------------------------------------------------------

create table organization_worker_time (
    org_id uuid primary key references organizations (id) on delete cascade,
    seconds double precision not null default 0 check (seconds >= 0),
    counted_at timestamptz not null default now()
);

comment on table organization_worker_time is
    'Worker time each organization''s runs held lately, decaying with a half-life '
    '(TOLSTOY_FAIR_SHARE_HALF_LIFE_SECONDS): what fair claims weigh organizations by.';
comment on column organization_worker_time.seconds is
    'Worker-seconds as of counted_at, each older second counting half as much per half-life.';
comment on column organization_worker_time.counted_at is 'When seconds was last brought up to date.';

alter table organization_worker_time enable row level security;
alter table organization_worker_time force row level security;
create policy tenant_isolation on organization_worker_time
    using (org_id = tolstoy_current_org()) with check (org_id = tolstoy_current_org());
-- The claim (tolstoy_claim_runs_v2, owned by tolstoy_engine) reads every organization's.
create policy engine_access on organization_worker_time to tolstoy_engine using (true);
comment on policy engine_access on organization_worker_time is
    'The run claim reads every organization''s worker time to weigh them.';
grant select on organization_worker_time to tolstoy_engine;

-- ---- how a run leaves a worker's hands -------------------------------------------------------

-- The one place a worker's run goes back to the queue, waits or fails for a limit, without a worker
-- finishing it: queued (due after after_ms), waiting, or failed with error (and its log row); a
-- pending cancel ends it cancelled instead (with its log row). The lease is released. Returns the
-- status the run has now.
create function tolstoy_release_run(r flow_runs, becomes flow_run_status, after_ms double precision,
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

comment on function tolstoy_release_run(flow_runs, flow_run_status, double precision, jsonb) is
    'A run leaves its worker''s hands unfinished: queued after after_ms, waiting, or failed with error (logged); '
    'cancelled instead when a cancel is pending. Releases the lease; returns the status set.';

-- A fault of the run's own data (fault = {sqlstate, message}): one more strike, then back to the
-- queue after after_ms, or, past max_strikes, failed with the fault named (RecoveryLimit). Used by
-- the claim (a run whose state cannot be loaded) and by tolstoy_checkpoint (action "fault").
create function tolstoy_run_fault(r flow_runs, fault jsonb, max_strikes integer, after_ms double precision)
returns flow_run_status
language plpgsql as $$
declare
    over boolean := r.strikes + 1 > max_strikes;
begin
    update flow_runs f set strikes = f.strikes + 1
    where f.org_id = r.org_id and f.id = r.id and f.created_at = r.created_at;
    return tolstoy_release_run(r, case when over then 'failed' else 'queued' end::flow_run_status, after_ms,
                               case when over then jsonb_build_object(
                                   'name', 'RecoveryLimit', 'sqlstate', fault ->> 'sqlstate',
                                   'message', format('The database refused this run''s data %s times in a row (the '
                                                     'limit is %s, TOLSTOY_MAX_RECOVERIES): %s (SQLSTATE %s); it is '
                                                     'not tried again.', r.strikes + 1, max_strikes,
                                                     left(fault ->> 'message', 500), fault ->> 'sqlstate')) end);
end;
$$;

comment on function tolstoy_run_fault(flow_runs, jsonb, integer, double precision) is
    'A fault of the run''s own data: a strike, then queued after after_ms, or failed (RecoveryLimit, naming the '
    'fault) past max_strikes; a pending cancel ends it cancelled.';

-- ---- the checkpoint ----------------------------------------------------------------------------

-- One engine step is one call of this function: it checks the lease (owner, token, not expired;
-- TL001 otherwise), writes the step checkpoints and the execution log events, counts the worker
-- time since the last count against the organization, and moves the run, all in one transaction.
--
-- writes = {"lease_seconds": n, "half_life_seconds": n, "max_recoveries": n, "max_handbacks": n,
--           "steps": [{step_id, status, attempt, inputs, outputs, sealed (base64), error,
--                      wake_in_ms, call_started, duration_ms}],
--           "events": [{step_key, status, inputs, error, duration_ms}],
--           "run": {"action": "continue" | "pause" | "wait" | "finish" | "handback" | "fault",
--                   "after_ms": n, "status": ..., "error": ...}}
--
-- continue: a longer lease. pause: queued until after_ms. wait: waiting for a person or a signal.
-- finish: ended with status and error. handback: a transient fault; queued until after_ms, one more
-- hand-back (past max_handbacks: failed, HandbackLimit, naming the fault in error). fault: the run's
-- own data was refused (error = the fault); tolstoy_run_fault. A pending cancel ends the run
-- cancelled in every one of them that would leave it unfinished; finish ends it as the worker says
-- (what is done is done); continue keeps it, and the answer's "cancel" tells the worker to stop at
-- its next step boundary. Finishing a step (not an item of a foreach) clears strikes and hand-backs.
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

comment on function tolstoy_checkpoint(text, uuid, uuid, integer, jsonb) is
    'One engine step: checks the worker''s lease (TL001 when lost), writes step checkpoints and log events, counts '
    'the worker time against the organization, and moves the run (continue, pause, wait, finish, handback, fault; '
    'a pending cancel ends it cancelled rather than unfinished) in one transaction. Acts for org under row-level '
    'security.';

-- ---- the claim -----------------------------------------------------------------------------------

-- What a worker needs of a run it claimed, now with a pending cancel and the run's strikes and
-- hand-backs (which space its next retry).
create or replace function tolstoy_run_payload(r flow_runs) returns jsonb
language sql stable as $$
    select jsonb_build_object(
        'org_id', r.org_id, 'id', r.id, 'created_at', r.created_at, 'flow_id', r.flow_id,
        'flow_version', r.flow_version, 'user_id', r.user_id, 'acts_as_user', r.acts_as_user,
        'variables', r.variables, 'plan', r.plan,
        'token', r.lease_token, 'root_run_id', r.root_run_id, 'claims', r.claims, 'recoveries', r.recoveries,
        'strikes', r.strikes, 'handbacks', r.handbacks, 'cancel_requested', r.cancel_requested,
        'checkpoints', coalesce((
            select jsonb_agg(jsonb_build_object(
                       'step_id', s.step_id, 'status', s.status, 'attempt', s.attempt, 'inputs', s.inputs,
                       'outputs', s.outputs, 'sealed', encode(s.sealed, 'base64'), 'error', s.error,
                       'wake_at', s.wake_at, 'call_started_at', s.call_started_at)
                   order by s.started_at)
            from flow_run_steps s
            where s.org_id = r.org_id and s.run_id = r.id and s.run_created_at = r.created_at), '[]'))
$$;

-- Claim up to max_runs runs of any organization, one row each ({run: payload}), then one row with
-- {meta: {next_due}} (when the next run falls due, so an idle worker sleeps until then).
--
-- First the runs whose lease expired (a recovery: one more strike; a run past max_recoveries strikes
-- fails instead, so a run that kills its worker cannot kill them all; one whose cancel is pending is
-- ended cancelled). Then due queued runs, fairly: the organizations with due runs take turns, each
-- placed by its load, the runs it has running now plus the worker time it used lately (in the same
-- unit: decayed worker-seconds × ln 2 / half-life is the number of runs it kept going on average over
-- about a half-life), and within an organization in order (run_after, id). The k-th due run of an
-- organization comes at load + k; ties go to the longer wait. Each with SKIP LOCKED, under a new
-- lease token, whose lease starts when the run is taken (clock_timestamp(), not the transaction's
-- start: a claim that spent seconds on a large run must not hand over leases already short).
--
-- Each run is loaded on its own, in a block of its own (a subtransaction): if its update or its
-- payload fails for anything but a transient fault (a program limit such as jsonb's 256 MB, a data
-- exception), the run is charged a strike by tolstoy_run_fault and the claim goes on with the others.
-- A transient fault (a cancelled statement, a lost connection) fails the claim as a whole, and the
-- worker claims again. A worker asks for few runs at a time (at most 32), so a claim opens few
-- subtransactions.
create function tolstoy_claim_runs_v2(worker text, max_runs integer, lease_seconds double precision,
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

comment on function tolstoy_claim_runs_v2(text, integer, double precision, integer, double precision) is
    'Claims up to max_runs runs for worker: expired leases first (a strike each; failed past max_recoveries, '
    'cancelled when asked), then due queued runs round-robin across organizations weighed by the worker time '
    'they hold and used lately (half-life half_life_seconds), in order within each. One row per run ({run}), each '
    'loaded on its own (a run that fails to load is charged a fault, not the claim), then {meta: {next_due}}.';

alter function tolstoy_claim_runs_v2(text, integer, double precision, integer, double precision)
    owner to tolstoy_engine;
revoke execute on function tolstoy_claim_runs_v2(text, integer, double precision, integer, double precision)
    from public;

-- The previous release's workers claim through this until they are replaced (same answer as before:
-- {runs: [...], next_due}); drop it in a later release.
create or replace function tolstoy_claim_runs(worker text, max_runs integer, lease_seconds double precision,
                                              max_recoveries integer)
returns jsonb
language sql security definer set search_path = public, pg_temp as $$
    select jsonb_build_object('runs', coalesce(jsonb_agg(c.run) filter (where c.run is not null), '[]'),
                              'next_due', max(c.meta ->> 'next_due')::timestamptz)
    from tolstoy_claim_runs_v2(worker, max_runs, lease_seconds, max_recoveries, 300) as c
$$;

comment on function tolstoy_claim_runs(text, integer, double precision, integer) is
    'The previous release''s claim, kept for its workers during a deploy: tolstoy_claim_runs_v2 as one jsonb '
    '{runs, next_due}. To be dropped.';

-- Privileges: db/grants.sql (tolstoy_claim_runs_v2 and organization_worker_time to tolstoy_worker).

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create or replace function tolstoy_claim_runs(worker text, max_runs integer, lease_seconds double precision,
                                              max_recoveries integer)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    claimed jsonb := '[]';
    lost record;
    due record;
    taken flow_runs;
    lease interval := make_interval(secs => lease_seconds);
    failure jsonb;
begin
    if worker is null or worker = '' or max_runs < 1 or max_runs > 1000 or lease_seconds <= 0
            or max_recoveries < 0 then
        raise exception 'tolstoy_claim_runs: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    for lost in
        select r.org_id, r.id, r.created_at, r.flow_id, r.user_id, r.recoveries
        from flow_runs r
        where r.status = 'running' and r.lease_expires_at < now()
        order by r.lease_expires_at
        limit max_runs
        for update skip locked
    loop
        if lost.recoveries >= max_recoveries then
            failure := jsonb_build_object(
                'name', 'RecoveryLimit',
                'message', format('The run stopped its worker %s times (the limit is %s); it is not tried again.',
                                  lost.recoveries + 1, max_recoveries));
            update flow_runs
            set status = 'failed', error = failure, finished_at = now(), recoveries = recoveries + 1,
                lease_owner = null, lease_token = null, lease_expires_at = null
            where org_id = lost.org_id and id = lost.id and created_at = lost.created_at;
            insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error)
            values (lost.org_id, lost.flow_id, lost.user_id, lost.id::text, '$flow', 'failed', '{}', failure);
        else
            update flow_runs
            set claims = claims + 1, lease_token = claims + 1, recoveries = recoveries + 1,
                lease_owner = worker, lease_expires_at = now() + lease
            where org_id = lost.org_id and id = lost.id and created_at = lost.created_at
            returning * into taken;
            claimed := claimed || tolstoy_run_payload(taken);
        end if;
    end loop;
    for due in
        select r.org_id, r.id, r.created_at
        from flow_runs r
        where r.status = 'queued' and r.run_after <= now()
        order by r.run_after
        limit max_runs - jsonb_array_length(claimed)
        for update skip locked
    loop
        update flow_runs
        set status = 'running', claims = claims + 1, lease_token = claims + 1, lease_owner = worker,
            lease_expires_at = now() + lease, started_at = coalesce(started_at, now())
        where org_id = due.org_id and id = due.id and created_at = due.created_at
        returning * into taken;
        if taken.claims = 1 then
            insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
            values (taken.org_id, taken.flow_id, taken.user_id, taken.id::text, '$flow', 'running', taken.variables);
        end if;
        claimed := claimed || tolstoy_run_payload(taken);
    end loop;
    return jsonb_build_object(
        'runs', claimed,
        'next_due', least((select min(r.run_after) from flow_runs r where r.status = 'queued'),
                          (select min(r.lease_expires_at) from flow_runs r where r.status = 'running')));
end;
$$;

comment on function tolstoy_claim_runs(text, integer, double precision, integer) is
    'Claims up to max_runs runs for worker (expired leases first, then due queued runs), returns them with '
    '{runs, next_due}; a run past max_recoveries fails instead.';

drop function tolstoy_claim_runs_v2(text, integer, double precision, integer, double precision);

create or replace function tolstoy_run_payload(r flow_runs) returns jsonb
language sql stable as $$
    select jsonb_build_object(
        'org_id', r.org_id, 'id', r.id, 'created_at', r.created_at, 'flow_id', r.flow_id,
        'flow_version', r.flow_version, 'user_id', r.user_id, 'acts_as_user', r.acts_as_user,
        'variables', r.variables, 'plan', r.plan,
        'token', r.lease_token, 'root_run_id', r.root_run_id, 'claims', r.claims, 'recoveries', r.recoveries,
        'checkpoints', coalesce((
            select jsonb_agg(jsonb_build_object(
                       'step_id', s.step_id, 'status', s.status, 'attempt', s.attempt, 'inputs', s.inputs,
                       'outputs', s.outputs, 'sealed', encode(s.sealed, 'base64'), 'error', s.error,
                       'wake_at', s.wake_at, 'call_started_at', s.call_started_at)
                   order by s.started_at)
            from flow_run_steps s
            where s.org_id = r.org_id and s.run_id = r.id and s.run_created_at = r.created_at), '[]'))
$$;

create or replace function tolstoy_checkpoint(worker text, org uuid, run uuid, token integer, writes jsonb)
returns jsonb
language plpgsql as $_$
declare
    current flow_runs;
    step jsonb;
    event jsonb;
    transition jsonb := coalesce(writes -> 'run', '{"action": "continue"}');
    outcome text;
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
    end loop;
    for event in select * from jsonb_array_elements(coalesce(writes -> 'events', '[]')) loop
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error,
                                    duration_ms, created_at)
        values (org, current.flow_id, current.user_id, run::text, event ->> 'step_key',
                (event ->> 'status')::execution_status, coalesce(event -> 'inputs', '{}'),
                nullif(event -> 'error', 'null'), (event ->> 'duration_ms')::integer, clock_timestamp());
    end loop;
    case transition ->> 'action'
        when 'continue' then
            update flow_runs
            set lease_expires_at = now() + make_interval(secs => coalesce((writes ->> 'lease_seconds')::double precision,
                                                                          30))
            where org_id = org and id = run and created_at = current.created_at;
        when 'pause' then
            -- A cancel asked for while the step ran ends the run instead of sleeping.
            outcome := case when current.cancel_requested then 'cancelled' else 'queued' end;
            update flow_runs
            set status = outcome::flow_run_status,
                run_after = now() + make_interval(secs => coalesce((transition ->> 'after_ms')::double precision, 0)
                                                         / 1000),
                finished_at = case when outcome = 'cancelled' then now() end,
                error = case when outcome = 'cancelled' then '{"message": "Cancelled"}'::jsonb else error end,
                lease_owner = null, lease_token = null, lease_expires_at = null
            where org_id = org and id = run and created_at = current.created_at;
            if outcome = 'cancelled' then
                insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error)
                values (org, current.flow_id, current.user_id, run::text, '$flow', 'cancelled', '{}',
                        '{"message": "Cancelled"}');
            end if;
        when 'wait' then
            update flow_runs
            set status = 'waiting', lease_owner = null, lease_token = null, lease_expires_at = null
            where org_id = org and id = run and created_at = current.created_at;
        when 'finish' then
            update flow_runs
            set status = (transition ->> 'status')::flow_run_status, error = nullif(transition -> 'error', 'null'),
                finished_at = now(), lease_owner = null, lease_token = null, lease_expires_at = null
            where org_id = org and id = run and created_at = current.created_at;
        else
            raise exception 'tolstoy_checkpoint: unknown run action %', transition ->> 'action'
                using errcode = 'invalid_parameter_value';
    end case;
    return jsonb_build_object('cancel', current.cancel_requested);
end;
$_$;

comment on function tolstoy_checkpoint(text, uuid, uuid, integer, jsonb) is
    'One engine step: checks the worker''s lease (TL001 when lost), writes step checkpoints and log events, and '
    'moves the run (continue, pause, wait, finish) in one transaction. Acts for org under row-level security.';

drop function tolstoy_run_fault(flow_runs, jsonb, integer, double precision);
drop function tolstoy_release_run(flow_runs, flow_run_status, double precision, jsonb);
drop table organization_worker_time;
-- A partitioned table's index cannot be dropped concurrently; the columns below go in the same
-- transaction anyway.
-- squawk-ignore require-concurrent-index-deletion
drop index flow_runs_queued_org_id_run_after_idx;
alter table flow_runs drop column accounted_at;
alter table flow_runs drop column handbacks;
alter table flow_runs drop column strikes;
comment on column flow_runs.recoveries is 'Claims after a worker vanished (its lease expired); past the limit the run fails.';
