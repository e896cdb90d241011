"""The steps of a flow as the API checks them: one marshmallow schema per step kind's config
(``STEP_CONFIGS``), the step itself and the step a foreach runs per item. The flows noun
(tolstoy/api/flows.py) validates ``steps`` and ``onFailure`` with ``StepSchema``."""

from __future__ import annotations

import re

from marshmallow import ValidationError, fields, validate, validates_schema

from .. import engine
from ..fieldtypes import Base, JSONObject, StrictBoolean, key_field, text
from .actions import HTTP_METHODS

# The step kinds the engine runs, and those a foreach may run per item: the engine's one table of them.
STEP_TYPES = engine.STEP_TYPES
ITEM_STEP_TYPES = engine.ITEM_STEP_TYPES
MAX_STEPS = 200
# A template in a string: the string is checked when it is rendered, at run time.
TEMPLATE = re.compile(r"\{\{.*?\}\}", re.S)


def url_or_template(value: str) -> None:
    """An absolute http(s) URL, or a string built from templates at run time."""
    if TEMPLATE.search(value):
        return
    validate.URL(schemes={"http", "https"}, require_tld=False)(value)


class ActionStepConfig(Base):
    """``action``: which action to call and with what inputs."""

    actionId = fields.UUID()
    actionKey = text(1, 200)
    inputs = JSONObject()

    @validates_schema
    def _one_reference(self, data, **kwargs):
        if ("actionId" in data) == ("actionKey" in data):
            raise ValidationError("Give exactly one of actionId or actionKey.", "actionId")


class HttpRequestStepConfig(Base):
    """``http_request``: a request to any allowed URL."""

    method = fields.String(
        required=True, validate=validate.OneOf(HTTP_METHODS + ("HEAD", "OPTIONS"))
    )
    url = fields.String(
        required=True, validate=[validate.Length(min=1, max=4096), url_or_template]
    )
    headers = fields.Dict(keys=fields.String(), values=fields.String())
    body = fields.Raw(allow_none=True)


class DelayStepConfig(Base):
    """``delay``: wait this many milliseconds (at most seven days)."""

    ms = fields.Integer(required=True, strict=True, validate=validate.Range(0, 7 * 24 * 3600 * 1000))


class TransformStepConfig(Base):
    """``transform``: render ``output`` (any JSON with templates)."""

    output = fields.Raw(required=True, allow_none=True)


class RetryPolicySchema(Base):
    """How often and how fast a failed step is tried again."""

    maxRetries = fields.Integer(strict=True, validate=validate.Range(0, 20))
    backoffStrategy = fields.String(validate=validate.OneOf(("fixed", "exponential")))
    delayMs = fields.Integer(strict=True, validate=validate.Range(0, 3_600_000))


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
        load_config_for_type(data, STEP_CONFIGS)


def _items(value) -> None:
    if isinstance(value, list):
        return
    if isinstance(value, str) and TEMPLATE.search(value) and len(value) <= 2000:
        return
    raise ValidationError("Must be a list, or a template (at most 2000 characters) that renders to one.")


def _variables(value) -> None:
    if isinstance(value, dict):
        return
    if isinstance(value, str) and TEMPLATE.search(value) and len(value) <= 2000:
        return
    raise ValidationError("Must be a JSON object, or a template (at most 2000 characters) that renders to one.")


class ForeachStepConfig(Base):
    """``foreach``: run ``step`` once per item of ``items``, ``concurrency`` at a time."""

    items = fields.Raw(required=True, validate=_items)
    step = fields.Nested(ItemStepSchema, required=True)
    concurrency = fields.Integer(strict=True, load_default=1, validate=validate.Range(1, 50))
    continueOnError = StrictBoolean(load_default=False)


# A wait step's signal name (it is a URL path segment), and how long it may wait at most (30 days).
SIGNAL_NAME = r"^[A-Za-z0-9_.-]{1,100}$"
MAX_WAIT_MS = 30 * 24 * 3600 * 1000


class WaitStepConfig(Base):
    """``wait``: park the run until ``signal`` is sent to it, at most ``timeoutMs``."""

    signal = fields.String(required=True, validate=validate.Regexp(
        SIGNAL_NAME, error="Must be 1 to 100 letters, digits, '_', '.' or '-'."))
    timeoutMs = fields.Integer(strict=True, load_default=7 * 24 * 3600 * 1000,
                               validate=validate.Range(1, MAX_WAIT_MS),
                               metadata={"description": "At most 30 days; default 7 days."})
    onTimeout = fields.String(load_default="fail", validate=validate.OneOf(("fail", "continue")))


class SubflowStepConfig(Base):
    """``subflow``: queue a run of another flow of the organization, named by ``flowId`` or ``flowKey`` (its
    ``version``, or its version at that moment) with ``variables`` (templates), and with ``wait`` take its
    outputs as this step's output."""

    flowId = fields.UUID(metadata={"description": "A flow of the same organization (this or flowKey)."})
    flowKey = key_field("The key of a flow of the same organization (this or flowId), resolved to the flow when the "
                        "step runs.")
    version = fields.Integer(strict=True, allow_none=True, validate=validate.Range(1, 2_147_483_647))
    variables = fields.Raw(load_default=dict, validate=_variables)
    wait = StrictBoolean(load_default=True)

    @validates_schema
    def _one_flow_reference(self, data, **kwargs):
        if "flowId" in data and "flowKey" in data:
            raise ValidationError("Name the flow by flowId or by flowKey, not both.", "flowKey")
        if "flowId" not in data and "flowKey" not in data:
            raise ValidationError("Missing data for required field (flowId or flowKey).", "flowId")


STEP_CONFIGS = {
    "wait": WaitStepConfig,
    "action": ActionStepConfig,
    "http_request": HttpRequestStepConfig,
    "delay": DelayStepConfig,
    "transform": TransformStepConfig,
    "foreach": ForeachStepConfig,
    "subflow": SubflowStepConfig,
    # A kind whose module brings its config's schema (tolstoy/engine/steps/): nothing to add here.
    **engine.step_configs(),
}


def load_config_for_type(data: dict, configs: dict) -> None:
    """Load ``data["config"]`` with the schema its ``type`` names; errors are reported under ``config``."""
    schema = configs.get(data.get("type"))
    if schema is None or "config" not in data:
        return  # an unknown type or a missing config is already reported by its own field
    try:
        data["config"] = schema().load(data["config"])
    except ValidationError as exc:
        raise ValidationError({"config": exc.messages}) from None


class StepSchema(Base):
    """One step of a flow; ``config`` is checked against the schema of its ``type``."""

    id = fields.String(
        required=True,
        validate=[
            validate.Length(min=1, max=100),
            validate.Regexp(
                r"^[A-Za-z_][A-Za-z0-9_]*$",
                error="Must start with a letter or _ and hold only letters, digits and _.",
            ),
        ],
    )
    type = fields.String(required=True, validate=validate.OneOf(STEP_TYPES))
    name = text(0, 200, allow_none=True)
    config = JSONObject(required=True, metadata={"description": (
        "action: {actionId | actionKey, inputs}; http_request: {method, url, headers, body}; "
        "delay: {ms}; transform: {output}; foreach: {items, step (any step but foreach, without id), "
        "concurrency (1-50, default 1), continueOnError (default false)}; subflow: {flowId | flowKey (exactly "
        "one: a flow of the organization, or its key), version?, variables, wait (default true)}; "
        "wait: {signal, timeoutMs, onTimeout}.")})
    executeIf = text(1, 2000, allow_none=True)
    dependsOn = fields.List(fields.String(validate=validate.Length(min=1, max=100)),
                            validate=validate.Length(max=MAX_STEPS))
    retryPolicy = fields.Nested(RetryPolicySchema, allow_none=True)
    timeoutMs = fields.Integer(strict=True, allow_none=True, validate=validate.Range(1, 3_600_000))
    critical = StrictBoolean(allow_none=True)
    onUnknownOutcome = fields.String(
        allow_none=True, validate=validate.OneOf(("wait", "retry", "fail")),
        metadata={"description": "When a worker died during this step's call: wait for a person to resolve it, "
                                 "send it again, or fail the step. Default: retry for GET, HEAD, OPTIONS, PUT, "
                                 "DELETE and for tools that honour Idempotency-Key; wait otherwise."},
    )

    @validates_schema
    def _config_matches_type(self, data, **kwargs):
        load_config_for_type(data, STEP_CONFIGS)
