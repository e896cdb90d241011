-- The database's clock: every time-based decision of the functions (leases, run_after, wake_at,
-- timeouts, schedules, retention) reads tolstoy_now() rather than now().
--
-- The current source of these functions (db/functions/README.md says how to change one).

create or replace function tolstoy_now() returns timestamptz
language plpgsql stable security definer set search_path = public, pg_temp as $$
begin
    return (
        -- now() (the transaction's start), moved by what tolstoy_clock says: nothing in production.
        select now() + (select c.ahead from tolstoy_clock c));
end;
$$;

comment on function tolstoy_now() is
    'The database''s clock for every time-based decision: now() plus tolstoy_clock.ahead (zero in production; '
    'only the schema owner may move it, for tests). Stable within a transaction, as now() is.';

create or replace function tolstoy_clock_timestamp() returns timestamptz
language plpgsql volatile security definer set search_path = public, pg_temp as $$
begin
    return (
        select clock_timestamp() + (select c.ahead from tolstoy_clock c));
end;
$$;

comment on function tolstoy_clock_timestamp() is
    'clock_timestamp() moved as tolstoy_now() is: the time as the statement runs (a lease taken late in a long '
    'claim, the order of steps checkpointed together).';
