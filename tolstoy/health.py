"""Health and status routes (no tenant header): liveness, readiness and details."""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource as rlimit
import time

import falcon

from . import __version__
from .config import Config
from .db import Database
from .errors import DatabaseUnavailable
from .queries import SQL

STARTED = time.monotonic()


def now_iso() -> str:
    """Current UTC time as the contract spells timestamps."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def uptime() -> float:
    """Seconds since this process imported the app."""
    return round(time.monotonic() - STARTED, 3)


class Health:
    """``GET /health``: the process is up; never touches the database."""

    access = "public"

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Always 200 while the process serves requests."""
        resp.media = {"status": "ok"}
        resp.cache_control = ["no-store"]


class Status:
    """``GET /status`` and ``GET /status/detailed``: 200 when the database answers, else 503."""

    access = "public"

    def __init__(self, db: Database, config: Config):
        self.db = db
        self.config = config

    def _unhealthy(self, resp: falcon.Response, exc: Exception) -> None:
        resp.status = falcon.HTTP_503
        resp.media = {
            "status": "unhealthy",
            "message": f"Database unavailable: {type(exc).__name__}",
            "timestamp": now_iso(),
        }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Readiness: one round trip to the database."""
        resp.cache_control = ["no-store"]
        try:
            self.db.ping(SQL.health.ping)
        except DatabaseUnavailable as exc:
            return self._unhealthy(resp, exc)
        resp.media = {
            "status": "ok",
            "version": __version__,
            "uptime": uptime(),
            "timestamp": now_iso(),
        }

    def on_get_detailed(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Latency, pool, migration version, approximate row counts, process and config facts."""
        resp.cache_control = ["no-store"]
        try:
            latency = self.db.ping(SQL.health.ping)
            migration = self.db.scalar(SQL.health.migration_version)
            counts = {
                row["table_name"]: row["approximate_rows"]
                for row in self.db.all(SQL.health.table_counts)
            }
        except DatabaseUnavailable as exc:
            return self._unhealthy(resp, exc)
        usage = rlimit.getrusage(rlimit.RUSAGE_SELF)
        resp.media = {
            "status": "ok",
            "version": __version__,
            "uptime": uptime(),
            "timestamp": now_iso(),
            "database": {
                "latencyMs": round(latency * 1000, 2),
                "migrationVersion": migration,
                "pool": self.db.stats(),
                "approximateRowCounts": counts,
            },
            "process": {
                "pid": os.getpid(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "maxRssKb": usage.ru_maxrss,
                "cpuSeconds": round(usage.ru_utime + usage.ru_stime, 3),
            },
            "config": self.config.public_facts(),
        }


class Version:
    """``GET /version``."""

    access = "public"

    def __init__(self, config: Config):
        self.config = config

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Name and versions of the running service."""
        resp.media = {
            "name": self.config.app_name,
            "version": __version__,
            "python": platform.python_version(),
            "falcon": falcon.__version__,
        }
