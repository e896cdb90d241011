"""``wait``: the step waits for a signal sent to its run (``POST …/signals/{signal}``, or an approval
link), at most ``timeoutMs``, holding no thread: the run is parked until the signal wakes it or the
timeout comes. With ``signal`` the signal's payload is the step's output; with ``signals`` (several
names) it takes whichever of them came first and its output is ``{"signal": name, "payload": …}``.
On timeout the step fails, or with ``onTimeout: continue`` completes with ``{"timedOut": true}``. A
foreach step cannot run it per item (a signal names a step of a run, not an item).

Signals sent before the run gets to the step are kept and taken in the order they arrived, across
the names of a ``signals`` step; once it took one, the oldest pending signal of each of its other
names (the one sent for this step's place) is superseded: marked taken by this step, never
delivered, logged, so none is left pending for a step that ended (tolstoy_take_first_signal)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ... import logs, metrics, tracing
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
# How many signal names a ``signals`` wait may list.
MAX_SIGNALS = 20


def signal_names(config: dict) -> list[str]:
    """The signal names a wait step's config waits for: ``[signal]`` or ``signals``."""
    return [config["signal"]] if config.get("signal") is not None else list(config.get("signals") or ())


def config() -> type:
    """The schema of its config, for the API (marshmallow is imported here: a worker never loads it)."""
    from marshmallow import ValidationError, fields, validate, validates_schema

    from ...fieldtypes import Base

    name = fields.String(validate=validate.Regexp(SIGNAL_NAME, error="Must be 1 to 100 letters, digits, '_', '.' or '-'."))

    class WaitStepConfig(Base):
        """``wait``: park the run until ``signal`` is sent to it (or the first of ``signals``), at most
        ``timeoutMs``."""

        signal = name
        signals = fields.List(name, validate=validate.Length(1, MAX_SIGNALS), metadata={
            "description": f"Wait for whichever of these signals comes first (1 to {MAX_SIGNALS} names, instead "
                           "of signal); the output is {signal, payload}."})
        timeoutMs = fields.Integer(strict=True, load_default=DEFAULT_WAIT_MS,
                                   validate=validate.Range(1, MAX_WAIT_MS),
                                   metadata={"description": "At most 30 days; default 7 days."})
        onTimeout = fields.String(load_default="fail", validate=validate.OneOf(("fail", "continue")))

        @validates_schema
        def _one_of_signal_or_signals(self, data, **kwargs):
            if "signal" in data and "signals" in data:
                raise ValidationError("Wait for signal or for signals, not both.", "signals")
            if "signal" not in data and "signals" not in data:
                raise ValidationError("Missing data for required field (signal or signals).", "signal")
            names = data.get("signals") or ()
            if len(set(names)) != len(names):
                raise ValidationError("Each signal name may appear once.", "signals")

    return WaitStepConfig


def run(engine: Engine, run: Run, site: Site, step: dict, attempt: int, checkpoint: dict | None, config: dict,
        tree: Hidden = None) -> Outcome:
    """A wait step: the signal sent to the run (its payload is the output; with ``signals``, the first
    of them as ``{signal, payload}``), or, while none came, back to the queue until the timeout,
    holding no thread (the signal route wakes the run). Taking the signal locks the run's row, and
    parking happens under that lock: a signal stored meanwhile is seen, or wakes the parked run."""
    sid = step["id"]
    names = signal_names(config)
    timeout_ms = int(config.get("timeoutMs") or DEFAULT_WAIT_MS)
    on_timeout = config.get("onTimeout") or "fail"
    waits_for = {"signal": names[0]} if config.get("signal") is not None else {"signals": names}
    shown = run.conceal({**waits_for, "timeoutMs": timeout_ms, "onTimeout": on_timeout}, tree)
    parked = bool(checkpoint and checkpoint["status"] == "waiting" and checkpoint.get("wake_at"))
    with engine.atomic(run):
        taken = engine.db.one(SQL.signals.take_first, org_id=run.org_id, run_id=run.id, step_id=sid, signals=names)
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
            if tracing.ON and taken.get("trace_parent"):
                tracing.link(taken["trace_parent"], {"tolstoy.signal.id": str(taken["id"])})
            received = {"signal": taken["signal"], "signalId": str(taken["id"]), "approver": taken.get("approver")}
            # One signal: its payload is the output (as always); several: which one came, and its payload.
            output = taken["payload"] if "signal" in waits_for else {"signal": taken["signal"],
                                                                     "payload": taken["payload"]}
            outcome = engine.complete(run, step, 1, output, {**shown, **received}, 0)
        elif on_timeout == "continue":
            outcome = engine.complete(run, step, 1, {"timedOut": True}, shown, 0)
        else:
            outcome = engine.fail(run, step, 1, shown, StepFailed(
                f"Timed out after {timeout_ms} ms waiting for {awaited(shown)}", details={"name": "WaitTimedOut"}), 0)
        engine.checkpoint(run)
    if taken is None:
        metrics.count_wait_timeout(on_timeout)
        logs.step_event(execution=run.id, step_id=sid, step_type="wait", status="timed_out", duration=None,
                        error=f"waited {timeout_ms} ms for {awaited(shown)} in vain")
    return outcome


def awaited(shown: dict) -> str:
    """What a wait step waits for, in words: ``the signal 'x'`` or ``any of the signals 'x', 'y'``."""
    if "signal" in shown:
        return f"the signal {shown['signal']!r}"
    return "any of the signals " + ", ".join(repr(name) for name in shown["signals"])


KIND = Kind(run, config=config)
