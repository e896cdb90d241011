"""Structured logs: one JSON object per line, carrying the id of the request or
flow execution in progress, with secrets masked before anything is written.

Gunicorn's access log is the one line per request (``GunicornLogger``); the app
adds what only it knows (route template, organization) to the WSGI environ for
it. Flow runs and steps log through ``run_event`` and ``step_event``.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import ipaddress
import json
import logging
import re
import sys
from typing import Any, Iterator

from gunicorn.glogging import Logger as _GunicornBaseLogger

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("tolstoy_request_id", default=None)
execution_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("tolstoy_execution_id", default=None)

# WSGI environ keys the app fills in for the access log line.
ENV_ROUTE = "tolstoy.route"
ENV_ORG = "tolstoy.org_id"

# What must never reach a log: URL passwords, conninfo passwords, auth headers' credentials.
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@", re.IGNORECASE)
_KEY_VALUE = re.compile(
    r"""\b(password|passwd|secret|token|api[_-]?key|client_secret)(["']?\s*[=:]\s*["']?)[^\s"',&}]+""",
    re.IGNORECASE,
)
_AUTH_SCHEME = re.compile(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=:-]{4,}", re.IGNORECASE)
MASK = "***"


def redact(text: str) -> str:
    """Mask credentials in free text: ``postgresql://u:***@h``, ``password=***``, ``Bearer ***``."""
    text = _URL_PASSWORD.sub(rf"\1{MASK}@", text)
    text = _KEY_VALUE.sub(rf"\1\2{MASK}", text)
    return _AUTH_SCHEME.sub(rf"\1 {MASK}", text)


def now_iso() -> str:
    """UTC time with milliseconds, as every log line spells it."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# What every LogRecord has; anything else came from ``extra=`` and is written out.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "fields", "taskName"}


def _camel(name: str) -> str:
    """``execution_id`` → ``executionId``, so extras match the other keys' spelling."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class JsonFormatter(logging.Formatter):
    """A log record as one JSON line; ``extra={"fields": {...}}`` adds top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": now_iso(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, var in (("requestId", request_id), ("executionId", execution_id)):
            if var.get() is not None:
                entry[key] = var.get()
        extras = {_camel(k): v for k, v in record.__dict__.items() if k not in _RECORD_ATTRIBUTES}
        extras.update(getattr(record, "fields", None) or {})
        for key, value in extras.items():
            entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str = "INFO") -> None:
    """Send every log record to stderr as JSON (replacing earlier handlers: safe to call twice)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@contextlib.contextmanager
def execution(run_id: str) -> Iterator[None]:
    """Tag every log line written inside the block with this execution id."""
    token = execution_id.set(str(run_id))
    try:
        yield
    finally:
        execution_id.reset(token)


_runs = logging.getLogger("tolstoy.runs")


def run_event(event: str, *, execution: str, flow_id: Any, org_id: Any, status: str,
              duration: float | None = None, **fields: Any) -> None:
    """One JSON line about a flow run (queued, started, finished…): ids, status, duration in ms."""
    payload = {"event": event, "executionId": str(execution), "flowId": str(flow_id), "orgId": str(org_id),
               "status": status, **fields}
    if duration is not None:
        payload["durationMs"] = round(duration * 1000, 2)
    _runs.info("run %s %s", event, status, extra={"fields": payload})


def step_event(*, execution: str, step_id: str, step_type: str, status: str,
               duration: float | None = None, attempt: int | None = None, **fields: Any) -> None:
    """One JSON line about a finished step attempt of a run."""
    payload = {"event": "step", "executionId": str(execution), "stepId": step_id, "stepType": step_type,
               "status": status, **fields}
    if duration is not None:
        payload["durationMs"] = round(duration * 1000, 2)
    if attempt is not None:
        payload["attempt"] = attempt
    _runs.info("step %s %s", step_id, status, extra={"fields": payload})


class RequestContextMiddleware:
    """Puts the request id in the log context, and the route and organization where the access log finds them."""

    def process_request(self, req, resp) -> None:
        req.context.log_token = request_id.set(req.context.request_id)

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        req.env[ENV_ROUTE] = req.uri_template
        org = getattr(req.context, "org_id", None)
        if org is not None:
            req.env[ENV_ORG] = str(org)
        token = getattr(req.context, "log_token", None)
        if token is not None:
            request_id.reset(token)


def client_address(remote_addr: str | None, forwarded_for: str | None, trusted: list[str]) -> str | None:
    """The client's address: X-Forwarded-For is believed only when the peer is a trusted proxy.

    Walks X-Forwarded-For from the right (the entries our proxies appended) and
    returns the first address that is not itself a trusted proxy. A unix-socket
    peer (no address) is the local proxy, so it is trusted.
    """
    networks = [ipaddress.ip_network(item, strict=False) for item in trusted if item != "*"]

    def is_trusted(address: str | None) -> bool:
        if not address or "*" in trusted:
            return True
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        return any(ip in network for network in networks)

    if not is_trusted(remote_addr) or not forwarded_for:
        return remote_addr or None
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop):
            return hop
    return hops[0] if hops else (remote_addr or None)


class GunicornLogger(_GunicornBaseLogger):
    """Gunicorn's logger writing JSON: its own messages, and one access line per request with its id."""

    def setup(self, cfg) -> None:
        """Gunicorn's handlers, with the JSON formatter on each."""
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonFormatter())

    def access(self, resp, req, environ, request_time) -> None:
        """The request line: ids, route, status, size, duration, client; never headers or the query string."""
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        headers = {name.lower(): value for name, value in resp.headers}
        fields = {
            "requestId": headers.get("x-request-id"),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "route": environ.get(ENV_ROUTE),
            "status": int(status) if str(status).isdigit() else status,
            "bytes": getattr(resp, "sent", None),
            "durationMs": round(request_time.total_seconds() * 1000, 2),
            "client": client_address(environ.get("REMOTE_ADDR"), environ.get("HTTP_X_FORWARDED_FOR"),
                                     list(self.cfg.forwarded_allow_ips)),
            "orgId": environ.get(ENV_ORG),
            "userAgent": environ.get("HTTP_USER_AGENT"),
        }
        try:
            self.access_log.info("%s %s %s", fields["method"], fields["path"], fields["status"],
                                 extra={"fields": fields})
        except Exception:  # a log line must never fail a request
            self.error("cannot write the access log line")
