-- The audit trail of configuration changes (audit_events). Events are written by
-- the database (the tolstoy_audit trigger of each audited table, in the
-- transaction of the change) and pruned by tolstoy_prune_audit (the workers'
-- housekeeping: sql/runs.sql prune); the API only reads.

-- name: list
-- One keyset page of the organization's events, newest first, optionally of one target (type and/or
-- id) or one actor (user, API key prefix, admin or not).
select org_id, id, created_at, actor, action, target_type, target_id, changes, request_id
from audit_events
where org_id = :org_id
  and (:target_type::text is null or target_type = :target_type::text)
  and (:target_id::uuid is null or target_id = :target_id::uuid)
  and (:actor_user_id::text is null or actor ->> 'userId' = :actor_user_id::text)
  and (:actor_key_prefix::text is null or actor ->> 'apiKeyPrefix' = :actor_key_prefix::text)
  and (:actor_admin::boolean is null or coalesce((actor ->> 'admin')::boolean, false) = :actor_admin::boolean)
  and (:after_created_at::timestamptz is null
       or (created_at, id) < (:after_created_at::timestamptz, :after_id::uuid))
order by created_at desc, id desc
limit :limit;
