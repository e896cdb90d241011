"""The run lifecycle: every change of a run's state asked for from outside the
run loop, in one place that the API, triggers and replays (and any command)
call. Each change is one SQL function that holds the run's row while it
decides (sql/runs.sql names them); this module only prepares its arguments
(what a person's outputs show and seal), counts the change in the metrics and
turns a refusal into an error of the domain (engine/errors.py), which the API
translates to HTTP.

- ``queue``: a new run, a retry's or a replay's (tolstoy_queue_run: quotas,
  Idempotency-Key, the plan as it is now). Schedules and inbound webhooks
  queue through the same function inside their own statements
  (tolstoy_fire_schedules, sql/triggers.sql), subflow steps through
  tolstoy_subflow.
- ``retry``: a failed or cancelled run again, from its finished steps.
- ``rerun``: a finished run again from one of its steps (or a child's step, or one foreach item),
  keeping the outputs of the steps before it, its calls new effects (tolstoy_queue_run with
  ``rerunning``; what is kept and run again is reruns.py's, which also previews it).
- ``cancel``: a run and the runs below it (tolstoy_cancel_run).
- ``resolve``: what became of a call whose outcome is unknown
  (tolstoy_resolve_step).
- ``move``: a parked run to another version of its flow, or what that would do (tolstoy_move_run).
- ``send_signal``: a signal for a run's wait step, stored, waking the run
  parked for it (tolstoy_send_signal, db/functions/signals.sql).

The run loop's own moves (checkpoint, pause, finish, hand back) are
tolstoy_checkpoint's, in runner.py.
"""

from __future__ import annotations

from typing import Any

from .. import metrics
from ..db import database as dbmod
from ..db.database import Database
from ..db.queries import SQL
from ..redaction import mask_json, secret_strings
from ..times import iso
from . import reruns
from .concurrency import render_key
from .errors import (
    BadMoveRequest,
    LinkUsed,
    MoveRefused,
    NoKeyToSeal,
    NoSuchRun,
    RunStateConflict,
)
from .vault import Vault

# A run that ended in one of these may be retried.
RETRYABLE = ("failed", "cancelled")


def concurrency_key(concurrency: dict | None, variables: dict) -> str | None:
    """The run's concurrency key: the flow's ``concurrency.key`` template rendered over the run's
    ``variables`` (as a step's templates see them), or None when the flow has no key.
    ConcurrencyKeyRefused when it renders to no key (concurrency.render_key)."""
    template = (concurrency or {}).get("key")
    if template is None:
        return None
    return render_key(template, {"variables": variables}, "The flow's", "the run's variables")


def queue(db: Database, *, org_id, flow_id, version: int, user_id, variables: dict, key: str | None = None,
          retry_of=None, acts_as_user: bool = False, rerun: dict | None = None,
          concurrency: dict | None = None, trace_parent: str | None = None) -> dict:
    """Queue a run of ``version`` (or find the one an Idempotency-Key ``key``, or a retry of
    ``retry_of``, already made; ``created`` says which) as the unit of work's last statement. The run
    records ``user_id``, and may use that user's connections only with ``acts_as_user``. ``rerun``: a
    re-run's spec (reruns.Level.spec). ``concurrency``: the flow's (flows.concurrency), whose key is
    rendered over ``variables`` here (concurrency_key); the limits the database reads itself.
    ``trace_parent``: the caller's W3C traceparent (tracing.caller): the run's spans join that trace."""
    run = db.one(SQL.runs.queue, commit=True, org_id=org_id, flow_id=flow_id, flow_version=version,
                 user_id=user_id, variables=dbmod.json(variables), idempotency_key=key, retry_of=retry_of,
                 acts_as_user=acts_as_user, rerun=dbmod.json(rerun),
                 concurrency_key=concurrency_key(concurrency, variables), trace_parent=trace_parent)
    if run["created"]:
        metrics.count_run("queued")
    return run


def retry(db: Database, original: dict, *, user_id, acts_as_user: bool, concurrency: dict | None = None,
          trace_parent: str | None = None) -> dict:
    """A new run of ``original``'s plan that starts with its finished steps and sends the same
    Idempotency-Keys (one retry per run: retrying it again finds the same retry). RunStateConflict
    unless it failed or was cancelled. ``trace_parent``: the caller's (queue)."""
    if original["status"] not in RETRYABLE:
        raise RunStateConflict(
            f"Only failed or cancelled executions can be retried (this one is {original['status']}).")
    return queue(db, org_id=original["org_id"], flow_id=original["flow_id"], version=original["flow_version"],
                 user_id=user_id, variables=original["variables"], retry_of=original["id"],
                 acts_as_user=acts_as_user, concurrency=concurrency, trace_parent=trace_parent)


def rerun(db: Database, original: dict, from_step: str, *, user_id, acts_as_user: bool,
          variables: dict | None = None, changes: dict[str, dict] | None = None, version: int | None = None,
          key: str | None = None, dry_run: bool = False, check=None, concurrency: dict | None = None,
          trace_parent: str | None = None) -> dict:
    """A new run of ``original`` (a finished run of the organization) that keeps the outputs of the
    steps not downstream of ``from_step`` and runs the rest again, reaching into a subflow step's child
    (``call/charge``) or one foreach item (``each[7]``); its calls are new effects (new
    Idempotency-Keys). ``variables`` replace the run's; ``changes`` give steps new configs (by path,
    each passed to ``check``: the API's flow-save validation); ``version`` takes the flow's steps of
    that version. With ``dry_run``, writes nothing and returns the preview (reruns.preview) instead
    of the run. NoSuchRun (no such version), RunStateConflict (not finished),
    reruns.RerunRefused (the request names what cannot be)."""
    if original["status"] not in reruns.FINISHED:
        raise RunStateConflict(
            f"Only finished executions can be re-run (this one is {original['status']}).")
    source = db.one(SQL.runs.rerun_source, org_id=original["org_id"], id=original["id"])
    if source is None:
        raise NoSuchRun("Execution")
    steps = None
    if version is not None and version != original["flow_version"]:
        found = db.one(SQL.flows.get_version, org_id=original["org_id"], flow_id=original["flow_id"], version=version)
        if found is None:
            raise reruns.RerunRefused("version", f"The flow has no version {version}.")
        steps = found["steps"]
    elif version is not None:
        version = None  # the run's own version: its own plan
    level = reruns.plan(db, original["org_id"], source, from_step, steps=steps, changes=changes, check=check)
    variables = original["variables"] if variables is None else variables
    if dry_run:
        return {"rerunOf": original["id"], "fromStep": from_step,
                "flowVersion": version or original["flow_version"],
                **reruns.preview(db, original["org_id"], level, variables)}
    return queue(db, org_id=original["org_id"], flow_id=original["flow_id"],
                 version=version or original["flow_version"], user_id=user_id, variables=variables, key=key,
                 acts_as_user=acts_as_user, rerun=level.spec(), concurrency=concurrency,
                 trace_parent=trace_parent)


def cancel(db: Database, *, org_id, flow_id, run_id, user_id) -> dict:
    """Cancel a run and the runs below it: at once when queued, sleeping or waiting; within one
    heartbeat when running. Returns the run (its status ``cancelled``, or still ``running`` until its
    worker sees the cancel). NoSuchRun, or RunStateConflict when it had finished."""
    answer = db.scalar(SQL.runs.cancel, commit=True, org_id=org_id, flow_id=flow_id, id=run_id, user_id=user_id)
    if answer is None:
        raise NoSuchRun("Execution")
    if not answer["changed"]:
        raise RunStateConflict(f"The execution already finished with status {answer['status']}.")
    for _ in range(answer["descendants"] + (answer["status"] == "cancelled")):
        metrics.count_run("cancelled")
    return answer["run"]


def resolve(db: Database, vault: Vault | None, *, org_id, flow_id, run_id, step_id: str, user_id, outcome: str,
            outputs: Any = None, message: str | None = None) -> dict:
    """Say what became of a call whose outcome is unknown: ``succeeded`` (with what the step
    returned: later steps see it; secrets in it are masked where shown and sealed), ``failed`` (with
    ``message``) or ``retry`` (send it again: same attempt and Idempotency-Key); the run is queued
    again. Returns the run. NoSuchRun (the run, or no step of it waiting for a resolution),
    RunStateConflict (the run is not waiting), NoKeyToSeal."""
    shown = sealed = error = None
    key_missing = False
    if outcome == "succeeded":
        shown = mask_json(outputs, secret_strings(outputs))
        if shown != outputs:
            if vault is None:
                key_missing = True
            else:
                sealed = vault.seal(org_id, outputs)
    elif outcome == "failed":
        error = {"name": "OutcomeUnknown", "message": message or "Resolved as failed.", "resolvedBy": str(user_id)}
    answer = db.scalar(SQL.runs.resolve, commit=True, org_id=org_id, flow_id=flow_id, id=run_id, step_id=step_id,
                       user_id=user_id, outcome=outcome, outputs=dbmod.json(shown), sealed=sealed,
                       error=dbmod.json(error), key_missing=key_missing)
    if answer is None:
        raise NoSuchRun("Execution")
    refused = answer.get("refused")
    if refused == "status":
        raise RunStateConflict(f"The execution is {answer['status']}, not waiting for a resolution.")
    if refused == "step":
        raise NoSuchRun("Step waiting for a resolution")
    if refused == "key":
        raise NoKeyToSeal("Outputs holding secrets need TOLSTOY_ENCRYPTION_KEY to be kept.")
    return answer["run"]


# Why a parked run waits (flow_runs.waiting_for, set and cleared by the trigger flow_runs_waiting_for when
# the run parks and leaves; db/functions/checkpoint.sql): the run's waitingFor, the run list's filter and
# the metrics' labels. In the order the trigger prefers them when several steps wait: a person first,
# then another run, then time. rateLimit: a call waiting for its credential's rate budget (its step's
# inputs say which: {toolId, scope}; until: when the call may go). concurrency: a queued run waiting for a
# slot of its flow's concurrency limits ({key, limit} or {flowLimit}, stepId null; set by the claim:
# db/functions/concurrency.sql), or of a step's ({key, limit}, stepId the step's: set by
# tolstoy_checkpoint_slots, db/functions/step_slots.sql).
WAITING_KINDS = ("outcomeUnknown", "signal", "child", "rateLimit", "retry", "delay", "concurrency")


def waiting_for(run: dict) -> dict | None:
    """Why a run is parked, as the API shows it: ``{<kind>: what, "stepId", "since", "until"}`` (what: the
    signal name or names, the child run's id, or the step's id; until: null when only an event ends it),
    or None when it is not parked. ``run`` holds the columns as sql/runs.sql names them (waiting_kind, …)."""
    kind = run.get("waiting_kind")
    if kind is None:
        return None
    return {kind: run["waiting_on"], "stepId": run["waiting_step"], "since": iso(run["waiting_since"]),
            "until": iso(run["waiting_until"])}


# Why a run cannot move, by tolstoy_move_run's refusal (the run's status fills in {status}).
_NOT_PARKED = {
    "status": "Only a parked execution can move to another version; this one is {status}.",
    "child": "The execution waits for a child run of a subflow step; it cannot move to another version until "
             "that child ends.",
    "parked": "The execution is {status} but no step of it is parked (waiting for a signal, a delay, a retry "
              "or a resolution); only a parked execution can move to another version.",
}


def move(db: Database, *, org_id, flow_id, run_id, version: int, user_id, drop_steps: list[str] = (),
         dry_run: bool = False) -> dict:
    """Move a parked run to ``version`` of its flow, holding its row (tolstoy_move_run): its plan becomes
    the version's, checkpoints of kept steps stay, those ``drop_steps`` names are discarded, the move is
    logged as ``user_id``'s. ``dry_run``: only the answer. Returns {moved, diff, run}. NoSuchRun;
    BadMoveRequest (no such version; a dropSteps name the move does not discard); RunStateConflict (not
    parked); MoveRefused (checkpoints it would discard that drop_steps does not name)."""
    answer = db.scalar(SQL.runs.move, commit=True, org_id=org_id, flow_id=flow_id, id=run_id, version=version,
                       drop_steps=list(drop_steps), dry_run=dry_run, user_id=user_id)
    if answer is None:
        raise NoSuchRun("Execution")
    refused = answer.get("refused")
    if refused == "version":
        raise BadMoveRequest("version", f"The flow has no version {version}.")
    if refused == "drop_steps":
        raise BadMoveRequest("dropSteps", "The move discards no checkpoint of " + ", ".join(
            repr(s) for s in answer["strays"][:10]) + ": name only steps it removes or whose output no longer fits.")
    if refused == "drop":
        diff = answer["diff"]
        raise MoveRefused("Moving would discard what the execution recorded of " + ", ".join(
            repr(s) for s in diff["mustDrop"]) + "; name them in dropSteps to move anyway.", diff)
    if refused:
        raise RunStateConflict(_NOT_PARKED[refused].format(status=answer.get("status")))
    return answer


def send_signal(db: Database, *, org_id, flow_id, run_id, signal: str, payload: Any, source: str, user_id=None,
                approver: str | None = None, key: str | None = None, link_id=None,
                trace_parent: str | None = None) -> tuple[dict, bool]:
    """Send ``signal`` with ``payload`` to a run as the unit of work's last statement: stored, the run
    woken when a wait step of it is parked for it (else its wait step takes it when it gets there),
    and logged as ``user_id``'s (``source``: api or link; ``approver`` and ``link_id`` for an approval
    link). Returns (the signal ``{id, signal, created_at, run_id}``, new); a repeated Idempotency-Key
    ``key`` returns the signal it sent, not new. NoSuchRun; RunStateConflict (the key sent another
    signal, the run finished, or no unfinished wait step of it is left for this signal); LinkUsed.
    ``trace_parent``: the sender's W3C traceparent (tracing.caller): the wait step taking it links to it."""
    answer = db.scalar(SQL.signals.send, commit=True, org_id=org_id, flow_id=flow_id, id=run_id, signal=signal,
                       payload=dbmod.json(payload), user_id=user_id, approver=approver, idempotency_key=key,
                       link_id=link_id, source=source, trace_parent=trace_parent)
    if answer is None:
        raise NoSuchRun("Execution")
    refused = answer.get("refused")
    if refused == "key":
        raise RunStateConflict("This Idempotency-Key was used for another signal of this execution.")
    if refused == "link":
        raise LinkUsed("This approval link was used already.")
    if refused == "finished":
        raise RunStateConflict(f"The execution already finished with status {answer['status']}; it takes no signal.")
    if refused == "waiting":
        raise RunStateConflict(
            f"The execution is not waiting for the signal {signal!r}: no wait step of it that has not finished "
            "waits for it" + (" (a signal of that name is pending already)." if answer["pending"] else "."))
    if answer["created"]:
        metrics.count_signal(source)
    return answer["signal"], answer["created"]
