-- name: list
-- One keyset page of an organization's flows, newest first.
select id, org_id, name, key, description, steps, on_failure, concurrency, version, created_at, updated_at
from flows
where org_id = :org_id
  and (:after_created_at::timestamptz is null
       or (created_at, id) < (:after_created_at::timestamptz, :after_id::uuid))
order by created_at desc, id desc
limit :limit;

-- name: get^
-- One flow of the organization.
select id, org_id, name, key, description, steps, on_failure, concurrency, version, created_at, updated_at
from flows
where org_id = :org_id and id = :id;

-- name: get_for_update^
-- One flow of the organization, locked until the end of the transaction.
select id, org_id, name, key, description, steps, on_failure, concurrency, version, created_at, updated_at
from flows
where org_id = :org_id and id = :id
for update;

-- name: exists$
-- True when the organization has this flow; used to check a flowId in a body.
select exists (
    select 1 from flows where org_id = :org_id and id = :id
);

-- name: insert^
-- Create a flow at version 1; flows_record_version stores that version; flows_org_id_key_key refuses a
-- duplicate key.
insert into flows (org_id, name, key, description, steps, on_failure, concurrency)
values (:org_id, :name, :key, :description, :steps, :on_failure, :concurrency)
returning id, org_id, name, key, description, steps, on_failure, concurrency, version, created_at, updated_at;

-- name: update^
-- Replace the writable columns; the triggers bump version and store it when steps or on_failure change
-- (not when only name, key or description do).
update flows
set name = :name, key = :key, description = :description, steps = :steps, on_failure = :on_failure,
    concurrency = :concurrency
where org_id = :org_id and id = :id
returning id, org_id, name, key, description, steps, on_failure, concurrency, version, created_at, updated_at;

-- name: delete!
-- Delete one flow with its versions; execution_logs_flow_id_fkey refuses while logs exist.
delete from flows
where org_id = :org_id and id = :id;

-- name: list_versions
-- One keyset page of a flow's versions, newest first (versions only grow).
select version, steps, on_failure, created_at
from flow_versions
where org_id = :org_id and flow_id = :flow_id
  and (:before_version::integer is null or version < :before_version::integer)
order by version desc
limit :limit;

-- name: get_version^
-- One version of a flow.
select version, steps, on_failure, created_at
from flow_versions
where org_id = :org_id and flow_id = :flow_id and version = :version;

-- name: subflow_target^
-- A flow a subflow step names, with the steps of the version it would run (:version, or the
-- current one); steps is null when the flow has no such version.
select f.id, f.version, v.steps
from flows f
left join flow_versions v
       on v.org_id = f.org_id and v.flow_id = f.id and v.version = coalesce(:version::integer, f.version)
where f.org_id = :org_id and f.id = :id::uuid;

-- name: subflow_target_by_key^
-- As subflow_target, for a subflow step that names its flow by key (flowKey).
select f.id, f.version, v.steps
from flows f
left join flow_versions v
       on v.org_id = f.org_id and v.flow_id = f.id and v.version = coalesce(:version::integer, f.version)
where f.org_id = :org_id and f.key = :key;
