"""The vault: tool credentials and sealed step outputs encrypted at rest with
the data key of their organization (envelope encryption: tolstoy/engine/keys.py).

A ciphertext names the data key version it was made with: byte 0x01, the
version as 4 bytes big-endian, then the Fernet token. What was written before
envelope encryption is a plain Fernet token under TOLSTOY_ENCRYPTION_KEY (it
starts with ``gAAAAA``, never with 0x01); it still decrypts, and ``stale`` says
it should be rewritten.

The vault works for an organization only while the caller acts for it (its unit
of work, or ``Database.tenant``): its data keys are visible to it alone, and the
keyring refuses any other call (``OutsideTenancy``), whatever its cache holds.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from ..errors import VaultError
from ..jsonsafe import dumps
from .keys import Keyring

MARKER = 1
_HEADER = struct.Struct(">BI")  # marker, data key version


@dataclass(frozen=True)
class Reader:
    """Who decrypts a credential and why: what its ``secret_reads`` row says."""

    actor: str  # 'api', 'worker' or 'cli'
    purpose: str  # 'step', 'execute', 'show', 'reencrypt'
    user_id: Any = None
    run_id: Any = None


def version_of(ciphertext: bytes) -> int | None:
    """The data key version a ciphertext names; None for a token from before envelope encryption."""
    raw = bytes(ciphertext)
    if len(raw) > _HEADER.size and raw[0] == MARKER:
        return _HEADER.unpack_from(raw)[1]
    return None


def legacy_keys(keys: str) -> MultiFernet:
    """TOLSTOY_ENCRYPTION_KEY's keys, for tokens written before envelope encryption."""
    parts = [k.strip() for k in keys.split(",") if k.strip()]
    if not parts:
        raise VaultError("TOLSTOY_ENCRYPTION_KEY is empty")
    try:
        return MultiFernet([Fernet(k.encode()) for k in parts])
    except ValueError:
        raise VaultError("TOLSTOY_ENCRYPTION_KEY must hold Fernet keys (32 url-safe base64 bytes), "
                         "comma-separated") from None


class Vault:
    """Encrypts a JSON value with its organization's newest data key; decrypts with the version the
    ciphertext names (or, for an older token, with TOLSTOY_ENCRYPTION_KEY)."""

    def __init__(self, keyring: Keyring, legacy: MultiFernet | None = None):
        self.keyring = keyring
        self.legacy = legacy

    def encrypt(self, org_id, value: Any, version: int | None = None) -> bytes:
        """A credential's config (or any JSON value) as a ciphertext of the organization."""
        if version is None:
            version, fernet = self.keyring.newest(org_id)
        else:
            fernet = self.keyring.get(org_id, version)
        return _HEADER.pack(MARKER, version) + fernet.encrypt(dumps(value))

    def decrypt(self, org_id, ciphertext: bytes, what: str = "credential") -> Any:
        """The value a ciphertext of the organization holds; VaultError when no key fits."""
        raw = bytes(ciphertext)
        version = version_of(raw)
        try:
            if version is not None:
                return json.loads(self.keyring.get(org_id, version).decrypt(raw[_HEADER.size:]))
            # The same rule for a token from before envelope encryption, though no data key opens it.
            self.keyring.require_tenancy(org_id)
            if self.legacy is None:
                raise VaultError(f"This {what} was encrypted before envelope encryption: TOLSTOY_ENCRYPTION_KEY "
                                 "must hold the key it was made with")
            return json.loads(self.legacy.decrypt(raw))
        except InvalidToken:
            raise VaultError(f"No configured key decrypts this {what} (TOLSTOY_ENCRYPTION_KEY or "
                             "TOLSTOY_KMS_KEY_ID, and the organization's data key)") from None

    def seal(self, org_id, value: Any) -> bytes:
        """A step output that holds secrets, encrypted for the run's checkpoint."""
        return self.encrypt(org_id, value)

    def unseal(self, org_id, ciphertext: bytes) -> Any:
        """The JSON value a sealed output holds; VaultError when no key fits."""
        return self.decrypt(org_id, ciphertext, "sealed output")

    def stale(self, org_id, ciphertext: bytes) -> bool:
        """True when the ciphertext is under an older data key than the newest, or none (rewrite it).
        A version newer than this process knows of is never stale: it was made since it looked."""
        version = version_of(ciphertext)
        if version is None:
            return True
        newest = self.keyring.newest_version(org_id)
        return newest is not None and version < newest


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
