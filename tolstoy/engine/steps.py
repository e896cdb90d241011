"""Step kinds: what each type of step does once its config is rendered.

``delay`` is not here: a delay is no work, only a wake-up time, which the run
loop records as a checkpoint before handing the run back to the queue.
"""

from __future__ import annotations

from typing import Any

from ..redaction import mask_json
from .calls import ToolCall, Tools, checked
from .errors import SkipStep, StepFailed
from .templates import TemplateFailure, condition

DEFAULT_TIMEOUT_MS = 30000


def execute_step(tools: Tools, org_id, step: dict, inputs: dict, context: dict, key: str) -> tuple[Any, list]:
    """Run one step whose config is already rendered; returns (output, secrets to scrub from logs)."""
    kind = step["type"]
    timeout = step.get("timeoutMs") or DEFAULT_TIMEOUT_MS
    if kind == "transform":
        return inputs["output"], []
    if kind == "action":
        action = tools.find_action(org_id, step["config"])
        if isinstance(action.get("execute_if"), str):
            try:
                if not condition(action["execute_if"], {**context, "inputs": inputs.get("inputs") or {}}):
                    raise SkipStep()
            except TemplateFailure as exc:
                raise StepFailed(f"Template error in the action's executeIf: {exc}") from None
        call = tools.build_call(org_id, action, inputs.get("inputs") or {}, context)
    elif kind == "http_request":
        call = ToolCall(inputs["method"], inputs["url"], dict(inputs.get("headers") or {}), None,
                        inputs.get("body"))
    else:
        raise StepFailed(f"Unknown step type {kind!r}")
    try:
        return checked(tools.send(call, timeout, key)), call.secrets
    except StepFailed as exc:
        exc.details = mask_json(exc.details, call.secrets)
        raise
