-- The run lifecycle's state changes that a person asks for through the API: cancelling a run (and
-- the runs below it) and resolving a step whose outcome is unknown (tolstoy/engine/lifecycle.py
-- calls them; queueing is tolstoy_queue_run in queue_and_claim.sql).
--
-- The current source of these functions (db/functions/README.md says how to change one).

-- Cancelling a run cancels the runs its subflow steps queued, and theirs: a
-- queued or waiting one at once (with its log row), a running one within one
-- heartbeat. Rows are locked children first, parent last, as a child's last
-- checkpoint does.
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

comment on function tolstoy_cancel_descendants(uuid, uuid) is
    'Cancels the unfinished runs below parent (its subflow steps'' children, theirs, …), deepest first: a queued or '
    'waiting one at once with its log row, a running one within one heartbeat. Returns how many were cancelled at '
    'once. Called by tolstoy_cancel_run before and after the parent''s own cancel.';

-- A queued (or sleeping), or waiting run is cancelled at once, and so is a
-- running one whose lease expired (its worker is gone: nothing would pass a
-- step boundary to honour the cancel, and its writes are fenced by that
-- lease); a running one within one heartbeat, and, should its worker die
-- first, when it is recovered (the claim carries the cancel).
create or replace function tolstoy_cancel_run(org uuid, flow uuid, target uuid, actor uuid)
returns jsonb
language plpgsql set plan_cache_mode = force_generic_plan as $$
declare
    found_run flow_runs;
    now_status flow_run_status;
    below integer := 0;
begin
    select * into found_run
    from flow_runs r
    where r.org_id = org and r.flow_id = flow and r.id = target
      and r.created_at between tolstoy_run_from(target) and tolstoy_run_until(target);
    if found_run.id is null then
        return null;
    end if;
    if found_run.status in ('queued', 'running', 'waiting') then
        below := tolstoy_cancel_descendants(org, target);
    end if;
    update flow_runs
    set status = case when status in ('queued', 'waiting') or lease_expires_at < tolstoy_now()
                      then 'cancelled'::flow_run_status else status end,
        finished_at = case when status in ('queued', 'waiting') or lease_expires_at < tolstoy_now() then tolstoy_now()
                           else finished_at end,
        error = case when status in ('queued', 'waiting') or lease_expires_at < tolstoy_now()
                     then '{"message": "Cancelled"}'::jsonb else error end,
        lease_owner = case when lease_expires_at < tolstoy_now() then null else lease_owner end,
        lease_token = case when lease_expires_at < tolstoy_now() then null else lease_token end,
        lease_expires_at = case when lease_expires_at < tolstoy_now() then null else lease_expires_at end,
        cancel_requested = true
    where org_id = org and flow_id = flow and id = target and status in ('queued', 'running', 'waiting')
      and created_at between tolstoy_run_from(target) and tolstoy_run_until(target)
    returning status into now_status;
    if now_status is null then
        return jsonb_build_object('changed', false, 'status', found_run.status);
    end if;
    -- Again, now that the run's row is locked: a subflow step that was queueing a child while the
    -- first pass looked committed it meanwhile, and this pass sees it. The run itself can queue no
    -- other child now (cancel_requested, or cancelled).
    below := below + tolstoy_cancel_descendants(org, target);
    if now_status = 'cancelled' then
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error, source)
        values (org, flow, actor, target::text, '$flow', 'cancelled', '{}', '{"message": "Cancelled"}', 'engine');
    end if;
    return jsonb_build_object('changed', true, 'status', now_status, 'descendants', below,
                              'run', jsonb_build_object('id', found_run.id, 'flow_id', found_run.flow_id,
                                                        'flow_version', found_run.flow_version,
                                                        'retry_of', found_run.retry_of, 'status', now_status));
end
$$;

comment on function tolstoy_cancel_run(uuid, uuid, uuid, uuid) is
    'Cancels a run of a flow (and the runs below it, tolstoy_cancel_descendants): at once when queued, sleeping, '
    'waiting or abandoned by its worker (with its log row, written as actor''s), else within one heartbeat. Null '
    'when no such run; {changed: false, status} when it had finished; else {changed, status, descendants (cancelled '
    'at once), run}.';

-- A person says what became of a call whose outcome is unknown: the step
-- completed (with outputs, masked, and sealed when they hold secrets),
-- failed, or is to be sent again (back to 'running' with no call recorded,
-- same attempt and key); the resolution is logged and the run queued again.
create or replace function tolstoy_resolve_step(org uuid, flow uuid, target uuid, resolved_step text, actor uuid,
                                     outcome text, shown jsonb, sealed_output bytea, resolution_error jsonb,
                                     key_missing boolean default false)
returns jsonb
language plpgsql set plan_cache_mode = force_generic_plan as $$
declare
    found_run flow_runs;
    unknown_attempt integer;
begin
    if outcome is null or outcome not in ('succeeded', 'failed', 'retry') then
        raise exception 'tolstoy_resolve_step: invalid outcome' using errcode = 'invalid_parameter_value';
    end if;
    select * into found_run
    from flow_runs r
    where r.org_id = org and r.flow_id = flow and r.id = target
      and r.created_at between tolstoy_run_from(target) and tolstoy_run_until(target)
    for update;
    if found_run.id is null then
        return null;
    end if;
    if found_run.status <> 'waiting' then
        return jsonb_build_object('refused', 'status', 'status', found_run.status);
    end if;
    select s.attempt into unknown_attempt
    from flow_run_steps s
    where s.org_id = org and s.run_id = found_run.id and s.run_created_at = found_run.created_at
      and s.step_id = resolved_step and s.status = 'outcome_unknown'
    for update;
    if unknown_attempt is null then
        return jsonb_build_object('refused', 'step');
    end if;
    -- Outputs holding secrets are kept sealed: without a key to seal them with, nothing is written.
    if key_missing then
        return jsonb_build_object('refused', 'key');
    end if;
    update flow_run_steps s
    set status = case outcome when 'succeeded' then 'completed' when 'failed' then 'failed' else 'running' end,
        outputs = shown, sealed = sealed_output, error = resolution_error, call_started_at = null,
        finished_at = case when outcome in ('succeeded', 'failed') then tolstoy_now() end
    where s.org_id = org and s.run_id = found_run.id and s.run_created_at = found_run.created_at
      and s.step_id = resolved_step;
    insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error, source)
    values (org, flow, actor, target::text, resolved_step,
            (case outcome when 'succeeded' then 'completed' when 'failed' then 'failed'
                          else 'pending' end)::execution_status,
            jsonb_build_object('resolved', outcome, 'attempt', unknown_attempt), resolution_error, 'engine');
    update flow_runs r
    set status = 'queued', run_after = tolstoy_now()
    where r.org_id = org and r.id = found_run.id and r.created_at = found_run.created_at and r.status = 'waiting';
    return jsonb_build_object('run', jsonb_build_object('id', found_run.id, 'flow_id', found_run.flow_id,
                                                        'flow_version', found_run.flow_version,
                                                        'retry_of', found_run.retry_of, 'status', 'queued'));
end
$$;

comment on function tolstoy_resolve_step(uuid, uuid, uuid, text, uuid, text, jsonb, bytea, jsonb, boolean) is
    'Records what a person (actor) says of a step whose outcome is unknown (outcome succeeded with shown/sealed '
    'outputs, failed with resolution_error, or retry), logs it and queues the waiting run again, holding the run''s '
    'row. Null when no such run; {refused: status|step|key} writes nothing (not waiting; no such step waiting for a '
    'resolution; key_missing: the outputs hold secrets and there is no key to seal them); else {run}.';

-- A parked run moves to another version of its flow: its plan is the version's as a run queued now
-- would freeze it (tolstoy_plan_for), its checkpoints of steps the version keeps stay, and the move is
-- logged. Only a parked run moves: no worker holds it (queued, or waiting for a person to resolve an
-- unknown outcome), a step of it is parked (waiting: a wait step's signal, a delay, a retry's back-off;
-- or outcome_unknown), and no child run of it is under way (a subflow's parent stays on its version
-- until its child ends). The run's row is held while it decides, as a claim, a signal or a cancel holds
-- it, so none of them interleaves. A checkpoint the move would discard (its step is not in the version)
-- or whose output no longer fits (its step calls something else: tolstoy_step_target) is discarded only
-- when drop_steps names it; else nothing is written and the answer says which (dry: the answer only).
create or replace function tolstoy_move_run(org uuid, flow uuid, target uuid, to_version integer, drop_steps text[],
                                            dry boolean, actor uuid)
returns jsonb
language plpgsql set plan_cache_mode = force_generic_plan as $$
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
