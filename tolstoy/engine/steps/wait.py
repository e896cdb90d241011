"""``wait``: the step waits for a signal sent to its run (``POST …/signals/{signal}``, or an approval
link), at most ``timeoutMs``, holding no thread: the run is parked until the signal wakes it or the
timeout comes. The signal's payload is the step's output; on timeout the step fails, or with
``onTimeout: continue`` completes with ``{"timedOut": true}``. A foreach step cannot run it per
item (a signal names a step of a run, not an item)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ... import logs, metrics
from ...db.queries import SQL
from ...times import seconds_between
from ..errors import StepFailed
from .kind import Kind, Outcome, Site

if TYPE_CHECKING:
    from ...redaction import Hidden
    from ..runner import Engine, Run

log = logging.getLogger("tolstoy.engine")
# How long a wait step waits when its config says nothing (the API fills it in: 7 days).
DEFAULT_WAIT_MS = 7 * 24 * 3600 * 1000
# A wait step's signal name (it is a URL path segment: the signal routes check it too), and how long
# it may wait at most (30 days).
SIGNAL_NAME = r"^[A-Za-z0-9_.-]{1,100}$"
MAX_WAIT_MS = 30 * 24 * 3600 * 1000


def config() -> type:
    """The schema of its config, for the API (marshmallow is imported here: a worker never loads it)."""
    from marshmallow import fields, validate

    from ...fieldtypes import Base

    class WaitStepConfig(Base):
        """``wait``: park the run until ``signal`` is sent to it, at most ``timeoutMs``."""

        signal = fields.String(required=True, validate=validate.Regexp(
            SIGNAL_NAME, error="Must be 1 to 100 letters, digits, '_', '.' or '-'."))
        timeoutMs = fields.Integer(strict=True, load_default=DEFAULT_WAIT_MS,
                                   validate=validate.Range(1, MAX_WAIT_MS),
                                   metadata={"description": "At most 30 days; default 7 days."})
        onTimeout = fields.String(load_default="fail", validate=validate.OneOf(("fail", "continue")))

    return WaitStepConfig


def run(engine: Engine, run: Run, site: Site, step: dict, attempt: int, checkpoint: dict | None, config: dict,
        tree: Hidden = None) -> Outcome:
    """A wait step: the signal sent to the run (its payload is the output), or, while none came,
    back to the queue until the timeout, holding no thread (the signal route wakes the run). Taking
    the signal locks the run's row, and parking happens under that lock: a signal stored meanwhile
    is seen, or wakes the parked run."""
    sid = step["id"]
    signal = config["signal"]
    timeout_ms = int(config.get("timeoutMs") or DEFAULT_WAIT_MS)
    on_timeout = config.get("onTimeout") or "fail"
    shown = run.conceal({"signal": signal, "timeoutMs": timeout_ms, "onTimeout": on_timeout}, tree)
    parked = bool(checkpoint and checkpoint["status"] == "waiting" and checkpoint.get("wake_at"))
    with engine.atomic(run):
        taken = engine.db.one(SQL.signals.take, org_id=run.org_id, run_id=run.id, step_id=sid, signal=signal)
        if taken is None:
            remaining = seconds_between(checkpoint["wake_at"], run.db_now()) * 1000 if parked else timeout_ms
            if remaining > 0:
                run.writes.step(step_id=sid, status="waiting", attempt=1, inputs=shown,
                                wake_in_ms=int(remaining))
                if not parked:
                    run.writes.event(sid, "pending", inputs=shown)
                    log.info("waiting for a signal", extra={"execution_id": str(run.id), "step_id": sid})
                engine.pause(run, int(remaining))
                return "paused", None
        # The step's end is written under the same lock: once it is released, a signal sent
        # for this step is refused (409) instead of being stored for a step that took one
        # already, or timed out.
        if taken is not None:
            received = {"signal": signal, "signalId": str(taken["id"]), "approver": taken.get("approver")}
            outcome = engine.complete(run, step, 1, taken["payload"], {**shown, **received}, 0)
        elif on_timeout == "continue":
            outcome = engine.complete(run, step, 1, {"timedOut": True}, shown, 0)
        else:
            outcome = engine.fail(run, step, 1, shown, StepFailed(
                f"Timed out after {timeout_ms} ms waiting for the signal {shown['signal']!r}",
                details={"name": "WaitTimedOut"}), 0)
        engine.checkpoint(run)
    if taken is None:
        metrics.count_wait_timeout(on_timeout)
        logs.step_event(execution=run.id, step_id=sid, step_type="wait", status="timed_out", duration=None,
                        error=f"no signal {shown['signal']!r} within {timeout_ms} ms")
    return outcome


KIND = Kind(run, config=config)
