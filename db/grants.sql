-- Privileges of the application's login role, tolstoy_app. `tolstoy db up`
-- runs this after the migrations, so new tables are covered; it is idempotent.
--
-- tolstoy_app owns nothing and has no BYPASSRLS: every tenant row it reads or
-- writes passes the tenant_isolation policies. Its password is the DBA's
-- business: `alter role tolstoy_app password '…'` once, then use it in DATABASE_URL.

do $$
begin
    if not exists (select from pg_roles where rolname = 'tolstoy_app') then
        create role tolstoy_app login;
    end if;
    execute format('grant connect on database %I to tolstoy_app', current_database());
end;
$$;

grant usage on schema public to tolstoy_app;
grant select, insert, update, delete on all tables in schema public to tolstoy_app;
revoke all on table schema_migrations from tolstoy_app;
grant select on table schema_migrations to tolstoy_app;
grant usage, select on all sequences in schema public to tolstoy_app;
grant execute on function tolstoy_enter_key(bytea, uuid, integer) to tolstoy_app;
grant execute on function tolstoy_queue_stats() to tolstoy_app;
-- The flow engine's cross-tenant functions (workers use this role too, for now).
grant execute on function tolstoy_claim_runs(text, integer, double precision, integer) to tolstoy_app;
grant execute on function tolstoy_renew_leases(text, uuid[], uuid[], integer[], double precision) to tolstoy_app;
grant execute on function tolstoy_maintain_history(date, integer, integer) to tolstoy_app;
