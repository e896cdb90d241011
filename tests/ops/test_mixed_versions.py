"""Upgrades with runs in flight: workers of the previous release and of this tree, side by side on a
database migrated to this tree's schema, hand runs parked on waits and delays back and forth, and every
run completes, every call made exactly once (docs/deploying.md, "Upgrading with runs in flight").

The previous release is the commit in ops/previous-release, installed (not editable) into a venv of its
own from a ``git worktree add`` of that commit, cached under .tolstoy/releases/<commit>. Slow (the first
install takes minutes): ``pytest -m slow``, a step of .ci/run of its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from support import made_once
from werkzeug import Response

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PIN = ROOT / "ops" / "previous-release"
RUNS = 6


def previous_release_commit() -> str:
    """The commit ops/previous-release names (its one line that is not a comment)."""
    lines = [line.strip() for line in PIN.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 1 and len(lines[0]) == 40, f"{PIN} must name one commit (40 hex digits)"
    return lines[0]


def unavailable(message: str):
    """Skip, but fail under CI=true: .ci/run clones the whole history and has git."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def git(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def previous_python() -> Path:
    """The python of a venv holding the previous release, installed from a git worktree of its commit."""
    if shutil.which("git") is None:
        unavailable("git is not installed")
    commit = previous_release_commit()
    if git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        unavailable(f"the previous release {commit} is not in this clone (a shallow clone? git fetch --unshallow)")

    def install(building: Path) -> None:
        source = building / "src"
        added = git("worktree", "add", "--detach", str(source), commit)
        assert added.returncode == 0, added.stderr
        try:
            subprocess.run([sys.executable, "-m", "venv", str(building / "venv")], check=True)
            # Not editable: the venv keeps its own copy (sql/, migrations under share/tolstoy), so the
            # worktree goes at once and nothing of this tree leaks into the old code.
            installed = subprocess.run([str(building / "venv" / "bin" / "pip"), "install", "-q", str(source)],
                                       capture_output=True, text=True)
            assert installed.returncode == 0, installed.stderr[-3000:]
        finally:
            git("worktree", "remove", "--force", str(source))

    # Built aside and renamed into place (only `python -m` is used from it: the scripts' shebangs name
    # the build folder).
    return made_once(ROOT / ".tolstoy" / "releases" / commit, install) / "venv" / "bin" / "python"


class Workers:
    """``tolstoy worker`` processes of either release, each logging to a file of its own."""

    def __init__(self, env: dict, logs: Path):
        self.env = {**os.environ, **env}
        self.logs = logs
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, python: Path | str, concurrency: int = 4, **env: str) -> None:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed by the process's end
        # Outside the checkout, so the previous release reads only its installed copy of sql/ and db/.
        self.running[name] = subprocess.Popen([str(python), "-m", "tolstoy.cli", "worker", "--concurrency", str(concurrency)],
                                              cwd=self.logs, env={**self.env, **env}, stdout=subprocess.DEVNULL,
                                              stderr=log)
        # Serving before the test goes on: a switch is only a switch once the new worker claims.
        deadline = time.monotonic() + 60
        while '"worker started"' not in self.tail(name):
            self.check_alive()
            assert time.monotonic() < deadline, f"worker {name} did not start within 60 s:\n{self.tail(name)}"
            time.sleep(0.05)

    def stop(self, name: str) -> None:
        """SIGTERM: stop claiming, hand runs back, exit (what systemd does to a unit being replaced)."""
        process = self.running.pop(name)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"worker {name} did not stop within 30 s of SIGTERM")
        assert process.returncode == 0, f"worker {name} exited with {process.returncode}:\n{self.tail(name)}"
        # A release that misreads the other's checkpoints or answers logs it: nothing of the kind is expected.
        errors = [line for line in (self.logs / f"{name}.log").read_text().splitlines() if '"level":"error"' in line]
        assert errors == [], f"worker {name} logged errors:\n" + "\n".join(errors)[:4000]

    def check_alive(self) -> None:
        for name, process in self.running.items():
            assert process.poll() is None, f"worker {name} died:\n{self.tail(name)}"

    def tail(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()[-4000:]

    def close(self) -> None:
        for process in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
        self.running.clear()


def wait_until(predicate, workers: Workers, what: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers.check_alive()
        if predicate():
            return
        time.sleep(0.1)
    logs = "\n".join(f"--- {name}\n{workers.tail(name)}" for name in workers.running)
    pytest.fail(f"timed out waiting for {what}\n{logs}")


def parked_at(db, step: str) -> int:
    """How many runs have the step ``step`` parked (``waiting``: a wait for a signal, or a delay asleep)."""
    with db.pool.connection() as conn:
        return conn.execute("select count(*) as n from flow_run_steps where step_id = %s and status = 'waiting'",
                            (step,)).fetchone()["n"]


def test_previous_and_current_workers_share_runs_parked_across_the_switch(api, db, worker_env, server,
                                                                         previous_python, tmp_path):
    calls: list[tuple[str, str | None]] = []
    lock = threading.Lock()

    def record(request):
        with lock:
            calls.append((request.path, request.headers.get("Idempotency-Key")))
        return Response('{"ok": true}', content_type="application/json")

    server.expect_request("/effects").respond_with_handler(record)
    effect = {"method": "POST", "url": server.url_for("/effects"), "body": {"n": "{{ variables.n }}"}}
    org = api.org()
    user = api.user(org)
    child = api.flow(org, steps=[
        {"id": "d", "type": "http_request", "config": effect},
        {"id": "nap", "type": "delay", "config": {"ms": 1000}},
        {"id": "got", "type": "transform", "config": {"output": "{{ steps.d.body.ok }}"}},
    ])
    flow = api.flow(org, steps=[
        {"id": "a", "type": "http_request", "config": effect},
        {"id": "one", "type": "wait", "config": {"signal": "one"}},
        {"id": "b", "type": "http_request", "config": effect},
        {"id": "pause", "type": "delay", "config": {"ms": 4000}},
        {"id": "items", "type": "foreach",
         "config": {"items": [1, 2, 3], "concurrency": 2,
                    "step": {"type": "http_request",
                             "config": {**effect, "body": {"n": "{{ variables.n }}", "item": "{{ item }}"}}}}},
        {"id": "two", "type": "wait", "config": {"signal": "two"}},
        {"id": "c", "type": "http_request", "config": effect},
        {"id": "sub", "type": "subflow", "config": {"flowId": child["id"], "wait": True,
                                                    "variables": {"n": "{{ variables.n }}"}}},
        {"id": "pause2", "type": "delay", "config": {"ms": 1000}},
        {"id": "e", "type": "http_request", "config": effect},
        {"id": "done", "type": "transform",
         "config": {"output": {"n": "{{ variables.n }}", "one": "{{ steps.one.go }}", "child": "{{ steps.sub.got }}",
                               "items": "{{ steps.items | length }}"}}},
    ])
    headers = api.headers(org, user)

    def signal_all(name: str) -> None:
        for run in runs:
            sent = api.client.simulate_post(f"/flows/{flow['id']}/executions/{run}/signals/{name}",
                                            json={"payload": {"go": name}}, headers=headers)
            assert sent.status_code == 202, sent.text

    workers = Workers(worker_env, tmp_path)
    current = sys.executable
    try:
        # 1. Only the previous release runs (before the deploy); its runs park on the first wait.
        workers.start("old-1", previous_python)
        workers.start("old-2", previous_python)
        runs = []
        for n in range(RUNS):
            queued = api.client.simulate_post(f"/flows/{flow['id']}/execute", json={"variables": {"n": n}},
                                              headers=headers)
            assert queued.status_code == 202, queued.text
            runs.append(queued.json["executionId"])
        wait_until(lambda: parked_at(db, "one") == RUNS, workers, "the old workers to park every run on 'one'")

        # 2. The deploy replaced them: only this release's worker. Its checkpoints: the signal taken,
        #    a call, and a delay asleep (written by the new code, to be woken by the old).
        workers.stop("old-1")
        workers.stop("old-2")
        workers.start("new-1", current)
        signal_all("one")
        wait_until(lambda: parked_at(db, "pause") == RUNS, workers, "the new worker to put every run to sleep")

        # 3. A rollback (or a host not yet deployed): the previous release wakes the new one's delays and
        #    runs the foreach, up to the second wait.
        workers.stop("new-1")
        workers.start("old-3", previous_python)
        wait_until(lambda: parked_at(db, "two") == RUNS, workers, "the old worker to park every run on 'two'")

        # 4. Side by side: subflows (children queued by one release, run and awaited by either), delays,
        #    the rest of the calls.
        workers.start("new-2", current)
        signal_all("two")

        def all_finished() -> bool:
            with db.pool.connection() as conn:
                return conn.execute("select count(*) filter (where status not in ('completed', 'failed', "
                                    "'cancelled')) = 0 and count(*) = %s as done from flow_runs",
                                    (2 * RUNS,)).fetchone()["done"]

        wait_until(all_finished, workers, "every run and child to finish")
        workers.stop("old-3")
        workers.stop("new-2")
    finally:
        workers.close()

    with db.pool.connection() as conn:
        finished = conn.execute("select id::text, status::text, parent_run_id::text as parent, error "
                                "from flow_runs order by created_at").fetchall()
    assert [(r["status"], r["error"]) for r in finished] == [("completed", None)] * (2 * RUNS), finished
    children = {r["parent"]: r["id"] for r in finished if r["parent"]}
    assert sorted(children) == sorted(runs)
    # Every call exactly once, under the key of its step: nothing repeated, nothing lost at a switch.
    expected = [f"{run}:{step}:1" for run in runs for step in ("a", "b", "items[0]", "items[1]", "items[2]", "c", "e")]
    expected += [f"{children[run]}:d:1" for run in runs]
    counted = Counter(key for _, key in calls)
    assert {key: n for key, n in counted.items() if n != 1} == {}
    assert sorted(counted) == sorted(expected)
    # What later steps saw is what earlier steps returned, whichever release ran them.
    for n, run in enumerate(runs):
        view = api.client.simulate_get(f"/flows/{flow['id']}/executions/{run}", headers=headers).json
        assert view["outputs"]["done"] == {"n": n, "one": "one", "child": True, "items": 3}, view["outputs"]


def test_a_retry_run_by_the_previous_release_waits_for_the_child_its_chain_started(api, db, worker_env, server,
                                                                                  previous_python, tmp_path):
    """This release's tolstoy_subflow parks a retried parent whose earlier run's child is still under way
    (one child per step of a retry chain). The previous release's workers call the same function: its
    answer must be one they understand (a "child" to wait for), or the retry they run breaks."""
    calls: list[tuple[str, str | None]] = []
    slow_started, release = threading.Event(), threading.Event()

    def record(request):
        calls.append((request.path, request.headers.get("Idempotency-Key")))
        if request.path == "/slow":
            slow_started.set()
            release.wait(60)
        return Response('{"ok": true}', content_type="application/json")

    server.expect_request("/slow").respond_with_handler(record)
    server.expect_request("/after").respond_with_handler(record)
    org = api.org()
    user = api.user(org)
    headers = api.headers(org, user)
    child = api.flow(org, steps=[
        {"id": "slow", "type": "http_request", "config": {"method": "POST", "url": server.url_for("/slow")},
         "timeoutMs": 60000},
        {"id": "got", "type": "transform", "config": {"output": "{{ steps.slow.body.ok }}"}},
    ])
    parent = api.flow(org, steps=[
        {"id": "sub", "type": "subflow", "config": {"flowId": child["id"], "wait": True}},
        {"id": "after", "type": "http_request", "config": {"method": "POST", "url": server.url_for("/after")}},
    ])
    base = f"/flows/{parent['id']}/executions"
    workers = Workers(worker_env, tmp_path)
    try:
        # This release's worker, with a long lease, runs the parent and the child, whose call it is making
        # when it freezes: the child stays under way, and its lease holds, for as long as the test says.
        workers.start("new", sys.executable, concurrency=1, TOLSTOY_WORKER_LEASE_SECONDS="60")
        first = api.client.simulate_post(f"/flows/{parent['id']}/execute", json={}, headers=headers).json
        assert slow_started.wait(60), "the child's call never started"
        workers.running["new"].send_signal(signal.SIGSTOP)
        workers.start("old", previous_python)
        cancelled = api.client.simulate_post(f"{base}/{first['executionId']}/cancel", headers=headers)
        assert cancelled.status_code == 202, cancelled.text
        # The previous release's worker, the only one awake, runs the retry.
        retry = api.client.simulate_post(f"{base}/{first['executionId']}/retry", headers=headers)
        assert retry.status_code == 202, retry.text
        retry_id = retry.json["executionId"]

        def status(run: str) -> str:
            with db.pool.connection() as conn:
                return conn.execute("select status::text from flow_runs where id = %s", (run,)).fetchone()["status"]

        # The previous release's worker runs the retry: it must park it on the child still under way.
        wait_until(lambda: status(retry_id) == "waiting", workers, "the retry to wait for the earlier child")
        time.sleep(1)  # anything the old worker does next with the answer, it does now
        workers.check_alive()
        workers.running["new"].send_signal(signal.SIGCONT)
        release.set()
        wait_until(lambda: status(retry_id) in ("completed", "failed", "cancelled"), workers, "the retry to end")
        workers.stop("old")
        workers.stop("new")
    finally:
        release.set()
        workers.close()
    view = api.client.simulate_get(f"{base}/{retry_id}", headers=headers).json
    assert view["status"] == "completed", view
    assert view["outputs"]["sub"]["got"] is True
    # One child chain: the call the cancel cut off was sent again by the child's retry under its key, never
    # by a second child under another.
    with db.pool.connection() as conn:
        first_child = conn.execute("select id::text from flow_runs where parent_run_id = %s",
                                   (first["executionId"],)).fetchone()["id"]
    assert {key for path, key in calls if path == "/slow"} == {f"{first_child}:slow:1"}, calls
    assert [path for path, _ in calls].count("/after") == 1
