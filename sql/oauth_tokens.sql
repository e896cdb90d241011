-- The shared OAuth2 access tokens of oauth2 credentials (the shared_oauth_tokens migration).

-- name: current^
-- The stored access token of a credential while it has more than 30 s to live.
select access_token, expires_at
from oauth_tokens
where org_id = :org_id and credential_id = :credential_id and expires_at > now() + interval '30 seconds';

-- name: lock_credential^
-- Lock the credential for a refresh (other processes wait here, then find the new token) and
-- read its current secret: the refresh token may have been rotated since it was read.
select id, secret, updated_at
from tool_credentials
where org_id = :org_id and id = :credential_id
for update;

-- name: store!
-- Keep a new access token for every process.
insert into oauth_tokens (org_id, credential_id, access_token, expires_at)
values (:org_id, :credential_id, :access_token, now() + make_interval(secs => :expires_in))
on conflict (org_id, credential_id) do update
set access_token = excluded.access_token, expires_at = excluded.expires_at, updated_at = now();

-- name: keep_rotated_secret!
-- The provider rotated the refresh token: the credential keeps the new one (encrypted).
update tool_credentials
set secret = :secret
where org_id = :org_id and id = :credential_id;
