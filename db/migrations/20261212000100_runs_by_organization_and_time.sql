-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- The console's runs page lists an organization's runs newest first, whatever their flow. It read
-- a page per flow (flow_runs_org_id_flow_id_created_at_id_idx) and merged them, so a page cost
-- grew with the organization's number of flows; with this index it is one range of one index.
--
-- Built without holding writes back. An index on a partitioned table cannot be created
-- concurrently, so this migration declares it on the parent only (ON ONLY: instant, and invalid
-- until every partition has its own), and `tolstoy db up` then builds each partition's index with
-- CREATE INDEX CONCURRENTLY and attaches it (tolstoy/db/migrate.py, build_partitioned_indexes);
-- the last attach makes the parent's valid. Partitions made meanwhile get theirs when they are
-- made. A DBA applying migrations with dbmate alone runs `tolstoy db indexes` afterwards (or the
-- statements docs/operations.md lists, per partition). Until then the queries still run: each
-- partition's index is used as soon as it is built.
-- squawk-ignore require-concurrent-index-creation
create index flow_runs_org_id_created_at_id_idx on only flow_runs (org_id, created_at desc, id desc);

comment on index flow_runs_org_id_created_at_id_idx is
    'An organization''s runs newest first (the console''s runs page). Built per partition, concurrently, by '
    'tolstoy db up / tolstoy db indexes.';

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Drops the partitions' indexes with it (they are attached to it).
-- squawk-ignore require-concurrent-index-deletion
drop index flow_runs_org_id_created_at_id_idx;
