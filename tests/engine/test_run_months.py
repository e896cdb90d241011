"""The engine reads only the month of the runs it moves (issue 21): with two years of monthly
partitions, a run's whole life (a slow call under heartbeats, a child run that wakes its parent, a
signal, a retry, a cancel, the API's and the console's views) leaves PostgreSQL's counters of every
other month's run and step partitions at zero. tests/db/test_run_lookups.py checks the statements
themselves."""

from __future__ import annotations

import json
import threading
import time

from conftest import Api
from falcon import testing
from support import two_years_of_partitions
from test_engine import step, wait_for
from werkzeug import Response

from tolstoy import engine
from tolstoy.api.app import create_app
from tolstoy.db import migrate
from tolstoy.db.database import Database


def other_months_read(db, this_month: str) -> dict:
    """Index and sequential scans of the run tables' partitions other than this month's, and of this
    month's (the control: the counters were written)."""
    with db.pool.connection() as conn:
        conn.execute("select pg_stat_clear_snapshot()")
        rows = conn.execute(
            """select c.relname as partition, coalesce(t.seq_scan, 0) as seq_scan,
                      coalesce((select sum(i.idx_scan) from pg_stat_user_indexes i
                                where i.relid = c.oid
                                  and (i.indexrelname like '%%_pkey' or i.indexrelname like '%%org_id_id_idx')), 0)
                          as id_scans
               from pg_inherits h
               join pg_class c on c.oid = h.inhrelid
               join pg_class p on p.oid = h.inhparent
               left join pg_stat_user_tables t on t.relid = c.oid
               where p.relname in ('flow_runs', 'flow_run_steps')""").fetchall()
    this = {this_month, this_month.replace("flow_runs", "flow_run_steps")}
    return {"others": {r["partition"]: (r["seq_scan"], r["id_scans"]) for r in rows
                       if r["partition"] not in this and (r["seq_scan"] or r["id_scans"])},
            "this_month": sum(r["id_scans"] for r in rows if r["partition"] in this)}


def test_the_engine_reads_only_the_month_of_the_runs_it_moves(api, org, user, config, database_url, db, httpserver):
    """Two years of partitions; a parent run that calls a slow tool (its lease renewed meanwhile),
    starts a child and waits for it (the child's end wakes it), then waits for a signal; a run that
    fails and is retried; a run cancelled while it sleeps; each read through the API and the
    console. Then PostgreSQL's counters of every other month's run and step partitions must be
    zero: no lookup probed them."""

    def slow(_request):
        time.sleep(2.0)  # longer than a heartbeat (lease 5 s, beat every 1.67 s)
        return Response(json.dumps({"ok": True}), content_type="application/json")

    httpserver.expect_request("/slow").respond_with_handler(slow)
    child = api.flow(org, steps=[step("inner", "transform", {"output": {"n": 1}})])
    parent = api.flow(org, steps=[
        step("call", "http_request", {"method": "GET", "url": httpserver.url_for("/slow")}),
        step("child", "subflow", {"flowId": child["id"], "wait": True}),
        step("gate", "wait", {"signal": "go", "timeoutMs": 60_000}),
    ])
    failing = api.flow(org, steps=[step("boom", "transform", {"output": "{{ nope.nope }}"})])
    sleeper = api.flow(org, steps=[step("nap", "delay", {"ms": 60_000})])
    this_month = two_years_of_partitions(db)
    with db.pool.connection() as conn:
        conn.execute("select pg_stat_reset()")

    app_db = Database(migrate.as_role(database_url), min_size=1, max_size=4, timeout=5)
    worker_db = Database(migrate.as_role(database_url, migrate.WORKER_ROLE), min_size=1, max_size=8, timeout=5)
    app_db.open(wait=True)
    worker_db.open(wait=True)
    client = testing.TestClient(create_app(config, app_db))
    work = engine.worker(config, worker_db, concurrency=4, poll_seconds=0.1)
    thread = threading.Thread(target=work.run, daemon=True)
    thread.start()
    headers = {"X-Org-ID": org["id"], "X-User-ID": user["id"]}
    try:
        runs = {}
        for name, flow in (("parent", parent), ("failing", failing), ("sleeper", sleeper)):
            answer = client.simulate_post(f"/flows/{flow['id']}/execute", json={}, headers=headers)
            assert answer.status_code == 202, answer.text
            runs[name] = answer.json["executionId"]
        reader = Api(client)  # waits through this test's own pool

        def waiting_for_signal():
            shown = client.simulate_get(f"/flows/{parent['id']}/executions/{runs['parent']}", headers=headers).json
            return any(s.get("waitingFor") for s in shown.get("steps", []))

        deadline = time.monotonic() + 30
        while not waiting_for_signal():
            assert time.monotonic() < deadline, "the parent never reached its wait step"
            time.sleep(0.1)
        sent = client.simulate_post(f"/flows/{parent['id']}/executions/{runs['parent']}/signals/go",
                                    json={"payload": {"ok": True}}, headers=headers)
        assert sent.status_code == 202, sent.text
        assert wait_for(reader, org, parent, runs["parent"], timeout=30)["status"] == "completed"
        assert wait_for(reader, org, failing, runs["failing"])["status"] == "failed"
        retried = client.simulate_post(f"/flows/{failing['id']}/executions/{runs['failing']}/retry", headers=headers)
        assert retried.status_code == 202, retried.text
        assert wait_for(reader, org, failing, retried.json["executionId"])["status"] == "failed"
        cancelled = client.simulate_post(f"/flows/{sleeper['id']}/executions/{runs['sleeper']}/cancel",
                                         headers=headers)
        assert cancelled.status_code == 202, cancelled.text
        console = client.simulate_get(f"/console/orgs/{org['id']}/runs/{runs['parent']}")
        assert console.status_code == 200
    finally:
        work.stop()
        thread.join(timeout=10)
        app_db.close()
        worker_db.close()
    # Closed connections have written their counters; give the server a moment to have them all.
    deadline = time.monotonic() + 10
    read = other_months_read(db, this_month)
    while read["this_month"] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        read = other_months_read(db, this_month)
    assert read["this_month"] > 0  # the counters were written: the engine did read this month
    assert read["others"] == {}, read
