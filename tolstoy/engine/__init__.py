"""The flow engine: workers claim queued runs from PostgreSQL and execute their
steps, checkpointing each one, calling tools through a guarded HTTP client
with the organization's credentials.

This module is the engine's public face: the API and the command line use
what it exports and nothing deeper (import-linter checks it in CI).
"""

from __future__ import annotations

import threading

from ..db.database import Database
from .calls import HTTP_METHODS, ToolClient, input_errors
from .errors import (
    ActAsUserRefused,
    BadMoveRequest,
    ConcurrencyKeyRefused,
    InvalidInputs,
    LinkUsed,
    MoveRefused,
    NoKeyToSeal,
    NoSuchRun,
    RunStateConflict,
    StepFailed,
)
from .graph import dependencies, graph_errors, step_order
from .keys import Keyring, keks_from_config
from .lifecycle import WAITING_KINDS, send_signal, waiting_for
from .lifecycle import cancel as cancel_run
from .lifecycle import move as move_run
from .lifecycle import queue as queue_run
from .lifecycle import rerun as rerun_run
from .lifecycle import resolve as resolve_step
from .lifecycle import retry as retry_run
from .outbound import Outbound, OutboundError, origin_of
from .reruns import RerunRefused
from .rotation import reencrypt, rewrap
from .runner import RUN_STEP_KEY, Engine, reserved_step_key
from .steps import ITEM_STEP_TYPES, LIMITED_STEP_TYPES, SIGNAL_NAME, STEP_TYPES, step_configs
from .templates import Limits
from .tool_auth import (
    SECRET_FIELDS,
    TokenRequestFailed,
    carried_over,
    exchange_code,
    expires_in,
    issued_under,
    masked,
    same_issuer,
    scope_of,
)
from .vault import Reader, Vault, generate_key, legacy_keys, local_key
from .webhooks import EVENT_TYPES as WEBHOOK_EVENT_TYPES
from .webhooks import RESERVED_HEADERS as WEBHOOK_RESERVED_HEADERS
from .webhooks import Deliverer
from .webhooks import target_problem as webhook_target_problem
from .worker import Worker

__all__ = [
    "RUN_STEP_KEY", "SECRET_FIELDS", "Engine", "InvalidInputs", "Reader", "StepFailed", "ToolClient", "Vault", "Worker",
    "STEP_TYPES", "ITEM_STEP_TYPES", "LIMITED_STEP_TYPES", "SIGNAL_NAME", "step_configs", "HTTP_METHODS",
    "ActAsUserRefused",
    "queue_run", "retry_run", "rerun_run", "RerunRefused", "cancel_run", "resolve_step", "send_signal", "NoSuchRun",
    "RunStateConflict", "WAITING_KINDS", "waiting_for",
    "NoKeyToSeal", "LinkUsed", "move_run", "MoveRefused", "BadMoveRequest", "ConcurrencyKeyRefused",
    "build", "dependencies", "worker", "generate_key", "graph_errors", "input_errors", "local_key", "masked",
    "reencrypt", "reserved_step_key", "rewrap", "step_order", "tools", "vault_from_config",
    "OutboundError", "TokenRequestFailed", "origin_of", "exchange_code", "expires_in", "scope_of",
    "carried_over", "issued_under", "same_issuer",
    "WEBHOOK_EVENT_TYPES", "WEBHOOK_RESERVED_HEADERS", "Deliverer", "deliverer", "webhook_target_problem",
]


def vault_from_config(config, db: Database) -> Vault | None:
    """The vault of organizations' secrets on ``db``, or None when neither TOLSTOY_ENCRYPTION_KEY nor
    TOLSTOY_KMS_KEY_ID is configured."""
    keks = keks_from_config(config)
    if keks is None:
        return None
    legacy = legacy_keys(config.encryption_key) if config.encryption_key else None
    return Vault(Keyring(db, keks, config.data_key_ttl), legacy)


def tools(config, db: Database) -> ToolClient:
    """Calls to tools with this configuration's outbound rules and credential keys."""
    return ToolClient(db, Outbound(config.allow_networks), vault_from_config(config, db))


def build(config, db: Database, worker_id: str, stopping: threading.Event | None = None) -> Engine:
    """An Engine wired from configuration."""
    return Engine(db, tools(config, db), worker_id, stopping=stopping, lease_seconds=config.worker_lease_seconds,
                  foreach_max_items=config.foreach_max_items, subflow_max_depth=config.subflow_max_depth,
                  template_limits=Limits(config.template_max_operations, config.template_max_ms,
                                         config.template_max_size),
                  step_max_bytes=config.step_max_bytes, run_max_bytes=config.run_max_bytes,
                  max_recoveries=config.max_recoveries, max_handbacks=config.max_handbacks,
                  fair_share_half_life_seconds=config.fair_share_half_life_seconds,
                  rate_limit_max_wait_seconds=config.rate_limit_max_wait_seconds)


def worker(config, db: Database, concurrency: int | None = None, **overrides) -> Worker:
    """A Worker wired from configuration (``overrides`` for tests: poll_seconds, worker_id…)."""
    settings = {"concurrency": concurrency or config.worker_concurrency, "poll_seconds": config.worker_poll_seconds,
                "lease_seconds": config.worker_lease_seconds, "max_recoveries": config.max_recoveries,
                "max_handbacks": config.max_handbacks, "drain_seconds": config.worker_drain_seconds,
                "fair_share_half_life_seconds": config.fair_share_half_life_seconds,
                "retention_days": config.run_retention_days, "prune_batch": config.prune_batch,
                "prune_budget_seconds": config.prune_budget_seconds,
                "unknown_outcome_timeout_days": config.unknown_outcome_timeout_days,
                "audit_retention_days": config.audit_retention_days, **overrides}
    settings.setdefault("deliverer", lambda worker_id, calls: deliverer(config, db, worker_id, calls))
    # Schedules and subflow steps queue runs: the database holds them to the configured quota defaults.
    db.use_quotas(config.database_quotas())
    return Worker(db, lambda worker_id, stopping: build(config, db, worker_id, stopping), **settings)


def deliverer(config, db: Database, worker_id: str, calls: ToolClient) -> Deliverer:
    """The sender of outbound event webhooks, wired from configuration; it shares the engine's HTTP
    client and vault (``calls``), so a worker has one connection pool and one data-key cache."""
    return Deliverer(db, calls.http, calls.vault, worker_id,
                     timeout_ms=config.webhook_timeout_ms, retry_base_ms=config.webhook_retry_base_ms,
                     retry_max_ms=config.webhook_retry_max_ms, give_up_seconds=config.webhook_give_up_seconds,
                     retention_days=config.webhook_retention_days)
