-- Queueing a run, claiming it under a lease, renewing the lease, and letting go of it.
--
-- The current source of these functions (db/functions/README.md says how to change one).

create or replace function tolstoy_new_run_id(at timestamptz) returns uuid
language sql volatile parallel safe as $$
    select encode(overlay(uuid_send(gen_random_uuid())
                          placing int8send((floor(extract(epoch from at) * 1000)::bigint << 16)
                                           | (7::bigint << 12)
                                           | (floor(extract(epoch from at) * 1000000)::bigint % 1000))
                          from 1 for 8), 'hex')::uuid
$$;

comment on function tolstoy_new_run_id(timestamptz) is
    'A new run id carrying the time at (UUID version 7 layout, microseconds in its 12 bits after the version): '
    'tolstoy_run_from/until compute the run''s month from it.';

create or replace function tolstoy_run_epoch(id uuid) returns double precision
language sql immutable parallel safe as $$
    -- Null for a null id, as a strict function would be (every branch reads the id).
    select case when get_byte(uuid_send(id), 6) >> 4 = 7 then
        least(((get_byte(uuid_send(id), 0)::bigint << 40) | (get_byte(uuid_send(id), 1)::bigint << 32)
               | (get_byte(uuid_send(id), 2)::bigint << 24) | (get_byte(uuid_send(id), 3)::bigint << 16)
               | (get_byte(uuid_send(id), 4)::bigint << 8) | get_byte(uuid_send(id), 5)::bigint) * 1000
              + least(((get_byte(uuid_send(id), 6) & 15) << 8) | get_byte(uuid_send(id), 7), 999),
              253402300799000000)::double precision / 1000000
    end
$$;

comment on function tolstoy_run_epoch(uuid) is
    'The time (seconds since 1970) a run id made by tolstoy_new_run_id carries; null for any other id. Not '
    'strict, so that queries inline it.';

create or replace function tolstoy_run_from(id uuid) returns timestamptz
language sql immutable parallel safe as $$
    select case when id is not null then to_timestamp(coalesce(tolstoy_run_epoch(id) - 1, '-infinity'::double precision)) end
$$;

comment on function tolstoy_run_from(uuid) is
    'The earliest created_at the run with this id can have (its id''s time less a second; -infinity for an id '
    'without one; null for null): lookups by id add created_at between tolstoy_run_from(id) and '
    'tolstoy_run_until(id). Not strict, so that queries inline it.';

create or replace function tolstoy_run_until(id uuid) returns timestamptz
language sql immutable parallel safe as $$
    select case when id is not null then to_timestamp(coalesce(tolstoy_run_epoch(id) + 1, 'infinity'::double precision)) end
$$;

comment on function tolstoy_run_until(uuid) is
    'The latest created_at the run with this id can have (its id''s time plus a second; infinity for an id '
    'without one; null for null). Not strict, so that queries inline it.';

create or replace function tolstoy_trace_parent(value text) returns text
language sql immutable parallel safe as $$
    select case when value ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
                     and value !~ '^00-0{32}-' and value !~ '-0{16}-[0-9a-f]{2}$'
                then value end
$$;

comment on function tolstoy_trace_parent(text) is
    'A W3C traceparent as kept (flow_runs.trace_parent, flow_run_signals.trace_parent): the value when well formed '
    '(version 00, lower-case hex, neither id all zeros), else null, as the W3C says of a bad one. The same rule '
    'as tolstoy/tracing.py TRACEPARENT.';

create or replace function tolstoy_queue_run_v4(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                                vars jsonb, key text, retrying uuid, acting boolean,
                                                rerunning jsonb, concurrency_key text,
                                                caller_trace text)
returns table (run flow_runs, created boolean)
language plpgsql set plan_cache_mode = force_generic_plan as $_$
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
    -- The flow's concurrency limits as declared now (flows.concurrency): the run keeps them, and its key as
    -- the caller rendered it from its variables (null when queued by the database: a schedule, a subflow
    -- step, an inbound webhook; those runs share the key null).
    declared jsonb := (select f.concurrency from flows f where f.org_id = org and f.id = flow);
    limits jsonb := case when declared ? 'key'
                         then jsonb_strip_nulls(jsonb_build_object('keyLimit', declared -> 'limit',
                                                                   'flowLimit', declared -> 'flowLimit'))
                         when declared is not null then jsonb_build_object('flowLimit', declared -> 'limit') end;
begin
    if retrying is not null and rerunning is not null then
        raise exception 'tolstoy_queue_run_v4: a run is a retry or a re-run, not both'
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
            raise exception 'tolstoy_queue_run_v4: no run % to start from', source using errcode = 'no_data_found';
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
    -- The caller's W3C trace context, when well formed (else none, as the W3C says of a bad one): the
    -- workers put the run's spans in its trace (tolstoy/tracing.py).
    insert into flow_runs (org_id, id, flow_id, flow_version, user_id, variables, plan, idempotency_key,
                           retry_of, rerun_of, root_run_id, created_at, acts_as_user, concurrency,
                           concurrency_key, trace_parent)
    values (org, new_id, flow, queue_run_version, actor, vars, run_plan, key, retrying, (rerunning ->> 'of')::uuid,
            coalesce(root, new_id), new_created_at, coalesce(acting, false) and actor is not null, limits,
            case when declared ? 'key' then concurrency_key end,
            tolstoy_trace_parent(caller_trace))
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

comment on function tolstoy_queue_run_v4(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean, jsonb, text, text) is
    'Queues a run with its plan (steps + the actions they call, with their tools) and its queued log row, or '
    'returns the run an Idempotency-Key (or, for a retry, the retried run) already made. One retry per run. '
    'acting: the one who queues it may act as actor (acts_as_user). rerunning: a re-run of the run named by its '
    '"of" ({of, fromStep, steps?, keep, keepItemsOf, dropItems, children}): the checkpoints of its kept steps '
    'are copied, its plan is the original''s (or built from "steps"), its root is itself (new Idempotency-Keys). '
    'A new run passes tolstoy_admit_run first (quotas: TQ001, TQ002). The run keeps its flow''s concurrency '
    'limits and concurrency_key, its key rendered by the caller (flows.concurrency.key over its variables). caller_trace: the W3C '
    'traceparent of whoever queued it, kept in flow_runs.trace_parent when well formed.';

create or replace function tolstoy_queue_run_v3(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                                vars jsonb, key text, retrying uuid, acting boolean,
                                                rerunning jsonb, concurrency_key text)
returns table (run flow_runs, created boolean)
language plpgsql as $$
#variable_conflict use_column
begin
    return query
    select q.run, q.created
    from tolstoy_queue_run_v4(org, flow, queue_run_version, actor, vars, key, retrying, acting, rerunning,
                              concurrency_key, null) as q;
end;
$$;

comment on function tolstoy_queue_run_v3(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean, jsonb, text) is
    'tolstoy_queue_run_v4 without a caller''s trace context (the previous release''s API, tolstoy_queue_run_v2).';

create or replace function tolstoy_queue_run_v2(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                                vars jsonb, key text, retrying uuid, acting boolean,
                                                rerunning jsonb)
returns table (run flow_runs, created boolean)
language plpgsql as $$
#variable_conflict use_column
begin
    return query
    select q.run, q.created
    from tolstoy_queue_run_v3(org, flow, queue_run_version, actor, vars, key, retrying, acting, rerunning, null) as q;
end;
$$;

comment on function tolstoy_queue_run_v2(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean, jsonb) is
    'tolstoy_queue_run_v3 without a concurrency key (the previous release''s API, and tolstoy_queue_run): a run '
    'of a flow whose concurrency has a key gets the key null.';

create or replace function tolstoy_queue_run(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                             vars jsonb, key text, retrying uuid, acting boolean default false)
returns table (run flow_runs, created boolean)
language plpgsql as $$
#variable_conflict use_column
begin
    return query
    select q.run, q.created
    from tolstoy_queue_run_v2(org, flow, queue_run_version, actor, vars, key, retrying, acting, null) as q;
end;
$$;

comment on function tolstoy_queue_run(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean) is
    'tolstoy_queue_run_v2 without a re-run: queues a run (or finds the one an Idempotency-Key or a retry made).';

create or replace function flow_runs_inherit_acting() returns trigger
language plpgsql as $$
begin
    select p.acts_as_user and p.user_id is not distinct from new.user_id into new.acts_as_user
    from flow_runs p
    where p.org_id = new.org_id and p.id = new.parent_run_id
      and p.created_at between tolstoy_run_from(new.parent_run_id) and tolstoy_run_until(new.parent_run_id);
    new.acts_as_user := coalesce(new.acts_as_user, false);
    return new;
end;
$$;

comment on function flow_runs_inherit_acting() is
    'BEFORE UPDATE OF parent_run_id trigger: a child run may act as its user only when its parent may.';

create or replace function flow_runs_notify() returns trigger
language plpgsql as $$
begin
    perform pg_notify('tolstoy_runs', new.id::text);
    return null;
end;
$$;

comment on function flow_runs_notify() is 'AFTER INSERT/UPDATE trigger: NOTIFY tolstoy_runs when a run is queued.';

create or replace function tolstoy_claim_runs_v2(worker text, max_runs integer, lease_seconds double precision,
                                                 max_recoveries integer, half_life_seconds double precision)
returns table (run jsonb, meta jsonb)
language plpgsql security definer set search_path = public, pg_temp set plan_cache_mode = force_generic_plan as $$
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
    blocker jsonb;
    parked_at timestamptz;
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
        -- A run of a flow with concurrency limits (concurrency.sql) starts only with a slot; without one it is
        -- parked, queued with no due time, until a run of its flow frees one (flow_runs_release_slot). Another
        -- claim deciding about the same flow: the run is left for it (or for the next claim).
        parked_at := (taken.concurrency ->> 'parkedAt')::timestamptz;
        if taken.concurrency is not null then
            continue when not pg_try_advisory_xact_lock(tolstoy_slot_lock(taken.org_id, taken.flow_id));
            blocker := tolstoy_concurrency_blocker(taken);
            if blocker is not null then
                update flow_runs
                set run_after = 'infinity', waiting_for = 'concurrency', waiting_on = blocker, waiting_step = null,
                    waiting_since = coalesce(parked_at, clock_now), waiting_until = null,
                    concurrency = concurrency || jsonb_build_object('parkedAt', coalesce(parked_at, clock_now))
                where org_id = due.org_id and id = due.id and created_at = due.created_at;
                continue;
            end if;
        end if;
        payload := null;
        begin
            update flow_runs
            set status = 'running', claims = claims + 1, lease_token = claims + 1, lease_owner = worker,
                lease_expires_at = tolstoy_clock_timestamp() + lease, started_at = coalesce(started_at, clock_now),
                accounted_at = tolstoy_clock_timestamp(), concurrency = concurrency - 'parkedAt'
            where org_id = due.org_id and id = due.id and created_at = due.created_at
            returning * into taken;
            if taken.claims = 1 then
                insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
                values (taken.org_id, taken.flow_id, taken.user_id, taken.id::text, '$flow', 'running',
                        taken.variables);
            end if;
            payload := tolstoy_run_payload(taken);
            if parked_at is not null then
                -- How long it waited for its slot (metrics: tolstoy_concurrency_wait_seconds).
                payload := payload || jsonb_build_object('slot_waited_seconds',
                                                         extract(epoch from clock_now - parked_at)::float8);
            end if;
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
    -- Not the runs parked for a slot (run_after infinity): a slot that frees wakes them, not the time.
    meta := jsonb_build_object(
        'next_due', least(
            (select min(r.run_after) from flow_runs r where r.status = 'queued' and r.run_after < 'infinity'),
            (select min(r.lease_expires_at) from flow_runs r where r.status = 'running')));
    return next;
end;
$$;

comment on function tolstoy_claim_runs_v2(text, integer, double precision, integer, double precision) is
    'Claims up to max_runs runs for worker: expired leases first (a strike each; failed past max_recoveries, '
    'cancelled when asked), then due queued runs round-robin across organizations weighed by the worker time '
    'they hold and used lately (half-life half_life_seconds), in order within each; a run over its flow''s '
    'concurrency limits is parked instead (concurrency.sql). One row per run ({run}), each '
    'loaded on its own (a run that fails to load is charged a fault, not the claim), then {meta: {next_due}}.';

create or replace function tolstoy_claim_runs(worker text, max_runs integer, lease_seconds double precision,
                                              max_recoveries integer)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    return (
        select jsonb_build_object('runs', coalesce(jsonb_agg(c.run) filter (where c.run is not null), '[]'),
                                  'next_due', max(c.meta ->> 'next_due')::timestamptz)
        from tolstoy_claim_runs_v2(worker, max_runs, lease_seconds, max_recoveries, 300) as c);
end;
$$;

comment on function tolstoy_claim_runs(text, integer, double precision, integer) is
    'The previous release''s claim, kept for its workers during a deploy: tolstoy_claim_runs_v2 as one jsonb '
    '{runs, next_due}. To be dropped.';

create or replace function tolstoy_run_payload(r flow_runs) returns jsonb
language plpgsql stable as $$
begin
    return (
        select jsonb_build_object(
            'org_id', r.org_id, 'id', r.id, 'created_at', r.created_at, 'flow_id', r.flow_id,
            'flow_version', r.flow_version, 'user_id', r.user_id, 'acts_as_user', r.acts_as_user,
            'variables', r.variables, 'plan', r.plan,
            'token', r.lease_token, 'root_run_id', r.root_run_id, 'claims', r.claims, 'recoveries', r.recoveries,
            'strikes', r.strikes, 'handbacks', r.handbacks, 'cancel_requested', r.cancel_requested,
            'trace_parent', r.trace_parent,
            'checkpoints', coalesce((
                select jsonb_agg(jsonb_build_object(
                           'step_id', s.step_id, 'status', s.status, 'attempt', s.attempt, 'inputs', s.inputs,
                           'outputs', s.outputs, 'sealed', encode(s.sealed, 'base64'), 'error', s.error,
                           'wake_at', s.wake_at, 'call_started_at', s.call_started_at)
                       order by s.started_at)
                from flow_run_steps s
                where s.org_id = r.org_id and s.run_id = r.id and s.run_created_at = r.created_at), '[]')));
end;
$$;

comment on function tolstoy_run_payload(flow_runs) is 'A claimed run as a worker receives it: the row, its plan and its checkpoints.';

create or replace function tolstoy_renew_leases(worker text, orgs uuid[], runs uuid[], tokens integer[],
                                                lease_seconds double precision)
returns table (run_id uuid, cancel boolean)
language plpgsql security definer set search_path = public, pg_temp set plan_cache_mode = force_generic_plan as $$
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

comment on function tolstoy_renew_leases(text, uuid[], uuid[], integer[], double precision) is
    'Heartbeat: renews the unexpired leases the worker holds with these tokens; returns them with cancel flags.';

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

comment on function tolstoy_release_run(flow_runs, flow_run_status, double precision, jsonb) is
    'A run leaves its worker''s hands unfinished: queued after after_ms, waiting, or failed with error (logged); '
    'cancelled instead when a cancel is pending. Releases the lease; returns the status set.';

create or replace function tolstoy_run_fault(r flow_runs, fault jsonb, max_strikes integer, after_ms double precision)
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

create or replace function tolstoy_queue_stats()
returns table (queued bigint, due bigint, oldest_due_age_seconds double precision)
language plpgsql stable security definer set search_path = public, pg_temp
set plan_cache_mode = force_generic_plan as $$
#variable_conflict use_column
begin
    return query
    -- The clock read once, not once per queued run.
    select q.queued, q.due, coalesce(extract(epoch from c.now - q.oldest_due), 0)::float8
    from (select tolstoy_now() as now) as c
    cross join lateral (select count(*) as queued, count(*) filter (where r.run_after <= c.now) as due,
                               min(r.run_after) filter (where r.run_after <= c.now) as oldest_due
                        from flow_runs r
                        where r.status = 'queued') as q;
end;
$$;

comment on function tolstoy_queue_stats() is
    'Queue depth across organizations for /metrics: queued runs, due ones, age of the oldest due one.';

-- Parked runs across organizations by why they wait, for /metrics (tolstoy_flow_runs_parked): one
-- read of the partial index flow_runs_org_id_flow_id_waiting_for_idx per scrape, as tolstoy_queue_stats
-- reads the queue's.
create or replace function tolstoy_parked_runs()
returns table (waiting_for text, runs bigint)
language plpgsql stable security definer set search_path = public, pg_temp
set plan_cache_mode = force_generic_plan as $$
#variable_conflict use_column
begin
    return query
    select r.waiting_for, count(*)
    from flow_runs r
    where r.waiting_for is not null
    group by r.waiting_for;
end;
$$;

comment on function tolstoy_parked_runs() is
    'Parked runs across organizations by why they wait (flow_runs.waiting_for), for /metrics.';
