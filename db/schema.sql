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
    'completed',
    'failed',
    'cancelled'
);


--
-- Name: TYPE flow_run_status; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TYPE public.flow_run_status IS 'Lifecycle of a flow run: queued → running → completed | failed | cancelled.';


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
    if new.steps is distinct from old.steps then
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

COMMENT ON FUNCTION public.flows_bump_version() IS 'BEFORE UPDATE trigger: version + 1 when steps change.';


--
-- Name: flows_record_version(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.flows_record_version() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    if tg_op = 'INSERT' or new.version <> old.version then
        insert into flow_versions (org_id, flow_id, version, steps)
        values (new.org_id, new.id, new.version, new.steps);
    end if;
    return null;
end;
$$;


--
-- Name: FUNCTION flows_record_version(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.flows_record_version() IS 'AFTER INSERT/UPDATE trigger: stores each new version of steps in flow_versions.';


--
-- Name: tolstoy_authenticate(bytea); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_authenticate(hash bytea) RETURNS TABLE(org_id uuid, key_id uuid)
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    with found as (
        select k.org_id, k.id
        from api_keys k
        where k.key_hash = hash and k.revoked_at is null
    ), touched as (
        update api_keys k
        set last_used_at = now()
        from found
        where k.org_id = found.org_id and k.id = found.id
          and (k.last_used_at is null or k.last_used_at < now() - interval '1 minute')
    )
    select found.org_id, found.id from found
$$;


--
-- Name: FUNCTION tolstoy_authenticate(hash bytea); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_authenticate(hash bytea) IS 'The organization and key id of an unrevoked API key hash; refreshes last_used_at once a minute.';


--
-- Name: tolstoy_claim_runs(text, integer, double precision); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_claim_runs(worker text, max_runs integer, lease_seconds double precision) RETURNS TABLE(org_id uuid, id uuid, flow_id uuid, flow_version integer, user_id uuid, variables jsonb, claims integer)
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    with due as (
        select r.org_id, r.id
        from flow_runs r
        where (r.status = 'queued' and r.run_after <= now())
           or (r.status = 'running' and r.lease_expires_at < now())
        order by r.run_after, r.created_at
        limit max_runs
        for update skip locked
    )
    update flow_runs r
    set status = 'running',
        claims = r.claims + 1,
        lease_owner = worker,
        lease_expires_at = now() + make_interval(secs => lease_seconds),
        started_at = coalesce(r.started_at, now())
    from due
    where r.org_id = due.org_id and r.id = due.id
    returning r.org_id, r.id, r.flow_id, r.flow_version, r.user_id, r.variables, r.claims
$$;


--
-- Name: FUNCTION tolstoy_claim_runs(worker text, max_runs integer, lease_seconds double precision); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_claim_runs(worker text, max_runs integer, lease_seconds double precision) IS 'Claim up to max_runs due runs of any organization (SKIP LOCKED) under a lease for worker.';


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
    found uuid;
begin
    perform set_config('statement_timeout', timeout_ms::text || 'ms', true);
    select k.org_id into found
    from api_keys k
    where k.key_hash = hash and k.revoked_at is null;
    if found is null then
        raise exception 'The API key is not valid or has been revoked.' using errcode = 'TS003';
    end if;
    -- Recorded at most once a minute, so authentication stays a read.
    update api_keys k
    set last_used_at = now()
    where k.key_hash = hash
      and (k.last_used_at is null or k.last_used_at < now() - interval '1 minute');
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
-- Name: tolstoy_next_wake(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_next_wake() RETURNS timestamp with time zone
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select min(run_after) from flow_runs where status = 'queued'
$$;


--
-- Name: FUNCTION tolstoy_next_wake(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_next_wake() IS 'When the earliest queued run of any organization becomes due.';


--
-- Name: tolstoy_queue_stats(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_queue_stats() RETURNS TABLE(queued bigint, due bigint, oldest_due_age_seconds double precision)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select count(*),
           count(*) filter (where run_after <= now()),
           coalesce(extract(epoch from now() - min(run_after) filter (where run_after <= now())), 0)::float8
    from flow_runs
    where status = 'queued'
$$;


--
-- Name: FUNCTION tolstoy_queue_stats(); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_queue_stats() IS 'Queue depth across organizations for /metrics: queued runs, due ones, age of the oldest due one.';


--
-- Name: tolstoy_renew_leases(text, double precision); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.tolstoy_renew_leases(worker text, lease_seconds double precision) RETURNS integer
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    with renewed as (
        update flow_runs
        set lease_expires_at = now() + make_interval(secs => lease_seconds)
        where lease_owner = worker and status = 'running'
        returning 1
    )
    select count(*)::integer from renewed
$$;


--
-- Name: FUNCTION tolstoy_renew_leases(worker text, lease_seconds double precision); Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON FUNCTION public.tolstoy_renew_leases(worker text, lease_seconds double precision) IS 'Heartbeat: extend the lease of every run the worker holds.';


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


SET default_tablespace = '';

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
    CONSTRAINT actions_endpoint_path CHECK (("left"(endpoint, 1) = '/'::text)),
    CONSTRAINT actions_headers_object CHECK (((headers IS NULL) OR (jsonb_typeof(headers) = 'object'::text))),
    CONSTRAINT actions_input_schema_object CHECK (((input_schema IS NULL) OR (jsonb_typeof(input_schema) = 'object'::text))),
    CONSTRAINT actions_key_length CHECK (((char_length(key) >= 1) AND (char_length(key) <= 200))),
    CONSTRAINT actions_name_length CHECK (((char_length(name) >= 1) AND (char_length(name) <= 200))),
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
    CONSTRAINT api_keys_key_hash_length CHECK ((octet_length(key_hash) = 32)),
    CONSTRAINT api_keys_name_length CHECK (((char_length(name) >= 1) AND (char_length(name) <= 200)))
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
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    duration_ms integer,
    CONSTRAINT execution_logs_execution_id_length CHECK (((char_length(execution_id) >= 1) AND (char_length(execution_id) <= 200))),
    CONSTRAINT execution_logs_inputs_object CHECK ((jsonb_typeof(inputs) = 'object'::text)),
    CONSTRAINT execution_logs_outputs_object CHECK (((outputs IS NULL) OR (jsonb_typeof(outputs) = 'object'::text))),
    CONSTRAINT execution_logs_step_key_length CHECK (((char_length(step_key) >= 1) AND (char_length(step_key) <= 200)))
);

ALTER TABLE ONLY public.execution_logs FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE execution_logs; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.execution_logs IS 'Audit trail: one row per step event of a flow run.';


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
-- Name: flow_run_steps; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.flow_run_steps (
    org_id uuid NOT NULL,
    run_id uuid NOT NULL,
    step_id text NOT NULL,
    status text NOT NULL,
    attempt integer DEFAULT 1 NOT NULL,
    inputs jsonb,
    outputs jsonb,
    error jsonb,
    wake_at timestamp with time zone,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    duration_ms integer,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT flow_run_steps_attempt_positive CHECK ((attempt >= 1)),
    CONSTRAINT flow_run_steps_status CHECK ((status = ANY (ARRAY['running'::text, 'waiting'::text, 'completed'::text, 'failed'::text, 'skipped'::text])))
);

ALTER TABLE ONLY public.flow_run_steps FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE flow_run_steps; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.flow_run_steps IS 'Durable step checkpoints of a run; finished ones are skipped when the run resumes.';


--
-- Name: COLUMN flow_run_steps.attempt; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_run_steps.attempt IS 'Retry attempt (1 = first try); part of the Idempotency-Key sent to tools.';


--
-- Name: COLUMN flow_run_steps.wake_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_run_steps.wake_at IS 'For waiting steps: when the delay or retry backoff ends.';


--
-- Name: flow_runs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.flow_runs (
    org_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    flow_id uuid NOT NULL,
    flow_version integer NOT NULL,
    user_id uuid,
    status public.flow_run_status DEFAULT 'queued'::public.flow_run_status NOT NULL,
    variables jsonb DEFAULT '{}'::jsonb NOT NULL,
    outputs jsonb,
    error jsonb,
    idempotency_key text,
    retry_of uuid,
    run_after timestamp with time zone DEFAULT now() NOT NULL,
    cancel_requested boolean DEFAULT false NOT NULL,
    claims integer DEFAULT 0 NOT NULL,
    lease_owner text,
    lease_expires_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    CONSTRAINT flow_runs_idempotency_key_length CHECK (((char_length(idempotency_key) >= 1) AND (char_length(idempotency_key) <= 200))),
    CONSTRAINT flow_runs_lease_complete CHECK (((lease_owner IS NULL) = (lease_expires_at IS NULL))),
    CONSTRAINT flow_runs_variables_object CHECK ((jsonb_typeof(variables) = 'object'::text))
);

ALTER TABLE ONLY public.flow_runs FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE flow_runs; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.flow_runs IS 'One execution of a flow version; also the work queue the workers claim from.';


--
-- Name: COLUMN flow_runs.id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.id IS 'Exposed as executionId; execution_logs.execution_id holds it as text.';


--
-- Name: COLUMN flow_runs.run_after; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.run_after IS 'Not claimable before this time: set by delay steps and retry backoff.';


--
-- Name: COLUMN flow_runs.cancel_requested; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.cancel_requested IS 'Set by the cancel route on a running run; the worker stops at the next step boundary.';


--
-- Name: COLUMN flow_runs.claims; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.claims IS 'How many times a worker claimed the run (1 + resumptions after delays, retries or lost leases).';


--
-- Name: COLUMN flow_runs.lease_expires_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.flow_runs.lease_expires_at IS 'A running run whose lease expired belongs to no worker and is claimed again.';


--
-- Name: flow_versions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.flow_versions (
    org_id uuid NOT NULL,
    flow_id uuid NOT NULL,
    version integer NOT NULL,
    steps jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE ONLY public.flow_versions FORCE ROW LEVEL SECURITY;


--
-- Name: TABLE flow_versions; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.flow_versions IS 'Immutable history of a flow''s steps; written only by the flows triggers.';


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
    CONSTRAINT flows_description_length CHECK ((char_length(description) <= 5000)),
    CONSTRAINT flows_name_length CHECK ((char_length(name) <= 200)),
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
-- Name: organizations; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.organizations (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    name text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT organizations_name_length CHECK (((char_length(name) >= 1) AND (char_length(name) <= 200)))
);


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

COMMENT ON COLUMN public.tool_credentials.secret IS 'Encrypted with TOLSTOY_ENCRYPTION_KEY; `tolstoy secrets rotate` re-encrypts with the newest key.';


--
-- Name: COLUMN tool_credentials.is_default; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.tool_credentials.is_default IS 'The credential the engine uses for the tool; at most one per tool.';


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
    CONSTRAINT tools_base_url_scheme CHECK ((base_url ~ '^https?://'::text)),
    CONSTRAINT tools_name_length CHECK (((char_length(name) >= 1) AND (char_length(name) <= 200)))
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
-- Name: execution_logs execution_logs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.execution_logs
    ADD CONSTRAINT execution_logs_pkey PRIMARY KEY (org_id, id);


--
-- Name: flow_run_steps flow_run_steps_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_run_steps
    ADD CONSTRAINT flow_run_steps_pkey PRIMARY KEY (org_id, run_id, step_id);


--
-- Name: flow_runs flow_runs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_runs
    ADD CONSTRAINT flow_runs_pkey PRIMARY KEY (org_id, id);


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
-- Name: users users_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (org_id, id);


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
-- Name: execution_logs_org_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX execution_logs_org_id_created_at_id_idx ON public.execution_logs USING btree (org_id, created_at DESC, id DESC);


--
-- Name: execution_logs_org_id_execution_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX execution_logs_org_id_execution_id_created_at_id_idx ON public.execution_logs USING btree (org_id, execution_id, created_at DESC, id DESC);


--
-- Name: execution_logs_org_id_flow_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX execution_logs_org_id_flow_id_created_at_id_idx ON public.execution_logs USING btree (org_id, flow_id, created_at DESC, id DESC);


--
-- Name: execution_logs_org_id_status_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX execution_logs_org_id_status_created_at_id_idx ON public.execution_logs USING btree (org_id, status, created_at DESC, id DESC);


--
-- Name: execution_logs_org_id_user_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX execution_logs_org_id_user_id_created_at_id_idx ON public.execution_logs USING btree (org_id, user_id, created_at DESC, id DESC);


--
-- Name: flow_runs_org_id_flow_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_org_id_flow_id_created_at_id_idx ON public.flow_runs USING btree (org_id, flow_id, created_at DESC, id DESC);


--
-- Name: flow_runs_org_id_flow_id_idempotency_key_key; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX flow_runs_org_id_flow_id_idempotency_key_key ON public.flow_runs USING btree (org_id, flow_id, idempotency_key) WHERE (idempotency_key IS NOT NULL);


--
-- Name: flow_runs_org_id_retry_of_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_org_id_retry_of_idx ON public.flow_runs USING btree (org_id, retry_of);


--
-- Name: flow_runs_org_id_user_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_org_id_user_id_idx ON public.flow_runs USING btree (org_id, user_id);


--
-- Name: flow_runs_queued_run_after_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_queued_run_after_idx ON public.flow_runs USING btree (run_after) WHERE (status = 'queued'::public.flow_run_status);


--
-- Name: flow_runs_running_lease_expires_at_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flow_runs_running_lease_expires_at_idx ON public.flow_runs USING btree (lease_expires_at) WHERE (status = 'running'::public.flow_run_status);


--
-- Name: flows_org_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flows_org_id_created_at_id_idx ON public.flows USING btree (org_id, created_at DESC, id DESC);


--
-- Name: organizations_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX organizations_created_at_id_idx ON public.organizations USING btree (created_at DESC, id DESC);


--
-- Name: tool_credentials_one_default_per_tool; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX tool_credentials_one_default_per_tool ON public.tool_credentials USING btree (org_id, tool_id) WHERE is_default;


--
-- Name: tools_org_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX tools_org_id_created_at_id_idx ON public.tools USING btree (org_id, created_at DESC, id DESC);


--
-- Name: users_org_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX users_org_id_created_at_id_idx ON public.users USING btree (org_id, created_at DESC, id DESC);


--
-- Name: users_org_id_email_key; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX users_org_id_email_key ON public.users USING btree (org_id, lower(email));


--
-- Name: actions actions_bump_version; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER actions_bump_version BEFORE UPDATE ON public.actions FOR EACH ROW EXECUTE FUNCTION public.actions_bump_version();


--
-- Name: actions actions_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER actions_touch_updated_at BEFORE UPDATE ON public.actions FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: api_keys api_keys_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER api_keys_touch_updated_at BEFORE UPDATE ON public.api_keys FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: execution_logs execution_logs_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER execution_logs_touch_updated_at BEFORE UPDATE ON public.execution_logs FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: flow_run_steps flow_run_steps_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_run_steps_touch_updated_at BEFORE UPDATE ON public.flow_run_steps FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: flow_runs flow_runs_notify; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_runs_notify AFTER INSERT OR UPDATE OF status, run_after ON public.flow_runs FOR EACH ROW WHEN ((new.status = 'queued'::public.flow_run_status)) EXECUTE FUNCTION public.flow_runs_notify();


--
-- Name: flow_runs flow_runs_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_runs_touch_updated_at BEFORE UPDATE ON public.flow_runs FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: flow_versions flow_versions_immutable; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER flow_versions_immutable BEFORE UPDATE ON public.flow_versions FOR EACH ROW EXECUTE FUNCTION public.flow_versions_immutable();


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
-- Name: organizations organizations_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER organizations_touch_updated_at BEFORE UPDATE ON public.organizations FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: tool_credentials tool_credentials_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER tool_credentials_touch_updated_at BEFORE UPDATE ON public.tool_credentials FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: tools tools_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER tools_touch_updated_at BEFORE UPDATE ON public.tools FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


--
-- Name: users users_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER users_touch_updated_at BEFORE UPDATE ON public.users FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


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
-- Name: execution_logs execution_logs_flow_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.execution_logs
    ADD CONSTRAINT execution_logs_flow_id_fkey FOREIGN KEY (org_id, flow_id) REFERENCES public.flows(org_id, id) ON DELETE RESTRICT;


--
-- Name: execution_logs execution_logs_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.execution_logs
    ADD CONSTRAINT execution_logs_user_id_fkey FOREIGN KEY (org_id, user_id) REFERENCES public.users(org_id, id) ON DELETE RESTRICT;


--
-- Name: flow_run_steps flow_run_steps_run_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_run_steps
    ADD CONSTRAINT flow_run_steps_run_id_fkey FOREIGN KEY (org_id, run_id) REFERENCES public.flow_runs(org_id, id) ON DELETE CASCADE;


--
-- Name: flow_runs flow_runs_flow_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_runs
    ADD CONSTRAINT flow_runs_flow_id_fkey FOREIGN KEY (org_id, flow_id) REFERENCES public.flows(org_id, id) ON DELETE RESTRICT;


--
-- Name: flow_runs flow_runs_flow_version_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_runs
    ADD CONSTRAINT flow_runs_flow_version_fkey FOREIGN KEY (org_id, flow_id, flow_version) REFERENCES public.flow_versions(org_id, flow_id, version) ON DELETE RESTRICT;


--
-- Name: flow_runs flow_runs_retry_of_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_runs
    ADD CONSTRAINT flow_runs_retry_of_fkey FOREIGN KEY (org_id, retry_of) REFERENCES public.flow_runs(org_id, id) ON DELETE RESTRICT;


--
-- Name: flow_runs flow_runs_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.flow_runs
    ADD CONSTRAINT flow_runs_user_id_fkey FOREIGN KEY (org_id, user_id) REFERENCES public.users(org_id, id) ON DELETE RESTRICT;


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
-- Name: tool_credentials tool_credentials_tool_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.tool_credentials
    ADD CONSTRAINT tool_credentials_tool_id_fkey FOREIGN KEY (org_id, tool_id) REFERENCES public.tools(org_id, id) ON DELETE RESTRICT;


--
-- Name: tools tools_org_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.tools
    ADD CONSTRAINT tools_org_id_fkey FOREIGN KEY (org_id) REFERENCES public.organizations(id) ON DELETE RESTRICT;


--
-- Name: users users_org_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_org_id_fkey FOREIGN KEY (org_id) REFERENCES public.organizations(id) ON DELETE RESTRICT;


--
-- Name: actions; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.actions ENABLE ROW LEVEL SECURITY;

--
-- Name: api_keys; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.api_keys ENABLE ROW LEVEL SECURITY;

--
-- Name: api_keys engine_access; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY engine_access ON public.api_keys TO tolstoy_engine USING (true) WITH CHECK (true);


--
-- Name: flow_runs engine_access; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY engine_access ON public.flow_runs TO tolstoy_engine USING (true) WITH CHECK (true);


--
-- Name: execution_logs; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.execution_logs ENABLE ROW LEVEL SECURITY;

--
-- Name: flow_run_steps; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.flow_run_steps ENABLE ROW LEVEL SECURITY;

--
-- Name: flow_runs; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.flow_runs ENABLE ROW LEVEL SECURITY;

--
-- Name: flow_versions; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.flow_versions ENABLE ROW LEVEL SECURITY;

--
-- Name: flows; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.flows ENABLE ROW LEVEL SECURITY;

--
-- Name: actions tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.actions USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: api_keys tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.api_keys USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: execution_logs tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.execution_logs USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: flow_run_steps tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.flow_run_steps USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: flow_runs tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.flow_runs USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: flow_versions tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.flow_versions USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: flows tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.flows USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: tool_credentials tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.tool_credentials USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: tools tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.tools USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: users tenant_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY tenant_isolation ON public.users USING ((org_id = public.tolstoy_current_org())) WITH CHECK ((org_id = public.tolstoy_current_org()));


--
-- Name: tool_credentials; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.tool_credentials ENABLE ROW LEVEL SECURITY;

--
-- Name: tools; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.tools ENABLE ROW LEVEL SECURITY;

--
-- Name: users; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.users ENABLE ROW LEVEL SECURITY;

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
    ('20261201000001');
