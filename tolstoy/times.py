"""Time, one way everywhere: the process's one clock, how Tolstoy spells a timestamp (ISO 8601 in
UTC, milliseconds, ``Z``), the seconds between two database timestamps, and how far apart retries
are spaced."""

from __future__ import annotations

import datetime as dt
import random
import threading


class Clock:
    """The one clock of the Python side, as tolstoy_now() is the database's (db/functions/clock.sql).
    In production it is the system's clock; tests move it forward (tests/conftest.py ``clock``, which
    moves the database's with it) instead of sleeping until a lease, a delay or a timeout runs out.
    Time that is only waited for (poll intervals, heartbeats, deadlines of a call) is measured with
    time.monotonic() and is not moved."""

    def __init__(self) -> None:
        self._ahead = dt.timedelta(0)
        self._lock = threading.Lock()

    def now(self) -> dt.datetime:
        """Timezone-aware now in UTC, moved by as much as the clock was."""
        return dt.datetime.now(dt.UTC) + self._ahead

    @property
    def ahead(self) -> dt.timedelta:
        return self._ahead

    def move(self, by: dt.timedelta) -> None:
        """Forward only: time never runs backwards for leases and schedules."""
        if by < dt.timedelta(0):
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._ahead += by

    def reset(self) -> None:
        with self._lock:
            self._ahead = dt.timedelta(0)


CLOCK = Clock()


def utcnow() -> dt.datetime:
    """Timezone-aware now in UTC, by the process's one clock."""
    return CLOCK.now()


def unix_seconds() -> float:
    """Seconds since the epoch by the one clock: for what carries a Unix time (an approval link's
    expiry, an inbound webhook's signed timestamp)."""
    return CLOCK.now().timestamp()


def iso(value: dt.datetime | None) -> str | None:
    """``2026-11-25T21:08:32.123Z`` (None stays None)."""
    if value is None:
        return None
    # What isoformat(timespec="milliseconds") spells, with Z for +00:00, in two thirds of its time (every
    # answer spells a few; tests/unit/test_dumping.py compares the two on generated times). A %-format:
    # the f-string with format specs is slower.
    value = value.astimezone(dt.UTC)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031
        value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond // 1000)


def now_iso() -> str:
    """The current time, spelled as every API body and log line spells it."""
    return iso(utcnow())


def seconds_between(later: str | dt.datetime, earlier: str | dt.datetime) -> float:
    """Seconds between two database timestamps (so a worker never mixes in its own clock)."""
    def parse(value):
        return dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return (parse(later) - parse(earlier)).total_seconds()


def backoff_ms(attempt: int, base_ms: int, max_ms: int, rng: random.Random | None = None) -> int:
    """Wait after failed attempt ``attempt`` (1 = the first): base doubled per attempt, capped, then
    jittered down by up to a quarter so many retries coming due together spread out."""
    delay = min(base_ms * (2 ** min(attempt - 1, 30)), max_ms)
    return int(delay * (1 - 0.25 * (rng or random).random()))
