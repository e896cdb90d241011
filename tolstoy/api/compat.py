"""Routes the original service's generated SDK calls and that our own routes do not already
cover (docs/api.md, "Compatibility with the original service"):

- ``GET /``: a one-line welcome pointing at ``/docs``.
- ``/tools/{id}/secrets`` and ``GET /tools/secrets``: the original's free-form secrets, kept
  as the tool's default credential (typed by the tool's ``authType``, encrypted like every
  credential, write-only: shown masked, ``?unmask=true`` refused).

``DELETE /tools/{id}/auth`` lives with the other credential routes (tool_credentials.py),
``POST /actions/{idOrKey}/execute`` with the actions (actions.py), and the per-user OAuth
connect routes in connections.py.
"""

from __future__ import annotations

import falcon
from marshmallow import ValidationError, fields, validate

from .. import engine
from ..db.queries import SQL
from ..errors import VaultError
from ..fieldtypes import Base, PageQuery, Timestamp, text
from ..redaction import hint
from . import resources
from .dumping import dumper, many
from .errors import NotFound, ValidationFailed, field_error
from .requests import flatten_messages, parse_uuid, read_json, validate_body, validate_query
from .responses import created
from .routing import PAGE, PAGE_HEADERS, Route, Services, errors, json_content, path_id, tenant_params
from .tool_credentials import load_credential_config

# The original's free-form secret keys, and which credential field each fills per authType.
SECRET_KEYS = ("apiKey", "headerName", "token", "accessToken", "refreshToken", "username", "password",
               "clientId", "clientSecret")


class SecretsSchema(Base):
    """``POST /tools/{id}/secrets``: ``{"credentials": {key: value}}`` with the original's keys."""

    credentials = fields.Dict(keys=fields.String(), values=text(0, 8192), required=True,
                              validate=validate.Length(min=1),
                              metadata={"description": "Keys: " + ", ".join(SECRET_KEYS) + " (per the tool's "
                                                       "authType); any other key is a 400."})


class ToolSecretsSchema(Base):
    """A tool's secrets as the original showed them: masked, under the keys it was sent with."""

    tool_id = fields.UUID(data_key="toolId", dump_only=True)
    tool_name = fields.String(data_key="toolName", dump_only=True)
    masked_credentials = fields.Dict(data_key="maskedCredentials", dump_only=True)
    created_at = Timestamp(data_key="createdAt", dump_only=True)
    updated_at = Timestamp(data_key="updatedAt", dump_only=True)


class ToolSecretsSummarySchema(Base):
    """One row of ``GET /tools/secrets``."""

    tool_id = fields.UUID(data_key="toolId", dump_only=True)
    tool_name = fields.String(data_key="toolName", dump_only=True)
    tool_type = fields.String(data_key="toolType", dump_only=True)
    has_credentials = fields.Boolean(data_key="hasCredentials", dump_only=True)
    credential_keys = fields.List(fields.String(), data_key="credentialKeys", dump_only=True)
    last_updated = Timestamp(data_key="lastUpdated", dump_only=True, allow_none=True)


class SecretsQuery(Base):
    """``GET /tools/{id}/secrets``: ``?unmask=true`` is refused (secrets are write-only)."""

    unmask = fields.Boolean()


WELCOME = "Tolstoy workflow automation API: documentation at /docs (OpenAPI at /openapi.json).\n"

# Per authType: which credential field each of the original's keys fills.
SECRET_FIELDS_BY_KEY = {
    "apiKey": {"apiKey": "headerValue", "headerName": "headerName"},
    "bearer": {"token": "token", "accessToken": "token", "apiKey": "token"},
    "basic": {"username": "username", "password": "password"},
    "oauth2": {"clientId": "clientId", "clientSecret": "clientSecret", "accessToken": "accessToken",
               "refreshToken": "refreshToken"},
}
# Per authType: under which key each credential field is shown.
SHOWN_AS = {
    "apiKey": {"headerValue": "apiKey", "headerName": "headerName"},
    "bearer": {"token": "token"},
    "basic": {"username": "username", "password": "password"},
    "oauth2": {"clientId": "clientId", "clientSecret": "clientSecret", "accessToken": "accessToken",
               "refreshToken": "refreshToken"},
}
DEFAULT_HEADER_NAME = "X-API-Key"

_BODY = SecretsSchema()
_QUERY = SecretsQuery()
_PAGE = PageQuery()
_SHOW = dumper(ToolSecretsSchema())
_SUMMARY = many(dumper(ToolSecretsSummarySchema()))


class Welcome:
    """``GET /``: one line naming the service; no tenant header."""

    access = "public"

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """200 text/plain."""
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = WELCOME


def shown(credential_type: str, config: dict) -> dict:
    """A credential's config under the original's keys, secrets masked (other fields left out)."""
    names = SHOWN_AS.get(credential_type, {})
    secret = engine.SECRET_FIELDS.get(credential_type, ())
    return {names[field]: hint(value) if field in secret and value else value
            for field, value in config.items() if field in names}


def to_config(tool: dict, sent: dict, current: dict | None) -> tuple[str, dict]:
    """The credential (type, config) the original's keys make for this tool: the tool's current
    credential of the same type, with the fields sent replaced (an oauth2 one's refresh and access
    tokens dropped when its client changes and they are not sent); 400 naming a key it does not take."""
    kind = tool["auth_type"]
    if kind == "none":
        raise field_error("credentials", f"Tool {tool['name']!r} has authType none: it takes no secrets "
                                         "(change its authType first).")
    mapping = SECRET_FIELDS_BY_KEY[kind]
    problems = []
    for key in sent:
        if key not in SECRET_KEYS:
            problems.append({"field": f"credentials.{key}",
                             "message": f"Unknown key; accepted: {', '.join(SECRET_KEYS)}."})
        elif key not in mapping:
            problems.append({"field": f"credentials.{key}",
                             "message": f"Not used by a tool whose authType is {kind} (it takes: "
                                        f"{', '.join(mapping)})."})
    fills: dict[str, str] = {}
    for key in sent:
        field = mapping.get(key)
        if field is not None and field in fills:
            problems.append({"field": f"credentials.{key}",
                             "message": f"Give one of {fills[field]} and {key}: both set {field}."})
        elif field is not None:
            fills[field] = key
    if problems:
        raise ValidationFailed(problems)
    # A grant the current config holds stays only under the token URL and client it was issued by.
    config = engine.carried_over(current or {}, {mapping[key]: value for key, value in sent.items()})
    if kind == "apiKey":
        config.setdefault("headerName", DEFAULT_HEADER_NAME)
    try:
        return kind, load_credential_config(kind, config)
    except ValidationError as exc:  # named by the keys the client knows
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        renamed = {SHOWN_AS[kind].get(field, field): message for field, message in messages.items()}
        problems = flatten_messages(renamed, "credentials")
        for problem in problems:
            if problem["field"] == "credentials.tokenUrl":
                problem["message"] = ("An oauth2 tool needs its tokenUrl (and clientId, clientSecret): store the "
                                      "credential with POST /tools/{id}/auth first; secrets then replace its fields.")
        raise ValidationFailed(problems) from None


class ToolSecrets:
    """``POST/GET/DELETE /tools/{id}/secrets`` and ``GET /tools/secrets``."""

    def __init__(self, db, vault: engine.Vault | None):
        self.db = db
        self.vault = vault

    def _vault(self) -> engine.Vault:
        if self.vault is None:
            raise falcon.HTTPServiceUnavailable(
                description="Tool secrets are disabled: TOLSTOY_ENCRYPTION_KEY is not set.")
        return self.vault

    def tool(self, req: falcon.Request, raw_id: str) -> dict:
        """The tool in the path, or 404."""
        return resources.get_or_404(self.db, SQL.tools.get, "Tool", org_id=req.context.org_id,
                                    id=parse_uuid(raw_id, "Tool"))

    def _current(self, req: falcon.Request, tool: dict, purpose: str, commit: bool = False) -> dict | None:
        """The tool's default credential (its read recorded in secret_reads), or None."""
        return self.db.one(SQL.tool_credentials.read_default, commit=commit, org_id=req.context.org_id,
                           tool_id=tool["id"], actor="api", user_id=req.context.user_id, run_id=None,
                           purpose=purpose)

    def _show(self, tool: dict, row: dict, config: dict) -> dict:
        return _SHOW({"tool_id": tool["id"], "tool_name": tool["name"],
                      "masked_credentials": shown(row["type"], config),
                      "created_at": row["created_at"], "updated_at": row["updated_at"]})

    def on_post_item(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Store the secrets as the tool's default credential: 201, masked."""
        data = read_json(req)
        vault = self._vault()
        tool = self.tool(req, id)
        sent = validate_body(_BODY, data)["credentials"]
        org_id = req.context.org_id
        row = self._current(req, tool, "update")
        current = None
        if row is not None and row["type"] == tool["auth_type"]:
            current = vault.decrypt(org_id, row["secret"])
        kind, config = to_config(tool, sent, current)
        self.db.rowcount(SQL.tool_credentials.clear_default, org_id=org_id, tool_id=tool["id"])
        stored = self.db.one(SQL.tool_credentials.upsert, commit=True, org_id=org_id, tool_id=tool["id"],
                             name=row["name"] if row is not None else "default", type=kind,
                             secret=vault.encrypt(org_id, config), is_default=True)
        created(req, resp, self._show(tool, stored, config), location=f"/tools/{tool['id']}/secrets")

    def on_get_item(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """The tool's secrets, masked; ``?unmask=true`` is 403."""
        query = validate_query(_QUERY, req)
        if query.get("unmask"):
            raise falcon.HTTPForbidden(title="Secrets are write-only",
                                       description="Secrets are never shown in clear; unmask=true is refused.")
        vault = self._vault()
        tool = self.tool(req, id)
        row = self._current(req, tool, "show", commit=True)
        if row is None:
            raise NotFound("Secrets of this tool")
        resp.media = self._show(tool, row, vault.decrypt(req.context.org_id, row["secret"]))

    def on_delete_item(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Delete the tool's default credential: 204 (also when it had none)."""
        tool = self.tool(req, id)
        self.db.rowcount(SQL.tool_credentials.delete_default, commit=True, org_id=req.context.org_id,
                         tool_id=tool["id"])
        resp.status = falcon.HTTP_204

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Every tool, newest first, with whether it has secrets and under which keys."""
        def fetch(query: dict, **page) -> list[dict]:
            return self.db.all(SQL.tool_credentials.list_secrets, commit=True, org_id=req.context.org_id,
                               actor="api", user_id=req.context.user_id, **page)

        def dump(rows: list[dict]) -> list[dict]:
            return _SUMMARY([self._summary(req, row) for row in rows])

        resources.list_page(req, resp, _PAGE, fetch, dump)

    def _summary(self, req: falcon.Request, row: dict) -> dict:
        keys: list[str] = []
        if row["credential_id"] is not None and self.vault is not None:
            try:
                config = self.vault.decrypt(req.context.org_id, row["secret"])
                keys = sorted(shown(row["credential_type"], config))
            except VaultError:
                keys = []
        return {"tool_id": row["id"], "tool_name": row["name"], "tool_type": row["auth_type"],
                "has_credentials": row["credential_id"] is not None, "credential_keys": keys,
                "last_updated": row["credential_updated_at"], "created_at": row["created_at"]}


def _secrets(s: Services) -> ToolSecrets:
    return ToolSecrets(s.db, s.vault)


_TOOL = [*tenant_params(), path_id()]
SCHEMAS = {"Secrets": SecretsSchema, "ToolSecrets": ToolSecretsSchema, "ToolSecretsSummary": ToolSecretsSummarySchema}
ROUTES = (
    Route("/", lambda s: Welcome(), operations={"get": {
        "tags": ["Docs"], "summary": "One line naming the service and pointing at /docs", "security": [{}],
        "responses": {"200": {"description": "Welcome.", "content": {"text/plain": {"schema": {"type": "string"}}}}}}}),
    Route("/tools/secrets", _secrets, operations={"get": {
        "tags": ["Tools"], "summary": "Every tool, whether it has secrets and under which keys",
        "parameters": [*tenant_params(), *PAGE],
        "responses": {"200": {"description": "One page.", "headers": PAGE_HEADERS,
                              "content": json_content("ToolSecretsSummary", many=True)}, **errors("400")}}}),
    Route("/tools/{id}/secrets", _secrets, "item", operations={
        "post": {"tags": ["Tools"], "summary": "Store the original's free-form secrets as the tool's default "
                                               "credential (typed by its authType); the answer is masked",
                 "parameters": _TOOL, "requestBody": {"required": True, "content": json_content("Secrets")},
                 "responses": {"201": {"description": "Stored.", "headers": {"Location": "Location"},
                                       "content": json_content("ToolSecrets")},
                               **errors("400", "404", "413", "415")}},
        "get": {"tags": ["Tools"], "summary": "The tool's secrets, masked (unmask=true is refused: write-only)",
                "parameters": _TOOL + [{"name": "unmask", "in": "query", "required": False,
                                        "schema": {"type": "boolean"}}],
                "responses": {"200": {"description": "Masked.", "content": json_content("ToolSecrets")},
                              "403": {"description": "unmask=true.", "content": json_content("Error")},
                              **errors("400", "404")}},
        "delete": {"tags": ["Tools"], "summary": "Delete the tool's default credential", "parameters": _TOOL,
                   "responses": {"204": {"description": "Deleted (or there was none)."}, **errors("400", "404")}}}),
)
