"""HMAC signatures of webhook requests: Tolstoy's own scheme and the presets of
the senders users connect most (GitHub, Stripe, Slack).

Tolstoy signs ``"<t>.<raw body>"`` with HMAC-SHA256 and sends
``X-Tolstoy-Signature: t=<unix seconds>,v1=<hex>``. Every scheme is checked over
the exact bytes received (never a re-serialized body), compared in constant
time, and, where the sender signs a timestamp, refused when it is more than
``MAX_AGE`` seconds away from now.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .jsonsafe import UNSTORABLE
from .numerals import unsigned

PRESETS = ("tolstoy", "github", "stripe", "slack")
SECRET_PREFIX = "whsec_"
MAX_AGE = 300  # seconds a signed timestamp may be off (Stripe's and Slack's own tolerance)



def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 4648 section 5), as signed tokens, PKCE and cursors spell bytes."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    """The bytes of unpadded base64url; ValueError (binascii.Error) when it is not."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_secret() -> str:
    """A random signing secret (webhook triggers and outbound webhooks alike), shown once."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


# Headers kept with a delivery in the inbox (besides the preset's own): enough to tell what was sent.
COMMON_HEADERS = ("Content-Type", "User-Agent")
PRESET_HEADERS = {
    "tolstoy": ("X-Tolstoy-Signature", "X-Tolstoy-Delivery"),
    "github": ("X-Hub-Signature-256", "X-GitHub-Delivery", "X-GitHub-Event", "X-GitHub-Hook-ID"),
    "stripe": ("Stripe-Signature",),
    "slack": ("X-Slack-Signature", "X-Slack-Request-Timestamp", "X-Slack-Retry-Num", "X-Slack-Retry-Reason"),
}

Headers = Callable[[str], str | None]


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one request: ``valid``, ``invalid`` or ``stale``, why, and the
    signature that matched (a second request bearing it is a replay)."""

    verdict: str
    reason: str | None = None
    signature: str | None = None

    @property
    def ok(self) -> bool:
        """The request is authentic and fresh."""
        return self.verdict == "valid"


def hmac_hex(secret: str, message: bytes) -> str:
    """Hex HMAC-SHA256 of ``message`` under the secret (its UTF-8 bytes)."""
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Tolstoy-Signature`` value for a body sent at ``timestamp`` (unix seconds)."""
    return f"t={timestamp},v1={hmac_hex(secret, str(timestamp).encode() + b'.' + body)}"


def _pairs(header: str) -> tuple[str | None, list[str]]:
    """``t=…,v1=…,v1=…`` as (t, [v1, …]); other keys (Stripe's v0) are ignored."""
    timestamp, signatures = None, []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamp = value.strip()
        elif key == "v1":
            signatures.append(value.strip().lower())
    return timestamp, signatures


def _matching(expected: str, given: list[str]) -> str | None:
    # Every candidate is compared (no early exit on the first), each in constant time.
    found = None
    for candidate in given:
        if hmac.compare_digest(candidate.encode(), expected.encode()):
            found = candidate
    return found


def _fresh(timestamp: str | None, now: float) -> bool | None:
    """True/False for a timestamp of 1 to 12 ASCII digits within/outside MAX_AGE; None otherwise ("²",
    "١٧٠٠…", a sign or a blank are not unix seconds, whatever ``str.isdigit`` says)."""
    seconds = unsigned(timestamp, 12)
    if seconds is None:
        return None
    return abs(now - seconds) <= MAX_AGE


def _timestamped(secret: str, header: str | None, body: bytes, now: float, name: str) -> Verdict:
    """Tolstoy's and Stripe's scheme: ``t=…,v1=…`` over ``"<t>.<body>"``."""
    if not header:
        return Verdict("invalid", f"The {name} header is missing.")
    timestamp, given = _pairs(header)
    fresh = _fresh(timestamp, now)
    if fresh is None or not given:
        return Verdict("invalid", f"The {name} header must be t=<unix seconds>,v1=<hex HMAC-SHA256>.")
    matched = _matching(hmac_hex(secret, timestamp.encode() + b"." + body), given)
    if matched is None:
        return Verdict("invalid", "The signature does not match the body and the trigger's secret.")
    if not fresh:
        return Verdict("stale", f"The signed timestamp is more than {MAX_AGE} s away from now.")
    return Verdict("valid", signature=f"{timestamp}:{matched}")


def _github(secret: str, headers: Headers, body: bytes) -> Verdict:
    header = headers("X-Hub-Signature-256")
    if not header or not header.startswith("sha256="):
        return Verdict("invalid", "The X-Hub-Signature-256 header (sha256=<hex>) is missing.")
    given = header[len("sha256="):].strip().lower()
    if _matching(hmac_hex(secret, body), [given]) is None:
        return Verdict("invalid", "The signature does not match the body and the trigger's secret.")
    # GitHub signs no timestamp: its delivery id (X-GitHub-Delivery) tells a redelivery apart.
    return Verdict("valid", signature=given)


def _slack(secret: str, headers: Headers, body: bytes, now: float) -> Verdict:
    header, timestamp = headers("X-Slack-Signature"), headers("X-Slack-Request-Timestamp")
    if not header or not header.startswith("v0=") or timestamp is None:
        return Verdict("invalid", "The X-Slack-Signature (v0=<hex>) or X-Slack-Request-Timestamp header is missing.")
    fresh = _fresh(timestamp.strip(), now)
    if fresh is None:
        return Verdict("invalid", "X-Slack-Request-Timestamp must be unix seconds.")
    given = header[len("v0="):].strip().lower()
    expected = hmac_hex(secret, b"v0:" + timestamp.strip().encode() + b":" + body)
    if _matching(expected, [given]) is None:
        return Verdict("invalid", "The signature does not match the body and the trigger's secret.")
    if not fresh:
        return Verdict("stale", f"The signed timestamp is more than {MAX_AGE} s away from now.")
    return Verdict("valid", signature=f"{timestamp.strip()}:{given}")


def verify(preset: str, secret: str, headers: Headers, body: bytes, now: float) -> Verdict:
    """Check a request's signature the way ``preset`` says; ``headers(name)`` reads a header, ``now`` is
    unix time."""
    if preset == "tolstoy":
        return _timestamped(secret, headers("X-Tolstoy-Signature"), body, now, "X-Tolstoy-Signature")
    if preset == "stripe":
        return _timestamped(secret, headers("Stripe-Signature"), body, now, "Stripe-Signature")
    if preset == "github":
        return _github(secret, headers, body)
    if preset == "slack":
        return _slack(secret, headers, body, now)
    raise ValueError(f"unknown verification preset {preset!r}")


def delivery_id(preset: str, headers: Headers, data: Any) -> str | None:
    """The sender's id of the event, which a redelivery repeats (None when the sender gives none)."""
    if preset == "github":
        found = headers("X-GitHub-Delivery")
    elif preset == "tolstoy":
        found = headers("X-Tolstoy-Delivery")
    elif isinstance(data, dict):
        found = data.get("id") if preset == "stripe" else data.get("event_id")
    else:
        found = None
    if not isinstance(found, str) or not found.strip() or UNSTORABLE.search(found):
        return None
    return found.strip()[:200]


def kept_headers(preset: str, headers: Headers) -> dict:
    """The headers a delivery keeps in the inbox."""
    kept = {}
    for name in (*COMMON_HEADERS, *PRESET_HEADERS.get(preset, ())):
        value = headers(name)
        if value is not None:
            # Kept as jsonb, which holds no NUL: a sender's stray byte must not cost the refusal's record.
            kept[name] = UNSTORABLE.sub("\ufffd", value[:1000])
    return kept
