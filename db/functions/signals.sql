-- Signals for wait steps (approvals, events): taken under the run's lock, pruned once consumed.
--
-- The current source of these functions (db/functions/README.md says how to change one).

-- The take of one signal name by the previous release's workers (this release's take tolstoy_take_first_signal,
-- below); kept while they may run during a rolling upgrade.
create or replace function tolstoy_take_signal(org uuid, run uuid, step text, signal_name text)
returns table (id uuid, payload jsonb, approver text, user_id uuid, created_at timestamptz)
language plpgsql as $$
begin
    perform 1 from flow_runs r
    where r.org_id = org and r.id = run and r.created_at between tolstoy_run_from(run) and tolstoy_run_until(run)
    for update;
    -- A new statement, so a new snapshot: it sees a signal committed while this waited for the lock.
    return query
    update flow_run_signals s
    set step_id = step, consumed_at = coalesce(s.consumed_at, now())
    where s.org_id = org and s.id = (
        select p.id from flow_run_signals p
        where p.org_id = org and p.run_id = run and p.signal = signal_name
          and (p.step_id is null or p.step_id = step)
        order by p.step_id is null, p.created_at
        limit 1
        for update)
    returning s.id, s.payload, s.approver, s.user_id, s.created_at;
end;
$$;

comment on function tolstoy_take_signal(uuid, uuid, text, text) is
    'A wait step''s signal: locks the run, then takes the oldest pending signal of the name (or the one the '
    'step took before); no row when none is pending.';

-- A wait step's signal, the first of signal_names to have come (one name for a "signal" wait, several for
-- a "signals" one): locks the run first (as tolstoy_send_signal does), then answers the signal this step
-- took before, or takes the oldest pending one of those names (arrival order across names). Taking it
-- supersedes the oldest pending signal of each of the step's other names: the send rule admitted it for
-- this step's place (one per unfinished wait step of a name), so it is marked taken by this step with
-- superseded_by, never delivered, and logged as cancelled; later signals of a name stay for the run's
-- later wait steps of it. No row when none is pending.
create or replace function tolstoy_take_first_signal(org uuid, run uuid, step text, signal_names text[])
returns table (id uuid, signal text, payload jsonb, approver text, user_id uuid, created_at timestamptz)
language plpgsql set plan_cache_mode = force_generic_plan as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    found_run flow_runs;
    taken flow_run_signals;
begin
    select * into found_run
    from flow_runs r
    where r.org_id = org and r.id = run and r.created_at between tolstoy_run_from(run) and tolstoy_run_until(run)
    for update;
    -- New statements, so new snapshots: they see a signal committed while this waited for the lock.
    select * into taken
    from flow_run_signals g
    where g.org_id = org and g.run_id = run and g.step_id = step and g.superseded_by is null
    order by g.created_at
    limit 1;
    if taken.id is null then
        update flow_run_signals s
        set step_id = step, consumed_at = clock_now
        where s.org_id = org and s.id = (
            select p.id from flow_run_signals p
            where p.org_id = org and p.run_id = run and p.signal = any(signal_names) and p.step_id is null
            order by p.created_at, p.id
            limit 1
            for update)
        returning s.* into taken;
        if taken.id is null then
            return;
        end if;
        with superseded as (
            update flow_run_signals s
            set step_id = step, consumed_at = clock_now, superseded_by = taken.id
            where s.org_id = org and s.id in (
                select distinct on (p.signal) p.id
                from flow_run_signals p
                where p.org_id = org and p.run_id = run and p.signal = any(signal_names)
                  and p.signal <> taken.signal and p.step_id is null
                order by p.signal, p.created_at, p.id)
            returning s.id, s.signal
        )
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, source)
        select org, found_run.flow_id, found_run.user_id, run::text, step, 'cancelled',
               jsonb_build_object('signal', x.signal, 'signalId', x.id, 'supersededBy', taken.id,
                                  'supersededBySignal', taken.signal),
               'engine'
        from superseded x;
    end if;
    return query select taken.id, taken.signal, taken.payload, taken.approver, taken.user_id, taken.created_at;
end;
$$;

comment on function tolstoy_take_first_signal(uuid, uuid, text, text[]) is
    'A wait step''s signal: locks the run, then answers the one the step took before or takes the oldest pending '
    'signal of signal_names, superseding (superseded_by, a cancelled log row) the oldest pending one of each other '
    'name; no row when none is pending.';

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

comment on function tolstoy_prune_signals(integer, integer) is
    'Deletes up to batch signals older than retention_days whose run is gone (its partition was dropped).';

-- How many of a run's wait steps for signal_name (alone, or among the names of a "signals" wait) have
-- not finished (a step of onFailure counts too):
-- how many signals of that name the run can still take. tolstoy_send_signal decides with it, and
-- the API reads it before it makes or shows an approval link (sql/signals.sql state).
create or replace function tolstoy_unfinished_waits(org uuid, run uuid, run_created_at timestamptz, run_plan jsonb,
                                                    signal_name text)
returns bigint
language plpgsql stable set plan_cache_mode = force_generic_plan as $$
begin
    return (
        select count(*)
        from (select st ->> 'id' as step_id, st -> 'config' as config
              from jsonb_array_elements(coalesce(run_plan -> 'steps', '[]')) as st
              where st ->> 'type' = 'wait'
              union all
              select 'onFailure.' || (st ->> 'id'), st -> 'config'
              from jsonb_array_elements(coalesce(run_plan -> 'onFailure', '[]')) as st
              where st ->> 'type' = 'wait') as waits
        -- A wait for one signal names it in "signal", a wait for the first of several in "signals".
        where (waits.config ->> 'signal' = signal_name or coalesce(waits.config -> 'signals', '[]') ? signal_name)
          and not exists (select 1 from flow_run_steps s
                          where s.org_id = org and s.run_id = run and s.run_created_at = tolstoy_unfinished_waits.run_created_at
                            and s.step_id = waits.step_id and s.status in ('completed', 'failed', 'skipped')));
end;
$$;

comment on function tolstoy_unfinished_waits(uuid, uuid, timestamptz, jsonb, text) is
    'How many wait steps for signal_name (its signal, or one of its signals) of the run (run_plan: its plan) have '
    'not finished: how many signals of that name it can still take.';

-- A signal sent to a run (POST …/signals/{signal}, or an approval link): the run's row is locked
-- first, as tolstoy_take_signal locks it, so a signal and a run parking at its wait step never
-- cross. It is stored only when the run can still take it (an unfinished wait step for it, and
-- fewer pending signals of the name than such steps), wakes the run when a wait step of it is
-- parked for this signal, alone or among its "signals" (run_after = now; the queue's trigger sends NOTIFY; a run parked
-- elsewhere, a delay or a retry's back-off, is left asleep: its wait step takes the signal when it
-- gets there), and is logged as the actor's.
create or replace function tolstoy_send_signal_v2(org uuid, flow uuid, target uuid, signal_name text, signal_payload jsonb,
                                                  actor uuid, signed_by text, key text, link uuid, sent_through text,
                                                  caller_trace text)
returns jsonb
language plpgsql set plan_cache_mode = force_generic_plan as $$
declare
    found_run flow_runs;
    earlier_id uuid;
    earlier_signal text;
    earlier_at timestamptz;
    unfinished_waits bigint;
    pending_signals bigint;
    sent_id uuid;
    sent_at timestamptz;
    woke boolean;
begin
    select * into found_run
    from flow_runs r
    where r.org_id = org and r.flow_id = flow and r.id = target
      and r.created_at between tolstoy_run_from(target) and tolstoy_run_until(target)
    for update;
    if found_run.id is null then
        return null;
    end if;
    -- A repeated Idempotency-Key answers with the signal it sent, whatever the run did since.
    if key is not null then
        select g.id, g.signal, g.created_at into earlier_id, earlier_signal, earlier_at
        from flow_run_signals g
        where g.org_id = org and g.run_id = target and g.idempotency_key = key;
        if earlier_id is not null then
            if earlier_signal <> signal_name then
                return jsonb_build_object('refused', 'key');
            end if;
            return jsonb_build_object('created', false,
                                      'signal', jsonb_build_object('id', earlier_id, 'signal', earlier_signal,
                                                                   'created_at', earlier_at, 'run_id', target));
        end if;
    end if;
    -- Each approval link delivers at most one signal.
    if link is not null and exists (select 1 from flow_run_signals g where g.org_id = org and g.link_id = link) then
        return jsonb_build_object('refused', 'link');
    end if;
    if found_run.status in ('completed', 'failed', 'cancelled') then
        return jsonb_build_object('refused', 'finished', 'status', found_run.status);
    end if;
    unfinished_waits := tolstoy_unfinished_waits(org, target, found_run.created_at, found_run.plan, signal_name);
    select count(*) into pending_signals
    from flow_run_signals g
    where g.org_id = org and g.run_id = target and g.signal = signal_name and g.step_id is null;
    if unfinished_waits <= pending_signals then
        return jsonb_build_object('refused', 'waiting', 'pending', pending_signals);
    end if;
    -- The sender's W3C trace context, when well formed (else none, as the W3C says of a bad one): the wait step
    -- that takes the signal links its span to it (tolstoy/tracing.py).
    insert into flow_run_signals (org_id, run_id, signal, payload, user_id, approver, idempotency_key, link_id,
                                  trace_parent)
    values (org, target, signal_name, signal_payload, actor, signed_by, key, link,
            tolstoy_trace_parent(caller_trace))
    returning id, created_at into sent_id, sent_at;
    update flow_runs r
    set run_after = tolstoy_now()
    where r.org_id = org and r.id = target and r.created_at = found_run.created_at and r.status = 'queued'
      and exists (select 1 from flow_run_steps s
                  where s.org_id = org and s.run_id = target and s.run_created_at = found_run.created_at
                    and s.status = 'waiting' and s.inputs ? 'onTimeout'
                    and (s.inputs ->> 'signal' = signal_name or coalesce(s.inputs -> 'signals', '[]') ? signal_name));
    woke := found;
    insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, source)
    values (org, flow, actor, target::text, '$flow', 'pending',
            jsonb_build_object('signal', signal_name, 'signalId', sent_id, 'source', sent_through,
                               'approver', signed_by, 'wokeRun', woke),
            'engine');
    return jsonb_build_object('created', true, 'woke', woke,
                              'signal', jsonb_build_object('id', sent_id, 'signal', signal_name,
                                                           'created_at', sent_at, 'run_id', target));
end
$$;

comment on function tolstoy_send_signal_v2(uuid, uuid, uuid, text, jsonb, uuid, text, text, uuid, text, text) is
    'Sends signal_name with signal_payload to a run of a flow, holding the run''s row: stores it, wakes the run when '
    'a wait step of it is parked for it, and logs it as actor''s (sent_through: api or link). Null when no such run; '
    '{refused: key|link|finished|waiting} writes nothing (the Idempotency-Key sent another signal; the approval '
    'link was used; the run finished, with its status; no unfinished wait step is left for it, with the pending '
    'count); else {created, woke, signal: {id, signal, created_at, run_id}} (created false: the signal key sent before). '
    'caller_trace: the sender''s W3C traceparent, kept in flow_run_signals.trace_parent when well formed.';

create or replace function tolstoy_send_signal(org uuid, flow uuid, target uuid, signal_name text, signal_payload jsonb,
                                               actor uuid, signed_by text, key text, link uuid, sent_through text)
returns jsonb
language sql as $$
    select tolstoy_send_signal_v2(org, flow, target, signal_name, signal_payload, actor, signed_by, key, link,
                                  sent_through, null)
$$;

comment on function tolstoy_send_signal(uuid, uuid, uuid, text, jsonb, uuid, text, text, uuid, text) is
    'tolstoy_send_signal_v2 without the sender''s trace context (the previous release''s API).';
