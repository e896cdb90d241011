-- name: list
-- One keyset page of an organization's actions, newest first, optionally of one tool.
select id, org_id, tool_id, name, key, method, endpoint, headers, input_schema,
       execute_if, version, created_at, updated_at
from actions
where org_id = :org_id
  and (:tool_id::uuid is null or tool_id = :tool_id::uuid)
  and (:after_created_at::timestamptz is null
       or (created_at, id) < (:after_created_at::timestamptz, :after_id::uuid))
order by created_at desc, id desc
limit :limit;

-- name: get^
-- One action of the organization.
select id, org_id, tool_id, name, key, method, endpoint, headers, input_schema,
       execute_if, version, created_at, updated_at
from actions
where org_id = :org_id and id = :id;

-- name: get_by_key^
-- One action of the organization by its key (flow steps name actions by key).
select id, org_id, tool_id, name, key, method, endpoint, headers, input_schema,
       execute_if, version, created_at, updated_at
from actions
where org_id = :org_id and key = :key;

-- name: get_for_update^
-- One action of the organization, locked until the end of the transaction.
select id, org_id, tool_id, name, key, method, endpoint, headers, input_schema,
       execute_if, version, created_at, updated_at
from actions
where org_id = :org_id and id = :id
for update;

-- name: exists_by_id$
-- True when the organization has this action; checks actionId in flow steps.
select exists (
    select 1 from actions where org_id = :org_id and id = :id
);

-- name: exists_by_key$
-- True when the organization has an action with this key; checks actionKey in flow steps.
select exists (
    select 1 from actions where org_id = :org_id and key = :key
);

-- name: insert^
-- Create an action at version 1; actions_org_id_key_key refuses a duplicate key.
insert into actions (org_id, tool_id, name, key, method, endpoint, headers,
                     input_schema, execute_if)
values (:org_id, :tool_id, :name, :key, :method, :endpoint, :headers,
        :input_schema, :execute_if)
returning id, org_id, tool_id, name, key, method, endpoint, headers, input_schema,
          execute_if, version, created_at, updated_at;

-- name: update^
-- Replace the writable columns; actions_bump_version raises version on a real change.
update actions
set tool_id = :tool_id, name = :name, key = :key, method = :method,
    endpoint = :endpoint, headers = :headers, input_schema = :input_schema,
    execute_if = :execute_if
where org_id = :org_id and id = :id
returning id, org_id, tool_id, name, key, method, endpoint, headers, input_schema,
          execute_if, version, created_at, updated_at;

-- name: delete!
-- Delete one action.
delete from actions
where org_id = :org_id and id = :id;
