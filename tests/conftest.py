"""Test fixtures: one embedded PostgreSQL per session, migrated once into a
template database; every test gets a fresh copy of that template."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import queue
import tempfile
import threading
import uuid
from pathlib import Path

import psycopg
import pytest
from falcon import testing
from pytest_httpserver import HTTPServer

from tolstoy import engine, times
from tolstoy.api.app import create_app
from tolstoy.config import Config
from tolstoy.db import embedded, migrate
from tolstoy.db.database import Database
from tolstoy.engine import generate_key

# Fails any test in which Tolstoy's code opens a connection past its doors (see the module).
pytest_plugins = ["audit_connections"]

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = "tolstoy_template"

# Tests never reach AWS: production-mode tests would otherwise read the AWS
# secret, and boto3 would ask the EC2 metadata address for credentials. The
# secrets tests opt in explicitly against a local moto server.
os.environ["USE_AWS_SECRETS"] = "false"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
_counter = itertools.count()


def _with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    head, _, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def pg_server():
    """A running PostgreSQL: TEST_DATABASE_URL's server if set, else an embedded one."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield _with_database(url, "postgres")
        return
    # Not under pytest's basetemp: pytest prunes old basetemps, which would pull the
    # data directory from under a concurrent run's server.
    # A run killed before its teardown (a CI timeout's SIGTERM, a SIGKILL) leaves its server
    # running: stop those whose test processes are all gone before starting another.
    for leftover in Path(tempfile.gettempdir()).glob("tolstoy-test-pg-*"):
        embedded.stop_orphaned(leftover)
    data_dir = tempfile.mkdtemp(prefix="tolstoy-test-pg-")
    server, url = embedded.start(data_dir, database="postgres", cleanup="delete")
    yield url
    server.cleanup()


@pytest.fixture(scope="session")
def url_for(pg_server):
    """Build the URL of another database on the test server."""
    return lambda name: _with_database(pg_server, name)


@pytest.fixture(scope="session")
def admin_db(pg_server):
    """A connection pool on the maintenance database, for CREATE/DROP DATABASE."""
    db = Database(pg_server, min_size=1, max_size=2)
    db.open(wait=True)
    if not os.environ.get("TEST_DATABASE_URL"):
        # A throw-away server: durability buys nothing, and every test clones a database.
        for setting in ("fsync = off", "synchronous_commit = off", "full_page_writes = off"):
            db.execute_admin(f"alter system set {setting}")
        db.execute_admin("select pg_reload_conf()")
    yield db
    db.close()


@pytest.fixture(scope="session")
def template_url(pg_server, admin_db):
    """A database migrated with dbmate once, as production migrates it: by a schema owner that is not
    a superuser (tolstoy_owner), so nothing passes only because a superuser bypasses row-level
    security. Tests clone it; the URL returned is the superuser's."""
    admin_db.execute_admin(f'drop database if exists "{TEMPLATE}"')
    url = _with_database(pg_server, TEMPLATE)
    owner_url = migrate.prepare_owner(url)
    assert owner_url == migrate.as_role(url, migrate.OWNER_ROLE), owner_url
    migrate.upgrade(owner_url, quiet=True)
    return url


class Clones:
    """Fresh copies of the template database, made one ahead in a background thread
    so that a test rarely waits for CREATE DATABASE (about 0.1 s each)."""

    def __init__(self, admin_db: Database):
        self.admin_db = admin_db
        self.ready: queue.Queue[str] = queue.Queue(maxsize=1)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._make, name="test-database-clones", daemon=True)
        self.thread.start()

    def _make(self) -> None:
        while not self.stopping.is_set():
            name = f"t_{os.getpid()}_{next(_counter)}"
            self.admin_db.execute_admin(f'create database "{name}" template "{TEMPLATE}" owner {migrate.OWNER_ROLE}')
            while not self.stopping.is_set():
                try:
                    self.ready.put(name, timeout=0.5)
                    break
                except queue.Full:
                    continue
            else:
                self.drop(name)

    def take(self) -> str:
        """The name of a fresh database; the caller drops it."""
        return self.ready.get(timeout=120)

    def drop(self, name: str) -> None:
        """Remove a database, closing any connection a test left open on it."""
        self.admin_db.execute_admin(f'drop database if exists "{name}" with (force)')

    def close(self) -> None:
        """Stop making copies and drop the spare one."""
        self.stopping.set()
        self.thread.join(timeout=30)
        while not self.ready.empty():
            self.drop(self.ready.get_nowait())


@pytest.fixture(scope="session")
def clones(admin_db, template_url):
    """The background maker of fresh test databases."""
    maker = Clones(admin_db)
    yield maker
    maker.close()


@pytest.fixture
def database_url(pg_server, clones):
    """A fresh, migrated database for one test, dropped afterwards."""
    name = clones.take()
    yield _with_database(pg_server, name)
    clones.drop(name)


class MovableClock:
    """The test database's clock (tolstoy_clock, which tolstoy_now() reads) and the process's
    (tolstoy.times.CLOCK), moved forward together: a lease, a delay, a timeout, a schedule or a
    retention period runs out without the test sleeping through it. Moved as the schema owner, the
    only role that may (tests/db/test_clock.py)."""

    def __init__(self, owner_url: str):
        self.owner_url = owner_url

    def move(self, seconds: float) -> None:
        by = dt.timedelta(seconds=seconds)
        with psycopg.connect(self.owner_url, autocommit=True) as conn:
            conn.execute("update tolstoy_clock set ahead = ahead + %s", (by,))
        times.CLOCK.move(by)

    def move_past_leases(self) -> float:
        """Move just past every lease held now (runs', webhook deliveries'): what a dead or frozen worker
        held is recovered at once. Only while no live worker holds a lease it must keep. Returns the
        seconds moved."""
        with psycopg.connect(self.owner_url, autocommit=True) as conn:
            left = conn.execute(
                "select extract(epoch from greatest("
                "(select max(lease_expires_at) from flow_runs where status = 'running'), "
                "(select max(lease_expires_at) from webhook_deliveries where state = 'sending')) - tolstoy_now())"
            ).fetchone()[0]
        seconds = max(float(left or 0), 0.0) + 0.5
        self.move(seconds)
        return seconds


@pytest.fixture
def clock(database_url):
    """Move time forward in this test (``clock.move(seconds)``) instead of sleeping."""
    yield MovableClock(migrate.as_role(database_url, migrate.OWNER_ROLE))
    times.CLOCK.reset()


@pytest.fixture
def app_db(app_url):
    """An opened pool on this test's database as the application role (what the app uses)."""
    database = Database(app_url, min_size=1, max_size=6, timeout=5)
    database.open(wait=True)
    yield database
    database.close()


@pytest.fixture
def worker_db(database_url):
    """An opened pool on this test's database as the workers' role (tolstoy_worker)."""
    database = Database(migrate.as_role(database_url, migrate.WORKER_ROLE), min_size=1, max_size=8, timeout=5)
    database.open(wait=True)
    yield database
    database.close()


@pytest.fixture
def db(database_url):
    """An opened pool on this test's database as its owner, for looking at rows directly."""
    database = Database(database_url, min_size=1, max_size=4, timeout=5)
    database.open(wait=True)
    yield database
    database.close()


@pytest.fixture
def owner_db(database_url):
    """An opened pool on this test's database as the schema owner (tolstoy_owner, no superuser): what
    migrations and `tolstoy secrets` run as."""
    database = Database(migrate.as_role(database_url, migrate.OWNER_ROLE), min_size=1, max_size=2, timeout=5)
    database.open(wait=True)
    yield database
    database.close()


@pytest.fixture
def app_url(database_url):
    """This test's database as the application role: no ownership, row-level security applies."""
    return migrate.as_role(database_url)


@pytest.fixture
def config(app_url):
    """Configuration as the app would read it for this test: tools on 127.0.0.1 reachable,
    credentials encryptable, short worker leases."""
    return Config.from_env(engine_env(app_url))


ENCRYPTION_KEY = generate_key()


@pytest.fixture
def worker_env(app_url):
    """Environment variables for a worker process on this test's database."""
    return engine_env(app_url)


def engine_env(database_url: str) -> dict:
    """Environment for the app and workers in tests (workers log in as tolstoy_worker, the API's
    /organizations routes as tolstoy_admin)."""
    return {
        "DATABASE_URL": database_url,
        "WORKER_DATABASE_URL": migrate.as_role(database_url, migrate.WORKER_ROLE),
        "ADMIN_DATABASE_URL": migrate.as_role(database_url, migrate.ADMIN_ROLE),
        "TOLSTOY_ENV": "test",
        "TOLSTOY_ENCRYPTION_KEY": ENCRYPTION_KEY,
        "TOLSTOY_ALLOW_NETWORKS": "127.0.0.1/32",
        # Long enough that a busy machine (a heartbeat is a third of it) does not lose leases; tests that
        # need one to expire move the clock (the clock fixture) instead of waiting.
        "TOLSTOY_WORKER_LEASE_SECONDS": "5",
        "TOLSTOY_WORKER_POLL_SECONDS": "0.2",
        # Tests send hundreds of requests a second for one organization through one process; the request
        # quota's own tests set it (tests/api/test_quotas.py).
        "TOLSTOY_QUOTA_REQUESTS_PER_SECOND": "1000000",
        "TOLSTOY_QUOTA_REQUEST_BURST": "1000000",
    }


@pytest.fixture
def client(config, app_db):
    """A Falcon test client on a fresh database."""
    return testing.TestClient(create_app(config, app_db))


class Api:
    """Small helpers over the test client for creating tenant data."""

    def __init__(self, client: testing.TestClient):
        self.client = client

    def org(self, name: str = "Acme") -> dict:
        """Create an organization; returns its JSON."""
        result = self.client.simulate_post("/organizations", json={"name": name})
        assert result.status_code == 201, result.text
        return result.json

    def post(self, path: str, org: dict | str, body: dict, user: dict | str | None = None):
        """POST with tenant headers."""
        return self.client.simulate_post(path, json=body, headers=self.headers(org, user))

    def create(self, path: str, org: dict | str, body: dict, user: dict | str | None = None) -> dict:
        """POST that must succeed; returns the created JSON."""
        result = self.post(path, org, body, user)
        assert result.status_code == 201, result.text
        return result.json

    @staticmethod
    def headers(org: dict | str | None, user: dict | str | None = None) -> dict:
        """Tenant headers for an organization (and optionally a user)."""
        headers = {}
        if org is not None:
            headers["X-Org-ID"] = org["id"] if isinstance(org, dict) else org
        if user is not None:
            headers["X-User-ID"] = user["id"] if isinstance(user, dict) else user
        return headers

    def user(self, org: dict, email: str | None = None, name: str | None = "Ada") -> dict:
        """Create a user in org."""
        email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
        return self.create("/users", org, {"email": email, "name": name})

    def tool(self, org: dict, name: str | None = None, **fields) -> dict:
        """Create a tool in org."""
        body = {"name": name or f"tool-{uuid.uuid4().hex[:8]}", "baseUrl": "https://api.example.com",
                "authType": "none", **fields}
        return self.create("/tools", org, body)

    def action(self, org: dict, tool: dict, key: str | None = None, **fields) -> dict:
        """Create an action of tool in org."""
        body = {"toolId": tool["id"], "name": "Get thing", "key": key or f"k.{uuid.uuid4().hex[:8]}",
                "method": "GET", "endpoint": "/things/{id}", **fields}
        return self.create("/actions", org, body)

    def flow(self, org: dict, steps: list | None = None, **fields) -> dict:
        """Create a flow in org (one transform step by default)."""
        steps = steps or [{"id": "hello", "type": "transform", "config": {"output": {"hi": 1}}}]
        return self.create("/flows", org, {"name": "Flow", "steps": steps, **fields})

    def log(self, org: dict, user: dict, flow: dict, **fields) -> dict:
        """Create an execution log in org written by user."""
        body = {"flowId": flow["id"], "executionId": "run-1", "stepKey": "hello",
                "status": "completed", "inputs": {}, **fields}
        return self.create("/execution-logs", org, body, user)


@pytest.fixture
def api(client):
    """Helpers to create records through the API."""
    return Api(client)


@pytest.fixture
def org(api):
    """An organization to work in."""
    return api.org()


@pytest.fixture
def user(api, org):
    """A user of ``org``, for routes that record an actor."""
    return api.user(org)


@pytest.fixture
def worker(config, worker_db):
    """A flow worker in a thread of this process, as the workers' role, for the test's duration."""
    w = engine.worker(config, worker_db, concurrency=4, poll_seconds=0.1)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    yield w
    w.stop()
    thread.join(timeout=10)


@pytest.fixture
def server():
    """A local HTTP server that answers requests concurrently (one call can hang while others go
    on); pytest-httpserver's own ``httpserver`` answers one request at a time."""
    httpserver = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    httpserver.start()
    yield httpserver
    httpserver.clear()
    httpserver.stop()
