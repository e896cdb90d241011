-- Statements on a server the project runs itself (the embedded PostgreSQL of
-- `tolstoy dev`, the tests'), run by tolstoy/db/migrate.py as its superuser on
-- the maintenance database before any migration; nothing tenant-related.

-- name: ensure_owner!
-- The schema owner role (tolstoy_owner): it logs in to migrate and creates the
-- services' roles (CREATEROLE); it is no superuser and cannot bypass row-level security.
-- The roles whose members the migrations make it (they may exist already, made by
-- another database of the server) are granted to it with the admin option.
do $$
declare
    member text;
begin
    if not exists (select from pg_roles where rolname = 'tolstoy_owner') then
        create role tolstoy_owner login createrole;
    end if;
    for member in
        select rolname from pg_roles where rolname in ('tolstoy_engine', 'tolstoy_history', 'tolstoy_admin')
    loop
        execute 'grant ' || quote_ident(member) || ' to tolstoy_owner with admin option';
    end loop;
end;
$$;

-- name: database_owner$
-- The role that owns a database (none when there is no such database).
select r.rolname
from pg_database d
join pg_roles r on r.oid = d.datdba
where d.datname = :name;
