"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families


def require_program(name: str, *also: str) -> str:
    """The path of a program the test needs; skipped without it, but failed under CI=true,
    where .ci/run installs every program the suite uses."""
    found = shutil.which(name) or next((path for path in also if os.path.exists(path)), None)
    if found:
        return found
    message = f"{name} is not installed (.ci/run installs it with apt-get)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def samples(text: str) -> dict:
    """{(name, frozenset(labels)): value} from the Prometheus text format."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict, name: str, **labels) -> float:
    """One sample's value (0 when absent)."""
    return found.get((name, frozenset(labels.items())), 0.0)


def scrape(client) -> dict:
    """GET /metrics through a test client, parsed."""
    result = client.simulate_get("/metrics")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/plain")
    return samples(result.text)


def free_port() -> int:
    """A TCP port nothing listens on (yet) on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 30) -> None:
    """Wait until something accepts connections on 127.0.0.1:port; fail if ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"the process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"nothing listened on port {port} within {timeout} s")


def trickle(count: int, pause: float):
    """A pytest-httpserver handler whose answer sends one byte every ``pause`` seconds, ``count``
    times: a tool that never stalls long enough for a per-read timeout to fire."""
    from werkzeug import Response

    def handler(request):
        def body():
            for _ in range(count):
                yield b" "
                time.sleep(pause)
        return Response(body(), content_type="application/json")
    return handler
