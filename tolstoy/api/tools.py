"""``/tools``: external HTTP APIs; a single tool is shown with its actions."""

from __future__ import annotations

from . import resources
from .dumping import dumper
from .model import Model
from .schemas import ToolDetailSchema, ToolSchema

MODEL = Model(
    name="tools", path="/tools", noun="Tool", tag="Tools", schema=ToolSchema,
    writable=("name", "key", "base_url", "auth_type", "honors_idempotency_key"), detail_schema=ToolDetailSchema,
    delete_blocked_by="actions",
    # GET /tools/{id} includes actions; a client may send them back on PUT.
    derived_fields=frozenset({"actions"}),
)


class ToolResource(resources.ModelResource):
    """A single tool is shown with every one of its actions (its queries return them)."""

    model = MODEL
    detail = staticmethod(dumper(ToolDetailSchema()))

    def represent(self, row: dict) -> dict:
        """A tool with every one of its actions."""
        return self.detail(row)


class Collection(ToolResource, resources.Collection):
    """``GET/POST /tools``; the list shows tools without their actions."""


class Item(ToolResource, resources.Item):
    """``GET/PUT/PATCH/DELETE /tools/{id}``; delete is 409 while the tool has actions."""
