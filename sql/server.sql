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

-- name: unbuilt_partition_indexes
-- Indexes declared on a partitioned table that are not valid yet (CREATE INDEX … ON ONLY: valid
-- once every partition has its own attached), each with a partition that has none attached, and
-- whether an index of the name that partition's would get exists already (a build that failed
-- leaves an invalid one behind): what tolstoy/db/migrate.py build_partition_indexes builds,
-- concurrently, and attaches. The name is the partition's name and the parent index's name
-- after its table's, cut to PostgreSQL's 63 bytes.
with unbuilt as (
    select ic.relname as parent_index_name, n.oid as namespace, n.nspname as schema,
           part.relname as partition_name, part.relkind as partition_kind,
           pg_get_indexdef(pi.indexrelid) as definition,
           left(part.relname || substr(ic.relname, char_length(tc.relname) + 1), 63) as index_name
    from pg_index pi
    join pg_class ic on ic.oid = pi.indexrelid and ic.relkind = 'I'
    join pg_class tc on tc.oid = pi.indrelid
    join pg_namespace n on n.oid = ic.relnamespace
    join pg_inherits inh on inh.inhparent = pi.indrelid
    join pg_class part on part.oid = inh.inhrelid
    where not pi.indisvalid
      and not exists (select 1
                      from pg_inherits attached
                      join pg_index pix on pix.indexrelid = attached.inhrelid
                      where attached.inhparent = pi.indexrelid and pix.indrelid = part.oid)
)
select u.parent_index_name, u.schema, u.partition_name, u.partition_kind, u.definition, u.index_name,
       (select x.indisvalid
        from pg_class xc
        join pg_index x on x.indexrelid = xc.oid
        where xc.relnamespace = u.namespace and xc.relname = u.index_name) as existing_valid
from unbuilt u
order by u.parent_index_name, u.partition_name;
