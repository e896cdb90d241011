"""Tenant resolution: who is calling, for which organization (and acting user),
decided before any resource runs. The middleware reads headers only; the
request's unit of work checks that the organization and user exist in the same
round trip as its first query (tolstoy_enter), and sets them as the database
tenant, so row-level security applies to every query of the request. A request
that fails before any query (a 400 from validation) still answers a bad tenant
first: tolstoy/api/errors.py verifies it before answering.

Two modes (TOLSTOY_AUTH_MODE):
- ``headers``: X-Org-ID is trusted (a gateway in front authenticates callers).
- ``api_key``: ``Authorization: Bearer <key>`` decides the organization; an
  X-Org-ID that names another one is a 403. Organization management needs the
  admin token, except that a key may read and change its own organization.

Seeing every organization is a database role's, not a setting's: the
``/organizations`` routes' cross-tenant operations (headers mode, or the admin
token) run on a pool of their own that logs in as ``tolstoy_admin``
(ADMIN_DATABASE_URL); an API key's unit runs on the API's pool as
``tolstoy_app``, which sees its own organization only.

API keys are ``tsk_`` + 43 random URL-safe characters. Only HMAC-SHA256(server
secret, key) is stored: a stolen table yields no usable key, and checking a key
is one hash plus one indexed lookup, whether the key is valid or not.

Resources declare ``access``: ``"tenant"`` (default), ``"organizations"`` or
``"public"`` (health and docs).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import uuid
from collections import OrderedDict

import falcon

from ..db.database import NOBODY, Database, Tenant
from ..db.queries import SQL
from ..errors import KeyRejected
from .errors import KEY_REJECTED, field_error
from .middleware import method_allowed

log = logging.getLogger("tolstoy.tenancy")

KEY_PREFIX = "tsk_"
SHOWN_PREFIX = 12  # "tsk_" and 8 characters: enough to tell keys apart in a list


def new_key() -> str:
    """A fresh random API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(secret: str, key: str) -> bytes:
    """The keyed hash stored for (and looked up by) a key."""
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).digest()


def prefix_of(key: str) -> str:
    """The part of a key that may be shown again."""
    return key[:SHOWN_PREFIX]


def bearer_token(req: falcon.Request) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, else None."""
    header = req.get_header("Authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def same_secret(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison (False when either is missing)."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def unauthorized(message: str) -> falcon.HTTPUnauthorized:
    """401 with ``WWW-Authenticate: Bearer``."""
    return falcon.HTTPUnauthorized(description=message, challenges=["Bearer"])


def header_uuid(req: falcon.Request, name: str, required: bool) -> uuid.UUID | None:
    """A tenant header as a UUID; 400 naming the header when missing or malformed."""
    value = req.get_header(name)
    if value is None or value.strip() == "":
        if required:
            raise field_error(name, f"The {name} header is required.")
        return None
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise field_error(name, f"{name} must be a UUID.") from None


def require_user(req: falcon.Request) -> uuid.UUID:
    """The acting user, for routes that record one; 400 when X-User-ID was not sent."""
    if req.context.user_id is None:
        raise field_error("X-User-ID", "The X-User-ID header is required for this request.")
    return req.context.user_id


class KeyOrganizations:
    """Which organization an API key belongs to and what it may do (neither ever changes),
    remembered per process so a request can name its organization and be refused a scope
    before its first query; whether the key is still valid (not revoked, not expired) is
    checked by every unit of work (tolstoy_enter_key), so a revocation takes effect at once."""

    def __init__(self, db: Database, size: int = 10_000):
        self.db = db
        self.size = size
        self._grants: OrderedDict[bytes, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def grant_of(self, hashed: bytes) -> tuple:
        """(organization, scopes) of the key; raises KeyRejected for one that cannot be used."""
        with self._lock:
            grant = self._grants.get(hashed)
        if grant is not None:
            return grant
        row = self.db.one(SQL.session.key_grant, commit=True, key_hash=hashed)
        grant = (row["org_id"], frozenset(row["scopes"]))
        with self._lock:
            self._grants[hashed] = grant
            while len(self._grants) > self.size:
                self._grants.popitem(last=False)
        return grant


# Requests that run something (a flow, an action) or act on a run need the execute scope.
EXECUTING_SUFFIXES = ("/execute", "/cancel", "/retry", "/resolve", "/signals/{signal}", "/links")


def scope_needed(req: falcon.Request, resource) -> str:
    """The API-key scope a request needs: the resource's own (admin for /api-keys), read for
    reads, execute to run or act on runs, write for every other change."""
    own = getattr(resource, "scope", None)
    if own is not None:
        return own
    if req.method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    if req.method == "POST" and (req.uri_template or "").endswith(EXECUTING_SUFFIXES):
        return "execute"
    return "write"


class TenantMiddleware:
    """Sets ``req.context``: ``org_id``, ``user_id``, ``is_admin``, ``key_org_id`` and ``unit``, the
    request's unit of work, which checks the tenant in the same round trip as its first query."""

    def __init__(self, db: Database, routes: dict[str, frozenset], config, admin_db: Database | None = None):
        self.db = db
        self.admin_db = admin_db  # tolstoy_admin's pool; None when ADMIN_DATABASE_URL is not set
        self.routes = routes
        self.mode = config.auth_mode
        self.key_secret = config.api_key_secret
        self.admin_token = config.admin_token
        self.keys = KeyOrganizations(db)

    def process_resource(self, req, resp, resource, params) -> None:
        req.context.org_id = None
        req.context.user_id = None
        req.context.is_admin = False
        req.context.key_org_id = None
        req.context.key_scopes = frozenset()
        req.context.key_hash = None
        req.context.unit = None
        access = getattr(resource, "access", "tenant")
        if access == "public" or not method_allowed(req, self.routes):
            return
        hashed = self._authenticate(req, access) if self.mode == "api_key" else None
        if hashed is not None:
            needed = scope_needed(req, resource)
            if needed not in req.context.key_scopes:
                raise falcon.HTTPForbidden(
                    title="Missing scope",
                    description=f"This API key lacks the {needed!r} scope this request needs "
                                f"(it has: {', '.join(sorted(req.context.key_scopes))}).")
        if access == "organizations":
            # An organization's key sees its own organization; the admin token (or headers mode) all of
            # them, through the admin login.
            if hashed is not None:
                self._open(req, Tenant(org_id=req.context.key_org_id, key_hash=hashed))
            else:
                self._open(req, NOBODY, self._admin())
            return
        if self.mode == "api_key":
            org_id = req.context.key_org_id
            sent = header_uuid(req, "X-Org-ID", required=False)
            if sent is not None and sent != org_id:
                raise falcon.HTTPForbidden(description="X-Org-ID names another organization than the API key's.")
        else:
            org_id = header_uuid(req, "X-Org-ID", required=True)
        user_id = header_uuid(req, "X-User-ID", required=False)
        req.context.org_id = org_id
        req.context.user_id = user_id
        self._open(req, Tenant(org_id=org_id, user_id=user_id, key_hash=hashed))

    def _admin(self) -> Database:
        """The admin login's pool, or a 503 naming the setting that is missing."""
        if self.admin_db is None:
            log.error("an /organizations request needs ADMIN_DATABASE_URL (the tolstoy_admin role), which is not set")
            raise falcon.HTTPServiceUnavailable(
                description="Organization management is not configured on this server (ADMIN_DATABASE_URL).")
        return self.admin_db

    def _open(self, req: falcon.Request, tenant: Tenant, db: Database | None = None) -> None:
        # Reads of more than one statement see one snapshot.
        unit = (db or self.db).unit(tenant, repeatable=req.method in ("GET", "HEAD"))
        req.context.unit = unit
        req.context.unit_token = self.db.activate(unit)

    def _authenticate(self, req: falcon.Request, access: str) -> bytes | None:
        """The key's hash (None for the admin token); 401 without a usable key."""
        token = bearer_token(req)
        if token is None:
            raise unauthorized("Send Authorization: Bearer <API key>.")
        if access == "organizations" and same_secret(token, self.admin_token):
            req.context.is_admin = True
            return None
        hashed = key_hash(self.key_secret, token)
        try:
            req.context.key_org_id, req.context.key_scopes = self.keys.grant_of(hashed)
        except KeyRejected:
            raise unauthorized(KEY_REJECTED) from None
        req.context.key_hash = hashed
        return hashed

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        unit = getattr(req.context, "unit", None)
        if unit is None:
            return
        self.db.deactivate(req.context.unit_token)
        req.context.unit = None
        unit.close(commit=req_succeeded and resp.status_code < 400)
