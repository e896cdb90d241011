"""``python -m bench.tracing_cost``: what traces cost a request. ``GET /tools/{id}`` against two Tolstoy
servers on one database, the same in all but traces: off (the default), and on (OTEL_TRACES_EXPORTER=otlp,
exporting every span to a local OTLP/HTTP endpoint that accepts and drops them, as a collector next to
the service would). wrk runs interleaved as in ``python -m bench`` (warm-up, then rounds taking turns), so
drift on a shared machine falls on both alike; prints requests/s, latency and the server's CPU per 1,000
requests, and the cost of traces on as a ratio (the issue's target: at most 15 %).

    .venv/bin/python -m bench.tracing_cost [--runs 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import data as bench_data
from . import http_load
from .__main__ import by_server, interleaved
from .stack import Stack, free_port

SCENARIO = "GET /tools/{id}"


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that takes every export (an empty ExportTraceServiceResponse is 0 bytes)."""

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="wrk runs per server (default 3)")
    parser.add_argument("--seconds", type=int, default=8, help="length of one wrk run (default 8)")
    args = parser.parse_args(argv)
    args.quick = False
    http_load.wrk_path()
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    stack = Stack()
    try:
        stack.start_database()
        loaded = bench_data.load(stack.owner_url, large_logs=1000)
        urls = {}
        for server, extra in [("traces off", {}), ("traces on", {
                "OTEL_TRACES_EXPORTER": "otlp", "OTEL_SERVICE_NAME": "tolstoy-bench",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}"})]:
            port = free_port()
            stack.tolstoy(port, **extra)
            stack.pids[server] = stack.pids.pop("tolstoy")
            urls[server] = f"http://127.0.0.1:{port}"
        data = loaded.lua(stack.work / "data.lua")
        runs = interleaved(stack, urls, SCENARIO, "get_tool.lua", lambda server: [str(data)], runs=args.runs,
                           seconds=args.seconds)
    finally:
        stack.close()
        sink.shutdown()
    figures = by_server(runs)
    print(f"\n| {SCENARIO} | req/s median | p50 ms | p99 ms | app CPU s/1k req |\n|---|---|---|---|---|")
    for server, s in figures.items():
        print(f"| {server} | {s['rps_median']:,.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
              f"{s.get('app_cpu_s_per_1k', float('nan')):.3f} |")
    off, on = figures["traces off"], figures["traces on"]
    print(f"\ntraces on: {100 * (1 - on['rps_median'] / off['rps_median']):+.1f} % fewer requests/s, "
          f"{100 * (on['app_cpu_s_per_1k'] / off['app_cpu_s_per_1k'] - 1):+.1f} % app CPU per request "
          f"(medians of {args.runs} rounds; target: at most 15 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

