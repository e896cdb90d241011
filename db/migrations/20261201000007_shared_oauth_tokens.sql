-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- OAuth2 access tokens, shared by every API and worker process.
--
-- Each process used to fetch and cache its own token, so a second process sent
-- a refresh token the provider had already rotated away; providers with reuse
-- detection then revoke the whole grant. Now the current access token lives
-- here (encrypted like every secret), a refresh happens under a row lock on the
-- credential (one process refreshes, the others wait and reuse its token), and
-- a refresh token the provider rotates is written back to the credential in the
-- same transaction.

create table oauth_tokens (
    org_id uuid not null,
    credential_id uuid not null,
    -- The access token, encrypted by the application with the organization's key.
    access_token bytea not null,
    expires_at timestamptz not null,
    updated_at timestamptz not null default now(),
    constraint oauth_tokens_pkey primary key (org_id, credential_id),
    constraint oauth_tokens_credential_id_fkey foreign key (org_id, credential_id)
        references tool_credentials (org_id, id) on delete cascade
);

comment on table oauth_tokens is
    'The current OAuth2 access token of each oauth2 credential, shared by all processes (refreshed under a row '
    'lock on tool_credentials).';
comment on column oauth_tokens.expires_at is 'When the provider said the token expires; refreshed 30 s before.';

alter table oauth_tokens enable row level security;
alter table oauth_tokens force row level security;
create policy tenant_isolation on oauth_tokens
    using (org_id = tolstoy_current_org()) with check (org_id = tolstoy_current_org());

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop table oauth_tokens;
