SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: execution_log_source; Type: TYPE; Schema: public; Owner: -
--

CREATE TYPE public.execution_log_source AS ENUM (
    'engine',
    'client'
);


--
-- Name: TYPE execution_log_source; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TYPE public.execution_log_source IS 'Who wrote an execution log row: engine (Tolstoy itself) or client (POST /execution-logs).';


--
-- Name: execution_status; Type: TYPE; Schema: public; Owner: -
--

CREATE TYPE public.execution_status AS ENUM (
    'pending',
    'queued',
    'running',
    'started',
    'completed',
    'failed',
    'skipped',
    'cancelled'
);


--
-- Name: TYPE execution_status; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TYPE public.execution_status IS 'Lifecycle of a run or a step, as the API spells it.';


--
-- Name: flow_run_status; Type: TYPE; Schema: public; Owner: -
--

CREATE TYPE public.flow_run_status AS ENUM (
    'queued',
    'running',
    'waiting',
    'completed',
    'failed',
    'cancelled'
);


--
-- Name: TYPE flow_run_status; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TYPE public.flow_run_status IS 'Lifecycle of a flow run: queued → running → completed | failed | cancelled; waiting = parked until something outside the engine happens (an unknown outcome resolved).';


--
-- Name: http_method; Type: TYPE; Schema: public; Owner: -
--

CREATE TYPE public.http_method AS ENUM (
    'GET',
    'POST',
    'PUT',
    'PATCH',
    'DELETE'
);


--
-- Name: tool_auth_type; Type: TYPE; Schema: public; Owner: -
--

CREATE TYPE public.tool_auth_type AS ENUM (
    'none',
    'apiKey',
    'bearer',
    'basic',
    'oauth2'
);


--
-- Name: TYPE tool_auth_type; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TYPE public.tool_auth_type IS 'How the engine authenticates to a tool; values are the API''s spelling.';


--
-- Name: actions_bump_version(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.actions_bump_version() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    if (new.method, new.endpoint, new.headers, new.input_schema, new.execute_if, new.tool_id)
        is distinct from
       (old.method, old.endpoint, old.headers, old.input_schema, old.execute_if, old.tool_id) then
        new.version := old.version + 1;
    else
        new.version := old.version;
    end if;
    return new;
end;
$$;


--
-- Name: FUNCTION actions_bump_version(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.actions_bump_version() IS 'BEFORE UPDATE trigger: version + 1 when method, endpoint, headers, input_schema, execute_if or tool_id change.';


--
-- Name: execution_logs_count_stored_bytes(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.execution_logs_count_stored_bytes() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    -- An AFTER ROW trigger sees the rows as stored (compressed, out of line included), as the purge's
    -- and a run's measures do; RETURNING would show an inserted value uncompressed.
    if tg_op in ('UPDATE', 'DELETE') then
        insert into history_bytes (org_id, month, bytes)
        values (old.org_id, tolstoy_history_month(old.created_at),
                -(pg_column_size(old.inputs) + coalesce(pg_column_size(old.outputs), 0)
                  + coalesce(pg_column_size(old.error), 0)));
    end if;
    if tg_op in ('INSERT', 'UPDATE') then
        insert into history_bytes (org_id, month, bytes)
        values (new.org_id, tolstoy_history_month(new.created_at),
                pg_column_size(new.inputs) + coalesce(pg_column_size(new.outputs), 0)
                + coalesce(pg_column_size(new.error), 0));
    end if;
    return null;
end;
$$;


--
-- Name: FUNCTION execution_logs_count_stored_bytes(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.execution_logs_count_stored_bytes() IS 'AFTER ROW trigger of the execution log rows that belong to no run (a client''s, a direct action call''s): what they store counts in their organization''s history_bytes when written, changed or deleted. A run''s own rows count with the run when it finishes (flow_runs_count_stored_bytes).';


--
-- Name: flow_runs_count_stored_bytes(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.flow_runs_count_stored_bytes() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    new.stored_bytes := pg_column_size(new.variables) + pg_column_size(new.plan)
        + coalesce(pg_column_size(new.error), 0)
        + coalesce((select sum(coalesce(pg_column_size(s.inputs), 0) + coalesce(pg_column_size(s.outputs), 0)
                               + coalesce(pg_column_size(s.sealed), 0) + coalesce(pg_column_size(s.error), 0))
                    from flow_run_steps s
                    where s.org_id = new.org_id and s.run_id = new.id and s.run_created_at = new.created_at), 0)
        -- A run's log rows are never older than the run: the bound prunes older months' partitions. A
        -- client's rows count when written (execution_logs_count_stored_bytes), whatever execution id they borrow.
        + coalesce((select sum(pg_column_size(l.inputs) + coalesce(pg_column_size(l.outputs), 0)
                               + coalesce(pg_column_size(l.error), 0))
                    from execution_logs l
                    where l.org_id = new.org_id and l.execution_id = new.id::text
                      and l.created_at >= new.created_at and l.source = 'engine'), 0);
    insert into history_bytes (org_id, month, bytes)
    values (new.org_id, tolstoy_history_month(new.created_at), new.stored_bytes);
    return new;
end;
$$;


--
-- Name: FUNCTION flow_runs_count_stored_bytes(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.flow_runs_count_stored_bytes() IS 'BEFORE UPDATE OF status trigger of a run that finishes: measures the history it holds (stored_bytes) and adds it to its organization''s history_bytes. Security definer (tolstoy_engine), so it measures whoever moves the run.';


--
-- Name: flow_runs_inherit_acting(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.flow_runs_inherit_acting() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    select p.acts_as_user and p.user_id is not distinct from new.user_id into new.acts_as_user
    from flow_runs p
    where p.org_id = new.org_id and p.id = new.parent_run_id
      and p.created_at between tolstoy_run_from(new.parent_run_id) and tolstoy_run_until(new.parent_run_id);
    new.acts_as_user := coalesce(new.acts_as_user, false);
    return new;
end;
$$;


--
-- Name: FUNCTION flow_runs_inherit_acting(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.flow_runs_inherit_acting() IS 'BEFORE UPDATE OF parent_run_id trigger: a child run may act as its user only when its parent may.';


--
-- Name: flow_runs_notify(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.flow_runs_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    perform pg_notify('tolstoy_runs', new.id::text);
    return null;
end;
$$;


--
-- Name: FUNCTION flow_runs_notify(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.flow_runs_notify() IS 'AFTER INSERT/UPDATE trigger: NOTIFY tolstoy_runs when a run is queued.';


--
-- Name: flow_runs_plan_on_failure(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.flow_runs_plan_on_failure() RETURNS trigger
    LANGUAGE plpgsql
    AS $_$
declare
    handlers jsonb;
begin
    if new.plan ? 'onFailure' then
        return new;
    end if;
    select v.on_failure into handlers
    from flow_versions v
    where v.org_id = new.org_id and v.flow_id = new.flow_id and v.version = new.flow_version;
    if handlers is null then
        return new;
    end if;
    new.plan := new.plan || jsonb_build_object(
        'onFailure', handlers,
        'actions', coalesce(new.plan -> 'actions', '[]') || coalesce((
            select jsonb_agg(jsonb_build_object(
                       'id', a.id, 'key', a.key, 'tool_id', a.tool_id, 'method', a.method, 'endpoint', a.endpoint,
                       'headers', a.headers, 'input_schema', a.input_schema, 'execute_if', a.execute_if,
                       'version', a.version, 'tool', jsonb_build_object('id', t.id, 'name', t.name,
                                                                         'base_url', t.base_url,
                                                                         'auth_type', t.auth_type,
                                                                         'honors_idempotency_key',
                                                                         t.honors_idempotency_key)))
            from actions a join tools t on t.org_id = a.org_id and t.id = a.tool_id
            where a.org_id = new.org_id
              and (a.key in (select jsonb_path_query(handlers, 'strict $.**.actionKey') #>> '{}')
                   or a.id::text in (select jsonb_path_query(handlers, 'strict $.**.actionId') #>> '{}'))
              and a.id::text not in (select jsonb_path_query(coalesce(new.plan -> 'actions', '[]'),
                                                             'strict $[*].id') #>> '{}')), '[]'));
    return new;
end;
$_$;


--
-- Name: FUNCTION flow_runs_plan_on_failure(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.flow_runs_plan_on_failure() IS 'BEFORE INSERT trigger on flow_runs: adds the version''s onFailure steps (and the actions they call) to the plan.';


--
-- Name: flow_runs_release_slot(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.flow_runs_release_slot() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
begin
    -- Waits for a claim deciding about this flow's runs: a run it parks is seen below.
    perform pg_advisory_xact_lock(tolstoy_slot_lock(new.org_id, new.flow_id));
    -- A new statement, so a new snapshot. The oldest run waiting for this run's key (not a step's slot of the
    -- same key: waiting_step, step_slots.sql), and the oldest waiting for the flow's limit: each is claimed or parked again by the next claim (so a slot is never given to
    -- a run another limit still holds back, and a raised limit fills as runs end).
    update flow_runs w
    set run_after = clock_now
    from ((select p.org_id, p.id, p.created_at
           from flow_runs p
           where p.org_id = new.org_id and p.flow_id = new.flow_id and p.waiting_for = 'concurrency'
             and p.status = 'queued' and p.waiting_on ? 'key' and p.waiting_step is null
             and p.waiting_on -> 'key' = coalesce(to_jsonb(new.concurrency_key), 'null'::jsonb)
           order by p.created_at, p.id
           limit 1)
          union
          (select p.org_id, p.id, p.created_at
           from flow_runs p
           where p.org_id = new.org_id and p.flow_id = new.flow_id and p.waiting_for = 'concurrency'
             and p.status = 'queued' and p.waiting_on ? 'flowLimit'
           order by p.created_at, p.id
           limit 1)) as woken
    where w.org_id = woken.org_id and w.id = woken.id and w.created_at = woken.created_at;
    return null;
end;
$$;


--
-- Name: FUNCTION flow_runs_release_slot(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.flow_runs_release_slot() IS 'AFTER UPDATE trigger: a run with concurrency limits that leaves running (finished, cancelled, failed, parked) frees its slot: the oldest run waiting for its key and the oldest waiting for its flow''s limit are due again.';


--
-- Name: flow_runs_release_step_slots(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.flow_runs_release_step_slots() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    -- Waits for a take deciding about this flow's slots: a run it parks is seen by the release.
    perform pg_advisory_xact_lock(tolstoy_slot_lock(new.org_id, new.flow_id));
    perform tolstoy_release_step_slots(new.org_id, new.id, null);
    return null;
end;
$$;


--
-- Name: FUNCTION flow_runs_release_step_slots(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.flow_runs_release_step_slots() IS 'AFTER UPDATE trigger: a run that took a step slot and leaves running (finished, cancelled, failed, parked) or is cancelled while queued frees its step slots; the oldest run waiting for each gets it.';


--
-- Name: flow_runs_uncount_stored_bytes(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.flow_runs_uncount_stored_bytes() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    insert into history_bytes (org_id, month, bytes)
    select g.org_id, tolstoy_history_month(g.created_at), -sum(g.stored_bytes)
    from gone g
    where g.stored_bytes is not null
    group by 1, 2;
    return null;
end;
$$;


--
-- Name: FUNCTION flow_runs_uncount_stored_bytes(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.flow_runs_uncount_stored_bytes() IS 'AFTER DELETE statement trigger of flow_runs: deleted runs (the purge of finished ones) give their stored bytes back.';


--
-- Name: flow_runs_waiting_for(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.flow_runs_waiting_for() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
declare
    parked record;
begin
    if new.waiting_for is distinct from old.waiting_for then
        return new;
    end if;
    if new.status in ('queued', 'waiting') and old.status = 'running' then
        select w.step_id, w.kind, w.since, w.wake_at, w.signal, w.budget
        into parked
        from (select s.step_id, s.started_at, s.wake_at,
                     case when s.status = 'outcome_unknown' then 'outcomeUnknown'
                          when s.inputs ? 'onTimeout' and (s.inputs ? 'signal' or s.inputs ? 'signals') then 'signal'
                          when s.wake_at is null then 'child'
                          -- A call waiting for its credential's rate budget (rate_budgets.sql): its inputs
                          -- say which budget, its wake_at when the call may go.
                          when jsonb_typeof(s.inputs -> 'rateLimit') = 'object' then 'rateLimit'
                          when s.error is not null and s.error <> 'null' then 'retry'
                          else 'delay' end as kind,
                     case when s.status = 'outcome_unknown' then coalesce(s.call_started_at, s.updated_at)
                          else s.started_at end as since,
                     coalesce(s.inputs -> 'signals', s.inputs -> 'signal') as signal,
                     s.inputs -> 'rateLimit' as budget
              from flow_run_steps s
              where s.org_id = new.org_id and s.run_id = new.id and s.run_created_at = new.created_at
                and s.status in ('waiting', 'outcome_unknown')) as w
        order by array_position(array['outcomeUnknown', 'signal', 'child', 'rateLimit', 'retry', 'delay'], w.kind),
                 w.wake_at nulls last, w.started_at, w.step_id
        limit 1;
        if parked.step_id is null then
            new.waiting_for := null;
            new.waiting_on := null;
            new.waiting_step := null;
            new.waiting_since := null;
            new.waiting_until := null;
            return new;
        end if;
        new.waiting_for := parked.kind;
        new.waiting_step := parked.step_id;
        new.waiting_since := parked.since;
        new.waiting_until := case when parked.kind in ('signal', 'rateLimit', 'retry', 'delay') then parked.wake_at end;
        new.waiting_on := case parked.kind
            when 'signal' then parked.signal
            when 'rateLimit' then jsonb_build_object('toolId', parked.budget -> 'toolId',
                                                     'scope', parked.budget -> 'scope')
            when 'child' then (select to_jsonb(c.id)
                               from flow_runs c
                               where c.org_id = new.org_id and c.parent_run_id = new.id
                                 and c.parent_step_id = parked.step_id
                                 and c.created_at >= tolstoy_run_from(new.id)  -- a child is queued after its parent
                               order by c.created_at desc
                               limit 1)
            else to_jsonb(parked.step_id) end;
        return new;
    end if;
    if new.status not in ('queued', 'waiting') or (old.status = 'waiting' and new.status = 'queued')
       or new.run_after < old.run_after then
        new.waiting_for := null;
        new.waiting_on := null;
        new.waiting_step := null;
        new.waiting_since := null;
        new.waiting_until := null;
    end if;
    return new;
end;
$$;


--
-- Name: FUNCTION flow_runs_waiting_for(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.flow_runs_waiting_for() IS 'BEFORE UPDATE trigger on flow_runs: when a run parks, records why (waiting_for, waiting_on, waiting_step, waiting_since, waiting_until) from the steps that wait; clears it when the run is claimed, finishes or is woken; keeps what the statement set itself.';


--
-- Name: flow_runs_wake_parent(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.flow_runs_wake_parent() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
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
    set status = 'queued', run_after = clock_now
    where p.org_id = new.org_id and p.id = any(chain) and p.status = 'waiting'
      and p.created_at between chain_from and chain_until
      and exists (select 1 from flow_run_steps s
                  where s.org_id = p.org_id and s.run_id = p.id and s.run_created_at = p.created_at
                    and s.run_created_at between chain_from and chain_until
                    and s.step_id = new.parent_step_id and s.status = 'waiting');
    return null;
end;
$$;


--
-- Name: FUNCTION flow_runs_wake_parent(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.flow_runs_wake_parent() IS 'AFTER UPDATE trigger: a child run that finished queues its parent again when the parent waits for it, or the retry of the parent that waits for it.';


--
-- Name: flow_versions_immutable(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.flow_versions_immutable() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    raise exception 'flow_versions rows are immutable' using errcode = 'restrict_violation';
end;
$$;


--
-- Name: FUNCTION flow_versions_immutable(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.flow_versions_immutable() IS 'BEFORE UPDATE trigger: flow versions are never changed.';


--
-- Name: flows_bump_version(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.flows_bump_version() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    if new.steps is distinct from old.steps or new.on_failure is distinct from old.on_failure then
        new.version := old.version + 1;
    else
        new.version := old.version;
    end if;
    return new;
end;
$$;


--
-- Name: FUNCTION flows_bump_version(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.flows_bump_version() IS 'BEFORE UPDATE trigger: version + 1 when steps or on_failure change.';


--
-- Name: flows_record_version(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.flows_record_version() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    if tg_op = 'INSERT' or new.version <> old.version then
        insert into flow_versions (org_id, flow_id, version, steps, on_failure)
        values (new.org_id, new.id, new.version, new.steps, new.on_failure);
    end if;
    return null;
end;
$$;


--
-- Name: FUNCTION flows_record_version(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.flows_record_version() IS 'AFTER INSERT/UPDATE trigger: stores each new version of steps (and on_failure) in flow_versions.';


--
-- Name: tolstoy_admit_run(uuid); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_admit_run(org uuid) RETURNS void
    LANGUAGE plpgsql
    AS $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    defaults jsonb := tolstoy_quota_defaults();
    quota organization_quotas;
    max_runs integer;
    max_bytes bigint;
    retention integer := (defaults ->> 'retentionDays')::integer;
    held integer;
    deltas integer;
    stored bigint;
begin
    select * into quota from organization_quotas q where q.org_id = org;
    max_runs := coalesce(quota.queued_runs, (defaults ->> 'queuedRuns')::integer);
    max_bytes := coalesce(quota.stored_bytes, (defaults ->> 'storedBytes')::bigint);
    if max_runs is null and max_bytes is null then
        return;
    end if;
    -- One admission of this organization at a time, until the transaction that queues the run ends.
    select u.runs into held from organization_usage u where u.org_id = org for update;
    if not found then
        insert into organization_usage (org_id) values (org) on conflict (org_id) do nothing;
        select u.runs into held from organization_usage u where u.org_id = org for update;
    end if;
    if max_bytes is not null then
        select count(*), greatest(coalesce(sum(h.bytes) filter (
                   where retention is null or (h.month + interval '1 month')::date > clock_now::date - retention), 0), 0)
        into deltas, stored
        from history_bytes h
        where h.org_id = org;
        if deltas > 64 then
            -- Fold the deltas into one row per month still kept (deltas written meanwhile are not
            -- seen, so they stay, and nothing is counted twice).
            with gone as (
                delete from history_bytes h where h.org_id = org returning h.month, h.bytes
            )
            insert into history_bytes (org_id, month, bytes)
            select org, g.month, sum(g.bytes)
            from gone g
            where retention is null or (g.month + interval '1 month')::date > clock_now::date - retention
            group by g.month
            having sum(g.bytes) <> 0;
        end if;
        if stored >= max_bytes then
            raise exception 'The organization stores % bytes of run history, at or over its storedBytes quota (%): '
                            'new runs are refused until retention or a purge of finished runs frees some.',
                            stored, max_bytes
                using errcode = 'TQ002',
                      detail = jsonb_build_object('quota', 'storedBytes', 'limit', max_bytes, 'used', stored)::text;
        end if;
    end if;
    if max_runs is not null then
        if held >= max_runs then
            select count(*) into held
            from flow_runs r
            where r.org_id = org and r.status in ('queued', 'running', 'waiting');
            if held >= max_runs then
                raise exception 'The organization has % runs queued, running or waiting, as many as its queuedRuns '
                                'quota allows (%): new runs are refused until some finish.', held, max_runs
                    using errcode = 'TQ001',
                          detail = jsonb_build_object('quota', 'queuedRuns', 'limit', max_runs, 'used', held)::text;
            end if;
            update organization_usage u set runs = held + 1, counted_at = clock_now where u.org_id = org;
        else
            update organization_usage u set runs = held + 1 where u.org_id = org;
        end if;
    end if;
end;
$$;


--
-- Name: FUNCTION tolstoy_admit_run(org uuid); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_admit_run(org uuid) IS 'The quotas a new run of org must pass (queuedRuns: TQ001, storedBytes: TQ002), one admission of org at a time; tolstoy_queue_run calls it before writing a new run. Acts for org under row-level security.';


--
-- Name: tolstoy_audit(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_audit() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    context jsonb;
    old_row jsonb := case when tg_op <> 'INSERT' then to_jsonb(old) end;
    new_row jsonb := case when tg_op <> 'DELETE' then to_jsonb(new) end;
    subject jsonb := coalesce(new_row, old_row);
    ignored text[] := array['org_id', 'id', 'created_at', 'updated_at']
                      || coalesce(string_to_array(tg_argv[1], ','), '{}');
    secret text[];
    changes jsonb := '{}';
    name text;
    was jsonb;
    now_is jsonb;
begin
    -- A cascade or another trigger's write is part of the change that caused it.
    if pg_trigger_depth() > 1 then
        return null;
    end if;
    context := nullif(current_setting('app.audit', true), '')::jsonb;
    if context is null then
        return null;
    end if;
    select coalesce(array_agg(a.attname::text), '{}') into secret
    from pg_attribute a
    where a.attrelid = tg_relid and a.attnum > 0 and not a.attisdropped and a.atttypid = 'bytea'::regtype;
    for name in select k from jsonb_object_keys(subject) as k loop
        continue when name = any(ignored);
        was := coalesce(old_row -> name, 'null');
        now_is := coalesce(new_row -> name, 'null');
        continue when was = now_is;
        if name = any(secret) then
            was := case when was = 'null' then was else '"***"' end;
            now_is := case when now_is = 'null' then now_is else '"***"' end;
        else
            was := tolstoy_audit_mask(was);
            now_is := tolstoy_audit_mask(now_is);
        end if;
        changes := changes || jsonb_build_object(name, jsonb_build_array(was, now_is));
    end loop;
    if changes = '{}' then
        return null;
    end if;
    insert into audit_events (org_id, actor, action, target_type, target_id, changes, request_id)
    values (coalesce(subject ->> 'org_id', subject ->> 'id')::uuid,
            coalesce(context -> 'actor', '{}'),
            tg_argv[0] || case tg_op when 'INSERT' then '.created' when 'UPDATE' then '.updated'
                                     else '.deleted' end,
            tg_argv[0],
            coalesce(subject ->> 'id', subject ->> 'org_id')::uuid,
            changes,
            left(context ->> 'requestId', 200));
    return null;
end;
$$;


--
-- Name: FUNCTION tolstoy_audit(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_audit() IS 'AFTER ROW trigger of audited tables (argument: target type, then ignored columns comma-separated): writes one audit_events row per row changed by a request that set app.audit; secrets masked.';


--
-- Name: tolstoy_audit_mask(jsonb); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_audit_mask(value jsonb) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    secret_key text := tolstoy_audit_secret_key();
    shown text;
begin
    if value is null or jsonb_typeof(value) not in ('object', 'array') then
        return value;
    end if;
    shown := value::text;
    if shown !~* secret_key then
        return value;
    end if;
    shown := regexp_replace(shown, secret_key || '("(?:[^"\\]|\\.)*"|-?[0-9][-+.0-9eE]*|true|false|null)',
                            '"\1": "***"', 'gi');
    if shown ~* (secret_key || '[[{]') then
        return tolstoy_audit_mask_walk(shown::jsonb);
    end if;
    return shown::jsonb;
end;
$$;


--
-- Name: FUNCTION tolstoy_audit_mask(value jsonb); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_audit_mask(value jsonb) IS 'The value with the values of secret-named fields (tolstoy_audit_secret_names) masked at any depth.';


--
-- Name: tolstoy_audit_mask_walk(jsonb); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_audit_mask_walk(value jsonb) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE
    AS $$
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


--
-- Name: FUNCTION tolstoy_audit_mask_walk(value jsonb); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_audit_mask_walk(value jsonb) IS 'tolstoy_audit_mask''s structural walk: secret-named fields masked whole at any depth.';


--
-- Name: tolstoy_audit_secret_key(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_audit_secret_key() RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
    select '"(' || array_to_string(array(select replace(n, '_', '[-_]')
                                         from unnest(tolstoy_audit_secret_names()) as n), '|') || ')": '
$$;


--
-- Name: FUNCTION tolstoy_audit_secret_key(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_audit_secret_key() IS 'A regular expression matching a secret-named key in the text of a jsonb value (tolstoy_audit_mask).';


--
-- Name: tolstoy_audit_secret_names(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_audit_secret_names() RETURNS text[]
    LANGUAGE sql IMMUTABLE
    AS $$
    select array['password', 'token', 'secret', 'apikey', 'api_key', 'accesstoken', 'access_token',
                 'refreshtoken', 'refresh_token', 'clientsecret', 'client_secret', 'headervalue', 'authorization',
                 'proxy_authorization', 'cookie', 'set_cookie', 'x_api_key', 'x_auth_token',
                 'x_amz_security_token']
$$;


--
-- Name: FUNCTION tolstoy_audit_secret_names(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_audit_secret_names() IS 'Field and header names whose values tolstoy_audit_mask hides (the names of tolstoy/redaction.py).';


--
-- Name: tolstoy_authenticate(bytea); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_authenticate(hash bytea) RETURNS TABLE(org_id uuid, key_id uuid)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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


--
-- Name: FUNCTION tolstoy_authenticate(hash bytea); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_authenticate(hash bytea) IS 'The organization and key id of an unrevoked API key hash; refreshes last_used_at once a minute.';


--
-- Name: tolstoy_bind_to_tool_origin(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_bind_to_tool_origin() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    select base_url into new.origin_url
    from tools
    where org_id = new.org_id and id = new.tool_id
    for key share;
    return new;
end;
$$;


--
-- Name: FUNCTION tolstoy_bind_to_tool_origin(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_bind_to_tool_origin() IS 'BEFORE INSERT trigger of tool_credentials and user_connections: origin_url := the tool''s base_url now.';


--
-- Name: tolstoy_cancel_descendants(uuid, uuid); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_cancel_descendants(org uuid, parent uuid) RETURNS integer
    LANGUAGE plpgsql
    AS $_$
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
$_$;


--
-- Name: FUNCTION tolstoy_cancel_descendants(org uuid, parent uuid); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_cancel_descendants(org uuid, parent uuid) IS 'Cancels the unfinished runs below parent (its subflow steps'' children, theirs, …), deepest first: a queued or waiting one at once with its log row, a running one within one heartbeat. Returns how many were cancelled at once. Called by tolstoy_cancel_run before and after the parent''s own cancel.';


--
-- Name: tolstoy_cancel_run(uuid, uuid, uuid, uuid); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_cancel_run(org uuid, flow uuid, target uuid, actor uuid) RETURNS jsonb
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $_$
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
$_$;


--
-- Name: FUNCTION tolstoy_cancel_run(org uuid, flow uuid, target uuid, actor uuid); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_cancel_run(org uuid, flow uuid, target uuid, actor uuid) IS 'Cancels a run of a flow (and the runs below it, tolstoy_cancel_descendants): at once when queued, sleeping, waiting or abandoned by its worker (with its log row, written as actor''s), else within one heartbeat. Null when no such run; {changed: false, status} when it had finished; else {changed, status, descendants (cancelled at once), run}.';


--
-- Name: tolstoy_checkpoint(text, uuid, uuid, integer, jsonb); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_checkpoint(worker text, org uuid, run uuid, token integer, writes jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    -- The run's month, computed here once: in the lease check's query the planner would compute each
    -- bound anew on every plan it makes for it, through the SQL-function executor (about 45 µs each).
    month_from timestamptz := tolstoy_run_from(run);
    month_until timestamptz := tolstoy_run_until(run);
    current flow_runs;
    transition jsonb := coalesce(writes -> 'run', '{"action": "continue"}');
    fault jsonb := coalesce(transition -> 'error', '{}');
    half_life double precision := coalesce((writes ->> 'half_life_seconds')::double precision, 300);
    max_handbacks integer := coalesce((writes ->> 'max_handbacks')::integer, 20);
    outcome flow_run_status;
    progress boolean := false;
    lease interval := make_interval(secs => coalesce((writes ->> 'lease_seconds')::double precision, 30));
    -- Whether this checkpoint counts the worker time (below): always when the run leaves running, or when
    -- the caller may park it right after (writes.count_time: tolstoy_subflow, tolstoy_checkpoint_slots);
    -- for a run that goes on, once a second at most, so that a quick run's checkpoints before its last
    -- write neither the organization's row nor its own.
    counting boolean;
begin
    perform set_config('app.org_id', org::text, true);
    select * into current from flow_runs r
    where r.org_id = org and r.id = run and r.lease_owner = worker and r.lease_token = token
      and r.created_at between month_from and month_until
      and r.status = 'running' and r.lease_expires_at > clock_now
    for update;
    if not found then
        raise exception 'The lease on run % is lost.', run using errcode = 'TL001';
    end if;
    -- The steps in one insert, in their order (started_at read per row, so steps checkpointed together
    -- keep it), as the log rows below: an insert into the partitioned flow_run_steps sets up its routing
    -- to the month's partition once per statement. A step given twice keeps its last write (an insert
    -- may not update one row twice).
    with written as (
        insert into flow_run_steps as s (org_id, run_id, run_created_at, step_id, status, attempt, inputs, outputs,
                                         sealed, error, wake_at, call_started_at, started_at, finished_at,
                                         duration_ms)
        select org, run, current.created_at, e.step ->> 'step_id', e.step ->> 'status',
               coalesce((e.step ->> 'attempt')::integer, 1), e.step -> 'inputs', e.step -> 'outputs',
               decode(e.step ->> 'sealed', 'base64'), e.step -> 'error',
               clock_now + make_interval(secs => (e.step ->> 'wake_in_ms')::double precision / 1000),
               case when (e.step ->> 'call_started')::boolean then clock_now end,
               tolstoy_clock_timestamp(),
               case when e.step ->> 'status' in ('completed', 'skipped', 'failed') then tolstoy_clock_timestamp() end,
               (e.step ->> 'duration_ms')::integer
        from (select distinct on (w.step ->> 'step_id') w.step, w.n
              from jsonb_array_elements(coalesce(writes -> 'steps', '[]')) with ordinality as w(step, n)
              order by w.step ->> 'step_id', w.n desc) as e
        order by e.n
        on conflict (org_id, run_id, step_id, run_created_at) do update
        set status = excluded.status, attempt = excluded.attempt,
            inputs = coalesce(excluded.inputs, s.inputs), outputs = excluded.outputs, sealed = excluded.sealed,
            error = excluded.error, wake_at = excluded.wake_at,
            call_started_at = case when excluded.status = 'running' then excluded.call_started_at
                                   else s.call_started_at end,
            finished_at = excluded.finished_at, duration_ms = excluded.duration_ms,
            started_at = case when s.status in ('completed', 'skipped', 'failed') then clock_now else s.started_at end
        returning s.step_id, s.status
    )
    select coalesce(bool_or(w.status in ('completed', 'skipped', 'failed') and strpos(w.step_id, '[') = 0), false)
    into progress
    from written w;
    -- The log rows in one statement, in their order (created_at read per row): an insert into the
    -- partitioned table sets up its routing to the month's partition (the partition, its indexes, its
    -- policies) once per statement, which cost about 0.2 ms a row when each row had its own; none at
    -- all when there are none.
    if jsonb_array_length(coalesce(writes -> 'events', '[]')) > 0 then
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error,
                                    duration_ms, created_at)
        select org, current.flow_id, current.user_id, run::text, e.event ->> 'step_key',
               (e.event ->> 'status')::execution_status, coalesce(e.event -> 'inputs', '{}'),
               nullif(e.event -> 'error', 'null'), (e.event ->> 'duration_ms')::integer, tolstoy_clock_timestamp()
        from jsonb_array_elements(writes -> 'events') as e(event);
    end if;
    -- The worker time since the last count (the claim, or a checkpoint that counted), against the
    -- organization, decayed: what fair claims weigh it by. Counted at most once a second while the run
    -- goes on (a second's lag in what a claim weighs), and always when it leaves running.
    counting := transition ->> 'action' <> 'continue' or coalesce((writes ->> 'count_time')::boolean, false)
                or current.accounted_at is null or current.accounted_at <= clock_now - interval '1 second';
    if counting then
        insert into organization_worker_time as w (org_id, seconds, counted_at)
        values (org, greatest(extract(epoch from clock_now - coalesce(current.accounted_at, clock_now)), 0), clock_now)
        on conflict (org_id) do update
        set seconds = w.seconds * exp(greatest(-ln(2) * greatest(extract(epoch from clock_now - w.counted_at), 0)
                                               / half_life, -50))
                      + excluded.seconds,
            counted_at = greatest(w.counted_at, clock_now);
    end if;
    if progress and (current.strikes > 0 or current.handbacks > 0) then
        -- The run got past the step it was in when it was last struck: whatever stopped its worker
        -- then was not this run.
        update flow_runs set strikes = 0, handbacks = 0
        where org_id = org and id = run and created_at = current.created_at;
        current.strikes := 0;
        current.handbacks := 0;
    end if;
    case transition ->> 'action'
        when 'continue' then
            -- The lease is renewed by the worker's heartbeat; here only once half of it is gone, as a beat
            -- the heartbeat may have missed. A quick run's checkpoint then updates nothing of its row
            -- (docs/performance.md, "What PostgreSQL does per run").
            if counting or current.lease_expires_at < clock_now + lease / 2 then
                update flow_runs
                set lease_expires_at = clock_now + lease,
                    accounted_at = case when counting then clock_now else accounted_at end
                where org_id = org and id = run and created_at = current.created_at;
            end if;
        when 'pause' then
            outcome := tolstoy_release_run(current, 'queued', (transition ->> 'after_ms')::double precision, null);
        when 'wait' then
            outcome := tolstoy_release_run(current, 'waiting', null, null);
        when 'handback' then
            update flow_runs set handbacks = handbacks + 1
            where org_id = org and id = run and created_at = current.created_at;
            outcome := tolstoy_release_run(
                current, case when current.handbacks + 1 > max_handbacks then 'failed' else 'queued' end::flow_run_status,
                (transition ->> 'after_ms')::double precision,
                jsonb_build_object(
                    'name', 'HandbackLimit', 'sqlstate', fault ->> 'sqlstate',
                    'message', format('The run was handed back to the queue %s times in a row after transient '
                                      'faults of the database (the limit is %s, TOLSTOY_MAX_HANDBACKS); it is not '
                                      'tried again. The last: %s (SQLSTATE %s).', current.handbacks + 1,
                                      max_handbacks, left(fault ->> 'message', 500),
                                      coalesce(fault ->> 'sqlstate', 'none'))));
        when 'fault' then
            outcome := tolstoy_run_fault(current, fault, coalesce((writes ->> 'max_recoveries')::integer, 3),
                                         (transition ->> 'after_ms')::double precision);
        when 'finish' then
            update flow_runs
            set status = (transition ->> 'status')::flow_run_status, error = nullif(transition -> 'error', 'null'),
                finished_at = clock_now, lease_owner = null, lease_token = null, lease_expires_at = null
            where org_id = org and id = run and created_at = current.created_at;
            outcome := (transition ->> 'status')::flow_run_status;
        else
            raise exception 'tolstoy_checkpoint: unknown run action %', transition ->> 'action'
                using errcode = 'invalid_parameter_value';
    end case;
    return jsonb_build_object('cancel', current.cancel_requested, 'status', coalesce(outcome, 'running'));
end;
$$;


--
-- Name: FUNCTION tolstoy_checkpoint(worker text, org uuid, run uuid, token integer, writes jsonb); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_checkpoint(worker text, org uuid, run uuid, token integer, writes jsonb) IS 'One engine step: checks the worker''s lease (TL001 when lost), writes step checkpoints and log events, counts the worker time against the organization (at most once a second while the run goes on, unless writes.count_time), and moves the run (continue, renewing the lease once half of it is gone; pause, wait, finish, handback, fault; a pending cancel ends it cancelled rather than unfinished) in one transaction. Acts for org under row-level security.';


--
-- Name: tolstoy_checkpoint_call(text, uuid, uuid, integer, jsonb, jsonb); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_checkpoint_call(worker text, org uuid, run uuid, token integer, writes jsonb, call jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
declare
    lesson jsonb;
    budget_scope text;
    taken jsonb;
    step text := call ->> 'step_id';
    shown jsonb;
    wait_ms double precision;
begin
    perform set_config('app.org_id', org::text, true);
    -- What the answers of earlier calls taught (each names its tool and the run's user), then the take,
    -- budget rows locked in the order of their tools (two runs' statements never wait on each other in
    -- a circle), a tool's lessons before its take (a 429's pause holds the call it answered).
    for lesson in
        select u.item
        from (select l.value as item, l.n
              from jsonb_array_elements(coalesce(call -> 'lessons', '[]')) with ordinality as l(value, n)
              union all
              select jsonb_build_object('take', true, 'tool_id', call -> 'tool_id'), null
              where call ->> 'tool_id' is not null) as u
        order by u.item ->> 'tool_id', u.n nulls last
    loop
        if (lesson ->> 'take')::boolean then
            budget_scope := tolstoy_rate_scope(org, (call ->> 'tool_id')::uuid, (call ->> 'user_id')::uuid,
                                               coalesce((call ->> 'acts_as_user')::boolean, false));
            taken := tolstoy_take_budget(org, (call ->> 'tool_id')::uuid, budget_scope, call);
        else
            perform tolstoy_learn_budget(org, (lesson ->> 'tool_id')::uuid,
                                         tolstoy_rate_scope(org, (lesson ->> 'tool_id')::uuid,
                                                            (lesson ->> 'user_id')::uuid,
                                                            coalesce((lesson ->> 'acts_as_user')::boolean, false)),
                                         lesson);
        end if;
    end loop;
    if taken is null then
        return tolstoy_checkpoint(worker, org, run, token, writes);
    end if;
    if (taken ->> 'refused')::boolean then
        -- Waited too long: the call is recorded as not started (the engine fails the step).
        writes := jsonb_set(writes, '{steps}', coalesce((
            select jsonb_agg(case when s ->> 'step_id' = step
                                  then jsonb_build_object('step_id', step, 'status', 'running',
                                                          'attempt', s -> 'attempt')
                                  else s end)
            from jsonb_array_elements(coalesce(writes -> 'steps', '[]')) as s), '[]'));
        writes := jsonb_set(writes, '{events}', coalesce((
            select jsonb_agg(e) from jsonb_array_elements(coalesce(writes -> 'events', '[]')) as e
            where not (e ->> 'step_key' = step and e ->> 'status' = 'started')), '[]'));
        return tolstoy_checkpoint(worker, org, run, token, writes) || jsonb_build_object('budget', taken);
    end if;
    if (taken ->> 'wait')::double precision <= 0 then
        return tolstoy_checkpoint(worker, org, run, token, writes) || jsonb_build_object('budget', taken);
    end if;
    -- No room: the step waits for its budget instead of calling, holding no thread (and the run no
    -- lease, unless other items of its foreach step still run). Its inputs say what it waits for
    -- (what the run view shows), and since when (what bounds the wait).
    wait_ms := ceil((taken ->> 'wait')::double precision * 1000);
    shown := jsonb_build_object('rateLimit', jsonb_build_object(
        'toolId', call ->> 'tool_id', 'scope', case when budget_scope = 'organization' then 'organization' else 'user' end,
        'until', taken -> 'until', 'since', coalesce(nullif(call -> 'since', 'null'), to_jsonb(tolstoy_now())),
        'reserved', (taken ->> 'reserved')::boolean));
    writes := jsonb_set(writes, '{steps}', coalesce((
        select jsonb_agg(case when s ->> 'step_id' = step
                              then (s - 'call_started') || jsonb_build_object(
                                       'status', 'waiting', 'wake_in_ms', wait_ms,
                                       'inputs', case when jsonb_typeof(s -> 'inputs') = 'object'
                                                      then s -> 'inputs' else '{}' end || shown)
                              else s end)
        from jsonb_array_elements(coalesce(writes -> 'steps', '[]')) as s), '[]'));
    writes := jsonb_set(writes, '{events}', coalesce((
        select jsonb_agg(e) from jsonb_array_elements(coalesce(writes -> 'events', '[]')) as e
        where not (e ->> 'step_key' = step and e ->> 'status' = 'started')), '[]')
        || case when call ->> 'since' is null and not coalesce((call ->> 'item')::boolean, false)
                then jsonb_build_array(jsonb_build_object('step_key', step, 'status', 'pending', 'inputs', shown))
                else '[]' end);
    if not coalesce((call ->> 'item')::boolean, false) then
        writes := jsonb_set(writes, '{run}', jsonb_build_object('action', 'pause', 'after_ms', wait_ms));
    end if;
    return tolstoy_checkpoint(worker, org, run, token, writes) || jsonb_build_object('budget', taken || shown);
end;
$$;


--
-- Name: FUNCTION tolstoy_checkpoint_call(worker text, org uuid, run uuid, token integer, writes jsonb, call jsonb); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_checkpoint_call(worker text, org uuid, run uuid, token integer, writes jsonb, call jsonb) IS 'tolstoy_checkpoint for the step whose call starts (call.step_id), in the same statement: first what earlier answers taught the credentials'' budgets (call.lessons), then the call''s take from its credential''s budget (call.tool_id). With room, the checkpoint as written; without, the step is checkpointed waiting for its budget (inputs.rateLimit, wake_at) and the run paused until then (a foreach item: only the item sleeps); past the longest wait, the call is recorded as not started and the answer''s budget says refused.';


--
-- Name: tolstoy_checkpoint_slots(text, uuid, uuid, integer, jsonb, jsonb); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_checkpoint_slots(worker text, org uuid, run uuid, token integer, writes jsonb, call jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    current flow_runs;
    slot jsonb := nullif(call -> 'slot', 'null');
    step text := slot ->> 'step_id';
    slot_key text := coalesce(slot ->> 'key', '');
    slot_limit integer := (slot ->> 'limit')::integer;
    since jsonb := coalesce(nullif(slot -> 'since', 'null'), to_jsonb(clock_now));
    started jsonb;
    shown jsonb;
    answer jsonb;
    outcome flow_run_status;
begin
    if slot is not null and (slot_limit is null or slot_limit < 1 or step is null) then
        raise exception 'tolstoy_checkpoint_slots: invalid slot %', slot using errcode = 'invalid_parameter_value';
    end if;
    -- The log row saying the call starts is written once the slot is known: a step that waits did not start.
    started := (select e from jsonb_array_elements(coalesce(writes -> 'events', '[]')) as e
                where e ->> 'step_key' = step and e ->> 'status' = 'started' limit 1);
    if started is not null then
        writes := jsonb_set(writes, '{events}', coalesce((
            select jsonb_agg(e) from jsonb_array_elements(writes -> 'events') as e
            where not (e ->> 'step_key' = step and e ->> 'status' = 'started')), '[]'));
    end if;
    -- The checkpoint first (lease, writes, budget), so that the flow's slot lock is the last lock this statement
    -- waits for, as it is for a run that frees slots when it leaves running (flow_runs_release_step_slots): one
    -- that holds it never waits for a lock the other holds.
    -- With a slot to take, the worker time is counted now: without one the run is parked below.
    answer := tolstoy_checkpoint_call(worker, org, run, token,
                                      case when slot is null then writes
                                           else coalesce(writes, '{}') || '{"count_time": true}' end,
                                      call - 'slot' - 'release');
    select * into current from flow_runs r
    where r.org_id = org and r.id = run and r.created_at between tolstoy_run_from(run) and tolstoy_run_until(run);
    perform pg_advisory_xact_lock(tolstoy_slot_lock(org, current.flow_id));
    -- The steps whose end this statement records free their slots.
    if jsonb_array_length(coalesce(call -> 'release', '[]')) > 0 then
        perform tolstoy_release_step_slots(org, run, array(select jsonb_array_elements_text(call -> 'release')));
    end if;
    if slot is null or current.status <> 'running' or coalesce((answer #>> '{budget,wait}')::double precision, 0) > 0
       or coalesce((answer #>> '{budget,refused}')::boolean, false) then
        -- No slot to take, or the call does not start now (it waits for its budget, or waited too long).
        return answer;
    end if;
    -- The slot the run holds already (a recovered run, or one a release handed it), or a free one.
    if exists (select 1 from flow_step_slots h
               where h.org_id = org and h.flow_id = current.flow_id and h.step_id = step and h.key = slot_key
                 and h.run_id = run)
       or slot_limit > (select count(*) from flow_step_slots h
                        where h.org_id = org and h.flow_id = current.flow_id and h.step_id = step
                          and h.key = slot_key) then
        insert into flow_step_slots (org_id, flow_id, step_id, key, run_id, run_created_at, taken_at)
        values (org, current.flow_id, step, slot_key, run, current.created_at, clock_now)
        on conflict do nothing;
        if not current.takes_step_slots then
            update flow_runs set takes_step_slots = true
            where org_id = org and id = run and created_at = current.created_at;
        end if;
        if started is not null then
            insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
            values (org, current.flow_id, current.user_id, run::text, step, 'started',
                    coalesce(started -> 'inputs', '{}'));
        end if;
        return answer || jsonb_build_object('slot', jsonb_build_object('taken', true));
    end if;
    -- No slot: the step waits instead of calling, its run parked with no due time (a release hands it the
    -- slot and wakes it), holding no thread, lease or attempt. Its inputs say what it waits for, and since when.
    shown := jsonb_build_object('concurrency', jsonb_build_object(
        'key', slot -> 'key', 'limit', slot_limit, 'since', since));
    update flow_run_steps s
    set status = 'waiting', call_started_at = null, wake_at = null,
        inputs = case when jsonb_typeof(s.inputs) = 'object' then s.inputs else '{}' end || shown
    where s.org_id = org and s.run_id = run and s.run_created_at = current.created_at and s.step_id = step;
    if slot -> 'since' is null or slot -> 'since' = 'null' then
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
        values (org, current.flow_id, current.user_id, run::text, step, 'pending', shown);
    end if;
    outcome := tolstoy_release_run(current, 'queued', 0, null);
    update flow_runs
    set run_after = 'infinity', waiting_for = 'concurrency',
        waiting_on = jsonb_build_object('key', slot -> 'key', 'limit', slot_limit), waiting_step = step,
        waiting_since = (since #>> '{}')::timestamptz, waiting_until = null
    where org_id = org and id = run and created_at = current.created_at and status = 'queued';
    return answer || jsonb_build_object('status', outcome, 'slot', jsonb_build_object('waiting', true) || shown);
end;
$$;


--
-- Name: FUNCTION tolstoy_checkpoint_slots(worker text, org uuid, run uuid, token integer, writes jsonb, call jsonb); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_checkpoint_slots(worker text, org uuid, run uuid, token integer, writes jsonb, call jsonb) IS 'tolstoy_checkpoint_call with step slots, in the same statement: the checkpoint, then (under the flow''s slot lock) the slots of the steps whose end it records are freed (call.release, each handed to the oldest run waiting for it) and the slot of the step whose call starts is taken (call.slot: {step_id, key, limit, since}; kept when the run holds it already). Without a free slot the step is checkpointed waiting (inputs.concurrency) and the run parked queued with no due time (waiting_for concurrency) until a release hands it the slot.';


--
-- Name: tolstoy_claim_deliveries(text, integer, double precision); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_claim_deliveries(worker text, max_deliveries integer, lease_seconds double precision) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    claimed jsonb := '[]';
    candidate record;
    line webhook_lines;
    head webhook_deliveries;
    taken webhook_deliveries;
    hook webhooks;
    lease interval := make_interval(secs => lease_seconds);
begin
    if worker is null or worker = '' or max_deliveries < 1 or max_deliveries > 1000 or lease_seconds <= 0
            or lease_seconds > 3600 then
        raise exception 'tolstoy_claim_deliveries: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    for candidate in
        select x.org_id, x.webhook_id
        from (select l.org_id, l.webhook_id, l.served_at,
                     row_number() over (partition by l.org_id order by l.served_at nulls first, l.webhook_id) as turn
              from webhook_lines l
              where l.due_at <= clock_now) as x
        cross join lateral (select max(o.served_at) as served_at
                            from webhook_lines o where o.org_id = x.org_id) as org_turn
        order by x.turn, org_turn.served_at nulls first, x.served_at nulls first, x.org_id, x.webhook_id
        -- Spare candidates: another worker claiming at the same moment holds some of the first.
        limit max_deliveries * 2 + 8
    loop
        exit when jsonb_array_length(claimed) >= max_deliveries;
        select * into line from webhook_lines l
        where l.org_id = candidate.org_id and l.webhook_id = candidate.webhook_id and l.due_at <= clock_now
        for update skip locked;
        continue when not found;
        select * into head from webhook_deliveries d
        where d.org_id = line.org_id and d.webhook_id = line.webhook_id and d.state in ('pending', 'sending')
        order by d.seq
        limit 1
        for update skip locked;
        if not found then
            -- Finished meanwhile, or its first delivery locked (being cancelled): look again later.
            update webhook_lines l
            set due_at = case when exists (select 1 from webhook_deliveries d
                                           where d.org_id = line.org_id and d.webhook_id = line.webhook_id
                                             and d.state in ('pending', 'sending'))
                              then clock_now + interval '1 second' end
            where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
            continue;
        end if;
        if head.state = 'sending' and head.lease_expires_at >= clock_now then
            update webhook_lines l set due_at = head.lease_expires_at
            where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
            continue;
        end if;
        if head.state = 'pending' and head.next_attempt_at > clock_now then
            update webhook_lines l set due_at = head.next_attempt_at
            where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
            continue;
        end if;
        select * into hook from webhooks w where w.org_id = line.org_id and w.id = line.webhook_id;
        if head.state = 'pending' and not hook.enabled then
            -- Disabled while these were queued: they are not sent.
            update webhook_deliveries d
            set state = 'cancelled', next_attempt_at = null, finished_at = clock_now,
                last_error = coalesce(hook.disabled_reason, 'The webhook was disabled.')
            where d.org_id = line.org_id and d.webhook_id = line.webhook_id and d.state = 'pending';
            update webhook_lines l
            set due_at = (select d.lease_expires_at from webhook_deliveries d
                          where d.org_id = line.org_id and d.webhook_id = line.webhook_id and d.state = 'sending'
                          order by d.seq limit 1)
            where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
            continue;
        end if;
        if head.state = 'sending' then
            -- Its worker vanished: the attempt it made is logged as lost, and it is sent again.
            update webhook_deliveries d
            set attempts = d.attempts + 1, lease_token = d.attempts + 1, lease_owner = worker,
                lease_expires_at = clock_now + lease, last_attempt_at = clock_now,
                attempt_log = d.attempt_log || jsonb_build_object(
                    'attempt', d.attempts, 'at', tolstoy_iso(d.last_attempt_at), 'statusCode', null,
                    'durationMs', null, 'error', 'The worker sending it vanished; sent again.', 'location', null)
            where d.org_id = head.org_id and d.id = head.id
            returning * into taken;
        else
            update webhook_deliveries d
            set state = 'sending', attempts = d.attempts + 1, lease_token = d.attempts + 1, lease_owner = worker,
                lease_expires_at = clock_now + lease, first_attempt_at = coalesce(d.first_attempt_at, clock_now),
                last_attempt_at = clock_now
            where d.org_id = head.org_id and d.id = head.id
            returning * into taken;
        end if;
        update webhook_lines l
        set due_at = taken.lease_expires_at, served_at = tolstoy_clock_timestamp()
        where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
        claimed := claimed || jsonb_build_object(
            'org_id', taken.org_id, 'id', taken.id, 'webhook_id', taken.webhook_id, 'event_id', taken.event_id,
            'event_type', taken.event_type, 'data', taken.data, 'created_at', tolstoy_iso(taken.event_created_at),
            'token', taken.lease_token, 'url', hook.url, 'secret', encode(hook.secret, 'base64'),
            'headers', encode(hook.headers, 'base64'));
    end loop;
    return jsonb_build_object('deliveries', claimed, 'next_due', tolstoy_next_delivery(), 'now', clock_now);
end;
$$;


--
-- Name: FUNCTION tolstoy_claim_deliveries(worker text, max_deliveries integer, lease_seconds double precision); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_claim_deliveries(worker text, max_deliveries integer, lease_seconds double precision) IS 'Claims up to max_deliveries webhook deliveries of any organization, the first unfinished one of each due line, lines round-robin across organizations and webhooks; returns {deliveries, next_due, now}.';


--
-- Name: tolstoy_claim_runs(text, integer, double precision, integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_claim_runs(worker text, max_runs integer, lease_seconds double precision, max_recoveries integer) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    return (
        select jsonb_build_object('runs', coalesce(jsonb_agg(c.run) filter (where c.run is not null), '[]'),
                                  'next_due', max(c.meta ->> 'next_due')::timestamptz)
        from tolstoy_claim_runs_v2(worker, max_runs, lease_seconds, max_recoveries, 300) as c);
end;
$$;


--
-- Name: FUNCTION tolstoy_claim_runs(worker text, max_runs integer, lease_seconds double precision, max_recoveries integer); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_claim_runs(worker text, max_runs integer, lease_seconds double precision, max_recoveries integer) IS 'The previous release''s claim, kept for its workers during a deploy: tolstoy_claim_runs_v2 as one jsonb {runs, next_due}. To be dropped.';


--
-- Name: tolstoy_claim_runs_v2(text, integer, double precision, integer, double precision); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_claim_runs_v2(worker text, max_runs integer, lease_seconds double precision, max_recoveries integer, half_life_seconds double precision) RETURNS TABLE(run jsonb, meta jsonb)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    SET plan_cache_mode TO 'force_generic_plan'
    AS $_$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    lease interval := make_interval(secs => lease_seconds);
    claimed integer := 0;
    lost record;
    due record;
    taken flow_runs;
    payload jsonb;
    failure jsonb;
    state text;
    problem text;
    blocker jsonb;
    parked_at timestamptz;
begin
    if worker is null or worker = '' or max_runs < 1 or max_runs > 1000 or lease_seconds <= 0
            or max_recoveries < 0 or half_life_seconds is null or half_life_seconds <= 0 then
        raise exception 'tolstoy_claim_runs_v2: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    for lost in
        select r.org_id, r.id, r.created_at
        from flow_runs r
        where r.status = 'running' and r.lease_expires_at < clock_now
        order by r.lease_expires_at
        limit max_runs
        for update skip locked
    loop
        select * into taken from flow_runs r
        where r.org_id = lost.org_id and r.id = lost.id and r.created_at = lost.created_at;
        if taken.cancel_requested then
            update flow_runs set recoveries = recoveries + 1
            where org_id = taken.org_id and id = taken.id and created_at = taken.created_at;
            perform tolstoy_release_run(taken, 'cancelled', null, null);
        elsif taken.strikes >= max_recoveries then
            failure := jsonb_build_object(
                'name', 'RecoveryLimit',
                'message', format('The run stopped its worker %s times in a row without finishing a step (the limit '
                                  'is %s, TOLSTOY_MAX_RECOVERIES); it is not tried again.',
                                  taken.strikes + 1, max_recoveries));
            update flow_runs set recoveries = recoveries + 1, strikes = strikes + 1
            where org_id = taken.org_id and id = taken.id and created_at = taken.created_at;
            perform tolstoy_release_run(taken, 'failed', null, failure);
        else
            payload := null;
            begin
                update flow_runs
                set claims = claims + 1, lease_token = claims + 1, recoveries = recoveries + 1,
                    strikes = strikes + 1, lease_owner = worker, lease_expires_at = tolstoy_clock_timestamp() + lease,
                    accounted_at = tolstoy_clock_timestamp()
                where org_id = taken.org_id and id = taken.id and created_at = taken.created_at
                returning * into taken;
                payload := tolstoy_run_payload(taken);
            exception when data_exception or integrity_constraint_violation or program_limit_exceeded then
                get stacked diagnostics state = returned_sqlstate, problem = message_text;
                -- The block's update is undone (not what it left in taken): read the run again. Its
                -- lease is still the expired one, released by the fault (a strike, as a recovery is).
                update flow_runs set recoveries = recoveries + 1
                where org_id = lost.org_id and id = lost.id and created_at = lost.created_at
                returning * into taken;
                perform tolstoy_run_fault(taken, jsonb_build_object('sqlstate', state, 'message', problem),
                                          max_recoveries, least(1000 * power(2, taken.strikes), 60000));
            end;
            if payload is not null then
                claimed := claimed + 1;
                run := payload;
                meta := null;
                return next;
            end if;
        end if;
    end loop;
    for due in
        with recursive orgs (org_id, first_due) as (
            -- The organizations with queued runs, one index probe each (a loose index scan), with
            -- the earliest run_after of each.
            (select r.org_id, r.run_after
             from flow_runs r
             where r.status = 'queued'
             order by r.org_id, r.run_after
             limit 1)
            union all
            select later.org_id, later.run_after
            from orgs o
            cross join lateral (select r.org_id, r.run_after
                                from flow_runs r
                                where r.status = 'queued' and r.org_id > o.org_id
                                order by r.org_id, r.run_after
                                limit 1) as later
        ), running as (
            select r.org_id, count(*) as n
            from flow_runs r
            where r.status = 'running'
            group by r.org_id
        ), ready as (
            select o.org_id,
                   coalesce(running.n, 0)
                   + coalesce(w.seconds * exp(greatest(-ln(2) * greatest(extract(epoch from clock_now - w.counted_at), 0)
                                                       / half_life_seconds, -50)), 0)
                     * ln(2) / half_life_seconds as load
            from orgs o
            left join running on running.org_id = o.org_id
            left join organization_worker_time w on w.org_id = o.org_id
            where o.first_due <= clock_now
        )
        select c.org_id, c.id, c.created_at
        from ready
        cross join lateral (select r.org_id, r.id, r.created_at, r.run_after
                            from flow_runs r
                            where r.status = 'queued' and r.org_id = ready.org_id and r.run_after <= clock_now
                            order by r.run_after, r.id
                            limit max_runs) as c
        order by ready.load + row_number() over (partition by c.org_id order by c.run_after, c.id),
                 c.run_after, c.id
    loop
        exit when claimed >= max_runs;
        -- Another worker may have taken it since (SKIP LOCKED, and the status seen anew).
        select * into taken from flow_runs r
        where r.org_id = due.org_id and r.id = due.id and r.created_at = due.created_at and r.status = 'queued'
        for update skip locked;
        continue when not found;
        -- A run of a flow with concurrency limits (concurrency.sql) starts only with a slot; without one it is
        -- parked, queued with no due time, until a run of its flow frees one (flow_runs_release_slot). Another
        -- claim deciding about the same flow: the run is left for it (or for the next claim).
        parked_at := (taken.concurrency ->> 'parkedAt')::timestamptz;
        if taken.concurrency is not null then
            continue when not pg_try_advisory_xact_lock(tolstoy_slot_lock(taken.org_id, taken.flow_id));
            blocker := tolstoy_concurrency_blocker(taken);
            if blocker is not null then
                update flow_runs
                set run_after = 'infinity', waiting_for = 'concurrency', waiting_on = blocker, waiting_step = null,
                    waiting_since = coalesce(parked_at, clock_now), waiting_until = null,
                    concurrency = concurrency || jsonb_build_object('parkedAt', coalesce(parked_at, clock_now))
                where org_id = due.org_id and id = due.id and created_at = due.created_at;
                continue;
            end if;
        end if;
        payload := null;
        begin
            update flow_runs
            set status = 'running', claims = claims + 1, lease_token = claims + 1, lease_owner = worker,
                lease_expires_at = tolstoy_clock_timestamp() + lease, started_at = coalesce(started_at, clock_now),
                accounted_at = tolstoy_clock_timestamp(), concurrency = concurrency - 'parkedAt'
            where org_id = due.org_id and id = due.id and created_at = due.created_at
            returning * into taken;
            if taken.claims = 1 then
                insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs)
                values (taken.org_id, taken.flow_id, taken.user_id, taken.id::text, '$flow', 'running',
                        taken.variables);
            end if;
            payload := tolstoy_run_payload(taken);
            if parked_at is not null then
                -- How long it waited for its slot (metrics: tolstoy_concurrency_wait_seconds).
                payload := payload || jsonb_build_object('slot_waited_seconds',
                                                         extract(epoch from clock_now - parked_at)::float8);
            end if;
        exception when data_exception or integrity_constraint_violation or program_limit_exceeded then
            get stacked diagnostics state = returned_sqlstate, problem = message_text;
            -- The block's update is undone (not what it left in taken): read the run again.
            select * into taken from flow_runs r
            where r.org_id = due.org_id and r.id = due.id and r.created_at = due.created_at;
            perform tolstoy_run_fault(taken, jsonb_build_object('sqlstate', state, 'message', problem),
                                      max_recoveries, least(1000 * power(2, taken.strikes), 60000));
        end;
        if payload is not null then
            claimed := claimed + 1;
            run := payload;
            meta := null;
            return next;
        end if;
    end loop;
    run := null;
    -- Not the runs parked for a slot (run_after infinity): a slot that frees wakes them, not the time.
    meta := jsonb_build_object(
        'next_due', least(
            (select min(r.run_after) from flow_runs r where r.status = 'queued' and r.run_after < 'infinity'),
            (select min(r.lease_expires_at) from flow_runs r where r.status = 'running')));
    return next;
end;
$_$;


--
-- Name: FUNCTION tolstoy_claim_runs_v2(worker text, max_runs integer, lease_seconds double precision, max_recoveries integer, half_life_seconds double precision); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_claim_runs_v2(worker text, max_runs integer, lease_seconds double precision, max_recoveries integer, half_life_seconds double precision) IS 'Claims up to max_runs runs for worker: expired leases first (a strike each; failed past max_recoveries, cancelled when asked), then due queued runs round-robin across organizations weighed by the worker time they hold and used lately (half-life half_life_seconds), in order within each; a run over its flow''s concurrency limits is parked instead (concurrency.sql). One row per run ({run}), each loaded on its own (a run that fails to load is charged a fault, not the claim), then {meta: {next_due}}.';


--
-- Name: tolstoy_claim_schedules(text, integer, timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_claim_schedules(worker text, max_schedules integer, as_of timestamp with time zone) RETURNS TABLE(org_id uuid, id uuid, flow_id uuid, cron text, timezone text, catch_up text, next_run_at timestamp with time zone, now timestamp with time zone)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    if worker is null or worker = '' or max_schedules < 1 or max_schedules > 1000 then
        raise exception 'tolstoy_claim_schedules: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    return query
    select t.org_id, t.id, t.flow_id, t.cron, t.timezone, t.catch_up, t.next_run_at, coalesce(as_of, tolstoy_now())
    from flow_triggers t
    where t.type = 'schedule' and t.enabled and t.next_run_at <= coalesce(as_of, tolstoy_now())
    order by t.next_run_at
    limit max_schedules
    for update skip locked;
end;
$$;


--
-- Name: FUNCTION tolstoy_claim_schedules(worker text, max_schedules integer, as_of timestamp with time zone); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_claim_schedules(worker text, max_schedules integer, as_of timestamp with time zone) IS 'Locks (SKIP LOCKED) up to max_schedules enabled schedules of any organization due at as_of (null: now).';


--
-- Name: tolstoy_clock_timestamp(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_clock_timestamp() RETURNS timestamp with time zone
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    return (
        select clock_timestamp() + (select c.ahead from tolstoy_clock c));
end;
$$;


--
-- Name: FUNCTION tolstoy_clock_timestamp(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_clock_timestamp() IS 'clock_timestamp() moved as tolstoy_now() is: the time as the statement runs (a lease taken late in a long claim, the order of steps checkpointed together).';


--
-- Name: tolstoy_new_run_id(timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_new_run_id(at timestamp with time zone) RETURNS uuid
    LANGUAGE sql PARALLEL SAFE
    AS $$
    select encode(overlay(uuid_send(gen_random_uuid())
                          placing int8send((floor(extract(epoch from at) * 1000)::bigint << 16)
                                           | (7::bigint << 12)
                                           | (floor(extract(epoch from at) * 1000000)::bigint % 1000))
                          from 1 for 8), 'hex')::uuid
$$;


--
-- Name: FUNCTION tolstoy_new_run_id(at timestamp with time zone); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_new_run_id(at timestamp with time zone) IS 'A new run id carrying the time at (UUID version 7 layout, microseconds in its 12 bits after the version): tolstoy_run_from/until compute the run''s month from it.';


SET default_tablespace = '';

--
-- Name: flow_runs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.flow_runs (
    org_id uuid NOT NULL,
    id uuid DEFAULT public.tolstoy_new_run_id(now()) NOT NULL,
    flow_id uuid NOT NULL,
    flow_version integer NOT NULL,
    user_id uuid,
    status public.flow_run_status DEFAULT 'queued'::public.flow_run_status NOT NULL,
    variables jsonb DEFAULT '{}'::jsonb NOT NULL,
    plan jsonb NOT NULL,
    error jsonb,
    idempotency_key text,
    retry_of uuid,
    root_run_id uuid NOT NULL,
    run_after timestamp with time zone DEFAULT now() NOT NULL,
    cancel_requested boolean DEFAULT false NOT NULL,
    claims integer DEFAULT 0 NOT NULL,
    recoveries integer DEFAULT 0 NOT NULL,
    lease_owner text,
    lease_token integer,
    lease_expires_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    parent_run_id uuid,
    parent_step_id text,
    depth integer DEFAULT 0 NOT NULL,
    acts_as_user boolean DEFAULT false NOT NULL,
    stored_bytes bigint,
    strikes integer DEFAULT 0 NOT NULL,
    handbacks integer DEFAULT 0 NOT NULL,
    accounted_at timestamp with time zone,
    rerun_of uuid,
    waiting_for text,
    waiting_on jsonb,
    waiting_step text,
    waiting_since timestamp with time zone,
    waiting_until timestamp with time zone,
    concurrency jsonb,
    concurrency_key text,
    trace_parent text,
    takes_step_slots boolean DEFAULT false NOT NULL,
    CONSTRAINT flow_runs_idempotency_key_length CHECK (((char_length(idempotency_key) >= 1) AND (char_length(idempotency_key) <= 200))),
    CONSTRAINT flow_runs_lease_complete CHECK (((lease_owner IS NULL) = (lease_expires_at IS NULL))),
    CONSTRAINT flow_runs_plan_object CHECK ((jsonb_typeof(plan) = 'object'::text)),
    CONSTRAINT flow_runs_variables_object CHECK ((jsonb_typeof(variables) = 'object'::text))
)
PARTITION BY RANGE (created_at);

ALTER TABLE ONLY public.flow_runs FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE flow_runs; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.flow_runs IS 'One execution of a flow version; also the work queue the workers claim from. Monthly partitions.';


--
-- Name: COLUMN flow_runs.id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.id IS 'Exposed as executionId; execution_logs.execution_id holds it as text. Carries created_at (see tolstoy_new_run_id) for runs queued since 20261208000402; lookups by id bound created_at with it.';


--
-- Name: COLUMN flow_runs.plan; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.plan IS 'What the run executes, copied when it was queued: {steps, actions: [action with its tool]}.';


--
-- Name: COLUMN flow_runs.retry_of; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.retry_of IS 'The run this one retries (at most one retry per run; no foreign key across monthly partitions).';


--
-- Name: COLUMN flow_runs.root_run_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.root_run_id IS 'First run of a retry chain; Idempotency-Keys sent to tools derive from it, so a retry repeats them.';


--
-- Name: COLUMN flow_runs.run_after; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.run_after IS 'Not claimable before this time: set by delay steps and retry backoff.';


--
-- Name: COLUMN flow_runs.cancel_requested; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.cancel_requested IS 'Set by the cancel route; a worker stops the run within one heartbeat.';


--
-- Name: COLUMN flow_runs.claims; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.claims IS 'How many times a worker claimed the run; the claim number is the lease token.';


--
-- Name: COLUMN flow_runs.recoveries; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.recoveries IS 'Claims after the run''s lease expired (its worker vanished, or let go of it): every one, for the record. The recovery limit reads strikes.';


--
-- Name: COLUMN flow_runs.lease_token; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.lease_token IS 'Fencing token of the current claim: writes must present it with an unexpired lease.';


--
-- Name: COLUMN flow_runs.lease_expires_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.lease_expires_at IS 'A running run whose lease expired belongs to no worker and is claimed again.';


--
-- Name: COLUMN flow_runs.parent_run_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.parent_run_id IS 'The run whose subflow step queued this one (exposed as parentExecutionId); null for a top-level run. No foreign key across monthly partitions.';


--
-- Name: COLUMN flow_runs.parent_step_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.parent_step_id IS 'The id of the parent''s subflow step that queued this run.';


--
-- Name: COLUMN flow_runs.depth; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.depth IS 'Sub-flow nesting: 0 for a top-level run, the parent''s depth + 1 for a child (bounded by TOLSTOY_SUBFLOW_MAX_DEPTH).';


--
-- Name: COLUMN flow_runs.acts_as_user; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.acts_as_user IS 'The run may use its user''s OAuth connections (per-user tools): its starter could act as user_id (a key bound to them or with impersonate; headers mode: X-User-ID). Set when queued; a subflow child inherits it.';


--
-- Name: COLUMN flow_runs.stored_bytes; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.stored_bytes IS 'Bytes of history the run holds (its variables, plan, error, steps and log rows, as stored), measured when it finished.';


--
-- Name: COLUMN flow_runs.strikes; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.strikes IS 'Recoveries (its lease expired) and faults of its own (data the database refused) since the run last finished a step; past TOLSTOY_MAX_RECOVERIES it fails (RecoveryLimit).';


--
-- Name: COLUMN flow_runs.handbacks; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.handbacks IS 'Times the run was handed back to the queue after a transient fault of the database since it last finished a step; past TOLSTOY_MAX_HANDBACKS it fails (HandbackLimit).';


--
-- Name: COLUMN flow_runs.accounted_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.accounted_at IS 'Up to when the worker time of the current lease is counted in organization_worker_time.';


--
-- Name: COLUMN flow_runs.rerun_of; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.rerun_of IS 'The run this one re-runs from a step (POST …/rerun); null otherwise. Its kept steps'' checkpoints were copied from it; its calls are new effects (root_run_id is the re-run itself).';


--
-- Name: COLUMN flow_runs.waiting_for; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.waiting_for IS 'Why the parked run waits: signal, outcomeUnknown, child, retry, delay (or rateLimit); null when it is not parked. Set and cleared by the trigger flow_runs_waiting_for.';


--
-- Name: COLUMN flow_runs.waiting_on; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.waiting_on IS 'What it waits on: the signal name (or the names of a signals wait), the child run id, or the step id.';


--
-- Name: COLUMN flow_runs.waiting_step; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.waiting_step IS 'The step that waits.';


--
-- Name: COLUMN flow_runs.waiting_since; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.waiting_since IS 'Since when it waits (the step''s start; the call''s for an unknown outcome).';


--
-- Name: COLUMN flow_runs.waiting_until; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.waiting_until IS 'Until when at most (a wait''s timeout, a delay''s or back-off''s end); null when unknown.';


--
-- Name: COLUMN flow_runs.concurrency; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.concurrency IS 'The concurrency limits the run obeys, from its flow''s when it was queued: {keyLimit?, flowLimit?, parkedAt?} (parkedAt: since when it waits for a slot). Null: none.';


--
-- Name: COLUMN flow_runs.concurrency_key; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.concurrency_key IS 'The run''s concurrency key, its flow''s key template rendered over its variables when it was queued (null when the flow has no key, or when the database queued it: a schedule, a subflow step, an inbound webhook).';


--
-- Name: COLUMN flow_runs.trace_parent; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.trace_parent IS 'The W3C traceparent of whoever queued the run (00-<trace id>-<span id>-<flags>), or null: the run''s spans join that trace (tolstoy/tracing.py). Written only by tolstoy_queue_run_v4, which keeps only a well-formed value.';


--
-- Name: COLUMN flow_runs.takes_step_slots; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.takes_step_slots IS 'Whether the run has taken (or been handed) a step slot (flow_step_slots): only such a run frees slots when it leaves running.';


--
-- Name: tolstoy_concurrency_blocker(public.flow_runs); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_concurrency_blocker(r public.flow_runs) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
declare
    key_limit integer := (r.concurrency ->> 'keyLimit')::integer;
    flow_limit integer := (r.concurrency ->> 'flowLimit')::integer;
begin
    -- Every running run of the flow holds a slot, a run whose lease expired too: it is its worker's
    -- until the lease runs out, then the claim that recovers it takes it on, slot and all.
    if key_limit is not null and key_limit <= (
            select count(*) from flow_runs o
            where o.org_id = r.org_id and o.flow_id = r.flow_id and o.status = 'running'
              and o.concurrency is not null
              and (o.concurrency_key = r.concurrency_key
                   or (o.concurrency_key is null and r.concurrency_key is null))) then
        return jsonb_build_object('key', r.concurrency_key, 'limit', key_limit);
    end if;
    if flow_limit is not null and flow_limit <= (
            select count(*) from flow_runs o
            where o.org_id = r.org_id and o.flow_id = r.flow_id and o.status = 'running') then
        return jsonb_build_object('flowLimit', flow_limit);
    end if;
    return null;
end;
$$;


--
-- Name: FUNCTION tolstoy_concurrency_blocker(r public.flow_runs); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_concurrency_blocker(r public.flow_runs) IS 'Why a run with concurrency limits may not start now: {key, limit} when its key has as many running runs as its keyLimit, {flowLimit} when its flow has as many as its flowLimit; null when it has a slot. The caller holds the flow''s slot lock (tolstoy_slot_lock).';


--
-- Name: tolstoy_current_org(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_current_org() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$
    select nullif(current_setting('app.org_id', true), '')::uuid
$$;


--
-- Name: FUNCTION tolstoy_current_org(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_current_org() IS 'The organization this transaction acts for (app.org_id), or null when none was set.';


--
-- Name: tolstoy_ensure_partitions(date, integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_ensure_partitions(first_month date, months integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    parent text;
    month date;
    name text;
    created integer := 0;
begin
    if first_month is null or months is null or months < 0 or months > 1200 then
        raise exception 'tolstoy_ensure_partitions: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    foreach parent in array array['flow_runs', 'flow_run_steps', 'execution_logs'] loop
        for i in 0 .. months - 1 loop
            month := date_trunc('month', first_month)::date + make_interval(months => i);
            name := format('%s_p%s', parent, to_char(month, 'YYYY_MM'));
            if to_regclass(name) is null then
                execute format('create table %I partition of %I for values from (%L) to (%L)',
                               name, parent, month::timestamptz, (month + interval '1 month')::timestamptz);
                perform tolstoy_isolate_partition(name::regclass);
                created := created + 1;
            end if;
        end loop;
    end loop;
    return created;
end;
$$;


--
-- Name: FUNCTION tolstoy_ensure_partitions(first_month date, months integer); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_ensure_partitions(first_month date, months integer) IS 'Creates the missing monthly partitions of the run history tables for months starting at first_month, each with row-level security like its parent; runs as tolstoy_history, their owner.';


--
-- Name: tolstoy_enter(uuid, uuid, integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_enter(org uuid, acting_user uuid, timeout_ms integer) RETURNS void
    LANGUAGE plpgsql
    AS $$
begin
    perform set_config('statement_timeout', timeout_ms::text || 'ms', true);
    perform set_config('app.org_id', coalesce(org::text, ''), true);
    if org is not null and not exists (select 1 from organizations o where o.id = org) then
        raise exception 'No organization with this id.' using errcode = 'TS001';
    end if;
    -- Row-level security now admits this organization's rows only, so another
    -- organization's user is not found either.
    if acting_user is not null and not exists (select 1 from users u where u.org_id = org and u.id = acting_user) then
        raise exception 'Not a user of this organization.' using errcode = 'TS002';
    end if;
end;
$$;


--
-- Name: FUNCTION tolstoy_enter(org uuid, acting_user uuid, timeout_ms integer); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_enter(org uuid, acting_user uuid, timeout_ms integer) IS 'Opens a unit of work: sets statement_timeout and app.org_id for this transaction; raises TS001/TS002 when the organization (or the acting user, when given) does not exist. A null org acts for none.';


--
-- Name: tolstoy_enter_key(bytea, uuid, integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_enter_key(hash bytea, acting_user uuid, timeout_ms integer) RETURNS uuid
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    found uuid;
begin
    perform set_config('statement_timeout', timeout_ms::text || 'ms', true);
    select k.org_id into found
    from api_keys k
    where k.key_hash = hash and k.revoked_at is null and (k.expires_at is null or k.expires_at > clock_now);
    if found is null then
        raise exception 'The API key is not valid, has expired or has been revoked.' using errcode = 'TS003';
    end if;
    -- Recorded at most once a minute, so authentication stays a read.
    update api_keys k
    set last_used_at = clock_now
    where k.key_hash = hash
      and (k.last_used_at is null or k.last_used_at < clock_now - interval '1 minute');
    perform set_config('app.org_id', found::text, true);
    if acting_user is not null and not exists (select 1 from users u where u.org_id = found and u.id = acting_user) then
        raise exception 'Not a user of this organization.' using errcode = 'TS002';
    end if;
    return found;
end;
$$;


--
-- Name: FUNCTION tolstoy_enter_key(hash bytea, acting_user uuid, timeout_ms integer); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_enter_key(hash bytea, acting_user uuid, timeout_ms integer) IS 'Opens a unit of work for the organization of an unrevoked API key hash and returns that organization: sets statement_timeout and app.org_id, refreshes last_used_at once a minute; raises TS003 for a key that is unknown or revoked, TS002 for an acting user of another organization.';


--
-- Name: tolstoy_expire_unknown_outcomes(integer, integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_expire_unknown_outcomes(timeout_days integer, batch integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    expired integer;
begin
    if timeout_days is null or timeout_days < 1 or batch is null or batch < 1 or batch > 100000 then
        raise exception 'tolstoy_expire_unknown_outcomes: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    -- Nearly always there is none: say so from the partial index alone, before any plan that joins the
    -- run partitions (with little to go on, the planner may read each one whole to join nothing).
    if not exists (select 1 from flow_run_steps s
                   where s.status = 'outcome_unknown'
                     and s.updated_at < clock_now - make_interval(days => timeout_days)) then
        return 0;
    end if;
    -- Each step as a person's "failed" resolution records it (runs.py on_post_resolve): the step failed
    -- with an OutcomeUnknown error, a log row, the run queued to go on. Runs being resolved right now
    -- (locked) are left to the next pass.
    with due as (
        select s.org_id, s.run_id, s.run_created_at, s.step_id, s.attempt, r.flow_id, r.user_id
        from flow_run_steps s
        join flow_runs r on r.org_id = s.org_id and r.id = s.run_id and r.created_at = s.run_created_at
        where s.status = 'outcome_unknown' and s.updated_at < clock_now - make_interval(days => timeout_days)
          and r.status = 'waiting'
        order by s.updated_at
        limit batch
        for update of s, r skip locked
    ), failed as (
        update flow_run_steps s
        set status = 'failed', call_started_at = null, finished_at = clock_now,
            error = jsonb_build_object(
                'name', 'OutcomeUnknown', 'timedOut', true,
                'message', format('Nobody resolved the unknown outcome of this call within %s days '
                                  '(TOLSTOY_UNKNOWN_OUTCOME_TIMEOUT_DAYS): the step failed.', timeout_days))
        from due
        where s.org_id = due.org_id and s.run_id = due.run_id and s.run_created_at = due.run_created_at
          and s.step_id = due.step_id
        returning s.org_id, s.run_id, s.run_created_at, s.step_id, s.error
    ), logged as (
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error)
        select due.org_id, due.flow_id, due.user_id, due.run_id::text, due.step_id, 'failed',
               jsonb_build_object('resolved', 'failed', 'attempt', due.attempt, 'timedOut', true), failed.error
        from due
        join failed on failed.org_id = due.org_id and failed.run_id = due.run_id and failed.step_id = due.step_id
    ), queued as (
        update flow_runs r
        set status = 'queued', run_after = clock_now
        from (select distinct org_id, run_id, run_created_at from due) d
        where r.org_id = d.org_id and r.id = d.run_id and r.created_at = d.run_created_at and r.status = 'waiting'
    )
    select count(*) into expired from failed;
    return expired;
end;
$$;


--
-- Name: FUNCTION tolstoy_expire_unknown_outcomes(timeout_days integer, batch integer); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_expire_unknown_outcomes(timeout_days integer, batch integer) IS 'Fails up to batch steps parked on an unknown outcome for more than timeout_days (as a "failed" resolution would) and queues their runs, so no run waits forever and retention can drop its month; returns how many.';


--
-- Name: tolstoy_fire_schedules(timestamp with time zone, jsonb); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_fire_schedules(as_of timestamp with time zone, fires jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    AS $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    fire jsonb;
    org uuid;
    flow uuid;
    flow_version integer;
    scheduled timestamptz;
    queued uuid;
    refusal text;
    fired jsonb := '[]';
    previous text := current_setting('app.org_id', true);
begin
    if jsonb_typeof(fires) is distinct from 'array' or jsonb_array_length(fires) > 1000 then
        raise exception 'tolstoy_fire_schedules: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    -- Admission locks each organization's usage row until this transaction ends: in organization
    -- order, two workers firing schedules of the same organizations cannot wait on each other.
    for fire in select f.value from jsonb_array_elements(fires) as f
                order by f.value ->> 'org_id', f.value ->> 'id' loop
        org := (fire ->> 'org_id')::uuid;
        scheduled := (fire ->> 'scheduled_at')::timestamptz;
        perform set_config('app.org_id', org::text, true);
        update flow_triggers t
        set next_run_at = (fire ->> 'next_run_at')::timestamptz,
            last_fired_at = case when scheduled is null then t.last_fired_at else coalesce(as_of, clock_now) end
        where t.org_id = org and t.id = (fire ->> 'id')::uuid and t.type = 'schedule' and t.enabled
          and t.next_run_at = (fire ->> 'due')::timestamptz and t.next_run_at <= coalesce(as_of, clock_now)
          and ((fire ->> 'next_run_at') is null or (fire ->> 'next_run_at')::timestamptz > t.next_run_at)
          and (scheduled is null or scheduled between t.next_run_at and coalesce(as_of, clock_now))
        returning t.flow_id into flow;
        continue when not found or scheduled is null;
        select f.version into flow_version from flows f where f.org_id = org and f.id = flow;
        begin
            select (q.run).id into queued
            from tolstoy_queue_run(org, flow, flow_version, null,
                                   jsonb_build_object('trigger', jsonb_build_object(
                                       'id', fire ->> 'id', 'type', 'schedule',
                                       'scheduledAt', to_char(scheduled at time zone 'UTC',
                                                              'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))),
                                   format('tolstoy:schedule:%s:%s', fire ->> 'id',
                                          extract(epoch from scheduled)::numeric),
                                   null) as q;
        exception when sqlstate 'TQ001' or sqlstate 'TQ002' then
            -- Over a quota: the slot is skipped (the schedule has moved on) and the trigger says why.
            get stacked diagnostics refusal = message_text;
            update flow_triggers t
            set last_skipped_at = coalesce(as_of, clock_now), last_skip_reason = refusal
            where t.org_id = org and t.id = (fire ->> 'id')::uuid;
            continue;
        end;
        fired := fired || jsonb_build_object('trigger_id', fire ->> 'id', 'org_id', org, 'execution_id', queued,
                                             'scheduled_at', scheduled);
    end loop;
    perform set_config('app.org_id', coalesce(previous, ''), true);
    return fired;
end;
$$;


--
-- Name: FUNCTION tolstoy_fire_schedules(as_of timestamp with time zone, fires jsonb); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_fire_schedules(as_of timestamp with time zone, fires jsonb) IS 'Advances claimed schedules (only from the due time the worker saw) and queues their runs, each acting for its organization, in organization order; a run a quota refuses skips its slot (last_skipped_at, last_skip_reason). Returns [{trigger_id, org_id, execution_id, scheduled_at}] of the runs queued.';


--
-- Name: tolstoy_history_month(timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_history_month(at timestamp with time zone) RETURNS date
    LANGUAGE sql IMMUTABLE
    AS $$
    select date_trunc('month', at at time zone 'UTC')::date
$$;


--
-- Name: FUNCTION tolstoy_history_month(at timestamp with time zone); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_history_month(at timestamp with time zone) IS 'The month (first day, UTC) a run created at this time counts its stored bytes in.';


--
-- Name: tolstoy_hook_target(uuid); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_hook_target(hook uuid) RETURNS TABLE(org_id uuid, flow_id uuid, enabled boolean, verification text, secret bytea)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
#variable_conflict use_column
begin
    return query
    select t.org_id, t.flow_id, t.enabled, t.verification, t.secret
    from flow_triggers t
    where t.id = hook and t.type = 'webhook';
end;
$$;


--
-- Name: FUNCTION tolstoy_hook_target(hook uuid); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_hook_target(hook uuid) IS 'For POST /hooks/{id}: the organization, flow, state and encrypted secret of a webhook trigger.';


--
-- Name: tolstoy_iso(timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_iso(t timestamp with time zone) RETURNS text
    LANGUAGE plpgsql IMMUTABLE
    AS $$
begin
    return to_char(t at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
end;
$$;


--
-- Name: FUNCTION tolstoy_iso(t timestamp with time zone); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_iso(t timestamp with time zone) IS 'A timestamp as the API shows it: ISO 8601 UTC with milliseconds.';


--
-- Name: tolstoy_isolate_partition(regclass); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_isolate_partition(partition regclass) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    parent text := (select p.relname from pg_inherits i join pg_class p on p.oid = i.inhparent
                    where i.inhrelid = partition);
begin
    if parent not in ('flow_runs', 'flow_run_steps', 'execution_logs') then
        raise exception 'tolstoy_isolate_partition: % is not a run history partition', partition
            using errcode = 'invalid_parameter_value';
    end if;
    execute format('alter table %s enable row level security', partition);
    execute format('alter table %s force row level security', partition);
    if not exists (select from pg_policy where polrelid = partition and polname = 'tenant_isolation') then
        execute format('create policy tenant_isolation on %s using (org_id = tolstoy_current_org()) '
                       'with check (org_id = tolstoy_current_org())', partition);
    end if;
    if not exists (select from pg_policy where polrelid = partition and polname = 'history_upkeep') then
        execute format('create policy history_upkeep on %s for select to tolstoy_history using (true)', partition);
    end if;
end;
$$;


--
-- Name: FUNCTION tolstoy_isolate_partition(partition regclass); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_isolate_partition(partition regclass) IS 'Enables and forces row-level security on a run history partition with the tenant_isolation policy of its parent, and the history upkeep''s read-only policy (history_upkeep, for tolstoy_history).';


--
-- Name: tolstoy_key_grant(bytea); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_key_grant(hash bytea) RETURNS TABLE(org_id uuid, scopes text[], user_id uuid)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    return query
    select k.org_id, k.scopes, k.user_id
    from api_keys k
    where k.key_hash = hash and k.revoked_at is null and (k.expires_at is null or k.expires_at > tolstoy_now());
    if not found then
        raise exception 'The API key is not valid, has expired or has been revoked.' using errcode = 'TS003';
    end if;
end;
$$;


--
-- Name: FUNCTION tolstoy_key_grant(hash bytea); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_key_grant(hash bytea) IS 'The organization, scopes and bound user of a usable API key (TS003 otherwise); the API caches them per key.';


--
-- Name: tolstoy_key_version(bytea); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_key_version(ciphertext bytea) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    select case
        when length(ciphertext) < 5 then null
        when get_byte(ciphertext, 0) = 1 then ('x' || encode(substring(ciphertext from 2 for 4), 'hex'))::bit(32)::integer
    end
$$;


--
-- Name: FUNCTION tolstoy_key_version(ciphertext bytea); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_key_version(ciphertext bytea) IS 'The organization data key version a ciphertext (tool_credentials.secret, flow_run_steps.sealed) was encrypted with; null for a plain Fernet token under TOLSTOY_ENCRYPTION_KEY (written before envelope encryption).';


--
-- Name: tolstoy_learn_budget(uuid, uuid, text, jsonb); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_learn_budget(org uuid, tool uuid, budget_scope text, lesson jsonb) RETURNS void
    LANGUAGE plpgsql
    AS $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    b tool_rate_budgets;
    pause double precision := (lesson ->> 'pause_seconds')::double precision;
    requests integer := (lesson ->> 'requests')::integer;
    per_seconds double precision := (lesson ->> 'per_seconds')::double precision;
    remaining integer := (lesson ->> 'remaining')::integer;
    reset_seconds double precision := (lesson ->> 'reset_seconds')::double precision;
    reset_at timestamptz;
begin
    if not exists (select 1 from tools t where t.org_id = org and t.id = tool) then
        return;  -- deleted since the run's plan was made: nothing to teach
    end if;
    insert into tool_rate_budgets (org_id, tool_id, scope) values (org, tool, budget_scope)
    on conflict do nothing;
    select * into b from tool_rate_budgets r
    where r.org_id = org and r.tool_id = tool and r.scope = budget_scope
    for update;
    if (lesson ->> 'throttled')::boolean then
        b.throttled := b.throttled + 1;
    end if;
    if pause > 0 then
        b.paused_until := greatest(b.paused_until, clock_now + make_interval(secs => pause));
    end if;
    if requests > 0 then
        b.learned_requests := requests;
        b.learned_per_seconds := coalesce(per_seconds, b.learned_per_seconds);
        b.learned_at := clock_now;
    end if;
    if remaining >= 0 and reset_seconds >= 0 then
        reset_at := clock_now + make_interval(secs => reset_seconds);
        b.window_seconds := greatest(coalesce(per_seconds, reset_seconds), b.window_seconds, reset_seconds);
        if b.window_reset_at is null or reset_at > b.window_reset_at + interval '1 second' then
            -- A later window than the one kept: what it says holds.
            b.window_reset_at := reset_at;
            b.window_remaining := remaining;
        elsif reset_at >= b.window_reset_at - interval '1 second' then
            -- The same window: answers cross on the way, so the least left is the truth.
            b.window_remaining := least(b.window_remaining, remaining);
        end if;  -- an earlier window's late answer says nothing now
    end if;
    update tool_rate_budgets r
    set throttled = b.throttled, paused_until = b.paused_until, learned_requests = b.learned_requests,
        learned_per_seconds = b.learned_per_seconds, learned_at = b.learned_at, window_seconds = b.window_seconds,
        window_reset_at = b.window_reset_at, window_remaining = b.window_remaining, updated_at = clock_now
    where r.org_id = org and r.tool_id = tool and r.scope = budget_scope;
end;
$$;


--
-- Name: FUNCTION tolstoy_learn_budget(org uuid, tool uuid, budget_scope text, lesson jsonb); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_learn_budget(org uuid, tool uuid, budget_scope text, lesson jsonb) IS 'What one answer of a provider taught the budget of a tool''s credential (lesson, parsed and clamped by the engine: tolstoy/engine/ratelimits.py): a 429 counted, a pause (Retry-After), the limit (requests per per_seconds), what is left of the current window and when it resets.';


--
-- Name: execution_logs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.execution_logs (
    org_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    flow_id uuid,
    user_id uuid,
    execution_id text NOT NULL,
    step_key text NOT NULL,
    status public.execution_status NOT NULL,
    inputs jsonb NOT NULL,
    outputs jsonb,
    error jsonb,
    duration_ms integer,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    source public.execution_log_source DEFAULT 'engine'::public.execution_log_source NOT NULL,
    CONSTRAINT execution_logs_execution_id_length CHECK (((char_length(execution_id) >= 1) AND (char_length(execution_id) <= 200))),
    CONSTRAINT execution_logs_inputs_object CHECK ((jsonb_typeof(inputs) = 'object'::text)),
    CONSTRAINT execution_logs_outputs_object CHECK (((outputs IS NULL) OR (jsonb_typeof(outputs) = 'object'::text))),
    CONSTRAINT execution_logs_step_key_length CHECK (((char_length(step_key) >= 1) AND (char_length(step_key) <= 200)))
)
PARTITION BY RANGE (created_at);

ALTER TABLE ONLY public.execution_logs FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE execution_logs; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.execution_logs IS 'Audit trail: one row per step event of a flow run (written by clients or the engine); monthly partitions.';


--
-- Name: COLUMN execution_logs.user_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.execution_logs.user_id IS 'Actor (X-User-ID) who wrote the log or started the run; null for system runs.';


--
-- Name: COLUMN execution_logs.execution_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.execution_logs.execution_id IS 'Groups the logs of one run; chosen by the client or the engine.';


--
-- Name: COLUMN execution_logs.error; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.execution_logs.error IS 'Any JSON value describing the failure; null when the step did not fail.';


--
-- Name: COLUMN execution_logs.duration_ms; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.execution_logs.duration_ms IS 'Milliseconds the step took, for logs written by the engine; null otherwise.';


--
-- Name: COLUMN execution_logs.source; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.execution_logs.source IS 'engine: written by Tolstoy (workers, run changes made through the API, action calls); client: written through POST /execution-logs (shown as such; never changed into an engine row).';


--
-- Name: tolstoy_log_of_no_run(public.execution_logs); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_log_of_no_run(l public.execution_logs) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    AS $$
    select l.source = 'client' or l.flow_id is null
$$;


--
-- Name: FUNCTION tolstoy_log_of_no_run(l public.execution_logs); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_log_of_no_run(l public.execution_logs) IS 'Whether an execution log row belongs to no run: a client wrote it (whatever execution id it names) or it names no flow (a direct action call). Such rows count in stored bytes when written; a run''s own, when it finishes.';


--
-- Name: tolstoy_maintain_history(date, integer, integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_maintain_history(today date, retention_days integer, months_ahead integer) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $_$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    cutoff date;
    created integer;
    dropped text[] := '{}';
    kept text[] := '{}';
    part record;
    busy boolean;
begin
    -- A day after today would let the caller drop history that is not yet past retention.
    if today is null or today > clock_now::date or months_ahead < 0 or months_ahead > 24 or retention_days < 1 then
        raise exception 'tolstoy_maintain_history: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    if not pg_try_advisory_xact_lock(hashtextextended('tolstoy_maintain_history', 0)) then
        return jsonb_build_object('skipped', true);
    end if;
    -- Waiting behind live traffic is worse than trying again at the next tick.
    perform set_config('lock_timeout', '5s', true);
    created := tolstoy_ensure_partitions(date_trunc('month', today)::date, months_ahead + 1);
    if retention_days is not null then
        cutoff := today - retention_days;
        for part in
            select c.relname, to_date(substring(c.relname from '_p(\d{4}_\d{2})$'), 'YYYY_MM') as month,
                   p.relname as parent
            from pg_inherits i
            join pg_class c on c.oid = i.inhrelid
            join pg_class p on p.oid = i.inhparent
            where p.relname in ('flow_runs', 'execution_logs') and c.relname ~ '_p\d{4}_\d{2}$'
            order by 2
        loop
            continue when (part.month + interval '1 month')::date > cutoff;
            if part.parent = 'flow_runs' then
                execute format('select exists (select 1 from %I where status in (''queued'', ''running'', ''waiting''))',
                               part.relname) into busy;
                if busy then
                    kept := kept || part.relname;
                    continue;
                end if;
                execute format('drop table if exists %I', 'flow_run_steps_p' || to_char(part.month, 'YYYY_MM'));
                dropped := dropped || ('flow_run_steps_p' || to_char(part.month, 'YYYY_MM'));
            end if;
            execute format('drop table %I', part.relname);
            dropped := dropped || part.relname;
        end loop;
    end if;
    return jsonb_build_object('created', created, 'dropped', to_jsonb(dropped), 'kept', to_jsonb(kept));
end;
$_$;


--
-- Name: FUNCTION tolstoy_maintain_history(today date, retention_days integer, months_ahead integer); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_maintain_history(today date, retention_days integer, months_ahead integer) IS 'Creates monthly history partitions ahead and drops those older than retention_days (null: keep all); returns {created, dropped, kept}.';


--
-- Name: tolstoy_move_run(uuid, uuid, uuid, integer, text[], boolean, uuid); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_move_run(org uuid, flow uuid, target uuid, to_version integer, drop_steps text[], dry boolean, actor uuid) RETURNS jsonb
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $_$
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
$_$;


--
-- Name: FUNCTION tolstoy_move_run(org uuid, flow uuid, target uuid, to_version integer, drop_steps text[], dry boolean, actor uuid); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_move_run(org uuid, flow uuid, target uuid, to_version integer, drop_steps text[], dry boolean, actor uuid) IS 'Moves a parked run (no worker holds it, a step parked, no child run under way) to another version of its flow, holding its row: the version''s plan (tolstoy_plan_for), checkpoints of kept steps kept, those drop_steps names discarded (required for a removed step with a checkpoint and a kept one whose output no longer fits), the move logged as actor''s. Null when no such run; {refused: version|status|child|parked|drop_steps|drop} writes nothing (drop: with the diff); dry: {moved: false, diff, run}; else {moved: true, diff, run}.';


--
-- Name: tolstoy_next_delivery(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_next_delivery() RETURNS timestamp with time zone
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    return (
        select min(l.due_at) from webhook_lines l where l.due_at is not null);
end;
$$;


--
-- Name: FUNCTION tolstoy_next_delivery(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_next_delivery() IS 'The earliest time a webhook delivery of any organization falls due (null: none is waiting).';


--
-- Name: tolstoy_next_schedule(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_next_schedule() RETURNS timestamp with time zone
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    return (
        select min(t.next_run_at) from flow_triggers t
        where t.type = 'schedule' and t.enabled and t.next_run_at is not null);
end;
$$;


--
-- Name: FUNCTION tolstoy_next_schedule(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_next_schedule() IS 'The earliest next_run_at of an enabled schedule, across organizations.';


--
-- Name: tolstoy_now(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_now() RETURNS timestamp with time zone
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    return (
        -- now() (the transaction's start), moved by what tolstoy_clock says: nothing in production.
        select now() + (select c.ahead from tolstoy_clock c));
end;
$$;


--
-- Name: FUNCTION tolstoy_now(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_now() IS 'The database''s clock for every time-based decision: now() plus tolstoy_clock.ahead (zero in production; only the schema owner may move it, for tests). Stable within a transaction, as now() is.';


--
-- Name: tolstoy_parked_runs(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_parked_runs() RETURNS TABLE(waiting_for text, runs bigint)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
#variable_conflict use_column
begin
    return query
    select r.waiting_for, count(*)
    from flow_runs r
    where r.waiting_for is not null
    group by r.waiting_for;
end;
$$;


--
-- Name: FUNCTION tolstoy_parked_runs(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_parked_runs() IS 'Parked runs across organizations by why they wait (flow_runs.waiting_for), for /metrics.';


--
-- Name: tolstoy_place_deliveries(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_place_deliveries() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    line record;
    delivery record;
begin
    -- Placed already by an earlier firing of this commit (or deleted since): one key lookup, so a
    -- transaction writing thousands of events does not look for the unplaced ones thousands of times.
    if (select d.placed from webhook_deliveries d where d.org_id = new.org_id and d.id = new.id)
            is distinct from false then
        return null;
    end if;
    for line in
        select distinct d.org_id, d.webhook_id
        from webhook_deliveries d
        where not d.placed
        order by d.org_id, d.webhook_id
    loop
        insert into webhook_lines as l (org_id, webhook_id, due_at)
        values (line.org_id, line.webhook_id, clock_now)
        on conflict (org_id, webhook_id) do update
        set due_at = coalesce(l.due_at, excluded.due_at);
    end loop;
    -- In the order they were written: a transaction's own events keep their order.
    for delivery in
        select d.org_id, d.id from webhook_deliveries d where not d.placed order by d.seq
    loop
        update webhook_deliveries
        set seq = default, placed = true
        where org_id = delivery.org_id and id = delivery.id;
    end loop;
    return null;
end;
$$;


--
-- Name: FUNCTION tolstoy_place_deliveries(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_place_deliveries() IS 'Deferred constraint trigger on webhook_deliveries: at commit, gives the transaction''s deliveries their seq under their webhook lines'' locks (commit order per webhook) and makes idle lines due.';


--
-- Name: tolstoy_plan(uuid, jsonb, jsonb); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_plan(org uuid, steps jsonb, on_failure jsonb DEFAULT NULL::jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $_$
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
$_$;


--
-- Name: FUNCTION tolstoy_plan(org uuid, steps jsonb, on_failure jsonb); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_plan(org uuid, steps jsonb, on_failure jsonb) IS 'A run''s plan of these steps (and onFailure steps, when given): the steps and the actions they call (with their tools) as they are now. tolstoy_queue_run freezes it into a new run (flow_runs_plan_on_failure adds the version''s onFailure), a re-run''s preview reads it, tolstoy_plan_for builds a version''s for a move.';


--
-- Name: tolstoy_plan_for(uuid, uuid, integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_plan_for(org uuid, flow uuid, plan_version integer) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
begin
    return (
        select tolstoy_plan(org, v.steps, v.on_failure)
        from flow_versions v
        where v.org_id = org and v.flow_id = flow and v.version = plan_version);
end;
$$;


--
-- Name: FUNCTION tolstoy_plan_for(org uuid, flow uuid, plan_version integer); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_plan_for(org uuid, flow uuid, plan_version integer) IS 'The plan of a flow version as a run freezes it: {steps, actions (those its steps and onFailure steps call, with their tools, as they are now), onFailure (when the version has any)}; null when there is no such version.';


--
-- Name: tolstoy_plan_steps(jsonb); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_plan_steps(plan jsonb) RETURNS TABLE(step_id text, pos bigint, step jsonb)
    LANGUAGE sql IMMUTABLE
    AS $$
select e.value ->> 'id', e.ordinality, e.value
from jsonb_array_elements(coalesce(plan -> 'steps', '[]')) with ordinality e
union all
select 'onFailure.' || (e.value ->> 'id'), 1000000 + e.ordinality, e.value
from jsonb_array_elements(coalesce(plan -> 'onFailure', '[]')) with ordinality e;
$$;


--
-- Name: FUNCTION tolstoy_plan_steps(plan jsonb); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_plan_steps(plan jsonb) IS 'The steps of a plan as (step_id, pos, step): its steps, then its onFailure steps as onFailure.<id> (the ids their checkpoints have), in plan order.';


--
-- Name: tolstoy_prune_audit(integer, integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_prune_audit(retention_days integer, batch integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    pruned integer;
begin
    if retention_days < 1 or batch is null or batch < 1 or batch > 100000 then
        raise exception 'tolstoy_prune_audit: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    if retention_days is null then
        return 0;
    end if;
    delete from audit_events e
    where (e.org_id, e.id) in (select o.org_id, o.id from audit_events o
                               where o.created_at < clock_now - make_interval(days => retention_days)
                               limit batch);
    get diagnostics pruned = row_count;
    return pruned;
end;
$$;


--
-- Name: FUNCTION tolstoy_prune_audit(retention_days integer, batch integer); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_prune_audit(retention_days integer, batch integer) IS 'Deletes up to batch audit events older than retention_days (null: none); the only way events go.';


--
-- Name: tolstoy_prune_deliveries(integer, integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_prune_deliveries(retention_days integer, batch integer) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    cutoff timestamptz;
    outbox integer;
    inbox integer;
begin
    if retention_days < 1 or batch is null or batch < 1 or batch > 100000 then
        raise exception 'tolstoy_prune_deliveries: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    if retention_days is null then
        return jsonb_build_object('deliveries', 0, 'inbox', 0);
    end if;
    cutoff := clock_now - make_interval(days => retention_days);
    delete from webhook_deliveries d
    where (d.org_id, d.id) in (select o.org_id, o.id from webhook_deliveries o
                               where o.state in ('delivered', 'failed', 'cancelled') and o.created_at < cutoff
                               limit batch);
    get diagnostics outbox = row_count;
    delete from flow_trigger_deliveries t
    where (t.org_id, t.id) in (select i.org_id, i.id from flow_trigger_deliveries i
                               where i.received_at < cutoff
                               limit batch);
    get diagnostics inbox = row_count;
    return jsonb_build_object('deliveries', outbox, 'inbox', inbox);
end;
$$;


--
-- Name: FUNCTION tolstoy_prune_deliveries(retention_days integer, batch integer); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_prune_deliveries(retention_days integer, batch integer) IS 'Deletes up to batch finished webhook deliveries and inbound trigger deliveries older than retention_days.';


--
-- Name: tolstoy_prune_signals(integer, integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_prune_signals(retention_days integer, batch integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
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
        where s.created_at < clock_now - make_interval(days => retention_days)
          and not exists (select 1 from flow_runs r
                          where r.org_id = s.org_id and r.id = s.run_id
                            and r.created_at between tolstoy_run_from(s.run_id) and tolstoy_run_until(s.run_id))
        limit batch);
    get diagnostics pruned = row_count;
    return pruned;
end;
$$;


--
-- Name: FUNCTION tolstoy_prune_signals(retention_days integer, batch integer); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_prune_signals(retention_days integer, batch integer) IS 'Deletes up to batch signals older than retention_days whose run is gone (its partition was dropped).';


--
-- Name: tolstoy_queue_run(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_queue_run(org uuid, flow uuid, queue_run_version integer, actor uuid, vars jsonb, key text, retrying uuid, acting boolean DEFAULT false) RETURNS TABLE(run public.flow_runs, created boolean)
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
begin
    return query
    select q.run, q.created
    from tolstoy_queue_run_v2(org, flow, queue_run_version, actor, vars, key, retrying, acting, null) as q;
end;
$$;


--
-- Name: FUNCTION tolstoy_queue_run(org uuid, flow uuid, queue_run_version integer, actor uuid, vars jsonb, key text, retrying uuid, acting boolean); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_queue_run(org uuid, flow uuid, queue_run_version integer, actor uuid, vars jsonb, key text, retrying uuid, acting boolean) IS 'tolstoy_queue_run_v2 without a re-run: queues a run (or finds the one an Idempotency-Key or a retry made).';


--
-- Name: tolstoy_queue_run_v2(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean, jsonb); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_queue_run_v2(org uuid, flow uuid, queue_run_version integer, actor uuid, vars jsonb, key text, retrying uuid, acting boolean, rerunning jsonb) RETURNS TABLE(run public.flow_runs, created boolean)
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
begin
    return query
    select q.run, q.created
    from tolstoy_queue_run_v3(org, flow, queue_run_version, actor, vars, key, retrying, acting, rerunning, null) as q;
end;
$$;


--
-- Name: FUNCTION tolstoy_queue_run_v2(org uuid, flow uuid, queue_run_version integer, actor uuid, vars jsonb, key text, retrying uuid, acting boolean, rerunning jsonb); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_queue_run_v2(org uuid, flow uuid, queue_run_version integer, actor uuid, vars jsonb, key text, retrying uuid, acting boolean, rerunning jsonb) IS 'tolstoy_queue_run_v3 without a concurrency key (the previous release''s API, and tolstoy_queue_run): a run of a flow whose concurrency has a key gets the key null.';


--
-- Name: tolstoy_queue_run_v3(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean, jsonb, text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_queue_run_v3(org uuid, flow uuid, queue_run_version integer, actor uuid, vars jsonb, key text, retrying uuid, acting boolean, rerunning jsonb, concurrency_key text) RETURNS TABLE(run public.flow_runs, created boolean)
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
begin
    return query
    select q.run, q.created
    from tolstoy_queue_run_v4(org, flow, queue_run_version, actor, vars, key, retrying, acting, rerunning,
                              concurrency_key, null) as q;
end;
$$;


--
-- Name: FUNCTION tolstoy_queue_run_v3(org uuid, flow uuid, queue_run_version integer, actor uuid, vars jsonb, key text, retrying uuid, acting boolean, rerunning jsonb, concurrency_key text); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_queue_run_v3(org uuid, flow uuid, queue_run_version integer, actor uuid, vars jsonb, key text, retrying uuid, acting boolean, rerunning jsonb, concurrency_key text) IS 'tolstoy_queue_run_v4 without a caller''s trace context (the previous release''s API, tolstoy_queue_run_v2).';


--
-- Name: tolstoy_queue_run_v4(uuid, uuid, integer, uuid, jsonb, text, uuid, boolean, jsonb, text, text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_queue_run_v4(org uuid, flow uuid, queue_run_version integer, actor uuid, vars jsonb, key text, retrying uuid, acting boolean, rerunning jsonb, concurrency_key text, caller_trace text) RETURNS TABLE(run public.flow_runs, created boolean)
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $_$
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


--
-- Name: FUNCTION tolstoy_queue_run_v4(org uuid, flow uuid, queue_run_version integer, actor uuid, vars jsonb, key text, retrying uuid, acting boolean, rerunning jsonb, concurrency_key text, caller_trace text); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_queue_run_v4(org uuid, flow uuid, queue_run_version integer, actor uuid, vars jsonb, key text, retrying uuid, acting boolean, rerunning jsonb, concurrency_key text, caller_trace text) IS 'Queues a run with its plan (steps + the actions they call, with their tools) and its queued log row, or returns the run an Idempotency-Key (or, for a retry, the retried run) already made. One retry per run. acting: the one who queues it may act as actor (acts_as_user). rerunning: a re-run of the run named by its "of" ({of, fromStep, steps?, keep, keepItemsOf, dropItems, children}): the checkpoints of its kept steps are copied, its plan is the original''s (or built from "steps"), its root is itself (new Idempotency-Keys). A new run passes tolstoy_admit_run first (quotas: TQ001, TQ002). The run keeps its flow''s concurrency limits and concurrency_key, its key rendered by the caller (flows.concurrency.key over its variables). caller_trace: the W3C traceparent of whoever queued it, kept in flow_runs.trace_parent when well formed.';


--
-- Name: tolstoy_queue_stats(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_queue_stats() RETURNS TABLE(queued bigint, due bigint, oldest_due_age_seconds double precision)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
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


--
-- Name: FUNCTION tolstoy_queue_stats(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_queue_stats() IS 'Queue depth across organizations for /metrics: queued runs, due ones, age of the oldest due one.';


--
-- Name: tolstoy_quota_defaults(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_quota_defaults() RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    select nullif(current_setting('tolstoy.quotas', true), '')::jsonb
$$;


--
-- Name: FUNCTION tolstoy_quota_defaults(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_quota_defaults() IS 'The configured quota defaults the services set for this transaction (tolstoy.quotas): {queuedRuns, storedBytes, retentionDays}, or null.';


--
-- Name: tolstoy_rate_scope(uuid, uuid, uuid, boolean); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_rate_scope(org uuid, tool uuid, run_user uuid, acts_as_user boolean) RETURNS text
    LANGUAGE plpgsql STABLE
    AS $$
begin
    return (
        select case when acts_as_user and run_user is not null
                         and exists (select 1 from user_connections c
                                     where c.org_id = org and c.tool_id = tool and c.user_id = run_user)
                    then 'user:' || run_user::text
                    else 'organization' end);
end;
$$;


--
-- Name: FUNCTION tolstoy_rate_scope(org uuid, tool uuid, run_user uuid, acts_as_user boolean); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_rate_scope(org uuid, tool uuid, run_user uuid, acts_as_user boolean) IS 'The credential a call of the tool uses, as a budget''s scope: the run''s user''s connection when the run may act as that user and the user connected the tool (a per-user OAuth2 tool), else the organization''s credential.';


--
-- Name: tolstoy_record_delivery(text, uuid, uuid, integer, jsonb); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_record_delivery(worker text, org uuid, delivery uuid, token integer, result jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    AS $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    current webhook_deliveries;
    outcome text := result ->> 'outcome';
    give_up interval := make_interval(secs => coalesce((result ->> 'give_up_seconds')::double precision, 86400));
    retry_at timestamptz := clock_now + make_interval(secs => coalesce((result ->> 'retry_in_ms')::double precision, 0)
                                                          / 1000);
    hook webhooks;
    line uuid;
    disabled text;
begin
    if outcome is null or outcome not in ('delivered', 'retry', 'failed') then
        raise exception 'tolstoy_record_delivery: invalid outcome' using errcode = 'invalid_parameter_value';
    end if;
    perform set_config('app.org_id', org::text, true);
    select d.webhook_id into line from webhook_deliveries d where d.org_id = org and d.id = delivery;
    if not found then
        return jsonb_build_object('recorded', false);
    end if;
    perform 1 from webhook_lines l where l.org_id = org and l.webhook_id = line for update;
    select * into current from webhook_deliveries d
    where d.org_id = org and d.id = delivery and d.lease_owner = worker and d.lease_token = token
      and d.state = 'sending'
    for update;
    if not found then
        return jsonb_build_object('recorded', false);
    end if;
    -- No key update: events being written for this webhook (their foreign key's key-share lock) do
    -- not hold this up.
    select * into hook from webhooks w where w.org_id = org and w.id = current.webhook_id for no key update;
    if outcome <> 'delivered' and hook.enabled and clock_now - hook.failing_since >= give_up then
        -- Failing for the whole period: the webhook is disabled, this delivery given up with it.
        disabled := format('Disabled at %s: every delivery failed since %s (last: %s).',
                           tolstoy_iso(clock_now), tolstoy_iso(hook.failing_since),
                           coalesce('HTTP ' || (result ->> 'status_code'), left(result ->> 'error', 300),
                                    'no answer'));
        outcome := 'failed';
    elsif outcome = 'retry' and (retry_at - current.first_attempt_at > give_up or not hook.enabled) then
        outcome := 'failed';
    end if;
    update webhook_deliveries d
    set state = case outcome when 'delivered' then 'delivered' when 'retry' then 'pending' else 'failed' end,
        next_attempt_at = case when outcome = 'retry' then retry_at end,
        finished_at = case when outcome <> 'retry' then clock_now end,
        last_status_code = (result ->> 'status_code')::integer,
        last_error = left(result ->> 'error', 1000),
        lease_owner = null, lease_token = null, lease_expires_at = null,
        attempt_log = d.attempt_log || jsonb_build_object(
            'attempt', token, 'at', tolstoy_iso(d.last_attempt_at),
            'statusCode', (result ->> 'status_code')::integer,
            'durationMs', (result ->> 'duration_ms')::integer, 'error', left(result ->> 'error', 1000),
            'location', left(result ->> 'location', 2048))
    where d.org_id = org and d.id = delivery;
    if outcome = 'delivered' then
        if hook.failing_since is not null then
            update webhooks set failing_since = null where org_id = org and id = hook.id;
        end if;
    elsif disabled is not null then
        -- Its deliveries not sent yet are cancelled (webhooks_cancel_pending).
        update webhooks set enabled = false, disabled_reason = disabled where org_id = org and id = hook.id;
    elsif hook.failing_since is null then
        update webhooks set failing_since = clock_now where org_id = org and id = hook.id;
    end if;
    update webhook_lines l
    set due_at = (select case when n.state = 'sending' then n.lease_expires_at else n.next_attempt_at end
                  from webhook_deliveries n
                  where n.org_id = org and n.webhook_id = current.webhook_id and n.state in ('pending', 'sending')
                  order by n.seq
                  limit 1)
    where l.org_id = org and l.webhook_id = current.webhook_id;
    return jsonb_build_object('recorded', true, 'outcome', outcome, 'disabled', disabled);
end;
$$;


--
-- Name: FUNCTION tolstoy_record_delivery(worker text, org uuid, delivery uuid, token integer, result jsonb); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_record_delivery(worker text, org uuid, delivery uuid, token integer, result jsonb) IS 'Records one attempt of a claimed webhook delivery (fenced by its lease token): delivered, retry later or failed; disables a webhook failing for the give-up period; tells the line when it is due next. Acts for org under row-level security.';


--
-- Name: tolstoy_release_run(public.flow_runs, public.flow_run_status, double precision, jsonb); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_release_run(r public.flow_runs, becomes public.flow_run_status, after_ms double precision, error jsonb) RETURNS public.flow_run_status
    LANGUAGE plpgsql
    AS $_$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    outcome flow_run_status := case when r.cancel_requested then 'cancelled'::flow_run_status else becomes end;
    shown jsonb := case outcome when 'cancelled' then '{"message": "Cancelled"}'::jsonb
                                when 'failed' then error end;
begin
    update flow_runs f
    set status = outcome,
        run_after = case when outcome = 'queued'
                         then clock_now + make_interval(secs => coalesce(after_ms, 0) / 1000) else f.run_after end,
        finished_at = case when outcome in ('cancelled', 'failed') then clock_now end,
        error = coalesce(shown, f.error),
        lease_owner = null, lease_token = null, lease_expires_at = null
    where f.org_id = r.org_id and f.id = r.id and f.created_at = r.created_at;
    if outcome in ('cancelled', 'failed') then
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, error)
        values (r.org_id, r.flow_id, r.user_id, r.id::text, '$flow', outcome::text::execution_status, '{}', shown);
    end if;
    return outcome;
end;
$_$;


--
-- Name: FUNCTION tolstoy_release_run(r public.flow_runs, becomes public.flow_run_status, after_ms double precision, error jsonb); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_release_run(r public.flow_runs, becomes public.flow_run_status, after_ms double precision, error jsonb) IS 'A run leaves its worker''s hands unfinished: queued after after_ms, waiting, or failed with error (logged); cancelled instead when a cancel is pending. Releases the lease; returns the status set.';


--
-- Name: tolstoy_release_step_slots(uuid, uuid, text[]); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_release_step_slots(org uuid, run uuid, steps text[]) RETURNS void
    LANGUAGE plpgsql
    AS $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    freed record;
    waiter flow_runs;
begin
    -- The caller holds the flow's slot lock. steps null: every slot the run holds.
    for freed in
        delete from flow_step_slots s
        where s.org_id = org and s.run_id = run and (steps is null or s.step_id = any(steps))
        returning s.flow_id, s.step_id, s.key
    loop
        -- First queued, first served: the run that has waited longest for this slot gets it, and is due.
        -- One locked by another statement (a cancel, say) is passed over: it is no longer waiting.
        select p.* into waiter
        from flow_runs p
        where p.org_id = org and p.flow_id = freed.flow_id and p.waiting_for = 'concurrency'
          and p.status = 'queued' and p.waiting_step = freed.step_id
          and coalesce(p.waiting_on ->> 'key', '') = freed.key
          and (p.waiting_on ->> 'limit')::integer > (select count(*) from flow_step_slots h
                                                     where h.org_id = org and h.flow_id = freed.flow_id
                                                       and h.step_id = freed.step_id and h.key = freed.key)
        order by p.waiting_since, p.created_at, p.id
        limit 1
        for update skip locked;
        if waiter.id is not null then
            insert into flow_step_slots (org_id, flow_id, step_id, key, run_id, run_created_at, taken_at)
            values (org, freed.flow_id, freed.step_id, freed.key, waiter.id, waiter.created_at, clock_now)
            on conflict do nothing;
            update flow_runs
            set run_after = clock_now, takes_step_slots = true
            where org_id = org and id = waiter.id and created_at = waiter.created_at;
        end if;
    end loop;
end;
$$;


--
-- Name: FUNCTION tolstoy_release_step_slots(org uuid, run uuid, steps text[]); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_release_step_slots(org uuid, run uuid, steps text[]) IS 'Frees the step slots the run holds (of the steps named, or all when null) and hands each to the run that has waited longest for it, which is due again holding it. The caller holds the flow''s slot lock (tolstoy_slot_lock).';


--
-- Name: tolstoy_renew_leases(text, uuid[], uuid[], integer[], double precision); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_renew_leases(worker text, orgs uuid[], runs uuid[], tokens integer[], lease_seconds double precision) RETURNS TABLE(run_id uuid, cancel boolean)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
begin
    if worker is null or worker = '' or lease_seconds is null or lease_seconds <= 0 or lease_seconds > 3600
            or cardinality(orgs) is distinct from cardinality(runs)
            or cardinality(runs) is distinct from cardinality(tokens) or cardinality(runs) > 1000 then
        raise exception 'tolstoy_renew_leases: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    return query
    update flow_runs r
    set lease_expires_at = tolstoy_now() + make_interval(secs => lease_seconds)
    from unnest(orgs, runs, tokens) as held(org_id, id, token)
    where r.org_id = held.org_id and r.id = held.id and r.lease_owner = worker and r.lease_token = held.token
      and r.created_at between tolstoy_run_from(held.id) and tolstoy_run_until(held.id)
      and r.status = 'running' and r.lease_expires_at > tolstoy_now()
    returning r.id, r.cancel_requested;
end;
$$;


--
-- Name: FUNCTION tolstoy_renew_leases(worker text, orgs uuid[], runs uuid[], tokens integer[], lease_seconds double precision); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_renew_leases(worker text, orgs uuid[], runs uuid[], tokens integer[], lease_seconds double precision) IS 'Heartbeat: renews the unexpired leases the worker holds with these tokens; returns them with cancel flags.';


--
-- Name: tolstoy_resolve_step(uuid, uuid, uuid, text, uuid, text, jsonb, bytea, jsonb, boolean); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_resolve_step(org uuid, flow uuid, target uuid, resolved_step text, actor uuid, outcome text, shown jsonb, sealed_output bytea, resolution_error jsonb, key_missing boolean DEFAULT false) RETURNS jsonb
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
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


--
-- Name: FUNCTION tolstoy_resolve_step(org uuid, flow uuid, target uuid, resolved_step text, actor uuid, outcome text, shown jsonb, sealed_output bytea, resolution_error jsonb, key_missing boolean); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_resolve_step(org uuid, flow uuid, target uuid, resolved_step text, actor uuid, outcome text, shown jsonb, sealed_output bytea, resolution_error jsonb, key_missing boolean) IS 'Records what a person (actor) says of a step whose outcome is unknown (outcome succeeded with shown/sealed outputs, failed with resolution_error, or retry), logs it and queues the waiting run again, holding the run''s row. Null when no such run; {refused: status|step|key} writes nothing (not waiting; no such step waiting for a resolution; key_missing: the outputs hold secrets and there is no key to seal them); else {run}.';


--
-- Name: tolstoy_run_epoch(uuid); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_run_epoch(id uuid) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    -- Null for a null id, as a strict function would be (every branch reads the id).
    select case when get_byte(uuid_send(id), 6) >> 4 = 7 then
        least(((get_byte(uuid_send(id), 0)::bigint << 40) | (get_byte(uuid_send(id), 1)::bigint << 32)
               | (get_byte(uuid_send(id), 2)::bigint << 24) | (get_byte(uuid_send(id), 3)::bigint << 16)
               | (get_byte(uuid_send(id), 4)::bigint << 8) | get_byte(uuid_send(id), 5)::bigint) * 1000
              + least(((get_byte(uuid_send(id), 6) & 15) << 8) | get_byte(uuid_send(id), 7), 999),
              253402300799000000)::double precision / 1000000
    end
$$;


--
-- Name: FUNCTION tolstoy_run_epoch(id uuid); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_run_epoch(id uuid) IS 'The time (seconds since 1970) a run id made by tolstoy_new_run_id carries; null for any other id. Not strict, so that queries inline it.';


--
-- Name: tolstoy_run_fault(public.flow_runs, jsonb, integer, double precision); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_run_fault(r public.flow_runs, fault jsonb, max_strikes integer, after_ms double precision) RETURNS public.flow_run_status
    LANGUAGE plpgsql
    AS $$
declare
    over boolean := r.strikes + 1 > max_strikes;
begin
    update flow_runs f set strikes = f.strikes + 1
    where f.org_id = r.org_id and f.id = r.id and f.created_at = r.created_at;
    return tolstoy_release_run(r, case when over then 'failed' else 'queued' end::flow_run_status, after_ms,
                               case when over then jsonb_build_object(
                                   'name', 'RecoveryLimit', 'sqlstate', fault ->> 'sqlstate',
                                   'message', format('The database refused this run''s data %s times in a row (the '
                                                     'limit is %s, TOLSTOY_MAX_RECOVERIES): %s (SQLSTATE %s); it is '
                                                     'not tried again.', r.strikes + 1, max_strikes,
                                                     left(fault ->> 'message', 500), fault ->> 'sqlstate')) end);
end;
$$;


--
-- Name: FUNCTION tolstoy_run_fault(r public.flow_runs, fault jsonb, max_strikes integer, after_ms double precision); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_run_fault(r public.flow_runs, fault jsonb, max_strikes integer, after_ms double precision) IS 'A fault of the run''s own data: a strike, then queued after after_ms, or failed (RecoveryLimit, naming the fault) past max_strikes; a pending cancel ends it cancelled.';


--
-- Name: tolstoy_run_from(uuid); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_run_from(id uuid) RETURNS timestamp with time zone
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    select case when id is not null then to_timestamp(coalesce(tolstoy_run_epoch(id) - 1, '-infinity'::double precision)) end
$$;


--
-- Name: FUNCTION tolstoy_run_from(id uuid); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_run_from(id uuid) IS 'The earliest created_at the run with this id can have (its id''s time less a second; -infinity for an id without one; null for null): lookups by id add created_at between tolstoy_run_from(id) and tolstoy_run_until(id). Not strict, so that queries inline it.';


--
-- Name: tolstoy_run_payload(public.flow_runs); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_run_payload(r public.flow_runs) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
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


--
-- Name: FUNCTION tolstoy_run_payload(r public.flow_runs); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_run_payload(r public.flow_runs) IS 'A claimed run as a worker receives it: the row, its plan and its checkpoints.';


--
-- Name: tolstoy_run_until(uuid); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_run_until(id uuid) RETURNS timestamp with time zone
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    select case when id is not null then to_timestamp(coalesce(tolstoy_run_epoch(id) + 1, 'infinity'::double precision)) end
$$;


--
-- Name: FUNCTION tolstoy_run_until(id uuid); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_run_until(id uuid) IS 'The latest created_at the run with this id can have (its id''s time plus a second; infinity for an id without one; null for null). Not strict, so that queries inline it.';


--
-- Name: tolstoy_run_webhook_events(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_run_webhook_events() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
declare
    kinds text[];
    payload jsonb;
begin
    if old.started_at is null and new.started_at is not null then
        kinds := array['flow.started'];
    end if;
    if new.status is distinct from old.status and new.status in ('completed', 'failed', 'cancelled') then
        kinds := coalesce(kinds, '{}') || ('flow.' || new.status::text);
    end if;
    -- Most organizations subscribe to no run events: one index probe, and no payload built for nobody.
    if kinds is null or not exists (select 1 from webhooks w
                                    where w.org_id = new.org_id and w.enabled and w.event_types && kinds) then
        return null;
    end if;
    payload := jsonb_build_object(
        'executionId', new.id, 'flowId', new.flow_id, 'flowVersion', new.flow_version, 'userId', new.user_id,
        'status', new.status, 'error', new.error, 'retryOf', new.retry_of,
        'startedAt', tolstoy_iso(new.started_at), 'finishedAt', tolstoy_iso(new.finished_at));
    if 'flow.started' = any(kinds) then
        perform tolstoy_webhook_emit(new.org_id, 'flow.started', payload || '{"status": "running"}');
    end if;
    if new.status is distinct from old.status and new.status in ('completed', 'failed', 'cancelled') then
        perform tolstoy_webhook_emit(new.org_id, 'flow.' || new.status::text, payload);
    end if;
    return null;
end;
$$;


--
-- Name: FUNCTION tolstoy_run_webhook_events(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_run_webhook_events() IS 'AFTER UPDATE trigger on flow_runs: the run''s flow.* events, in the statement that changes the run.';


--
-- Name: tolstoy_send_signal(uuid, uuid, uuid, text, jsonb, uuid, text, text, uuid, text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_send_signal(org uuid, flow uuid, target uuid, signal_name text, signal_payload jsonb, actor uuid, signed_by text, key text, link uuid, sent_through text) RETURNS jsonb
    LANGUAGE sql
    AS $$
    select tolstoy_send_signal_v2(org, flow, target, signal_name, signal_payload, actor, signed_by, key, link,
                                  sent_through, null)
$$;


--
-- Name: FUNCTION tolstoy_send_signal(org uuid, flow uuid, target uuid, signal_name text, signal_payload jsonb, actor uuid, signed_by text, key text, link uuid, sent_through text); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_send_signal(org uuid, flow uuid, target uuid, signal_name text, signal_payload jsonb, actor uuid, signed_by text, key text, link uuid, sent_through text) IS 'tolstoy_send_signal_v2 without the sender''s trace context (the previous release''s API).';


--
-- Name: tolstoy_send_signal_v2(uuid, uuid, uuid, text, jsonb, uuid, text, text, uuid, text, text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_send_signal_v2(org uuid, flow uuid, target uuid, signal_name text, signal_payload jsonb, actor uuid, signed_by text, key text, link uuid, sent_through text, caller_trace text) RETURNS jsonb
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $_$
declare
    found_run flow_runs;
    earlier_id uuid;
    earlier_signal text;
    earlier_at timestamptz;
    unfinished_waits bigint;
    pending_signals bigint;
    sent_id uuid;
    sent_at timestamptz;
    woke boolean;
begin
    select * into found_run
    from flow_runs r
    where r.org_id = org and r.flow_id = flow and r.id = target
      and r.created_at between tolstoy_run_from(target) and tolstoy_run_until(target)
    for update;
    if found_run.id is null then
        return null;
    end if;
    -- A repeated Idempotency-Key answers with the signal it sent, whatever the run did since.
    if key is not null then
        select g.id, g.signal, g.created_at into earlier_id, earlier_signal, earlier_at
        from flow_run_signals g
        where g.org_id = org and g.run_id = target and g.idempotency_key = key;
        if earlier_id is not null then
            if earlier_signal <> signal_name then
                return jsonb_build_object('refused', 'key');
            end if;
            return jsonb_build_object('created', false,
                                      'signal', jsonb_build_object('id', earlier_id, 'signal', earlier_signal,
                                                                   'created_at', earlier_at, 'run_id', target));
        end if;
    end if;
    -- Each approval link delivers at most one signal.
    if link is not null and exists (select 1 from flow_run_signals g where g.org_id = org and g.link_id = link) then
        return jsonb_build_object('refused', 'link');
    end if;
    if found_run.status in ('completed', 'failed', 'cancelled') then
        return jsonb_build_object('refused', 'finished', 'status', found_run.status);
    end if;
    unfinished_waits := tolstoy_unfinished_waits(org, target, found_run.created_at, found_run.plan, signal_name);
    select count(*) into pending_signals
    from flow_run_signals g
    where g.org_id = org and g.run_id = target and g.signal = signal_name and g.step_id is null;
    if unfinished_waits <= pending_signals then
        return jsonb_build_object('refused', 'waiting', 'pending', pending_signals);
    end if;
    -- The sender's W3C trace context, when well formed (else none, as the W3C says of a bad one): the wait step
    -- that takes the signal links its span to it (tolstoy/tracing.py).
    insert into flow_run_signals (org_id, run_id, signal, payload, user_id, approver, idempotency_key, link_id,
                                  trace_parent)
    values (org, target, signal_name, signal_payload, actor, signed_by, key, link,
            tolstoy_trace_parent(caller_trace))
    returning id, created_at into sent_id, sent_at;
    update flow_runs r
    set run_after = tolstoy_now()
    where r.org_id = org and r.id = target and r.created_at = found_run.created_at and r.status = 'queued'
      and exists (select 1 from flow_run_steps s
                  where s.org_id = org and s.run_id = target and s.run_created_at = found_run.created_at
                    and s.status = 'waiting' and s.inputs ? 'onTimeout'
                    and (s.inputs ->> 'signal' = signal_name or coalesce(s.inputs -> 'signals', '[]') ? signal_name));
    woke := found;
    insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, source)
    values (org, flow, actor, target::text, '$flow', 'pending',
            jsonb_build_object('signal', signal_name, 'signalId', sent_id, 'source', sent_through,
                               'approver', signed_by, 'wokeRun', woke),
            'engine');
    return jsonb_build_object('created', true, 'woke', woke,
                              'signal', jsonb_build_object('id', sent_id, 'signal', signal_name,
                                                           'created_at', sent_at, 'run_id', target));
end
$_$;


--
-- Name: FUNCTION tolstoy_send_signal_v2(org uuid, flow uuid, target uuid, signal_name text, signal_payload jsonb, actor uuid, signed_by text, key text, link uuid, sent_through text, caller_trace text); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_send_signal_v2(org uuid, flow uuid, target uuid, signal_name text, signal_payload jsonb, actor uuid, signed_by text, key text, link uuid, sent_through text, caller_trace text) IS 'Sends signal_name with signal_payload to a run of a flow, holding the run''s row: stores it, wakes the run when a wait step of it is parked for it, and logs it as actor''s (sent_through: api or link). Null when no such run; {refused: key|link|finished|waiting} writes nothing (the Idempotency-Key sent another signal; the approval link was used; the run finished, with its status; no unfinished wait step is left for it, with the pending count); else {created, woke, signal: {id, signal, created_at, run_id}} (created false: the signal key sent before). caller_trace: the sender''s W3C traceparent, kept in flow_run_signals.trace_parent when well formed.';


--
-- Name: tolstoy_slot_lock(uuid, uuid); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_slot_lock(org uuid, flow uuid) RETURNS bigint
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    select hashtextextended(format('run-slots:%s:%s', org, flow), 0)
$$;


--
-- Name: FUNCTION tolstoy_slot_lock(org uuid, flow uuid); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_slot_lock(org uuid, flow uuid) IS 'The advisory lock a claim that parks or starts a limited run of the flow, and a release that wakes one, hold until they commit.';


--
-- Name: tolstoy_step_target(jsonb, jsonb); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_step_target(step jsonb, actions jsonb) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE
    AS $$
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


--
-- Name: FUNCTION tolstoy_step_target(step jsonb, actions jsonb); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_step_target(step jsonb, actions jsonb) IS 'What a step of a plan calls (its type; the action with method, endpoint and tool; an http_request''s method and URL; a subflow''s flow; a foreach''s item step''s target): a recorded output fits a step of another plan when both targets are equal (tolstoy_move_run).';


--
-- Name: tolstoy_step_webhook_events(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_step_webhook_events() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
declare
    kinds text[];
    kind text;
    flow uuid;
begin
    if tg_op = 'INSERT' then
        kinds := case new.status
                     when 'skipped' then array['step.skipped']
                     when 'running' then array['step.started']
                     when 'waiting' then array['step.started']
                     else array['step.started', 'step.' || new.status] end;
    elsif new.status in ('completed', 'failed', 'skipped', 'outcome_unknown') then
        kinds := array['step.' || new.status];
    elsif old.status in ('completed', 'failed', 'skipped') then
        kinds := array['step.started'];
    else
        return null;
    end if;
    -- Most organizations subscribe to no step events: one index probe, nothing more.
    if not exists (select 1 from webhooks w
                   where w.org_id = new.org_id and w.enabled and w.event_types && kinds) then
        return null;
    end if;
    select r.flow_id into flow from flow_runs r
    where r.org_id = new.org_id and r.id = new.run_id and r.created_at = new.run_created_at;
    foreach kind in array kinds loop
        perform tolstoy_webhook_emit(new.org_id, kind, jsonb_build_object(
            'executionId', new.run_id, 'flowId', flow, 'stepId', new.step_id,
            'status', case when kind = 'step.started' then 'running' else new.status end,
            'attempt', new.attempt, 'error', case when kind = 'step.started' then null else new.error end,
            'durationMs', case when kind = 'step.started' then null else new.duration_ms end,
            'outputs', case when kind = 'step.completed' then new.outputs end));
    end loop;
    return null;
end;
$$;


--
-- Name: FUNCTION tolstoy_step_webhook_events(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_step_webhook_events() IS 'AFTER INSERT/UPDATE trigger on flow_run_steps: the step.* events, in the statement that writes the step.';


--
-- Name: tolstoy_stored_bytes(uuid, integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_stored_bytes(org uuid, retention_days integer) RETURNS bigint
    LANGUAGE plpgsql STABLE
    AS $$
begin
    return (
        select greatest(coalesce(sum(h.bytes), 0), 0)::bigint
        from history_bytes h
        where h.org_id = org
          -- tolstoy_maintain_history drops a month once its end is past retention.
          and (retention_days is null or (h.month + interval '1 month')::date > tolstoy_now()::date - retention_days));
end;
$$;


--
-- Name: FUNCTION tolstoy_stored_bytes(org uuid, retention_days integer); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_stored_bytes(org uuid, retention_days integer) IS 'Bytes of run history an organization stores in the months retention keeps (null: every month).';


--
-- Name: tolstoy_subflow(text, uuid, uuid, integer, jsonb, jsonb); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_subflow(worker text, org uuid, run uuid, token integer, writes jsonb, spec jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
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
    refusal text;
    refused text;
begin
    if step is null or jsonb_typeof(spec -> 'variables') is distinct from 'object' then
        raise exception 'tolstoy_subflow: invalid spec' using errcode = 'invalid_parameter_value';
    end if;
    -- Lease check, the parent's row locked until commit, the pending writes; the worker time counted now,
    -- as the parent may be parked below.
    answer := tolstoy_checkpoint(worker, org, run, token, coalesce(writes, '{}') || '{"count_time": true}');
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
        begin
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
                        -- "child" for the previous release's workers, which read it before anything else.
                    return answer || jsonb_build_object(
                        'created', false, 'parked', true, 'waitingFor', latest.id,
                        'child', jsonb_build_object('id', latest.id, 'flow_id', latest.flow_id,
                                                    'flow_version', latest.flow_version, 'status', latest.status,
                                                    'error', latest.error, 'outputs', null, 'sealed', null));
                    end if;
                end if;
            end if;
            if child.id is null and step not like 'onFailure.%'
                    and parent.plan #> array['rerun', 'children', step] is not null then
                -- A re-run that reaches into this step's child (fromStep "<step>/<its step>"): the child is a
                -- re-run of the original's child from that step, with its variables.
                select * into latest from flow_runs c
                where c.org_id = org and c.id = (parent.plan #>> array['rerun', 'children', step, 'of'])::uuid
                  and c.created_at
                      between tolstoy_run_from((parent.plan #>> array['rerun', 'children', step, 'of'])::uuid)
                          and tolstoy_run_until((parent.plan #>> array['rerun', 'children', step, 'of'])::uuid);
                if latest.id is null then
                    return answer || jsonb_build_object('error', jsonb_build_object(
                        'name', 'SubflowNotFound',
                        'message', format('The child run this step re-runs (%s) is gone (purged).',
                                          parent.plan #>> array['rerun', 'children', step, 'of'])));
                end if;
                select (q.run).* into child
                from tolstoy_queue_run_v2(org, latest.flow_id, latest.flow_version, parent.user_id,
                                          latest.variables, null, null, false,
                                          parent.plan #> array['rerun', 'children', step]) as q;
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
        exception when sqlstate 'TQ001' or sqlstate 'TQ002' then
            -- Over a quota: the step fails (a parent waiting for room would hold a place of the quota itself).
            get stacked diagnostics refusal = message_text, refused = pg_exception_detail;
            return answer || jsonb_build_object('error', jsonb_build_object(
                'name', 'QuotaExceeded', 'message', refusal, 'quota', refused::jsonb ->> 'quota'));
        end;
        -- The child joins its parent's trace, under the parent's run span (tolstoy/tracing.py run_ids: the
        -- trace is the parent's caller's, or the parent's id; the run span's id is the first 8 bytes of a
        -- sha256 of the run's id), so a run and its subflows are one trace.
        update flow_runs c
        set parent_run_id = run, parent_step_id = step, depth = parent.depth + 1,
            trace_parent = coalesce(c.trace_parent, format('00-%s-%s-01',
                coalesce(substr(parent.trace_parent, 4, 32), replace(parent.id::text, '-', '')),
                coalesce(nullif(substr(encode(sha256(convert_to('tolstoy-run-span:', 'UTF8') || uuid_send(parent.id)),
                                              'hex'), 1, 16), '0000000000000000'), '0000000000000001')))
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


--
-- Name: FUNCTION tolstoy_subflow(worker text, org uuid, run uuid, token integer, writes jsonb, spec jsonb); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_subflow(worker text, org uuid, run uuid, token integer, writes jsonb, spec jsonb) IS 'A subflow step: tolstoy_checkpoint, then find or queue the step''s child run (one child chain per step of a retry chain: a retry continues the chain an earlier run''s step started, and waits while its newest run is under way; a re-run reaching into the step''s child queues a re-run of that child), and park the parent while a waited-for child runs. The child joins the parent''s trace (flow_runs.trace_parent). Acts for org under row-level security.';


--
-- Name: tolstoy_take_budget(uuid, uuid, text, jsonb); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_take_budget(org uuid, tool uuid, budget_scope text, call jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    AS $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    declared jsonb;
    b tool_rate_budgets;
    requests double precision;
    per_seconds double precision;
    since timestamptz := (call ->> 'since')::timestamptz;
    reserved timestamptz := (call ->> 'reserved_until')::timestamptz;
    max_wait double precision := coalesce((call ->> 'max_wait_seconds')::double precision, 21600);
    due timestamptz := clock_now;
    slot timestamptz;
    reserving boolean := false;
    wait double precision;
begin
    select t.rate_limit into declared from tools t where t.org_id = org and t.id = tool;
    select * into b from tool_rate_budgets r
    where r.org_id = org and r.tool_id = tool and r.scope = budget_scope
    for update;
    if not found then
        if declared is null then
            return jsonb_build_object('wait', 0);  -- nothing declared, nothing learned: nothing to keep
        end if;
        insert into tool_rate_budgets (org_id, tool_id, scope) values (org, tool, budget_scope)
        on conflict do nothing;
        select * into b from tool_rate_budgets r
        where r.org_id = org and r.tool_id = tool and r.scope = budget_scope
        for update;
    end if;
    requests := coalesce((declared ->> 'requests')::double precision, b.learned_requests);
    -- A limit stated without its window (GitHub's form) is spread over the window its resets show: a
    -- burst at each reset would spill over into the next window on its way to the provider.
    per_seconds := coalesce((declared ->> 'perSeconds')::double precision, b.learned_per_seconds,
                            case when b.window_seconds > 0 then b.window_seconds end);
    -- A window the provider reported that has ended: the next one, as long as the last (when the
    -- provider said how many requests a window holds).
    if b.window_reset_at is not null and b.window_reset_at <= clock_now then
        if b.learned_requests is not null and b.window_seconds is not null then
            b.window_reset_at := b.window_reset_at + make_interval(secs => b.window_seconds
                * ceil(extract(epoch from clock_now - b.window_reset_at) / b.window_seconds + 1e-9));
            b.window_remaining := b.learned_requests;
        else
            b.window_reset_at := null;
            b.window_remaining := null;
        end if;
    end if;
    if b.paused_until > due then
        due := b.paused_until;
    end if;
    if b.window_remaining <= 0 and b.window_reset_at > due then
        due := b.window_reset_at;
    end if;
    if requests is not null and per_seconds is not null then
        -- GCRA without burst, on the calls actually sent: each goes at least per_seconds / requests
        -- after the one before (tat), so no window of per_seconds ever holds more than requests. A call
        -- that must wait reserves a slot (next_slot moves on), so the calls waiting for one budget
        -- wake one by one rather than all at once, and in turn; fresh calls queue behind them.
        if reserved is not null and reserved <= clock_now then
            -- Its reserved slot came: it goes once the call before it is far enough behind.
            if b.tat > due then
                due := b.tat;
            end if;
            reserving := due > clock_now;
        else
            slot := greatest(coalesce(b.tat, due), coalesce(b.next_slot, due), due);
            if slot > coalesce(since, clock_now) + make_interval(secs => max_wait) then
                slot := null;  -- too far: refused below, nothing reserved
            elsif slot > clock_now then
                b.next_slot := slot + make_interval(secs => per_seconds / requests);
                due := slot;
                reserving := true;
            else
                due := slot;
            end if;
        end if;
        if due <= clock_now then
            b.tat := clock_now + make_interval(secs => per_seconds / requests);
            b.next_slot := greatest(b.next_slot, b.tat);
        end if;
    elsif due > clock_now then
        -- No rate known: the calls a pause holds back wake spread over a tenth of it (at most 1 s).
        due := due + make_interval(secs => random() * least(1, 0.1 * extract(epoch from due - clock_now)));
    end if;
    wait := extract(epoch from coalesce(due, clock_now) - clock_now);
    -- Past the longest wait (since the step began to wait): refused, nothing reserved. A call whose
    -- reserved slot came was within it when it reserved.
    if not coalesce(reserved <= clock_now, false)
       and (slot is null and requests is not null and per_seconds is not null
            or coalesce(since, clock_now) + make_interval(secs => max_wait) < coalesce(due, clock_now)) then
        return jsonb_build_object('wait', wait, 'refused', true);
    end if;
    if wait <= 0 then
        b.window_remaining := b.window_remaining - 1;
        if since is not null then
            b.waited_seconds := b.waited_seconds + greatest(extract(epoch from clock_now - since), 0);
        end if;
    end if;
    update tool_rate_budgets r
    set tat = b.tat, next_slot = b.next_slot, window_remaining = b.window_remaining, window_reset_at = b.window_reset_at,
        waited_seconds = b.waited_seconds, updated_at = clock_now
    where r.org_id = org and r.tool_id = tool and r.scope = budget_scope;
    return jsonb_build_object('wait', greatest(wait, 0), 'until', case when wait > 0 then due end,
                              'reserved', reserving);
end;
$$;


--
-- Name: FUNCTION tolstoy_take_budget(org uuid, tool uuid, budget_scope text, call jsonb); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_take_budget(org uuid, tool uuid, budget_scope text, call jsonb) IS 'One call''s take from the rate budget of a tool''s credential (budget_scope): {"wait": 0} when it may go now (taken), else the seconds to wait and until when (a slot reserved when a rate is known), or "refused" when the call would have waited longer than call.max_wait_seconds since call.since. Declared limits (tools.rate_limit) win over learned ones. Writes nothing for a tool with neither.';


--
-- Name: tolstoy_take_first_signal(uuid, uuid, text, text[]); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_take_first_signal(org uuid, run uuid, step text, signal_names text[]) RETURNS TABLE(id uuid, signal text, payload jsonb, approver text, user_id uuid, created_at timestamp with time zone)
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    found_run flow_runs;
    taken flow_run_signals;
begin
    select * into found_run
    from flow_runs r
    where r.org_id = org and r.id = run and r.created_at between tolstoy_run_from(run) and tolstoy_run_until(run)
    for update;
    -- New statements, so new snapshots: they see a signal committed while this waited for the lock.
    select * into taken
    from flow_run_signals g
    where g.org_id = org and g.run_id = run and g.step_id = step and g.superseded_by is null
    order by g.created_at
    limit 1;
    if taken.id is null then
        update flow_run_signals s
        set step_id = step, consumed_at = clock_now
        where s.org_id = org and s.id = (
            select p.id from flow_run_signals p
            where p.org_id = org and p.run_id = run and p.signal = any(signal_names) and p.step_id is null
            order by p.created_at, p.id
            limit 1
            for update)
        returning s.* into taken;
        if taken.id is null then
            return;
        end if;
        with superseded as (
            update flow_run_signals s
            set step_id = step, consumed_at = clock_now, superseded_by = taken.id
            where s.org_id = org and s.id in (
                select distinct on (p.signal) p.id
                from flow_run_signals p
                where p.org_id = org and p.run_id = run and p.signal = any(signal_names)
                  and p.signal <> taken.signal and p.step_id is null
                order by p.signal, p.created_at, p.id)
            returning s.id, s.signal
        )
        insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, source)
        select org, found_run.flow_id, found_run.user_id, run::text, step, 'cancelled',
               jsonb_build_object('signal', x.signal, 'signalId', x.id, 'supersededBy', taken.id,
                                  'supersededBySignal', taken.signal),
               'engine'
        from superseded x;
    end if;
    return query select taken.id, taken.signal, taken.payload, taken.approver, taken.user_id, taken.created_at;
end;
$$;


--
-- Name: FUNCTION tolstoy_take_first_signal(org uuid, run uuid, step text, signal_names text[]); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_take_first_signal(org uuid, run uuid, step text, signal_names text[]) IS 'A wait step''s signal: locks the run, then answers the one the step took before or takes the oldest pending signal of signal_names, superseding (superseded_by, a cancelled log row) the oldest pending one of each other name; no row when none is pending.';


--
-- Name: tolstoy_take_signal(uuid, uuid, text, text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_take_signal(org uuid, run uuid, step text, signal_name text) RETURNS TABLE(id uuid, payload jsonb, approver text, user_id uuid, created_at timestamp with time zone)
    LANGUAGE plpgsql
    AS $$
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


--
-- Name: FUNCTION tolstoy_take_signal(org uuid, run uuid, step text, signal_name text); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_take_signal(org uuid, run uuid, step text, signal_name text) IS 'A wait step''s signal: locks the run, then takes the oldest pending signal of the name (or the one the step took before); no row when none is pending.';


--
-- Name: tolstoy_touch_updated_at(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    if row(new.*) is distinct from row(old.*) then
        new.updated_at := now();
    else
        new.updated_at := old.updated_at;
    end if;
    return new;
end;
$$;


--
-- Name: FUNCTION tolstoy_touch_updated_at(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_touch_updated_at() IS 'BEFORE UPDATE trigger: sets updated_at to now() when any column changed, keeps it otherwise.';


--
-- Name: tolstoy_trace_parent(text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_trace_parent(value text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $_$
    select case when value ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
                     and value !~ '^00-0{32}-' and value !~ '-0{16}-[0-9a-f]{2}$'
                then value end
$_$;


--
-- Name: FUNCTION tolstoy_trace_parent(value text); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_trace_parent(value text) IS 'A W3C traceparent as kept (flow_runs.trace_parent, flow_run_signals.trace_parent): the value when well formed (version 00, lower-case hex, neither id all zeros), else null, as the W3C says of a bad one. The same rule as tolstoy/tracing.py TRACEPARENT.';


--
-- Name: tolstoy_unfinished_waits(uuid, uuid, timestamp with time zone, jsonb, text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_unfinished_waits(org uuid, run uuid, run_created_at timestamp with time zone, run_plan jsonb, signal_name text) RETURNS bigint
    LANGUAGE plpgsql STABLE
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
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


--
-- Name: FUNCTION tolstoy_unfinished_waits(org uuid, run uuid, run_created_at timestamp with time zone, run_plan jsonb, signal_name text); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_unfinished_waits(org uuid, run uuid, run_created_at timestamp with time zone, run_plan jsonb, signal_name text) IS 'How many wait steps for signal_name (its signal, or one of its signals) of the run (run_plan: its plan) have not finished: how many signals of that name it can still take.';


--
-- Name: tolstoy_usage(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_usage() RETURNS TABLE(queued_runs bigint, stored_bytes bigint)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
declare
    org uuid := tolstoy_current_org();
begin
    if org is null then
        raise exception 'tolstoy_usage: no organization is set' using errcode = 'invalid_parameter_value';
    end if;
    return query
    select (select count(*) from flow_runs r where r.org_id = org and r.status in ('queued', 'running', 'waiting')),
           tolstoy_stored_bytes(org, (tolstoy_quota_defaults() ->> 'retentionDays')::integer);
end;
$$;


--
-- Name: FUNCTION tolstoy_usage(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_usage() IS 'The current organization''s runs not finished and bytes of run history within retention (security definer: the admin login reads them without any grant on runs, for the organization it acts for only).';


--
-- Name: tolstoy_webhook_emit(uuid, text, jsonb); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_webhook_emit(org uuid, kind text, payload jsonb) RETURNS integer
    LANGUAGE plpgsql
    AS $$
declare
    event uuid := gen_random_uuid();
    fanned integer;
begin
    insert into webhook_deliveries (org_id, webhook_id, event_id, event_type, data, next_attempt_at)
    select w.org_id, w.id, event, kind, payload, now()
    from webhooks w
    where w.org_id = org and w.enabled and kind = any(w.event_types);
    get diagnostics fanned = row_count;
    return fanned;
end;
$$;


--
-- Name: FUNCTION tolstoy_webhook_emit(org uuid, kind text, payload jsonb); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_webhook_emit(org uuid, kind text, payload jsonb) IS 'Writes one event to the outbox for each enabled webhook of org subscribed to its type; returns how many.';


--
-- Name: webhook_deliveries_notify(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.webhook_deliveries_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    if exists (select 1 from inserted) then
        perform pg_notify('tolstoy_runs', 'webhook');
    end if;
    return null;
end;
$$;


--
-- Name: FUNCTION webhook_deliveries_notify(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.webhook_deliveries_notify() IS 'AFTER INSERT statement trigger: NOTIFY tolstoy_runs when deliveries were queued, so an idle worker delivers.';


--
-- Name: webhooks_cancel_pending(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.webhooks_cancel_pending() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    update webhook_deliveries
    set state = 'cancelled', next_attempt_at = null, finished_at = now(),
        last_error = coalesce(new.disabled_reason, 'The webhook was disabled.')
    where org_id = new.org_id and webhook_id = new.id and state = 'pending';
    return null;
end;
$$;


--
-- Name: FUNCTION webhooks_cancel_pending(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.webhooks_cancel_pending() IS 'AFTER UPDATE trigger on webhooks: a webhook disabled cancels its pending deliveries.';


SET default_table_access_method = heap;

--
-- Name: actions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.actions (
    org_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    tool_id uuid NOT NULL,
    name text NOT NULL,
    key text NOT NULL,
    method public.http_method NOT NULL,
    endpoint text NOT NULL,
    headers jsonb,
    input_schema jsonb,
    execute_if jsonb,
    version integer DEFAULT 1 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    timeout_ms integer,
    CONSTRAINT actions_endpoint_path CHECK (("left"(endpoint, 1) = '/'::text)),
    CONSTRAINT actions_headers_object CHECK (((headers IS NULL) OR (jsonb_typeof(headers) = 'object'::text))),
    CONSTRAINT actions_input_schema_object CHECK (((input_schema IS NULL) OR (jsonb_typeof(input_schema) = 'object'::text))),
    CONSTRAINT actions_key_length CHECK (((char_length(key) >= 1) AND (char_length(key) <= 200))),
    CONSTRAINT actions_name_length CHECK (((char_length(name) >= 1) AND (char_length(name) <= 200))),
    CONSTRAINT actions_timeout_ms_range CHECK (((timeout_ms >= 100) AND (timeout_ms <= 120000))),
    CONSTRAINT actions_version_positive CHECK ((version >= 1))
);

ALTER TABLE ONLY public.actions FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE actions; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.actions IS 'One operation a tool offers (method + endpoint), callable from flow steps by key.';


--
-- Name: COLUMN actions.key; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.actions.key IS 'Stable identifier used by flow steps (config.actionKey); unique per organization.';


--
-- Name: COLUMN actions.endpoint; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.actions.endpoint IS 'Path appended to tools.base_url; may hold {placeholders} filled from inputs.';


--
-- Name: COLUMN actions.input_schema; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.actions.input_schema IS 'JSON Schema (object) that inputs are validated against; legacy field lists are converted before storage.';


--
-- Name: COLUMN actions.execute_if; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.actions.execute_if IS 'Condition (template string or JSON object) deciding whether the action runs.';


--
-- Name: COLUMN actions.version; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.actions.version IS 'Starts at 1; actions_bump_version raises it by one when a definitional column changes.';


--
-- Name: COLUMN actions.timeout_ms; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.actions.timeout_ms IS 'End-to-end limit of POST /actions/{id}/execute for this action, in ms (null: the server default).';


--
-- Name: api_keys; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.api_keys (
    org_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    name text NOT NULL,
    prefix text NOT NULL,
    key_hash bytea NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    last_used_at timestamp with time zone,
    revoked_at timestamp with time zone,
    scopes text[] DEFAULT '{read,write,execute,admin}'::text[] NOT NULL,
    expires_at timestamp with time zone,
    user_id uuid,
    CONSTRAINT api_keys_expires_after_creation CHECK (((expires_at IS NULL) OR (expires_at > created_at))),
    CONSTRAINT api_keys_key_hash_length CHECK ((octet_length(key_hash) = 32)),
    CONSTRAINT api_keys_name_length CHECK (((char_length(name) >= 1) AND (char_length(name) <= 200))),
    CONSTRAINT api_keys_scopes_known CHECK ((((cardinality(scopes) >= 1) AND (cardinality(scopes) <= 5)) AND (scopes <@ '{read,write,execute,admin,impersonate}'::text[])))
);

ALTER TABLE ONLY public.api_keys FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE api_keys; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.api_keys IS 'Bearer keys of an organization (TOLSTOY_AUTH_MODE=api_key); only a keyed hash is stored.';


--
-- Name: COLUMN api_keys.key_hash; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.api_keys.key_hash IS 'HMAC-SHA256 of the key under TOLSTOY_API_KEY_SECRET; the key itself is shown once.';


--
-- Name: COLUMN api_keys.last_used_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.api_keys.last_used_at IS 'Refreshed at most once a minute, so authentication stays a read.';


--
-- Name: COLUMN api_keys.revoked_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.api_keys.revoked_at IS 'Revoked keys are kept for the audit trail and never authenticate.';


--
-- Name: COLUMN api_keys.scopes; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.api_keys.scopes IS 'What the key may do: read, write, execute, admin (its organization''s keys), impersonate (act as any user).';


--
-- Name: COLUMN api_keys.expires_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.api_keys.expires_at IS 'When the key stops working (null: never); checked by tolstoy_enter_key.';


--
-- Name: COLUMN api_keys.user_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.api_keys.user_id IS 'The user the key is bound to (null: none): it may act as that user (use their OAuth connections, connect an account for them). Never changes.';


--
-- Name: audit_events; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.audit_events (
    org_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    actor jsonb NOT NULL,
    action text NOT NULL,
    target_type text NOT NULL,
    target_id uuid NOT NULL,
    changes jsonb NOT NULL,
    request_id text,
    CONSTRAINT audit_events_action_length CHECK (((char_length(action) >= 1) AND (char_length(action) <= 100))),
    CONSTRAINT audit_events_actor_object CHECK ((jsonb_typeof(actor) = 'object'::text)),
    CONSTRAINT audit_events_changes_object CHECK ((jsonb_typeof(changes) = 'object'::text)),
    CONSTRAINT audit_events_request_id_length CHECK ((char_length(request_id) <= 200))
);

ALTER TABLE ONLY public.audit_events FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE audit_events; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.audit_events IS 'Configuration changes of an organization, one row per row changed by a request; written only by the tolstoy_audit trigger, never updated, deleted past TOLSTOY_AUDIT_RETENTION_DAYS by tolstoy_prune_audit.';


--
-- Name: COLUMN audit_events.created_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.audit_events.created_at IS 'When the changing transaction began (the API shows it as at).';


--
-- Name: COLUMN audit_events.actor; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.audit_events.actor IS 'Who made the change as the API authenticated it: {userId}, {apiKeyPrefix[, userId]} or {admin: true}.';


--
-- Name: COLUMN audit_events.action; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.audit_events.action IS '<targetType>.created, .updated or .deleted.';


--
-- Name: COLUMN audit_events.target_type; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.audit_events.target_type IS 'The kind of record changed (tool, flow, api_key, ...).';


--
-- Name: COLUMN audit_events.changes; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.audit_events.changes IS 'Changed columns as {column: [old, new]}; secrets as ''***''. Creation: [null, new]; deletion: [old, null].';


--
-- Name: COLUMN audit_events.request_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.audit_events.request_id IS 'The X-Request-ID of the request that made the change.';


--
-- Name: execution_logs_default; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.execution_logs_default (
    org_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    flow_id uuid,
    user_id uuid,
    execution_id text NOT NULL,
    step_key text NOT NULL,
    status public.execution_status NOT NULL,
    inputs jsonb NOT NULL,
    outputs jsonb,
    error jsonb,
    duration_ms integer,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    source public.execution_log_source DEFAULT 'engine'::public.execution_log_source NOT NULL,
    CONSTRAINT execution_logs_execution_id_length CHECK (((char_length(execution_id) >= 1) AND (char_length(execution_id) <= 200))),
    CONSTRAINT execution_logs_inputs_object CHECK ((jsonb_typeof(inputs) = 'object'::text)),
    CONSTRAINT execution_logs_outputs_object CHECK (((outputs IS NULL) OR (jsonb_typeof(outputs) = 'object'::text))),
    CONSTRAINT execution_logs_step_key_length CHECK (((char_length(step_key) >= 1) AND (char_length(step_key) <= 200)))
);

ALTER TABLE ONLY public.execution_logs_default FORCE ROW LEVEL SECURITY;


--
-- Name: flow_run_signals; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.flow_run_signals (
    org_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    run_id uuid NOT NULL,
    signal text NOT NULL,
    payload jsonb,
    user_id uuid,
    approver text,
    idempotency_key text,
    link_id uuid,
    step_id text,
    consumed_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    superseded_by uuid,
    trace_parent text,
    CONSTRAINT flow_run_signals_approver_length CHECK (((char_length(approver) >= 1) AND (char_length(approver) <= 320))),
    CONSTRAINT flow_run_signals_consumed CHECK (((step_id IS NULL) = (consumed_at IS NULL))),
    CONSTRAINT flow_run_signals_idempotency_key_length CHECK (((char_length(idempotency_key) >= 1) AND (char_length(idempotency_key) <= 200))),
    CONSTRAINT flow_run_signals_signal_format CHECK ((signal ~ '^[A-Za-z0-9_.-]{1,100}$'::text))
);

ALTER TABLE ONLY public.flow_run_signals FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE flow_run_signals; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.flow_run_signals IS 'Signals sent to runs (API or approval link); a wait step of the run takes the oldest one of its name.';


--
-- Name: COLUMN flow_run_signals.run_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_run_signals.run_id IS 'flow_runs.id (no foreign key across monthly partitions).';


--
-- Name: COLUMN flow_run_signals.payload; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_run_signals.payload IS 'What the wait step that takes the signal returns.';


--
-- Name: COLUMN flow_run_signals.idempotency_key; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_run_signals.idempotency_key IS 'Idempotency-Key of the request: a repeat answers this row.';


--
-- Name: COLUMN flow_run_signals.link_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_run_signals.link_id IS 'The approval link used (each link delivers at most one signal).';


--
-- Name: COLUMN flow_run_signals.step_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_run_signals.step_id IS 'Checkpoint id of the wait step that took the signal; null while pending.';


--
-- Name: COLUMN flow_run_signals.superseded_by; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_run_signals.superseded_by IS 'The signal a "signals" wait step took instead of this one, which it made void (never delivered); null otherwise.';


--
-- Name: COLUMN flow_run_signals.trace_parent; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_run_signals.trace_parent IS 'The W3C traceparent of whoever sent the signal, or null: the span of the wait step that takes it links to it (tolstoy/tracing.py). Written only by tolstoy_send_signal_v2, which keeps only a well-formed value.';


--
-- Name: flow_run_steps; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.flow_run_steps (
    org_id uuid NOT NULL,
    run_id uuid NOT NULL,
    run_created_at timestamp with time zone NOT NULL,
    step_id text NOT NULL,
    status text NOT NULL,
    attempt integer DEFAULT 1 NOT NULL,
    inputs jsonb,
    outputs jsonb,
    sealed bytea,
    error jsonb,
    wake_at timestamp with time zone,
    call_started_at timestamp with time zone,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    duration_ms integer,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT flow_run_steps_attempt_positive CHECK ((attempt >= 1)),
    CONSTRAINT flow_run_steps_status CHECK ((status = ANY (ARRAY['running'::text, 'waiting'::text, 'completed'::text, 'failed'::text, 'skipped'::text, 'outcome_unknown'::text])))
)
PARTITION BY RANGE (run_created_at);

ALTER TABLE ONLY public.flow_run_steps FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE flow_run_steps; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.flow_run_steps IS 'Durable step checkpoints of a run; finished ones are skipped when the run resumes. Partitioned with the run (run_created_at), so a month of runs and their steps are dropped together; no foreign key spans them.';


--
-- Name: COLUMN flow_run_steps.attempt; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_run_steps.attempt IS 'Retry attempt (1 = first try); part of the Idempotency-Key sent to tools.';


--
-- Name: COLUMN flow_run_steps.outputs; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_run_steps.outputs IS 'What people see of the output: secrets masked.';


--
-- Name: COLUMN flow_run_steps.sealed; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_run_steps.sealed IS 'The real output, encrypted with the organization''s data key, when it differs from outputs (it held secrets).';


--
-- Name: COLUMN flow_run_steps.wake_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_run_steps.wake_at IS 'For waiting steps: when the delay or retry backoff ends.';


--
-- Name: COLUMN flow_run_steps.call_started_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_run_steps.call_started_at IS 'Set just before an outbound call; a running step with it set and no result is a call whose outcome is unknown.';


--
-- Name: flow_run_steps_default; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.flow_run_steps_default (
    org_id uuid NOT NULL,
    run_id uuid NOT NULL,
    run_created_at timestamp with time zone NOT NULL,
    step_id text NOT NULL,
    status text NOT NULL,
    attempt integer DEFAULT 1 NOT NULL,
    inputs jsonb,
    outputs jsonb,
    sealed bytea,
    error jsonb,
    wake_at timestamp with time zone,
    call_started_at timestamp with time zone,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    duration_ms integer,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT flow_run_steps_attempt_positive CHECK ((attempt >= 1)),
    CONSTRAINT flow_run_steps_status CHECK ((status = ANY (ARRAY['running'::text, 'waiting'::text, 'completed'::text, 'failed'::text, 'skipped'::text, 'outcome_unknown'::text])))
);

ALTER TABLE ONLY public.flow_run_steps_default FORCE ROW LEVEL SECURITY;


--
-- Name: flow_runs_default; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.flow_runs_default (
    org_id uuid NOT NULL,
    id uuid DEFAULT public.tolstoy_new_run_id(now()) NOT NULL,
    flow_id uuid NOT NULL,
    flow_version integer NOT NULL,
    user_id uuid,
    status public.flow_run_status DEFAULT 'queued'::public.flow_run_status NOT NULL,
    variables jsonb DEFAULT '{}'::jsonb NOT NULL,
    plan jsonb NOT NULL,
    error jsonb,
    idempotency_key text,
    retry_of uuid,
    root_run_id uuid NOT NULL,
    run_after timestamp with time zone DEFAULT now() NOT NULL,
    cancel_requested boolean DEFAULT false NOT NULL,
    claims integer DEFAULT 0 NOT NULL,
    recoveries integer DEFAULT 0 NOT NULL,
    lease_owner text,
    lease_token integer,
    lease_expires_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    parent_run_id uuid,
    parent_step_id text,
    depth integer DEFAULT 0 NOT NULL,
    acts_as_user boolean DEFAULT false NOT NULL,
    stored_bytes bigint,
    strikes integer DEFAULT 0 NOT NULL,
    handbacks integer DEFAULT 0 NOT NULL,
    accounted_at timestamp with time zone,
    rerun_of uuid,
    waiting_for text,
    waiting_on jsonb,
    waiting_step text,
    waiting_since timestamp with time zone,
    waiting_until timestamp with time zone,
    concurrency jsonb,
    concurrency_key text,
    trace_parent text,
    takes_step_slots boolean DEFAULT false NOT NULL,
    CONSTRAINT flow_runs_idempotency_key_length CHECK (((char_length(idempotency_key) >= 1) AND (char_length(idempotency_key) <= 200))),
    CONSTRAINT flow_runs_lease_complete CHECK (((lease_owner IS NULL) = (lease_expires_at IS NULL))),
    CONSTRAINT flow_runs_plan_object CHECK ((jsonb_typeof(plan) = 'object'::text)),
    CONSTRAINT flow_runs_variables_object CHECK ((jsonb_typeof(variables) = 'object'::text))
);

ALTER TABLE ONLY public.flow_runs_default FORCE ROW LEVEL SECURITY;


--
-- Name: flow_step_slots; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.flow_step_slots (
    org_id uuid NOT NULL,
    flow_id uuid NOT NULL,
    step_id text NOT NULL,
    key text NOT NULL,
    run_id uuid NOT NULL,
    run_created_at timestamp with time zone NOT NULL,
    taken_at timestamp with time zone NOT NULL,
    CONSTRAINT flow_step_slots_key_check CHECK ((char_length(key) <= 200)),
    CONSTRAINT flow_step_slots_step_id_check CHECK (((char_length(step_id) >= 1) AND (char_length(step_id) <= 200)))
);

ALTER TABLE ONLY public.flow_step_slots FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE flow_step_slots; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.flow_step_slots IS 'The slots of the steps that declare a concurrency limit: one row per run whose step holds one, per organization, flow, step id and rendered key. Taken and freed by the engine (tolstoy_checkpoint_slots, tolstoy_release_step_slots); never shared across organizations or flows.';


--
-- Name: COLUMN flow_step_slots.step_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_step_slots.step_id IS 'The step''s id in its run (onFailure.<id> for a failure handler''s step).';


--
-- Name: COLUMN flow_step_slots.key; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_step_slots.key IS 'The step''s concurrency key rendered when it was about to run; the empty string when the step declares no key (a rendered key is never empty).';


--
-- Name: COLUMN flow_step_slots.run_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_step_slots.run_id IS 'The run whose step holds the slot.';


--
-- Name: COLUMN flow_step_slots.taken_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_step_slots.taken_at IS 'When the run took the slot, or a release handed it over.';


--
-- Name: flow_trigger_deliveries; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.flow_trigger_deliveries (
    org_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    trigger_id uuid NOT NULL,
    verdict text NOT NULL,
    reason text,
    delivery_id text,
    signature text,
    headers jsonb DEFAULT '{}'::jsonb NOT NULL,
    body bytea,
    execution_id uuid,
    received_at timestamp with time zone DEFAULT now() NOT NULL,
    source text,
    refused_hour timestamp with time zone,
    refusals integer DEFAULT 1 NOT NULL,
    last_received_at timestamp with time zone,
    CONSTRAINT flow_trigger_deliveries_delivery_id_length CHECK (((char_length(delivery_id) >= 1) AND (char_length(delivery_id) <= 200))),
    CONSTRAINT flow_trigger_deliveries_headers_object CHECK ((jsonb_typeof(headers) = 'object'::text)),
    CONSTRAINT flow_trigger_deliveries_refusals_positive CHECK ((refusals >= 1)),
    CONSTRAINT flow_trigger_deliveries_source_length CHECK (((char_length(source) >= 1) AND (char_length(source) <= 64))),
    CONSTRAINT flow_trigger_deliveries_valid_has_run CHECK (((verdict <> 'valid'::text) OR (body IS NOT NULL))),
    CONSTRAINT flow_trigger_deliveries_verdict CHECK ((verdict = ANY (ARRAY['valid'::text, 'invalid'::text, 'stale'::text, 'replayed'::text])))
);

ALTER TABLE ONLY public.flow_trigger_deliveries FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE flow_trigger_deliveries; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.flow_trigger_deliveries IS 'Inbox of webhook triggers: each request as received (headers that matter, raw body of verified ones), its signature verdict and the run it queued, written in the run''s transaction.';


--
-- Name: COLUMN flow_trigger_deliveries.delivery_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_trigger_deliveries.delivery_id IS 'The sender''s id of the event (X-GitHub-Delivery, Stripe event id, Slack event_id, X-Tolstoy-Delivery).';


--
-- Name: COLUMN flow_trigger_deliveries.signature; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_trigger_deliveries.signature IS 'The verified signature: a second request bearing it is a replay.';


--
-- Name: COLUMN flow_trigger_deliveries.execution_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_trigger_deliveries.execution_id IS 'The run this delivery queued (flow_runs.id; no foreign key across monthly partitions).';


--
-- Name: COLUMN flow_trigger_deliveries.source; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_trigger_deliveries.source IS 'A refused request''s sender: its address (an IPv6 address by its /64), or * for the requests of sources past the cap of that trigger and hour; null for verified requests.';


--
-- Name: COLUMN flow_trigger_deliveries.refused_hour; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_trigger_deliveries.refused_hour IS 'The hour a row of refused requests counts (one row per trigger, hour, verdict and source); null for verified requests and for rows refused before 20261208000403, one per request.';


--
-- Name: COLUMN flow_trigger_deliveries.refusals; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_trigger_deliveries.refusals IS 'How many requests the row stands for (1 for a verified request).';


--
-- Name: COLUMN flow_trigger_deliveries.last_received_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_trigger_deliveries.last_received_at IS 'When the latest refused request this row counts was received (null: only the one at received_at).';


--
-- Name: flow_triggers; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.flow_triggers (
    org_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    flow_id uuid NOT NULL,
    type text NOT NULL,
    enabled boolean DEFAULT true NOT NULL,
    secret bytea,
    verification text,
    cron text,
    timezone text,
    catch_up text,
    next_run_at timestamp with time zone,
    last_fired_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    last_skipped_at timestamp with time zone,
    last_skip_reason text,
    CONSTRAINT flow_triggers_catch_up CHECK ((catch_up = ANY (ARRAY['one'::text, 'none'::text]))),
    CONSTRAINT flow_triggers_cron_length CHECK (((char_length(cron) >= 1) AND (char_length(cron) <= 200))),
    CONSTRAINT flow_triggers_schedule_fields CHECK (((type <> 'schedule'::text) OR ((cron IS NOT NULL) AND (timezone IS NOT NULL) AND (catch_up IS NOT NULL) AND (secret IS NULL)))),
    CONSTRAINT flow_triggers_timezone_length CHECK (((char_length(timezone) >= 1) AND (char_length(timezone) <= 100))),
    CONSTRAINT flow_triggers_type CHECK ((type = ANY (ARRAY['webhook'::text, 'schedule'::text]))),
    CONSTRAINT flow_triggers_verification CHECK ((verification = ANY (ARRAY['tolstoy'::text, 'github'::text, 'stripe'::text, 'slack'::text]))),
    CONSTRAINT flow_triggers_webhook_fields CHECK (((type <> 'webhook'::text) OR ((secret IS NOT NULL) AND (verification IS NOT NULL) AND (cron IS NULL))))
);

ALTER TABLE ONLY public.flow_triggers FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE flow_triggers; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.flow_triggers IS 'What starts a flow besides the API: a signed webhook (POST /hooks/{id}) or a cron schedule.';


--
-- Name: COLUMN flow_triggers.secret; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_triggers.secret IS 'Webhook signing secret, encrypted by the application with the organization''s data key; shown once.';


--
-- Name: COLUMN flow_triggers.verification; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_triggers.verification IS 'How a webhook request is verified: tolstoy (X-Tolstoy-Signature), github, stripe or slack.';


--
-- Name: COLUMN flow_triggers.cron; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_triggers.cron IS 'Schedule: cron expression (5 fields, or 6 with seconds last).';


--
-- Name: COLUMN flow_triggers.timezone; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_triggers.timezone IS 'Schedule: IANA time zone the cron expression reads wall-clock time in.';


--
-- Name: COLUMN flow_triggers.catch_up; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_triggers.catch_up IS 'Schedule: after downtime, one = fire once for every missed time, none = skip them.';


--
-- Name: COLUMN flow_triggers.next_run_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_triggers.next_run_at IS 'Schedule: next due time; a worker that fires it advances it in the same transaction. Null: none left.';


--
-- Name: COLUMN flow_triggers.last_skipped_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_triggers.last_skipped_at IS 'Schedule: the last due time (as fired) whose run a quota refused; the schedule went on to its next time.';


--
-- Name: COLUMN flow_triggers.last_skip_reason; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_triggers.last_skip_reason IS 'Schedule: why that run was refused (the quota''s message).';


--
-- Name: flow_versions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.flow_versions (
    org_id uuid NOT NULL,
    flow_id uuid NOT NULL,
    version integer NOT NULL,
    steps jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    on_failure jsonb
);

ALTER TABLE ONLY public.flow_versions FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE flow_versions; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.flow_versions IS 'Immutable history of a flow''s steps; written only by the flows triggers.';


--
-- Name: COLUMN flow_versions.on_failure; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_versions.on_failure IS 'The onFailure steps of this version (null: none).';


--
-- Name: flows; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.flows (
    org_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    name text,
    description text,
    steps jsonb NOT NULL,
    version integer DEFAULT 1 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    on_failure jsonb,
    key text,
    concurrency jsonb,
    CONSTRAINT flows_concurrency_shape CHECK (((concurrency IS NULL) OR
CASE
    WHEN ((jsonb_typeof(concurrency) = 'object'::text) AND (jsonb_typeof((concurrency -> 'limit'::text)) = 'number'::text)) THEN (((((concurrency ->> 'limit'::text))::numeric >= (1)::numeric) AND (((concurrency ->> 'limit'::text))::numeric <= (10000)::numeric)) AND ((NOT (concurrency ? 'key'::text)) OR ((jsonb_typeof((concurrency -> 'key'::text)) = 'string'::text) AND ((char_length((concurrency ->> 'key'::text)) >= 1) AND (char_length((concurrency ->> 'key'::text)) <= 1000)))) AND ((NOT (concurrency ? 'flowLimit'::text)) OR ((concurrency ? 'key'::text) AND (jsonb_typeof((concurrency -> 'flowLimit'::text)) = 'number'::text) AND ((((concurrency ->> 'flowLimit'::text))::numeric >= (1)::numeric) AND (((concurrency ->> 'flowLimit'::text))::numeric <= (10000)::numeric)))) AND ((((concurrency - 'key'::text) - 'limit'::text) - 'flowLimit'::text) = '{}'::jsonb))
    ELSE false
END)),
    CONSTRAINT flows_description_length CHECK ((char_length(description) <= 5000)),
    CONSTRAINT flows_key_format CHECK ((key ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'::text)),
    CONSTRAINT flows_name_length CHECK ((char_length(name) <= 200)),
    CONSTRAINT flows_on_failure_array CHECK (((on_failure IS NULL) OR (jsonb_typeof(on_failure) = 'array'::text))),
    CONSTRAINT flows_steps_array CHECK (((jsonb_typeof(steps) = 'array'::text) AND (jsonb_array_length(steps) > 0))),
    CONSTRAINT flows_version_positive CHECK ((version >= 1))
);

ALTER TABLE ONLY public.flows FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE flows; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.flows IS 'Workflow definitions; steps is the current version, every version is kept in flow_versions.';


--
-- Name: COLUMN flows.steps; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flows.steps IS 'Non-empty JSON array of step objects, validated by the API before storage.';


--
-- Name: COLUMN flows.version; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flows.version IS 'Current version number; equals the highest flow_versions.version of this flow.';


--
-- Name: COLUMN flows.on_failure; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flows.on_failure IS 'Steps run when a run of the flow fails (validated by the API); null: none. Versioned with steps.';


--
-- Name: COLUMN flows.key; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flows.key IS 'Optional short name of the flow, unique per organization (a subflow step may name its child by it: flowKey).';


--
-- Name: COLUMN flows.concurrency; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flows.concurrency IS 'How many runs of the flow run at once: {"limit": n} in all, or {"key": template, "limit": n, "flowLimit": m?} n per key (the template rendered over the run''s variables when it is queued) and m in all. Null: no limit. Runs keep the limits of the moment they are queued.';


--
-- Name: history_bytes; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.history_bytes (
    org_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    month date NOT NULL,
    bytes bigint NOT NULL
);

ALTER TABLE ONLY public.history_bytes FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE history_bytes; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.history_bytes IS 'Bytes of run history per organization and month, as deltas: a finished run adds its size, a purge takes it back; admission folds them. Append-only for the writers.';


--
-- Name: COLUMN history_bytes.month; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.history_bytes.month IS 'First day (UTC) of the month of the run''s partition.';


--
-- Name: oauth_states; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.oauth_states (
    org_id uuid NOT NULL,
    nonce text NOT NULL,
    user_id uuid NOT NULL,
    tool_id uuid NOT NULL,
    redirect_uri text NOT NULL,
    expires_at timestamp with time zone DEFAULT (now() + '00:10:00'::interval) NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    token_url text,
    client_id text,
    CONSTRAINT oauth_states_nonce_length CHECK (((char_length(nonce) >= 16) AND (char_length(nonce) <= 100))),
    CONSTRAINT oauth_states_redirect_uri_length CHECK (((char_length(redirect_uri) >= 1) AND (char_length(redirect_uri) <= 2048)))
);

ALTER TABLE ONLY public.oauth_states FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE oauth_states; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.oauth_states IS 'OAuth logins in progress: consumed (deleted) by their callback, so a state works once; valid 10 minutes.';


--
-- Name: COLUMN oauth_states.token_url; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.oauth_states.token_url IS 'The tokenUrl of the tool''s credential when the login began: the callback exchanges the code only while the credential names the same.';


--
-- Name: COLUMN oauth_states.client_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.oauth_states.client_id IS 'The clientId the provider''s consent page was given: the callback exchanges the code only while the credential names the same.';


--
-- Name: oauth_tokens; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.oauth_tokens (
    org_id uuid NOT NULL,
    credential_id uuid NOT NULL,
    access_token bytea,
    expires_at timestamp with time zone,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    refreshing_by uuid,
    refresh_lease_until timestamp with time zone,
    token_url text,
    client_id text,
    CONSTRAINT oauth_tokens_token_with_expiry CHECK (((access_token IS NULL) = (expires_at IS NULL)))
);

ALTER TABLE ONLY public.oauth_tokens FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE oauth_tokens; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.oauth_tokens IS 'The current OAuth2 access token of each oauth2 credential, shared by all processes (refreshed under a short lease on this row, the provider called outside any transaction).';


--
-- Name: COLUMN oauth_tokens.access_token; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.oauth_tokens.access_token IS 'The access token, encrypted by the application; null until the first refresh of the credential stores one.';


--
-- Name: COLUMN oauth_tokens.expires_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.oauth_tokens.expires_at IS 'When the provider said the token expires (refreshed 30 s before); null until the first refresh stores one.';


--
-- Name: COLUMN oauth_tokens.refreshing_by; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.oauth_tokens.refreshing_by IS 'The random id of the refresh that holds the lease (null: none since the last one stored or gave up).';


--
-- Name: COLUMN oauth_tokens.refresh_lease_until; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.oauth_tokens.refresh_lease_until IS 'Until when that refresh holds the lease: the token request''s timeout plus a margin (30 s at most); a refresher that died leaves a lease that expires.';


--
-- Name: COLUMN oauth_tokens.token_url; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.oauth_tokens.token_url IS 'The tokenUrl of the credential the access token was fetched with: used only while the credential names the same (null: fetched before this was recorded, fetched again).';


--
-- Name: COLUMN oauth_tokens.client_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.oauth_tokens.client_id IS 'The clientId of the credential the access token was fetched with (see token_url).';


--
-- Name: organization_keys; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.organization_keys (
    org_id uuid NOT NULL,
    version integer NOT NULL,
    wrapped bytea NOT NULL,
    kek_id text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    retired_at timestamp with time zone,
    CONSTRAINT organization_keys_kek_id_length CHECK (((char_length(kek_id) >= 1) AND (char_length(kek_id) <= 2048))),
    CONSTRAINT organization_keys_version_positive CHECK ((version >= 1))
);

ALTER TABLE ONLY public.organization_keys FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE organization_keys; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.organization_keys IS 'Data keys of each organization (Fernet), one row per version, wrapped by a key-encryption key kept outside the database; the newest version encrypts, every version decrypts.';


--
-- Name: COLUMN organization_keys.wrapped; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.organization_keys.wrapped IS 'The data key encrypted by the KEK kek_id names; never stored in clear.';


--
-- Name: COLUMN organization_keys.kek_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.organization_keys.kek_id IS 'Which key-encryption key wrapped it: fernet:<fingerprint of a TOLSTOY_ENCRYPTION_KEY key> or kms:<key ARN>.';


--
-- Name: COLUMN organization_keys.retired_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.organization_keys.retired_at IS 'Set by `tolstoy secrets rotate --reencrypt` once every ciphertext moved to a newer version.';


--
-- Name: organization_quotas; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.organization_quotas (
    org_id uuid NOT NULL,
    queued_runs integer,
    stored_bytes bigint,
    requests_per_second integer,
    request_burst integer,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT organization_quotas_queued_runs_range CHECK (((queued_runs >= 0) AND (queued_runs <= 100000000))),
    CONSTRAINT organization_quotas_request_burst_range CHECK (((request_burst >= 1) AND (request_burst <= 1000000))),
    CONSTRAINT organization_quotas_requests_per_second_range CHECK (((requests_per_second >= 1) AND (requests_per_second <= 1000000))),
    CONSTRAINT organization_quotas_stored_bytes_range CHECK (((stored_bytes >= 0) AND (stored_bytes <= '1000000000000000'::bigint)))
);

ALTER TABLE ONLY public.organization_quotas FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE organization_quotas; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.organization_quotas IS 'The operator''s quota overrides of one organization (null: the configured default); PUT /organizations/{id}/quotas.';


--
-- Name: COLUMN organization_quotas.queued_runs; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.organization_quotas.queued_runs IS 'Most runs not finished (queued, running or waiting) at once; 0 refuses every new run.';


--
-- Name: COLUMN organization_quotas.stored_bytes; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.organization_quotas.stored_bytes IS 'Most bytes of run history within retention before new runs are refused.';


--
-- Name: COLUMN organization_quotas.requests_per_second; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.organization_quotas.requests_per_second IS 'API requests per second, per API process (token bucket rate).';


--
-- Name: COLUMN organization_quotas.request_burst; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.organization_quotas.request_burst IS 'API requests one burst may hold, per API process (token bucket size).';


--
-- Name: organization_usage; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.organization_usage (
    org_id uuid NOT NULL,
    runs integer DEFAULT 0 NOT NULL,
    counted_at timestamp with time zone
);

ALTER TABLE ONLY public.organization_usage FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE organization_usage; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.organization_usage IS 'Per organization, the row each admission of a new run locks (tolstoy_admit_run), one admission at a time.';


--
-- Name: COLUMN organization_usage.runs; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.organization_usage.runs IS 'An upper bound of the runs not finished: raised by each admission, set to an exact count when it reaches the quota.';


--
-- Name: COLUMN organization_usage.counted_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.organization_usage.counted_at IS 'When runs was last set to an exact count.';


--
-- Name: organization_worker_time; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.organization_worker_time (
    org_id uuid NOT NULL,
    seconds double precision DEFAULT 0 NOT NULL,
    counted_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT organization_worker_time_seconds_check CHECK ((seconds >= (0)::double precision))
);

ALTER TABLE ONLY public.organization_worker_time FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE organization_worker_time; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.organization_worker_time IS 'Worker time each organization''s runs held lately, decaying with a half-life (TOLSTOY_FAIR_SHARE_HALF_LIFE_SECONDS): what fair claims weigh organizations by.';


--
-- Name: COLUMN organization_worker_time.seconds; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.organization_worker_time.seconds IS 'Worker-seconds as of counted_at, each older second counting half as much per half-life.';


--
-- Name: COLUMN organization_worker_time.counted_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.organization_worker_time.counted_at IS 'When seconds was last brought up to date.';


--
-- Name: organizations; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.organizations (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    name text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT organizations_name_length CHECK (((char_length(name) >= 1) AND (char_length(name) <= 200)))
);

ALTER TABLE ONLY public.organizations FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE organizations; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.organizations IS 'Tenants. Every tenant table references one organization.';


--
-- Name: COLUMN organizations.name; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.organizations.name IS 'Display name, 1 to 200 characters; not unique.';


--
-- Name: schema_migrations; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.schema_migrations (
    version character varying NOT NULL
);


--
-- Name: secret_reads; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.secret_reads (
    org_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    read_at timestamp with time zone DEFAULT now() NOT NULL,
    actor text NOT NULL,
    user_id uuid,
    tool_id uuid,
    credential_id uuid,
    run_id uuid,
    purpose text NOT NULL,
    CONSTRAINT secret_reads_actor_known CHECK ((actor = ANY (ARRAY['api'::text, 'worker'::text, 'cli'::text]))),
    CONSTRAINT secret_reads_purpose_length CHECK (((char_length(purpose) >= 1) AND (char_length(purpose) <= 100)))
);

ALTER TABLE ONLY public.secret_reads FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE secret_reads; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.secret_reads IS 'Audit trail: one row per tool credential read to be decrypted (who, which credential, which run, why).';


--
-- Name: COLUMN secret_reads.actor; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.secret_reads.actor IS 'api (a request), worker (a flow step) or cli (tolstoy secrets rotate --reencrypt).';


--
-- Name: COLUMN secret_reads.user_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.secret_reads.user_id IS 'The acting user (X-User-ID, or the user who started the run); null when none.';


--
-- Name: COLUMN secret_reads.run_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.secret_reads.run_id IS 'The flow run (executionId) whose step used the credential; null outside runs.';


--
-- Name: COLUMN secret_reads.purpose; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.secret_reads.purpose IS 'step, execute (POST /actions/{id}/execute), show (masked listing) or reencrypt.';


--
-- Name: sync_execute_slots; Type: TABLE; Schema: public; Owner: -
--

CREATE UNLOGGED TABLE public.sync_execute_slots (
    org_id uuid NOT NULL,
    slot integer NOT NULL,
    holder uuid,
    expires_at timestamp with time zone DEFAULT '-infinity'::timestamp with time zone NOT NULL
);

ALTER TABLE ONLY public.sync_execute_slots FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE sync_execute_slots; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.sync_execute_slots IS 'Concurrent synchronous action executions per organization (a slot is free once expires_at has passed).';


--
-- Name: tolstoy_clock; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.tolstoy_clock (
    ahead interval DEFAULT '00:00:00'::interval NOT NULL
);


--
-- Name: TABLE tolstoy_clock; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.tolstoy_clock IS 'One row: how far tolstoy_now() is ahead of now(). Zero in production; tests move it. Only the schema owner may change it (no service role holds any privilege on it).';


--
-- Name: COLUMN tolstoy_clock.ahead; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tolstoy_clock.ahead IS 'Added to now() by tolstoy_now() and to clock_timestamp() by tolstoy_clock_timestamp().';


--
-- Name: tool_credentials; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.tool_credentials (
    org_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    tool_id uuid NOT NULL,
    name text NOT NULL,
    type public.tool_auth_type NOT NULL,
    secret bytea NOT NULL,
    is_default boolean DEFAULT false NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    origin_url text NOT NULL,
    CONSTRAINT tool_credentials_name_length CHECK (((char_length(name) >= 1) AND (char_length(name) <= 200))),
    CONSTRAINT tool_credentials_type_not_none CHECK ((type <> 'none'::public.tool_auth_type))
);

ALTER TABLE ONLY public.tool_credentials FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE tool_credentials; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.tool_credentials IS 'Secrets a tool''s requests authenticate with; secret is a Fernet token of the JSON config.';


--
-- Name: COLUMN tool_credentials.secret; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tool_credentials.secret IS 'The JSON config, encrypted with the organization''s data key (tolstoy_key_version(secret) says which version); older rows: a Fernet token under TOLSTOY_ENCRYPTION_KEY.';


--
-- Name: COLUMN tool_credentials.is_default; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tool_credentials.is_default IS 'The credential the engine uses for the tool; at most one per tool.';


--
-- Name: COLUMN tool_credentials.origin_url; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tool_credentials.origin_url IS 'The tool''s base URL when the credential was stored: the engine sends the credential only to its origin.';


--
-- Name: tool_rate_budgets; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.tool_rate_budgets (
    org_id uuid NOT NULL,
    tool_id uuid NOT NULL,
    scope text NOT NULL,
    tat timestamp with time zone,
    next_slot timestamp with time zone,
    paused_until timestamp with time zone,
    learned_requests integer,
    learned_per_seconds double precision,
    learned_at timestamp with time zone,
    window_seconds double precision,
    window_remaining integer,
    window_reset_at timestamp with time zone,
    throttled bigint DEFAULT 0 NOT NULL,
    waited_seconds double precision DEFAULT 0 NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT tool_rate_budgets_learned_per_seconds_check CHECK ((learned_per_seconds > (0)::double precision)),
    CONSTRAINT tool_rate_budgets_learned_requests_check CHECK ((learned_requests > 0)),
    CONSTRAINT tool_rate_budgets_scope_check CHECK (((scope = 'organization'::text) OR (scope ~ '^user:[0-9a-f-]{36}$'::text))),
    CONSTRAINT tool_rate_budgets_throttled_check CHECK ((throttled >= 0)),
    CONSTRAINT tool_rate_budgets_waited_seconds_check CHECK ((waited_seconds >= (0)::double precision)),
    CONSTRAINT tool_rate_budgets_window_seconds_check CHECK ((window_seconds >= (0)::double precision))
);

ALTER TABLE ONLY public.tool_rate_budgets FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE tool_rate_budgets; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.tool_rate_budgets IS 'The rate budget of each credential of a tool (the organization''s, or one user''s connection), shared by every worker: taken by each call (tolstoy_take_budget), taught by the provider''s answers (tolstoy_learn_budget).';


--
-- Name: COLUMN tool_rate_budgets.scope; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tool_rate_budgets.scope IS 'Whose credential: organization, or user:<user id> for that user''s connection.';


--
-- Name: COLUMN tool_rate_budgets.tat; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tool_rate_budgets.tat IS 'GCRA''s theoretical arrival time: the next request goes no sooner, at the declared or learned rate.';


--
-- Name: COLUMN tool_rate_budgets.next_slot; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tool_rate_budgets.next_slot IS 'The next slot a waiting call may reserve (the calls that wait for the budget reserve one each, in turn).';


--
-- Name: COLUMN tool_rate_budgets.paused_until; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tool_rate_budgets.paused_until IS 'No request before this (a 429 or 503 with Retry-After).';


--
-- Name: COLUMN tool_rate_budgets.learned_requests; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tool_rate_budgets.learned_requests IS 'Requests per window, as the provider said (X-RateLimit-Limit, RateLimit-Limit, RateLimit-Policy q).';


--
-- Name: COLUMN tool_rate_budgets.learned_per_seconds; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tool_rate_budgets.learned_per_seconds IS 'The window of learned_requests in seconds, when the provider said it (RateLimit-Policy w).';


--
-- Name: COLUMN tool_rate_budgets.learned_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tool_rate_budgets.learned_at IS 'When the provider last said its limit.';


--
-- Name: COLUMN tool_rate_budgets.window_seconds; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tool_rate_budgets.window_seconds IS 'How long the provider''s windows last, as far as seen (the longest time to its reset it reported).';


--
-- Name: COLUMN tool_rate_budgets.window_remaining; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tool_rate_budgets.window_remaining IS 'Requests left in the provider''s current window (what it reported, less what was sent since).';


--
-- Name: COLUMN tool_rate_budgets.window_reset_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tool_rate_budgets.window_reset_at IS 'When the provider''s current window ends.';


--
-- Name: COLUMN tool_rate_budgets.throttled; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tool_rate_budgets.throttled IS 'How many 429 answers the credential received.';


--
-- Name: COLUMN tool_rate_budgets.waited_seconds; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tool_rate_budgets.waited_seconds IS 'Seconds the calls of this credential waited for its budget.';


--
-- Name: tools; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.tools (
    org_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    name text NOT NULL,
    base_url text NOT NULL,
    auth_type public.tool_auth_type DEFAULT 'none'::public.tool_auth_type NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    honors_idempotency_key boolean DEFAULT false NOT NULL,
    key text,
    rate_limit jsonb,
    CONSTRAINT tools_base_url_scheme CHECK ((base_url ~ '^https?://'::text)),
    CONSTRAINT tools_key_format CHECK ((key ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'::text)),
    CONSTRAINT tools_name_length CHECK (((char_length(name) >= 1) AND (char_length(name) <= 200))),
    CONSTRAINT tools_rate_limit_shape CHECK (((rate_limit IS NULL) OR
CASE
    WHEN ((jsonb_typeof(rate_limit) = 'object'::text) AND (jsonb_typeof((rate_limit -> 'requests'::text)) = 'number'::text) AND (jsonb_typeof((rate_limit -> 'perSeconds'::text)) = 'number'::text)) THEN (((((rate_limit ->> 'requests'::text))::numeric >= (1)::numeric) AND (((rate_limit ->> 'requests'::text))::numeric <= (1000000)::numeric)) AND ((((rate_limit ->> 'perSeconds'::text))::numeric >= (1)::numeric) AND (((rate_limit ->> 'perSeconds'::text))::numeric <= (86400)::numeric)) AND (((rate_limit - 'requests'::text) - 'perSeconds'::text) = '{}'::jsonb))
    ELSE false
END))
);

ALTER TABLE ONLY public.tools FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE tools; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.tools IS 'External HTTP APIs an organization calls from its flows.';


--
-- Name: COLUMN tools.base_url; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tools.base_url IS 'http(s) URL that action endpoints are appended to.';


--
-- Name: COLUMN tools.honors_idempotency_key; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tools.honors_idempotency_key IS 'The tool treats a repeated Idempotency-Key as the same request, so a call whose outcome is unknown may be resent.';


--
-- Name: COLUMN tools.key; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tools.key IS 'Optional short name of the tool, unique per organization (the original service''s /auth/{toolKey} routes).';


--
-- Name: COLUMN tools.rate_limit; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tools.rate_limit IS 'The limit the tool declares, {"requests": n, "perSeconds": s}: every credential of it sends at most n requests per s seconds (spread evenly). Null: only what the provider''s answers teach.';


--
-- Name: user_connections; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.user_connections (
    org_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    user_id uuid NOT NULL,
    tool_id uuid NOT NULL,
    tokens bytea NOT NULL,
    expires_at timestamp with time zone,
    scope text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    origin_url text NOT NULL,
    refreshing_by uuid,
    refresh_lease_until timestamp with time zone,
    token_url text,
    client_id text,
    CONSTRAINT user_connections_scope_length CHECK ((char_length(scope) <= 2000))
);

ALTER TABLE ONLY public.user_connections FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE user_connections; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.user_connections IS 'A user''s own OAuth2 tokens for a tool with a perUser oauth2 credential (authorization code + PKCE).';


--
-- Name: COLUMN user_connections.tokens; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.user_connections.tokens IS 'The access and refresh tokens (JSON), encrypted by the application with the organization''s data key.';


--
-- Name: COLUMN user_connections.expires_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.user_connections.expires_at IS 'When the access token expires; null when the provider did not say.';


--
-- Name: COLUMN user_connections.origin_url; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.user_connections.origin_url IS 'The tool''s base URL when the user connected it: the engine sends the user''s tokens only to its origin.';


--
-- Name: COLUMN user_connections.refreshing_by; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.user_connections.refreshing_by IS 'The random id of the refresh of this user''s tokens that holds the lease (null: none).';


--
-- Name: COLUMN user_connections.refresh_lease_until; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.user_connections.refresh_lease_until IS 'Until when that refresh holds the lease: the token request''s timeout plus a margin (30 s at most).';


--
-- Name: COLUMN user_connections.token_url; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.user_connections.token_url IS 'The tokenUrl of the tool''s credential when the user connected: the tokens are refreshed or sent only while the credential names the same (null: connected before this was recorded, never refreshed).';


--
-- Name: COLUMN user_connections.client_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.user_connections.client_id IS 'The clientId of the tool''s credential when the user connected (see token_url).';


--
-- Name: users; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.users (
    org_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    email text NOT NULL,
    name text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT users_email_length CHECK (((char_length(email) >= 3) AND (char_length(email) <= 320))),
    CONSTRAINT users_name_length CHECK ((char_length(name) <= 200))
);

ALTER TABLE ONLY public.users FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE users; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.users IS 'People acting inside one organization; recorded as the actor of execution logs.';


--
-- Name: COLUMN users.email; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.users.email IS 'Stored as sent; unique per organization ignoring case (users_org_id_email_key).';


--
-- Name: webhook_deliveries; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.webhook_deliveries (
    org_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    seq bigint NOT NULL,
    webhook_id uuid NOT NULL,
    event_id uuid NOT NULL,
    event_type text NOT NULL,
    data jsonb NOT NULL,
    event_created_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    state text DEFAULT 'pending'::text NOT NULL,
    next_attempt_at timestamp with time zone,
    attempts integer DEFAULT 0 NOT NULL,
    attempt_log jsonb DEFAULT '[]'::jsonb NOT NULL,
    lease_owner text,
    lease_token integer,
    lease_expires_at timestamp with time zone,
    first_attempt_at timestamp with time zone,
    last_attempt_at timestamp with time zone,
    last_status_code integer,
    last_error text,
    finished_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    placed boolean DEFAULT false NOT NULL,
    CONSTRAINT webhook_deliveries_attempt_log_array CHECK ((jsonb_typeof(attempt_log) = 'array'::text)),
    CONSTRAINT webhook_deliveries_data_object CHECK ((jsonb_typeof(data) = 'object'::text)),
    CONSTRAINT webhook_deliveries_lease_complete CHECK (((lease_owner IS NULL) = (lease_expires_at IS NULL))),
    CONSTRAINT webhook_deliveries_pending_due CHECK (((state <> 'pending'::text) OR (next_attempt_at IS NOT NULL))),
    CONSTRAINT webhook_deliveries_state CHECK ((state = ANY (ARRAY['pending'::text, 'sending'::text, 'delivered'::text, 'failed'::text, 'cancelled'::text])))
);

ALTER TABLE ONLY public.webhook_deliveries FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE webhook_deliveries; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.webhook_deliveries IS 'Outbox of event webhooks: one row per event and subscribed webhook, written in the transaction of the change it describes; also the queue workers deliver from, in seq order per webhook.';


--
-- Name: COLUMN webhook_deliveries.seq; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.webhook_deliveries.seq IS 'Place in its webhook''s line, taken when the inserting transaction commits, under the line''s lock: a webhook''s deliveries go out in commit order.';


--
-- Name: COLUMN webhook_deliveries.next_attempt_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.webhook_deliveries.next_attempt_at IS 'When a pending delivery is due: sent then, or put off again while an earlier one of its webhook is unfinished.';


--
-- Name: COLUMN webhook_deliveries.attempt_log; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.webhook_deliveries.attempt_log IS 'Every attempt: [{attempt, at, statusCode, durationMs, error}] (a claim whose worker vanished included).';


--
-- Name: COLUMN webhook_deliveries.lease_token; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.webhook_deliveries.lease_token IS 'Fencing token of the current claim (the attempt number).';


--
-- Name: COLUMN webhook_deliveries.placed; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.webhook_deliveries.placed IS 'False until the inserting transaction commits and tolstoy_place_deliveries gives it its seq in its webhook''s line.';


--
-- Name: webhook_deliveries_seq_seq; Type: SEQUENCE; Schema: public; Owner: -
--

ALTER TABLE public.webhook_deliveries ALTER COLUMN seq ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.webhook_deliveries_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: webhook_lines; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.webhook_lines (
    org_id uuid NOT NULL,
    webhook_id uuid NOT NULL,
    due_at timestamp with time zone,
    served_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE ONLY public.webhook_lines FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE webhook_lines; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.webhook_lines IS 'One row per webhook with deliveries: when the claim should look at its line next and when it last served it (round robin). Its row lock orders the webhook''s deliveries by commit.';


--
-- Name: COLUMN webhook_lines.due_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.webhook_lines.due_at IS 'When the line''s first unfinished delivery is due (pending) or its lease ends (sending); null: none is unfinished. Never later than that: a claim that finds it early sets it right.';


--
-- Name: COLUMN webhook_lines.served_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.webhook_lines.served_at IS 'When a claim last handed out a delivery of this line (clock time; null: never): longest ago goes first.';


--
-- Name: webhooks; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.webhooks (
    org_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    name text NOT NULL,
    url text NOT NULL,
    event_types text[] NOT NULL,
    enabled boolean DEFAULT true NOT NULL,
    secret bytea NOT NULL,
    headers bytea,
    header_names text[] DEFAULT '{}'::text[] NOT NULL,
    disabled_reason text,
    failing_since timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT webhooks_disabled_reason_length CHECK ((char_length(disabled_reason) <= 1000)),
    CONSTRAINT webhooks_event_types_known CHECK (((cardinality(event_types) >= 1) AND (event_types <@ ARRAY['flow.started'::text, 'flow.completed'::text, 'flow.failed'::text, 'flow.cancelled'::text, 'step.started'::text, 'step.completed'::text, 'step.failed'::text, 'step.skipped'::text, 'step.outcome_unknown'::text, 'action.executed'::text, 'action.failed'::text, 'webhook.test'::text]))),
    CONSTRAINT webhooks_name_length CHECK (((char_length(name) >= 1) AND (char_length(name) <= 200))),
    CONSTRAINT webhooks_url_length CHECK (((char_length(url) >= 1) AND (char_length(url) <= 2048)))
);

ALTER TABLE ONLY public.webhooks FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE webhooks; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.webhooks IS 'Outbound event webhooks: an organization''s URLs subscribed to event types.';


--
-- Name: COLUMN webhooks.secret; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.webhooks.secret IS 'HMAC-SHA256 signing secret, encrypted by the application with the organization''s data key; shown once.';


--
-- Name: COLUMN webhooks.headers; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.webhooks.headers IS 'Custom headers sent with every delivery: a JSON object encrypted like the secret (values may be credentials).';


--
-- Name: COLUMN webhooks.header_names; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.webhooks.header_names IS 'The names of the custom headers, shown with masked values.';


--
-- Name: COLUMN webhooks.disabled_reason; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.webhooks.disabled_reason IS 'Why the workers disabled the webhook (its deliveries kept failing).';


--
-- Name: COLUMN webhooks.failing_since; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.webhooks.failing_since IS 'First failed attempt since the last successful one; past the give-up period the webhook is disabled.';


--
-- Name: execution_logs_default; Type: TABLE ATTACH; Schema: public; Owner: -
--

ALTER TABLE ONLY public.execution_logs ATTACH PARTITION public.execution_logs_default DEFAULT;


--
-- Name: flow_run_steps_default; Type: TABLE ATTACH; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_run_steps ATTACH PARTITION public.flow_run_steps_default DEFAULT;


--
-- Name: flow_runs_default; Type: TABLE ATTACH; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_runs ATTACH PARTITION public.flow_runs_default DEFAULT;


--
-- Name: actions actions_org_id_key_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.actions
    ADD CONSTRAINT actions_org_id_key_key UNIQUE (org_id, key);


--
-- Name: actions actions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.actions
    ADD CONSTRAINT actions_pkey PRIMARY KEY (org_id, id);


--
-- Name: api_keys api_keys_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (org_id, id);


--
-- Name: audit_events audit_events_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit_events
    ADD CONSTRAINT audit_events_pkey PRIMARY KEY (org_id, id);


--
-- Name: execution_logs execution_logs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.execution_logs
    ADD CONSTRAINT execution_logs_pkey PRIMARY KEY (org_id, id, created_at);


--
-- Name: execution_logs_default execution_logs_default_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.execution_logs_default
    ADD CONSTRAINT execution_logs_default_pkey PRIMARY KEY (org_id, id, created_at);


--
-- Name: flow_run_signals flow_run_signals_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_run_signals
    ADD CONSTRAINT flow_run_signals_pkey PRIMARY KEY (org_id, id);


--
-- Name: flow_run_steps flow_run_steps_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_run_steps
    ADD CONSTRAINT flow_run_steps_pkey PRIMARY KEY (org_id, run_id, step_id, run_created_at);


--
-- Name: flow_run_steps_default flow_run_steps_default_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_run_steps_default
    ADD CONSTRAINT flow_run_steps_default_pkey PRIMARY KEY (org_id, run_id, step_id, run_created_at);


--
-- Name: flow_runs flow_runs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_runs
    ADD CONSTRAINT flow_runs_pkey PRIMARY KEY (org_id, id, created_at);


--
-- Name: flow_runs_default flow_runs_default_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_runs_default
    ADD CONSTRAINT flow_runs_default_pkey PRIMARY KEY (org_id, id, created_at);


--
-- Name: flow_runs flow_runs_waiting_for_kind; Type: CHECK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE public.flow_runs
    ADD CONSTRAINT flow_runs_waiting_for_kind CHECK ((waiting_for = ANY (ARRAY['signal'::text, 'outcomeUnknown'::text, 'child'::text, 'retry'::text, 'delay'::text, 'rateLimit'::text, 'concurrency'::text]))) NOT VALID;


--
-- Name: flow_step_slots flow_step_slots_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_step_slots
    ADD CONSTRAINT flow_step_slots_pkey PRIMARY KEY (org_id, flow_id, step_id, key, run_id);


--
-- Name: flow_trigger_deliveries flow_trigger_deliveries_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_trigger_deliveries
    ADD CONSTRAINT flow_trigger_deliveries_pkey PRIMARY KEY (org_id, id);


--
-- Name: flow_triggers flow_triggers_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_triggers
    ADD CONSTRAINT flow_triggers_pkey PRIMARY KEY (org_id, id);


--
-- Name: flow_versions flow_versions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_versions
    ADD CONSTRAINT flow_versions_pkey PRIMARY KEY (org_id, flow_id, version);


--
-- Name: flows flows_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flows
    ADD CONSTRAINT flows_pkey PRIMARY KEY (org_id, id);


--
-- Name: history_bytes history_bytes_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.history_bytes
    ADD CONSTRAINT history_bytes_pkey PRIMARY KEY (org_id, id);


--
-- Name: oauth_states oauth_states_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.oauth_states
    ADD CONSTRAINT oauth_states_pkey PRIMARY KEY (org_id, nonce);


--
-- Name: oauth_tokens oauth_tokens_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.oauth_tokens
    ADD CONSTRAINT oauth_tokens_pkey PRIMARY KEY (org_id, credential_id);


--
-- Name: organization_keys organization_keys_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.organization_keys
    ADD CONSTRAINT organization_keys_pkey PRIMARY KEY (org_id, version);


--
-- Name: organization_quotas organization_quotas_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.organization_quotas
    ADD CONSTRAINT organization_quotas_pkey PRIMARY KEY (org_id);


--
-- Name: organization_usage organization_usage_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.organization_usage
    ADD CONSTRAINT organization_usage_pkey PRIMARY KEY (org_id);


--
-- Name: organization_worker_time organization_worker_time_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.organization_worker_time
    ADD CONSTRAINT organization_worker_time_pkey PRIMARY KEY (org_id);


--
-- Name: organizations organizations_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.organizations
    ADD CONSTRAINT organizations_pkey PRIMARY KEY (id);


--
-- Name: schema_migrations schema_migrations_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);


--
-- Name: secret_reads secret_reads_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.secret_reads
    ADD CONSTRAINT secret_reads_pkey PRIMARY KEY (org_id, id);


--
-- Name: sync_execute_slots sync_execute_slots_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.sync_execute_slots
    ADD CONSTRAINT sync_execute_slots_pkey PRIMARY KEY (org_id, slot);


--
-- Name: tool_credentials tool_credentials_org_id_tool_id_name_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.tool_credentials
    ADD CONSTRAINT tool_credentials_org_id_tool_id_name_key UNIQUE (org_id, tool_id, name);


--
-- Name: tool_credentials tool_credentials_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.tool_credentials
    ADD CONSTRAINT tool_credentials_pkey PRIMARY KEY (org_id, id);


--
-- Name: tool_rate_budgets tool_rate_budgets_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.tool_rate_budgets
    ADD CONSTRAINT tool_rate_budgets_pkey PRIMARY KEY (org_id, tool_id, scope);


--
-- Name: tools tools_org_id_name_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.tools
    ADD CONSTRAINT tools_org_id_name_key UNIQUE (org_id, name);


--
-- Name: tools tools_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.tools
    ADD CONSTRAINT tools_pkey PRIMARY KEY (org_id, id);


--
-- Name: user_connections user_connections_org_id_user_id_tool_id_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.user_connections
    ADD CONSTRAINT user_connections_org_id_user_id_tool_id_key UNIQUE (org_id, user_id, tool_id);


--
-- Name: user_connections user_connections_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.user_connections
    ADD CONSTRAINT user_connections_pkey PRIMARY KEY (org_id, id);


--
-- Name: users users_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (org_id, id);


--
-- Name: webhook_deliveries webhook_deliveries_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhook_deliveries
    ADD CONSTRAINT webhook_deliveries_pkey PRIMARY KEY (org_id, id);


--
-- Name: webhook_lines webhook_lines_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhook_lines
    ADD CONSTRAINT webhook_lines_pkey PRIMARY KEY (org_id, webhook_id);


--
-- Name: webhooks webhooks_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhooks
    ADD CONSTRAINT webhooks_pkey PRIMARY KEY (org_id, id);


--
-- Name: actions_org_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX actions_org_id_created_at_id_idx ON public.actions USING btree (org_id, created_at DESC, id DESC);


--
-- Name: actions_org_id_tool_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX actions_org_id_tool_id_created_at_id_idx ON public.actions USING btree (org_id, tool_id, created_at DESC, id DESC);


--
-- Name: api_keys_key_hash_key; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX api_keys_key_hash_key ON public.api_keys USING btree (key_hash);


--
-- Name: api_keys_org_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX api_keys_org_id_created_at_id_idx ON public.api_keys USING btree (org_id, created_at DESC, id DESC);


--
-- Name: api_keys_org_id_user_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX api_keys_org_id_user_id_idx ON public.api_keys USING btree (org_id, user_id) WHERE (user_id IS NOT NULL);


--
-- Name: audit_events_created_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX audit_events_created_idx ON public.audit_events USING btree (created_at);


--
-- Name: audit_events_org_created_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX audit_events_org_created_idx ON public.audit_events USING btree (org_id, created_at DESC, id DESC);


--
-- Name: audit_events_target_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX audit_events_target_idx ON public.audit_events USING btree (org_id, target_type, target_id, created_at DESC, id DESC);


--
-- Name: execution_logs_org_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX execution_logs_org_id_created_at_id_idx ON ONLY public.execution_logs USING btree (org_id, created_at DESC, id DESC);


--
-- Name: execution_logs_default_org_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX execution_logs_default_org_id_created_at_id_idx ON public.execution_logs_default USING btree (org_id, created_at DESC, id DESC);


--
-- Name: execution_logs_org_id_execution_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX execution_logs_org_id_execution_id_created_at_id_idx ON ONLY public.execution_logs USING btree (org_id, execution_id, created_at DESC, id DESC);


--
-- Name: execution_logs_default_org_id_execution_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX execution_logs_default_org_id_execution_id_created_at_id_idx ON public.execution_logs_default USING btree (org_id, execution_id, created_at DESC, id DESC);


--
-- Name: execution_logs_org_id_flow_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX execution_logs_org_id_flow_id_created_at_id_idx ON ONLY public.execution_logs USING btree (org_id, flow_id, created_at DESC, id DESC);


--
-- Name: execution_logs_default_org_id_flow_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX execution_logs_default_org_id_flow_id_created_at_id_idx ON public.execution_logs_default USING btree (org_id, flow_id, created_at DESC, id DESC);


--
-- Name: execution_logs_org_id_status_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX execution_logs_org_id_status_created_at_id_idx ON ONLY public.execution_logs USING btree (org_id, status, created_at DESC, id DESC);


--
-- Name: execution_logs_default_org_id_status_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX execution_logs_default_org_id_status_created_at_id_idx ON public.execution_logs_default USING btree (org_id, status, created_at DESC, id DESC);


--
-- Name: execution_logs_org_id_user_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX execution_logs_org_id_user_id_created_at_id_idx ON ONLY public.execution_logs USING btree (org_id, user_id, created_at DESC, id DESC);


--
-- Name: execution_logs_default_org_id_user_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX execution_logs_default_org_id_user_id_created_at_id_idx ON public.execution_logs_default USING btree (org_id, user_id, created_at DESC, id DESC);


--
-- Name: flow_run_signals_created_at_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_run_signals_created_at_idx ON public.flow_run_signals USING btree (created_at);


--
-- Name: flow_run_signals_idempotency_key_key; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX flow_run_signals_idempotency_key_key ON public.flow_run_signals USING btree (org_id, run_id, idempotency_key) WHERE (idempotency_key IS NOT NULL);


--
-- Name: flow_run_signals_link_id_key; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX flow_run_signals_link_id_key ON public.flow_run_signals USING btree (org_id, link_id) WHERE (link_id IS NOT NULL);


--
-- Name: flow_run_signals_org_id_run_id_signal_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_run_signals_org_id_run_id_signal_idx ON public.flow_run_signals USING btree (org_id, run_id, signal, created_at);


--
-- Name: flow_run_steps_outcome_unknown_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_run_steps_outcome_unknown_idx ON ONLY public.flow_run_steps USING btree (updated_at) WHERE (status = 'outcome_unknown'::text);


--
-- Name: flow_run_steps_default_updated_at_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_run_steps_default_updated_at_idx ON public.flow_run_steps_default USING btree (updated_at) WHERE (status = 'outcome_unknown'::text);


--
-- Name: flow_runs_running_lease_expires_at_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_running_lease_expires_at_idx ON ONLY public.flow_runs USING btree (lease_expires_at) WHERE (status = 'running'::public.flow_run_status);


--
-- Name: flow_runs_default_lease_expires_at_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_default_lease_expires_at_idx ON public.flow_runs_default USING btree (lease_expires_at) WHERE (status = 'running'::public.flow_run_status);


--
-- Name: flow_runs_org_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_org_id_created_at_id_idx ON ONLY public.flow_runs USING btree (org_id, created_at DESC, id DESC);


--
-- Name: INDEX flow_runs_org_id_created_at_id_idx; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON INDEX public.flow_runs_org_id_created_at_id_idx IS 'An organization''s runs newest first (the console''s runs page). Built per partition, concurrently, by tolstoy db up / tolstoy db indexes.';


--
-- Name: flow_runs_default_org_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_default_org_id_created_at_id_idx ON public.flow_runs_default USING btree (org_id, created_at DESC, id DESC);


--
-- Name: flow_runs_org_id_flow_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_org_id_flow_id_created_at_id_idx ON ONLY public.flow_runs USING btree (org_id, flow_id, created_at DESC, id DESC);


--
-- Name: flow_runs_default_org_id_flow_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_default_org_id_flow_id_created_at_id_idx ON public.flow_runs_default USING btree (org_id, flow_id, created_at DESC, id DESC);


--
-- Name: flow_runs_org_id_flow_id_idempotency_key_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_org_id_flow_id_idempotency_key_idx ON ONLY public.flow_runs USING btree (org_id, flow_id, idempotency_key) WHERE (idempotency_key IS NOT NULL);


--
-- Name: flow_runs_default_org_id_flow_id_idempotency_key_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_default_org_id_flow_id_idempotency_key_idx ON public.flow_runs_default USING btree (org_id, flow_id, idempotency_key) WHERE (idempotency_key IS NOT NULL);


--
-- Name: flow_runs_org_id_flow_id_waiting_for_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_org_id_flow_id_waiting_for_idx ON ONLY public.flow_runs USING btree (org_id, flow_id, waiting_for, created_at DESC, id DESC) WHERE (waiting_for IS NOT NULL);


--
-- Name: flow_runs_default_org_id_flow_id_waiting_for_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_default_org_id_flow_id_waiting_for_idx ON public.flow_runs_default USING btree (org_id, flow_id, waiting_for, created_at DESC, id DESC) WHERE (waiting_for IS NOT NULL);


--
-- Name: flow_runs_org_id_unfinished_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_org_id_unfinished_idx ON ONLY public.flow_runs USING btree (org_id) WHERE (status = ANY (ARRAY['queued'::public.flow_run_status, 'running'::public.flow_run_status, 'waiting'::public.flow_run_status]));


--
-- Name: flow_runs_default_org_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_default_org_id_idx ON public.flow_runs_default USING btree (org_id) WHERE (status = ANY (ARRAY['queued'::public.flow_run_status, 'running'::public.flow_run_status, 'waiting'::public.flow_run_status]));


--
-- Name: flow_runs_org_id_parent_run_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_org_id_parent_run_id_idx ON ONLY public.flow_runs USING btree (org_id, parent_run_id, parent_step_id) WHERE (parent_run_id IS NOT NULL);


--
-- Name: flow_runs_default_org_id_parent_run_id_parent_step_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_default_org_id_parent_run_id_parent_step_id_idx ON public.flow_runs_default USING btree (org_id, parent_run_id, parent_step_id) WHERE (parent_run_id IS NOT NULL);


--
-- Name: flow_runs_org_id_rerun_of_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_org_id_rerun_of_idx ON ONLY public.flow_runs USING btree (org_id, rerun_of, created_at) WHERE (rerun_of IS NOT NULL);


--
-- Name: flow_runs_default_org_id_rerun_of_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_default_org_id_rerun_of_idx ON public.flow_runs_default USING btree (org_id, rerun_of, created_at) WHERE (rerun_of IS NOT NULL);


--
-- Name: flow_runs_org_id_retry_of_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_org_id_retry_of_idx ON ONLY public.flow_runs USING btree (org_id, retry_of) WHERE (retry_of IS NOT NULL);


--
-- Name: flow_runs_default_org_id_retry_of_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_default_org_id_retry_of_idx ON public.flow_runs_default USING btree (org_id, retry_of) WHERE (retry_of IS NOT NULL);


--
-- Name: flow_runs_queued_org_id_run_after_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_queued_org_id_run_after_idx ON ONLY public.flow_runs USING btree (org_id, run_after, id) WHERE (status = 'queued'::public.flow_run_status);


--
-- Name: flow_runs_default_org_id_run_after_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_default_org_id_run_after_id_idx ON public.flow_runs_default USING btree (org_id, run_after, id) WHERE (status = 'queued'::public.flow_run_status);


--
-- Name: flow_runs_org_id_user_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_org_id_user_id_idx ON ONLY public.flow_runs USING btree (org_id, user_id);


--
-- Name: flow_runs_default_org_id_user_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_default_org_id_user_id_idx ON public.flow_runs_default USING btree (org_id, user_id);


--
-- Name: flow_runs_queued_run_after_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_queued_run_after_idx ON ONLY public.flow_runs USING btree (run_after) WHERE (status = 'queued'::public.flow_run_status);


--
-- Name: flow_runs_default_run_after_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_default_run_after_idx ON public.flow_runs_default USING btree (run_after) WHERE (status = 'queued'::public.flow_run_status);


--
-- Name: flow_runs_running_org_id_flow_id_concurrency_key_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_running_org_id_flow_id_concurrency_key_idx ON ONLY public.flow_runs USING btree (org_id, flow_id, concurrency_key) WHERE (status = 'running'::public.flow_run_status);


--
-- Name: flow_runs_default_running_org_id_flow_id_concurrency_key_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_default_running_org_id_flow_id_concurrency_key_idx ON public.flow_runs_default USING btree (org_id, flow_id, concurrency_key) WHERE (status = 'running'::public.flow_run_status);


--
-- Name: flow_step_slots_org_id_run_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_step_slots_org_id_run_id_idx ON public.flow_step_slots USING btree (org_id, run_id);


--
-- Name: flow_trigger_deliveries_delivery_id_key; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX flow_trigger_deliveries_delivery_id_key ON public.flow_trigger_deliveries USING btree (org_id, trigger_id, delivery_id) WHERE (verdict = 'valid'::text);


--
-- Name: flow_trigger_deliveries_org_id_trigger_id_received_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_trigger_deliveries_org_id_trigger_id_received_at_id_idx ON public.flow_trigger_deliveries USING btree (org_id, trigger_id, received_at DESC, id DESC);


--
-- Name: flow_trigger_deliveries_received_at_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_trigger_deliveries_received_at_idx ON public.flow_trigger_deliveries USING btree (received_at);


--
-- Name: flow_trigger_deliveries_refusal_key; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX flow_trigger_deliveries_refusal_key ON public.flow_trigger_deliveries USING btree (org_id, trigger_id, refused_hour, verdict, source) WHERE (verdict <> 'valid'::text);


--
-- Name: flow_trigger_deliveries_signature_key; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX flow_trigger_deliveries_signature_key ON public.flow_trigger_deliveries USING btree (org_id, trigger_id, signature) WHERE (verdict = 'valid'::text);


--
-- Name: flow_triggers_due_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_triggers_due_idx ON public.flow_triggers USING btree (next_run_at) WHERE ((type = 'schedule'::text) AND enabled AND (next_run_at IS NOT NULL));


--
-- Name: flow_triggers_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_triggers_id_idx ON public.flow_triggers USING btree (id);


--
-- Name: flow_triggers_org_id_flow_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_triggers_org_id_flow_id_created_at_id_idx ON public.flow_triggers USING btree (org_id, flow_id, created_at DESC, id DESC);


--
-- Name: flows_org_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flows_org_id_created_at_id_idx ON public.flows USING btree (org_id, created_at DESC, id DESC);


--
-- Name: flows_org_id_key_key; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX flows_org_id_key_key ON public.flows USING btree (org_id, key) WHERE (key IS NOT NULL);


--
-- Name: oauth_states_org_id_expires_at_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX oauth_states_org_id_expires_at_idx ON public.oauth_states USING btree (org_id, expires_at);


--
-- Name: oauth_states_org_id_tool_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX oauth_states_org_id_tool_id_idx ON public.oauth_states USING btree (org_id, tool_id);


--
-- Name: oauth_states_org_id_user_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX oauth_states_org_id_user_id_idx ON public.oauth_states USING btree (org_id, user_id);


--
-- Name: organizations_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX organizations_created_at_id_idx ON public.organizations USING btree (created_at DESC, id DESC);


--
-- Name: secret_reads_org_id_read_at_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX secret_reads_org_id_read_at_idx ON public.secret_reads USING btree (org_id, read_at DESC);


--
-- Name: tool_credentials_one_default_per_tool; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX tool_credentials_one_default_per_tool ON public.tool_credentials USING btree (org_id, tool_id) WHERE is_default;


--
-- Name: tools_org_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX tools_org_id_created_at_id_idx ON public.tools USING btree (org_id, created_at DESC, id DESC);


--
-- Name: tools_org_id_key_key; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX tools_org_id_key_key ON public.tools USING btree (org_id, key) WHERE (key IS NOT NULL);


--
-- Name: user_connections_org_id_tool_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX user_connections_org_id_tool_id_idx ON public.user_connections USING btree (org_id, tool_id);


--
-- Name: user_connections_org_id_user_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX user_connections_org_id_user_id_created_at_id_idx ON public.user_connections USING btree (org_id, user_id, created_at DESC, id DESC);


--
-- Name: users_org_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX users_org_id_created_at_id_idx ON public.users USING btree (org_id, created_at DESC, id DESC);


--
-- Name: users_org_id_email_key; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX users_org_id_email_key ON public.users USING btree (org_id, lower(email));


--
-- Name: webhook_deliveries_finished_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX webhook_deliveries_finished_idx ON public.webhook_deliveries USING btree (created_at) WHERE (state = ANY (ARRAY['delivered'::text, 'failed'::text, 'cancelled'::text]));


--
-- Name: webhook_deliveries_line_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX webhook_deliveries_line_idx ON public.webhook_deliveries USING btree (org_id, webhook_id, seq) WHERE (state = ANY (ARRAY['pending'::text, 'sending'::text]));


--
-- Name: webhook_deliveries_org_id_webhook_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX webhook_deliveries_org_id_webhook_id_created_at_id_idx ON public.webhook_deliveries USING btree (org_id, webhook_id, created_at DESC, id DESC);


--
-- Name: webhook_deliveries_unplaced_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX webhook_deliveries_unplaced_idx ON public.webhook_deliveries USING btree (seq) WHERE (NOT placed);


--
-- Name: webhook_lines_due_at_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX webhook_lines_due_at_idx ON public.webhook_lines USING btree (due_at) WHERE (due_at IS NOT NULL);


--
-- Name: webhook_lines_org_id_served_at_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX webhook_lines_org_id_served_at_idx ON public.webhook_lines USING btree (org_id, served_at);


--
-- Name: webhooks_org_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX webhooks_org_id_created_at_id_idx ON public.webhooks USING btree (org_id, created_at DESC, id DESC);


--
-- Name: execution_logs_default_org_id_created_at_id_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.execution_logs_org_id_created_at_id_idx ATTACH PARTITION public.execution_logs_default_org_id_created_at_id_idx;


--
-- Name: execution_logs_default_org_id_execution_id_created_at_id_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.execution_logs_org_id_execution_id_created_at_id_idx ATTACH PARTITION public.execution_logs_default_org_id_execution_id_created_at_id_idx;


--
-- Name: execution_logs_default_org_id_flow_id_created_at_id_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.execution_logs_org_id_flow_id_created_at_id_idx ATTACH PARTITION public.execution_logs_default_org_id_flow_id_created_at_id_idx;


--
-- Name: execution_logs_default_org_id_status_created_at_id_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.execution_logs_org_id_status_created_at_id_idx ATTACH PARTITION public.execution_logs_default_org_id_status_created_at_id_idx;


--
-- Name: execution_logs_default_org_id_user_id_created_at_id_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.execution_logs_org_id_user_id_created_at_id_idx ATTACH PARTITION public.execution_logs_default_org_id_user_id_created_at_id_idx;


--
-- Name: execution_logs_default_pkey; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.execution_logs_pkey ATTACH PARTITION public.execution_logs_default_pkey;


--
-- Name: flow_run_steps_default_pkey; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.flow_run_steps_pkey ATTACH PARTITION public.flow_run_steps_default_pkey;


--
-- Name: flow_run_steps_default_updated_at_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.flow_run_steps_outcome_unknown_idx ATTACH PARTITION public.flow_run_steps_default_updated_at_idx;


--
-- Name: flow_runs_default_lease_expires_at_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.flow_runs_running_lease_expires_at_idx ATTACH PARTITION public.flow_runs_default_lease_expires_at_idx;


--
-- Name: flow_runs_default_org_id_created_at_id_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.flow_runs_org_id_created_at_id_idx ATTACH PARTITION public.flow_runs_default_org_id_created_at_id_idx;


--
-- Name: flow_runs_default_org_id_flow_id_created_at_id_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.flow_runs_org_id_flow_id_created_at_id_idx ATTACH PARTITION public.flow_runs_default_org_id_flow_id_created_at_id_idx;


--
-- Name: flow_runs_default_org_id_flow_id_idempotency_key_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.flow_runs_org_id_flow_id_idempotency_key_idx ATTACH PARTITION public.flow_runs_default_org_id_flow_id_idempotency_key_idx;


--
-- Name: flow_runs_default_org_id_flow_id_waiting_for_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.flow_runs_org_id_flow_id_waiting_for_idx ATTACH PARTITION public.flow_runs_default_org_id_flow_id_waiting_for_idx;


--
-- Name: flow_runs_default_org_id_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.flow_runs_org_id_unfinished_idx ATTACH PARTITION public.flow_runs_default_org_id_idx;


--
-- Name: flow_runs_default_org_id_parent_run_id_parent_step_id_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.flow_runs_org_id_parent_run_id_idx ATTACH PARTITION public.flow_runs_default_org_id_parent_run_id_parent_step_id_idx;


--
-- Name: flow_runs_default_org_id_rerun_of_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.flow_runs_org_id_rerun_of_idx ATTACH PARTITION public.flow_runs_default_org_id_rerun_of_idx;


--
-- Name: flow_runs_default_org_id_retry_of_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.flow_runs_org_id_retry_of_idx ATTACH PARTITION public.flow_runs_default_org_id_retry_of_idx;


--
-- Name: flow_runs_default_org_id_run_after_id_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.flow_runs_queued_org_id_run_after_idx ATTACH PARTITION public.flow_runs_default_org_id_run_after_id_idx;


--
-- Name: flow_runs_default_org_id_user_id_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.flow_runs_org_id_user_id_idx ATTACH PARTITION public.flow_runs_default_org_id_user_id_idx;


--
-- Name: flow_runs_default_pkey; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.flow_runs_pkey ATTACH PARTITION public.flow_runs_default_pkey;


--
-- Name: flow_runs_default_run_after_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.flow_runs_queued_run_after_idx ATTACH PARTITION public.flow_runs_default_run_after_idx;


--
-- Name: flow_runs_default_running_org_id_flow_id_concurrency_key_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.flow_runs_running_org_id_flow_id_concurrency_key_idx ATTACH PARTITION public.flow_runs_default_running_org_id_flow_id_concurrency_key_idx;


--
-- Name: actions actions_audit; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER actions_audit AFTER INSERT OR DELETE OR UPDATE ON public.actions FOR EACH ROW EXECUTE FUNCTION public.tolstoy_audit('action');


--
-- Name: actions actions_bump_version; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER actions_bump_version BEFORE UPDATE ON public.actions FOR EACH ROW EXECUTE FUNCTION public.actions_bump_version();


--
-- Name: actions actions_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER actions_touch_updated_at BEFORE UPDATE ON public.actions FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: api_keys api_keys_audit; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER api_keys_audit AFTER INSERT OR DELETE OR UPDATE ON public.api_keys FOR EACH ROW EXECUTE FUNCTION public.tolstoy_audit('api_key', 'last_used_at');


--
-- Name: api_keys api_keys_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER api_keys_touch_updated_at BEFORE UPDATE ON public.api_keys FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: execution_logs execution_logs_count_stored_bytes_delete; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER execution_logs_count_stored_bytes_delete AFTER DELETE ON public.execution_logs FOR EACH ROW WHEN (public.tolstoy_log_of_no_run(old.*)) EXECUTE FUNCTION public.execution_logs_count_stored_bytes();


--
-- Name: execution_logs execution_logs_count_stored_bytes_insert; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER execution_logs_count_stored_bytes_insert AFTER INSERT ON public.execution_logs FOR EACH ROW WHEN (public.tolstoy_log_of_no_run(new.*)) EXECUTE FUNCTION public.execution_logs_count_stored_bytes();


--
-- Name: execution_logs execution_logs_count_stored_bytes_update; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER execution_logs_count_stored_bytes_update AFTER UPDATE OF inputs, outputs, error ON public.execution_logs FOR EACH ROW WHEN (public.tolstoy_log_of_no_run(old.*)) EXECUTE FUNCTION public.execution_logs_count_stored_bytes();


--
-- Name: execution_logs execution_logs_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER execution_logs_touch_updated_at BEFORE UPDATE ON public.execution_logs FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: flow_run_signals flow_run_signals_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_run_signals_touch_updated_at BEFORE UPDATE ON public.flow_run_signals FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: flow_run_steps flow_run_steps_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_run_steps_touch_updated_at BEFORE UPDATE ON public.flow_run_steps FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: flow_run_steps flow_run_steps_webhook_events_insert; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_run_steps_webhook_events_insert AFTER INSERT ON public.flow_run_steps FOR EACH ROW WHEN (((strpos(new.step_id, '['::text) = 0) AND (new.started_at >= now()))) EXECUTE FUNCTION public.tolstoy_step_webhook_events();


--
-- Name: flow_run_steps flow_run_steps_webhook_events_update; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_run_steps_webhook_events_update AFTER UPDATE OF status ON public.flow_run_steps FOR EACH ROW WHEN (((strpos(new.step_id, '['::text) = 0) AND (new.status IS DISTINCT FROM old.status))) EXECUTE FUNCTION public.tolstoy_step_webhook_events();


--
-- Name: flow_runs flow_runs_count_stored_bytes; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_runs_count_stored_bytes BEFORE UPDATE OF status ON public.flow_runs FOR EACH ROW WHEN (((old.status = ANY (ARRAY['queued'::public.flow_run_status, 'running'::public.flow_run_status, 'waiting'::public.flow_run_status])) AND (new.status = ANY (ARRAY['completed'::public.flow_run_status, 'failed'::public.flow_run_status, 'cancelled'::public.flow_run_status])))) EXECUTE FUNCTION public.flow_runs_count_stored_bytes();


--
-- Name: flow_runs flow_runs_inherit_acting; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_runs_inherit_acting BEFORE UPDATE OF parent_run_id ON public.flow_runs FOR EACH ROW WHEN (((new.parent_run_id IS NOT NULL) AND (new.parent_run_id IS DISTINCT FROM old.parent_run_id))) EXECUTE FUNCTION public.flow_runs_inherit_acting();


--
-- Name: flow_runs flow_runs_notify; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_runs_notify AFTER INSERT OR UPDATE OF status, run_after ON public.flow_runs FOR EACH ROW WHEN ((new.status = 'queued'::public.flow_run_status)) EXECUTE FUNCTION public.flow_runs_notify();


--
-- Name: flow_runs flow_runs_plan_on_failure; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_runs_plan_on_failure BEFORE INSERT ON public.flow_runs FOR EACH ROW EXECUTE FUNCTION public.flow_runs_plan_on_failure();


--
-- Name: flow_runs flow_runs_release_slot; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_runs_release_slot AFTER UPDATE OF status ON public.flow_runs FOR EACH ROW WHEN (((old.status = 'running'::public.flow_run_status) AND (new.status <> 'running'::public.flow_run_status) AND (new.concurrency IS NOT NULL))) EXECUTE FUNCTION public.flow_runs_release_slot();


--
-- Name: flow_runs flow_runs_release_step_slots; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_runs_release_step_slots AFTER UPDATE OF status ON public.flow_runs FOR EACH ROW WHEN ((new.takes_step_slots AND (new.status <> 'running'::public.flow_run_status) AND (old.status IS DISTINCT FROM new.status))) EXECUTE FUNCTION public.flow_runs_release_step_slots();


--
-- Name: flow_runs flow_runs_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_runs_touch_updated_at BEFORE UPDATE ON public.flow_runs FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: flow_runs flow_runs_uncount_stored_bytes; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_runs_uncount_stored_bytes AFTER DELETE ON public.flow_runs REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION public.flow_runs_uncount_stored_bytes();


--
-- Name: flow_runs flow_runs_waiting_for; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_runs_waiting_for BEFORE UPDATE OF status, run_after, waiting_for ON public.flow_runs FOR EACH ROW WHEN (((old.status IS DISTINCT FROM new.status) OR (old.run_after IS DISTINCT FROM new.run_after) OR (old.waiting_for IS DISTINCT FROM new.waiting_for))) EXECUTE FUNCTION public.flow_runs_waiting_for();


--
-- Name: flow_runs flow_runs_wake_parent; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_runs_wake_parent AFTER UPDATE OF status ON public.flow_runs FOR EACH ROW WHEN (((new.parent_run_id IS NOT NULL) AND (new.status = ANY (ARRAY['completed'::public.flow_run_status, 'failed'::public.flow_run_status, 'cancelled'::public.flow_run_status])) AND (old.status IS DISTINCT FROM new.status))) EXECUTE FUNCTION public.flow_runs_wake_parent();


--
-- Name: flow_runs flow_runs_webhook_events; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_runs_webhook_events AFTER UPDATE ON public.flow_runs FOR EACH ROW WHEN ((((old.started_at IS NULL) AND (new.started_at IS NOT NULL)) OR ((new.status IS DISTINCT FROM old.status) AND (new.status = ANY (ARRAY['completed'::public.flow_run_status, 'failed'::public.flow_run_status, 'cancelled'::public.flow_run_status]))))) EXECUTE FUNCTION public.tolstoy_run_webhook_events();


--
-- Name: flow_triggers flow_triggers_audit; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_triggers_audit AFTER INSERT OR DELETE OR UPDATE ON public.flow_triggers FOR EACH ROW EXECUTE FUNCTION public.tolstoy_audit('trigger', 'next_run_at,last_fired_at');


--
-- Name: flow_triggers flow_triggers_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_triggers_touch_updated_at BEFORE UPDATE ON public.flow_triggers FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: flow_versions flow_versions_immutable; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_versions_immutable BEFORE UPDATE ON public.flow_versions FOR EACH ROW EXECUTE FUNCTION public.flow_versions_immutable();


--
-- Name: flows flows_audit; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flows_audit AFTER INSERT OR DELETE OR UPDATE ON public.flows FOR EACH ROW EXECUTE FUNCTION public.tolstoy_audit('flow');


--
-- Name: flows flows_bump_version; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flows_bump_version BEFORE UPDATE ON public.flows FOR EACH ROW EXECUTE FUNCTION public.flows_bump_version();


--
-- Name: flows flows_record_version; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flows_record_version AFTER INSERT OR UPDATE ON public.flows FOR EACH ROW EXECUTE FUNCTION public.flows_record_version();


--
-- Name: flows flows_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flows_touch_updated_at BEFORE UPDATE ON public.flows FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: organization_quotas organization_quotas_audit; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER organization_quotas_audit AFTER INSERT OR DELETE OR UPDATE ON public.organization_quotas FOR EACH ROW EXECUTE FUNCTION public.tolstoy_audit('quota');


--
-- Name: organization_quotas organization_quotas_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER organization_quotas_touch_updated_at BEFORE UPDATE ON public.organization_quotas FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: organizations organizations_audit; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER organizations_audit AFTER INSERT OR DELETE OR UPDATE ON public.organizations FOR EACH ROW EXECUTE FUNCTION public.tolstoy_audit('organization');


--
-- Name: organizations organizations_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER organizations_touch_updated_at BEFORE UPDATE ON public.organizations FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: tool_credentials tool_credentials_audit; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER tool_credentials_audit AFTER INSERT OR DELETE OR UPDATE ON public.tool_credentials FOR EACH ROW EXECUTE FUNCTION public.tolstoy_audit('tool_credential');


--
-- Name: tool_credentials tool_credentials_bind_to_tool_origin; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER tool_credentials_bind_to_tool_origin BEFORE INSERT ON public.tool_credentials FOR EACH ROW EXECUTE FUNCTION public.tolstoy_bind_to_tool_origin();


--
-- Name: tool_credentials tool_credentials_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER tool_credentials_touch_updated_at BEFORE UPDATE ON public.tool_credentials FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: tools tools_audit; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER tools_audit AFTER INSERT OR DELETE OR UPDATE ON public.tools FOR EACH ROW EXECUTE FUNCTION public.tolstoy_audit('tool');


--
-- Name: tools tools_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER tools_touch_updated_at BEFORE UPDATE ON public.tools FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: user_connections user_connections_audit; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER user_connections_audit AFTER INSERT OR DELETE OR UPDATE ON public.user_connections FOR EACH ROW EXECUTE FUNCTION public.tolstoy_audit('user_connection', 'refreshing_by,refresh_lease_until');


--
-- Name: user_connections user_connections_bind_to_tool_origin; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER user_connections_bind_to_tool_origin BEFORE INSERT ON public.user_connections FOR EACH ROW EXECUTE FUNCTION public.tolstoy_bind_to_tool_origin();


--
-- Name: user_connections user_connections_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER user_connections_touch_updated_at BEFORE UPDATE ON public.user_connections FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: users users_audit; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER users_audit AFTER INSERT OR DELETE OR UPDATE ON public.users FOR EACH ROW EXECUTE FUNCTION public.tolstoy_audit('user');


--
-- Name: users users_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER users_touch_updated_at BEFORE UPDATE ON public.users FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: webhook_deliveries webhook_deliveries_notify; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER webhook_deliveries_notify AFTER INSERT ON public.webhook_deliveries REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION public.webhook_deliveries_notify();


--
-- Name: webhook_deliveries webhook_deliveries_place; Type: TRIGGER; Schema: public; Owner: -
--

CREATE CONSTRAINT TRIGGER webhook_deliveries_place AFTER INSERT ON public.webhook_deliveries DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.tolstoy_place_deliveries();


--
-- Name: webhook_deliveries webhook_deliveries_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER webhook_deliveries_touch_updated_at BEFORE UPDATE ON public.webhook_deliveries FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: webhooks webhooks_audit; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER webhooks_audit AFTER INSERT OR DELETE OR UPDATE ON public.webhooks FOR EACH ROW EXECUTE FUNCTION public.tolstoy_audit('webhook', 'failing_since');


--
-- Name: webhooks webhooks_cancel_pending; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER webhooks_cancel_pending AFTER UPDATE OF enabled ON public.webhooks FOR EACH ROW WHEN ((old.enabled AND (NOT new.enabled))) EXECUTE FUNCTION public.webhooks_cancel_pending();


--
-- Name: webhooks webhooks_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER webhooks_touch_updated_at BEFORE UPDATE ON public.webhooks FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: actions actions_tool_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.actions
    ADD CONSTRAINT actions_tool_id_fkey FOREIGN KEY (org_id, tool_id) REFERENCES public.tools(org_id, id) ON DELETE RESTRICT;


--
-- Name: api_keys api_keys_org_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_org_id_fkey FOREIGN KEY (org_id) REFERENCES public.organizations(id) ON DELETE CASCADE;


--
-- Name: api_keys api_keys_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_user_id_fkey FOREIGN KEY (org_id, user_id) REFERENCES public.users(org_id, id) ON DELETE CASCADE;


--
-- Name: execution_logs execution_logs_flow_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE public.execution_logs
    ADD CONSTRAINT execution_logs_flow_id_fkey FOREIGN KEY (org_id, flow_id) REFERENCES public.flows(org_id, id) ON DELETE RESTRICT;


--
-- Name: execution_logs execution_logs_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE public.execution_logs
    ADD CONSTRAINT execution_logs_user_id_fkey FOREIGN KEY (org_id, user_id) REFERENCES public.users(org_id, id) ON DELETE RESTRICT;


--
-- Name: flow_run_signals flow_run_signals_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_run_signals
    ADD CONSTRAINT flow_run_signals_user_id_fkey FOREIGN KEY (org_id, user_id) REFERENCES public.users(org_id, id) ON DELETE RESTRICT;


--
-- Name: flow_runs flow_runs_flow_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE public.flow_runs
    ADD CONSTRAINT flow_runs_flow_id_fkey FOREIGN KEY (org_id, flow_id) REFERENCES public.flows(org_id, id) ON DELETE RESTRICT;


--
-- Name: flow_runs flow_runs_flow_version_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE public.flow_runs
    ADD CONSTRAINT flow_runs_flow_version_fkey FOREIGN KEY (org_id, flow_id, flow_version) REFERENCES public.flow_versions(org_id, flow_id, version) ON DELETE RESTRICT;


--
-- Name: flow_runs flow_runs_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE public.flow_runs
    ADD CONSTRAINT flow_runs_user_id_fkey FOREIGN KEY (org_id, user_id) REFERENCES public.users(org_id, id) ON DELETE RESTRICT;


--
-- Name: flow_step_slots flow_step_slots_org_id_flow_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_step_slots
    ADD CONSTRAINT flow_step_slots_org_id_flow_id_fkey FOREIGN KEY (org_id, flow_id) REFERENCES public.flows(org_id, id) ON DELETE CASCADE;


--
-- Name: flow_trigger_deliveries flow_trigger_deliveries_trigger_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_trigger_deliveries
    ADD CONSTRAINT flow_trigger_deliveries_trigger_id_fkey FOREIGN KEY (org_id, trigger_id) REFERENCES public.flow_triggers(org_id, id) ON DELETE CASCADE;


--
-- Name: flow_triggers flow_triggers_flow_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_triggers
    ADD CONSTRAINT flow_triggers_flow_id_fkey FOREIGN KEY (org_id, flow_id) REFERENCES public.flows(org_id, id) ON DELETE RESTRICT;


--
-- Name: flow_versions flow_versions_flow_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_versions
    ADD CONSTRAINT flow_versions_flow_id_fkey FOREIGN KEY (org_id, flow_id) REFERENCES public.flows(org_id, id) ON DELETE CASCADE;


--
-- Name: flows flows_org_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flows
    ADD CONSTRAINT flows_org_id_fkey FOREIGN KEY (org_id) REFERENCES public.organizations(id) ON DELETE RESTRICT;


--
-- Name: history_bytes history_bytes_org_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.history_bytes
    ADD CONSTRAINT history_bytes_org_id_fkey FOREIGN KEY (org_id) REFERENCES public.organizations(id) ON DELETE CASCADE;


--
-- Name: oauth_states oauth_states_tool_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.oauth_states
    ADD CONSTRAINT oauth_states_tool_id_fkey FOREIGN KEY (org_id, tool_id) REFERENCES public.tools(org_id, id) ON DELETE CASCADE;


--
-- Name: oauth_states oauth_states_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.oauth_states
    ADD CONSTRAINT oauth_states_user_id_fkey FOREIGN KEY (org_id, user_id) REFERENCES public.users(org_id, id) ON DELETE CASCADE;


--
-- Name: oauth_tokens oauth_tokens_credential_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.oauth_tokens
    ADD CONSTRAINT oauth_tokens_credential_id_fkey FOREIGN KEY (org_id, credential_id) REFERENCES public.tool_credentials(org_id, id) ON DELETE CASCADE;


--
-- Name: organization_keys organization_keys_org_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.organization_keys
    ADD CONSTRAINT organization_keys_org_id_fkey FOREIGN KEY (org_id) REFERENCES public.organizations(id) ON DELETE CASCADE;


--
-- Name: organization_quotas organization_quotas_org_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.organization_quotas
    ADD CONSTRAINT organization_quotas_org_id_fkey FOREIGN KEY (org_id) REFERENCES public.organizations(id) ON DELETE CASCADE;


--
-- Name: organization_usage organization_usage_org_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.organization_usage
    ADD CONSTRAINT organization_usage_org_id_fkey FOREIGN KEY (org_id) REFERENCES public.organizations(id) ON DELETE CASCADE;


--
-- Name: organization_worker_time organization_worker_time_org_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.organization_worker_time
    ADD CONSTRAINT organization_worker_time_org_id_fkey FOREIGN KEY (org_id) REFERENCES public.organizations(id) ON DELETE CASCADE;


--
-- Name: sync_execute_slots sync_execute_slots_org_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.sync_execute_slots
    ADD CONSTRAINT sync_execute_slots_org_id_fkey FOREIGN KEY (org_id) REFERENCES public.organizations(id) ON DELETE CASCADE;


--
-- Name: tool_credentials tool_credentials_tool_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.tool_credentials
    ADD CONSTRAINT tool_credentials_tool_id_fkey FOREIGN KEY (org_id, tool_id) REFERENCES public.tools(org_id, id) ON DELETE RESTRICT;


--
-- Name: tool_rate_budgets tool_rate_budgets_org_id_tool_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.tool_rate_budgets
    ADD CONSTRAINT tool_rate_budgets_org_id_tool_id_fkey FOREIGN KEY (org_id, tool_id) REFERENCES public.tools(org_id, id) ON DELETE CASCADE;


--
-- Name: tools tools_org_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.tools
    ADD CONSTRAINT tools_org_id_fkey FOREIGN KEY (org_id) REFERENCES public.organizations(id) ON DELETE RESTRICT;


--
-- Name: user_connections user_connections_tool_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.user_connections
    ADD CONSTRAINT user_connections_tool_id_fkey FOREIGN KEY (org_id, tool_id) REFERENCES public.tools(org_id, id) ON DELETE CASCADE;


--
-- Name: user_connections user_connections_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.user_connections
    ADD CONSTRAINT user_connections_user_id_fkey FOREIGN KEY (org_id, user_id) REFERENCES public.users(org_id, id) ON DELETE CASCADE;


--
-- Name: users users_org_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_org_id_fkey FOREIGN KEY (org_id) REFERENCES public.organizations(id) ON DELETE RESTRICT;


--
-- Name: webhook_deliveries webhook_deliveries_webhook_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhook_deliveries
    ADD CONSTRAINT webhook_deliveries_webhook_id_fkey FOREIGN KEY (org_id, webhook_id) REFERENCES public.webhooks(org_id, id) ON DELETE CASCADE;


--
-- Name: webhook_lines webhook_lines_webhook_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhook_lines
    ADD CONSTRAINT webhook_lines_webhook_id_fkey FOREIGN KEY (org_id, webhook_id) REFERENCES public.webhooks(org_id, id) ON DELETE CASCADE;


--
-- Name: webhooks webhooks_org_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhooks
    ADD CONSTRAINT webhooks_org_id_fkey FOREIGN KEY (org_id) REFERENCES public.organizations(id) ON DELETE CASCADE;


--
-- Name: actions; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.actions ENABLE ROW LEVEL SECURITY;

--
-- Name: organizations admin_all; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY admin_all ON public.organizations TO tolstoy_admin USING (true) WITH CHECK (true);


--
-- Name: POLICY admin_all ON organizations; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON POLICY admin_all ON public.organizations IS 'The admin login (tolstoy_admin: the /organizations routes'' cross-tenant operations) sees every organization.';


--
-- Name: api_keys; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.api_keys ENABLE ROW LEVEL SECURITY;

--
-- Name: audit_events; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.audit_events ENABLE ROW LEVEL SECURITY;

--
-- Name: api_keys engine_access; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY engine_access ON public.api_keys TO tolstoy_engine USING (true) WITH CHECK (true);


--
-- Name: audit_events engine_access; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY engine_access ON public.audit_events TO tolstoy_engine USING (true) WITH CHECK (true);


--
-- Name: execution_logs engine_access; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY engine_access ON public.execution_logs TO tolstoy_engine USING (true) WITH CHECK (true);


--
-- Name: flow_run_signals engine_access; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY engine_access ON public.flow_run_signals TO tolstoy_engine USING (true);


--
-- Name: flow_run_steps engine_access; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY engine_access ON public.flow_run_steps TO tolstoy_engine USING (true);


--
-- Name: flow_runs engine_access; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY engine_access ON public.flow_runs TO tolstoy_engine USING (true) WITH CHECK (true);


--
-- Name: flow_step_slots engine_access; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY engine_access ON public.flow_step_slots TO tolstoy_engine USING (true) WITH CHECK (true);


--
-- Name: flow_trigger_deliveries engine_access; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY engine_access ON public.flow_trigger_deliveries TO tolstoy_engine USING (true);


--
-- Name: flow_triggers engine_access; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY engine_access ON public.flow_triggers TO tolstoy_engine USING (true) WITH CHECK (true);


--
-- Name: history_bytes engine_access; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY engine_access ON public.history_bytes TO tolstoy_engine USING (true) WITH CHECK (true);


--
-- Name: organization_worker_time engine_access; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY engine_access ON public.organization_worker_time TO tolstoy_engine USING (true);


--
-- Name: POLICY engine_access ON organization_worker_time; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON POLICY engine_access ON public.organization_worker_time IS 'The run claim reads every organization''s worker time to weigh them.';


--
-- Name: webhook_deliveries engine_access; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY engine_access ON public.webhook_deliveries TO tolstoy_engine USING (true) WITH CHECK (true);


--
-- Name: webhook_lines engine_access; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY engine_access ON public.webhook_lines TO tolstoy_engine USING (true) WITH CHECK (true);


--
-- Name: webhooks engine_access; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY engine_access ON public.webhooks TO tolstoy_engine USING (true);


--
-- Name: execution_logs; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.execution_logs ENABLE ROW LEVEL SECURITY;

--
-- Name: execution_logs_default; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.execution_logs_default ENABLE ROW LEVEL SECURITY;

--
-- Name: flow_run_signals; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.flow_run_signals ENABLE ROW LEVEL SECURITY;

--
-- Name: flow_run_steps; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.flow_run_steps ENABLE ROW LEVEL SECURITY;

--
-- Name: flow_run_steps_default; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.flow_run_steps_default ENABLE ROW LEVEL SECURITY;

--
-- Name: flow_runs; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.flow_runs ENABLE ROW LEVEL SECURITY;

--
-- Name: flow_runs_default; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.flow_runs_default ENABLE ROW LEVEL SECURITY;

--
-- Name: flow_step_slots; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.flow_step_slots ENABLE ROW LEVEL SECURITY;

--
-- Name: flow_trigger_deliveries; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.flow_trigger_deliveries ENABLE ROW LEVEL SECURITY;

--
-- Name: flow_triggers; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.flow_triggers ENABLE ROW LEVEL SECURITY;

--
-- Name: flow_versions; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.flow_versions ENABLE ROW LEVEL SECURITY;

--
-- Name: flows; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.flows ENABLE ROW LEVEL SECURITY;

--
-- Name: history_bytes; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.history_bytes ENABLE ROW LEVEL SECURITY;

--
-- Name: execution_logs_default history_upkeep; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY history_upkeep ON public.execution_logs_default FOR SELECT TO tolstoy_history USING (true);


--
-- Name: flow_run_steps_default history_upkeep; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY history_upkeep ON public.flow_run_steps_default FOR SELECT TO tolstoy_history USING (true);


--
-- Name: flow_runs_default history_upkeep; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY history_upkeep ON public.flow_runs_default FOR SELECT TO tolstoy_history USING (true);


--
-- Name: oauth_states; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.oauth_states ENABLE ROW LEVEL SECURITY;

--
-- Name: oauth_tokens; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.oauth_tokens ENABLE ROW LEVEL SECURITY;

--
-- Name: organization_keys; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.organization_keys ENABLE ROW LEVEL SECURITY;

--
-- Name: organization_quotas; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.organization_quotas ENABLE ROW LEVEL SECURITY;

--
-- Name: organization_usage; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.organization_usage ENABLE ROW LEVEL SECURITY;

--
-- Name: organization_worker_time; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.organization_worker_time ENABLE ROW LEVEL SECURITY;

--
-- Name: organizations; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.organizations ENABLE ROW LEVEL SECURITY;

--
-- Name: organizations own_organization; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY own_organization ON public.organizations USING ((id = public.tolstoy_current_org()));


--
-- Name: secret_reads; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.secret_reads ENABLE ROW LEVEL SECURITY;

--
-- Name: sync_execute_slots; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.sync_execute_slots ENABLE ROW LEVEL SECURITY;

--
-- Name: actions tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.actions USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: api_keys tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.api_keys USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: audit_events tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.audit_events FOR SELECT USING ((org_id = public.tolstoy_current_org()));


--
-- Name: execution_logs tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.execution_logs USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: execution_logs_default tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.execution_logs_default USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: flow_run_signals tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.flow_run_signals USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: flow_run_steps tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.flow_run_steps USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: flow_run_steps_default tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.flow_run_steps_default USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: flow_runs tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.flow_runs USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: flow_runs_default tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.flow_runs_default USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: flow_step_slots tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.flow_step_slots USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: flow_trigger_deliveries tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.flow_trigger_deliveries USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: flow_triggers tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.flow_triggers USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: flow_versions tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.flow_versions USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: flows tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.flows USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: history_bytes tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.history_bytes USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: oauth_states tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.oauth_states USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: oauth_tokens tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.oauth_tokens USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: organization_keys tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.organization_keys USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: organization_quotas tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.organization_quotas USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: organization_usage tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.organization_usage USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: organization_worker_time tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.organization_worker_time USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: secret_reads tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.secret_reads USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: sync_execute_slots tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.sync_execute_slots USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: tool_credentials tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.tool_credentials USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: tool_rate_budgets tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.tool_rate_budgets USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: tools tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.tools USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: user_connections tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.user_connections USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: users tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.users USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: webhook_deliveries tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.webhook_deliveries USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: webhook_lines tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.webhook_lines USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: webhooks tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.webhooks USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: tool_credentials; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.tool_credentials ENABLE ROW LEVEL SECURITY;

--
-- Name: tool_rate_budgets; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.tool_rate_budgets ENABLE ROW LEVEL SECURITY;

--
-- Name: tools; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.tools ENABLE ROW LEVEL SECURITY;

--
-- Name: user_connections; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.user_connections ENABLE ROW LEVEL SECURITY;

--
-- Name: users; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.users ENABLE ROW LEVEL SECURITY;

--
-- Name: webhook_deliveries; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.webhook_deliveries ENABLE ROW LEVEL SECURITY;

--
-- Name: webhook_lines; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.webhook_lines ENABLE ROW LEVEL SECURITY;

--
-- Name: webhooks; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.webhooks ENABLE ROW LEVEL SECURITY;

--
-- PostgreSQL database dump complete
--


--
-- Dbmate schema migrations
--

INSERT INTO public.schema_migrations (version) VALUES
    ('20261125000001'),
    ('20261125000002'),
    ('20261125000003'),
    ('20261125000004'),
    ('20261125000005'),
    ('20261125000006'),
    ('20261125000007'),
    ('20261201000001'),
    ('20261201000002'),
    ('20261201000003'),
    ('20261201000004'),
    ('20261201000005'),
    ('20261201000006'),
    ('20261201000007'),
    ('20261201000008'),
    ('20261201000009'),
    ('20261201000010'),
    ('20261201000011'),
    ('20261201000013'),
    ('20261201000014'),
    ('20261201000015'),
    ('20261207000001'),
    ('20261207000002'),
    ('20261207000101'),
    ('20261207000300'),
    ('20261207000400'),
    ('20261208000200'),
    ('20261208000300'),
    ('20261208000401'),
    ('20261208000402'),
    ('20261208000403'),
    ('20261208000404'),
    ('20261208000500'),
    ('20261208000501'),
    ('20261208000600'),
    ('20261208001000'),
    ('20261208001100'),
    ('20261208001200'),
    ('20261209000100'),
    ('20261209000200'),
    ('20261209000300'),
    ('20261210000100'),
    ('20261210000200'),
    ('20261210000300'),
    ('20261210000301'),
    ('20261211000100'),
    ('20261212000100'),
    ('20261213000100'),
    ('20261214000100'),
    ('20261214000101'),
    ('20261214000102'),
    ('20261215000100'),
    ('20261215000101'),
    ('20261215000102'),
    ('20261216000100'),
    ('20261217000100'),
    ('20261218000100'),
    ('20261219000100'),
    ('20261219000200'),
    ('20261219000300'),
    ('20261219000400');
