-- The shared OAuth2 access tokens of oauth2 credentials (the shared_oauth_tokens migration).

-- name: current^
-- The stored access token of a credential while it has more than 30 s to live, and only if it
-- was fetched with the credential as it is now (a replaced client secret or scope needs a new one).
select t.access_token, t.expires_at
from oauth_tokens t
join tool_credentials c on c.org_id = t.org_id and c.id = t.credential_id
where t.org_id = :org_id and t.credential_id = :credential_id
  and t.expires_at > now() + interval '30 seconds' and t.updated_at >= c.updated_at;

-- name: lock_credential^
-- Lock the credential for a refresh (other processes wait here, then find the new token) and
-- read its current secret: the refresh token may have been rotated since it was read.
select id, secret, updated_at
from tool_credentials
where org_id = :org_id and id = :credential_id
for update;

-- name: store^
-- Keep a new access token for every process (returned as stored, however short its life).
insert into oauth_tokens (org_id, credential_id, access_token, expires_at)
values (:org_id, :credential_id, :access_token, now() + make_interval(secs => :expires_in))
on conflict (org_id, credential_id) do update
set access_token = excluded.access_token, expires_at = excluded.expires_at, updated_at = now()
returning access_token, expires_at;

-- name: to_reencrypt
-- The next batch (credential ids after :after_credential_id) of an organization's stored access
-- tokens not encrypted with data key :version, locked, for `tolstoy secrets rotate --reencrypt`.
select org_id, credential_id, access_token
from oauth_tokens
where org_id = :org_id and credential_id > :after_credential_id::uuid
  and tolstoy_key_version(access_token) is distinct from :version::integer
order by credential_id
limit :limit
for update;

-- name: reencrypted!
-- Store a batch of re-encrypted access tokens (their expiry is unchanged).
update oauth_tokens t
set access_token = n.access_token
from unnest(:credential_ids::uuid[], :values::bytea[]) as n(credential_id, access_token)
where t.org_id = :org_id and t.credential_id = n.credential_id;
