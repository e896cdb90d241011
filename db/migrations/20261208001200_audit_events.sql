-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- An audit trail of configuration changes (issue 23): who changed which tool, credential,
-- connection, action, flow, trigger, webhook, API key, user or organization, and how.
--
-- Events are written by the database, not by each route: an AFTER ROW trigger on every audited
-- table (tolstoy_audit) writes one event per row a request inserts, updates or deletes, in the
-- same transaction and without a statement or round trip of its own. Who acted is what the API
-- vouches for: each unit of work of a configuration request sets app.audit (its actor and
-- request id) in the statement that opens it (sql/session.sql enter*); a change made with no
-- app.audit set (the engine refreshing a token, advancing a schedule; the CLI re-encrypting) is
-- not a configuration change by anyone and writes nothing. Changes the database makes by itself
-- as a consequence of the request's own (the rows an ON DELETE CASCADE removes, a flow's version
-- row) are part of the event of the row the request changed: only changes at trigger depth 1
-- are recorded.
--
-- Secrets never reach an event: a bytea column (every credential, token, signing secret and key
-- hash is stored encrypted or hashed as bytea) shows as '***' whatever it holds, and jsonb values
-- have the values of secret-named fields masked (tolstoy_audit_mask: the names of
-- tolstoy/redaction.py, kept equal by tests/db/test_audit_catalog.py).
--
-- Append-only for the services: tolstoy_app may read its own organization's events; nothing
-- may insert, update or delete them but tolstoy_engine, which owns the trigger function and the
-- pruning (tolstoy_prune_audit, the workers' hourly upkeep, past TOLSTOY_AUDIT_RETENTION_DAYS).
-- No foreign key to organizations: the event of an organization's deletion outlives it, until
-- retention.

create table audit_events (
    org_id uuid not null,
    id uuid not null default gen_random_uuid(),
    created_at timestamptz not null default now(),
    actor jsonb not null,
    action text not null,
    target_type text not null,
    target_id uuid not null,
    changes jsonb not null,
    request_id text,
    constraint audit_events_pkey primary key (org_id, id),
    constraint audit_events_actor_object check (jsonb_typeof(actor) = 'object'),
    constraint audit_events_changes_object check (jsonb_typeof(changes) = 'object'),
    constraint audit_events_action_length check (char_length(action) between 1 and 100),
    constraint audit_events_request_id_length check (char_length(request_id) <= 200)
);

comment on table audit_events is
    'Configuration changes of an organization, one row per row changed by a request; written only by the '
    'tolstoy_audit trigger, never updated, deleted past TOLSTOY_AUDIT_RETENTION_DAYS by tolstoy_prune_audit.';
comment on column audit_events.created_at is 'When the changing transaction began (the API shows it as at).';
comment on column audit_events.actor is
    'Who made the change as the API authenticated it: {userId}, {apiKeyPrefix[, userId]} or {admin: true}.';
comment on column audit_events.action is '<targetType>.created, .updated or .deleted.';
comment on column audit_events.target_type is 'The kind of record changed (tool, flow, api_key, ...).';
comment on column audit_events.changes is
    'Changed columns as {column: [old, new]}; secrets as ''***''. Creation: [null, new]; deletion: [old, null].';
comment on column audit_events.request_id is 'The X-Request-ID of the request that made the change.';

-- New table: no rows yet, nothing waits on its indexes.
-- squawk-ignore require-concurrent-index-creation
create index audit_events_org_created_idx on audit_events (org_id, created_at desc, id desc);
-- squawk-ignore require-concurrent-index-creation
create index audit_events_target_idx on audit_events (org_id, target_type, target_id, created_at desc, id desc);
-- squawk-ignore require-concurrent-index-creation
create index audit_events_created_idx on audit_events (created_at);

alter table audit_events enable row level security;
alter table audit_events force row level security;
-- The API reads its organization's events; nobody it logs in as may write them.
create policy tenant_isolation on audit_events for select using (org_id = tolstoy_current_org());
-- tolstoy_engine writes (the trigger) and prunes (retention); its grants below leave out update.
grant select, insert, delete on audit_events to tolstoy_engine;
create policy engine_access on audit_events to tolstoy_engine using (true) with check (true);

-- ---- secrets ----------------------------------------------------------------------------

-- The names whose values are secrets whatever they hold, as tolstoy/redaction.py lists them
-- (SENSITIVE_KEYS and SENSITIVE_HEADERS, compared lower-cased with '-' as '_').
create function tolstoy_audit_secret_names() returns text[]
language sql immutable as $$
    select array['password', 'token', 'secret', 'apikey', 'api_key', 'accesstoken', 'access_token',
                 'refreshtoken', 'refresh_token', 'clientsecret', 'client_secret', 'headervalue', 'authorization',
                 'proxy_authorization', 'cookie', 'set_cookie', 'x_api_key', 'x_auth_token',
                 'x_amz_security_token']
$$;

comment on function tolstoy_audit_secret_names() is
    'Field and header names whose values tolstoy_audit_mask hides (the names of tolstoy/redaction.py).';

-- The regular expression of a secret-named key as jsonb's text shows it ("name": ), '-' or '_'
-- between words, any case.
create function tolstoy_audit_secret_key() returns text
language sql immutable as $$
    select '"(' || array_to_string(array(select replace(n, '_', '[-_]')
                                         from unnest(tolstoy_audit_secret_names()) as n), '|') || ')": '
$$;

comment on function tolstoy_audit_secret_key() is
    'A regular expression matching a secret-named key in the text of a jsonb value (tolstoy_audit_mask).';

-- The structural walk, for what the text pass cannot do (an object or array under a secret-named
-- key): only subtrees whose text holds a secret-named key are walked.
create function tolstoy_audit_mask_walk(value jsonb) returns jsonb
language sql immutable as $$
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
    end
$$;

comment on function tolstoy_audit_mask_walk(jsonb) is
    'tolstoy_audit_mask''s structural walk: secret-named fields masked whole at any depth.';

-- A jsonb value with the value of every secret-named field, at any depth, replaced by '***'.
-- A value without such a field (most) is returned as it is after one scan of its text; scalar
-- values are masked by one pass over the text (a key's quote can only be a key's: quotes inside
-- strings are escaped); only a composite value under a secret-named key needs the walk.
create function tolstoy_audit_mask(value jsonb) returns jsonb
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

-- ---- writing events -----------------------------------------------------------------------

-- The trigger of every audited table: tolstoy_audit(target_type[, ignored columns]). Columns
-- that change by themselves (timestamps, the engine's leases and schedule bookkeeping) are left
-- out of changes, and an update that changed nothing else writes no event. A table without an
-- id column (one row per organization) is its organization's.
create function tolstoy_audit() returns trigger
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

alter function tolstoy_audit() owner to tolstoy_engine;
revoke execute on function tolstoy_audit() from public;

create trigger organizations_audit after insert or update or delete on organizations
    for each row execute function tolstoy_audit('organization');
create trigger users_audit after insert or update or delete on users
    for each row execute function tolstoy_audit('user');
create trigger tools_audit after insert or update or delete on tools
    for each row execute function tolstoy_audit('tool');
create trigger tool_credentials_audit after insert or update or delete on tool_credentials
    for each row execute function tolstoy_audit('tool_credential');
create trigger actions_audit after insert or update or delete on actions
    for each row execute function tolstoy_audit('action');
create trigger flows_audit after insert or update or delete on flows
    for each row execute function tolstoy_audit('flow');
create trigger flow_triggers_audit after insert or update or delete on flow_triggers
    for each row execute function tolstoy_audit('trigger', 'next_run_at,last_fired_at');
create trigger webhooks_audit after insert or update or delete on webhooks
    for each row execute function tolstoy_audit('webhook', 'failing_since');
create trigger api_keys_audit after insert or update or delete on api_keys
    for each row execute function tolstoy_audit('api_key', 'last_used_at');
create trigger user_connections_audit after insert or update or delete on user_connections
    for each row execute function tolstoy_audit('user_connection', 'refreshing_by,refresh_lease_until');
-- One row per organization (no id column): the event's target is the organization.
create trigger organization_quotas_audit after insert or update or delete on organization_quotas
    for each row execute function tolstoy_audit('quota');

-- ---- retention ---------------------------------------------------------------------------

-- Delete audit events older than retention_days (null: keep them), at most batch per call. The
-- workers' housekeeping calls it in its batches (sql/runs.sql prune), beside the webhook
-- deliveries and signals it prunes, until a batch finds fewer. Returns how many went.
create function tolstoy_prune_audit(retention_days integer, batch integer)
returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
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
                               where o.created_at < now() - make_interval(days => retention_days)
                               limit batch);
    get diagnostics pruned = row_count;
    return pruned;
end;
$$;

comment on function tolstoy_prune_audit(integer, integer) is
    'Deletes up to batch audit events older than retention_days (null: none); the only way events go.';

alter function tolstoy_prune_audit(integer, integer) owner to tolstoy_engine;
revoke execute on function tolstoy_prune_audit(integer, integer) from public;

-- Privileges of the login roles: db/grants.sql (tolstoy_app reads, tolstoy_worker prunes).

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop function tolstoy_prune_audit(integer, integer);
drop trigger organization_quotas_audit on organization_quotas;
drop trigger user_connections_audit on user_connections;
drop trigger api_keys_audit on api_keys;
drop trigger webhooks_audit on webhooks;
drop trigger flow_triggers_audit on flow_triggers;
drop trigger flows_audit on flows;
drop trigger actions_audit on actions;
drop trigger tool_credentials_audit on tool_credentials;
drop trigger tools_audit on tools;
drop trigger users_audit on users;
drop trigger organizations_audit on organizations;
drop function tolstoy_audit();
drop function tolstoy_audit_mask(jsonb);
drop function tolstoy_audit_mask_walk(jsonb);
drop function tolstoy_audit_secret_key();
drop function tolstoy_audit_secret_names();
-- Its policies, indexes and grants go with it.
drop table audit_events;
