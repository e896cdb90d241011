-- Per-user OAuth2 connections (user_connections) and the logins in progress that make them
-- (oauth_states); the compat_and_user_connections migration. Tokens are encrypted by the app.

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

-- name: lock^
-- The connection locked for a refresh (other processes wait here, then find the new token).
select id, tokens, origin_url, expires_at,
       (expires_at is null or expires_at > now() + interval '30 seconds') as fresh
from user_connections
where org_id = :org_id and user_id = :user_id and tool_id = :tool_id
for update;

-- name: refreshed^
-- The tokens after a refresh (the refresh token as the provider rotated it, or as it was).
update user_connections
set tokens = :tokens, expires_at = now() + make_interval(secs => :expires_in::double precision)
where org_id = :org_id and id = :id
returning id, tokens, origin_url, expires_at, true as fresh;

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
