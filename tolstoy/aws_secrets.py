"""Settings from one AWS Secrets Manager secret (a JSON object of strings), read
with boto3 and kept in memory for a TTL.

Credentials come from boto3's default chain (on EC2: the instance role); the
project never passes keys. ``AWS_ENDPOINT_URL`` (honoured by boto3 itself)
points it elsewhere, which is how the tests reach a local moto server.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("tolstoy.aws_secrets")

# After a failed refresh, try again this soon rather than a whole TTL later.
RETRY_AFTER_FAILURE = 30.0


class SecretError(Exception):
    """The secret could not be read or is malformed; the message is one line naming it."""


def secretsmanager_client(region: str):
    """A Secrets Manager client with short timeouts, so a missing network fails a start in seconds."""
    import boto3  # imported here: only processes that use a secret pay for boto3
    from botocore.config import Config as BotoConfig

    config = BotoConfig(connect_timeout=3, read_timeout=5, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.client("secretsmanager", region_name=region, config=config)


def parse_secret(text: str | None, where: str) -> dict[str, str]:
    """A SecretString as {name: value}; numbers and booleans become strings, anything else is refused."""
    try:
        data = json.loads(text) if text is not None else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise SecretError(f"AWS secret {where} is not a JSON object (expected keys like DATABASE_URL)")
    values = {}
    for key, value in data.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (int, float)):
            value = str(value)
        if not isinstance(value, str):
            raise SecretError(f"AWS secret {where}: {key} must be a string")
        values[key] = value
    return values


class SecretCache:
    """One secret's values, fetched at start and again at most once per TTL (never per request)."""

    def __init__(self, name: str, region: str, ttl: float, *,
                 clock: Callable[[], float] = time.monotonic, client=None):
        self.name = name
        self.region = region
        self.ttl = ttl
        self.clock = clock
        self._client = client
        self._lock = threading.Lock()
        self._values: dict[str, str] | None = None
        self._next_fetch = 0.0

    @property
    def where(self) -> str:
        """The secret as an operator would look it up: name and region."""
        return f"'{self.name}' in region {self.region}"

    def _fetch(self) -> dict[str, str]:
        from botocore.exceptions import BotoCoreError, ClientError

        if self._client is None:
            self._client = secretsmanager_client(self.region)
        try:
            answer = self._client.get_secret_value(SecretId=self.name)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise SecretError(
                f"cannot read AWS secret {self.where}: {error.get('Code', 'error')} ({error.get('Message', '')})"
            ) from None
        except BotoCoreError as exc:
            raise SecretError(f"cannot read AWS secret {self.where}: {exc}") from None
        return parse_secret(answer.get("SecretString"), self.where)

    def load(self) -> dict[str, str]:
        """Fetch now (at start); raises SecretError so the process can stop with one line."""
        with self._lock:
            self._values = self._fetch()
            self._next_fetch = self.clock() + self.ttl
            return dict(self._values)

    def get(self) -> dict[str, str]:
        """The cached values, fetched again once the TTL has passed; a failed refresh keeps the old ones."""
        with self._lock:
            if self._values is None or self.clock() >= self._next_fetch:
                try:
                    self._values = self._fetch()
                    self._next_fetch = self.clock() + self.ttl
                except SecretError as exc:
                    if self._values is None:
                        raise
                    log.warning("keeping the cached secret values: %s", exc)
                    self._next_fetch = self.clock() + min(self.ttl, RETRY_AFTER_FAILURE)
            return dict(self._values)
