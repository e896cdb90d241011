"""``/actions``: operations a tool offers."""

from __future__ import annotations

import falcon

from . import resources
from .queries import SQL
from .schemas import ActionListQuery, ActionSchema


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
    """``GET/PUT/PATCH/DELETE /actions/{id}``; version rises on definitional changes."""
