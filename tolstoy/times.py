"""The one way Tolstoy spells a timestamp: ISO 8601 in UTC, milliseconds, ``Z``."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    """Timezone-aware now in UTC."""
    return dt.datetime.now(dt.UTC)


def iso(value: dt.datetime | None) -> str | None:
    """``2026-11-25T21:08:32.123Z`` (None stays None)."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    """The current time, spelled as every API body and log line spells it."""
    return iso(utcnow())
