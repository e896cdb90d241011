-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- The admin path is a role, not a switch the service can flip.
--
-- Until now every organization was visible to a transaction that had set
-- app.admin = 'on' (policy admin_all, tolstoy_is_admin, tolstoy_enter_admin).
-- Any role may set any custom setting, so tolstoy_app could run
-- select set_config('app.admin', 'on', true) itself and read every
-- organization. Now the policy names a role instead of trusting a setting:
-- tolstoy_admin, a login role of its own that the API uses (ADMIN_DATABASE_URL,
-- a small pool) only for the /organizations routes' cross-tenant operations:
-- list all, create, and get, change or delete one by id. It may touch
-- organizations and the first API key of one it creates (db/grants.sql), and
-- nothing of any tenant. An organization's own API key still reads and renames
-- its own organization as tolstoy_app, under own_organization.
--
-- organizations' row-level security is forced as well, like every tenant
-- table's: the migrating role (which owns it) is made a member of
-- tolstoy_admin, so `tolstoy secrets` (run as the owner) still walks every
-- organization, and the seed acts for its organization.
--
-- tolstoy_enter_admin is dropped: the release still serving during a deploy
-- answers its cross-tenant /organizations requests with errors until the new
-- release starts (tenant routes are unaffected). Nothing can keep that path
-- working without keeping the hole open.

do $$
begin
    if not exists (select from pg_roles where rolname = 'tolstoy_admin') then
        create role tolstoy_admin login;
    end if;
    if not pg_has_role(current_user, 'tolstoy_admin', 'usage') then
        grant tolstoy_admin to current_user;
    end if;
end;
$$;

drop policy admin_all on organizations;
-- squawk-ignore ban-drop-function
drop function tolstoy_enter_admin(integer);
-- squawk-ignore ban-drop-function
drop function tolstoy_is_admin();

create policy admin_all on organizations to tolstoy_admin using (true) with check (true);
alter table organizations force row level security;

comment on policy admin_all on organizations is
    'The admin login (tolstoy_admin: the /organizations routes'' cross-tenant operations) sees every organization.';

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

alter table organizations no force row level security;
drop policy admin_all on organizations;

create function tolstoy_is_admin() returns boolean
language sql stable as $$
    select coalesce(current_setting('app.admin', true), '') = 'on' and tolstoy_current_org() is null
$$;

comment on function tolstoy_is_admin() is
    'True in a transaction opened by tolstoy_enter_admin (the /organizations routes) while it acts for no '
    'organization: it may see every organization.';

create function tolstoy_enter_admin(timeout_ms integer) returns void
language plpgsql as $$
begin
    perform set_config('statement_timeout', timeout_ms::text || 'ms', true);
    perform set_config('app.org_id', '', true);
    perform set_config('app.admin', 'on', true);
end;
$$;

comment on function tolstoy_enter_admin(integer) is
    'Opens a unit of work that manages organizations themselves: no tenant, every organization row visible.';

create policy admin_all on organizations
    using (tolstoy_is_admin()) with check (tolstoy_is_admin());

-- The grants of tolstoy_admin go from this database; the role stays (it belongs to the cluster).
do $$
begin
    if exists (select from pg_roles where rolname = 'tolstoy_admin') then
        execute format('revoke all on database %I from tolstoy_admin', current_database());
        revoke all on all tables in schema public from tolstoy_admin;
        revoke all on all sequences in schema public from tolstoy_admin;
        revoke all on all functions in schema public from tolstoy_admin;
        revoke all on schema public from tolstoy_admin;
    end if;
end;
$$;
