-- name: list_by_tool
-- Every credential of one tool, newest first (secrets are decrypted and masked by the app).
select id, org_id, tool_id, name, type, secret, is_default, created_at, updated_at
from tool_credentials
where org_id = :org_id and tool_id = :tool_id
order by created_at desc, id desc;

-- name: get_default^
-- The credential requests to a tool use: the default one, else the only one.
select id, org_id, tool_id, name, type, secret, is_default, created_at, updated_at
from tool_credentials
where org_id = :org_id and tool_id = :tool_id
  and (is_default or (select count(*) from tool_credentials c
                      where c.org_id = :org_id and c.tool_id = :tool_id) = 1)
order by is_default desc
limit 1;

-- name: clear_default!
-- Before making another credential the default: at most one per tool.
update tool_credentials
set is_default = false
where org_id = :org_id and tool_id = :tool_id and is_default;

-- name: upsert^
-- Create a credential, or replace the one with the same name on this tool.
insert into tool_credentials (org_id, tool_id, name, type, secret, is_default)
values (:org_id, :tool_id, :name, :type, :secret, :is_default)
on conflict (org_id, tool_id, name) do update
set type = excluded.type, secret = excluded.secret, is_default = excluded.is_default
returning id, org_id, tool_id, name, type, secret, is_default, created_at, updated_at;

-- name: delete!
-- Delete one credential of a tool by name.
delete from tool_credentials
where org_id = :org_id and tool_id = :tool_id and name = :name;

-- name: all_for_rotation
-- Every stored secret of one organization, locked, for `tolstoy secrets rotate`.
select org_id, id, secret
from tool_credentials
where org_id = :org_id
order by id
for update;

-- name: set_secret!
-- Store a re-encrypted secret.
update tool_credentials
set secret = :secret
where org_id = :org_id and id = :id;
