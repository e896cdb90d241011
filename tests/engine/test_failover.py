"""A database that stops taking writes under the service's feet, as a demoted primary does.

After a Patroni switchover the old primary comes back as a standby within
seconds, while a pooler (or a virtual IP, or HAProxy until its next check) may
still send connections to it: every write there fails with SQLSTATE 25006,
"cannot execute ... in a read-only transaction". Tolstoy opens no read-only
transaction of its own, so that error means the server takes no writes now: it
must read as the database being unavailable (503 with Retry-After; a run's
checkpoint tried again), never as a bug (a 500; a run marked failed). The
soak's `switchover` fault (bench/faults.py) exercises it; these tests make the test's
database look to the services as a demoted primary does: their sessions cut,
and every new one read-only.
"""

from __future__ import annotations

import contextlib
import time

import pytest
from test_durable import patient_worker, three_calls_pausing_in_two  # noqa: F401 - patient_worker is a fixture
from test_engine import execute, wait_for

from tolstoy.db.database import Database
from tolstoy.db.queries import SQL
from tolstoy.errors import DatabaseUnavailable


@contextlib.contextmanager
def read_only_database(db: Database):
    """This test's database refuses writes, as a demoted primary does: new sessions are read-only, and
    the services' sessions are cut (a demotion restarts the server), so they reconnect to it read-only.
    When the block ends new sessions may write again; sessions opened meanwhile stay read-only, as
    sessions still open to the old primary do."""
    with db.pool.connection() as conn:
        conn.autocommit = True
        name = conn.execute("select current_database() as name").fetchone()["name"]
        conn.execute(f'alter database "{name}" set default_transaction_read_only = on')
        conn.execute("select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() "
                     "and usename in ('tolstoy_app', 'tolstoy_worker')")
    try:
        yield
    finally:
        with db.pool.connection() as conn:
            conn.autocommit = True
            conn.execute(f'alter database "{name}" reset default_transaction_read_only')


def test_a_write_refused_as_read_only_is_a_503_with_retry_after(client, api, org, db):
    with read_only_database(db):
        answer = client.simulate_post("/users", json={"email": "ro@example.com"}, headers=api.headers(org))
    assert answer.status_code == 503, answer.text
    assert answer.headers.get("retry-after")
    assert answer.json["statusCode"] == 503
    # Sessions opened while it was read-only stay so (like those still open to the old primary): each
    # answers one 503 and is dropped, so writes work again within a few requests, not never.
    for _ in range(8):
        after = client.simulate_post("/users", json={"email": "ro@example.com"}, headers=api.headers(org))
        if after.status_code != 503:
            break
    assert after.status_code == 201, after.text


def test_a_connection_that_refused_a_write_as_read_only_is_not_used_again(app_url, db, org):
    """The pool drops it: behind a virtual IP or a pooler that still points at the old primary, the
    next connection is the one that reaches the new one. Kept, it would refuse every write forever."""
    database = Database(app_url, min_size=1, max_size=1, timeout=5)
    database.open(wait=True)
    try:
        with read_only_database(db), pytest.raises(DatabaseUnavailable), database.tenant(org["id"]):
            database.one(SQL.users.insert, org_id=org["id"], email="ro@example.com", name=None, commit=True)
        for _ in range(3):  # the pool may have reconnected (read-only) before the block ended
            try:
                with database.tenant(org["id"]):
                    created = database.one(SQL.users.insert, org_id=org["id"], email="ro@example.com", name=None,
                                           commit=True)
                break
            except DatabaseUnavailable:
                created = None
    finally:
        database.close()
    assert created is not None and created["email"] == "ro@example.com"


@pytest.mark.usefixtures("patient_worker")  # a 10 s lease: the read-only spell ends well within it
def test_a_checkpoint_refused_as_read_only_is_tried_again_and_the_run_completes(api, org, user, server, db):
    flow, hits, in_two, go_on = three_calls_pausing_in_two(api, org, server)
    run = execute(api, org, user, flow)
    assert in_two.wait(10)
    with read_only_database(db):
        go_on.set()  # step two answers; its checkpoint meets a server that takes no writes
        time.sleep(2.0)  # and is refused for a while
    finished = wait_for(api, org, flow, run["executionId"], timeout=30)
    assert finished["status"] == "completed", finished
    assert hits == {"one": 1, "two": 1, "three": 1}
