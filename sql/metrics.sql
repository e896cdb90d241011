-- Queries behind /metrics. They read the flow engine's queue, which may not be
-- installed yet: the collector asks queue_installed first and reports nothing
-- without it.

-- name: queue_installed$
-- True once the engine's migration has created flow_runs.
select to_regclass('flow_runs') is not null;

-- name: queue_depth^
-- Queued runs (all organizations), those already due, and how long the oldest
-- due one has waited; tolstoy_queue_stats() reads across tenants, which
-- row-level security does not let the application role do itself.
select queued, due, oldest_due_age_seconds
from tolstoy_queue_stats();
