"""Step kinds that call out: what an ``action`` or ``http_request`` step does
once its config is rendered (the call itself; its checkpoint and outcome are
the run loop's, the same for a top-level step and a foreach item).
"""

from __future__ import annotations

from typing import Any

from ..redaction import mask_json
from .calls import ToolCall, Tools, checked
from .errors import SkipStep, StepFailed
from .plans import Plan
from .templates import TemplateFailure, condition
from .vault import Reader

DEFAULT_TIMEOUT_MS = 30000
# Sending one of these twice does what sending it once did: a call whose outcome is unknown
# may simply be sent again.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def step_method(step: dict, inputs: dict, plan: Plan) -> str:
    """The HTTP method a calling step uses."""
    if step["type"] == "action":
        return plan.action(step["config"])["method"]
    return str(inputs.get("method", "GET")).upper()


def execute_step(tools: Tools, run, site, step: dict, inputs: dict, key: str, timeout_ms: int) -> Any:
    """Make the call of one step whose config is already rendered; returns its output. ``site``
    is where the step runs (``site.context``, ``site.view``: what an action's executeIf and headers
    read, an item's ``item`` and ``index`` included). The secrets the call uses join ``run.secrets``
    before it is sent (a log line about it masks them) and after (what only sending learned: an
    OAuth2 token, Basic's pair), so whatever shows them is masked."""
    kind = step["type"]
    if kind == "action":
        action = run.plan.action(step["config"])
        if isinstance(action.get("execute_if"), str):
            try:
                if not condition(action["execute_if"], {**site.context, "inputs": inputs.get("inputs") or {}}):
                    raise SkipStep()
            except TemplateFailure as exc:
                raise StepFailed(f"Template error in the action's executeIf: {exc}") from None
        # The credential's read is recorded as this run's (secret_reads).
        call = tools.build_call(run.org_id, action, action["tool"], inputs.get("inputs") or {}, site.view,
                                reader=Reader("worker", "step", run.user_id, run.id), acts_as_user=run.acts_as_user)
    elif kind == "http_request":
        call = ToolCall(inputs["method"], inputs["url"], dict(inputs.get("headers") or {}), None,
                        inputs.get("body"))
    else:
        raise StepFailed(f"Unknown step type {kind!r}")
    run.secrets.add(call.secrets)
    try:
        return checked(tools.send(call, timeout_ms, key, cancel=run.cancel))
    except StepFailed as exc:
        exc.details = mask_json(exc.details, run.secrets)
        raise
    finally:
        run.secrets.add(call.secrets)
