-- The shared OAuth2 access tokens of oauth2 credentials (the shared_oauth_tokens migration), refreshed
-- under a short lease on their row (the oauth_refresh_leases migration): take_lease, then the token
-- request with no transaction open, then store (a compare-and-set) or release_lease.

-- name: current^
-- The stored access token of a credential while it has more than 30 s to live, and only if it
-- was fetched with the credential as it is now (a replaced client secret or scope needs a new one).
select t.access_token, t.expires_at
from oauth_tokens t
join tool_credentials c on c.org_id = t.org_id and c.id = t.credential_id
where t.org_id = :org_id and t.credential_id = :credential_id
  and t.expires_at > now() + interval '30 seconds' and t.updated_at >= c.updated_at;

-- name: take_lease^
-- Begin a refresh: take the lease on the credential's token (:lease, for :lease_seconds), committed
-- at once, unless a live lease is another refresh's or the stored token is fresh; the provider is
-- then called outside any transaction. ``lease`` is :lease when taken, else null. The credential
-- is read locked (until this statement commits), so it is its newest version even when a refresh
-- stored a rotated refresh token after this statement began: its secret holds the refresh token to
-- send. access_token and expires_at: the stored token when it is fresh (as of the statement's
-- start: one stored a moment later is seen by the next try). No row: the credential is gone.
with credential as (
    select org_id, id, secret, updated_at
    from tool_credentials
    where org_id = :org_id and id = :credential_id
    for no key update
), leased as (
    insert into oauth_tokens as t (org_id, credential_id, refreshing_by, refresh_lease_until)
    select org_id, id, :lease, now() + make_interval(secs => :lease_seconds::double precision)
    from credential
    on conflict (org_id, credential_id) do update
    set refreshing_by = excluded.refreshing_by, refresh_lease_until = excluded.refresh_lease_until
    where (t.refresh_lease_until is null or t.refresh_lease_until <= now())
      and (t.expires_at is null or t.expires_at <= now() + interval '30 seconds'
           or t.updated_at < (select updated_at from credential))
    returning t.refreshing_by
)
select c.secret, (select refreshing_by from leased) as lease, t.access_token, t.expires_at
from credential c
left join oauth_tokens t on t.org_id = c.org_id and t.credential_id = c.id
  and t.expires_at > now() + interval '30 seconds' and t.updated_at >= c.updated_at;

-- name: store^
-- End a refresh with a compare-and-set: only while the credential's secret is still :previous (the
-- one the refresh decrypted and sent), keep the refresh token the provider rotated (:secret, null
-- when it did not) and the new access token for every process, and give up the lease if it is
-- still :lease (one that expired and was taken by another refresh stays theirs). No row: the
-- credential changed (or went) since, and what it is now wins. The token is returned as stored,
-- however short its life.
with credential as (
    select org_id, id
    from tool_credentials
    where org_id = :org_id and id = :credential_id and secret = :previous
    for no key update
), rotated as (
    update tool_credentials c
    set secret = :secret
    from credential
    where c.org_id = credential.org_id and c.id = credential.id and :secret::bytea is not null
), stored as (
    insert into oauth_tokens as t (org_id, credential_id, access_token, expires_at)
    select org_id, id, :access_token, now() + make_interval(secs => :expires_in::double precision)
    from credential
    on conflict (org_id, credential_id) do update
    set access_token = excluded.access_token, expires_at = excluded.expires_at, updated_at = now(),
        refreshing_by = case when t.refreshing_by = :lease then null else t.refreshing_by end,
        refresh_lease_until = case when t.refreshing_by = :lease then null else t.refresh_lease_until end
    returning t.access_token, t.expires_at
)
select access_token, expires_at
from stored;

-- name: release_lease!
-- A refresh that stores nothing (the provider refused or did not answer in time, or the credential
-- changed meanwhile) gives its lease up, so that others need not wait for it to expire.
update oauth_tokens
set refreshing_by = null, refresh_lease_until = null
where org_id = :org_id and credential_id = :credential_id and refreshing_by = :lease;

-- name: credential_secret^
-- The credential's secret as it is now, once a compare-and-set found it changed: the same config
-- re-encrypted with another data key (store again over it), or another one (it wins).
select secret
from tool_credentials
where org_id = :org_id and id = :credential_id;

-- name: to_reencrypt
-- The next batch (credential ids after :after_credential_id) of an organization's stored access
-- tokens not encrypted with data key :version (a row that holds only a first refresh's lease has
-- none), locked, for `tolstoy secrets rotate --reencrypt`.
select org_id, credential_id, access_token
from oauth_tokens
where org_id = :org_id and credential_id > :after_credential_id::uuid
  and access_token is not null and tolstoy_key_version(access_token) is distinct from :version::integer
order by credential_id
limit :limit
for update;

-- name: reencrypted!
-- Store a batch of re-encrypted access tokens (their expiry is unchanged).
update oauth_tokens t
set access_token = n.access_token
from unnest(:credential_ids::uuid[], :values::bytea[]) as n(credential_id, access_token)
where t.org_id = :org_id and t.credential_id = n.credential_id;
