-- Signals for wait steps (approvals, events): taken under the run's lock, pruned once consumed.
--
-- The current source of these functions (db/functions/README.md says how to change one).

create or replace function tolstoy_take_signal(org uuid, run uuid, step text, signal_name text)
returns table (id uuid, payload jsonb, approver text, user_id uuid, created_at timestamptz)
language plpgsql as $$
begin
    perform 1 from flow_runs r
    where r.org_id = org and r.id = run and r.created_at between tolstoy_run_from(run) and tolstoy_run_until(run)
    for update;
    -- A new statement, so a new snapshot: it sees a signal committed while this waited for the lock.
    return query
    update flow_run_signals s
    set step_id = step, consumed_at = coalesce(s.consumed_at, now())
    where s.org_id = org and s.id = (
        select p.id from flow_run_signals p
        where p.org_id = org and p.run_id = run and p.signal = signal_name
          and (p.step_id is null or p.step_id = step)
        order by p.step_id is null, p.created_at
        limit 1
        for update)
    returning s.id, s.payload, s.approver, s.user_id, s.created_at;
end;
$$;

comment on function tolstoy_take_signal(uuid, uuid, text, text) is
    'A wait step''s signal: locks the run, then takes the oldest pending signal of the name (or the one the '
    'step took before); no row when none is pending.';

create or replace function tolstoy_prune_signals(retention_days integer, batch integer)
returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    pruned integer;
begin
    if retention_days < 1 or batch is null or batch < 1 or batch > 100000 then
        raise exception 'tolstoy_prune_signals: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    if retention_days is null then
        return 0;
    end if;
    delete from flow_run_signals g
    where (g.org_id, g.id) in (
        select s.org_id, s.id from flow_run_signals s
        where s.created_at < clock_now - make_interval(days => retention_days)
          and not exists (select 1 from flow_runs r
                          where r.org_id = s.org_id and r.id = s.run_id
                            and r.created_at between tolstoy_run_from(s.run_id) and tolstoy_run_until(s.run_id))
        limit batch);
    get diagnostics pruned = row_count;
    return pruned;
end;
$$;

comment on function tolstoy_prune_signals(integer, integer) is
    'Deletes up to batch signals older than retention_days whose run is gone (its partition was dropped).';
