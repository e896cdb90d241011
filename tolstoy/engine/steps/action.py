"""``action``: a call to one of the organization's actions (named by ``actionId`` or ``actionKey``, as
the run's plan holds it) with rendered ``inputs``: the action's tool, endpoint, headers and
credential make the request (calls.ToolClient.build_call); its ``executeIf`` may skip it. The rest
of the call's life (recorded as starting, retries, unknown outcomes) is calling.Calling's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..calls import ToolCall, ToolClient
from ..errors import SkipStep, StepFailed
from ..templates import TemplateFailure, condition, stopped_only_by
from ..vault import Reader
from .calling import Calling
from .kind import Site

if TYPE_CHECKING:
    from ..runner import Run


def build(tools: ToolClient, run: Run, site: Site, step: dict, inputs: dict) -> ToolCall:
    """The request of an action step whose config is rendered; SkipStep when the action's executeIf is false."""
    action = run.plan.action(step["config"])
    # The call is recorded as starting already: a render stopped for the worker's shutdown would
    # leave a call that was never sent looking as if it might have been (an unknown outcome). So
    # the action's templates stop only for a cancel (which ends the run) or a lost lease (the
    # run is another worker's), else at their budget.
    with stopped_only_by(run.cancel, run.lost):
        if isinstance(action.get("execute_if"), str):
            try:
                if not condition(action["execute_if"], {**site.view, "inputs": inputs.get("inputs") or {}}):
                    raise SkipStep()
            except TemplateFailure as exc:
                raise StepFailed(f"Template error in the action's executeIf: {exc}") from None
        # The credential's read is recorded as this run's (secret_reads).
        return tools.build_call(run.org_id, action, action["tool"], inputs.get("inputs") or {}, site.view,
                                reader=Reader("worker", "step", run.user_id, run.id),
                                acts_as_user=run.acts_as_user)


def method(run: Run, step: dict, inputs: dict) -> str:
    """The action's HTTP method."""
    return run.plan.action(step["config"])["method"]


def config() -> type:
    """The schema of its config, for the API (marshmallow is imported here: a worker never loads it)."""
    from marshmallow import ValidationError, fields, validates_schema

    from ...fieldtypes import Base, JSONObject, text

    class ActionStepConfig(Base):
        """``action``: which action to call and with what inputs."""

        actionId = fields.UUID()
        actionKey = text(1, 200)
        inputs = JSONObject()

        @validates_schema
        def _one_reference(self, data, **kwargs):
            if ("actionId" in data) == ("actionKey" in data):
                raise ValidationError("Give exactly one of actionId or actionKey.", "actionId")

    return ActionStepConfig


def tool(run: Run, step: dict) -> dict | None:
    """The tool the action calls (None when the plan does not hold the action)."""
    try:
        return run.plan.action(step["config"]).get("tool")
    except StepFailed:
        return None


KIND = Calling(build, method, tool).kind(config)
