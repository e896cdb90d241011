"""Benchmark peer C, the worker: DBOS Transact running a three-step workflow from a queue.

The workflow mirrors the Tolstoy flow it is compared with (transform -> http_request
-> transform): step 1 returns a small dict, step 2 GETs ``STUB_URL`` and returns the
status code, step 3 combines both. DBOS checkpoints each step's output in its system
database, so a crashed run resumes after its last finished step.

The process launches DBOS, registers the queue ``bench`` (at most 100 workflows
running at once, polled every 0.1 s) and then serves it until SIGTERM/SIGINT.

Environment: ``DATABASE_URL`` (superuser libpq URL; see common.py for the system
database derived from it), ``STUB_URL`` (the URL step 2 fetches).
Run from the repository root: ``python -m bench.peers.dbos_flows.worker`` (or by path:
``python bench/peers/dbos_flows/worker.py``).
"""

from __future__ import annotations

import os
import signal
import threading

import httpx
from dbos import DBOS, DBOSConfig

try:
    from bench.peers.dbos_flows.common import APP_NAME, QUEUE_NAME, WORKFLOW_NAME, system_database_url
except ImportError:  # run by path (python bench/peers/dbos_flows/X.py): this folder is on sys.path
    from common import APP_NAME, QUEUE_NAME, WORKFLOW_NAME, system_database_url  # type: ignore[no-redef]

STUB_URL = os.environ["STUB_URL"]

config: DBOSConfig = {
    "name": APP_NAME,
    "system_database_url": system_database_url(),
}
DBOS(config=config)

# One client for the process: connections to the stub are kept alive and shared by
# the workflow threads (httpx.Client is thread-safe).
http = httpx.Client(timeout=20.0, limits=httpx.Limits(max_connections=100, max_keepalive_connections=100))


@DBOS.step()
def prepare(run: int) -> dict:
    """Step 1 (transform): a small dict built from the workflow's input."""
    return {"run": run, "message": f"run {run}"}


@DBOS.step()
def call_stub() -> int:
    """Step 2 (http_request): GET the stub and return its status code."""
    return http.get(STUB_URL).status_code


@DBOS.step()
def combine(prepared: dict, status: int) -> dict:
    """Step 3 (transform): the two previous outputs combined."""
    return {"run": prepared["run"], "message": prepared["message"], "status": status, "ok": status == 200}


@DBOS.workflow(name=WORKFLOW_NAME)
def bench_flow(run: int) -> dict:
    """transform -> http_request -> transform, each step checkpointed by DBOS."""
    prepared = prepare(run)
    status = call_stub()
    return combine(prepared, status)


def main() -> None:
    """Launch DBOS, register the queue, and serve it until told to stop."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    DBOS.launch()
    # Queues live in the system database since DBOS 3 and are registered after launch;
    # global_concurrency is the successor of the deprecated Queue(..., concurrency=...).
    DBOS.register_queue(QUEUE_NAME, global_concurrency=100, polling_interval_sec=0.1, on_conflict="always_update")
    DBOS.logger.info(f"Serving queue {QUEUE_NAME!r}; stub {STUB_URL}")
    while not stop.wait(1.0):
        pass
    DBOS.destroy()
    http.close()


if __name__ == "__main__":
    main()
