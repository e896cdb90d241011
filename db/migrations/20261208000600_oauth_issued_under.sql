-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- What an OAuth2 grant was issued under (issue 19, "credentials bound to what made them"). A
-- user's connection, an organization's shared access token and a login in progress are each
-- derived from the tool's oauth2 credential as it was then: its token endpoint (tokenUrl) and
-- OAuth client (clientId). Replacing the credential with another token URL on the same origin
-- kept users' connections, and the next refresh sent a user's refresh token to the new URL: a
-- write-scoped key without `impersonate` could collect them. Each derived row now records the
-- token URL and client id it was issued under (clear text: both are shown unmasked wherever the
-- credential is), and the engine refreshes, sends or exchanges it only under a credential that
-- still names the same two (tolstoy/engine/tool_auth.py, `issued_under`).
--
-- Rows made before this migration have nulls: the credential they came from is encrypted, so
-- SQL cannot tell. A connection with nulls is never refreshed (its user connects again when its
-- access token expires; until then the access token goes only to the tool's origin, as before);
-- a shared token with nulls is fetched again; a login with nulls is refused (ten minutes at most).

-- Small tables; nullable columns without defaults change the catalog only.
alter table user_connections add column token_url text;
alter table user_connections add column client_id text;
alter table oauth_tokens add column token_url text;
alter table oauth_tokens add column client_id text;
alter table oauth_states add column token_url text;
alter table oauth_states add column client_id text;

comment on column user_connections.token_url is
    'The tokenUrl of the tool''s credential when the user connected: the tokens are refreshed or sent only '
    'while the credential names the same (null: connected before this was recorded, never refreshed).';
comment on column user_connections.client_id is
    'The clientId of the tool''s credential when the user connected (see token_url).';
comment on column oauth_tokens.token_url is
    'The tokenUrl of the credential the access token was fetched with: used only while the credential '
    'names the same (null: fetched before this was recorded, fetched again).';
comment on column oauth_tokens.client_id is
    'The clientId of the credential the access token was fetched with (see token_url).';
comment on column oauth_states.token_url is
    'The tokenUrl of the tool''s credential when the login began: the callback exchanges the code only '
    'while the credential names the same.';
comment on column oauth_states.client_id is
    'The clientId the provider''s consent page was given: the callback exchanges the code only while the '
    'credential names the same.';

-- Privileges: unchanged (new columns of tables the services already read and write).

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

alter table oauth_states drop column client_id;
alter table oauth_states drop column token_url;
alter table oauth_tokens drop column client_id;
alter table oauth_tokens drop column token_url;
alter table user_connections drop column client_id;
alter table user_connections drop column token_url;
