-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- No lock across the network (issue 20). An OAuth2 refresh used to lock the credential's row
-- (or the user's connection) and keep that transaction, and its pooled connection, open while
-- the provider answered: up to the step's timeout per refresh, a pool emptied by a slow token
-- endpoint, and every other process that needed the token holding a connection of its own
-- while it waited on the lock.
--
-- Now a refresh takes a short lease on the token's row instead, in one statement committed at
-- once: refreshing_by (a random id of that one refresh) and refresh_lease_until, taken only
-- when no lease is live and the stored token is not fresh. The provider is then called with no
-- transaction open and no connection held, and the result is stored by a compare-and-set: only
-- if the credential (the connection's tokens) is still what the refresh started from, so a
-- refresh token that someone stored meanwhile (a person replacing the credential, a newer
-- refresh) is never overwritten with an older grant's. Other processes that find a live lease
-- hold nothing and poll with a bounded back-off within their own call's deadline, then use the
-- stored token. A lease lasts the token request's timeout plus a margin for storing (30 s at
-- most, tolstoy/engine/tool_auth.py): a refresher that died leaves one that simply expires.
--
-- oauth_tokens gets a row when the first refresh of a credential takes its lease, before there
-- is any token: access_token and expires_at are null until that refresh stores one (both or
-- neither, checked below).

-- Small tables (an organization's credentials and its users' connections); nullable columns
-- without defaults and dropped NOT NULLs change the catalog only.
alter table oauth_tokens add column refreshing_by uuid;
alter table oauth_tokens add column refresh_lease_until timestamptz;
-- The previous application, still running during a rolling deploy, reads tokens only through a
-- query that wants expires_at in the future (a lease-only row is not one) and writes both columns
-- together; its `tolstoy secrets rotate --reencrypt` would choke on a lease-only row, so run the new
-- version's command (as after any upgrade).
-- squawk-ignore ban-drop-not-null
alter table oauth_tokens alter column access_token drop not null;
-- squawk-ignore ban-drop-not-null
alter table oauth_tokens alter column expires_at drop not null;

-- Every existing row has both: the check's scan of this small table finds nothing.
-- squawk-ignore constraint-missing-not-valid
alter table oauth_tokens add constraint oauth_tokens_token_with_expiry
    check ((access_token is null) = (expires_at is null));

alter table user_connections add column refreshing_by uuid;
alter table user_connections add column refresh_lease_until timestamptz;

comment on table oauth_tokens is
    'The current OAuth2 access token of each oauth2 credential, shared by all processes (refreshed under a '
    'short lease on this row, the provider called outside any transaction).';
comment on column oauth_tokens.access_token is
    'The access token, encrypted by the application; null until the first refresh of the credential stores one.';
comment on column oauth_tokens.expires_at is
    'When the provider said the token expires (refreshed 30 s before); null until the first refresh stores one.';
comment on column oauth_tokens.refreshing_by is
    'The random id of the refresh that holds the lease (null: none since the last one stored or gave up).';
comment on column oauth_tokens.refresh_lease_until is
    'Until when that refresh holds the lease: the token request''s timeout plus a margin (30 s at most); a '
    'refresher that died leaves a lease that expires.';
comment on column user_connections.refreshing_by is
    'The random id of the refresh of this user''s tokens that holds the lease (null: none).';
comment on column user_connections.refresh_lease_until is
    'Until when that refresh holds the lease: the token request''s timeout plus a margin (30 s at most).';

-- Privileges: unchanged (new columns of tables both services already read and update).

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

alter table user_connections drop column refresh_lease_until;
alter table user_connections drop column refreshing_by;

-- Rows that hold only a lease (a first refresh that never stored) go: the previous application
-- needs a token in every row. Row-level security is forced on the table, so a schema owner that
-- is not a superuser would see no rows: it is lifted for the one statement, inside this
-- transaction (which holds the table's exclusive lock, so nothing else runs under it).
alter table oauth_tokens no force row level security;
delete from oauth_tokens where access_token is null;
alter table oauth_tokens force row level security;

-- Every remaining row has both (the check said so).
-- squawk-ignore adding-not-nullable-field
alter table oauth_tokens alter column expires_at set not null;
-- squawk-ignore adding-not-nullable-field
alter table oauth_tokens alter column access_token set not null;
-- The two NOT NULLs just set guarantee more than the check did.
-- squawk-ignore ban-drop-constraint
alter table oauth_tokens drop constraint oauth_tokens_token_with_expiry;
alter table oauth_tokens drop column refresh_lease_until;
alter table oauth_tokens drop column refreshing_by;

comment on table oauth_tokens is
    'The current OAuth2 access token of each oauth2 credential, shared by all processes (refreshed under a row '
    'lock on tool_credentials).';
comment on column oauth_tokens.access_token is null;
comment on column oauth_tokens.expires_at is 'When the provider said the token expires; refreshed 30 s before.';
