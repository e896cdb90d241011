-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Concurrency limits by key (issue 26): a flow declares how many of its runs run at once, in all and per
-- key (flows.concurrency); each run keeps the limits and its key, rendered from its variables when it is
-- queued (flow_runs.concurrency, concurrency_key); the claim starts a limited run only with a slot and
-- parks it otherwise (queued, no due time, waiting_for 'concurrency'); a run that leaves running wakes the
-- oldest waiter (flow_runs_release_slot). db/functions/concurrency.sql says how.

alter table flows add column concurrency jsonb;
-- The column was just added, null in every row: the check finds nothing to refuse.
-- squawk-ignore constraint-missing-not-valid
alter table flows add constraint flows_concurrency_shape check (
    concurrency is null
    or case when jsonb_typeof(concurrency) = 'object' and jsonb_typeof(concurrency -> 'limit') = 'number'
            then (concurrency ->> 'limit')::numeric between 1 and 10000
                 and (not concurrency ? 'key'
                      or (jsonb_typeof(concurrency -> 'key') = 'string'
                          and char_length(concurrency ->> 'key') between 1 and 1000))
                 and (not concurrency ? 'flowLimit'
                      or (concurrency ? 'key' and jsonb_typeof(concurrency -> 'flowLimit') = 'number'
                          and (concurrency ->> 'flowLimit')::numeric between 1 and 10000))
                 and concurrency - 'key' - 'limit' - 'flowLimit' = '{}'::jsonb
            else false end);
comment on column flows.concurrency is
    'How many runs of the flow run at once: {"limit": n} in all, or {"key": template, "limit": n, "flowLimit": m?} '
    'n per key (the template rendered over the run''s variables when it is queued) and m in all. Null: no limit. '
    'Runs keep the limits of the moment they are queued.';

alter table flow_runs add column concurrency jsonb;
alter table flow_runs add column concurrency_key text;
comment on column flow_runs.concurrency is
    'The concurrency limits the run obeys, from its flow''s when it was queued: {keyLimit?, flowLimit?, parkedAt?} '
    '(parkedAt: since when it waits for a slot). Null: none.';
comment on column flow_runs.concurrency_key is
    'The run''s concurrency key, its flow''s key template rendered over its variables when it was queued (null '
    'when the flow has no key, or when the database queued it: a schedule, a subflow step, an inbound webhook).';

-- Replaced by a wider one in the same transaction: no moment without it.
-- squawk-ignore ban-drop-constraint
alter table flow_runs drop constraint flow_runs_waiting_for_kind;
-- Not valid: every old row meets it (it only adds a kind), so nothing reads the history under the lock.
alter table flow_runs add constraint flow_runs_waiting_for_kind
    check (waiting_for in ('signal', 'outcomeUnknown', 'child', 'retry', 'delay', 'rateLimit', 'concurrency'))
    not valid;

-- The index's build reads every partition (it writes nothing: the columns are new).
set local statement_timeout = '300s';

-- "The running runs of a flow with this key": counted by every claim of a limited run. Partial: only running
-- runs are in it. Declared on the parent only (`tolstoy db up` builds each partition's concurrently).
-- squawk-ignore require-concurrent-index-creation
create index flow_runs_running_org_id_flow_id_concurrency_key_idx
    on only flow_runs (org_id, flow_id, concurrency_key)
    where status = 'running';

set local statement_timeout = '60s';

-- Stable, as format() is: a function no less volatile than its body is inlined where it is called.
create or replace function tolstoy_slot_lock(org uuid, flow uuid) returns bigint
language sql stable parallel safe as $$
    select hashtextextended(format('run-slots:%s:%s', org, flow), 0)
$$;

comment on function tolstoy_slot_lock(uuid, uuid) is
    'The advisory lock a claim that parks or starts a limited run of the flow, and a release that wakes one, hold '
    'until they commit.';

create or replace function tolstoy_concurrency_blocker(r flow_runs) returns jsonb
language plpgsql stable as $$
declare
    key_limit integer := (r.concurrency ->> 'keyLimit')::integer;
    flow_limit integer := (r.concurrency ->> 'flowLimit')::integer;
begin
    -- Every running run of the flow holds a slot, a run whose lease expired too: it is its worker's
    -- until the lease runs out, then the claim that recovers it takes it on, slot and all.
    if key_limit is not null and key_limit <= (
            select count(*) from flow_runs o
            where o.org_id = r.org_id and o.flow_id = r.flow_id and o.status = 'running'
              and o.concurrency is not null
              and (o.concurrency_key = r.concurrency_key
                   or (o.concurrency_key is null and r.concurrency_key is null))) then
        return jsonb_build_object('key', r.concurrency_key, 'limit', key_limit);
    end if;
    if flow_limit is not null and flow_limit <= (
            select count(*) from flow_runs o
            where o.org_id = r.org_id and o.flow_id = r.flow_id and o.status = 'running') then
        return jsonb_build_object('flowLimit', flow_limit);
    end if;
    return null;
end;
$$;

comment on function tolstoy_concurrency_blocker(flow_runs) is
    'Why a run with concurrency limits may not start now: {key, limit} when its key has as many running runs '
    'as its keyLimit, {flowLimit} when its flow has as many as its flowLimit; null when it has a slot. The caller '
    'holds the flow''s slot lock (tolstoy_slot_lock).';

create or replace function flow_runs_release_slot() returns trigger
language plpgsql as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
begin
    -- Waits for a claim deciding about this flow's runs: a run it parks is seen below.
    perform pg_advisory_xact_lock(tolstoy_slot_lock(new.org_id, new.flow_id));
    -- A new statement, so a new snapshot. The oldest run waiting for this run's key, and the oldest waiting
    -- for the flow's limit: each is claimed or parked again by the next claim (so a slot is never given to
    -- a run another limit still holds back, and a raised limit fills as runs end).
    update flow_runs w
    set run_after = clock_now
    from ((select p.org_id, p.id, p.created_at
           from flow_runs p
           where p.org_id = new.org_id and p.flow_id = new.flow_id and p.waiting_for = 'concurrency'
             and p.status = 'queued' and p.waiting_on ? 'key'
             and p.waiting_on -> 'key' = coalesce(to_jsonb(new.concurrency_key), 'null'::jsonb)
           order by p.created_at, p.id
           limit 1)
          union
          (select p.org_id, p.id, p.created_at
           from flow_runs p
           where p.org_id = new.org_id and p.flow_id = new.flow_id and p.waiting_for = 'concurrency'
             and p.status = 'queued' and p.waiting_on ? 'flowLimit'
           order by p.created_at, p.id
           limit 1)) as woken
    where w.org_id = woken.org_id and w.id = woken.id and w.created_at = woken.created_at;
    return null;
end;
$$;

comment on function flow_runs_release_slot() is
    'AFTER UPDATE trigger: a run with concurrency limits that leaves running (finished, cancelled, failed, parked) '
    'frees its slot: the oldest run waiting for its key and the oldest waiting for its flow''s limit are due again.';

create trigger flow_runs_release_slot
    after update of status on flow_runs
    for each row
    when (old.status = 'running' and new.status <> 'running' and new.concurrency is not null)
    execute function flow_runs_release_slot();

create or replace function tolstoy_queue_run_v3(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                                vars jsonb, key text, retrying uuid, acting boolean,
                                                rerunning jsonb, concurrency_key text)
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
        raise exception 'tolstoy_queue_run_v3: a run is a retry or a re-run, not both'
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
            raise exception 'tolstoy_queue_run_v3: no run % to start from', source using errcode = 'no_data_found';
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
                           retry_of, rerun_of, root_run_id, created_at, acts_as_user, concurrency,
                           concurrency_key)
    values (org, new_id, flow, queue_run_version, actor, vars, run_plan, key, retrying, (rerunning ->> 'of')::uuid,
            coalesce(root, new_id), new_created_at, coalesce(acting, false) and actor is not null, limits,
            case when declared ? 'key' then concurrency_key end)
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

comment on function tolstoy_queue_run_v3(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean, jsonb, text) is
    'Queues a run with its plan (steps + the actions they call, with their tools) and its queued log row, or '
    'returns the run an Idempotency-Key (or, for a retry, the retried run) already made. One retry per run. '
    'acting: the one who queues it may act as actor (acts_as_user). rerunning: a re-run of the run named by its '
    '"of" ({of, fromStep, steps?, keep, keepItemsOf, dropItems, children}): the checkpoints of its kept steps '
    'are copied, its plan is the original''s (or built from "steps"), its root is itself (new Idempotency-Keys). '
    'A new run passes tolstoy_admit_run first (quotas: TQ001, TQ002). The run keeps its flow''s concurrency '
    'limits and concurrency_key, its key rendered by the caller (flows.concurrency.key over its variables).';

create or replace function tolstoy_queue_run_v2(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                                vars jsonb, key text, retrying uuid, acting boolean,
                                                rerunning jsonb)
returns table (run flow_runs, created boolean)
language sql as $$
    select q.run, q.created
    from tolstoy_queue_run_v3(org, flow, queue_run_version, actor, vars, key, retrying, acting, rerunning, null) as q
$$;

comment on function tolstoy_queue_run_v2(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean, jsonb) is
    'tolstoy_queue_run_v3 without a concurrency key (the previous release''s API, and tolstoy_queue_run): a run '
    'of a flow whose concurrency has a key gets the key null.';

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

-- migrate:down

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

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

comment on function tolstoy_claim_runs_v2(text, integer, double precision, integer, double precision) is
    'Claims up to max_runs runs for worker: expired leases first (a strike each; failed past max_recoveries, '
    'cancelled when asked), then due queued runs round-robin across organizations weighed by the worker time '
    'they hold and used lately (half-life half_life_seconds), in order within each. One row per run ({run}), each '
    'loaded on its own (a run that fails to load is charged a fault, not the claim), then {meta: {next_due}}.';

create or replace function tolstoy_queue_run_v2(org uuid, flow uuid, queue_run_version integer, actor uuid,
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

drop function tolstoy_queue_run_v3(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean, jsonb, text);
drop trigger flow_runs_release_slot on flow_runs;
drop function flow_runs_release_slot();
drop function tolstoy_concurrency_blocker(flow_runs);
drop function tolstoy_slot_lock(uuid, uuid);

-- Runs parked for a slot are due again (their claim no longer knows of slots).
update flow_runs set run_after = now(), waiting_for = null, waiting_on = null, waiting_since = null
where status = 'queued' and waiting_for = 'concurrency';

-- Replaced by the narrower one in the same transaction (no row has the kind it drops: woken above).
-- squawk-ignore ban-drop-constraint
alter table flow_runs drop constraint flow_runs_waiting_for_kind;
alter table flow_runs add constraint flow_runs_waiting_for_kind
    check (waiting_for in ('signal', 'outcomeUnknown', 'child', 'retry', 'delay', 'rateLimit')) not valid;

-- Dropping concurrency_key drops flow_runs_running_org_id_flow_id_concurrency_key_idx with it.
alter table flow_runs drop column concurrency_key;
alter table flow_runs drop column concurrency;
alter table flows drop column concurrency;
