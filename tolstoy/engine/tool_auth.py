"""Tool credentials on the wire: which fields are secret, how a credential
becomes request headers, and OAuth2 access tokens (cached until shortly
before they expire)."""

from __future__ import annotations

import base64
import threading
import time

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


def oauth2_token(credential: dict, config: dict, http: Outbound, cache: TokenCache) -> str:
    """An access token: cached, else fetched from tokenUrl with the stored refresh token, or with
    the client credentials when there is none."""
    key = (str(credential["id"]), str(credential["updated_at"]))
    cached = cache.get(key)
    if cached:
        return cached
    token_url = config["tokenUrl"]
    form = {"client_id": config["clientId"], "client_secret": config["clientSecret"]}
    if config.get("refreshToken"):
        form.update(grant_type="refresh_token", refresh_token=config["refreshToken"])
    else:
        form["grant_type"] = "client_credentials"
    if config.get("scopes"):
        scopes = config["scopes"]
        form["scope"] = " ".join(scopes) if isinstance(scopes, list) else str(scopes)
    reply = http.request("POST", token_url, data=form, headers={"Accept": "application/json"})
    body = reply.body if isinstance(reply.body, dict) else {}
    if reply.status >= 400 or "access_token" not in body:
        raise OutboundError(f"oauth2 token request to {token_url} failed with status {reply.status}",
                            retryable=reply.status >= 500)
    cache.put(key, body["access_token"], float(body.get("expires_in", 3600)))
    return body["access_token"]


def auth_headers(credential: dict | None, config: dict | None, http: Outbound, cache: TokenCache) -> dict:
    """Headers that authenticate a request with this credential (none without one)."""
    if credential is None or config is None:
        return {}
    kind = credential["type"]
    if kind == "apiKey":
        return {config["headerName"]: config["headerValue"]}
    if kind == "bearer":
        return {"Authorization": f"Bearer {config['token']}"}
    if kind == "basic":
        pair = f"{config['username']}:{config['password']}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    if kind == "oauth2":
        return {"Authorization": f"Bearer {oauth2_token(credential, config, http, cache)}"}
    return {}
