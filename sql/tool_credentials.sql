-- name: list_by_tool
-- Every credential of one tool, newest first (secrets are decrypted and masked by the app); with a
-- :purpose, each is recorded in secret_reads as read by :actor (and :user_id) by the same statement.
with found as (
    select id, org_id, tool_id, name, type, secret, is_default, created_at, updated_at
    from tool_credentials
    where org_id = :org_id and tool_id = :tool_id
), audit as (
    insert into secret_reads (org_id, actor, user_id, tool_id, credential_id, purpose)
    select found.org_id, :actor::text, :user_id::uuid, found.tool_id, found.id, :purpose::text
    from found
    where :purpose::text is not null
)
select id, org_id, tool_id, name, type, secret, is_default, created_at, updated_at
from found
order by created_at desc, id desc;

-- name: read_default^
-- The credential requests to a tool use (the default one, else the only one), recorded in
-- secret_reads as read by :actor (:user_id, :run_id, :purpose) by the same statement: a
-- credential is never handed over for decryption unrecorded, and the record costs no round trip.
-- origin_url: the tool's base URL when it was stored; it is sent only to that origin.
with found as (
    select id, org_id, tool_id, name, type, secret, is_default, origin_url, created_at, updated_at
    from tool_credentials
    where org_id = :org_id and tool_id = :tool_id
      and (is_default or (select count(*) from tool_credentials c
                          where c.org_id = :org_id and c.tool_id = :tool_id) = 1)
    order by is_default desc
    limit 1
), audit as (
    insert into secret_reads (org_id, actor, user_id, tool_id, credential_id, run_id, purpose)
    select found.org_id, :actor::text, :user_id::uuid, found.tool_id, found.id, :run_id::uuid, :purpose::text
    from found
)
select id, org_id, tool_id, name, type, secret, is_default, origin_url, created_at, updated_at
from found;

-- name: clear_default!
-- Before making another credential the default: at most one per tool.
update tool_credentials
set is_default = false
where org_id = :org_id and tool_id = :tool_id and is_default;

-- name: upsert^
-- Create a credential, or replace the one with the same name on this tool; either way it is bound
-- to the tool's base URL as it is now (origin_url, set by tool_credentials_bind_to_tool_origin).
insert into tool_credentials (org_id, tool_id, name, type, secret, is_default)
values (:org_id, :tool_id, :name, :type, :secret, :is_default)
on conflict (org_id, tool_id, name) do update
set type = excluded.type, secret = excluded.secret, is_default = excluded.is_default, origin_url = excluded.origin_url
returning id, org_id, tool_id, name, type, secret, is_default, created_at, updated_at;

-- name: delete!
-- Delete one credential of a tool by name.
delete from tool_credentials
where org_id = :org_id and tool_id = :tool_id and name = :name;

-- name: delete_all!
-- Delete every organization-level credential of a tool (DELETE /tools/{id}/auth); users' own
-- connections (user_connections) stay.
delete from tool_credentials
where org_id = :org_id and tool_id = :tool_id;

-- name: bound_to_tool$
-- How many secrets are bound to the tool's origin: its credentials and its users' connections
-- (the tool row is locked by the caller, so none is added before it commits).
select (select count(*) from tool_credentials where org_id = :org_id and tool_id = :tool_id)
     + (select count(*) from user_connections where org_id = :org_id and tool_id = :tool_id);

-- name: drop_for_tool!
-- Delete every secret bound to the tool's origin, for PATCH /tools/{id} with dropCredentials in
-- the transaction that moves it: its credentials (their shared OAuth2 access tokens go with them,
-- oauth_tokens_credential_id_fkey cascades), its users' connections and their logins in progress.
with credentials as (
    delete from tool_credentials
    where org_id = :org_id and tool_id = :tool_id
), connections as (
    delete from user_connections
    where org_id = :org_id and tool_id = :tool_id
)
delete from oauth_states
where org_id = :org_id and tool_id = :tool_id;

-- name: delete_default!
-- Delete the credential calls use (the default one, else the only one): DELETE /tools/{id}/secrets.
delete from tool_credentials
where org_id = :org_id and tool_id = :tool_id
  and (is_default or (select count(*) from tool_credentials c
                      where c.org_id = :org_id and c.tool_id = :tool_id) = 1);

-- name: list_secrets
-- One keyset page of the organization's tools with their default credential (the one calls use),
-- for GET /tools/secrets; each credential found is recorded in secret_reads as read by :actor
-- (and :user_id) by the same statement, since the app decrypts it to name its keys.
with page as (
    select t.id, t.org_id, t.name, t.auth_type, t.created_at,
           c.id as credential_id, c.type as credential_type, c.secret, c.updated_at as credential_updated_at
    from tools t
    left join lateral (
        select id, type, secret, updated_at
        from tool_credentials
        where org_id = t.org_id and tool_id = t.id
          and (is_default or (select count(*) from tool_credentials o
                              where o.org_id = t.org_id and o.tool_id = t.id) = 1)
        order by is_default desc
        limit 1
    ) c on true
    where t.org_id = :org_id
      and (:after_created_at::timestamptz is null
           or (t.created_at, t.id) < (:after_created_at::timestamptz, :after_id::uuid))
    order by t.created_at desc, t.id desc
    limit :limit
), audit as (
    insert into secret_reads (org_id, actor, user_id, tool_id, credential_id, purpose)
    select page.org_id, :actor::text, :user_id::uuid, page.id, page.credential_id, 'show'
    from page
    where page.credential_id is not null
)
select id, org_id, name, auth_type, created_at, credential_id, credential_type, secret, credential_updated_at
from page
order by created_at desc, id desc;

-- ---- encryption upkeep -------------------------------------------------------------

-- name: rewrite_secret!
-- A secret re-encrypted with the organization's newest data key as it was used, unless it
-- changed meanwhile (then the newer one stays).
update tool_credentials
set secret = :secret
where org_id = :org_id and id = :id and secret = :previous;

-- name: to_reencrypt
-- The next batch (ids after :after_id) of an organization's secrets not encrypted with data key
-- :version, locked, for `tolstoy secrets rotate --reencrypt`.
select org_id, id, tool_id, secret
from tool_credentials
where org_id = :org_id and id > :after_id::uuid
  and tolstoy_key_version(secret) is distinct from :version::integer
order by id
limit :limit
for update;

-- name: reencrypted!
-- Store a batch of re-encrypted secrets, recording each in secret_reads as decrypted by the command line.
with changed as (
    update tool_credentials c
    set secret = n.secret
    from unnest(:ids::uuid[], :values::bytea[]) as n(id, secret)
    where c.org_id = :org_id and c.id = n.id
    returning c.org_id, c.id, c.tool_id
)
insert into secret_reads (org_id, actor, tool_id, credential_id, purpose)
select changed.org_id, 'cli', changed.tool_id, changed.id, 'reencrypt'
from changed;

-- name: legacy_count$
-- How many secrets of an organization are still under TOLSTOY_ENCRYPTION_KEY directly (no data key).
select count(*)
from tool_credentials
where org_id = :org_id and tolstoy_key_version(secret) is null;
