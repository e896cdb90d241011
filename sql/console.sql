-- The run console's reads (tolstoy/api/console.py): what its pages show that the API's own
-- queries do not, each for one organization (:org_id), served by the indexes that exist:
-- flow_runs (org_id, flow_id, created_at desc, id desc) and (org_id, id), execution_logs
-- (org_id, execution_id, created_at desc, id desc). Nothing counts all of an organization's runs.

-- name: flows
-- One keyset page of the organization's flows with their last run and the runs of the last
-- 24 hours, counted up to :recent_cap per flow (so a busy flow costs no more than a quiet one).
select f.id, f.name, f.description, f.version, f.created_at, f.updated_at,
       last_run.id as last_run_id, last_run.status as last_status, last_run.created_at as last_run_at,
       recent.runs as runs_24h, recent.completed as completed_24h, recent.finished as finished_24h
from flows f
left join lateral (
    select r.id, r.status, r.created_at
    from flow_runs r
    where r.org_id = :org_id and r.flow_id = f.id
    order by r.created_at desc, r.id desc
    limit 1
) as last_run on true
cross join lateral (
    select count(*) as runs,
           count(*) filter (where w.status = 'completed') as completed,
           count(*) filter (where w.status in ('completed', 'failed', 'cancelled')) as finished
    from (select r.status
          from flow_runs r
          where r.org_id = :org_id and r.flow_id = f.id and r.created_at > now() - interval '24 hours'
          order by r.created_at desc, r.id desc
          limit :recent_cap) as w
) as recent
where f.org_id = :org_id
  and (:after_created_at::timestamptz is null
       or (f.created_at, f.id) < (:after_created_at::timestamptz, :after_id::uuid))
order by f.created_at desc, f.id desc
limit :limit;

-- name: flow_names
-- Every flow's id and name (for the runs page's filter), newest first, at most :limit.
select id, name
from flows
where org_id = :org_id
order by created_at desc, id desc
limit :limit;

-- name: runs
-- One keyset page of the organization's runs, newest first, optionally of one flow, in a time
-- range, of one status: one range of one index, whatever the number of flows (the organization's
-- runs by time, flow_runs_org_id_created_at_id_idx; or one flow's, by the flow's index: only the
-- branch whose filter holds runs). The newest :scan runs after the cursor are read; the status
-- filter applies within that window, so a rare status never makes the page read the whole
-- history: scanned and the window's edge (its oldest row) tell the caller where to go on when the
-- window was full. A row with a null id carries only those two (the window held no match).
with scanned as (
    (select x.id, x.flow_id, x.flow_version, x.status, x.user_id, x.retry_of, x.created_at, x.started_at,
            x.finished_at, x.waiting_for, x.waiting_on, x.waiting_step, x.waiting_until
     from flow_runs x
     where :flow_id::uuid is null
       and x.org_id = :org_id
       and (:since::timestamptz is null or x.created_at >= :since::timestamptz)
       and (:until::timestamptz is null or x.created_at < :until::timestamptz)
       and (:after_created_at::timestamptz is null
            or (x.created_at, x.id) < (:after_created_at::timestamptz, :after_id::uuid))
     order by x.created_at desc, x.id desc
     limit :scan)
    union all
    (select x.id, x.flow_id, x.flow_version, x.status, x.user_id, x.retry_of, x.created_at, x.started_at,
            x.finished_at, x.waiting_for, x.waiting_on, x.waiting_step, x.waiting_until
     from flow_runs x
     where x.org_id = :org_id and x.flow_id = :flow_id::uuid
       and (:since::timestamptz is null or x.created_at >= :since::timestamptz)
       and (:until::timestamptz is null or x.created_at < :until::timestamptz)
       and (:after_created_at::timestamptz is null
            or (x.created_at, x.id) < (:after_created_at::timestamptz, :after_id::uuid))
     order by x.created_at desc, x.id desc
     limit :scan)
), window_stats as (
    select count(*) as scanned from scanned
), window_edge as (
    select s.created_at, s.id from scanned s order by s.created_at, s.id limit 1
)
select m.id, m.flow_id, f.name as flow_name, m.flow_version, m.status, m.user_id, m.retry_of, m.created_at,
       m.started_at, m.finished_at, m.waiting_for, m.waiting_on, m.waiting_step, m.waiting_until,
       window_stats.scanned, window_edge.created_at as edge_created_at, window_edge.id as edge_id
from window_stats
left join window_edge on true
left join lateral (
    select s.id, s.flow_id, s.flow_version, s.status, s.user_id, s.retry_of, s.created_at, s.started_at,
           s.finished_at, s.waiting_for, s.waiting_on, s.waiting_step, s.waiting_until
    from scanned s
    where :status::flow_run_status is null or s.status = :status::flow_run_status
    order by s.created_at desc, s.id desc
    limit :limit
) as m on true
left join flows f on f.org_id = :org_id and f.id = m.flow_id
order by m.created_at desc, m.id desc;

-- name: run^
-- One run of the organization by its id (any flow), with its flow's name, why it is parked, the
-- steps of the plan it runs (ids, types, dependencies: the timeline's graph), the run that retried it
-- and the run it re-runs.
select r.org_id, r.id, r.flow_id, f.name as flow_name, r.flow_version, r.user_id, r.status, r.variables,
       r.error, r.retry_of, r.rerun_of, r.cancel_requested, r.run_after, r.created_at, r.started_at,
       r.finished_at, r.waiting_for, r.waiting_on, r.waiting_step, r.waiting_since, r.waiting_until,
       r.plan -> 'steps' as plan_steps, r.trace_parent,
       (select x.id
        from flow_runs x
        where x.org_id = :org_id and x.retry_of = r.id and x.created_at >= tolstoy_run_from(:id::uuid)
        order by x.created_at
        limit 1) as retried_by
from flow_runs r
join flows f on f.org_id = r.org_id and f.id = r.flow_id
where r.org_id = :org_id and r.id = :id
  and r.created_at between tolstoy_run_from(:id::uuid) and tolstoy_run_until(:id::uuid);

-- name: run_steps
-- A run's step checkpoints in the order they started, at most :limit (a foreach of
-- thousands of items is summarised, not drawn).
select step_id, status, attempt, inputs, outputs, error, wake_at, started_at, finished_at, duration_ms
from flow_run_steps
where org_id = :org_id and run_id = :run_id and run_created_at = :run_created_at
order by started_at, step_id
limit :limit;

-- name: run_logs
-- A run's execution log rows, oldest first, at most :limit; source says whose (engine or client).
select id, step_key, status, inputs, outputs, error, duration_ms, user_id, source, created_at
from execution_logs
where org_id = :org_id and execution_id = :execution_id
order by created_at, id
limit :limit;
