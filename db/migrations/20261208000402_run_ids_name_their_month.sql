-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Run lookups name their month.
--
-- The run history is partitioned by month of created_at, but the API and the
-- engine mostly know a run by its id alone (an execution id in a URL, a
-- parent's id on its child, the run a worker holds): every lookup by (org_id,
-- id) probed every monthly partition, 24 of them after two years (and the
-- subflow wake trigger's did so for every child that finished). Now a new
-- run's id carries the time it was queued, which is its created_at: its first
-- 48 bits are the milliseconds since 1970 and the 12 bits after the version
-- the microseconds within them (the layout of RFC 9562's UUID version 7, with
-- the sub-millisecond precision its method 3 allows; 62 random bits remain).
-- tolstoy_run_from(id) and tolstoy_run_until(id) bound created_at to a
-- second either side of that time, and every lookup by id adds
-- "created_at between tolstoy_run_from(id) and tolstoy_run_until(id)": both
-- are immutable, so PostgreSQL keeps one partition (two at a month's edge) of
-- the plan, when it plans or when the statement starts. An id without that
-- layout (runs queued before this migration, all random version 4 ids) gets
-- the bounds -infinity and infinity: it is found as before, in every month,
-- and such runs go with retention. Children and retries of a run are never
-- older than it: their lookups by parent_run_id or retry_of start at its time.
--
-- The one place that makes run ids is tolstoy_queue_run (and the column
-- default, for rows a DBA inserts); created_at is now() there, as is the id's
-- time. A row inserted with an explicit created_at far from its id's time
-- (only test fixtures do) is not found by id.

create function tolstoy_new_run_id(at timestamptz) returns uuid
language sql volatile parallel safe as $$
    select encode(overlay(uuid_send(gen_random_uuid())
                          placing int8send((floor(extract(epoch from at) * 1000)::bigint << 16)
                                           | (7::bigint << 12)
                                           | (floor(extract(epoch from at) * 1000000)::bigint % 1000))
                          from 1 for 8), 'hex')::uuid
$$;

comment on function tolstoy_new_run_id(timestamptz) is
    'A new run id carrying the time at (UUID version 7 layout, microseconds in its 12 bits after the version): '
    'tolstoy_run_from/until compute the run''s month from it.';

-- The time a run id carries, in seconds since 1970 (null when the id does not carry one). Kept
-- within years 1970-9999, so an id a client made up cannot raise "timestamp out of range".
create function tolstoy_run_epoch(id uuid) returns double precision
language sql immutable strict parallel safe as $$
    select case when get_byte(uuid_send(id), 6) >> 4 = 7 then
        least(((get_byte(uuid_send(id), 0)::bigint << 40) | (get_byte(uuid_send(id), 1)::bigint << 32)
               | (get_byte(uuid_send(id), 2)::bigint << 24) | (get_byte(uuid_send(id), 3)::bigint << 16)
               | (get_byte(uuid_send(id), 4)::bigint << 8) | get_byte(uuid_send(id), 5)::bigint) * 1000
              + least(((get_byte(uuid_send(id), 6) & 15) << 8) | get_byte(uuid_send(id), 7), 999),
              253402300799000000)::double precision / 1000000
    end
$$;

comment on function tolstoy_run_epoch(uuid) is
    'The time (seconds since 1970) a run id made by tolstoy_new_run_id carries; null for any other id.';

create function tolstoy_run_from(id uuid) returns timestamptz
language sql immutable strict parallel safe as $$
    select to_timestamp(coalesce(tolstoy_run_epoch(id) - 1, '-infinity'::double precision))
$$;

comment on function tolstoy_run_from(uuid) is
    'The earliest created_at the run with this id can have (its id''s time less a second; -infinity for an id '
    'without one): lookups by id add created_at between tolstoy_run_from(id) and tolstoy_run_until(id).';

create function tolstoy_run_until(id uuid) returns timestamptz
language sql immutable strict parallel safe as $$
    select to_timestamp(coalesce(tolstoy_run_epoch(id) + 1, 'infinity'::double precision))
$$;

comment on function tolstoy_run_until(uuid) is
    'The latest created_at the run with this id can have (its id''s time plus a second; infinity for an id '
    'without one).';

-- For rows a DBA inserts by hand (the engine names the id: tolstoy_queue_run).
alter table flow_runs alter column id set default tolstoy_new_run_id(now());

comment on column flow_runs.id is
    'Exposed as executionId; execution_logs.execution_id holds it as text. Carries created_at (see '
    'tolstoy_new_run_id) for runs queued since 20261208000402; lookups by id bound created_at with it.';

-- ---- every lookup of a run by its id bounds created_at -----------------------------------

create or replace function flow_runs_inherit_acting() returns trigger
language plpgsql as $$
begin
    select p.acts_as_user and p.user_id is not distinct from new.user_id into new.acts_as_user
    from flow_runs p
    where p.org_id = new.org_id and p.id = new.parent_run_id
      and p.created_at between tolstoy_run_from(new.parent_run_id) and tolstoy_run_until(new.parent_run_id);
    new.acts_as_user := coalesce(new.acts_as_user, false);
    return new;
end;
$$;

create or replace function flow_runs_wake_parent() returns trigger
language plpgsql as $$
declare
    chain uuid[];
    -- The months the chain's runs are in: from the parent's to its newest retry's.
    chain_from timestamptz := tolstoy_run_from(new.parent_run_id);
    chain_until timestamptz;
begin
    -- The parent and its retries (one retry per run: a path from the parent on). The run waiting for this
    -- child is the parent, or a retry of it that waits for the child its chain started (tolstoy_subflow).
    chain := array(
        with recursive later(id, created_at) as (
            select new.parent_run_id, chain_from
            union all
            select r.id, r.created_at
            from flow_runs r
            join later l on r.org_id = new.org_id and r.retry_of = l.id
                            and r.created_at >= l.created_at  -- a retry is queued after its run
        )
        select l.id from later l);
    chain_until := (select max(tolstoy_run_until(c)) from unnest(chain) as c);
    perform 1 from flow_runs p
    where p.org_id = new.org_id and p.id = any(chain) and p.created_at between chain_from and chain_until
    order by p.created_at
    for update;
    -- A new statement, so a new snapshot: it sees a run that parked while this waited for the lock.
    update flow_runs p
    set status = 'queued', run_after = now()
    where p.org_id = new.org_id and p.id = any(chain) and p.status = 'waiting'
      and p.created_at between chain_from and chain_until
      and exists (select 1 from flow_run_steps s
                  where s.org_id = p.org_id and s.run_id = p.id and s.run_created_at = p.created_at
                    and s.run_created_at between chain_from and chain_until
                    and s.step_id = new.parent_step_id and s.status = 'waiting');
    return null;
end;
$$;

create or replace function tolstoy_checkpoint(worker text, org uuid, run uuid, token integer, writes jsonb)
returns jsonb
language plpgsql as $_$
declare
    current flow_runs;
    step jsonb;
    event jsonb;
    transition jsonb := coalesce(writes -> 'run', '{"action": "continue"}');
    outcome text;
begin
    perform set_config('app.org_id', org::text, true);
    select * into current from flow_runs r
    where r.org_id = org and r.id = run and r.lease_owner = worker and r.lease_token = token
      and r.created_at between tolstoy_run_from(run) and tolstoy_run_until(run)
      and r.status = 'running' and r.lease_expires_at > now()
    for update;
    if not found then
        raise exception 'The lease on run % is lost.', run using errcode = 'TL001';
    end if;
    for step in select * from jsonb_array_elements(coalesce(writes -> 'steps', '[]')) loop
        insert into flow_run_steps as s (org_id, run_id, run_created_at, step_id, status, attempt, inputs, outputs,
                                         sealed, error, wake_at, call_started_at, started_at, finished_at,
                                         duration_ms)
        values (org, run, current.created_at, step ->> 'step_id', step ->> 'status',
                coalesce((step ->> 'attempt')::integer, 1), step -> 'inputs', step -> 'outputs',
                decode(step ->> 'sealed', 'base64'), step -> 'error',
                now() + make_interval(secs => (step ->> 'wake_in_ms')::double precision / 1000),
                case when (step ->> 'call_started')::boolean then now() end,
                -- Steps checkpointed together keep their order (now() is the same for all of them).
                clock_timestamp(),
                case when step ->> 'status' in ('completed', 'skipped', 'failed') then clock_timestamp() end,
                (step ->> 'duration_ms')::integer)
        on conflict (org_id, run_id, step_id, run_created_at) do update
        set status = excluded.status, attempt = excluded.attempt,
            inputs = coalesce(excluded.inputs, s.inputs), outputs = excluded.outputs, sealed = excluded.sealed,
            error = excluded.error, wake_at = excluded.wake_at,
            call_started_at = case when excluded.status = 'running' then excluded.call_started_at
                                   else s.call_started_at end,
            finished_at = excluded.finished_at, duration_ms = excluded.duration_ms,
            started_at = case when s.status in ('completed', 'skipped', 'failed') then now() else s.started_at end;
    end loop;
    for event in select * from jsonb_array_elements(coalesce(writes -> 'events', '[]')) loop
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error,
                                    duration_ms, created_at)
        values (org, current.flow_id, current.user_id, run::text, event ->> 'step_key',
                (event ->> 'status')::execution_status, coalesce(event -> 'inputs', '{}'),
                nullif(event -> 'error', 'null'), (event ->> 'duration_ms')::integer, clock_timestamp());
    end loop;
    case transition ->> 'action'
        when 'continue' then
            update flow_runs
            set lease_expires_at = now() + make_interval(secs => coalesce((writes ->> 'lease_seconds')::double precision,
                                                                          30))
            where org_id = org and id = run and created_at = current.created_at;
        when 'pause' then
            -- A cancel asked for while the step ran ends the run instead of sleeping.
            outcome := case when current.cancel_requested then 'cancelled' else 'queued' end;
            update flow_runs
            set status = outcome::flow_run_status,
                run_after = now() + make_interval(secs => coalesce((transition ->> 'after_ms')::double precision, 0)
                                                         / 1000),
                finished_at = case when outcome = 'cancelled' then now() end,
                error = case when outcome = 'cancelled' then '{"message": "Cancelled"}'::jsonb else error end,
                lease_owner = null, lease_token = null, lease_expires_at = null
            where org_id = org and id = run and created_at = current.created_at;
            if outcome = 'cancelled' then
                insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error)
                values (org, current.flow_id, current.user_id, run::text, '$flow', 'cancelled', '{}',
                        '{"message": "Cancelled"}');
            end if;
        when 'wait' then
            update flow_runs
            set status = 'waiting', lease_owner = null, lease_token = null, lease_expires_at = null
            where org_id = org and id = run and created_at = current.created_at;
        when 'finish' then
            update flow_runs
            set status = (transition ->> 'status')::flow_run_status, error = nullif(transition -> 'error', 'null'),
                finished_at = now(), lease_owner = null, lease_token = null, lease_expires_at = null
            where org_id = org and id = run and created_at = current.created_at;
        else
            raise exception 'tolstoy_checkpoint: unknown run action %', transition ->> 'action'
                using errcode = 'invalid_parameter_value';
    end case;
    return jsonb_build_object('cancel', current.cancel_requested);
end;
$_$;

create or replace function tolstoy_subflow(worker text, org uuid, run uuid, token integer, writes jsonb, spec jsonb)
returns jsonb
language plpgsql as $$
declare
    answer jsonb;
    parent flow_runs;
    child flow_runs;
    latest flow_runs;
    step text := spec ->> 'step_id';
    target uuid := (spec ->> 'flow_id')::uuid;
    target_version integer := (spec ->> 'version')::integer;
    max_depth integer := coalesce((spec ->> 'max_depth')::integer, 10);
    created boolean := false;
    adopted boolean := false;
    parked boolean := false;
    outputs jsonb;
    sealed jsonb;
begin
    if step is null or jsonb_typeof(spec -> 'variables') is distinct from 'object' then
        raise exception 'tolstoy_subflow: invalid spec' using errcode = 'invalid_parameter_value';
    end if;
    -- Lease check, the parent's row locked until commit, the pending writes.
    answer := tolstoy_checkpoint(worker, org, run, token, writes);
    select * into parent from flow_runs r
    where r.org_id = org and r.id = run and r.created_at between tolstoy_run_from(run) and tolstoy_run_until(run);
    select * into child from flow_runs c
    where c.org_id = org and c.parent_run_id = run and c.parent_step_id = step
      and c.created_at >= tolstoy_run_from(run)  -- a child is queued after its parent
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
        -- The child chain this step of an earlier run of the parent's chain started (newest first), and
        -- the newest run of that child chain. A failure handler's step has none: it handles this run's failure.
        if parent.retry_of is not null and step not like 'onFailure.%' then
            with recursive earlier(id) as (
                select parent.retry_of
                union all
                select r.retry_of
                from flow_runs r
                join earlier e on r.org_id = org and r.id = e.id
                                  and r.created_at between tolstoy_run_from(e.id) and tolstoy_run_until(e.id)
                where r.retry_of is not null
            )
            select * into latest from flow_runs c
            where c.org_id = org and c.parent_run_id in (select e.id from earlier e) and c.parent_step_id = step
              -- Children are queued after their parents, the chain's first run the oldest.
              and c.created_at >= (select min(tolstoy_run_from(e.id)) from earlier e)
            order by c.created_at desc
            limit 1;
            if latest.id is not null then
                with recursive later(id, created_at) as (
                    select latest.id, latest.created_at
                    union all
                    select r.id, r.created_at
                    from flow_runs r
                    join later l on r.org_id = org and r.retry_of = l.id
                                    and r.created_at >= l.created_at  -- a retry is queued after its run
                )
                select r.* into latest
                from later l join flow_runs r on r.org_id = org and r.id = l.id and r.created_at = l.created_at
                order by l.created_at desc
                limit 1;
                if latest.status in ('completed', 'failed', 'cancelled') then
                    -- Continue its chain: its completed steps are kept, its calls sent under the same keys.
                    select (q.run).* into child
                    from tolstoy_queue_run(org, latest.flow_id, latest.flow_version, parent.user_id,
                                           latest.variables, null, latest.id) as q;
                elsif latest.parent_run_id is null then
                    -- A retry of the child made by hand, under way: it is this step's child from now on.
                    child := latest;
                    adopted := true;
                else
                    -- Under way for an earlier run of the chain (cancelled with it, as a rule): no second child
                    -- while it runs. Park until it ends (flow_runs_wake_parent wakes this run), then continue
                    -- its chain. The step waits, whatever its "wait" says.
                    update flow_run_steps s
                    set status = 'waiting'
                    where s.org_id = org and s.run_id = run and s.run_created_at = parent.created_at
                      and s.step_id = step;
                    update flow_runs r
                    set status = 'waiting', lease_owner = null, lease_token = null, lease_expires_at = null
                    where r.org_id = org and r.id = run and r.created_at = parent.created_at;
                    insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
                    values (org, parent.flow_id, parent.user_id, run::text, step, 'pending',
                            jsonb_build_object('waitingForExecutionId', latest.id, 'flowId', latest.flow_id,
                                               'parentExecutionId', latest.parent_run_id));
                    return answer || jsonb_build_object('created', false, 'parked', true, 'waitingFor', latest.id);
                end if;
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
        -- The parent's log says which child the step started (or took over).
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
        values (org, parent.flow_id, parent.user_id, run::text, step, 'pending',
                jsonb_build_object('childExecutionId', child.id, 'flowId', child.flow_id,
                                   'flowVersion', child.flow_version, 'wait', (spec ->> 'wait')::boolean,
                                   'retryOf', child.retry_of)
                || case when adopted then '{"adopted": true}'::jsonb else '{}'::jsonb end);
        created := not adopted;
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

create or replace function tolstoy_take_signal(org uuid, run uuid, step text, signal_name text)
returns table (id uuid, payload jsonb, approver text, user_id uuid, created_at timestamptz)
language plpgsql as $$
begin
    perform 1 from flow_runs r
    where r.org_id = org and r.id = run and r.created_at between tolstoy_run_from(run) and tolstoy_run_until(run)
    for update;
    -- A new statement, so a new snapshot: it sees a signal committed while this waited for the lock.
    return query
    update flow_run_signals s
    set step_id = step, consumed_at = coalesce(s.consumed_at, now())
    where s.org_id = org and s.id = (
        select p.id from flow_run_signals p
        where p.org_id = org and p.run_id = run and p.signal = signal_name
          and (p.step_id is null or p.step_id = step)
        order by p.step_id is null, p.created_at
        limit 1
        for update)
    returning s.id, s.payload, s.approver, s.user_id, s.created_at;
end;
$$;

create or replace function tolstoy_queue_run(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                             vars jsonb, key text, retrying uuid, acting boolean default false)
returns table (run flow_runs, created boolean)
language plpgsql as $_$
declare
    existing flow_runs;
    queued flow_runs;
    original flow_runs;
    steps jsonb;
    run_plan jsonb;
    root uuid;
    -- The id carries the time the run is queued, its created_at: lookups by id find its month.
    new_id uuid := tolstoy_new_run_id(now());
    new_created_at timestamptz := now();
begin
    if key is not null then
        perform pg_advisory_xact_lock(hashtextextended(format('run-key:%s:%s:%s', org, flow, key), 0));
        select * into existing from flow_runs r
        where r.org_id = org and r.flow_id = flow and r.idempotency_key = key;
    elsif retrying is not null then
        perform pg_advisory_xact_lock(hashtextextended(format('run-retry:%s:%s', org, retrying), 0));
        select * into existing from flow_runs r
        where r.org_id = org and r.retry_of = retrying and r.created_at >= tolstoy_run_from(retrying);
    end if;
    if existing.id is not null then
        run := existing;
        created := false;
        return next;
        return;
    end if;
    if retrying is not null then
        select * into original from flow_runs r
        where r.org_id = org and r.id = retrying
          and r.created_at between tolstoy_run_from(retrying) and tolstoy_run_until(retrying);
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
$_$;

create or replace function tolstoy_renew_leases(worker text, orgs uuid[], runs uuid[], tokens integer[],
                                                lease_seconds double precision)
returns table (run_id uuid, cancel boolean)
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    if worker is null or worker = '' or lease_seconds is null or lease_seconds <= 0 or lease_seconds > 3600
            or cardinality(orgs) is distinct from cardinality(runs)
            or cardinality(runs) is distinct from cardinality(tokens) or cardinality(runs) > 1000 then
        raise exception 'tolstoy_renew_leases: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    return query
    update flow_runs r
    set lease_expires_at = now() + make_interval(secs => lease_seconds)
    from unnest(orgs, runs, tokens) as held(org_id, id, token)
    where r.org_id = held.org_id and r.id = held.id and r.lease_owner = worker and r.lease_token = held.token
      and r.created_at between tolstoy_run_from(held.id) and tolstoy_run_until(held.id)
      and r.status = 'running' and r.lease_expires_at > now()
    returning r.id, r.cancel_requested;
end;
$$;

create or replace function tolstoy_prune_signals(retention_days integer, batch integer)
returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    pruned integer;
begin
    if retention_days < 1 or batch is null or batch < 1 or batch > 100000 then
        raise exception 'tolstoy_prune_signals: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    if retention_days is null then
        return 0;
    end if;
    delete from flow_run_signals g
    where (g.org_id, g.id) in (
        select s.org_id, s.id from flow_run_signals s
        where s.created_at < now() - make_interval(days => retention_days)
          and not exists (select 1 from flow_runs r
                          where r.org_id = s.org_id and r.id = s.run_id
                            and r.created_at between tolstoy_run_from(s.run_id) and tolstoy_run_until(s.run_id))
        limit batch);
    get diagnostics pruned = row_count;
    return pruned;
end;
$$;

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- The functions as they were (20261201000002, 20261201000003, 20261201000011,
-- 20261201000013, 20261207000300); runs keep the ids they were given, which the older
-- lookups find too.
create or replace function flow_runs_inherit_acting() returns trigger
language plpgsql as $$
begin
    select p.acts_as_user and p.user_id is not distinct from new.user_id into new.acts_as_user
    from flow_runs p
    where p.org_id = new.org_id and p.id = new.parent_run_id;
    new.acts_as_user := coalesce(new.acts_as_user, false);
    return new;
end;
$$;

create or replace function flow_runs_wake_parent() returns trigger
language plpgsql as $$
declare
    chain uuid[];
begin
    -- The parent and its retries (one retry per run: a path from the parent on). The run waiting for this
    -- child is the parent, or a retry of it that waits for the child its chain started (tolstoy_subflow).
    chain := array(
        with recursive later(id) as (
            select new.parent_run_id
            union all
            select r.id from flow_runs r join later l on r.org_id = new.org_id and r.retry_of = l.id
        )
        select l.id from later l);
    perform 1 from flow_runs p where p.org_id = new.org_id and p.id = any(chain) order by p.created_at for update;
    -- A new statement, so a new snapshot: it sees a run that parked while this waited for the lock.
    update flow_runs p
    set status = 'queued', run_after = now()
    where p.org_id = new.org_id and p.id = any(chain) and p.status = 'waiting'
      and exists (select 1 from flow_run_steps s
                  where s.org_id = p.org_id and s.run_id = p.id and s.run_created_at = p.created_at
                    and s.step_id = new.parent_step_id and s.status = 'waiting');
    return null;
end;
$$;

create or replace function tolstoy_checkpoint(worker text, org uuid, run uuid, token integer, writes jsonb)
returns jsonb
language plpgsql as $_$
declare
    current flow_runs;
    step jsonb;
    event jsonb;
    transition jsonb := coalesce(writes -> 'run', '{"action": "continue"}');
    outcome text;
begin
    perform set_config('app.org_id', org::text, true);
    select * into current from flow_runs r
    where r.org_id = org and r.id = run and r.lease_owner = worker and r.lease_token = token
      and r.status = 'running' and r.lease_expires_at > now()
    for update;
    if not found then
        raise exception 'The lease on run % is lost.', run using errcode = 'TL001';
    end if;
    for step in select * from jsonb_array_elements(coalesce(writes -> 'steps', '[]')) loop
        insert into flow_run_steps as s (org_id, run_id, run_created_at, step_id, status, attempt, inputs, outputs,
                                         sealed, error, wake_at, call_started_at, started_at, finished_at,
                                         duration_ms)
        values (org, run, current.created_at, step ->> 'step_id', step ->> 'status',
                coalesce((step ->> 'attempt')::integer, 1), step -> 'inputs', step -> 'outputs',
                decode(step ->> 'sealed', 'base64'), step -> 'error',
                now() + make_interval(secs => (step ->> 'wake_in_ms')::double precision / 1000),
                case when (step ->> 'call_started')::boolean then now() end,
                -- Steps checkpointed together keep their order (now() is the same for all of them).
                clock_timestamp(),
                case when step ->> 'status' in ('completed', 'skipped', 'failed') then clock_timestamp() end,
                (step ->> 'duration_ms')::integer)
        on conflict (org_id, run_id, step_id, run_created_at) do update
        set status = excluded.status, attempt = excluded.attempt,
            inputs = coalesce(excluded.inputs, s.inputs), outputs = excluded.outputs, sealed = excluded.sealed,
            error = excluded.error, wake_at = excluded.wake_at,
            call_started_at = case when excluded.status = 'running' then excluded.call_started_at
                                   else s.call_started_at end,
            finished_at = excluded.finished_at, duration_ms = excluded.duration_ms,
            started_at = case when s.status in ('completed', 'skipped', 'failed') then now() else s.started_at end;
    end loop;
    for event in select * from jsonb_array_elements(coalesce(writes -> 'events', '[]')) loop
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error,
                                    duration_ms, created_at)
        values (org, current.flow_id, current.user_id, run::text, event ->> 'step_key',
                (event ->> 'status')::execution_status, coalesce(event -> 'inputs', '{}'),
                nullif(event -> 'error', 'null'), (event ->> 'duration_ms')::integer, clock_timestamp());
    end loop;
    case transition ->> 'action'
        when 'continue' then
            update flow_runs
            set lease_expires_at = now() + make_interval(secs => coalesce((writes ->> 'lease_seconds')::double precision,
                                                                          30))
            where org_id = org and id = run and created_at = current.created_at;
        when 'pause' then
            -- A cancel asked for while the step ran ends the run instead of sleeping.
            outcome := case when current.cancel_requested then 'cancelled' else 'queued' end;
            update flow_runs
            set status = outcome::flow_run_status,
                run_after = now() + make_interval(secs => coalesce((transition ->> 'after_ms')::double precision, 0)
                                                         / 1000),
                finished_at = case when outcome = 'cancelled' then now() end,
                error = case when outcome = 'cancelled' then '{"message": "Cancelled"}'::jsonb else error end,
                lease_owner = null, lease_token = null, lease_expires_at = null
            where org_id = org and id = run and created_at = current.created_at;
            if outcome = 'cancelled' then
                insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error)
                values (org, current.flow_id, current.user_id, run::text, '$flow', 'cancelled', '{}',
                        '{"message": "Cancelled"}');
            end if;
        when 'wait' then
            update flow_runs
            set status = 'waiting', lease_owner = null, lease_token = null, lease_expires_at = null
            where org_id = org and id = run and created_at = current.created_at;
        when 'finish' then
            update flow_runs
            set status = (transition ->> 'status')::flow_run_status, error = nullif(transition -> 'error', 'null'),
                finished_at = now(), lease_owner = null, lease_token = null, lease_expires_at = null
            where org_id = org and id = run and created_at = current.created_at;
        else
            raise exception 'tolstoy_checkpoint: unknown run action %', transition ->> 'action'
                using errcode = 'invalid_parameter_value';
    end case;
    return jsonb_build_object('cancel', current.cancel_requested);
end;
$_$;

create or replace function tolstoy_subflow(worker text, org uuid, run uuid, token integer, writes jsonb, spec jsonb)
returns jsonb
language plpgsql as $$
declare
    answer jsonb;
    parent flow_runs;
    child flow_runs;
    latest flow_runs;
    step text := spec ->> 'step_id';
    target uuid := (spec ->> 'flow_id')::uuid;
    target_version integer := (spec ->> 'version')::integer;
    max_depth integer := coalesce((spec ->> 'max_depth')::integer, 10);
    created boolean := false;
    adopted boolean := false;
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
        -- The child chain this step of an earlier run of the parent's chain started (newest first), and
        -- the newest run of that child chain. A failure handler's step has none: it handles this run's failure.
        if parent.retry_of is not null and step not like 'onFailure.%' then
            with recursive earlier(id) as (
                select parent.retry_of
                union all
                select r.retry_of
                from flow_runs r join earlier e on r.org_id = org and r.id = e.id
                where r.retry_of is not null
            )
            select * into latest from flow_runs c
            where c.org_id = org and c.parent_run_id in (select e.id from earlier e) and c.parent_step_id = step
            order by c.created_at desc
            limit 1;
            if latest.id is not null then
                with recursive later(id, created_at) as (
                    select latest.id, latest.created_at
                    union all
                    select r.id, r.created_at
                    from flow_runs r join later l on r.org_id = org and r.retry_of = l.id
                )
                select r.* into latest
                from later l join flow_runs r on r.org_id = org and r.id = l.id and r.created_at = l.created_at
                order by l.created_at desc
                limit 1;
                if latest.status in ('completed', 'failed', 'cancelled') then
                    -- Continue its chain: its completed steps are kept, its calls sent under the same keys.
                    select (q.run).* into child
                    from tolstoy_queue_run(org, latest.flow_id, latest.flow_version, parent.user_id,
                                           latest.variables, null, latest.id) as q;
                elsif latest.parent_run_id is null then
                    -- A retry of the child made by hand, under way: it is this step's child from now on.
                    child := latest;
                    adopted := true;
                else
                    -- Under way for an earlier run of the chain (cancelled with it, as a rule): no second child
                    -- while it runs. Park until it ends (flow_runs_wake_parent wakes this run), then continue
                    -- its chain. The step waits, whatever its "wait" says.
                    update flow_run_steps s
                    set status = 'waiting'
                    where s.org_id = org and s.run_id = run and s.run_created_at = parent.created_at
                      and s.step_id = step;
                    update flow_runs r
                    set status = 'waiting', lease_owner = null, lease_token = null, lease_expires_at = null
                    where r.org_id = org and r.id = run and r.created_at = parent.created_at;
                    insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
                    values (org, parent.flow_id, parent.user_id, run::text, step, 'pending',
                            jsonb_build_object('waitingForExecutionId', latest.id, 'flowId', latest.flow_id,
                                               'parentExecutionId', latest.parent_run_id));
                    return answer || jsonb_build_object('created', false, 'parked', true, 'waitingFor', latest.id);
                end if;
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
        -- The parent's log says which child the step started (or took over).
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
        values (org, parent.flow_id, parent.user_id, run::text, step, 'pending',
                jsonb_build_object('childExecutionId', child.id, 'flowId', child.flow_id,
                                   'flowVersion', child.flow_version, 'wait', (spec ->> 'wait')::boolean,
                                   'retryOf', child.retry_of)
                || case when adopted then '{"adopted": true}'::jsonb else '{}'::jsonb end);
        created := not adopted;
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

create or replace function tolstoy_take_signal(org uuid, run uuid, step text, signal_name text)
returns table (id uuid, payload jsonb, approver text, user_id uuid, created_at timestamptz)
language plpgsql as $$
begin
    perform 1 from flow_runs r where r.org_id = org and r.id = run for update;
    -- A new statement, so a new snapshot: it sees a signal committed while this waited for the lock.
    return query
    update flow_run_signals s
    set step_id = step, consumed_at = coalesce(s.consumed_at, now())
    where s.org_id = org and s.id = (
        select p.id from flow_run_signals p
        where p.org_id = org and p.run_id = run and p.signal = signal_name
          and (p.step_id is null or p.step_id = step)
        order by p.step_id is null, p.created_at
        limit 1
        for update)
    returning s.id, s.payload, s.approver, s.user_id, s.created_at;
end;
$$;

create or replace function tolstoy_queue_run(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                             vars jsonb, key text, retrying uuid, acting boolean default false)
returns table (run flow_runs, created boolean)
language plpgsql as $_$
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
$_$;

create or replace function tolstoy_renew_leases(worker text, orgs uuid[], runs uuid[], tokens integer[],
                                                lease_seconds double precision)
returns table (run_id uuid, cancel boolean)
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    if worker is null or worker = '' or lease_seconds is null or lease_seconds <= 0 or lease_seconds > 3600
            or cardinality(orgs) is distinct from cardinality(runs)
            or cardinality(runs) is distinct from cardinality(tokens) or cardinality(runs) > 1000 then
        raise exception 'tolstoy_renew_leases: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    return query
    update flow_runs r
    set lease_expires_at = now() + make_interval(secs => lease_seconds)
    from unnest(orgs, runs, tokens) as held(org_id, id, token)
    where r.org_id = held.org_id and r.id = held.id and r.lease_owner = worker and r.lease_token = held.token
      and r.status = 'running' and r.lease_expires_at > now()
    returning r.id, r.cancel_requested;
end;
$$;

create or replace function tolstoy_prune_signals(retention_days integer, batch integer)
returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    pruned integer;
begin
    if retention_days < 1 or batch is null or batch < 1 or batch > 100000 then
        raise exception 'tolstoy_prune_signals: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    if retention_days is null then
        return 0;
    end if;
    delete from flow_run_signals g
    where (g.org_id, g.id) in (
        select s.org_id, s.id from flow_run_signals s
        where s.created_at < now() - make_interval(days => retention_days)
          and not exists (select 1 from flow_runs r where r.org_id = s.org_id and r.id = s.run_id)
        limit batch);
    get diagnostics pruned = row_count;
    return pruned;
end;
$$;

alter table flow_runs alter column id set default gen_random_uuid();
comment on column flow_runs.id is 'Exposed as executionId; execution_logs.execution_id holds it as text.';
drop function tolstoy_run_until(uuid);
drop function tolstoy_run_from(uuid);
drop function tolstoy_run_epoch(uuid);
drop function tolstoy_new_run_id(timestamptz);
