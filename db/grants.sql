-- Privileges of the login roles the services use. `tolstoy db up` runs this
-- after the migrations; it is idempotent.
--
--   role            used by                                        URL setting
--   tolstoy_app     the API (Gunicorn)                              DATABASE_URL
--   tolstoy_worker  the flow workers (tolstoy worker)               WORKER_DATABASE_URL
--   tolstoy_admin   the API's /organizations cross-tenant routes    ADMIN_DATABASE_URL
--   (the owner)     migrations, `tolstoy secrets`                   DIRECT_URL, or DATABASE_URL as the owner
--
-- None owns anything or has BYPASSRLS: every tenant row they read or write
-- passes the row-level security policies. Only tolstoy_worker may run the
-- queue's cross-tenant functions; only tolstoy_admin sees every organization
-- (its own policy on organizations, 20261207000002). Passwords are the DBA's
-- business: `alter role tolstoy_app password '…'` once, then use it in the URL.
--
-- Grants are an explicit list, table by table: each run first takes back
-- everything the services hold on tables, then grants what is listed here. A
-- new table is reachable by no service until it is listed, and the run
-- history's monthly partitions never are (the services go through the parent
-- tables; `grant ... on all tables` used to reach every partition).
-- tests/db/test_catalog.py checks that whatever a service can reach has
-- row-level security forced with an organization policy.

do $$
begin
    if not exists (select from pg_roles where rolname = 'tolstoy_app') then
        create role tolstoy_app login;
    end if;
    if not exists (select from pg_roles where rolname = 'tolstoy_worker') then
        create role tolstoy_worker login;
    end if;
    if not exists (select from pg_roles where rolname = 'tolstoy_admin') then
        create role tolstoy_admin login;
    end if;
    execute format('grant connect on database %I to tolstoy_app, tolstoy_worker, tolstoy_admin',
                   current_database());
end;
$$;

revoke all on all tables in schema public from tolstoy_app, tolstoy_worker, tolstoy_admin;

-- The API: every tenant table of the contract, under row-level security. Its
-- own organization only, read and renamed: creating and deleting organizations
-- is tolstoy_admin's.
grant usage on schema public to tolstoy_app;
grant select, update on organizations to tolstoy_app;
grant select, insert, update, delete on users, tools, actions, flows, flow_versions, tool_credentials, api_keys,
    oauth_tokens, execution_logs, flow_runs, flow_run_steps to tolstoy_app;
-- bounded synchronous execute (20261201000006): the slots of running calls.
grant select, insert, update, delete on sync_execute_slots to tolstoy_app;
grant select on table schema_migrations to tolstoy_app;
grant usage, select on all sequences in schema public to tolstoy_app;
grant execute on function tolstoy_enter_key(bytea, uuid, integer) to tolstoy_app;
grant execute on function tolstoy_key_grant(bytea) to tolstoy_app;
grant execute on function tolstoy_queue_stats() to tolstoy_app;
grant execute on function tolstoy_parked_runs() to tolstoy_app;
-- The API never claims runs: earlier versions granted it the queue's functions.
revoke execute on function tolstoy_claim_runs(text, integer, double precision, integer) from tolstoy_app;
revoke execute on function tolstoy_claim_runs_v2(text, integer, double precision, integer, double precision)
    from tolstoy_app;
revoke execute on function tolstoy_renew_leases(text, uuid[], uuid[], integer[], double precision) from tolstoy_app;
revoke execute on function tolstoy_maintain_history(date, integer, integer) from tolstoy_app;

-- The admin login: every organization (its policy), and the first API key of
-- an organization it creates, written as that organization (row-level
-- security). Nothing of any tenant: no users, flows, runs or credentials.
grant usage on schema public to tolstoy_admin;
grant select, insert, update, delete on organizations to tolstoy_admin;
grant select, insert on api_keys to tolstoy_admin;

-- The workers: the tables a run touches (tool credentials for OAuth2 token
-- refreshes), under row-level security, and the queue's cross-tenant functions.
grant usage on schema public to tolstoy_worker;
grant select on organizations, users, tools, actions, flows, flow_versions to tolstoy_worker;
grant select, insert, update on flow_runs, flow_run_steps, execution_logs, tool_credentials to tolstoy_worker;
grant select, insert, update on oauth_tokens to tolstoy_worker;
grant select on table schema_migrations to tolstoy_worker;
grant execute on function tolstoy_claim_runs(text, integer, double precision, integer) to tolstoy_worker;
-- Faults and fair claims (20261208000100): the claim of this release (one row per run, fair across
-- organizations), and the worker time each organization used, which the checkpoint counts.
grant execute on function tolstoy_claim_runs_v2(text, integer, double precision, integer, double precision)
    to tolstoy_worker;
grant select, insert, update on organization_worker_time to tolstoy_worker;
grant execute on function tolstoy_renew_leases(text, uuid[], uuid[], integer[], double precision) to tolstoy_worker;
grant execute on function tolstoy_maintain_history(date, integer, integer) to tolstoy_worker;
grant execute on function tolstoy_queue_stats() to tolstoy_worker;

-- envelope encryption: organizations' wrapped data keys and the trail of
-- credential reads (20261201000005). Both services make an organization's first
-- data key and record reads; only the retirement of old key versions updates a
-- key. Neither may delete a key, nor change or delete an audit row.
grant select, insert, update on organization_keys to tolstoy_app, tolstoy_worker;
grant select, insert on secret_reads to tolstoy_app, tolstoy_worker;
grant execute on function tolstoy_key_version(bytea) to tolstoy_app, tolstoy_worker;

-- flow triggers (20261201000008): the API manages triggers, writes the inbox
-- and looks up the trigger of a public webhook request; the workers lock due
-- schedules across organizations and fire them (advancing next_run_at, under
-- row-level security).
grant select, insert, update, delete on flow_triggers, flow_trigger_deliveries to tolstoy_app;
grant execute on function tolstoy_hook_target(uuid) to tolstoy_app;
grant select, update on flow_triggers to tolstoy_worker;
grant execute on function tolstoy_claim_schedules(text, integer, timestamptz) to tolstoy_worker;
grant execute on function tolstoy_next_schedule() to tolstoy_worker;
grant execute on function tolstoy_fire_schedules(timestamptz, jsonb) to tolstoy_worker;

-- wait steps and signals (20261201000011): the API stores signals; the workers
-- take them for the wait step that consumes them, under row-level security.
grant select, insert, update, delete on flow_run_signals to tolstoy_app;
grant select, update on flow_run_signals to tolstoy_worker;
grant execute on function tolstoy_take_signal(uuid, uuid, text, text) to tolstoy_worker;
-- Deleting the signals of runs dropped past retention crosses tenants (the
-- workers' hourly upkeep, with tolstoy_maintain_history).
grant execute on function tolstoy_prune_signals(integer, integer) to tolstoy_worker;
revoke execute on function tolstoy_prune_signals(integer, integer) from tolstoy_app;
-- Failing the steps parked on an unknown outcome past TOLSTOY_UNKNOWN_OUTCOME_TIMEOUT_DAYS
-- crosses tenants too (20261208000403, the same upkeep).
grant execute on function tolstoy_expire_unknown_outcomes(integer, integer) to tolstoy_worker;
revoke execute on function tolstoy_expire_unknown_outcomes(integer, integer) from tolstoy_app;

-- sub-flows (20261201000013): a subflow step's one statement (checkpoint, queue
-- the child, park the parent), under row-level security.
grant execute on function tolstoy_subflow(text, uuid, uuid, integer, jsonb, jsonb) to tolstoy_worker;

-- outbound event webhooks (20261201000010): the API manages webhooks and reads
-- their deliveries; the workers write the events of the runs they move
-- (triggers on the run tables), claim deliveries across organizations, record
-- attempts (disabling a webhook that keeps failing) and prune old deliveries
-- and the trigger inbox.
grant select, insert, update, delete on webhooks, webhook_deliveries to tolstoy_app;
grant select, update on webhooks to tolstoy_worker;
grant select, insert, update on webhook_deliveries to tolstoy_worker;
grant execute on function tolstoy_claim_deliveries(text, integer, double precision) to tolstoy_worker;
grant execute on function tolstoy_next_delivery() to tolstoy_worker;
grant execute on function tolstoy_record_delivery(text, uuid, uuid, integer, jsonb) to tolstoy_worker;
grant execute on function tolstoy_prune_deliveries(integer, integer) to tolstoy_worker;
revoke execute on function tolstoy_claim_deliveries(text, integer, double precision) from tolstoy_app;
revoke execute on function tolstoy_record_delivery(text, uuid, uuid, integer, jsonb) from tolstoy_app;
revoke execute on function tolstoy_prune_deliveries(integer, integer) from tolstoy_app;
-- fair, ordered deliveries (20261208000401): recording an attempt tells the
-- webhook's line (its queue state) when it is due next, under row-level
-- security; placing deliveries at commit and claiming them is tolstoy_engine's.
grant select, update on webhook_lines to tolstoy_worker;

-- per-user OAuth connections (20261201000014): the API manages connections and
-- login states; the workers read a run's user's tokens and refresh them, under
-- row-level security.
grant select, insert, update, delete on user_connections, oauth_states to tolstoy_app;
grant select, update on user_connections to tolstoy_worker;

-- quotas per organization (20261208000500): the operator's overrides are the
-- admin login's to write (as that organization, under row-level security) and
-- everyone's to read for their own organization; the admission of a new run
-- (tolstoy_admit_run, inside tolstoy_queue_run: the API and the workers) locks
-- and raises its organization's usage row and folds its history byte counts;
-- the usage route reads the current organization's counts (tolstoy_usage).
grant select on organization_quotas to tolstoy_app, tolstoy_worker;
grant select, insert, update, delete on organization_quotas to tolstoy_admin;
grant select, insert, update on organization_usage to tolstoy_app, tolstoy_worker;
grant select, insert, delete on history_bytes to tolstoy_app, tolstoy_worker;
grant execute on function tolstoy_usage() to tolstoy_app, tolstoy_admin;

-- the audit trail (20261208001200): the API reads its organization's events
-- (GET /audit-events, the console). No service may write, change or delete one:
-- events are written by the tolstoy_audit trigger (owned by tolstoy_engine) in
-- the transaction of the change, and deleted only past retention by the
-- workers' housekeeping (tolstoy_prune_audit, in sql/runs.sql prune).
grant select on audit_events to tolstoy_app;
grant execute on function tolstoy_prune_audit(integer, integer) to tolstoy_worker;
revoke execute on function tolstoy_prune_audit(integer, integer) from tolstoy_app;

-- a run's state changes asked for through the API (20261209000200): cancel a
-- run with the runs below it, resolve a step whose outcome is unknown. They run
-- as their caller, under row-level security for the organization it acts for.
grant execute on function tolstoy_cancel_run(uuid, uuid, uuid, uuid) to tolstoy_app;
grant execute on function tolstoy_cancel_descendants(uuid, uuid) to tolstoy_app;
grant execute on function tolstoy_resolve_step(uuid, uuid, uuid, text, uuid, text, jsonb, bytea, jsonb, boolean)
    to tolstoy_app;

-- sending a signal to a run (20261209000300): stored, the run woken and the
-- send logged in one function, run as its caller under row-level security.
grant execute on function tolstoy_send_signal(uuid, uuid, uuid, text, jsonb, uuid, text, text, uuid, text)
    to tolstoy_app;
grant execute on function tolstoy_unfinished_waits(uuid, uuid, timestamptz, jsonb, text) to tolstoy_app;

-- rate budgets per credential (20261211000100): the workers take from and teach each credential's
-- budget (tolstoy_checkpoint_call); the API shows it (GET /tools/{id}/rate-limit).
grant select on tool_rate_budgets to tolstoy_app;
grant select, insert, update on tool_rate_budgets to tolstoy_worker;

-- step concurrency limits (20261216000100): the workers take and free step slots (tolstoy_checkpoint_slots);
-- a run the API cancels frees the slots it holds and hands them on (flow_runs_release_step_slots).
grant select, insert, delete on flow_step_slots to tolstoy_app, tolstoy_worker;
