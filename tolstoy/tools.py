"""``/tools``: external HTTP APIs; a single tool is shown with its actions."""

from __future__ import annotations

from . import resources
from .queries import SQL
from .schemas import ToolDetailSchema, ToolSchema


class ToolModel:
    """Shared settings of the tool resources."""

    noun = "Tool"
    schema = ToolSchema()
    detail_schema = ToolDetailSchema()
    # GET /tools/{id} includes actions; a client may send them back on PUT.
    derived_fields = frozenset({"actions"})

    def represent(self, row: dict) -> dict:
        """A tool with every one of its actions."""
        actions = self.db.all(SQL.actions.list_by_tool, org_id=row["org_id"], tool_id=row["id"])
        return self.detail_schema.dump({**row, "actions": actions})


class Collection(ToolModel, resources.Collection):
    """``GET/POST /tools``; the list shows tools without their actions."""


class Item(ToolModel, resources.Item):
    """``GET/PUT/PATCH/DELETE /tools/{id}``; delete is 409 while the tool has actions."""
