-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- PostgreSQL 16 parses and plans the body of a `language sql` function that it does not inline every
-- time a statement calls it: the SQL-function executor keeps its plan only for that one statement.
-- A plpgsql function keeps the plans of its queries for the session. These functions were SQL and
-- called, not inlined (a FROM, a security definer, a `set` clause, a table result, a data-modifying
-- WITH): the claim re-planned tolstoy_run_payload for every run it took, the queue tolstoy_plan for
-- every run it queued, every checkpoint tolstoy_now and tolstoy_clock_timestamp a few times; about a
-- fifth of PostgreSQL's CPU per run went to planning and parsing them (docs/performance.md, "What
-- PostgreSQL does per run"). Same bodies, same attributes and answers, in plpgsql: a function of one
-- query returns it, one of a table returns its rows (`return query`, table columns read as the
-- query's columns where names meet), tolstoy_cancel_descendants returns its count.
-- tests/db/test_inlined_functions.py now checks that every `language sql` function of the schema is
-- inlined where it is called.

create or replace function tolstoy_now() returns timestamptz
language plpgsql stable security definer set search_path = public, pg_temp as $$
begin
    return (
        -- now() (the transaction's start), moved by what tolstoy_clock says: nothing in production.
        select now() + (select c.ahead from tolstoy_clock c));
end;
$$;

create or replace function tolstoy_clock_timestamp() returns timestamptz
language plpgsql volatile security definer set search_path = public, pg_temp as $$
begin
    return (
        select clock_timestamp() + (select c.ahead from tolstoy_clock c));
end;
$$;

create or replace function tolstoy_next_schedule() returns timestamptz
language plpgsql stable security definer set search_path = public, pg_temp as $$
begin
    return (
        select min(t.next_run_at) from flow_triggers t
        where t.type = 'schedule' and t.enabled and t.next_run_at is not null);
end;
$$;

create or replace function tolstoy_next_delivery() returns timestamptz
language plpgsql stable security definer set search_path = public, pg_temp as $$
begin
    return (
        select min(l.due_at) from webhook_lines l where l.due_at is not null);
end;
$$;

create or replace function tolstoy_run_payload(r flow_runs) returns jsonb
language plpgsql stable as $$
begin
    return (
        select jsonb_build_object(
            'org_id', r.org_id, 'id', r.id, 'created_at', r.created_at, 'flow_id', r.flow_id,
            'flow_version', r.flow_version, 'user_id', r.user_id, 'acts_as_user', r.acts_as_user,
            'variables', r.variables, 'plan', r.plan,
            'token', r.lease_token, 'root_run_id', r.root_run_id, 'claims', r.claims, 'recoveries', r.recoveries,
            'strikes', r.strikes, 'handbacks', r.handbacks, 'cancel_requested', r.cancel_requested,
            'trace_parent', r.trace_parent,
            'checkpoints', coalesce((
                select jsonb_agg(jsonb_build_object(
                           'step_id', s.step_id, 'status', s.status, 'attempt', s.attempt, 'inputs', s.inputs,
                           'outputs', s.outputs, 'sealed', encode(s.sealed, 'base64'), 'error', s.error,
                           'wake_at', s.wake_at, 'call_started_at', s.call_started_at)
                       order by s.started_at)
                from flow_run_steps s
                where s.org_id = r.org_id and s.run_id = r.id and s.run_created_at = r.created_at), '[]')));
end;
$$;

create or replace function tolstoy_plan(org uuid, steps jsonb, on_failure jsonb default null) returns jsonb
language plpgsql stable as $$
begin
    return (
        select jsonb_build_object('steps', steps, 'actions', coalesce((
            select jsonb_agg(jsonb_build_object(
                       'id', a.id, 'key', a.key, 'tool_id', a.tool_id, 'method', a.method, 'endpoint', a.endpoint,
                       'headers', a.headers, 'input_schema', a.input_schema, 'execute_if', a.execute_if,
                       'version', a.version, 'tool', jsonb_build_object('id', t.id, 'name', t.name,
                                                                         'base_url', t.base_url,
                                                                         'auth_type', t.auth_type,
                                                                         'honors_idempotency_key',
                                                                         t.honors_idempotency_key)))
            from actions a join tools t on t.org_id = a.org_id and t.id = a.tool_id
            cross join lateral (select jsonb_build_array(steps, coalesce(on_failure, '[]')) as called) c
            where a.org_id = org
              and (a.key in (select jsonb_path_query(c.called, 'strict $.**.actionKey') #>> '{}')
                   or a.id::text in (select jsonb_path_query(c.called, 'strict $.**.actionId') #>> '{}'))), '[]'))
           || case when on_failure is not null then jsonb_build_object('onFailure', on_failure) else '{}' end);
end;
$$;

create or replace function tolstoy_plan_for(org uuid, flow uuid, plan_version integer)
returns jsonb
language plpgsql stable as $_$
begin
    return (
        select tolstoy_plan(org, v.steps, v.on_failure)
        from flow_versions v
        where v.org_id = org and v.flow_id = flow and v.version = plan_version);
end;
$_$;

create or replace function tolstoy_queue_run(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                             vars jsonb, key text, retrying uuid, acting boolean default false)
returns table (run flow_runs, created boolean)
language plpgsql as $$
#variable_conflict use_column
begin
    return query
    select q.run, q.created
    from tolstoy_queue_run_v2(org, flow, queue_run_version, actor, vars, key, retrying, acting, null) as q;
end;
$$;

create or replace function tolstoy_queue_run_v2(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                                vars jsonb, key text, retrying uuid, acting boolean,
                                                rerunning jsonb)
returns table (run flow_runs, created boolean)
language plpgsql as $$
#variable_conflict use_column
begin
    return query
    select q.run, q.created
    from tolstoy_queue_run_v3(org, flow, queue_run_version, actor, vars, key, retrying, acting, rerunning, null) as q;
end;
$$;

create or replace function tolstoy_queue_run_v3(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                                vars jsonb, key text, retrying uuid, acting boolean,
                                                rerunning jsonb, concurrency_key text)
returns table (run flow_runs, created boolean)
language plpgsql as $$
#variable_conflict use_column
begin
    return query
    select q.run, q.created
    from tolstoy_queue_run_v4(org, flow, queue_run_version, actor, vars, key, retrying, acting, rerunning,
                              concurrency_key, null) as q;
end;
$$;

create or replace function tolstoy_claim_runs(worker text, max_runs integer, lease_seconds double precision,
                                              max_recoveries integer)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    return (
        select jsonb_build_object('runs', coalesce(jsonb_agg(c.run) filter (where c.run is not null), '[]'),
                                  'next_due', max(c.meta ->> 'next_due')::timestamptz)
        from tolstoy_claim_runs_v2(worker, max_runs, lease_seconds, max_recoveries, 300) as c);
end;
$$;

create or replace function tolstoy_queue_stats()
returns table (queued bigint, due bigint, oldest_due_age_seconds double precision)
language plpgsql stable security definer set search_path = public, pg_temp as $$
#variable_conflict use_column
begin
    return query
    -- The clock read once, not once per queued run.
    select q.queued, q.due, coalesce(extract(epoch from c.now - q.oldest_due), 0)::float8
    from (select tolstoy_now() as now) as c
    cross join lateral (select count(*) as queued, count(*) filter (where r.run_after <= c.now) as due,
                               min(r.run_after) filter (where r.run_after <= c.now) as oldest_due
                        from flow_runs r
                        where r.status = 'queued') as q;
end;
$$;

create or replace function tolstoy_parked_runs()
returns table (waiting_for text, runs bigint)
language plpgsql stable security definer set search_path = public, pg_temp as $$
#variable_conflict use_column
begin
    return query
    select r.waiting_for, count(*)
    from flow_runs r
    where r.waiting_for is not null
    group by r.waiting_for;
end;
$$;

create or replace function tolstoy_stored_bytes(org uuid, retention_days integer) returns bigint
language plpgsql stable as $$
begin
    return (
        select greatest(coalesce(sum(h.bytes), 0), 0)::bigint
        from history_bytes h
        where h.org_id = org
          -- tolstoy_maintain_history drops a month once its end is past retention.
          and (retention_days is null or (h.month + interval '1 month')::date > tolstoy_now()::date - retention_days));
end;
$$;

create or replace function tolstoy_rate_scope(org uuid, tool uuid, run_user uuid, acts_as_user boolean)
returns text
language plpgsql stable as $$
begin
    return (
        select case when acts_as_user and run_user is not null
                         and exists (select 1 from user_connections c
                                     where c.org_id = org and c.tool_id = tool and c.user_id = run_user)
                    then 'user:' || run_user::text
                    else 'organization' end);
end;
$$;

create or replace function tolstoy_iso(t timestamptz) returns text
language plpgsql immutable as $$
begin
    return to_char(t at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
end;
$$;

create or replace function tolstoy_unfinished_waits(org uuid, run uuid, run_created_at timestamptz, run_plan jsonb,
                                                    signal_name text)
returns bigint
language plpgsql stable as $$
begin
    return (
        select count(*)
        from (select st ->> 'id' as step_id, st -> 'config' as config
              from jsonb_array_elements(coalesce(run_plan -> 'steps', '[]')) as st
              where st ->> 'type' = 'wait'
              union all
              select 'onFailure.' || (st ->> 'id'), st -> 'config'
              from jsonb_array_elements(coalesce(run_plan -> 'onFailure', '[]')) as st
              where st ->> 'type' = 'wait') as waits
        -- A wait for one signal names it in "signal", a wait for the first of several in "signals".
        where (waits.config ->> 'signal' = signal_name or coalesce(waits.config -> 'signals', '[]') ? signal_name)
          and not exists (select 1 from flow_run_steps s
                          where s.org_id = org and s.run_id = run and s.run_created_at = tolstoy_unfinished_waits.run_created_at
                            and s.step_id = waits.step_id and s.status in ('completed', 'failed', 'skipped')));
end;
$$;

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

create or replace function tolstoy_cancel_descendants(org uuid, parent uuid)
returns integer
language plpgsql as $$
declare
    cancelled integer;
begin
    with recursive tree as (
        select c.org_id, c.id, c.created_at
        from flow_runs c
        where c.org_id = org and c.parent_run_id = parent
          and c.created_at >= tolstoy_run_from(parent)  -- children are queued after their parent
        union all
        select c.org_id, c.id, c.created_at
        from flow_runs c
        join tree t on c.org_id = t.org_id and c.parent_run_id = t.id and c.created_at >= t.created_at
    ), locked as (
        -- Deepest first, as a finishing child locks itself and then (flow_runs_wake_parent) its parent:
        -- locking a middle run before a grandchild that is finishing would deadlock with it.
        select r.org_id, r.id, r.created_at
        from flow_runs r
        join tree on r.org_id = tree.org_id and r.id = tree.id and r.created_at = tree.created_at
        where r.status in ('queued', 'running', 'waiting')
          and (r.status <> 'running' or not r.cancel_requested or r.lease_expires_at < tolstoy_now())
        order by r.depth desc, r.id
        for update of r
    ), changed as (
        -- As tolstoy_cancel_run: at once unless a worker holds it (a running run whose lease expired has none).
        update flow_runs r
        set status = case when r.status in ('queued', 'waiting') or r.lease_expires_at < tolstoy_now()
                          then 'cancelled'::flow_run_status else r.status end,
            finished_at = case when r.status in ('queued', 'waiting') or r.lease_expires_at < tolstoy_now() then tolstoy_now()
                               else r.finished_at end,
            error = case when r.status in ('queued', 'waiting') or r.lease_expires_at < tolstoy_now()
                         then '{"message": "Cancelled with its parent"}'::jsonb else r.error end,
            lease_owner = case when r.lease_expires_at < tolstoy_now() then null else r.lease_owner end,
            lease_token = case when r.lease_expires_at < tolstoy_now() then null else r.lease_token end,
            lease_expires_at = case when r.lease_expires_at < tolstoy_now() then null else r.lease_expires_at end,
            cancel_requested = true
        from locked
        where r.org_id = locked.org_id and r.id = locked.id and r.created_at = locked.created_at
          and r.status in ('queued', 'running', 'waiting')
          and (r.status <> 'running' or not r.cancel_requested or r.lease_expires_at < tolstoy_now())
        returning r.org_id, r.id, r.flow_id, r.user_id, r.status
    ), logged as (
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error)
        select org_id, flow_id, user_id, id::text, '$flow', 'cancelled', '{}', '{"message": "Cancelled with its parent"}'
        from changed
        where status = 'cancelled'
    )
    select (count(*) filter (where status = 'cancelled'))::integer into cancelled
    from changed;
    return cancelled;
end;
$$;

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create or replace function tolstoy_now() returns timestamptz
language sql stable security definer set search_path = public, pg_temp as $$
    -- now() (the transaction's start), moved by what tolstoy_clock says: nothing in production.
    select now() + (select c.ahead from tolstoy_clock c)
$$;

create or replace function tolstoy_clock_timestamp() returns timestamptz
language sql volatile security definer set search_path = public, pg_temp as $$
    select clock_timestamp() + (select c.ahead from tolstoy_clock c)
$$;

create or replace function tolstoy_next_schedule() returns timestamptz
language sql stable security definer set search_path = public, pg_temp as $$
    select min(t.next_run_at) from flow_triggers t
    where t.type = 'schedule' and t.enabled and t.next_run_at is not null
$$;

create or replace function tolstoy_next_delivery() returns timestamptz
language sql stable security definer set search_path = public, pg_temp as $$
    select min(l.due_at) from webhook_lines l where l.due_at is not null
$$;

create or replace function tolstoy_run_payload(r flow_runs) returns jsonb
language sql stable as $$
    select jsonb_build_object(
        'org_id', r.org_id, 'id', r.id, 'created_at', r.created_at, 'flow_id', r.flow_id,
        'flow_version', r.flow_version, 'user_id', r.user_id, 'acts_as_user', r.acts_as_user,
        'variables', r.variables, 'plan', r.plan,
        'token', r.lease_token, 'root_run_id', r.root_run_id, 'claims', r.claims, 'recoveries', r.recoveries,
        'strikes', r.strikes, 'handbacks', r.handbacks, 'cancel_requested', r.cancel_requested,
        'trace_parent', r.trace_parent,
        'checkpoints', coalesce((
            select jsonb_agg(jsonb_build_object(
                       'step_id', s.step_id, 'status', s.status, 'attempt', s.attempt, 'inputs', s.inputs,
                       'outputs', s.outputs, 'sealed', encode(s.sealed, 'base64'), 'error', s.error,
                       'wake_at', s.wake_at, 'call_started_at', s.call_started_at)
                   order by s.started_at)
            from flow_run_steps s
            where s.org_id = r.org_id and s.run_id = r.id and s.run_created_at = r.created_at), '[]'))
$$;

create or replace function tolstoy_plan(org uuid, steps jsonb, on_failure jsonb default null) returns jsonb
language sql stable as $$
    select jsonb_build_object('steps', steps, 'actions', coalesce((
        select jsonb_agg(jsonb_build_object(
                   'id', a.id, 'key', a.key, 'tool_id', a.tool_id, 'method', a.method, 'endpoint', a.endpoint,
                   'headers', a.headers, 'input_schema', a.input_schema, 'execute_if', a.execute_if,
                   'version', a.version, 'tool', jsonb_build_object('id', t.id, 'name', t.name,
                                                                     'base_url', t.base_url,
                                                                     'auth_type', t.auth_type,
                                                                     'honors_idempotency_key',
                                                                     t.honors_idempotency_key)))
        from actions a join tools t on t.org_id = a.org_id and t.id = a.tool_id
        cross join lateral (select jsonb_build_array(steps, coalesce(on_failure, '[]')) as called) c
        where a.org_id = org
          and (a.key in (select jsonb_path_query(c.called, 'strict $.**.actionKey') #>> '{}')
               or a.id::text in (select jsonb_path_query(c.called, 'strict $.**.actionId') #>> '{}'))), '[]'))
       || case when on_failure is not null then jsonb_build_object('onFailure', on_failure) else '{}' end
$$;

create or replace function tolstoy_plan_for(org uuid, flow uuid, plan_version integer)
returns jsonb
language sql stable as $_$
select tolstoy_plan(org, v.steps, v.on_failure)
from flow_versions v
where v.org_id = org and v.flow_id = flow and v.version = plan_version;
$_$;

create or replace function tolstoy_queue_run(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                             vars jsonb, key text, retrying uuid, acting boolean default false)
returns table (run flow_runs, created boolean)
language sql as $$
    select q.run, q.created
    from tolstoy_queue_run_v2(org, flow, queue_run_version, actor, vars, key, retrying, acting, null) as q
$$;

create or replace function tolstoy_queue_run_v2(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                                vars jsonb, key text, retrying uuid, acting boolean,
                                                rerunning jsonb)
returns table (run flow_runs, created boolean)
language sql as $$
    select q.run, q.created
    from tolstoy_queue_run_v3(org, flow, queue_run_version, actor, vars, key, retrying, acting, rerunning, null) as q
$$;

create or replace function tolstoy_queue_run_v3(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                                vars jsonb, key text, retrying uuid, acting boolean,
                                                rerunning jsonb, concurrency_key text)
returns table (run flow_runs, created boolean)
language sql as $$
    select q.run, q.created
    from tolstoy_queue_run_v4(org, flow, queue_run_version, actor, vars, key, retrying, acting, rerunning,
                              concurrency_key, null) as q
$$;

create or replace function tolstoy_claim_runs(worker text, max_runs integer, lease_seconds double precision,
                                              max_recoveries integer)
returns jsonb
language sql security definer set search_path = public, pg_temp as $$
    select jsonb_build_object('runs', coalesce(jsonb_agg(c.run) filter (where c.run is not null), '[]'),
                              'next_due', max(c.meta ->> 'next_due')::timestamptz)
    from tolstoy_claim_runs_v2(worker, max_runs, lease_seconds, max_recoveries, 300) as c
$$;

create or replace function tolstoy_queue_stats()
returns table (queued bigint, due bigint, oldest_due_age_seconds double precision)
language sql stable security definer set search_path = public, pg_temp as $$
    -- The clock read once, not once per queued run.
    select q.queued, q.due, coalesce(extract(epoch from c.now - q.oldest_due), 0)::float8
    from (select tolstoy_now() as now) as c
    cross join lateral (select count(*) as queued, count(*) filter (where r.run_after <= c.now) as due,
                               min(r.run_after) filter (where r.run_after <= c.now) as oldest_due
                        from flow_runs r
                        where r.status = 'queued') as q
$$;

create or replace function tolstoy_parked_runs()
returns table (waiting_for text, runs bigint)
language sql stable security definer set search_path = public, pg_temp as $$
    select r.waiting_for, count(*)
    from flow_runs r
    where r.waiting_for is not null
    group by r.waiting_for
$$;

create or replace function tolstoy_stored_bytes(org uuid, retention_days integer) returns bigint
language sql stable as $$
    select greatest(coalesce(sum(h.bytes), 0), 0)::bigint
    from history_bytes h
    where h.org_id = org
      -- tolstoy_maintain_history drops a month once its end is past retention.
      and (retention_days is null or (h.month + interval '1 month')::date > tolstoy_now()::date - retention_days)
$$;

create or replace function tolstoy_rate_scope(org uuid, tool uuid, run_user uuid, acts_as_user boolean)
returns text
language sql stable as $$
select case when acts_as_user and run_user is not null
                 and exists (select 1 from user_connections c
                             where c.org_id = org and c.tool_id = tool and c.user_id = run_user)
            then 'user:' || run_user::text
            else 'organization' end;
$$;

create or replace function tolstoy_iso(t timestamptz) returns text
language sql immutable as $$
    select to_char(t at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

create or replace function tolstoy_unfinished_waits(org uuid, run uuid, run_created_at timestamptz, run_plan jsonb,
                                                    signal_name text)
returns bigint
language sql stable as $$
select count(*)
from (select st ->> 'id' as step_id, st -> 'config' as config
      from jsonb_array_elements(coalesce(run_plan -> 'steps', '[]')) as st
      where st ->> 'type' = 'wait'
      union all
      select 'onFailure.' || (st ->> 'id'), st -> 'config'
      from jsonb_array_elements(coalesce(run_plan -> 'onFailure', '[]')) as st
      where st ->> 'type' = 'wait') as waits
-- A wait for one signal names it in "signal", a wait for the first of several in "signals".
where (waits.config ->> 'signal' = signal_name or coalesce(waits.config -> 'signals', '[]') ? signal_name)
  and not exists (select 1 from flow_run_steps s
                  where s.org_id = org and s.run_id = run and s.run_created_at = tolstoy_unfinished_waits.run_created_at
                    and s.step_id = waits.step_id and s.status in ('completed', 'failed', 'skipped'));
$$;

create or replace function tolstoy_authenticate(hash bytea) returns table (org_id uuid, key_id uuid)
language sql security definer set search_path = public, pg_temp as $$
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
    select found.org_id, found.id from found
$$;

create or replace function tolstoy_hook_target(hook uuid)
returns table (org_id uuid, flow_id uuid, enabled boolean, verification text, secret bytea)
language sql stable security definer set search_path = public, pg_temp as $$
    select t.org_id, t.flow_id, t.enabled, t.verification, t.secret
    from flow_triggers t
    where t.id = hook and t.type = 'webhook'
$$;

create or replace function tolstoy_audit_mask_walk(value jsonb) returns jsonb
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

create or replace function tolstoy_cancel_descendants(org uuid, parent uuid)
returns integer
language sql as $$
with recursive tree as (
    select c.org_id, c.id, c.created_at
    from flow_runs c
    where c.org_id = org and c.parent_run_id = parent
      and c.created_at >= tolstoy_run_from(parent)  -- children are queued after their parent
    union all
    select c.org_id, c.id, c.created_at
    from flow_runs c
    join tree t on c.org_id = t.org_id and c.parent_run_id = t.id and c.created_at >= t.created_at
), locked as (
    -- Deepest first, as a finishing child locks itself and then (flow_runs_wake_parent) its parent:
    -- locking a middle run before a grandchild that is finishing would deadlock with it.
    select r.org_id, r.id, r.created_at
    from flow_runs r
    join tree on r.org_id = tree.org_id and r.id = tree.id and r.created_at = tree.created_at
    where r.status in ('queued', 'running', 'waiting')
      and (r.status <> 'running' or not r.cancel_requested or r.lease_expires_at < tolstoy_now())
    order by r.depth desc, r.id
    for update of r
), changed as (
    -- As tolstoy_cancel_run: at once unless a worker holds it (a running run whose lease expired has none).
    update flow_runs r
    set status = case when r.status in ('queued', 'waiting') or r.lease_expires_at < tolstoy_now()
                      then 'cancelled'::flow_run_status else r.status end,
        finished_at = case when r.status in ('queued', 'waiting') or r.lease_expires_at < tolstoy_now() then tolstoy_now()
                           else r.finished_at end,
        error = case when r.status in ('queued', 'waiting') or r.lease_expires_at < tolstoy_now()
                     then '{"message": "Cancelled with its parent"}'::jsonb else r.error end,
        lease_owner = case when r.lease_expires_at < tolstoy_now() then null else r.lease_owner end,
        lease_token = case when r.lease_expires_at < tolstoy_now() then null else r.lease_token end,
        lease_expires_at = case when r.lease_expires_at < tolstoy_now() then null else r.lease_expires_at end,
        cancel_requested = true
    from locked
    where r.org_id = locked.org_id and r.id = locked.id and r.created_at = locked.created_at
      and r.status in ('queued', 'running', 'waiting')
      and (r.status <> 'running' or not r.cancel_requested or r.lease_expires_at < tolstoy_now())
    returning r.org_id, r.id, r.flow_id, r.user_id, r.status
), logged as (
    insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error)
    select org_id, flow_id, user_id, id::text, '$flow', 'cancelled', '{}', '{"message": "Cancelled with its parent"}'
    from changed
    where status = 'cancelled'
)
select (count(*) filter (where status = 'cancelled'))::integer
from changed;
$$;
