"""Routes for operators and probes (no tenant header): liveness, readiness,
details, version, and ``/metrics`` for Prometheus.

Detailed status and ``/metrics`` are operator surfaces: their counts span every
organization. ops/nginx/tolstoy.conf answers them only to the monitoring host,
whatever the path's spelling, and in api_key mode detailed status also needs
the admin token (``access = "operator"``, checked by TenantMiddleware)."""

from __future__ import annotations

import os
import platform
import resource as rlimit
import time

import falcon
from marshmallow import fields
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .. import __version__, engine, metrics
from ..config import Config
from ..db.database import Database
from ..db.queries import SQL
from ..errors import DatabaseUnavailable
from ..fieldtypes import Base
from ..times import now_iso
from .routing import Route, Services, errors, json_content


class HealthSchema(Base):
    """``GET /health``."""

    status = fields.String(dump_only=True)


class StatusSchema(Base):
    """``GET /status`` when the database answers (503 body has ``message`` instead)."""

    status = fields.String(dump_only=True)
    version = fields.String(dump_only=True)
    uptime = fields.Float(dump_only=True, metadata={"description": "Seconds since the process started."})
    timestamp = fields.String(dump_only=True)
    message = fields.String(dump_only=True)


class VersionSchema(Base):
    """``GET /version``."""

    name = fields.String(dump_only=True)
    version = fields.String(dump_only=True)
    python = fields.String(dump_only=True)
    falcon = fields.String(dump_only=True)


STARTED = time.monotonic()

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
    """``GET /status``: 200 when the database answers, else 503."""

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


class DetailedStatus(Status):
    """``GET /status/detailed`` (alias ``/detailed``): for operators. In api_key mode only the admin
    token reads it (401 without, 403 with an organization's key): its row counts span every
    organization. Shows no secret, and of the settings only what an operator needs here."""

    access = "operator"

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
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


class QueueCollector:
    """Queue depth and the age of the oldest due run, read from the database at scrape time.

    Reports nothing when the queue table is not installed yet or the database
    does not answer: a missing sample, not a scrape error.
    """

    def __init__(self, db):
        self.db = db

    def describe(self):
        """No fixed samples to announce: registering must not query the database."""
        return []

    def collect(self):
        """Yield the queue gauges, or nothing."""
        try:
            if not self.db.scalar(SQL.metrics.queue_installed):
                return
            row = self.db.one(SQL.metrics.queue_depth)
        except DatabaseUnavailable:
            return
        yield GaugeMetricFamily("tolstoy_flow_queue_depth", "Flow runs waiting in the queue (due or not).",
                                value=row["queued"])
        yield GaugeMetricFamily("tolstoy_flow_queue_due", "Queued flow runs whose start time has come.",
                                value=row["due"])
        yield GaugeMetricFamily("tolstoy_flow_queue_oldest_age_seconds",
                                "How long the oldest due queued run has waited (0 when none).",
                                value=row["oldest_due_age_seconds"])
        parked = GaugeMetricFamily("tolstoy_flow_runs_parked",
                                   "Parked flow runs by why they wait (their waitingFor), across organizations.",
                                   labels=["waiting_for"])
        for kind in engine.WAITING_KINDS:  # every reason, 0 when no run has it: a series never vanishes
            parked.add_metric([kind], row["parked"].get(kind, 0))
        yield parked


class Metrics:
    """``GET /metrics``: Prometheus text format. Not part of the public contract: Nginx keeps it private."""

    access = "public"

    def __init__(self, db):
        self.db = db
        self.processes = metrics.process_registry()
        self.database = CollectorRegistry()
        self.database.register(QueueCollector(db))

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Every worker's samples, then the queue read from the database."""
        metrics.observe_pool(self.db)
        resp.content_type = CONTENT_TYPE_LATEST
        resp.cache_control = ["no-store"]
        resp.text = (generate_latest(self.processes) + generate_latest(self.database)).decode()


def _detailed(s: Services) -> DetailedStatus:
    return DetailedStatus(s.db, s.config)


def _get(summary: str, ref: str, unhealthy: bool = False) -> dict:
    """A GET of the Health tag answering the component ``ref`` (and 503 with a Status when ``unhealthy``)."""
    responses = {"200": {"description": summary, "content": json_content(ref)}}
    if unhealthy:
        responses["503"] = {"description": "The database does not answer.", "content": json_content("Status")}
    return {"get": {"tags": ["Health"], "summary": summary, "responses": responses}}


_DETAILED = {"get": {
    "tags": ["Health"], "summary": "Database latency, pool, migration version, counts, process and config",
    "description": "For operators: in api_key mode only the admin token (TOLSTOY_ADMIN_TOKEN) reads it "
                   "(401 without a token, 403 with an organization's key); the shipped Nginx answers "
                   "it to the monitoring host only.",
    "responses": {"200": {"description": "Details.",
                          "content": {"application/json": {"schema": {"type": "object"}}}},
                  **errors()}}}
SCHEMAS = {"Health": HealthSchema, "Status": StatusSchema, "Version": VersionSchema}
ROUTES = (
    Route("/health", lambda s: Health(), operations=_get("The process is up (no database call).", "Health")),
    Route("/status", lambda s: Status(s.db, s.config),
          operations=_get("The database answers.", "Status", unhealthy=True)),
    Route("/status/detailed", _detailed, operations=_DETAILED),
    Route("/detailed", _detailed, operations=_DETAILED),
    Route("/version", lambda s: Version(s.config), operations=_get("Name and versions of the service.", "Version")),
)
