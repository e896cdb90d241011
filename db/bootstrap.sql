-- Run by `tolstoy db up` before the migrations, as the role that runs them
-- (DIRECT_URL); idempotent. What the migrations need to exist before they run.
--
-- The migrations hand their cross-tenant functions to tolstoy_engine, a role
-- that cannot log in (20261125000007 onwards). Since PostgreSQL 15 a role may
-- own an object in a schema only with CREATE on that schema, which the public
-- schema no longer gives everyone; a superuser is not asked, but the schema
-- owner role db/README.md recommends (tolstoy_owner, not a superuser) is. The
-- role is made here, before the first migration, with that right: nobody logs
-- in as it, and only the functions it owns run as it.
do $$
begin
    if not exists (select from pg_roles where rolname = 'tolstoy_engine') then
        create role tolstoy_engine nologin;
    end if;
end;
$$;

grant usage, create on schema public to tolstoy_engine;
