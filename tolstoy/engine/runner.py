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
the run now) stops the run at once and writes nothing more. Faults of the
database are of two kinds (tolstoy/errors.py FAULT_CLASSES). A transient one (a
statement cancelled or timed out, a serialization failure, a lost connection, a
failover) is retried in place while the lease lasts, unless it broke a
transaction (then the transaction is rolled back as a whole, with the pending
writes made in it); then the run is handed back to the queue as it was: no
attempt is spent, and a call recorded as starting that never went out is not
taken for one whose outcome is unknown. Hand-backs are counted, and capped. A
fault of the run's own data (a program limit, a data exception) counts against
that run, which fails at the recovery limit with the fault named.

One exit: everything a run writes for people to see (a step's inputs, output
and error, an execution log row, the run's error) goes through ``Writes``,
which masks it with ``redaction.mask_json`` and the run's known secrets
(``Run.secrets``: the credentials its calls used, secret-named fields of
outputs, values derived from them), as do the run's log lines (``logs``).
A value a template derived from a secret is hidden whole (``templates``); where
an output hides something, the real value is sealed next to the masked one,
and ``Run.hidden`` remembers where, so later templates reading it are marked.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import logs, metrics, times, tracing
from ..db.database import Database
from ..db.database import json as dbjson
from ..db.queries import SQL
from ..errors import DatabaseFault, DatabaseUnavailable, DataRefused
from ..redaction import (
    Hidden,
    Secrets,
    deriving,
    hidden,
    hidden_strings,
    hide,
    in_derived_work,
    mask_json,
    secret_strings,
)
from ..times import utcnow
from . import plans, sizes
from .calls import ToolClient
from .errors import LeaseLost, StepFailed, Stop
from .graph import dependencies, step_order
from .steps import KINDS, Kind, Site
from .steps.calling import spends_no_attempt
from .steps.foreach import FOREACH_MAX_ITEMS
from .steps.subflow import SUBFLOW_MAX_DEPTH
from .templates import DEFAULT_LIMITS, Limits, RenderStopped, TemplateFailure, bounded, condition, render_tracked, scope

log = logging.getLogger("tolstoy.engine")

RUN_STEP_KEY = "$flow"  # execution log rows about the run itself (not a valid step id)
# A step checkpoint in one of these is settled: a resumed run does not run that step again (run
# statuses that end a run are another list: the API's).
SETTLED_STEP_STATUSES = ("completed", "skipped", "failed")
# The checkpoint ids of a flow's onFailure steps: "onFailure.<id>" (a step id never holds a dot).
ON_FAILURE = "onFailure."
# A run handed back after a transient fault waits this long before it is claimed again, doubled per
# hand-back in a row (and per strike after a fault of its own), up to FAULT_MAX_DELAY_MS, jittered.
FAULT_DELAY_MS = 1000
FAULT_MAX_DELAY_MS = 60_000


_ITEM_SUFFIX = re.compile(r"\[[0-9]+\]\Z")


def reserved_step_key(key: str) -> bool:
    """Whether an execution log's step key is one the engine names its own rows with and no flow step
    can have: RUN_STEP_KEY (and every "$…" key, kept for the engine), ON_FAILURE + id, and item_id's
    "<id>[<n>]". A client may not write a log under one (POST /execution-logs: 400 naming stepKey);
    tests/engine/test_log_provenance.py checks every key a run's rows use is a step id or one of these."""
    return key.startswith(("$", ON_FAILURE)) or _ITEM_SUFFIX.search(key) is not None


@dataclass(kw_only=True)  # by name: the fields are easy to pass in the wrong order
class Writes:
    """Checkpoint writes waiting to go out with the next statement of this run: the run's one exit
    for what people see (checkpoints, execution log rows and the events triggers make of them), so
    each is masked here with the run's known secrets, whoever wrote it."""

    secrets: Secrets = field(default_factory=Secrets)
    # The bytes the run's checkpoints hold, and their bounds (sizes.Ledger; None: unbounded).
    ledger: sizes.Ledger | None = None
    # Step id -> its pending checkpoint, in the order last written: a foreach's transforms queue one
    # per item until the next statement, so replacing one costs the same however many wait.
    pending: dict[str, dict] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)

    @property
    def steps(self) -> list[dict]:
        """The pending checkpoints, in the order they were last written."""
        return list(self.pending.values())

    def step(self, *, real: Any = None, seal: Callable[[Any], str] | None = None, strict: bool = True,
             **values: Any) -> dict:
        """Queue a checkpoint; returns it as it will be written. With ``seal``, ``outputs`` is what the
        step returned with what is already known to be hidden masked, and ``real`` what it returned:
        when the masked output differs, the checkpoint keeps ``seal(real)`` too. sizes.TooLarge
        (nothing queued) when it would take the step or the run past a byte bound (``Engine._attempt``
        fails the step for it), unless not ``strict``: a failure's own checkpoint is always written."""
        for name in ("inputs", "outputs", "error"):
            if values.get(name) is not None:
                values[name] = mask_json(values[name], self.secrets)
        values["error"] = sizes.bounded_error(values.get("error"))
        if seal is not None and values.get("outputs") != real:
            values["sealed"] = seal(real)
        if self.ledger is not None:
            self.ledger.admit(values, strict)
        self.pending.pop(values["step_id"], None)
        self.pending[values["step_id"]] = values
        return values

    def event(self, step_key: str, status: str, inputs: dict | None = None, error: Any = None,
              duration_ms: int | None = None) -> None:
        event = {"step_key": step_key, "status": status, "inputs": mask_json(inputs or {}, self.secrets),
                 "error": sizes.bounded_error(mask_json(error, self.secrets)), "duration_ms": duration_ms}
        if self.ledger is not None:
            self.ledger.admit_event(event)
        self.events.append(event)


# SQLSTATE tolstoy_checkpoint raises when the lease is no longer this worker's.
LEASE_LOST = "TL001"


class Run:
    """A claimed run in a worker's hands."""

    def __init__(self, claimed: dict):
        self.org_id = claimed["org_id"]
        self.id = claimed["id"]
        self.flow_id = claimed["flow_id"]
        # For its trace's run span (tracing.end_run): what it runs, and since when.
        self.flow_version = claimed.get("flow_version")
        self.created_at = claimed.get("created_at")
        self.trace_parent = claimed.get("trace_parent")  # its caller's trace (flow_runs.trace_parent)
        self.user_id = claimed.get("user_id")
        # Whoever queued it may act as user_id (use their connections): flow_runs.acts_as_user.
        self.acts_as_user = bool(claimed.get("acts_as_user"))
        self.token = claimed["token"]
        self.leased_at = time.monotonic()  # when its lease was last (re)started, by this process's clock
        self.root_id = claimed["root_run_id"]
        self.variables = claimed.get("variables") or {}
        self.plan = plans.Plan(claimed["plan"])
        self.checkpoints = {c["step_id"]: c for c in claimed.get("checkpoints") or []}
        self.context: dict = {"variables": self.variables, "steps": {}}
        # Values that must not be shown: credentials, secret-named fields, values derived from them.
        self.secrets = Secrets()
        # Where each finished step's output hides a secret (only steps whose output does).
        self.hidden: dict[str, Hidden] = {}
        # What its checkpoints hold in bytes (the engine sets the bounds: Engine.run).
        self.ledger = sizes.Ledger(self.checkpoints)
        self.writes = Writes(secrets=self.secrets, ledger=self.ledger)
        self.cancel = threading.Event()  # set by the claim, the heartbeat or a checkpoint's answer
        if claimed.get("cancel_requested"):  # asked for while no worker held it: honoured at the first boundary
            self.cancel.set()
        # Faults in a row, which space the next try (tolstoy_checkpoint counts them and applies the caps).
        self.strikes = int(claimed.get("strikes") or 0)
        self.handbacks = int(claimed.get("handbacks") or 0)
        self.lost = threading.Event()  # the heartbeat could not renew the lease
        # A foreach step's items run on threads of their own: they share the writes under this lock.
        self.lock = threading.RLock()
        # The database's clock at the claim (the worker passes it), to tell which sleeping items are due.
        self.claimed_now = claimed.get("now")
        self.claimed_at = time.monotonic()
        # What providers' answers taught the rate budgets of the credentials this run's calls used, to
        # be written with its next checkpoint (Engine.checkpoint).
        self.lessons: list[dict] = []
        # The steps that declare a concurrency limit (by checkpoint id): the statement that records one's
        # end frees its slot (Engine.checkpoint). Empty for most flows, which then cost nothing more.
        self.slot_steps = {step["id"] for step in self.plan.steps if step.get("concurrency")} | {
            ON_FAILURE + step["id"] for step in self.plan.on_failure if step.get("concurrency")}

    def db_now(self) -> dt.datetime:
        """The database's clock now, as far as the worker can tell without asking."""
        if self.claimed_now is None:
            return utcnow()
        base = dt.datetime.fromisoformat(self.claimed_now) if isinstance(self.claimed_now, str) else self.claimed_now
        return base + dt.timedelta(seconds=time.monotonic() - self.claimed_at)

    def key(self, step_id: str, attempt: int) -> str:
        """The Idempotency-Key of a step attempt. A flow step's (and each of its items') is the retry
        chain's (from its root run), so a retry sends a call that was in flight under the key it was
        sent with; a failure handler's is this run's own, so a retry that fails again is alerted of
        again (docs/flows.md, Idempotency keys)."""
        owner = self.id if step_id.startswith(ON_FAILURE) else self.root_id
        return f"{owner}:{step_id}:{attempt}"

    @property
    def view(self) -> dict:
        """The context as templates see it: the outputs' hidden parts behind views (templates.scope)."""
        return scope(self.context, {"steps": self.hidden or None})

    def keep(self, step_id: str, output: Any, shown: Any) -> None:
        """What a finished step returned (``output``) and what people see of it (``shown``): later
        steps see the output; where ``shown`` hides something, templates reading it are marked,
        and the values hidden are known secrets from now on (also after a resume: the masks stored
        say where)."""
        self.context["steps"][step_id] = output
        tree = self.learn(output, shown)
        if tree is None:
            self.hidden.pop(step_id, None)
        else:
            self.hidden[step_id] = tree

    def learn(self, output: Any, shown: Any) -> Hidden:
        """Where ``shown`` (what people see of ``output``) hides something; the values it hides are
        known secrets from now on."""
        tree = hidden(output, shown)
        if tree is not None:
            self.secrets.add(hidden_strings(output, tree, shown), derived=True)
        return tree

    def conceal(self, value: Any, tree: Hidden) -> Any:
        """``value`` with what ``tree`` hides (values templates derived from a secret) masked whole;
        those values are known secrets from now on, so a tool echoing one is masked too."""
        if tree is None:
            return value
        self.secrets.add(hidden_strings(value, tree), derived=True)
        return hide(value, tree)


class Engine:
    """Executes runs claimed by a worker."""

    def __init__(self, db: Database, tools: ToolClient, worker_id: str, stopping: threading.Event | None = None,
                 lease_seconds: float = 30.0, foreach_max_items: int = FOREACH_MAX_ITEMS,
                 subflow_max_depth: int = SUBFLOW_MAX_DEPTH, template_limits: Limits = DEFAULT_LIMITS,
                 step_max_bytes: int = sizes.STEP_MAX_BYTES, run_max_bytes: int = sizes.RUN_MAX_BYTES,
                 max_recoveries: int = 3, max_handbacks: int = 20, fair_share_half_life_seconds: float = 300.0,
                 rate_limit_max_wait_seconds: float = 21600.0):
        self.db = db
        self.template_limits = template_limits
        self.step_max_bytes = step_max_bytes
        self.run_max_bytes = run_max_bytes
        self.subflow_max_depth = subflow_max_depth
        self.tools = tools
        self.worker_id = worker_id
        self.stopping = stopping or threading.Event()
        self.lease_seconds = lease_seconds
        self.foreach_max_items = foreach_max_items
        # The caps tolstoy_checkpoint applies to a run's faults in a row (TOLSTOY_MAX_RECOVERIES,
        # TOLSTOY_MAX_HANDBACKS), and the half-life of the worker time it counts (fair claims).
        self.max_recoveries = max_recoveries
        self.max_handbacks = max_handbacks
        self.fair_share_half_life_seconds = fair_share_half_life_seconds
        self.handback_delay_ms = FAULT_DELAY_MS  # tests make it short
        # The longest a step waits for its credential's rate budget, in all (TOLSTOY_RATE_LIMIT_MAX_WAIT_SECONDS).
        self.rate_limit_max_wait_seconds = rate_limit_max_wait_seconds

    # ---- writing ------------------------------------------------------------------

    def checkpoint(self, run: Run, transition: dict | None = None, subflow: dict | None = None,
                   call: dict | None = None) -> dict | None:
        """Write the run's pending checkpoints and move it, in one statement; LeaseLost when another
        worker owns it now. A transient fault is tried again while the lease lasts, then raised
        (DatabaseUnavailable: Engine.run hands the run back); inside a transaction it is raised at
        once, since the transaction is aborted and only rolling it back as a whole can help. Data the
        database refuses (DataRefused) is raised at once. With ``subflow`` (a subflow step's spec) the
        same statement also finds or queues the step's child run and parks the run while it waits for
        it (tolstoy_subflow). With ``call`` (the take of a call that starts: steps/calling.py), or when
        earlier answers taught rate budgets something (``run.lessons``), the same statement also takes
        the call's budget and writes what was learnt (tolstoy_checkpoint_call: still one statement, so
        a call whose budget has room costs none more). Returns the statement's answer."""
        transition = transition or {"action": "continue"}
        if transition.get("error") is not None:  # the run's error is shown too
            transition = {**transition, "error": sizes.bounded_error(mask_json(transition["error"], run.secrets))}
        writes = {"lease_seconds": self.lease_seconds, "half_life_seconds": self.fair_share_half_life_seconds,
                  "max_recoveries": self.max_recoveries, "max_handbacks": self.max_handbacks,
                  "steps": run.writes.steps, "events": run.writes.events, "run": transition}
        # Not past the lease as this worker last renewed it, nor longer than most of a lease from now.
        deadline = min(time.monotonic(), run.leased_at) + self.lease_seconds * 0.8
        in_transaction = self.db.current() is not None
        pause = 0.2
        while True:
            if run.lost.is_set():
                raise LeaseLost(str(run.id))
            # The slot steps whose end this statement records: it frees their slots.
            release = [sid for sid, pending in run.writes.pending.items()
                       if sid in run.slot_steps and pending["status"] != "running"] if run.slot_steps else []
            try:
                if subflow is None and (release or call is not None or run.lessons):
                    lessons = list(run.lessons)
                    # A call taking a slot, or the end of a slot step, goes through the slots' statement.
                    query, slots = ((SQL.runs.checkpoint_slots, {"release": release})
                                    if release or (call or {}).get("slot") else (SQL.runs.checkpoint_call, {}))
                    answer = self.db.scalar(query, worker=self.worker_id, org_id=run.org_id, run_id=run.id,
                                            token=run.token, writes=dbjson(writes),
                                            call=dbjson({**(call or {}), "lessons": lessons, **slots}))
                    del run.lessons[:len(lessons)]
                elif subflow is not None:
                    answer = self.db.scalar(SQL.runs.subflow, worker=self.worker_id, org_id=run.org_id,
                                            run_id=run.id, token=run.token, writes=dbjson(writes),
                                            spec=dbjson(subflow), flow_id=subflow.get("flow_id"),
                                            flow_key=subflow.get("flow_key"))
                else:
                    answer = self.db.scalar(SQL.runs.checkpoint, worker=self.worker_id, org_id=run.org_id,
                                            run_id=run.id, token=run.token, writes=dbjson(writes))
                break
            except Exception as exc:
                if getattr(exc, "sqlstate", None) == LEASE_LOST:
                    raise LeaseLost(str(run.id)) from None
                if not isinstance(exc, DatabaseUnavailable) or in_transaction:
                    raise
                if time.monotonic() + pause > deadline:
                    log.warning("checkpoint failed for the database's sake: %s", exc,
                                extra={"execution_id": str(run.id)})
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
        run.writes = Writes(secrets=run.secrets, ledger=run.ledger)
        if answer and answer.get("cancel"):
            run.cancel.set()
        return answer

    @contextlib.contextmanager
    def atomic(self, run: Run):
        """One transaction for the block: if it fails, it is rolled back, and so are the checkpoints
        the block queued (they would claim what did not happen), whether or not a checkpoint inside it
        had written them."""
        pending, events = dict(run.writes.pending), list(run.writes.events)
        try:
            with self.db.transaction():
                yield
        except BaseException:
            run.writes = Writes(secrets=run.secrets, ledger=run.ledger, pending=pending, events=events)
            raise

    def sealed(self, run: Run, value: Any) -> str:
        """``value`` encrypted for the run's checkpoint (base64: the checkpoint travels as one JSON
        document)."""
        return base64.b64encode(self.tools.seal(run.org_id, value)).decode()

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
        if tracing.ON:  # whoever finishes the run exports its span (the processes before may have died)
            tracing.end_run(run.id, flow_id=run.flow_id, version=run.flow_version, org_id=run.org_id,
                            status=status, started=run.created_at, parent=run.trace_parent)
        metrics.count_run(status)
        # The one line about its end (each line costs the worker a format, a mask and a write).
        logs.run_event(status, execution=run.id, flow_id=run.flow_id, org_id=run.org_id, status=status)

    def pause(self, run: Run, after_ms: int) -> None:
        """Back to the queue for ``after_ms`` (a delay or a retry back-off): the thread is freed."""
        self.checkpoint(run, {"action": "pause", "after_ms": max(0, int(after_ms))})

    # ---- the loop -----------------------------------------------------------------

    def run(self, claimed: dict, run: Run | None = None) -> None:
        """Advance a claimed run as far as it can go now."""
        run = run or Run(claimed)
        run.ledger.step_max, run.ledger.run_max = self.step_max_bytes, self.run_max_bytes
        # Credentials and tools are read for the run's organization only (row-level security); its
        # templates render within their budget and stop when the run is cancelled or its lease lost
        # (the heartbeat says so) or the worker stops.
        with self.db.tenant(run.org_id), logs.execution(run.id, run.secrets), \
                bounded(self.template_limits, run.cancel, run.lost, self.stopping):
            try:
                if tracing.ON:
                    # This claim's work, under the run's span (the same in every process: tracing.run_ids).
                    with tracing.span(f"claim {run.flow_id}", {"tolstoy.run.id": str(run.id),
                                                              "tolstoy.flow.id": str(run.flow_id),
                                                              "tolstoy.org.id": str(run.org_id)},
                                      parent=tracing.run_context(run.id, run.trace_parent)):
                        self._advance_until_stopped(run)
                else:
                    self._advance_until_stopped(run)
            except _Done:
                pass
            except LeaseLost:
                log.warning("lease lost", extra={"execution_id": str(run.id)})
            except Stop:
                self._hand_back(run)
            except DatabaseUnavailable as exc:
                # A transient fault is no verdict on the run: back to the queue as it was.
                self._release(run, exc, "handback", run.handbacks)
            except DataRefused as exc:
                # The run's own data: it counts against this run (and fails it at the recovery limit).
                self._release(run, exc, "fault", run.strikes)
            except Exception as exc:  # noqa: BLE001 - a bug must not leave the run 'running' forever
                log.exception("run crashed", extra={"execution_id": str(run.id)})
                error = {"name": type(exc).__name__, "message": "Internal error while running the flow."}
                try:
                    self.finish(run, "failed", error)
                except LeaseLost:
                    pass
                except Exception:  # noqa: BLE001 - what was pending may be what failed: record it without
                    run.writes = Writes(secrets=run.secrets, ledger=run.ledger)
                    try:
                        self.finish(run, "failed", error)
                    except Exception:  # noqa: BLE001 - the lease expires and another worker retries
                        log.exception("could not record the crash", extra={"execution_id": str(run.id)})

    def _advance_until_stopped(self, run: Run) -> None:
        """``_advance``; a template render stopped by a cancel, a lost lease or shutdown ends the run
        as between two steps (cancelled, left to its new owner, or handed back)."""
        try:
            self._advance(run)
        except RenderStopped:
            self.boundary(run)
            raise Stop() from None  # a render stops only for one of those; hand the run back anyway

    def _hand_back(self, run: Run) -> None:
        try:
            self.pause(run, 0)
            log.info("run handed back on shutdown", extra={"execution_id": str(run.id)})
        except LeaseLost:
            pass
        except Exception:  # noqa: BLE001 - the lease expires and another worker resumes it
            log.warning("could not hand the run back on shutdown", exc_info=True, extra={"execution_id": str(run.id)})

    def _release(self, run: Run, fault: DatabaseFault, action: str, in_a_row: int) -> None:
        """After a fault: ``handback`` (transient) or ``fault`` (the run's own data), through
        tolstoy_checkpoint, which counts it and fails the run past its cap. What the run learnt that
        is true goes with it (a step's output, an item done); what is not does not: a pending record
        that a call starts (its checkpoint failed, so the call was never sent). After a fault of the
        run's own, nothing pending goes (it is what the database refused). If writing fails, the
        lease runs out and another worker resumes the run (a recovery)."""
        log.warning("%s fault of the database (%s); the run goes back to the queue: %s",
                    "transient" if action == "handback" else "the run's own", fault.sqlstate or "no SQLSTATE",
                    fault, extra={"execution_id": str(run.id)})
        delay = times.backoff_ms(in_a_row + 1, self.handback_delay_ms, FAULT_MAX_DELAY_MS)
        error = fault.as_error()
        # The run's own events pending were the failed transition's (a finish's, say): not true now.
        run.writes.events = [e for e in run.writes.events if e["step_key"] != RUN_STEP_KEY]
        if action == "fault":  # only the records that a call was not sent (they carry no data)
            run.lessons.clear()  # what providers taught may be what the database refused
            run.writes = Writes(secrets=run.secrets, ledger=run.ledger,
                                pending={sid: s for sid, s in run.writes.pending.items()
                                         if set(s) == {"step_id", "status", "attempt"}})
        else:
            run.writes.pending = {sid: s for sid, s in run.writes.pending.items() if not s.get("call_started")}
        for attempt in ("with what is pending", "without"):
            run.writes.event(RUN_STEP_KEY, "queued", inputs={"fault": action, "afterMs": delay}, error=error)
            try:
                answer = self.checkpoint(run, {"action": action, "after_ms": delay, "error": error}) or {}
            except LeaseLost:
                return
            except Exception as exc:  # noqa: BLE001 - tried once more without what was pending, then the lease
                log.warning("could not hand the run back (%s): %s", attempt, exc, extra={"execution_id": str(run.id)})
                run.writes = Writes(secrets=run.secrets, ledger=run.ledger)
                run.lessons.clear()
                continue
            status = answer.get("status")
            if status in ("failed", "cancelled"):
                metrics.count_run(status)
                logs.run_event(status, execution=run.id, flow_id=run.flow_id, org_id=run.org_id, status=status)
            return

    def _restore(self, run: Run) -> set[str]:
        """Rebuild what finished steps returned; returns the ids of failed (or failure-skipped) steps."""
        failed: set[str] = set()
        for step_id, done in run.checkpoints.items():
            if "[" in step_id:
                continue  # an item of a foreach step: the foreach step reads its own
            if done["status"] == "completed":
                output = self.tools.unseal(run.org_id, done["sealed"]) if done.get("sealed") else done["outputs"]
                run.secrets.add(secret_strings(output))
                run.keep(step_id, output, done["outputs"])
                if step_id.startswith(ON_FAILURE):  # later onFailure steps see it under its own id too
                    run.keep(step_id[len(ON_FAILURE):], output, done["outputs"])
            elif done["status"] == "failed" or (done["status"] == "skipped" and done.get("error")):
                failed.add(step_id)  # skipped with an error: skipped because a dependency failed
        return failed

    def _advance(self, run: Run) -> None:
        failed = self._restore(run)
        outcome, error = self._walk(run, run.plan.steps, failed)
        if outcome == "paused":
            return
        if outcome == "completed":
            return self.finish(run, "completed", None)
        if run.plan.on_failure:
            handled, handler_error = self._on_failure(run, error, failed)
            if handled == "paused":
                return
            if handler_error is not None:  # kept apart: the run's error stays the original one
                error = {**error, "onFailureError": handler_error}
        self.finish(run, "failed", error)

    def _walk(self, run: Run, steps: list[dict], failed: set[str], prefix: str = "") -> tuple[str, dict | None]:
        """Run ``steps`` in dependency order: ('completed', None), ('paused', None), or ('failed', error)
        for the first critical step that failed. Checkpoint ids are the step ids with ``prefix``."""
        by_id = {s["id"]: i for i, s in enumerate(steps)}
        for step in step_order(steps):
            sid = prefix + step["id"]
            done = run.checkpoints.get(sid)
            if done and done["status"] == "failed" and step.get("critical", True) is not False:
                # Failed before this claim (a person resolved an unknown outcome as failed, or the run
                # failed before and its onFailure steps are under way).
                return "failed", {"stepId": sid, **(done.get("error") or {})}
            if done and done["status"] in SETTLED_STEP_STATUSES:
                continue
            self.boundary(run)
            if failed & {prefix + dep for dep in dependencies(steps, by_id[step["id"]])}:
                error = {"message": "A step it depends on failed"}
                run.writes.step(step_id=sid, status="skipped", attempt=1, error=error, strict=False)
                run.writes.event(sid, "skipped", error=error)
                failed.add(sid)
                continue
            outcome, error = self.run_step(run, {**step, "id": sid} if prefix else step, done)
            if outcome == "paused":
                return "paused", None
            if outcome == "completed" and prefix:
                run.context["steps"][step["id"]] = run.context["steps"][sid]
                if sid in run.hidden:
                    run.hidden[step["id"]] = run.hidden[sid]
            if outcome == "failed":
                failed.add(sid)
                if step.get("critical", True) is not False:
                    return "failed", {"stepId": sid, **error}
        return "completed", None

    def _on_failure(self, run: Run, error: dict, failed: set[str]) -> tuple[str, dict | None]:
        """The flow's onFailure steps, once the run failed with ``error``: their templates also see
        ``error`` ({message, stepId, …}) and ``failedStepId``; each is checkpointed as
        ``onFailure.<id>``. Returns ('paused', None), or ('done', the handler's error or None)."""
        run.context["error"] = {k: v for k, v in error.items() if k != "onFailureError"}
        run.context["failedStepId"] = error.get("stepId")
        if not any(cid.startswith(ON_FAILURE) for cid in run.checkpoints):
            run.writes.event(RUN_STEP_KEY, "started", inputs={"phase": "onFailure", "failedStepId": error.get("stepId")})
            metrics.count_on_failure("started")
            logs.run_event("onFailure", execution=run.id, flow_id=run.flow_id, org_id=run.org_id,
                           status="onFailure")
        outcome, handler_error = self._walk(run, run.plan.on_failure, failed, ON_FAILURE)
        if outcome == "paused":
            return "paused", None
        metrics.count_on_failure("failed" if outcome == "failed" else "completed")
        return "done", handler_error

    def boundary(self, run: Run) -> None:
        """Between steps: stop for a lost lease, a cancel, or shutdown."""
        if run.lost.is_set():
            raise LeaseLost(str(run.id))
        if run.cancel.is_set():
            self.finish(run, "cancelled", {"message": "Cancelled"})
            raise _Done()
        if self.stopping.is_set():
            raise Stop()

    # ---- one step --------------------------------------------------------------------
    #
    # One path for every step, at the top of a run or as one item of a foreach step (``_attempt``):
    # a pause that ended (its kind's ``resume``), executeIf, the config rendered, then the kind's work
    # (its ``run``) through the one table of step kinds (steps.KINDS, a module per kind in steps/); a
    # call is checkpointed as starting, then made, then its outcome decided (retry back-off, unknown
    # outcome policy, skip, fail, complete) by the same code (steps/calling.py). Where a
    # step runs changes only who puts the run back in the queue (a top-level step at once, an item's
    # foreach once no runnable item is left) and which execution log rows it writes (an item writes
    # its failures only; its checkpoint and log line are a step's).

    def run_step(self, run: Run, step: dict, checkpoint: dict | None) -> tuple[str, dict | None]:
        """Run one top-level step to a checkpoint; returns (outcome, error) where outcome is 'completed',
        'skipped', 'failed' or 'paused' (the run went back to the queue or waits)."""
        outcome, value = self._attempt(run, Site(run.context, run.view), step, checkpoint)
        if outcome == "sleep":
            self.pause(run, value)
            return "paused", None
        if outcome == "unknown":
            self.checkpoint(run, {"action": "wait"})
            metrics.count_run("waiting")
            log.warning("outcome unknown; the run waits to be resolved",
                        extra={"execution_id": str(run.id), "step_id": step["id"]})
            return "paused", None
        if outcome == "cancelled":
            self.boundary(run)  # a cancel cut the call off: the run ends cancelled (raises)
            return "paused", None
        if outcome == "completed":
            return outcome, None
        return outcome, value

    def _attempt(self, run: Run, site: Site, step: dict, checkpoint: dict | None) -> tuple[str, Any]:
        """The one step path (see above): ``step`` with its checkpoint id as its ``id``. Returns
        ('completed', (output, as shown)), ('skipped', None), ('failed', error), ('sleep', ms until
        it is due: a delay, a retry back-off), ('unknown', None: its call's outcome is unknown and it
        waits for a person), ('cancelled', None: a cancel cut its call off), or ('paused', None: the
        step put its run back itself). Its writes are queued on ``run.writes``, under ``run.lock``."""
        kind = KINDS.get(step["type"])
        attempt = checkpoint["attempt"] if checkpoint else 1
        if kind is None:
            return self.fail(run, step, attempt, None, StepFailed(f"Unknown step type {step['type']!r}"), 0)
        if site.item and not kind.item:  # a plan written past the API (which refuses it)
            return self.fail(run, step, attempt, None, StepFailed(
                f"A {step['type']} step cannot run per item of a foreach step"), 0)
        if checkpoint and checkpoint["status"] == "waiting" and kind.retries and not spends_no_attempt(checkpoint):
            attempt += 1  # a retry back-off ended (waiting for a rate budget or a slot spends no attempt)
        if tracing.ON:
            # A run's step is a child of the run's span, not of this claim's: a SIGKILLed worker never
            # exports its claim's span, and what it finished must not hang from nothing. An item's is
            # its foreach step's (the current span of the item's thread).
            with tracing.span(f"step {step['id']}", {"tolstoy.step.id": step["id"], "tolstoy.step.kind": step["type"],
                                                     "tolstoy.step.attempt": attempt},
                              parent=None if site.item else tracing.run_context(run.id, run.trace_parent)) as current:
                outcome, value = self._sized(run, site, step, kind, attempt, checkpoint)
                tracing.outcome(current, outcome)
                return outcome, value
        return self._sized(run, site, step, kind, attempt, checkpoint)

    def _sized(self, run: Run, site: Site, step: dict, kind: Kind, attempt: int,
               checkpoint: dict | None) -> tuple[str, Any]:
        try:
            return self._work(run, site, step, kind, attempt, checkpoint)
        except sizes.TooLarge as exc:
            # What it would keep (inputs, output) takes the step or the run past a byte bound: it is
            # refused before it is written (or the call sent), and the step fails naming the bound.
            return self.fail(run, step, attempt, None, exc, 0)

    def _work(self, run: Run, site: Site, step: dict, kind: Kind, attempt: int,
              checkpoint: dict | None) -> tuple[str, Any]:
        if checkpoint and checkpoint["status"] == "waiting":  # back after a pause: did it end the step?
            resumed = kind.resume(self, run, site, step, attempt, checkpoint)
            if resumed is not None:
                return resumed
        try:
            # Through the views, so an executeIf that reads a secret and fails says nothing of it.
            if step.get("executeIf") and not condition(step["executeIf"], site.view):
                return self.skip(run, site, step, attempt, event_inputs={"executeIf": step["executeIf"]})
            config = step["config"]
            rendered, tree = render_tracked(config if kind.renders is None else config[kind.renders], site.view)
        except TemplateFailure as exc:
            return self.fail(run, step, attempt, None, StepFailed(f"Template error: {exc}"), 0)
        # A config whose rendering read a secret: the step's errors and log lines are withheld.
        with deriving(tree is not None):
            return kind.run(self, run, site, step, attempt, checkpoint, rendered, tree)

    def skip(self, run: Run, site: Site, step: dict, attempt: int, inputs: Any = None,
              event_inputs: dict | None = None) -> tuple[str, None]:
        """The step does nothing this time: its executeIf (or its action's) is false."""
        with run.lock:
            run.writes.step(step_id=step["id"], status="skipped", attempt=attempt, inputs=inputs)
            if not site.item:
                run.writes.event(step["id"], "skipped", inputs=event_inputs)
        self.log_event(run, step, "skipped")
        return "skipped", None

    def complete(self, run: Run, step: dict, attempt: int, output: Any, shown_inputs: Any,
                  duration: int, concealed: Any = None, *, item: bool = False) -> tuple[str, tuple]:
        """The one place a step's output is accepted, a top-level step's or a foreach item's (``item``):
        what it returned is what later steps see (an item's, through its foreach's output); what is
        stored for people to see has secrets masked, with the real value sealed next to it.
        ``concealed`` is the output with what is already known to be hidden masked (values a template
        derived from a secret, a child run's masked outputs), else the output itself. Returns
        ('completed', (output, as shown))."""
        sid = step["id"]
        run.secrets.add(secret_strings(output))
        with run.lock:
            shown = run.writes.step(step_id=sid, status="completed", attempt=attempt, inputs=shown_inputs,
                                    outputs=output if concealed is None else concealed, duration_ms=duration,
                                    real=output, seal=lambda value: self.sealed(run, value))["outputs"]
            if not item:
                # The output is kept once, in the step's checkpoint; the log says what went in.
                run.writes.event(sid, "completed", inputs=shown_inputs if isinstance(shown_inputs, dict) else None,
                                 duration_ms=duration)
        if item:
            run.learn(output, shown)
        else:
            run.keep(sid, output, shown)
        self.log_event(run, step, "completed", duration / 1000)
        return "completed", (output, shown)

    def fail(self, run: Run, step: dict, attempt: int, inputs, exc: StepFailed, duration: int) -> tuple[str, dict]:
        """Checkpoint a failed step or item (written with the run's next statement)."""
        error = mask_json(exc.as_error(withhold=in_derived_work()), run.secrets)
        with run.lock:
            run.writes.step(step_id=step["id"], status="failed", attempt=attempt, inputs=inputs, error=error,
                            duration_ms=duration, strict=False)
            run.writes.event(step["id"], "failed", error=error, duration_ms=duration)
        self.log_event(run, step, "failed", duration / 1000, error)
        return "failed", error


class _Done(Exception):
    """The run reached an end (cancelled) between steps; nothing more to do."""
