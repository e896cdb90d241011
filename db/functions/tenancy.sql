-- Whose rows a transaction sees: the current organization, entering one (by id or API key), keys, inbound hooks' targets.
--
-- The current source of these functions (db/functions/README.md says how to change one).

create or replace function tolstoy_current_org() returns uuid
language sql stable as $$
    select nullif(current_setting('app.org_id', true), '')::uuid
$$;

comment on function tolstoy_current_org() is
    'The organization this transaction acts for (app.org_id), or null when none was set.';

create or replace function tolstoy_enter(org uuid, acting_user uuid, timeout_ms integer) returns void
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

create or replace function tolstoy_enter_key(hash bytea, acting_user uuid, timeout_ms integer) returns uuid
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    found uuid;
begin
    perform set_config('statement_timeout', timeout_ms::text || 'ms', true);
    select k.org_id into found
    from api_keys k
    where k.key_hash = hash and k.revoked_at is null and (k.expires_at is null or k.expires_at > clock_now);
    if found is null then
        raise exception 'The API key is not valid, has expired or has been revoked.' using errcode = 'TS003';
    end if;
    -- Recorded at most once a minute, so authentication stays a read.
    update api_keys k
    set last_used_at = clock_now
    where k.key_hash = hash
      and (k.last_used_at is null or k.last_used_at < clock_now - interval '1 minute');
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

create or replace function tolstoy_authenticate(hash bytea) returns table (org_id uuid, key_id uuid)
language plpgsql security definer set search_path = public, pg_temp as $$
#variable_conflict use_column
begin
    return query
    with found as (
        select k.org_id, k.id
        from api_keys k
        where k.key_hash = hash and k.revoked_at is null
    ), touched as (
        update api_keys k
        set last_used_at = tolstoy_now()
        from found
        where k.org_id = found.org_id and k.id = found.id
          and (k.last_used_at is null or k.last_used_at < tolstoy_now() - interval '1 minute')
    )
    select found.org_id, found.id from found;
end;
$$;

comment on function tolstoy_authenticate(bytea) is
    'The organization and key id of an unrevoked API key hash; refreshes last_used_at once a minute.';

create or replace function tolstoy_key_grant(hash bytea)
returns table (org_id uuid, scopes text[], user_id uuid)
language plpgsql stable security definer set search_path = public, pg_temp as $$
begin
    return query
    select k.org_id, k.scopes, k.user_id
    from api_keys k
    where k.key_hash = hash and k.revoked_at is null and (k.expires_at is null or k.expires_at > tolstoy_now());
    if not found then
        raise exception 'The API key is not valid, has expired or has been revoked.' using errcode = 'TS003';
    end if;
end;
$$;

comment on function tolstoy_key_grant(bytea) is
    'The organization, scopes and bound user of a usable API key (TS003 otherwise); the API caches them per key.';

create or replace function tolstoy_hook_target(hook uuid)
returns table (org_id uuid, flow_id uuid, enabled boolean, verification text, secret bytea)
language plpgsql stable security definer set search_path = public, pg_temp as $$
#variable_conflict use_column
begin
    return query
    select t.org_id, t.flow_id, t.enabled, t.verification, t.secret
    from flow_triggers t
    where t.id = hook and t.type = 'webhook';
end;
$$;

comment on function tolstoy_hook_target(uuid) is
    'For POST /hooks/{id}: the organization, flow, state and encrypted secret of a webhook trigger.';

create or replace function tolstoy_key_version(ciphertext bytea) returns integer
language sql immutable parallel safe as $$
    select case
        when length(ciphertext) < 5 then null
        when get_byte(ciphertext, 0) = 1 then ('x' || encode(substring(ciphertext from 2 for 4), 'hex'))::bit(32)::integer
    end
$$;

comment on function tolstoy_key_version(bytea) is
    'The organization data key version a ciphertext (tool_credentials.secret, flow_run_steps.sealed) was '
    'encrypted with; null for a plain Fernet token under TOLSTOY_ENCRYPTION_KEY (written before envelope encryption).';

create or replace function tolstoy_bind_to_tool_origin() returns trigger
language plpgsql set search_path = public, pg_temp as $$
begin
    select base_url into new.origin_url
    from tools
    where org_id = new.org_id and id = new.tool_id
    for key share;
    return new;
end;
$$;

comment on function tolstoy_bind_to_tool_origin() is
    'BEFORE INSERT trigger of tool_credentials and user_connections: origin_url := the tool''s base_url now.';
