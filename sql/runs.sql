-- Flow runs (the API's executions, table flow_runs) and their step checkpoints
-- (flow_run_steps). The API's queries name the run's org_id; the worker's go
-- through the functions of the durable_engine migration: claim, renew_leases
-- and maintain_history cross tenants (security definer), checkpoint acts for
-- the run's organization only.

-- ---- the API ------------------------------------------------------------------

-- name: queue^
-- Queue a run of a flow version with its plan and first log row, or find the run this
-- Idempotency-Key (or this retried run) already made; created says which.
select (q.run).org_id, (q.run).id, (q.run).flow_id, (q.run).flow_version, (q.run).user_id, (q.run).status,
       (q.run).variables, (q.run).error, (q.run).retry_of, (q.run).created_at, (q.run).started_at,
       (q.run).finished_at, q.created
from tolstoy_queue_run(:org_id::uuid, :flow_id::uuid, :flow_version::integer, :user_id::uuid,
                       :variables::jsonb, :idempotency_key::text, :retry_of::uuid) as q;

-- name: get^
-- One run of a flow, with what its completed steps returned (as shown: secrets masked; null
-- while nothing has completed and the run has not finished).
select r.org_id, r.id, r.created_at, r.flow_id, r.flow_version, r.user_id, r.status, r.variables, r.error,
       r.retry_of, r.cancel_requested, r.started_at, r.finished_at,
       coalesce((select jsonb_object_agg(s.step_id, s.outputs)
                 from flow_run_steps s
                 where s.org_id = r.org_id and s.run_id = r.id and s.run_created_at = r.created_at
                   and s.status = 'completed'
                   and strpos(s.step_id, '[') = 0),  -- a foreach step's items are in its output
                case when r.status in ('completed', 'failed', 'cancelled') then '{}'::jsonb end) as outputs
from flow_runs r
where r.org_id = :org_id and r.flow_id = :flow_id and r.id = :id;

-- name: get_for_update^
-- One run of a flow, locked until the end of the transaction.
select r.org_id, r.id, r.created_at, r.flow_id, r.flow_version, r.user_id, r.status, r.variables, r.error,
       r.retry_of, r.cancel_requested, r.started_at, r.finished_at
from flow_runs r
where r.org_id = :org_id and r.flow_id = :flow_id and r.id = :id
for update;

-- name: list
-- One keyset page of a flow's runs, newest first.
select r.org_id, r.id, r.flow_id, r.flow_version, r.user_id, r.status, r.variables, r.error,
       r.retry_of, r.created_at, r.started_at, r.finished_at,
       coalesce((select jsonb_object_agg(s.step_id, s.outputs)
                 from flow_run_steps s
                 where s.org_id = r.org_id and s.run_id = r.id and s.run_created_at = r.created_at
                   and s.status = 'completed'),
                case when r.status in ('completed', 'failed', 'cancelled') then '{}'::jsonb end) as outputs
from flow_runs r
where r.org_id = :org_id and r.flow_id = :flow_id
  and (:after_created_at::timestamptz is null
       or (r.created_at, r.id) < (:after_created_at::timestamptz, :after_id::uuid))
order by r.created_at desc, r.id desc
limit :limit;

-- name: steps
-- A run's step checkpoints in the order they started (outputs as shown: secrets masked).
select step_id, status, attempt, inputs, outputs, error, wake_at, started_at, finished_at, duration_ms
from flow_run_steps
where org_id = :org_id and run_id = :run_id and run_created_at = :run_created_at
order by started_at, step_id;

-- name: request_cancel^
-- A queued (or sleeping), or waiting run is cancelled at once; a running one within one heartbeat.
update flow_runs
set status = case when status in ('queued', 'waiting') then 'cancelled'::flow_run_status else status end,
    finished_at = case when status in ('queued', 'waiting') then now() else finished_at end,
    error = case when status in ('queued', 'waiting') then '{"message": "Cancelled"}'::jsonb else error end,
    cancel_requested = true
where org_id = :org_id and flow_id = :flow_id and id = :id and status in ('queued', 'running', 'waiting')
returning id, status;

-- name: unknown_step^
-- The step of a waiting run whose outcome nobody knows, locked for a person's resolution.
select s.step_id, s.attempt, s.inputs
from flow_run_steps s
where s.org_id = :org_id and s.run_id = :run_id and s.run_created_at = :run_created_at
  and s.step_id = :step_id and s.status = 'outcome_unknown'
for update;

-- name: resolve_step!
-- Record what a person says of an unknown outcome: the step completed (with outputs), failed,
-- or is to be sent again (back to 'running' with no call recorded, same attempt and key).
update flow_run_steps
set status = :status, outputs = :outputs, sealed = :sealed, error = :error, call_started_at = null,
    finished_at = case when :status::text in ('completed', 'failed') then now() end
where org_id = :org_id and run_id = :run_id and run_created_at = :run_created_at and step_id = :step_id;

-- name: requeue!
-- A waiting run goes back to the queue (after a person resolved what it waited for).
update flow_runs
set status = 'queued', run_after = now()
where org_id = :org_id and id = :id and created_at = :created_at and status = 'waiting';

-- name: unfinished_count$
-- Runs of a flow that have not finished (a purge leaves them alone and says so).
select count(*)
from flow_runs
where org_id = :org_id and flow_id = :flow_id and status in ('queued', 'running', 'waiting');

-- name: purge!
-- Delete a flow's finished runs with their checkpoints and the engine's log rows of them
-- (an explicit purge, so the flow itself can be deleted).
with gone as (
    delete from flow_runs
    where org_id = :org_id and flow_id = :flow_id and status in ('completed', 'failed', 'cancelled')
    returning org_id, id, created_at
), steps as (
    delete from flow_run_steps s
    using gone
    where s.org_id = gone.org_id and s.run_id = gone.id and s.run_created_at = gone.created_at
)
delete from execution_logs l
using gone
where l.org_id = gone.org_id and l.flow_id = :flow_id and l.execution_id = gone.id::text;

-- name: metrics^
-- Status breakdown and duration percentiles (completed runs) of one flow.
select
    (select coalesce(jsonb_object_agg(status, n), '{}'::jsonb)
     from (select status, count(*) as n
           from flow_runs
           where org_id = :org_id and flow_id = :flow_id
           group by status) as counts) as breakdown,
    durations.p50_ms, durations.p95_ms
from (
    select percentile_cont(0.5) within group (order by ms) as p50_ms,
           percentile_cont(0.95) within group (order by ms) as p95_ms
    from (select extract(epoch from finished_at - started_at) * 1000 as ms
          from flow_runs
          where org_id = :org_id and flow_id = :flow_id and status = 'completed') as done
) as durations;

-- ---- the worker ---------------------------------------------------------------------

-- name: claim$
-- Claim up to :limit runs of any organization (expired leases first, past the recovery limit
-- they fail); {runs: [run with plan and checkpoints], next_due, now, next_schedule: when the next
-- schedule trigger falls due}, so an idle worker needs no other statement to know when to wake.
select tolstoy_claim_runs(:worker, :limit, :lease_seconds, :max_recoveries)
       || jsonb_build_object('now', now(), 'next_schedule', tolstoy_next_schedule());

-- name: renew_leases
-- Heartbeat: renew the leases of the runs this worker is executing; returns those still held.
select run_id, cancel
from tolstoy_renew_leases(:worker, :orgs::uuid[], :runs::uuid[], :tokens::integer[], :lease_seconds);

-- name: checkpoint$
-- One engine step's writes and the run's move (tolstoy_checkpoint); TL001 when the lease is lost.
select tolstoy_checkpoint(:worker, :org_id, :run_id, :token, :writes);

-- name: maintain_history$
-- Create history partitions ahead and drop those past retention (null: keep everything).
select tolstoy_maintain_history(coalesce(:today::date, current_date), :retention_days::integer,
                                :months_ahead::integer);

-- ---- tolstoy secrets rotate --reencrypt ---------------------------------------------

-- name: sealed_to_reencrypt
-- The next batch (in primary key order after the given step) of an organization's sealed outputs
-- not encrypted with data key :version, locked.
select org_id, run_id, step_id, run_created_at, sealed
from flow_run_steps
where org_id = :org_id and sealed is not null
  and (run_id, step_id, run_created_at) > (:after_run_id::uuid, :after_step_id::text, :after_run_created_at::timestamptz)
  and tolstoy_key_version(sealed) is distinct from :version::integer
order by run_id, step_id, run_created_at
limit :limit
for update;

-- name: resealed!
-- Store a batch of re-encrypted sealed outputs.
update flow_run_steps s
set sealed = n.sealed
from unnest(:run_ids::uuid[], :step_ids::text[], :run_created_ats::timestamptz[], :values::bytea[])
     as n(run_id, step_id, run_created_at, sealed)
where s.org_id = :org_id and s.run_id = n.run_id and s.step_id = n.step_id and s.run_created_at = n.run_created_at;

-- name: legacy_sealed_count$
-- How many sealed outputs of an organization are still under TOLSTOY_ENCRYPTION_KEY directly.
select count(*)
from flow_run_steps
where org_id = :org_id and sealed is not null and tolstoy_key_version(sealed) is null;
