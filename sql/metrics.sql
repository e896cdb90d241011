-- Queries behind /metrics. They read the flow engine's queue, which may not be
-- installed yet: the collector asks queue_installed first and reports nothing
-- without it.

-- name: queue_installed$
-- True once the engine's migration has created flow_runs.
select to_regclass('flow_runs') is not null;

-- name: queue_depth^
-- Queued runs (all organizations), those already due, and how long the oldest
-- due one has waited; and the parked runs by why they wait ({signal: n, …},
-- only the reasons some run has). tolstoy_queue_stats() and tolstoy_parked_runs()
-- read across tenants, which row-level security does not let the application
-- role do itself. One statement: a scrape costs one round trip.
select q.queued, q.due, q.oldest_due_age_seconds,
       (select coalesce(jsonb_object_agg(p.waiting_for, p.runs), '{}') from tolstoy_parked_runs() as p) as parked
from tolstoy_queue_stats() as q;
