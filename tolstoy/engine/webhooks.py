"""Outbound event webhooks: delivering the outbox (sql/webhooks.sql).

Events are written to ``webhook_deliveries`` by the database itself, in the
transaction of the change they describe (triggers on the run tables; see the
event_webhooks migration). A worker's ``Deliverer`` claims due deliveries of
any organization (SKIP LOCKED, under a lease whose token fences the answer),
sends each as the exact bytes of a JSON envelope, signed over those bytes, and
records the attempt: 2xx delivered; network trouble, 5xx and 429 retried after
a capped, jittered exponential back-off (or the receiver's ``Retry-After``)
until the give-up period has passed since the first attempt; any other answer
is final. Redirects are never followed: a 3xx is a failed attempt that records
its ``Location``. A webhook's deliveries go out one at a time, in the order
their transactions committed: the claim hands out only the first unfinished
delivery of each webhook's line, and takes lines in turns across organizations
and webhooks (tolstoy_claim_deliveries), so no tenant's backlog holds another's.

Every attempt goes through the engine's outbound guard (``Outbound``), so a
target that resolves to a private address is refused at send time as a tool
call would be.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import ipaddress
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from .. import metrics, signatures, tracing
from ..db.database import Database
from ..db.database import json as dbjson
from ..db.queries import SQL
from ..jsonsafe import dumps
from ..numerals import unsigned
from ..times import backoff_ms, seconds_between
from .outbound import Outbound, OutboundError, address_allowed, parse_networks, retryable_status
from .vault import Vault

log = logging.getLogger("tolstoy.webhooks")

EVENT_TYPES = (
    "flow.started", "flow.completed", "flow.failed", "flow.cancelled",
    "step.started", "step.completed", "step.failed", "step.skipped", "step.outcome_unknown",
    "action.executed", "action.failed", "webhook.test",
)
# Headers Tolstoy sets on every delivery: a webhook's custom headers may not replace them.
RESERVED_HEADERS = frozenset({
    "content-type", "content-length", "host", "user-agent", "transfer-encoding", "connection",
    "x-webhook-event", "x-webhook-delivery", "x-webhook-signature",
})
USER_AGENT = "Tolstoy-Webhooks/1"
_NUMERIC_HOST = re.compile(r"(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}")


def target_problem(url: str, allow_networks: Iterable[str] = ()) -> str | None:
    """Why a webhook URL is refused when it is saved (None: accepted). Only what is certain without
    resolving the name: a literal address (or ``localhost``) that the outbound guard would refuse.
    Every attempt checks the resolved addresses again."""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return "Not a valid URL."
    if parts.scheme not in ("http", "https") or not hostname:
        return "Must be an http or https URL."
    if parts.username or parts.password:
        return "Must not hold credentials; send them in headers."
    host = hostname.rstrip(".").lower()
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        if host == "localhost" or host.endswith(".localhost"):
            address = "127.0.0.1"
        elif _NUMERIC_HOST.fullmatch(host):
            # Decimal, octal or hex forms of an IPv4 address ("2130706433", "0x7f.1"), as resolvers read them.
            try:
                address = socket.inet_ntoa(socket.inet_aton(host))
            except OSError:
                return None
        else:
            return None
    if not address_allowed(address, parse_networks(allow_networks)):
        return "Must not point at a private, loopback or link-local address."
    return None


def envelope(delivery: dict) -> bytes:
    """The exact bytes sent: ``{id, type, createdAt, organizationId, data}`` (the same every attempt)."""
    return dumps({"id": str(delivery["event_id"]), "type": delivery["event_type"],
                  "createdAt": delivery["created_at"], "organizationId": str(delivery["org_id"]),
                  "data": delivery["data"]})


def retry_after_ms(value: str | None, now: float | None = None) -> int | None:
    """``Retry-After`` (seconds, or an HTTP date) in milliseconds; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    seconds = unsigned(value, 10)
    if seconds is not None:
        return seconds * 1000
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0, int((when.timestamp() - (now if now is not None else time.time())) * 1000))


class Deliverer:
    """Claims due deliveries as it has free threads (``concurrency``), sends them and records every
    attempt. A claimed delivery is sent at once, so its lease (twice the timeout, plus a margin)
    covers its attempt; a slow receiver holds one thread, not the others."""

    def __init__(self, db: Database, outbound: Outbound, vault: Vault | None, worker_id: str, *,
                 timeout_ms: int = 10_000, retry_base_ms: int = 10_000, retry_max_ms: int = 3_600_000,
                 give_up_seconds: float = 86_400.0, retention_days: int = 30, concurrency: int = 4,
                 clock: Callable[[], float] = time.time):
        self.db = db
        self.outbound = outbound
        self.vault = vault
        self.worker_id = worker_id
        self.timeout_ms = timeout_ms
        self.retry_base_ms = retry_base_ms
        self.retry_max_ms = retry_max_ms
        self.give_up_seconds = give_up_seconds
        self.retention_days = retention_days
        self.concurrency = concurrency
        self.clock = clock  # unix time for the signature's t=
        # A claim outlives the attempt it covers (redirects included) by a margin.
        self.lease_seconds = timeout_ms / 1000 * 2 + 5
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="tolstoy-webhook")
        self.on_free: Callable[[], None] = lambda: None  # told when a thread is free again
        self._lock = threading.Lock()
        self._in_flight = 0

    # ---- one round ---------------------------------------------------------------

    def deliver_due(self) -> tuple[int, float | None]:
        """Claim as many due deliveries as there are free threads and start sending them; returns
        (claimed, seconds until it is worth claiming again: 0 when every free thread got one, else
        until the next delivery falls due by the database's clock; None when nothing waits, or no
        thread is free: ``on_free`` says when one is)."""
        with self._lock:
            free = self.concurrency - self._in_flight
        if free <= 0:
            return 0, None
        answer = self.db.scalar(SQL.webhooks.claim, worker=self.worker_id, limit=free,
                                lease_seconds=self.lease_seconds)
        claimed = answer["deliveries"]
        for delivery in claimed:
            with self._lock:
                self._in_flight += 1
            self.pool.submit(self._attempt_then_free, delivery)
        if len(claimed) == free:
            return len(claimed), 0.0  # more may be due right now
        due = answer.get("next_due")
        if due is None:
            return len(claimed), None
        # Due already but not handed out (its line locked by another worker's claim at that moment):
        # look again shortly rather than spin.
        return len(claimed), max(seconds_between(due, answer["now"]), 0.25)

    def _attempt_then_free(self, delivery: dict) -> None:
        try:
            self.attempt(delivery)
        finally:
            with self._lock:
                self._in_flight -= 1
            self.on_free()

    def attempt(self, delivery: dict) -> str | None:
        """Send one claimed delivery and record the attempt; returns the recorded outcome."""
        if tracing.ON:
            with tracing.span(f"webhook {delivery['event_type']}", {
                    "tolstoy.org.id": str(delivery["org_id"]), "tolstoy.webhook.id": str(delivery["webhook_id"]),
                    "tolstoy.delivery.id": str(delivery["id"]), "tolstoy.webhook.event": delivery["event_type"],
                    "url.template": tracing.url_template(delivery["url"])}, kind=tracing.SpanKind.CLIENT) as current:
                outcome = self._attempt(delivery)
                tracing.delivery(current, outcome)
                return outcome
        return self._attempt(delivery)

    def _attempt(self, delivery: dict) -> str | None:
        try:
            result = self.send(delivery)
        except Exception as exc:  # noqa: BLE001 - a bug or a key problem must not kill the delivery thread
            log.exception("webhook delivery could not be prepared")
            result = {"outcome": "retry", "status_code": None, "duration_ms": 0,
                      "error": f"Could not prepare the delivery: {exc}"[:1000]}
            result["retry_in_ms"] = backoff_ms(delivery["token"], self.retry_base_ms, self.retry_max_ms)
        result["give_up_seconds"] = self.give_up_seconds
        try:
            recorded = self.db.scalar(SQL.webhooks.record, worker=self.worker_id, org_id=delivery["org_id"],
                                      id=delivery["id"], token=delivery["token"], result=dbjson(result))
        except Exception:  # noqa: BLE001 - the lease runs out and the delivery is sent again
            log.exception("webhook attempt could not be recorded", extra={"delivery_id": str(delivery["id"])})
            return None
        if not recorded.get("recorded"):
            log.warning("webhook delivery was claimed by another worker meanwhile",
                        extra={"delivery_id": str(delivery["id"])})
            return None
        outcome = recorded["outcome"]
        metrics.count_webhook_delivery({"delivered": "sent", "retry": "retried"}.get(outcome, "failed"))
        if recorded.get("disabled"):
            log.warning("webhook disabled", extra={"webhook_id": str(delivery["webhook_id"]),
                                                  "reason": recorded["disabled"]})
        return outcome

    def send(self, delivery: dict) -> dict:
        """One HTTP attempt: what tolstoy_record_delivery needs to know of it."""
        secret = self._decrypt(delivery, "secret")
        custom = self._decrypt(delivery, "headers") or {}
        body = envelope(delivery)
        headers = {**custom, "Content-Type": "application/json", "User-Agent": USER_AGENT,
                   "X-Webhook-Event": delivery["event_type"], "X-Webhook-Delivery": str(delivery["id"]),
                   "X-Webhook-Signature": signatures.sign(secret, body, int(self.clock()))}
        if tracing.ON:  # the receiver's traces may join ours; the signature covers the timestamp and body only
            tracing.inject(headers)
        started = time.perf_counter()
        try:
            # Never followed: a 302 would turn the POST into a GET and lose the body, a 307 would send
            # the signed body, and the webhook's custom headers, wherever it points.
            reply = self.outbound.request("POST", delivery["url"], headers=headers, content=body,
                                          timeout_ms=self.timeout_ms, secret_headers=tuple(custom),
                                          follow_redirects=False)
        except OutboundError as exc:
            duration = int((time.perf_counter() - started) * 1000)
            result = {"status_code": None, "duration_ms": duration, "error": str(exc)[:1000]}
            if exc.retryable:
                return {**result, "outcome": "retry",
                        "retry_in_ms": backoff_ms(delivery["token"], self.retry_base_ms, self.retry_max_ms)}
            return {**result, "outcome": "failed"}
        result = {"status_code": reply.status, "duration_ms": reply.duration_ms, "error": None}
        if 200 <= reply.status < 300:
            return {**result, "outcome": "delivered"}
        result["error"] = f"The receiver answered {reply.status}."
        if 300 <= reply.status < 400:
            # Final, like any answer that is neither a success nor worth retrying; where it pointed is
            # kept, so the owner can correct the webhook's url.
            location = _header(reply.headers, "location")
            result["location"] = location[:2048] if location else None
            result["error"] = (f"The receiver answered {reply.status} (a redirect to {location or 'nowhere'}); "
                               "deliveries never follow redirects: set the webhook's url to where it points.")[:1000]
            return {**result, "outcome": "failed"}
        if retryable_status(reply.status):
            wait = retry_after_ms(_header(reply.headers, "retry-after"))
            if wait is None:
                wait = backoff_ms(delivery["token"], self.retry_base_ms, self.retry_max_ms)
            return {**result, "outcome": "retry", "retry_in_ms": min(wait, self.retry_max_ms)}
        return {**result, "outcome": "failed"}

    def _decrypt(self, delivery: dict, key: str) -> Any:
        encoded = delivery.get(key)
        if encoded is None:
            return None
        if self.vault is None:
            raise RuntimeError("Webhook secrets need TOLSTOY_ENCRYPTION_KEY (or TOLSTOY_KMS_KEY_ID).")
        with self.db.tenant(delivery["org_id"]):  # the organization's data key is read under its tenancy
            return self.vault.decrypt(delivery["org_id"], base64.b64decode(encoded), "webhook secret")


class DeliveryLoop:
    """The delivery thread of a worker: sleeps until the next delivery is due (as told by the
    run claim's answer, or by its own claims), then delivers until nothing is due. Asks the
    database nothing while nothing is due."""

    def __init__(self, deliverer: Deliverer, stopping: threading.Event):
        self.deliverer = deliverer
        self.stopping = stopping
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._deadline: float | None = None  # time.monotonic() at which a delivery is due
        deliverer.on_free = lambda: self.due_in(0)  # a thread is free: claim again (more may be due)

    def due_in(self, seconds: float | None) -> None:
        """Note that a delivery falls due in ``seconds`` (None: nothing known); wakes the loop if sooner."""
        if seconds is None:
            return
        deadline = time.monotonic() + max(seconds, 0.0)
        with self._lock:
            if self._deadline is None or deadline < self._deadline:
                self._deadline = deadline
                self.wake.set()

    def run(self) -> None:
        """Deliver until the worker stops."""
        while not self.stopping.is_set():
            with self._lock:
                deadline = self._deadline
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is None or wait > 0:
                self.wake.wait(wait)
                self.wake.clear()
                continue
            with self._lock:
                self._deadline = None
            try:
                _, next_in = self.deliverer.deliver_due()
            except Exception:  # noqa: BLE001 - database hiccup: try again shortly
                log.exception("claiming webhook deliveries failed")
                next_in = 5.0
            self.due_in(next_in)

    def stop(self) -> None:
        """Wake the loop so it sees the stop."""
        self.wake.set()


def _header(headers: dict, name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None

