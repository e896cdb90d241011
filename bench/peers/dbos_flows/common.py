"""Names and the system database URL shared by worker.py and enqueue.py.

enqueue.py imports only this module, never the workflow code: a DBOSClient
enqueues by workflow name, the way DBOS documents enqueueing from another process.
"""

from __future__ import annotations

import os

from sqlalchemy.engine import make_url

APP_NAME = "tolstoy_bench_dbos"
QUEUE_NAME = "bench"
WORKFLOW_NAME = "bench_flow"
DEFAULT_SYSTEM_DATABASE = "tolstoy_bench_dbos_sys"


def system_database_url() -> str:
    """``DATABASE_URL`` with its database swapped for DBOS's own system database.

    DBOS keeps its queue and checkpoints in that database and creates it on the same
    server (through the ``postgres`` database) on first launch if it does not exist.
    The name comes from ``DBOS_SYSTEM_DATABASE`` (default ``tolstoy_bench_dbos_sys``).
    Both ``postgresql://u:p@host:port/db`` and ``postgresql://u:@/db?host=/socket/dir``
    forms work: the ``host`` query parameter is passed through to psycopg.
    """
    url = make_url(os.environ["DATABASE_URL"])
    url = url.set(database=os.environ.get("DBOS_SYSTEM_DATABASE", DEFAULT_SYSTEM_DATABASE))
    return url.render_as_string(hide_password=False)
