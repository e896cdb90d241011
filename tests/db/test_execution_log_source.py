"""The migration that records who wrote each execution log (db/migrations/20261207000400_…):
the rows that exist are told apart as docs/api.md says, when a DBA's owner role that is not
a superuser runs it (forced row-level security binds that owner, on execution_logs and on
flow_runs; a superuser would pass either way and hide the mistake)."""

from __future__ import annotations

from tolstoy.db import migrate

MIGRATION = migrate.MIGRATIONS_DIR / "20261207000400_execution_log_source.sql"


def sections() -> tuple[str, str]:
    up, down = MIGRATION.read_text().split("-- migrate:down")
    return up.replace("-- migrate:up", ""), down


def own(conn, role: str, *tables: str) -> None:
    """Make ``role`` own each table and its partitions, as a migration's owner does."""
    for table in tables:
        names = [table] + [row["name"] for row in conn.execute(
            "select c.relname as name from pg_inherits i join pg_class c on c.oid = i.inhrelid "
            "where i.inhparent = %s::regclass", (table,)).fetchall()]
        for name in names:
            conn.execute(f'alter table "{name}" owner to {role}')


def test_existing_logs_are_told_apart_when_a_non_superuser_owner_migrates(api, org, user, client, db):
    flow = api.flow(org)
    run = client.simulate_post(f"/flows/{flow['id']}/execute", json={}, headers=api.headers(org, user)).json
    outside = api.log(org, user, flow, executionId="external-run-7", stepKey="fetch")  # the compat way
    borrowed = api.log(org, user, flow, executionId=run["executionId"], stepKey="hello")
    up, down = sections()
    with db.pool.connection() as conn:
        action = conn.execute(
            "insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs) "
            "values (%s, null, %s, gen_random_uuid()::text, 'svc.call', 'completed', '{}') returning id",
            (org["id"], user["id"])).fetchone()["id"]
        before = {str(r["id"]): r["updated_at"] for r in conn.execute("select id, updated_at from execution_logs")}
        conn.execute(down)
    with db.pool.connection() as conn:
        conn.execute("create role tolstoy_migrator nologin")
        conn.execute("grant create on schema public to tolstoy_migrator")
        own(conn, "tolstoy_migrator", "execution_logs", "flow_runs")
        conn.execute("set role tolstoy_migrator")
        conn.execute(up)
        conn.execute("reset role")
    with db.pool.connection() as conn:
        rows = {str(r["id"]): r for r in conn.execute(
            "select id, step_key, execution_id, source::text, updated_at from execution_logs")}
        forced = conn.execute("select relforcerowsecurity as forced from pg_class "
                              "where relname in ('execution_logs', 'flow_runs')").fetchall()
    queued = [i for i, r in rows.items() if r["step_key"] == "$flow" and r["execution_id"] == run["executionId"]]
    assert queued and all(rows[i]["source"] == "engine" for i in queued)  # the engine's own row
    assert rows[outside["id"]]["source"] == "client"  # no such run: a client wrote it
    assert rows[str(action)]["source"] == "engine"  # a direct action call's log names no flow
    # A client row under a real run's id cannot be told from the engine's (docs/api.md says so).
    assert rows[borrowed["id"]]["source"] == "engine"
    assert {i: r["updated_at"] for i, r in rows.items()} == before  # reclassifying is no client's change
    assert [row["forced"] for row in forced] == [True, True]
