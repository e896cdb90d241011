"""``/flows``: versioned workflow definitions and their version history."""

from __future__ import annotations

import falcon

from ..db.queries import SQL
from . import resources
from .dumping import dumper, many
from .errors import NotFound, ValidationFailed
from .model import Model
from .paging import version_cursor, version_key
from .responses import respond
from .schemas import FlowSchema, FlowVersionSchema, PageQuery

MODEL = Model(
    name="flows", path="/flows", noun="Flow", tag="Flows", schema=FlowSchema,
    writable=("name", "description", "steps"), json_columns=("steps",),
    delete_blocked_by="execution logs or executions (purge them with DELETE /flows/{id}/executions)",
)
_VERSION = dumper(FlowVersionSchema())


class FlowResource(resources.ModelResource):
    """Shared checks of the flow resources."""

    model = MODEL

    def check_references(self, req: falcon.Request, values: dict) -> None:
        """Every action a step names must be an action of the caller's organization."""
        problems = []
        for index, step in enumerate(values.get("steps") or []):
            if step["type"] != "action":
                continue
            config = step["config"]
            if "actionId" in config:
                found = self.db.scalar(
                    SQL.actions.exists_by_id, org_id=req.context.org_id, id=config["actionId"]
                )
                field = f"steps[{index}].config.actionId"
            else:
                found = self.db.scalar(
                    SQL.actions.exists_by_key, org_id=req.context.org_id, key=config["actionKey"]
                )
                field = f"steps[{index}].config.actionKey"
            if not found:
                problems.append({"field": field, "message": "No action with this reference in this organization."})
        if problems:
            raise ValidationFailed(problems)

    def load_values(self, data: dict, partial: bool) -> dict:
        """Validate, then keep the steps as the client wrote them (ids of actions in one spelling)."""
        values = super().load_values(data, partial)
        if "steps" in values:
            for raw, loaded in zip(data["steps"], values["steps"], strict=True):
                if "actionId" in loaded["config"]:  # urn:uuid:…, braces, upper case
                    raw["config"]["actionId"] = str(loaded["config"]["actionId"])
            values["steps"] = data["steps"]
        return values


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
        if not (version.isascii() and version.isdigit()) or not 1 <= int(version) <= 2_147_483_647:
            raise NotFound("Flow version")
        row = resources.get_or_404(self.db, SQL.flows.get_version, "Flow version", commit=True,
                                   org_id=req.context.org_id, flow_id=flow_id, version=int(version))
        respond(resp, _VERSION(row))
