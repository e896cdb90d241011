"""Isolation by construction, checked over the whole catalog rather than table by table: whatever
a migration (or the history upkeep) adds later is covered the day it appears.

Each test runs after the migrations *and* after partitions were made the two ways they are made in
production: by the workers' history upkeep (tolstoy_maintain_history, months ahead) and by a DBA
calling tolstoy_ensure_partitions for some other month."""

from __future__ import annotations

import re

import pytest

from tolstoy.db.queries import SQL

# The login roles the services use: neither may reach a relation that is not isolated.
SERVICE_ROLES = ("tolstoy_app", "tolstoy_worker")

# Relations a service role may touch that hold no organization's data, reviewed one by one.
# Adding one here is a security review: say why it holds nothing of any tenant.
NON_TENANT = {
    # dbmate's applied versions (file names); /status shows the newest.
    "schema_migrations",
}

# The reviewed row-level security policies: (relation, policy, roles it applies to, USING, WITH CHECK).
# Monthly partitions are written <parent>_pYYYY_MM. A policy open to everyone (PUBLIC) may only trust
# tolstoy_current_org(), which reads app.org_id: the one setting the services are meant to set. The
# others are bound to roles no service logs in as (test_no_service_role_holds_a_privileged_role):
# tolstoy_engine owns the cross-tenant functions, tolstoy_history the run history's partitions, and
# tolstoy_admin is the admin login of the /organizations routes.
#
# No policy trusts any other setting, and there is no test-only setting that a service role could
# flip in production: the clock tests move (tolstoy_clock, read by tolstoy_now()) is a table only the
# schema owner may change (tests/db/test_clock.py), and tolstoy_maintain_history takes today's date
# from its caller but refuses one after the clock's. A setting of that kind added later must not
# appear in a policy (test_no_policy_trusts_a_setting_other_than_app_org_id) and must be locked away
# from the service roles.
TENANT = ("PUBLIC", "(org_id = tolstoy_current_org())", "(org_id = tolstoy_current_org())")
REVIEWED_POLICIES = {
    *{(table, "tenant_isolation", *TENANT) for table in (
        "actions", "api_keys", "execution_logs", "execution_logs_default", "execution_logs_pYYYY_MM",
        "flow_run_signals", "flow_run_steps", "flow_run_steps_default", "flow_run_steps_pYYYY_MM", "flow_runs",
        "flow_runs_default", "flow_runs_pYYYY_MM", "flow_trigger_deliveries", "flow_triggers", "flow_versions",
        "flows", "history_bytes", "oauth_states", "oauth_tokens", "organization_keys", "organization_quotas",
        "organization_usage", "organization_worker_time", "secret_reads", "sync_execute_slots", "tool_credentials",
        "flow_step_slots",
        "tool_rate_budgets",
        "tools", "user_connections", "users", "webhook_deliveries", "webhook_lines", "webhooks")},
    ("organizations", "own_organization", "PUBLIC", "(id = tolstoy_current_org())", None),
    # The audit trail: read by the organization; written (the tolstoy_audit trigger) and pruned
    # (tolstoy_prune_audit) only by tolstoy_engine, whose grants leave out update.
    ("audit_events", "tenant_isolation", "PUBLIC", "(org_id = tolstoy_current_org())", None),
    ("audit_events", "engine_access", "tolstoy_engine", "true", "true"),
    ("organizations", "admin_all", "tolstoy_admin", "true", "true"),
    # The history upkeep's "does this month still hold an unfinished run?" reads every organization's
    # runs of a month, and only reads them (as may the schema owner, a member, for a DBA's checks).
    *{(f"{table}_{month}", "history_upkeep", "tolstoy_history", "true", None)
      for table in ("flow_runs", "flow_run_steps", "execution_logs") for month in ("default", "pYYYY_MM")},
    *{(table, "engine_access", "tolstoy_engine", "true", "true")
      for table in ("api_keys", "execution_logs", "flow_runs", "flow_step_slots", "flow_triggers", "history_bytes",
                    "webhook_deliveries", "webhook_lines")},
    *{(table, "engine_access", "tolstoy_engine", "true", None)
      for table in ("flow_run_signals", "flow_run_steps", "flow_trigger_deliveries", "organization_worker_time",
                    "webhooks")},
}
PRIVILEGED_ROLES = ("tolstoy_engine", "tolstoy_history", "tolstoy_admin")


@pytest.fixture
def partitioned(db, worker_db):
    """The database with partitions made the ways production makes them."""
    made = worker_db.scalar(SQL.runs.maintain_history, today=None, retention_days=None, months_ahead=6,
                            delivery_retention_days=None)
    assert made["created"] > 0, made
    with db.pool.connection() as conn:
        conn.execute("select tolstoy_ensure_partitions('2031-06-01', 2)")
        count = conn.execute("select count(*) as n from pg_class where relispartition").fetchone()["n"]
    assert count >= 3 * (7 + 2) + 3  # three tables: months ahead, the DBA's months, the defaults
    return db


def relations(conn) -> list[dict]:
    """Every table, partition, view and materialized view outside PostgreSQL's own schemas, with what
    each service role may do to it and its row-level security."""
    return conn.execute(
        """
        select c.oid, n.nspname as schema, c.relname as name, c.relkind as kind, c.relispartition as partition,
               c.relrowsecurity as enabled, c.relforcerowsecurity as forced,
               array(select r.role from unnest(%s::text[]) as r(role)
                     where has_table_privilege(r.role, c.oid, 'select, insert, update, delete, truncate')
                        or has_any_column_privilege(r.role, c.oid, 'select, insert, update')) as reachable_by
        from pg_class c
        join pg_namespace n on n.oid = c.relnamespace
        where c.relkind in ('r', 'p', 'v', 'm', 'f')
          and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_toast%%'
        order by 2, 3
        """, (list(SERVICE_ROLES),)).fetchall()


def policies(conn) -> list[dict]:
    """Every row-level security policy, with the roles it applies to and its expressions."""
    return conn.execute(
        """
        select c.oid as relation, c.relname as name, p.polname as policy, p.polcmd as command,
               p.polpermissive as permissive,
               case when p.polroles = '{0}' then 'PUBLIC'
                    else array_to_string(array(select rolname from pg_roles where oid = any(p.polroles)
                                               order by rolname), ',') end as roles,
               pg_get_expr(p.polqual, p.polrelid) as using, pg_get_expr(p.polwithcheck, p.polrelid) as check
        from pg_policy p join pg_class c on c.oid = p.polrelid
        order by 2, 3
        """).fetchall()


def monthly(name: str) -> str:
    return re.sub(r"_p\d{4}_\d{2}$", "_pYYYY_MM", name)


def test_every_relation_a_service_role_can_touch_is_isolated(partitioned):
    with partitioned.pool.connection() as conn:
        every = relations(conn)
        by_relation: dict = {}
        for policy in policies(conn):
            by_relation.setdefault(policy["relation"], []).append(policy)
    reachable = [r for r in every if r["reachable_by"]]
    assert {"flow_runs", "organizations", "users"} <= {r["name"] for r in reachable}
    problems = []
    for relation in reachable:
        if relation["name"] in NON_TENANT and relation["schema"] == "public":
            continue
        own = by_relation.get(relation["oid"], [])
        # Policies a service role is subject to: PUBLIC's (roles of their own are checked elsewhere).
        public = [p for p in own if p["roles"] == "PUBLIC"]
        if not (relation["enabled"] and relation["forced"]):
            problems.append(f"{relation['name']}: row-level security not enabled and forced "
                            f"(reachable by {relation['reachable_by']})")
        if not any(p["permissive"] and "tolstoy_current_org()" in (p["using"] or "") for p in public):
            problems.append(f"{relation['name']}: no policy confines it to the organization")
        for policy in public:
            for expression in (policy["using"], policy["check"]):
                if expression is not None and "tolstoy_current_org()" not in expression:
                    problems.append(f"{relation['name']}.{policy['policy']}: {expression} ignores the organization")
    assert not problems, "\n".join(problems)


def test_no_service_role_reads_a_monthly_partition_directly_and_partitions_are_isolated_anyway(partitioned):
    with partitioned.pool.connection() as conn:
        every = relations(conn)
    parts = [r for r in every if r["partition"]]
    assert {monthly(r["name"]) for r in parts} >= {"flow_runs_pYYYY_MM", "flow_run_steps_pYYYY_MM",
                                                   "execution_logs_pYYYY_MM", "flow_runs_default"}
    assert [r["name"] for r in parts if r["reachable_by"]] == []  # the services go through the parents
    assert [r["name"] for r in parts if not (r["enabled"] and r["forced"])] == []


def test_no_login_role_may_truncate_create_or_own_anything_nor_hold_a_privileged_role(partitioned):
    logins = [*SERVICE_ROLES, "tolstoy_admin"]
    with partitioned.pool.connection() as conn:
        truncatable = conn.execute(
            "select c.relname, r.role from pg_class c cross join unnest(%s::text[]) as r(role) "
            "where c.relkind in ('r', 'p') and has_table_privilege(r.role, c.oid, 'truncate, references, trigger')",
            (logins,)).fetchall()
        creating = conn.execute(
            "select n.nspname, r.role from pg_namespace n cross join unnest(%s::text[]) as r(role) "
            "where has_schema_privilege(r.role, n.oid, 'create')", (logins,)).fetchall()
        owned = conn.execute(
            "select c.relname as name from pg_class c join pg_roles r on r.oid = c.relowner where r.rolname = any(%s) "
            "union all select p.proname from pg_proc p join pg_roles r on r.oid = p.proowner "
            "where r.rolname = any(%s)", (logins, logins)).fetchall()
        roles = conn.execute(
            "select r.rolname, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb, "
            "array(select g from unnest(%s::text[]) as g "
            "      where g <> r.rolname and pg_has_role(r.oid, g, 'member')) as holds "
            "from pg_roles r where r.rolname = any(%s) order by 1",
            ([*PRIVILEGED_ROLES, *logins], logins)).fetchall()
    assert truncatable == []  # TRUNCATE ignores row-level security
    assert creating == []  # an object of its own would be one it owns
    assert owned == []  # an owner may switch row-level security off
    assert roles == [{"rolname": role, "rolsuper": False, "rolbypassrls": False, "rolcreaterole": False,
                      "rolcreatedb": False, "holds": []} for role in sorted(logins)]


def test_the_row_level_security_policies_are_the_reviewed_ones(partitioned):
    with partitioned.pool.connection() as conn:
        found = {(monthly(p["name"]), p["policy"], p["roles"], p["using"], p["check"]) for p in policies(conn)}
        restrictive = [p for p in policies(conn) if not p["permissive"]]
    assert restrictive == []
    assert found - REVIEWED_POLICIES == set(), "new policies to review"
    assert REVIEWED_POLICIES - found == set(), "reviewed policies that are gone"


def test_no_policy_trusts_a_setting_other_than_app_org_id(partitioned):
    """What a policy calls, followed through every function it calls in turn, reads no setting but
    app.org_id: any other (app.admin was one) is a switch a service role can flip with set_config."""
    with partitioned.pool.connection() as conn:
        functions = {row["name"]: row["source"] for row in conn.execute(
            "select p.proname as name, string_agg(p.prosrc, ' ') as source from pg_proc p "
            "join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'public' group by 1").fetchall()}
        expressions = [e for p in policies(conn) for e in (p["using"], p["check"]) if e]
    called = re.compile(r"\b(" + "|".join(map(re.escape, functions)) + r")\s*\(")
    seen: set = set()
    todo = [name for text in expressions for name in called.findall(text)]
    settings = set()
    for text in expressions:
        settings |= set(re.findall(r"current_setting\(\s*'([^']+)'", text))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        settings |= set(re.findall(r"current_setting\(\s*'([^']+)'", functions[name]))
        todo += called.findall(functions[name])
    assert "tolstoy_current_org" in seen
    assert settings == {"app.org_id"}, settings


def test_no_security_definer_function_is_owned_by_a_superuser_and_each_pins_its_search_path(partitioned):
    with partitioned.pool.connection() as conn:
        definers = conn.execute(
            "select p.oid::regprocedure::text as function, r.rolname as owner, r.rolsuper as superuser, "
            "r.rolbypassrls as bypass, r.rolcanlogin as login, coalesce(p.proconfig, '{}') as config "
            "from pg_proc p join pg_roles r on r.oid = p.proowner "
            "join pg_namespace n on n.oid = p.pronamespace "
            "where p.prosecdef and n.nspname not in ('pg_catalog', 'information_schema') order by 1").fetchall()
    names = {d["function"].split("(")[0] for d in definers}
    assert {"tolstoy_maintain_history", "tolstoy_ensure_partitions", "tolstoy_claim_runs"} <= names
    problems = [d for d in definers
                if d["superuser"] or d["bypass"] or d["login"]
                or not any(c.startswith("search_path=") for c in d["config"])]
    assert problems == []


# The security definer functions (they run as their owner, across organizations) each login role may
# call. A new one is executable by PUBLIC unless its migration revokes that: it must be added here.
# Every role reads the clock (tolstoy_now, tolstoy_clock_timestamp: they return a time and nothing of
# any organization; the offset they read is the owner's to set).
CLOCK = {"tolstoy_now", "tolstoy_clock_timestamp"}
REVIEWED_DEFINERS = {
    "tolstoy_app": {"tolstoy_enter_key", "tolstoy_hook_target", "tolstoy_key_grant", "tolstoy_queue_stats",
                    "tolstoy_parked_runs", "tolstoy_usage", *CLOCK},
    "tolstoy_worker": {*CLOCK, "tolstoy_claim_deliveries", "tolstoy_claim_runs", "tolstoy_claim_runs_v2",
                       "tolstoy_claim_schedules", "tolstoy_expire_unknown_outcomes", "tolstoy_maintain_history",
                       "tolstoy_next_delivery", "tolstoy_next_schedule",
                       "tolstoy_prune_audit", "tolstoy_prune_deliveries", "tolstoy_prune_signals", "tolstoy_queue_stats",
                       "tolstoy_renew_leases"},
    # The usage of the organization its unit acts for (GET /organizations/{id}/usage): no grant on runs needed.
    "tolstoy_admin": {"tolstoy_usage", *CLOCK},
}


def test_each_login_role_may_call_only_the_reviewed_security_definer_functions(partitioned):
    with partitioned.pool.connection() as conn:
        rows = conn.execute(
            "select r.role, p.proname from pg_proc p cross join unnest(%s::text[]) as r(role) "
            "where p.prosecdef and has_function_privilege(r.role, p.oid, 'execute')",
            (list(REVIEWED_DEFINERS),)).fetchall()
    found = {role: set() for role in REVIEWED_DEFINERS}
    for row in rows:
        found[row["role"]].add(row["proname"])
    assert found == REVIEWED_DEFINERS

