-- name: list
-- One keyset page of an organization's actions, newest first, optionally of one tool.
select id, org_id, tool_id, name, key, method, endpoint, headers, input_schema,
       execute_if, timeout_ms, version, created_at, updated_at
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
       execute_if, timeout_ms, version, created_at, updated_at
from actions
where org_id = :org_id and id = :id;

-- name: get_by_key^
-- One action of the organization by its key (flow steps name actions by key).
select id, org_id, tool_id, name, key, method, endpoint, headers, input_schema,
       execute_if, timeout_ms, version, created_at, updated_at
from actions
where org_id = :org_id and key = :key;

-- name: get_for_update^
-- One action of the organization, locked until the end of the transaction.
select id, org_id, tool_id, name, key, method, endpoint, headers, input_schema,
       execute_if, timeout_ms, version, created_at, updated_at
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
                     input_schema, execute_if, timeout_ms)
values (:org_id, :tool_id, :name, :key, :method, :endpoint, :headers,
        :input_schema, :execute_if, :timeout_ms)
returning id, org_id, tool_id, name, key, method, endpoint, headers, input_schema,
          execute_if, timeout_ms, version, created_at, updated_at;

-- name: update^
-- Replace the writable columns; actions_bump_version raises version on a real change.
update actions
set tool_id = :tool_id, name = :name, key = :key, method = :method,
    endpoint = :endpoint, headers = :headers, input_schema = :input_schema,
    execute_if = :execute_if, timeout_ms = :timeout_ms
where org_id = :org_id and id = :id
returning id, org_id, tool_id, name, key, method, endpoint, headers, input_schema,
          execute_if, timeout_ms, version, created_at, updated_at;

-- name: delete!
-- Delete one action.
delete from actions
where org_id = :org_id and id = :id;

-- name: ensure_slots!
-- The organization's slots for synchronous executes exist (a no-op once they do).
insert into sync_execute_slots (org_id, slot)
select :org_id, s
from generate_series(0, :slots::integer - 1) as s
on conflict (org_id, slot) do nothing;

-- name: take_slot$
-- Take a free slot until :hold_seconds from now (null when all are busy): SKIP LOCKED, so two
-- requests never take the same one.
update sync_execute_slots
set holder = :holder, expires_at = tolstoy_now() + make_interval(secs => :hold_seconds)
where org_id = :org_id
  and slot = (select slot
              from sync_execute_slots
              where org_id = :org_id and slot < :slots and expires_at <= tolstoy_now()
              order by slot
              limit 1
              for update skip locked)
returning slot;

-- name: release_slot!
-- Give a slot back when the call ends.
update sync_execute_slots
set holder = null, expires_at = '-infinity'
where org_id = :org_id and slot = :slot and holder = :holder;
