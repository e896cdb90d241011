-- Concurrency limits by key (issue 26): a flow may declare how many of its runs run at once, in all
-- (flowLimit) and per key (keyLimit, the key rendered from the run's variables when it is queued). The
-- claim (tolstoy_claim_runs_v2) takes a limited run only when it has a slot, and parks it otherwise,
-- queued with no due time (run_after = infinity, waiting_for = 'concurrency'), so no claim reads it
-- again until a slot frees: flow_runs_release_slot wakes the oldest waiter when a run leaves running.
-- Both hold one advisory lock per (organization, flow) while they count and park or wake, so a run is
-- never parked unseen by the release that would wake it.
--
-- The current source of these functions (db/functions/README.md says how to change one).

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

-- Stable, as format() is: a function no less volatile than its body is inlined where it is called.
create or replace function tolstoy_slot_lock(org uuid, flow uuid) returns bigint
language sql stable parallel safe as $$
    select hashtextextended(format('run-slots:%s:%s', org, flow), 0)
$$;

comment on function tolstoy_slot_lock(uuid, uuid) is
    'The advisory lock a claim that parks or starts a limited run of the flow, and a release that wakes one, hold '
    'until they commit.';

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
