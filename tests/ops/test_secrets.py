"""Settings from AWS Secrets Manager, against moto's server on 127.0.0.1 (boto3
speaks real HTTP to it): precedence, the TTL cache and rotation, failures at start."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tolstoy import cli
from tolstoy.config import Config
from tolstoy.db.database import Database

ROOT = Path(__file__).resolve().parents[2]


REGION = "eu-west-3"


@pytest.fixture(scope="module")
def moto_endpoint():
    """A Secrets Manager stand-in listening on 127.0.0.1 only."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_endpoint, monkeypatch):
    """What boto3 reads from the process environment: where AWS is and dummy keys for moto."""
    values = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture
def secrets(aws_env):
    """A boto3 client on moto, to create and rotate secrets as an operator would."""
    return boto3.client("secretsmanager", region_name=REGION, endpoint_url=aws_env["AWS_ENDPOINT_URL"])


def new_secret(secrets, values) -> str:
    name = f"tolstoy-test-{uuid.uuid4().hex[:8]}"
    text = values if isinstance(values, str) else json.dumps(values)
    secrets.create_secret(Name=name, SecretString=text)
    return name


def production(name: str, **extra) -> dict:
    # Production defaults to API-key auth, whose two secrets the API needs to start.
    return {"TOLSTOY_ENV": "production", "AWS_SECRET_NAME": name, "AWS_REGION": REGION,
            "TOLSTOY_API_KEY_SECRET": "k" * 40, "TOLSTOY_ADMIN_TOKEN": "a" * 40, **extra}


class FakeClock:
    """A monotonic clock that only moves when the test says so (from the real one's reading)."""

    def __init__(self):
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


def test_pool_connects_with_the_rotated_url_after_the_ttl(secrets, url_for, admin_db, database_url):
    """Rotation end to end: DATABASE_URL moves to another database; new connections follow it."""
    other = f"rotated_{uuid.uuid4().hex[:8]}"
    admin_db.execute_admin(f'create database "{other}"')
    name = new_secret(secrets, {"DATABASE_URL": database_url})
    # One connection, so the pool never grows behind the test's back with an older URL.
    config = Config.from_env(production(name, TOLSTOY_SECRET_TTL="120", TOLSTOY_POOL_MIN_SIZE="1",
                                        TOLSTOY_POOL_MAX_SIZE="1"))
    clock = FakeClock()
    config.secret.clock = clock
    db = Database.from_config(config)
    db.open(wait=True)
    try:
        def current() -> str:
            with db.pool.connection() as conn:
                return conn.execute("select current_database() as name").fetchone()["name"]

        before = current()
        secrets.put_secret_value(SecretId=name, SecretString=json.dumps({"DATABASE_URL": url_for(other)}))
        db.pool.drain()  # new connections, but the cached secret is still fresh
        assert current() == before
        clock.now += 121
        db.pool.drain()
        assert current() == other
    finally:
        db.close()
        admin_db.execute_admin(f'drop database if exists "{other}" with (force)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn(env: dict) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DIRECT_URL")}
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "tolstoy.api.app:get_app()"],
        cwd=ROOT, env={**environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_gunicorn_serves_with_the_database_url_from_the_secret(secrets, database_url):
    # The test server trusts local connections, so the password is never checked: it is here
    # to prove that it shows up in no log line.
    if "postgres:@" not in database_url:
        pytest.skip("needs the embedded server's password-less URL (TEST_DATABASE_URL is set)")
    url = database_url.replace("postgres:@", "postgres:pw-in-secret@", 1)
    name = new_secret(secrets, {"DATABASE_URL": url})
    port = free_port()
    process = gunicorn({**production(name), "USE_AWS_SECRETS": "true", "PORT": str(port),
                        "WEB_CONCURRENCY": "1"})
    try:
        status = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and status != 200:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=1)
            except OSError:
                time.sleep(0.2)
                continue
            conn.sendall(b"GET /status HTTP/1.0\r\nHost: x\r\n\r\n")
            try:
                status = int(conn.makefile("rb").readline().split()[1])
            except OSError:  # the worker is still booting: ask again
                time.sleep(0.2)
            finally:
                conn.close()
        assert status == 200
    finally:
        process.terminate()
        out, err = process.communicate(timeout=30)
    assert "pw-in-secret" not in out + err


def test_db_commands_use_direct_url_from_the_secret(secrets, database_url, monkeypatch, capfd):
    name = new_secret(secrets, {"DATABASE_URL": "postgresql://pooler.invalid/x", "DIRECT_URL": database_url})
    for key in ("DATABASE_URL", "DIRECT_URL", "NODE_ENV"):
        monkeypatch.delenv(key, raising=False)
    for key, value in production(name, USE_AWS_SECRETS="true").items():
        monkeypatch.setenv(key, value)
    assert cli.main(["db", "status"]) == 0
    assert "[X] 20261125000001_create_common_functions.sql" in capfd.readouterr().out
