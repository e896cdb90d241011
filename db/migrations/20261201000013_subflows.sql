-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Sub-flows (issue 14): a `subflow` step queues a child run of another flow of
-- the same organization, and with `wait: true` the parent waits for it without
-- holding a worker thread.
--
-- * flow_runs.parent_run_id / parent_step_id / depth: the child's link to the
--   step of the run that queued it, and how deep it is nested (0: a run started
--   by execute, a webhook or a schedule). At most one child per parent step:
--   the parent's row is locked while its child is looked up and queued, so a
--   resumed parent finds the child it queued before instead of a second one.
-- * tolstoy_subflow: the subflow step's one statement. It is tolstoy_checkpoint
--   (lease check, the step's writes) followed by: find or queue the child
--   (tolstoy_queue_run, pinned to a version; in a retry of the parent, a retry
--   of the child the retried run's step queued), then, for a waiting step whose
--   child has not finished, park the parent ('waiting', lease released). It
--   reads the child's status after locking the parent, and the wake below locks
--   the parent before reading it, so a child finishing while its parent parks
--   always wakes it.
-- * flow_runs_wake_parent: when a child reaches completed, failed or cancelled,
--   its waiting parent is queued again in the same transaction (and so NOTIFYed
--   by flow_runs_notify), whatever finished the child: its last checkpoint, the
--   recovery limit of tolstoy_claim_runs, or a cancel through the API.
--
-- No existing function changes.

alter table flow_runs add column parent_run_id uuid;
alter table flow_runs add column parent_step_id text;
alter table flow_runs add column depth integer not null default 0;

comment on column flow_runs.parent_run_id is
    'The run whose subflow step queued this one (exposed as parentExecutionId); null for a top-level run. '
    'No foreign key across monthly partitions.';
comment on column flow_runs.parent_step_id is 'The id of the parent''s subflow step that queued this run.';
comment on column flow_runs.depth is
    'Sub-flow nesting: 0 for a top-level run, the parent''s depth + 1 for a child (bounded by TOLSTOY_SUBFLOW_MAX_DEPTH).';

-- "The children of a run" (of one of its steps): cancel propagation, the run
-- view's childExecutionId, the parent's lookup of its child. Partial: only child
-- runs are in it. A partitioned table cannot be indexed concurrently; the new
-- columns are empty, so the build reads each partition once and writes nothing.
-- squawk-ignore require-concurrent-index-creation
create index flow_runs_org_id_parent_run_id_idx on flow_runs (org_id, parent_run_id, parent_step_id)
    where parent_run_id is not null;

-- ---- the subflow step ---------------------------------------------------------------

-- spec = {"step_id": text, "flow_id": uuid, "version": n | null (the flow's version now),
--         "variables": {...}, "wait": bool, "max_depth": n}
-- writes = as for tolstoy_checkpoint; its run action must be "continue".
-- Returns tolstoy_checkpoint's answer plus
--   {"created": bool, "child": {id, flow_id, flow_version, status, error, outputs, sealed}, "parked": bool}
--   or {"error": {name, message}} when no child can be queued (nothing is parked then),
--   or {"cancel": true} when a cancel was asked for (nothing is queued or parked).
-- "outputs" (the child's completed steps as shown) and "sealed" (base64, where a step's
-- real output is encrypted) are there when the child completed.
create function tolstoy_subflow(worker text, org uuid, run uuid, token integer, writes jsonb, spec jsonb)
returns jsonb
language plpgsql as $$
declare
    answer jsonb;
    parent flow_runs;
    child flow_runs;
    original flow_runs;
    step text := spec ->> 'step_id';
    target uuid := (spec ->> 'flow_id')::uuid;
    target_version integer := (spec ->> 'version')::integer;
    max_depth integer := coalesce((spec ->> 'max_depth')::integer, 10);
    created boolean := false;
    parked boolean := false;
    outputs jsonb;
    sealed jsonb;
begin
    if step is null or jsonb_typeof(spec -> 'variables') is distinct from 'object' then
        raise exception 'tolstoy_subflow: invalid spec' using errcode = 'invalid_parameter_value';
    end if;
    -- Lease check, the parent's row locked until commit, the pending writes.
    answer := tolstoy_checkpoint(worker, org, run, token, writes);
    select * into parent from flow_runs r where r.org_id = org and r.id = run;
    select * into child from flow_runs c
    where c.org_id = org and c.parent_run_id = run and c.parent_step_id = step
    order by c.created_at desc
    limit 1;
    if child.id is null then
        if parent.cancel_requested then
            return answer || '{"cancel": true}';
        end if;
        if parent.depth + 1 > max_depth then
            return answer || jsonb_build_object('error', jsonb_build_object(
                'name', 'SubflowDepthExceeded',
                'message', format('A child run here would be nested %s deep, more than the limit of %s '
                                  '(TOLSTOY_SUBFLOW_MAX_DEPTH).', parent.depth + 1, max_depth)));
        end if;
        -- A retry of the parent retries the child the same step of the retried run queued (same plan,
        -- its completed steps kept, the same Idempotency-Keys), unless that child was retried already.
        if parent.retry_of is not null then
            select * into original from flow_runs o
            where o.org_id = org and o.parent_run_id = parent.retry_of and o.parent_step_id = step
              and o.status in ('completed', 'failed', 'cancelled')
            order by o.created_at desc
            limit 1;
            if original.id is not null then
                select (q.run).* into child
                from tolstoy_queue_run(org, original.flow_id, original.flow_version, parent.user_id,
                                       original.variables, null, original.id) as q
                where q.created;
            end if;
        end if;
        if child.id is null then
            if target_version is null then
                select f.version into target_version from flows f where f.org_id = org and f.id = target;
            elsif not exists (select 1 from flow_versions v
                              where v.org_id = org and v.flow_id = target and v.version = target_version) then
                return answer || jsonb_build_object('error', jsonb_build_object(
                    'name', 'SubflowNotFound',
                    'message', format('Flow %s has no version %s.', target, target_version)));
            end if;
            if target_version is null then
                return answer || jsonb_build_object('error', jsonb_build_object(
                    'name', 'SubflowNotFound', 'message', format('Flow %s does not exist (any more).', target)));
            end if;
            select (q.run).* into child
            from tolstoy_queue_run(org, target, target_version, parent.user_id, spec -> 'variables', null, null)
                as q;
        end if;
        update flow_runs c
        set parent_run_id = run, parent_step_id = step, depth = parent.depth + 1
        where c.org_id = org and c.id = child.id and c.created_at = child.created_at
        returning * into child;
        -- The parent's log says which child the step started.
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
        values (org, parent.flow_id, parent.user_id, run::text, step, 'pending',
                jsonb_build_object('childExecutionId', child.id, 'flowId', child.flow_id,
                                   'flowVersion', child.flow_version, 'wait', (spec ->> 'wait')::boolean,
                                   'retryOf', child.retry_of));
        created := true;
    end if;
    if child.status = 'completed' then
        select coalesce(jsonb_object_agg(s.step_id, s.outputs), '{}'),
               coalesce(jsonb_object_agg(s.step_id, encode(s.sealed, 'base64')) filter (where s.sealed is not null),
                        '{}')
        into outputs, sealed
        from flow_run_steps s
        where s.org_id = org and s.run_id = child.id and s.run_created_at = child.created_at
          and s.status = 'completed' and strpos(s.step_id, '[') = 0;
    elsif (spec ->> 'wait')::boolean and child.status not in ('failed', 'cancelled') then
        if parent.cancel_requested then
            return answer || '{"cancel": true}' || jsonb_build_object('created', created);
        end if;
        update flow_runs r
        set status = 'waiting', lease_owner = null, lease_token = null, lease_expires_at = null
        where r.org_id = org and r.id = run and r.created_at = parent.created_at;
        parked := true;
    end if;
    return answer || jsonb_build_object(
        'created', created, 'parked', parked,
        'child', jsonb_build_object('id', child.id, 'flow_id', child.flow_id, 'flow_version', child.flow_version,
                                    'status', child.status, 'error', child.error, 'outputs', outputs,
                                    'sealed', sealed));
end;
$$;

comment on function tolstoy_subflow(text, uuid, uuid, integer, jsonb, jsonb) is
    'A subflow step: tolstoy_checkpoint, then find or queue the step''s child run (one per parent step), and park '
    'the parent while a waited-for child runs. Acts for org under row-level security.';

revoke execute on function tolstoy_subflow(text, uuid, uuid, integer, jsonb, jsonb) from public;

-- ---- waking the parent ----------------------------------------------------------------

-- A child reached an end: if its parent waits for it (the parent is 'waiting'
-- and the step that queued the child is too), the parent is queued again now.
-- The parent's row is locked first: a parent parking at this moment (which
-- holds that lock) is parked when this looks, or sees this child finished.
create function flow_runs_wake_parent() returns trigger
language plpgsql as $$
begin
    perform 1 from flow_runs p where p.org_id = new.org_id and p.id = new.parent_run_id for update;
    -- A new statement, so a new snapshot: it sees a parent that parked while this waited for the lock.
    update flow_runs p
    set status = 'queued', run_after = now()
    where p.org_id = new.org_id and p.id = new.parent_run_id and p.status = 'waiting'
      and exists (select 1 from flow_run_steps s
                  where s.org_id = p.org_id and s.run_id = p.id and s.run_created_at = p.created_at
                    and s.step_id = new.parent_step_id and s.status = 'waiting');
    return null;
end;
$$;

comment on function flow_runs_wake_parent() is
    'AFTER UPDATE trigger: a child run that finished queues its parent again when the parent waits for it.';

create trigger flow_runs_wake_parent
    after update of status on flow_runs
    for each row
    when (new.parent_run_id is not null and new.status in ('completed', 'failed', 'cancelled')
          and old.status is distinct from new.status)
    execute function flow_runs_wake_parent();

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop trigger flow_runs_wake_parent on flow_runs;
drop function flow_runs_wake_parent();
drop function tolstoy_subflow(text, uuid, uuid, integer, jsonb, jsonb);
-- A partitioned table's index cannot be dropped concurrently; it is small (children only), and
-- the columns below go in the same transaction anyway.
-- squawk-ignore require-concurrent-index-deletion
drop index flow_runs_org_id_parent_run_id_idx;
alter table flow_runs drop column depth;
alter table flow_runs drop column parent_step_id;
alter table flow_runs drop column parent_run_id;
