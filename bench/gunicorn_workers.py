"""Measure Gunicorn worker classes on Tolstoy's own workload; the numbers behind
the choice in gunicorn.conf.py.

    .venv/bin/python bench/gunicorn_workers.py          # needs ApacheBench: apt-get install apache2-utils

It starts an embedded PostgreSQL in a temporary folder, migrates it, creates a
tenant with a tool and two actions, then for each worker setup runs Gunicorn
(with gunicorn.conf.py, on 127.0.0.1 only) and drives it with ``ab``:
``GET /tools/{id}`` (tenant check + tool + its actions: three queries) and
``POST /organizations`` (an insert), each at 8 and 32 concurrent clients.
Every run is bounded by a request count. The setups take turns, ROUNDS times,
and each cell reports its median round, so load from elsewhere on the machine
falls on every setup alike.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tolstoy.db import embedded, migrate  # noqa: E402

SETUPS = {
    "sync x5": ["--worker-class", "sync", "--workers", "5"],
    "gthread 2x4": ["--worker-class", "gthread", "--workers", "2", "--threads", "4"],
    "gthread 3x4": ["--worker-class", "gthread", "--workers", "3", "--threads", "4"],
}
REQUESTS = 3000
ROUNDS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=json.dumps(body) if body else None,
                 headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    data = json.loads(response.read() or b"null")
    conn.close()
    return data


def ab(port, path, concurrency, headers, body_file=None) -> dict:
    command = ["ab", "-q", "-n", str(REQUESTS), "-c", str(concurrency)]
    for key, value in headers.items():
        command += ["-H", f"{key}: {value}"]
    if body_file:
        command += ["-p", body_file, "-T", "application/json"]
    output = subprocess.run(command + [f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                            check=True).stdout
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", output).group(1))
    failed = int(re.search(r"Failed requests:\s+(\d+)", output).group(1))
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", output)
    p50 = int(re.search(r"^\s+50%\s+(\d+)", output, re.M).group(1))
    p99 = int(re.search(r"^\s+99%\s+(\d+)", output, re.M).group(1))
    return {"rps": rps, "p50": p50, "p99": p99, "errors": failed + (int(non2xx.group(1)) if non2xx else 0)}


def run_setup(url, folder, body_file, flags):
    """Start Gunicorn with these flags, yield ((route, concurrency), ab result) per cell, stop it."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "PORT": str(port), "TOLSTOY_ENV": "test",
           "PROMETHEUS_MULTIPROC_DIR": str(Path(tempfile.mkdtemp(dir=folder)))}
    with open(folder / "gunicorn.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py",
                                    "--access-logfile", "/dev/null", *flags, "tolstoy.api.app:get_app()"],
                                   cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                call(port, "GET", "/health")
                break
            except OSError:
                time.sleep(0.1)
        org = call(port, "POST", "/organizations", {"name": "Bench"})
        tenant = {"X-Org-ID": org["id"]}
        tool = call(port, "POST", "/tools", {"name": "T", "baseUrl": "https://x.example", "authType": "none"},
                    tenant)
        for key in ("a.one", "a.two"):
            call(port, "POST", "/actions", {"toolId": tool["id"], "name": key, "key": key, "method": "GET",
                                            "endpoint": "/x"}, tenant)
        for concurrency in (8, 32):
            yield ("GET /tools/id", concurrency), ab(port, f"/tools/{tool['id']}", concurrency, tenant)
            yield ("POST /orgs", concurrency), ab(port, "/organizations", concurrency, {}, str(body_file))
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    if shutil.which("ab") is None:
        raise SystemExit("bench: needs ApacheBench (apt-get install apache2-utils)")
    folder = Path(tempfile.mkdtemp(prefix="tolstoy-bench-"))
    server, url = embedded.start(folder, cleanup="delete")
    migrate.upgrade(url, quiet=True)
    body_file = folder / "organization.json"
    body_file.write_text(json.dumps({"name": "Created by ab"}))
    print(f"{os.cpu_count()} cores; {REQUESTS} requests per cell; median of {ROUNDS} rounds; latencies in ms",
          flush=True)
    results: dict[tuple, list[dict]] = {}
    for round_number in range(ROUNDS):
        for name, flags in SETUPS.items():
            for key, result in run_setup(url, folder, body_file, flags):
                results.setdefault((name, *key), []).append(result)
        print(f"round {round_number + 1} done", flush=True)
    print(f"{'setup':<13} {'route':<14} {'c':>3} {'req/s':>8} {'p50':>5} {'p99':>5} {'errors':>6}")
    for (name, route, concurrency), runs in results.items():
        middle = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
        per_round = ", ".join(f"{r['rps']:.0f}" for r in runs)
        spread = statistics.pstdev(r["rps"] for r in runs)
        print(f"{name:<13} {route:<14} {concurrency:>3} {middle['rps']:>8.0f} {middle['p50']:>5} "
              f"{middle['p99']:>5} {sum(r['errors'] for r in runs):>6}   "
              f"(req/s per round: {per_round}; spread {spread:.0f})")
    server.cleanup()


if __name__ == "__main__":
    main()
