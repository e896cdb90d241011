"""The only module that talks to psycopg: a connection pool, three verbs that run
named queries from ``sql/``, transactions, and translation of database errors."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import psycopg.sql
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .. import errors
from .queries import SQL, Query

log = logging.getLogger("tolstoy.db")

# The connection of the transaction this thread is inside, if any; queries run
# on it so that everything a request writes commits or rolls back together.
_current: contextvars.ContextVar[psycopg.Connection | None] = contextvars.ContextVar(
    "tolstoy_db_connection", default=None
)


# The organization the current request or run acts for (see Database.tenant).
_tenant: contextvars.ContextVar[Any] = contextvars.ContextVar("tolstoy_db_tenant", default=None)


def json(value: Any) -> Any:
    """Wrap a Python value for a jsonb parameter (None stays SQL NULL)."""
    return None if value is None else Jsonb(value)


@contextlib.contextmanager
def wrap_errors() -> Iterator[None]:
    """Turn psycopg's errors into the domain errors of tolstoy.errors."""
    try:
        yield
    except pg_errors.UniqueViolation as exc:
        raise errors.UniqueViolation(exc.diag.constraint_name) from exc
    except pg_errors.ForeignKeyViolation as exc:
        on_delete = (exc.diag.message_primary or "").startswith("update or delete")
        raise errors.ForeignKeyViolation(exc.diag.constraint_name, on_delete) from exc
    except psycopg_pool.PoolTimeout as exc:
        raise errors.DatabaseUnavailable(str(exc)) from exc
    except psycopg.OperationalError as exc:
        raise errors.DatabaseUnavailable(str(exc)) from exc


class Database:
    """A psycopg pool plus the verbs the stores use: ``all``, ``one``, ``scalar``, ``rowcount``."""

    def __init__(
        self,
        conninfo: str | Callable[[], str],
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 5.0,
        statement_timeout_ms: int = 15000,
        prepare_threshold: int | None = 5,
        application_name: str = "tolstoy",
    ):
        options = f"-c statement_timeout={statement_timeout_ms}"
        self.pool = psycopg_pool.ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            open=False,
            name=application_name,
            check=psycopg_pool.ConnectionPool.check_connection,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "prepare_threshold": prepare_threshold,
                "application_name": application_name,
                "options": options,
            },
        )

    @classmethod
    def from_config(cls, config) -> Database:
        """A Database configured from a tolstoy.config.Config."""
        if not config.database_url:
            raise errors.DatabaseUnavailable("DATABASE_URL is not set")
        return cls(
            # A callable when the URL comes from an AWS secret: each new connection sees a rotated one.
            config.database_conninfo(),
            min_size=config.pool_min_size,
            max_size=config.pool_max_size,
            timeout=config.pool_timeout,
            statement_timeout_ms=config.statement_timeout_ms,
            prepare_threshold=config.prepare_threshold,
            application_name=config.app_name,
        )

    def open(self, wait: bool = False, timeout: float = 10.0) -> None:
        """Open the pool; call it in each process (after Gunicorn forks)."""
        self.pool.open(wait=wait, timeout=timeout)

    def close(self) -> None:
        """Close every pooled connection."""
        self.pool.close()

    def stats(self) -> dict:
        """Pool counters for /status/detailed."""
        stats = self.pool.get_stats()
        return {
            "size": stats.get("pool_size", 0),
            "available": stats.get("pool_available", 0),
            "waiting": stats.get("requests_waiting", 0),
            "minSize": self.pool.min_size,
            "maxSize": self.pool.max_size,
        }

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """The current transaction's connection; else, inside a tenant, a short
        transaction that carries the tenant; else a pooled connection in autocommit."""
        conn = _current.get()
        if conn is not None:
            yield conn
            return
        if _tenant.get() is not None:
            with self.transaction() as conn:
                yield conn
            return
        with wrap_errors(), self.pool.connection() as conn:
            yield conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """Run the block in one transaction; nested calls join the outer one.

        Inside ``tenant(org_id)`` the transaction first sets app.org_id, which the
        row-level security policies compare every row with.
        """
        if _current.get() is not None:
            yield _current.get()
            return
        with wrap_errors(), self.pool.connection() as conn:
            with conn.transaction():
                org_id = _tenant.get()
                if org_id is not None:
                    # set_config(..., true) lasts for this transaction only, so it is
                    # safe behind a transaction-mode pooler too.
                    conn.execute(SQL.session.set_org.sql, {"org_id": str(org_id)})
                token = _current.set(conn)
                try:
                    yield conn
                finally:
                    _current.reset(token)

    @staticmethod
    @contextlib.contextmanager
    def tenant(org_id) -> Iterator[None]:
        """Queries in this block act for one organization (row-level security), also
        inside a transaction that is already open."""
        token = _tenant.set(org_id)
        conn = _current.get()
        if conn is not None:
            conn.execute(SQL.session.set_org.sql, {"org_id": str(org_id)})
        try:
            yield
        finally:
            _tenant.reset(token)
            # After an error the transaction is aborted and will roll back anyway.
            if conn is not None and conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
                previous = _tenant.get()
                conn.execute(SQL.session.set_org.sql, {"org_id": "" if previous is None else str(previous)})

    @staticmethod
    def set_tenant(org_id) -> contextvars.Token:
        """Act for an organization until ``reset_tenant`` (for middleware hooks)."""
        return _tenant.set(org_id)

    @staticmethod
    def reset_tenant(token: contextvars.Token) -> None:
        """Undo ``set_tenant``."""
        _tenant.reset(token)

    def all(self, query: Query, **params: Any) -> list[dict]:
        """Every row of a query, as dicts."""
        with self.connection() as conn, wrap_errors():
            return conn.execute(query.sql, params).fetchall()

    def one(self, query: Query, **params: Any) -> dict | None:
        """The first row of a query, or None."""
        with self.connection() as conn, wrap_errors():
            return conn.execute(query.sql, params).fetchone()

    def scalar(self, query: Query, **params: Any) -> Any:
        """The first column of the first row, or None."""
        row = self.one(query, **params)
        return None if row is None else next(iter(row.values()))

    def rowcount(self, query: Query, **params: Any) -> int:
        """How many rows a statement changed."""
        with self.connection() as conn, wrap_errors():
            return conn.execute(query.sql, params).rowcount

    def execute_admin(self, statement: str) -> None:
        """Run a statement that cannot run in a transaction (CREATE/DROP DATABASE); no parameters."""
        with wrap_errors(), self.pool.connection() as conn:
            conn.execute(statement.encode())

    def listen(self, channel: str, on_notify, stop, timeout: float = 0.2) -> None:
        """LISTEN on a channel with a dedicated connection, calling ``on_notify()`` per
        notification, until ``stop.is_set()``; reconnects after connection errors."""
        while not stop.is_set():
            conninfo = self.pool.conninfo() if callable(self.pool.conninfo) else self.pool.conninfo
            try:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute(f"listen {psycopg.sql.Identifier(channel).as_string(conn)}")
                    while not stop.is_set():
                        for _ in conn.notifies(timeout=timeout, stop_after=1):
                            on_notify()
            except psycopg.OperationalError as exc:
                log.warning("listen connection lost (%s); retrying", exc)
                stop.wait(timeout)

    def script(self, text: str) -> None:
        """Run a multi-statement SQL script (no parameters) in one transaction."""
        with self.transaction() as conn, wrap_errors():
            conn.execute(text.encode())

    def ping(self, query: Query, timeout: float = 2.0) -> float:
        """Seconds one trivial round trip took; raises DatabaseUnavailable when none answers in time."""
        started = time.perf_counter()
        with wrap_errors(), self.pool.connection(timeout=timeout) as conn:
            conn.execute(query.sql)
        return time.perf_counter() - started
