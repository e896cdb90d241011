"""Run history retention as production runs it: row-level security forced on every partition, the
schema migrated by an owner that is not a superuser, and the upkeep running as a role that cannot
bypass row security. A superuser anywhere in that chain would see every row whatever the policies
say, and keep this test green for the wrong reason: the first test makes sure none is."""

from __future__ import annotations

import pytest

from tolstoy.db.queries import SQL

OLD_BUSY, OLD_IDLE = "2025-03-15T12:00:00Z", "2025-04-15T12:00:00Z"


def assert_nothing_bypasses_row_level_security(db) -> None:
    with db.pool.connection() as conn:
        facts = conn.execute(
            """
            select r.rolname as role, r.rolsuper or r.rolbypassrls as bypasses
            from pg_roles r
            where r.oid in ((select relowner from pg_class where relname = 'schema_migrations'),
                            (select relowner from pg_class where relname = 'flow_runs'),
                            (select proowner from pg_proc where proname = 'tolstoy_maintain_history'),
                            (select proowner from pg_proc where proname = 'tolstoy_ensure_partitions'))
            order by 1
            """).fetchall()
        unforced = conn.execute(
            "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
            "join pg_class p on p.oid = i.inhparent where p.relname = 'flow_runs' "
            "and not (c.relrowsecurity and c.relforcerowsecurity)").fetchall()
    # The schema owner migrated it (schema_migrations is dbmate's); the history is tolstoy_history's.
    assert facts == [{"role": "tolstoy_history", "bypasses": False}, {"role": "tolstoy_owner", "bypasses": False}]
    assert unforced == []


def run_of(api, org) -> str:
    user = api.user(org)
    flow = api.flow(org)
    result = api.client.simulate_post(f"/flows/{flow['id']}/execute", json={}, headers=api.headers(org, user))
    assert result.status_code in (200, 202), result.text
    return result.json["executionId"]


def move(db, execution_id: str, when: str, status: str) -> None:
    """Make a run (with its steps and log rows) look as if it had been made ``when``, in ``status``."""
    with db.pool.connection() as conn:
        conn.execute("select tolstoy_ensure_partitions(%s::date, 1)", (when,))  # as a DBA would
        conn.execute("update flow_runs set created_at = %s, status = %s where id = %s", (when, status, execution_id))
        conn.execute("update flow_run_steps set run_created_at = %s where run_id = %s", (when, execution_id))
        conn.execute("update execution_logs set created_at = %s where execution_id = %s", (when, execution_id))


def exists(db, execution_id: str) -> bool:
    with db.pool.connection() as conn:
        return conn.execute("select count(*) as n from flow_runs where id = %s", (execution_id,)).fetchone()["n"] == 1


@pytest.mark.parametrize("live", ["queued", "running", "waiting"])
def test_a_month_holding_another_organizations_live_run_is_kept(api, db, worker_db, live):
    assert_nothing_bypasses_row_level_security(db)
    a, b = api.org("A"), api.org("B")
    a_live, b_done_same_month, b_done_later = run_of(api, a), run_of(api, b), run_of(api, b)
    move(db, a_live, OLD_BUSY, live)
    move(db, b_done_same_month, OLD_BUSY, "completed")
    move(db, b_done_later, OLD_IDLE, "completed")

    # The workers' hourly upkeep, as tolstoy_worker; it acts for no organization.
    result = worker_db.scalar(SQL.runs.maintain_history, today=None, retention_days=90, months_ahead=1,
                              delivery_retention_days=None)

    assert "flow_runs_p2025_03" in result["kept"], result
    assert {"flow_runs_p2025_04", "flow_run_steps_p2025_04", "execution_logs_p2025_04"} <= set(result["dropped"])
    assert "flow_runs_p2025_03" not in result["dropped"] and "flow_run_steps_p2025_03" not in result["dropped"]
    assert exists(db, a_live) and exists(db, b_done_same_month)  # a kept month stays whole
    assert not exists(db, b_done_later)
