"""The service as operators run it: real Gunicorn with gunicorn.conf.py, and the
``tolstoy`` command line."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tolstoy import cli

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn(env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "tolstoy.api.app:get_app()"],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.fixture
def server(database_url):
    port = free_port()
    process = gunicorn({"DATABASE_URL": database_url, "PORT": str(port), "WEB_CONCURRENCY": "2"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        pytest.fail("gunicorn did not start: " + process.communicate()[1])
    yield port
    process.terminate()
    process.wait(timeout=30)


def request(port, method, path, body=None, headers=None, chunks=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = dict(headers or {})
    if chunks is not None:
        conn.putrequest(method, path)
        for key, value in {**headers, "Transfer-Encoding": "chunked"}.items():
            conn.putheader(key, value)
        conn.endheaders()
        try:
            for chunk in chunks:
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer 413 and close before reading everything
    else:
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(payload) if payload else None


def test_gunicorn_serves_the_api(server):
    status, headers, body = request(server, "GET", "/health")
    assert (status, body) == (200, {"status": "ok"})
    status, headers, org = request(server, "POST", "/organizations", {"name": "Acme"})
    assert status == 201 and headers["location"] == f"/organizations/{org['id']}"
    status, _, users = request(server, "GET", "/users", headers={"X-Org-ID": org["id"], "X-Request-ID": "abc-1"})
    assert status == 200 and users == []
    status, _, body = request(server, "GET", "/status")
    assert status == 200 and body["status"] == "ok"


def test_chunked_bodies_are_read_and_capped_at_one_mebibyte(server):
    body = json.dumps({"name": "Chunked"}).encode()
    status, _, org = request(server, "POST", "/organizations", headers={"Content-Type": "application/json"},
                             chunks=[body[:5], body[5:]])
    assert status == 201 and org["name"] == "Chunked"
    huge = [b'{"name": "' + b"x" * 65536] * 17 + [b'"}']
    status, _, error = request(server, "POST", "/organizations", headers={"Content-Type": "application/json"},
                               chunks=huge)
    assert status == 413 and error["statusCode"] == 413


def run_cli(monkeypatch, env: dict, *argv: str):
    for key in ("DATABASE_URL", "DIRECT_URL", "TOLSTOY_ENV", "NODE_ENV"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cli.main(list(argv))


def test_db_reset_needs_force_and_never_runs_in_production(monkeypatch, database_url):
    with pytest.raises(SystemExit, match="--force"):
        run_cli(monkeypatch, {"DIRECT_URL": database_url}, "db", "reset")
    with pytest.raises(SystemExit, match="refusing to reset a production database"):
        run_cli(monkeypatch, {"DIRECT_URL": database_url, "NODE_ENV": "production"}, "db", "reset", "--force")


def seeded_counts(db) -> dict:
    with db.pool.connection() as conn:
        return conn.execute(
            "select (select count(*) from organizations) o, (select count(*) from users) u, "
            "(select count(*) from tools) t, (select count(*) from actions) a, (select count(*) from flows) f"
        ).fetchone()


def test_db_seed_is_idempotent_and_status_lists_migrations(monkeypatch, database_url, db, capfd):
    assert run_cli(monkeypatch, {"DIRECT_URL": database_url, "TOLSTOY_ENV": "production"}, "db", "seed") == 0
    before = seeded_counts(db)
    assert before == {"o": 1, "u": 2, "t": 1, "a": 2, "f": 1}
    assert run_cli(monkeypatch, {"DIRECT_URL": database_url, "TOLSTOY_ENV": "production"}, "db", "seed") == 0
    after = seeded_counts(db)
    assert after == before
    capfd.readouterr()
    assert run_cli(monkeypatch, {"DIRECT_URL": database_url, "TOLSTOY_ENV": "production"}, "db", "status") == 0
    assert "[X] 20261125000005_create_execution_logs.sql" in capfd.readouterr().out
