"""Prometheus metrics: HTTP requests, the connection pool, flow runs and steps
(``GET /metrics`` serves them with the run queue: tolstoy/api/health.py).

Under Gunicorn every worker is its own process, so prometheus-client runs in
multiprocess mode: each process writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR`` (gunicorn.conf.py sets it up before the workers
fork) and a scrape sums them over all workers. Without that variable (tests,
scripts) the metrics live in this process only.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess

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
# What the data layer sends (tolstoy/db/database.py): the cost of requests and engine steps.
DB_STATEMENTS = Counter("tolstoy_db_statements_total", "SQL statements sent to PostgreSQL.")
DB_ROUND_TRIPS = Counter("tolstoy_db_round_trips_total", "Network round trips to PostgreSQL (a pipelined batch is one).")
DB_TRANSACTIONS = Counter("tolstoy_db_transactions_total", "Transactions (units of work) ended.")
FLOW_RUNS = Counter("tolstoy_flow_runs_total", "Flow runs that reached a status.", ["status"])
STEP_DURATION = Histogram(
    "tolstoy_flow_step_duration_seconds", "Duration of one step attempt, by step type and outcome.",
    ["type", "status"], buckets=STEP_BUCKETS,
)

# Wait steps and failure handlers (issue 14).
SIGNALS = Counter("tolstoy_signals_total", "Signals received by runs, by how they came (api, link).", ["source"])
WAIT_TIMEOUTS = Counter("tolstoy_wait_timeouts_total", "Wait steps that timed out, by onTimeout (fail, continue).",
                        ["on_timeout"])
ON_FAILURE_RUNS = Counter("tolstoy_on_failure_runs_total",
                          "Failure handlers (onFailure) started, and how they ended (started, completed, failed).",
                          ["outcome"])


# Outbound event webhooks: each attempt's outcome (sent, retried later, failed for good).
WEBHOOK_DELIVERIES = Counter("tolstoy_webhook_deliveries_total",
                             "Webhook delivery attempts by outcome: sent (2xx), retried (will be sent again), "
                             "failed (given up).", ["outcome"])


def count_webhook_delivery(outcome: str) -> None:
    """Count one webhook delivery attempt: ``sent``, ``retried`` or ``failed``."""
    WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()


def count_signal(source: str) -> None:
    """Count a signal stored for a run (``api`` or ``link``)."""
    SIGNALS.labels(source=source).inc()


def count_wait_timeout(on_timeout: str) -> None:
    """Count a wait step that timed out."""
    WAIT_TIMEOUTS.labels(on_timeout=on_timeout).inc()


def count_on_failure(outcome: str) -> None:
    """Count a failure handler starting (``started``) or ending (``completed``, ``failed``)."""
    ON_FAILURE_RUNS.labels(outcome=outcome).inc()


CHILD_RUNS = Counter("tolstoy_child_runs_total", "Child runs queued by subflow steps, by whether the parent waits.",
                     ["mode"])


def count_child_run(mode: str) -> None:
    """Count a child run queued by a subflow step (mode: wait or nowait)."""
    CHILD_RUNS.labels(mode=mode).inc()


def count_run(status: str) -> None:
    """Count a flow run reaching ``status`` (queued, running, completed, failed, cancelled)."""
    FLOW_RUNS.labels(status=status).inc()


def observe_step(duration: float, status: str, step_type: str = "unknown") -> None:
    """Record one step attempt's duration in seconds and its outcome."""
    STEP_DURATION.labels(type=step_type, status=status).observe(duration)


# Rate budgets per credential (issue 26). No label names the tool: tool ids (and names) are per
# organization and unbounded, so a label of them would grow the scrape with every tenant's tools. Per
# tool and credential the same numbers are kept exactly in the database and shown to the tenant by
# GET /tools/{id}/rate-limit (throttled, waitedSeconds); these are the service's totals.
WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600)
BUDGET_WAITS = Counter("tolstoy_rate_budget_waits_total",
                       "Calls checkpointed waiting for their credential's rate budget (each wait counts).")
BUDGET_WAIT_SECONDS = Histogram("tolstoy_rate_budget_wait_seconds",
                                "Time a call waited for its credential's rate budget before it was sent.",
                                buckets=WAIT_BUCKETS)
THROTTLED = Counter("tolstoy_rate_limited_answers_total", "429 answers received from tools.")


def count_budget_wait() -> None:
    """Count a call that waits for its credential's rate budget."""
    BUDGET_WAITS.inc()


def observe_budget_wait(seconds: float) -> None:
    """Record how long a call waited for its budget, once it is sent."""
    BUDGET_WAIT_SECONDS.observe(seconds)


def count_throttled() -> None:
    """Count a 429 answer of a tool."""
    THROTTLED.inc()


# Concurrency limits by key (issue 26): how long a run waited queued for a slot of its flow's limits,
# observed when a claim starts it. No label: flows and keys are per organization and unbounded. The
# runs waiting now are tolstoy_flow_runs_parked{waiting_for="concurrency"}.
SLOT_WAIT_SECONDS = Histogram("tolstoy_concurrency_wait_seconds",
                              "Time a run waited queued for a slot of its flow's concurrency limits before it "
                              "started.", buckets=WAIT_BUCKETS)


def observe_slot_wait(seconds: float) -> None:
    """Record how long a run waited for a concurrency slot, once a claim starts it."""
    SLOT_WAIT_SECONDS.observe(seconds)


# Concurrency limits declared on a step: each time a step waits for a slot, and how long it waited once it
# got one. No label, for the same reason.
STEP_SLOT_WAITS = Counter("tolstoy_step_slot_waits_total",
                          "Steps checkpointed waiting for a slot of their concurrency limit (each wait counts).")
STEP_SLOT_WAIT_SECONDS = Histogram("tolstoy_step_concurrency_wait_seconds",
                                   "Time a step waited for a slot of its concurrency limit before its call.",
                                   buckets=WAIT_BUCKETS)


def count_slot_wait() -> None:
    """Count a step that waits for a slot of its concurrency limit."""
    STEP_SLOT_WAITS.inc()


def observe_step_slot_wait(seconds: float) -> None:
    """Record how long a step waited for its slot, once it has it."""
    STEP_SLOT_WAIT_SECONDS.observe(seconds)


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


def process_registry() -> CollectorRegistry:
    """Samples of every worker in multiprocess mode, else this process's default registry."""
    path = multiprocess_dir()
    if not path:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return registry
