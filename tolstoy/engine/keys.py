"""Envelope encryption's two kinds of key.

A **data key** (32 random bytes, used as a Fernet key) per organization and
version encrypts that organization's secrets. It is stored only wrapped
(``organization_keys``), by a **key-encryption key** (KEK) that never reaches
the database: the Fernet keys of TOLSTOY_ENCRYPTION_KEY (from the environment
or the AWS secret, newest first), or an AWS KMS key (TOLSTOY_KMS_KEY_ID). A KEK
answers one small interface, ``wrap``/``unwrap`` (plus ``generate``, which KMS
does in one call), so rotating KEKs re-wraps a few rows per organization and
never touches the data.

Unwrapped data keys stay in process memory for a short TTL: the common case of
an engine step or a request costs no query for its key.

An organization's data keys are read and made only while the caller acts for
that organization (its unit of work, or ``Database.tenant``): row-level
security shows them to it alone, so outside its tenancy a process whose cache
is cold would find none ("no data key version 1") while one whose cache is warm
would go on. The keyring refuses such a call whatever its cache holds
(``OutsideTenancy``), so the mistake shows in the first test that makes it,
not in production on the process that happens to be cold.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.fernet import Fernet, InvalidToken

from ..db.database import Database
from ..db.queries import SQL
from ..errors import VaultError

DATA_KEY_BYTES = 32
# Organizations whose keys one process keeps at most (least recently used go first).
CACHE_MAX = 10_000


class OutsideTenancy(RuntimeError):
    """A data key was asked for outside the organization's tenancy: a bug in the caller, which must
    act for the organization (``Database.tenant(org_id)`` or its unit of work) first."""


class Keks(Protocol):
    """Key-encryption keys: wrap data keys with the newest, unwrap with the one that wrapped them."""

    def newest_id(self) -> str:
        """The kek_id ``wrap`` uses now."""

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        """(kek_id, wrapped data key) under the newest KEK."""

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        """The data key ``wrapped`` holds; VaultError when kek_id names no configured KEK or it does not fit."""

    def generate(self) -> tuple[bytes, str, bytes]:
        """A new random data key: (data key, kek_id, wrapped)."""


def fingerprint(key: str) -> str:
    """The kek_id of a Fernet KEK: names it without revealing it."""
    return "fernet:" + hashlib.sha256(key.encode()).hexdigest()[:16]


class FernetKeks:
    """KEKs from TOLSTOY_ENCRYPTION_KEY: Fernet keys, newest first (all of them unwrap)."""

    def __init__(self, keys: str):
        parts = [k.strip() for k in keys.split(",") if k.strip()]
        if not parts:
            raise VaultError("TOLSTOY_ENCRYPTION_KEY is empty")
        try:
            self.keys = {fingerprint(k): Fernet(k.encode()) for k in parts}
        except ValueError:
            raise VaultError("TOLSTOY_ENCRYPTION_KEY must hold Fernet keys (32 url-safe base64 bytes), "
                             "comma-separated") from None
        self.newest = fingerprint(parts[0])

    def newest_id(self) -> str:
        """The fingerprint of the first key."""
        return self.newest

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        """The data key as a Fernet token of the first key."""
        return self.newest, self.keys[self.newest].encrypt(data_key)

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        """The data key, with the key kek_id names."""
        kek = self.keys.get(kek_id)
        if kek is None:
            raise VaultError(f"The data key was wrapped by {kek_id}, which is not among the configured "
                             "TOLSTOY_ENCRYPTION_KEY keys (or TOLSTOY_KMS_KEY_ID)")
        try:
            return kek.decrypt(bytes(wrapped))
        except InvalidToken:
            raise VaultError(f"TOLSTOY_ENCRYPTION_KEY key {kek_id} does not unwrap this data key") from None

    def generate(self) -> tuple[bytes, str, bytes]:
        """32 random bytes, wrapped."""
        data_key = os.urandom(DATA_KEY_BYTES)
        return (data_key, *self.wrap(data_key))


def kms_client(region: str):
    """A KMS client with short timeouts (credentials from boto3's default chain, as for the AWS secret)."""
    import boto3  # imported here: only processes that use KMS pay for boto3
    from botocore.config import Config as BotoConfig

    config = BotoConfig(connect_timeout=3, read_timeout=5, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.client("kms", region_name=region, config=config)


class KmsKeks:
    """An AWS KMS key wraps: KMS makes data keys (GenerateDataKey) and unwraps them (Decrypt), so the
    KEK itself never leaves KMS. ``fallback`` unwraps data keys wrapped before KMS was configured."""

    def __init__(self, key_id: str, region: str, fallback: FernetKeks | None = None, client=None):
        self.key_id = key_id
        self.region = region
        self.fallback = fallback
        self._client = client
        self._newest: str | None = None

    @property
    def client(self):
        """The boto3 KMS client, made on first use."""
        if self._client is None:
            self._client = kms_client(self.region)
        return self._client

    def _call(self, operation: str, **arguments) -> dict:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, operation)(**arguments)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise VaultError(f"AWS KMS {operation} with key {arguments.get('KeyId', self.key_id)} failed: "
                             f"{error.get('Code', 'error')} ({error.get('Message', '')})") from None
        except BotoCoreError as exc:
            raise VaultError(f"AWS KMS {operation} failed: {exc}") from None

    def newest_id(self) -> str:
        """kms: and the ARN of TOLSTOY_KMS_KEY_ID (an alias or id resolved once)."""
        if self._newest is None:
            self._newest = "kms:" + self._call("describe_key", KeyId=self.key_id)["KeyMetadata"]["Arn"]
        return self._newest

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        """KMS Encrypt of the data key."""
        answer = self._call("encrypt", KeyId=self.key_id, Plaintext=data_key)
        return "kms:" + answer["KeyId"], answer["CiphertextBlob"]

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        """KMS Decrypt with the key that wrapped it, or the fallback's Fernet key."""
        if kek_id.startswith("kms:"):
            return self._call("decrypt", KeyId=kek_id[4:], CiphertextBlob=bytes(wrapped))["Plaintext"]
        if self.fallback is None:
            raise VaultError(f"The data key was wrapped by {kek_id}: set TOLSTOY_ENCRYPTION_KEY to that key "
                             "(next to TOLSTOY_KMS_KEY_ID) to read it")
        return self.fallback.unwrap(kek_id, wrapped)

    def generate(self) -> tuple[bytes, str, bytes]:
        """KMS GenerateDataKey: the data key in clear and wrapped, in one call."""
        answer = self._call("generate_data_key", KeyId=self.key_id, NumberOfBytes=DATA_KEY_BYTES)
        return answer["Plaintext"], "kms:" + answer["KeyId"], answer["CiphertextBlob"]


def keks_from_config(config) -> Keks | None:
    """KMS when TOLSTOY_KMS_KEY_ID is set (TOLSTOY_ENCRYPTION_KEY then only unwraps older keys), else
    TOLSTOY_ENCRYPTION_KEY, else None."""
    fernet = FernetKeks(config.encryption_key) if config.encryption_key else None
    if config.kms_key_id:
        return KmsKeks(config.kms_key_id, config.kms_region, fallback=fernet)
    return fernet


# ---- data keys ---------------------------------------------------------------------------


@dataclass
class _Keys:
    """One organization's data key rows (by version) and those unwrapped so far."""

    rows: dict[int, dict]
    expires: float
    fernets: dict[int, Fernet] = field(default_factory=dict)


class Keyring:
    """Each organization's data keys, read and unwrapped on first use and kept for ``ttl`` seconds.

    Queries act for the caller's tenant (row-level security: as the organization). Inside a
    transaction already open they join it, so an organization's first key commits with the first
    secret it encrypts; otherwise each is a transaction of its own, so none is left open (a
    request must not hold a connection while a tool answers). A key made by a transaction that
    has not committed yet is used but never cached: were the transaction rolled back, nothing may
    go on encrypting with a key that does not exist.
    """

    def __init__(self, db: Database, keks: Keks, ttl: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.db = db
        self.keks = keks
        self.ttl = ttl
        self.clock = clock
        self._cache: OrderedDict[str, _Keys] = OrderedDict()
        self._lock = threading.Lock()

    def require_tenancy(self, org_id) -> None:
        """OutsideTenancy unless this thread acts for ``org_id`` now (see the module's docstring)."""
        acting = self.db.acting_for().org_id
        if acting is None or str(acting) != str(org_id):
            raise OutsideTenancy(f"The data keys of organization {org_id} are used outside its tenancy (acting for "
                                 f"{acting or 'no organization'}): act for it first (Database.tenant).")

    def newest(self, org_id) -> tuple[int, Fernet]:
        """(version, key) to encrypt with: the newest version, made (version 1) on first use."""
        self.require_tenancy(org_id)
        keys = self._keys(org_id)
        if not keys.rows:
            keys = self._create_first(org_id)
        version = max(keys.rows)
        return version, self._fernet(keys, version)

    def newest_version(self, org_id) -> int | None:
        """The version ``newest`` would use, or None while the organization has no data key."""
        self.require_tenancy(org_id)
        keys = self._keys(org_id)
        return max(keys.rows) if keys.rows else None

    def get(self, org_id, version: int) -> Fernet:
        """The data key of one version (retired ones too: they still decrypt stragglers)."""
        self.require_tenancy(org_id)
        keys = self._keys(org_id)
        if version not in keys.rows:
            keys = self._load(org_id)  # made since this process looked (another process, the CLI)
        if version not in keys.rows:
            raise VaultError(f"This organization has no data key version {version}")
        return self._fernet(keys, version)

    def add_version(self, org_id) -> int:
        """A new data key version after the newest, wrapped by the newest KEK (in the caller's unit)."""
        self.require_tenancy(org_id)
        _, kek_id, wrapped = self.keks.generate()
        row = self.db.one(SQL.organization_keys.add_version, org_id=org_id, wrapped=wrapped, kek_id=kek_id)
        self.forget(org_id)
        return row["version"]

    def forget(self, org_id=None) -> None:
        """Drop cached keys (of one organization, or all)."""
        with self._lock:
            if org_id is None:
                self._cache.clear()
            else:
                self._cache.pop(str(org_id), None)

    def _keys(self, org_id) -> _Keys:
        with self._lock:
            keys = self._cache.get(str(org_id))
            if keys is not None and keys.expires > self.clock():
                self._cache.move_to_end(str(org_id))
                return keys
        return self._load(org_id)

    def _alone(self) -> bool:
        """True when a statement sent now is a transaction of its own (no unit, or none open in it)."""
        unit = self.db.current()
        return unit is None or not unit.active

    def _load(self, org_id) -> _Keys:
        rows = self.db.all(SQL.organization_keys.versions, commit=self._alone(), org_id=org_id)
        return self._keep(org_id, rows, cacheable=not any(row["fresh"] for row in rows))

    def _create_first(self, org_id) -> _Keys:
        data_key, kek_id, wrapped = self.keks.generate()
        alone = self._alone()
        row = self.db.one(SQL.organization_keys.create_first, commit=alone, org_id=org_id, wrapped=wrapped,
                          kek_id=kek_id)
        if row is None:  # another transaction made it first (and committed): use that one
            keys = self._load(org_id)
            if not keys.rows:
                raise VaultError("This organization's first data key is being made by another transaction; "
                                 "try again")
            return keys
        # Alone, the insert committed with its statement; in an open transaction, it commits (or not) later.
        keys = self._keep(org_id, [row], cacheable=alone)
        keys.fernets[1] = _fernet(data_key)
        return keys

    def _keep(self, org_id, rows: list[dict], cacheable: bool) -> _Keys:
        keys = _Keys({row["version"]: row for row in rows}, self.clock() + self.ttl)
        if cacheable:
            with self._lock:
                self._cache[str(org_id)] = keys
                self._cache.move_to_end(str(org_id))
                while len(self._cache) > CACHE_MAX:
                    self._cache.popitem(last=False)
        return keys

    def _fernet(self, keys: _Keys, version: int) -> Fernet:
        fernet = keys.fernets.get(version)
        if fernet is None:
            row = keys.rows[version]
            fernet = keys.fernets[version] = _fernet(self.keks.unwrap(row["kek_id"], bytes(row["wrapped"])))
        return fernet


def _fernet(data_key: bytes) -> Fernet:
    if len(data_key) != DATA_KEY_BYTES:
        raise VaultError("A data key must be 32 bytes")
    return Fernet(base64.urlsafe_b64encode(data_key))
