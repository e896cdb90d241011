-- Concurrency limits declared on a step (issue 26): an action or http_request step may say how many of its
-- calls run at once across every run of its flow, per key (its concurrency.key rendered over the step's
-- template context when it is about to run). A slot is a row of flow_step_slots, taken in the statement
-- that records the call as starting (tolstoy_checkpoint_slots wraps tolstoy_checkpoint_call, which is
-- unchanged); without one, the step waits and its run is parked queued with no due time (waiting_for
-- 'concurrency', waiting_step the step). A slot is freed by the statement that records its step's end, or
-- when its run leaves running (flow_runs_release_step_slots), and handed to the oldest run waiting for it,
-- which is woken holding it. Takes and releases of one flow's slots hold the flow's slot lock
-- (tolstoy_slot_lock, concurrency.sql) while they count, so two workers never both take the last slot and
-- a run is never parked unseen by the release that would hand it the slot.
--
-- The current source of these functions (db/functions/README.md says how to change one).

create or replace function tolstoy_release_step_slots(org uuid, run uuid, steps text[]) returns void
language plpgsql as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    freed record;
    waiter flow_runs;
begin
    -- The caller holds the flow's slot lock. steps null: every slot the run holds.
    for freed in
        delete from flow_step_slots s
        where s.org_id = org and s.run_id = run and (steps is null or s.step_id = any(steps))
        returning s.flow_id, s.step_id, s.key
    loop
        -- First queued, first served: the run that has waited longest for this slot gets it, and is due.
        -- One locked by another statement (a cancel, say) is passed over: it is no longer waiting.
        select p.* into waiter
        from flow_runs p
        where p.org_id = org and p.flow_id = freed.flow_id and p.waiting_for = 'concurrency'
          and p.status = 'queued' and p.waiting_step = freed.step_id
          and coalesce(p.waiting_on ->> 'key', '') = freed.key
          and (p.waiting_on ->> 'limit')::integer > (select count(*) from flow_step_slots h
                                                     where h.org_id = org and h.flow_id = freed.flow_id
                                                       and h.step_id = freed.step_id and h.key = freed.key)
        order by p.waiting_since, p.created_at, p.id
        limit 1
        for update skip locked;
        if waiter.id is not null then
            insert into flow_step_slots (org_id, flow_id, step_id, key, run_id, run_created_at, taken_at)
            values (org, freed.flow_id, freed.step_id, freed.key, waiter.id, waiter.created_at, clock_now)
            on conflict do nothing;
            update flow_runs
            set run_after = clock_now, takes_step_slots = true
            where org_id = org and id = waiter.id and created_at = waiter.created_at;
        end if;
    end loop;
end;
$$;

comment on function tolstoy_release_step_slots(uuid, uuid, text[]) is
    'Frees the step slots the run holds (of the steps named, or all when null) and hands each to the run that has '
    'waited longest for it, which is due again holding it. The caller holds the flow''s slot lock (tolstoy_slot_lock).';

create or replace function flow_runs_release_step_slots() returns trigger
language plpgsql as $$
begin
    -- Waits for a take deciding about this flow's slots: a run it parks is seen by the release.
    perform pg_advisory_xact_lock(tolstoy_slot_lock(new.org_id, new.flow_id));
    perform tolstoy_release_step_slots(new.org_id, new.id, null);
    return null;
end;
$$;

comment on function flow_runs_release_step_slots() is
    'AFTER UPDATE trigger: a run that took a step slot and leaves running (finished, cancelled, failed, parked) or is '
    'cancelled while queued frees its step slots; the oldest run waiting for each gets it.';

create or replace function tolstoy_checkpoint_slots(worker text, org uuid, run uuid, token integer, writes jsonb,
                                                    call jsonb)
returns jsonb
language plpgsql set plan_cache_mode = force_generic_plan as $$
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
