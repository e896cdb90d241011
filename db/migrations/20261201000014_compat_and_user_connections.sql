-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Clients of the original service (docs/api.md, "Compatibility with the original
-- service"):
--
-- * tools.key: the original named tools by a short key (`/auth/{toolKey}/login`);
--   optional, unique per organization when set.
-- * user_connections: a user's own OAuth2 tokens for a tool whose oauth2
--   credential says perUser (authorization code + PKCE). The tokens are one JSON
--   value encrypted by the application with the organization's data key, like
--   every credential. A refresh happens under the row's lock (one process
--   refreshes, the others wait and reuse its token) and a rotated refresh token
--   is kept in the same statement as the new access token.
-- * oauth_states: the server side of an OAuth login in progress: the `state` a
--   provider hands back is a signed (org, nonce) pair, and this row is consumed
--   (deleted) by the callback, so a state works once and for 10 minutes. The
--   PKCE verifier is not stored: it is derived from the nonce with a server key.

-- A small table (tools an organization registers), so the brief lock of a plain
-- index build is accepted; the column is nullable, so adding it rewrites nothing.
alter table tools add column key text;

comment on column tools.key is
    'Optional short name of the tool, unique per organization (the original service''s /auth/{toolKey} routes).';

-- The column was just added, null in every row: the check's scan of this small table finds nothing.
-- squawk-ignore constraint-missing-not-valid
alter table tools add constraint tools_key_format check (key ~ '^[a-z0-9][a-z0-9_.-]{0,63}$');

-- squawk-ignore require-concurrent-index-creation
create unique index tools_org_id_key_key on tools (org_id, key) where key is not null;

create table user_connections (
    org_id uuid not null,
    id uuid not null default gen_random_uuid(),
    user_id uuid not null,
    tool_id uuid not null,
    -- {"accessToken", "refreshToken"?} encrypted by the application with the organization's data key.
    tokens bytea not null,
    -- When the provider said the access token expires (null: it did not say); refreshed 30 s before.
    expires_at timestamptz,
    scope text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint user_connections_pkey primary key (org_id, id),
    constraint user_connections_org_id_user_id_tool_id_key unique (org_id, user_id, tool_id),
    -- A user's tokens go with the user, and with the tool.
    constraint user_connections_user_id_fkey foreign key (org_id, user_id)
        references users (org_id, id) on delete cascade,
    constraint user_connections_tool_id_fkey foreign key (org_id, tool_id)
        references tools (org_id, id) on delete cascade,
    constraint user_connections_scope_length check (char_length(scope) <= 2000)
);

comment on table user_connections is
    'A user''s own OAuth2 tokens for a tool with a perUser oauth2 credential (authorization code + PKCE).';
comment on column user_connections.tokens is
    'The access and refresh tokens (JSON), encrypted by the application with the organization''s data key.';
comment on column user_connections.expires_at is 'When the access token expires; null when the provider did not say.';

create index user_connections_org_id_tool_id_idx on user_connections (org_id, tool_id);
create index user_connections_org_id_user_id_created_at_id_idx
    on user_connections (org_id, user_id, created_at desc, id desc);

create trigger user_connections_touch_updated_at
    before update on user_connections
    for each row execute function tolstoy_touch_updated_at();

alter table user_connections enable row level security;
alter table user_connections force row level security;
create policy tenant_isolation on user_connections
    using (org_id = tolstoy_current_org()) with check (org_id = tolstoy_current_org());

create table oauth_states (
    org_id uuid not null,
    -- The random part of the state; the PKCE verifier is derived from it with a server key.
    nonce text not null,
    user_id uuid not null,
    tool_id uuid not null,
    redirect_uri text not null,
    expires_at timestamptz not null default now() + interval '10 minutes',
    created_at timestamptz not null default now(),
    constraint oauth_states_pkey primary key (org_id, nonce),
    constraint oauth_states_user_id_fkey foreign key (org_id, user_id)
        references users (org_id, id) on delete cascade,
    constraint oauth_states_tool_id_fkey foreign key (org_id, tool_id)
        references tools (org_id, id) on delete cascade,
    constraint oauth_states_nonce_length check (char_length(nonce) between 16 and 100),
    constraint oauth_states_redirect_uri_length check (char_length(redirect_uri) between 1 and 2048)
);

comment on table oauth_states is
    'OAuth logins in progress: consumed (deleted) by their callback, so a state works once; valid 10 minutes.';

create index oauth_states_org_id_expires_at_idx on oauth_states (org_id, expires_at);
create index oauth_states_org_id_user_id_idx on oauth_states (org_id, user_id);
create index oauth_states_org_id_tool_id_idx on oauth_states (org_id, tool_id);

alter table oauth_states enable row level security;
alter table oauth_states force row level security;
create policy tenant_isolation on oauth_states
    using (org_id = tolstoy_current_org()) with check (org_id = tolstoy_current_org());

-- Privileges: db/grants.sql (the API manages both tables; the workers read and refresh connections).

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop table oauth_states;
drop table user_connections;
-- Its check constraint and unique index go with it.
alter table tools drop column key;
