"""Per-user OAuth connect (the original service's ``auth.oauthLogin`` / ``auth.oauthCallback``):
each user connects their own account to a tool whose oauth2 credential says ``perUser``, with
the authorization code grant and PKCE (S256), and runs they start call the tool as them.

- ``GET /auth/{toolKey}/login?userId=`` (tenant headers) → 302 to the credential's
  ``authorizeUrl`` with ``response_type=code``, ``client_id``, ``redirect_uri``
  (``TOLSTOY_PUBLIC_URL`` + ``/auth/{toolKey}/callback``), ``scope``, ``state`` and
  ``code_challenge`` (``S256``).
- ``GET /auth/{toolKey}/callback?code=&state=`` (public: the organization comes from the
  verified state) → exchanges the code at ``tokenUrl`` through the outbound guard, keeps the
  user's tokens encrypted (``user_connections``) → 200 ``{success, credentialId, message}``.
- ``GET /users/{id}/connections``, ``DELETE /users/{id}/connections/{toolId}``.

Connecting an account for a user acts as that user (their runs will call the tool with it), so
the login checks ``tenancy.may_act_as``: in headers mode the user is the X-User-ID the gateway
vouches for (required); with an API key, a key bound to the user or holding ``impersonate``.
A user's connections are listed and removed by that user, or by a key with the admin scope.

The ``state`` is ``<org>.<nonce>.<HMAC-SHA256(key, org|nonce|toolKey)>``: opaque to the
provider, bound to the organization and the tool by its signature and to the user by its row
(``oauth_states``, keyed by the nonce), which the callback deletes as it reads it, so a state
works once, and only within 10 minutes. The PKCE verifier is derived from the nonce with the
same server key (never stored, never in a URL): only this service can compute it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from urllib.parse import urlencode

import falcon
from marshmallow import fields

from .. import engine
from ..config import Config
from ..db.queries import SQL
from ..errors import VaultError
from ..fieldtypes import KEY, Base, PageQuery, TenantRecord, Timestamp
from ..jsonsafe import UNSTORABLE
from ..signatures import b64url
from . import audit, resources
from .dumping import dumper, many
from .errors import Constraints, NotFound, field_error
from .requests import parse_uuid, validate_query
from .routing import PAGE, PAGE_HEADERS, Route, Services, errors, json_content, path_id, tenant_params
from .tenancy import is_user, require_acting_as, require_user

# What the database's constraints on user_connections, oauth_states and oauth_tokens mean to a client (errors.Constraints).
CONSTRAINTS = Constraints(
    service=frozenset({"oauth_states_nonce_length", "oauth_states_redirect_uri_length",
        "oauth_tokens_token_with_expiry", "user_connections_scope_length"}),
)


class LoginQuery(Base):
    """``GET /auth/{toolKey}/login?userId=``: the user who connects (else X-User-ID)."""

    userId = fields.UUID()


class ConnectedSchema(Base):
    """200 of ``GET /auth/{toolKey}/callback``."""

    success = fields.Boolean(dump_only=True)
    credentialId = fields.UUID(dump_only=True)
    message = fields.String(dump_only=True)


class UserConnectionSchema(TenantRecord):
    """A tool a user connected (``GET /users/{id}/connections``): never its tokens."""

    user_id = fields.UUID(data_key="userId", dump_only=True)
    tool_id = fields.UUID(data_key="toolId", dump_only=True)
    tool_name = fields.String(data_key="toolName", dump_only=True)
    tool_key = fields.String(data_key="toolKey", dump_only=True, allow_none=True)
    scope = fields.String(dump_only=True, allow_none=True)
    expires_at = Timestamp(data_key="expiresAt", dump_only=True, allow_none=True)


STATE_MINUTES = 10
EXCHANGE_TIMEOUT_MS = 10_000
_TOOL_KEY = re.compile(KEY.removeprefix("^").removesuffix("$"))
# Matched whole (fullmatch): "$" would also let a state or tool key end in a newline.
_STATE = re.compile(r"([0-9a-f]{32})\.([A-Za-z0-9_-]{32})\.([A-Za-z0-9_-]{43})")
_LOGIN = LoginQuery()
_PAGE = PageQuery()
_CONNECTED = dumper(ConnectedSchema())
_CONNECTIONS = many(dumper(UserConnectionSchema()))


def state_key(config: Config) -> bytes | None:
    """The HMAC key of OAuth states and PKCE verifiers: derived from TOLSTOY_LINK_SECRET, else from the
    first TOLSTOY_ENCRYPTION_KEY (so connect works wherever tokens can be kept), else None."""
    secret = config.link_secret or (config.encryption_key.split(",")[0].strip() if config.encryption_key else None)
    if not secret:
        return None
    return hmac.new(secret.encode(), b"tolstoy oauth state v1", hashlib.sha256).digest()



def _signature(key: bytes, org: str, nonce: str, tool_key: str) -> str:
    return b64url(hmac.new(key, f"state|{org}|{nonce}|{tool_key}".encode(), hashlib.sha256).digest())


def sign_state(key: bytes, org_id: uuid.UUID, nonce: str, tool_key: str) -> str:
    """The ``state`` of a login: organization, nonce, and their signature with the tool's key."""
    return f"{org_id.hex}.{nonce}.{_signature(key, org_id.hex, nonce, tool_key)}"


def read_state(key: bytes, state: str, tool_key: str) -> tuple[uuid.UUID, str]:
    """(organization, nonce) of a state this service signed for this tool; 400 otherwise."""
    found = _STATE.fullmatch(state)
    if found is None or not hmac.compare_digest(found.group(3), _signature(key, found.group(1), found.group(2),
                                                                           tool_key)):
        raise field_error("state", "Not a valid state (altered, or not issued for this tool).")
    return uuid.UUID(found.group(1)), found.group(2)


def pkce_verifier(key: bytes, org_id: uuid.UUID, nonce: str) -> str:
    """The PKCE code verifier of a login (43 URL-safe characters, RFC 7636), derived, never stored."""
    return b64url(hmac.new(key, f"pkce|{org_id.hex}|{nonce}".encode(), hashlib.sha256).digest())


def pkce_challenge(verifier: str) -> str:
    """S256: BASE64URL(SHA256(verifier))."""
    return b64url(hashlib.sha256(verifier.encode()).digest())


def _per_user_config(tool: dict, row: dict | None, vault) -> dict:
    """The decrypted oauth2 config of a tool's per-user credential; 400 when it has none."""
    config = vault.decrypt(tool["org_id"], row["secret"]) if row is not None and row["type"] == "oauth2" else {}
    if not (config.get("perUser") and config.get("authorizeUrl")):
        raise field_error("toolKey", f"Tool {tool['name']!r} has no per-user oauth2 credential: store one with "
                                     "perUser: true and an authorizeUrl (POST /tools/{id}/auth).")
    return config


def connecting_user(req: falcon.Request, named) -> uuid.UUID:
    """The user a login connects: ``?userId=``, else X-User-ID, else the user the API key is bound to.
    Whoever consents at the provider lends their account to this user's runs, so the login must act as
    that user (``may_act_as``; 403 naming the scope): in headers mode only X-User-ID, which the caller
    requires first (400, as a tenant header); and a userId other than X-User-ID is a 403 (a user
    connects only themselves)."""
    acting = req.context.user_id
    user_id = named or acting or req.context.key_user_id
    if user_id is None:
        raise field_error("userId", "Name the user who connects: ?userId= (or the X-User-ID header).")
    if acting is not None and user_id != acting:
        raise falcon.HTTPForbidden(title="Another user's connection",
                                   description="userId must be the acting user (X-User-ID): a user connects "
                                               "only their own account.")
    require_acting_as(req, user_id)
    return user_id


def check_tool_key(tool_key: str) -> None:
    """A key no tool can have names no tool: 404 before any query."""
    if not _TOOL_KEY.fullmatch(tool_key):
        raise NotFound("Tool")


class _Connect:
    def __init__(self, db, tools: engine.ToolClient, config: Config):
        self.db = db
        self.tools = tools
        self.key = state_key(config)
        self.public_url = config.public_url
        self.production = config.is_production

    def _ready(self) -> tuple[bytes, engine.Vault]:
        if self.key is None or self.tools.vault is None:
            raise falcon.HTTPServiceUnavailable(
                description="Per-user connections need TOLSTOY_ENCRYPTION_KEY (tokens are kept encrypted).")
        return self.key, self.tools.vault


class OAuthLogin(_Connect):
    """``GET /auth/{toolKey}/login?userId=``: 302 to the provider's consent page."""

    # Starting a connection writes a login row: more than reading.
    scope = "write"

    def on_get(self, req: falcon.Request, resp: falcon.Response, tool_key: str) -> None:
        """Remember the login (10 minutes, single use) and send the user to consent."""
        check_tool_key(tool_key)
        if req.context.key_hash is None:
            require_user(req)  # the gateway vouches for no one else; a tenant header: before the query
        query = validate_query(_LOGIN, req)
        # Decided before any query: who may not connect this user learns nothing of the tool or the user.
        user_id = connecting_user(req, query.get("userId"))
        key, vault = self._ready()
        org_id = req.context.org_id
        tool = resources.get_or_404(self.db, SQL.tools.get_by_key, "Tool", org_id=org_id, key=tool_key)
        if not self.db.scalar(SQL.users.exists, org_id=org_id, id=user_id):
            raise field_error("userId", "No user with this id in this organization.")
        credential = self.db.one(SQL.tool_credentials.read_default, org_id=org_id, tool_id=tool["id"], actor="api",
                                 user_id=user_id, run_id=None, purpose="connect")
        config = _per_user_config(tool, credential, vault)
        if self.public_url is None and self.production:
            # Behind the Nginx of ops/ the Host header is what the client sent: a redirect_uri built from
            # it would send the user's code wherever the caller chose. Only development trusts it.
            raise falcon.HTTPServiceUnavailable(
                description="Per-user connections need TOLSTOY_PUBLIC_URL in production (the redirect_uri "
                            "registered with the provider starts with it).")
        nonce = secrets.token_urlsafe(24)
        base = self.public_url or req.prefix
        redirect_uri = f"{base}/auth/{tool_key}/callback"
        # The login is bound to the client the consent page is for: the callback exchanges its code under it only.
        self.db.one(SQL.user_connections.start_login, commit=True, org_id=org_id, nonce=nonce, user_id=user_id,
                    tool_id=tool["id"], redirect_uri=redirect_uri, **engine.issued_under(config))
        params = {"response_type": "code", "client_id": config["clientId"], "redirect_uri": redirect_uri,
                  "scope": engine.scope_of(config), "state": sign_state(key, org_id, nonce, tool_key),
                  "code_challenge": pkce_challenge(pkce_verifier(key, org_id, nonce)),
                  "code_challenge_method": "S256"}
        authorize = config["authorizeUrl"]
        resp.status = falcon.HTTP_302
        resp.location = authorize + ("&" if "?" in authorize else "?") + urlencode(params)
        resp.cache_control = ["no-store"]


class OAuthCallback(_Connect):
    """``GET /auth/{toolKey}/callback?code=&state=``: where the provider sends the user back."""

    access = "public"  # the organization comes from the verified state

    def on_get(self, req: falcon.Request, resp: falcon.Response, tool_key: str) -> None:
        """Consume the state, exchange the code (with the PKCE verifier), keep the user's tokens."""
        check_tool_key(tool_key)
        key, vault = self._ready()
        params = {name: req.get_param(name) for name in ("code", "state", "error", "error_description")}
        for name, value in params.items():
            if isinstance(req.params.get(name), list):
                raise field_error(name, "Give this parameter once.")
            if value is not None and (UNSTORABLE.search(value) or len(value) > 4096):
                raise field_error(name, "Not a valid value.")
        if params["error"]:
            if params["state"]:  # the login is over either way: its state may not be used again
                self._take(key, params["state"], tool_key, consume_only=True)
            description = params["error_description"] or "no description"
            raise falcon.HTTPBadRequest(title="Authorization refused",
                                        description=f"The provider answered {params['error']}: {description}")
        if not params["state"]:
            raise field_error("state", "The state parameter is required.")
        if not params["code"]:
            raise field_error("code", "The code parameter is required.")
        org_id, login, credential = self._take(key, params["state"], tool_key)
        with self.db.tenant(org_id):  # its data key is the organization's: visible only as the organization
            config = _per_user_config({"org_id": org_id, "name": login["tool_name"]}, credential, vault)
        if not engine.same_issuer(login, config):
            # The credential was replaced since the login began: its code and PKCE verifier would go to
            # another token URL or client than the consent was given for (the state is spent).
            raise field_error("state", "The tool's credential changed since this login began (another token URL "
                                       "or client): start the login again.")
        verifier = pkce_verifier(key, org_id, _STATE.fullmatch(params["state"]).group(2))
        try:
            body = engine.exchange_code(config, params["code"], verifier, login["redirect_uri"], self.tools.http,
                                        EXCHANGE_TIMEOUT_MS)
        except engine.TokenRequestFailed as exc:
            if exc.status >= 500:
                raise falcon.HTTPBadGateway(description=str(exc)) from None
            said = ": ".join(x for x in (exc.error, exc.description) if x) or f"status {exc.status}"
            raise falcon.HTTPBadRequest(title="Code exchange refused",
                                        description=f"The provider refused the authorization code: {said}") from None
        except engine.OutboundError as exc:
            raise falcon.HTTPBadGateway(description=f"The provider's token endpoint failed: {exc}") from None
        tokens = {"accessToken": body["access_token"]}
        if body.get("refresh_token"):
            tokens["refreshToken"] = body["refresh_token"]
        scope = body.get("scope") if isinstance(body.get("scope"), str) else engine.scope_of(config) or None
        lifetime = engine.expires_in(body)  # a numeric string too; bounded, so no interval overflows
        # The state proved who started the login: the connection is recorded as theirs.
        with audit.recorded_as_user(req, login["user_id"]), self.db.transaction(), self.db.tenant(org_id):
            try:
                sealed = vault.encrypt(org_id, tokens)
            except VaultError as exc:
                raise falcon.HTTPServiceUnavailable(description=str(exc)) from None
            row = self.db.one(SQL.user_connections.connect, commit=True, org_id=org_id, user_id=login["user_id"],
                              tool_id=login["tool_id"], tokens=sealed, expires_in=lifetime,
                              scope=scope[:2000] if scope else None, **engine.issued_under(config))
        resp.media = _CONNECTED({"success": True, "credentialId": row["id"],
                                 "message": f"{login['email']} connected the tool {login['tool_name']!r}."})
        resp.cache_control = ["no-store"]

    def _take(self, key: bytes, state: str, tool_key: str, consume_only: bool = False):
        """Verify and consume a state: (organization, login, the tool's credential); 400 for one that is
        not valid, unknown, used or expired."""
        try:
            org_id, nonce = read_state(key, state, tool_key)
        except falcon.HTTPBadRequest:
            if consume_only:
                return None
            raise
        failure = None
        with self.db.transaction(), self.db.tenant(org_id):
            login = self.db.one(SQL.user_connections.take_login, org_id=org_id, nonce=nonce)
            credential = None
            if login is None:
                failure = field_error("state", "Unknown or already used state: start the login again.")
            elif login["expired"]:
                failure = field_error("state", f"This login expired (after {STATE_MINUTES} minutes): start again.")
            elif login["tool_key"] != tool_key:
                failure = field_error("state", "This state was issued for another tool.")
            elif not consume_only:
                credential = self.db.one(SQL.tool_credentials.read_default, org_id=org_id, tool_id=login["tool_id"],
                                         actor="api", user_id=login["user_id"], run_id=None, purpose="connect")
        # Committed: the state is spent even when it is refused here.
        if failure is not None and not consume_only:
            raise failure
        return org_id, login, credential


class UserConnections:
    """``GET /users/{id}/connections`` and ``DELETE /users/{id}/connections/{toolId}``: by that user
    (headers mode: X-User-ID, required; api_key mode: a key bound to them) or a key with the admin scope."""

    def __init__(self, db):
        self.db = db

    def user(self, req: falcon.Request, raw_id: str) -> uuid.UUID:
        """The user in the path, if the caller may see their connections (403 before any query, so
        nothing is learnt of another user), or 404."""
        user_id = parse_uuid(raw_id, "User")
        if req.context.key_hash is None:
            require_user(req)
        if not (is_user(req, user_id) or (req.context.key_hash is not None and "admin" in req.context.key_scopes)):
            raise falcon.HTTPForbidden(
                title="Another user's connections",
                description="A user's connections are listed and removed by that user (X-User-ID in headers mode, "
                            "a key bound to them in api_key mode) or by an API key with the 'admin' scope.")
        if not self.db.scalar(SQL.users.exists, org_id=req.context.org_id, id=user_id):
            raise NotFound("User")
        return user_id

    def on_get(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """The tools the user connected, newest first (never their tokens)."""
        user_id = self.user(req, id)

        def fetch(query: dict, **page) -> list[dict]:
            return self.db.all(SQL.user_connections.list_by_user, commit=True, org_id=req.context.org_id,
                               user_id=user_id, **page)

        resources.list_page(req, resp, _PAGE, fetch, _CONNECTIONS)

    def on_delete_tool(self, req: falcon.Request, resp: falcon.Response, id: str, tool_id: str) -> None:
        """Forget the user's tokens for the tool: 204, or 404 when they had not connected it."""
        user_id = self.user(req, id)
        tool = parse_uuid(tool_id, "Connection")
        if not self.db.rowcount(SQL.user_connections.disconnect, commit=True, org_id=req.context.org_id,
                                user_id=user_id, tool_id=tool):
            raise NotFound("Connection")
        resp.status = falcon.HTTP_204


def _connections(s: Services) -> UserConnections:
    return UserConnections(s.db)


_TOOL_KEY_PARAM = {"name": "toolKey", "in": "path", "required": True, "schema": {"type": "string", "pattern": KEY}}
_USER = [*tenant_params(), path_id()]
_NOT_THEIRS = {"description": "Not that user (headers mode: X-User-ID; api_key mode: a key bound to them) "
                              "and no API key with the admin scope.", "content": json_content("Error")}
SCHEMAS = {"Connected": ConnectedSchema, "UserConnection": UserConnectionSchema}
ROUTES = (
    Route("/users/{id}/connections", _connections, operations={"get": {
        "tags": ["Connections"], "summary": "The tools the user connected (never their tokens)",
        "parameters": _USER + PAGE,
        "responses": {"200": {"description": "One page.", "headers": PAGE_HEADERS,
                              "content": json_content("UserConnection", many=True)}, **errors("400", "404"),
                      "403": _NOT_THEIRS}}}),
    Route("/users/{id}/connections/{tool_id}", _connections, "tool", operations={"delete": {
        "tags": ["Connections"], "summary": "Disconnect the user from the tool (forget their tokens)",
        "parameters": _USER + [path_id("toolId")],
        "responses": {"204": {"description": "Disconnected."}, **errors("400", "404"), "403": _NOT_THEIRS}}}),
    Route("/auth/{tool_key}/login", lambda s: OAuthLogin(s.db, s.tools, s.config), operations={"get": {
        "tags": ["Connections"], "summary": "Start a user's OAuth connection to a per-user tool: 302 to its "
                                            "authorizeUrl (authorization code + PKCE S256)",
        "parameters": [*tenant_params(), _TOOL_KEY_PARAM,
                       {"name": "userId", "in": "query", "required": False,
                        "schema": {"type": "string", "format": "uuid"},
                        "description": "The user who connects (else X-User-ID)."}],
        "responses": {"302": {"description": "To the provider's consent page."},
                      **errors("400", "404"),
                      "403": {"description": "userId is not the acting user (X-User-ID); or, with an API key, the "
                                             "key may not act as that user (not bound to them, no impersonate "
                                             "scope).", "content": json_content("Error")}}}}),
    Route("/auth/{tool_key}/callback", lambda s: OAuthCallback(s.db, s.tools, s.config), operations={"get": {
        "tags": ["Connections"], "security": [{}],
        "summary": "Where the provider sends the user back: exchanges the code, keeps the user's tokens",
        "parameters": [_TOOL_KEY_PARAM] + [{"name": name, "in": "query", "required": False,
                                            "schema": {"type": "string"}}
                                           for name in ("code", "state", "error", "error_description")],
        "responses": {"200": {"description": "Connected.", "content": json_content("Connected")},
                      "400": {"description": "A bad, expired or reused state; the provider's error or its refusal "
                                             "of the code.", "content": json_content("Error")},
                      "404": {"description": "toolKey is not a tool key at all (malformed).",
                              "content": json_content("Error")},
                      "502": {"description": "The provider's token endpoint failed.",
                              "content": json_content("Error")}}}}),
)
