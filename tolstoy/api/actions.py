"""``/actions``: operations a tool offers; ``POST /actions/{id}/execute`` calls one now."""

from __future__ import annotations

import falcon
from marshmallow import fields

from .. import engine
from ..db.queries import SQL
from . import resources
from .dumping import dumper
from .errors import ValidationFailed
from .model import Filter, Model
from .requests import read_json, validate_body
from .schemas import ActionExecuteSchema, ActionResultSchema, ActionSchema
from .tenancy import require_user

MODEL = Model(
    name="actions", path="/actions", noun="Action", tag="Actions", schema=ActionSchema,
    writable=("tool_id", "name", "key", "method", "endpoint", "headers", "input_schema", "execute_if"),
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
    """``GET/PUT/PATCH/DELETE /actions/{id}``; ``POST /actions/{id}/execute``."""

    execute_schema = ActionExecuteSchema()
    result = staticmethod(dumper(ActionResultSchema()))

    def __init__(self, db, tools: engine.Tools):
        super().__init__(db)
        self.tools = tools

    def on_post_execute(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Call the action's tool now, with the engine's HTTP and auth code, and log the call."""
        require_user(req)
        data = read_json(req)
        # The action is all this request reads before calling the tool: its unit of work ends
        # here, so no connection or transaction is held while the tool answers.
        _, action = self.find(req, id, commit=True)
        inputs = validate_body(self.execute_schema, data)["inputs"]
        try:
            result = self.tools.call_action(req.context.org_id, req.context.user_id, action, inputs)
        except engine.InvalidInputs as exc:
            raise ValidationFailed(exc.problems) from None
        resp.media = self.result(result)
