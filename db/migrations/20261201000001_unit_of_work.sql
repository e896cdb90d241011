-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- A unit of work (one request, one engine step) opens with one statement that
-- sets what the transaction acts for and checks it. The application sends
-- BEGIN, this call and its first query together (one network round trip), so
-- choosing the tenant costs no round trip of its own; everything is
-- transaction-local (set_config(..., true)), which a transaction-mode pooler
-- such as PgBouncer needs.
--
-- An unknown tenant raises (SQLSTATE TS001 organization, TS002 user, TS003
-- API key), which aborts the whole batch: a write pipelined behind this call
-- never commits for a tenant that does not exist.
--
-- statement_timeout is set here rather than as a connection startup option,
-- which PgBouncer refuses.
create function tolstoy_enter(org uuid, acting_user uuid, timeout_ms integer) returns void
language plpgsql as $$
begin
    perform set_config('statement_timeout', timeout_ms::text || 'ms', true);
    perform set_config('app.org_id', coalesce(org::text, ''), true);
    if org is not null and not exists (select 1 from organizations o where o.id = org) then
        raise exception 'No organization with this id.' using errcode = 'TS001';
    end if;
    -- Row-level security now admits this organization's rows only, so another
    -- organization's user is not found either.
    if acting_user is not null and not exists (select 1 from users u where u.org_id = org and u.id = acting_user) then
        raise exception 'Not a user of this organization.' using errcode = 'TS002';
    end if;
end;
$$;

comment on function tolstoy_enter(uuid, uuid, integer) is
    'Opens a unit of work: sets statement_timeout and app.org_id for this transaction; raises TS001/TS002 '
    'when the organization (or the acting user, when given) does not exist. A null org acts for none.';

-- The same for API-key authentication: the key decides the organization, so
-- the lookup crosses tenants and runs as tolstoy_engine (like
-- tolstoy_authenticate, which it replaces on the request path).
create function tolstoy_enter_key(hash bytea, acting_user uuid, timeout_ms integer) returns uuid
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

comment on function tolstoy_enter_key(bytea, uuid, integer) is
    'Opens a unit of work for the organization of an unrevoked API key hash and returns that organization: '
    'sets statement_timeout and app.org_id, refreshes last_used_at once a minute; raises TS003 for a key '
    'that is unknown or revoked, TS002 for an acting user of another organization.';

-- The user check above reads users as tolstoy_engine; the tenant_isolation
-- policy still confines it to the organization just set.
grant select on users to tolstoy_engine;
alter function tolstoy_enter_key(bytea, uuid, integer) owner to tolstoy_engine;
revoke execute on function tolstoy_enter_key(bytea, uuid, integer) from public;

-- tolstoy_enter_key replaces tolstoy_authenticate on the request path. The old
-- function stays for the release still serving during a deploy (expand, then
-- contract: a later migration drops it).

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop function tolstoy_enter_key(bytea, uuid, integer);
revoke select on users from tolstoy_engine;
drop function tolstoy_enter(uuid, uuid, integer);
