-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

create table flows (
    org_id uuid not null,
    id uuid not null default gen_random_uuid(),
    name text,
    description text,
    steps jsonb not null,
    version integer not null default 1,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint flows_pkey primary key (org_id, id),
    constraint flows_org_id_fkey foreign key (org_id)
        references organizations (id) on delete restrict,
    constraint flows_name_length check (char_length(name) <= 200),
    constraint flows_description_length check (char_length(description) <= 5000),
    constraint flows_steps_array check (jsonb_typeof(steps) = 'array' and jsonb_array_length(steps) > 0),
    constraint flows_version_positive check (version >= 1)
);

comment on table flows is 'Workflow definitions; steps is the current version, every version is kept in flow_versions.';
comment on column flows.steps is 'Non-empty JSON array of step objects, validated by the API before storage.';
comment on column flows.version is 'Current version number; equals the highest flow_versions.version of this flow.';

create index flows_org_id_created_at_id_idx on flows (org_id, created_at desc, id desc);

create table flow_versions (
    org_id uuid not null,
    flow_id uuid not null,
    version integer not null,
    steps jsonb not null,
    created_at timestamptz not null default now(),
    constraint flow_versions_pkey primary key (org_id, flow_id, version),
    -- Versions belong to their flow and go with it.
    constraint flow_versions_flow_id_fkey foreign key (org_id, flow_id)
        references flows (org_id, id) on delete cascade
);

comment on table flow_versions is 'Immutable history of a flow''s steps; written only by the flows triggers.';

create function flows_bump_version() returns trigger
language plpgsql as $$
begin
    if new.steps is distinct from old.steps then
        new.version := old.version + 1;
    else
        new.version := old.version;
    end if;
    return new;
end;
$$;

comment on function flows_bump_version() is 'BEFORE UPDATE trigger: version + 1 when steps change.';

create function flows_record_version() returns trigger
language plpgsql as $$
begin
    if tg_op = 'INSERT' or new.version <> old.version then
        insert into flow_versions (org_id, flow_id, version, steps)
        values (new.org_id, new.id, new.version, new.steps);
    end if;
    return null;
end;
$$;

comment on function flows_record_version() is 'AFTER INSERT/UPDATE trigger: stores each new version of steps in flow_versions.';

create trigger flows_bump_version
    before update on flows
    for each row execute function flows_bump_version();

create trigger flows_touch_updated_at
    before update on flows
    for each row execute function tolstoy_touch_updated_at();

create trigger flows_record_version
    after insert or update on flows
    for each row execute function flows_record_version();

-- Versions are history: refuse edits so nobody rewrites what a run pinned.
create function flow_versions_immutable() returns trigger
language plpgsql as $$
begin
    raise exception 'flow_versions rows are immutable' using errcode = 'restrict_violation';
end;
$$;

comment on function flow_versions_immutable() is 'BEFORE UPDATE trigger: flow versions are never changed.';

create trigger flow_versions_immutable
    before update on flow_versions
    for each row execute function flow_versions_immutable();

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop table flow_versions;
drop function flow_versions_immutable();
drop table flows;
drop function flows_record_version();
drop function flows_bump_version();
