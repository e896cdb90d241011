"""The vault: tool credentials encrypted at rest (Fernet, several keys for rotation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from ..errors import VaultError
from ..jsonsafe import dumps


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

    def seal(self, value: Any) -> bytes:
        """Any JSON value as a Fernet token (a step output that holds secrets)."""
        return self.fernet.encrypt(dumps(value))

    def unseal(self, token: bytes) -> Any:
        """The JSON value a sealed token holds; VaultError when no key fits."""
        try:
            return json.loads(self.fernet.decrypt(bytes(token)))
        except InvalidToken:
            raise VaultError("No configured TOLSTOY_ENCRYPTION_KEY decrypts this sealed output") from None

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
