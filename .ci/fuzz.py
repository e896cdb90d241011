"""Fuzz the live API against its own OpenAPI document with schemathesis, in both
auth modes. Bounded (fixed seed, a per-operation example cap, a time budget) so
CI stays well under five minutes; any failure fails CI.

    .venv/bin/python .ci/fuzz.py

Starts a throw-away embedded PostgreSQL and real Gunicorn on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tolstoy.db import embedded, migrate  # noqa: E402

ADMIN = "fuzz-admin-" + "a" * 40
KEY_SECRET = "fuzz-keys-" + "k" * 40
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(port: int, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def serve(url: str, mode: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "PORT": str(port), "WEB_CONCURRENCY": "2",
           "TOLSTOY_ENV": "test", "TOLSTOY_AUTH_MODE": mode, "TOLSTOY_API_KEY_SECRET": KEY_SECRET,
           "TOLSTOY_ADMIN_TOKEN": ADMIN, "TOLSTOY_ENCRYPTION_KEY": "Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE=",
           "USE_AWS_SECRETS": "false"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "tolstoy.api.app:get_app()"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            call(port, "GET", "/health")
            return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"fuzz: gunicorn did not start in {mode} mode")


def fuzz(port: int, headers: dict, label: str) -> int:
    command = [
        str(Path(sys.executable).parent / "schemathesis"), "run", f"http://127.0.0.1:{port}/openapi.json",
        "--checks", CHECKS, "--seed", "20261125", "--max-examples", "8", "--max-time", "60",
        # One worker: Hypothesis parses lambda sources with ast, which CPython 3.11 cannot do from
        # two threads at once ("AST constructor recursion depth mismatch", a tool error, not a finding).
        "--phases", "examples,coverage,fuzzing", "--workers", "1", "--suppress-health-check", "all",
    ]
    for name, value in headers.items():
        command += ["--header", f"{name}: {value}"]
    print(f"fuzz: {label}: {' '.join(command[1:4])} …", flush=True)
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, text=True, capture_output=True,
                            env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
    summary = [line for line in result.stdout.splitlines() if line.strip()][-25:]
    print("\n".join(summary))
    print(f"fuzz: {label}: exit {result.returncode} after {time.monotonic() - started:.0f} s", flush=True)
    if result.returncode != 0:
        failures = result.stdout.split("FAILURES")[-1] if "FAILURES" in result.stdout else result.stdout
        print(failures[:20000])
    return result.returncode


def main() -> int:
    server, superuser_url = embedded.start(tempfile.mkdtemp(prefix="tolstoy-fuzz-"), database="fuzz", cleanup="delete")
    owner_url = migrate.prepare_owner(superuser_url)  # migrated as production is: by a schema owner, no superuser
    migrate.upgrade(owner_url)
    app_url = migrate.as_role(owner_url)
    failures = 0

    process, port = serve(app_url, "headers")
    try:
        org = call(port, "POST", "/organizations", {"name": "Fuzz"})
        user = call(port, "POST", "/users", {"email": "fuzz@example.com"}, {"X-Org-ID": org["id"]})
        failures += fuzz(port, {"X-Org-ID": org["id"], "X-User-ID": user["id"]}, "headers mode") != 0
    finally:
        process.terminate()
        process.wait(timeout=30)

    process, port = serve(app_url, "api_key")
    try:
        created = call(port, "POST", "/organizations", {"name": "Fuzz keys"}, {"Authorization": f"Bearer {ADMIN}"})
        key = created["apiKey"]
        user = call(port, "POST", "/users", {"email": "fuzz@example.com"}, {"Authorization": f"Bearer {key}"})
        failures += fuzz(port, {"Authorization": f"Bearer {key}", "X-Org-ID": created["id"],
                                "X-User-ID": user["id"]}, "api_key mode") != 0
    finally:
        process.terminate()
        process.wait(timeout=30)
    server.cleanup()
    print(f"fuzz: {'FAILED' if failures else 'passed'} in {2 - failures} of 2 modes")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
