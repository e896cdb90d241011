-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Shared trigger function: the database, not the application, owns updated_at.
-- It only moves when a column really changed, so an update that changes
-- nothing leaves updated_at (and therefore the record's ETag) alone.
create function tolstoy_touch_updated_at() returns trigger
language plpgsql as $$
begin
    if row(new.*) is distinct from row(old.*) then
        new.updated_at := now();
    else
        new.updated_at := old.updated_at;
    end if;
    return new;
end;
$$;

comment on function tolstoy_touch_updated_at() is
    'BEFORE UPDATE trigger: sets updated_at to now() when any column changed, keeps it otherwise.';

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop function tolstoy_touch_updated_at();
