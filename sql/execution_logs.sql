-- name: list
-- One keyset page of an organization's execution logs, newest first; filters combine with AND.
select id, org_id, flow_id, user_id, execution_id, step_key, status, inputs, outputs,
       error, duration_ms, source, created_at, updated_at
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
       error, duration_ms, source, created_at, updated_at
from execution_logs
where org_id = :org_id and id = :id;

-- name: get_for_update^
-- One execution log of the organization, locked until the end of the transaction.
select id, org_id, flow_id, user_id, execution_id, step_key, status, inputs, outputs,
       error, duration_ms, source, created_at, updated_at
from execution_logs
where org_id = :org_id and id = :id
for update;

-- name: insert^
-- Record one step event a client sent (POST /execution-logs): source 'client', always, and no
-- duration (the engine's measure). The only statement that writes a log for a client; Tolstoy's
-- own rows go through write.
insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status,
                            inputs, outputs, error, source)
values (:org_id, :flow_id, :user_id, :execution_id, :step_key, :status,
        :inputs, :outputs, :error, 'client')
returning id, org_id, flow_id, user_id, execution_id, step_key, status, inputs, outputs,
          error, duration_ms, source, created_at, updated_at;

-- name: write^
-- Record one step event Tolstoy writes itself (a run change made through the API): source 'engine'.
insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status,
                            inputs, outputs, error, duration_ms, source)
values (:org_id, :flow_id, :user_id, :execution_id, :step_key, :status,
        :inputs, :outputs, :error, :duration_ms, 'engine')
returning id, org_id, flow_id, user_id, execution_id, step_key, status, inputs, outputs,
          error, duration_ms, source, created_at, updated_at;

-- name: update^
-- Replace the writable columns of one log a client wrote; user_id stays the original actor. The
-- engine's rows are never changed through here (the API answers 409 before; this keeps it so).
update execution_logs
set flow_id = :flow_id, execution_id = :execution_id, step_key = :step_key,
    status = :status, inputs = :inputs, outputs = :outputs, error = :error
where org_id = :org_id and id = :id and source = 'client'
returning id, org_id, flow_id, user_id, execution_id, step_key, status, inputs, outputs,
          error, duration_ms, source, created_at, updated_at;

-- name: delete!
-- Delete one execution log a client wrote (the engine's rows stay: the API answers 409 for them).
delete from execution_logs
where org_id = :org_id and id = :id and source = 'client';
