"""The only module that talks to psycopg (with wire.py, which sends a unit's batches): a connection
pool, units of work, the verbs that run named queries from ``sql/``, and translation of database errors.

A **unit of work** is one request or one engine step: one pool checkout, one
transaction, and the tenant set inside it. It opens lazily: the first query
goes out in one round trip together with ``tolstoy_enter`` (which sets the
tenant and the statement timeout and raises for an unknown one), preceded by
``BEGIN`` when more statements will follow. A query marked ``commit=True``
ends the unit: when it is also the first, the batch ``[enter, query]`` is one
implicit transaction of the extended protocol (committed by the Sync that ends
the batch, rolled back whole if any part fails); otherwise ``COMMIT`` rides
along with it. So a one-query request costs one round trip and two statements.

Nothing here knows HTTP or the engine.
"""

from __future__ import annotations

import contextlib
import contextvars
import json as jsonlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg import sql as pg_sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .. import errors, jsonsafe, metrics, tracing
from . import wire
from .queries import SQL, Query

log = logging.getLogger("tolstoy.db")

# How long a tenant that passed tolstoy_enter counts as known, so that a request
# failing before its first query (a 400 from validation) needs no database to
# answer in the contract's order of checks (tenant errors first).
VERIFIED_SECONDS = 10.0
VERIFIED_MAX = 10_000

# SQLSTATEs raised by tolstoy_enter / tolstoy_enter_key (migration unit_of_work).
_TENANT_ERRORS = {
    "TS001": ("X-Org-ID", "No organization with this id."),
    "TS002": ("X-User-ID", "Not a user of this organization."),
}
_KEY_ERROR = "TS003"
# SQLSTATEs raised by tolstoy_admit_run (migration organization_quotas): a new run over a quota, with
# {quota, limit, used} as JSON in the error's DETAIL.
_QUOTA_ERRORS = ("TQ001", "TQ002")
# What auto-prepared statements meet behind a transaction-mode pooler that does not track them
# (PgBouncer before 1.21, or max_prepared_statements = 0).
_POOLER_CLASHES = (pg_errors.DuplicatePreparedStatement, pg_errors.InvalidSqlStatementName)


def json(value: Any) -> Any:
    """Wrap a Python value for a jsonb parameter (None stays SQL NULL)."""
    return None if value is None else Jsonb(value)


@contextlib.contextmanager
def wrap_errors() -> Iterator[None]:
    """Turn psycopg's errors into the domain errors of tolstoy.errors: constraint violations by name,
    tenant and key rejections by their SQLSTATE, and every other fault by errors.FAULT_CLASSES, the one
    table that tells a transient fault (DatabaseUnavailable) from data the database refuses
    (DataRefused). What the table does not sort is raised as it is (a bug)."""
    try:
        yield
    except pg_errors.UniqueViolation as exc:
        raise errors.UniqueViolation(exc.diag.constraint_name) from exc
    except pg_errors.CheckViolation as exc:
        raise errors.CheckViolation(exc.diag.constraint_name) from exc
    except pg_errors.ForeignKeyViolation as exc:
        on_delete = (exc.diag.message_primary or "").startswith("update or delete")
        raise errors.ForeignKeyViolation(exc.diag.constraint_name, on_delete) from exc
    except psycopg_pool.PoolTimeout as exc:
        raise errors.DatabaseUnavailable(str(exc)) from exc
    except _POOLER_CLASHES as exc:
        raise errors.DatabaseUnavailable(f"prepared statements through a transaction pooler: {exc}") from exc
    except psycopg.Error as exc:
        if exc.sqlstate in _TENANT_ERRORS:
            raise errors.TenantRejected(*_TENANT_ERRORS[exc.sqlstate]) from exc
        if exc.sqlstate == _KEY_ERROR:
            raise errors.KeyRejected() from exc
        if exc.sqlstate in _QUOTA_ERRORS:
            detail = jsonlib.loads(exc.diag.message_detail or "{}")
            raise errors.QuotaExceeded(detail.get("quota"), detail.get("limit"), detail.get("used"),
                                       exc.diag.message_primary or "Over a quota.") from exc
        # No SQLSTATE: the client's own complaint, or (an OperationalError) a connection that broke.
        # A write refused as read-only (25006) is TRANSIENT there: Tolstoy opens no read-only
        # transaction, so it means the server takes no writes now (a primary just demoted to a standby
        # that a pooler, a virtual IP or HAProxy still sends us to): 503 for the API, a retry for the engine.
        kind = errors.fault_kind(exc.sqlstate) if exc.sqlstate or isinstance(exc, psycopg.OperationalError) else None
        if kind == errors.TRANSIENT:
            raise errors.DatabaseUnavailable(str(exc), exc.sqlstate) from exc
        if kind == errors.REFUSED:
            raise errors.DataRefused(str(exc), exc.sqlstate) from exc
        raise


@dataclass(frozen=True)
class Tenant:
    """Who a unit of work acts for: an organization (headers mode, or an API key's once
    known), the acting user, or the API key whose organization it is."""

    org_id: Any = None
    user_id: Any = None
    key_hash: bytes | None = None

    def enter(self, timeout_ms: int, quotas: str = "", *, known: bool = False) -> tuple[Query, dict]:
        """The statement that opens a unit of work for this tenant: the checking one, or, for an
        organization and user that passed the check seconds ago, one that only sets them. An API
        key is checked every time, so that revoking it takes effect at once. Each also sets the
        configured quota defaults (``quotas``, JSON; '' for none) that admitting a new run reads, and
        who the unit's configuration changes are recorded as (``auditing``), in the same statement."""
        user = None if self.user_id is None else str(self.user_id)
        audit = _audit.get()
        if self.key_hash is not None:
            return SQL.session.enter_key, {"key_hash": self.key_hash, "user_id": user, "timeout_ms": timeout_ms,
                                           "quotas": quotas, "audit": audit}
        org = "" if self.org_id is None else str(self.org_id)
        if known:
            return SQL.session.enter_known, {"org_id": org, "timeout": f"{timeout_ms}ms", "quotas": quotas,
                                             "audit": audit}
        return SQL.session.enter, {"org_id": org or None, "user_id": user, "timeout_ms": timeout_ms,
                                   "quotas": quotas, "audit": audit}


# No organization: a tenant's rows are invisible. Units of the admin login (tolstoy_admin, the
# /organizations routes) act for nobody and see every organization through that role's own policy;
# no setting a transaction can make changes what a role sees.
NOBODY = Tenant()


class Counts:
    """Statements, round trips and transactions sent by one Database (tests and /metrics read them)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.statements = self.round_trips = self.transactions = 0

    def add(self, statements: int, round_trips: int, transactions: int = 0) -> None:
        with self._lock:
            self.statements += statements
            self.round_trips += round_trips
            self.transactions += transactions
        if statements:
            metrics.DB_STATEMENTS.inc(statements)
            metrics.DB_ROUND_TRIPS.inc(round_trips)
        if transactions:
            metrics.DB_TRANSACTIONS.inc(transactions)

    def snapshot(self) -> dict:
        """The counts so far."""
        with self._lock:
            return {"statements": self.statements, "round_trips": self.round_trips,
                    "transactions": self.transactions}


class _Verified:
    """A short, bounded memory of tenants that passed tolstoy_enter."""

    def __init__(self, seconds: float = VERIFIED_SECONDS, size: int = VERIFIED_MAX):
        self.seconds = seconds
        self.size = size
        self._until: OrderedDict[Tenant, float] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, tenant: Tenant) -> bool:
        with self._lock:
            until = self._until.get(tenant)
            return until is not None and until > time.monotonic()

    def add(self, tenant: Tenant) -> None:
        with self._lock:
            self._until[tenant] = time.monotonic() + self.seconds
            self._until.move_to_end(tenant)
            while len(self._until) > self.size:
                self._until.popitem(last=False)

    def forget(self, org_id=None) -> None:
        """Forget every tenant of an organization (or all): it or its users were deleted."""
        with self._lock:
            for tenant in [t for t in self._until if org_id is None or t.org_id == org_id]:
                del self._until[tenant]


# What one statement returned (its rows and row count), read before its connection went back to the pool.
Result = wire.Rows


# The unit of work of the request or engine step this thread is running.
_current: contextvars.ContextVar[Unit | None] = contextvars.ContextVar("tolstoy_unit", default=None)
# The tenant queries outside any unit act for (each such query is its own unit).
_ambient: contextvars.ContextVar[Tenant] = contextvars.ContextVar("tolstoy_ambient_tenant", default=NOBODY)
# Who the configuration changes of this thread's units are recorded as, as the audit trail's
# trigger reads it (app.audit: JSON {actor, requestId}); '' records nothing (the engine's own writes).
_audit: contextvars.ContextVar[str] = contextvars.ContextVar("tolstoy_audit", default="")


class Unit:
    """One pool checkout and one transaction, opened by the first statement."""

    def __init__(self, db: Database, tenant: Tenant = NOBODY, *, repeatable: bool = False):
        self.db = db
        self.tenant = tenant
        self.repeatable = repeatable
        self.conn: psycopg.Connection | None = None
        self.verified = tenant == NOBODY or tenant in db.verified
        self.riders: list[tuple[Query, dict, Callable[[list[dict]], None]]] = []

    @property
    def active(self) -> bool:
        """A transaction is open and holds a connection."""
        return self.conn is not None

    def execute(self, query: Query, params: dict, *, commit: bool = False) -> Result:
        """Run one statement in this unit; with ``commit`` it is the unit's last."""
        if self.conn is None:
            return self._first(query, params, commit)
        statements = [(query, params)] + ([(SQL.session.commit, {})] if commit else [])
        try:
            with wrap_errors():
                results = self._send(self.conn, statements)
        finally:
            if commit:
                self._return(transactions=1)
        return results[0]

    def ride(self, query: Query, params: dict, receive: Callable[[list[dict]], None]) -> None:
        """Send ``query`` in this unit's first round trip, right after the tenant is set (one more
        statement, no round trip of its own), and give its rows to ``receive``. Nothing is sent if the
        unit never opens, or if it opens through ``verify``."""
        self.riders.append((query, params, receive))

    def _first(self, query: Query, params: dict, commit: bool) -> Result:
        enter = self.tenant.enter(self.db.statement_timeout_ms, self.db.quotas, known=self.verified)
        opening = [] if commit else [(SQL.session.begin_repeatable if self.repeatable else SQL.session.begin, {})]
        riders, self.riders = self.riders, []
        batch = [*opening, enter, *((q, p) for q, p, _ in riders), (query, params)]
        conn, results = self._open(batch)
        self._verified()
        if commit:
            self.db.pool.putconn(conn)
            self.db.counts.add(0, 0, 1)
        else:
            self.conn = conn
        for (_, _, receive), result in zip(riders, results[len(opening) + 1:-1], strict=True):
            receive(result.rows)
        return results[-1]

    def verify(self) -> None:
        """Make sure the tenant exists (raises TenantRejected/KeyRejected): at once when it was
        checked lately, else with one statement of its own."""
        if not self.verified:
            self.resolve()

    def resolve(self) -> Any:
        """Check the tenant with one statement of its own; returns what it returns (an API
        key's organization)."""
        query, params = self.tenant.enter(self.db.statement_timeout_ms, self.db.quotas)
        try:
            conn, [result] = self._open([(query, params)])
            self.db.pool.putconn(conn)
        finally:
            self.db.counts.add(0, 0, 1)
        self._verified()
        return next(iter(result.rows[0].values())) if result.rows else None

    def switch(self, tenant: Tenant) -> None:
        """Act for another tenant from here on (inside the same transaction)."""
        self.tenant = tenant
        self.verified = tenant == NOBODY or tenant in self.db.verified
        if self.conn is not None:
            query, params = self.tenant.enter(self.db.statement_timeout_ms, self.db.quotas, known=self.verified)
            with wrap_errors():
                self._send(self.conn, [(query, params)])

    def close(self, commit: bool) -> None:
        """End the unit: commit (or roll back) its transaction and give the connection back."""
        if self.conn is None:
            return
        status = self.conn.info.transaction_status
        try:
            if status == psycopg.pq.TransactionStatus.INTRANS:
                with wrap_errors():
                    self._send(self.conn, [(SQL.session.commit if commit else SQL.session.rollback, {})])
            elif status == psycopg.pq.TransactionStatus.INERROR:
                with wrap_errors():
                    self._send(self.conn, [(SQL.session.rollback, {})])
        finally:
            self._return(transactions=1)

    def _verified(self) -> None:
        if not self.verified:
            self.verified = True
            self.db.verified.add(self.tenant)

    def _checkout(self) -> psycopg.Connection:
        with wrap_errors():
            conn = self.db.pool.getconn()
        return conn

    def _open(self, batch: list[tuple[Query, dict]]) -> tuple[psycopg.Connection, list[Result]]:
        """Check a connection out and send ``batch``, a unit's first round trip, on it; returns the
        connection (the caller's to return) and the results. On an error nothing stays checked out.
        Sent again, once, where nothing of it ran:
        - the pooled connection had died while idle. What killed it (a database restart, a
          failover, a pooler restart) killed its idle siblings too, so the pool checks them all
          first: otherwise the resend takes the next dead one and the request answers 503 long after
          the database came back (the soak saw it after a PgBouncer restart, on an API host that had
          been quiet). The check costs a round trip per idle connection, paid only after a death;
        - a transaction pooler gave us a server connection that knows other clients' prepared
          statements (or not ours): stop preparing, resend."""
        conn = self._checkout()
        try:
            with wrap_errors():
                try:
                    return conn, self._send(conn, batch)
                except psycopg.OperationalError:
                    if not conn.broken:
                        raise
                    dead, conn = conn, None  # back in the pool: never returned twice
                    self.db.pool.putconn(dead)
                    self.db.pool.check()
                    conn = self._checkout()
                    return conn, self._send(conn, batch)
                except _POOLER_CLASHES:
                    self.db.stop_preparing(conn)
                    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        self._send(conn, [(SQL.session.rollback, {})])
                    return conn, self._send(conn, batch)
        except BaseException:
            if conn is not None:
                self.db.pool.putconn(conn)  # the pool rolls back anything left open, or drops a broken one
            raise

    def _return(self, transactions: int) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.db.pool.putconn(conn)  # the pool rolls back anything left open, or drops a broken one
        self.db.counts.add(0, 0, transactions)

    def _send(self, conn: psycopg.Connection, statements: list[tuple[Query, dict]]) -> list[Result]:
        """Send statements in one round trip and read every result."""
        self.db.counts.add(len(statements), 1)
        if tracing.ON:  # the round trip as an event of the current span: the queries' names, no parameters
            started = time.perf_counter()
            try:
                return self._round_trip(conn, statements)
            finally:
                tracing.sql(statements, time.perf_counter() - started)
        return self._round_trip(conn, statements)

    def _round_trip(self, conn: psycopg.Connection, statements: list[tuple[Query, dict]]) -> list[Result]:
        try:
            return wire.exchange(conn, statements, self.db.prepare_threshold)
        except pg_errors.ReadOnlySqlTransaction:
            # This session reached a server that takes no writes (see wrap_errors): closed, the pool
            # drops it, and the next connection is made afresh, to wherever the primary is now.
            conn.close()
            raise


class Database:
    """A psycopg pool, units of work on it, and the verbs the stores use."""

    def __init__(
        self,
        conninfo: str | Callable[[], str],
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 5.0,
        statement_timeout_ms: int = 15000,
        prepare_threshold: int | None = wire.PREPARE_THRESHOLD,
        application_name: str = "tolstoy",
        listen_conninfo: str | None = None,
    ):
        # No liveness query per checkout and no startup options (PgBouncer refuses them):
        # a dead connection is replaced when a unit's first batch finds it broken, and the
        # statement timeout is set by tolstoy_enter inside each unit.
        self.pool = psycopg_pool.ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            open=False,
            name=application_name,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                # Units prepare their statements themselves (tolstoy/db/wire.py, at self.prepare_threshold).
                # psycopg's own manager must hold none: a rollback by psycopg (the pool's, of a connection
                # given back in a failed transaction) deallocates every statement when it holds one.
                "prepare_threshold": None,
                "application_name": application_name,
            },
        )
        self.statement_timeout_ms = statement_timeout_ms
        self.prepare_threshold = prepare_threshold
        # The configured quota defaults each unit of work sets for the database (tolstoy.quotas, JSON);
        # '' until use_quotas: then only the operator's overrides per organization bind.
        self.quotas = ""
        self.listen_conninfo = listen_conninfo
        self.counts = Counts()
        self.verified = _Verified()

    @classmethod
    def from_config(cls, config, *, url: str | None = None, min_size: int | None = None,
                    max_size: int | None = None, application_name: str | None = None) -> Database:
        """A Database configured from a tolstoy.config.Config."""
        conninfo = url or config.database_conninfo()
        if not conninfo:
            raise errors.DatabaseUnavailable("DATABASE_URL is not set")
        db = cls(
            conninfo,
            min_size=config.pool_min_size if min_size is None else min_size,
            max_size=max_size or config.pool_max_size,
            timeout=config.pool_timeout,
            statement_timeout_ms=config.statement_timeout_ms,
            prepare_threshold=config.prepare_threshold,
            application_name=application_name or config.app_name,
            listen_conninfo=config.direct_url,
        )
        db.use_quotas(config.database_quotas())
        return db

    def use_quotas(self, quotas: dict) -> None:
        """The quota defaults every unit of work on this pool sets for the database to enforce
        (tolstoy_admit_run reads them when it admits a new run)."""
        self.quotas = jsonlib.dumps(quotas, separators=(",", ":"), sort_keys=True)

    def stop_preparing(self, conn: psycopg.Connection) -> None:
        """Turn prepared statements off for this process: a transaction pooler that does not track
        them is in front (say TOLSTOY_PREPARE_THRESHOLD=off)."""
        wire.forget_prepared(conn)
        if self.prepare_threshold is not None:
            self.prepare_threshold = None
            log.warning("prepared statements clash behind a transaction pooler; they are off from now on "
                        "(set TOLSTOY_PREPARE_THRESHOLD=off to start that way)")

    def open(self, wait: bool = False, timeout: float = 10.0) -> None:
        """Open the pool; call it in each process (after Gunicorn forks)."""
        self.pool.open(wait=wait, timeout=timeout)

    def close(self) -> None:
        """Close every pooled connection."""
        self.pool.close()

    def stats(self) -> dict:
        """Pool counters for /status/detailed and /metrics."""
        stats = self.pool.get_stats()
        return {
            "size": stats.get("pool_size", 0),
            "available": stats.get("pool_available", 0),
            "waiting": stats.get("requests_waiting", 0),
            "minSize": self.pool.min_size,
            "maxSize": self.pool.max_size,
        }

    # ---- units of work ---------------------------------------------------------

    def unit(self, tenant: Tenant = NOBODY, *, repeatable: bool = False) -> Unit:
        """A unit of work for this tenant, not yet opened (its first statement opens it)."""
        return Unit(self, tenant, repeatable=repeatable)

    @staticmethod
    def activate(unit: Unit | None) -> contextvars.Token:
        """Make ``unit`` the one this thread's queries run in (for middleware hooks)."""
        return _current.set(unit)

    @staticmethod
    def deactivate(token: contextvars.Token) -> None:
        """Undo ``activate``."""
        _current.reset(token)

    @staticmethod
    def current() -> Unit | None:
        """The unit of work this thread is in, if any."""
        return _current.get()

    @staticmethod
    def acting_for() -> Tenant:
        """The tenant this thread's queries act for now: its unit's, else the one ``acting`` set
        outside any unit (NOBODY when none)."""
        unit = _current.get()
        return unit.tenant if unit is not None else _ambient.get()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Unit]:
        """Run the block in one unit of work: the current one, or a new one committed at the end."""
        unit = _current.get()
        if unit is not None:
            yield unit
            return
        unit = self.unit(_ambient.get())
        token = _current.set(unit)
        committed = False
        try:
            yield unit
            committed = True
        finally:
            _current.reset(token)
            unit.close(commit=committed)

    @staticmethod
    def auditing(context: dict | None) -> contextvars.Token:
        """Record the configuration changes of the units this thread opens from now on as made by
        ``context`` ({"actor": …, "requestId": …}; None: record none); ``stop_auditing`` undoes it.
        The audit trail's trigger (migration audit_events) reads it in the unit's transaction."""
        return _audit.set("" if context is None else jsonsafe.dumps(context).decode())

    @staticmethod
    def stop_auditing(token: contextvars.Token) -> None:
        """Undo ``auditing``."""
        _audit.reset(token)

    @staticmethod
    @contextlib.contextmanager
    def audited_as(actor: dict, request_id: str | None = None) -> Iterator[None]:
        """The configuration changes of the units opened in the block are recorded as made by
        ``actor`` (``{"userId": …}``, ``{"admin": True}``…): for a change made outside an API request's
        middleware (a public route that proved who acts, a command an operator runs)."""
        token = Database.auditing({"actor": actor, "requestId": request_id})
        try:
            yield
        finally:
            Database.stop_auditing(token)

    def tenant(self, org_id) -> contextlib.AbstractContextManager[None]:
        """Queries in this block act for one organization (row-level security): inside a unit
        the unit switches to it; outside, each query is its own unit for it."""
        return self.acting(Tenant(org_id=org_id))

    @contextlib.contextmanager
    def acting(self, tenant: Tenant) -> Iterator[None]:
        """Queries in this block act as ``tenant``; the unit (if any) switches back afterwards."""
        unit = _current.get()
        if unit is not None:
            previous = unit.tenant
            unit.switch(tenant)
            try:
                yield
            finally:
                if unit.active and unit.conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
                    unit.switch(previous)
                else:
                    unit.tenant = previous
            return
        token = _ambient.set(tenant)
        try:
            yield
        finally:
            _ambient.reset(token)

    # ---- verbs ------------------------------------------------------------------

    def _run(self, query: Query, params: dict, commit: bool, kind: str) -> Result:
        if query.kind != kind:  # the suffix of the query's header says what it returns
            raise TypeError(f"{query!r} returns {query.kind!r}, not {kind!r}")
        unit = _current.get()
        if unit is not None:
            return unit.execute(query, params, commit=commit)
        return self.unit(_ambient.get()).execute(query, params, commit=True)

    def all(self, query: Query, /, *, commit: bool = False, **params: Any) -> list[dict]:
        """Every row of a query, as dicts; ``commit`` makes it the unit of work's last statement."""
        return self._run(query, params, commit, "all").rows

    def one(self, query: Query, /, *, commit: bool = False, **params: Any) -> dict | None:
        """The first row of a query, or None."""
        rows = self._run(query, params, commit, "one").rows
        return rows[0] if rows else None

    def scalar(self, query: Query, /, *, commit: bool = False, **params: Any) -> Any:
        """The first column of the first row, or None."""
        rows = self._run(query, params, commit, "scalar").rows
        return next(iter(rows[0].values())) if rows else None

    def rowcount(self, query: Query, /, *, commit: bool = False, **params: Any) -> int:
        """How many rows a statement changed."""
        return self._run(query, params, commit, "rowcount").rowcount

    # ---- outside units of work ---------------------------------------------------

    def execute_admin(self, statement: str) -> None:
        """Run a statement that cannot run in a transaction (CREATE/DROP DATABASE); no parameters."""
        with wrap_errors(), self.pool.connection() as conn:
            conn.execute(statement.encode())

    def outside(self, query: Query, /, **params: Any) -> Any:
        """The first value of a query run on its own, outside any unit of work (no tenant is set: on the
        maintenance database the schema's functions do not exist), or None without rows."""
        with wrap_errors(), self.pool.connection() as conn:
            row = conn.execute(query.sql, params).fetchone()
        return next(iter(row.values())) if row else None

    def create_database(self, name: str, owner: str) -> None:
        """CREATE DATABASE ``name`` OWNER ``owner`` (identifiers quoted; not in a transaction)."""
        statement = pg_sql.SQL("create database {} owner {}").format(pg_sql.Identifier(name),
                                                                      pg_sql.Identifier(owner))
        with wrap_errors(), self.pool.connection() as conn:
            conn.execute(statement)

    def script(self, text: str) -> None:
        """Run a multi-statement SQL script (no parameters) in one transaction."""
        with wrap_errors(), self.pool.connection() as conn, conn.transaction():
            conn.execute(text.encode())

    def ping(self, query: Query, timeout: float = 2.0) -> float:
        """Seconds one trivial round trip took; raises DatabaseUnavailable when none answers in time."""
        started = time.perf_counter()
        with wrap_errors(), self.pool.connection(timeout=timeout) as conn:
            conn.execute(query.sql)
        self.counts.add(1, 1, 1)
        return time.perf_counter() - started

    def listen(self, on_notify, stop, timeout: float = 0.2) -> None:
        """LISTEN for queued runs on a dedicated direct connection (never through a transaction
        pooler, which would hand the session to others), calling ``on_notify()`` per notification,
        until ``stop.is_set()``; reconnects after connection errors."""
        while not stop.is_set():
            conninfo = self.listen_conninfo or (self.pool.conninfo() if callable(self.pool.conninfo)
                                                else self.pool.conninfo)
            try:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute(SQL.session.listen.sql)
                    while not stop.is_set():
                        for _ in conn.notifies(timeout=timeout, stop_after=1):
                            on_notify()
            except psycopg.OperationalError as exc:
                log.warning("listen connection lost (%s); retrying", exc)
                stop.wait(max(timeout, 1.0))
