"""What one run makes PostgreSQL do, counted by PostgreSQL itself (track_functions): statement counts
(tests/engine/test_durable.py) say how often the worker asks, these say what each answer costs the
database. A helper function PostgreSQL calls instead of inlining, a trigger that builds what nobody
reads, a per-row statement where one would do: each shows here as calls (docs/performance.md, "What
PostgreSQL does per run")."""

from __future__ import annotations

import time

import psycopg
from test_engine import execute, step
from test_worker_processes import run_status

from tolstoy import engine
from tolstoy.db import migrate
from tolstoy.db.database import Database


def function_calls(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select pg_stat_clear_snapshot()")
        return dict(conn.execute("select funcname, calls from pg_stat_user_functions").fetchall())


def count_a_three_step_run(api, org, user, app_url, config, httpserver, db, database_url) -> dict[str, int]:
    """The function calls (track_functions) of the worker's sessions while one worker runs a 3-step run
    (a call, a transform, a call) from claim to finish."""
    httpserver.expect_request("/call").respond_with_json({"ok": True})
    flow = api.flow(org, steps=[
        step("a", "http_request", {"method": "POST", "url": httpserver.url_for("/call")}),
        step("b", "transform", {"output": "{{ steps.a.body.ok }}"}),
        step("c", "http_request", {"method": "GET", "url": httpserver.url_for("/call")}),
    ])
    run = execute(api, org, user, flow)["executionId"]
    with psycopg.connect(database_url, autocommit=True) as conn:  # the superuser: track_functions is its
        name = conn.execute("select current_database()").fetchone()[0]
        conn.execute(f"alter database \"{name}\" set track_functions = 'all'")
    counted = Database(migrate.as_role(app_url, migrate.WORKER_ROLE), min_size=1, max_size=1, timeout=5)
    counted.open(wait=True)  # new sessions: they count their function calls
    try:
        w = engine.worker(config, counted, concurrency=1, poll_seconds=10)
        w.maintain()  # the once-a-day upkeep is not part of a run
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("select pg_stat_reset()")
        w.run(stop_after_idle=True)
    finally:
        counted.close()  # a session's counts reach the statistics when it ends
    assert run_status(db, run) == "completed"
    calls: dict[str, int] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not calls.get("tolstoy_checkpoint"):
        calls = function_calls(database_url)
        time.sleep(0.1)
    return calls


def test_a_three_step_run_calls_only_the_functions_it_needs(api, org, user, app_url, config, httpserver, db,
                                                            database_url):
    calls = count_a_three_step_run(api, org, user, app_url, config, httpserver, db, database_url)
    assert calls.get("tolstoy_checkpoint", 0) >= 2, calls  # counted: a checkpoint before each call and at the end
    # The run-month bounds of every lookup by id are inlined into the queries (tests/db/test_inlined_functions.py).
    assert not {f: calls[f] for f in ("tolstoy_run_from", "tolstoy_run_until", "tolstoy_run_epoch") if f in calls}
    # No webhook subscribes: the run and step events' triggers look and stop, building no payload.
    assert "tolstoy_webhook_emit" not in calls and "tolstoy_iso" not in calls, calls


# The run history's partitioned tables: an insert into one sets up its routing to the month's partition
# (the partition, its indexes, its policies) once per statement, so a function writing rows one
# statement each pays for it per row.
PARTITIONED = ("flow_runs", "flow_run_steps", "execution_logs")


def test_each_checkpoint_writes_each_history_table_in_one_statement(api, org, user, app_url, config, httpserver,
                                                                     db, database_url):
    """A statement-level trigger on each partitioned table of the run history counts the insert
    statements (track_functions counts its calls): a 3-step run whose checkpoints carry one, three and
    one step writes flow_run_steps once per checkpoint, not once per step, and execution_logs once per
    checkpoint and per claim."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for table in PARTITIONED:
            conn.execute(f"create function test_inserts_{table}() returns trigger language plpgsql "
                         "as 'begin return null; end'")
            conn.execute(f"create trigger test_inserts_{table} after insert on {table} "
                         f"for each statement execute function test_inserts_{table}()")
    try:
        calls = count_a_three_step_run(api, org, user, app_url, config, httpserver, db, database_url)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for table in PARTITIONED:
                conn.execute(f"drop trigger test_inserts_{table} on {table}")
                conn.execute(f"drop function test_inserts_{table}()")
    checkpoints, claims = calls.get("tolstoy_checkpoint", 0), calls.get("tolstoy_claim_runs_v2", 0)
    assert checkpoints == 3, calls  # before each call, and at the finish
    assert calls.get("test_inserts_flow_run_steps", 0) <= checkpoints, calls
    assert calls.get("test_inserts_execution_logs", 0) <= checkpoints + claims, calls
    assert calls.get("test_inserts_flow_runs", 0) == 0, calls  # the worker queues nothing here
