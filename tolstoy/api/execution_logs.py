"""``/execution-logs``: the audit trail of runs, one row per step event."""

from __future__ import annotations

import falcon
from marshmallow import ValidationError, fields, validate, validates, validates_schema

from .. import engine
from ..db.queries import SQL
from ..fieldtypes import JSONObject, TenantRecord, text
from . import resources
from .errors import Conflict, Constraints
from .model import Filter, Model
from .tenancy import require_user

# What the database's constraints on execution_logs mean to a client (errors.Constraints).
CONSTRAINTS = Constraints(
    checks={"execution_logs_execution_id_length": "executionId", "execution_logs_inputs_object": "inputs",
        "execution_logs_outputs_object": "outputs", "execution_logs_step_key_length": "stepKey"},
    dependents={"execution_logs_flow_id_fkey": "execution logs or executions (DELETE /flows/{id}/executions purges "
                                               "finished executions and their logs)",
                "execution_logs_user_id_fkey": "execution logs"},
    references={"execution_logs_flow_id_fkey": "flowId", "execution_logs_user_id_fkey": "X-User-ID"},
)

# Who wrote an execution log (the column execution_logs.source).
LOG_SOURCES = ("engine", "client")
EXECUTION_STATUSES = (
    "pending", "queued", "running", "started", "completed", "failed", "skipped", "cancelled",
)


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


MODEL = Model(
    name="execution_logs", path="/execution-logs", noun="Execution log", tag="Execution logs",
    schema=ExecutionLogSchema,
    writable=("flow_id", "execution_id", "step_key", "status", "inputs", "outputs", "error"),
    json_columns=("inputs", "outputs", "error"),
    filters=(
        Filter("flowId", "flow_id", fields.UUID(), "Only logs of this flow (UUID)."),
        Filter("executionId", "execution_id", text(1, 200), "Only logs of this run."),
        Filter("status", "status", fields.String(validate=validate.OneOf(EXECUTION_STATUSES)),
               "Only logs with this status."),
        Filter("userId", "user_id", fields.UUID(), "Only logs written by this user (UUID)."),
    ),
    user_required_on_create=True,
    # Written by the engine or the database; a GET body PUT back must not be refused for carrying them.
    derived_fields=frozenset({"durationMs", "source"}),
)


class ExecutionLogResource(resources.ModelResource):
    """Shared checks of the execution log resources."""

    model = MODEL

    def check_references(self, req: falcon.Request, values: dict) -> None:
        """flowId must be a flow of the caller's organization."""
        if "flow_id" in values:
            self.require_visible(req, SQL.flows.exists, values["flow_id"], "flowId", "flow")

    def check_changeable(self, row: dict) -> None:
        """The engine's rows are the run's audit trail: no client changes or deletes them (409)."""
        if row["source"] != "client":
            raise Conflict("This execution log was written by the engine (source \"engine\"): it is part of its "
                           "run's audit trail and cannot be changed or deleted. Only logs written through "
                           "POST /execution-logs (source \"client\") can.")


class Collection(ExecutionLogResource, resources.Collection):
    """``GET/POST /execution-logs``; creating one records X-User-ID as its actor."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Create a log; X-User-ID is required (checked with the other headers)."""
        require_user(req)
        super().on_post(req, resp)

    def insert(self, req: falcon.Request, values: dict) -> dict:
        """The actor comes from the header, never from the body; the row is the client's (source
        ``client``, set by the statement itself); durationMs is the engine's."""
        return self.db.one(self.sql.insert, org_id=req.context.org_id, user_id=req.context.user_id,
                           **self.columns(values))


class Item(ExecutionLogResource, resources.Item):
    """``GET/PUT/PATCH/DELETE /execution-logs/{id}``."""


SCHEMAS = {"ExecutionLog": ExecutionLogSchema}
ROUTES = resources.routes(MODEL, lambda s: Collection(s.db), lambda s: Item(s.db))
