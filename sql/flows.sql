-- name: list
-- One keyset page of an organization's flows, newest first.
select id, org_id, name, description, steps, version, created_at, updated_at
from flows
where org_id = :org_id
  and (:after_created_at::timestamptz is null
       or (created_at, id) < (:after_created_at::timestamptz, :after_id::uuid))
order by created_at desc, id desc
limit :limit;

-- name: get^
-- One flow of the organization.
select id, org_id, name, description, steps, version, created_at, updated_at
from flows
where org_id = :org_id and id = :id;

-- name: get_for_update^
-- One flow of the organization, locked until the end of the transaction.
select id, org_id, name, description, steps, version, created_at, updated_at
from flows
where org_id = :org_id and id = :id
for update;

-- name: exists$
-- True when the organization has this flow; used to check a flowId in a body.
select exists (
    select 1 from flows where org_id = :org_id and id = :id
);

-- name: insert^
-- Create a flow at version 1; flows_record_version stores that version.
insert into flows (org_id, name, description, steps)
values (:org_id, :name, :description, :steps)
returning id, org_id, name, description, steps, version, created_at, updated_at;

-- name: update^
-- Replace the writable columns; the triggers bump version and store it when steps change.
update flows
set name = :name, description = :description, steps = :steps
where org_id = :org_id and id = :id
returning id, org_id, name, description, steps, version, created_at, updated_at;

-- name: delete!
-- Delete one flow with its versions; execution_logs_flow_id_fkey refuses while logs exist.
delete from flows
where org_id = :org_id and id = :id;

-- name: list_versions
-- One keyset page of a flow's versions, newest first (versions only grow).
select version, steps, created_at
from flow_versions
where org_id = :org_id and flow_id = :flow_id
  and (:before_version::integer is null or version < :before_version::integer)
order by version desc
limit :limit;

-- name: get_version^
-- One version of a flow.
select version, steps, created_at
from flow_versions
where org_id = :org_id and flow_id = :flow_id and version = :version;
