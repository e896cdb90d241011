"""What a provider's answer says of its rate limit, read from its headers: the lesson a credential's
budget learns (written with the run's next checkpoint: tolstoy_learn_budget, db/functions/rate_budgets.sql).

Which header teaches what (docs/flows.md, "Rate budgets"):

- ``Retry-After`` (delay-seconds or an HTTP date) on a 429 or a 503: the credential pauses until then,
  for every run. A 429 without one pauses it for ``DEFAULT_429_PAUSE_SECONDS``: the provider said the
  credential is over its limit, not for how long.
- ``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` (GitHub's form: the reset is Unix epoch seconds;
  a reset smaller than ``EPOCH_SINCE`` is taken as seconds from now, as some providers send it):
  requests per window, what is left of the current one and when it ends.
- The IETF fields (draft-ietf-httpapi-ratelimit-headers): ``RateLimit-Policy: "default";q=100;w=60``
  (quota q requests per window w seconds) and ``RateLimit: "default";r=50;t=30`` (r left, t seconds
  to the reset), parsed as RFC 8941 structured fields (a list of items with parameters; the first
  policy named by both wins, else the first of each); and the older ``RateLimit-Limit`` /
  ``-Remaining`` / ``-Reset`` (reset in seconds from now).

Every value is read defensively, whatever a provider (or an attacker posing as one) sends: a
header that does not parse teaches nothing, numbers are clamped (``MAX_WAIT_SECONDS``,
``MAX_REQUESTS``, ``MAX_WINDOW_SECONDS``), and nothing here ever raises (tests/unit/test_ratelimits.py
fuzzes it)."""

from __future__ import annotations

import email.utils
import math
import re
from typing import Any

# The longest a provider's header may make a credential wait, pause or window alike: 1 hour (a
# reset further away, or an absurd Retry-After, is cut to it; the call is then tried and learns again).
MAX_WAIT_SECONDS = 3600.0
# Requests per window and the window's length a provider may teach (beyond: clamped).
MAX_REQUESTS = 1_000_000
MAX_WINDOW_SECONDS = 86_400.0
# A 429 that says nothing of when to come back pauses the credential this long.
DEFAULT_429_PAUSE_SECONDS = 1.0
# An X-RateLimit-Reset at or above this is a Unix time (GitHub); below, seconds from now.
EPOCH_SINCE = 1_000_000_000
# Header values longer than this are not read at all.
MAX_HEADER_CHARS = 1024

_INTEGER = re.compile(r"\A\s*([0-9]{1,15})\s*\Z")
_DECIMAL = re.compile(r"\A\s*([0-9]{1,15}(?:\.[0-9]{1,9})?)\s*\Z")
# One RFC 8941 list member: a token or a quoted string, then ;key=value parameters (values are
# integers, decimals, tokens or quoted strings; what else a provider sends is skipped).
_MEMBER_NAME = re.compile(r'\s*("(?:[^"\\]|\\.){0,256}"|[A-Za-z*][A-Za-z0-9_.:/%*!#$&\'+^`|~-]{0,256})\s*')
_PARAMETER = re.compile(r';\s*([a-z*][a-z0-9_.*-]{0,63})(?:=("(?:[^"\\]|\\.){0,256}"|[^;,\s]{1,64}))?\s*')


def _header(headers: Any, name: str) -> str | None:
    """One header's value (any case), or None when absent, not text, or too long to be honest."""
    if not isinstance(headers, dict):
        return None
    value = headers.get(name)
    if value is None:
        for key, found in headers.items():
            if isinstance(key, str) and key.lower() == name:
                value = found
                break
    if not isinstance(value, str) or len(value) > MAX_HEADER_CHARS:
        return None
    return value


def _number(text: str | None, decimal: bool = False) -> float | None:
    """A non-negative integer (or decimal) header value, else None."""
    if text is None:
        return None
    match = (_DECIMAL if decimal else _INTEGER).match(text)
    if not match:
        return None
    value = float(match.group(1))
    return value if math.isfinite(value) else None


def _clamp(value: float, high: float) -> float:
    return min(max(value, 0.0), high)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from ``now`` (Unix seconds): delay-seconds or an HTTP date; None
    when it does not parse. Clamped to [0, MAX_WAIT_SECONDS]."""
    seconds = _number(value, decimal=True)
    if seconds is not None:
        return _clamp(seconds, MAX_WAIT_SECONDS)
    if value is None or len(value) > 64:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    try:
        return _clamp(when.timestamp() - now, MAX_WAIT_SECONDS)
    except (OverflowError, ValueError, OSError):
        return None


def structured_list(value: str | None) -> list[tuple[str, dict[str, str]]]:
    """An RFC 8941 list of items with parameters, as [(name, {param: raw value})]; members that do
    not parse are skipped (at most 16 members are read)."""
    members: list[tuple[str, dict[str, str]]] = []
    if not value:
        return members
    for part in value.split(",")[:16]:
        head = _MEMBER_NAME.match(part)
        if not head:
            continue
        name = head.group(1).strip('"')
        params: dict[str, str] = {}
        position = head.end()
        while position < len(part):
            param = _PARAMETER.match(part, position)
            if not param:
                break
            params.setdefault(param.group(1), (param.group(2) or "?1").strip('"'))
            position = param.end()
        members.append((name, params))
    return members


def _ietf(headers: Any) -> dict:
    """What the draft's RateLimit and RateLimit-Policy fields say."""
    policies = structured_list(_header(headers, "ratelimit-policy"))
    limits = structured_list(_header(headers, "ratelimit"))
    learned: dict = {}
    names = {name for name, _ in limits}
    policy = next((p for p in policies if p[0] in names), policies[0] if policies else None)
    if policy is not None:
        quota, window = _number(policy[1].get("q")), _number(policy[1].get("w"))
        if quota:
            learned["requests"] = int(_clamp(quota, MAX_REQUESTS))
            if window:
                learned["per_seconds"] = _clamp(window, MAX_WINDOW_SECONDS)
    current = next((lim for lim in limits if policy is None or lim[0] == policy[0]), limits[0] if limits else None)
    if current is not None:
        remaining, reset = _number(current[1].get("r")), _number(current[1].get("t"))
        if remaining is not None and reset is not None:
            learned["remaining"] = int(_clamp(remaining, MAX_REQUESTS))
            learned["reset_seconds"] = _clamp(reset, MAX_WAIT_SECONDS)
    return learned


def _fields(headers: Any, prefix: str, now: float) -> dict:
    """``<prefix>-Limit``, ``-Remaining`` and ``-Reset`` (epoch seconds or seconds from now)."""
    learned: dict = {}
    limit = _number(_header(headers, prefix + "-limit"))
    if limit:
        learned["requests"] = int(_clamp(limit, MAX_REQUESTS))
    remaining = _number(_header(headers, prefix + "-remaining"))
    reset = _number(_header(headers, prefix + "-reset"), decimal=True)
    if remaining is not None and reset is not None:
        learned["remaining"] = int(_clamp(remaining, MAX_REQUESTS))
        learned["reset_seconds"] = _clamp(reset - now if reset >= EPOCH_SINCE else reset, MAX_WAIT_SECONDS)
    return learned


def lesson(status: int, headers: Any, now: float) -> dict | None:
    """What an answer (``status``, ``headers``; ``now``: Unix seconds) teaches the credential's budget,
    or None when it teaches nothing: ``{"throttled": bool, "pause_seconds"?, "requests"?,
    "per_seconds"?, "remaining"?, "reset_seconds"?}``, every number clamped. Never raises."""
    try:
        return _lesson(status, headers, now)
    except Exception:  # noqa: BLE001 - a header must never break a step; it then teaches nothing
        return None


def _lesson(status: int, headers: Any, now: float) -> dict | None:
    found: dict = {}
    found.update(_fields(headers, "ratelimit", now))
    found.update(_ietf(headers))
    found.update({k: v for k, v in _fields(headers, "x-ratelimit", now).items() if k not in found})
    throttled = status == 429
    if status in (429, 503):
        pause = retry_after_seconds(_header(headers, "retry-after"), now)
        if pause is None and throttled:
            # Over the limit, and no Retry-After: until the window resets if the provider said when,
            # else a short pause.
            reset = found.get("reset_seconds")
            pause = reset if reset is not None and found.get("remaining") == 0 else DEFAULT_429_PAUSE_SECONDS
        if pause is not None and throttled:
            # Never sooner than that, whatever it said (a Retry-After: 0 would send it again at once).
            pause = max(pause, DEFAULT_429_PAUSE_SECONDS)
        if pause is not None:
            found["pause_seconds"] = pause
    if not found and not throttled:
        return None
    return {"throttled": throttled, **found}
