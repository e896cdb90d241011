"""A database that stops taking writes under the service's feet, as a demoted primary does.

After a Patroni switchover the old primary comes back as a standby within
seconds, while a pooler (or a virtual IP, or HAProxy until its next check) may
still send connections to it: every write there fails with SQLSTATE 25006,
"cannot execute ... in a read-only transaction". Tolstoy opens no read-only
transaction of its own, so that error means the server takes no writes now: it
must read as the database being unavailable (503 with Retry-After; a run's
checkpoint tried again), never as a bug (a 500; a run marked failed). The
soak found it (bench/soak.py, fault `switchover`); these tests make the server
read-only the way a demotion does to sessions already open: a configuration
reload that every session picks up at its next transaction.
"""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from test_engine import execute, step, wait_for
from test_worker_processes import wait_until
from werkzeug import Response

from tolstoy import engine
from tolstoy.db.database import Database
from tolstoy.db.queries import SQL
from tolstoy.errors import DatabaseUnavailable

# ALTER SYSTEM changes the whole test server: tests of one process run one at a time, and each
# test here puts the setting back before it ends.
pytestmark = pytest.mark.xdist_group("read-only-server")


@contextlib.contextmanager
def read_only_server(db: Database):
    """Every session of the server refuses writes from its next transaction on, until the block ends."""
    with db.pool.connection() as conn:
        conn.autocommit = True
        conn.execute("alter system set default_transaction_read_only = on")
        conn.execute("select pg_reload_conf()")
    try:
        time.sleep(0.3)  # every backend has read the reloaded file by its next statement
        yield
    finally:
        with db.pool.connection() as conn:
            conn.autocommit = True
            conn.execute("alter system reset default_transaction_read_only")
            conn.execute("select pg_reload_conf()")
        time.sleep(0.3)


def test_a_write_refused_as_read_only_is_a_503_with_retry_after(client, api, org, db):
    with read_only_server(db):
        answer = client.simulate_post("/users", json={"email": "ro@example.com"}, headers=api.headers(org))
    assert answer.status_code == 503, answer.text
    assert answer.headers.get("retry-after")
    assert answer.json["statusCode"] == 503
    after = client.simulate_post("/users", json={"email": "ro@example.com"}, headers=api.headers(org))
    assert after.status_code == 201, after.text


def test_a_connection_that_refused_a_write_as_read_only_is_not_used_again(app_url, db, org):
    """The pool drops it: behind a virtual IP or a pooler that still points at the old primary, the
    next connection is the one that can reach the new one."""
    database = Database(app_url, min_size=1, max_size=1, timeout=5)
    database.open(wait=True)
    try:
        with database.pool.connection() as conn:
            before = conn.execute("select pg_backend_pid() as pid").fetchone()["pid"]
        with read_only_server(db), pytest.raises(DatabaseUnavailable), database.tenant(org["id"]):
            database.one(SQL.users.insert, org_id=org["id"], email="ro@example.com", name=None, commit=True)
        with database.pool.connection() as conn:
            after = conn.execute("select pg_backend_pid() as pid").fetchone()["pid"]
    finally:
        database.close()
    assert after != before


def refused_checkpoints(db: Database) -> int:
    """Checkpoints the server has refused so far (PostgreSQL counts rolled-back transactions per database)."""
    with db.pool.connection() as conn:
        return conn.execute("select count(*) as n from pg_stat_activity where usename = 'tolstoy_worker' "
                            "and state like 'idle%%' and query like '%%tolstoy_checkpoint%%'").fetchone()["n"]


@pytest.fixture
def patient_worker(config, worker_db):
    """An in-process worker with a 10 s lease: the read-only spell ends well within it."""
    w = engine.worker(config, worker_db, concurrency=2, poll_seconds=0.1, lease_seconds=10)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    yield w
    w.stop()
    thread.join(timeout=15)


def test_a_checkpoint_refused_as_read_only_is_tried_again_and_the_run_completes(
        api, org, user, patient_worker, server, db):
    hits = {"one": 0, "two": 0, "three": 0}
    in_two = threading.Event()
    go_on = threading.Event()

    def handler(name):
        def respond(request):
            hits[name] += 1
            if name == "two":
                in_two.set()
                go_on.wait(10)
            return Response("{}", content_type="application/json")
        return respond

    for name in hits:
        server.expect_request(f"/{name}").respond_with_handler(handler(name))
    flow = api.flow(org, steps=[step(name, "http_request", {"method": "POST", "url": server.url_for(f"/{name}")})
                                for name in hits])
    run = execute(api, org, user, flow)
    assert in_two.wait(10)
    with read_only_server(db):
        go_on.set()  # step two answers; its checkpoint meets a server that takes no writes
        wait_until(lambda: refused_checkpoints(db) >= 1, 10, "the checkpoint to have been refused")
        time.sleep(1.0)  # and refused again, for a while
    finished = wait_for(api, org, flow, run["executionId"], timeout=30)
    assert finished["status"] == "completed", finished
    assert hits == {"one": 1, "two": 1, "three": 1}
