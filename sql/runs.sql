-- Flow runs (the API's executions, table flow_runs) and their step checkpoints
-- (flow_run_steps). The API's queries name the run's org_id; the worker's go
-- through the functions of the durable_engine migration: claim, renew_leases
-- and maintain_history cross tenants (security definer), checkpoint acts for
-- the run's organization only.

-- ---- the API ------------------------------------------------------------------

-- name: queue^
-- Queue a run of a flow version with its plan and first log row, or find the run this
-- Idempotency-Key (or this retried run) already made; created says which. acts_as_user: the
-- one who queues it may act as :user_id (use their connections; tenancy.may_act_as). :rerun: a
-- re-run's spec (tolstoy_queue_run_v4's rerunning), else null. :concurrency_key: the flow's concurrency
-- key rendered over the run's variables (lifecycle.concurrency_key), else null. :trace_parent: the
-- caller's W3C traceparent (kept when well formed: the run's spans join that trace), else null.
select (q.run).org_id, (q.run).id, (q.run).flow_id, (q.run).flow_version, (q.run).user_id, (q.run).status,
       (q.run).variables, (q.run).error, (q.run).retry_of, (q.run).rerun_of, (q.run).created_at,
       (q.run).started_at, (q.run).finished_at, q.created
from tolstoy_queue_run_v4(:org_id::uuid, :flow_id::uuid, :flow_version::integer, :user_id::uuid,
                          :variables::jsonb, :idempotency_key::text, :retry_of::uuid,
                          :acts_as_user::boolean, :rerun::jsonb, :concurrency_key::text,
                          :trace_parent::text) as q;

-- name: get^
-- One run of a flow, with what its completed steps returned (as shown: secrets masked; null
-- while nothing has completed and the run has not finished) and why it is parked (waiting_*).
select r.org_id, r.id, r.created_at, r.flow_id, r.flow_version, r.user_id, r.status, r.variables, r.error,
       r.retry_of, r.rerun_of, r.cancel_requested, r.started_at, r.finished_at, r.parent_run_id,
       r.parent_step_id, r.waiting_for as waiting_kind, r.waiting_on, r.waiting_step, r.waiting_since,
       r.waiting_until,
       coalesce((select jsonb_object_agg(s.step_id, s.outputs)
                 from flow_run_steps s
                 where s.org_id = r.org_id and s.run_id = r.id and s.run_created_at = r.created_at
                   and s.status = 'completed'
                   and strpos(s.step_id, '[') = 0),  -- a foreach step's items are in its output
                case when r.status in ('completed', 'failed', 'cancelled') then '{}'::jsonb end) as outputs
from flow_runs r
where r.org_id = :org_id and r.flow_id = :flow_id and r.id = :id
  and r.created_at between tolstoy_run_from(:id::uuid) and tolstoy_run_until(:id::uuid);

-- name: get_for_update^
-- One run of a flow, locked until the end of the transaction.
select r.org_id, r.id, r.created_at, r.flow_id, r.flow_version, r.user_id, r.status, r.variables, r.error,
       r.retry_of, r.cancel_requested, r.started_at, r.finished_at, r.parent_run_id, r.parent_step_id
from flow_runs r
where r.org_id = :org_id and r.flow_id = :flow_id and r.id = :id
  and r.created_at between tolstoy_run_from(:id::uuid) and tolstoy_run_until(:id::uuid)
for update;

-- name: status_of^
-- Where one run of a flow stands (no outputs gathered): for checks before acting on it.
select r.id, r.created_at, r.flow_id, r.status
from flow_runs r
where r.org_id = :org_id and r.flow_id = :flow_id and r.id = :id
  and r.created_at between tolstoy_run_from(:id::uuid) and tolstoy_run_until(:id::uuid);

-- name: list
-- One keyset page of a flow's runs, newest first (only the children of :parent_id, the re-runs of
-- :rerun_of, when given; only the runs parked for :waiting_for when given: one range of
-- flow_runs_org_id_flow_id_waiting_for_idx).
select r.org_id, r.id, r.flow_id, r.flow_version, r.user_id, r.status, r.variables, r.error,
       r.retry_of, r.rerun_of, r.created_at, r.started_at, r.finished_at, r.parent_run_id, r.parent_step_id,
       r.waiting_for as waiting_kind, r.waiting_on, r.waiting_step, r.waiting_since, r.waiting_until,
       coalesce((select jsonb_object_agg(s.step_id, s.outputs)
                 from flow_run_steps s
                 where s.org_id = r.org_id and s.run_id = r.id and s.run_created_at = r.created_at
                   and s.status = 'completed'),
                case when r.status in ('completed', 'failed', 'cancelled') then '{}'::jsonb end) as outputs
from flow_runs r
where r.org_id = :org_id and r.flow_id = :flow_id
  and (:parent_id::uuid is null
       or (r.parent_run_id = :parent_id::uuid and r.created_at >= tolstoy_run_from(:parent_id::uuid)))
  and (:waiting_for::text is null or r.waiting_for = :waiting_for::text)
  and (:rerun_of::uuid is null
       or (r.rerun_of = :rerun_of::uuid and r.created_at >= tolstoy_run_from(:rerun_of::uuid)))
  and (:after_created_at::timestamptz is null
       or (r.created_at, r.id) < (:after_created_at::timestamptz, :after_id::uuid))
order by r.created_at desc, r.id desc
limit :limit;

-- name: steps
-- A run's step checkpoints in the order they started (outputs as shown: secrets masked), a
-- subflow step's with the child run it queued.
select s.step_id, s.status, s.attempt, s.inputs, s.outputs, s.error, s.wake_at, s.started_at, s.finished_at,
       s.duration_ms, c.id as child_execution_id
from flow_run_steps s
left join (select k.id, k.parent_step_id
           from flow_runs k
           where k.org_id = :org_id and k.parent_run_id = :run_id
             and k.created_at >= :run_created_at::timestamptz - interval '1 second') as c
  on c.parent_step_id = s.step_id
where s.org_id = :org_id and s.run_id = :run_id and s.run_created_at = :run_created_at
order by s.started_at, s.step_id;

-- name: reruns
-- The newest :limit re-runs of a run (POST …/rerun), newest first: the run view lists them.
select r.id
from flow_runs r
where r.org_id = :org_id and r.rerun_of = :id and r.created_at >= tolstoy_run_from(:id::uuid)
order by r.created_at desc, r.id desc
limit :limit;

-- name: rerun_source^
-- A run of the organization (of any flow: a subflow step's child too) as a re-run starts from it:
-- its plan, variables and status, its checkpoints ({stepId: {status, outputs as shown, error}})
-- and, per subflow step, the newest child run it queued.
select r.id, r.created_at, r.flow_id, r.flow_version, r.status, r.variables, r.plan,
       coalesce((select jsonb_object_agg(s.step_id, jsonb_build_object('status', s.status, 'outputs', s.outputs,
                                                                       'error', s.error))
                 from flow_run_steps s
                 where s.org_id = r.org_id and s.run_id = r.id and s.run_created_at = r.created_at), '{}')
           as checkpoints,
       coalesce((select jsonb_object_agg(c.parent_step_id, c.id)
                 from (select distinct on (k.parent_step_id) k.parent_step_id, k.id
                       from flow_runs k
                       where k.org_id = r.org_id and k.parent_run_id = r.id
                         and k.created_at >= tolstoy_run_from(r.id)  -- a child is queued after its parent
                       order by k.parent_step_id, k.created_at desc) as c), '{}') as children
from flow_runs r
where r.org_id = :org_id and r.id = :id
  and r.created_at between tolstoy_run_from(:id::uuid) and tolstoy_run_until(:id::uuid);

-- name: plan$
-- The plan a run of these steps would freeze now (tolstoy_plan): a re-run's preview reads it.
select tolstoy_plan(:org_id::uuid, :steps::jsonb);

-- name: cancel$
-- Cancel a run of the flow and the runs below it, logged as :user_id's (tolstoy_cancel_run):
-- null when no such run, {changed: false, status} when it had finished, else {changed, status,
-- descendants, run}.
select tolstoy_cancel_run(:org_id::uuid, :flow_id::uuid, :id::uuid, :user_id::uuid);

-- name: resolve$
-- Record what a person (:user_id) says of a step whose outcome is unknown and queue its run again
-- (tolstoy_resolve_step): null when no such run, {refused: status|step|key}, else {run}.
select tolstoy_resolve_step(:org_id::uuid, :flow_id::uuid, :id::uuid, :step_id::text, :user_id::uuid,
                            :outcome::text, :outputs::jsonb, :sealed::bytea, :error::jsonb, :key_missing::boolean);

-- name: move$
-- Move a parked run of the flow to version :version, logged as :user_id's (tolstoy_move_run): null when
-- no such run, {refused: version|status|child|parked|drop_steps|drop, …}, else {moved, diff, run}
-- (:dry_run: moved false, nothing written).
select tolstoy_move_run(:org_id::uuid, :flow_id::uuid, :id::uuid, :version::integer, :drop_steps::text[],
                        :dry_run::boolean, :user_id::uuid);

-- name: unfinished_count$
-- Runs of a flow that have not finished (a purge leaves them alone and says so).
select count(*)
from flow_runs
where org_id = :org_id and flow_id = :flow_id and status in ('queued', 'running', 'waiting');

-- name: purge!
-- Delete a flow's finished runs with their checkpoints, signals and the engine's log rows of them
-- (an explicit purge, so the flow itself can be deleted).
with gone as (
    delete from flow_runs
    where org_id = :org_id and flow_id = :flow_id and status in ('completed', 'failed', 'cancelled')
    returning org_id, id, created_at
), steps as (
    delete from flow_run_steps s
    using gone
    where s.org_id = gone.org_id and s.run_id = gone.id and s.run_created_at = gone.created_at
), signals as (
    delete from flow_run_signals g
    using gone
    where g.org_id = gone.org_id and g.run_id = gone.id
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

-- name: claim
-- Claim up to :limit runs of any organization, fairly across them (tolstoy_claim_runs_v2: expired
-- leases first, past the recovery limit they fail; then due runs round-robin across organizations
-- weighed by their recent worker time, half-life :half_life_seconds), one row per run ({run: run
-- with plan and checkpoints}, each loaded on its own), then one row {meta: {next_due, now,
-- next_schedule: when the next schedule trigger falls due, next_delivery: when a webhook delivery
-- does}}, so an idle worker needs no other statement to know when to wake.
select c.run,
       case when c.meta is not null
            then c.meta || jsonb_build_object('now', tolstoy_now(), 'next_schedule', tolstoy_next_schedule(),
                                              'next_delivery', tolstoy_next_delivery()) end as meta
from tolstoy_claim_runs_v2(:worker, :limit, :lease_seconds, :max_recoveries, :half_life_seconds) as c;

-- name: renew_leases
-- Heartbeat: renew the leases of the runs this worker is executing; returns those still held.
select run_id, cancel
from tolstoy_renew_leases(:worker, :orgs::uuid[], :runs::uuid[], :tokens::integer[], :lease_seconds);

-- name: subflow$
-- A subflow step's writes, its child run found or queued, and the parent parked while a waited-for
-- child runs (tolstoy_subflow); TL001 when the lease is lost. A step naming its flow by key
-- (:flow_key) has it resolved to the flow's id here, by flows_org_id_key_key, and the answer says which
-- flow that was ("flowId"; null when the key names no flow now: tolstoy_subflow then reports the flow
-- missing, unless the step's child run exists already).
select tolstoy_subflow(:worker, :org_id, :run_id, :token, :writes,
                       :spec::jsonb || jsonb_build_object('flow_id', t.flow_id))
       || jsonb_build_object('flowId', t.flow_id)
from (select coalesce(:flow_id::uuid,
                      (select f.id from flows f where f.org_id = :org_id and f.key = :flow_key::text)) as flow_id) t;

-- name: checkpoint$
-- One engine step's writes and the run's move (tolstoy_checkpoint); TL001 when the lease is lost.
select tolstoy_checkpoint(:worker, :org_id, :run_id, :token, :writes);

-- name: checkpoint_call$
-- tolstoy_checkpoint, with what providers' answers taught rate budgets (:call lessons) and, for a call
-- that starts (:call tool_id), its take from its credential's budget: the step waits for it when it has
-- no room (tolstoy_checkpoint_call); TL001 when the lease is lost.
select tolstoy_checkpoint_call(:worker, :org_id, :run_id, :token, :writes, :call);

-- name: checkpoint_slots$
-- tolstoy_checkpoint_call with step slots (steps that declare concurrency): frees the slots of the steps whose
-- end it records (:call release) and takes the slot of the step whose call starts (:call slot); without one the
-- step waits and the run is parked until a release hands it the slot (tolstoy_checkpoint_slots).
select tolstoy_checkpoint_slots(:worker, :org_id, :run_id, :token, :writes, :call);

-- name: maintain_history$
-- Create history partitions ahead and drop those past retention (null: keep everything).
select tolstoy_maintain_history(coalesce(:today::date, tolstoy_now()::date), :retention_days::integer,
                                :months_ahead::integer);

-- name: prune$
-- One batch of housekeeping, at most :batch rows of each kind: finished webhook deliveries and the
-- trigger inbox past their retention ({deliveries, inbox}), signals of runs dropped past retention
-- ({signals}), steps parked on an unknown outcome past their timeout failed and their runs queued
-- ({unknown_outcomes}), audit events past their retention ({audit}). Null when another worker's
-- batch is under way (one pruner at a time).
select case when pg_try_advisory_xact_lock(hashtextextended('tolstoy_prune', 0)) then
           tolstoy_prune_deliveries(:delivery_retention_days::integer, :batch::integer)
           || jsonb_build_object(
                  'signals', tolstoy_prune_signals(:retention_days::integer, :batch::integer),
                  'unknown_outcomes', tolstoy_expire_unknown_outcomes(:unknown_outcome_days::integer,
                                                                      :batch::integer),
                  'audit', tolstoy_prune_audit(:audit_retention_days::integer, :batch::integer))
       end;

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
