"""Tolstoy behind a transaction-mode pooler: a real PgBouncer (Debian's stock
1.18, which knows no protocol-level prepared statements) between the API, a
worker and PostgreSQL, configured as docs/deploying.md says (DATABASE_URL on
the pooler with TOLSTOY_PREPARE_THRESHOLD=off, DIRECT_URL for LISTEN)."""

from __future__ import annotations

import dataclasses
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from falcon import testing
from support import free_port, require_program, wait_for_port

from tolstoy import engine
from tolstoy.api.app import create_app
from tolstoy.config import Config
from tolstoy.db.database import Database

pytestmark = pytest.mark.xdist_group("pgbouncer")


@pytest.fixture
def pgbouncer(app_url):
    """A PgBouncer in transaction mode in front of this test's database; yields its URL."""
    program = require_program("pgbouncer", "/usr/sbin/pgbouncer")
    parts = urlparse(app_url)
    database = parts.path.lstrip("/")
    socket_dir = parse_qs(parts.query)["host"][0]
    port = free_port()
    # PgBouncer refuses to run as root: it runs as the embedded server's own user (the one
    # that may open its socket), so its files live where that user can read them.
    run_as = "pgserver" if _user_exists("pgserver") else "nobody"
    tmp_path = Path(tempfile.mkdtemp(prefix="tolstoy-pgbouncer-"))
    tmp_path.chmod(0o755)
    (tmp_path / "users.txt").write_text('"tolstoy_app" ""\n"tolstoy_worker" ""\n')
    (tmp_path / "pgbouncer.ini").write_text(f"""
[databases]
{database} = host={socket_dir} dbname={database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {tmp_path / 'users.txt'}
pool_mode = transaction
default_pool_size = 4
max_client_conn = 200
server_reset_query =
ignore_startup_parameters =
""")
    for name in ("users.txt", "pgbouncer.ini"):
        (tmp_path / name).chmod(0o644)
    process = subprocess.Popen([program, "-u", run_as, str(tmp_path / "pgbouncer.ini")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, process)
        yield f"postgresql://tolstoy_app@127.0.0.1:{port}/{database}"
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0]
        if "sbuf_connect failed" in output or "ERROR" in output:
            print(output)  # shown with a failing test's output
        shutil.rmtree(tmp_path, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(params=["off", "5"], ids=["prepare-off", "prepare-detected"])
def pooled(request, pgbouncer, app_url, worker_env):
    """Configuration and an opened pool for the app through PgBouncer: as docs/deploying.md says
    (prepared statements off), and with the setting forgotten (Tolstoy notices and turns them off)."""
    config = Config.from_env({**worker_env, "DATABASE_URL": pgbouncer, "DIRECT_URL": app_url,
                              "TOLSTOY_PREPARE_THRESHOLD": request.param})
    db = Database.from_config(config, max_size=8)
    db.open(wait=True)
    # The worker through the same PgBouncer, as its own role.
    worker_config = dataclasses.replace(config, database_url=pgbouncer.replace("tolstoy_app@", "tolstoy_worker@"))
    worker_db = Database.from_config(worker_config, max_size=8)
    worker_db.open(wait=True)
    yield config, db, worker_db
    worker_db.close()
    db.close()


def test_the_api_and_a_worker_work_through_pgbouncer(pooled):
    config, db, worker_db = pooled
    client = testing.TestClient(create_app(config, db))
    org = client.simulate_post("/organizations", json={"name": "Pooled"}).json
    headers = {"X-Org-ID": org["id"]}
    user = client.simulate_post("/users", json={"email": "ada@example.com"}, headers=headers).json
    acting = {**headers, "X-User-ID": user["id"]}
    tool = client.simulate_post("/tools", json={"name": "T", "baseUrl": "https://t.example.com",
                                                "authType": "none"}, headers=headers).json
    action = client.simulate_post("/actions", json={"toolId": tool["id"], "name": "A", "key": "a.get",
                                                    "method": "GET", "endpoint": "/x"}, headers=headers)
    assert action.status_code == 201, action.text
    tag = client.simulate_get(f"/tools/{tool['id']}", headers=headers).headers["etag"]
    renamed = client.simulate_patch(f"/tools/{tool['id']}", json={"name": "T2"}, headers={**headers, "If-Match": tag})
    assert renamed.status_code == 200 and renamed.json["actions"][0]["key"] == "a.get"
    assert client.simulate_post("/tools", json={"name": "T2", "baseUrl": "https://t.example.com",
                                                "authType": "none"}, headers=headers).status_code == 409
    assert client.simulate_get("/users", headers={"X-Org-ID": str(uuid.uuid4())}).status_code == 400
    flow = client.simulate_post("/flows", headers=headers, json={"name": "F", "steps": [
        {"id": "one", "type": "transform", "config": {"output": {"n": "{{ variables.n }}"}}},
        {"id": "nap", "type": "delay", "config": {"ms": 300}},
        {"id": "two", "type": "transform", "config": {"output": "{{ steps.one.n * 2 }}"}}]}).json

    stopping = threading.Event()
    worker = engine.worker(config, worker_db, concurrency=2, poll_seconds=0.2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        runs = [client.simulate_post(f"/flows/{flow['id']}/execute", json={"variables": {"n": n}},
                                     headers=acting).json["executionId"] for n in range(5)]
        deadline = time.monotonic() + 30
        done: dict = {}
        while len(done) < len(runs) and time.monotonic() < deadline:
            for run_id in runs:
                run = client.simulate_get(f"/flows/{flow['id']}/executions/{run_id}", headers=headers).json
                if run["status"] in ("completed", "failed"):
                    done[run_id] = run
            time.sleep(0.1)
        assert len(done) == len(runs), "runs did not finish through PgBouncer"
        assert sorted(run["outputs"]["two"] for run in done.values()) == [0, 2, 4, 6, 8]
    finally:
        worker.stop()
        stopping.set()
        thread.join(timeout=10)


def test_concurrent_requests_through_pgbouncer_never_fail(pooled):
    """Many threads, few server connections: no statement may leak between clients (the 500s
    auto-prepared statements caused) and every request keeps its own tenant."""
    config, db, worker_db = pooled
    client = testing.TestClient(create_app(config, db))
    orgs = []
    for name in ("A", "B", "C"):
        org = client.simulate_post("/organizations", json={"name": name}).json
        tool = client.simulate_post("/tools", json={"name": f"tool-{name}", "baseUrl": "https://x.example.com",
                                                    "authType": "none"}, headers={"X-Org-ID": org["id"]}).json
        orgs.append((org, tool))

    def hammer(index: int) -> list[str]:
        org, tool = orgs[index % len(orgs)]
        problems = []
        for _ in range(40):
            got = client.simulate_get(f"/tools/{tool['id']}", headers={"X-Org-ID": org["id"]})
            listed = client.simulate_get("/tools", headers={"X-Org-ID": org["id"]})
            if got.status_code != 200 or got.json["orgId"] != org["id"]:
                problems.append(f"get {got.status_code} {got.text[:200]}")
            if listed.status_code != 200 or [t["id"] for t in listed.json] != [tool["id"]]:
                problems.append(f"list {listed.status_code} {listed.text[:200]}")
        return problems

    with ThreadPoolExecutor(8) as pool:
        problems = [p for found in pool.map(hammer, range(24)) for p in found]
    assert problems == []
