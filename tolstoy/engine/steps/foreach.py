"""``foreach``: the step runs its item ``step`` once per item of ``items`` (rendered first, to a
list), ``concurrency`` at a time on threads of its own, each item through the same step path as a
top-level step (Engine._attempt) with its own checkpoint (``<step>[<index>]``), so a resumed run
runs only the unfinished items. Its output is the list of the items' outputs. An item sleeping or
waiting for a person holds no thread: once the runnable items are done, the run goes back to the
queue until the first one is due."""

from __future__ import annotations

import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ... import metrics
from ...errors import DatabaseFault
from ...redaction import secret_strings
from ...times import seconds_between
from .. import sizes
from ..errors import LeaseLost, StepFailed
from ..templates import scope
from .kind import Kind, Outcome, Site

if TYPE_CHECKING:
    from ...redaction import Hidden
    from ..runner import Engine, Run

# A foreach step refuses more items than this (TOLSTOY_FOREACH_MAX_ITEMS).
FOREACH_MAX_ITEMS = 10_000


def config() -> type:
    """The schema of its config, and of the step it runs per item, for the API (marshmallow is imported
    here: a worker never loads it). The item step's config is checked with its kind's schema."""
    from marshmallow import ValidationError, fields, validate, validates_schema

    from ...fieldtypes import Base, JSONObject, RetryPolicySchema, StrictBoolean, json_or_template, load_config_for_type, text
    from . import ITEM_STEP_TYPES, step_configs

    def _not_foreach(value: str) -> None:
        if value == "foreach":
            raise ValidationError("A foreach step cannot run a foreach step; use a subflow.")
        validate.OneOf(ITEM_STEP_TYPES)(value)

    class ItemStepSchema(Base):
        """The step a foreach runs per item: a step without id, dependsOn or critical."""

        type = fields.String(required=True, validate=_not_foreach)
        name = text(0, 200, allow_none=True)
        config = JSONObject(required=True)
        executeIf = text(1, 2000, allow_none=True)
        retryPolicy = fields.Nested(RetryPolicySchema, allow_none=True)
        timeoutMs = fields.Integer(strict=True, allow_none=True, validate=validate.Range(1, 3_600_000))
        onUnknownOutcome = fields.String(allow_none=True, validate=validate.OneOf(("wait", "retry", "fail")))

        @validates_schema
        def _config_matches_type(self, data, **kwargs):
            load_config_for_type(data, step_configs())

    class ForeachStepConfig(Base):
        """``foreach``: run ``step`` once per item of ``items``, ``concurrency`` at a time."""

        items = fields.Raw(required=True, validate=json_or_template(
            list, "Must be a list, or a template (at most 2000 characters) that renders to one."))
        step = fields.Nested(ItemStepSchema, required=True)
        concurrency = fields.Integer(strict=True, load_default=1, validate=validate.Range(1, 50))
        continueOnError = StrictBoolean(load_default=False)

    return ForeachStepConfig


def item_id(step_id: str, index: int) -> str:
    """The checkpoint id of one item of a foreach step (step ids never hold brackets)."""
    return f"{step_id}[{index}]"


def run(engine: Engine, run: Run, site: Site, step: dict, attempt: int, checkpoint: dict | None, items: Any,
        items_hidden: Hidden = None) -> Outcome:
    """Run a foreach step's item step once per item, ``concurrency`` at a time, each item its own
    checkpoint (``<step>[<index>]``), so a resumed run runs only the unfinished items. An item
    sleeping (a delay, a retry back-off) or waiting (an unknown outcome) holds no thread: once
    the runnable items are done, the run goes back to the queue until the first one is due. An
    item the ``items`` template derived from a secret is hidden in its item's scope."""
    sid = step["id"]
    config = step["config"]
    if not isinstance(items, list):
        return engine.fail(run, step, 1, None, StepFailed(
            f"foreach items must be a list, not {type(items).__name__}"), 0)
    if len(items) > engine.foreach_max_items:
        return engine.fail(run, step, 1, {"items": len(items)}, StepFailed(
            f"foreach has {len(items)} items, more than the limit of {engine.foreach_max_items} "
            "(TOLSTOY_FOREACH_MAX_ITEMS)", details={"name": "TooManyItems"}), 0)
    inner = config["step"]
    concurrency = max(1, min(int(config.get("concurrency") or 1), 50))
    shown_inputs: dict = {"items": len(items), "concurrency": concurrency}
    if sid not in run.checkpoints:  # goes out with the first item's write
        run.writes.step(step_id=sid, status="running", attempt=1, inputs=shown_inputs)
        run.writes.event(sid, "started", inputs=shown_inputs)
    started = time.perf_counter()
    results: list = [None] * len(items)
    concealed: list = [None] * len(items)  # each item's output as its checkpoint shows it
    failures: dict[int, dict] = {}
    sleeping: dict[int, float] = {}  # index -> ms until due
    unknown: list[int] = []
    todo: list[tuple[int, dict | None]] = []
    now = run.db_now()
    for index in range(len(items)):
        done = run.checkpoints.get(item_id(sid, index))
        status = done["status"] if done else None
        if status == "completed":
            output = engine.tools.unseal(run.org_id, done["sealed"]) if done.get("sealed") else done["outputs"]
            results[index], concealed[index] = output, done["outputs"]
            run.secrets.add(secret_strings(output))
            run.learn(output, done["outputs"])
        elif status == "skipped":
            pass
        elif status == "failed":
            failures[index] = done.get("error") or {}
        elif status == "outcome_unknown":
            unknown.append(index)
        elif status == "waiting" and done.get("wake_at") and seconds_between(done["wake_at"], now) > 0:
            sleeping[index] = seconds_between(done["wake_at"], now) * 1000
        else:
            todo.append((index, done))
    keep_going = bool(config.get("continueOnError"))
    halt = threading.Event()  # an item failed and the step does not continue on errors
    not_run = False
    lost = False
    fault: DatabaseFault | None = None
    if todo and not (failures and not keep_going):
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="foreach") as pool:
            # Each item runs in a copy of this thread's context: the tenant the run acts for.
            whole = items_hidden is True
            futures = [(index, pool.submit(contextvars.copy_context().run, _item, engine, run, inner, sid, index,
                                           items[index], True if whole else (items_hidden or {}).get(index),
                                           done, halt, keep_going))
                       for index, done in todo]
            for index, future in futures:
                try:
                    kind, value = future.result()
                except LeaseLost:
                    lost = True
                    halt.set()
                    continue
                except DatabaseFault as exc:
                    # No item starts after it; those in flight finish, and what they return is
                    # kept when the run is handed back (Engine.run).
                    fault = fault or exc
                    halt.set()
                    continue
                if kind == "completed":
                    results[index], concealed[index] = value
                elif kind == "failed":
                    failures[index] = value
                elif kind == "sleep":
                    sleeping[index] = value
                elif kind == "unknown":
                    unknown.append(index)
                elif kind in ("not_run", "cancelled"):
                    not_run = True
    if lost or run.lost.is_set():
        raise LeaseLost(str(run.id))
    if fault is not None:
        raise fault
    if run.cancel.is_set() or (not_run and engine.stopping.is_set()):
        engine.boundary(run)
    duration = int((time.perf_counter() - started) * 1000)
    # A run past its byte bound has no room for another item's output: the step fails whatever
    # continueOnError says (each further item would fail the same way).
    full = sorted(index for index, error in failures.items() if error.get("name") == sizes.RUN_FULL)
    if failures and (not keep_going or full):
        first = full[0] if full else min(failures)
        error = failures[first]
        return engine.fail(run, step, 1, shown_inputs, StepFailed(
            f"Item {first} failed: {error.get('message', 'failed')}",
            details={"item": first, "failed": len(failures), "itemError": error}), duration)
    if unknown:
        run.writes.event(sid, "pending", inputs={"outcomeUnknown": sorted(unknown)})
        engine.checkpoint(run, {"action": "wait"})
        metrics.count_run("waiting")
        return "paused", None
    if sleeping:
        engine.pause(run, int(min(sleeping.values())))
        return "paused", None
    shown_inputs["failed"] = len(failures)
    return engine.complete(run, step, 1, results, shown_inputs, duration, concealed)

def _item(engine: Engine, run: Run, inner: dict, sid: str, index: int, item: Any, item_hidden: Hidden,
          done: dict | None, halt: threading.Event, keep_going: bool) -> Outcome:
    """One item of a foreach step, on a thread of its pool: the one step path (``_attempt``), at the
    site of the item (its templates also see ``item`` and ``index``); ('not_run', None) when the
    step stops starting items (an item failed, a cancel, a lost lease, shutdown)."""
    if halt.is_set() or run.cancel.is_set() or run.lost.is_set() or engine.stopping.is_set():
        return "not_run", None
    context = {**run.context, "item": item, "index": index}
    site = Site(context, scope(context, {"steps": run.hidden or None, "item": item_hidden}), item=True)
    outcome, value = engine._attempt(run, site, {**inner, "id": item_id(sid, index)}, done)
    if outcome == "failed" and (not keep_going or value.get("name") == sizes.RUN_FULL):
        halt.set()  # no new item starts; those in flight finish
    return outcome, value


KIND = Kind(run, renders="items", config=config)
