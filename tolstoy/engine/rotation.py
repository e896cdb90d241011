"""``tolstoy secrets rotate``: key rotation while the service runs.

``rewrap`` re-wraps every organization's data keys with the newest KEK, in one
transaction over a few small rows: the data keys stay the same, so no
ciphertext changes and nothing has to stop. ``reencrypt`` gives each
organization a new data key version and moves every ciphertext (credentials,
sealed step outputs, shared OAuth2 access tokens, webhook trigger secrets, users' OAuth2
connections, outbound webhooks' secrets and headers, and tokens from before envelope
encryption) to it in batches of one transaction each, waits until no process can still hold the older versions in its key
cache, moves what was written meanwhile, then retires the older versions. A run that
stopped part way is finished by the next one (an organization with more than
one unretired version is mid-move) rather than starting yet another version.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..db.database import Database
from ..db.queries import SQL
from .vault import Vault

BATCH = 500
_FIRST_ID = uuid.UUID(int=0)


def organization_ids(db: Database) -> list:
    """Every organization's id. `tolstoy secrets` runs as the schema owner, a member of tolstoy_admin
    (20261207000002), whose policy shows it every organization; the services' roles would see none."""
    return [row["id"] for row in db.all(SQL.organizations.all_ids)]


def rewrap(db: Database, vault: Vault) -> dict:
    """Re-wrap every data key not wrapped by the newest KEK; all or nothing. Returns counts, and how many
    ciphertexts are still under TOLSTOY_ENCRYPTION_KEY itself (``reencrypt`` moves them)."""
    keks = vault.keyring.keks
    newest = keks.newest_id()
    counts = {"kek_id": newest, "organizations": 0, "rewrapped": 0, "legacy": 0}
    with db.transaction():
        for org_id in organization_ids(db):
            counts["organizations"] += 1
            # Row-level security: an organization's rows are visible only as that organization.
            with db.tenant(org_id):
                for row in db.all(SQL.organization_keys.to_rewrap, org_id=org_id, kek_id=newest):
                    kek_id, wrapped = keks.wrap(keks.unwrap(row["kek_id"], bytes(row["wrapped"])))
                    db.rowcount(SQL.organization_keys.rewrap, org_id=org_id, version=row["version"],
                                wrapped=wrapped, kek_id=kek_id)
                    counts["rewrapped"] += 1
                counts["legacy"] += db.scalar(SQL.tool_credentials.legacy_count, org_id=org_id)
                counts["legacy"] += db.scalar(SQL.runs.legacy_sealed_count, org_id=org_id)
    vault.keyring.forget()
    return counts


def reencrypt(db: Database, vault: Vault, batch: int = BATCH, settle_seconds: float | None = None,
              sleep: Callable[[float], None] = time.sleep, say: Callable[[str], None] = lambda _: None) -> dict:
    """Move every organization's ciphertexts to a new data key version, ``batch`` rows per transaction,
    and retire the versions before it. Returns counts.

    Other processes keep an organization's keys for ``settle_seconds`` (TOLSTOY_DATA_KEY_TTL, the
    keyring's own by default) and go on encrypting with the version they knew: the versions before
    are retired only after that long, and after a last pass over what they wrote meanwhile."""
    settle = vault.keyring.ttl if settle_seconds is None else settle_seconds
    counts = {"organizations": 0, "versions": 0, "credentials": 0, "outputs": 0, "tokens": 0, "triggers": 0,
              "connections": 0, "webhooks": 0, "batches": 0, "retired": 0}
    targets = {}
    for org_id in organization_ids(db):
        target = _target(db, vault, org_id, counts)
        if target is None:
            continue
        counts["organizations"] += 1
        _move_all(db, vault, org_id, target, batch, counts)
        targets[org_id] = target
    wait = 0.0
    for org_id in targets:
        with db.transaction(), db.tenant(org_id):
            wait = max(wait, db.scalar(SQL.organization_keys.settle_left, org_id=org_id, seconds=settle) or 0.0)
    if wait > 0:
        say(f"waiting {wait:.0f} s for other processes to stop using the older data keys (TOLSTOY_DATA_KEY_TTL)")
        sleep(wait)
    for org_id, target in targets.items():
        _move_all(db, vault, org_id, target, batch, counts)  # what other processes wrote meanwhile
        with db.transaction(), db.tenant(org_id):
            counts["retired"] += db.rowcount(SQL.organization_keys.retire, org_id=org_id, version=target)
        vault.keyring.forget(org_id)
    return counts


def _target(db: Database, vault: Vault, org_id, counts: dict) -> int | None:
    """The version to move to: the newest when an earlier run stopped part way, else a new one; None for
    an organization that has never encrypted anything."""
    with db.transaction(), db.tenant(org_id):
        rows = db.all(SQL.organization_keys.versions, org_id=org_id)
        if len([row for row in rows if row["retired_at"] is None]) > 1:
            return max(row["version"] for row in rows)
        if not rows and not (db.scalar(SQL.tool_credentials.legacy_count, org_id=org_id)
                             or db.scalar(SQL.runs.legacy_sealed_count, org_id=org_id)):
            return None
        counts["versions"] += 1
        return vault.keyring.add_version(org_id)


@dataclass(frozen=True)
class _Ciphertexts:
    """One kind of ciphertext to move: its queries (batches in key order, locked; the update of a
    batch), the columns of its key, the column that holds it, how to open it, and its count's name."""

    select: Any
    update: Any
    key: tuple
    column: str
    count: str
    sealed: bool = False


_KINDS = (
    # The update records each credential's decryption in secret_reads.
    _Ciphertexts(SQL.tool_credentials.to_reencrypt, SQL.tool_credentials.reencrypted, ("id",), "secret",
                 "credentials"),
    _Ciphertexts(SQL.runs.sealed_to_reencrypt, SQL.runs.resealed, ("run_id", "step_id", "run_created_at"),
                 "sealed", "outputs", sealed=True),
    _Ciphertexts(SQL.oauth_tokens.to_reencrypt, SQL.oauth_tokens.reencrypted, ("credential_id",), "access_token",
                 "tokens"),
    _Ciphertexts(SQL.triggers.secrets_to_reencrypt, SQL.triggers.secrets_reencrypted, ("id",), "secret",
                 "triggers"),
    _Ciphertexts(SQL.user_connections.to_reencrypt, SQL.user_connections.reencrypted, ("id",), "tokens",
                 "connections"),
    _Ciphertexts(SQL.webhooks.secrets_to_reencrypt, SQL.webhooks.secrets_reencrypted, ("id",), "secret",
                 "webhooks"),
    _Ciphertexts(SQL.webhooks.headers_to_reencrypt, SQL.webhooks.headers_reencrypted, ("id",), "headers",
                 "webhooks"),
)
_FIRST = {"id": _FIRST_ID, "credential_id": _FIRST_ID, "run_id": _FIRST_ID, "step_id": "",
          "run_created_at": dt.datetime.min.replace(tzinfo=dt.UTC)}


def _move_all(db: Database, vault: Vault, org_id, target: int, batch: int, counts: dict) -> None:
    for kind in _KINDS:
        _move(db, vault, org_id, target, batch, counts, kind)


def _move(db: Database, vault: Vault, org_id, target: int, batch: int, counts: dict, kind: _Ciphertexts) -> None:
    after = {f"after_{name}": _FIRST[name] for name in kind.key}
    while True:
        with db.transaction(), db.tenant(org_id):
            rows = db.all(kind.select, org_id=org_id, version=target, limit=batch, **after)
            if not rows:
                return
            opened = [vault.unseal(org_id, row[kind.column]) if kind.sealed
                      else vault.decrypt(org_id, row[kind.column]) for row in rows]
            db.rowcount(kind.update, org_id=org_id, values=[vault.encrypt(org_id, value, version=target)
                                                            for value in opened],
                        **{f"{name}s": [row[name] for row in rows] for name in kind.key})
        counts[kind.count] += len(rows)
        counts["batches"] += 1
        after = {f"after_{name}": rows[-1][name] for name in kind.key}
