"""The benchmark's CPU meter (bench/stack.py): CPU per request and per run is read from /proc of each
server's process tree, so it must count every process below the root, live or exited."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from bench.stack import CpuMeter, descendants, tree_cpu_seconds

BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"


def test_a_child_that_exited_is_counted_with_its_parent():
    # A PostgreSQL backend that ended, a Gunicorn worker that was replaced: their time moved into their
    # parent's cutime/cstime when it waited for them.
    with CpuMeter({"me": os.getpid()}).measure() as spent:
        subprocess.run([sys.executable, "-c", BURN], check=True)
    assert spent["me"] >= 0.25


def test_a_live_grandchild_is_counted_with_its_root(tmp_path):
    # The measured server's workers run below its master: a process between them and the root must
    # not hide them. The grandchild burns after the meter's first reading and then stays alive.
    script = tmp_path / "burn.py"
    script.write_text(f"import time\ntime.sleep(0.5)\n{BURN}time.sleep(60)\n")
    middle = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, "
                                                     f"{str(script)!r}])"], start_new_session=True)
    try:
        with CpuMeter({"middle": middle.pid}).measure() as spent:
            deadline = time.monotonic() + 20
            start = tree_cpu_seconds(middle.pid)
            while tree_cpu_seconds(middle.pid) - start < 0.3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(descendants(middle.pid)) == 2  # the burner is alive, below its parent
        assert spent["middle"] >= 0.25
    finally:
        os.killpg(middle.pid, signal.SIGKILL)
        middle.wait()
