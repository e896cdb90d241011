"""The run loop: advances one claimed run step by step, a checkpoint per step.

A run is resumable at any point. What a finished step returned is never
computed again: later steps see it exactly (decrypted from ``sealed`` where it
held secrets). Steps without side effects (transforms, skips) are checkpointed
together with the next write; before any call that leaves the building, every
pending checkpoint is written with a record that the call is starting, so a
worker that dies mid-call leaves a step whose outcome is known to be unknown.
Such a step is sent again only if that is safe (an idempotent method, or a tool
that honours our Idempotency-Key); otherwise the run waits for a person.

Every write presents the run's lease token; a lost lease (another worker owns
the run now) stops the run at once and writes nothing more. Database trouble
while writing is retried until the lease would run out; the run is never
failed for it.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .. import logs, metrics
from ..db.database import Database
from ..db.database import json as dbjson
from ..db.queries import SQL
from ..errors import DatabaseUnavailable
from ..redaction import mask_json, secret_strings
from . import plans
from .calls import Tools
from .errors import LeaseLost, SkipStep, StepFailed, Stop
from .graph import dependencies, step_order
from .steps import DEFAULT_TIMEOUT_MS, IDEMPOTENT_METHODS, execute_step, step_method
from .templates import TemplateFailure, condition, render

log = logging.getLogger("tolstoy.engine")

RUN_STEP_KEY = "$flow"  # execution log rows about the run itself (not a valid step id)
FINISHED = ("completed", "skipped", "failed")
# Retry back-off never waits longer than this, whatever the policy says.
MAX_BACKOFF_MS = 3_600_000


def backoff_ms(policy: dict, attempt: int, rng: random.Random | None = None) -> int:
    """Wait before attempt ``attempt + 1``: fixed delayMs, or delayMs doubled per failed attempt;
    capped, then jittered down by up to a quarter so retries of many runs spread out."""
    delay = int(policy.get("delayMs", 1000))
    if policy.get("backoffStrategy", "exponential") == "exponential":
        delay = delay * (2 ** min(attempt - 1, 30))
    delay = min(delay, MAX_BACKOFF_MS)
    return int(delay * (1 - 0.25 * (rng or random).random()))


@dataclass
class Writes:
    """Checkpoint writes waiting to go out with the next statement of this run."""

    steps: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)

    def step(self, **values: Any) -> None:
        self.steps = [s for s in self.steps if s["step_id"] != values["step_id"]] + [values]

    def event(self, step_key: str, status: str, inputs: dict | None = None, error: Any = None,
              duration_ms: int | None = None) -> None:
        self.events.append({"step_key": step_key, "status": status, "inputs": inputs or {}, "error": error,
                            "duration_ms": duration_ms})


class Run:
    """A claimed run in a worker's hands."""

    def __init__(self, claimed: dict):
        self.org_id = claimed["org_id"]
        self.id = claimed["id"]
        self.flow_id = claimed["flow_id"]
        self.user_id = claimed.get("user_id")
        self.token = claimed["token"]
        self.root_id = claimed["root_run_id"]
        self.variables = claimed.get("variables") or {}
        self.plan = plans.Plan(claimed["plan"])
        self.checkpoints = {c["step_id"]: c for c in claimed.get("checkpoints") or []}
        self.context: dict = {"variables": self.variables, "steps": {}}
        self.secrets: list[str] = []  # values that must not be shown: credentials, secret-named fields
        self.writes = Writes()
        self.cancel = threading.Event()  # set by the heartbeat or a checkpoint's answer
        self.lost = threading.Event()  # the heartbeat could not renew the lease

    def key(self, step_id: str, attempt: int) -> str:
        """The Idempotency-Key of a step attempt: from the root of a retry chain, so a retry repeats it."""
        return f"{self.root_id}:{step_id}:{attempt}"


class Engine:
    """Executes runs claimed by a worker."""

    def __init__(self, db: Database, tools: Tools, worker_id: str, stopping: threading.Event | None = None,
                 lease_seconds: float = 30.0):
        self.db = db
        self.tools = tools
        self.worker_id = worker_id
        self.stopping = stopping or threading.Event()
        self.lease_seconds = lease_seconds

    # ---- writing ------------------------------------------------------------------

    def checkpoint(self, run: Run, transition: dict | None = None) -> None:
        """Write the run's pending checkpoints and move it, in one statement; LeaseLost when another
        worker owns it now. Database trouble is retried while the lease lasts."""
        writes = {"lease_seconds": self.lease_seconds, "steps": run.writes.steps, "events": run.writes.events,
                  "run": transition or {"action": "continue"}}
        deadline = time.monotonic() + self.lease_seconds * 0.8
        pause = 0.2
        while True:
            if run.lost.is_set():
                raise LeaseLost(str(run.id))
            try:
                answer = self.db.scalar(SQL.runs.checkpoint, worker=self.worker_id, org_id=run.org_id,
                                        run_id=run.id, token=run.token, writes=dbjson(writes))
                break
            except DatabaseUnavailable as exc:
                if time.monotonic() + pause > deadline:
                    log.warning("checkpoint failed, leaving the run to its lease: %s", exc,
                                extra={"execution_id": str(run.id)})
                    raise LeaseLost(str(run.id)) from None
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
        run.writes = Writes()
        if answer and answer.get("cancel"):
            run.cancel.set()

    def log_event(self, run: Run, step: dict, status: str, seconds: float | None = None,
                  error: Any = None) -> None:
        """The JSON log line and the metrics of a finished step."""
        metrics.observe_step(seconds or 0.0, status, step["type"])
        logs.step_event(execution=run.id, step_id=step["id"], step_type=step["type"], status=status,
                        duration=seconds, error=(error or {}).get("message") if isinstance(error, dict) else None)

    def finish(self, run: Run, status: str, error: dict | None) -> None:
        """End the run (with whatever checkpoints are pending)."""
        run.writes.event(RUN_STEP_KEY, status, error=error)
        self.checkpoint(run, {"action": "finish", "status": status, "error": error})
        metrics.count_run(status)
        logs.run_event(status, execution=run.id, flow_id=run.flow_id, org_id=run.org_id, status=status)
        log.info("run finished", extra={"execution_id": str(run.id), "status": status})

    def pause(self, run: Run, after_ms: int) -> None:
        """Back to the queue for ``after_ms`` (a delay or a retry back-off): the thread is freed."""
        self.checkpoint(run, {"action": "pause", "after_ms": max(0, int(after_ms))})

    # ---- the loop -----------------------------------------------------------------

    def run(self, claimed: dict, run: Run | None = None) -> None:
        """Advance a claimed run as far as it can go now."""
        run = run or Run(claimed)
        # Credentials and tools are read for the run's organization only (row-level security).
        with self.db.tenant(run.org_id), logs.execution(run.id):
            try:
                self._advance(run)
            except _Done:
                pass
            except LeaseLost:
                log.warning("lease lost", extra={"execution_id": str(run.id)})
            except Stop:
                self._hand_back(run)
            except Exception as exc:  # noqa: BLE001 - a bug must not leave the run 'running' forever
                log.exception("run crashed", extra={"execution_id": str(run.id)})
                try:
                    self.finish(run, "failed", {"name": type(exc).__name__,
                                                "message": "Internal error while running the flow."})
                except Exception:  # noqa: BLE001 - the lease expires and another worker retries
                    log.exception("could not record the crash", extra={"execution_id": str(run.id)})

    def _hand_back(self, run: Run) -> None:
        try:
            self.pause(run, 0)
            log.info("run handed back on shutdown", extra={"execution_id": str(run.id)})
        except LeaseLost:
            pass

    def _restore(self, run: Run) -> set[str]:
        """Rebuild what finished steps returned; returns the ids of failed (or failure-skipped) steps."""
        failed: set[str] = set()
        for step_id, done in run.checkpoints.items():
            if done["status"] == "completed":
                output = self.tools.unseal(run.org_id, done["sealed"]) if done.get("sealed") else done["outputs"]
                run.context["steps"][step_id] = output
                run.secrets += secret_strings(output)
            elif done["status"] == "failed" or (done["status"] == "skipped" and done.get("error")):
                failed.add(step_id)  # skipped with an error: skipped because a dependency failed
        return failed

    def _advance(self, run: Run) -> None:
        steps = run.plan.steps
        failed = self._restore(run)
        by_id = {s["id"]: i for i, s in enumerate(steps)}
        for step in step_order(steps):
            sid = step["id"]
            done = run.checkpoints.get(sid)
            if done and done["status"] in FINISHED:
                continue
            self._boundary(run)
            if failed & set(dependencies(steps, by_id[sid])):
                error = {"message": "A step it depends on failed"}
                run.writes.step(step_id=sid, status="skipped", attempt=1, error=error)
                run.writes.event(sid, "skipped", error=error)
                failed.add(sid)
                continue
            outcome, error = self.run_step(run, step, done)
            if outcome == "paused":
                return
            if outcome == "failed":
                failed.add(sid)
                if step.get("critical", True) is not False:
                    return self.finish(run, "failed", {"stepId": sid, **error})
        self.finish(run, "completed", None)

    def _boundary(self, run: Run) -> None:
        """Between steps: stop for a lost lease, a cancel, or shutdown."""
        if run.lost.is_set():
            raise LeaseLost(str(run.id))
        if run.cancel.is_set():
            self.finish(run, "cancelled", {"message": "Cancelled"})
            raise _Done()
        if self.stopping.is_set():
            raise Stop()

    # ---- one step --------------------------------------------------------------------

    def run_step(self, run: Run, step: dict, checkpoint: dict | None) -> tuple[str, dict | None]:
        """Run one step to a checkpoint; returns (outcome, error) where outcome is 'completed',
        'skipped', 'failed' or 'paused' (the run went back to the queue or waits)."""
        sid = step["id"]
        attempt = checkpoint["attempt"] if checkpoint else 1
        if checkpoint and checkpoint["status"] == "waiting":
            if step["type"] == "delay":
                return self._complete(run, step, attempt, {"delayedMs": step["config"]["ms"]},
                                      checkpoint.get("inputs"), 0)
            attempt += 1  # a retry back-off ended
        try:
            if step.get("executeIf") and not condition(step["executeIf"], run.context):
                run.writes.step(step_id=sid, status="skipped", attempt=attempt)
                run.writes.event(sid, "skipped", inputs={"executeIf": step["executeIf"]})
                self.log_event(run, step, "skipped")
                return "skipped", None
            inputs = render(step["config"], run.context)
        except TemplateFailure as exc:
            return self.fail(run, step, attempt, None, StepFailed(f"Template error: {exc}"), 0)
        shown_inputs = mask_json(inputs, run.secrets)
        if step["type"] == "delay":
            run.writes.step(step_id=sid, status="waiting", attempt=attempt, inputs=shown_inputs,
                            wake_in_ms=int(inputs["ms"]))
            run.writes.event(sid, "started", inputs=shown_inputs)
            self.pause(run, int(inputs["ms"]))
            return "paused", None
        if step["type"] == "transform":
            run.writes.event(sid, "started", inputs=shown_inputs)
            return self._complete(run, step, attempt, inputs["output"], shown_inputs, 0)
        if checkpoint and checkpoint["status"] == "running" and checkpoint.get("call_started_at"):
            decided = self._unknown_outcome(run, step, attempt, checkpoint, inputs)
            if decided is not None:
                return decided
        return self._call(run, step, attempt, inputs, shown_inputs)

    def _unknown_outcome(self, run: Run, step: dict, attempt: int, checkpoint: dict,
                         inputs: dict) -> tuple[str, dict | None] | None:
        """A call started and its worker vanished: send it again only where that is safe."""
        method = step_method(step, inputs, run.plan)
        tool = run.plan.tool_of(step)
        default = "retry" if method in IDEMPOTENT_METHODS or (tool or {}).get("honors_idempotency_key") else "wait"
        policy = step.get("onUnknownOutcome") or default
        if policy == "retry":
            return None
        error = {"name": "OutcomeUnknown",
                 "message": f"The worker stopped during the {method} call of attempt {attempt}; whether it took "
                            "effect is unknown."}
        if policy == "fail":
            return self.fail(run, step, attempt, checkpoint.get("inputs"), StepFailed(error["message"],
                             details={"name": "OutcomeUnknown"}), 0)
        run.writes.step(step_id=step["id"], status="outcome_unknown", attempt=attempt,
                        inputs=checkpoint.get("inputs"), error=error)
        run.writes.event(step["id"], "pending", inputs={"attempt": attempt}, error=error)
        self.checkpoint(run, {"action": "wait"})
        metrics.count_run("waiting")
        log.warning("outcome unknown; the run waits to be resolved",
                    extra={"execution_id": str(run.id), "step_id": step["id"]})
        return "paused", None

    def _call(self, run: Run, step: dict, attempt: int, inputs: dict, shown_inputs: Any) -> tuple[str, dict | None]:
        sid = step["id"]
        # Every pending checkpoint, and the fact that this call starts, are durable before it does.
        run.writes.step(step_id=sid, status="running", attempt=attempt, inputs=shown_inputs, call_started=True)
        run.writes.event(sid, "started", inputs={**(shown_inputs if isinstance(shown_inputs, dict) else {}),
                                                "attempt": attempt})
        self.checkpoint(run)
        if run.lost.is_set():
            raise LeaseLost(str(run.id))
        started = time.perf_counter()
        timeout = step.get("timeoutMs") or DEFAULT_TIMEOUT_MS
        try:
            output, secrets = execute_step(self.tools, run, step, inputs, run.key(sid, attempt), timeout)
        except SkipStep:
            run.writes.step(step_id=sid, status="skipped", attempt=attempt, inputs=shown_inputs)
            run.writes.event(sid, "skipped")
            self.log_event(run, step, "skipped")
            return "skipped", None
        except StepFailed as exc:
            duration = int((time.perf_counter() - started) * 1000)
            if run.cancel.is_set() or run.lost.is_set():
                self._boundary(run)
            policy = step.get("retryPolicy") or {}
            if exc.retryable and attempt <= int(policy.get("maxRetries", 0)):
                wait = backoff_ms(policy, attempt)
                error = exc.as_error()
                run.writes.step(step_id=sid, status="waiting", attempt=attempt, inputs=shown_inputs, error=error,
                                wake_in_ms=wait)
                run.writes.event(sid, "failed", error={**error, "attempt": attempt, "retryInMs": wait},
                                 duration_ms=duration)
                self.log_event(run, step, "failed", duration / 1000, error)
                self.pause(run, wait)
                return "paused", None
            return self.fail(run, step, attempt, shown_inputs, exc, duration)
        run.secrets += secrets
        duration = int((time.perf_counter() - started) * 1000)
        return self._complete(run, step, attempt, output, shown_inputs, duration)

    def _complete(self, run: Run, step: dict, attempt: int, output: Any, shown_inputs: Any,
                  duration: int) -> tuple[str, None]:
        """Keep what a step returned: later steps see it as it is; what is stored for people to see
        has secrets masked, with the real value sealed next to it."""
        sid = step["id"]
        run.context["steps"][sid] = output
        run.secrets += secret_strings(output)
        shown = mask_json(output, run.secrets)
        # Base64, because the checkpoint travels as one JSON document.
        sealed = base64.b64encode(self.tools.seal(run.org_id, output)).decode() if shown != output else None
        run.writes.step(step_id=sid, status="completed", attempt=attempt, inputs=shown_inputs, outputs=shown,
                        sealed=sealed, duration_ms=duration)
        # The output is kept once, in the step's checkpoint; the log says what went in.
        run.writes.event(sid, "completed", inputs=shown_inputs if isinstance(shown_inputs, dict) else None,
                         duration_ms=duration)
        self.log_event(run, step, "completed", duration / 1000)
        return "completed", None

    def fail(self, run: Run, step: dict, attempt: int, inputs, exc: StepFailed, duration: int) -> tuple[str, dict]:
        """Checkpoint a failed step (written with the run's next statement)."""
        error = mask_json(exc.as_error(), run.secrets)
        run.writes.step(step_id=step["id"], status="failed", attempt=attempt, inputs=inputs, error=error,
                        duration_ms=duration)
        run.writes.event(step["id"], "failed", error=error, duration_ms=duration)
        self.log_event(run, step, "failed", duration / 1000, error)
        return "failed", error


class _Done(Exception):
    """The run reached an end (cancelled) between steps; nothing more to do."""


def seconds_between(later: str | dt.datetime, earlier: str | dt.datetime) -> float:
    """Seconds between two database timestamps (so the worker never mixes in its own clock)."""
    parse = lambda v: dt.datetime.fromisoformat(v) if isinstance(v, str) else v  # noqa: E731
    return (parse(later) - parse(earlier)).total_seconds()
