"""``/actions``: operations a tool offers."""

from __future__ import annotations

import time
import uuid

import falcon

from . import resources
from .queries import SQL
from .db import json as dbjson
from .engine import Engine, StepFailed, input_errors

# A synchronous call must answer well inside Gunicorn's worker timeout (gunicorn.conf.py).
SYNC_TIMEOUT_MS = 20000
from .errors import ValidationFailed
from .http import read_json, validate_body
from .outbound import mask_secrets
from .schemas import ActionExecuteSchema, ActionListQuery, ActionResultSchema, ActionSchema
from .tenancy import require_user


class ActionModel:
    """Shared settings and checks of the action resources."""

    noun = "Action"
    schema = ActionSchema()

    def check_references(self, req: falcon.Request, values: dict) -> None:
        """toolId must be a tool of the caller's organization."""
        if "tool_id" in values:
            self.require_visible(req, SQL.tools.exists, values["tool_id"], "toolId", "tool")


class Collection(ActionModel, resources.Collection):
    """``GET/POST /actions``; ``?toolId=`` filters by tool."""

    list_query = ActionListQuery()
    filters = {"toolId": "tool_id"}


class Item(ActionModel, resources.Item):
    """``GET/PUT/PATCH/DELETE /actions/{id}``; ``POST /actions/{id}/execute``."""

    execute_schema = ActionExecuteSchema()
    result_schema = ActionResultSchema()

    def __init__(self, db, store, engine: Engine):
        super().__init__(db, store)
        self.engine = engine

    def on_post_execute(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Call the action's tool now, with the engine's HTTP and auth code, and log the call."""
        require_user(req)
        data = read_json(req)
        _, action = self.find(req, id)
        inputs = validate_body(self.execute_schema, data)["inputs"]
        if action["input_schema"]:
            problems = input_errors(action["input_schema"], inputs)
            if problems:
                raise ValidationFailed(problems)
        execution_id = str(uuid.uuid4())
        started = time.perf_counter()
        secrets: list = []
        try:
            call = self.engine.build_call(req.context.org_id, action, inputs)
            secrets = call.secrets
            reply = self.engine.send(call, SYNC_TIMEOUT_MS, f"{execution_id}:{action['key']}:1")
            success, status_code, body, error = reply.status < 400, reply.status, reply.body, None
            if not success:
                error = {"name": "UpstreamError", "message": f"Upstream answered {reply.status}"}
        except StepFailed as exc:
            success, status_code, body, error = False, exc.details.get("status"), {"error": str(exc)}, exc.as_error()
        duration = int((time.perf_counter() - started) * 1000)
        self.db.one(
            SQL.execution_logs.insert, org_id=req.context.org_id, flow_id=None, user_id=req.context.user_id,
            execution_id=execution_id, step_key=action["key"], status="completed" if success else "failed",
            inputs=dbjson(mask_secrets(inputs, secrets)),
            outputs=dbjson(mask_secrets({"statusCode": status_code, "data": body}, secrets)),
            error=dbjson(mask_secrets(error, secrets)), duration_ms=duration,
        )
        resp.media = self.result_schema.dump({
            "success": success, "executionId": execution_id, "durationMs": duration,
            "statusCode": status_code, "data": body,
        })
