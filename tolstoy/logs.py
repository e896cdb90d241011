"""Structured logs: one JSON object per line, carrying the id of the request or
flow execution in progress, with secrets masked before anything is written.

Gunicorn's access log is the one line per request (tolstoy/api/access_log.py
formats it with ``JsonFormatter``). Flow runs and steps log through
``run_event`` and ``step_event``.

Log lines are one of the exits outputs leave by, so they are masked with the
same rule (``redaction``): free-text patterns (``Bearer …``, ``password=…``),
secret-named fields, and the secrets known to the run or call in progress
(``execution(run_id, secrets)``, ``masking(secrets)``) in their encodings too.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from typing import Any

from .jsonsafe import dumps
from .redaction import Secrets, in_derived_work, mask_json, redact
from .times import now_iso

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("tolstoy_request_id", default=None)
execution_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("tolstoy_execution_id", default=None)
# The secrets of the run or call in progress: masked in every line written meanwhile.
known_secrets: contextvars.ContextVar[Secrets | None] = contextvars.ContextVar("tolstoy_known_secrets", default=None)

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
        secrets = known_secrets.get()
        entry: dict[str, Any] = {
            "time": now_iso(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(_text(record), secrets),
        }
        withheld = in_derived_work()
        if withheld:
            entry["withheld"] = True
        for key, var in (("requestId", request_id), ("executionId", execution_id)):
            if var.get() is not None:
                entry[key] = var.get()
        extras = {_camel(k): v for k, v in record.__dict__.items() if k not in _RECORD_ATTRIBUTES}
        extras.update(getattr(record, "fields", None) or {})
        for key, value in extras.items():
            entry[key] = redact(value, secrets) if isinstance(value, str) else _masked(value, secrets)
        if record.exc_info:
            entry["exception"] = (record.exc_info[0].__name__ if withheld and record.exc_info[0] else
                                  redact(self.formatException(record.exc_info), secrets))
        return dumps(entry).decode()


WITHHELD = "(withheld: written while a step worked on a value made from a secret)"


def _text(record: logging.LogRecord) -> str:
    """A record's text as written. While a step works on a config derived from a secret, the values
    put in a text may be pieces of it that no mask recognises, transformed (a URL's host in lower
    case: redaction.deriving): Tolstoy's own lines then go without their arguments, and a library's
    lines (whose text is made before it reaches us) without their text."""
    if not in_derived_work():
        return record.getMessage()
    if record.name.split(".")[0] != "tolstoy":
        return WITHHELD
    return str(record.msg) if record.args else record.getMessage()


def _masked(value: Any, secrets: Secrets | None) -> Any:
    """A structured log field as written: secret-named fields and known secrets masked, and the
    free-text rule applied to each string in it."""
    if isinstance(value, (dict, list, tuple)):
        shown = mask_json(value, secrets or ())

        def walk(item: Any) -> Any:
            if isinstance(item, dict):
                return {key: walk(child) for key, child in item.items()}
            if isinstance(item, list):
                return [walk(child) for child in item]
            return redact(item) if isinstance(item, str) else item

        return walk(shown)
    return value


# Libraries that write an INFO line per request they make: a step's call is logged once, by its own
# line (step_event), so theirs would be a second line per call to format, mask and write.
PER_REQUEST_LOGGERS = ("httpx", "httpcore")


def configure(level: str = "INFO") -> None:
    """Send every log record to stderr as JSON (replacing earlier handlers: safe to call twice).
    The per-request lines of PER_REQUEST_LOGGERS are left out unless ``level`` is DEBUG."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in PER_REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(max(root.level, logging.WARNING) if root.level > logging.DEBUG else root.level)


@contextlib.contextmanager
def execution(run_id: str, secrets: Secrets | None = None) -> Iterator[None]:
    """Tag every log line written inside the block with this execution id, and mask the run's
    known ``secrets`` in it (the set grows as the run learns more)."""
    token = execution_id.set(str(run_id))
    try:
        with masking(secrets):
            yield
    finally:
        execution_id.reset(token)


@contextlib.contextmanager
def masking(secrets: Secrets | None) -> Iterator[None]:
    """Mask these known secrets (and their encodings) in every log line written inside the block."""
    token = known_secrets.set(secrets)
    try:
        yield
    finally:
        known_secrets.reset(token)


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
