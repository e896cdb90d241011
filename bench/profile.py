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
import io
import json
import os
import pstats
import sys
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("get", "list", "post"), default="get")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--top", type=int, default=30)
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
        body = json.dumps({"name": "profiled", "baseUrl": "https://api.example.com", "authType": "none"})

        def environ(n: int) -> dict:
            if args.scenario == "get":
                return testing.create_environ(path=f"/tools/{loaded.tools[n % len(loaded.tools)]}", headers=headers)
            if args.scenario == "list":
                return testing.create_environ(path="/tools", query_string="limit=50", headers=headers)
            return testing.create_environ(path="/tools", method="POST", body=body,
                                          headers={**headers, "Content-Type": "application/json"})

        statuses: dict[str, int] = {}

        def start_response(status, headers, exc_info=None):
            statuses[status] = statuses.get(status, 0) + 1

        def serve(count: int, offset: int = 0) -> None:
            for n in range(count):
                for _ in app(environ(offset + n), start_response):
                    pass

        serve(500)
        # What building each request's WSGI environ costs here is not the app's: measured apart.
        started = time.process_time()
        for n in range(args.requests):
            environ(n)
        overhead = time.process_time() - started
        started, wall = time.process_time(), time.perf_counter()
        serve(args.requests, 1000)
        spent, wall = time.process_time() - started - overhead, time.perf_counter() - wall
        print(f"{args.scenario}: {args.requests} requests, {1e6 * spent / args.requests:.0f} µs of CPU each "
              f"(app and driver, in this process), {1e6 * wall / args.requests:.0f} µs wall; statuses {statuses}")
        # CPU time, not wall time: a request waiting for PostgreSQL spends none.
        profile = cProfile.Profile(time.process_time)
        profile.enable()
        serve(args.requests, 2000)
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


if __name__ == "__main__":
    sys.exit(main())
