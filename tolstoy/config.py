"""Configuration: defaults overridden by environment variables, checked once at start."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .aws_secrets import SecretCache, SecretError

log = logging.getLogger("tolstoy.config")

ENVIRONMENTS = ("development", "production", "test")
PRECEDENCES = ("secret", "env")
# What /status/detailed shows of the settings, reviewed field by field (tests/unit/test_config_errors.py
# fails for a field in neither list): PUBLIC_FIELDS as they are; PRIVATE_FIELDS never, because they are
# secrets, may hold passwords (URLs), or tell an attacker more than an operator needs from this page
# (which KMS key and AWS secret to go after, which internal networks tools may reach, local paths and
# addresses); the operator knows them from the environment, and the page says only whether they are set.
PUBLIC_FIELDS = (
    "port", "app_name", "env", "pool_min_size", "pool_max_size", "pool_timeout", "statement_timeout_ms",
    "prepare_threshold", "data_key_ttl", "worker_concurrency", "sync_execute_timeout_ms",
    "sync_execute_max_timeout_ms", "sync_execute_per_org", "worker_lease_seconds", "worker_poll_seconds",
    "max_recoveries", "max_handbacks", "rate_limit_max_wait_seconds", "worker_drain_seconds", "fair_share_half_life_seconds",
    "foreach_max_items", "subflow_max_depth", "template_max_operations", "template_max_ms",
    "template_max_size", "step_max_bytes", "run_max_bytes", "run_retention_days", "webhook_timeout_ms",
    "webhook_retry_base_ms", "webhook_retry_max_ms", "webhook_give_up_seconds", "webhook_retention_days",
    "audit_retention_days",
    "auth_mode", "public_url", "cors_origins", "web_concurrency", "config_precedence", "secret_ttl",
    "prune_batch", "prune_budget_seconds", "unknown_outcome_timeout_days", "hook_refused_sources",
    "quota_queued_runs", "quota_stored_bytes", "quota_requests_per_second", "quota_request_burst",
    "traces_exporter", "trace_url",
)
PRIVATE_FIELDS = (
    "database_url", "worker_database_url", "admin_database_url", "direct_url", "extra", "secret",
    "database_url_from_secret", "encryption_key", "api_key_secret", "admin_token", "link_secret", "kms_key_id",
    "kms_region", "aws_secret_name", "aws_region", "allow_networks", "trusted_proxies", "bind", "data_dir",
    # Where traces go: an internal collector's address (its headers, OTEL_EXPORTER_OTLP_HEADERS, may hold a
    # token: never read into the configuration, the SDK reads it).
    "otlp_endpoint",
)
AUTH_MODES = ("headers", "api_key")
# The largest value of each quota, as a setting and as an override (the organization_quotas table's checks).
QUOTA_RANGES = {"queuedRuns": 100_000_000, "storedBytes": 10 ** 15, "requestsPerSecond": 1_000_000,
                "requestBurst": 1_000_000}


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line meant for an operator."""


@dataclass(frozen=True)
class Config:
    """Every setting the service reads; see the README's configuration table."""

    database_url: str | None = None
    # The workers' login role (tolstoy_worker), the only one that may claim runs.
    worker_database_url: str | None = None
    # The admin login (tolstoy_admin), the only one that sees every organization: the API's
    # /organizations routes manage organizations through it (a small pool of its own).
    admin_database_url: str | None = None
    direct_url: str | None = None
    port: int = 3000
    app_name: str = "tolstoy"
    env: str = "development"
    pool_min_size: int = 1
    pool_max_size: int = 10
    pool_timeout: float = 5.0
    statement_timeout_ms: int = 15000
    prepare_threshold: int | None = 5
    data_dir: str = ".tolstoy"
    # Engine: Fernet key(s) for tool credentials (first encrypts, all decrypt),
    # networks outbound calls may reach although not public, and worker tuning.
    encryption_key: str | None = None
    # Envelope encryption: an AWS KMS key wraps the organizations' data keys instead (its region from
    # AWS_REGION), and how long a process keeps an unwrapped data key.
    kms_key_id: str | None = None
    kms_region: str | None = None
    data_key_ttl: float = 300.0
    allow_networks: tuple[str, ...] = ()
    worker_concurrency: int = 4
    # POST /actions/{id}/execute holds a Gunicorn worker while the tool answers: bounded in
    # time (per action up to the maximum) and in how many one organization runs at once.
    sync_execute_timeout_ms: int = 10_000
    sync_execute_max_timeout_ms: int = 30_000
    sync_execute_per_org: int = 2
    worker_lease_seconds: float = 30.0
    worker_poll_seconds: float = 10.0
    # A run recovered after its worker vanished (or refused for its own data) this many times in a row
    # without finishing a step fails instead.
    max_recoveries: int = 3
    # A run handed back to the queue after a transient fault of the database this many times in a row
    # without finishing a step fails instead (no run bounces forever).
    max_handbacks: int = 20
    # The longest a step may wait for its credential's rate budget, in all, before it fails with
    # RateLimitWaitExceeded (docs/flows.md, Rate budgets).
    rate_limit_max_wait_seconds: int = 21600
    # SIGTERM: how long a worker waits for its runs to reach a step boundary (and go back to the queue)
    # before it cuts off what is still running and exits; below systemd's TimeoutStopSec (90 s).
    worker_drain_seconds: float = 60.0
    # Fair claims weigh each organization by the worker time its runs used lately, each older second
    # counting half as much per half-life.
    fair_share_half_life_seconds: float = 300.0
    # A foreach step with more items than this fails (its items are one checkpoint each).
    foreach_max_items: int = 10_000
    # A subflow step whose child would nest deeper than this fails (a run started by execute is at depth 0).
    subflow_max_depth: int = 10
    # The budget of one template render (a step's config, an item's, an executeIf): operations (each loop
    # iteration, call, operator…), wall time, and the size of any value it builds (docs/flows.md).
    template_max_operations: int = 1_000_000
    template_max_ms: int = 1000
    template_max_size: int = 1_000_000
    # Bytes one step's checkpoint (inputs, output, error) and all of a run's checkpoints may hold, as
    # jsonb stores them: past either the step fails (a claim hands a worker its runs as one jsonb
    # document, which PostgreSQL refuses past 256 MB; engine/sizes.py).
    step_max_bytes: int = 10 * 1024 * 1024
    run_max_bytes: int = 32 * 1024 * 1024
    # Run history (runs, steps, execution logs) older than this is dropped by month; None keeps it.
    run_retention_days: int | None = None
    # Outbound event webhooks: per-attempt timeout, retry back-off (doubling from base up to the cap,
    # jittered), how long a delivery is retried and a webhook may fail before it is disabled, and how
    # long finished deliveries (and the inbound trigger inbox) are kept.
    webhook_timeout_ms: int = 10_000
    webhook_retry_base_ms: int = 10_000
    webhook_retry_max_ms: int = 3_600_000
    webhook_give_up_seconds: float = 86_400.0
    webhook_retention_days: int = 30
    # Housekeeping (a worker's upkeep pass): rows deleted per transaction, and how long a pass may
    # prune before it yields (the next pass follows soon when it was not done).
    prune_batch: int = 10_000
    prune_budget_seconds: float = 60.0
    # A step parked on an unknown outcome that nobody resolves fails after this many days.
    unknown_outcome_timeout_days: int = 30
    # Refused requests to a webhook trigger are counted per source and hour; past this many sources
    # in an hour, one row counts the rest.
    hook_refused_sources: int = 20
    # Quotas per organization (defaults; the operator overrides them per organization through
    # PUT /organizations/{id}/quotas): runs not finished, bytes of run history within retention, and
    # API requests per second with the burst a token bucket holds (per API process).
    quota_queued_runs: int = 10_000
    quota_stored_bytes: int = 10 * 1024 ** 3
    quota_requests_per_second: int = 100
    quota_request_burst: int = 200
    # The audit trail of configuration changes: events older than this are deleted by the workers'
    # housekeeping (the only way an event goes).
    audit_retention_days: int = 365
    # Authentication: trust X-Org-ID (behind an authenticating gateway) or require API keys.
    auth_mode: str = "headers"
    api_key_secret: str | None = None
    admin_token: str | None = None
    # Approval links: the externally visible base URL they start with (else they are relative), and
    # the HMAC key that signs them (else one derived from TOLSTOY_ENCRYPTION_KEY).
    public_url: str | None = None
    link_secret: str | None = None
    cors_origins: tuple[str, ...] = ()
    # Traces (tolstoy/tracing.py reads the OTEL_* variables itself, as the SDK does; these say what it
    # will find): OTEL_TRACES_EXPORTER (``otlp`` turns them on), the collector's endpoint, and the
    # console's link to a trace viewer, a URL with {traceId} in it (TOLSTOY_TRACE_URL).
    traces_exporter: str | None = None
    otlp_endpoint: str | None = None
    trace_url: str | None = None
    bind: str | None = None
    web_concurrency: int | None = None
    # Proxies whose X-Forwarded-For / -Proto are believed (Nginx on the same host by default).
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    aws_secret_name: str | None = None
    aws_region: str | None = None
    config_precedence: str = "secret"
    secret_ttl: float = 300.0
    extra: dict = field(default_factory=dict, compare=False)
    # The AWS secret the settings came from, when one is used (kept to refresh DATABASE_URL).
    secret: SecretCache | None = field(default=None, compare=False, repr=False)
    database_url_from_secret: bool = False

    @property
    def migration_url(self) -> str | None:
        """URL for schema changes: DIRECT_URL bypasses a pooler, else DATABASE_URL."""
        return self.direct_url or self.database_url

    @property
    def is_production(self) -> bool:
        """True when running with production defaults and safety checks."""
        return self.env == "production"

    def check_serving(self) -> None:
        """Settings only the API needs (not migrations or maintenance commands); ConfigError if missing."""
        if self.auth_mode == "api_key":
            for name, value in (("TOLSTOY_API_KEY_SECRET", self.api_key_secret),
                                ("TOLSTOY_ADMIN_TOKEN", self.admin_token)):
                if not value or len(value) < 32:
                    raise ConfigError(f"{name} must be set to at least 32 random characters when "
                                      "TOLSTOY_AUTH_MODE=api_key")

    def quota_defaults(self) -> dict:
        """The quotas of an organization the operator set none for (organization_quotas overrides them)."""
        return {"queuedRuns": self.quota_queued_runs, "storedBytes": self.quota_stored_bytes,
                "requestsPerSecond": self.quota_requests_per_second, "requestBurst": self.quota_request_burst}

    def database_quotas(self) -> dict:
        """What the database itself enforces of them (tolstoy_admit_run), with the retention that decides
        which months of history still count, for every unit of work to set (tolstoy.quotas)."""
        return {"queuedRuns": self.quota_queued_runs, "storedBytes": self.quota_stored_bytes,
                "retentionDays": self.run_retention_days}

    def public_facts(self) -> dict:
        """The settings /status/detailed shows (PUBLIC_FIELDS), and whether the private ones that
        decide how the service runs are set."""
        facts = {name: getattr(self, name) for name in PUBLIC_FIELDS}
        facts["cors_origins"] = list(self.cors_origins)
        facts["database_configured"] = self.database_url is not None
        facts["worker_database_configured"] = self.worker_database_url is not None
        facts["admin_database_configured"] = self.admin_database_url is not None
        facts["kms_configured"] = self.kms_key_id is not None
        facts["aws_secret_configured"] = self.aws_secret_name is not None
        facts["allow_networks_configured"] = bool(self.allow_networks)
        return facts

    def database_conninfo(self) -> str | Callable[[], str] | None:
        """What the pool connects with: DATABASE_URL, or a callable re-reading it from the secret after its TTL."""
        if self.secret is None or not self.database_url_from_secret:
            return self.database_url
        return self._current_database_url

    def _current_database_url(self) -> str:
        url = self.secret.get().get("DATABASE_URL", "").strip()
        if url.startswith(("postgres://", "postgresql://")):
            return url
        log.error("DATABASE_URL in AWS secret %s is missing or not a postgres URL; keeping the previous one",
                  self.secret.where)
        return self.database_url

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Build the configuration from environment variables, or raise ConfigError."""
        env = os.environ if environ is None else environ
        environment = (env.get("TOLSTOY_ENV") or env.get("NODE_ENV") or "development").strip().lower()
        if environment not in ENVIRONMENTS:
            raise ConfigError(
                f"TOLSTOY_ENV must be one of {', '.join(ENVIRONMENTS)} (got {environment!r})"
            )
        source = _SecretSource.from_env(env, environment)
        reader = _Reader(source.merged(env))
        database_url = reader.url("DATABASE_URL")
        config = cls(
            database_url=database_url,
            worker_database_url=reader.url("WORKER_DATABASE_URL"),
            admin_database_url=reader.url("ADMIN_DATABASE_URL"),
            direct_url=reader.url("DIRECT_URL"),
            port=reader.integer("PORT", 3000, 1, 65535),
            app_name=reader.text("APP_NAME", "tolstoy"),
            env=environment,
            pool_min_size=reader.integer("TOLSTOY_POOL_MIN_SIZE", 1, 0, 1000),
            pool_max_size=reader.integer("TOLSTOY_POOL_MAX_SIZE", 10, 1, 1000),
            pool_timeout=reader.number("TOLSTOY_POOL_TIMEOUT", 5.0, 0.1, 600),
            statement_timeout_ms=reader.integer("TOLSTOY_STATEMENT_TIMEOUT_MS", 15000, 0, 3_600_000),
            prepare_threshold=reader.prepare_threshold(),
            data_dir=reader.text("TOLSTOY_DATA_DIR", ".tolstoy"),
            encryption_key=reader.raw("TOLSTOY_ENCRYPTION_KEY"),
            kms_key_id=reader.raw("TOLSTOY_KMS_KEY_ID"),
            kms_region=reader.raw("AWS_REGION") or reader.raw("AWS_DEFAULT_REGION") or _arn_region(
                reader.raw("TOLSTOY_KMS_KEY_ID")),
            data_key_ttl=reader.number("TOLSTOY_DATA_KEY_TTL", 300.0, 1, 3600),
            allow_networks=reader.networks("TOLSTOY_ALLOW_NETWORKS", ()),
            worker_concurrency=reader.integer("TOLSTOY_WORKER_CONCURRENCY", 4, 1, 256),
            sync_execute_timeout_ms=reader.integer("TOLSTOY_SYNC_EXECUTE_TIMEOUT_MS", 10_000, 100, 120_000),
            sync_execute_max_timeout_ms=reader.integer("TOLSTOY_SYNC_EXECUTE_MAX_TIMEOUT_MS", 30_000, 100, 120_000),
            sync_execute_per_org=reader.integer("TOLSTOY_SYNC_EXECUTE_PER_ORG", 2, 1, 1000),
            worker_lease_seconds=reader.number("TOLSTOY_WORKER_LEASE_SECONDS", 30.0, 1, 3600),
            worker_poll_seconds=reader.number("TOLSTOY_WORKER_POLL_SECONDS", 10.0, 0.05, 300),
            max_recoveries=reader.integer("TOLSTOY_MAX_RECOVERIES", 3, 0, 100),
            max_handbacks=reader.integer("TOLSTOY_MAX_HANDBACKS", 20, 0, 10_000),
            rate_limit_max_wait_seconds=reader.integer("TOLSTOY_RATE_LIMIT_MAX_WAIT_SECONDS", 21600, 1, 30 * 86400),
            worker_drain_seconds=reader.number("TOLSTOY_WORKER_DRAIN_SECONDS", 60.0, 0, 3600),
            fair_share_half_life_seconds=reader.number("TOLSTOY_FAIR_SHARE_HALF_LIFE_SECONDS", 300.0, 1, 86_400),
            foreach_max_items=reader.integer("TOLSTOY_FOREACH_MAX_ITEMS", 10_000, 1, 1_000_000),
            subflow_max_depth=reader.integer("TOLSTOY_SUBFLOW_MAX_DEPTH", 10, 1, 1000),
            template_max_operations=reader.integer("TOLSTOY_TEMPLATE_MAX_OPERATIONS", 1_000_000, 1000, 1_000_000_000),
            template_max_ms=reader.integer("TOLSTOY_TEMPLATE_MAX_MS", 1000, 10, 600_000),
            template_max_size=reader.integer("TOLSTOY_TEMPLATE_MAX_SIZE", 1_000_000, 1000, 100_000_000),
            step_max_bytes=reader.integer("TOLSTOY_STEP_MAX_BYTES", 10 * 1024 * 1024, 1024, 64 * 1024 * 1024),
            run_max_bytes=reader.integer("TOLSTOY_RUN_MAX_BYTES", 32 * 1024 * 1024, 1024, 128 * 1024 * 1024),
            run_retention_days=reader.integer("TOLSTOY_RUN_RETENTION_DAYS", None, 1, 36500),
            webhook_timeout_ms=reader.integer("TOLSTOY_WEBHOOK_TIMEOUT_MS", 10_000, 100, 60_000),
            webhook_retry_base_ms=reader.integer("TOLSTOY_WEBHOOK_RETRY_BASE_MS", 10_000, 10, 3_600_000),
            webhook_retry_max_ms=reader.integer("TOLSTOY_WEBHOOK_RETRY_MAX_MS", 3_600_000, 10, 86_400_000),
            webhook_give_up_seconds=reader.number("TOLSTOY_WEBHOOK_GIVE_UP_SECONDS", 86_400.0, 1, 30 * 86_400),
            webhook_retention_days=reader.integer("TOLSTOY_WEBHOOK_RETENTION_DAYS", 30, 1, 36500),
            prune_batch=reader.integer("TOLSTOY_PRUNE_BATCH", 10_000, 100, 100_000),
            prune_budget_seconds=reader.number("TOLSTOY_PRUNE_BUDGET_SECONDS", 60.0, 0.1, 3600),
            unknown_outcome_timeout_days=reader.integer("TOLSTOY_UNKNOWN_OUTCOME_TIMEOUT_DAYS", 30, 1, 36500),
            hook_refused_sources=reader.integer("TOLSTOY_HOOK_REFUSED_SOURCES", 20, 1, 1000),
            quota_queued_runs=reader.integer("TOLSTOY_QUOTA_QUEUED_RUNS", 10_000, 0, QUOTA_RANGES["queuedRuns"]),
            quota_stored_bytes=reader.integer("TOLSTOY_QUOTA_STORED_BYTES", 10 * 1024 ** 3, 0,
                                              QUOTA_RANGES["storedBytes"]),
            quota_requests_per_second=reader.integer("TOLSTOY_QUOTA_REQUESTS_PER_SECOND", 100, 1,
                                                     QUOTA_RANGES["requestsPerSecond"]),
            quota_request_burst=reader.integer("TOLSTOY_QUOTA_REQUEST_BURST", 200, 1, QUOTA_RANGES["requestBurst"]),
            audit_retention_days=reader.integer("TOLSTOY_AUDIT_RETENTION_DAYS", 365, 1, 36500),
            auth_mode=reader.choice("TOLSTOY_AUTH_MODE", "api_key" if environment == "production" else "headers",
                                    AUTH_MODES),
            api_key_secret=reader.raw("TOLSTOY_API_KEY_SECRET"),
            admin_token=reader.raw("TOLSTOY_ADMIN_TOKEN"),
            public_url=reader.public_url("TOLSTOY_PUBLIC_URL"),
            link_secret=reader.raw("TOLSTOY_LINK_SECRET"),
            cors_origins=tuple(o.strip() for o in (reader.raw("TOLSTOY_CORS_ORIGINS") or "").split(",") if o.strip()),
            traces_exporter=reader.raw("OTEL_TRACES_EXPORTER"),
            otlp_endpoint=reader.raw("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or reader.raw("OTEL_EXPORTER_OTLP_ENDPOINT"),
            trace_url=reader.raw("TOLSTOY_TRACE_URL"),
            bind=reader.raw("TOLSTOY_BIND"),
            web_concurrency=reader.integer("WEB_CONCURRENCY", None, 1, 256),
            trusted_proxies=reader.networks("TOLSTOY_TRUSTED_PROXIES", ("127.0.0.1", "::1")),
            aws_secret_name=source.name,
            aws_region=source.region,
            config_precedence=source.precedence,
            secret_ttl=source.ttl,
            secret=source.cache,
            database_url_from_secret=source.provides("DATABASE_URL", env),
        )
        if config.encryption_key is not None:
            check_fernet_keys(config.encryption_key)
        if config.link_secret is not None and len(config.link_secret) < 32:
            raise ConfigError("TOLSTOY_LINK_SECRET must be at least 32 random characters")
        if config.kms_key_id is not None and config.kms_region is None:
            raise ConfigError("AWS_REGION must be set with TOLSTOY_KMS_KEY_ID (or give the key's ARN)")
        if config.trace_url is not None and (not config.trace_url.startswith(("http://", "https://"))
                                             or "{traceId}" not in config.trace_url):
            raise ConfigError("TOLSTOY_TRACE_URL must be an http:// or https:// URL with {traceId} in it "
                              "(e.g. https://jaeger.example.com/trace/{traceId})")
        if config.step_max_bytes > config.run_max_bytes:
            raise ConfigError(
                "TOLSTOY_STEP_MAX_BYTES must not exceed TOLSTOY_RUN_MAX_BYTES "
                f"({config.step_max_bytes} > {config.run_max_bytes})"
            )
        if config.pool_min_size > config.pool_max_size:
            raise ConfigError(
                "TOLSTOY_POOL_MIN_SIZE must not exceed TOLSTOY_POOL_MAX_SIZE "
                f"({config.pool_min_size} > {config.pool_max_size})"
            )
        return config


def check_fernet_keys(keys: str) -> None:
    """ConfigError unless ``keys`` is a comma-separated list of Fernet keys (32 url-safe base64 bytes).

    Checked here without the cryptography package, so reading settings stays light.
    """
    parts = [k.strip() for k in keys.split(",") if k.strip()]
    if not parts:
        raise ConfigError("TOLSTOY_ENCRYPTION_KEY is empty")
    for part in parts:
        try:
            raw = base64.urlsafe_b64decode(part.encode())
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise ConfigError("TOLSTOY_ENCRYPTION_KEY must hold Fernet keys (32 url-safe base64 bytes), "
                              "comma-separated")


def _arn_region(key_id: str | None) -> str | None:
    """The region an ARN names (arn:aws:kms:<region>:<account>:key/…), else None."""
    parts = (key_id or "").split(":")
    if len(parts) > 3 and parts[0] == "arn" and parts[3]:
        return parts[3]
    return None


class _SecretSource:
    """Where settings come from: the environment, plus an AWS secret when one is used.

    The secret is used when ``USE_AWS_SECRETS=true``, or in production unless
    ``USE_AWS_SECRETS=false``. Its values win over the environment unless
    ``TOLSTOY_CONFIG_PRECEDENCE=env``. Only the environment says whether and
    where to find the secret.
    """

    def __init__(self, cache: SecretCache | None, values: dict, precedence: str, name, region, ttl):
        self.cache = cache
        self.values = values
        self.precedence = precedence
        self.name = name
        self.region = region
        self.ttl = ttl

    @classmethod
    def from_env(cls, env: Mapping[str, str], environment: str) -> _SecretSource:
        reader = _Reader(env)
        precedence = reader.text("TOLSTOY_CONFIG_PRECEDENCE", "secret").lower()
        if precedence not in PRECEDENCES:
            raise ConfigError(f"TOLSTOY_CONFIG_PRECEDENCE must be secret or env (got {precedence!r})")
        ttl = reader.number("TOLSTOY_SECRET_TTL", 300.0, 1, 86400)
        if not reader.boolean("USE_AWS_SECRETS", environment == "production"):
            return cls(None, {}, precedence, None, None, ttl)
        name = reader.text("AWS_SECRET_NAME", "tolstoy-db-secret")
        region = reader.raw("AWS_REGION") or reader.raw("AWS_DEFAULT_REGION")
        if region is None:
            raise ConfigError(f"AWS_REGION must be set to read the AWS secret '{name}' (or set USE_AWS_SECRETS=false)")
        cache = SecretCache(name, region, ttl)
        try:
            values = cache.load()
        except SecretError as exc:
            raise ConfigError(str(exc)) from None
        return cls(cache, values, precedence, name, region, ttl)

    def merged(self, env: Mapping[str, str]) -> Mapping[str, str]:
        """The settings to read: keys naming the secret itself always come from the environment."""
        values = {k: v for k, v in self.values.items() if k not in _BOOTSTRAP}
        return {**values, **env} if self.precedence == "env" else {**env, **values}

    def provides(self, name: str, env: Mapping[str, str]) -> bool:
        """True when the setting's value is the secret's."""
        if name not in self.values:
            return False
        return not (self.precedence == "env" and _Reader(env).raw(name) is not None)


# Settings that say whether and where to find the secret: a secret cannot change them.
_BOOTSTRAP = frozenset({
    "TOLSTOY_ENV", "NODE_ENV", "USE_AWS_SECRETS", "AWS_SECRET_NAME", "AWS_REGION", "AWS_DEFAULT_REGION",
    "TOLSTOY_CONFIG_PRECEDENCE", "TOLSTOY_SECRET_TTL",
})


class _Reader:
    """Typed access to environment variables with operator-friendly errors."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def url(self, name: str) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        if not value.startswith(("postgres://", "postgresql://")):
            raise ConfigError(f"{name} must be a postgres:// or postgresql:// URL")
        return value

    def public_url(self, name: str) -> str | None:
        """An http(s) base URL without a trailing slash."""
        value = self.raw(name)
        if value is None:
            return None
        if not value.startswith(("http://", "https://")) or "?" in value or "#" in value:
            raise ConfigError(f"{name} must be an http:// or https:// URL (no query or fragment)")
        return value.rstrip("/")

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false (got {value!r})")

    def networks(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return default
        items = tuple(item.strip() for item in value.split(",") if item.strip())
        for item in items:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ConfigError(f"{name} must list IP addresses or networks (got {item!r})") from None
        return items

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        return self._number(name, default, low, high, int, "a whole number")

    def number(self, name: str, default: float, low: float, high: float) -> float:
        return self._number(name, default, low, high, float, "a number")

    def _number(self, name, default, low, high, kind, description):
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = kind(value)
        except ValueError:
            raise ConfigError(f"{name} must be {description} (got {value!r})") from None
        if not low <= number <= high:
            raise ConfigError(f"{name} must be between {low} and {high} (got {number})")
        return number

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = (self.raw(name) or default).lower()
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)} (got {value!r})")
        return value

    def prepare_threshold(self) -> int | None:
        # Transaction-mode poolers (PgBouncer) cannot keep prepared statements:
        # TOLSTOY_PREPARE_THRESHOLD=off disables them.
        value = self.raw("TOLSTOY_PREPARE_THRESHOLD")
        if value is not None and value.lower() in ("off", "none", "disable", "disabled"):
            return None
        return self.integer("TOLSTOY_PREPARE_THRESHOLD", 5, 0, 1000)
