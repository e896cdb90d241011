-- migrate:up

set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- One trace per run, across processes (tolstoy/tracing.py, docs/observability.md): the traceparent a
-- run's caller sent (POST /flows/{id}/execute, a webhook trigger) is kept with the run, and reaches
-- the workers in the claim, so the spans of every process that works on it join the caller's trace
-- under one run span (whose id derives from the run's id: nothing more is stored). It goes through
-- the queue function (tolstoy_queue_run_v4; v3 is it without a caller's trace, the signature the
-- previous release calls): no statement more per execute.
-- A nullable column without a default: a change of the catalog only, on the parent and every partition.
alter table flow_runs add column trace_parent text;

comment on column flow_runs.trace_parent is
    'The W3C traceparent of whoever queued the run (00-<trace id>-<span id>-<flags>), or null: the run''s '
    'spans join that trace (tolstoy/tracing.py). Written only by tolstoy_queue_run_v4, which keeps only a '
    'well-formed value.';

create or replace function tolstoy_trace_parent(value text) returns text
language sql immutable parallel safe as $$
    select case when value ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
                     and value !~ '^00-0{32}-' and value !~ '-0{16}-[0-9a-f]{2}$'
                then value end
$$;

comment on function tolstoy_trace_parent(text) is
    'A W3C traceparent as kept (flow_runs.trace_parent, flow_run_signals.trace_parent): the value when well formed '
    '(version 00, lower-case hex, neither id all zeros), else null, as the W3C says of a bad one. The same rule '
    'as tolstoy/tracing.py TRACEPARENT.';

create or replace function tolstoy_queue_run_v4(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                                vars jsonb, key text, retrying uuid, acting boolean,
                                                rerunning jsonb, concurrency_key text,
                                                caller_trace text)
returns table (run flow_runs, created boolean)
language plpgsql as $_$
declare
    existing flow_runs;
    queued flow_runs;
    original flow_runs;
    steps jsonb;
    run_plan jsonb;
    root uuid;
    -- The run whose checkpoints this one starts with: a retry's, or a re-run's (rerunning ->> 'of').
    source uuid := coalesce(retrying, (rerunning ->> 'of')::uuid);
    -- A re-run's kept steps: their checkpoints (and their foreach items') are copied; keepItemsOf: the
    -- items of these foreach steps are copied (the step itself runs again) except dropItems.
    keep text[] := array(select jsonb_array_elements_text(coalesce(rerunning -> 'keep', '[]')));
    keep_items_of text[] := array(select jsonb_array_elements_text(coalesce(rerunning -> 'keepItemsOf', '[]')));
    drop_items text[] := array(select jsonb_array_elements_text(coalesce(rerunning -> 'dropItems', '[]')));
    -- The id carries the time the run is queued, its created_at: lookups by id find its month.
    new_id uuid := tolstoy_new_run_id(now());
    new_created_at timestamptz := now();
    -- The flow's concurrency limits as declared now (flows.concurrency): the run keeps them, and its key as
    -- the caller rendered it from its variables (null when queued by the database: a schedule, a subflow
    -- step, an inbound webhook; those runs share the key null).
    declared jsonb := (select f.concurrency from flows f where f.org_id = org and f.id = flow);
    limits jsonb := case when declared ? 'key'
                         then jsonb_strip_nulls(jsonb_build_object('keyLimit', declared -> 'limit',
                                                                   'flowLimit', declared -> 'flowLimit'))
                         when declared is not null then jsonb_build_object('flowLimit', declared -> 'limit') end;
begin
    if retrying is not null and rerunning is not null then
        raise exception 'tolstoy_queue_run_v4: a run is a retry or a re-run, not both'
            using errcode = 'invalid_parameter_value';
    end if;
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
    -- Quotas (TQ001, TQ002): a run is admitted before anything of it is written.
    perform tolstoy_admit_run(org);
    if source is not null then
        select * into original from flow_runs r
        where r.org_id = org and r.id = source
          and r.created_at between tolstoy_run_from(source) and tolstoy_run_until(source);
        if original.id is null then
            raise exception 'tolstoy_queue_run_v4: no run % to start from', source using errcode = 'no_data_found';
        end if;
        run_plan := original.plan;
        -- A retry continues its chain (the same Idempotency-Keys); a re-run is a chain of its own: its
        -- calls are new effects, under keys of its own.
        root := case when retrying is not null then original.root_run_id end;
    end if;
    if source is null or rerunning ? 'steps' then
        -- A new run's plan: the version's steps (a re-run's, with the configs it changed), the actions as now.
        steps := coalesce(rerunning -> 'steps', (select v.steps from flow_versions v
                                                  where v.org_id = org and v.flow_id = flow
                                                    and v.version = queue_run_version));
        run_plan := tolstoy_plan(org, steps);
    end if;
    if rerunning is not null then
        -- What the re-run reaches into (a subflow step's child re-run from one of its steps, tolstoy_subflow):
        -- in the plan, so a retry of the re-run has it too.
        run_plan := (run_plan - 'rerun') || jsonb_build_object('rerun', jsonb_strip_nulls(jsonb_build_object(
            'of', source, 'fromStep', rerunning -> 'fromStep', 'children', rerunning -> 'children')));
    end if;
    -- The caller's W3C trace context, when well formed (else none, as the W3C says of a bad one): the
    -- workers put the run's spans in its trace (tolstoy/tracing.py).
    insert into flow_runs (org_id, id, flow_id, flow_version, user_id, variables, plan, idempotency_key,
                           retry_of, rerun_of, root_run_id, created_at, acts_as_user, concurrency,
                           concurrency_key, trace_parent)
    values (org, new_id, flow, queue_run_version, actor, vars, run_plan, key, retrying, (rerunning ->> 'of')::uuid,
            coalesce(root, new_id), new_created_at, coalesce(acting, false) and actor is not null, limits,
            case when declared ? 'key' then concurrency_key end,
            tolstoy_trace_parent(caller_trace))
    returning * into queued;
    if source is not null then
        -- Skipped by executeIf (no error) is final; skipped because a dependency failed is not.
        insert into flow_run_steps (org_id, run_id, run_created_at, step_id, status, attempt, inputs, outputs,
                                    sealed, error, started_at, finished_at, duration_ms)
        select s.org_id, new_id, new_created_at, s.step_id, s.status, s.attempt, s.inputs, s.outputs, s.sealed,
               s.error, s.started_at, s.finished_at, s.duration_ms
        from flow_run_steps s
        where s.org_id = org and s.run_id = source and s.run_created_at = original.created_at
          and (s.status = 'completed' or (s.status = 'skipped' and s.error is null))
          -- The original's failure handlers ran for its failure, not for this run's.
          and s.step_id not like 'onFailure.%'
          -- A re-run keeps only the steps not downstream of its fromStep (and a foreach's items but one).
          and (rerunning is null
               or split_part(s.step_id, '[', 1) = any(keep)
               or (strpos(s.step_id, '[') > 0 and split_part(s.step_id, '[', 1) = any(keep_items_of)
                   and s.step_id <> all(drop_items)));
    end if;
    insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
    values (org, flow, actor, new_id::text, '$flow', 'queued', vars);
    run := queued;
    created := true;
    return next;
end;
$_$;

comment on function tolstoy_queue_run_v4(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean, jsonb, text, text) is
    'Queues a run with its plan (steps + the actions they call, with their tools) and its queued log row, or '
    'returns the run an Idempotency-Key (or, for a retry, the retried run) already made. One retry per run. '
    'acting: the one who queues it may act as actor (acts_as_user). rerunning: a re-run of the run named by its '
    '"of" ({of, fromStep, steps?, keep, keepItemsOf, dropItems, children}): the checkpoints of its kept steps '
    'are copied, its plan is the original''s (or built from "steps"), its root is itself (new Idempotency-Keys). '
    'A new run passes tolstoy_admit_run first (quotas: TQ001, TQ002). The run keeps its flow''s concurrency '
    'limits and concurrency_key, its key rendered by the caller (flows.concurrency.key over its variables). caller_trace: the W3C '
    'traceparent of whoever queued it, kept in flow_runs.trace_parent when well formed.';

create or replace function tolstoy_queue_run_v3(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                                vars jsonb, key text, retrying uuid, acting boolean,
                                                rerunning jsonb, concurrency_key text)
returns table (run flow_runs, created boolean)
language sql as $$
    select q.run, q.created
    from tolstoy_queue_run_v4(org, flow, queue_run_version, actor, vars, key, retrying, acting, rerunning,
                              concurrency_key, null) as q
$$;

comment on function tolstoy_queue_run_v3(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean, jsonb, text) is
    'tolstoy_queue_run_v4 without a caller''s trace context (the previous release''s API, tolstoy_queue_run_v2).';
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

comment on function tolstoy_run_payload(flow_runs) is 'A claimed run as a worker receives it: the row, its plan and its checkpoints.';

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create or replace function tolstoy_queue_run_v3(org uuid, flow uuid, queue_run_version integer, actor uuid,
                                                vars jsonb, key text, retrying uuid, acting boolean,
                                                rerunning jsonb, concurrency_key text)
returns table (run flow_runs, created boolean)
language plpgsql as $_$
declare
    existing flow_runs;
    queued flow_runs;
    original flow_runs;
    steps jsonb;
    run_plan jsonb;
    root uuid;
    -- The run whose checkpoints this one starts with: a retry's, or a re-run's (rerunning ->> 'of').
    source uuid := coalesce(retrying, (rerunning ->> 'of')::uuid);
    -- A re-run's kept steps: their checkpoints (and their foreach items') are copied; keepItemsOf: the
    -- items of these foreach steps are copied (the step itself runs again) except dropItems.
    keep text[] := array(select jsonb_array_elements_text(coalesce(rerunning -> 'keep', '[]')));
    keep_items_of text[] := array(select jsonb_array_elements_text(coalesce(rerunning -> 'keepItemsOf', '[]')));
    drop_items text[] := array(select jsonb_array_elements_text(coalesce(rerunning -> 'dropItems', '[]')));
    -- The id carries the time the run is queued, its created_at: lookups by id find its month.
    new_id uuid := tolstoy_new_run_id(now());
    new_created_at timestamptz := now();
    -- The flow's concurrency limits as declared now (flows.concurrency): the run keeps them, and its key as
    -- the caller rendered it from its variables (null when queued by the database: a schedule, a subflow
    -- step, an inbound webhook; those runs share the key null).
    declared jsonb := (select f.concurrency from flows f where f.org_id = org and f.id = flow);
    limits jsonb := case when declared ? 'key'
                         then jsonb_strip_nulls(jsonb_build_object('keyLimit', declared -> 'limit',
                                                                   'flowLimit', declared -> 'flowLimit'))
                         when declared is not null then jsonb_build_object('flowLimit', declared -> 'limit') end;
begin
    if retrying is not null and rerunning is not null then
        raise exception 'tolstoy_queue_run_v3: a run is a retry or a re-run, not both'
            using errcode = 'invalid_parameter_value';
    end if;
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
    -- Quotas (TQ001, TQ002): a run is admitted before anything of it is written.
    perform tolstoy_admit_run(org);
    if source is not null then
        select * into original from flow_runs r
        where r.org_id = org and r.id = source
          and r.created_at between tolstoy_run_from(source) and tolstoy_run_until(source);
        if original.id is null then
            raise exception 'tolstoy_queue_run_v3: no run % to start from', source using errcode = 'no_data_found';
        end if;
        run_plan := original.plan;
        -- A retry continues its chain (the same Idempotency-Keys); a re-run is a chain of its own: its
        -- calls are new effects, under keys of its own.
        root := case when retrying is not null then original.root_run_id end;
    end if;
    if source is null or rerunning ? 'steps' then
        -- A new run's plan: the version's steps (a re-run's, with the configs it changed), the actions as now.
        steps := coalesce(rerunning -> 'steps', (select v.steps from flow_versions v
                                                  where v.org_id = org and v.flow_id = flow
                                                    and v.version = queue_run_version));
        run_plan := tolstoy_plan(org, steps);
    end if;
    if rerunning is not null then
        -- What the re-run reaches into (a subflow step's child re-run from one of its steps, tolstoy_subflow):
        -- in the plan, so a retry of the re-run has it too.
        run_plan := (run_plan - 'rerun') || jsonb_build_object('rerun', jsonb_strip_nulls(jsonb_build_object(
            'of', source, 'fromStep', rerunning -> 'fromStep', 'children', rerunning -> 'children')));
    end if;
    insert into flow_runs (org_id, id, flow_id, flow_version, user_id, variables, plan, idempotency_key,
                           retry_of, rerun_of, root_run_id, created_at, acts_as_user, concurrency,
                           concurrency_key)
    values (org, new_id, flow, queue_run_version, actor, vars, run_plan, key, retrying, (rerunning ->> 'of')::uuid,
            coalesce(root, new_id), new_created_at, coalesce(acting, false) and actor is not null, limits,
            case when declared ? 'key' then concurrency_key end)
    returning * into queued;
    if source is not null then
        -- Skipped by executeIf (no error) is final; skipped because a dependency failed is not.
        insert into flow_run_steps (org_id, run_id, run_created_at, step_id, status, attempt, inputs, outputs,
                                    sealed, error, started_at, finished_at, duration_ms)
        select s.org_id, new_id, new_created_at, s.step_id, s.status, s.attempt, s.inputs, s.outputs, s.sealed,
               s.error, s.started_at, s.finished_at, s.duration_ms
        from flow_run_steps s
        where s.org_id = org and s.run_id = source and s.run_created_at = original.created_at
          and (s.status = 'completed' or (s.status = 'skipped' and s.error is null))
          -- The original's failure handlers ran for its failure, not for this run's.
          and s.step_id not like 'onFailure.%'
          -- A re-run keeps only the steps not downstream of its fromStep (and a foreach's items but one).
          and (rerunning is null
               or split_part(s.step_id, '[', 1) = any(keep)
               or (strpos(s.step_id, '[') > 0 and split_part(s.step_id, '[', 1) = any(keep_items_of)
                   and s.step_id <> all(drop_items)));
    end if;
    insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
    values (org, flow, actor, new_id::text, '$flow', 'queued', vars);
    run := queued;
    created := true;
    return next;
end;
$_$;

comment on function tolstoy_queue_run_v3(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean, jsonb, text) is
    'Queues a run with its plan (steps + the actions they call, with their tools) and its queued log row, or '
    'returns the run an Idempotency-Key (or, for a retry, the retried run) already made. One retry per run. '
    'acting: the one who queues it may act as actor (acts_as_user). rerunning: a re-run of the run named by its '
    '"of" ({of, fromStep, steps?, keep, keepItemsOf, dropItems, children}): the checkpoints of its kept steps '
    'are copied, its plan is the original''s (or built from "steps"), its root is itself (new Idempotency-Keys). '
    'A new run passes tolstoy_admit_run first (quotas: TQ001, TQ002). The run keeps its flow''s concurrency '
    'limits and concurrency_key, its key rendered by the caller (flows.concurrency.key over its variables).';

create or replace function tolstoy_run_payload(r flow_runs) returns jsonb
language sql stable as $$
    select jsonb_build_object(
        'org_id', r.org_id, 'id', r.id, 'created_at', r.created_at, 'flow_id', r.flow_id,
        'flow_version', r.flow_version, 'user_id', r.user_id, 'acts_as_user', r.acts_as_user,
        'variables', r.variables, 'plan', r.plan,
        'token', r.lease_token, 'root_run_id', r.root_run_id, 'claims', r.claims, 'recoveries', r.recoveries,
        'strikes', r.strikes, 'handbacks', r.handbacks, 'cancel_requested', r.cancel_requested,
        'checkpoints', coalesce((
            select jsonb_agg(jsonb_build_object(
                       'step_id', s.step_id, 'status', s.status, 'attempt', s.attempt, 'inputs', s.inputs,
                       'outputs', s.outputs, 'sealed', encode(s.sealed, 'base64'), 'error', s.error,
                       'wake_at', s.wake_at, 'call_started_at', s.call_started_at)
                   order by s.started_at)
            from flow_run_steps s
            where s.org_id = r.org_id and s.run_id = r.id and s.run_created_at = r.created_at), '[]'))
$$;

comment on function tolstoy_run_payload(flow_runs) is 'A claimed run as a worker receives it: the row, its plan and its checkpoints.';

drop function tolstoy_queue_run_v4(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean, jsonb, text, text);

drop function tolstoy_trace_parent(text);

alter table flow_runs drop column trace_parent;
