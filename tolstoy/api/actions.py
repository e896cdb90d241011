"""``/actions``: operations a tool offers; ``POST /actions/{id}/execute`` calls one now."""

from __future__ import annotations

import uuid

import falcon
from marshmallow import fields

from .. import engine
from ..db.queries import SQL
from ..jsonsafe import UNSTORABLE
from . import resources
from .dumping import dumper
from .errors import NotFound, TooManyRequests, ValidationFailed
from .model import Filter, Model
from .requests import read_json, validate_body
from .schemas import ActionExecuteSchema, ActionResultSchema, ActionSchema
from .tenancy import cannot_act_as, may_act_as, require_user

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
