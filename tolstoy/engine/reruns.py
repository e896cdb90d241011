"""Re-running a finished run from a step: what the new run keeps, what it runs again, and what it
would send again (the dry run's preview). lifecycle.rerun queues what ``plan`` decides; the API's
dry run answers what ``preview`` says of the same plan, so the two cannot disagree on which steps
run.

``fromStep`` names a step of the run (``charge``), one item of a foreach step (``each[7]``), or a
step of the child run a subflow step queued (``call/charge``, and deeper: ``a/b/c``). The step and
every step that depends on it (transitively, by dependsOn or by default order: graph.py) run again;
the others keep their recorded outputs when they have any (a step that failed, or never ran, has
none: it runs too). Reaching into a child, the subflow step runs again and its child is a re-run of
the original's child from the named step; into an item, the foreach step runs again with all its
items' checkpoints but that one's.

A re-run is a run of its own, never a retry: its root is itself, so every call it sends carries a new
Idempotency-Key (docs/flows.md, Re-running from a step)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from ..db.database import Database
from ..db.database import json as dbjson
from ..db.queries import SQL
from .calls import fill_endpoint
from .errors import StepFailed
from .graph import dependencies, step_order
from .steps.calling import idempotent
from .templates import ANY_STEP, TemplateFailure, condition, render, step_references

# One segment of fromStep: a step id, the last one optionally with a foreach item's index.
_SEGMENT = re.compile(r"^(?P<id>[A-Za-z_][A-Za-z0-9_]{0,99})(?:\[(?P<index>[0-9]{1,9})\])?$")
# A run (and a child reached into) that ended in one of these may be re-run.
FINISHED = ("completed", "failed", "cancelled")
# Kinds of step that send a call (their calls are what the preview lists).
CALLING_TYPES = ("action", "http_request")
# How deep fromStep may reach (a/b/c…): no deeper than subflows may nest.
MAX_PATH = 11
# The preview renders templates (URLs, inputs, foreach lists, executeIf) for at most this long in all,
# each render within the engine's own bounds: past it, the calls left are listed unrendered and
# flagged dataDependent (a foreach of 10,000 items cannot hold an API thread for minutes).
PREVIEW_RENDER_SECONDS = 5.0


class RerunRefused(Exception):
    """The re-run cannot be made as asked: ``field`` of the request (fromStep, steps.<id>, version)
    says why (the API answers 400 naming it)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass
class Level:
    """One run of the re-run: the top one, or a child it reaches into (``prefix`` "call/")."""

    source: dict  # the run it re-runs (sql/runs.sql rerun_source)
    steps: list[dict]  # the steps the new run will have
    plan: dict | None  # the new run's plan when built anew (changed configs, another version), else None
    prefix: str
    keep: list[str]
    again: list[str]
    item: str | None = None  # the one foreach item sent again (each[7])
    from_step: str = ""  # fromStep as seen from this run
    children: dict[str, Level] = field(default_factory=dict)

    def spec(self) -> dict:
        """tolstoy_queue_run's ``rerunning`` (db/functions/queue_and_claim.sql)."""
        spec: dict = {"of": str(self.source["id"]), "fromStep": self.from_step, "keep": self.keep}
        if self.plan is not None:
            spec["steps"] = self.steps
        if self.item is not None:
            spec["keepItemsOf"] = [self.item.partition("[")[0]]
            spec["dropItems"] = [self.item]
        if self.children:
            spec["children"] = {sid: child.spec() for sid, child in self.children.items()}
        return spec


def segments(from_step: str) -> list[tuple[str, int | None]]:
    """fromStep as (step id, item index or None) per run it reaches through; RerunRefused when malformed."""
    parts = from_step.split("/")
    if len(parts) > MAX_PATH:
        raise RerunRefused("fromStep", f"Reaches through more than {MAX_PATH - 1} subflow steps.")
    found = []
    for i, part in enumerate(parts):
        match = _SEGMENT.match(part)
        if match is None or (match["index"] is not None and i < len(parts) - 1):
            raise RerunRefused("fromStep", "Must be a step id, a foreach item (each[7]) or a path into a subflow "
                                           "step's child run (call/charge).")
        found.append((match["id"], None if match["index"] is None else int(match["index"])))
    return found


def downstream(steps: list[dict], step_id: str) -> set[str]:
    """``step_id`` and every step that depends on it, transitively (graph.dependencies)."""
    dependents: dict[str, set[str]] = {}
    for index, step in enumerate(steps):
        for dep in dependencies(steps, index):
            dependents.setdefault(dep, set()).add(step["id"])
    found, todo = {step_id}, [step_id]
    while todo:
        for nxt in dependents.get(todo.pop(), ()):
            if nxt not in found:
                found.add(nxt)
                todo.append(nxt)
    return found


def _kept(checkpoint: dict | None) -> bool:
    """A checkpoint a re-run keeps (tolstoy_queue_run copies the same): completed, or skipped by executeIf."""
    return bool(checkpoint) and (checkpoint["status"] == "completed"
                                 or (checkpoint["status"] == "skipped" and checkpoint.get("error") is None))


def plan(db: Database, org_id, source: dict, from_step: str, *, steps: list[dict] | None = None,
         changes: dict[str, dict] | None = None, check: Callable[[str, dict], None] | None = None) -> Level:
    """What a re-run of ``source`` (sql/runs.sql rerun_source) from ``from_step`` keeps and runs again,
    reaching into children as fromStep says. ``steps``: another version's steps (None: the run's own);
    ``changes``: new configs by step path (``{"charge": {...}, "call/charge": {...}}``), each changed
    step passed to ``check(field, step)`` (the API's flow-save validation; it raises). RerunRefused."""
    return _level(db, org_id, source, segments(from_step), steps, dict(changes or {}), check, "")


def _level(db: Database, org_id, source: dict, path: list[tuple[str, int | None]], steps: list[dict] | None,
           changes: dict[str, dict], check, prefix: str) -> Level:
    own = steps is not None
    steps = [dict(s) for s in (steps if own else source["plan"]["steps"])]
    by_id = {s["id"]: s for s in steps}
    mine = {sid: c for sid, c in changes.items() if "/" not in sid}
    for sid, config in mine.items():
        if sid not in by_id:
            raise RerunRefused(f"steps.{prefix}{sid}", f"No step {sid!r} in the run{' ' + prefix[:-1] if prefix else ''}.")
        changed = {**by_id[sid], "config": config}
        if check is not None:
            check(f"steps.{prefix}{sid}", changed)
        by_id[sid].clear()
        by_id[sid].update(changed)
    head, index = path[0]
    field_name = "fromStep"
    where = f"the run's child at {prefix[:-1]}" if prefix else "the run"
    if head not in by_id:
        raise RerunRefused(field_name, f"No step {head!r} in {where}" + (" (in the version asked for)." if own else "."))
    step = by_id[head]
    checkpoints = source["checkpoints"]
    again_ids = downstream(steps, head)
    keep = [s["id"] for s in steps if s["id"] not in again_ids and _kept(checkpoints.get(s["id"]))]
    level = Level(source, steps, {} if own or mine else None, prefix, keep,
                  [s["id"] for s in step_order(steps) if s["id"] not in keep],
                  from_step="/".join(sid if i is None else f"{sid}[{i}]" for sid, i in path))
    if index is not None:
        if step["type"] != "foreach":
            raise RerunRefused(field_name, f"Step {head!r} is a {step['type']} step, not a foreach: it has no items.")
        if f"{head}[{index}]" not in checkpoints:
            raise RerunRefused(field_name, f"Step {head!r} of {where} has no item {index}.")
        level.item = f"{head}[{index}]"
    deeper = {sid.partition("/")[2]: c for sid, c in changes.items() if sid.partition("/")[0] == head and "/" in sid}
    for sid in changes:
        if "/" in sid and (sid.partition("/")[0] != head or len(path) == 1):
            raise RerunRefused(f"steps.{prefix}{sid}", "A step of a child run can be changed only in the child "
                                                       "fromStep reaches into.")
    if len(path) > 1:
        if step["type"] != "subflow":
            raise RerunRefused(field_name, f"Step {head!r} is a {step['type']} step, not a subflow: it has no child run.")
        child_id = source["children"].get(head)
        child = child_id and db.one(SQL.runs.rerun_source, org_id=org_id, id=child_id)
        if not child:
            raise RerunRefused(field_name, f"Step {head!r} of {where} queued no child run.")
        if child["status"] not in FINISHED:
            raise RerunRefused(field_name, f"The child run at {prefix}{head} has not finished.")
        level.children[head] = _level(db, org_id, child, path[1:], None, deeper, check, f"{prefix}{head}/")
    return level


# ---- the preview -----------------------------------------------------------------------------


def preview(db: Database, org_id, level: Level, variables: dict) -> dict:
    """What the re-run ``level`` keeps, runs again and sends again, computed without writing
    anything: the dry run's answer (docs/api.md, Re-running from a step)."""
    answer: dict = {"keep": [], "runAgain": [], "calls": []}
    _preview(db, org_id, level, variables, answer, time.monotonic() + PREVIEW_RENDER_SECONDS)
    return answer


def _preview(db: Database, org_id, level: Level, variables: dict, answer: dict, deadline: float) -> None:
    plan_now = level.source["plan"]
    if level.plan is not None:  # built anew: the actions as they are now (tolstoy_plan)
        plan_now = db.scalar(SQL.runs.plan, org_id=org_id, steps=dbjson(level.steps))
    actions = plan_now.get("actions") or []
    by_id = {str(a["id"]): a for a in actions}
    by_key = {a["key"]: a for a in actions}
    checkpoints = level.source["checkpoints"]
    kept = set(level.keep)
    context = {"variables": variables,
               "steps": {sid: checkpoints[sid].get("outputs") for sid in level.keep}}
    answer["keep"] += [level.prefix + sid for sid in level.keep]
    again = set(level.again)
    for step in step_order(level.steps):
        sid = step["id"]
        if sid in kept:
            continue
        answer["runAgain"].append(level.prefix + sid)
        late = time.monotonic() > deadline  # past the budget: nothing more is rendered
        condition_depends = late or bool((step_references(step.get("executeIf")) - {sid}) & (again | {ANY_STEP}))
        depends = condition_depends or bool((step_references(step.get("config")) - {sid}) & (again | {ANY_STEP}))
        if not condition_depends and step.get("executeIf") and not _true(step["executeIf"], context):
            continue  # skipped: it sends nothing
        if step["type"] == "subflow":
            child = level.children.get(sid)
            if child is not None:
                _preview(db, org_id, child, child.source["variables"] or {}, answer, deadline)
            else:
                # A new child run: what it sends depends on the flow version and variables it gets then.
                answer["calls"].append({"stepId": level.prefix + sid, "kind": "subflow", "tool": None, "method": None,
                                        "url": None, "notIdempotent": None, "dataDependent": True})
            continue
        if step["type"] == "foreach":
            inner = step["config"]["step"]
            if inner.get("type") not in CALLING_TYPES:
                continue
            items_depend = late or bool((step_references(step["config"].get("items")) - {sid}) & (again | {ANY_STEP}))
            item_reads = step_references(inner.get("executeIf")) | step_references(inner.get("config"))
            item_depends = depends or items_depend or bool(item_reads & (again | {ANY_STEP}))
            items = None
            if not items_depend:
                try:
                    items = render(step["config"].get("items"), context)
                except TemplateFailure:
                    items = None
            if not isinstance(items, list):
                answer["calls"].append(_call(level, {**inner, "id": f"{sid}[*]"}, context, by_id, by_key, True))
                continue
            for index, item in enumerate(items):
                item_sid = f"{sid}[{index}]"
                item_depends = item_depends or time.monotonic() > deadline
                if level.item is not None and item_sid != level.item:
                    if _kept(checkpoints.get(item_sid)):
                        continue
                item_context = {**context, "item": item, "index": index}
                if inner.get("executeIf") and not item_depends and not _true(inner["executeIf"], item_context):
                    continue  # skipped: it sends nothing
                answer["calls"].append(_call(level, {**inner, "id": item_sid}, item_context, by_id, by_key,
                                             item_depends))
            continue
        if step["type"] in CALLING_TYPES:
            answer["calls"].append(_call(level, step, context, by_id, by_key, depends))


def _call(level: Level, step: dict, context: dict, by_id: dict, by_key: dict, depends: bool) -> dict:
    """One call the re-run would send: tool, method and URL (rendered where it depends on nothing that
    runs again, else with its placeholders; never a credential: they are added only on the wire)."""
    config = step.get("config") or {}
    call = {"stepId": level.prefix + step["id"], "kind": step["type"], "tool": None, "method": None, "url": None,
            "notIdempotent": None, "dataDependent": depends}
    if step["type"] == "http_request":
        call["method"] = str(config.get("method", "GET")).upper()
        url = config.get("url")
        if not depends:
            try:
                url = render(url, context)
            except TemplateFailure:
                pass
        call["url"] = _no_userinfo(str(url))
        call["notIdempotent"] = not idempotent(call["method"], None)
        return call
    action = by_id.get(str(config.get("actionId"))) if config.get("actionId") else by_key.get(config.get("actionKey"))
    if action is None:
        return call
    tool = action.get("tool") or {}
    call.update(tool=tool.get("name"), method=action["method"],
                notIdempotent=not idempotent(action["method"], tool))
    path = action["endpoint"]
    if action.get("execute_if") and step_references(action["execute_if"]) & (level_again(level) | {ANY_STEP}):
        call["dataDependent"] = True
    if not call["dataDependent"]:
        try:
            path = fill_endpoint(action["endpoint"], render(config.get("inputs") or {}, context) or {})[0]
        except (TemplateFailure, StepFailed, AttributeError):
            path = action["endpoint"]
    call["url"] = _no_userinfo(str(tool.get("base_url", "")).rstrip("/") + path)
    return call


def _true(template: str, context: dict) -> bool:
    """An executeIf as the preview sees it: one that fails to evaluate is taken as true (listed)."""
    try:
        return condition(template, context)
    except TemplateFailure:
        return True


def level_again(level: Level) -> set[str]:
    """The ids of the steps that run again in ``level``."""
    return set(level.again)


def _no_userinfo(url: str) -> str:
    """A URL without the user and password it may carry (the preview never shows a secret)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.username is None and parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
