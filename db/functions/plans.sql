-- A run's plan: what a version of a flow runs, frozen when a run is queued (tolstoy_queue_run) or moved
-- to another version (tolstoy_move_run), and what a step of a plan calls.
--
-- The current source of these functions (db/functions/README.md says how to change one).

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

comment on function tolstoy_plan(uuid, jsonb, jsonb) is
    'A run''s plan of these steps (and onFailure steps, when given): the steps and the actions they call (with '
    'their tools) as they are now. tolstoy_queue_run freezes it into a new run (flow_runs_plan_on_failure adds '
    'the version''s onFailure), a re-run''s preview reads it, tolstoy_plan_for builds a version''s for a move.';

-- The plan of a version: its steps, the actions they (and its onFailure steps) call with their tools,
-- as they are now, and its onFailure steps when it has any (flow_runs_plan_on_failure adds those to a
-- plan that lacks them: a retry of a run queued before this function).
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

comment on function tolstoy_plan_for(uuid, uuid, integer) is
    'The plan of a flow version as a run freezes it: {steps, actions (those its steps and onFailure steps call, '
    'with their tools, as they are now), onFailure (when the version has any)}; null when there is no such version.';

-- What a step of a plan calls, to tell whether a step's recorded output still fits the step of another
-- plan: its kind and, for a kind that calls out, whom (an action: the action with its method, endpoint and
-- tool; an http_request: its method and URL; a subflow: the flow and version; a foreach: what its item
-- step calls). Equal targets: the output still fits.
create or replace function tolstoy_step_target(step jsonb, actions jsonb)
returns jsonb
language plpgsql immutable as $$
begin
    return jsonb_strip_nulls(jsonb_build_object(
        'type', step ->> 'type',
        'action', case when step ->> 'type' = 'action' then coalesce((
            select jsonb_build_object('id', a ->> 'id', 'method', a ->> 'method', 'endpoint', a ->> 'endpoint',
                                      'tool', a -> 'tool' ->> 'id', 'baseUrl', a -> 'tool' ->> 'base_url')
            from jsonb_array_elements(coalesce(actions, '[]')) a
            where a ->> 'key' = step -> 'config' ->> 'actionKey' or a ->> 'id' = step -> 'config' ->> 'actionId'
            limit 1), jsonb_build_object('missing', coalesce(step -> 'config' ->> 'actionKey',
                                                             step -> 'config' ->> 'actionId'))) end,
        'call', case when step ->> 'type' = 'http_request'
                     then jsonb_build_object('method', step -> 'config' -> 'method',
                                             'url', step -> 'config' -> 'url') end,
        'flow', case when step ->> 'type' = 'subflow'
                     then jsonb_build_object('id', step -> 'config' -> 'flowId', 'key', step -> 'config' -> 'flowKey',
                                             'version', step -> 'config' -> 'version') end,
        'item', case when step ->> 'type' = 'foreach'
                     then tolstoy_step_target(step -> 'config' -> 'step', actions) end));
end
$$;

comment on function tolstoy_step_target(jsonb, jsonb) is
    'What a step of a plan calls (its type; the action with method, endpoint and tool; an http_request''s method and '
    'URL; a subflow''s flow; a foreach''s item step''s target): a recorded output fits a step of another plan when '
    'both targets are equal (tolstoy_move_run).';

-- The steps of a plan under the ids their checkpoints have: its steps, then its onFailure steps as
-- onFailure.<id>, in plan order.
create or replace function tolstoy_plan_steps(plan jsonb)
returns table (step_id text, pos bigint, step jsonb)
language sql immutable as $$
select e.value ->> 'id', e.ordinality, e.value
from jsonb_array_elements(coalesce(plan -> 'steps', '[]')) with ordinality e
union all
select 'onFailure.' || (e.value ->> 'id'), 1000000 + e.ordinality, e.value
from jsonb_array_elements(coalesce(plan -> 'onFailure', '[]')) with ordinality e;
$$;

comment on function tolstoy_plan_steps(jsonb) is
    'The steps of a plan as (step_id, pos, step): its steps, then its onFailure steps as onFailure.<id> (the ids their '
    'checkpoints have), in plan order.';
