"""An embedded PostgreSQL whose users were all killed before they could stop it (a CI timeout's
SIGTERM skips pytest's teardown; a SIGKILL skips everything) is stopped and deleted by the next
one to look (tests/conftest.py's pg_server does, before it starts its own); one still in use is not."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psycopg

from tolstoy.db import embedded

JOIN = textwrap.dedent("""
    import sys, time
    from tolstoy.db import embedded
    server, url = embedded.start(sys.argv[1], database="postgres", cleanup="delete")
    print(url, flush=True)
    time.sleep(600)
""")


def answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            return conn.execute("select 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def test_a_server_whose_users_were_killed_is_stopped_and_deleted_and_one_in_use_is_not():
    # Not under pytest's tmp_path: as root, pgserver runs PostgreSQL as its own user, which cannot
    # enter pytest's private temporary folders (conftest.py's pg_server does the same).
    root = Path(tempfile.mkdtemp(prefix="tolstoy-orphan-test-"))
    user = subprocess.Popen([sys.executable, "-c", JOIN, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        url = user.stdout.readline().strip()
        assert url.startswith("postgresql://"), url
        assert answers(url)
        # In use: left alone, however old.
        assert not embedded.orphaned(root / "pgdata")
        assert not embedded.stop_orphaned(root, older_than=0)
        assert answers(url)
    finally:
        os.kill(user.pid, signal.SIGKILL)
        user.wait(timeout=30)
    # Its only user is gone without a word: the server runs on, orphaned.
    assert answers(url)
    assert embedded.orphaned(root / "pgdata")
    # Too young to tell from one still starting: left alone.
    assert not embedded.stop_orphaned(root, older_than=3600)
    assert embedded.stop_orphaned(root, older_than=0)
    deadline = time.monotonic() + 30
    while answers(url) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not answers(url)
    assert not root.exists()


def teardown_module():
    for left in Path(tempfile.gettempdir()).glob("tolstoy-orphan-test-*"):
        embedded.stop_orphaned(left, older_than=0)
        shutil.rmtree(left, ignore_errors=True)
