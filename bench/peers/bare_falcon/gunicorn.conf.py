"""Gunicorn settings for benchmark peer A (bare Falcon): sync workers, no access log.

PORT picks the port on 127.0.0.1; WEB_CONCURRENCY the number of workers (default 2).
The app module (and so each worker's connection pool) is imported after the fork.
"""

import os

bind = f"127.0.0.1:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "sync"
preload_app = False
accesslog = None
errorlog = "-"
# Gunicorn 25+ opens a control socket at ~/.gunicorn/gunicorn.ctl by default; every
# Gunicorn of the user (Tolstoy, the other peers) would share that one path.
control_socket_disable = True
