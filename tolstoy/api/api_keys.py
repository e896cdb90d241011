"""``/api-keys``: an organization's API keys (shown once, listed by prefix, revoked at once), each
with scopes, an optional expiry and an optional user it is bound to (it may act as that user)."""

from __future__ import annotations

import falcon

from ..db.queries import SQL
from . import resources
from .dumping import dumper, many
from .errors import NotFound, field_error
from .requests import parse_uuid, read_json, validate_body
from .responses import created
from .schemas import SCOPES, ApiKeySchema, PageQuery
from .tenancy import cannot_act_as, key_hash, may_act_as, new_key, prefix_of

_SCHEMA = ApiKeySchema()
_DUMP = dumper(_SCHEMA)
_PAGE = PageQuery()


def issue_key(db, secret: str, org_id, name: str, scopes=SCOPES, expires_at=None, user_id=None) -> dict:
    """Create a key for an organization (the request's last query), bound to ``user_id`` when given;
    the returned row holds ``api_key`` in clear, once. An organization's first key gets every scope."""
    key = new_key()
    row = db.one(SQL.api_keys.insert, commit=True, org_id=org_id, name=name, prefix=prefix_of(key),
                 key_hash=key_hash(secret, key), scopes=list(scopes), expires_at=expires_at, user_id=user_id)
    return {**row, "api_key": key}


class Collection:
    """``GET/POST /api-keys``."""

    scope = "admin"  # an API key needs the admin scope to see or make keys

    def __init__(self, db, secret: str | None):
        self.db = db
        self.secret = secret

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Active keys, newest first (never the keys themselves)."""
        resources.list_page(
            req, resp, _PAGE,
            lambda query, **page: self.db.all(SQL.api_keys.list, commit=True, org_id=req.context.org_id, **page),
            many(_DUMP),
        )

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Create a key: 201 with ``apiKey``, the only time it is shown."""
        data = read_json(req)
        # userId names the user the new key is bound to (elsewhere it is read-only: X-User-ID sets it).
        values = validate_body(_SCHEMA, data, writable=frozenset({"userId"}))
        if not self.secret:
            raise falcon.HTTPServiceUnavailable(description="API keys need TOLSTOY_API_KEY_SECRET to be set.")
        granted = req.context.key_scopes
        if granted and not set(values["scopes"]) <= granted:
            raise falcon.HTTPForbidden(
                title="Missing scope",
                description=f"A key cannot grant scopes it lacks: {', '.join(sorted(set(values['scopes']) - granted))}.")
        self._check_binding(req, values["user_id"])
        expires_at = self._bounded_expiry(req, values["expires_at"])
        row = issue_key(self.db, self.secret, req.context.org_id, values["name"], values["scopes"], expires_at,
                        values["user_id"])
        created(req, resp, _DUMP(row))

    def _check_binding(self, req: falcon.Request, user_id) -> None:
        """A key bound to a user acts as them: only a key that may act as that user itself (bound to
        them, or with impersonate) may make one (403 before anything is looked up), and the user must
        be one of the organization (400 naming userId)."""
        if user_id is None:
            return
        if req.context.key_hash is not None and not may_act_as(req, user_id):
            raise cannot_act_as(user_id)
        if not self.db.scalar(SQL.users.exists, org_id=req.context.org_id, id=user_id):
            raise field_error("userId", "No user with this id in this organization.")


    def _bounded_expiry(self, req: falcon.Request, wanted):
        """A key made with an expiring key expires no later than it (and by default with it), so
        a short-lived key cannot mint itself a permanent successor."""
        if req.context.key_hash is None:
            return wanted
        limit = self.db.scalar(SQL.api_keys.expiry_of, org_id=req.context.org_id, key_hash=req.context.key_hash)
        if limit is None:
            return wanted
        if wanted is None:
            return limit
        if wanted > limit:
            raise field_error("expiresAt", "A key cannot outlive the key that creates it, which expires at "
                                           f"{limit.isoformat()}.")
        return wanted


class Item:
    """``DELETE /api-keys/{id}``: revoke."""

    scope = "admin"

    def __init__(self, db):
        self.db = db

    def on_delete(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Revoke at once: the next request with this key gets 401."""
        key_id = parse_uuid(id, "API key")
        if not self.db.rowcount(SQL.api_keys.revoke, commit=True, org_id=req.context.org_id, id=key_id):
            raise NotFound("API key")
        resp.status = falcon.HTTP_204
