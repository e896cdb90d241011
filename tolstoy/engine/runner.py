"""The run loop: advances one claimed flow run step by step, checkpointing each
step in flow_run_steps and logging it in execution_logs before the next starts.

A run is resumable at any point: finished checkpoints are never run again; a
step that was started but not finished (the worker died) runs again with the
same attempt number, so the Idempotency-Key it sends is the same; delays and
retry back-offs put the run back in the queue instead of holding a worker.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

from .. import logs, metrics
from ..db import database as dbmod
from ..db.queries import SQL
from ..db.stores import write_execution_log
from ..redaction import mask_json
from ..times import utcnow
from .calls import Tools
from .errors import LeaseLost, SkipStep, StepFailed, Stop
from .graph import dependencies, step_order
from .steps import execute_step
from .templates import TemplateFailure, condition, render

log = logging.getLogger("tolstoy.engine")

RUN_STEP_KEY = "$flow"  # execution log rows about the run itself (not a valid step id)
FINISHED = ("completed", "skipped", "failed")


def backoff_ms(policy: dict, attempt: int) -> int:
    """Wait before attempt ``attempt + 1``: fixed delayMs, or delayMs doubled per failed attempt."""
    delay = int(policy.get("delayMs", 1000))
    if policy.get("backoffStrategy", "exponential") == "exponential":
        return delay * (2 ** (attempt - 1))
    return delay


class Engine:
    """Executes runs claimed by a worker."""

    def __init__(self, db: dbmod.Database, tools: Tools, worker_id: str, stopping: threading.Event | None = None):
        self.db = db
        self.tools = tools
        self.worker_id = worker_id
        self.stopping = stopping or threading.Event()

    # ---- runs -------------------------------------------------------------------

    def log(self, run: dict, step_key: str, status: str, inputs: Any = None, outputs: Any = None,
            error: Any = None, duration_ms: int | None = None, step_type: str = "unknown") -> None:
        """Append one execution log row for this run; finished steps and run changes also
        go to the JSON log and the metrics."""
        if step_key == RUN_STEP_KEY:
            metrics.count_run(status)
            logs.run_event(status, execution=run["id"], flow_id=run["flow_id"], org_id=run["org_id"], status=status)
        elif status in FINISHED:
            seconds = (duration_ms or 0) / 1000
            metrics.observe_step(seconds, status, step_type)
            logs.step_event(execution=run["id"], step_id=step_key, step_type=step_type, status=status,
                            duration=seconds, error=(error or {}).get("message") if isinstance(error, dict) else None)
        write_execution_log(self.db, org_id=run["org_id"], flow_id=run["flow_id"], user_id=run["user_id"],
                            execution_id=run["id"], step_key=step_key, status=status, inputs=inputs,
                            outputs=outputs, error=error, duration_ms=duration_ms)

    def save(self, run: dict, step_id: str, status: str, attempt: int, *, inputs=None, outputs=None,
             error=None, wake_at=None, duration_ms=None) -> None:
        """Write a checkpoint; LeaseLost when this worker no longer owns the run."""
        finished = utcnow() if status in FINISHED else None
        saved = self.db.one(
            SQL.runs.save_step, org_id=run["org_id"], run_id=run["id"], step_id=step_id, status=status,
            attempt=attempt, inputs=dbmod.json(inputs), outputs=dbmod.json(outputs), error=dbmod.json(error),
            wake_at=wake_at, finished_at=finished, duration_ms=duration_ms, worker=self.worker_id,
        )
        if saved is None:
            raise LeaseLost(str(run["id"]))

    def boundary(self, run: dict) -> bool:
        """At a step boundary: False when cancel was requested; LeaseLost/Stop as they apply."""
        state = self.db.scalar(SQL.runs.holds_lease, org_id=run["org_id"], id=run["id"], worker=self.worker_id)
        if state is None:
            raise LeaseLost(str(run["id"]))
        if state == "cancel":
            return False
        if self.stopping.is_set():
            raise Stop()
        return True

    def pause(self, run: dict, until: dt.datetime) -> tuple[str, None]:
        """Back to the queue until ``until`` (a delay or a retry back-off), unless cancel was asked."""
        if not self.boundary(run):
            self.finish(run, "cancelled", self.stored_outputs(run), {"message": "Cancelled"})
        else:
            self.release(run, until)
        return "paused", None

    def release(self, run: dict, run_after: dt.datetime) -> None:
        """Put the run back in the queue until run_after."""
        self.db.rowcount(SQL.runs.release, org_id=run["org_id"], id=run["id"], worker=self.worker_id,
                         run_after=run_after)

    def stored_outputs(self, run: dict) -> dict:
        """The completed steps' outputs as checkpointed (secrets scrubbed), keyed by step id."""
        return {row["step_id"]: row["outputs"]
                for row in self.db.all(SQL.runs.steps, org_id=run["org_id"], run_id=run["id"])
                if row["status"] == "completed"}

    def finish(self, run: dict, status: str, outputs: dict | None, error: dict | None) -> None:
        """End the run and log it, in one transaction."""
        with self.db.transaction():
            done = self.db.one(SQL.runs.finish, org_id=run["org_id"], id=run["id"], worker=self.worker_id,
                               status=status, outputs=dbmod.json(outputs), error=dbmod.json(error))
            if done is None:
                raise LeaseLost(str(run["id"]))
            self.log(run, RUN_STEP_KEY, status, outputs=outputs, error=error)
        log.info("run finished", extra={"execution_id": str(run["id"]), "status": status})

    def run(self, run: dict) -> None:
        """Advance a claimed run as far as it can go now, acting for the run's organization."""
        with self.db.tenant(run["org_id"]), logs.execution(run["id"]):
            self._advance(run)

    def _advance(self, run: dict) -> None:
        try:
            self._run(run)
        except LeaseLost:
            log.warning("lease lost", extra={"execution_id": str(run["id"])})
        except Stop:
            self.release(run, utcnow())
            log.info("run handed back on shutdown", extra={"execution_id": str(run["id"])})
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the run 'running' forever
            log.exception("run crashed", extra={"execution_id": str(run["id"])})
            try:
                self.finish(run, "failed", self.stored_outputs(run),
                            {"name": type(exc).__name__, "message": "Internal error while running the flow."})
            except Exception:  # noqa: BLE001 - the lease expires and another worker retries
                log.exception("could not record the crash", extra={"execution_id": str(run["id"])})

    def _run(self, run: dict) -> None:
        org_id = run["org_id"]
        steps = self.db.scalar(SQL.runs.version_steps, org_id=org_id, flow_id=run["flow_id"],
                               version=run["flow_version"])
        checkpoints = {row["step_id"]: row for row in self.db.all(SQL.runs.steps, org_id=org_id, run_id=run["id"])}
        if run["claims"] == 1 and not checkpoints:
            self.log(run, RUN_STEP_KEY, "running", inputs=run["variables"])
        context = {"variables": run["variables"], "steps": {}}
        failed: set[str] = set()
        by_id = {s["id"]: i for i, s in enumerate(steps)}
        for step in step_order(steps):
            sid = step["id"]
            done = checkpoints.get(sid)
            if done and done["status"] in FINISHED:
                if done["status"] == "completed":
                    context["steps"][sid] = done["outputs"]
                elif done["status"] == "failed" or (done["status"] == "skipped" and done["error"]):
                    failed.add(sid)  # skipped with an error: skipped because a dependency failed
                continue
            if not self.boundary(run):
                return self.finish(run, "cancelled", self.stored_outputs(run), {"message": "Cancelled"})
            if failed & set(dependencies(steps, by_id[sid])):
                self.save(run, sid, "skipped", 1, error={"message": "A step it depends on failed"})
                self.log(run, sid, "skipped", error={"message": "A step it depends on failed"})
                failed.add(sid)
                continue
            outcome, error = self.run_step(run, step, done, context)
            if outcome == "paused":
                return
            if outcome == "failed":
                failed.add(sid)
                if step.get("critical", True) is not False:
                    return self.finish(run, "failed", self.stored_outputs(run), {"stepId": sid, **error})
        self.finish(run, "completed", self.stored_outputs(run), None)

    def run_step(self, run: dict, step: dict, checkpoint: dict | None, context: dict) -> tuple[str, dict | None]:
        """Run one step to a checkpoint; returns (outcome, error) where outcome is
        'completed', 'skipped', 'failed' or 'paused' (the run went back to the queue)."""
        sid = step["id"]
        attempt = checkpoint["attempt"] if checkpoint else 1
        if checkpoint and checkpoint["status"] == "waiting":
            if checkpoint["wake_at"] > utcnow():
                return self.pause(run, checkpoint["wake_at"])
            if step["type"] == "delay":
                self.save(run, sid, "completed", attempt, inputs=checkpoint["inputs"],
                          outputs={"delayedMs": step["config"]["ms"]})
                self.log(run, sid, "completed", inputs=checkpoint["inputs"], outputs={"delayedMs": step["config"]["ms"]},
                         step_type="delay")
                context["steps"][sid] = {"delayedMs": step["config"]["ms"]}
                return "completed", None
            attempt += 1  # a retry back-off ended
        try:
            if step.get("executeIf") and not condition(step["executeIf"], context):
                self.save(run, sid, "skipped", attempt)
                self.log(run, sid, "skipped", inputs={"executeIf": step["executeIf"]}, step_type=step["type"])
                return "skipped", None
            inputs = render(step["config"], context)
        except TemplateFailure as exc:
            return self.fail(run, step, attempt, None, StepFailed(f"Template error: {exc}"), 0)
        if step["type"] == "delay":
            wake = utcnow() + dt.timedelta(milliseconds=int(inputs["ms"]))
            self.save(run, sid, "waiting", attempt, inputs=inputs, wake_at=wake)
            self.log(run, sid, "started", inputs=inputs)
            return self.pause(run, wake)
        key = f"{run['id']}:{sid}:{attempt}"
        # Credentials an earlier step of this claim sent may flow into later inputs and outputs.
        known_secrets = run.setdefault("secrets", [])
        logged_inputs = mask_json(inputs, known_secrets)
        self.save(run, sid, "running", attempt, inputs=logged_inputs)
        self.log(run, sid, "started", inputs={**logged_inputs, "attempt": attempt})
        started = time.perf_counter()
        try:
            output, secrets = execute_step(self.tools, run["org_id"], step, inputs, context, key)
        except SkipStep:
            self.save(run, sid, "skipped", attempt, inputs=logged_inputs)
            self.log(run, sid, "skipped", inputs=logged_inputs, step_type=step["type"])
            return "skipped", None
        except StepFailed as exc:
            duration = int((time.perf_counter() - started) * 1000)
            policy = step.get("retryPolicy") or {}
            if exc.retryable and attempt <= int(policy.get("maxRetries", 0)):
                wake = utcnow() + dt.timedelta(milliseconds=backoff_ms(policy, attempt))
                self.save(run, sid, "waiting", attempt, inputs=logged_inputs, error=exc.as_error(), wake_at=wake)
                self.log(run, sid, "failed", inputs=logged_inputs,
                         error={**exc.as_error(), "attempt": attempt, "retryAt": wake.isoformat()},
                         duration_ms=duration)
                return self.pause(run, wake)
            return self.fail(run, step, attempt, logged_inputs, exc, duration)
        duration = int((time.perf_counter() - started) * 1000)
        # Later steps see the real output; what is stored and logged has secrets scrubbed.
        context["steps"][sid] = output
        known_secrets.extend(secrets)
        stored = mask_json(output, known_secrets)
        self.save(run, sid, "completed", attempt, inputs=logged_inputs, outputs=stored, duration_ms=duration)
        self.log(run, sid, "completed", inputs=logged_inputs, outputs=stored, duration_ms=duration,
                 step_type=step["type"])
        return "completed", None

    def fail(self, run: dict, step: dict, attempt: int, inputs, exc: StepFailed, duration: int) -> tuple[str, dict]:
        """Checkpoint and log a failed step."""
        error = exc.as_error()
        self.save(run, step["id"], "failed", attempt, inputs=inputs, error=error, duration_ms=duration)
        self.log(run, step["id"], "failed", inputs=inputs, error=error, duration_ms=duration, step_type=step["type"])
        return "failed", error
