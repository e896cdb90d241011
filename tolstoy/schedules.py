"""Cron schedules in an IANA time zone: when a schedule trigger falls due next,
and what a worker does with a due one (fire once, or skip missed times).

Cron expressions are iterated over naive wall-clock times of the zone, and each
wall time is then placed on the real time line by one rule, so daylight saving
time never surprises:

* a wall time that does not exist (the hour skipped when clocks go forward) is
  skipped: ``30 2 * * *`` in Europe/Paris does not fire on 2027-03-28;
* a wall time that occurs twice (the hour repeated when clocks go back) fires
  once, at its first occurrence.

Pure functions of their arguments (no clock of their own): the API and the
workers pass the time, so tests can choose it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

CATCH_UP = ("one", "none")
# With catchUp "none", a due time fired later than this counts as missed (skipped).
MISSED_AFTER = dt.timedelta(seconds=60)
# A cron that names a date that never comes (``0 0 30 2 *``) must not spin forever.
_MAX_STEPS = 2000


class ScheduleError(ValueError):
    """A cron expression or time zone that cannot be used; the message says why."""


def zone(name: str) -> ZoneInfo:
    """The IANA time zone of that name; ScheduleError for an unknown one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ScheduleError(f"Unknown IANA time zone {name!r} (e.g. UTC, Europe/Paris).") from None


def check_cron(expression: str) -> None:
    """ScheduleError unless the expression has 5 fields (or 6: seconds last, croniter's form)."""
    if len(expression.split()) not in (5, 6) or not croniter.is_valid(expression):
        raise ScheduleError("Not a cron expression: five fields (minute hour day month weekday), "
                            "or six with seconds last.")


def _placed(wall: dt.datetime, tz: ZoneInfo) -> dt.datetime | None:
    """The real instant of a naive wall time (its first occurrence); None when it does not exist."""
    aware = wall.replace(tzinfo=tz, fold=0)
    if aware.astimezone(dt.UTC).astimezone(tz).replace(tzinfo=None) != wall:
        return None  # in the gap of a spring-forward transition
    return aware


def next_after(expression: str, tz_name: str, after: dt.datetime) -> dt.datetime | None:
    """The first due time strictly after ``after`` (aware, UTC); None when the cron names no future time."""
    tz = zone(tz_name)
    check_cron(expression)
    walls = croniter(expression, after.astimezone(tz).replace(tzinfo=None, fold=0))
    try:
        for _ in range(_MAX_STEPS):
            placed = _placed(walls.get_next(dt.datetime), tz)
            # A repeated wall time's second occurrence is not a due time; neither is anything
            # still at or before ``after`` (we may start inside a repeated hour).
            if placed is not None and placed > after:
                return placed.astimezone(dt.UTC)
    except (CroniterBadDateError, CroniterError):
        return None
    return None


def latest_at_or_before(expression: str, tz_name: str, at: dt.datetime) -> dt.datetime | None:
    """The last due time at or before ``at`` (aware, UTC), or None."""
    tz = zone(tz_name)
    check_cron(expression)
    # croniter's get_prev is strictly before its start: start one microsecond after ``at``.
    start = (at + dt.timedelta(microseconds=1)).astimezone(tz).replace(tzinfo=None, fold=0)
    walls = croniter(expression, start)
    try:
        for _ in range(_MAX_STEPS):
            placed = _placed(walls.get_prev(dt.datetime), tz)
            if placed is not None and placed <= at:
                return placed.astimezone(dt.UTC)
    except (CroniterBadDateError, CroniterError, CroniterBadCronError):
        return None
    return None


@dataclass(frozen=True)
class Firing:
    """What a worker does with a due schedule: fire for ``scheduled_at`` (None: skip) and move on
    to ``next_run_at`` (None: the cron names no future time)."""

    scheduled_at: dt.datetime | None
    next_run_at: dt.datetime | None


def plan(expression: str, tz_name: str, catch_up: str, due: dt.datetime, now: dt.datetime,
         missed_after: dt.timedelta = MISSED_AFTER) -> Firing:
    """Decide for a schedule due at ``due`` (<= now): ``one`` fires once for every time missed since
    (as the latest of them); ``none`` fires only a time that is not late by more than ``missed_after``."""
    latest = latest_at_or_before(expression, tz_name, now)
    latest = due if latest is None or latest < due else latest
    fire = catch_up == "one" or now - latest <= missed_after
    return Firing(latest if fire else None, next_after(expression, tz_name, now))
