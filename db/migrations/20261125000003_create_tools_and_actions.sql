-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

create type tool_auth_type as enum ('none', 'apiKey', 'bearer', 'basic', 'oauth2');

comment on type tool_auth_type is 'How the engine authenticates to a tool; values are the API''s spelling.';

create table tools (
    org_id uuid not null,
    id uuid not null default gen_random_uuid(),
    name text not null,
    base_url text not null,
    auth_type tool_auth_type not null default 'none',
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint tools_pkey primary key (org_id, id),
    constraint tools_org_id_fkey foreign key (org_id)
        references organizations (id) on delete restrict,
    constraint tools_org_id_name_key unique (org_id, name),
    constraint tools_name_length check (char_length(name) between 1 and 200),
    constraint tools_base_url_scheme check (base_url ~ '^https?://')
);

comment on table tools is 'External HTTP APIs an organization calls from its flows.';
comment on column tools.base_url is 'http(s) URL that action endpoints are appended to.';

create index tools_org_id_created_at_id_idx on tools (org_id, created_at desc, id desc);

create trigger tools_touch_updated_at
    before update on tools
    for each row execute function tolstoy_touch_updated_at();

create type http_method as enum ('GET', 'POST', 'PUT', 'PATCH', 'DELETE');

create table actions (
    org_id uuid not null,
    id uuid not null default gen_random_uuid(),
    tool_id uuid not null,
    name text not null,
    key text not null,
    method http_method not null,
    endpoint text not null,
    headers jsonb,
    input_schema jsonb,
    execute_if jsonb,
    version integer not null default 1,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint actions_pkey primary key (org_id, id),
    -- Composite: an action can only point at a tool of its own organization.
    constraint actions_tool_id_fkey foreign key (org_id, tool_id)
        references tools (org_id, id) on delete restrict,
    constraint actions_org_id_key_key unique (org_id, key),
    constraint actions_name_length check (char_length(name) between 1 and 200),
    constraint actions_key_length check (char_length(key) between 1 and 200),
    constraint actions_endpoint_path check (left(endpoint, 1) = '/'),
    constraint actions_headers_object check (headers is null or jsonb_typeof(headers) = 'object'),
    constraint actions_input_schema_object check (input_schema is null or jsonb_typeof(input_schema) = 'object'),
    constraint actions_version_positive check (version >= 1)
);

comment on table actions is 'One operation a tool offers (method + endpoint), callable from flow steps by key.';
comment on column actions.key is 'Stable identifier used by flow steps (config.actionKey); unique per organization.';
comment on column actions.endpoint is 'Path appended to tools.base_url; may hold {placeholders} filled from inputs.';
comment on column actions.input_schema is 'JSON Schema (object) that inputs are validated against; legacy field lists are converted before storage.';
comment on column actions.execute_if is 'Condition (template string or JSON object) deciding whether the action runs.';
comment on column actions.version is 'Starts at 1; actions_bump_version raises it by one when a definitional column changes.';

create index actions_org_id_created_at_id_idx on actions (org_id, created_at desc, id desc);
-- Serves ?toolId= and the foreign key check when a tool is deleted.
create index actions_org_id_tool_id_created_at_id_idx
    on actions (org_id, tool_id, created_at desc, id desc);

-- Version bump lives in the database so every writer (API, seed, a DBA's
-- manual fix) counts versions the same way.
create function actions_bump_version() returns trigger
language plpgsql as $$
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

comment on function actions_bump_version() is
    'BEFORE UPDATE trigger: version + 1 when method, endpoint, headers, input_schema, execute_if or tool_id change.';

-- Trigger names sort alphabetically: bump the version before touching updated_at.
create trigger actions_bump_version
    before update on actions
    for each row execute function actions_bump_version();

create trigger actions_touch_updated_at
    before update on actions
    for each row execute function tolstoy_touch_updated_at();

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop table actions;
drop function actions_bump_version();
drop type http_method;
drop table tools;
drop type tool_auth_type;
