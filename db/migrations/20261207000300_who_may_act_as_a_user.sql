-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Who may act as a user (issue 19). Using a user's own OAuth tokens (a per-user
-- tool, user_connections) acts as that user; so does connecting an account for
-- them. Recording a user on a run (X-User-ID) does not. In api_key mode only a
-- key bound to that user, or one with the new impersonate scope, may act as
-- them; in headers mode the gateway vouches for X-User-ID.
--
-- * api_keys.user_id: the user a key is bound to (null: an organization key).
--   It never changes (the API caches it with the key's scopes) and goes with
--   its user, like the user's connections.
-- * api_keys.scopes may hold impersonate. Existing keys keep exactly the scopes
--   they had, except each organization's first key (the one POST /organizations
--   returned, with every scope there was): it gets impersonate, as a new
--   organization's first key does, so every organization keeps one key that may
--   bind keys to users and grant impersonate.
-- * tolstoy_key_grant also returns the key's user.
-- * flow_runs.acts_as_user: the run may use its user's connections. The API
--   sets it when it queues the run, from the starter's authority (a key bound to
--   the run's user or holding impersonate; in headers mode, any X-User-ID); the
--   engine refuses a per-user credential for a run without it. A subflow's child
--   inherits its parent's (flow_runs_inherit_acting); schedules and webhook
--   triggers record no user, so their runs never act as one. Runs queued before
--   this migration keep the authority they were queued with (any recorded user):
--   the column is added as true for them, false by default from now on.

alter table api_keys add column user_id uuid;

comment on column api_keys.user_id is
    'The user the key is bound to (null: none): it may act as that user (use their OAuth connections, connect '
    'an account for them). Never changes.';

-- The column was just added, null in every row: nothing to check, and api_keys
-- is a small table whose lock (and the brief one on users) lock_timeout bounds.
-- squawk-ignore constraint-missing-not-valid, adding-foreign-key-constraint
alter table api_keys add constraint api_keys_user_id_fkey
    foreign key (org_id, user_id) references users (org_id, id) on delete cascade;

-- Deleting a user finds the keys bound to them by this index (a few rows per organization).
-- squawk-ignore require-concurrent-index-creation
create index api_keys_org_id_user_id_idx on api_keys (org_id, user_id) where user_id is not null;

-- Replaced by a wider one in the same transaction: no moment without it.
-- squawk-ignore ban-drop-constraint
alter table api_keys drop constraint api_keys_scopes_known;
-- Every existing row holds a subset of the four older scopes, so it passes; the table is small.
-- squawk-ignore constraint-missing-not-valid
alter table api_keys add constraint api_keys_scopes_known
    check (cardinality(scopes) between 1 and 5 and scopes <@ '{read,write,execute,admin,impersonate}'::text[]);

comment on column api_keys.scopes is
    'What the key may do: read, write, execute, admin (its organization''s keys), impersonate (act as any user).';

-- Each organization's first key, holding every older scope, also gets impersonate.
-- Row-level security is forced on api_keys and no organization is set here: the
-- owner running this sees the rows only through tolstoy_engine's policy, as long
-- as it inherits that role. Forcing is lifted for this one update, inside this
-- transaction (no other session ever sees it lifted), so the owner sees every
-- row whatever its memberships.
alter table api_keys no force row level security;
update api_keys k
set scopes = k.scopes || '{impersonate}'::text[]
where k.scopes @> '{read,write,execute,admin}'::text[]
  and not k.scopes @> '{impersonate}'::text[]
  and k.id in (select distinct on (f.org_id) f.id from api_keys f order by f.org_id, f.created_at, f.id);
alter table api_keys force row level security;

-- A function's result columns cannot change in place: dropped and made again in this
-- transaction. The API of the previous release selects org_id and scopes from it,
-- which it still returns, so a rolling deploy keeps working.
-- squawk-ignore ban-drop-function
drop function tolstoy_key_grant(bytea);

-- What a key grants: its organization, scopes and user, read once per key and
-- process (they never change); TS003 like tolstoy_enter_key for a key that cannot be used.
create function tolstoy_key_grant(hash bytea)
returns table (org_id uuid, scopes text[], user_id uuid)
language plpgsql stable security definer set search_path = public, pg_temp as $$
begin
    return query
    select k.org_id, k.scopes, k.user_id
    from api_keys k
    where k.key_hash = hash and k.revoked_at is null and (k.expires_at is null or k.expires_at > now());
    if not found then
        raise exception 'The API key is not valid, has expired or has been revoked.' using errcode = 'TS003';
    end if;
end;
$$;

comment on function tolstoy_key_grant(bytea) is
    'The organization, scopes and bound user of a usable API key (TS003 otherwise); the API caches them per key.';

alter function tolstoy_key_grant(bytea) owner to tolstoy_engine;
revoke execute on function tolstoy_key_grant(bytea) from public;

-- A non-volatile default: no rewrite of any partition. True for the runs that
-- exist (see above), false for every run queued from now on unless said.
alter table flow_runs add column acts_as_user boolean not null default true;
alter table flow_runs alter column acts_as_user set default false;

comment on column flow_runs.acts_as_user is
    'The run may use its user''s OAuth connections (per-user tools): its starter could act as user_id (a key '
    'bound to them or with impersonate; headers mode: X-User-ID). Set when queued; a subflow child inherits it.';

-- The same as in wait_signals, with one more argument: acting, whether the one
-- who queues the run may act as actor (the run's user). Without a user a run
-- never acts as one. A retry takes the authority of whoever retries, not the
-- original's. Its arguments cannot change in place; the new one answers a call with
-- the seven of old too (acting defaults to false), so the previous release's
-- statements and the functions that call it (tolstoy_fire_schedules,
-- tolstoy_subflow) resolve to it unchanged.
-- squawk-ignore ban-drop-function
drop function tolstoy_queue_run(uuid, uuid, integer, uuid, jsonb, text, uuid);

create function tolstoy_queue_run(org uuid, flow uuid, queue_run_version integer, actor uuid, vars jsonb,
                                  key text, retrying uuid, acting boolean default false)
returns table (run flow_runs, created boolean)
language plpgsql as $$
declare
    existing flow_runs;
    queued flow_runs;
    original flow_runs;
    steps jsonb;
    run_plan jsonb;
    root uuid;
    new_id uuid := gen_random_uuid();
    new_created_at timestamptz := now();
begin
    if key is not null then
        perform pg_advisory_xact_lock(hashtextextended(format('run-key:%s:%s:%s', org, flow, key), 0));
        select * into existing from flow_runs r
        where r.org_id = org and r.flow_id = flow and r.idempotency_key = key;
    elsif retrying is not null then
        perform pg_advisory_xact_lock(hashtextextended(format('run-retry:%s:%s', org, retrying), 0));
        select * into existing from flow_runs r where r.org_id = org and r.retry_of = retrying;
    end if;
    if existing.id is not null then
        run := existing;
        created := false;
        return next;
        return;
    end if;
    if retrying is not null then
        select * into original from flow_runs r where r.org_id = org and r.id = retrying;
        run_plan := original.plan;
        root := original.root_run_id;
    else
        select v.steps into steps from flow_versions v
        where v.org_id = org and v.flow_id = flow and v.version = queue_run_version;
        run_plan := jsonb_build_object('steps', steps, 'actions', coalesce((
            select jsonb_agg(jsonb_build_object(
                       'id', a.id, 'key', a.key, 'tool_id', a.tool_id, 'method', a.method, 'endpoint', a.endpoint,
                       'headers', a.headers, 'input_schema', a.input_schema, 'execute_if', a.execute_if,
                       'version', a.version, 'tool', jsonb_build_object('id', t.id, 'name', t.name,
                                                                         'base_url', t.base_url,
                                                                         'auth_type', t.auth_type,
                                                                        'honors_idempotency_key',
                                                                        t.honors_idempotency_key)))
            from actions a join tools t on t.org_id = a.org_id and t.id = a.tool_id
            where a.org_id = org
              and (a.key in (select jsonb_path_query(steps, 'strict $.**.actionKey') #>> '{}')
                   or a.id::text in (select jsonb_path_query(steps, 'strict $.**.actionId') #>> '{}'))), '[]'));
    end if;
    insert into flow_runs (org_id, id, flow_id, flow_version, user_id, variables, plan, idempotency_key,
                           retry_of, root_run_id, created_at, acts_as_user)
    values (org, new_id, flow, queue_run_version, actor, vars, run_plan, key, retrying, coalesce(root, new_id),
            new_created_at, coalesce(acting, false) and actor is not null)
    returning * into queued;
    if retrying is not null then
        -- Skipped by executeIf (no error) is final; skipped because a dependency failed is not.
        insert into flow_run_steps (org_id, run_id, run_created_at, step_id, status, attempt, inputs, outputs,
                                    sealed, error, started_at, finished_at, duration_ms)
        select s.org_id, new_id, new_created_at, s.step_id, s.status, s.attempt, s.inputs, s.outputs, s.sealed,
               s.error, s.started_at, s.finished_at, s.duration_ms
        from flow_run_steps s
        where s.org_id = org and s.run_id = retrying and s.run_created_at = original.created_at
          and (s.status = 'completed' or (s.status = 'skipped' and s.error is null))
          -- The original's failure handlers ran for its failure, not for this run's.
          and s.step_id not like 'onFailure.%';
    end if;
    insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
    values (org, flow, actor, new_id::text, '$flow', 'queued', vars);
    run := queued;
    created := true;
    return next;
end;
$$;

comment on function tolstoy_queue_run(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean) is
    'Queues a run with its plan (steps + the actions they call, with their tools) and its queued log row, or '
    'returns the run an Idempotency-Key (or, for a retry, the retried run) already made. One retry per run. '
    'acting: the one who queues it may act as actor (acts_as_user).';

-- A child run acts as its user only if its parent may: whatever attaches a run
-- to a parent (tolstoy_subflow) passes the authority on without knowing of it.
create function flow_runs_inherit_acting() returns trigger
language plpgsql as $$
begin
    select p.acts_as_user and p.user_id is not distinct from new.user_id into new.acts_as_user
    from flow_runs p
    where p.org_id = new.org_id and p.id = new.parent_run_id;
    new.acts_as_user := coalesce(new.acts_as_user, false);
    return new;
end;
$$;

comment on function flow_runs_inherit_acting() is
    'BEFORE UPDATE OF parent_run_id trigger: a child run may act as its user only when its parent may.';

create trigger flow_runs_inherit_acting
    before update of parent_run_id on flow_runs
    for each row when (new.parent_run_id is not null and new.parent_run_id is distinct from old.parent_run_id)
    execute function flow_runs_inherit_acting();

-- What a worker needs of a run it claimed, now with acts_as_user.
create or replace function tolstoy_run_payload(r flow_runs) returns jsonb
language sql stable as $$
    select jsonb_build_object(
        'org_id', r.org_id, 'id', r.id, 'created_at', r.created_at, 'flow_id', r.flow_id,
        'flow_version', r.flow_version, 'user_id', r.user_id, 'acts_as_user', r.acts_as_user,
        'variables', r.variables, 'plan', r.plan,
        'token', r.lease_token, 'root_run_id', r.root_run_id, 'claims', r.claims, 'recoveries', r.recoveries,
        'checkpoints', coalesce((
            select jsonb_agg(jsonb_build_object(
                       'step_id', s.step_id, 'status', s.status, 'attempt', s.attempt, 'inputs', s.inputs,
                       'outputs', s.outputs, 'sealed', encode(s.sealed, 'base64'), 'error', s.error,
                       'wake_at', s.wake_at, 'call_started_at', s.call_started_at)
                   order by s.started_at)
            from flow_run_steps s
            where s.org_id = r.org_id and s.run_id = r.id and s.run_created_at = r.created_at), '[]'))
$$;

-- Privileges: db/grants.sql (unchanged: it grants tolstoy_key_grant to tolstoy_app by its signature,
-- which is the same; tolstoy_queue_run is called inside the services' own statements).

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create or replace function tolstoy_run_payload(r flow_runs) returns jsonb
language sql stable as $$
    select jsonb_build_object(
        'org_id', r.org_id, 'id', r.id, 'created_at', r.created_at, 'flow_id', r.flow_id,
        'flow_version', r.flow_version, 'user_id', r.user_id, 'variables', r.variables, 'plan', r.plan,
        'token', r.lease_token, 'root_run_id', r.root_run_id, 'claims', r.claims, 'recoveries', r.recoveries,
        'checkpoints', coalesce((
            select jsonb_agg(jsonb_build_object(
                       'step_id', s.step_id, 'status', s.status, 'attempt', s.attempt, 'inputs', s.inputs,
                       'outputs', s.outputs, 'sealed', encode(s.sealed, 'base64'), 'error', s.error,
                       'wake_at', s.wake_at, 'call_started_at', s.call_started_at)
                   order by s.started_at)
            from flow_run_steps s
            where s.org_id = r.org_id and s.run_id = r.id and s.run_created_at = r.created_at), '[]'))
$$;

drop trigger flow_runs_inherit_acting on flow_runs;
drop function flow_runs_inherit_acting();

drop function tolstoy_queue_run(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean);

-- tolstoy_queue_run as wait_signals defined it.
create function tolstoy_queue_run(org uuid, flow uuid, queue_run_version integer, actor uuid, vars jsonb,
                                  key text, retrying uuid)
returns table (run flow_runs, created boolean)
language plpgsql as $$
declare
    existing flow_runs;
    queued flow_runs;
    original flow_runs;
    steps jsonb;
    run_plan jsonb;
    root uuid;
    new_id uuid := gen_random_uuid();
    new_created_at timestamptz := now();
begin
    if key is not null then
        perform pg_advisory_xact_lock(hashtextextended(format('run-key:%s:%s:%s', org, flow, key), 0));
        select * into existing from flow_runs r
        where r.org_id = org and r.flow_id = flow and r.idempotency_key = key;
    elsif retrying is not null then
        perform pg_advisory_xact_lock(hashtextextended(format('run-retry:%s:%s', org, retrying), 0));
        select * into existing from flow_runs r where r.org_id = org and r.retry_of = retrying;
    end if;
    if existing.id is not null then
        run := existing;
        created := false;
        return next;
        return;
    end if;
    if retrying is not null then
        select * into original from flow_runs r where r.org_id = org and r.id = retrying;
        run_plan := original.plan;
        root := original.root_run_id;
    else
        select v.steps into steps from flow_versions v
        where v.org_id = org and v.flow_id = flow and v.version = queue_run_version;
        run_plan := jsonb_build_object('steps', steps, 'actions', coalesce((
            select jsonb_agg(jsonb_build_object(
                       'id', a.id, 'key', a.key, 'tool_id', a.tool_id, 'method', a.method, 'endpoint', a.endpoint,
                       'headers', a.headers, 'input_schema', a.input_schema, 'execute_if', a.execute_if,
                       'version', a.version, 'tool', jsonb_build_object('id', t.id, 'name', t.name,
                                                                         'base_url', t.base_url,
                                                                         'auth_type', t.auth_type,
                                                                        'honors_idempotency_key',
                                                                        t.honors_idempotency_key)))
            from actions a join tools t on t.org_id = a.org_id and t.id = a.tool_id
            where a.org_id = org
              and (a.key in (select jsonb_path_query(steps, 'strict $.**.actionKey') #>> '{}')
                   or a.id::text in (select jsonb_path_query(steps, 'strict $.**.actionId') #>> '{}'))), '[]'));
    end if;
    insert into flow_runs (org_id, id, flow_id, flow_version, user_id, variables, plan, idempotency_key,
                           retry_of, root_run_id, created_at)
    values (org, new_id, flow, queue_run_version, actor, vars, run_plan, key, retrying, coalesce(root, new_id),
            new_created_at)
    returning * into queued;
    if retrying is not null then
        -- Skipped by executeIf (no error) is final; skipped because a dependency failed is not.
        insert into flow_run_steps (org_id, run_id, run_created_at, step_id, status, attempt, inputs, outputs,
                                    sealed, error, started_at, finished_at, duration_ms)
        select s.org_id, new_id, new_created_at, s.step_id, s.status, s.attempt, s.inputs, s.outputs, s.sealed,
               s.error, s.started_at, s.finished_at, s.duration_ms
        from flow_run_steps s
        where s.org_id = org and s.run_id = retrying and s.run_created_at = original.created_at
          and (s.status = 'completed' or (s.status = 'skipped' and s.error is null))
          -- The original's failure handlers ran for its failure, not for this run's.
          and s.step_id not like 'onFailure.%';
    end if;
    insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
    values (org, flow, actor, new_id::text, '$flow', 'queued', vars);
    run := queued;
    created := true;
    return next;
end;
$$;

comment on function tolstoy_queue_run(uuid, uuid, integer, uuid, jsonb, text, uuid) is
    'Queues a run with its plan (steps + the actions they call, with their tools) and its queued log row, or '
    'returns the run an Idempotency-Key (or, for a retry, the retried run) already made. One retry per run.';

alter table flow_runs drop column acts_as_user;

drop function tolstoy_key_grant(bytea);

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

-- The previous application knows four scopes: impersonate is taken away (a key
-- that had nothing else is revoked, keeping read so that its row stays valid).
-- Keys bound to a user become organization keys, which they also were. As
-- above, forcing row-level security is lifted for these updates only.
alter table api_keys no force row level security;
update api_keys
set revoked_at = coalesce(revoked_at, now()), scopes = '{read}'::text[]
where scopes = '{impersonate}'::text[];
update api_keys
set scopes = array_remove(scopes, 'impersonate')
where scopes @> '{impersonate}'::text[];
alter table api_keys force row level security;

-- Replaced by the narrower one in the same transaction.
-- squawk-ignore ban-drop-constraint
alter table api_keys drop constraint api_keys_scopes_known;
-- squawk-ignore constraint-missing-not-valid
alter table api_keys add constraint api_keys_scopes_known
    check (cardinality(scopes) between 1 and 4 and scopes <@ '{read,write,execute,admin}'::text[]);

comment on column api_keys.scopes is 'What the key may do: read, write, execute, admin (its organization''s keys).';

-- Its foreign key and index go with it.
alter table api_keys drop column user_id;
