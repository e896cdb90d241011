"""Prometheus metrics: HTTP requests, the connection pool, flow runs, steps and
the run queue, served on ``GET /metrics``.

Under Gunicorn every worker is its own process, so prometheus-client runs in
multiprocess mode: each process writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR`` (gunicorn.conf.py sets it up before the workers
fork) and a scrape sums them over all workers. Without that variable (tests,
scripts) the metrics live in this process only. Queue depth is read from the
database at scrape time, so any one worker answers it for all.
"""

from __future__ import annotations

import os
import time

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

from .errors import DatabaseUnavailable
from .queries import SQL

# Request latencies of a CRUD API backed by one database round trip or a few.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Steps run anything from a transform (microseconds) to an HTTP call with retries (minutes).
STEP_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# Label for requests that matched no route: keeps label values bounded whatever clients send.
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter(
    "tolstoy_http_requests_total", "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "tolstoy_http_request_duration_seconds", "Time from the request reaching the app to its response.",
    ["method", "route", "status"], buckets=LATENCY_BUCKETS,
)
# Gauges are summed over live processes only: a dead worker's pool is gone.
POOL_CONNECTIONS = Gauge(
    "tolstoy_db_pool_connections", "Pooled database connections by state (in_use, idle), over all workers.",
    ["state"], multiprocess_mode="livesum",
)
POOL_MAX = Gauge(
    "tolstoy_db_pool_max_connections", "Connections the pools may open, over all workers.",
    multiprocess_mode="livesum",
)
POOL_WAITING = Gauge(
    "tolstoy_db_pool_waiting_requests", "Requests waiting for a pooled connection, over all workers.",
    multiprocess_mode="livesum",
)
FLOW_RUNS = Counter("tolstoy_flow_runs_total", "Flow runs that reached a status.", ["status"])
STEP_DURATION = Histogram(
    "tolstoy_flow_step_duration_seconds", "Duration of one step attempt, by step type and outcome.",
    ["type", "status"], buckets=STEP_BUCKETS,
)


def count_run(status: str) -> None:
    """Count a flow run reaching ``status`` (queued, running, completed, failed, cancelled)."""
    FLOW_RUNS.labels(status=status).inc()


def observe_step(duration: float, status: str, step_type: str = "unknown") -> None:
    """Record one step attempt's duration in seconds and its outcome."""
    STEP_DURATION.labels(type=step_type, status=status).observe(duration)


def observe_pool(db) -> None:
    """Publish this process's pool usage (called after each request and at each scrape)."""
    stats = db.stats()
    size, idle = stats["size"], stats["available"]
    POOL_CONNECTIONS.labels(state="in_use").set(max(size - idle, 0))
    POOL_CONNECTIONS.labels(state="idle").set(idle)
    POOL_MAX.set(stats["maxSize"])
    POOL_WAITING.set(stats["waiting"])


def multiprocess_dir() -> str | None:
    """The folder shared by all processes' samples, when running under multiprocess mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def process_exit(pid: int | None = None) -> None:
    """Drop a finished process's live gauges (Gunicorn's child_exit; a worker command at exit)."""
    path = multiprocess_dir()
    if path:
        multiprocess.mark_process_dead(pid or os.getpid(), path)


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


def process_registry() -> CollectorRegistry:
    """Samples of every worker in multiprocess mode, else this process's default registry."""
    path = multiprocess_dir()
    if not path:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return registry


class Metrics:
    """``GET /metrics``: Prometheus text format. Not part of the public contract: Nginx keeps it private."""

    access = "public"

    def __init__(self, db):
        self.db = db
        self.processes = process_registry()
        self.database = CollectorRegistry()
        self.database.register(QueueCollector(db))

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Every worker's samples, then the queue read from the database."""
        observe_pool(self.db)
        resp.content_type = CONTENT_TYPE_LATEST
        resp.cache_control = ["no-store"]
        resp.text = (generate_latest(self.processes) + generate_latest(self.database)).decode()


class MetricsMiddleware:
    """Times every request and counts it by method, route template and status."""

    def __init__(self, db):
        self.db = db

    def process_request(self, req, resp) -> None:
        req.context.metrics_started = time.perf_counter()

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        started = getattr(req.context, "metrics_started", None)
        if started is None:
            return
        method = req.method if req.method in METHODS else "other"
        labels = {"method": method, "route": req.uri_template or UNMATCHED, "status": str(resp.status_code)}
        HTTP_REQUESTS.labels(**labels).inc()
        HTTP_LATENCY.labels(**labels).observe(time.perf_counter() - started)
        observe_pool(self.db)
