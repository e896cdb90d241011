"""The steps of a flow as the API checks them: the step itself (``StepSchema``), its config checked
with the schema its kind brings (``STEP_CONFIGS``, from the engine's step kinds: tolstoy/engine/steps/,
each kind's ``config()``). The flows noun (tolstoy/api/flows.py) validates ``steps`` and ``onFailure``
with ``StepSchema``."""

from __future__ import annotations

from marshmallow import ValidationError, fields, validate, validates_schema

from .. import engine
from ..fieldtypes import Base, JSONObject, RetryPolicySchema, StrictBoolean, load_config_for_type, text

# The step kinds the engine runs: the engine's one table of them.
STEP_TYPES = engine.STEP_TYPES
MAX_STEPS = 200
# The schema of each kind's config (a foreach step's holds the step it runs per item): each kind brings its own.
STEP_CONFIGS = engine.step_configs()
# The kinds whose steps may declare a concurrency limit of their own (those that call out).
LIMITED_STEP_TYPES = engine.LIMITED_STEP_TYPES


class StepConcurrencySchema(Base):
    """``{key?, limit}``: how many of this step's calls run at once, across every run of the flow."""

    key = fields.String(validate=validate.Length(1, 1000), metadata={
        "description": "A template over the step's context (`{{ variables.customer }}`, `{{ steps.find.id }}`), "
                       "rendered when the step is about to run: `limit` calls per key run at once. Without it, "
                       "`limit` is for the step across all runs of the flow."})
    limit = fields.Integer(strict=True, required=True, validate=validate.Range(1, 10000), metadata={
        "description": "Calls of this step at once per key (with `key`), else in all."})


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
        "wait: {signal or signals, timeoutMs, onTimeout}.")})
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
    concurrency = fields.Nested(StepConcurrencySchema, allow_none=True, metadata={
        "description": "action and http_request steps: how many of this step's calls run at once, across "
                       "workers and runs of the flow, per organization, flow, step and key; a step over it waits "
                       "(waitingFor.concurrency with stepId) until a call of it ends. Null: no limit."})

    @validates_schema
    def _concurrency_only_on_calls(self, data, **kwargs):
        if data.get("concurrency") is not None and data.get("type") not in LIMITED_STEP_TYPES:
            raise ValidationError({"concurrency": [
                "Only " + " and ".join(LIMITED_STEP_TYPES) + " steps may declare a concurrency limit."]})

    @validates_schema
    def _config_matches_type(self, data, **kwargs):
        load_config_for_type(data, STEP_CONFIGS)
