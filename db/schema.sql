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
-- Name: execution_logs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.execution_logs (
    org_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    flow_id uuid NOT NULL,
    user_id uuid,
    execution_id text NOT NULL,
    step_key text NOT NULL,
    status public.execution_status NOT NULL,
    inputs jsonb NOT NULL,
    outputs jsonb,
    error jsonb,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT execution_logs_execution_id_length CHECK (((char_length(execution_id) >= 1) AND (char_length(execution_id) <= 200))),
    CONSTRAINT execution_logs_inputs_object CHECK ((jsonb_typeof(inputs) = 'object'::text)),
    CONSTRAINT execution_logs_outputs_object CHECK (((outputs IS NULL) OR (jsonb_typeof(outputs) = 'object'::text))),
    CONSTRAINT execution_logs_step_key_length CHECK (((char_length(step_key) >= 1) AND (char_length(step_key) <= 200)))
);


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
-- Name: flow_versions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.flow_versions (
    org_id uuid NOT NULL,
    flow_id uuid NOT NULL,
    version integer NOT NULL,
    steps jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);


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
-- Name: execution_logs execution_logs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.execution_logs
    ADD CONSTRAINT execution_logs_pkey PRIMARY KEY (org_id, id);


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
-- Name: flows_org_id_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX flows_org_id_created_at_id_idx ON public.flows USING btree (org_id, created_at DESC, id DESC);


--
-- Name: organizations_created_at_id_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX organizations_created_at_id_idx ON public.organizations USING btree (created_at DESC, id DESC);


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
-- Name: execution_logs execution_logs_touch_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER execution_logs_touch_updated_at BEFORE UPDATE ON public.execution_logs FOR EACH ROW EXECUTE FUNCTION public.tolstoy_touch_updated_at();


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
    ('20261125000005');
