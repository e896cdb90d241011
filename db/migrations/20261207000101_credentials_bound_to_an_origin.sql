-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Credentials bound to an origin (issue 19, row 8). A key with the write scope could
-- change a tool's baseUrl to a host it controls, and the next call carried the tool's
-- stored credential there. Now each stored credential and each user's connection
-- remembers the base URL of its tool when it was stored (origin_url): the engine sends
-- it only to that URL's origin (scheme, host, port), and the API refuses to move a tool
-- to another origin (409) unless the same request deletes them (dropCredentials).
--
-- The binding is the database's: a trigger copies the tool's base_url into every new
-- row, whatever the statement says, so no caller chooses it. It reads the tool row
-- with FOR KEY SHARE, the lock the foreign key check takes a moment later anyway: a
-- credential stored while another transaction moves the tool waits for it and is
-- bound to where the tool ends up (and that transaction, had it locked the tool
-- first, sees the credential and refuses the move).

create function tolstoy_bind_to_tool_origin() returns trigger
language plpgsql set search_path = public, pg_temp as $$
begin
    select base_url into new.origin_url
    from tools
    where org_id = new.org_id and id = new.tool_id
    for key share;
    return new;
end;
$$;

comment on function tolstoy_bind_to_tool_origin() is
    'BEFORE INSERT trigger of tool_credentials and user_connections: origin_url := the tool''s base_url now.';

-- Small tables (an organization's credentials and its users' connections); the columns are
-- nullable until filled, so adding them rewrites nothing.
alter table tool_credentials add column origin_url text;
alter table user_connections add column origin_url text;

comment on column tool_credentials.origin_url is
    'The tool''s base URL when the credential was stored: the engine sends the credential only to its origin.';
comment on column user_connections.origin_url is
    'The tool''s base URL when the user connected it: the engine sends the user''s tokens only to its origin.';

-- Existing rows are bound to their tool's base URL as it is now. Row-level security is
-- forced on these tables, so a schema owner that is not a superuser would see no rows:
-- it is lifted for the two statements, inside this transaction (which holds the tables'
-- exclusive locks, so nothing else runs under the lifted policy).
alter table tools no force row level security;
alter table tool_credentials no force row level security;
alter table user_connections no force row level security;

update tool_credentials c
set origin_url = t.base_url
from tools t
where t.org_id = c.org_id and t.id = c.tool_id;

update user_connections c
set origin_url = t.base_url
from tools t
where t.org_id = c.org_id and t.id = c.tool_id;

alter table tools force row level security;
alter table tool_credentials force row level security;
alter table user_connections force row level security;

-- Every row has its tool (composite foreign keys), so every row was filled above.
-- squawk-ignore adding-not-nullable-field
alter table tool_credentials alter column origin_url set not null;
-- squawk-ignore adding-not-nullable-field
alter table user_connections alter column origin_url set not null;

create trigger tool_credentials_bind_to_tool_origin
before insert on tool_credentials
for each row execute function tolstoy_bind_to_tool_origin();

create trigger user_connections_bind_to_tool_origin
before insert on user_connections
for each row execute function tolstoy_bind_to_tool_origin();

-- Privileges: unchanged (the trigger runs as the inserting role, which reads tools under
-- row-level security; FOR KEY SHARE needs its UPDATE privilege on tools: tolstoy_app, the
-- only role that stores credentials and connections, has it).

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- The previous application neither sets nor reads the binding.
drop trigger user_connections_bind_to_tool_origin on user_connections;
drop trigger tool_credentials_bind_to_tool_origin on tool_credentials;
alter table user_connections drop column origin_url;
alter table tool_credentials drop column origin_url;
drop function tolstoy_bind_to_tool_origin();
