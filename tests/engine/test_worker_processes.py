"""Workers as real processes (``tolstoy worker``): a SIGKILLed worker's run is
finished by another without repeating completed steps, and two workers share
one queue without running anything twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from werkzeug import Response

ROOT = Path(__file__).resolve().parents[2]


def start_worker(worker_env: dict, concurrency: int = 4) -> subprocess.Popen:
    env = {**os.environ, **worker_env}
    # A file, not a pipe: a worker logs a JSON line per step, and a pipe nobody reads fills up and blocks it.
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen([sys.executable, "-m", "tolstoy.cli", "worker", "--concurrency", str(concurrency)],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    process.log = log
    return process


def log_tail(process: subprocess.Popen) -> str:
    process.log.seek(0)
    return process.log.read()[-3000:]


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def run_status(db, execution_id: str) -> str | None:
    with db.pool.connection() as conn:
        row = conn.execute("select status::text from flow_runs where id = %s", (execution_id,)).fetchone()
    return row["status"] if row else None


def test_a_killed_workers_run_is_finished_by_another_without_repeating_steps(api, db, worker_env, httpserver,
                                                                             clock):
    seen: list[tuple[str, str]] = []
    slow_started = threading.Event()
    killed = threading.Event()

    def record(request):
        seen.append((request.path, request.headers.get("Idempotency-Key")))
        if request.path == "/two":
            slow_started.set()
            killed.wait(30)  # in flight until its worker is dead
        return Response('{"ok": true}', content_type="application/json")

    for path in ("/one", "/two", "/three"):
        httpserver.expect_request(path).respond_with_handler(record)
    org = api.org()
    user = api.user(org)
    flow = api.flow(org, steps=[
        {"id": "one", "type": "http_request", "config": {"method": "POST", "url": httpserver.url_for("/one")}},
        # A POST whose outcome is unknown waits for a person unless the step says to send it again.
        {"id": "two", "type": "http_request", "config": {"method": "POST", "url": httpserver.url_for("/two")},
         "onUnknownOutcome": "retry"},
        {"id": "three", "type": "http_request", "config": {"method": "POST", "url": httpserver.url_for("/three")}},
    ])
    first = start_worker(worker_env)
    second = None
    try:
        run = api.client.simulate_post(f"/flows/{flow['id']}/execute", json={},
                                       headers=api.headers(org, user)).json
        assert slow_started.wait(20), "the first worker never reached step two"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert run_status(db, run["executionId"]) == "running"  # orphaned under an expiring lease
        killed.set()
        clock.move_past_leases()  # rather than wait for it to run out
        second = start_worker(worker_env)
        wait_until(lambda: run_status(db, run["executionId"]) == "completed", 30, "the run to complete")
    finally:
        stop(first)
        if second is not None:
            stop(second)
    paths = [path for path, _ in seen]
    assert paths.count("/one") == 1 and paths.count("/three") == 1
    # The in-flight step ran again (at least once), with the same Idempotency-Key.
    two_keys = [key for path, key in seen if path == "/two"]
    assert len(two_keys) == 2 and two_keys[0] == two_keys[1] == f"{run['executionId']}:two:1"
    with db.pool.connection() as conn:
        claims = conn.execute("select claims from flow_runs where id = %s", (run["executionId"],)).fetchone()
        steps = conn.execute("select step_id, status from flow_run_steps where run_id = %s order by step_id",
                             (run["executionId"],)).fetchall()
    assert claims["claims"] == 2
    assert steps == [{"step_id": "one", "status": "completed"}, {"step_id": "three", "status": "completed"},
                     {"step_id": "two", "status": "completed"}]


def test_two_workers_share_a_queue_of_200_runs_exactly_once(api, db, worker_env, httpserver):
    keys: list[str] = []
    lock = threading.Lock()

    def record(request):
        with lock:
            keys.append(request.headers.get("Idempotency-Key"))
        return Response('{"ok": true}', content_type="application/json")

    httpserver.expect_request("/count").respond_with_handler(record)
    org = api.org()
    user = api.user(org)
    flow = api.flow(org, steps=[
        {"id": "call", "type": "http_request", "config": {"method": "POST", "url": httpserver.url_for("/count"),
                                                            "body": {"n": "{{ variables.n }}"}}},
        {"id": "done", "type": "transform", "config": {"output": "{{ variables.n }}"}},
    ])
    for n in range(200):
        result = api.client.simulate_post(f"/flows/{flow['id']}/execute", json={"variables": {"n": n}},
                                          headers=api.headers(org, user))
        assert result.status_code == 202
    workers = [start_worker(worker_env), start_worker(worker_env)]
    try:
        def all_done():
            with db.pool.connection() as conn:
                return conn.execute("select count(*) = 200 as done from flow_runs where status = 'completed'") \
                    .fetchone()["done"]
        wait_until(all_done, 120, "200 runs to complete")
    finally:
        for worker in workers:
            stop(worker)
    assert all(w.returncode == 0 for w in workers), [log_tail(w) for w in workers]
    assert len(keys) == 200 and len(set(keys)) == 200
    with db.pool.connection() as conn:
        totals = conn.execute(
            "select count(*) as runs, sum(claims) as claims, "
            "(select count(*) from flow_run_steps where status = 'completed') as steps, "
            "(select count(*) from execution_logs where status = 'started') as started, "
            "(select count(distinct (execution_id, step_key)) from execution_logs where status = 'started') "
            "  as distinct_started "
            "from flow_runs"
        ).fetchone()
        outputs = conn.execute("select outputs as n from flow_run_steps where step_id = 'done'").fetchall()
    assert totals == {"runs": 200, "claims": 200, "steps": 400, "started": 400, "distinct_started": 400}
    assert sorted(row["n"] for row in outputs) == list(range(200))
