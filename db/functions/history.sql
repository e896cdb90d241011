-- The run history's monthly partitions: made ahead, isolated, dropped past retention.
--
-- The current source of these functions (db/functions/README.md says how to change one).

create or replace function tolstoy_history_month(at timestamptz) returns date
language sql immutable as $$
    select date_trunc('month', at at time zone 'UTC')::date
$$;

comment on function tolstoy_history_month(timestamptz) is
    'The month (first day, UTC) a run created at this time counts its stored bytes in.';

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

comment on function tolstoy_ensure_partitions(date, integer) is
    'Creates the missing monthly partitions of the run history tables for months starting at first_month, '
    'each with row-level security like its parent; runs as tolstoy_history, their owner.';

create or replace function tolstoy_isolate_partition(partition regclass) returns void
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

create or replace function tolstoy_maintain_history(today date, retention_days integer, months_ahead integer)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    cutoff date;
    created integer;
    dropped text[] := '{}';
    kept text[] := '{}';
    part record;
    busy boolean;
begin
    -- A day after today would let the caller drop history that is not yet past retention.
    if today is null or today > clock_now::date or months_ahead < 0 or months_ahead > 24 or retention_days < 1 then
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

comment on function tolstoy_maintain_history(date, integer, integer) is
    'Creates monthly history partitions ahead and drops those older than retention_days (null: keep all); '
    'returns {created, dropped, kept}.';

create or replace function tolstoy_log_of_no_run(l execution_logs) returns boolean
language sql immutable as $$
    select l.source = 'client' or l.flow_id is null
$$;

comment on function tolstoy_log_of_no_run(execution_logs) is
    'Whether an execution log row belongs to no run: a client wrote it (whatever execution id it names) or it names '
    'no flow (a direct action call). Such rows count in stored bytes when written; a run''s own, when it finishes.';
