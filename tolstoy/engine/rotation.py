"""``tolstoy secrets rotate``: key rotation while the service runs.

``rewrap`` re-wraps every organization's data keys with the newest KEK, in one
transaction over a few small rows: the data keys stay the same, so no
ciphertext changes and nothing has to stop. ``reencrypt`` gives each
organization a new data key version and moves every ciphertext (credentials,
sealed step outputs, and tokens from before envelope encryption) to it in
batches of one transaction each, then retires the older versions. A run that
stopped part way is finished by the next one (an organization with more than
one unretired version is mid-move) rather than starting yet another version.
"""

from __future__ import annotations

import datetime as dt
import uuid

from ..db.database import Database
from ..db.queries import SQL
from .vault import Vault

BATCH = 500
_FIRST_ID = uuid.UUID(int=0)
_FIRST_STEP = (_FIRST_ID, "", dt.datetime.min.replace(tzinfo=dt.UTC))


def organization_ids(db: Database) -> list:
    """Every organization's id (row-level security's admin path; the owner's URL needs no more)."""
    with db.admin():
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


def reencrypt(db: Database, vault: Vault, batch: int = BATCH) -> dict:
    """Move every organization's ciphertexts to a new data key version, ``batch`` rows per transaction,
    and retire the versions before it. Returns counts."""
    counts = {"organizations": 0, "versions": 0, "credentials": 0, "outputs": 0, "batches": 0, "retired": 0}
    for org_id in organization_ids(db):
        target = _target(db, vault, org_id, counts)
        if target is None:
            continue
        counts["organizations"] += 1
        _move_credentials(db, vault, org_id, target, batch, counts)
        _move_sealed(db, vault, org_id, target, batch, counts)
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


def _move_credentials(db: Database, vault: Vault, org_id, target: int, batch: int, counts: dict) -> None:
    after = _FIRST_ID
    while True:
        with db.transaction(), db.tenant(org_id):
            rows = db.all(SQL.tool_credentials.to_reencrypt, org_id=org_id, after_id=after, version=target,
                          limit=batch)
            if not rows:
                return
            secrets = [vault.encrypt(org_id, vault.decrypt(org_id, row["secret"]), version=target) for row in rows]
            # The same statement records each decryption in secret_reads.
            db.rowcount(SQL.tool_credentials.reencrypted, org_id=org_id, ids=[row["id"] for row in rows],
                        secrets=secrets)
        counts["credentials"] += len(rows)
        counts["batches"] += 1
        after = rows[-1]["id"]


def _move_sealed(db: Database, vault: Vault, org_id, target: int, batch: int, counts: dict) -> None:
    after = _FIRST_STEP
    while True:
        with db.transaction(), db.tenant(org_id):
            rows = db.all(SQL.runs.sealed_to_reencrypt, org_id=org_id, after_run=after[0], after_step=after[1],
                          after_created=after[2], version=target, limit=batch)
            if not rows:
                return
            sealed = [vault.encrypt(org_id, vault.unseal(org_id, row["sealed"]), version=target) for row in rows]
            db.rowcount(SQL.runs.resealed, org_id=org_id, run_ids=[row["run_id"] for row in rows],
                        step_ids=[row["step_id"] for row in rows],
                        run_created=[row["run_created_at"] for row in rows], sealed=sealed)
        counts["outputs"] += len(rows)
        counts["batches"] += 1
        last = rows[-1]
        after = (last["run_id"], last["step_id"], last["run_created_at"])
