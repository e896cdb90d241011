"""``python -m bench.drill``: a restore drill. Back up a PostgreSQL that Tolstoy is busy on, restore it
to a named point in time on a fresh data directory, and prove the restore: the runs completed before
the point are there, none from after it, the database keeps its invariants, and Tolstoy serves again.

Everything runs on this machine, on unix sockets and 127.0.0.1, under a work folder that is removed at
the end (on Ctrl-C and SIGTERM too):

1. node A: Debian's PostgreSQL (``initdb`` as the ``postgres`` user when run as root: PostgreSQL refuses
   root), with ops/pgbackrest/postgresql.conf's archiving; pgBackRest with ops/pgbackrest/pgbackrest.conf's
   settings, the repository on a local path instead of S3; ``stanza-create``, ``check``;
2. Tolstoy's migrations (as ``tolstoy db up`` does), then Tolstoy's API under gunicorn.conf.py and a flow
   worker, with a stream of runs through the API (a delay each; some parked on a wait step for a signal);
3. a full backup; more runs; ``pg_create_restore_point('drill-…')`` between two snapshots of what had
   completed; more runs (and signals) after it; node A stopped (it is the node that was lost);
4. ``pgbackrest restore --type=name`` into a fresh data directory (node B), promoted at the point; the
   checks below; Tolstoy's API started on B, timed until ``/health`` answers (the RTO); a worker, the
   in-flight runs drained, a signal the restore lost sent again, the invariants (bench/db_invariants.sql).

RPO: how far the newest commit the restore holds lies before the target (``pg_last_committed_xact``;
``track_commit_timestamp`` is on): the seconds of commits lost before the point. RTO: from the start of
the restore to Tolstoy's ``/health`` answering 200 on the restored node. Both are printed and written to
bench/results/drill-<date>.json and docs/reliability.md's table. Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import datetime as dt
import json
import os
import platform
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from tolstoy.db import migrate

from . import db_invariants
from .stack import ROOT, Stack, free_port

OPS = ROOT / "ops" / "pgbackrest"
STANZA = "tolstoy"
# Debian bookworm's pgBackRest (2.45) reads PostgreSQL up to 15: Debian's own server, not pgserver's 16.
PG_BIN_DEFAULT = "/usr/lib/postgresql/15/bin"
RESULTS = ROOT / "bench" / "results"
RELIABILITY = ROOT / "docs" / "reliability.md"
TABLE_START = "<!-- drill results: bench/drill.py rewrites the rows below -->"
TABLE_END = "<!-- end of drill results -->"

# The repository options the drill replaces: S3 and its encryption are production's (a local path here).
PRODUCTION_ONLY = re.compile(r"^repo1-(s3-|cipher-|type$|path$)")

WORK_FLOW = [
    {"id": "hello", "type": "transform", "config": {"output": {"n": "{{ variables.n }}"}}},
    {"id": "pause", "type": "delay", "config": {"ms": 300}},
    {"id": "done", "type": "transform", "config": {"output": "{{ steps.hello.n }}"}},
]
GATE_FLOW = [
    {"id": "gate", "type": "wait", "config": {"signal": "go", "timeoutMs": 3600000}},
    {"id": "done", "type": "transform", "config": {"output": "{{ steps.gate.n }}"}},
]


class DrillFailed(Exception):
    """A check of the drill failed: the restore is not what was asked for."""


def say(message: str) -> None:
    print(f"drill: {message}", flush=True)


class Host:
    """Runs PostgreSQL's and pgBackRest's programs as the ``postgres`` user when this process is root."""

    def __init__(self, pg_bin: Path):
        self.pg_bin = pg_bin
        self.user = None
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError:
                raise SystemExit("drill: run as root, it needs the user postgres (apt-get install postgresql)") from None

    def own(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def run(self, command: list[str], *, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        kwargs = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": [],
                      "env": {**os.environ, "HOME": self.user.pw_dir, "USER": "postgres"}}
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd="/", **kwargs)
        if check and result.returncode != 0:
            raise SystemExit(f"drill: {' '.join(command)} failed ({result.returncode}):\n"
                             f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
        return result

    def tool(self, name: str) -> str:
        return str(self.pg_bin / name)


class Node:
    """One PostgreSQL data directory on a unix socket of its own (no TCP)."""

    def __init__(self, host: Host, work: Path, name: str):
        self.host = host
        self.name = name
        self.data = work / name
        self.sockets = work / f"{name}-socket"
        self.log = work / f"{name}.log"
        self.port = free_port()
        self.sockets.mkdir()
        host.own(self.sockets)

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@/{database}?host={self.sockets}&port={self.port}"

    def start(self) -> None:
        # Where it listens is the node's own, whatever postgresql.conf the data came with.
        options = f"-c listen_addresses='' -c unix_socket_directories='{self.sockets}' -c port={self.port}"
        self.host.run([self.host.tool("pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log), "-w",
                       "-t", "300", "-o", options])

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self.host.run([self.host.tool("pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "120"],
                          check=False)

    def sql(self, statement: str, params: tuple = (), database: str = "postgres") -> list[dict]:
        with psycopg.connect(self.url(database), autocommit=True, row_factory=dict_row) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []


class Drill:
    """One drill: its work folder, its nodes, its Tolstoy processes; ``close()`` removes them all."""

    def __init__(self, pg_bin: Path, runs: int, prove_checks: bool = False):
        self.host = Host(pg_bin)
        self.runs = runs
        self.prove_checks = prove_checks
        self.work = Path(tempfile.mkdtemp(prefix="tolstoy-drill-"))
        os.chmod(self.work, 0o755)
        self.host.own(self.work)
        for folder in ("repo", "spool", "log", "lock"):
            (self.work / folder).mkdir()
            self.host.own(self.work / folder)
        self.config = self.work / "pgbackrest.conf"
        self.stack: Stack | None = None
        self.nodes: list[Node] = []
        self.point = f"drill-{uuid.uuid4().hex[:12]}"

    # ---- pgBackRest -----------------------------------------------------------------------------------

    def write_config(self, node: Node) -> None:
        """ops/pgbackrest/pgbackrest.conf, its repository moved from S3 to this folder, its paths here."""
        shipped = configparser.ConfigParser(interpolation=None, strict=True)
        shipped.optionxform = str
        shipped.read(OPS / "pgbackrest.conf")
        ours = configparser.ConfigParser(interpolation=None)
        ours.optionxform = str
        for section in shipped.sections():
            ours[section] = {k: v for k, v in shipped[section].items() if not PRODUCTION_ONLY.match(k)}
        ours["global"].update({"repo1-type": "posix", "repo1-path": str(self.work / "repo"),
                               "spool-path": str(self.work / "spool"), "log-path": str(self.work / "log"),
                               "lock-path": str(self.work / "lock")})
        ours[STANZA].update({"pg1-path": str(node.data), "pg1-socket-path": str(node.sockets),
                             "pg1-port": str(node.port)})
        with self.config.open("w") as out:
            ours.write(out)
        self.host.own(self.config)

    def pgbackrest(self, *args: str, timeout: float = 600) -> str:
        result = self.host.run(["pgbackrest", f"--config={self.config}", f"--stanza={STANZA}", *args], timeout=timeout)
        return result.stdout

    # ---- node A: the server that is lost --------------------------------------------------------------

    def primary(self) -> Node:
        node = Node(self.host, self.work, "node-a")
        self.nodes.append(node)
        self.host.run([self.host.tool("initdb"), "-D", str(node.data), "-U", "postgres", "-A", "trust",
                       "--data-checksums", "-E", "UTF8", "--locale=C.UTF-8"])
        shipped = (OPS / "postgresql.conf").read_text()
        archive = f"archive_command = 'pgbackrest --config={self.config} --stanza={STANZA} archive-push %p'"
        settings = re.sub(r"^archive_command = .*$", archive, shipped, flags=re.M)
        with (node.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# ---- ops/pgbackrest/postgresql.conf (bench/drill.py) ----\n{settings}\n"
                       "# The RPO is measured by commit timestamps.\ntrack_commit_timestamp = on\n")
        self.write_config(node)
        node.start()
        self.pgbackrest("stanza-create")
        self.pgbackrest("check")
        return node

    # ---- Tolstoy ---------------------------------------------------------------------------------------

    def tolstoy(self, node: Node, worker: bool = True) -> tuple[Stack, str]:
        """Tolstoy's API (and a worker) on ``node``'s database; returns the stack and the API's base URL."""
        stack = Stack()
        self.stack = stack
        stack.owner_url = migrate.as_role(node.url("tolstoy"), migrate.OWNER_ROLE)
        stack.app_url = migrate.as_role(node.url("tolstoy"))
        port = free_port()
        stack.tolstoy(port, WEB_CONCURRENCY="1")
        if worker:
            stack.worker(4, "drill")
        return stack, f"http://127.0.0.1:{port}"

    def stop_tolstoy(self) -> None:
        if self.stack is not None:
            self.stack.close()
            self.stack = None

    def restore(self, name: str, *target: str) -> Node:
        """A fresh node restored from the repository to ``target`` (pgBackRest's options), promoted."""
        node = Node(self.host, self.work, name)
        self.nodes.append(node)
        self.pgbackrest(f"--pg1-path={node.data}", *target, "restore", timeout=1800)
        node.start()
        wait_promoted(node, 300)
        return node

    # ---- the drill --------------------------------------------------------------------------------------

    def run(self) -> dict:
        a = self.primary()
        say(f"node A up (PostgreSQL {a.sql('show server_version')[0]['server_version']}), archiving to {self.work}/repo")
        owner_url = migrate.prepare_owner(a.url("tolstoy"))
        migrate.upgrade(owner_url, quiet=True)
        org, user, work_flow, gate_flow = seed(a)
        _, api = self.tolstoy(a)
        client = Client(api, org, user)

        first = [client.execute(work_flow, n) for n in range(self.runs)]
        wait_finished(a, first, 120)
        say(f"{len(first)} runs completed; full backup")
        self.pgbackrest("--type=full", "backup")

        gates = [client.execute(gate_flow, n) for n in range(2)]
        feeder = Feeder(client, work_flow, start=self.runs)
        feeder.start()
        client.signal(gate_flow, gates[0], 0)  # this gate completes before the point
        wait_finished(a, [gates[0]], 60)
        time.sleep(2)
        # What had completed just before the point, the point, what existed just after it.
        before = completed(a)
        point = a.sql("select pg_create_restore_point(%s)::text as lsn, clock_timestamp() as at", (self.point,))[0]
        existing_after = {row["id"]: row["status"] for row in
                          a.sql("select id::text, status::text from flow_runs", database="tolstoy")}
        say(f"restore point {self.point} at {point['at'].isoformat()} (LSN {point['lsn']}); "
            f"{len(before)} runs completed before it")
        time.sleep(2)
        client.signal(gate_flow, gates[1], 1)  # this one only after it: the restore must not have its signal
        time.sleep(1)
        feeder.stop()
        every = feeder.queued + first + gates
        wait_finished(a, every, 120)
        after = set(completed(a)) - set(existing_after)
        completed_after = {run for run, status in existing_after.items()
                           if status not in ("completed", "failed", "cancelled")} & set(completed(a))
        say(f"{len(every)} runs in all; {len(after)} created and completed after the point")
        self.stop_tolstoy()
        # The point's WAL segment is archived (a switch, then pgBackRest's check waits for the archive).
        a.sql("select pg_switch_wal()")
        self.pgbackrest("check")
        a.stop()
        say("node A stopped: it is the node that was lost")

        # ---- restore on a fresh node ----
        restore_started = time.monotonic()
        b = self.restore("node-b", "--type=name", f"--target={self.point}", "--target-action=promote")
        restored_at = time.monotonic()
        last_commit = b.sql("select timestamp from pg_last_committed_xact()")[0]["timestamp"]
        rpo = max(0.0, (point["at"] - last_commit).total_seconds()) if last_commit else None
        restored = {row["id"]: row for row in b.sql("select id::text, status::text, finished_at from flow_runs",
                                                    database="tolstoy")}
        signals = b.sql("select run_id::text, signal from flow_run_signals", database="tolstoy")
        problems = compare(before, existing_after, after, completed_after, restored)
        if any(s["run_id"] == gates[1] for s in signals):
            problems.append(f"the signal sent to {gates[1]} after the point is in the restore")
        if restored.get(gates[1], {}).get("status") in ("completed", "failed", "cancelled"):
            problems.append(f"the gate run {gates[1]} signalled after the point is finished in the restore")

        _, api = self.tolstoy(b, worker=False)
        wait_healthy(api, 120)
        rto = time.monotonic() - restore_started
        say(f"restored and serving: RTO {rto:.1f} s (PostgreSQL promoted after {restored_at - restore_started:.1f} s), "
            f"RPO {rpo if rpo is None else round(rpo, 3)} s")

        # The restored node runs: a worker drains the runs that were in flight at the point, and the
        # signal the restore could not hold is sent again (what an operator tells its sender to do).
        self.stack.worker(4, "restored")
        Client(api, org, user).signal(gate_flow, gates[1], 1)
        in_flight = [run for run, row in restored.items() if row["status"] not in ("completed", "failed", "cancelled")]
        wait_finished(b, in_flight, 120)
        broken = db_invariants.check(b.url("tolstoy"), grace_seconds=10)
        for rule, rows in broken.items():
            problems.append(f"invariant {rule}: {len(rows)} row(s), e.g. {rows[0]}")
        self.stop_tolstoy()
        version = b.sql("show server_version")[0]["server_version"]
        b.stop()
        # The checks can fail: the same comparison against a restore to the end of node A's timeline (the
        # wrong target; B's promotion began timeline 2, which "latest" would follow) must find the runs
        # of after the point (tests/ops/test_drill.py asks for this).
        wrong = None
        if self.prove_checks:
            c = self.restore("node-c", "--type=default", "--target-timeline=1")
            wrong = compare(before, existing_after, after, completed_after,
                            {row["id"]: row for row in c.sql("select id::text, status::text from flow_runs",
                                                             database="tolstoy")})
            c.stop()
        return {
            "date": dt.datetime.now(dt.UTC).date().isoformat(),
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "host": platform.node(),
            "postgres": version,
            "pgbackrest": self.host.run(["pgbackrest", "version"]).stdout.strip(),
            "target": {"type": "name", "name": self.point, "lsn": point["lsn"], "at": point["at"].isoformat()},
            "runs": {"total": len(every), "completed_before_point": len(before),
                     "created_after_point": len(after), "in_flight_at_point": len(in_flight),
                     "restored": len(restored)},
            "rpo_seconds": None if rpo is None else round(rpo, 3),
            "rto_seconds": round(rto, 1),
            "restore_seconds": round(restored_at - restore_started, 1),
            "problems": problems,
            "passed": not problems,
            **({} if wrong is None else {"wrong_target_problems": wrong}),
        }

    def close(self) -> None:
        self.stop_tolstoy()
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop("immediate")
        shutil.rmtree(self.work, ignore_errors=True)


def compare(before: dict, existing_after: dict, after: set, completed_after: set, restored: dict) -> list[str]:
    """What is wrong with a restore to the point, given what had completed just before it (``before``),
    the runs that existed just after it (``existing_after``: id → status), the runs created and
    completed after it (``after``), those unfinished at it and completed after it (``completed_after``),
    and the restored runs (id → row)."""
    problems = []
    missing = [run for run in before if restored.get(run, {}).get("status") != "completed"]
    if missing:
        problems.append(f"{len(missing)} run(s) completed before the point are not completed in the restore: "
                        f"{missing[:5]}")
    extra = [run for run in restored if run not in existing_after]
    if extra:
        problems.append(f"{len(extra)} run(s) created after the point are in the restore: {extra[:5]}")
    late = [run for run in after | completed_after if run not in before
            and restored.get(run, {}).get("status") in ("completed", "failed", "cancelled")
            and existing_after.get(run) not in ("completed", "failed", "cancelled")]
    if late:
        problems.append(f"{len(late)} run(s) finished after the point are finished in the restore: {late[:5]}")
    return problems


def seed(node: Node) -> tuple[str, str, str, str]:
    """An organization, a user and the two flows, written as the superuser (the API's /organizations
    needs the admin role's URL, which the drill does not set up)."""
    with psycopg.connect(node.url("tolstoy"), autocommit=True) as conn:
        org = str(conn.execute("insert into organizations (name) values ('drill') returning id").fetchone()[0])
        user = str(conn.execute("insert into users (org_id, email) values (%s, 'drill@example.com') returning id",
                                (org,)).fetchone()[0])
        flows = [str(conn.execute("insert into flows (org_id, name, steps) values (%s, %s, %s) returning id",
                                  (org, name, json.dumps(steps))).fetchone()[0])
                 for name, steps in (("drill-work", WORK_FLOW), ("drill-gate", GATE_FLOW))]
    return org, user, flows[0], flows[1]


class Client:
    """Tolstoy's API over HTTP in headers mode, as one user of one organization."""

    def __init__(self, base: str, org: str, user: str):
        self.base = base
        self.headers = {"X-Org-ID": org, "X-User-ID": user, "Content-Type": "application/json"}

    def post(self, path: str, body: dict, expect: int = 202) -> dict:
        request = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), headers=self.headers,
                                         method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            if response.status != expect:
                raise DrillFailed(f"POST {path} answered {response.status}")
            return json.load(response)

    def execute(self, flow: str, n: int) -> str:
        return self.post(f"/flows/{flow}/execute", {"variables": {"n": n}})["executionId"]

    def signal(self, flow: str, run: str, n: int) -> None:
        self.post(f"/flows/{flow}/executions/{run}/signals/go", {"payload": {"n": n}})


class Feeder(threading.Thread):
    """Queues a run every 50 ms until stopped: commits keep coming across the backup and the point."""

    def __init__(self, client: Client, flow: str, start: int):
        super().__init__(name="drill-feeder", daemon=True)
        self.client, self.flow, self.n = client, flow, start
        self.queued: list[str] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.wait(0.05):
                self.queued.append(self.client.execute(self.flow, self.n))
                self.n += 1
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)
        if self.error is not None:
            raise DrillFailed(f"queueing runs failed: {self.error}")


def completed(node: Node) -> dict:
    """Completed runs: id → finished_at."""
    return {row["id"]: row["finished_at"] for row in
            node.sql("select id::text, finished_at from flow_runs where status = 'completed'", database="tolstoy")}


def wait_finished(node: Node, runs: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        left = node.sql("select count(*) as n from flow_runs where id = any(%s::uuid[]) "
                        "and status not in ('completed', 'failed', 'cancelled')", (runs,), database="tolstoy")[0]["n"]
        if left == 0:
            return
        if time.monotonic() > deadline:
            raise DrillFailed(f"{left} of {len(runs)} runs did not finish within {timeout:.0f} s")
        time.sleep(0.2)


def wait_promoted(node: Node, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while node.sql("select pg_is_in_recovery() as r")[0]["r"]:
        if time.monotonic() > deadline:
            raise DrillFailed(f"the restored node was still recovering after {timeout:.0f} s:\n"
                              f"{node.log.read_text()[-3000:]}")
        time.sleep(0.05)


def wait_healthy(base: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise DrillFailed(f"Tolstoy on the restored node did not answer /health within {timeout:.0f} s")
        time.sleep(0.05)


def record(result: dict, results_dir: Path, docs: Path | None) -> Path:
    """bench/results/drill-<date>.json, and the result's row in docs/reliability.md's table (one per date)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"drill-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if docs is not None:
        text = docs.read_text()
        head, rest = text.split(TABLE_START, 1)
        table, tail = rest.split(TABLE_END, 1)
        rows = [line for line in table.strip().splitlines() if line.startswith("| 2")]
        rows = [row for row in rows if not row.startswith(f"| {result['date']} ")]
        runs = result["runs"]
        rows.append(f"| {result['date']} | {result['postgres']} | {result['pgbackrest']} | {runs['total']} "
                    f"({runs['completed_before_point']} before the point, {runs['created_after_point']} after) | "
                    f"{result['rpo_seconds']} | {result['rto_seconds']} | {result['restore_seconds']} | "
                    f"{'passed' if result['passed'] else 'FAILED'} |")
        header = ("\n| date | PostgreSQL | pgBackRest | runs | RPO (s) | RTO (s) | restore until promoted (s) | checks |\n"
                  "|---|---|---|---|---|---|---|---|\n")
        docs.write_text(head + TABLE_START + header + "\n".join(sorted(rows)) + "\n" + TABLE_END + tail)
    return path


def drill(pg_bin: Path, runs: int, *, prove_checks: bool = False) -> dict:
    """One drill, everything it started stopped and its folder removed on every way out."""
    one = Drill(pg_bin, runs, prove_checks)
    try:
        return one.run()
    finally:
        one.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="runs completed before the full backup (default 40)")
    parser.add_argument("--pg-bin", default=os.environ.get("TOLSTOY_DRILL_PG_BIN", PG_BIN_DEFAULT),
                        help=f"PostgreSQL's programs (default {PG_BIN_DEFAULT}, Debian's postgresql-15)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where drill-<date>.json goes")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/reliability.md's table alone")
    parser.add_argument("--prove-checks", action="store_true",
                        help="also restore past the point and record what the checks find there (the tests do)")
    args = parser.parse_args(argv)
    pg_bin = Path(args.pg_bin)
    for program in ("initdb", "pg_ctl"):
        if not (pg_bin / program).exists():
            raise SystemExit(f"drill: no {pg_bin / program} (apt-get install postgresql, or --pg-bin)")
    if shutil.which("pgbackrest") is None:
        raise SystemExit("drill: pgbackrest is not installed (apt-get install pgbackrest)")

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        result = drill(pg_bin, args.runs, prove_checks=args.prove_checks)
    except DrillFailed as exc:
        say(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted; everything it started is stopped and its folder removed")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    path = record(result, args.results, None if args.no_docs else RELIABILITY)
    say(f"RPO {result['rpo_seconds']} s, RTO {result['rto_seconds']} s -> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    for problem in result["problems"]:
        say(f"FAILED: {problem}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
