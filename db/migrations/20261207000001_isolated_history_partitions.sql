-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '300s';

-- Every relation is isolated, the run history's monthly partitions too.
--
-- 1. Row-level security was enabled and forced on the three partitioned
--    tables only. A query that names a partition (flow_runs_p2026_12,
--    execution_logs_default, ...) is checked against the partition's own
--    settings, which were off, while db/grants.sql granted on every table: the
--    services could read and change every organization's history through a
--    partition's name. Now every partition has row-level security enabled and
--    forced with the same tenant_isolation policy as its parent, and
--    tolstoy_ensure_partitions does the same for each partition it makes, so
--    months made later are born isolated (tolstoy_isolate_partition, one
--    place). db/grants.sql no longer grants anything on a partition either:
--    the services reach history through the parent tables only.
--
-- 2. The history upkeep (tolstoy_maintain_history) ran as whoever migrated the
--    schema, often a superuser. Now a role that cannot log in,
--    tolstoy_history, owns the three history tables and their partitions
--    (only an owner may create or drop a partition) and the two functions that
--    make and drop them, which run as it (security definer, search_path
--    pinned). The migrating role becomes a member, so later migrations can
--    still change those tables.
--
-- 3. Under forced row-level security the upkeep's question "does this month
--    still hold an unfinished run?" would see no organization's rows (it acts
--    for none) and drop months holding live runs. tolstoy_history gets its own
--    policy on the partitions it keeps instead (history_upkeep): it may read,
--    and only read, every organization's rows of a month (so may its members:
--    the migrating role, for a DBA's checks in docs/deploying.md). We chose an
--    explicit policy over BYPASSRLS: a policy names the tables and the one
--    command it opens, and shows in the catalog next to the others
--    (tests/db/test_catalog.py reviews them all); BYPASSRLS would open every
--    table, and only a superuser may grant it.

do $$
begin
    if not exists (select from pg_roles where rolname = 'tolstoy_history') then
        create role tolstoy_history nologin;
    end if;
    -- The migrating role may then alter the history tables it no longer owns.
    if not pg_has_role(current_user, 'tolstoy_history', 'usage') then
        grant tolstoy_history to current_user;
    end if;
end;
$$;

-- Making a partition is creating a table in the schema.
grant usage, create on schema public to tolstoy_history;

-- ---- one way to isolate a partition --------------------------------------------------

create function tolstoy_isolate_partition(partition regclass) returns void
language plpgsql set search_path = public, pg_temp as $$
declare
    parent text := (select p.relname from pg_inherits i join pg_class p on p.oid = i.inhparent
                    where i.inhrelid = partition);
begin
    if parent not in ('flow_runs', 'flow_run_steps', 'execution_logs') then
        raise exception 'tolstoy_isolate_partition: % is not a run history partition', partition
            using errcode = 'invalid_parameter_value';
    end if;
    execute format('alter table %s enable row level security', partition);
    execute format('alter table %s force row level security', partition);
    if not exists (select from pg_policy where polrelid = partition and polname = 'tenant_isolation') then
        execute format('create policy tenant_isolation on %s using (org_id = tolstoy_current_org()) '
                       'with check (org_id = tolstoy_current_org())', partition);
    end if;
    if not exists (select from pg_policy where polrelid = partition and polname = 'history_upkeep') then
        execute format('create policy history_upkeep on %s for select to tolstoy_history using (true)', partition);
    end if;
end;
$$;

comment on function tolstoy_isolate_partition(regclass) is
    'Enables and forces row-level security on a run history partition with the tenant_isolation policy of '
    'its parent, and the history upkeep''s read-only policy (history_upkeep, for tolstoy_history).';

-- Run by tolstoy_ensure_partitions as tolstoy_history, and by this migration.
alter function tolstoy_isolate_partition(regclass) owner to tolstoy_history;
revoke execute on function tolstoy_isolate_partition(regclass) from public;

-- ---- the history tables change hands and their partitions are isolated ------------

do $$
declare
    history record;
begin
    for history in
        select c.oid::regclass as relation, c.relispartition as partition
        from pg_class c
        where c.oid in ('flow_runs'::regclass, 'flow_run_steps'::regclass, 'execution_logs'::regclass)
           or c.oid in (select i.inhrelid from pg_inherits i
                        where i.inhparent in ('flow_runs'::regclass, 'flow_run_steps'::regclass,
                                              'execution_logs'::regclass))
        order by c.relispartition
    loop
        execute format('alter table %s owner to tolstoy_history', history.relation);
        if history.partition then
            perform tolstoy_isolate_partition(history.relation);
        end if;
    end loop;
end;
$$;

-- ---- the functions that make and drop partitions ------------------------------------

-- One partition per month of each history table, named <table>_pYYYY_MM, isolated
-- like its parent, owned by tolstoy_history whoever calls (a DBA may).
create or replace function tolstoy_ensure_partitions(first_month date, months integer) returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    parent text;
    month date;
    name text;
    created integer := 0;
begin
    if first_month is null or months is null or months < 0 or months > 1200 then
        raise exception 'tolstoy_ensure_partitions: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    foreach parent in array array['flow_runs', 'flow_run_steps', 'execution_logs'] loop
        for i in 0 .. months - 1 loop
            month := date_trunc('month', first_month)::date + make_interval(months => i);
            name := format('%s_p%s', parent, to_char(month, 'YYYY_MM'));
            if to_regclass(name) is null then
                execute format('create table %I partition of %I for values from (%L) to (%L)',
                               name, parent, month::timestamptz, (month + interval '1 month')::timestamptz);
                perform tolstoy_isolate_partition(name::regclass);
                created := created + 1;
            end if;
        end loop;
    end loop;
    return created;
end;
$$;

-- Retention, as 20261201000009 left it, now running as tolstoy_history: its
-- busy check reads a month's runs through the history_upkeep policy.
create or replace function tolstoy_maintain_history(today date, retention_days integer, months_ahead integer)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    cutoff date;
    created integer;
    dropped text[] := '{}';
    kept text[] := '{}';
    part record;
    busy boolean;
begin
    -- A day after today would let the caller drop history that is not yet past retention.
    if today is null or today > current_date or months_ahead < 0 or months_ahead > 24 or retention_days < 1 then
        raise exception 'tolstoy_maintain_history: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    if not pg_try_advisory_xact_lock(hashtextextended('tolstoy_maintain_history', 0)) then
        return jsonb_build_object('skipped', true);
    end if;
    -- Waiting behind live traffic is worse than trying again at the next tick.
    perform set_config('lock_timeout', '5s', true);
    created := tolstoy_ensure_partitions(date_trunc('month', today)::date, months_ahead + 1);
    if retention_days is not null then
        cutoff := today - retention_days;
        for part in
            select c.relname, to_date(substring(c.relname from '_p(\d{4}_\d{2})$'), 'YYYY_MM') as month,
                   p.relname as parent
            from pg_inherits i
            join pg_class c on c.oid = i.inhrelid
            join pg_class p on p.oid = i.inhparent
            where p.relname in ('flow_runs', 'execution_logs') and c.relname ~ '_p\d{4}_\d{2}$'
            order by 2
        loop
            continue when (part.month + interval '1 month')::date > cutoff;
            if part.parent = 'flow_runs' then
                execute format('select exists (select 1 from %I where status in (''queued'', ''running'', ''waiting''))',
                               part.relname) into busy;
                if busy then
                    kept := kept || part.relname;
                    continue;
                end if;
                execute format('drop table if exists %I', 'flow_run_steps_p' || to_char(part.month, 'YYYY_MM'));
                dropped := dropped || ('flow_run_steps_p' || to_char(part.month, 'YYYY_MM'));
            end if;
            execute format('drop table %I', part.relname);
            dropped := dropped || part.relname;
        end loop;
    end if;
    return jsonb_build_object('created', created, 'dropped', to_jsonb(dropped), 'kept', to_jsonb(kept));
end;
$$;

alter function tolstoy_ensure_partitions(date, integer) owner to tolstoy_history;
alter function tolstoy_maintain_history(date, integer, integer) owner to tolstoy_history;
-- Only tolstoy_worker runs the upkeep (db/grants.sql); making partitions is the owner's (and a DBA's).
revoke execute on function tolstoy_ensure_partitions(date, integer) from public;
revoke execute on function tolstoy_maintain_history(date, integer, integer) from public;

comment on function tolstoy_ensure_partitions(date, integer) is
    'Creates the missing monthly partitions of the run history tables for months starting at first_month, '
    'each with row-level security like its parent; runs as tolstoy_history, their owner.';

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '300s';

create or replace function tolstoy_maintain_history(today date, retention_days integer, months_ahead integer)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    cutoff date;
    created integer;
    dropped text[] := '{}';
    kept text[] := '{}';
    part record;
    busy boolean;
begin
    -- A day after today would let the caller drop history that is not yet past retention.
    if today is null or today > current_date or months_ahead < 0 or months_ahead > 24 or retention_days < 1 then
        raise exception 'tolstoy_maintain_history: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    if not pg_try_advisory_xact_lock(hashtextextended('tolstoy_maintain_history', 0)) then
        return jsonb_build_object('skipped', true);
    end if;
    -- Waiting behind live traffic is worse than trying again at the next tick.
    perform set_config('lock_timeout', '5s', true);
    created := tolstoy_ensure_partitions(date_trunc('month', today)::date, months_ahead + 1);
    if retention_days is not null then
        cutoff := today - retention_days;
        for part in
            select c.relname, to_date(substring(c.relname from '_p(\d{4}_\d{2})$'), 'YYYY_MM') as month,
                   p.relname as parent
            from pg_inherits i
            join pg_class c on c.oid = i.inhrelid
            join pg_class p on p.oid = i.inhparent
            where p.relname in ('flow_runs', 'execution_logs') and c.relname ~ '_p\d{4}_\d{2}$'
            order by 2
        loop
            continue when (part.month + interval '1 month')::date > cutoff;
            if part.parent = 'flow_runs' then
                execute format('select exists (select 1 from %I where status in (''queued'', ''running'', ''waiting''))',
                               part.relname) into busy;
                if busy then
                    kept := kept || part.relname;
                    continue;
                end if;
                execute format('drop table if exists %I', 'flow_run_steps_p' || to_char(part.month, 'YYYY_MM'));
                dropped := dropped || ('flow_run_steps_p' || to_char(part.month, 'YYYY_MM'));
            end if;
            execute format('drop table %I', part.relname);
            dropped := dropped || part.relname;
        end loop;
    end if;
    return jsonb_build_object('created', created, 'dropped', to_jsonb(dropped), 'kept', to_jsonb(kept));
end;
$$;

-- As 20261201000002 made it: security invoker, without row-level security on what it makes.
create or replace function tolstoy_ensure_partitions(first_month date, months integer) returns integer
language plpgsql as $$
declare
    parent text;
    month date;
    name text;
    created integer := 0;
begin
    foreach parent in array array['flow_runs', 'flow_run_steps', 'execution_logs'] loop
        for i in 0 .. months - 1 loop
            month := date_trunc('month', first_month)::date + make_interval(months => i);
            name := format('%s_p%s', parent, to_char(month, 'YYYY_MM'));
            if to_regclass(name) is null then
                execute format('create table %I partition of %I for values from (%L) to (%L)',
                               name, parent, month::timestamptz, (month + interval '1 month')::timestamptz);
                created := created + 1;
            end if;
        end loop;
    end loop;
    return created;
end;
$$;

comment on function tolstoy_ensure_partitions(date, integer) is
    'Creates the missing monthly partitions of the run history tables for months starting at first_month.';

alter function tolstoy_ensure_partitions(date, integer) owner to current_user;
alter function tolstoy_maintain_history(date, integer, integer) owner to current_user;

-- The history goes back to the migrating role, its partitions without row-level security.
do $$
declare
    history record;
begin
    for history in
        select c.oid::regclass as relation, c.relispartition as partition
        from pg_class c
        where c.oid in ('flow_runs'::regclass, 'flow_run_steps'::regclass, 'execution_logs'::regclass)
           or c.oid in (select i.inhrelid from pg_inherits i
                        where i.inhparent in ('flow_runs'::regclass, 'flow_run_steps'::regclass,
                                              'execution_logs'::regclass))
    loop
        if history.partition then
            execute format('drop policy if exists history_upkeep on %s', history.relation);
            execute format('drop policy if exists tenant_isolation on %s', history.relation);
            execute format('alter table %s no force row level security', history.relation);
            execute format('alter table %s disable row level security', history.relation);
        end if;
        execute format('alter table %s owner to current_user', history.relation);
    end loop;
end;
$$;

drop function tolstoy_isolate_partition(regclass);
revoke usage, create on schema public from tolstoy_history;
-- The role stays (roles belong to the cluster; other databases may use it), as does the
-- migrating role's membership.
