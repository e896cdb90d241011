-- Per-user OAuth2 connections (user_connections) and the logins in progress that make them
-- (oauth_states); the compat_and_user_connections migration. Tokens are encrypted by the app, and
-- refreshed under a short lease on the connection (the oauth_refresh_leases migration): take_lease,
-- then the token request with no transaction open, then refreshed (a compare-and-set) or release_lease.

-- name: start_login^
-- Remember a login in progress for 10 minutes (its nonce is in the signed state the provider hands
-- back); the same statement drops the organization's logins that expired over an hour ago.
with swept as (
    delete from oauth_states
    where org_id = :org_id and expires_at < now() - interval '1 hour'
)
insert into oauth_states (org_id, nonce, user_id, tool_id, redirect_uri)
values (:org_id, :nonce, :user_id, :tool_id, :redirect_uri)
returning org_id, nonce, expires_at;

-- name: take_login^
-- Consume a login in progress (a state works once, even when two callbacks race: one deletes the
-- row, the other finds none), with its user and tool; ``expired`` once its 10 minutes are over.
with taken as (
    delete from oauth_states
    where org_id = :org_id and nonce = :nonce
    returning org_id, user_id, tool_id, redirect_uri, expires_at
)
select taken.org_id, taken.user_id, taken.tool_id, taken.redirect_uri, taken.expires_at <= now() as expired,
       u.email, t.name as tool_name, t.key as tool_key
from taken
join users u on u.org_id = taken.org_id and u.id = taken.user_id
join tools t on t.org_id = taken.org_id and t.id = taken.tool_id;

-- name: connect^
-- Keep a user's tokens for a tool (a new connection, or the same one connected again), bound to the
-- tool's base URL as it is now (origin_url, set by user_connections_bind_to_tool_origin).
insert into user_connections (org_id, user_id, tool_id, tokens, expires_at, scope)
values (:org_id, :user_id, :tool_id, :tokens,
        now() + make_interval(secs => :expires_in::double precision), :scope)
on conflict (org_id, user_id, tool_id) do update
set tokens = excluded.tokens, expires_at = excluded.expires_at, scope = excluded.scope,
    origin_url = excluded.origin_url
returning id, org_id, user_id, tool_id, expires_at, scope, created_at, updated_at;

-- name: current^
-- The user (to name in an error) and their connection to a tool, if any: its tokens, the tool's
-- base URL when it was connected (origin_url), and whether the access token has more than 30 s to
-- live (no expiry from the provider: it has).
select u.email, c.id, c.tokens, c.origin_url, c.expires_at,
       (c.expires_at is null or c.expires_at > now() + interval '30 seconds') as fresh
from users u
left join user_connections c on c.org_id = u.org_id and c.user_id = u.id and c.tool_id = :tool_id
where u.org_id = :org_id and u.id = :user_id;

-- name: take_lease^
-- Begin a refresh of the user's tokens: take the lease on the connection (:lease, for
-- :lease_seconds), committed at once, unless a live lease is another refresh's or the access
-- token is fresh; the provider is then called outside any transaction. ``lease`` is :lease when
-- taken, else null; tokens are then the newest (the update reads the row as it is when it locks
-- it, even if a refresh stored it after this statement began). ``fresh``: the access token has
-- more than 30 s to live (as of the statement's start, unless leased). No row: not connected now.
with leased as (
    update user_connections
    set refreshing_by = :lease, refresh_lease_until = now() + make_interval(secs => :lease_seconds::double precision)
    where org_id = :org_id and user_id = :user_id and tool_id = :tool_id
      and (refresh_lease_until is null or refresh_lease_until <= now())
      and expires_at <= now() + interval '30 seconds'
    returning id, tokens, origin_url, refreshing_by
)
select c.id, coalesce(l.tokens, c.tokens) as tokens, coalesce(l.origin_url, c.origin_url) as origin_url,
       l.refreshing_by as lease,
       l.id is null and (c.expires_at is null or c.expires_at > now() + interval '30 seconds') as fresh
from user_connections c
left join leased l on l.id = c.id
where c.org_id = :org_id and c.user_id = :user_id and c.tool_id = :tool_id;

-- name: refreshed^
-- End a refresh with a compare-and-set: only while the connection's tokens are still :previous (the
-- ones the refresh decrypted and sent), keep the new ones (the refresh token as the provider rotated
-- it, or as it was) and give up the lease if it is still :lease (one that expired and was taken by
-- another refresh stays theirs). No row: the tokens changed (another refresh, the user connecting
-- again) or the connection went, and what is there now wins.
update user_connections
set tokens = :tokens, expires_at = now() + make_interval(secs => :expires_in::double precision),
    refreshing_by = case when refreshing_by = :lease then null else refreshing_by end,
    refresh_lease_until = case when refreshing_by = :lease then null else refresh_lease_until end
where org_id = :org_id and id = :id and tokens = :previous
returning id, tokens, origin_url, expires_at, true as fresh;

-- name: release_lease!
-- A refresh that stores nothing (the provider refused or did not answer in time, the tokens changed
-- meanwhile) gives its lease up, so that others need not wait for it to expire.
update user_connections
set refreshing_by = null, refresh_lease_until = null
where org_id = :org_id and id = :id and refreshing_by = :lease;

-- name: list_by_user
-- One keyset page of the tools a user connected, newest first (no tokens).
select c.id, c.org_id, c.user_id, c.tool_id, t.name as tool_name, t.key as tool_key, c.scope,
       c.expires_at, c.created_at, c.updated_at
from user_connections c
join tools t on t.org_id = c.org_id and t.id = c.tool_id
where c.org_id = :org_id and c.user_id = :user_id
  and (:after_created_at::timestamptz is null
       or (c.created_at, c.id) < (:after_created_at::timestamptz, :after_id::uuid))
order by c.created_at desc, c.id desc
limit :limit;

-- name: disconnect!
-- Forget a user's tokens for a tool.
delete from user_connections
where org_id = :org_id and user_id = :user_id and tool_id = :tool_id;

-- name: to_reencrypt
-- The next batch (ids after :after_id) of an organization's connections not encrypted with data key
-- :version, locked, for `tolstoy secrets rotate --reencrypt`.
select org_id, id, tokens
from user_connections
where org_id = :org_id and id > :after_id::uuid
  and tolstoy_key_version(tokens) is distinct from :version::integer
order by id
limit :limit
for update;

-- name: reencrypted!
-- Store a batch of re-encrypted tokens (their expiry is unchanged).
update user_connections c
set tokens = n.tokens
from unnest(:ids::uuid[], :values::bytea[]) as n(id, tokens)
where c.org_id = :org_id and c.id = n.id;
