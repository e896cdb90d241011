"""The flow engine: workers claim queued runs from PostgreSQL and execute their
steps, checkpointing each one, calling tools through a guarded HTTP client
with the organization's credentials.

This module is the engine's public face: the API and the command line use
what it exports and nothing deeper (import-linter checks it in CI).
"""

from __future__ import annotations

import threading

from ..db.database import Database
from .calls import Tools, input_errors
from .errors import InvalidInputs, StepFailed
from .graph import dependencies, graph_errors, step_order
from .keys import Keyring, keks_from_config
from .outbound import Outbound
from .rotation import reencrypt, rewrap
from .runner import RUN_STEP_KEY, Engine
from .tool_auth import SECRET_FIELDS, masked
from .vault import Reader, Vault, generate_key, legacy_keys, local_key
from .worker import Worker

__all__ = [
    "RUN_STEP_KEY", "SECRET_FIELDS", "Engine", "InvalidInputs", "Reader", "StepFailed", "Tools", "Vault", "Worker",
    "build", "dependencies", "worker", "generate_key", "graph_errors", "input_errors", "local_key", "masked",
    "reencrypt", "rewrap", "step_order", "tools", "vault_from_config",
]


def vault_from_config(config, db: Database) -> Vault | None:
    """The vault of organizations' secrets on ``db``, or None when neither TOLSTOY_ENCRYPTION_KEY nor
    TOLSTOY_KMS_KEY_ID is configured."""
    keks = keks_from_config(config)
    if keks is None:
        return None
    legacy = legacy_keys(config.encryption_key) if config.encryption_key else None
    return Vault(Keyring(db, keks, config.data_key_ttl), legacy)


def tools(config, db: Database) -> Tools:
    """Calls to tools with this configuration's outbound rules and credential keys."""
    return Tools(db, Outbound(config.allow_networks), vault_from_config(config, db))


def build(config, db: Database, worker_id: str, stopping: threading.Event | None = None) -> Engine:
    """An Engine wired from configuration."""
    return Engine(db, tools(config, db), worker_id, stopping=stopping, lease_seconds=config.worker_lease_seconds,
                  foreach_max_items=config.foreach_max_items)


def worker(config, db: Database, concurrency: int | None = None, **overrides) -> Worker:
    """A Worker wired from configuration (``overrides`` for tests: poll_seconds, worker_id…)."""
    settings = {"concurrency": concurrency or config.worker_concurrency, "poll_seconds": config.worker_poll_seconds,
                "lease_seconds": config.worker_lease_seconds, "max_recoveries": config.max_recoveries,
                "retention_days": config.run_retention_days, **overrides}
    return Worker(db, lambda worker_id, stopping: build(config, db, worker_id, stopping), **settings)
