"""PostgreSQL's CPU per statement of one run: the engine bench's 3-step run (transform → call →
transform) replayed statement by statement, without a worker, a stub tool or a load generator on
the machine: the queue (as the API sends it), the claim, the checkpoint before the call and the
finishing one (as the worker sends them, through Tolstoy's own Database and wire.py, each with its
tenant statement), every one its own transaction. The backend's CPU around each is read from
/proc/<pid>/schedstat (nanoseconds of CPU, where /proc/<pid>/stat counts hundredths of a second),
so a change to a function or an index shows per statement within a few percent.

    python -m bench.statement_cpu [--runs 500] [--rounds 3] [--months 24] [--change up.sql --undo down.sql]

With --change and --undo, the two SQL files are applied in turns (as the owner) and each round
measures both, alternated: an A/B of a migration's up and down on one database. Prints microseconds
of backend CPU per run for each statement kind, and the medians over rounds. --months N makes the
run history's monthly partitions for the N months before this one first, as N months of upkeep
without a retention would have (the default, 0: this month and three ahead).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import uuid
from pathlib import Path

import psycopg

from tolstoy.db import migrate
from tolstoy.db.database import Database, Tenant
from tolstoy.db.database import json as dbjson
from tolstoy.db.queries import SQL

from . import data as bench_data
from . import engine_load
from .stack import Stack

STUB = "http://127.0.0.1:9/echo"  # never called: the worker's part is replayed, not run
KINDS = ("queue", "claim", "continue", "finish")
WRITES = {"lease_seconds": 30.0, "max_handbacks": 20, "max_recoveries": 3, "half_life_seconds": 300.0}


def backend_cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as stat:
        return int(stat.read().split()[0])


def backend_pid(db: Database) -> int:
    with db.pool.connection() as conn:
        return conn.info.backend_pid


def writes_before_call(n: int) -> dict:
    """The checkpoint the worker writes before the call: the transform done, the call starting."""
    prepared = {"output": {"n": n, "tag": "bench"}}
    call = {"url": STUB, "body": {"n": n}, "method": "POST"}
    return {"run": {"action": "continue"}, **WRITES, "steps": [
        {"step_id": "prepare", "status": "completed", "attempt": 1, "inputs": prepared,
         "outputs": {"n": n, "tag": "bench"}, "error": None, "duration_ms": 0},
        {"step_id": "call", "status": "running", "attempt": 1, "inputs": call, "call_started": True}],
        "events": [{"step_key": "prepare", "status": "started", "inputs": prepared, "error": None, "duration_ms": None},
                   {"step_key": "prepare", "status": "completed", "inputs": prepared, "error": None, "duration_ms": 0},
                   {"step_key": "call", "status": "started", "inputs": {**call, "attempt": 1}, "error": None,
                    "duration_ms": None}]}


def writes_at_finish(n: int) -> dict:
    """The finishing checkpoint: the call's answer, the last transform, the run completed."""
    call = {"url": STUB, "body": {"n": n}, "method": "POST"}
    answer = {"status": 200, "body": {"ok": True, "items": [1, 2, 3]},
              "headers": {"date": "Tue, 08 Dec 2026 02:16:00 GMT", "server": "gunicorn", "connection": "keep-alive",
                          "content-type": "application/json", "content-length": "32"}}
    last = {"output": {"n": n, "status": 200}}
    return {"run": {"action": "finish", "status": "completed", "error": None}, **WRITES, "steps": [
        {"step_id": "call", "status": "completed", "attempt": 1, "inputs": call, "outputs": answer, "error": None,
         "duration_ms": 4},
        {"step_id": "finish", "status": "completed", "attempt": 1, "inputs": last, "outputs": {"n": n, "status": 200},
         "error": None, "duration_ms": 0}],
        "events": [{"step_key": "call", "status": "completed", "inputs": call, "error": None, "duration_ms": 4},
                   {"step_key": "finish", "status": "started", "inputs": last, "error": None, "duration_ms": None},
                   {"step_key": "finish", "status": "completed", "inputs": last, "error": None, "duration_ms": 0},
                   {"step_key": "$flow", "status": "completed", "inputs": {}, "error": None, "duration_ms": None}]}


def measure(stack: Stack, data, flow: str, runs: int, warm: int = 50) -> dict[str, float]:
    """Microseconds of backend CPU per run, by statement kind, over ``runs`` runs after ``warm``."""
    api = Database(stack.app_url, min_size=1, max_size=1)
    worker = Database(migrate.as_role(stack.owner_url, migrate.WORKER_ROLE), min_size=1, max_size=1)
    api.open(wait=True)
    worker.open(wait=True)
    try:
        pids = {"api": backend_pid(api), "worker": backend_pid(worker)}
        spent = dict.fromkeys(KINDS, 0)
        name = f"bench:{uuid.uuid4().hex[:8]}"

        def timed(kind: str, side: str, send, /, *args, **params):
            before = backend_cpu_ns(pids[side])
            result = send(*args, **params)
            spent[kind] += backend_cpu_ns(pids[side]) - before
            return result

        for n in range(warm + runs):
            if n == warm:
                spent = dict.fromkeys(KINDS, 0)
            with api.acting(Tenant(org_id=data.org, user_id=data.user)):
                timed("queue", "api", api.one, SQL.runs.queue, commit=True, org_id=data.org, flow_id=flow,
                      flow_version=1, user_id=data.user, variables=dbjson({"n": n}), idempotency_key=None,
                      retry_of=None, acts_as_user=False, rerun=None, concurrency_key=None, trace_parent=None)
            rows = timed("claim", "worker", worker.all, SQL.runs.claim, worker=name, limit=8, lease_seconds=30.0,
                         max_recoveries=3, half_life_seconds=300.0)
            claimed = [row["run"] for row in rows if row["run"] is not None]
            if len(claimed) != 1:
                raise SystemExit(f"bench: the claim took {len(claimed)} runs, not the one queued")
            run = claimed[0]
            with worker.tenant(run["org_id"]):
                for kind, writes in (("continue", writes_before_call(n)), ("finish", writes_at_finish(n))):
                    timed(kind, "worker", worker.scalar, SQL.runs.checkpoint, worker=name, org_id=run["org_id"],
                          run_id=run["id"], token=run["token"], writes=dbjson(writes))
        return {kind: value / runs / 1000 for kind, value in spent.items()}
    finally:
        api.close()
        worker.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=500, help="runs measured per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--months", type=int, default=0, help="monthly partitions made before this month's")
    parser.add_argument("--change", type=Path, help="SQL applied (as the owner) before the 'change' rounds")
    parser.add_argument("--undo", type=Path, help="SQL that puts back what --change changed")
    args = parser.parse_args(argv)
    if bool(args.change) != bool(args.undo):
        parser.error("--change and --undo go together")
    sides = {"as is": None} if not args.change else {"undone": args.undo.read_text(),
                                                       "changed": args.change.read_text()}
    stack = Stack()
    try:
        stack.start_database()
        data = bench_data.load(stack.owner_url, large_logs=20_000)
        flow = engine_load.create_flow(stack.owner_url, data.org, STUB)
        if args.months:
            first = dt.date.today().replace(day=1)
            for _ in range(args.months):
                first = (first - dt.timedelta(days=1)).replace(day=1)
            with psycopg.connect(stack.owner_url, autocommit=True) as conn:
                conn.execute("select tolstoy_ensure_partitions(%s, %s)", (first, args.months + 4))
        results: dict[str, list[dict]] = {side: [] for side in sides}
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for side in order:
                if sides[side] is not None:
                    with psycopg.connect(stack.owner_url, autocommit=True) as conn:
                        conn.execute(sides[side])
                figures = measure(stack, data, flow, args.runs)
                results[side].append(figures)
                print(f"{side:8s} µs of backend CPU per run: "
                      + "  ".join(f"{kind} {value:,.0f}" for kind, value in figures.items())
                      + f"  total {sum(figures.values()):,.0f}", flush=True)
        for side, rounds in results.items():
            medians = {kind: statistics.median(r[kind] for r in rounds) for kind in KINDS}
            print(f"{side:8s} median: " + "  ".join(f"{kind} {value:,.0f}" for kind, value in medians.items())
                  + f"  total {statistics.median(sum(r.values()) for r in rounds):,.0f}")
    finally:
        stack.close()


if __name__ == "__main__":
    main()
