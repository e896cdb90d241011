"""``/tools``: external HTTP APIs; a single tool is shown with its actions."""

from __future__ import annotations

import falcon
from marshmallow import fields, validate

from .. import engine
from ..db.queries import SQL
from ..fieldtypes import HttpUrl, StrictBoolean, TenantRecord, key_field, text
from . import resources
from .actions import ActionSchema
from .dumping import dumper
from .errors import Conflict, Constraints
from .model import Model

# What the database's constraints on tools mean to a client (errors.Constraints).
CONSTRAINTS = Constraints(
    checks={"tools_base_url_scheme": "baseUrl", "tools_key_format": "key", "tools_name_length": "name"},
    unique={"tools_org_id_name_key": "A tool with this name already exists in this organization.",
        "tools_org_id_key_key": "A tool with this key already exists in this organization."},
    dependents={"tools_org_id_fkey": "tools"},
)

AUTH_TYPES = ("none", "apiKey", "bearer", "basic", "oauth2")


class ToolSchema(TenantRecord):
    """``{name, key?, baseUrl, authType, honorsIdempotencyKey}``."""

    name = text(1, 200, required=True)
    key = key_field("Optional short name, unique per organization: the original service's /auth/{toolKey}/login and "
                    "callback routes name the tool by it.", allow_none=True, load_default=None)
    base_url = HttpUrl(data_key="baseUrl", required=True, validate=validate.Length(max=2048))
    auth_type = fields.String(
        data_key="authType", required=True, validate=validate.OneOf(AUTH_TYPES)
    )
    honors_idempotency_key = fields.Boolean(
        data_key="honorsIdempotencyKey", load_default=False,
        metadata={"description": "The tool treats a repeated Idempotency-Key as the same request, so the engine "
                                 "may send a call again when a worker died during it (see onUnknownOutcome)."},
    )
    drop_credentials = StrictBoolean(
        data_key="dropCredentials", load_only=True,
        metadata={"description": "Write-only, for PUT/PATCH: a baseUrl on another origin (scheme, host, port) than "
                                 "the stored one is refused (409) while the tool has credentials or users' "
                                 "connections, which are sent only to the origin they were stored for; true "
                                 "deletes them (and their OAuth2 tokens) in the same transaction as the change."},
    )


class ToolDetailSchema(ToolSchema):
    """A tool with its actions, as ``GET /tools/{id}`` returns it."""

    actions = fields.List(fields.Nested(ActionSchema), dump_only=True)


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

    def before_update(self, req: falcon.Request, row: dict, values: dict) -> None:
        """Credentials are bound to an origin: moving the tool to another one (scheme, host, port)
        is a 409 naming baseUrl while it has credentials or users' connections, unless the body says
        ``dropCredentials: true``, which deletes them in this transaction (the tool row is locked,
        so none is stored meanwhile). A new path on the same origin keeps them."""
        drop = values.pop("drop_credentials", False)
        moved_to = values.get("base_url")
        if moved_to is None or engine.origin_of(moved_to) == engine.origin_of(row["base_url"]):
            return
        org_id = req.context.org_id
        if not self.db.scalar(SQL.tool_credentials.bound_to_tool, org_id=org_id, tool_id=row["id"]):
            return
        if not drop:
            raise Conflict(
                f"baseUrl: the tool's credentials and users' connections are sent only to "
                f"{engine.origin_of(row['base_url'])}, where they were stored; to move the tool to "
                f"{engine.origin_of(moved_to)}, send \"dropCredentials\": true to delete them with the change "
                "(then store the credential for the new origin), or keep the origin.")
        self.db.rowcount(SQL.tool_credentials.drop_for_tool, org_id=org_id, tool_id=row["id"])


SCHEMAS = {"Tool": ToolSchema, "ToolDetail": ToolDetailSchema}
ROUTES = resources.routes(MODEL, lambda s: Collection(s.db), lambda s: Item(s.db))
