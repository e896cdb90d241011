-- Signals sent to runs (table flow_run_signals): by POST …/signals/{signal} or an
-- approval link, taken by the run's wait step (tolstoy_take_signal, which locks the
-- run first). The API locks the run (runs.get_for_update) before it reads or writes
-- here, so a signal and a run parking at its wait step never cross.

-- ---- the API ------------------------------------------------------------------

-- name: state^
-- For a locked run: how many of its wait steps for :signal have not finished, how many signals
-- of that name are pending, the signal an Idempotency-Key already sent (if any), and whether an
-- approval link was used already.
select
    (select count(*)
     from (select st ->> 'id' as step_id, st -> 'config' ->> 'signal' as signal
           from jsonb_array_elements(coalesce(r.plan -> 'steps', '[]')) as st
           where st ->> 'type' = 'wait'
           union all
           select 'onFailure.' || (st ->> 'id'), st -> 'config' ->> 'signal'
           from jsonb_array_elements(coalesce(r.plan -> 'onFailure', '[]')) as st
           where st ->> 'type' = 'wait') as waits
     where waits.signal = :signal
       and not exists (select 1 from flow_run_steps s
                       where s.org_id = r.org_id and s.run_id = r.id and s.run_created_at = r.created_at
                         and s.step_id = waits.step_id and s.status in ('completed', 'failed', 'skipped'))
    ) as waits,
    (select count(*) from flow_run_signals g
     where g.org_id = r.org_id and g.run_id = r.id and g.signal = :signal and g.step_id is null) as pending,
    (select jsonb_build_object('id', g.id, 'signal', g.signal, 'created_at', g.created_at)
     from flow_run_signals g
     where g.org_id = r.org_id and g.run_id = r.id and g.idempotency_key = :idempotency_key::text) as earlier,
    exists (select 1 from flow_run_signals g
            where g.org_id = r.org_id and g.link_id = :link_id::uuid) as link_used
from flow_runs r
where r.org_id = :org_id and r.id = :run_id and r.created_at = :run_created_at;

-- name: send^
-- Store a signal for a locked run, and wake the run when a wait step of it is parked for this
-- signal (run_after = now; the queue's trigger sends NOTIFY). A run parked elsewhere (a delay, a
-- retry back-off) is left asleep: its wait step takes the signal when it gets there.
with stored as (
    insert into flow_run_signals (org_id, run_id, signal, payload, user_id, approver, idempotency_key, link_id)
    values (:org_id, :run_id, :signal, :payload, :user_id, :approver, :idempotency_key, :link_id)
    returning id, signal, created_at
), woke as (
    update flow_runs r
    set run_after = tolstoy_now()
    where r.org_id = :org_id and r.id = :run_id and r.created_at = :run_created_at and r.status = 'queued'
      and exists (select 1 from flow_run_steps s
                  where s.org_id = :org_id and s.run_id = :run_id and s.run_created_at = :run_created_at
                    and s.status = 'waiting' and s.inputs ->> 'signal' = :signal and s.inputs ? 'onTimeout')
    returning r.id
)
select stored.id, stored.signal, stored.created_at, exists (select 1 from woke) as woke
from stored;

-- ---- the worker ---------------------------------------------------------------------

-- name: take^
-- A wait step's signal (locks the run first, then takes the oldest pending one of the name, or
-- the one this step took already); no row when none is pending.
select id, payload, approver, user_id, created_at
from tolstoy_take_signal(:org_id, :run_id, :step_id, :signal);
