"""What the step kinds that call out (``action``, ``http_request``) share: the call is recorded as
starting (with every pending write) before it is sent; then its outcome is decided: retry back-off,
the unknown outcome policy of a call whose worker vanished, skip, fail or complete. A calling kind
says only how its call is built (``Calling.build``), which HTTP method it uses and whether its
tool honours Idempotency-Key (what decides if a call of unknown outcome may be sent again)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ... import logs, metrics, times, tracing
from ...errors import DatabaseFault
from ...redaction import in_derived_work, mask_json
from .. import ratelimits
from ..calls import ToolCall, ToolClient, checked
from ..concurrency import render_key
from ..errors import ConcurrencyKeyRefused, LeaseLost, SkipStep, StepFailed
from .kind import Kind, Outcome, Site

if TYPE_CHECKING:
    from ...redaction import Hidden
    from ..runner import Engine, Run

DEFAULT_TIMEOUT_MS = 30000
# Sending one of these twice does what sending it once did: a call whose outcome is unknown
# may simply be sent again.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Retry back-off never waits longer than this, whatever the policy says.
MAX_BACKOFF_MS = 3_600_000


def backoff_ms(policy: dict, attempt: int, rng: random.Random | None = None) -> int:
    """Wait before attempt ``attempt + 1``: fixed delayMs, or delayMs doubled per failed attempt;
    capped and jittered as every retry is (times.backoff_ms)."""
    exponential = policy.get("backoffStrategy", "exponential") == "exponential"
    return times.backoff_ms(attempt if exponential else 1, int(policy.get("delayMs", 1000)), MAX_BACKOFF_MS, rng)


class Throttled(Exception):
    """The provider throttled the call (a 429, or a 503 with Retry-After): it waits for its budget."""


def waited_for(checkpoint: dict | None, what: str) -> dict | None:
    """What a step's ``waiting`` checkpoint waited for, by its name in the inputs: ``rateLimit``, its
    credential's rate budget (written by tolstoy_checkpoint_call), or ``concurrency``, a slot of its
    concurrency limit (tolstoy_checkpoint_slots); None when it was no such wait. Neither spends an attempt."""
    inputs = (checkpoint or {}).get("inputs")
    if checkpoint and checkpoint["status"] == "waiting" and isinstance(inputs, dict) and isinstance(inputs.get(what), dict):
        return inputs[what]
    return None


def spends_no_attempt(checkpoint: dict | None) -> bool:
    """Whether a ``waiting`` checkpoint was a wait that spends no attempt (for budget, or for a slot)."""
    return waited_for(checkpoint, "rateLimit") is not None or waited_for(checkpoint, "concurrency") is not None


def slot(run: Run, site: Site, step: dict, waited: dict) -> dict | None:
    """The slot a step that declares ``concurrency`` ({key?, limit}) takes before its call: its key rendered
    over the step's template context now (concurrency.render_key; ConcurrencyKeyRefused), with since when it
    waits (``waited``: its checkpoint's inputs.concurrency); None for a step without a limit."""
    declared = step.get("concurrency")
    if not declared:
        return None
    key = None
    if declared.get("key") is not None:
        key = render_key(declared["key"], site.view, "The step's", "the step's context")
    return {"step_id": step["id"], "key": key, "limit": int(declared["limit"]), "since": waited.get("since")}


def idempotent(method: str, tool: dict | None) -> bool:
    """Whether sending a call twice does what sending it once did: by its method, or because its tool
    honours our Idempotency-Key. A call of unknown outcome that is idempotent is sent again by default;
    a re-run's preview flags the calls that are not."""
    return method in IDEMPOTENT_METHODS or bool((tool or {}).get("honors_idempotency_key"))


def no_tool(run: Run, step: dict) -> dict | None:
    """A call to no tool of the organization (it honours no Idempotency-Key we know of)."""
    return None


class Calling:
    """The work of a kind that calls out, given how it builds its call.

    ``build(tools, run, site, step, inputs)``: the call of a step whose config is rendered
    (``inputs``; SkipStep: it does nothing this time). ``method(run, step, inputs)``: the HTTP method
    it sends. ``tool(run, step)``: the tool it calls, if any (None when the step calls no tool)."""

    def __init__(self, build: Callable[[ToolClient, Run, Site, dict, dict], ToolCall],
                 method: Callable[[Run, dict, dict], str], tool: Callable[[Run, dict], dict | None] = no_tool):
        self.build = build
        self.method = method
        self.tool = tool

    def kind(self, config: Callable[[], type]) -> Kind:
        """The kind, whose config ``config()`` checks: it may run per item, a ``waiting`` checkpoint of it is
        a retry back-off (or a wait for budget or a slot), and a top-level step of it may declare a
        concurrency limit."""
        return Kind(self.run, retries=True, item=True, config=config, limits=True)

    def send(self, tools: ToolClient, run: Run, site: Site, step: dict, inputs: dict, key: str, timeout_ms: int,
             learn: Callable[[Any], bool] | None = None) -> Any:
        """Make the call of one step whose config is already rendered; returns its output. ``learn`` sees
        the reply first (what its headers teach the credential's budget; True: the provider throttled
        the call and it waits for the budget instead: Throttled). ``site``
        is where the step runs (``site.context``, ``site.view``: what an action's executeIf and headers
        read, an item's ``item`` and ``index`` included). The secrets the call uses join ``run.secrets``
        before it is sent (a log line about it masks them) and after (what only sending learned: an
        OAuth2 token, Basic's pair), so whatever shows them is masked."""
        call = self.build(tools, run, site, step, inputs)
        run.secrets.add(call.secrets)
        try:
            reply = tools.send(call, timeout_ms, key, cancel=run.cancel)
            if learn is not None and learn(reply):
                raise Throttled()
            return checked(reply)
        except StepFailed as exc:
            exc.details = mask_json(exc.details, run.secrets)
            raise
        finally:
            run.secrets.add(call.secrets)

    def unknown_outcome(self, engine: Engine, run: Run, site: Site, step: dict, attempt: int, checkpoint: dict,
                        inputs: dict) -> Outcome | None:
        """A call started and its worker vanished: send it again only where that is safe (None: send
        it again), else fail the step or wait for a person, as the step's onUnknownOutcome says."""
        method = self.method(run, step, inputs)
        tool = self.tool(run, step)
        default = "retry" if idempotent(method, tool) else "wait"
        policy = step.get("onUnknownOutcome") or default
        if policy == "retry":
            return None
        error = {"name": "OutcomeUnknown",
                 "message": f"The worker stopped during the {method} call of attempt {attempt}; whether it took "
                            "effect is unknown."}
        if policy == "fail":
            return engine.fail(run, step, attempt, checkpoint.get("inputs"), StepFailed(error["message"],
                               details={"name": "OutcomeUnknown"}), 0)
        with run.lock:
            run.writes.step(step_id=step["id"], status="outcome_unknown", attempt=attempt,
                            inputs=checkpoint.get("inputs"), error=error)
            if not site.item:
                run.writes.event(step["id"], "pending", inputs={"attempt": attempt}, error=error)
        return "unknown", None

    def take(self, engine: Engine, run: Run, site: Site, step: dict, waited: dict) -> dict | None:
        """The take of the step's call from its tool's credential's rate budget (tolstoy_checkpoint_call),
        None for a call to no tool of the organization (an http_request: no stored credential). A step
        back from a wait for its budget (``waited``: its checkpoint's inputs.rateLimit) says since when
        it waits, and the slot it reserved."""
        tool = self.tool(run, step)
        if not tool or not tool.get("id"):
            return None
        return {"step_id": step["id"], "tool_id": str(tool["id"]), "item": site.item,
                "user_id": str(run.user_id) if run.user_id else None, "acts_as_user": run.acts_as_user,
                "since": waited.get("since"), "reserved_until": waited.get("until") if waited.get("reserved") else None,
                "max_wait_seconds": engine.rate_limit_max_wait_seconds}

    def learner(self, run: Run, step: dict) -> Callable[[Any], bool]:
        """What a reply's headers teach its credential's budget, kept for the run's next checkpoint
        (ratelimits.lesson); True when the provider throttled the call (a 429, or a 503 with Retry-After):
        the call waits for the budget and is sent again, spending no attempt."""
        tool = self.tool(run, step)

        def learn(reply: Any) -> bool:
            if not tool or not tool.get("id"):
                return False
            lesson = ratelimits.lesson(reply.status, reply.headers, times.unix_seconds())
            if lesson is None:
                return False
            with run.lock:
                run.lessons.append({**lesson, "tool_id": str(tool["id"]), "acts_as_user": run.acts_as_user,
                                    "user_id": str(run.user_id) if run.user_id else None})
            if lesson["throttled"]:
                metrics.count_throttled()
            return bool(lesson.get("pause_seconds"))

        return learn

    def run(self, engine: Engine, run: Run, site: Site, step: dict, attempt: int, checkpoint: dict | None,
            inputs: dict, tree: Hidden) -> Outcome:
        """An action or http_request step: its call, recorded as starting (with every pending write)
        before it is made, in the same statement as its take from its credential's rate budget (no
        room: the step waits for it, holding no thread); then its outcome. A provider that throttles
        the call teaches the budget, and the call waits for it again, spending no attempt."""
        sid = step["id"]
        shown_inputs = run.conceal(inputs, tree)
        if checkpoint and checkpoint["status"] == "running" and checkpoint.get("call_started_at"):
            decided = self.unknown_outcome(engine, run, site, step, attempt, checkpoint, inputs)
            if decided is not None:
                return decided
        waited = waited_for(checkpoint, "rateLimit") or {}
        try:
            held = slot(run, site, step, waited_for(checkpoint, "concurrency") or {})
        except ConcurrencyKeyRefused as exc:
            return engine.fail(run, step, attempt, shown_inputs, StepFailed(
                str(exc), details={"name": "ConcurrencyKeyRefused", "field": "concurrency.key"}), 0)
        if held is not None and site.item:  # a plan written past the API (which refuses it)
            return engine.fail(run, step, attempt, shown_inputs, StepFailed(
                "A step that runs per item of a foreach step cannot declare concurrency"), 0)
        while True:
            take = self.take(engine, run, site, step, waited)
            if held is not None:
                take = {**(take or {"step_id": sid}), "slot": held}
            with run.lock:
                # Every pending checkpoint, and the fact that this call starts, are durable before it does.
                run.writes.step(step_id=sid, status="running", attempt=attempt, inputs=shown_inputs,
                                call_started=True)
                if not site.item:
                    run.writes.event(sid, "started", inputs={
                        **(shown_inputs if isinstance(shown_inputs, dict) else {}), "attempt": attempt})
                answer = engine.checkpoint(run, call=take)
            if run.lost.is_set():
                raise LeaseLost(str(run.id))
            if ((answer or {}).get("slot") or {}).get("waiting"):
                metrics.count_slot_wait()
                logs.step_event(execution=run.id, step_id=sid, step_type=step["type"], status="waiting_for_slot",
                                duration=None, error=None)
                return "paused", None  # the statement checkpointed the step waiting and parked its run
            if held is not None and held.get("since"):
                metrics.observe_step_slot_wait(max(times.seconds_between(run.db_now(), held["since"]), 0.0))
                held = {**held, "since": None}
            budget = (answer or {}).get("budget") or {}
            if budget.get("refused"):
                return engine.fail(run, step, attempt, shown_inputs, StepFailed(
                    f"The call waited for its credential's rate budget longer than allowed "
                    f"({engine.rate_limit_max_wait_seconds:g} s, TOLSTOY_RATE_LIMIT_MAX_WAIT_SECONDS)",
                    details={"name": "RateLimitWaitExceeded", "toolId": take["tool_id"] if take else None}), 0)
            if float(budget.get("wait") or 0) > 0:
                metrics.count_budget_wait()
                logs.step_event(execution=run.id, step_id=sid, step_type=step["type"], status="waiting_for_budget",
                                duration=None, error=None)
                # The statement checkpointed the step waiting (and paused a top-level step's run).
                return ("sleep", int(math.ceil(float(budget["wait"]) * 1000))) if site.item else ("paused", None)
            if waited.get("since"):
                waited_s = max(times.seconds_between(run.db_now(), waited["since"]), 0.0)
                metrics.observe_budget_wait(waited_s)
                if tracing.ON:
                    tracing.note("tolstoy.call.budget_wait_s", waited_s)
            started = time.perf_counter()
            timeout = step.get("timeoutMs") or DEFAULT_TIMEOUT_MS
            try:
                output = self.send(engine.tools, run, site, step, inputs, run.key(sid, attempt), timeout,
                                   learn=self.learner(run, step))
                break
            except Throttled:
                # The provider throttled it: sent again once the budget has room (the next statement
                # writes what the answer taught, then takes), with the same attempt.
                waited = {"since": waited.get("since")}
                continue
            except DatabaseFault:
                # Raised while reading the credential or a token, before anything was sent: the call is
                # recorded as not started (the same attempt, and no unknown outcome), and the run goes
                # back to the queue (Engine.run; a foreach first lets the items in flight finish).
                with run.lock:
                    run.writes.step(step_id=sid, status="running", attempt=attempt)
                raise
            except SkipStep:
                return engine.skip(run, site, step, attempt, shown_inputs)
            except StepFailed as exc:
                duration = int((time.perf_counter() - started) * 1000)
                if run.lost.is_set():
                    raise LeaseLost(str(run.id)) from None
                if run.cancel.is_set():
                    return "cancelled", None  # the cancel cut the call off: the run ends cancelled
                policy = step.get("retryPolicy") or {}
                if exc.retryable and attempt <= int(policy.get("maxRetries", 0)):
                    wait = backoff_ms(policy, attempt)
                    # An upstream may echo a secret; the config's own may be quoted transformed.
                    error = mask_json(exc.as_error(withhold=in_derived_work()), run.secrets)
                    with run.lock:
                        run.writes.step(step_id=sid, status="waiting", attempt=attempt, inputs=shown_inputs,
                                        error=error, wake_in_ms=wait)
                        run.writes.event(sid, "failed", error={**error, "attempt": attempt, "retryInMs": wait},
                                         duration_ms=duration)
                    engine.log_event(run, step, "failed", duration / 1000, error)
                    return "sleep", wait
                return engine.fail(run, step, attempt, shown_inputs, exc, duration)
        duration = int((time.perf_counter() - started) * 1000)
        return engine.complete(run, step, attempt, output, shown_inputs, duration, item=site.item)
