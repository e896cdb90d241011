"""``/tools/{id}/auth``: a tool's credentials. Stored encrypted with the organization's data
key, shown masked; each decryption for showing is recorded in ``secret_reads``."""

from __future__ import annotations

from urllib.parse import quote

import falcon
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from .. import engine, redaction
from ..db.queries import SQL
from ..fieldtypes import Base, HttpUrl, JSONObject, StrictBoolean, Timestamp, text
from ..jsonsafe import UNSTORABLE
from . import resources
from .dumping import dumper
from .errors import Constraints, NotFound
from .requests import parse_uuid, read_json, validate_body
from .responses import created
from .routing import Route, Services, errors, json_content, path_id, tenant_params

# What the database's constraints on tool_credentials mean to a client (errors.Constraints).
CONSTRAINTS = Constraints(
    checks={"tool_credentials_name_length": "name", "tool_credentials_type_not_none": "type"},
    unique={"tool_credentials_one_default_per_tool": "Another request made a different credential the default; try again."},
    dependents={"tool_credentials_tool_id_fkey": "credentials (DELETE /tools/{id}/auth/{name})"},
)


def _required_strings(*names: str) -> dict:
    return {name: text(1, 8192, required=True) for name in names}


class OAuth2Config(Schema):
    """An oauth2 credential: the client credentials grant (or a refresh token), or, with ``perUser``,
    each user's own connection made through the authorization code grant at ``authorizeUrl``."""

    clientId = text(1, 1000, required=True)
    clientSecret = text(1, 8192, required=True)
    tokenUrl = HttpUrl(required=True)
    scopes = fields.List(text(1, 200), validate=validate.Length(max=100))
    accessToken = text(1, 8192)
    refreshToken = text(1, 8192)
    # Per-user connections (authorization code + PKCE, GET /auth/{toolKey}/login): where users consent,
    # and that calls use the tokens of the run's user instead of the organization's.
    authorizeUrl = HttpUrl(validate=validate.Length(max=2048))
    perUser = StrictBoolean()

    class Meta:
        unknown = RAISE

    @validates_schema
    def _per_user_needs_authorize_url(self, data, **kwargs):
        if data.get("perUser") and not data.get("authorizeUrl"):
            raise ValidationError("Required when perUser is true (where users consent).", "authorizeUrl")


CREDENTIAL_CONFIGS = {
    "apiKey": Schema.from_dict({
        "headerName": fields.String(required=True, validate=[
            validate.Length(min=1, max=200),
            validate.Regexp(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", error="Not a valid HTTP header name.")]),
        "headerValue": text(1, 8192, required=True),
    }, name="ApiKeyConfig"),
    "bearer": Schema.from_dict(_required_strings("token"), name="BearerConfig"),
    "basic": Schema.from_dict({"username": text(1, 1000, required=True), "password": text(0, 8192, required=True)},
                              name="BasicConfig"),
    "oauth2": OAuth2Config,
}


for _schema in CREDENTIAL_CONFIGS.values():
    _schema.Meta.unknown = RAISE


def load_credential_config(kind: str, config: dict) -> dict:
    """A credential's config as its type's schema loads it. A secret field holding the masked form the
    API shows (``***abcd``) is refused: a client that reads a credential and sends it back would
    otherwise store the mask in place of the secret, and its calls would fail at the tool."""
    loaded = CREDENTIAL_CONFIGS[kind]().load(config)
    shown = [name for name in engine.SECRET_FIELDS.get(kind, ())
             if isinstance(loaded.get(name), str) and loaded[name].startswith(redaction.MASK)]
    if shown:
        raise ValidationError({name: ["This is the masked form the API shows, not the secret: send the secret "
                                      "itself (or leave the credential as it is)."] for name in shown})
    return loaded


class CredentialSchema(Base):
    """``POST /tools/{id}/auth``: ``{name?, type, config, isDefault?}``; secrets are write-only."""

    name = text(1, 200, load_default="default")
    type = fields.String(required=True, validate=validate.OneOf(tuple(CREDENTIAL_CONFIGS)))
    config = JSONObject(required=True)
    is_default = StrictBoolean(data_key="isDefault", load_default=False)
    id = fields.UUID(dump_only=True)
    tool_id = fields.UUID(data_key="toolId", dump_only=True)
    created_at = Timestamp(data_key="createdAt", dump_only=True)
    updated_at = Timestamp(data_key="updatedAt", dump_only=True)

    @validates_schema
    def _config_matches_type(self, data, **kwargs):
        if data.get("type") in CREDENTIAL_CONFIGS and "config" in data:
            try:
                data["config"] = load_credential_config(data["type"], data["config"])
            except ValidationError as exc:
                raise ValidationError({"config": exc.messages}) from None


_SCHEMA = CredentialSchema()
_DUMP = dumper(_SCHEMA)


class ToolCredentials:
    """``POST/GET/DELETE /tools/{id}/auth`` and ``DELETE /tools/{id}/auth/{name}``."""

    def __init__(self, db, vault: engine.Vault | None):
        self.db = db
        self.vault = vault

    def tool(self, req: falcon.Request, raw_id: str) -> dict:
        """The tool in the path, or 404."""
        return resources.get_or_404(self.db, SQL.tools.get, "Tool", org_id=req.context.org_id,
                                    id=parse_uuid(raw_id, "Tool"))

    def show(self, row: dict, config: dict | None = None) -> dict:
        """A credential with its secrets masked (``config`` when the caller has it in clear already)."""
        if config is None:
            config = self.vault.decrypt(row["org_id"], row["secret"]) if self.vault else {}
        return _DUMP({**row, "config": engine.masked(row["type"], config)})

    def _vault(self) -> engine.Vault:
        if self.vault is None:
            raise falcon.HTTPServiceUnavailable(
                description="Tool credentials are disabled: TOLSTOY_ENCRYPTION_KEY is not set."
            )
        return self.vault

    def on_post(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Store a credential (replacing one of the same name); 201 with secrets masked."""
        data = read_json(req)
        vault = self._vault()
        tool = self.tool(req, id)
        values = validate_body(_SCHEMA, data)
        if values["is_default"]:
            self.db.rowcount(SQL.tool_credentials.clear_default, org_id=req.context.org_id, tool_id=tool["id"])
        row = self.db.one(
            SQL.tool_credentials.upsert, commit=True, org_id=req.context.org_id, tool_id=tool["id"],
            name=values["name"], type=values["type"], secret=vault.encrypt(req.context.org_id, values["config"]),
            is_default=values["is_default"],
        )
        # Masked from what was sent: nothing is decrypted, so nothing is read.
        body = self.show(row, values["config"])
        created(req, resp, body, location=f"/tools/{tool['id']}/auth/{quote(row['name'], safe='')}")

    def on_get(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Every credential of the tool, masked (each decryption recorded as the request's)."""
        tool = self.tool(req, id)
        rows = self.db.all(SQL.tool_credentials.list_by_tool, commit=True, org_id=req.context.org_id,
                           tool_id=tool["id"], actor="api", user_id=req.context.user_id,
                           purpose="show" if self.vault else None)
        resp.media = [self.show(row) for row in rows]

    def on_delete(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Delete every organization-level credential of the tool (the original's
        ``tools.auth.delete(toolId)``): 200 ``{success, message}``; users' own connections stay."""
        tool = self.tool(req, id)
        count = self.db.rowcount(SQL.tool_credentials.delete_all, commit=True, org_id=req.context.org_id,
                                 tool_id=tool["id"])
        resp.media = {"success": True,
                      "message": f"Deleted {count} credential(s) of the tool {tool['name']!r}."}

    def on_delete_named(self, req: falcon.Request, resp: falcon.Response, id: str, name: str) -> None:
        """Delete one credential by name."""
        tool = self.tool(req, id)
        if UNSTORABLE.search(name) or not self.db.rowcount(  # no stored name holds NUL
                SQL.tool_credentials.delete, commit=True, org_id=req.context.org_id, tool_id=tool["id"], name=name):
            raise NotFound("Credential")
        resp.status = falcon.HTTP_204


def _credentials(s: Services) -> ToolCredentials:
    return ToolCredentials(s.db, s.vault)


_TOOL = [*tenant_params(), path_id()]
SCHEMAS = {"Credential": CredentialSchema}
ROUTES = (
    Route("/tools/{id}/auth", _credentials, operations={
        "post": {"tags": ["Tools"], "summary": "Store a credential (encrypted); the answer is masked",
                 "parameters": _TOOL, "requestBody": {"required": True, "content": json_content("Credential")},
                 "responses": {"201": {"description": "Stored.", "headers": {"Location": "Location"},
                                       "content": json_content("Credential")}, **errors("400", "404", "413", "415")}},
        "get": {"tags": ["Tools"], "summary": "The tool's credentials, masked", "parameters": _TOOL,
                "responses": {"200": {"description": "Credentials.", "content": json_content("Credential", many=True)},
                              **errors("400", "404")}},
        "delete": {"tags": ["Tools"], "summary": "Delete every organization-level credential of the tool",
                   "parameters": _TOOL,
                   "responses": {"200": {"description": "{success: true, message}.",
                                         "content": {"application/json": {"schema": {"type": "object"}}}},
                                 **errors("400", "404")}}}),
    Route("/tools/{id}/auth/{name}", _credentials, "named", operations={"delete": {
        "tags": ["Tools"], "summary": "Delete a credential by name",
        "parameters": _TOOL + [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"204": {"description": "Deleted."}, **errors("400", "404")}}}),
)
