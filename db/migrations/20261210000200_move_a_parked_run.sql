-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Moving a parked run to another version of its flow (issue 25): tolstoy_move_run, which the engine's
-- lifecycle module calls (POST /flows/{id}/executions/{executionId}/move). The plan a move freezes is
-- the version's as tolstoy_plan_for reads it, built by tolstoy_plan (the builder a new run's and a
-- re-run's plan come from: 20261210000100); tolstoy_step_target says whether a recorded output still fits a step of
-- another plan, tolstoy_plan_steps lists a plan's steps under their checkpoint ids. New functions only:
-- nothing that exists changes, so the previous release runs beside them unchanged.

-- The plan of a version: its steps, the actions they (and its onFailure steps) call with their tools,
-- as they are now, and its onFailure steps when it has any (flow_runs_plan_on_failure adds those to a
-- plan that lacks them: a retry of a run queued before this function).
create function tolstoy_plan_for(org uuid, flow uuid, plan_version integer)
returns jsonb
language sql stable as $_$
select tolstoy_plan(org, v.steps, v.on_failure)
from flow_versions v
where v.org_id = org and v.flow_id = flow and v.version = plan_version;
$_$;

comment on function tolstoy_plan_for(uuid, uuid, integer) is
    'The plan of a flow version as a run freezes it: {steps, actions (those its steps and onFailure steps call, '
    'with their tools, as they are now), onFailure (when the version has any)}; null when there is no such version.';

-- What a step of a plan calls, to tell whether a step's recorded output still fits the step of another
-- plan: its kind and, for a kind that calls out, whom (an action: the action with its method, endpoint and
-- tool; an http_request: its method and URL; a subflow: the flow and version; a foreach: what its item
-- step calls). Equal targets: the output still fits.
create function tolstoy_step_target(step jsonb, actions jsonb)
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
create function tolstoy_plan_steps(plan jsonb)
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

-- A parked run moves to another version of its flow: its plan is the version's as a run queued now
-- would freeze it (tolstoy_plan_for), its checkpoints of steps the version keeps stay, and the move is
-- logged. Only a parked run moves: no worker holds it (queued, or waiting for a person to resolve an
-- unknown outcome), a step of it is parked (waiting: a wait step's signal, a delay, a retry's back-off;
-- or outcome_unknown), and no child run of it is under way (a subflow's parent stays on its version
-- until its child ends). The run's row is held while it decides, as a claim, a signal or a cancel holds
-- it, so none of them interleaves. A checkpoint the move would discard (its step is not in the version)
-- or whose output no longer fits (its step calls something else: tolstoy_step_target) is discarded only
-- when drop_steps names it; else nothing is written and the answer says which (dry: the answer only).
create function tolstoy_move_run(org uuid, flow uuid, target uuid, to_version integer, drop_steps text[],
                                            dry boolean, actor uuid)
returns jsonb
language plpgsql as $$
declare
    found_run flow_runs;
    new_plan jsonb;
    parked text[];
    unknown boolean;
    checkpointed jsonb;
    added jsonb;
    removed jsonb;
    changed jsonb;
    kept jsonb;
    unfit jsonb;
    needed text[];
    strays text[];
    missing text[];
    dropped text[];
    wakes boolean;
    diff jsonb;
    now_status flow_run_status;
begin
    select * into found_run
    from flow_runs r
    where r.org_id = org and r.flow_id = flow and r.id = target
      and r.created_at between tolstoy_run_from(target) and tolstoy_run_until(target)
    for update;
    if found_run.id is null then
        return null;
    end if;
    new_plan := tolstoy_plan_for(org, flow, to_version);
    if new_plan is null then
        return jsonb_build_object('refused', 'version');
    end if;
    if found_run.status in ('completed', 'failed', 'cancelled', 'running') then
        return jsonb_build_object('refused', 'status', 'status', found_run.status);
    end if;
    if exists (select 1 from flow_runs c
               where c.org_id = org and c.parent_run_id = target
                 and c.created_at >= tolstoy_run_from(target)  -- children are queued after their parent
                 and c.status in ('queued', 'running', 'waiting')) then
        return jsonb_build_object('refused', 'child', 'status', found_run.status);
    end if;
    select array_agg(distinct split_part(s.step_id, '[', 1)), bool_or(s.status = 'outcome_unknown')
    into parked, unknown
    from flow_run_steps s
    where s.org_id = org and s.run_id = target and s.run_created_at = found_run.created_at
      and s.status in ('waiting', 'outcome_unknown');
    if parked is null or (found_run.status = 'waiting' and not unknown) then
        return jsonb_build_object('refused', 'parked', 'status', found_run.status);
    end if;
    -- What is recorded of each step (a foreach step's items under its own id): its checkpoint's status.
    select coalesce(jsonb_object_agg(c.top, c.status), '{}') into checkpointed
    from (select split_part(s.step_id, '[', 1) as top,
                 (array_agg(s.status order by s.step_id = split_part(s.step_id, '[', 1) desc, s.step_id))[1] as status
          from flow_run_steps s
          where s.org_id = org and s.run_id = target and s.run_created_at = found_run.created_at
          group by 1) c;
    with was as (select * from tolstoy_plan_steps(found_run.plan)),
         now_is as (select * from tolstoy_plan_steps(new_plan)),
         both_ as (select was.step_id, now_is.pos, was.step as old_step, now_is.step as new_step
                   from was join now_is on now_is.step_id = was.step_id)
    select coalesce((select jsonb_agg(n.step_id order by n.pos) from now_is n
                     where not exists (select 1 from was w where w.step_id = n.step_id)), '[]'),
           coalesce((select jsonb_agg(jsonb_build_object('stepId', w.step_id, 'status', checkpointed ->> w.step_id)
                                      order by w.pos)
                     from was w where not exists (select 1 from now_is n where n.step_id = w.step_id)), '[]'),
           coalesce((select jsonb_agg(jsonb_build_object(
                                'stepId', b.step_id,
                                'fields', (select jsonb_agg(k order by k)
                                           from (select jsonb_object_keys(b.old_step) as k
                                                 union select jsonb_object_keys(b.new_step)) keys
                                           where b.old_step -> k is distinct from b.new_step -> k))
                                      order by b.pos)
                     from both_ b where b.old_step is distinct from b.new_step), '[]'),
           coalesce((select jsonb_agg(jsonb_build_object('stepId', b.step_id, 'status', checkpointed ->> b.step_id)
                                      order by b.pos)
                     from both_ b where checkpointed ? b.step_id), '[]'),
           coalesce((select jsonb_agg(jsonb_build_object(
                                'stepId', b.step_id, 'status', checkpointed ->> b.step_id,
                                'was', tolstoy_step_target(b.old_step, found_run.plan -> 'actions'),
                                'now', tolstoy_step_target(b.new_step, new_plan -> 'actions')) order by b.pos)
                     from both_ b
                     where checkpointed ? b.step_id
                       and tolstoy_step_target(b.old_step, found_run.plan -> 'actions')
                           is distinct from tolstoy_step_target(b.new_step, new_plan -> 'actions')), '[]')
    into added, removed, changed, kept, unfit;
    -- A checkpoint is discarded only when the request names it: a step the version removes, or one whose
    -- recorded output no longer fits (it runs again, under the new version).
    needed := array(select r ->> 'stepId' from jsonb_array_elements(removed) r where r ->> 'status' is not null
                    union select u ->> 'stepId' from jsonb_array_elements(unfit) u);
    strays := array(select d from unnest(coalesce(drop_steps, '{}')) d
                    where d not in (select r ->> 'stepId' from jsonb_array_elements(removed) r)
                      and d <> all (needed));
    if cardinality(strays) > 0 then
        return jsonb_build_object('refused', 'drop_steps', 'strays', to_jsonb(strays));
    end if;
    missing := array(select n from unnest(needed) n where n <> all (coalesce(drop_steps, '{}')) order by n);
    dropped := array(select n from unnest(needed) n where n = any (coalesce(drop_steps, '{}')) order by n);
    -- Every parked step dropped: nothing of the run is parked any more, and it goes on at once.
    wakes := parked <@ dropped;
    diff := jsonb_build_object(
        'fromVersion', found_run.flow_version, 'toVersion', to_version, 'parked', to_jsonb(parked),
        'added', added, 'removed', removed, 'changed', changed, 'kept', kept, 'outputNoLongerFits', unfit,
        'mustDrop', to_jsonb(missing), 'dropped', to_jsonb(dropped), 'wakes', wakes);
    if cardinality(missing) > 0 and not dry then
        return jsonb_build_object('refused', 'drop', 'diff', diff, 'status', found_run.status);
    end if;
    if dry then
        return jsonb_build_object('moved', false, 'diff', diff,
                                  'run', jsonb_build_object('id', found_run.id, 'flow_id', found_run.flow_id,
                                                            'flow_version', found_run.flow_version,
                                                            'retry_of', found_run.retry_of,
                                                            'status', found_run.status));
    end if;
    delete from flow_run_steps s
    where s.org_id = org and s.run_id = target and s.run_created_at = found_run.created_at
      and split_part(s.step_id, '[', 1) = any (dropped);
    update flow_runs r
    set plan = new_plan, flow_version = to_version,
        status = case when wakes then 'queued'::flow_run_status else r.status end,
        run_after = case when wakes then tolstoy_now() else r.run_after end
    where r.org_id = org and r.id = target and r.created_at = found_run.created_at
    returning r.status into now_status;
    insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, source)
    values (org, flow, actor, target::text, '$flow', 'pending',
            jsonb_build_object('moved', jsonb_build_object(
                'fromVersion', found_run.flow_version, 'toVersion', to_version, 'added', added,
                'removed', removed, 'dropped', to_jsonb(dropped), 'outputNoLongerFits', unfit, 'wakes', wakes)),
            'engine');
    return jsonb_build_object('moved', true, 'diff', diff,
                              'run', jsonb_build_object('id', found_run.id, 'flow_id', found_run.flow_id,
                                                        'flow_version', to_version, 'retry_of', found_run.retry_of,
                                                        'status', now_status));
end
$$;

comment on function tolstoy_move_run(uuid, uuid, uuid, integer, text[], boolean, uuid) is
    'Moves a parked run (no worker holds it, a step parked, no child run under way) to another version of its flow, '
    'holding its row: the version''s plan (tolstoy_plan_for), checkpoints of kept steps kept, those drop_steps names '
    'discarded (required for a removed step with a checkpoint and a kept one whose output no longer fits), the move '
    'logged as actor''s. Null when no such run; {refused: version|status|child|parked|drop_steps|drop} writes nothing '
    '(drop: with the diff); dry: {moved: false, diff, run}; else {moved: true, diff, run}.';

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop function tolstoy_move_run(uuid, uuid, uuid, integer, text[], boolean, uuid);
drop function tolstoy_plan_steps(jsonb);
drop function tolstoy_step_target(jsonb, jsonb);
drop function tolstoy_plan_for(uuid, uuid, integer);
