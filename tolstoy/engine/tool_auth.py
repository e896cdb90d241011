"""Tool credentials on the wire: which fields are secret, how a credential
becomes request headers, and OAuth2 access tokens (shared by every process
through the database, cached until shortly before they expire)."""

from __future__ import annotations

import base64
import datetime as dt
import threading
import time

from ..db.database import Database
from ..db.queries import SQL
from ..redaction import hint
from .outbound import Outbound, OutboundError

# Fields whose values are secret, per credential type; everything else is shown.
SECRET_FIELDS = {
    "apiKey": ("headerValue",),
    "bearer": ("token",),
    "basic": ("password",),
    "oauth2": ("clientSecret", "accessToken", "refreshToken"),
}


def masked(credential_type: str, config: dict) -> dict:
    """A credential config with its secret fields masked."""
    secret = SECRET_FIELDS.get(credential_type, ())
    return {key: hint(value) if key in secret and value else value for key, value in config.items()}


def secret_values(credential_type: str, config: dict) -> list[str]:
    """The clear secrets of a config, so logs can scrub them."""
    return [str(config[f]) for f in SECRET_FIELDS.get(credential_type, ()) if config.get(f)]


class TokenCache:
    """OAuth2 access tokens per credential, kept in this process until shortly before expiry."""

    def __init__(self):
        self._tokens: dict[tuple, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple) -> str | None:
        """A cached token that is still valid."""
        with self._lock:
            found = self._tokens.get(key)
        if found and found[1] > time.monotonic():
            return found[0]
        return None

    def put(self, key: tuple, token: str, expires_in: float) -> None:
        """Remember a token; refresh 30 s before the server says it expires."""
        with self._lock:
            self._tokens[key] = (token, time.monotonic() + max(expires_in - 30, 0))


class SharedTokens:
    """OAuth2 access tokens every process shares: this process's cache, then the database's
    (oauth_tokens), then a refresh under the credential's row lock, so that one process refreshes
    while the others wait and reuse its token, and a refresh token the provider rotates is kept
    instead of being sent again (providers with reuse detection revoke the grant for that)."""

    def __init__(self, db: Database, vault, http: Outbound):
        self.db = db
        self.vault = vault
        self.http = http
        self.cache = TokenCache()

    def token(self, org_id, credential: dict, config: dict, timeout_ms: int = 30000,
              cancel: threading.Event | None = None) -> str:
        """A valid access token for this oauth2 credential; a refresh ends within ``timeout_ms`` or
        when ``cancel`` is set (it is part of the call that needs the token)."""
        key = (str(credential["id"]), str(credential["updated_at"]))
        cached = self.cache.get(key)
        if cached:
            return cached
        stored = self.db.one(SQL.oauth_tokens.current, commit=True, org_id=org_id, credential_id=credential["id"])
        if stored is None:
            stored = self._refresh(org_id, credential["id"], config, timeout_ms, cancel)
        token = self.vault.decrypt(org_id, stored["access_token"], what="oauth2 access token")
        left = (stored["expires_at"] - dt.datetime.now(dt.UTC)).total_seconds()
        self.cache.put(key, token, left)
        return token

    def _refresh(self, org_id, credential_id, config: dict, timeout_ms: int, cancel) -> dict:
        # One transaction: the row lock is held while the provider answers (a refresh is rare and
        # bounded by the call's deadline), so no two processes refresh the same grant.
        with self.db.transaction() as unit:
            locked = self.db.one(SQL.oauth_tokens.lock_credential, org_id=org_id, credential_id=credential_id)
            stored = self.db.one(SQL.oauth_tokens.current, org_id=org_id, credential_id=credential_id)
            if stored is not None:  # another process refreshed while this one waited
                unit.close(commit=True)  # the lock goes before the tool call this token is for
                return stored
            if locked is not None:  # the freshest refresh token is the stored one
                config = self.vault.decrypt(org_id, locked["secret"])
            body = fetch_token(config, self.http, timeout_ms, cancel)
            expires_in = float(body.get("expires_in") or 3600)
            rotated = body.get("refresh_token")
            if locked is not None and rotated and rotated != config.get("refreshToken"):
                self.db.rowcount(SQL.oauth_tokens.keep_rotated_secret, org_id=org_id, credential_id=credential_id,
                                 secret=self.vault.encrypt(org_id, {**config, "refreshToken": rotated}))
            # Last, and committed: the lock goes before the tool call this token is for.
            return self.db.one(SQL.oauth_tokens.store, commit=True, org_id=org_id, credential_id=credential_id,
                               access_token=self.vault.encrypt(org_id, body["access_token"]),
                               expires_in=expires_in)


def fetch_token(config: dict, http: Outbound, timeout_ms: int = 30000,
                cancel: threading.Event | None = None) -> dict:
    """The token endpoint's answer: with the refresh token when there is one, else with the client
    credentials; OutboundError when it gives no access token."""
    token_url = config["tokenUrl"]
    form = {"client_id": config["clientId"], "client_secret": config["clientSecret"]}
    if config.get("refreshToken"):
        form.update(grant_type="refresh_token", refresh_token=config["refreshToken"])
    else:
        form["grant_type"] = "client_credentials"
    if config.get("scopes"):
        scopes = config["scopes"]
        form["scope"] = " ".join(scopes) if isinstance(scopes, list) else str(scopes)
    reply = http.request("POST", token_url, data=form, headers={"Accept": "application/json"},
                         timeout_ms=timeout_ms, cancel=cancel)
    body = reply.body if isinstance(reply.body, dict) else {}
    if reply.status >= 400 or "access_token" not in body:
        raise OutboundError(f"oauth2 token request to {token_url} failed with status {reply.status}",
                            retryable=reply.status >= 500)
    return body


def placeholder(credential: dict, field: str) -> str:
    """The stand-in for one secret of a credential, e.g. ``{{secret:default.token}}``: what a
    request carries until it is sent, so nothing built, logged or stored holds the value."""
    return "{{secret:" + f"{credential['name']}.{field}" + "}}"


def auth_headers(credential: dict | None, config: dict | None) -> dict:
    """Headers that authenticate a request with this credential, with placeholders where the secrets
    go (none without a credential); ``secret_headers_for`` gives the values at send time."""
    if credential is None or config is None:
        return {}
    kind = credential["type"]
    if kind == "apiKey":
        return {config["headerName"]: placeholder(credential, "headerValue")}
    if kind == "bearer":
        return {"Authorization": "Bearer " + placeholder(credential, "token")}
    if kind == "basic":
        return {"Authorization": "Basic " + placeholder(credential, "basic")}
    if kind == "oauth2":
        return {"Authorization": "Bearer " + placeholder(credential, "accessToken")}
    return {}


def secret_headers_for(org_id, credential: dict, config: dict, tokens: SharedTokens, timeout_ms: int,
                       cancel: threading.Event | None = None) -> dict[str, str]:
    """The values behind ``auth_headers``' placeholders; an OAuth2 token fetched now (within the
    call's ``timeout_ms``) if no process holds a valid one."""
    kind = credential["type"]
    if kind == "apiKey":
        return {placeholder(credential, "headerValue"): config["headerValue"]}
    if kind == "bearer":
        return {placeholder(credential, "token"): config["token"]}
    if kind == "basic":
        pair = f"{config['username']}:{config['password']}".encode()
        return {placeholder(credential, "basic"): base64.b64encode(pair).decode()}
    if kind == "oauth2":
        return {placeholder(credential, "accessToken"): tokens.token(org_id, credential, config, timeout_ms, cancel)}
    return {}
