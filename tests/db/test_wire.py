"""tolstoy/db/wire.py: a unit's batch in one round trip, driven on libpq's pipeline by Tolstoy itself.

What its callers rely on: the rows and row counts psycopg's cursors gave, psycopg's exceptions for
what the server refuses, a batch undone whole when part of it fails, a connection left clean after
any failure, and statements prepared under one name everywhere (safe behind a pooler that does not
track them). The counts that make it cheaper (statements and round trips per request) are asserted
by tests/api/test_round_trips.py."""

from __future__ import annotations

import gc
import uuid
import weakref

import psycopg
import pytest
from psycopg.rows import dict_row

from tolstoy.db import wire
from tolstoy.db.database import Database
from tolstoy.db.queries import Query


def query(sql: str, kind: str = "all") -> Query:
    return Query(name="test.wire", kind=kind, sql=sql, doc="", source="test")


@pytest.fixture
def conn(database_url):
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row, prepare_threshold=1) as conn:
        conn.execute("create temporary table t (x integer primary key, note text)")
        yield conn


def test_rows_and_row_counts_are_what_psycopg_gives(conn):
    inserted, counted, rows, none = wire.exchange(conn, [
        (query("insert into t (x, note) select g, 'n' || g from generate_series(1, %(n)s) g", "rowcount"), {"n": 3}),
        (query("update t set note = %(note)s where x > %(x)s", "rowcount"), {"note": "changed", "x": 1}),
        (query("select x, note, %(id)s::uuid as id from t order by x"), {"id": uuid.UUID(int=7)}),
        (query("select x from t where x > 100"), {}),
    ])
    assert (inserted.rowcount, counted.rowcount) == (3, 2)
    assert rows.rows == [{"x": 1, "note": "n1", "id": uuid.UUID(int=7)},
                         {"x": 2, "note": "changed", "id": uuid.UUID(int=7)},
                         {"x": 3, "note": "changed", "id": uuid.UUID(int=7)}]
    assert (rows.rowcount, none.rows, none.rowcount) == (3, [], 0)
    # What a rowcount statement returns is not read; what psycopg's fetchall refused is refused.
    [skipped] = wire.exchange(conn, [(query("select x from t", "rowcount"), {})])
    assert (skipped.rows, skipped.rowcount) == ([], 3)
    with pytest.raises(psycopg.ProgrammingError, match="didn't produce records"):
        wire.exchange(conn, [(query("delete from t where x = 3"), {})])


def test_a_failing_statement_raises_its_own_error_and_undoes_the_batch(conn):
    with pytest.raises(psycopg.errors.UniqueViolation) as failed:
        wire.exchange(conn, [(query("insert into t (x) values (1)", "rowcount"), {}),
                             (query("insert into t (x) values (1)", "rowcount"), {}),
                             (query("insert into t (x) values (2)", "rowcount"), {})])
    assert failed.value.diag.constraint_name == "t_pkey"
    # One implicit transaction: the first insert went with the second; the connection is clean.
    assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert conn.pgconn.pipeline_status == psycopg.pq.PipelineStatus.OFF
    [count] = wire.exchange(conn, [(query("select count(*) as n from t"), {})])
    assert count.rows == [{"n": 0}]


def test_what_fails_before_sending_leaves_nothing_queued(conn):
    with pytest.raises(psycopg.ProgrammingError, match="missing: x"):
        wire.exchange(conn, [(query("insert into t (x) values (5)", "rowcount"), {}),
                             (query("insert into t (x) values (%(x)s)", "rowcount"), {})])
    with pytest.raises(psycopg.ProgrammingError):
        wire.exchange(conn, [(query("insert into t (x) values (6)", "rowcount"), {}),
                             (query("select %(x)s"), {"x": object()})])  # nothing adapts it
    [count] = wire.exchange(conn, [(query("select count(*) as n from t"), {})])
    assert count.rows == [{"n": 0}]


def test_a_statement_is_prepared_under_one_name_on_every_connection(database_url):
    """psycopg names its prepared statements _pg3_0, _pg3_1, … in the order each connection meets them,
    so behind a transaction pooler that does not track them one name can mean two statements. Tolstoy's
    name is the statement's: the same on every connection, whatever the order."""
    first, second = query("select 1 as one"), query("select %(n)s::integer as n")
    found = []
    for order in ([first, second], [second, first]):
        db = Database(database_url, min_size=1, max_size=1, prepare_threshold=0)
        db.open(wait=True)
        try:
            for statement in order:
                db.all(statement, n=2)
            found.append({row["statement"]: row["name"] for row in db.all(
                query("select name, statement from pg_prepared_statements where statement in ('select 1 as one', "
                      "'select $1::integer as n')"))})
        finally:
            db.close()
    assert found[0] == found[1]
    assert len(found[0]) == len(set(found[0].values())) == 2, found[0]


def test_statements_are_prepared_after_the_threshold_and_reused(conn):
    statement = query("select %(n)s::integer as n")
    for n in range(4):
        assert wire.exchange(conn, [(statement, {"n": n})], 1)[0].rows == [{"n": n}]
    names = [row["name"] for row in conn.execute("select name from pg_prepared_statements").fetchall()]
    assert len([name for name in names if name.startswith("tolstoy_")]) == 1
    # A prepare that fails (the statement does not parse) is not taken as prepared.
    broken = query("select from nowhere_at_all")
    for _ in range(3):
        with pytest.raises(psycopg.errors.UndefinedTable):
            wire.exchange(conn, [(broken, {})], 1)
    assert conn.execute("select count(*) as n from pg_prepared_statements").fetchone()["n"] == len(names)


def test_a_closed_connection_leaves_nothing_behind(database_url):
    """What wire.py keeps per connection goes with it: the pool drops and replaces connections for years."""
    kept = []
    for _ in range(3):
        conn = psycopg.connect(database_url, autocommit=True)
        wire.exchange(conn, [(query("select 1 as one"), {})])
        kept.append(weakref.ref(conn))
        conn.close()
        del conn
    gc.collect()
    assert [ref() for ref in kept] == [None, None, None]


def test_a_rollback_by_psycopg_leaves_the_prepared_statements_alone(database_url):
    """The pool rolls back a connection given back in a failed transaction with psycopg's rollback(),
    which deallocates every prepared statement when psycopg's own manager holds one: psycopg must
    prepare nothing on the pool's connections, or each failed unit would wipe what wire.py prepared and
    the next one would take the "does not exist" for a pooler's clash and stop preparing for good."""
    statement = query("select %(n)s::integer as n")
    db = Database(database_url, min_size=1, max_size=1, prepare_threshold=0)
    db.open(wait=True)
    try:
        assert db.all(statement, n=1) == [{"n": 1}]
        for _ in range(8):  # what psycopg itself runs on the pool's connections (health checks, say)
            with db.pool.connection() as conn:
                conn.execute("select 1")
        conn = db.pool.getconn()
        conn.execute("begin")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1 / 0")
        db.pool.putconn(conn)  # given back in a failed transaction: the pool rolls it back
        assert db.all(statement, n=2) == [{"n": 2}]
        assert db.prepare_threshold == 0  # still preparing: nothing clashed
        names = db.all(query("select name from pg_prepared_statements"))
        assert [row["name"] for row in names if row["name"].startswith("tolstoy_")], names
    finally:
        db.close()


def test_a_row_that_fails_to_load_does_not_hide_a_prepare(conn):
    statement = query("select %(n)s::integer as n")
    with pytest.raises(psycopg.errors.DataError):  # psycopg's date cannot hold infinity
        wire.exchange(conn, [(query("select 'infinity'::date as d"), {}), (statement, {"n": 1})], 0)
    assert wire.exchange(conn, [(statement, {"n": 2})], 0)[0].rows == [{"n": 2}]


def test_a_statement_twice_in_one_batch_is_prepared_once(conn):
    statement = query("select %(n)s::integer as n")
    first, second = wire.exchange(conn, [(statement, {"n": 1}), (statement, {"n": 2})], 0)
    assert (first.rows, second.rows) == ([{"n": 1}], [{"n": 2}])
