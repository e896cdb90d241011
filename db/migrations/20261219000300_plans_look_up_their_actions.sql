-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- A run's plan (tolstoy_plan, frozen into every run queued) holds the actions its steps call. It
-- found them by reading every action of the organization and testing each against the keys and ids
-- the steps name: queueing a run cost a pass over the organization's actions however few the flow
-- called (3,000 actions: most of PostgreSQL's CPU per queued run in `python -m bench`), and the cost
-- grew with the organization, not the flow. Now the keys and ids are collected first and each is
-- looked up by its index (actions_org_id_key_key, actions_pkey); a flow that calls no action reads
-- none. Same answer: the actions named by key or id (an id that is not a uuid's text names none, as
-- when ids were compared as text), each once, with its tool. tests/db/test_query_plans.py checks
-- the plan reads no action it does not name.
create or replace function tolstoy_plan(org uuid, steps jsonb, on_failure jsonb default null) returns jsonb
language plpgsql stable as $$
declare
    called jsonb := jsonb_build_array(steps, coalesce(on_failure, '[]'));
    -- The actions the steps name, by key and by id. Each is then looked up by its index
    -- (actions_org_id_key_key, actions_pkey): the organization's other actions are never read, and a
    -- flow that calls none reads none. An id that is not a uuid's text names no action, as when ids
    -- were compared as text.
    keys text[] := array(select jsonb_path_query(called, 'strict $.**.actionKey') #>> '{}');
    ids uuid[] := array(select named.id::uuid
                        from (select jsonb_path_query(called, 'strict $.**.actionId') #>> '{}' as id) as named
                        where named.id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$');
    found jsonb;
begin
    if cardinality(keys) > 0 or cardinality(ids) > 0 then
        select jsonb_agg(jsonb_build_object(
                   'id', a.id, 'key', a.key, 'tool_id', a.tool_id, 'method', a.method, 'endpoint', a.endpoint,
                   'headers', a.headers, 'input_schema', a.input_schema, 'execute_if', a.execute_if,
                   'version', a.version, 'tool', jsonb_build_object('id', t.id, 'name', t.name,
                                                                     'base_url', t.base_url,
                                                                     'auth_type', t.auth_type,
                                                                     'honors_idempotency_key',
                                                                     t.honors_idempotency_key)))
        into found
        from actions a join tools t on t.org_id = a.org_id and t.id = a.tool_id
        where a.org_id = org and (a.key = any(keys) or a.id = any(ids));
    end if;
    return jsonb_build_object('steps', steps, 'actions', coalesce(found, '[]'))
           || case when on_failure is not null then jsonb_build_object('onFailure', on_failure) else '{}' end;
end;
$$;

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

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
