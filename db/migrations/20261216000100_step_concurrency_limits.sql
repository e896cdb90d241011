-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Concurrency limits declared on a step (issue 26): an action or http_request step's
-- concurrency {key?, limit} holds across every run of its flow and every worker. A slot is a row of
-- flow_step_slots, taken in the statement that records the call as starting (tolstoy_checkpoint_slots, a
-- wrapper of tolstoy_checkpoint_call, which is unchanged) and freed by the one that records the step's end,
-- or when the run leaves running (flow_runs_release_step_slots). A step without a slot waits, its run parked
-- queued with no due time until a release hands it the slot. db/functions/step_slots.sql says how.

create table flow_step_slots (
    org_id uuid not null,
    flow_id uuid not null,
    step_id text not null check (char_length(step_id) between 1 and 200),
    key text not null check (char_length(key) <= 200),
    run_id uuid not null,
    run_created_at timestamptz not null,
    taken_at timestamptz not null,
    primary key (org_id, flow_id, step_id, key, run_id),
    foreign key (org_id, flow_id) references flows (org_id, id) on delete cascade
);

comment on table flow_step_slots is
    'The slots of the steps that declare a concurrency limit: one row per run whose step holds one, per organization, '
    'flow, step id and rendered key. Taken and freed by the engine (tolstoy_checkpoint_slots, '
    'tolstoy_release_step_slots); never shared across organizations or flows.';
comment on column flow_step_slots.step_id is
    'The step''s id in its run (onFailure.<id> for a failure handler''s step).';
comment on column flow_step_slots.key is
    'The step''s concurrency key rendered when it was about to run; the empty string when the step declares no key '
    '(a rendered key is never empty).';
comment on column flow_step_slots.run_id is 'The run whose step holds the slot.';
comment on column flow_step_slots.taken_at is 'When the run took the slot, or a release handed it over.';

-- "The slots this run holds": read by every release.
create index flow_step_slots_org_id_run_id_idx on flow_step_slots (org_id, run_id);

alter table flow_step_slots enable row level security;
alter table flow_step_slots force row level security;
create policy tenant_isolation on flow_step_slots
    using (org_id = tolstoy_current_org()) with check (org_id = tolstoy_current_org());
-- A run the claim fails or cancels after its lease ran out frees its slots there, as tolstoy_engine.
create policy engine_access on flow_step_slots to tolstoy_engine using (true) with check (true);
grant select, insert, delete on flow_step_slots to tolstoy_engine;

-- Not null with a constant default: stored in the catalog, no row is rewritten.
alter table flow_runs add column takes_step_slots boolean not null default false;
comment on column flow_runs.takes_step_slots is
    'Whether the run has taken (or been handed) a step slot (flow_step_slots): only such a run frees slots when it '
    'leaves running.';

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
language plpgsql as $$
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
    answer := tolstoy_checkpoint_call(worker, org, run, token, writes, call - 'slot' - 'release');
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

create trigger flow_runs_release_step_slots
    after update of status on flow_runs
    for each row
    when (new.takes_step_slots and new.status <> 'running' and old.status is distinct from new.status)
    execute function flow_runs_release_step_slots();

-- A flow's release no longer wakes a run that waits for a step's slot of the same key.
create or replace function flow_runs_release_slot() returns trigger
language plpgsql as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
begin
    -- Waits for a claim deciding about this flow's runs: a run it parks is seen below.
    perform pg_advisory_xact_lock(tolstoy_slot_lock(new.org_id, new.flow_id));
    -- A new statement, so a new snapshot. The oldest run waiting for this run's key (not a step's slot of the
    -- same key: waiting_step, step_slots.sql), and the oldest waiting for the flow's limit: each is claimed or parked again by the next claim (so a slot is never given to
    -- a run another limit still holds back, and a raised limit fills as runs end).
    update flow_runs w
    set run_after = clock_now
    from ((select p.org_id, p.id, p.created_at
           from flow_runs p
           where p.org_id = new.org_id and p.flow_id = new.flow_id and p.waiting_for = 'concurrency'
             and p.status = 'queued' and p.waiting_on ? 'key' and p.waiting_step is null
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

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

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

drop trigger flow_runs_release_step_slots on flow_runs;
drop function tolstoy_checkpoint_slots(text, uuid, uuid, integer, jsonb, jsonb);
drop function flow_runs_release_step_slots();
drop function tolstoy_release_step_slots(uuid, uuid, text[]);

-- Runs parked for a step's slot are due again (their step runs without a limit).
update flow_runs set run_after = now(), waiting_for = null, waiting_on = null, waiting_step = null,
    waiting_since = null, waiting_until = null
where status = 'queued' and waiting_for = 'concurrency' and waiting_step is not null;

alter table flow_runs drop column takes_step_slots;
drop table flow_step_slots;
