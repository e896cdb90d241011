"""``/tools/{id}/auth``: a tool's credentials. Stored encrypted with the organization's data
key, shown masked; each decryption for showing is recorded in ``secret_reads``."""

from __future__ import annotations

from urllib.parse import quote

import falcon

from .. import engine
from ..db.queries import SQL
from ..jsonsafe import UNSTORABLE
from . import resources
from .dumping import dumper
from .errors import NotFound
from .requests import parse_uuid, read_json, validate_body
from .responses import created
from .schemas import CredentialSchema

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
