"""``/api-keys``: an organization's API keys (shown once, listed by prefix, revoked at once), each
with scopes, an optional expiry and an optional user it is bound to (it may act as that user)."""

from __future__ import annotations

import falcon
from marshmallow import ValidationError, fields, validate, validates

from ..db.queries import SQL
from ..fieldtypes import Base, PageQuery, Timestamp, text, unique_items
from ..times import utcnow
from . import resources
from .dumping import dumper, many
from .errors import Constraints, NotFound, field_error
from .requests import parse_uuid, read_json, validate_body
from .responses import created
from .routing import PAGE, PAGE_HEADERS, Route, errors, json_content, path_id, tenant_params
from .tenancy import cannot_act_as, key_hash, may_act_as, new_key, prefix_of

# What the database's constraints on api_keys mean to a client (errors.Constraints).
CONSTRAINTS = Constraints(
    checks={"api_keys_expires_after_creation": "expiresAt", "api_keys_name_length": "name",
        "api_keys_scopes_known": "scopes"},
    references={"api_keys_user_id_fkey": "userId"},
    service=frozenset({"api_keys_key_hash_length"}),
)

# What an API key may do (docs/api.md): read (GET), write (create, change, delete), execute
# (run flows and actions, act on runs), admin (the organization's API keys).
# impersonate: act as any user of the organization (use their connected accounts, connect one for
# them); a key without it acts only as the user it is bound to (userId), if any.
SCOPES = ("read", "write", "execute", "admin", "impersonate")
# What a key gets when it names no scopes: every scope but impersonate, which is only ever given
# by name, so that acting as users is never granted by accident.
DEFAULT_SCOPES = ("read", "write", "execute", "admin")


class ApiKeySchema(Base):
    """``{id, name, prefix, scopes, expiresAt, userId, createdAt, lastUsedAt}``; ``apiKey`` only in the
    answer that creates it."""

    id = fields.UUID(dump_only=True)
    name = text(1, 200, required=True)
    prefix = fields.String(dump_only=True)
    # Every scope but impersonate unless the caller names them: keys made by clients that know no
    # scopes keep working as they did.
    scopes = fields.List(fields.String(validate=validate.OneOf(SCOPES)), load_default=list(DEFAULT_SCOPES),
                         validate=[validate.Length(min=1, max=len(SCOPES)), unique_items])
    expires_at = Timestamp(data_key="expiresAt", allow_none=True, load_default=None)
    # The user the key acts as (their connected accounts); null: an organization key. Never changes.
    user_id = fields.UUID(data_key="userId", allow_none=True, load_default=None)
    api_key = fields.String(data_key="apiKey", dump_only=True)
    created_at = Timestamp(data_key="createdAt", dump_only=True)
    last_used_at = Timestamp(data_key="lastUsedAt", dump_only=True, allow_none=True)

    @validates("expires_at")
    def _in_the_future(self, value, **_):
        if value is not None and value <= utcnow():  # the clock the database expires keys by
            raise ValidationError("Must be in the future.")


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


SCHEMAS = {"ApiKey": ApiKeySchema}
ROUTES = (
    Route("/api-keys", lambda s: Collection(s.db, s.config.api_key_secret), operations={
        "get": {"tags": ["API keys"], "summary": "Active keys, newest first (prefixes only, never the keys)",
                "parameters": tenant_params() + PAGE,
                "responses": {"200": {"description": "One page.", "headers": PAGE_HEADERS,
                                      "content": json_content("ApiKey", many=True)}, **errors("400")}},
        "post": {"tags": ["API keys"], "summary": "Create a key; apiKey is shown in this answer only",
                 "parameters": tenant_params(), "requestBody": {"required": True, "content": json_content("ApiKey")},
                 "responses": {"201": {"description": "Created.", "headers": {"Location": "Location"},
                                       "content": json_content("ApiKey")}, **errors("400", "413", "415"),
                               "403": {"description": "The calling key lacks the admin scope, or a scope it "
                                                      "would grant; or it would bind the key to a user it may "
                                                      "not act as itself (not bound to them, no impersonate).",
                                       "content": json_content("Error")}}}}),
    Route("/api-keys/{id}", lambda s: Item(s.db), operations={"delete": {
        "tags": ["API keys"], "summary": "Revoke a key at once",
        "parameters": tenant_params() + [path_id()],
        "responses": {"204": {"description": "Revoked."}, **errors("400", "404")}}}),
)
