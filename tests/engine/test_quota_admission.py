"""Quotas per organization where the engine meets them (issue 21): every new run passes one gate in
the database (tolstoy_admit_run, inside tolstoy_queue_run), one admission of an organization at a
time; a schedule over a quota skips its slot and records why; a subflow step over a quota fails with
QuotaExceeded; stored bytes are measured whenever a run finishes, whoever finishes it."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
import uuid

import psycopg
from support import assert_quota_refusal, execute_flow, set_quotas, usage, written
from test_engine import step, wait_for
from test_schedules import Clock, at, make_worker, schedule, set_next_run, trigger_row

from tolstoy import engine, paths
from tolstoy.db import migrate

QUEUE = "select (q.run).id from tolstoy_queue_run(%s, %s, %s, %s, '{}', null, null) as q"


# ---- one gate, one admission at a time ------------------------------------------------------------------


def test_an_admission_waits_for_the_one_before_it_and_then_counts_its_run(api, org, user, client, app_url, db):
    """Two transactions queue a run each at the boundary: the second waits for the first's admission to
    commit, then sees its run and is refused. Without the lock both would count the same runs and pass."""
    flow = api.flow(org)
    set_quotas(client, org, queuedRuns=1)
    args = (org["id"], flow["id"], flow["version"], user["id"])
    with psycopg.connect(app_url) as first, psycopg.connect(app_url, autocommit=True) as watcher, \
            psycopg.connect(app_url) as second:
        for conn in (first, second):
            conn.execute("select set_config('app.org_id', %s, false)", (org["id"],))
        first.execute(QUEUE, args)  # admitted, not committed yet
        outcome: dict = {}

        def queue_second():
            try:
                outcome["id"] = second.execute(QUEUE, args).fetchone()[0]
                second.commit()
            except psycopg.Error as exc:
                outcome["error"] = exc
                second.rollback()

        racer = threading.Thread(target=queue_second)
        racer.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            waiting = watcher.execute("select count(*) from pg_stat_activity where pid = %s and wait_event_type = 'Lock'",
                                      (second.info.backend_pid,)).fetchone()[0]
            if waiting:
                break
            time.sleep(0.02)
        assert waiting, "the second admission did not wait for the first"
        first.commit()
        racer.join(10)
    assert "id" not in outcome, outcome
    assert outcome["error"].sqlstate == "TQ001" and "queuedRuns" in str(outcome["error"])
    assert written(db, org)["runs"] == 1


def test_every_new_run_is_written_by_the_admitting_function_only():
    """The class, not the instances: a run row is written (insert into flow_runs) in one place only,
    tolstoy_queue_run_v4 (tolstoy_queue_run_v3 is it without a caller's trace, v2 without a concurrency key,
    tolstoy_queue_run without a re-run either), after the admission; a later way to start runs cannot pass
    by the quotas."""
    inserting = re.compile(r"insert\s+into\s+flow_runs\b", re.IGNORECASE)
    sources = {path.name: path.read_text() for path in (paths.CHECKOUT / "sql").glob("*.sql")}
    assert not [name for name, text in sources.items() if inserting.search(text)], "sql/ inserts runs"
    migrations = sorted(migrate.MIGRATIONS_DIR.glob("*.sql"))
    newest = {}
    for path in migrations:  # the newest definition of each function wins, as in the database
        up = path.read_text().partition("-- migrate:down")[0]
        # Bodies are dollar-quoted with any tag ($$ or $_$ ...).
        for match in re.finditer(r"create (?:or replace )?function (\w+)\(.*?\$(\w*)\$(.*?)\$\2\$", up, re.S | re.I):
            newest[match.group(1)] = match.group(3)
    writers = sorted(name for name, body in newest.items() if inserting.search(body))
    assert writers == ["tolstoy_queue_run_v4"], writers
    body = newest["tolstoy_queue_run_v4"]
    assert body.index("perform tolstoy_admit_run(org)") < inserting.search(body).start()


def test_the_database_holds_the_same_functions_as_the_migrations_say(db):
    with db.pool.connection() as conn:
        rows = conn.execute("select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
                            "where n.nspname = 'public' and p.prosrc ~* 'insert\\s+into\\s+flow_runs\\M'").fetchall()
    assert [r["proname"] for r in rows] == ["tolstoy_queue_run_v4"]


# ---- stored bytes ------------------------------------------------------------------------------------------


def test_stored_bytes_of_finished_runs_count_and_at_the_quota_new_runs_are_refused(api, org, user, client,
                                                                                   worker, db):
    noise = "".join(uuid.uuid4().hex for _ in range(625))  # 20,000 characters that hardly compress
    flow = api.flow(org, steps=[step("big", "transform", {"output": {"text": noise}})])
    first = execute_flow(client, org, user, flow).json["executionId"]
    assert wait_for(api, org, flow, first)["status"] == "completed"
    with db.pool.connection() as conn:
        measured = conn.execute("select stored_bytes from flow_runs where id = %s", (first,)).fetchone()["stored_bytes"]
    stored = usage(client, org)["storedBytes"]
    assert stored["used"] == measured and measured > 20_000, stored
    set_quotas(client, org, storedBytes=stored["used"])
    before = written(db, org)
    assert_quota_refusal(execute_flow(client, org, user, flow), "storedBytes", stored["used"], "3600")
    assert written(db, org) == before
    # Purging the finished runs gives their bytes back.
    assert client.simulate_delete(f"/flows/{flow['id']}/executions", headers=api.headers(org)).status_code == 204
    assert usage(client, org)["storedBytes"]["used"] == 0
    assert execute_flow(client, org, user, flow).status_code == 202


def test_a_run_in_flight_finishes_when_its_organization_goes_over_its_stored_bytes(api, org, user, client, worker):
    flow = api.flow(org, steps=[step("nap", "delay", {"ms": 300}),
                                step("then", "transform", {"output": "done"})])
    run = execute_flow(client, org, user, flow).json["executionId"]
    set_quotas(client, org, storedBytes=0)
    assert execute_flow(client, org, user, flow).status_code == 429
    finished = wait_for(api, org, flow, run)
    assert finished["status"] == "completed" and finished["outputs"]["then"] == "done"
    assert usage(client, org)["storedBytes"]["used"] > 0


def test_a_run_is_measured_whoever_finishes_it(api, org, user, client, db, config, worker_db):
    """Cancelled through the API (tolstoy_app), failed past its recovery limit by a claim that acts for no
    organization (tolstoy_engine): each adds what it holds to its organization's stored bytes."""
    flow = api.flow(org)
    cancelled = execute_flow(client, org, user, flow).json["executionId"]
    client.simulate_post(f"/flows/{flow['id']}/executions/{cancelled}/cancel", headers=api.headers(org))
    lost = execute_flow(client, org, user, flow).json["executionId"]
    with db.pool.connection() as conn:
        conn.execute("update flow_runs set status = 'running', recoveries = 3, strikes = 3, claims = 4, lease_token = 4, "
                     "lease_owner = 'gone', lease_expires_at = now() - interval '1 second' where id = %s", (lost,))
    w = engine.worker(config, worker_db, concurrency=1, max_recoveries=3)
    w.claim(None)  # fails the lost run (RecoveryLimit); claims nothing to run
    with db.pool.connection() as conn:
        rows = conn.execute("select id::text, status::text, stored_bytes from flow_runs where org_id = %s order by id",
                            (org["id"],)).fetchall()
        deltas = conn.execute("select sum(bytes) as total, count(*) as n from history_bytes where org_id = %s",
                              (org["id"],)).fetchone()
    assert {r["id"]: r["status"] for r in rows} == {cancelled: "cancelled", lost: "failed"}
    assert all(r["stored_bytes"] > 0 for r in rows), rows
    assert deltas == {"total": sum(r["stored_bytes"] for r in rows), "n": 2}
    assert usage(client, org)["storedBytes"]["used"] == deltas["total"]


# ---- schedules and subflows over a quota ---------------------------------------------------------------------


def test_a_schedule_over_the_quota_skips_its_slot_and_says_why(api, org, db, client, config, database_url):
    other = api.org("Other")
    flows = {name: api.flow(owner) for name, owner in (("full", org), ("free", other))}
    triggers = {name: schedule(api, owner, flows[name], "0 * * * *")
                for name, owner in (("full", org), ("free", other))}
    for trigger in triggers.values():
        set_next_run(db, trigger, at(2027, 1, 1, 10))
    set_quotas(client, org, queuedRuns=0)
    clock = Clock(at(2027, 1, 1, 10, 0, 1))
    worker, worker_db = make_worker(config, database_url, clock)
    try:
        fired = worker.fire_schedules()
    finally:
        worker_db.close()
    # The other organization's schedule fired in the same batch; the full one moved on without a run.
    assert [f["trigger_id"] for f in fired] == [triggers["free"]["id"]]
    assert written(db, org)["runs"] == 0 and written(db, other)["runs"] == 1
    assert trigger_row(db, triggers["full"])["next_run_at"] == at(2027, 1, 1, 11)
    shown = client.simulate_get(f"/flows/{flows['full']['id']}/triggers/{triggers['full']['id']}",
                                headers=api.headers(org)).json
    assert shown["lastSkippedAt"] == "2027-01-01T10:00:01.000Z", shown
    assert "queuedRuns" in shown["lastSkipReason"] and "(0)" in shown["lastSkipReason"], shown
    free = client.simulate_get(f"/flows/{flows['free']['id']}/triggers/{triggers['free']['id']}",
                               headers=api.headers(other)).json
    assert free["lastSkippedAt"] is None and free["lastSkipReason"] is None


def test_the_configured_default_binds_the_workers_new_runs_as_it_binds_the_apis(api, org, user, db, client, config,
                                                                                database_url):
    """No override: a worker's units of work set the configured defaults for the database (tolstoy.quotas)
    as the API's do, so a schedule meets TOLSTOY_QUOTA_QUEUED_RUNS; another organization's does not."""
    other = api.org("Other")
    flows = {"full": api.flow(org), "free": api.flow(other)}
    triggers = {"full": schedule(api, org, flows["full"], "0 * * * *"),
                "free": schedule(api, other, flows["free"], "0 * * * *")}
    for trigger in triggers.values():
        set_next_run(db, trigger, at(2027, 1, 1, 10))
    assert execute_flow(client, org, user, flows["full"]).status_code == 202  # the one place of the default
    limited = dataclasses.replace(config, quota_queued_runs=1)
    worker, worker_db = make_worker(limited, database_url, Clock(at(2027, 1, 1, 10, 0, 1)))
    try:
        fired = worker.fire_schedules()
    finally:
        worker_db.close()
    assert [f["trigger_id"] for f in fired] == [triggers["free"]["id"]]
    assert written(db, org)["runs"] == 1 and written(db, other)["runs"] == 1
    with db.pool.connection() as conn:
        reason = conn.execute("select last_skip_reason from flow_triggers where id = %s",
                              (triggers["full"]["id"],)).fetchone()["last_skip_reason"]
    assert "queuedRuns" in reason and "(1)" in reason, reason


def test_a_subflow_child_over_the_quota_fails_the_step_with_quota_exceeded(api, org, user, client, worker, db):
    child = api.flow(org)
    parent = api.flow(org, steps=[step("call", "subflow", {"flowId": child["id"]}),
                                  step("after", "transform", {"output": "never"})])
    set_quotas(client, org, queuedRuns=1)  # the parent holds the one place
    run = execute_flow(client, org, user, parent).json["executionId"]
    finished = wait_for(api, org, parent, run)
    assert finished["status"] == "failed", finished
    failed = {s["stepId"]: s for s in finished["steps"]}["call"]
    assert failed["status"] == "failed" and failed["error"]["name"] == "QuotaExceeded", failed
    assert "queuedRuns" in failed["error"]["message"], failed
    with db.pool.connection() as conn:
        assert conn.execute("select count(*) as n from flow_runs where flow_id = %s", (child["id"],)).fetchone()["n"] == 0

