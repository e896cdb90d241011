"""Row-level security, the second wall: the application role sees and changes
only the organization its transaction acts for, even when a query forgets its
org_id filter."""

from __future__ import annotations

import re

import pytest

from tolstoy.db import migrate
from tolstoy.db.database import Database
from tolstoy.db.queries import Query
from tolstoy.engine.rotation import organization_ids
from tolstoy.errors import DatabaseUnavailable

TENANT_TABLES = ("users", "tools", "actions", "flows", "flow_versions", "execution_logs", "flow_runs",
                 "flow_run_steps", "tool_credentials", "api_keys", "organization_keys", "secret_reads")


def unscoped(sql: str, kind: str = "all") -> Query:
    """A deliberately careless query, as a bug would write it: no org_id filter."""
    return Query(name="test.unscoped", kind=kind, sql=sql, doc="", source="tests/test_rls.py")


def fill(api, db, name: str) -> dict:
    org = api.org(name)
    user = api.user(org)
    tool = api.tool(org)
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "bearer", "config": {"token": f"token-of-{name}"}})
    # Its data key (organization_keys) was made with it; showing it records a read (secret_reads).
    api.client.simulate_get(f"/tools/{tool['id']}/auth", headers=api.headers(org))
    api.action(org, tool)
    flow = api.flow(org)
    api.log(org, user, flow)
    run = api.client.simulate_post(f"/flows/{flow['id']}/execute", json={}, headers=api.headers(org, user)).json
    with db.pool.connection() as conn:  # a checkpoint and a key, as a worker and the key route would write
        conn.execute("insert into flow_run_steps (org_id, run_id, run_created_at, step_id, status) "
                     "select org_id, id, created_at, 'hello', 'completed' from flow_runs where id = %s",
                     (run["executionId"],))
        conn.execute("insert into api_keys (org_id, name, prefix, key_hash) values (%s, 'k', 'tsk_test', %s)",
                     (org["id"], bytes(range(32)) if name == "A" else bytes(range(1, 33))))
    return {"org": org, "user": user}


def test_the_application_role_owns_nothing_and_cannot_bypass(db):
    with db.pool.connection() as conn:
        role = conn.execute("select rolsuper, rolbypassrls from pg_roles where rolname = 'tolstoy_app'").fetchone()
        owned = conn.execute(
            "select count(*) as n from pg_class c join pg_roles r on r.oid = c.relowner "
            "where r.rolname = 'tolstoy_app'").fetchone()
        forced = conn.execute(
            "select relname, relrowsecurity, relforcerowsecurity from pg_class "
            "where relname = any(%s) order by relname", (list(TENANT_TABLES),)).fetchall()
    assert role == {"rolsuper": False, "rolbypassrls": False}
    assert owned["n"] == 0
    assert len(forced) == len(TENANT_TABLES)
    assert all(row["relrowsecurity"] and row["relforcerowsecurity"] for row in forced), forced


def test_a_query_without_org_filter_returns_only_the_tenants_rows(api, app_db, db):
    a = fill(api, db, "A")
    b = fill(api, db, "B")
    with db.pool.connection() as conn:  # the owner's view: both organizations' rows exist
        totals = {t: conn.execute(f"select count(*) as n from {t}").fetchone()["n"] for t in TENANT_TABLES}
    assert all(n >= 2 for n in totals.values()), totals
    with app_db.tenant(b["org"]["id"]):
        for table in TENANT_TABLES:
            rows = app_db.all(unscoped(f"select org_id from {table}"))
            assert rows and {str(r["org_id"]) for r in rows} == {b["org"]["id"]}, table
            assert len(rows) == totals[table] // 2, table
        # Writes are filtered the same way: A's rows cannot be touched or created.
        assert app_db.rowcount(unscoped("update users set name = 'stolen'", "rowcount")) == 1
        assert app_db.rowcount(unscoped("delete from execution_logs", "rowcount")) == totals["execution_logs"] // 2
        with pytest.raises(Exception, match="row-level security"):
            app_db.rowcount(unscoped(f"insert into users (org_id, email) values ('{a['org']['id']}', 'x@y.example')",
                                     "rowcount"))
    with db.pool.connection() as conn:
        untouched = conn.execute("select name from users where org_id = %s", (a["org"]["id"],)).fetchone()
        a_logs = conn.execute("select count(*) as n from execution_logs where org_id = %s",
                              (a["org"]["id"],)).fetchone()
    assert untouched["name"] == "Ada" and a_logs["n"] > 0


def test_without_a_tenant_the_application_role_sees_nothing(api, app_db, db):
    fill(api, db, "A")
    for table in TENANT_TABLES:
        assert app_db.all(unscoped(f"select org_id from {table}")) == [], table


def test_the_cross_tenant_functions_are_not_open_to_everyone(db, app_url, url_for):
    with db.pool.connection() as conn:
        granted = conn.execute(
            "select p.proname, r.rolname from pg_proc p cross join lateral aclexplode(p.proacl) a "
            "join pg_roles r on r.oid = a.grantee where p.proname like 'tolstoy\\_%%' and a.privilege_type = 'EXECUTE' "
            "order by 1, 2").fetchall()
    by_function: dict = {}
    for row in granted:
        by_function.setdefault(row["proname"], set()).add(row["rolname"])
    # The queue's functions read every organization's runs: the workers' role only.
    for name in ("tolstoy_claim_runs", "tolstoy_renew_leases", "tolstoy_maintain_history"):
        assert by_function[name] & {"tolstoy_app", "tolstoy_worker", "public"} == {"tolstoy_worker"}, \
            (name, by_function[name])
    for name in ("tolstoy_enter_key", "tolstoy_queue_stats"):
        assert "tolstoy_app" in by_function[name] and "public" not in by_function[name], (name, by_function[name])
    # A role with no grants cannot call them at all.
    with db.pool.connection() as conn:
        conn.execute("do $$ begin if not exists (select from pg_roles where rolname = 'tolstoy_nobody') "
                     "then create role tolstoy_nobody login; end if; end $$")
    nobody = Database(app_url.replace("tolstoy_app@", "tolstoy_nobody@"), min_size=0, max_size=1, timeout=3)
    nobody.open(wait=False)
    try:
        with pytest.raises(Exception, match="permission denied"):
            nobody.all(unscoped("select * from tolstoy_queue_stats()"))
    except DatabaseUnavailable:
        pytest.fail("could not connect as tolstoy_nobody")
    finally:
        nobody.close()


def test_the_api_role_cannot_claim_and_the_worker_role_must_say_what_it_holds(app_db, worker_db):
    with pytest.raises(Exception, match="permission denied"):
        app_db.all(unscoped("select tolstoy_claim_runs('w', 10, 30, 3)"))
    with pytest.raises(Exception, match="permission denied"):
        app_db.all(unscoped("select * from tolstoy_renew_leases('w', '{}', '{}', '{}', 30)"))
    assert worker_db.all(unscoped("select tolstoy_claim_runs('w', 10, 30, 3) -> 'runs' as runs"))[0]["runs"] == []
    for bad in ("'', '{}', '{}', '{}', 30", "'w', '{}', '{}', '{}', 0", "'w', '{}', '{}', '{}', 99999",
                "'w', array[gen_random_uuid()], '{}', '{1}', 30"):
        with pytest.raises(Exception, match="invalid arguments"):
            worker_db.all(unscoped(f"select * from tolstoy_renew_leases({bad})"))


def test_organizations_are_visible_to_themselves_and_to_the_admin_role(api, app_db, db, database_url):
    a = api.org("A")
    b = api.org("B")
    with app_db.tenant(a["id"]):
        assert [str(r["id"]) for r in app_db.all(unscoped("select id from organizations"))] == [a["id"]]
        assert app_db.rowcount(unscoped("update organizations set name = 'mine'", "rowcount")) == 1
    assert app_db.all(unscoped("select id from organizations")) == []  # no tenant: nothing
    with pytest.raises(Exception, match="permission denied"):  # creating organizations is the admin role's
        app_db.all(unscoped("insert into organizations (name) values ('sneaky') returning id"))
    # The /organizations routes manage organizations through the admin login, tolstoy_admin.
    listed = api.client.simulate_get("/organizations", params={"limit": "100"}).json
    assert {a["id"], b["id"]} <= {o["id"] for o in listed}
    with db.pool.connection() as conn:
        names = {str(r["id"]): r["name"] for r in conn.execute("select id, name from organizations").fetchall()}
    assert names[a["id"]] == "mine" and names[b["id"]] == "B"
    # It sees every organization and nothing else: no tenant's rows.
    admin = Database(migrate.as_role(database_url, migrate.ADMIN_ROLE), min_size=0, max_size=1, timeout=3)
    admin.open(wait=False)
    try:
        assert {a["id"], b["id"]} <= {str(r["id"]) for r in admin.all(unscoped("select id from organizations"))}
        for table in ("users", "flows", "tool_credentials", "flow_runs", "flow_runs_default"):
            with pytest.raises(Exception, match="permission denied"):
                admin.all(unscoped(f"select org_id from {table}"))
    finally:
        admin.close()


def settings_read_by_functions(db) -> set:
    """Every custom setting a function of the schema reads, and the usual suspects."""
    with db.pool.connection() as conn:
        sources = " ".join(r["prosrc"] for r in conn.execute(
            "select p.prosrc from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
            "where n.nspname = 'public'").fetchall())
    found = set(re.findall(r"current_setting\(\s*'([a-z_]+\.[a-z_.]+)'", sources))
    return (found | {"app.admin", "app.is_admin", "app.role", "app.bypass", "app.superuser", "app.all_orgs"}) \
        - {"app.org_id"}


@pytest.mark.parametrize("value", ["on", "true", "1", "yes"])
def test_no_setting_a_service_role_can_flip_shows_it_another_organization(api, app_db, worker_db, db, value):
    a = api.org("A")
    b = api.org("B")
    user = api.user(b)
    names = settings_read_by_functions(db)
    assert "app.admin" in names
    for role_db in (app_db, worker_db):
        with role_db.pool.connection() as conn, conn.transaction():
            for name in names:
                conn.execute("select set_config(%s, %s, true)", (name, value))
            assert conn.execute("select id from organizations").fetchall() == []
            assert conn.execute("select id from users").fetchall() == []
            conn.execute("select set_config('app.org_id', %s, true)", (a["id"],))
            assert [str(r["id"]) for r in conn.execute("select id from organizations").fetchall()] == [a["id"]]
            assert conn.execute("select id from users where id = %s", (user["id"],)).fetchall() == []


def test_a_partition_named_directly_shows_nothing_of_another_organization(api, app_db, db):
    a = fill(api, db, "A")
    b = fill(api, db, "B")
    with db.pool.connection() as conn:
        parts = [r["relname"] for r in conn.execute(
            "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
            "join pg_class p on p.oid = i.inhparent "
            "where p.relname in ('flow_runs', 'flow_run_steps', 'execution_logs') order by 1").fetchall()]
        holding = {r["relname"] for r in conn.execute(
            "select distinct tableoid::regclass::text as relname from flow_runs union "
            "select distinct tableoid::regclass::text from execution_logs union "
            "select distinct tableoid::regclass::text from flow_run_steps").fetchall()}
    assert holding and holding <= set(parts), (holding, parts)
    for part in parts:
        # The services go through the parent tables and may not name a partition at all.
        with app_db.tenant(b["org"]["id"]), pytest.raises(Exception, match="permission denied"):
            app_db.all(unscoped(f"select org_id from {part}"))
    # And if a grant slipped back in, row-level security on the partition still holds.
    with db.pool.connection() as conn, conn.transaction(force_rollback=True):
        for part in parts:
            conn.execute(f"grant select, update on {part} to tolstoy_app")
        conn.execute("set local role tolstoy_app")
        conn.execute("select set_config('app.org_id', %s, true)", (b["org"]["id"],))
        for part in holding:
            seen = {str(r["org_id"]) for r in conn.execute(f"select org_id from {part}").fetchall()}
            assert seen == {b["org"]["id"]}, part
            changed = conn.execute(f"update {part} set org_id = org_id where org_id = %s", (a["org"]["id"],))
            assert changed.rowcount == 0, part


def test_the_schema_owner_walks_every_organization_for_key_rotation(api, owner_db, app_db):
    """`tolstoy secrets` runs as the schema owner, which is no superuser and is bound by forced row-level
    security like everyone: it sees every organization as a member of tolstoy_admin, and a tenant's
    rows only as that tenant."""
    a, b = api.org("A"), api.org("B")
    api.user(a)
    assert {a["id"], b["id"]} <= {str(i) for i in organization_ids(owner_db)}
    assert owner_db.all(unscoped("select org_id from users")) == []
    with owner_db.tenant(a["id"]):
        assert {str(r["org_id"]) for r in owner_db.all(unscoped("select org_id from users"))} == {a["id"]}
    assert organization_ids(app_db) == []  # the API's role sees none without a tenant
