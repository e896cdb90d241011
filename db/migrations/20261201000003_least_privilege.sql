-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Least privilege, round two.
--
-- 1. Workers log in as their own role, tolstoy_worker. It alone may run the
--    queue's cross-tenant functions (claim, lease renewal, history upkeep),
--    which read every organization's runs; the API's role, tolstoy_app, can no
--    longer call them. db/grants.sql holds the grants (pg_dump leaves them out);
--    the role is created here because roles belong to the cluster, and it is
--    left in place on the way down for the same reason (other databases of the
--    cluster may use it).
-- 2. organizations gets row-level security like every tenant table: a
--    transaction sees its own organization only, unless it opened as the
--    admin (app.admin = 'on', which only the /organizations routes set through
--    tolstoy_enter_admin).
-- 3. The lease renewal checks its arguments like the claim does.

do $$
begin
    if not exists (select from pg_roles where rolname = 'tolstoy_worker') then
        create role tolstoy_worker login;
    end if;
end;
$$;

-- ---- the admin path to organizations ------------------------------------------------

-- A unit that switches from the admin path to a tenant (creating an organization,
-- then its first API key) acts for that tenant only: the flag counts while no
-- organization is set.
create function tolstoy_is_admin() returns boolean
language sql stable as $$
    select coalesce(current_setting('app.admin', true), '') = 'on' and tolstoy_current_org() is null
$$;

comment on function tolstoy_is_admin() is
    'True in a transaction opened by tolstoy_enter_admin (the /organizations routes) while it acts for no '
    'organization: it may see every organization.';

create function tolstoy_enter_admin(timeout_ms integer) returns void
language plpgsql as $$
begin
    perform set_config('statement_timeout', timeout_ms::text || 'ms', true);
    perform set_config('app.org_id', '', true);
    perform set_config('app.admin', 'on', true);
end;
$$;

comment on function tolstoy_enter_admin(integer) is
    'Opens a unit of work that manages organizations themselves: no tenant, every organization row visible.';

alter table organizations enable row level security;

create policy own_organization on organizations
    using (id = tolstoy_current_org());
create policy admin_all on organizations
    using (tolstoy_is_admin()) with check (tolstoy_is_admin());

-- ---- lease renewal checks its arguments ---------------------------------------------

-- Heartbeat: extend the leases of the runs this worker is executing right now,
-- presenting each run's token; a lease that already expired is not renewed (it
-- may have been claimed by another worker). Returns the runs still held, and
-- whether a cancel was asked for, so it reaches a run within one heartbeat.
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

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create or replace function tolstoy_renew_leases(worker text, orgs uuid[], runs uuid[], tokens integer[],
                                                lease_seconds double precision)
returns table (run_id uuid, cancel boolean)
language sql security definer set search_path = public, pg_temp as $$
    update flow_runs r
    set lease_expires_at = now() + make_interval(secs => lease_seconds)
    from unnest(orgs, runs, tokens) as held(org_id, id, token)
    where r.org_id = held.org_id and r.id = held.id and r.lease_owner = worker and r.lease_token = held.token
      and r.status = 'running' and r.lease_expires_at > now() and lease_seconds > 0
    returning r.id, r.cancel_requested
$$;

drop policy admin_all on organizations;
drop policy own_organization on organizations;
alter table organizations disable row level security;
drop function tolstoy_enter_admin(integer);
drop function tolstoy_is_admin();

-- The grants of tolstoy_worker go with it from this database; the role itself
-- stays (it belongs to the cluster). db/grants.sql gives tolstoy_app back what
-- it had only when run from the previous version of the repository.
do $$
begin
    if exists (select from pg_roles where rolname = 'tolstoy_worker') then
        execute format('revoke all on database %I from tolstoy_worker', current_database());
        revoke all on all tables in schema public from tolstoy_worker;
        revoke all on all sequences in schema public from tolstoy_worker;
        revoke all on all functions in schema public from tolstoy_worker;
        revoke all on schema public from tolstoy_worker;
    end if;
end;
$$;
