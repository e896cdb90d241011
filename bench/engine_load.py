"""The engine under load: runs/s of a 3-step flow with 1, 2 and 4 worker
processes, statements per run, execute→completed latency at light load, what
an idle worker asks of the database, and DBOS on the same server for scale."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from .stack import ROOT, CpuMeter, Stack, rss_mb

WORKER_CONCURRENCY = 8


def flow_steps(stub_url: str) -> list[dict]:
    """transform → http_request to the stub tool → transform."""
    return [
        {"id": "prepare", "type": "transform", "config": {"output": {"n": "{{ variables.n }}", "tag": "bench"}}},
        {"id": "call", "type": "http_request", "config": {"method": "POST", "url": stub_url,
                                                          "body": {"n": "{{ steps.prepare.n }}"}}},
        {"id": "finish", "type": "transform", "config": {"output": {"status": "{{ steps.call.status }}",
                                                                     "n": "{{ steps.prepare.n }}"}}},
    ]


def create_flow(owner_url: str, org: str, stub_url: str) -> str:
    """The benchmark flow, inserted as the owner (its version 1 is recorded by the trigger)."""
    with psycopg.connect(owner_url, autocommit=True) as conn:
        return str(conn.execute("insert into flows (org_id, name, steps) values (%s, 'engine-bench', %s) "
                                "returning id", (org, json.dumps(flow_steps(stub_url)))).fetchone()[0])


def statements(metrics_dir: Path) -> float:
    """Statements sent so far by the processes writing to this metrics folder."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "tolstoy_db_statements_total":
                total += sample.value
    return total


def _enqueue(conn: psycopg.Connection, org: str, user: str, flow: str, count: int):
    """Queue ``count`` runs in one statement; returns the database time just before."""
    started = conn.execute("select clock_timestamp()").fetchone()[0]
    # Through tolstoy_queue_run_v4, as the API queues them (sql/runs.sql, queue): each run gets its plan
    # and first log row.
    conn.execute("select count(*) from generate_series(1, %s) as n, "
                 "lateral tolstoy_queue_run_v4(%s, %s, 1, %s, jsonb_build_object('n', n), null, null, false, null, "
                 "null, null)",
                 (count, org, flow, user))
    return started


def _wait_finished(conn: psycopg.Connection, flow: str, count: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute("select count(*) filter (where status in ('completed', 'failed', 'cancelled')) as done, "
                           "count(*) filter (where status = 'failed') as failed, max(finished_at) as last "
                           "from flow_runs where flow_id = %s", (flow,)).fetchone()
        if row[0] >= count:
            return {"done": row[0], "failed": row[1], "last": row[2]}
        time.sleep(0.2)
    raise SystemExit(f"bench: {count} runs did not finish within {timeout:.0f} s")


def throughput(stack: Stack, data, stub_url: str, processes: int, runs: int) -> dict:
    """Runs/s draining ``runs`` queued runs with ``processes`` worker processes, and statements per run."""
    flow = create_flow(stack.owner_url, data.org, stub_url)
    metrics_dir = stack.work / f"metrics-workers-{processes}"
    metrics_dir.mkdir(exist_ok=True)
    workers = [stack.spawn([sys.executable, "-m", "tolstoy.cli", "worker", "--concurrency", str(WORKER_CONCURRENCY)],
                           stack.tolstoy_env(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)),
                           log=f"worker-{processes}-{i}.log") for i in range(processes)]
    time.sleep(2.0)  # started and idle
    before = statements(metrics_dir)
    meter = CpuMeter({"postgres": stack.postgres_pid, **{f"worker{i}": w.pid for i, w in enumerate(workers)}})
    with psycopg.connect(stack.owner_url, autocommit=True) as conn, meter.measure() as spent:
        started = _enqueue(conn, data.org, data.user, flow, runs)
        finished = _wait_finished(conn, flow, runs, timeout=600)
    seconds = (finished["last"] - started).total_seconds()
    after = statements(metrics_dir)
    rss = [rss_mb(w.pid) for w in workers]
    for worker in workers:
        stack.stop(worker)
    worker_cpu = sum(value for name, value in spent.items() if name != "postgres")
    return {"processes": processes, "runs": runs, "seconds": round(seconds, 3), "failed": finished["failed"],
            "runs_per_second": round(runs / seconds, 1), "statements_per_run": round((after - before) / runs, 2),
            "worker_rss_mb": round(max(rss), 1),
            # CPU per 1,000 runs: the workers', and PostgreSQL's from queueing them to the last finish (as
            # DBOS's is counted: its enqueues too; the poll of _wait_finished is in it, a few ms a second).
            "worker_cpu_s_per_1k": round(worker_cpu * 1000 / runs, 3),
            "db_cpu_s_per_1k": round(spent["postgres"] * 1000 / runs, 3)}


def latency(stack: Stack, data, stub_url: str, api_url: str, runs: int = 40, rate: float = 4.0) -> dict:
    """execute→completed of runs started through the API one at a time, one worker process."""
    flow = create_flow(stack.owner_url, data.org, stub_url)
    worker = stack.worker(WORKER_CONCURRENCY, "latency")
    time.sleep(2.0)
    ids = []
    for n in range(runs):
        request = urllib.request.Request(f"{api_url}/flows/{flow}/execute", data=json.dumps({"variables": {"n": n}})
                                         .encode(), method="POST",
                                         headers={"Content-Type": "application/json", "X-Org-ID": data.org,
                                                  "X-User-ID": data.user})
        with urllib.request.urlopen(request, timeout=10) as answer:
            ids.append(json.loads(answer.read())["executionId"])
        time.sleep(1 / rate)
    with psycopg.connect(stack.owner_url, autocommit=True) as conn:
        _wait_finished(conn, flow, runs, timeout=120)
        rows = conn.execute("select extract(epoch from finished_at - created_at) * 1000 from flow_runs "
                            "where flow_id = %s and status = 'completed'", (flow,)).fetchall()
    stack.stop(worker)
    durations = sorted(r[0] for r in rows)
    return {"runs": runs, "completed": len(durations), "p50_ms": round(statistics.median(durations), 1),
            "p99_ms": round(durations[min(len(durations) - 1, int(len(durations) * 0.99))], 1)}


def idle(stack: Stack, seconds: float) -> dict:
    """Queries per second of one worker with nothing to do."""
    metrics_dir = stack.work / "metrics-idle"
    metrics_dir.mkdir(exist_ok=True)
    worker = stack.spawn([sys.executable, "-m", "tolstoy.cli", "worker"],
                         stack.tolstoy_env(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)), log="worker-idle.log")
    time.sleep(3.0)
    before = statements(metrics_dir)
    time.sleep(seconds)
    after = statements(metrics_dir)
    stack.stop(worker)
    return {"seconds": seconds, "queries_per_second": round((after - before) / seconds, 3)}


def dbos(stack: Stack, stub_url: str, runs: int) -> dict | None:
    """Runs/s of DBOS (three trivial steps, one worker process, queue concurrency 100, polling 0.1 s)."""
    peer = ROOT / "bench" / "peers" / "dbos_flows"
    if not (peer / "worker.py").exists():
        return None
    env = {"DATABASE_URL": stack.owner_url, "STUB_URL": stub_url}
    worker = stack.spawn([sys.executable, "-m", "bench.peers.dbos_flows.worker"], env, log="dbos-worker.log")
    time.sleep(5.0)

    def enqueue(count: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bench.peers.dbos_flows.enqueue", str(count)], cwd=ROOT,
                              capture_output=True, text=True, timeout=900, env={**os.environ, **env})

    # The first runs after launch are slower (DBOS warms its queue poller); measure a warm worker.
    enqueue(20)
    # The worker's tree and PostgreSQL while the enqueuing process queues the workflows and waits for
    # them: that process's own CPU (the client) is not DBOS's per workflow and is not counted.
    with CpuMeter({"worker": worker.pid, "postgres": stack.postgres_pid}).measure() as spent:
        result = enqueue(runs)
    stack.stop(worker)
    if result.returncode != 0:
        raise SystemExit(f"bench: DBOS enqueue failed: {result.stderr[-2000:]}")
    found = json.loads(result.stdout.strip().splitlines()[-1])
    return {**found, "worker_cpu_s_per_1k": round(spent["worker"] * 1000 / runs, 3),
            "db_cpu_s_per_1k": round(spent["postgres"] * 1000 / runs, 3)}
