"""Structured logs: JSON lines with request and execution ids, Gunicorn's access
line, the client address behind trusted proxies, and no secrets."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging

import httpx
import pytest
from gunicorn.config import Config as GunicornConfig
from support import json_log_lines

from tolstoy import logs, redaction
from tolstoy.api import access_log


@pytest.fixture
def captured():
    """Every log record as the JSON line the app would write."""
    with json_log_lines() as lines:
        yield lines


@pytest.mark.parametrize("text, secret", [
    ("connect postgresql://app:hunter2@db.internal:5432/tolstoy failed", "hunter2"),
    ("conninfo host=db user=app password=hunter2 dbname=x", "hunter2"),
    ('{"password": "hunter2"}', "hunter2"),
    ("Authorization: Bearer sk_live_abcdef123456", "sk_live_abcdef123456"),
    ("Authorization: Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy"),
])
def test_secrets_are_masked(text, secret):
    masked = redaction.redact(text)
    assert secret not in masked and redaction.MASK in masked


def test_redaction_keeps_harmless_text():
    assert redaction.redact("GET /users 200 in 3 ms") == "GET /users 200 in 3 ms"
    assert redaction.redact("postgresql://app@db/tolstoy") == "postgresql://app@db/tolstoy"


def test_lines_are_json_with_the_ids_in_context(captured):
    log = logging.getLogger("tolstoy.test")
    token = logs.request_id.set("req-42")
    try:
        with logs.execution("run-7"):
            log.warning("retrying with postgresql://u:topsecret@h/db")
    finally:
        logs.request_id.reset(token)
    log.info("outside")
    first, second = captured()
    assert first["requestId"] == "req-42" and first["executionId"] == "run-7"
    assert first["level"] == "warning" and first["logger"] == "tolstoy.test"
    assert "topsecret" not in json.dumps(first)
    assert "requestId" not in second and "executionId" not in second


def test_extras_become_keys(captured):
    logging.getLogger("tolstoy.engine").info("run finished", extra={"execution_id": "e9", "status": "failed"})
    (line,) = captured()
    assert (line["executionId"], line["status"], line["message"]) == ("e9", "failed", "run finished")


def test_run_and_step_events(captured):
    logs.run_event("finished", execution="e1", flow_id="f1", org_id="o1", status="completed", duration=1.5)
    logs.step_event(execution="e1", step_id="fetch", step_type="http_request", status="failed",
                    duration=0.25, attempt=2, error="timeout")
    run, step = captured()
    assert run["executionId"] == "e1" and run["status"] == "completed" and run["durationMs"] == 1500.0
    assert (step["stepId"], step["attempt"], step["durationMs"], step["error"]) == ("fetch", 2, 250.0, "timeout")


@pytest.mark.parametrize("remote, forwarded, trusted, expected", [
    ("127.0.0.1", "203.0.113.9", ["127.0.0.1"], "203.0.113.9"),
    # A client's own X-Forwarded-For entry is not believed: the proxy appended the real address.
    ("127.0.0.1", "6.6.6.6, 203.0.113.9", ["127.0.0.1"], "203.0.113.9"),
    # Two trusted hops (load balancer, then Nginx).
    ("127.0.0.1", "203.0.113.9, 10.0.1.5", ["127.0.0.1", "10.0.0.0/16"], "203.0.113.9"),
    # Not from a trusted proxy: the header is ignored.
    ("198.51.100.7", "203.0.113.9", ["127.0.0.1"], "198.51.100.7"),
    ("127.0.0.1", None, ["127.0.0.1"], "127.0.0.1"),
    # A unix socket has no peer address: it is the local proxy.
    ("", "203.0.113.9", ["127.0.0.1"], "203.0.113.9"),
])
def test_client_address_trusts_forwarded_for_only_from_proxies(remote, forwarded, trusted, expected):
    assert access_log.client_address(remote, forwarded, trusted) == expected


class FakeResponse:
    status = "201 Created"
    sent = 123
    headers = [("Content-Type", "application/json"), ("X-Request-ID", "rid-9")]


def access_line(environ: dict, milliseconds: int) -> str:
    """The access line Gunicorn's logger (Tolstoy's class) writes for a FakeResponse to ``environ``."""
    cfg = GunicornConfig()
    cfg.set("accesslog", "-")
    logger = access_log.GunicornLogger(cfg)
    stream = io.StringIO()
    logger.access_log.handlers[0].setStream(stream)
    logger.access(FakeResponse(), None, environ, dt.timedelta(milliseconds=milliseconds))
    return stream.getvalue()


def test_gunicorn_access_line_is_json_with_the_request_id():
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/users", "QUERY_STRING": "token=abc",
               "RAW_URI": "/users?token=abc", "SERVER_PROTOCOL": "HTTP/1.0", "REMOTE_ADDR": "127.0.0.1",
               "HTTP_X_FORWARDED_FOR": "203.0.113.9", "HTTP_AUTHORIZATION": "Bearer tok-secret",
               access_log.ENV_ROUTE: "/users", access_log.ENV_ORG: "org-1"}
    written = access_line(environ, 12)
    line = json.loads(written)
    assert line["requestId"] == "rid-9" and line["status"] == 201 and line["route"] == "/users"
    assert line["client"] == "203.0.113.9" and line["orgId"] == "org-1" and line["durationMs"] == 12.0
    assert "tok-secret" not in written and "token=abc" not in written


def test_an_access_line_masks_a_secret_in_any_of_its_strings():
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/approve/password=hunter2", "REMOTE_ADDR": "127.0.0.1",
               "HTTP_USER_AGENT": "probe Bearer abcdefghijkl", access_log.ENV_ROUTE: "/users"}
    written = access_line(environ, 1)
    line = json.loads(written)
    assert "hunter2" not in written and "abcdefghijkl" not in written
    assert line["path"] == "/approve/password=***" and line["message"] == "GET /approve/password=*** 201"
    assert line["userAgent"] == "probe Bearer ***" and line["route"] == "/users" and line["client"] == "127.0.0.1"


def test_gunicorns_logger_formats_only_the_handlers_gunicorn_made():
    """A handler another party attached to Gunicorn's loggers (a logconfig's, a test runner's capture) keeps its
    formatter: setting JSON on it re-formatted pytest's captured logs for every later test in the process."""
    foreign = logging.StreamHandler(io.StringIO())
    plain = logging.Formatter("%(message)s")
    foreign.setFormatter(plain)
    error_log = logging.getLogger("gunicorn.error")
    error_log.addHandler(foreign)
    try:
        cfg = GunicornConfig()
        cfg.set("accesslog", "-")
        logger = access_log.GunicornLogger(cfg)
        assert foreign.formatter is plain
        assert [type(h.formatter) for h in logger.error_log.handlers if getattr(h, "_gunicorn", False)] == [
            logs.JsonFormatter]
    finally:
        error_log.removeHandler(foreign)


def test_libraries_write_no_info_line_per_request(httpserver, capsys):
    """A step's call is logged once, by the step's own line (logs.step_event): the HTTP library's
    INFO line per request ("HTTP Request: POST …") was a second JSON line per call for the worker to
    format, mask and write under the handler's lock. Its warnings and errors still pass."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    try:
        logs.configure()
        httpserver.expect_request("/call").respond_with_json({"ok": True})
        with httpx.Client() as client:
            assert client.post(httpserver.url_for("/call"), json={}).status_code == 200
        logging.getLogger("httpx").warning("kept")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    finally:
        root.handlers[:], level, libraries = saved
        root.setLevel(level)
        for name, was in libraries.items():
            logging.getLogger(name).setLevel(was)
    assert [line["message"] for line in lines if line["logger"].split(".")[0] in ("httpx", "httpcore")] == ["kept"]
