"""``/actions``: operations a tool offers; ``POST /actions/{id}/execute`` calls one now."""

from __future__ import annotations

import uuid

import falcon
from marshmallow import ValidationError, fields, validate, validates_schema

from .. import engine, jsonschemas
from ..db.queries import SQL
from ..fieldtypes import Base, JSONObject, TenantRecord, text
from ..jsonsafe import UNSTORABLE
from . import resources
from .dumping import dumper
from .errors import Constraints, NotFound, TooManyRequests, ValidationFailed
from .model import Filter, Model
from .requests import read_json, validate_body
from .routing import Route, Services, errors, json_content, tenant_params
from .tenancy import cannot_act_as, may_act_as, require_user

# What the database's constraints on actions mean to a client (errors.Constraints).
CONSTRAINTS = Constraints(
    checks={"actions_endpoint_path": "endpoint", "actions_headers_object": "headers",
        "actions_input_schema_object": "inputSchema", "actions_key_length": "key", "actions_name_length": "name",
        "actions_timeout_ms_range": "timeoutMs"},
    unique={"actions_org_id_key_key": "An action with this key already exists in this organization."},
    dependents={"actions_tool_id_fkey": "actions"},
    references={"actions_tool_id_fkey": "toolId"},
    service=frozenset({"actions_version_positive"}),
)

FIELD_TYPES = ("string", "number", "boolean", "enum", "date")


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
    method = fields.String(required=True, validate=validate.OneOf(engine.HTTP_METHODS))
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
    # The accepted shapes are written out for the document: marshmallow cannot describe these fields.
    input_schema = InputSchemaField(data_key="inputSchema", allow_none=True, metadata={
        "description": "JSON Schema object, or the original service's array of field definitions (stored converted).",
        "oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}, {"type": "null"}]})
    execute_if = ExecuteIfField(data_key="executeIf", allow_none=True, metadata={
        "oneOf": [{"type": "string"}, {"type": "object"}, {"type": "null"}]})
    # How long POST /actions/{id}/execute waits for the tool, end to end (null: the default,
    # TOLSTOY_SYNC_EXECUTE_TIMEOUT_MS; never more than TOLSTOY_SYNC_EXECUTE_MAX_TIMEOUT_MS).
    timeout_ms = fields.Integer(data_key="timeoutMs", strict=True, allow_none=True, load_default=None,
                                validate=validate.Range(100, MAX_SYNC_TIMEOUT_MS))
    version = fields.Integer(dump_only=True)


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


MODEL = Model(
    name="actions", path="/actions", noun="Action", tag="Actions", schema=ActionSchema,
    writable=("tool_id", "name", "key", "method", "endpoint", "headers", "input_schema", "execute_if", "timeout_ms"),
    json_columns=("headers", "input_schema", "execute_if"),
    filters=(Filter("toolId", "tool_id", fields.UUID(), "Only actions of this tool (UUID)."),),
)


class ActionResource(resources.ModelResource):
    """Shared checks of the action resources."""

    model = MODEL

    def check_references(self, req: falcon.Request, values: dict) -> None:
        """toolId must be a tool of the caller's organization."""
        if "tool_id" in values:
            self.require_visible(req, SQL.tools.exists, values["tool_id"], "toolId", "tool")


class Collection(ActionResource, resources.Collection):
    """``GET/POST /actions``; ``?toolId=`` filters by tool."""


class Item(ActionResource, resources.Item):
    """``GET/PUT/PATCH/DELETE /actions/{id}``; ``POST /actions/{idOrKey}/execute``."""

    execute_schema = ActionExecuteSchema()
    result = staticmethod(dumper(ActionResultSchema()))

    def __init__(self, db, tools: engine.ToolClient, config):
        super().__init__(db)
        self.tools = tools
        self.default_timeout_ms = config.sync_execute_timeout_ms
        self.max_timeout_ms = config.sync_execute_max_timeout_ms
        self.per_org = config.sync_execute_per_org

    def find_by_id_or_key(self, req: falcon.Request, id_or_key: str) -> dict:
        """The action a path segment names: its id (a UUID), else its ``key`` (the original service
        executes by key); one query either way, a second only for a UUID-shaped key."""
        org_id = req.context.org_id
        try:
            action_id = uuid.UUID(id_or_key)
        except ValueError:
            action_id = None
        if action_id is not None:
            found = self.db.one(SQL.actions.get, org_id=org_id, id=action_id)
            if found is not None:
                return found
        if UNSTORABLE.search(id_or_key) or len(id_or_key) > 200:  # no stored key is like this
            raise NotFound(self.noun)
        return resources.get_or_404(self.db, SQL.actions.get_by_key, self.noun, org_id=org_id, key=id_or_key)

    def on_post_execute(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Call the action's tool now, with the engine's HTTP and auth code, and log the call:
        within the action's time limit, and 429 while the organization has as many such calls
        running as it may (flows are the way to call slow tools)."""
        require_user(req)
        data = read_json(req)
        action = self.find_by_id_or_key(req, id)  # another organization's action is a 404 before any 400
        inputs = validate_body(self.execute_schema, data)["inputs"]
        timeout_ms = min(action.get("timeout_ms") or self.default_timeout_ms, self.max_timeout_ms)
        org_id, holder = req.context.org_id, uuid.uuid4()
        # Reading the action and taking a slot are one transaction; it ends before the tool is
        # called, so no connection is held while the tool answers. A slot outlives a dead
        # process by at most the call's time limit and a margin.
        self.db.rowcount(SQL.actions.ensure_slots, org_id=org_id, slots=self.per_org)
        slot = self.db.scalar(SQL.actions.take_slot, commit=True, org_id=org_id, slots=self.per_org,
                              holder=holder, hold_seconds=timeout_ms / 1000 + 5)
        if slot is None:
            raise TooManyRequests(
                f"This organization already has {self.per_org} synchronous executions running; retry "
                "shortly, or run slow tools in a flow (POST /flows/{id}/execute).", retry_after=1)
        try:
            # X-User-ID records who the call is for; calling a per-user tool with that user's tokens
            # also needs the authority to act as them.
            result = self.tools.call_action(org_id, req.context.user_id, action, inputs, timeout_ms,
                                            acts_as_user=may_act_as(req, req.context.user_id))
        except engine.InvalidInputs as exc:
            raise ValidationFailed(exc.problems) from None
        except engine.ActAsUserRefused:
            raise cannot_act_as(req.context.user_id) from None
        finally:
            self.db.rowcount(SQL.actions.release_slot, commit=True, org_id=org_id, slot=slot, holder=holder)
        resp.media = self.result(result)


def _item(s: Services) -> Item:
    return Item(s.db, s.tools, s.config)


SCHEMAS = {"Action": ActionSchema, "ActionExecute": ActionExecuteSchema, "ActionResult": ActionResultSchema}
ROUTES = (
    *resources.routes(MODEL, lambda s: Collection(s.db), _item),
    Route("/actions/{id}/execute", _item, "execute", operations={"post": {
        "tags": ["Actions"], "summary": "Call the action's tool now (inputs checked against inputSchema)",
        "parameters": [*tenant_params(user_required=True),
                       {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
                        "description": "The action's id, or its key (as the original service)."}],
        "requestBody": {"required": True, "content": json_content("ActionExecute")},
        "responses": {"200": {"description": "The tool's answer (an upstream error is success: false).",
                              "content": json_content("ActionResult")}, **errors("400", "404", "413", "415"),
                      "403": {"description": "A missing scope; or the tool is per-user and the API key may not act "
                                             "as X-User-ID (bound to another user, no impersonate scope).",
                              "content": json_content("Error")}}}}),
)
