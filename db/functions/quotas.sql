-- Quotas per organization: the defaults, admission of a new run (TQ001, TQ002), stored bytes.
--
-- The current source of these functions (db/functions/README.md says how to change one).

create or replace function tolstoy_quota_defaults() returns jsonb
language sql stable as $$
    select nullif(current_setting('tolstoy.quotas', true), '')::jsonb
$$;

comment on function tolstoy_quota_defaults() is
    'The configured quota defaults the services set for this transaction (tolstoy.quotas): '
    '{queuedRuns, storedBytes, retentionDays}, or null.';

create or replace function tolstoy_admit_run(org uuid) returns void
language plpgsql as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    defaults jsonb := tolstoy_quota_defaults();
    quota organization_quotas;
    max_runs integer;
    max_bytes bigint;
    retention integer := (defaults ->> 'retentionDays')::integer;
    held integer;
    deltas integer;
    stored bigint;
begin
    select * into quota from organization_quotas q where q.org_id = org;
    max_runs := coalesce(quota.queued_runs, (defaults ->> 'queuedRuns')::integer);
    max_bytes := coalesce(quota.stored_bytes, (defaults ->> 'storedBytes')::bigint);
    if max_runs is null and max_bytes is null then
        return;
    end if;
    -- One admission of this organization at a time, until the transaction that queues the run ends.
    select u.runs into held from organization_usage u where u.org_id = org for update;
    if not found then
        insert into organization_usage (org_id) values (org) on conflict (org_id) do nothing;
        select u.runs into held from organization_usage u where u.org_id = org for update;
    end if;
    if max_bytes is not null then
        select count(*), greatest(coalesce(sum(h.bytes) filter (
                   where retention is null or (h.month + interval '1 month')::date > clock_now::date - retention), 0), 0)
        into deltas, stored
        from history_bytes h
        where h.org_id = org;
        if deltas > 64 then
            -- Fold the deltas into one row per month still kept (deltas written meanwhile are not
            -- seen, so they stay, and nothing is counted twice).
            with gone as (
                delete from history_bytes h where h.org_id = org returning h.month, h.bytes
            )
            insert into history_bytes (org_id, month, bytes)
            select org, g.month, sum(g.bytes)
            from gone g
            where retention is null or (g.month + interval '1 month')::date > clock_now::date - retention
            group by g.month
            having sum(g.bytes) <> 0;
        end if;
        if stored >= max_bytes then
            raise exception 'The organization stores % bytes of run history, at or over its storedBytes quota (%): '
                            'new runs are refused until retention or a purge of finished runs frees some.',
                            stored, max_bytes
                using errcode = 'TQ002',
                      detail = jsonb_build_object('quota', 'storedBytes', 'limit', max_bytes, 'used', stored)::text;
        end if;
    end if;
    if max_runs is not null then
        if held >= max_runs then
            select count(*) into held
            from flow_runs r
            where r.org_id = org and r.status in ('queued', 'running', 'waiting');
            if held >= max_runs then
                raise exception 'The organization has % runs queued, running or waiting, as many as its queuedRuns '
                                'quota allows (%): new runs are refused until some finish.', held, max_runs
                    using errcode = 'TQ001',
                          detail = jsonb_build_object('quota', 'queuedRuns', 'limit', max_runs, 'used', held)::text;
            end if;
            update organization_usage u set runs = held + 1, counted_at = clock_now where u.org_id = org;
        else
            update organization_usage u set runs = held + 1 where u.org_id = org;
        end if;
    end if;
end;
$$;

comment on function tolstoy_admit_run(uuid) is
    'The quotas a new run of org must pass (queuedRuns: TQ001, storedBytes: TQ002), one admission of org at a time; '
    'tolstoy_queue_run calls it before writing a new run. Acts for org under row-level security.';

create or replace function tolstoy_stored_bytes(org uuid, retention_days integer) returns bigint
language plpgsql stable as $$
begin
    return (
        select greatest(coalesce(sum(h.bytes), 0), 0)::bigint
        from history_bytes h
        where h.org_id = org
          -- tolstoy_maintain_history drops a month once its end is past retention.
          and (retention_days is null or (h.month + interval '1 month')::date > tolstoy_now()::date - retention_days));
end;
$$;

comment on function tolstoy_stored_bytes(uuid, integer) is
    'Bytes of run history an organization stores in the months retention keeps (null: every month).';

create or replace function tolstoy_usage()
returns table (queued_runs bigint, stored_bytes bigint)
language plpgsql stable security definer set search_path = public, pg_temp
set plan_cache_mode = force_generic_plan as $$
declare
    org uuid := tolstoy_current_org();
begin
    if org is null then
        raise exception 'tolstoy_usage: no organization is set' using errcode = 'invalid_parameter_value';
    end if;
    return query
    select (select count(*) from flow_runs r where r.org_id = org and r.status in ('queued', 'running', 'waiting')),
           tolstoy_stored_bytes(org, (tolstoy_quota_defaults() ->> 'retentionDays')::integer);
end;
$$;

comment on function tolstoy_usage() is
    'The current organization''s runs not finished and bytes of run history within retention (security definer: '
    'the admin login reads them without any grant on runs, for the organization it acts for only).';

create or replace function execution_logs_count_stored_bytes() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    -- An AFTER ROW trigger sees the rows as stored (compressed, out of line included), as the purge's
    -- and a run's measures do; RETURNING would show an inserted value uncompressed.
    if tg_op in ('UPDATE', 'DELETE') then
        insert into history_bytes (org_id, month, bytes)
        values (old.org_id, tolstoy_history_month(old.created_at),
                -(pg_column_size(old.inputs) + coalesce(pg_column_size(old.outputs), 0)
                  + coalesce(pg_column_size(old.error), 0)));
    end if;
    if tg_op in ('INSERT', 'UPDATE') then
        insert into history_bytes (org_id, month, bytes)
        values (new.org_id, tolstoy_history_month(new.created_at),
                pg_column_size(new.inputs) + coalesce(pg_column_size(new.outputs), 0)
                + coalesce(pg_column_size(new.error), 0));
    end if;
    return null;
end;
$$;

comment on function execution_logs_count_stored_bytes() is
    'AFTER ROW trigger of the execution log rows that belong to no run (a client''s, a direct action call''s): '
    'what they store counts in their organization''s history_bytes when written, changed or deleted. A run''s own '
    'rows count with the run when it finishes (flow_runs_count_stored_bytes).';

create or replace function flow_runs_count_stored_bytes() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    new.stored_bytes := pg_column_size(new.variables) + pg_column_size(new.plan)
        + coalesce(pg_column_size(new.error), 0)
        + coalesce((select sum(coalesce(pg_column_size(s.inputs), 0) + coalesce(pg_column_size(s.outputs), 0)
                               + coalesce(pg_column_size(s.sealed), 0) + coalesce(pg_column_size(s.error), 0))
                    from flow_run_steps s
                    where s.org_id = new.org_id and s.run_id = new.id and s.run_created_at = new.created_at), 0)
        -- A run's log rows are never older than the run: the bound prunes older months' partitions. A
        -- client's rows count when written (execution_logs_count_stored_bytes), whatever execution id they borrow.
        + coalesce((select sum(pg_column_size(l.inputs) + coalesce(pg_column_size(l.outputs), 0)
                               + coalesce(pg_column_size(l.error), 0))
                    from execution_logs l
                    where l.org_id = new.org_id and l.execution_id = new.id::text
                      and l.created_at >= new.created_at and l.source = 'engine'), 0);
    insert into history_bytes (org_id, month, bytes)
    values (new.org_id, tolstoy_history_month(new.created_at), new.stored_bytes);
    return new;
end;
$$;

comment on function flow_runs_count_stored_bytes() is
    'BEFORE UPDATE OF status trigger of a run that finishes: measures the history it holds (stored_bytes) and adds '
    'it to its organization''s history_bytes. Security definer (tolstoy_engine), so it measures whoever moves the run.';

create or replace function flow_runs_uncount_stored_bytes() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    insert into history_bytes (org_id, month, bytes)
    select g.org_id, tolstoy_history_month(g.created_at), -sum(g.stored_bytes)
    from gone g
    where g.stored_bytes is not null
    group by 1, 2;
    return null;
end;
$$;

comment on function flow_runs_uncount_stored_bytes() is
    'AFTER DELETE statement trigger of flow_runs: deleted runs (the purge of finished ones) give their stored bytes back.';
