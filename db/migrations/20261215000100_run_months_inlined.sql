-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Every lookup of a run by id bounds created_at by the run's month (tolstoy_run_from/until), in the
-- checkpoint, the claim and the API's queries. Declared strict, these SQL functions were never inlined
-- (PostgreSQL inlines a strict function only when its body is strict, and coalesce is not): each call
-- went through the SQL-function executor, about 45 µs, two or three calls a lookup, where the inlined
-- expression costs about 1 µs (docs/performance.md, "What PostgreSQL does per run"). Not strict now,
-- with the same answer for a null id (null), so the planner inlines them.
create or replace function tolstoy_run_epoch(id uuid) returns double precision
language sql immutable parallel safe as $$
    -- Null for a null id, as a strict function would be (every branch reads the id).
    select case when get_byte(uuid_send(id), 6) >> 4 = 7 then
        least(((get_byte(uuid_send(id), 0)::bigint << 40) | (get_byte(uuid_send(id), 1)::bigint << 32)
               | (get_byte(uuid_send(id), 2)::bigint << 24) | (get_byte(uuid_send(id), 3)::bigint << 16)
               | (get_byte(uuid_send(id), 4)::bigint << 8) | get_byte(uuid_send(id), 5)::bigint) * 1000
              + least(((get_byte(uuid_send(id), 6) & 15) << 8) | get_byte(uuid_send(id), 7), 999),
              253402300799000000)::double precision / 1000000
    end
$$;

comment on function tolstoy_run_epoch(uuid) is
    'The time (seconds since 1970) a run id made by tolstoy_new_run_id carries; null for any other id. Not '
    'strict, so that queries inline it.';

create or replace function tolstoy_run_from(id uuid) returns timestamptz
language sql immutable parallel safe as $$
    select case when id is not null then to_timestamp(coalesce(tolstoy_run_epoch(id) - 1, '-infinity'::double precision)) end
$$;

comment on function tolstoy_run_from(uuid) is
    'The earliest created_at the run with this id can have (its id''s time less a second; -infinity for an id '
    'without one; null for null): lookups by id add created_at between tolstoy_run_from(id) and '
    'tolstoy_run_until(id). Not strict, so that queries inline it.';

create or replace function tolstoy_run_until(id uuid) returns timestamptz
language sql immutable parallel safe as $$
    select case when id is not null then to_timestamp(coalesce(tolstoy_run_epoch(id) + 1, 'infinity'::double precision)) end
$$;

comment on function tolstoy_run_until(uuid) is
    'The latest created_at the run with this id can have (its id''s time plus a second; infinity for an id '
    'without one; null for null). Not strict, so that queries inline it.';

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create or replace function tolstoy_run_epoch(id uuid) returns double precision
language sql immutable strict parallel safe as $$
    select case when get_byte(uuid_send(id), 6) >> 4 = 7 then
        least(((get_byte(uuid_send(id), 0)::bigint << 40) | (get_byte(uuid_send(id), 1)::bigint << 32)
               | (get_byte(uuid_send(id), 2)::bigint << 24) | (get_byte(uuid_send(id), 3)::bigint << 16)
               | (get_byte(uuid_send(id), 4)::bigint << 8) | get_byte(uuid_send(id), 5)::bigint) * 1000
              + least(((get_byte(uuid_send(id), 6) & 15) << 8) | get_byte(uuid_send(id), 7), 999),
              253402300799000000)::double precision / 1000000
    end
$$;

comment on function tolstoy_run_epoch(uuid) is
    'The time (seconds since 1970) a run id made by tolstoy_new_run_id carries; null for any other id.';

create or replace function tolstoy_run_from(id uuid) returns timestamptz
language sql immutable strict parallel safe as $$
    select to_timestamp(coalesce(tolstoy_run_epoch(id) - 1, '-infinity'::double precision))
$$;

comment on function tolstoy_run_from(uuid) is
    'The earliest created_at the run with this id can have (its id''s time less a second; -infinity for an id '
    'without one): lookups by id add created_at between tolstoy_run_from(id) and tolstoy_run_until(id).';

create or replace function tolstoy_run_until(id uuid) returns timestamptz
language sql immutable strict parallel safe as $$
    select to_timestamp(coalesce(tolstoy_run_epoch(id) + 1, 'infinity'::double precision))
$$;

comment on function tolstoy_run_until(uuid) is
    'The latest created_at the run with this id can have (its id''s time plus a second; infinity for an id '
    'without one).';
