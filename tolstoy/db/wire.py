"""One round trip of named statements on a psycopg connection, without psycopg's per-statement machinery.

A unit of work sends its statements in one batch: ``tolstoy_enter`` and the first query, ``COMMIT`` with
the last. psycopg's pipeline mode does that, but through a cursor, a transformer, a query conversion and
a prepare check per statement and a generator step per command: on ``GET /tools/{id}`` the batch of two
cost 134 µs of client CPU where the query alone cost 86, and a hand-driven libpq pipeline of the same
two 70 (``python -m bench.profile``, "the driver alone"). This module drives libpq's pipeline itself and
keeps psycopg for everything it is for: the connection and its waiting (``Connection.wait`` with the C
generators), the adaptation of parameters and of every column (one ``Transformer`` per connection, built
from its adapters), and the exceptions (``psycopg.errors.error_from_result``), so that callers and
``database.wrap_errors`` see exactly the errors they saw from ``Connection.execute``.

Each statement is converted once per process (``:name`` to ``$n``, ``Query.positional``) and, once a
connection has run it ``prepare_threshold`` times, prepared on that connection under a name derived from
its text and parameter types. A name that means one statement everywhere is what keeps a transaction
pooler that does not track prepared statements (PgBouncer before 1.21) safe: a server connection that
another client prepared the name on holds the same statement, and one that lacks it answers
"does not exist" (26000), which ``Unit._open`` takes as the sign to stop preparing. psycopg's own
``_pg3_<n>`` names are per connection, so the same name could mean another statement there.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.generators import fetch_many, send

from .queries import Query

# Statements prepared on one connection at most: the named queries are a fixed set, but a server
# backend keeps a plan for each, so a bound (beyond it a statement is sent unnamed, parsed each time).
MAX_PREPARED = 256
# Runs of a statement on one connection before it is prepared there (TOLSTOY_PREPARE_THRESHOLD's default).
PREPARE_THRESHOLD = 5

_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_FATAL_ERROR = pq.ExecStatus.FATAL_ERROR
_PIPELINE_SYNC = pq.ExecStatus.PIPELINE_SYNC
_PIPELINE_ABORTED = pq.ExecStatus.PIPELINE_ABORTED
_TEXT = pq.Format.TEXT
# What a statement may answer (psycopg's Cursor raises on anything else: COPY, a bad response).
_ANSWERS = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK, pq.ExecStatus.EMPTY_QUERY)
_AUTO = PyFormat.AUTO

@functools.cache
def _name(sql: bytes, types: tuple[int, ...]) -> bytes:
    """The name a statement with these parameter types is prepared under, on every connection of every
    process (the named queries are a fixed set, so the cache is bounded by them)."""
    digest = hashlib.blake2b(sql + b"\0" + ",".join(map(str, types)).encode(), digest_size=10)
    return b"tolstoy_" + digest.hexdigest().encode()


class _Session:
    """What this module keeps per connection: its transformer, the statements prepared on it, and how
    often each not yet prepared one ran."""

    __slots__ = ("transformer", "prepared", "seen", "encoding")

    def __init__(self, conn: psycopg.Connection):
        self.transformer = Transformer(conn)
        self.prepared: set[bytes] = set()
        self.seen: dict[bytes, int] = {}
        self.encoding = conn.info.encoding


def _session(conn: psycopg.Connection) -> _Session:
    # Kept on the connection itself: its transformer refers to the connection, so a table keyed by
    # connections (even weakly) would keep every connection the pool ever dropped alive.
    session = getattr(conn, "_tolstoy_wire", None)
    if session is None:
        session = conn._tolstoy_wire = _Session(conn)
    return session


def forget_prepared(conn: psycopg.Connection) -> None:
    """The connection's server side no longer holds what was prepared on it (a pooler gave us another)."""
    session = getattr(conn, "_tolstoy_wire", None)
    if session is not None:
        session.prepared.clear()
        session.seen.clear()


class Rows:
    """One statement's outcome: its rows (dicts keyed by column name; [] when not ``wanted``) and psycopg's
    ``Cursor.rowcount`` (rows returned, or affected; -1 when the command says neither)."""

    __slots__ = ("rows", "rowcount")

    def __init__(self, rows: list[dict], rowcount: int):
        self.rows = rows
        self.rowcount = rowcount


def exchange(conn: psycopg.Connection, statements: list[tuple[Query, dict]],
             prepare_threshold: int | None = PREPARE_THRESHOLD) -> list[Rows]:
    """Send ``statements`` in one pipeline ended by one Sync (so, outside a transaction, one implicit
    transaction: rolled back whole if any part fails) and read every result. Raises the first error
    as psycopg's exception (the rest of the batch is then skipped by the server). A statement is
    prepared once this connection ran it ``prepare_threshold`` times (None: never)."""
    session = _session(conn)
    # Everything that can fail on our side (a parameter missing, a value psycopg cannot adapt) fails here,
    # before anything is queued on the connection.
    preparing: set[bytes] = set()  # a statement twice in one batch is prepared once
    commands = [_command(session, query, params, prepare_threshold, preparing) for query, params in statements]
    pgconn = conn.pgconn
    with conn.lock:
        pgconn.enter_pipeline_mode()
        try:
            for sql, values, types, formats, name, prepare in commands:
                if prepare:
                    pgconn.send_prepare(name, sql, param_types=types)
                if name is None:
                    pgconn.send_query_params(sql, values, param_types=types, param_formats=formats,
                                             result_format=_TEXT)
                else:
                    pgconn.send_query_prepared(name, values, param_formats=formats, result_format=_TEXT)
            pgconn.pipeline_sync()
            results = conn.wait(_flush_and_fetch(pgconn))
            pgconn.exit_pipeline_mode()
        except BaseException:
            # Interrupted halfway (the connection lost, a signal): results may be left unread, which
            # no later unit must meet. A broken connection is dropped by the pool; close one that is not.
            if pgconn.status == pq.ConnStatus.OK and pgconn.pipeline_status != pq.PipelineStatus.OFF:
                conn.close()
            raise
    return _outcomes(session, results, commands, statements)


def _command(session: _Session, query: Query, params: dict, threshold: int | None, preparing: set[bytes]) -> tuple:
    """What to send for one statement: (text, dumped values, types, formats, prepared name or None,
    whether to prepare it first)."""
    sql, order = query.positional
    try:
        values = [params[name] for name in order]
    except KeyError as exc:
        raise psycopg.ProgrammingError(f"query parameter missing: {exc.args[0]}") from None
    tx = session.transformer
    if values:
        dumped, types, formats = tx.dump_sequence(values, [_AUTO] * len(values)), tuple(tx.types), tx.formats
    else:
        dumped, types, formats = None, (), None
    if threshold is None:
        return sql, dumped, types, formats, None, False
    name = _name(sql, types)
    if name in session.prepared or name in preparing:
        return sql, dumped, types, formats, name, False
    count = session.seen.get(name, 0) + 1
    if count > threshold and len(session.prepared) < MAX_PREPARED:
        preparing.add(name)
        return sql, dumped, types, formats, name, True
    session.seen[name] = count
    return sql, dumped, types, formats, None, False


def _flush_and_fetch(pgconn: pq.abc.PGconn):
    """Flush the batch, then collect each command's results up to the Sync's."""
    yield from send(pgconn)
    results: list[list[pq.abc.PGresult]] = []
    while True:
        got = yield from fetch_many(pgconn)
        if got and got[0].status == _PIPELINE_SYNC:
            return results
        results.append(got)


def _outcomes(session: _Session, results: list, commands: list[tuple], statements: list) -> list[Rows]:
    """Each statement's Rows, or the first error of the batch raised (a prepare's included). Every
    prepare's outcome is recorded before any row is loaded: a row that fails to load (a date psycopg
    cannot hold) must not leave a statement prepared on the server that this side does not know of."""
    error = None
    outcomes = []
    got = iter(results)
    answers = []
    for (_, _, _, _, name, prepare), (query, _) in zip(commands, statements, strict=True):
        if prepare:
            prepared = next(got)
            if prepared and prepared[-1].status == _COMMAND_OK:
                session.prepared.add(name)
                session.seen.pop(name, None)
            else:
                error = error or _error(prepared, session)
        result = next(got)
        if error is None and (not result or result[-1].status not in _ANSWERS):
            error = _error(result, session)
        answers.append((query, result))
    if error is not None:
        raise error
    tx = session.transformer
    try:
        for query, result in answers:
            outcomes.append(_rows(tx, result[-1], query.kind != "rowcount", session.encoding))
    finally:
        tx.set_pgresult(None)  # the last result's rows are the caller's now, not the connection's
    return outcomes


def _error(results: list, session: _Session) -> Exception:
    for result in results:
        if result.status == _FATAL_ERROR:
            return pg_errors.error_from_result(result, encoding=session.encoding)
    if results and results[-1].status == _PIPELINE_ABORTED:
        return pg_errors.PipelineAborted("pipeline aborted")
    return psycopg.InternalError(f"unexpected results: {[r.status for r in results]}")


def _rows(tx: Any, result: pq.abc.PGresult, wanted: bool, encoding: str) -> Rows:
    if result.status == _TUPLES_OK:
        count = result.ntuples
        if not wanted:
            return Rows([], count)
        tx.set_pgresult(result)
        names = [result.fname(i).decode(encoding) for i in range(result.nfields)]
        return Rows(tx.load_rows(0, count, lambda values: dict(zip(names, values, strict=True))), count)
    if wanted:  # as Cursor.fetchall() says of a statement that returns no rows
        raise psycopg.ProgrammingError(f"the last operation didn't produce records "
                                       f"(command status: {(result.command_status or b'').decode()})")
    tuples = result.command_tuples
    return Rows([], -1 if tuples is None else tuples)
