-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Why a run waits, at a glance (issue 25): a run parked on a wait step shows
-- "queued" (only its step says "waiting"), and "waiting" on a run means a
-- person must resolve an unknown outcome or a child run must end. The statuses
-- keep their meanings; the run now records why it is parked, in columns set
-- when it parks and cleared when it leaves (the trigger flow_runs_waiting_for,
-- so no function that parks or wakes a run changes), which the API shows as
-- the run's waitingFor, filters its run list by (one index range:
-- flow_runs_org_id_flow_id_waiting_for_idx) and /metrics counts
-- (tolstoy_parked_runs). Runs parked before this migration have none until
-- they park again.

alter table flow_runs add column waiting_for text;
alter table flow_runs add column waiting_on jsonb;
alter table flow_runs add column waiting_step text;
alter table flow_runs add column waiting_since timestamptz;
alter table flow_runs add column waiting_until timestamptz;

comment on column flow_runs.waiting_for is
    'Why the parked run waits: signal, outcomeUnknown, child, retry, delay (or rateLimit); null when it is not '
    'parked. Set and cleared by the trigger flow_runs_waiting_for.';
comment on column flow_runs.waiting_on is
    'What it waits on: the signal name (or the names of a signals wait), the child run id, or the step id.';
comment on column flow_runs.waiting_step is 'The step that waits.';
comment on column flow_runs.waiting_since is 'Since when it waits (the step''s start; the call''s for an unknown outcome).';
comment on column flow_runs.waiting_until is 'Until when at most (a wait''s timeout, a delay''s or back-off''s end); null when unknown.';

-- The kinds a run may wait for. Not valid: no old row can break it (the column is new, all null), so
-- nothing reads the history under the lock to check it; new and changed rows are checked.
alter table flow_runs add constraint flow_runs_waiting_for_kind
    check (waiting_for in ('signal', 'outcomeUnknown', 'child', 'retry', 'delay', 'rateLimit')) not valid;

-- The index's build reads every partition (it writes nothing: the column is new): as long as the quotas'
-- did (20261208000500), no longer.
set local statement_timeout = '300s';

-- "The runs of a flow that wait for X", newest first: the run list's ?waitingFor= filter reads one range
-- of it, and the metrics' count reads it alone. Partial: only parked runs are in it. Declared on the
-- parent only: `tolstoy db up` builds each partition's concurrently and attaches it, so the build never
-- holds writes to flow_runs back (docs/operations.md, "Indexes on the run history").
-- squawk-ignore require-concurrent-index-creation
create index flow_runs_org_id_flow_id_waiting_for_idx
    on only flow_runs (org_id, flow_id, waiting_for, created_at desc, id desc)
    where waiting_for is not null;

-- Why a parked run waits (flow_runs.waiting_for and its details, the run's waitingFor in the API), set
-- when the run parks and cleared when it leaves: a BEFORE UPDATE trigger, so every function that parks or
-- wakes a run (tolstoy_checkpoint through tolstoy_release_run, tolstoy_subflow, tolstoy_send_signal,
-- tolstoy_resolve_step, flow_runs_wake_parent, the claim, a cancel) keeps it right without knowing of it.
-- Parking (running -> queued or waiting) reads the run's steps that wait, which the same transaction has
-- just checkpointed: an unknown outcome first (a person must act), then a signal, a child run (a waiting
-- step with no wake time), a retry's back-off (a waiting step with the error of its last attempt), a delay
-- (time alone), the earliest wake first within a kind. A statement that sets
-- waiting_for itself (a wait for rate budget, say) is left as it set it. Leaving (claimed, finished,
-- woken from waiting, or woken early by a signal: run_after moved earlier) clears it.
create or replace function flow_runs_waiting_for() returns trigger
language plpgsql as $$
declare
    parked record;
begin
    if new.waiting_for is distinct from old.waiting_for then
        return new;
    end if;
    if new.status in ('queued', 'waiting') and old.status = 'running' then
        select w.step_id, w.kind, w.since, w.wake_at, w.signal, w.budget
        into parked
        from (select s.step_id, s.started_at, s.wake_at,
                     case when s.status = 'outcome_unknown' then 'outcomeUnknown'
                          when s.inputs ? 'onTimeout' and (s.inputs ? 'signal' or s.inputs ? 'signals') then 'signal'
                          when s.wake_at is null then 'child'
                          -- A call waiting for its credential's rate budget (rate_budgets.sql): its inputs
                          -- say which budget, its wake_at when the call may go.
                          when jsonb_typeof(s.inputs -> 'rateLimit') = 'object' then 'rateLimit'
                          when s.error is not null and s.error <> 'null' then 'retry'
                          else 'delay' end as kind,
                     case when s.status = 'outcome_unknown' then coalesce(s.call_started_at, s.updated_at)
                          else s.started_at end as since,
                     coalesce(s.inputs -> 'signals', s.inputs -> 'signal') as signal,
                     s.inputs -> 'rateLimit' as budget
              from flow_run_steps s
              where s.org_id = new.org_id and s.run_id = new.id and s.run_created_at = new.created_at
                and s.status in ('waiting', 'outcome_unknown')) as w
        order by array_position(array['outcomeUnknown', 'signal', 'child', 'rateLimit', 'retry', 'delay'], w.kind),
                 w.wake_at nulls last, w.started_at, w.step_id
        limit 1;
        if parked.step_id is null then
            new.waiting_for := null;
            new.waiting_on := null;
            new.waiting_step := null;
            new.waiting_since := null;
            new.waiting_until := null;
            return new;
        end if;
        new.waiting_for := parked.kind;
        new.waiting_step := parked.step_id;
        new.waiting_since := parked.since;
        new.waiting_until := case when parked.kind in ('signal', 'rateLimit', 'retry', 'delay') then parked.wake_at end;
        new.waiting_on := case parked.kind
            when 'signal' then parked.signal
            when 'rateLimit' then jsonb_build_object('toolId', parked.budget -> 'toolId',
                                                     'scope', parked.budget -> 'scope')
            when 'child' then (select to_jsonb(c.id)
                               from flow_runs c
                               where c.org_id = new.org_id and c.parent_run_id = new.id
                                 and c.parent_step_id = parked.step_id
                                 and c.created_at >= tolstoy_run_from(new.id)  -- a child is queued after its parent
                               order by c.created_at desc
                               limit 1)
            else to_jsonb(parked.step_id) end;
        return new;
    end if;
    if new.status not in ('queued', 'waiting') or (old.status = 'waiting' and new.status = 'queued')
       or new.run_after < old.run_after then
        new.waiting_for := null;
        new.waiting_on := null;
        new.waiting_step := null;
        new.waiting_since := null;
        new.waiting_until := null;
    end if;
    return new;
end;
$$;

comment on function flow_runs_waiting_for() is
    'BEFORE UPDATE trigger on flow_runs: when a run parks, records why (waiting_for, waiting_on, waiting_step, '
    'waiting_since, waiting_until) from the steps that wait; clears it when the run is claimed, finishes or is '
    'woken; keeps what the statement set itself.';

create trigger flow_runs_waiting_for before update of status, run_after, waiting_for on flow_runs
    for each row
    when (old.status is distinct from new.status or old.run_after is distinct from new.run_after
          or old.waiting_for is distinct from new.waiting_for)
    execute function flow_runs_waiting_for();

-- Parked runs across organizations by why they wait, for /metrics (tolstoy_flow_runs_parked): one
-- read of the partial index flow_runs_org_id_flow_id_waiting_for_idx per scrape, as tolstoy_queue_stats
-- reads the queue's.
create or replace function tolstoy_parked_runs()
returns table (waiting_for text, runs bigint)
language sql stable security definer set search_path = public, pg_temp as $$
    select r.waiting_for, count(*)
    from flow_runs r
    where r.waiting_for is not null
    group by r.waiting_for
$$;

comment on function tolstoy_parked_runs() is
    'Parked runs across organizations by why they wait (flow_runs.waiting_for), for /metrics.';

alter function tolstoy_parked_runs() owner to tolstoy_engine;
revoke execute on function tolstoy_parked_runs() from public;

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop function tolstoy_parked_runs();
drop trigger flow_runs_waiting_for on flow_runs;
drop function flow_runs_waiting_for();
-- Dropping waiting_for drops flow_runs_org_id_flow_id_waiting_for_idx and flow_runs_waiting_for_kind with it.
alter table flow_runs drop column waiting_until;
alter table flow_runs drop column waiting_since;
alter table flow_runs drop column waiting_step;
alter table flow_runs drop column waiting_on;
alter table flow_runs drop column waiting_for;
