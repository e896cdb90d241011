"""Tool credentials: encryption at rest (Fernet, several keys for rotation),
masking for every read, and turning a credential into request headers."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .errors import VaultError
from .outbound import Outbound, OutboundError

# Fields whose values are secret, per credential type; everything else is shown.
SECRET_FIELDS = {
    "apiKey": ("headerValue",),
    "bearer": ("token",),
    "basic": ("password",),
    "oauth2": ("clientSecret", "accessToken", "refreshToken"),
}


class Vault:
    """Encrypts with the first key of TOLSTOY_ENCRYPTION_KEY, decrypts with any of them."""

    def __init__(self, keys: str):
        parts = [k.strip() for k in keys.split(",") if k.strip()]
        if not parts:
            raise VaultError("TOLSTOY_ENCRYPTION_KEY is empty")
        try:
            self.fernet = MultiFernet([Fernet(k.encode()) for k in parts])
        except ValueError:
            raise VaultError("TOLSTOY_ENCRYPTION_KEY must hold Fernet keys (32 url-safe base64 bytes), comma-separated") from None

    def encrypt(self, config: dict) -> bytes:
        """A credential's config as a Fernet token."""
        return self.fernet.encrypt(json.dumps(config, separators=(",", ":")).encode())

    def decrypt(self, token: bytes) -> dict:
        """The config a token holds; VaultError when no key fits."""
        try:
            return json.loads(self.fernet.decrypt(bytes(token)))
        except InvalidToken:
            raise VaultError("No configured TOLSTOY_ENCRYPTION_KEY decrypts this credential") from None

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt a token with the newest key."""
        try:
            return self.fernet.rotate(bytes(token))
        except InvalidToken:
            raise VaultError("No configured TOLSTOY_ENCRYPTION_KEY decrypts this credential") from None


def generate_key() -> str:
    """A new random Fernet key."""
    return Fernet.generate_key().decode()


def local_key(data_dir: str | Path) -> str:
    """The development key kept in ``<data_dir>/encryption.key``, created on first use."""
    path = Path(data_dir) / "encryption.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(generate_key())
        path.chmod(0o600)
    return path.read_text().strip()


def mask_value(value) -> str:
    """Enough of a secret to recognise it, never enough to use it."""
    text = str(value)
    return "****" + text[-4:] if len(text) >= 12 else "****"


def masked(credential_type: str, config: dict) -> dict:
    """A credential config with its secret fields masked."""
    secret = SECRET_FIELDS.get(credential_type, ())
    return {key: mask_value(value) if key in secret and value else value for key, value in config.items()}


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
