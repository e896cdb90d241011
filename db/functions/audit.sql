-- The audit trail of configuration changes: the trigger, the masking of secrets, pruning.
--
-- The current source of these functions (db/functions/README.md says how to change one).

create or replace function tolstoy_audit_secret_key() returns text
language sql immutable as $$
    select '"(' || array_to_string(array(select replace(n, '_', '[-_]')
                                         from unnest(tolstoy_audit_secret_names()) as n), '|') || ')": '
$$;

comment on function tolstoy_audit_secret_key() is
    'A regular expression matching a secret-named key in the text of a jsonb value (tolstoy_audit_mask).';

create or replace function tolstoy_audit_secret_names() returns text[]
language sql immutable as $$
    select array['password', 'token', 'secret', 'apikey', 'api_key', 'accesstoken', 'access_token',
                 'refreshtoken', 'refresh_token', 'clientsecret', 'client_secret', 'headervalue', 'authorization',
                 'proxy_authorization', 'cookie', 'set_cookie', 'x_api_key', 'x_auth_token',
                 'x_amz_security_token']
$$;

comment on function tolstoy_audit_secret_names() is
    'Field and header names whose values tolstoy_audit_mask hides (the names of tolstoy/redaction.py).';

create or replace function tolstoy_audit_mask_walk(value jsonb) returns jsonb
language plpgsql immutable as $$
begin
    return (
        select case jsonb_typeof(value)
            when 'object' then (
                select coalesce(jsonb_object_agg(e.key,
                           case when replace(lower(e.key), '-', '_') = any(tolstoy_audit_secret_names())
                                then '"***"'::jsonb
                                when e.value::text ~* tolstoy_audit_secret_key() then tolstoy_audit_mask_walk(e.value)
                                else e.value end), '{}'::jsonb)
                from jsonb_each(value) as e)
            when 'array' then (
                select coalesce(jsonb_agg(case when a.value::text ~* tolstoy_audit_secret_key()
                                               then tolstoy_audit_mask_walk(a.value) else a.value end
                                          order by a.n), '[]'::jsonb)
                from jsonb_array_elements(value) with ordinality as a(value, n))
            else value
        end);
end;
$$;

comment on function tolstoy_audit_mask_walk(jsonb) is
    'tolstoy_audit_mask''s structural walk: secret-named fields masked whole at any depth.';

create or replace function tolstoy_audit_mask(value jsonb) returns jsonb
language plpgsql immutable set search_path = public, pg_temp as $$
declare
    secret_key text := tolstoy_audit_secret_key();
    shown text;
begin
    if value is null or jsonb_typeof(value) not in ('object', 'array') then
        return value;
    end if;
    shown := value::text;
    if shown !~* secret_key then
        return value;
    end if;
    shown := regexp_replace(shown, secret_key || '("(?:[^"\\]|\\.)*"|-?[0-9][-+.0-9eE]*|true|false|null)',
                            '"\1": "***"', 'gi');
    if shown ~* (secret_key || '[[{]') then
        return tolstoy_audit_mask_walk(shown::jsonb);
    end if;
    return shown::jsonb;
end;
$$;

comment on function tolstoy_audit_mask(jsonb) is
    'The value with the values of secret-named fields (tolstoy_audit_secret_names) masked at any depth.';

create or replace function tolstoy_audit() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    context jsonb;
    old_row jsonb := case when tg_op <> 'INSERT' then to_jsonb(old) end;
    new_row jsonb := case when tg_op <> 'DELETE' then to_jsonb(new) end;
    subject jsonb := coalesce(new_row, old_row);
    ignored text[] := array['org_id', 'id', 'created_at', 'updated_at']
                      || coalesce(string_to_array(tg_argv[1], ','), '{}');
    secret text[];
    changes jsonb := '{}';
    name text;
    was jsonb;
    now_is jsonb;
begin
    -- A cascade or another trigger's write is part of the change that caused it.
    if pg_trigger_depth() > 1 then
        return null;
    end if;
    context := nullif(current_setting('app.audit', true), '')::jsonb;
    if context is null then
        return null;
    end if;
    select coalesce(array_agg(a.attname::text), '{}') into secret
    from pg_attribute a
    where a.attrelid = tg_relid and a.attnum > 0 and not a.attisdropped and a.atttypid = 'bytea'::regtype;
    for name in select k from jsonb_object_keys(subject) as k loop
        continue when name = any(ignored);
        was := coalesce(old_row -> name, 'null');
        now_is := coalesce(new_row -> name, 'null');
        continue when was = now_is;
        if name = any(secret) then
            was := case when was = 'null' then was else '"***"' end;
            now_is := case when now_is = 'null' then now_is else '"***"' end;
        else
            was := tolstoy_audit_mask(was);
            now_is := tolstoy_audit_mask(now_is);
        end if;
        changes := changes || jsonb_build_object(name, jsonb_build_array(was, now_is));
    end loop;
    if changes = '{}' then
        return null;
    end if;
    insert into audit_events (org_id, actor, action, target_type, target_id, changes, request_id)
    values (coalesce(subject ->> 'org_id', subject ->> 'id')::uuid,
            coalesce(context -> 'actor', '{}'),
            tg_argv[0] || case tg_op when 'INSERT' then '.created' when 'UPDATE' then '.updated'
                                     else '.deleted' end,
            tg_argv[0],
            coalesce(subject ->> 'id', subject ->> 'org_id')::uuid,
            changes,
            left(context ->> 'requestId', 200));
    return null;
end;
$$;

comment on function tolstoy_audit() is
    'AFTER ROW trigger of audited tables (argument: target type, then ignored columns comma-separated): writes '
    'one audit_events row per row changed by a request that set app.audit; secrets masked.';

create or replace function tolstoy_prune_audit(retention_days integer, batch integer)
returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    pruned integer;
begin
    if retention_days < 1 or batch is null or batch < 1 or batch > 100000 then
        raise exception 'tolstoy_prune_audit: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    if retention_days is null then
        return 0;
    end if;
    delete from audit_events e
    where (e.org_id, e.id) in (select o.org_id, o.id from audit_events o
                               where o.created_at < clock_now - make_interval(days => retention_days)
                               limit batch);
    get diagnostics pruned = row_count;
    return pruned;
end;
$$;

comment on function tolstoy_prune_audit(integer, integer) is
    'Deletes up to batch audit events older than retention_days (null: none); the only way events go.';
