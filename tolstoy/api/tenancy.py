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

API keys are ``tsk_`` + 43 random URL-safe characters. Only HMAC-SHA256(server
secret, key) is stored: a stolen table yields no usable key, and checking a key
is one hash plus one indexed lookup, whether the key is valid or not.

Resources declare ``access``: ``"tenant"`` (default), ``"organizations"`` or
``"public"`` (health and docs).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import uuid
from collections import OrderedDict

import falcon

from ..db.database import ADMIN, Database, Tenant
from ..errors import KeyRejected
from .errors import field_error
from .middleware import method_allowed

KEY_PREFIX = "tsk_"
KEY_REJECTED = "The API key is not valid or has been revoked."
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
    """Which organization an API key belongs to (it never changes), remembered per process so a
    request can name its organization before its first query; whether the key is still valid is
    checked by every unit of work (tolstoy_enter_key), so a revocation takes effect at once."""

    def __init__(self, db: Database, size: int = 10_000):
        self.db = db
        self.size = size
        self._orgs: OrderedDict[bytes, object] = OrderedDict()
        self._lock = threading.Lock()

    def org_of(self, hashed: bytes):
        """The key's organization; raises KeyRejected for an unknown or revoked key."""
        with self._lock:
            org = self._orgs.get(hashed)
        if org is not None:
            return org
        org = self.db.unit(Tenant(key_hash=hashed)).resolve()
        with self._lock:
            self._orgs[hashed] = org
            while len(self._orgs) > self.size:
                self._orgs.popitem(last=False)
        return org


class TenantMiddleware:
    """Sets ``req.context``: ``org_id``, ``user_id``, ``is_admin``, ``key_org_id`` and ``unit``, the
    request's unit of work, which checks the tenant in the same round trip as its first query."""

    def __init__(self, db: Database, routes: dict[str, frozenset], config):
        self.db = db
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
        req.context.unit = None
        access = getattr(resource, "access", "tenant")
        if access == "public" or not method_allowed(req, self.routes):
            return
        hashed = self._authenticate(req, access) if self.mode == "api_key" else None
        if access == "organizations":
            # An organization's key sees its own organization; the admin token (or headers mode) all of them.
            self._open(req, Tenant(org_id=req.context.key_org_id, key_hash=hashed) if hashed else ADMIN)
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

    def _open(self, req: falcon.Request, tenant: Tenant) -> None:
        # Reads of more than one statement see one snapshot.
        unit = self.db.unit(tenant, repeatable=req.method in ("GET", "HEAD"))
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
            req.context.key_org_id = self.keys.org_of(hashed)
        except KeyRejected:
            raise unauthorized(KEY_REJECTED) from None
        return hashed

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        unit = getattr(req.context, "unit", None)
        if unit is None:
            return
        self.db.deactivate(req.context.unit_token)
        req.context.unit = None
        unit.close(commit=req_succeeded and resp.status_code < 400)
