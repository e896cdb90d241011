-- Flow runs and their step checkpoints. Every query names the run's org_id,
-- except claim, renew_leases and next_wake: a worker serves all tenants through
-- the security-definer functions of the row-level security migration, and from
-- the claimed row on it works inside that row's organization.

-- name: insert^
-- Queue a run; with an Idempotency-Key a second insert for the same flow does nothing.
insert into flow_runs (org_id, flow_id, flow_version, user_id, variables, idempotency_key, retry_of)
values (:org_id, :flow_id, :flow_version, :user_id, :variables, :idempotency_key, :retry_of)
on conflict (org_id, flow_id, idempotency_key) where idempotency_key is not null do nothing
returning org_id, id, flow_id, flow_version, user_id, status, variables, outputs, error,
          retry_of, created_at, started_at, finished_at;

-- name: get_by_idempotency_key^
-- The run an Idempotency-Key already created for this flow.
select org_id, id, flow_id, flow_version, user_id, status, variables, outputs, error,
       retry_of, created_at, started_at, finished_at
from flow_runs
where org_id = :org_id and flow_id = :flow_id and idempotency_key = :idempotency_key;

-- name: get^
-- One run of a flow.
select org_id, id, flow_id, flow_version, user_id, status, variables, outputs, error,
       retry_of, created_at, started_at, finished_at
from flow_runs
where org_id = :org_id and flow_id = :flow_id and id = :id;

-- name: list
-- One keyset page of a flow's runs, newest first.
select org_id, id, flow_id, flow_version, user_id, status, variables, outputs, error,
       retry_of, created_at, started_at, finished_at
from flow_runs
where org_id = :org_id and flow_id = :flow_id
  and (:after_created_at::timestamptz is null
       or (created_at, id) < (:after_created_at::timestamptz, :after_id::uuid))
order by created_at desc, id desc
limit :limit;

-- name: steps
-- A run's step checkpoints in the order they started.
select step_id, status, attempt, inputs, outputs, error, wake_at, started_at, finished_at, duration_ms
from flow_run_steps
where org_id = :org_id and run_id = :run_id
order by started_at, step_id;

-- name: claim
-- Take up to :limit due runs of any organization: queued ones whose run_after has come,
-- and running ones whose worker stopped renewing its lease (tolstoy_claim_runs, a
-- security-definer function: the worker acts for no organization yet).
select org_id, id, flow_id, flow_version, user_id, variables, claims
from tolstoy_claim_runs(:worker, :limit, :lease_seconds);

-- name: renew_leases$
-- Heartbeat: extend the lease of every run this worker still holds.
select tolstoy_renew_leases(:worker, :lease_seconds);

-- name: next_wake$
-- When the earliest queued run becomes due (null when none is queued).
select tolstoy_next_wake();

-- name: holds_lease$
-- Whether this worker still owns the run, and whether a cancel was requested.
select case when cancel_requested then 'cancel' else 'ok' end
from flow_runs
where org_id = :org_id and id = :id and lease_owner = :worker and status = 'running';

-- name: release!
-- Give the run back to the queue until :run_after (delays, retry backoff, shutdown).
update flow_runs
set status = 'queued', run_after = :run_after, lease_owner = null, lease_expires_at = null
where org_id = :org_id and id = :id and lease_owner = :worker and status = 'running';

-- name: finish^
-- Record a run's end; only the lease holder may.
update flow_runs
set status = :status, outputs = :outputs, error = :error, finished_at = now(),
    lease_owner = null, lease_expires_at = null
where org_id = :org_id and id = :id and lease_owner = :worker and status = 'running'
returning id;

-- name: request_cancel^
-- A queued (or sleeping) run is cancelled at once; a running one at its next step boundary.
update flow_runs
set status = case when status = 'queued' then 'cancelled'::flow_run_status else status end,
    finished_at = case when status = 'queued' then now() else finished_at end,
    cancel_requested = true
where org_id = :org_id and flow_id = :flow_id and id = :id and status in ('queued', 'running')
returning id, status;

-- name: save_step^
-- Write a checkpoint, but only while :worker holds the run's lease.
insert into flow_run_steps (org_id, run_id, step_id, status, attempt, inputs, outputs, error,
                            wake_at, finished_at, duration_ms)
select :org_id, :run_id, :step_id, :status, :attempt, :inputs, :outputs, :error,
       :wake_at, :finished_at, :duration_ms
where exists (
    select 1 from flow_runs
    where org_id = :org_id and id = :run_id and lease_owner = :worker and status = 'running'
)
on conflict (org_id, run_id, step_id) do update
set status = excluded.status, attempt = excluded.attempt, inputs = excluded.inputs,
    outputs = excluded.outputs, error = excluded.error, wake_at = excluded.wake_at,
    finished_at = excluded.finished_at, duration_ms = excluded.duration_ms,
    started_at = case when flow_run_steps.status in ('completed', 'skipped', 'failed')
                      then now() else flow_run_steps.started_at end
returning step_id;

-- name: copy_finished_steps!
-- A retry starts with the original run's completed steps and those executeIf skipped.
insert into flow_run_steps (org_id, run_id, step_id, status, attempt, inputs, outputs, error,
                            started_at, finished_at, duration_ms)
select org_id, :run_id, step_id, status, attempt, inputs, outputs, error,
       started_at, finished_at, duration_ms
from flow_run_steps
where org_id = :org_id and run_id = :from_run_id
  -- Skipped by executeIf (no error) is final; skipped because a dependency failed is not.
  and (status = 'completed' or (status = 'skipped' and error is null));

-- name: version_steps$
-- The steps of the flow version a run pinned.
select steps from flow_versions
where org_id = :org_id and flow_id = :flow_id and version = :version;

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
