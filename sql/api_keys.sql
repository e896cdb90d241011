-- name: insert^
-- Store a new key's hash; the key itself is returned to the caller once and never stored.
insert into api_keys (org_id, name, prefix, key_hash, scopes, expires_at, user_id)
values (:org_id, :name, :prefix, :key_hash, :scopes, :expires_at, :user_id)
returning id, org_id, name, prefix, scopes, expires_at, user_id, created_at, last_used_at;

-- name: expiry_of$
-- When the key making a request expires (null: never); a key it creates may not outlive it.
select expires_at
from api_keys
where org_id = :org_id and key_hash = :key_hash;

-- name: list
-- One keyset page of an organization's active keys (expired ones included, marked by
-- expiresAt), newest first.
select id, org_id, name, prefix, scopes, expires_at, user_id, created_at, last_used_at
from api_keys
where org_id = :org_id and revoked_at is null
  and (:after_created_at::timestamptz is null
       or (created_at, id) < (:after_created_at::timestamptz, :after_id::uuid))
order by created_at desc, id desc
limit :limit;

-- name: revoke!
-- Revoke a key at once; the row stays for the audit trail.
update api_keys
set revoked_at = now()
where org_id = :org_id and id = :id and revoked_at is null;
