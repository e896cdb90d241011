"""An embedded PostgreSQL (the ``pgserver`` package) for development and tests,
kept under a project-local data folder so it survives restarts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
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
    forget_dead_handles(root / "pgdata")
    server = pgserver.get_server(root / "pgdata", cleanup_mode=cleanup)
    forget_dead_handles(root / "pgdata")  # the first user: the data directory exists only now
    return server, server.get_uri(database)


HANDLES = ".handle_pids.json"  # pgserver's list of the processes using the server (its refcount)
STARTED = ".tolstoy_handles.json"  # ours: each of those processes' start time, to tell a reused id


def forget_dead_handles(pgdata: Path) -> None:
    """Keep in pgserver's list of users only the processes that are still the ones that joined.

    pgserver stops the server when the last process in its list exits. A process killed hard never
    leaves the list, so the server would never be stopped again — and a liveness check by process id
    alone is fooled once the machine reuses the id. Each process that joins records its start time
    here too; a listed id whose process is gone, or started at another time, is dropped. Done under
    pgserver's own inter-process lock so two processes starting at once see one list. This process
    adds itself (pgserver's ``get_and_add`` then finds it and adds nothing), so a process pruning
    between our write and pgserver's cannot drop us.
    """
    if not pgdata.is_dir():
        return
    from pgserver.postgres_server import PostgresServer

    with PostgresServer._lock:
        listed = _read(pgdata / HANDLES, [])
        started = _read(pgdata / STARTED, {})
        # A live one started when recorded (_alive): its record stands.
        kept = {str(pid): started[str(pid)] for pid in listed if _alive(int(pid), started)}
        kept[str(os.getpid())] = _start_time(os.getpid())
        (pgdata / STARTED).write_text(json.dumps(kept))
        (pgdata / HANDLES).write_text(json.dumps([int(pid) for pid in kept]))


def orphaned(pgdata: Path) -> bool:
    """Whether the server of ``pgdata`` has no user left: none of the processes that joined it (by
    pgserver's list and the start times forget_dead_handles records) is still running. A process
    killed hard (SIGKILL, or a SIGTERM that skips its exit handlers) leaves its server so."""
    listed = _read(pgdata / HANDLES, [])
    started = _read(pgdata / STARTED, {})
    return not any(_alive(int(pid), started) for pid in listed)


def _alive(pid: int, started: dict) -> bool:
    """Whether listed process ``pid`` still runs and is the one that joined: it started when recorded.
    Every process that joins through start() is recorded (the first one right after the server is made),
    so an id listed without a record is one the machine gave to another process."""
    now = _start_time(pid)
    return now is not None and started.get(str(pid)) == now


def stop_orphaned(root: Path, *, older_than: float = 600.0) -> bool:
    """Stop the embedded server under ``root`` (``root/pgdata``) and delete ``root`` when no process
    uses it any more and it was made more than ``older_than`` seconds ago (younger ones may be
    starting: their first user is not listed yet). Returns whether it did."""
    from pgserver.postgres_server import PostgresServer

    pgdata = root / "pgdata"
    # Under pgserver's inter-process lock, which its own cleanup holds from taking its last user off
    # the list to deleting the data: a server being cleaned up normally is never judged orphaned.
    with PostgresServer._lock:
        try:
            age = time.time() - root.stat().st_mtime
        except FileNotFoundError:
            return False
        if age < older_than or not orphaned(pgdata):
            return False
        if (pgdata / "postmaster.pid").exists():
            folder = bin_dir()
            pg_ctl = str(folder / "pg_ctl") if folder is not None else "pg_ctl"
            subprocess.run([pg_ctl, "-D", str(pgdata), "stop", "-m", "immediate", "-s"], capture_output=True,
                           timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)
    return True


def _read(path: Path, empty):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return empty


def _start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None if there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def socket_dir(url: str) -> str | None:
    """The unix-socket folder of a libpq URL (``?host=/path``), if it uses one."""
    host = parse_qs(urlparse(url).query).get("host", [None])[0]
    return host if host and host.startswith("/") else None
