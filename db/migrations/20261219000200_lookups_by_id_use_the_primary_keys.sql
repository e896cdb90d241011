-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- flow_runs and execution_logs each had an index on (org_id, id) beside their primary key on
-- (org_id, id, created_at) (the month is in every unique key of a table partitioned by it). A lookup
-- by (org_id, id) reads the primary key's first two columns just as well, so the second index only
-- cost a write: one more index entry per log row (nine per 3-step run) and per run insert or
-- update that is not HOT (three per run), and its disk. tests/db/test_catalog.py now finds any
-- index whose columns lead another index of its table.
--
-- An index of a partitioned table cannot be dropped concurrently; dropping takes the table's
-- exclusive lock for as long as removing the catalog entries and files takes, not a scan.
-- squawk-ignore require-concurrent-index-deletion
drop index execution_logs_org_id_id_idx;
-- squawk-ignore require-concurrent-index-deletion
drop index flow_runs_org_id_id_idx;

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Built as they were first built, on the parents: each partition's index is built in turn, and writes
-- to the run history wait meanwhile. To roll back without holding writes, declare them `on only`
-- instead and run `tolstoy db indexes` (docs/operations.md, "Indexes on the run history").
-- squawk-ignore require-concurrent-index-creation
create index execution_logs_org_id_id_idx on execution_logs (org_id, id);
-- squawk-ignore require-concurrent-index-creation
create index flow_runs_org_id_id_idx on flow_runs (org_id, id);
