-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- flows.key: an optional short name of a flow, unique per organization when set,
-- as tools.key (20261201000014). A subflow step may name its child flow by it
-- ({"flowKey": "billing"} instead of {"flowId": ...}): the API checks the key at
-- save time, and the worker's subflow statement (sql/runs.sql, name: subflow)
-- resolves it to the flow's id by (org_id, key) in the same statement that calls
-- tolstoy_subflow, which is unchanged. Changing a key does not change a flow's
-- steps, so flows_bump_version leaves the version alone.

-- A small table (flows an organization defines), so the brief lock of a plain
-- index build is accepted; the column is nullable, so adding it rewrites nothing.
alter table flows add column key text;

comment on column flows.key is
    'Optional short name of the flow, unique per organization (a subflow step may name its child by it: flowKey).';

-- The column was just added, null in every row: the check's scan of this small table finds nothing.
-- squawk-ignore constraint-missing-not-valid
alter table flows add constraint flows_key_format check (key ~ '^[a-z0-9][a-z0-9_.-]{0,63}$');

-- Serves the uniqueness and the lookup by (org_id, key) of a subflow step naming its child by key.
-- squawk-ignore require-concurrent-index-creation
create unique index flows_org_id_key_key on flows (org_id, key) where key is not null;

-- Privileges: unchanged (the API already writes flows; the workers already read them).

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Its check constraint and unique index go with it. Before migrating down, change
-- subflow steps that name their child by flowKey to flowId (they stay in
-- flows.steps and flow_versions): the previous application knows no flow keys.
alter table flows drop column key;
