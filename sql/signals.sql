-- Signals sent to runs (table flow_run_signals): by POST …/signals/{signal} or an
-- approval link, taken by the run's wait step (tolstoy_take_first_signal, which locks
-- the run first). Sending one is tolstoy_send_signal (db/functions/signals.sql), which
-- locks the run first too, so a signal and a run parking at its wait step never cross.

-- ---- the API ------------------------------------------------------------------

-- name: state^
-- Where a run stands for :signal, read before an approval link is made or shown (sending one decides
-- again, holding the run: tolstoy_send_signal): how many of its wait steps for it have not finished,
-- how many signals of that name are pending, and whether the approval link :link_id was used.
select
    tolstoy_unfinished_waits(r.org_id, r.id, r.created_at, r.plan, :signal::text) as waits,
    (select count(*) from flow_run_signals g
     where g.org_id = r.org_id and g.run_id = r.id and g.signal = :signal and g.step_id is null) as pending,
    exists (select 1 from flow_run_signals g
            where g.org_id = r.org_id and g.link_id = :link_id::uuid) as link_used
from flow_runs r
where r.org_id = :org_id and r.id = :run_id and r.created_at = :run_created_at;

-- name: send$
-- Send :signal to a run of the flow, logged as :user_id's (tolstoy_send_signal, which locks the run,
-- checks it can take the signal, stores it and wakes the run parked for it): null when no such run,
-- {refused: key|link|finished|waiting}, else {created, woke, signal}. :trace_parent: the sender's W3C
-- traceparent (kept when well formed: the wait step taking it links to it), else null.
select tolstoy_send_signal_v2(:org_id::uuid, :flow_id::uuid, :id::uuid, :signal::text, :payload::jsonb,
                              :user_id::uuid, :approver::text, :idempotency_key::text, :link_id::uuid,
                              :source::text, :trace_parent::text);

-- ---- the worker ---------------------------------------------------------------------

-- name: take_first^
-- A wait step's signal, the first of :signals to have come (locks the run first; the oldest pending one
-- of those names, or the one this step took already; the oldest pending one of each other name is
-- superseded); no row when none is pending. trace_parent: its sender's trace context, or null.
select t.id, t.signal, t.payload, t.approver, t.user_id, t.created_at, g.trace_parent
from tolstoy_take_first_signal(:org_id, :run_id, :step_id, :signals::text[]) as t
left join flow_run_signals g on g.org_id = :org_id and g.id = t.id;
