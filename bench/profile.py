"""``python -m bench.profile``: where Tolstoy's API spends its CPU per request.

Runs one scenario's requests through the WSGI app in this process (no HTTP server, no load
generator, nothing else on the CPU it measures), against an embedded PostgreSQL with the
benchmark's data and the production settings of the benchmark (headers auth, Prometheus
multiprocess metrics): first the CPU per request of the app and its driver (``time.process_time``
over ``--requests`` requests, after a warm-up), then the same requests under cProfile timed by the
process's CPU clock (waiting for PostgreSQL costs nothing there), whose top functions by own time
and tolstoy's by inclusive time it prints. cProfile's own overhead weighs on
small functions: read its shares as where to look, and the CPU per request as what to compare.
Gunicorn's part (HTTP parsing, the access log line it writes) is not in it: ``python -m bench``
measures the whole server's CPU per request.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from datetime import timedelta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("get", "list", "post"), default="get")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--blocks", type=int, default=10,
                        help="blocks the timed requests go in (their median and least are shown)")
    parser.add_argument("--cpu-only", action="store_true", help="the CPU per request only, without cProfile")
    parser.add_argument("--traces", action="store_true",
                        help="what traces cost a request: the same app with traces off and on (exporting over "
                             "OTLP/HTTP to a local endpoint), blocks taking turns; nothing else")
    args = parser.parse_args(argv)
    # Metrics as a Gunicorn worker keeps them (a file per process), set before they are imported.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="tolstoy-profile-metrics-"))
    from falcon import testing

    from tolstoy.api.app import create_app
    from tolstoy.config import Config
    from tolstoy.db.database import Database

    from . import data as bench_data
    from .stack import Stack

    stack = Stack()
    try:
        stack.start_database()
        loaded = bench_data.load(stack.owner_url, large_logs=1000)
        config = Config.from_env(stack.tolstoy_env(PROMETHEUS_MULTIPROC_DIR=os.environ["PROMETHEUS_MULTIPROC_DIR"]))
        db = Database.from_config(config)
        db.open(wait=True)
        stack.pools.append(db)
        app = create_app(config, db)
        headers = {"X-Org-ID": loaded.org}

        def body(n: int) -> str:
            # A new name each time: a tool's name is unique per organization, and a repeated one
            # would measure 409s.
            return json.dumps({"name": f"profiled {n}", "baseUrl": "https://api.example.com", "authType": "none"})

        def environ(n: int) -> dict:
            if args.scenario == "get":
                return testing.create_environ(path=f"/tools/{loaded.tools[n % len(loaded.tools)]}", headers=headers)
            if args.scenario == "list":
                return testing.create_environ(path="/tools", query_string="limit=50", headers=headers)
            return testing.create_environ(path="/tools", method="POST", body=body(n),
                                          headers={**headers, "Content-Type": "application/json"})

        statuses: dict[str, int] = {}

        def start_response(status, headers, exc_info=None):
            statuses[status] = statuses.get(status, 0) + 1

        def serve(count: int, offset: int = 0) -> None:
            for n in range(count):
                for _ in app(environ(offset + n), start_response):
                    pass

        serve(500, 10 * args.requests)
        if args.traces:
            return traces(config, db, environ, start_response, args)
        # What building each request's WSGI environ costs here is not the app's: measured apart. The
        # requests go in --blocks blocks; the median and the least are shown: a block that met
        # whatever else ran on a shared machine is an outlier, not the rule.
        blocks = []
        size = max(args.requests // args.blocks, 1)
        pauses = GcPauses()
        for block in range(args.blocks):
            offset = 1000 + block * size
            started = time.process_time()
            for n in range(size):
                environ(offset + n)
            overhead = time.process_time() - started
            started, wall = time.process_time(), time.perf_counter()
            with pauses:
                serve(size, offset)
            blocks.append(((time.process_time() - started - overhead) / size, (time.perf_counter() - wall) / size))
        spent, wall = statistics.median(b[0] for b in blocks), statistics.median(b[1] for b in blocks)
        print(f"{args.scenario}: {size * args.blocks} requests, {1e6 * spent:.0f} µs of CPU each (app and driver, "
              f"in this process; the median of {args.blocks} blocks, the least {1e6 * min(b[0] for b in blocks):.0f}),"
              f" {1e6 * wall:.0f} µs wall; statuses {statuses}")
        print(pauses.summary(size * args.blocks))
        print(f"access line: {1e6 * access_line_cpu():.1f} µs of CPU each (Gunicorn's logger, to /dev/null)")
        if args.scenario == "get":
            print("the driver alone (the tool query, µs of CPU each, least of 6 x 500): " + ", ".join(
                f"{name} {1e6 * spent:.0f}" for name, spent in driver_cpu(stack.app_url, loaded).items()))
        if args.cpu_only:
            return 0
        # CPU time, not wall time: a request waiting for PostgreSQL spends none.
        profile = cProfile.Profile(time.process_time)
        profile.enable()
        serve(args.requests, 1000 + args.requests)
        profile.disable()
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out).strip_dirs()
        stats.sort_stats("tottime").print_stats(args.top)
        out.write("\n---- tolstoy's functions by inclusive time ----\n")
        pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats("tolstoy/", args.top)
        print(out.getvalue())
    finally:
        stack.close()
    return 0


def traces(config, db, environ, start_response, args) -> int:
    """The CPU per request of the app built with traces off and of one built with traces on (Tolstoy's own
    provider, exporting to an endpoint on 127.0.0.1 that drops what it gets, as bench.tracing_cost does,
    in a process of its own so that its CPU is not counted), ``--blocks`` blocks of each taking turns,
    every other pair in reverse order. Each pair met the same machine: the median of the pairs'
    differences is the figure. The export thread's CPU is in it (it runs in this process); Gunicorn's
    share of a request is not (bench.tracing_cost has it)."""
    import multiprocessing
    from http.server import ThreadingHTTPServer

    from tolstoy import tracing
    from tolstoy.api.app import create_app

    from .tracing_cost import _Sink

    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    # Forked before any thread of traces exists; the child only answers the exports.
    sink_process = multiprocessing.get_context("fork").Process(target=sink.serve_forever, daemon=True)
    sink_process.start()
    try:
        apps = {"off": create_app(config, db)}
        os.environ.update({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SERVICE_NAME": "tolstoy-profile",
                           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}"})
        tracing.reset()
        assert tracing.setup() and tracing._direct is not None
        apps["on"] = create_app(config, db)
        size = max(args.requests // args.blocks, 100)
        spent: dict[str, list[float]] = {"off": [], "on": []}

        def block(name: str, offset: int) -> float:
            tracing.ON = name == "on"  # the data layer's one check; the middleware is in the app built on
            started = time.process_time()
            for n in range(size):
                for _ in apps[name](environ(offset + n), start_response):
                    pass
            return (time.process_time() - started) / size

        block("off", 0), block("on", 0)  # warm both
        for number in range(args.blocks):
            for name in (("off", "on") if number % 2 == 0 else ("on", "off")):
                spent[name].append(block(name, 1000 + number * size))
        tracing.flush()
        tracing._provider.shutdown()  # its export thread ends here, not at exit against a closed endpoint
    finally:
        tracing.ON = False
        sink_process.terminate()
        sink.server_close()
    pairs = [on - off for off, on in zip(spent["off"], spent["on"], strict=True)]
    off, on = statistics.median(spent["off"]), statistics.median(spent["on"])
    print(f"{args.scenario}, {args.blocks} pairs of {size} requests: traces off {1e6 * off:.0f} µs of CPU each, "
          f"on {1e6 * on:.0f} µs (medians); traces cost {1e6 * statistics.median(pairs):.0f} µs a request "
          f"(the median of the pairs' differences; each pair {', '.join(f'{1e6 * p:+.0f}' for p in pairs)})")
    return 0


class GcPauses:
    """The garbage collector's pauses while the block runs (``gc.callbacks``), by generation: a full
    collection walks every object the process holds, and is where a request's latency can jump."""

    def __init__(self):
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._started)

    def __enter__(self):
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self._callback)

    def summary(self, requests: int) -> str:
        """One line: per generation, collections per 1,000 requests, their mean and longest pause."""
        parts = []
        for generation, found in self.pauses.items():
            if found:
                parts.append(f"gen{generation} {1000 * len(found) / requests:.1f} per 1k requests, "
                             f"mean {1e3 * statistics.mean(found):.3f} ms, max {1e3 * max(found):.3f} ms")
            else:
                parts.append(f"gen{generation} none")
        return f"gc pauses ({gc.get_threshold()} thresholds, {gc.get_freeze_count()} frozen): " + "; ".join(parts)


def driver_cpu(url: str, loaded, count: int = 500) -> dict[str, float]:
    """CPU seconds the driver spends on GET /tools/{id}'s query, sent four ways on one connection (as the
    pool's, prepared after 5 uses): alone, through psycopg; after the statement that sets the tenant, in
    two round trips; both in one psycopg pipeline; and both in one batch of tolstoy/db/wire.py, as a
    unit of work sends them."""
    import uuid

    import psycopg
    from psycopg.rows import dict_row

    from tolstoy.db import wire
    from tolstoy.db.queries import SQL

    org, tools = uuid.UUID(loaded.org), [uuid.UUID(tool) for tool in loaded.tools]
    enter = {"org_id": str(org), "timeout": "15000ms", "quotas": "", "audit": ""}
    with psycopg.connect(url, autocommit=True, row_factory=dict_row, prepare_threshold=5) as conn:
        def alone(n: int) -> None:
            assert conn.execute(SQL.tools.get.sql, {"org_id": org, "id": tools[n % len(tools)]}).fetchall()

        def two_round_trips(n: int) -> None:
            conn.execute(SQL.session.enter_known.sql, enter)
            alone(n)

        def one_pipeline(n: int) -> None:
            with conn.pipeline():
                conn.execute(SQL.session.enter_known.sql, enter)
                cursor = conn.execute(SQL.tools.get.sql, {"org_id": org, "id": tools[n % len(tools)]})
            assert cursor.fetchall()

        def one_batch(n: int) -> None:  # what a unit of work sends now: tolstoy/db/wire.py
            assert wire.exchange(conn, [(SQL.session.enter_known, enter),
                                        (SQL.tools.get, {"org_id": org, "id": tools[n % len(tools)]})])[1].rows

        ways = {"alone": alone, "two round trips": two_round_trips, "one pipeline": one_pipeline,
                "one batch (wire.py)": one_batch}
        found: dict[str, list[float]] = {name: [] for name in ways}
        # The tenant for the whole session, so that the query finds its row outside a unit's
        # transaction too (enter sets it for one transaction, which autocommit ends at once).
        conn.execute("select set_config('app.org_id', %s, false)", [str(org)])
        for way in ways.values():
            for n in range(100):
                way(n)
        for _ in range(6):
            for name, way in ways.items():
                started = time.process_time()
                for n in range(count):
                    way(n)
                found[name].append((time.process_time() - started) / count)
    return {name: min(spent) for name, spent in found.items()}


def access_line_cpu(count: int = 20_000) -> float:
    """CPU seconds of one access line, as Gunicorn's worker writes it after each request (the same
    logger class and settings as gunicorn.conf.py, its stream /dev/null): the part of a request the
    WSGI app above does not include."""
    from gunicorn.config import Config as GunicornConfig

    from tolstoy.api.access_log import ENV_ORG, ENV_ROUTE, GunicornLogger

    cfg = GunicornConfig()
    cfg.set("accesslog", os.devnull)
    cfg.set("forwarded_allow_ips", "127.0.0.1")
    logger = GunicornLogger(cfg)

    class Response:
        status = "200 OK"
        sent = 812
        headers = [("Content-Type", "application/json"), ("Content-Length", "812"),
                   ("X-Request-ID", "0f8fad5bd9cb469fa16570867728950e"), ("ETag", '"1c8b1d7a8f0e4b1c9d2e3f4a5b6c7d8e"')]

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/tools/6f1c5bb6-4c1f-4f5e-9d5a-1d2e3f4a5b6c",
               "REMOTE_ADDR": "127.0.0.1", "HTTP_USER_AGENT": "wrk", ENV_ROUTE: "/tools/{id}",
               ENV_ORG: "1f0e5bb6-4c1f-4f5e-9d5a-1d2e3f4a5b6c"}
    took = timedelta(microseconds=1234)
    started = time.process_time()
    for _ in range(count):
        logger.access(Response, None, environ, took)
    return (time.process_time() - started) / count


if __name__ == "__main__":
    sys.exit(main())
