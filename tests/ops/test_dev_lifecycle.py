"""`tolstoy dev` stops what it started on every exit path (issue 22): after a SIGKILL its Gunicorn and
worker go too, and the next `tolstoy dev` — even once the machine has reused the dead process's id —
stops the embedded PostgreSQL when it is stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_of(pgdata: Path) -> list[psutil.Process]:
    """The PostgreSQL server processes whose data folder is ``pgdata``."""
    found = []
    for proc in psutil.process_iter(attrs=["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(pgdata) in " ".join(proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def descendants_alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def start_dev(data_dir: Path, port: int) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items()
           if key not in ("DATABASE_URL", "WORKER_DATABASE_URL", "DIRECT_URL", "ADMIN_DATABASE_URL")}
    env.update({"TOLSTOY_DATA_DIR": str(data_dir), "PORT": str(port), "WEB_CONCURRENCY": "1"})
    process = subprocess.Popen([sys.executable, "-m", "tolstoy.cli", "dev"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"tolstoy dev exited with {process.returncode}: {process.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            time.sleep(0.3)
    process.kill()
    pytest.fail("tolstoy dev did not serve /health in time: " + process.stderr.read()[-3000:])


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while descendants_alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return descendants_alive(pids)


def test_dev_stops_its_processes_and_postgres_after_a_sigkill_and_a_reused_process_id(tmp_path):
    pgdata = (tmp_path / "pgdata").resolve()
    stand_in = subprocess.Popen(["sleep", "600"])  # a live process that takes a dead one's id
    first = second = None
    try:
        first = start_dev(tmp_path, free_port())
        children = [child.pid for child in psutil.Process(first.pid).children(recursive=True)]
        assert children, "tolstoy dev runs Gunicorn and a worker"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        # Its Gunicorn (with its workers) and its worker were told to stop by the kernel.
        assert wait_gone(children, 60) == [], "children of a SIGKILLed tolstoy dev live on"
        assert postgres_of(pgdata), "the embedded PostgreSQL outlives a SIGKILL (nothing can stop it then)"

        # The killed process stays in pgserver's list of users; say the machine gave its id away.
        handles = pgdata / ".handle_pids.json"
        listed = json.loads(handles.read_text())
        assert first.pid in listed
        handles.write_text(json.dumps([*listed, stand_in.pid]))

        second = start_dev(tmp_path, free_port())
        children = [child.pid for child in psutil.Process(second.pid).children(recursive=True)]
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=90) == 0
        assert wait_gone(children, 30) == []
        deadline = time.monotonic() + 30
        while postgres_of(pgdata) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert postgres_of(pgdata) == [], "tolstoy dev exited and left its PostgreSQL running"
    finally:
        stand_in.kill()
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
        for proc in postgres_of(pgdata):  # never leave a server behind, whatever failed
            proc.kill()
