-- Bookkeeping every table shares: updated_at, version numbers, flow version history, timestamps spelled as the API spells them.
--
-- The current source of these functions (db/functions/README.md says how to change one).

create or replace function tolstoy_touch_updated_at() returns trigger
language plpgsql as $$
begin
    if row(new.*) is distinct from row(old.*) then
        new.updated_at := now();
    else
        new.updated_at := old.updated_at;
    end if;
    return new;
end;
$$;

comment on function tolstoy_touch_updated_at() is
    'BEFORE UPDATE trigger: sets updated_at to now() when any column changed, keeps it otherwise.';

create or replace function actions_bump_version() returns trigger
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

create or replace function flows_bump_version() returns trigger
language plpgsql as $$
begin
    if new.steps is distinct from old.steps or new.on_failure is distinct from old.on_failure then
        new.version := old.version + 1;
    else
        new.version := old.version;
    end if;
    return new;
end;
$$;

comment on function flows_bump_version() is 'BEFORE UPDATE trigger: version + 1 when steps or on_failure change.';

create or replace function flows_record_version() returns trigger
language plpgsql as $$
begin
    if tg_op = 'INSERT' or new.version <> old.version then
        insert into flow_versions (org_id, flow_id, version, steps, on_failure)
        values (new.org_id, new.id, new.version, new.steps, new.on_failure);
    end if;
    return null;
end;
$$;

comment on function flows_record_version() is
    'AFTER INSERT/UPDATE trigger: stores each new version of steps (and on_failure) in flow_versions.';

create or replace function flow_versions_immutable() returns trigger
language plpgsql as $$
begin
    raise exception 'flow_versions rows are immutable' using errcode = 'restrict_violation';
end;
$$;

comment on function flow_versions_immutable() is 'BEFORE UPDATE trigger: flow versions are never changed.';

create or replace function tolstoy_iso(t timestamptz) returns text
language plpgsql immutable as $$
begin
    return to_char(t at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
end;
$$;

comment on function tolstoy_iso(timestamptz) is 'A timestamp as the API shows it: ISO 8601 UTC with milliseconds.';
