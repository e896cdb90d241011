"""An embedded PostgreSQL (the ``pgserver`` package) for development and tests,
kept under a project-local data folder so it survives restarts."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlparse

DATABASE = "tolstoy"


def bin_dir() -> Path | None:
    """Folder of the bundled PostgreSQL binaries (psql, pg_dump), or None without pgserver."""
    try:
        from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError:
        return None
    return Path(POSTGRES_BIN_PATH)


def put_pg_tools_on_path() -> None:
    """dbmate needs pg_dump on PATH to write db/schema.sql: put the bundled one first.

    pg_dump refuses servers newer than itself, and a distribution's pg_dump is
    often older than the bundled server; the same pg_dump also keeps the dump
    byte-for-byte stable between machines.
    """
    folder = bin_dir()
    if folder is not None:
        rest = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != str(folder)]
        os.environ["PATH"] = os.pathsep.join([str(folder), *rest])


def start(data_dir: str | os.PathLike, database: str = DATABASE, cleanup: str = "stop"):
    """Start (or join) the server whose data lives in ``data_dir/pgdata``; returns (server, url).

    With ``cleanup="stop"`` the server stops when the last process using it
    exits and its data stays; ``"delete"`` also removes the data (tests).
    """
    try:
        import pgserver
    except ImportError:
        raise SystemExit(
            "tolstoy: DATABASE_URL is not set and the embedded PostgreSQL is not installed "
            "(pip install pgserver), so there is no database to use"
        ) from None
    root = Path(data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(root / "pgdata", cleanup_mode=cleanup)
    return server, server.get_uri(database)


def socket_dir(url: str) -> str | None:
    """The unix-socket folder of a libpq URL (``?host=/path``), if it uses one."""
    host = parse_qs(urlparse(url).query).get("host", [None])[0]
    return host if host and host.startswith("/") else None
