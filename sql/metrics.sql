-- Queries behind /metrics. They read the flow engine's queue, which may not be
-- installed yet: the collector asks queue_installed first and reports nothing
-- without it.

-- name: queue_installed$
-- True once the engine's migration has created flow_runs.
select to_regclass('flow_runs') is not null;

-- name: queue_depth^
-- Queued runs (all organizations), those already due, and how long the oldest
-- due one has waited. Served by the partial index on run_after where status = 'queued'.
select count(*) as queued,
       count(*) filter (where run_after <= now()) as due,
       coalesce(extract(epoch from now() - min(run_after) filter (where run_after <= now())), 0)::float8
           as oldest_due_age_seconds
from flow_runs
where status = 'queued';
