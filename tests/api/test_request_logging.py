"""Structured logs: JSON lines with request and execution ids, Gunicorn's access
line, the client address behind trusted proxies, and no secrets."""

from __future__ import annotations

import json

import pytest
from falcon import testing
from support import json_log_lines

from tolstoy.api.app import create_app
from tolstoy.db.database import Database


@pytest.fixture
def captured():
    """Every log record as the JSON line the app would write."""
    with json_log_lines() as lines:
        yield lines


def test_app_logs_carry_the_request_id(config, captured, tmp_path):
    # A pool on a server that does not exist: the request's warning is logged, with its id.
    db = Database(f"postgresql://nobody:pw-123@/none?host={tmp_path}", min_size=0, max_size=1, timeout=0.3)
    db.open()
    try:
        client = testing.TestClient(create_app(config, db))
        result = client.simulate_get("/users", headers={"X-Org-ID": "00000000-0000-4000-8000-000000000001",
                                                        "X-Request-ID": "trace-me-1",
                                                        "Authorization": "Bearer tok-abcdef"})
    finally:
        db.close()
    assert result.status_code == 503
    lines = [line for line in captured() if line["logger"] == "tolstoy.errors"]
    assert lines and all(line["requestId"] == "trace-me-1" for line in lines)
    everything = json.dumps(captured())
    assert "pw-123" not in everything and "tok-abcdef" not in everything
