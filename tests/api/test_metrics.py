"""/metrics: request counts and latency by route template, pool usage, flow-run
and step helpers, the queue read from the database, and Gunicorn's workers
counted together (prometheus-client multiprocess mode)."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from support import samples, scrape, value

from tolstoy import metrics

ROOT = Path(__file__).resolve().parents[2]


def test_requests_are_counted_by_route_template_and_status(client, api):
    org = api.org()
    missing = f"/users/{uuid.uuid4()}"
    before = scrape(client)
    assert client.simulate_get(missing, headers={"X-Org-ID": org["id"]}).status_code == 404
    assert client.simulate_get(f"/users/{uuid.uuid4()}", headers={"X-Org-ID": org["id"]}).status_code == 404
    assert client.simulate_get("/users", headers={"X-Org-ID": org["id"]}).status_code == 200
    assert client.simulate_get("/no/such/route").status_code == 404
    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("tolstoy_http_requests_total", method="GET", route="/users/{id}", status="404") == 2
    assert delta("tolstoy_http_requests_total", method="GET", route="/users", status="200") == 1
    assert delta("tolstoy_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert delta("tolstoy_http_request_duration_seconds_count", method="GET", route="/users/{id}",
                 status="404") == 2
    # Ids never become label values.
    assert not any(missing in str(key) for key in after)


def test_pool_usage_is_published(client, app_db):
    found = scrape(client)
    assert value(found, "tolstoy_db_pool_max_connections") == app_db.pool.max_size
    assert ("tolstoy_db_pool_connections", frozenset({("state", "idle")})) in found
    assert ("tolstoy_db_pool_connections", frozenset({("state", "in_use")})) in found


def test_run_and_step_helpers(client):
    before = scrape(client)
    metrics.count_run("completed")
    metrics.count_run("completed")
    metrics.count_run("failed")
    metrics.observe_step(0.2, "completed", "http_request")
    after = scrape(client)
    assert value(after, "tolstoy_flow_runs_total", status="completed") - \
        value(before, "tolstoy_flow_runs_total", status="completed") == 2
    assert value(after, "tolstoy_flow_runs_total", status="failed") - \
        value(before, "tolstoy_flow_runs_total", status="failed") == 1
    bucket = dict(type="http_request", status="completed", le="0.5")
    assert value(after, "tolstoy_flow_step_duration_seconds_bucket", **bucket) - \
        value(before, "tolstoy_flow_step_duration_seconds_bucket", **bucket) == 1


def test_queue_depth_and_oldest_due_age_come_from_the_database(client, api, db):
    org = api.org()
    flow = api.flow(org)
    with db.pool.connection() as conn:
        for run_after in ("now() - interval '90 seconds'", "now() - interval '10 seconds'",
                          "now() + interval '1 hour'"):
            conn.execute(
                "insert into flow_runs (org_id, flow_id, flow_version, plan, status, run_after, root_run_id) "
                f"values (%s, %s, 1, '{{}}', 'queued', {run_after}, gen_random_uuid())", (org["id"], flow["id"]))
        conn.execute("insert into flow_runs (org_id, flow_id, flow_version, plan, status, run_after, root_run_id) "
                     "values (%s, %s, 1, '{}', 'completed', now() - interval '1 day', gen_random_uuid())", (org["id"], flow["id"]))
    found = scrape(client)
    assert value(found, "tolstoy_flow_queue_depth") == 3
    assert value(found, "tolstoy_flow_queue_due") == 2
    assert 90 <= value(found, "tolstoy_flow_queue_oldest_age_seconds") < 3600


def test_empty_queue_reports_zero_age(client):
    found = scrape(client)
    assert value(found, "tolstoy_flow_queue_depth") == 0
    assert ("tolstoy_flow_queue_oldest_age_seconds", frozenset()) in found


def test_no_queue_samples_before_the_engine_is_installed(client, db):
    with db.pool.connection() as conn:
        conn.execute("drop table if exists flow_runs cascade")
    found = scrape(client)
    assert not any(name.startswith("tolstoy_flow_queue") for name, _ in found)
    assert any(name == "tolstoy_http_requests_total" for name, _ in found)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


@pytest.fixture
def two_workers(database_url, tmp_path):
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "PORT": str(port), "WEB_CONCURRENCY": "2",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    with open(tmp_path / "out.log", "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "tolstoy.api.app:get_app()"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if get(port, "/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        pytest.fail("gunicorn did not start: " + (tmp_path / "out.log").read_text())
    yield port
    process.terminate()
    process.wait(timeout=30)


def test_every_gunicorn_worker_is_counted(two_workers):
    port = two_workers
    pids = set()
    made = 0
    # Until both answered: on a loaded machine the second worker may still be importing the app for
    # a while, and the first serves everything meanwhile (a count of requests ran out before it booted).
    deadline = time.monotonic() + 60
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        while len(pids) < 2 and time.monotonic() < deadline:
            for status, body in pool.map(lambda _: get(port, "/status/detailed"), range(8)):
                assert status == 200
                pids.add(json.loads(body)["process"]["pid"])
            made += 8
    assert len(pids) == 2, "both workers should have answered"
    found = samples(get(port, "/metrics")[1].decode())
    assert value(found, "tolstoy_http_requests_total", method="GET", route="/status/detailed",
                 status="200") == made
    # Both workers' pools, summed: the default pool has 10 connections per worker.
    assert value(found, "tolstoy_db_pool_max_connections") == 20
