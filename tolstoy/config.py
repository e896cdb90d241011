"""Configuration: defaults overridden by environment variables, checked once at start."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Mapping

ENVIRONMENTS = ("development", "production", "test")


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line meant for an operator."""


@dataclass(frozen=True)
class Config:
    """Every setting the service reads; see the README's configuration table."""

    database_url: str | None = None
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
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def migration_url(self) -> str | None:
        """URL for schema changes: DIRECT_URL bypasses a pooler, else DATABASE_URL."""
        return self.direct_url or self.database_url

    @property
    def is_production(self) -> bool:
        """True when running with production defaults and safety checks."""
        return self.env == "production"

    def public_facts(self) -> dict:
        """Settings safe to show on /status/detailed: no URLs, which may hold passwords."""
        facts = asdict(self)
        for secret in ("database_url", "direct_url", "extra"):
            facts.pop(secret)
        facts["database_configured"] = self.database_url is not None
        return facts

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Config":
        """Build the configuration from environment variables, or raise ConfigError."""
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        environment = (env.get("TOLSTOY_ENV") or env.get("NODE_ENV") or "development").strip().lower()
        if environment not in ENVIRONMENTS:
            raise ConfigError(
                f"TOLSTOY_ENV must be one of {', '.join(ENVIRONMENTS)} (got {environment!r})"
            )
        database_url = reader.url("DATABASE_URL")
        config = cls(
            database_url=database_url,
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
        )
        if config.pool_min_size > config.pool_max_size:
            raise ConfigError(
                "TOLSTOY_POOL_MIN_SIZE must not exceed TOLSTOY_POOL_MAX_SIZE "
                f"({config.pool_min_size} > {config.pool_max_size})"
            )
        return config


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

    def prepare_threshold(self) -> int | None:
        # Transaction-mode poolers (PgBouncer) cannot keep prepared statements:
        # TOLSTOY_PREPARE_THRESHOLD=off disables them.
        value = self.raw("TOLSTOY_PREPARE_THRESHOLD")
        if value is not None and value.lower() in ("off", "none", "disable", "disabled"):
            return None
        return self.integer("TOLSTOY_PREPARE_THRESHOLD", 5, 0, 1000)
