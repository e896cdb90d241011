"""Gunicorn settings for benchmark peer B (FastAPI + SQLAlchemy): Uvicorn workers, no access log.

PORT picks the port on 127.0.0.1; WEB_CONCURRENCY the number of workers (default 2).
uvicorn.workers is deprecated in current Uvicorn in favour of the uvicorn-worker
package, whose worker uses uvloop and httptools when installed (uvicorn[standard]).
"""

import os

bind = f"127.0.0.1:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "uvicorn_worker.UvicornWorker"
preload_app = False
accesslog = None
errorlog = "-"
# Gunicorn 25+ opens a control socket at ~/.gunicorn/gunicorn.ctl by default; every
# Gunicorn of the user (Tolstoy, the other peers) would share that one path.
control_socket_disable = True
