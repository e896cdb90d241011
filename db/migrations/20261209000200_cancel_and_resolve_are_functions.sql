-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- A state change is one SQL function (issue 24): cancelling a run and resolving
-- a step whose outcome is unknown were composed by the API from several
-- statements (sql/runs.sql request_cancel, cancel_descendants, unknown_step,
-- resolve_step, requeue and an execution log write). Each is now one function
-- that the engine's lifecycle module (tolstoy/engine/lifecycle.py) calls, as
-- tolstoy_queue_run queues and tolstoy_checkpoint moves a run. Same statements,
-- same locking order, same rows written. They run as their caller (the API's
-- role, under row-level security for the organization it acts for).

-- Cancelling a run cancels the runs its subflow steps queued, and theirs: a
-- queued or waiting one at once (with its log row), a running one within one
-- heartbeat. Rows are locked children first, parent last, as a child's last
-- checkpoint does.
create function tolstoy_cancel_descendants(org uuid, parent uuid)
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

comment on function tolstoy_cancel_descendants(uuid, uuid) is
    'Cancels the unfinished runs below parent (its subflow steps'' children, theirs, …), deepest first: a queued or '
    'waiting one at once with its log row, a running one within one heartbeat. Returns how many were cancelled at '
    'once. Called by tolstoy_cancel_run before and after the parent''s own cancel.';

-- A queued (or sleeping), or waiting run is cancelled at once, and so is a
-- running one whose lease expired (its worker is gone: nothing would pass a
-- step boundary to honour the cancel, and its writes are fenced by that
-- lease); a running one within one heartbeat, and, should its worker die
-- first, when it is recovered (the claim carries the cancel).
create function tolstoy_cancel_run(org uuid, flow uuid, target uuid, actor uuid)
returns jsonb
language plpgsql as $$
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
create function tolstoy_resolve_step(org uuid, flow uuid, target uuid, resolved_step text, actor uuid,
                                     outcome text, shown jsonb, sealed_output bytea, resolution_error jsonb,
                                     key_missing boolean default false)
returns jsonb
language plpgsql as $$
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

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop function tolstoy_resolve_step(uuid, uuid, uuid, text, uuid, text, jsonb, bytea, jsonb, boolean);
drop function tolstoy_cancel_run(uuid, uuid, uuid, uuid);
drop function tolstoy_cancel_descendants(uuid, uuid);
