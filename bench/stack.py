"""Everything a benchmark run starts on 127.0.0.1 and stops again: an embedded
PostgreSQL migrated like production, Tolstoy under gunicorn.conf.py, the peer
servers, a stub tool, flow workers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import psycopg
from falcon import testing

from tolstoy.api.app import create_app
from tolstoy.config import Config
from tolstoy.db import embedded, migrate
from tolstoy.db.database import Database

ROOT = Path(__file__).resolve().parent.parent
ENCRYPTION_KEY = "Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE="


def free_port() -> int:
    """A TCP port nothing listens on (yet) on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until something accepts on 127.0.0.1:port; SystemExit if the process dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench: {' '.join(map(str, process.args))[:200]} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"bench: nothing listened on port {port} within {timeout} s")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _children() -> dict[int, list[int]]:
    """Every process's children (pid -> pids), from one scan of /proc."""
    found: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                found.setdefault(int(fields[1]), []).append(int(entry.name))
    return found


def children_of(pid: int) -> list[int]:
    """The direct children of a process (Gunicorn's workers)."""
    return _children().get(pid, [])


_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces), or None if the
    process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children = _children()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) spent so far by process ``pid`` and everything below it, including
    children that exited and were waited for (their time is in their parent's cutime/cstime: a
    PostgreSQL backend that ended, a Gunicorn worker that was replaced). The difference of two
    readings is the CPU the tree spent between them, whatever ran where."""
    total = 0
    for member in descendants(pid):
        fields = _stat_fields(member)
        if fields is not None:
            # utime, stime, cutime, cstime: fields 14-17 of stat(5), 12-15 after the name.
            total += sum(int(value) for value in fields[11:15])
    return total / _TICKS


class CpuMeter:
    """CPU seconds spent by named process trees over a stretch of work: ``with meter.measure() as
    spent: …`` fills ``spent`` (name -> seconds) when the block ends."""

    def __init__(self, roots: dict[str, int]):
        self.roots = roots

    @contextlib.contextmanager
    def measure(self):
        before = {name: tree_cpu_seconds(pid) for name, pid in self.roots.items()}
        spent: dict[str, float] = {}
        try:
            yield spent
        finally:
            spent.update({name: tree_cpu_seconds(pid) - before[name] for name, pid in self.roots.items()})


class Stack:
    """The processes of one benchmark run; ``close()`` stops every one of them."""

    def __init__(self):
        self.work = Path(tempfile.mkdtemp(prefix="tolstoy-bench-"))
        self.processes: list[subprocess.Popen] = []
        self.server = None
        self.owner_url = ""
        self.app_url = ""
        self.metrics_dir = self.work / "metrics"
        self.metrics_dir.mkdir()
        self.pools: list[Database] = []
        # The master process of each HTTP server by name ("tolstoy", a peer's name): its tree's CPU is
        # the server's.
        self.pids: dict[str, int] = {}

    # ---- PostgreSQL ---------------------------------------------------------------

    def start_database(self) -> None:
        """An embedded PostgreSQL 16 with Tolstoy's migrations and grants applied."""
        self.server, self.owner_url = embedded.start(self.work / "pg", database="bench", cleanup="delete")
        migrate.upgrade(self.owner_url, quiet=True)
        self.app_url = migrate.as_role(self.owner_url)

    def in_process_api(self, *names: str) -> tuple[testing.TestClient, dict[str, str]]:
        """Tolstoy's API in this process (a Falcon test client, headers auth) on the benchmark's
        database, and a new organization of each name (name -> id); its pool closes with the stack."""
        db = Database(self.app_url, min_size=1, max_size=2)
        db.open(wait=True)
        self.pools.append(db)
        client = testing.TestClient(create_app(Config.from_env(self.tolstoy_env(TOLSTOY_ENV="test")), db))
        with psycopg.connect(self.owner_url, autocommit=True) as conn:
            orgs = {name: str(conn.execute("insert into organizations (name) values (%s) returning id",
                                           (name,)).fetchone()[0]) for name in names}
        return client, orgs

    @property
    def postgres_pid(self) -> int:
        """The postmaster's pid (every backend, and the background processes, run below it)."""
        return int((self.work / "pg" / "pgdata" / "postmaster.pid").read_text().split()[0])

    @property
    def socket_dir(self) -> str:
        return embedded.socket_dir(self.owner_url)

    @property
    def database(self) -> str:
        return urlparse(self.owner_url).path.lstrip("/")

    # ---- processes ----------------------------------------------------------------

    def spawn(self, command: list[str], env: dict | None = None, log: str | None = None) -> subprocess.Popen:
        """Start a process of this run (its output goes to a log file in the work folder)."""
        out = open(self.work / (log or "process.log"), "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 30) -> None:
        """SIGTERM a process (its whole group), then SIGKILL if it lingers."""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process in self.processes:
            self.processes.remove(process)

    def tolstoy_env(self, **extra: str) -> dict:
        """The environment Tolstoy's processes run with in the benchmark (headers auth, 2 workers)."""
        return {
            "DATABASE_URL": self.app_url, "DIRECT_URL": self.owner_url, "TOLSTOY_ENV": "production",
            "WORKER_DATABASE_URL": migrate.as_role(self.owner_url, migrate.WORKER_ROLE),
            "USE_AWS_SECRETS": "false", "TOLSTOY_AUTH_MODE": "headers", "WEB_CONCURRENCY": "2",
            "TOLSTOY_ENCRYPTION_KEY": ENCRYPTION_KEY, "TOLSTOY_ALLOW_NETWORKS": "127.0.0.1/32",
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
            # One organization sends every request of the load, at thousands a second: the default
            # quota (100 a second per process) would answer most of them 429 before any work, and the
            # peers have no quota. The bucket is still taken per request, at its usual cost.
            "TOLSTOY_QUOTA_REQUESTS_PER_SECOND": "1000000", "TOLSTOY_QUOTA_REQUEST_BURST": "1000000",
            **extra,
        }

    def tolstoy(self, port: int, **extra: str) -> subprocess.Popen:
        """Tolstoy's API under the project's own gunicorn.conf.py."""
        process = self.spawn([sys.executable, "-m", "gunicorn", "--config", str(ROOT / "gunicorn.conf.py"),
                              "--access-logfile", "/dev/null", "tolstoy.api.app:get_app()"],
                             self.tolstoy_env(PORT=str(port), **extra), log=f"tolstoy-{port}.log")
        wait_for_port(port, process)
        self.pids["tolstoy"] = process.pid
        return process

    def peer(self, name: str, port: int) -> subprocess.Popen:
        """A peer server of bench/peers/ (2 workers, same database, as the database's owner)."""
        process = self.spawn([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "bench" / "peers" / name /
                                                                            "gunicorn.conf.py"),
                              f"bench.peers.{name}.app:app"],
                             {"DATABASE_URL": self.owner_url, "PORT": str(port), "WEB_CONCURRENCY": "2"},
                             log=f"{name}.log")
        wait_for_port(port, process)
        self.pids[name] = process.pid
        return process

    def stub_tool(self, port: int) -> subprocess.Popen:
        """The tool flows call: a small JSON endpoint that answers at once."""
        process = self.spawn([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                              "--worker-class", "gthread", "--threads", "16", "--log-level", "warning",
                              "bench.stub_tool:app"], log="stub.log")
        wait_for_port(port, process)
        return process

    def worker(self, concurrency: int, name: str) -> subprocess.Popen:
        """One `tolstoy worker` process."""
        return self.spawn([sys.executable, "-m", "tolstoy.cli", "worker", "--concurrency", str(concurrency)],
                          self.tolstoy_env(), log=f"worker-{name}.log")

    def close(self) -> None:
        """Stop everything this run started and remove its files."""
        for db in self.pools:
            db.close()
        for process in list(self.processes):
            self.stop(process, timeout=15)
        if self.server is not None:
            self.server.cleanup()
        subprocess.run(["rm", "-rf", str(self.work)], check=False)
