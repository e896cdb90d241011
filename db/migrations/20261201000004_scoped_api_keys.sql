-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- API keys carry scopes and may expire.
--
-- scopes: what a key may do. read (GET), write (create, change, delete), execute
-- (start, cancel, retry and resolve runs; execute actions), admin (the
-- organization's own API keys). Keys made before this migration keep every
-- scope, so nothing that works today stops working. The API checks the scope of
-- each request before its first query (the scopes of a key never change).
--
-- expires_at: after it the key is refused like a revoked one (401), checked by
-- every unit of work in tolstoy_enter_key.

alter table api_keys
    add column scopes text[] not null default '{read,write,execute,admin}',
    add column expires_at timestamptz;

-- Checked at once: api_keys holds a few rows per organization, so the scan is
-- short, and lock_timeout above bounds the wait (NOT VALID + VALIDATE in one
-- dbmate transaction would hold the same lock anyway).
-- squawk-ignore constraint-missing-not-valid
alter table api_keys add constraint api_keys_scopes_known
    check (cardinality(scopes) between 1 and 4 and scopes <@ '{read,write,execute,admin}'::text[]);
-- squawk-ignore constraint-missing-not-valid
alter table api_keys add constraint api_keys_expires_after_creation
    check (expires_at is null or expires_at > created_at);

comment on column api_keys.scopes is 'What the key may do: read, write, execute, admin (its organization''s keys).';
comment on column api_keys.expires_at is 'When the key stops working (null: never); checked by tolstoy_enter_key.';

-- The same as before, and an expired key is refused like a revoked one.
create or replace function tolstoy_enter_key(hash bytea, acting_user uuid, timeout_ms integer) returns uuid
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    found uuid;
begin
    perform set_config('statement_timeout', timeout_ms::text || 'ms', true);
    select k.org_id into found
    from api_keys k
    where k.key_hash = hash and k.revoked_at is null and (k.expires_at is null or k.expires_at > now());
    if found is null then
        raise exception 'The API key is not valid, has expired or has been revoked.' using errcode = 'TS003';
    end if;
    -- Recorded at most once a minute, so authentication stays a read.
    update api_keys k
    set last_used_at = now()
    where k.key_hash = hash
      and (k.last_used_at is null or k.last_used_at < now() - interval '1 minute');
    perform set_config('app.org_id', found::text, true);
    if acting_user is not null and not exists (select 1 from users u where u.org_id = found and u.id = acting_user) then
        raise exception 'Not a user of this organization.' using errcode = 'TS002';
    end if;
    return found;
end;
$$;

-- What a key grants: its organization and scopes, read once per key and process
-- (they never change); TS003 like tolstoy_enter_key for a key that cannot be used.
create function tolstoy_key_grant(hash bytea)
returns table (org_id uuid, scopes text[])
language plpgsql stable security definer set search_path = public, pg_temp as $$
begin
    return query
    select k.org_id, k.scopes
    from api_keys k
    where k.key_hash = hash and k.revoked_at is null and (k.expires_at is null or k.expires_at > now());
    if not found then
        raise exception 'The API key is not valid, has expired or has been revoked.' using errcode = 'TS003';
    end if;
end;
$$;

comment on function tolstoy_key_grant(bytea) is
    'The organization and scopes of a usable API key (TS003 otherwise); the API caches them per key.';

alter function tolstoy_key_grant(bytea) owner to tolstoy_engine;
revoke execute on function tolstoy_key_grant(bytea) from public;

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop function tolstoy_key_grant(bytea);

create or replace function tolstoy_enter_key(hash bytea, acting_user uuid, timeout_ms integer) returns uuid
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    found uuid;
begin
    perform set_config('statement_timeout', timeout_ms::text || 'ms', true);
    select k.org_id into found
    from api_keys k
    where k.key_hash = hash and k.revoked_at is null;
    if found is null then
        raise exception 'The API key is not valid or has been revoked.' using errcode = 'TS003';
    end if;
    -- Recorded at most once a minute, so authentication stays a read.
    update api_keys k
    set last_used_at = now()
    where k.key_hash = hash
      and (k.last_used_at is null or k.last_used_at < now() - interval '1 minute');
    perform set_config('app.org_id', found::text, true);
    if acting_user is not null and not exists (select 1 from users u where u.org_id = found and u.id = acting_user) then
        raise exception 'Not a user of this organization.' using errcode = 'TS002';
    end if;
    return found;
end;
$$;

-- The check constraints go with their columns.
alter table api_keys
    drop column expires_at,
    drop column scopes;
