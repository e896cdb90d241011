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

X-User-ID *records* who a request is for, in both modes. *Acting* as a user
(calling a per-user tool with their stored OAuth tokens, connecting an account
for them) is more: ``may_act_as`` decides it, from X-User-ID in headers mode
(the gateway vouches for it) and from the key in api_key mode (bound to that
user, or holding the ``impersonate`` scope).

Seeing every organization is a database role's, not a setting's: the
``/organizations`` routes' cross-tenant operations (headers mode, or the admin
token) run on a pool of their own that logs in as ``tolstoy_admin``
(ADMIN_DATABASE_URL); an API key's unit runs on the API's pool as
``tolstoy_app``, which sees its own organization only.

API keys are ``tsk_`` + 43 random URL-safe characters. Only HMAC-SHA256(server
secret, key) is stored: a stolen table yields no usable key, and checking a key
is one hash plus one indexed lookup, whether the key is valid or not.

Requests per second: each organization's requests take a token from its bucket in this process
(tolstoy/api/quotas.py) once the organization is known, before the unit of work opens, so a
request over the quota is a 429 that costs the database nothing. Doors that are not an
organization's requests (health, docs, operator routes, the admin's /organizations, the public doors
that authenticate by themselves) take none.

Resources declare ``access``: ``"tenant"`` (default), ``"organizations"``,
``"operator"`` (detailed status: the admin token in api_key mode; headers mode
trusts its gateway, as it does for organizations) or ``"public"`` (health,
docs and the doors that authenticate by themselves: webhook signatures, signed
approval links and OAuth states). tests/api/test_public_routes.py lists every
route that is not ``"tenant"`` against a reviewed list.
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
from .quotas import RequestBuckets

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


# The scope of a key that may act as any user of its organization.
IMPERSONATE = "impersonate"


def is_user(req: falcon.Request, user_id) -> bool:
    """Whether the request comes from ``user_id`` themselves: in headers mode the X-User-ID the
    gateway vouches for; with an API key, a key bound to that user (X-User-ID proves nothing)."""
    if user_id is None:
        return False
    if req.context.key_hash is None:  # headers mode: no key, X-User-ID is trusted
        return user_id == req.context.user_id
    return user_id == req.context.key_user_id


def may_act_as(req: falcon.Request, user_id) -> bool:
    """Whether this request may act as ``user_id``: use the user's stored OAuth tokens (a per-user
    tool) or connect an account for them. The user themselves (``is_user``), or a key holding the
    impersonate scope. Recording a user (X-User-ID on a run or a log) needs none of this."""
    if is_user(req, user_id):
        return True
    return user_id is not None and req.context.key_hash is not None and IMPERSONATE in req.context.key_scopes


def cannot_act_as(user_id) -> falcon.HTTPForbidden:
    """The 403 of a key that may not act as ``user_id``: names the scope that would allow it."""
    return falcon.HTTPForbidden(
        title="Missing scope",
        description=f"Acting as user {user_id} (using their connected accounts, or connecting one for them) "
                    f"needs an API key bound to that user or with the {IMPERSONATE!r} scope.")


def require_acting_as(req: falcon.Request, user_id) -> None:
    """403 unless this request may act as ``user_id`` (``may_act_as``)."""
    if not may_act_as(req, user_id):
        raise cannot_act_as(user_id)


class KeyOrganizations:
    """Which organization an API key belongs to, what it may do and the user it is bound to (none
    of which ever changes),
    remembered per process so a request can name its organization and be refused a scope
    before its first query; whether the key is still valid (not revoked, not expired) is
    checked by every unit of work (tolstoy_enter_key), so a revocation takes effect at once."""

    def __init__(self, db: Database, size: int = 10_000):
        self.db = db
        self.size = size
        self._grants: OrderedDict[bytes, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def grant_of(self, hashed: bytes) -> tuple:
        """(organization, scopes, bound user or None) of the key; raises KeyRejected for one that
        cannot be used."""
        with self._lock:
            grant = self._grants.get(hashed)
        if grant is not None:
            return grant
        row = self.db.one(SQL.session.key_grant, commit=True, key_hash=hashed)
        grant = (row["org_id"], frozenset(row["scopes"]), row["user_id"])
        with self._lock:
            self._grants[hashed] = grant
            while len(self._grants) > self.size:
                self._grants.popitem(last=False)
        return grant


# Requests that run something (a flow, an action) or act on a run need the execute scope.
EXECUTING_SUFFIXES = ("/execute", "/cancel", "/retry", "/rerun", "/resolve", "/move", "/signals/{signal}", "/links")


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
    """Sets ``req.context``: ``org_id``, ``user_id``, ``is_admin``, ``key_org_id``, ``key_scopes``,
    ``key_user_id`` (the user the key is bound to) and ``unit``, the request's unit of work, which
    checks the tenant in the same round trip as its first query."""

    def __init__(self, db: Database, routes: dict[str, frozenset], config, admin_db: Database | None = None,
                 buckets: RequestBuckets | None = None):
        self.db = db
        self.admin_db = admin_db  # tolstoy_admin's pool; None when ADMIN_DATABASE_URL is not set
        self.routes = routes
        self.mode = config.auth_mode
        self.key_secret = config.api_key_secret
        self.admin_token = config.admin_token
        self.keys = KeyOrganizations(db)
        self.buckets = buckets or RequestBuckets.from_config(config)

    def process_resource(self, req, resp, resource, params) -> None:
        req.context.org_id = None
        req.context.user_id = None
        req.context.is_admin = False
        req.context.key_org_id = None
        req.context.key_scopes = frozenset()
        req.context.key_user_id = None
        req.context.key_hash = None
        req.context.key_prefix = None  # the shown part of the request's API key (the audit trail's actor)
        req.context.unit = None
        access = getattr(resource, "access", "tenant")
        if access == "public" or not method_allowed(req, self.routes):
            return
        if access == "operator":
            if self.mode == "api_key" and self._authenticate(req, access) is not None:
                raise falcon.HTTPForbidden(
                    title="Admin token required",
                    description="This is for operators: send the admin token (TOLSTOY_ADMIN_TOKEN), not an "
                                "organization's API key.")
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
                self._take_token(req.context.key_org_id)
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
        self._take_token(org_id)
        self._open(req, Tenant(org_id=org_id, user_id=user_id, key_hash=hashed))

    def _admin(self) -> Database:
        """The admin login's pool, or a 503 naming the setting that is missing."""
        if self.admin_db is None:
            log.error("an /organizations request needs ADMIN_DATABASE_URL (the tolstoy_admin role), which is not set")
            raise falcon.HTTPServiceUnavailable(
                description="Organization management is not configured on this server (ADMIN_DATABASE_URL).")
        return self.admin_db

    def _take_token(self, org_id) -> None:
        """429 when the organization is over its requests per second in this process: decided before
        the unit of work exists, so the answer needs no database (nor checks the tenant)."""
        wait, rate, burst = self.buckets.take(org_id)
        if wait:
            raise self.buckets.refusal(wait, rate, burst)

    def _open(self, req: falcon.Request, tenant: Tenant, db: Database | None = None) -> None:
        # Reads of more than one statement see one snapshot.
        unit = (db or self.db).unit(tenant, repeatable=req.method in ("GET", "HEAD"))
        org_id = tenant.org_id
        if org_id is not None and self.buckets.stale(org_id):
            # The organization's own request quota, read again now and then with its first statement.
            unit.ride(SQL.quotas.request_quota, {"org_id": org_id}, lambda rows: self.buckets.learn(org_id, rows))
        req.context.unit = unit
        req.context.unit_token = self.db.activate(unit)

    def _authenticate(self, req: falcon.Request, access: str) -> bytes | None:
        """The key's hash (None for the admin token); 401 without a usable key."""
        token = bearer_token(req)
        if token is None:
            raise unauthorized("Send Authorization: Bearer <API key>.")
        if access in ("organizations", "operator") and same_secret(token, self.admin_token):
            req.context.is_admin = True
            return None
        hashed = key_hash(self.key_secret, token)
        try:
            req.context.key_org_id, req.context.key_scopes, req.context.key_user_id = self.keys.grant_of(hashed)
        except KeyRejected:
            raise unauthorized(KEY_REJECTED) from None
        req.context.key_hash = hashed
        req.context.key_prefix = prefix_of(token)
        return hashed

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        unit = getattr(req.context, "unit", None)
        if unit is None:
            return
        self.db.deactivate(req.context.unit_token)
        req.context.unit = None
        unit.close(commit=req_succeeded and resp.status_code < 400)
