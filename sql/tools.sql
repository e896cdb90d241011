-- name: list
-- One keyset page of an organization's tools, newest first.
select id, org_id, name, base_url, auth_type, created_at, updated_at
from tools
where org_id = :org_id
  and (:after_created_at::timestamptz is null
       or (created_at, id) < (:after_created_at::timestamptz, :after_id::uuid))
order by created_at desc, id desc
limit :limit;

-- name: get^
-- One tool of the organization.
select id, org_id, name, base_url, auth_type, created_at, updated_at
from tools
where org_id = :org_id and id = :id;

-- name: get_for_update^
-- One tool of the organization, locked until the end of the transaction.
select id, org_id, name, base_url, auth_type, created_at, updated_at
from tools
where org_id = :org_id and id = :id
for update;

-- name: exists$
-- True when the organization has this tool; used to check a toolId in a body.
select exists (
    select 1 from tools where org_id = :org_id and id = :id
);

-- name: insert^
-- Create a tool; tools_org_id_name_key refuses a duplicate name.
insert into tools (org_id, name, base_url, auth_type)
values (:org_id, :name, :base_url, :auth_type)
returning id, org_id, name, base_url, auth_type, created_at, updated_at;

-- name: update^
-- Replace the writable columns of one tool.
update tools
set name = :name, base_url = :base_url, auth_type = :auth_type
where org_id = :org_id and id = :id
returning id, org_id, name, base_url, auth_type, created_at, updated_at;

-- name: delete!
-- Delete one tool; actions_tool_id_fkey refuses while it has actions.
delete from tools
where org_id = :org_id and id = :id;
