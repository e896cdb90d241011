"""``python -m bench``: Tolstoy against the stacks people would pick instead, in
one run on this machine.

Starts everything on 127.0.0.1 (an embedded PostgreSQL, Tolstoy under
gunicorn.conf.py, a bare Falcon peer and a FastAPI + SQLAlchemy peer with the
same worker count, a stub tool, flow workers, DBOS), loads data, runs bounded
loads with wrk (interleaved, so drift on a shared machine hits every server
alike), stops everything, prints one table of figures with their targets and
writes bench/results/<date>.json. Ratios matter more than absolute numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path

import psycopg

from tolstoy.api.paging import encode_cursor
from tolstoy.db import embedded

from . import data as bench_data
from . import engine_load, http_load
from .stack import CpuMeter, Stack, children_of, free_port, rss_mb

RESULTS = Path(__file__).resolve().parent / "results"
SERVERS = ("tolstoy", "bare_falcon", "fastapi_sqlalchemy")


def interleaved(stack: Stack, urls: dict, scenario: str, script: str, args, *, runs: int, seconds: int,
                connections: int = 32, alternate: bool = False) -> list[http_load.Run]:
    """``runs`` rounds of one wrk run per server, servers in turn, after an unmeasured warm-up of
    each (pools filled, caches and code paths warm: the first seconds of a fresh server measure
    its start, not its speed). Each measured run also records the CPU its server's processes and
    PostgreSQL spent per 1,000 requests (one server runs at a time, so PostgreSQL's CPU is its).
    ``alternate``: every other round takes the servers in reverse order (A B, B A, ...), so that a
    drift of the machine within a round does not fall on the same server every time."""
    def run_args(server: str, run: str) -> list[str]:
        # Each wrk run names what it creates apart from every other run (its counters restart).
        given = args(server)
        return [*given[:-1], f"{given[-1]}{run}"] if len(given) > 1 else given  # [data, nonce] or [data]

    for server, url in urls.items():
        http_load.wrk(url, script, run_args(server, "w"), scenario=scenario, server=server, seconds=2,
                      connections=connections)
    found = []
    for number in range(runs):
        order = list(urls.items())
        for server, url in (order[::-1] if alternate and number % 2 else order):
            with CpuMeter({"app": stack.pids[server], "db": stack.postgres_pid}).measure() as spent:
                run = http_load.wrk(url, script, run_args(server, f"r{number}"), scenario=scenario, server=server,
                                    seconds=seconds, connections=connections)
            run.app_cpu_s_per_1k = round(spent["app"] * 1000 / max(run.requests, 1), 4)
            run.db_cpu_s_per_1k = round(spent["db"] * 1000 / max(run.requests, 1), 4)
            print(f"  {scenario:<22} {server:<20} {run.requests_per_second:9.0f} req/s  p50 {run.p50_ms:6.2f} ms"
                  f"  p99 {run.p99_ms:7.2f} ms  errors {run.errors}  CPU/1k req: app {run.app_cpu_s_per_1k:.3f} s"
                  f" db {run.db_cpu_s_per_1k:.3f} s", flush=True)
            found.append(run)
    return found


def by_server(runs: list[http_load.Run]) -> dict:
    """The summary of each server's runs."""
    servers = sorted({r.server for r in runs}, key=lambda s: (s not in SERVERS, SERVERS.index(s) if s in SERVERS else 0))
    return {server: http_load.summary([r for r in runs if r.server == server]) for server in servers}


def target(name: str, value: float, goal: str, unit: str) -> dict:
    """One line of the targets table: ``goal`` like ">= 1.0" or "<= 80"."""
    op, number = goal.split()
    met = value >= float(number) if op == ">=" else value <= float(number)
    return {"name": name, "value": round(value, 3), "target": goal, "unit": unit, "met": met}


def record(kind: str, settings: dict, figures: dict, targets: list[dict], began: float) -> int:
    """Print each target's verdict and write ``results/<date>-<kind>.json`` (figures, targets, the
    machine and the settings, so a figure is never read without what it was measured on); the exit
    code: 0 when every target is met."""
    for t in targets:
        print(f"target: {t['name']}: {t['value']} {t['unit']} (goal {t['target']}) {'met' if t['met'] else 'MISSED'}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d')}-{kind}.json"
    out.write_text(json.dumps({
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": settings, "figures": figures, "targets": targets,
        "seconds_total": round(time.monotonic() - began, 1),
    }, indent=2, default=str) + "\n")
    print(f"bench: wrote {out}")
    return 0 if all(t["met"] for t in targets) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="wrk runs per scenario and server (default 3)")
    parser.add_argument("--seconds", type=int, default=8, help="length of one wrk run (default 8)")
    parser.add_argument("--large-logs", type=int, default=bench_data.LARGE_LOGS,
                        help="execution logs of the large organization (default 1,000,000)")
    parser.add_argument("--engine-runs", type=int, default=1500, help="runs drained per engine scenario")
    parser.add_argument("--quick", action="store_true", help="one short run of everything (a smoke test)")
    parser.add_argument("--only", choices=("http", "engine"),
                        help="only the HTTP scenarios, or only the engine's (targets of the other part are left out)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.seconds, args.large_logs, args.engine_runs = 1, 3, 20_000, 200
    if args.only == "engine":
        args.large_logs = min(args.large_logs, 20_000)  # only the list scenarios read the large history
    http_load.wrk_path()
    began = time.monotonic()
    stack = Stack()
    figures: dict = {}
    raw: list[dict] = []
    try:
        print("bench: starting PostgreSQL and loading data …", flush=True)
        stack.start_database()
        loaded = bench_data.load(stack.owner_url, large_logs=args.large_logs)
        with psycopg.connect(stack.owner_url) as conn:
            middle = conn.execute("select created_at, id from execution_logs where org_id = %s "
                                  "order by created_at desc, id desc offset %s limit 1",
                                  (loaded.large_org, args.large_logs // 2)).fetchone()
        deep_cursor = encode_cursor([middle[0].isoformat(), str(middle[1])])
        ports = {name: free_port() for name in (*SERVERS, "stub")}
        stub_url = f"http://127.0.0.1:{ports['stub']}/echo"
        stack.stub_tool(ports["stub"])
        tolstoy = stack.tolstoy(ports["tolstoy"])
        stack.peer("bare_falcon", ports["bare_falcon"])
        stack.peer("fastapi_sqlalchemy", ports["fastapi_sqlalchemy"])
        urls = {name: f"http://127.0.0.1:{ports[name]}" for name in SERVERS}
        lua_data = loaded.lua(stack.work / "data.lua")
        nonce = uuid.uuid4().hex[:8]
        if args.only != "engine":
            print(f"bench: HTTP, {args.runs} × {args.seconds} s per scenario and server, wrk -t2 -c32", flush=True)

            def with_nonce(server: str) -> list[str]:
                return [str(lua_data), f"{nonce}{server[:2]}"]

            scenarios = [("GET /tools/{id}", "get_tool.lua", urls), ("GET /tools?limit=50", "list_tools.lua", urls),
                         ("POST /tools", "post_tool.lua", urls)]
            for name, script, targets_urls in scenarios:
                runs = interleaved(stack, targets_urls, name, script, with_nonce, runs=args.runs, seconds=args.seconds)
                raw += [r.as_dict() for r in runs]
                figures[name] = by_server(runs)
            only_tolstoy = {"tolstoy": urls["tolstoy"]}
            for name, script in [("PUT /flows/{id}", "put_flow.lua"), ("80/20 read/write", "mix.lua")]:
                runs = interleaved(stack, only_tolstoy, name, script, with_nonce, runs=args.runs, seconds=args.seconds)
                raw += [r.as_dict() for r in runs]
                figures[name] = by_server(runs)

            print("bench: list latency by history size (wrk -c4)", flush=True)
            lists = {}
            for label, org, cursor in [("10k", loaded.small_org, ""), ("1M", loaded.large_org, ""),
                                       ("1M deep page", loaded.large_org, deep_cursor)]:
                path = loaded.lua(stack.work / f"logs-{label.replace(' ', '-')}.lua", org=org, cursor=cursor)
                runs = interleaved(stack, only_tolstoy, f"GET /execution-logs {label}", "list_logs.lua",
                                   lambda server, p=path: [str(p)], runs=args.runs, seconds=args.seconds, connections=4)
                raw += [r.as_dict() for r in runs]
                lists[label] = by_server(runs)["tolstoy"]
            figures["list latency"] = lists

            print("bench: pgbench ceiling (same query, 32 clients)", flush=True)
            figures["pgbench tps"] = statistics.median(
                http_load.pgbench(embedded.bin_dir(), stack.socket_dir, stack.database, loaded.org, loaded.tools[0],
                                  seconds=args.seconds, work=stack.work) for _ in range(args.runs))

            figures["api_worker_rss_mb"] = round(max(rss_mb(pid) for pid in children_of(tolstoy.pid)), 1)

        if args.only != "http":
            print("bench: engine", flush=True)
            engine = {"throughput": []}
            for processes in (1, 2, 4):
                result = engine_load.throughput(stack, loaded, stub_url, processes, args.engine_runs)
                print(f"  {processes} worker process(es): {result}", flush=True)
                engine["throughput"].append(result)
            engine["latency"] = engine_load.latency(stack, loaded, stub_url, urls["tolstoy"],
                                                    runs=10 if args.quick else 40)
            print(f"  light load: {engine['latency']}", flush=True)
            engine["idle"] = engine_load.idle(stack, 5 if args.quick else 30)
            print(f"  idle worker: {engine['idle']}", flush=True)
            engine["dbos"] = engine_load.dbos(stack, stub_url, args.engine_runs)
            print(f"  DBOS: {engine['dbos']}", flush=True)
            figures["engine"] = engine
    finally:
        stack.close()

    targets = evaluate(figures)
    report(figures, targets)
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    out = RESULTS / f"{stamp}{'-quick' if args.quick else ''}{f'-{args.only}' if args.only else ''}.json"
    out.write_text(json.dumps({
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"runs": args.runs, "seconds": args.seconds, "wrk": "-t2 -c32", "workers_per_server": 2,
                     "large_logs": args.large_logs, "engine_runs": args.engine_runs,
                     "worker_concurrency": engine_load.WORKER_CONCURRENCY, "only": args.only},
        "peers": peers(), "baseline": BASELINE,
        "figures": figures, "targets": targets, "runs": raw,
        "seconds_total": round(time.monotonic() - began, 1),
    }, indent=2, default=str) + "\n")
    print(f"bench: wrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out} "
          f"in {time.monotonic() - began:.0f} s")
    return 0


# What the engine cost per run when the CPU targets were set (issue "the cost of one request and one
# run"), measured the way this module measures it, at commit cabd7e0 on the project's 2-core machine
# (bench/results/2026-12-07-engine-baseline.json; one worker process, 1,500 runs): the PostgreSQL
# target is a ratio to it. An independent measurement on 2026-12-06 gave worker 3.9 ms, PostgreSQL
# 7.3 ms and DBOS 15 ms per run; this module counts CPU from /proc of each process tree only.
BASELINE = {"commit": "cabd7e0", "measured": "2026-12-07", "command": "python -m bench --only engine",
            "result": "bench/results/2026-12-07-engine-baseline.json",
            "worker_cpu_s_per_1k": 2.46, "db_cpu_s_per_1k": 5.967,
            "dbos_worker_cpu_s_per_1k": 8.14, "dbos_db_cpu_s_per_1k": 3.473}


def evaluate(figures: dict) -> list[dict]:
    """Every target of the performance issues, from this run's figures (a part left out by --only has
    none). Each is a ratio measured in this run, or against BASELINE, or a count or bound that does
    not depend on the machine."""
    found = []
    # Every HTTP figure: a scenario's per server, and the list latencies' per history size.
    http = [s for scenario, servers in figures.items() if isinstance(servers, dict) and scenario != "engine"
            for s in servers.values()]
    if http:
        # A server answering errors (a 429 of a quota, a 5xx) did not do the work the others did:
        # every other figure of the run would compare nothing.
        found.append(target("HTTP errors in every measured run", sum(s["errors"] for s in http), "<= 0", "responses"))
    if "GET /tools/{id}" in figures:
        get, post = figures["GET /tools/{id}"], figures["POST /tools"]
        ratio = lambda table, a, b, key="rps_median": table[a][key] / table[b][key]  # noqa: E731
        found += [
            target("GET /tools/{id} vs bare Falcon", ratio(get, "tolstoy", "bare_falcon"), ">= 0.9", "x"),
            target("GET /tools/{id} app CPU per request vs bare Falcon",
                   ratio(get, "tolstoy", "bare_falcon", "app_cpu_s_per_1k"), "<= 1.15", "x"),
            target("GET /tools/{id} p99 vs bare Falcon p99", ratio(get, "tolstoy", "bare_falcon", "p99_ms"),
                   "<= 1.3", "x"),
            target("GET /tools/{id} vs FastAPI", ratio(get, "tolstoy", "fastapi_sqlalchemy"), ">= 2.0", "x"),
            target("POST /tools vs bare Falcon", ratio(post, "tolstoy", "bare_falcon"), ">= 0.9", "x"),
            target("POST /tools vs FastAPI", ratio(post, "tolstoy", "fastapi_sqlalchemy"), ">= 1.8", "x"),
            target("list p50 at 1M rows vs 10k rows",
                   figures["list latency"]["1M"]["p50_ms"] / figures["list latency"]["10k"]["p50_ms"], "<= 1.2", "x"),
            target("RSS per API worker", figures["api_worker_rss_mb"], "<= 80", "MiB"),
        ]
    if "engine" in figures:
        engine = figures["engine"]
        one = {t["processes"]: t for t in engine["throughput"]}[1]
        found += [
            target("statements per 3-step run", one["statements_per_run"], "<= 5", "statements"),
            target("execute→completed p50", engine["latency"]["p50_ms"], "<= 15", "ms"),
            target("idle worker", engine["idle"]["queries_per_second"], "<= 0.2", "queries/s"),
            target("RSS per engine worker", max(t["worker_rss_mb"] for t in engine["throughput"]), "<= 80", "MiB"),
        ]
        if BASELINE["db_cpu_s_per_1k"]:
            found.append(target("engine PostgreSQL CPU per run vs baseline",
                                one["db_cpu_s_per_1k"] / BASELINE["db_cpu_s_per_1k"], "<= 0.6", "x"))
        if engine.get("dbos"):
            found += [
                target("engine runs/s vs DBOS, one process",
                       one["runs_per_second"] / engine["dbos"]["runs_per_second"], ">= 2.5", "x"),
                target("engine worker CPU per run vs DBOS worker CPU per workflow",
                       one["worker_cpu_s_per_1k"] / engine["dbos"]["worker_cpu_s_per_1k"], "<= 0.2", "x"),
            ]
    return found


def peers() -> dict:
    """What each server ran with: the package versions and the settings of its Gunicorn
    configuration, so a ratio is never read without what it compared."""
    def versions(*names: str) -> dict:
        found = {}
        for name in names:
            try:
                found[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                found[name] = None
        return found

    return {
        "tolstoy": {"versions": versions("falcon", "marshmallow", "psycopg", "psycopg-pool", "gunicorn"),
                    "settings": "gunicorn.conf.py (sync workers), WEB_CONCURRENCY=2, headers auth, JSON access "
                                "log to /dev/null, Prometheus multiprocess metrics"},
        "bare_falcon": {"versions": versions("falcon", "psycopg", "psycopg-pool", "gunicorn"),
                        "settings": "Gunicorn sync workers ×2, a psycopg_pool ConnectionPool (1-2) per worker, "
                                    "no access log (bench/peers/bare_falcon)"},
        "fastapi_sqlalchemy": {"versions": versions("fastapi", "sqlalchemy", "asyncpg", "uvicorn", "uvicorn-worker",
                                                    "uvloop", "httptools", "gunicorn"),
                               "settings": "Gunicorn with uvicorn-worker's UvicornWorker ×2 (uvloop and httptools), "
                                           "SQLAlchemy 2 async ORM over asyncpg (pool 10 + 10 overflow), no access log "
                                           "(bench/peers/fastapi_sqlalchemy)"},
        "dbos": {"versions": versions("dbos"),
                 "settings": "one worker process, queue concurrency 100, polling 0.1 s (bench/peers/dbos_flows)"},
    }


def report(figures: dict, targets: list[dict]) -> None:
    """The table a person reads."""
    if "list latency" in figures:
        print("\n| scenario | server | req/s median (min–max) | p50 ms | p99 ms | app CPU s/1k req | "
              "PostgreSQL CPU s/1k req | errors |")
        print("|---|---|---|---|---|---|---|---|")
        for scenario, servers in figures.items():
            if not isinstance(servers, dict) or scenario in ("engine", "list latency"):
                continue
            for server, s in servers.items():
                print(f"| {scenario} | {server} | {s['rps_median']:,.0f} ({s['rps_min']:,.0f}–{s['rps_max']:,.0f}) | "
                      f"{s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s.get('app_cpu_s_per_1k', '')} | "
                      f"{s.get('db_cpu_s_per_1k', '')} | {s['errors']} |")
        for label, s in figures["list latency"].items():
            print(f"| GET /execution-logs?limit=50, {label} | tolstoy | {s['rps_median']:,.0f} | {s['p50_ms']:.2f} | "
                  f"{s['p99_ms']:.2f} | {s.get('app_cpu_s_per_1k', '')} | {s.get('db_cpu_s_per_1k', '')} | "
                  f"{s['errors']} |")
        print(f"\npgbench, same query: {figures['pgbench tps']:,.0f} tps; API worker RSS "
              f"{figures['api_worker_rss_mb']} MiB")
    if "engine" in figures:
        engine = figures["engine"]
        for t in engine["throughput"]:
            print(f"engine, {t['processes']} process(es): {t['runs_per_second']:,.1f} runs/s, "
                  f"{t['statements_per_run']} statements/run, CPU s/1k runs: worker {t['worker_cpu_s_per_1k']}, "
                  f"PostgreSQL {t['db_cpu_s_per_1k']}; worker RSS {t['worker_rss_mb']} MiB")
        if engine.get("dbos"):
            d = engine["dbos"]
            print(f"DBOS, 1 process: {d['runs_per_second']:,.1f} runs/s, CPU s/1k workflows: worker "
                  f"{d['worker_cpu_s_per_1k']}, PostgreSQL {d['db_cpu_s_per_1k']}")
        print(f"execute→completed: p50 {engine['latency']['p50_ms']} ms, p99 {engine['latency']['p99_ms']} ms; "
              f"idle worker {engine['idle']['queries_per_second']} queries/s")
    print("\n| target | value | goal | met |")
    print("|---|---|---|---|")
    for t in targets:
        print(f"| {t['name']} | {t['value']} {t['unit']} | {t['target']} | {'yes' if t['met'] else 'NO'} |")


if __name__ == "__main__":
    sys.exit(main())
