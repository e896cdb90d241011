"""``/flows``: versioned workflow definitions and their version history."""

from __future__ import annotations

import falcon

from . import resources
from .errors import NotFound, ValidationFailed
from .http import decode_cursor, finish_page, page_limit, respond, validate_query
from .queries import SQL
from .schemas import FlowSchema, FlowVersionSchema, PageQuery

_VERSION_SCHEMA = FlowVersionSchema()


class FlowModel:
    """Shared settings and checks of the flow resources."""

    noun = "Flow"
    schema = FlowSchema()

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
            for raw, loaded in zip(data["steps"], values["steps"]):
                if "actionId" in loaded["config"]:  # urn:uuid:…, braces, upper case
                    raw["config"]["actionId"] = str(loaded["config"]["actionId"])
            values["steps"] = data["steps"]
        return values


class Collection(FlowModel, resources.Collection):
    """``GET/POST /flows``."""


class Item(FlowModel, resources.Item):
    """``GET/PUT/PATCH/DELETE /flows/{id}``; ``GET /flows/{id}/versions``."""

    versions_query = PageQuery()

    def on_get_versions(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Every version of the flow's steps, newest first, one keyset page at a time."""
        flow_id, _ = self.find(req, id)
        query = validate_query(self.versions_query, req)
        before = None
        if query.get("cursor"):
            values = decode_cursor(query["cursor"])
            if (len(values) != 1 or not isinstance(values[0], int) or isinstance(values[0], bool)
                    or not 1 <= values[0] <= 2_147_483_647):
                raise ValidationFailed([{"field": "cursor", "message": "Not a valid cursor."}])
            before = values[0]
        limit = page_limit(query)
        rows = self.db.all(
            SQL.flows.list_versions,
            org_id=req.context.org_id,
            flow_id=flow_id,
            before_version=before,
            limit=limit + 1,
        )
        rows = finish_page(req, resp, rows, limit, key=lambda row: [row["version"]])
        resp.media = _VERSION_SCHEMA.dump(rows, many=True)


class Version(FlowModel, resources.Model):
    """``GET /flows/{id}/versions/{version}``: one immutable version."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, id: str, version: str) -> None:
        """One version of the flow's steps."""
        flow_id, _ = self.find(req, id)
        if not (version.isascii() and version.isdigit()) or not 1 <= int(version) <= 2_147_483_647:
            raise NotFound("Flow version")
        row = self.db.one(
            SQL.flows.get_version, org_id=req.context.org_id, flow_id=flow_id, version=int(version)
        )
        if row is None:
            raise NotFound("Flow version")
        respond(resp, _VERSION_SCHEMA.dump(row))
