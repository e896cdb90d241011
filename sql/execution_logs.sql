-- name: list
-- One keyset page of an organization's execution logs, newest first; filters combine with AND.
select id, org_id, flow_id, user_id, execution_id, step_key, status, inputs, outputs,
       error, duration_ms, created_at, updated_at
from execution_logs
where org_id = :org_id
  and (:flow_id::uuid is null or flow_id = :flow_id::uuid)
  and (:execution_id::text is null or execution_id = :execution_id::text)
  and (:status::execution_status is null or status = :status::execution_status)
  and (:user_id::uuid is null or user_id = :user_id::uuid)
  and (:after_created_at::timestamptz is null
       or (created_at, id) < (:after_created_at::timestamptz, :after_id::uuid))
order by created_at desc, id desc
limit :limit;

-- name: get^
-- One execution log of the organization.
select id, org_id, flow_id, user_id, execution_id, step_key, status, inputs, outputs,
       error, duration_ms, created_at, updated_at
from execution_logs
where org_id = :org_id and id = :id;

-- name: get_for_update^
-- One execution log of the organization, locked until the end of the transaction.
select id, org_id, flow_id, user_id, execution_id, step_key, status, inputs, outputs,
       error, duration_ms, created_at, updated_at
from execution_logs
where org_id = :org_id and id = :id
for update;

-- name: insert^
-- Record one step event.
insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status,
                            inputs, outputs, error, duration_ms)
values (:org_id, :flow_id, :user_id, :execution_id, :step_key, :status,
        :inputs, :outputs, :error, :duration_ms)
returning id, org_id, flow_id, user_id, execution_id, step_key, status, inputs, outputs,
          error, duration_ms, created_at, updated_at;

-- name: update^
-- Replace the writable columns of one log; user_id stays the original actor.
update execution_logs
set flow_id = :flow_id, execution_id = :execution_id, step_key = :step_key,
    status = :status, inputs = :inputs, outputs = :outputs, error = :error
where org_id = :org_id and id = :id
returning id, org_id, flow_id, user_id, execution_id, step_key, status, inputs, outputs,
          error, duration_ms, created_at, updated_at;

-- name: delete!
-- Delete one execution log.
delete from execution_logs
where org_id = :org_id and id = :id;
