-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- API keys: stored only as HMAC-SHA256(server secret, key); the prefix lets a
-- person recognise a key in a list without it being usable.
create table api_keys (
    org_id uuid not null,
    id uuid not null default gen_random_uuid(),
    name text not null,
    prefix text not null,
    key_hash bytea not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    last_used_at timestamptz,
    revoked_at timestamptz,
    constraint api_keys_pkey primary key (org_id, id),
    -- Keys (revoked ones included) belong to their organization and go with it.
    constraint api_keys_org_id_fkey foreign key (org_id)
        references organizations (id) on delete cascade,
    constraint api_keys_name_length check (char_length(name) between 1 and 200),
    constraint api_keys_key_hash_length check (octet_length(key_hash) = 32)
);

comment on table api_keys is 'Bearer keys of an organization (TOLSTOY_AUTH_MODE=api_key); only a keyed hash is stored.';
comment on column api_keys.key_hash is 'HMAC-SHA256 of the key under TOLSTOY_API_KEY_SECRET; the key itself is shown once.';
comment on column api_keys.last_used_at is 'Refreshed at most once a minute, so authentication stays a read.';
comment on column api_keys.revoked_at is 'Revoked keys are kept for the audit trail and never authenticate.';

-- Authentication looks a key up by its hash alone (before the organization is known).
-- Unique without org_id on purpose: a hash identifies one key across tenants.
create unique index api_keys_key_hash_key on api_keys (key_hash);
create index api_keys_org_id_created_at_id_idx on api_keys (org_id, created_at desc, id desc);

create trigger api_keys_touch_updated_at
    before update on api_keys
    for each row execute function tolstoy_touch_updated_at();

-- Row-level security: the second wall behind every query's own org_id filter.
-- The application sets app.org_id with set_config(..., true) in each
-- transaction; a session that has not set it sees and writes nothing.
create function tolstoy_current_org() returns uuid
language sql stable as $$
    select nullif(current_setting('app.org_id', true), '')::uuid
$$;

comment on function tolstoy_current_org() is
    'The organization this transaction acts for (app.org_id), or null when none was set.';

do $$
declare
    tenant_table text;
begin
    foreach tenant_table in array array[
        'users', 'tools', 'actions', 'flows', 'flow_versions', 'execution_logs',
        'flow_runs', 'flow_run_steps', 'tool_credentials', 'api_keys'
    ] loop
        execute format('alter table %I enable row level security', tenant_table);
        execute format('alter table %I force row level security', tenant_table);
        execute format(
            'create policy tenant_isolation on %I using (org_id = tolstoy_current_org()) '
            'with check (org_id = tolstoy_current_org())', tenant_table);
    end loop;
end;
$$;

-- The few operations that must see every tenant (a worker claiming runs,
-- authenticating a key before its organization is known) run as
-- tolstoy_engine: a role that cannot log in, owns these functions, and is
-- let through by its own policies on exactly the tables they touch.
do $$
begin
    if not exists (select from pg_roles where rolname = 'tolstoy_engine') then
        create role tolstoy_engine nologin;
    end if;
end;
$$;

grant tolstoy_engine to current_user;
grant usage on schema public to tolstoy_engine;
grant select, update on flow_runs to tolstoy_engine;
grant select, update on api_keys to tolstoy_engine;

create policy engine_access on flow_runs to tolstoy_engine using (true) with check (true);
create policy engine_access on api_keys to tolstoy_engine using (true) with check (true);

create function tolstoy_claim_runs(worker text, max_runs integer, lease_seconds double precision)
returns table (org_id uuid, id uuid, flow_id uuid, flow_version integer, user_id uuid,
               variables jsonb, claims integer)
language sql security definer set search_path = public, pg_temp as $$
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

comment on function tolstoy_claim_runs(text, integer, double precision) is
    'Claim up to max_runs due runs of any organization (SKIP LOCKED) under a lease for worker.';

create function tolstoy_renew_leases(worker text, lease_seconds double precision) returns integer
language sql security definer set search_path = public, pg_temp as $$
    with renewed as (
        update flow_runs
        set lease_expires_at = now() + make_interval(secs => lease_seconds)
        where lease_owner = worker and status = 'running'
        returning 1
    )
    select count(*)::integer from renewed
$$;

comment on function tolstoy_renew_leases(text, double precision) is
    'Heartbeat: extend the lease of every run the worker holds.';

create function tolstoy_next_wake() returns timestamptz
language sql stable security definer set search_path = public, pg_temp as $$
    select min(run_after) from flow_runs where status = 'queued'
$$;

comment on function tolstoy_next_wake() is 'When the earliest queued run of any organization becomes due.';

create function tolstoy_queue_stats()
returns table (queued bigint, due bigint, oldest_due_age_seconds double precision)
language sql stable security definer set search_path = public, pg_temp as $$
    select count(*),
           count(*) filter (where run_after <= now()),
           coalesce(extract(epoch from now() - min(run_after) filter (where run_after <= now())), 0)::float8
    from flow_runs
    where status = 'queued'
$$;

comment on function tolstoy_queue_stats() is
    'Queue depth across organizations for /metrics: queued runs, due ones, age of the oldest due one.';

create function tolstoy_authenticate(hash bytea) returns table (org_id uuid, key_id uuid)
language sql security definer set search_path = public, pg_temp as $$
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

comment on function tolstoy_authenticate(bytea) is
    'The organization and key id of an unrevoked API key hash; refreshes last_used_at once a minute.';

alter function tolstoy_claim_runs(text, integer, double precision) owner to tolstoy_engine;
alter function tolstoy_renew_leases(text, double precision) owner to tolstoy_engine;
alter function tolstoy_next_wake() owner to tolstoy_engine;
alter function tolstoy_authenticate(bytea) owner to tolstoy_engine;
alter function tolstoy_queue_stats() owner to tolstoy_engine;
revoke execute on function tolstoy_claim_runs(text, integer, double precision) from public;
revoke execute on function tolstoy_renew_leases(text, double precision) from public;
revoke execute on function tolstoy_next_wake() from public;
revoke execute on function tolstoy_authenticate(bytea) from public;
revoke execute on function tolstoy_queue_stats() from public;

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop function tolstoy_authenticate(bytea);
drop function tolstoy_queue_stats();
drop function tolstoy_next_wake();
drop function tolstoy_renew_leases(text, double precision);
drop function tolstoy_claim_runs(text, integer, double precision);
drop policy engine_access on api_keys;
drop policy engine_access on flow_runs;
revoke select, update on flow_runs from tolstoy_engine;
revoke usage on schema public from tolstoy_engine;

do $$
declare
    tenant_table text;
begin
    foreach tenant_table in array array[
        'users', 'tools', 'actions', 'flows', 'flow_versions', 'execution_logs',
        'flow_runs', 'flow_run_steps', 'tool_credentials'
    ] loop
        execute format('drop policy tenant_isolation on %I', tenant_table);
        execute format('alter table %I no force row level security', tenant_table);
        execute format('alter table %I disable row level security', tenant_table);
    end loop;
end;
$$;

-- Dropping api_keys also drops its policies and tolstoy_engine's grants on it.
drop table api_keys;
drop function tolstoy_current_org();
-- The tolstoy_engine role stays: roles are cluster-wide and may serve other databases.
