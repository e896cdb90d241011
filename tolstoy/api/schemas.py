"""marshmallow schemas: the one place that validates request bodies and query
strings and shapes every response. Python names are the database's snake_case;
``data_key`` gives the API's camelCase."""

from __future__ import annotations

import datetime as dt
import re

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates, validates_schema

from .. import engine, jsonschemas, redaction, schedules, signatures
from ..config import QUOTA_RANGES
from ..engine import graph_errors
from ..times import iso

AUTH_TYPES = ("none", "apiKey", "bearer", "basic", "oauth2")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# Who wrote an execution log (the column execution_logs.source).
LOG_SOURCES = ("engine", "client")
EXECUTION_STATUSES = (
    "pending", "queued", "running", "started", "completed", "failed", "skipped", "cancelled",
)
# The step kinds the engine runs, and those a foreach may run per item: the engine's one table of them.
STEP_TYPES = engine.STEP_TYPES
ITEM_STEP_TYPES = engine.ITEM_STEP_TYPES
FIELD_TYPES = ("string", "number", "boolean", "enum", "date")
MAX_STEPS = 200
MAX_PAGE = 200
DEFAULT_PAGE = 50

# Sent back by clients that GET, modify and PUT a record; ignored on input.
READ_ONLY_FIELDS = frozenset({"id", "orgId", "userId", "version", "createdAt", "updatedAt"})


class Timestamp(fields.Field):
    """ISO 8601 in UTC with milliseconds and a ``Z``, as the contract spells timestamps
    (rows nested as jsonb, such as a tool's actions, carry them as ISO strings)."""

    default_error_messages = {"invalid": "Not an ISO 8601 timestamp with a time zone (e.g. 2027-01-31T12:00:00Z)."}

    def _serialize(self, value, attr, obj, **kwargs):
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        return iso(value)

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise self.make_error("invalid")
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise self.make_error("invalid") from None
        if parsed.tzinfo is None:
            raise self.make_error("invalid")
        return parsed


class JSONObject(fields.Dict):
    """Any JSON object (keys are strings, values any JSON)."""

    default_error_messages = {"invalid": "Must be a JSON object."}


class StrictBoolean(fields.Boolean):
    """JSON ``true``/``false`` only: flow steps are stored as sent, so ``"false"`` or ``1``
    must not pass validation as a boolean."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class HttpUrl(fields.Url):
    """An http(s) URL, kept with its scheme in lower case: schemes are case-insensitive (RFC 3986
    3.1), and everything downstream (the database's checks, origins, the outbound client) reads the
    canonical form. ``HTTP://host`` was accepted here and refused by tools_base_url_scheme: a 500."""

    def __init__(self, **kwargs):
        kwargs.setdefault("require_tld", False)
        super().__init__(schemes={"http", "https"}, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        url = super()._deserialize(value, attr, data, **kwargs)
        scheme, sep, rest = url.partition("://")
        return scheme.lower() + sep + rest


class Base(Schema):
    """Unknown fields are errors that name the field."""

    class Meta:
        unknown = RAISE


class Record(Base):
    """Fields every row has."""

    id = fields.UUID(dump_only=True)
    created_at = Timestamp(data_key="createdAt", dump_only=True)
    updated_at = Timestamp(data_key="updatedAt", dump_only=True)


class TenantRecord(Record):
    """Rows of tenant tables carry their organization."""

    org_id = fields.UUID(data_key="orgId", dump_only=True)


def text(low: int, high: int, **kwargs) -> fields.String:
    """A string field whose length must lie in [low, high]."""
    return fields.String(validate=validate.Length(min=low, max=high), **kwargs)


class OrganizationSchema(Record):
    """``{name}``."""

    name = text(1, 200, required=True)


def _quota(name: str, low: int, description: str) -> fields.Integer:
    return fields.Integer(data_key=name, strict=True, allow_none=True, validate=validate.Range(low, QUOTA_RANGES[name]),
                          metadata={"description": description + " Null: the configured default."})


class QuotaValuesSchema(Base):
    """The four quotas of an organization."""

    queued_runs = _quota("queuedRuns", 0, "Most runs not finished (queued, running or waiting) at once; over it a "
                                          "new run is a 429. 0 refuses every new run.")
    stored_bytes = _quota("storedBytes", 0, "Most bytes of run history (variables, plans, step inputs and outputs, "
                                            "log rows of finished runs) kept within retention; at or over it a new "
                                            "run is a 429.")
    requests_per_second = _quota("requestsPerSecond", 1, "API requests a second (a token bucket per API process: "
                                                         "with P processes, P times this at most).")
    request_burst = _quota("requestBurst", 1, "API requests one burst may hold (the bucket's size, per API process).")


class QuotasSchema(QuotaValuesSchema):
    """``GET/PUT/PATCH /organizations/{id}/quotas``: the operator's overrides (null: the default) and the
    quotas in force (``effective``)."""

    org_id = fields.UUID(data_key="organizationId", dump_only=True)
    effective = fields.Nested(QuotaValuesSchema, dump_only=True,
                              metadata={"description": "The quotas in force: the override, else the default."})
    updated_at = Timestamp(data_key="updatedAt", dump_only=True, allow_none=True,
                           metadata={"description": "When an override last changed (null: never set)."})


class UsedSchema(Base):
    """One quota's usage and limit."""

    used = fields.Integer(dump_only=True)
    limit = fields.Integer(dump_only=True)


class RequestUsageSchema(Base):
    """The request quota as the API process that answered sees it."""

    used = fields.Float(dump_only=True, metadata={"description": "Requests a second admitted of late (about the "
                                                                 "last 10 s), by this API process."})
    available = fields.Float(dump_only=True, metadata={"description": "Tokens in this process's bucket now."})
    limit = fields.Integer(dump_only=True)
    burst = fields.Integer(dump_only=True)
    scope = fields.String(dump_only=True, metadata={"description": "process: each API process counts apart."})


class UsageSchema(Base):
    """``GET /organizations/{id}/usage``."""

    org_id = fields.UUID(data_key="organizationId", dump_only=True)
    queued_runs = fields.Nested(UsedSchema, data_key="queuedRuns", dump_only=True,
                                metadata={"description": "Runs queued, running or waiting now (exact)."})
    stored_bytes = fields.Nested(UsedSchema, data_key="storedBytes", dump_only=True,
                                 metadata={"description": "Bytes of run history within retention, counted as "
                                                          "each run finished (runs in flight count from their end)."})
    requests_per_second = fields.Nested(RequestUsageSchema, data_key="requestsPerSecond", dump_only=True)


class UserSchema(TenantRecord):
    """``{email, name?}``; email unique per organization, ignoring case."""

    email = fields.Email(required=True, validate=validate.Length(max=320))
    name = text(0, 200, allow_none=True)


TOOL_KEY = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
# A flow's key has the same form (a subflow step may name its child flow by it).
FLOW_KEY = TOOL_KEY


class ToolSchema(TenantRecord):
    """``{name, key?, baseUrl, authType, honorsIdempotencyKey}``."""

    name = text(1, 200, required=True)
    key = fields.String(
        allow_none=True, load_default=None,
        validate=validate.Regexp(TOOL_KEY, error="Must match {regex}: 1 to 64 lower-case letters, digits, _ . or -."),
        metadata={"description": "Optional short name, unique per organization: the original service's "
                                 "/auth/{toolKey}/login and callback routes name the tool by it."},
    )
    base_url = HttpUrl(data_key="baseUrl", required=True, validate=validate.Length(max=2048))
    auth_type = fields.String(
        data_key="authType", required=True, validate=validate.OneOf(AUTH_TYPES)
    )
    honors_idempotency_key = fields.Boolean(
        data_key="honorsIdempotencyKey", load_default=False,
        metadata={"description": "The tool treats a repeated Idempotency-Key as the same request, so the engine "
                                 "may send a call again when a worker died during it (see onUnknownOutcome)."},
    )
    drop_credentials = StrictBoolean(
        data_key="dropCredentials", load_only=True,
        metadata={"description": "Write-only, for PUT/PATCH: a baseUrl on another origin (scheme, host, port) than "
                                 "the stored one is refused (409) while the tool has credentials or users' "
                                 "connections, which are sent only to the origin they were stored for; true "
                                 "deletes them (and their OAuth2 tokens) in the same transaction as the change."},
    )


class FieldValidationSchema(Base):
    """The original service's per-field constraints."""

    min = fields.Float(allow_none=True)
    max = fields.Float(allow_none=True)
    pattern = fields.String(allow_none=True, validate=validate.Length(max=1000))
    format = fields.String(allow_none=True, validate=validate.Length(max=100))

    @validates_schema
    def _pattern_compiles(self, data, **kwargs):
        wrong = jsonschemas.pattern_problem(data.get("pattern"))
        if wrong:
            raise ValidationError(wrong, "pattern")


class FieldDefinitionSchema(Base):
    """One entry of the original service's array form of ``inputSchema``."""

    name = text(1, 200, required=True)
    type = fields.String(required=True, validate=validate.OneOf(FIELD_TYPES))
    required = fields.Boolean()
    description = text(0, 2000, allow_none=True)
    default = fields.Raw(allow_none=True)
    options = fields.List(fields.Raw(), allow_none=True, validate=validate.Length(max=1000))
    validation = fields.Nested(FieldValidationSchema, allow_none=True)

    @validates_schema
    def _enum_has_options(self, data, **kwargs):
        if data.get("type") == "enum" and not data.get("options"):
            raise ValidationError("An enum field needs a non-empty options list.", "options")


def field_definitions_to_json_schema(definitions: list[dict]) -> dict:
    """Convert the original service's field list into an equivalent JSON Schema object."""
    properties: dict = {}
    required: list[str] = []
    for item in definitions:
        kind = item["type"]
        rules = item.get("validation") or {}
        prop: dict = {}
        if kind == "enum":
            prop["enum"] = item["options"]
        elif kind == "date":
            prop.update(type="string", format=rules.get("format") or "date")
        else:
            prop["type"] = kind
        if kind == "number":
            if rules.get("min") is not None:
                prop["minimum"] = rules["min"]
            if rules.get("max") is not None:
                prop["maximum"] = rules["max"]
        if kind == "string":
            if rules.get("min") is not None:
                prop["minLength"] = int(rules["min"])
            if rules.get("max") is not None:
                prop["maxLength"] = int(rules["max"])
            if rules.get("format"):
                prop["format"] = rules["format"]
        if rules.get("pattern") and kind in ("string", "date"):
            prop["pattern"] = rules["pattern"]
        if item.get("description"):
            prop["description"] = item["description"]
        if "default" in item:
            prop["default"] = item["default"]
        properties[item["name"]] = prop
        if item.get("required"):
            required.append(item["name"])
    schema: dict = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


class InputSchemaField(fields.Field):
    """A JSON Schema object, or the legacy field array (stored converted to JSON Schema). Its
    references must stay inside the document (tolstoy/jsonschemas.py): nothing is fetched."""

    default_error_messages = {
        "invalid": "Must be a JSON Schema object or an array of field definitions.",
    }

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, list):
            definitions = FieldDefinitionSchema(many=True).load(value)
            names = [d["name"] for d in definitions]
            if len(set(names)) != len(names):
                raise ValidationError("Field names must be unique.")
            value = field_definitions_to_json_schema(definitions)
        if not isinstance(value, dict):
            raise self.make_error("invalid")
        # Every reference is looked up now, so a dangling one is the writer's 400, not a failed call later.
        wrong = jsonschemas.problem(value)
        if wrong:
            raise ValidationError(wrong)
        return value


class ExecuteIfField(fields.Field):
    """A template string (``{{ … }}``) or a JSON condition object."""

    default_error_messages = {"invalid": "Must be a template string or a JSON object."}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            if not 1 <= len(value) <= 2000:
                raise ValidationError("Length must be between 1 and 2000.")
            return value
        if isinstance(value, dict):
            return value
        raise self.make_error("invalid")


MAX_SYNC_TIMEOUT_MS = 120_000  # the most an action may ask for; the server's maximum may be lower


class ActionSchema(TenantRecord):
    """``{toolId, name, key, method, endpoint, headers?, inputSchema?, executeIf?}``."""

    tool_id = fields.UUID(data_key="toolId", required=True)
    name = text(1, 200, required=True)
    key = fields.String(
        required=True,
        validate=[
            validate.Length(min=1, max=200),
            validate.Regexp(r"^\S+$", error="Must not contain whitespace."),
        ],
    )
    method = fields.String(required=True, validate=validate.OneOf(HTTP_METHODS))
    endpoint = fields.String(
        required=True,
        validate=[
            validate.Length(min=1, max=2048),
            validate.Regexp(r"^/\S*$", error="Must be a path starting with / and without spaces."),
        ],
    )
    headers = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=200)),
        values=fields.String(validate=validate.Length(max=8192)),
        allow_none=True,
    )
    input_schema = InputSchemaField(data_key="inputSchema", allow_none=True)
    execute_if = ExecuteIfField(data_key="executeIf", allow_none=True)
    # How long POST /actions/{id}/execute waits for the tool, end to end (null: the default,
    # TOLSTOY_SYNC_EXECUTE_TIMEOUT_MS; never more than TOLSTOY_SYNC_EXECUTE_MAX_TIMEOUT_MS).
    timeout_ms = fields.Integer(data_key="timeoutMs", strict=True, allow_none=True, load_default=None,
                                validate=validate.Range(100, MAX_SYNC_TIMEOUT_MS))
    version = fields.Integer(dump_only=True)


class ToolDetailSchema(ToolSchema):
    """A tool with its actions, as ``GET /tools/{id}`` returns it."""

    actions = fields.List(fields.Nested(ActionSchema), dump_only=True)


# ---- flow steps -------------------------------------------------------------

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
    flowKey = fields.String(
        validate=validate.Regexp(FLOW_KEY, error="Must match {regex}: 1 to 64 lower-case letters, digits, _ . or -."),
        metadata={"description": "The key of a flow of the same organization (this or flowId), resolved to the "
                                 "flow when the step runs."},
    )
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
    config = JSONObject(required=True)
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


class FlowSchema(TenantRecord):
    """``{name?, key?, description?, steps, onFailure?}``."""

    name = text(0, 200, allow_none=True)
    key = fields.String(
        allow_none=True, load_default=None,
        validate=validate.Regexp(FLOW_KEY, error="Must match {regex}: 1 to 64 lower-case letters, digits, _ . or -."),
        metadata={"description": "Optional short name, unique per organization: a subflow step may name this "
                                 "flow by it (flowKey)."},
    )
    description = text(0, 5000, allow_none=True)
    steps = fields.List(
        fields.Nested(StepSchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_STEPS),
    )
    on_failure = fields.List(
        fields.Nested(StepSchema), data_key="onFailure", allow_none=True,
        validate=validate.Length(min=1, max=MAX_STEPS),
        metadata={"description": "Steps run when a run fails; they see `error` ({message, stepId}) and "
                                 "`failedStepId`. Null: none."},
    )
    version = fields.Integer(dump_only=True)

    @validates_schema
    def _steps_form_a_graph(self, data, **kwargs):
        if data.get("steps"):
            problems = graph_errors(data["steps"])
            if problems:
                raise ValidationError({"steps": problems})
        if data.get("on_failure"):
            problems = graph_errors(data["on_failure"])
            if problems:
                raise ValidationError({"onFailure": problems})
            main = {step["id"] for step in data.get("steps") or []}
            for index, step in enumerate(data["on_failure"]):
                if step["id"] in main:
                    raise ValidationError({"onFailure": {index: {"id": [
                        "An onFailure step id must differ from the ids of the flow's steps."]}}})


class FlowVersionSchema(Base):
    """``{version, steps, createdAt}``: one immutable version of a flow."""

    version = fields.Integer(dump_only=True)
    steps = fields.List(fields.Dict(), dump_only=True)
    on_failure = fields.List(fields.Dict(), data_key="onFailure", dump_only=True, allow_none=True)
    created_at = Timestamp(data_key="createdAt", dump_only=True)


class ExecutionLogSchema(TenantRecord):
    """``{flowId, executionId, stepKey, status, inputs, outputs?, error?}``; userId from X-User-ID."""

    # Null only on logs of direct action executions, which the engine writes.
    flow_id = fields.UUID(data_key="flowId", required=True, allow_none=True)
    user_id = fields.UUID(data_key="userId", dump_only=True, allow_none=True)
    execution_id = text(1, 200, data_key="executionId", required=True)
    step_key = text(1, 200, data_key="stepKey", required=True,
                    metadata={"description": "Not one the engine reserves for its own rows: \"$…\" (such as $flow), "
                                             "\"onFailure.<id>\" or \"<id>[<n>]\"."})
    status = fields.String(required=True, validate=validate.OneOf(EXECUTION_STATUSES))
    inputs = JSONObject(required=True)
    outputs = JSONObject(allow_none=True)
    error = fields.Raw(allow_none=True)
    duration_ms = fields.Integer(data_key="durationMs", dump_only=True, allow_none=True,
                                 metadata={"description": "Set on logs the engine writes."})
    source = fields.String(dump_only=True, metadata={
        "enum": list(LOG_SOURCES),
        "description": "Who wrote the log: engine (Tolstoy itself: runs, run changes, action calls) or client "
                       "(POST /execution-logs). Read-only; an engine log cannot be changed or deleted (409)."})

    @validates("step_key")
    def _not_reserved(self, value, **kwargs):
        if engine.reserved_step_key(value):
            raise ValidationError(f"{value!r} is reserved for the engine's own logs (\"$…\", \"onFailure.<id>\", "
                                  "\"<id>[<n>]\"); name the step otherwise.")

    @validates_schema
    def _flow_is_required(self, data, **kwargs):
        if "flow_id" in data and data["flow_id"] is None:
            raise ValidationError("Field may not be null.", "flowId")


# ---- query strings ----------------------------------------------------------

class PageQuery(Base):
    """``?limit=&cursor=`` on every list."""

    limit = fields.Integer(validate=validate.Range(1, MAX_PAGE))
    cursor = text(1, 1000)


class ExecutionsQuery(PageQuery):
    """``GET /flows/{id}/executions``: a page, optionally only the children of one run."""

    parentExecutionId = fields.UUID(metadata={"description": "Only the runs this run's subflow steps queued."})


# ---- health -----------------------------------------------------------------

class HealthSchema(Base):
    """``GET /health``."""

    status = fields.String(dump_only=True)


class StatusSchema(Base):
    """``GET /status`` when the database answers (503 body has ``message`` instead)."""

    status = fields.String(dump_only=True)
    version = fields.String(dump_only=True)
    uptime = fields.Float(dump_only=True, metadata={"description": "Seconds since the process started."})
    timestamp = fields.String(dump_only=True)
    message = fields.String(dump_only=True)


class VersionSchema(Base):
    """``GET /version``."""

    name = fields.String(dump_only=True)
    version = fields.String(dump_only=True)
    python = fields.String(dump_only=True)
    falcon = fields.String(dump_only=True)


class FieldErrorSchema(Base):
    """One validation problem."""

    field = fields.String(dump_only=True)
    message = fields.String(dump_only=True)


class ErrorSchema(Base):
    """Every error response."""

    statusCode = fields.Integer(dump_only=True)
    error = fields.String(dump_only=True)
    message = fields.String(dump_only=True)
    errors = fields.List(fields.Nested(FieldErrorSchema), dump_only=True)
    quota = fields.String(dump_only=True, metadata={
        "description": "429 over a quota only: which (queuedRuns, storedBytes, requestsPerSecond)."})
    limit = fields.Integer(dump_only=True, metadata={"description": "429 over a quota only: its limit."})


# ---- engine -----------------------------------------------------------------

class ExecuteSchema(Base):
    """``POST /flows/{id}/execute``: the run's input."""

    variables = JSONObject(load_default=dict)


class RunStepSchema(Base):
    """One step checkpoint of a run."""

    step_id = fields.String(data_key="stepId", dump_only=True)
    status = fields.String(dump_only=True)
    attempt = fields.Integer(dump_only=True)
    inputs = fields.Raw(dump_only=True)
    outputs = fields.Raw(dump_only=True)
    error = fields.Raw(dump_only=True)
    wake_at = Timestamp(data_key="wakeAt", dump_only=True, allow_none=True)
    started_at = Timestamp(data_key="startedAt", dump_only=True)
    finished_at = Timestamp(data_key="finishedAt", dump_only=True, allow_none=True)
    duration_ms = fields.Integer(data_key="durationMs", dump_only=True, allow_none=True)
    child_execution_id = fields.UUID(data_key="childExecutionId", dump_only=True, allow_none=True,
                                     metadata={"description": "The run a subflow step queued; null otherwise."})
    phase = fields.String(dump_only=True, metadata={"description": "main, or onFailure for failure handlers."})
    waiting_for = fields.Dict(data_key="waitingFor", dump_only=True, allow_none=True,
                              metadata={"description": "A wait step parked for a signal: {signal, since, "
                                                       "timeoutAt}; null otherwise."})


class RunSchema(Base):
    """A flow run (execution)."""

    id = fields.UUID(data_key="executionId", dump_only=True)
    org_id = fields.UUID(data_key="orgId", dump_only=True)
    flow_id = fields.UUID(data_key="flowId", dump_only=True)
    flow_version = fields.Integer(data_key="flowVersion", dump_only=True)
    user_id = fields.UUID(data_key="userId", dump_only=True, allow_none=True)
    status = fields.String(dump_only=True)
    variables = fields.Dict(dump_only=True)
    outputs = fields.Raw(dump_only=True)
    error = fields.Raw(dump_only=True)
    retry_of = fields.UUID(data_key="retryOf", dump_only=True, allow_none=True)
    parent_run_id = fields.UUID(data_key="parentExecutionId", dump_only=True, allow_none=True,
                                metadata={"description": "The run whose subflow step queued this one; null for "
                                                         "a top-level run."})
    parent_step_id = fields.String(data_key="parentStepId", dump_only=True, allow_none=True,
                                   metadata={"description": "The id of that subflow step."})
    created_at = Timestamp(data_key="createdAt", dump_only=True)
    started_at = Timestamp(data_key="startedAt", dump_only=True, allow_none=True)
    finished_at = Timestamp(data_key="finishedAt", dump_only=True, allow_none=True)


class RunDetailSchema(RunSchema):
    """A run with its step checkpoints."""

    steps = fields.List(fields.Nested(RunStepSchema), dump_only=True)


class RunAcceptedSchema(Base):
    """202 body of execute and retry."""

    id = fields.UUID(data_key="executionId", dump_only=True)
    flow_id = fields.UUID(data_key="flowId", dump_only=True)
    flow_version = fields.Integer(data_key="flowVersion", dump_only=True)
    status = fields.String(dump_only=True)
    retry_of = fields.UUID(data_key="retryOf", dump_only=True, allow_none=True)


class ResolveSchema(Base):
    """``POST …/steps/{stepId}/resolve``: what became of a call whose outcome was unknown."""

    outcome = fields.String(required=True, validate=validate.OneOf(("succeeded", "failed", "retry")))
    outputs = fields.Raw(allow_none=True, metadata={"description": "What the step returned (with succeeded)."})
    message = fields.String(validate=validate.Length(max=2000), allow_none=True,
                            metadata={"description": "Why (with failed); kept in the step's error."})


class FlowMetricsSchema(Base):
    """``GET /flows/{id}/metrics``."""

    totalExecutions = fields.Integer(dump_only=True)
    statusBreakdown = fields.Dict(keys=fields.String(), values=fields.Integer(), dump_only=True)
    successRate = fields.Float(dump_only=True, allow_none=True,
                               metadata={"description": "completed / finished runs; null before any finished."})
    p50Ms = fields.Float(dump_only=True, allow_none=True)
    p95Ms = fields.Float(dump_only=True, allow_none=True)


class ActionExecuteSchema(Base):
    """``POST /actions/{id}/execute``."""

    inputs = JSONObject(required=True)


class ActionResultSchema(Base):
    """200 body of an action execution."""

    success = fields.Boolean(dump_only=True)
    executionId = fields.String(dump_only=True)
    durationMs = fields.Integer(dump_only=True)
    statusCode = fields.Integer(dump_only=True, allow_none=True)
    data = fields.Raw(dump_only=True)


def _required_strings(*names: str) -> dict:
    return {name: text(1, 8192, required=True) for name in names}


class OAuth2Config(Schema):
    """An oauth2 credential: the client credentials grant (or a refresh token), or, with ``perUser``,
    each user's own connection made through the authorization code grant at ``authorizeUrl``."""

    clientId = text(1, 1000, required=True)
    clientSecret = text(1, 8192, required=True)
    tokenUrl = HttpUrl(required=True)
    scopes = fields.List(text(1, 200), validate=validate.Length(max=100))
    accessToken = text(1, 8192)
    refreshToken = text(1, 8192)
    # Per-user connections (authorization code + PKCE, GET /auth/{toolKey}/login): where users consent,
    # and that calls use the tokens of the run's user instead of the organization's.
    authorizeUrl = HttpUrl(validate=validate.Length(max=2048))
    perUser = StrictBoolean()

    class Meta:
        unknown = RAISE

    @validates_schema
    def _per_user_needs_authorize_url(self, data, **kwargs):
        if data.get("perUser") and not data.get("authorizeUrl"):
            raise ValidationError("Required when perUser is true (where users consent).", "authorizeUrl")


CREDENTIAL_CONFIGS = {
    "apiKey": Schema.from_dict({
        "headerName": fields.String(required=True, validate=[
            validate.Length(min=1, max=200),
            validate.Regexp(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", error="Not a valid HTTP header name.")]),
        "headerValue": text(1, 8192, required=True),
    }, name="ApiKeyConfig"),
    "bearer": Schema.from_dict(_required_strings("token"), name="BearerConfig"),
    "basic": Schema.from_dict({"username": text(1, 1000, required=True), "password": text(0, 8192, required=True)},
                              name="BasicConfig"),
    "oauth2": OAuth2Config,
}
for _schema in CREDENTIAL_CONFIGS.values():
    _schema.Meta.unknown = RAISE


def load_credential_config(kind: str, config: dict) -> dict:
    """A credential's config as its type's schema loads it. A secret field holding the masked form the
    API shows (``***abcd``) is refused: a client that reads a credential and sends it back would
    otherwise store the mask in place of the secret, and its calls would fail at the tool."""
    loaded = CREDENTIAL_CONFIGS[kind]().load(config)
    shown = [name for name in engine.SECRET_FIELDS.get(kind, ())
             if isinstance(loaded.get(name), str) and loaded[name].startswith(redaction.MASK)]
    if shown:
        raise ValidationError({name: ["This is the masked form the API shows, not the secret: send the secret "
                                      "itself (or leave the credential as it is)."] for name in shown})
    return loaded


class CredentialSchema(Base):
    """``POST /tools/{id}/auth``: ``{name?, type, config, isDefault?}``; secrets are write-only."""

    name = text(1, 200, load_default="default")
    type = fields.String(required=True, validate=validate.OneOf(tuple(CREDENTIAL_CONFIGS)))
    config = JSONObject(required=True)
    is_default = StrictBoolean(data_key="isDefault", load_default=False)
    id = fields.UUID(dump_only=True)
    tool_id = fields.UUID(data_key="toolId", dump_only=True)
    created_at = Timestamp(data_key="createdAt", dump_only=True)
    updated_at = Timestamp(data_key="updatedAt", dump_only=True)

    @validates_schema
    def _config_matches_type(self, data, **kwargs):
        if data.get("type") in CREDENTIAL_CONFIGS and "config" in data:
            try:
                data["config"] = load_credential_config(data["type"], data["config"])
            except ValidationError as exc:
                raise ValidationError({"config": exc.messages}) from None


# ---- API keys -----------------------------------------------------------------

# What an API key may do (docs/api.md): read (GET), write (create, change, delete), execute
# (run flows and actions, act on runs), admin (the organization's API keys).
# impersonate: act as any user of the organization (use their connected accounts, connect one for
# them); a key without it acts only as the user it is bound to (userId), if any.
SCOPES = ("read", "write", "execute", "admin", "impersonate")
# What a key gets when it names no scopes: every scope but impersonate, which is only ever given
# by name, so that acting as users is never granted by accident.
DEFAULT_SCOPES = ("read", "write", "execute", "admin")


def unique_items(values: list) -> None:
    """A list without repeats."""
    if len(set(values)) != len(values):
        raise ValidationError("Items must be unique.")


class ApiKeySchema(Base):
    """``{id, name, prefix, scopes, expiresAt, userId, createdAt, lastUsedAt}``; ``apiKey`` only in the
    answer that creates it."""

    id = fields.UUID(dump_only=True)
    name = text(1, 200, required=True)
    prefix = fields.String(dump_only=True)
    # Every scope but impersonate unless the caller names them: keys made by clients that know no
    # scopes keep working as they did.
    scopes = fields.List(fields.String(validate=validate.OneOf(SCOPES)), load_default=list(DEFAULT_SCOPES),
                         validate=[validate.Length(min=1, max=len(SCOPES)), unique_items])
    expires_at = Timestamp(data_key="expiresAt", allow_none=True, load_default=None)
    # The user the key acts as (their connected accounts); null: an organization key. Never changes.
    user_id = fields.UUID(data_key="userId", allow_none=True, load_default=None)
    api_key = fields.String(data_key="apiKey", dump_only=True)
    created_at = Timestamp(data_key="createdAt", dump_only=True)
    last_used_at = Timestamp(data_key="lastUsedAt", dump_only=True, allow_none=True)

    @validates("expires_at")
    def _in_the_future(self, value, **_):
        if value is not None and value <= dt.datetime.now(dt.UTC):
            raise ValidationError("Must be in the future.")


# ---- flow triggers ------------------------------------------------------------

TRIGGER_TYPES = ("webhook", "schedule")
# Presets whose sender makes the secret (Stripe's whsec_…, Slack's signing secret): it must be given.
SENDER_SECRETS = ("stripe", "slack")
_WEBHOOK_ONLY = (("verification", "verification"), ("secret", "secret"))
_SCHEDULE_ONLY = (("cron", "cron"), ("timezone", "timezone"), ("catch_up", "catchUp"))


class TriggerSchema(TenantRecord):
    """``{type: "webhook", verification?, secret?}`` or ``{type: "schedule", cron, timezone?, catchUp?}``."""

    flow_id = fields.UUID(data_key="flowId", dump_only=True)
    type = fields.String(required=True, validate=validate.OneOf(TRIGGER_TYPES))
    enabled = StrictBoolean(load_default=True)
    verification = fields.String(
        validate=validate.OneOf(signatures.PRESETS), allow_none=True,
        metadata={"description": "webhook: how requests are verified (default tolstoy: X-Tolstoy-Signature)."})
    secret = text(8, 500, load_only=True, metadata={
        "description": "webhook: the signing secret (required for stripe and slack, whose sender makes it; "
                       "generated when omitted otherwise). Shown once, in the answer that creates the trigger."})
    url = fields.String(dump_only=True, allow_none=True,
                        metadata={"description": "webhook: the path to POST to (relative)."})
    cron = text(1, 200, allow_none=True, metadata={
        "description": "schedule: cron expression, five fields or six with seconds last."})
    timezone = text(1, 100, allow_none=True, metadata={"description": "schedule: IANA time zone (default UTC)."})
    catch_up = fields.String(data_key="catchUp", validate=validate.OneOf(("one", "none")), allow_none=True,
                             metadata={"description": "schedule: after downtime fire once (one, default) or "
                                                      "skip the missed times (none)."})
    next_run_at = Timestamp(data_key="nextRunAt", dump_only=True, allow_none=True)
    last_fired_at = Timestamp(data_key="lastFiredAt", dump_only=True, allow_none=True, metadata={
        "description": "schedule: when it last came due and fired (a run queued, or the slot skipped: see "
                       "lastSkippedAt)."})
    last_skipped_at = Timestamp(data_key="lastSkippedAt", dump_only=True, allow_none=True, metadata={
        "description": "schedule: when a run it was due to queue was last refused by a quota of the organization "
                       "(the slot was skipped; the schedule went on)."})
    last_skip_reason = fields.String(data_key="lastSkipReason", dump_only=True, allow_none=True, metadata={
        "description": "schedule: why (the quota's message)."})

    @validates_schema
    def _fields_of_the_type(self, data, **kwargs):
        kind = data.get("type")
        if kind not in TRIGGER_TYPES:
            return
        problems: dict = {}
        foreign = _SCHEDULE_ONLY if kind == "webhook" else _WEBHOOK_ONLY
        for attribute, key in foreign:
            if data.get(attribute) is not None:
                problems[key] = [f"Only {'schedule' if kind == 'webhook' else 'webhook'} triggers have this field."]
        if kind == "webhook" and data.get("verification") in SENDER_SECRETS and not data.get("secret"):
            problems["secret"] = ["Give the signing secret the sender made (required for this verification)."]
        if kind == "schedule":
            if not data.get("cron"):
                problems["cron"] = ["A schedule needs a cron expression."]
            else:
                try:
                    schedules.check_cron(data["cron"])
                except schedules.ScheduleError as exc:
                    problems["cron"] = [str(exc)]
            try:
                schedules.zone(data.get("timezone") or "UTC")
            except schedules.ScheduleError as exc:
                problems["timezone"] = [str(exc)]
        if problems:
            raise ValidationError(problems)


class TriggerCreatedSchema(TriggerSchema):
    """The answer that creates a trigger: a webhook's secret is shown here, once."""

    secret = fields.String(dump_only=True, allow_none=True)


class TriggerPatchSchema(Base):
    """``PATCH /flows/{id}/triggers/{triggerId}``: enable or disable."""

    enabled = StrictBoolean(required=True)


class DeliverySchema(Base):
    """One request to a webhook trigger, as the inbox keeps it (the body is not listed)."""

    id = fields.UUID(dump_only=True)
    org_id = fields.UUID(data_key="orgId", dump_only=True)
    trigger_id = fields.UUID(data_key="triggerId", dump_only=True)
    verdict = fields.String(dump_only=True, metadata={
        "description": "valid (verified, run queued), invalid (bad or missing signature), stale or replayed."})
    reason = fields.String(dump_only=True, allow_none=True)
    delivery_id = fields.String(data_key="deliveryId", dump_only=True, allow_none=True,
                                metadata={"description": "The sender's event id (X-GitHub-Delivery, …)."})
    headers = fields.Dict(dump_only=True)
    execution_id = fields.UUID(data_key="executionId", dump_only=True, allow_none=True)
    body_bytes = fields.Integer(data_key="bodyBytes", dump_only=True, allow_none=True)
    source = fields.String(dump_only=True, allow_none=True, metadata={
        "description": "A refused request's sender (its address, an IPv6 one by its /64; * for the sources past "
                       "the hour's cap); null for verified requests."})
    refusals = fields.Integer(dump_only=True, metadata={
        "description": "How many requests this entry counts: refused requests of one trigger, hour, verdict and "
                       "source are counted in one entry (1 for a verified request)."})
    last_received_at = Timestamp(data_key="lastReceivedAt", dump_only=True, metadata={
        "description": "When the latest request this entry counts was received (receivedAt for one request)."})
    received_at = Timestamp(data_key="receivedAt", dump_only=True)
    created_at = Timestamp(data_key="createdAt", dump_only=True)


class HookAcceptedSchema(Base):
    """202 (or 200 for a redelivered event) body of ``POST /hooks/{triggerId}``."""

    execution_id = fields.UUID(data_key="executionId", dump_only=True)


# ---- signals and approval links (wait steps) -----------------------------------

SIGNAL_NAME_RE = re.compile(SIGNAL_NAME)
MAX_LINK_SECONDS = 30 * 24 * 3600


class SignalSchema(Base):
    """``POST …/executions/{executionId}/signals/{signal}``: what the wait step returns."""

    payload = fields.Raw(allow_none=True, load_default=None,
                         metadata={"description": "Any JSON; the wait step's output."})


class SignalAcceptedSchema(Base):
    """202 body of a signal: the stored signal."""

    id = fields.UUID(data_key="signalId", dump_only=True)
    run_id = fields.UUID(data_key="executionId", dump_only=True)
    signal = fields.String(dump_only=True)
    created_at = Timestamp(data_key="createdAt", dump_only=True)


class LinkSchema(Base):
    """``POST …/signals/{signal}/links``: an approval link for a person."""

    approver = fields.Email(allow_none=True, validate=validate.Length(max=320))
    expiresInSeconds = fields.Integer(strict=True, load_default=7 * 24 * 3600,
                                      validate=validate.Range(60, MAX_LINK_SECONDS))


class LinkCreatedSchema(Base):
    """201 body of an approval link."""

    url = fields.String(dump_only=True)
    expires_at = Timestamp(data_key="expiresAt", dump_only=True)
    approver = fields.String(dump_only=True, allow_none=True)
    signal = fields.String(dump_only=True)
    run_id = fields.UUID(data_key="executionId", dump_only=True)


class ApprovalSchema(Base):
    """``POST /approvals/{token}``: the person's decision."""

    decision = fields.String(required=True, validate=validate.OneOf(("approve", "reject")))
    comment = fields.String(allow_none=True, validate=validate.Length(max=2000))


# ---- outbound event webhooks ------------------------------------------------------------

WEBHOOK_EVENT_TYPES = engine.WEBHOOK_EVENT_TYPES
# Shown instead of a webhook's secret and its header values (sending it back keeps the stored value).
MASK = "********"
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,200}$")


def _header_problem(name: str, value) -> str | None:
    if not _HEADER_NAME.match(name):
        return f"{name!r} is not a valid header name."
    if name.lower() in engine.WEBHOOK_RESERVED_HEADERS:
        return f"{name} is set by Tolstoy on every delivery."
    if not isinstance(value, str) or len(value) > 8192 or any(c in value for c in "\r\n\0"):
        return f"The value of {name} must be a string of at most 8192 characters, on one line."
    return None


class WebhookSchema(TenantRecord):
    """``{name, url, eventTypes, enabled, secret?, headers?}``; the secret and header values are
    shown masked (the secret in full once, in the answer that creates the webhook)."""

    name = text(1, 200, required=True)
    url = HttpUrl(required=True, validate=validate.Length(max=2048),
                     metadata={"description": "Where deliveries are POSTed (http or https; checked by the "
                                              "outbound guard at every attempt)."})
    event_types = fields.List(fields.String(), data_key="eventTypes", required=True,
                              metadata={"description": "Event types to deliver (GET /webhooks/event-types)."})
    enabled = StrictBoolean(load_default=True)
    secret = text(16, 500, metadata={
        "description": "HMAC-SHA256 signing secret (generated when omitted; shown in full only when created, "
                       f"masked as {MASK} afterwards; sending {MASK} back keeps it)."})
    headers = fields.Dict(keys=fields.String(), values=fields.Raw(), allow_none=True, metadata={
        "description": f"Custom headers sent with every delivery; values encrypted at rest, shown as {MASK}."})
    disabled_reason = fields.String(data_key="disabledReason", dump_only=True, allow_none=True,
                                    metadata={"description": "Why the workers disabled the webhook, if they did."})
    failing_since = Timestamp(data_key="failingSince", dump_only=True, allow_none=True,
                              metadata={"description": "First failed attempt since the last success."})

    @validates("event_types")
    def _known_types(self, value, **_):
        unknown = sorted({t for t in value if t not in WEBHOOK_EVENT_TYPES}, key=str)
        if unknown:
            raise ValidationError(f"Unknown event types: {', '.join(map(str, unknown))} "
                                  f"(known: {', '.join(WEBHOOK_EVENT_TYPES)}).")
        if not value:
            raise ValidationError("Give at least one event type.")
        unique_items(value)

    @validates("headers")
    def _valid_headers(self, value, **_):
        if value is None:
            return
        if len(value) > 50:
            raise ValidationError("At most 50 headers.")
        problems = [p for p in (_header_problem(k, v) for k, v in value.items()) if p]
        if problems:
            raise ValidationError(problems)


class WebhookCreatedSchema(WebhookSchema):
    """The answer that creates a webhook: its secret in full, once."""

    secret = fields.String(dump_only=True)


class WebhookDeliverySchema(Base):
    """One event sent (or to send) to a webhook, with every attempt made."""

    id = fields.UUID(dump_only=True, metadata={"description": "Sent as X-Webhook-Delivery (same every attempt)."})
    org_id = fields.UUID(data_key="orgId", dump_only=True)
    webhook_id = fields.UUID(data_key="webhookId", dump_only=True)
    event_id = fields.UUID(data_key="eventId", dump_only=True, metadata={"description": "The envelope's id."})
    event_type = fields.String(data_key="eventType", dump_only=True)
    data = fields.Dict(dump_only=True, metadata={"description": "The event's data, as the envelope carries it."})
    state = fields.String(dump_only=True, metadata={
        "description": "pending (due at nextAttemptAt, or after the unfinished delivery before it), sending, "
                       "delivered, failed (given up), cancelled (the webhook was disabled)."})
    attempts = fields.Integer(dump_only=True)
    attempt_log = fields.List(fields.Dict(), data_key="attemptLog", dump_only=True, metadata={
        "description": "Every attempt: {attempt, at, statusCode, durationMs, error, location} (location: the "
                       "Location of a 3xx answer, which is never followed)."})
    next_attempt_at = Timestamp(data_key="nextAttemptAt", dump_only=True, allow_none=True)
    last_status_code = fields.Integer(data_key="lastStatusCode", dump_only=True, allow_none=True)
    last_error = fields.String(data_key="lastError", dump_only=True, allow_none=True)
    first_attempt_at = Timestamp(data_key="firstAttemptAt", dump_only=True, allow_none=True)
    last_attempt_at = Timestamp(data_key="lastAttemptAt", dump_only=True, allow_none=True)
    finished_at = Timestamp(data_key="finishedAt", dump_only=True, allow_none=True)
    event_created_at = Timestamp(data_key="eventCreatedAt", dump_only=True)
    created_at = Timestamp(data_key="createdAt", dump_only=True)
    updated_at = Timestamp(data_key="updatedAt", dump_only=True)


class WebhookTestSchema(Base):
    """202 body of ``POST /webhooks/{id}/test``: the delivery queued."""

    delivery_id = fields.UUID(data_key="deliveryId", dump_only=True)
    state = fields.String(dump_only=True)


# ---- clients of the original service (compat) ------------------------------------------------

# The original's free-form secret keys, and which credential field each fills per authType.
SECRET_KEYS = ("apiKey", "headerName", "token", "accessToken", "refreshToken", "username", "password",
               "clientId", "clientSecret")


class SecretsSchema(Base):
    """``POST /tools/{id}/secrets``: ``{"credentials": {key: value}}`` with the original's keys."""

    credentials = fields.Dict(keys=fields.String(), values=text(0, 8192), required=True,
                              validate=validate.Length(min=1),
                              metadata={"description": "Keys: " + ", ".join(SECRET_KEYS) + " (per the tool's "
                                                       "authType); any other key is a 400."})


class ToolSecretsSchema(Base):
    """A tool's secrets as the original showed them: masked, under the keys it was sent with."""

    tool_id = fields.UUID(data_key="toolId", dump_only=True)
    tool_name = fields.String(data_key="toolName", dump_only=True)
    masked_credentials = fields.Dict(data_key="maskedCredentials", dump_only=True)
    created_at = Timestamp(data_key="createdAt", dump_only=True)
    updated_at = Timestamp(data_key="updatedAt", dump_only=True)


class ToolSecretsSummarySchema(Base):
    """One row of ``GET /tools/secrets``."""

    tool_id = fields.UUID(data_key="toolId", dump_only=True)
    tool_name = fields.String(data_key="toolName", dump_only=True)
    tool_type = fields.String(data_key="toolType", dump_only=True)
    has_credentials = fields.Boolean(data_key="hasCredentials", dump_only=True)
    credential_keys = fields.List(fields.String(), data_key="credentialKeys", dump_only=True)
    last_updated = Timestamp(data_key="lastUpdated", dump_only=True, allow_none=True)


class SecretsQuery(Base):
    """``GET /tools/{id}/secrets``: ``?unmask=true`` is refused (secrets are write-only)."""

    unmask = fields.Boolean()


class LoginQuery(Base):
    """``GET /auth/{toolKey}/login?userId=``: the user who connects (else X-User-ID)."""

    userId = fields.UUID()


class ConnectedSchema(Base):
    """200 of ``GET /auth/{toolKey}/callback``."""

    success = fields.Boolean(dump_only=True)
    credentialId = fields.UUID(dump_only=True)
    message = fields.String(dump_only=True)


class UserConnectionSchema(TenantRecord):
    """A tool a user connected (``GET /users/{id}/connections``): never its tokens."""

    user_id = fields.UUID(data_key="userId", dump_only=True)
    tool_id = fields.UUID(data_key="toolId", dump_only=True)
    tool_name = fields.String(data_key="toolName", dump_only=True)
    tool_key = fields.String(data_key="toolKey", dump_only=True, allow_none=True)
    scope = fields.String(dump_only=True, allow_none=True)
    expires_at = Timestamp(data_key="expiresAt", dump_only=True, allow_none=True)


# ---- audit trail ----------------------------------------------------------------

AUDIT_TARGET_TYPES = ("organization", "user", "tool", "tool_credential", "action", "flow", "trigger", "webhook",
                      "api_key", "user_connection", "quota")


class AuditActorSchema(Base):
    """Who made a change, as the API authenticated the request (the keys that apply)."""

    userId = fields.UUID(dump_only=True, allow_none=True, metadata={
        "description": "headers mode: the X-User-ID the gateway forwarded (null: none); api_key mode: the user "
                       "the key is bound to (absent: none)."})
    apiKeyPrefix = fields.String(dump_only=True, metadata={"description": "The key's shown prefix (api_key mode)."})
    admin = fields.Boolean(dump_only=True, metadata={
        "description": "true: the admin token (api_key mode) or the gateway on /organizations (headers mode)."})


class AuditTargetSchema(Base):
    """The record changed."""

    type = fields.String(dump_only=True, metadata={"enum": list(AUDIT_TARGET_TYPES)})
    id = fields.UUID(dump_only=True)


class AuditEventSchema(Base):
    """``{id, orgId, actor, action, target, changes, requestId, at}``: one record changed by one request."""

    id = fields.UUID(dump_only=True)
    orgId = fields.UUID(dump_only=True)
    actor = fields.Nested(AuditActorSchema, dump_only=True)
    action = fields.String(dump_only=True, metadata={"description": "<target type>.created, .updated or .deleted."})
    target = fields.Nested(AuditTargetSchema, dump_only=True)
    changes = fields.Dict(dump_only=True, metadata={
        "description": "{field: [old, new]} of the fields that changed (creation: [null, new]; deletion: "
                       "[old, null]); secrets show as \"***\", never their values."})
    requestId = fields.String(dump_only=True, allow_none=True, metadata={"description": "X-Request-ID."})
    at = Timestamp(dump_only=True)


class AuditEventsQuery(PageQuery):
    """``GET /audit-events``: a page, optionally of one target or one actor."""

    targetType = fields.String(validate=validate.OneOf(AUDIT_TARGET_TYPES),
                               metadata={"description": "Only changes of this kind of record."})
    targetId = fields.UUID(metadata={"description": "Only changes of this record."})
    actorUserId = fields.UUID(metadata={"description": "Only changes made by this user."})
    actorApiKeyPrefix = text(1, 40, metadata={"description": "Only changes made with this API key (its prefix)."})
    actorAdmin = fields.Boolean(metadata={"description": "true: only the admin's changes; false: only others'."})
