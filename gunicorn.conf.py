"""Gunicorn settings for Tolstoy; every value can be overridden from the environment."""

import multiprocessing
import os
import sys

from tolstoy.config import Config, ConfigError

try:
    _config = Config.from_env()
except ConfigError as exc:  # one clear line instead of a traceback
    print(f"tolstoy: configuration error: {exc}", file=sys.stderr)
    sys.exit(2)

bind = os.environ.get("TOLSTOY_BIND", f"127.0.0.1:{_config.port}")
# Sync workers: each request holds one pooled connection for a few milliseconds.
workers = int(os.environ.get("WEB_CONCURRENCY", min(multiprocessing.cpu_count() * 2 + 1, 9)))
worker_class = "sync"
# The app (and its connection pool) is created in each worker after the fork:
# psycopg connections must never be shared across processes.
preload_app = False
timeout = 30
graceful_timeout = 20
keepalive = 5
max_requests = 10000
max_requests_jitter = 1000
accesslog = "-"
errorlog = "-"
proc_name = _config.app_name
