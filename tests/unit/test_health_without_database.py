"""Health and status routes when no database answers: liveness stays up, readiness says 503."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from falcon import testing

from tolstoy.api.app import create_app
from tolstoy.config import Config
from tolstoy.db.database import Database

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture(params=["socket", "port"])
def broken_client(request):
    """An app whose pool points at nothing: a socket directory that does not exist, or a closed port."""
    url = {
        "socket": "postgresql://nobody@/tolstoy?host=/nonexistent/tolstoy-test-socket-dir",
        "port": "postgresql://nobody:pw-not-shown@127.0.0.1:1/tolstoy",
    }[request.param]
    config = Config.from_env({"DATABASE_URL": url, "TOLSTOY_ENV": "test"})
    db = Database(url, min_size=1, max_size=2, timeout=1)
    db.open()  # without wait: the pool keeps trying in the background
    yield testing.TestClient(create_app(config, db)), url
    db.close()


def test_unreachable_database_gives_503_on_status_routes(broken_client):
    client, url = broken_client
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:  # each check waits for the pool's timeout
        results = dict(zip(
            ("/status", "/status/detailed", "/detailed", "/organizations"),
            pool.map(client.simulate_get, ("/status", "/status/detailed", "/detailed", "/organizations")), strict=True,
        ))
    assert time.monotonic() - started < 30
    for path in ("/status", "/status/detailed", "/detailed"):
        result = results[path]
        assert result.status_code == 503, (path, result.text)
        body = result.json
        assert set(body) == {"status", "message", "timestamp"}, body
        assert body["status"] == "unhealthy"
        assert isinstance(body["message"], str) and body["message"]
        assert TIMESTAMP.match(body["timestamp"])
        assert url not in result.text and "pw-not-shown" not in result.text
        assert result.headers.get("X-Request-ID")
    # A data route answers with the error body, never a 500.
    data = results["/organizations"]
    assert data.status_code == 503, data.text
    assert set(data.json) == {"statusCode", "error", "message"}
    assert data.json["statusCode"] == 503 and data.json["error"] == "Service Unavailable"


def test_health_needs_no_database(broken_client):
    client, _ = broken_client
    started = time.monotonic()
    result = client.simulate_get("/health")
    assert result.status_code == 200 and result.json == {"status": "ok"}
    assert time.monotonic() - started < 0.5  # no wait for the pool
    for path in ("/version", "/openapi.json", "/docs"):
        assert client.simulate_get(path).status_code == 200, path
