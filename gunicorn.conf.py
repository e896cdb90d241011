"""Gunicorn settings for Tolstoy, read from tolstoy.config (the environment, or
the AWS secret in production); flags on Gunicorn's command line still win."""

import os
import re
import shutil
import sys
import tempfile

# prometheus-client picks single- or multi-process mode when first imported, so
# the folder must be known before anything imports it (workers inherit it).
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tolstoy-metrics-")
    _own_metrics_dir = True
else:
    _own_metrics_dir = False

from tolstoy.config import Config, ConfigError  # noqa: E402

try:
    _config = Config.from_env()
    _config.check_serving()
except ConfigError as exc:  # one clear line instead of a traceback
    print(f"tolstoy: configuration error: {exc}", file=sys.stderr)
    sys.exit(2)

# PORT (or the whole TOLSTOY_BIND, e.g. unix:/run/tolstoy/api.sock) from the configuration.
bind = _config.bind or f"127.0.0.1:{_config.port}"

# Worker class and count, measured with bench/gunicorn_workers.py: 2 cores shared
# with PostgreSQL and ab, 3,000 requests per cell, median of 3 interleaved
# rounds (the machine was busy with other work, so single rounds varied by up
# to 3x; every setup suffered alike). Requests/s, then p50/p99 latency in ms:
#
#   setup                 GET /tools/{id}            POST /organizations
#                         c=8          c=32          c=8          c=32
#   sync, 5 workers       364 19/53    365 78/170    477 16/37    681 44/90
#   gthread, 2 x 4        286 26/61    253 120/270   490 15/40    455 69/173
#   gthread, 3 x 4        254 25/122   293 84/355    384 18/66    427 62/200
#
# Each request is a few short queries with Python work between them, so threads
# in one process mostly wait for the GIL: sync workers (2 x cores + 1) serve as
# much or more, with the lowest p99 everywhere, and hold fewer connections.
# Slow clients, the usual reason for threads, never reach Gunicorn: Nginx
# buffers whole requests and responses in front of it.
worker_class = "sync"
workers = _config.web_concurrency or min((os.cpu_count() or 1) * 2 + 1, 9)

# The app, and with it the connection pool, is built by get_app() in each worker
# after the fork: psycopg connections must never be shared across processes.
preload_app = False

# A request waits at most TOLSTOY_POOL_TIMEOUT (5 s) for a connection and
# TOLSTOY_STATEMENT_TIMEOUT_MS (15 s) per statement; POST /actions/{id}/execute
# may also wait on a tool (20 s per connect/read phase, tolstoy/engine/calls.py).
# Past 60 s the worker is stuck.
timeout = 60
# On SIGTERM (systemctl stop/restart) requests in flight get this long to finish;
# systemd's TimeoutStopSec is longer.
graceful_timeout = 25
keepalive = 5
# Recycle workers now and then (a slow leak cannot grow forever); the jitter keeps
# them from all restarting at the same moment. A worker serves 1,000-2,000
# requests/s here, and a restart costs about 0.5 s of loading, so every 10,000
# requests cost 5 % of the time and a latency spike; 200,000 is a few minutes.
max_requests = 200000
max_requests_jitter = 20000
# Heartbeat files on tmpfs: a worker blocked on a slow disk is not a dead worker.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# No gunicornc control socket (Gunicorn 25+): it would go in $HOME, which the
# systemd unit makes read-only, and every Gunicorn of a user would share the
# one path. Operators use systemctl reload/restart (HUP/TERM) instead.
control_socket_disable = True

# One JSON line per request, with its X-Request-ID (tolstoy/api/access_log.py).
accesslog = "-"
errorlog = "-"
logger_class = "tolstoy.api.access_log.GunicornLogger"

# X-Forwarded-Proto and X-Forwarded-For are believed only from these peers (Nginx).
forwarded_allow_ips = ",".join(_config.trusted_proxies)
proc_name = _config.app_name

_SAMPLE_FILE = re.compile(r"_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def on_starting(server):
    """Drop metric files of processes that no longer exist (a previous run of this service).

    The folder may be shared with `tolstoy worker` processes, whose files stay.
    """
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        match = _SAMPLE_FILE.search(name)
        if match and not _alive(int(match.group(1))):
            os.remove(os.path.join(folder, name))


def child_exit(server, worker):
    """A worker is gone: its pool gauges must stop counting (its counters stay summed)."""
    from prometheus_client import multiprocess  # not tolstoy.metrics: the master never loads the app

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics folder if this process made it."""
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
