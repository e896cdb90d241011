-- A single tool is always shown with its actions, newest first: the queries
-- that return one tool (get, get_for_update, insert, update) carry them as a
-- jsonb array, so showing a tool costs one statement.

-- name: list
-- One keyset page of an organization's tools, newest first (without their actions).
select id, org_id, name, key, base_url, auth_type, honors_idempotency_key, rate_limit, created_at, updated_at
from tools
where org_id = :org_id
  and (:after_created_at::timestamptz is null
       or (created_at, id) < (:after_created_at::timestamptz, :after_id::uuid))
order by created_at desc, id desc
limit :limit;

-- name: get^
-- One tool of the organization, with its actions.
select t.id, t.org_id, t.name, t.key, t.base_url, t.auth_type, t.honors_idempotency_key, t.rate_limit, t.created_at, t.updated_at,
       coalesce((select jsonb_agg(a order by a.created_at desc, a.id desc)
                 from (select id, org_id, tool_id, name, key, method, endpoint, headers, input_schema,
                              execute_if, timeout_ms, version, created_at, updated_at
                       from actions
                       where org_id = t.org_id and tool_id = t.id) as a), '[]') as actions
from tools t
where t.org_id = :org_id and t.id = :id;

-- name: get_for_update^
-- One tool of the organization with its actions, the tool locked until the end of the transaction.
select t.id, t.org_id, t.name, t.key, t.base_url, t.auth_type, t.honors_idempotency_key, t.rate_limit, t.created_at, t.updated_at,
       coalesce((select jsonb_agg(a order by a.created_at desc, a.id desc)
                 from (select id, org_id, tool_id, name, key, method, endpoint, headers, input_schema,
                              execute_if, timeout_ms, version, created_at, updated_at
                       from actions
                       where org_id = t.org_id and tool_id = t.id) as a), '[]') as actions
from tools t
where t.org_id = :org_id and t.id = :id
for update of t;

-- name: get_by_key^
-- One tool of the organization by its key (the original service's /auth/{toolKey} routes), without actions.
select id, org_id, name, key, base_url, auth_type, honors_idempotency_key, rate_limit, created_at, updated_at
from tools
where org_id = :org_id and key = :key;

-- name: exists$
-- True when the organization has this tool; used to check a toolId in a body.
select exists (
    select 1 from tools where org_id = :org_id and id = :id
);

-- name: insert^
-- Create a tool (it has no actions yet); tools_org_id_name_key refuses a duplicate name.
insert into tools (org_id, name, key, base_url, auth_type, honors_idempotency_key, rate_limit)
values (:org_id, :name, :key, :base_url, :auth_type, :honors_idempotency_key, :rate_limit)
returning id, org_id, name, key, base_url, auth_type, honors_idempotency_key, rate_limit, created_at, updated_at, '[]'::jsonb as actions;

-- name: update^
-- Replace the writable columns of one tool; returns it with its actions.
update tools t
set name = :name, key = :key, base_url = :base_url, auth_type = :auth_type, honors_idempotency_key = :honors_idempotency_key,
    rate_limit = :rate_limit
where t.org_id = :org_id and t.id = :id
returning t.id, t.org_id, t.name, t.key, t.base_url, t.auth_type, t.honors_idempotency_key, t.rate_limit, t.created_at, t.updated_at,
          coalesce((select jsonb_agg(a order by a.created_at desc, a.id desc)
                    from (select id, org_id, tool_id, name, key, method, endpoint, headers, input_schema,
                                 execute_if, timeout_ms, version, created_at, updated_at
                          from actions
                          where org_id = t.org_id and tool_id = t.id) as a), '[]') as actions;

-- name: delete!
-- Delete one tool; actions_tool_id_fkey refuses while it has actions.
delete from tools
where org_id = :org_id and id = :id;

-- name: rate_limit^
-- The tool's declared rate limit and the budget of each of its credentials (GET /tools/{id}/rate-limit);
-- null when the organization has no such tool. The database's clock says what is current.
select t.id, t.rate_limit, tolstoy_now() as now,
       coalesce((select jsonb_agg(jsonb_build_object(
                     'scope', b.scope, 'tat', b.tat, 'next_slot', b.next_slot, 'paused_until', b.paused_until,
                     'learned_requests', b.learned_requests, 'learned_per_seconds', b.learned_per_seconds,
                     'learned_at', b.learned_at, 'window_seconds', b.window_seconds,
                     'window_remaining', b.window_remaining, 'window_reset_at', b.window_reset_at,
                     'throttled', b.throttled, 'waited_seconds', b.waited_seconds, 'updated_at', b.updated_at)
                     order by b.scope)
                 from tool_rate_budgets b
                 where b.org_id = t.org_id and b.tool_id = t.id), '[]') as budgets
from tools t
where t.org_id = :org_id and t.id = :id;
