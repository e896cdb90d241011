"""``/flows``: versioned workflow definitions and their version history."""

from __future__ import annotations

import falcon
from marshmallow import ValidationError, fields, validate, validates_schema

from ..db.queries import SQL
from ..engine import graph_errors
from ..fieldtypes import Base, PageQuery, TenantRecord, Timestamp, key_field, text
from ..numerals import unsigned
from . import resources
from .dumping import dumper, many
from .errors import Constraints, NotFound, ValidationFailed
from .flow_steps import MAX_STEPS, StepSchema
from .model import Model
from .paging import version_cursor, version_key
from .requests import flatten_messages
from .responses import respond
from .routing import PAGE, PAGE_HEADERS, Route, Services, errors, json_content, path_id, tenant_params

# What the database's constraints on flows mean to a client (errors.Constraints).
CONSTRAINTS = Constraints(
    checks={"flows_description_length": "description", "flows_key_format": "key", "flows_name_length": "name",
        "flows_on_failure_array": "onFailure", "flows_steps_array": "steps",
        "flows_concurrency_shape": "concurrency"},
    unique={"flows_org_id_key_key": "A flow with this key already exists in this organization."},
    dependents={"flows_org_id_fkey": "flows"},
    service=frozenset({"flows_version_positive"}),
)


class ConcurrencySchema(Base):
    """``{limit}`` or ``{key, limit, flowLimit?}``: how many runs of the flow run at once."""

    key = fields.String(validate=validate.Length(1, 1000), metadata={
        "description": "A template over the run's variables (`{{ variables.customer }}`), rendered when the run is "
                       "queued: `limit` runs per key run at once. Without it, `limit` is for the whole flow."})
    limit = fields.Integer(strict=True, required=True, validate=validate.Range(1, 10000), metadata={
        "description": "Runs at once per key (with `key`), else of the whole flow."})
    # Stored as sent (flows.concurrency is read by the database: tolstoy_queue_run_v4).
    flow_limit = fields.Integer(strict=True, data_key="flowLimit", attribute="flowLimit",
                                validate=validate.Range(1, 10000), metadata={
        "description": "With `key`: runs at once of the whole flow, whatever their keys."})

    @validates_schema
    def _flow_limit_needs_a_key(self, data, **kwargs):
        if "flowLimit" in data and "key" not in data:
            raise ValidationError({"flowLimit": ["Only with a key; without one, limit is the flow's."]})


class FlowSchema(TenantRecord):
    """``{name?, key?, description?, steps, onFailure?, concurrency?}``."""

    name = text(0, 200, allow_none=True)
    key = key_field("Optional short name, unique per organization: a subflow step may name this flow by it "
                    "(flowKey).", allow_none=True, load_default=None)
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
    concurrency = fields.Nested(ConcurrencySchema, allow_none=True, metadata={
        "description": "How many runs of the flow run at once, across workers: a run over a limit waits queued "
                       "(waitingFor.concurrency) until a run ends. Null: no limit."})
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


MODEL = Model(
    name="flows", path="/flows", noun="Flow", tag="Flows", schema=FlowSchema,
    writable=("name", "key", "description", "steps", "on_failure", "concurrency"),
    json_columns=("steps", "on_failure", "concurrency"),
    delete_blocked_by="execution logs or executions (purge them with DELETE /flows/{id}/executions)",
)
_VERSION = dumper(FlowVersionSchema())
# The save-time search for sub-flow cycles reads at most this many flow versions.
SUBFLOW_SEARCH = 100


def subflow_steps(steps) -> list[dict]:
    """The subflow steps of a stored list of steps."""
    return [s for s in steps or [] if isinstance(s, dict) and s.get("type") == "subflow"]


class FlowResource(resources.ModelResource):
    """Shared checks of the flow resources."""

    model = MODEL

    def check_references(self, req: falcon.Request, values: dict) -> None:
        """Every action a step names must be an action of the caller's organization."""
        problems = []
        named = [("steps", index, step) for index, step in enumerate(values.get("steps") or [])]
        named += [("onFailure", index, step) for index, step in enumerate(values.get("on_failure") or [])]
        for where, index, step in named:
            if step["type"] != "action":
                continue
            config = step["config"]
            if "actionId" in config:
                found = self.db.scalar(
                    SQL.actions.exists_by_id, org_id=req.context.org_id, id=config["actionId"]
                )
                field = f"{where}[{index}].config.actionId"
            else:
                found = self.db.scalar(
                    SQL.actions.exists_by_key, org_id=req.context.org_id, key=config["actionKey"]
                )
                field = f"{where}[{index}].config.actionKey"
            if not found:
                problems.append({"field": field, "message": "No action with this reference in this organization."})
        problems += self.subflow_problems(req, named)
        problems += self.id_clashes(req, values)
        if problems:
            raise ValidationFailed(problems)

    def id_clashes(self, req: falcon.Request, values: dict) -> list[dict]:
        """A PATCH that sends only ``steps`` or only ``onFailure``: their ids must still differ from the
        stored other list's (the schema checks a body that sends both)."""
        stored = getattr(req.context, "flow_row", None)
        if stored is None or ("steps" in values) == ("on_failure" in values):
            return []
        if "steps" in values:
            where, sent, others = "steps", values["steps"] or [], stored.get("on_failure") or []
        else:
            where, sent, others = "onFailure", values["on_failure"] or [], stored.get("steps") or []
        taken = {step.get("id") for step in others if isinstance(step, dict)}
        return [{"field": f"{where}[{index}].id",
                 "message": "An onFailure step id must differ from the ids of the flow's steps."}
                for index, step in enumerate(sent) if step["id"] in taken]

    def find(self, req: falcon.Request, raw_id: str, **kwargs) -> tuple:
        """As for every model; remembers which flow is being saved (for the sub-flow cycle check)."""
        record_id, row = super().find(req, raw_id, **kwargs)
        req.context.flow_id = record_id
        req.context.flow_row = row
        return record_id, row

    def subflow_problems(self, req: falcon.Request, named: list[tuple[str, int, dict]]) -> list[dict]:
        """Every flow a subflow step names (by flowId or flowKey) must be a flow of the caller's organization
        (with the version it pins), and no chain of sub-flows visible now (through the versions they would
        run) may lead back to the flow being saved."""
        problems = []
        saving = str(getattr(req.context, "flow_id", None) or "") or None
        for where, index, step in named:
            if step["type"] != "subflow":
                continue
            config = step["config"]
            field = f"{where}[{index}].config"
            named_by = "flowKey" if "flowKey" in config else "flowId"
            target = self.subflow_target(req, config)
            if target is None:
                what = "key" if named_by == "flowKey" else "id"
                problems.append({"field": f"{field}.{named_by}",
                                 "message": f"No flow with this {what} in this organization."})
            elif target["steps"] is None:
                problems.append({"field": f"{field}.version",
                                 "message": f"The flow has no version {config.get('version')}."})
            elif saving is not None:
                cycle = self.subflow_cycle(req, saving, {**target, "pinned": config.get("version")})
                if cycle:
                    problems.append({"field": f"{field}.{named_by}",
                                     "message": "Sub-flow cycle: " + " → ".join(cycle) + "."})
        return problems

    def subflow_target(self, req: falcon.Request, config: dict) -> dict | None:
        """The flow a subflow step's config names (by flowId or flowKey) with the steps of the version it
        would run now (None when the flow has no such version), or None when there is no such flow."""
        if config.get("flowKey") is not None:
            return self.db.one(SQL.flows.subflow_target_by_key, org_id=req.context.org_id,
                               key=str(config["flowKey"]), version=config.get("version"))
        return self.db.one(SQL.flows.subflow_target, org_id=req.context.org_id, id=str(config.get("flowId")),
                           version=config.get("version"))

    def subflow_cycle(self, req: falcon.Request, saving: str, first: dict) -> list[str] | None:
        """The flow ids of a chain of sub-flows from ``saving`` through ``first`` back to ``saving`` (whose
        current version is the one being saved), or None. A step naming its flow by key is followed to
        the flow that key names now. Explores at most SUBFLOW_SEARCH flow versions."""
        node = (str(first["id"]), first["pinned"])
        paths = {node: [saving, node[0]]}
        todo = [(node, first["steps"])]
        by_key: dict[tuple, dict | None] = {}  # each (flowKey, version) is looked up once
        while todo:
            node, steps = todo.pop(0)
            if node == (saving, None):
                return paths[node]
            for step in subflow_steps(steps):
                config = step.get("config") or {}
                if len(paths) >= SUBFLOW_SEARCH:
                    break
                if "flowKey" in config:
                    ref = (config["flowKey"], config.get("version"))
                    if ref not in by_key:  # a key is resolved before the node it names is known
                        by_key[ref] = self.subflow_target(req, config)
                    target = by_key[ref]
                    if target is None:
                        continue
                    nxt = (str(target["id"]), config.get("version"))
                else:
                    target = None
                    nxt = (str(config.get("flowId")), config.get("version"))
                if nxt in paths:
                    continue
                paths[nxt] = paths[node] + [nxt[0]]
                if nxt == (saving, None):
                    return paths[nxt]
                if target is None:
                    target = self.subflow_target(req, config)
                if target is not None and target["steps"] is not None:
                    todo.append((nxt, target["steps"]))
        return None

    def load_values(self, data: dict, partial: bool) -> dict:
        """Validate, then keep the steps as the client wrote them (ids of actions in one spelling)."""
        values = super().load_values(data, partial)
        for column, key in (("steps", "steps"), ("on_failure", "onFailure")):
            if values.get(column) is not None:
                for raw, loaded in zip(data[key], values[column], strict=True):
                    if "actionId" in loaded["config"]:  # urn:uuid:…, braces, upper case
                        raw["config"]["actionId"] = str(loaded["config"]["actionId"])
                    if loaded["type"] == "subflow" and "flowId" in loaded["config"]:
                        raw["config"]["flowId"] = str(loaded["config"]["flowId"])
                values[column] = data[key]
        return values


def check_step(db, req: falcon.Request, field: str, step: dict) -> None:
    """The checks a flow's save makes of one step (its schema, its config against its kind's, the action
    or flow it names), for a step changed elsewhere (a re-run's ``steps``): 400 naming ``field``'s parts."""
    try:
        loaded = StepSchema().load(step)
    except ValidationError as exc:
        raise ValidationFailed(flatten_messages(exc.messages, field)) from None
    try:
        FlowResource(db).check_references(req, {"steps": [loaded]})
    except ValidationFailed as exc:
        raise ValidationFailed([{**e, "field": e["field"].replace("steps[0]", field, 1)} for e in exc.errors]) from None


class Collection(FlowResource, resources.Collection):
    """``GET/POST /flows``."""


class Item(FlowResource, resources.Item):
    """``GET/PUT/PATCH/DELETE /flows/{id}``; ``GET /flows/{id}/versions``."""

    versions_query = PageQuery()

    def on_get_versions(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Every version of the flow's steps, newest first, one keyset page at a time."""
        flow_id, _ = self.find(req, id)
        resources.list_page(
            req, resp, self.versions_query,
            lambda query, **page: self.db.all(SQL.flows.list_versions, commit=True, org_id=req.context.org_id,
                                              flow_id=flow_id, **page),
            many(_VERSION),
            cursor=version_cursor, key=version_key,
        )


class Version(FlowResource):
    """``GET /flows/{id}/versions/{version}``: one immutable version."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, id: str, version: str) -> None:
        """One version of the flow's steps."""
        flow_id, _ = self.find(req, id)
        number = unsigned(version, 10)
        if number is None or not 1 <= number <= 2_147_483_647:
            raise NotFound("Flow version")
        row = resources.get_or_404(self.db, SQL.flows.get_version, "Flow version", commit=True,
                                   org_id=req.context.org_id, flow_id=flow_id, version=number)
        respond(resp, _VERSION(row))


def _item(s: Services) -> Item:
    return Item(s.db)


_FLOW = [*tenant_params(), path_id()]
SCHEMAS = {"Step": StepSchema, "Flow": FlowSchema, "FlowVersion": FlowVersionSchema}
ROUTES = (
    *resources.routes(MODEL, lambda s: Collection(s.db), _item),
    Route("/flows/{id}/versions", _item, "versions", operations={"get": {
        "tags": ["Flows"], "summary": "Every version of a flow's steps, newest first",
        "parameters": _FLOW + PAGE,
        "responses": {"200": {"description": "One page of versions.", "headers": PAGE_HEADERS,
                              "content": json_content("FlowVersion", many=True)},
                      **errors("400", "404")}}}),
    Route("/flows/{id}/versions/{version}", lambda s: Version(s.db), operations={"get": {
        "tags": ["Flows"], "summary": "One version of a flow",
        "parameters": _FLOW + [{"name": "version", "in": "path", "required": True,
                                "schema": {"type": "integer", "minimum": 1}}],
        "responses": {"200": {"description": "The version.", "content": json_content("FlowVersion")},
                      **errors("400", "404")}}}),
)
