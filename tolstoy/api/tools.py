"""``/tools``: external HTTP APIs; a single tool is shown with its actions."""

from __future__ import annotations

from ..db.queries import SQL
from . import resources
from .model import Model
from .schemas import ToolDetailSchema, ToolSchema

MODEL = Model(
    name="tools", path="/tools", noun="Tool", tag="Tools", schema=ToolSchema,
    writable=("name", "base_url", "auth_type"), detail_schema=ToolDetailSchema,
    delete_blocked_by="actions",
    # GET /tools/{id} includes actions; a client may send them back on PUT.
    derived_fields=frozenset({"actions"}),
)


class ToolResource(resources.ModelResource):
    """A single tool is shown with every one of its actions."""

    model = MODEL
    detail = ToolDetailSchema()

    def represent(self, row: dict) -> dict:
        """A tool with every one of its actions."""
        actions = self.db.all(SQL.actions.list_by_tool, org_id=row["org_id"], tool_id=row["id"])
        return self.detail.dump({**row, "actions": actions})


class Collection(ToolResource, resources.Collection):
    """``GET/POST /tools``; the list shows tools without their actions."""


class Item(ToolResource, resources.Item):
    """``GET/PUT/PATCH/DELETE /tools/{id}``; delete is 409 while the tool has actions."""
