"""Benchmark peer C, the load: enqueue N runs of ``bench_flow`` and time them to the last finish.

Usage (repository root, worker.py started): ``python -m bench.peers.dbos_flows.enqueue N``
(or by path: ``python bench/peers/dbos_flows/enqueue.py N``)

Enqueues from a separate process with ``DBOSClient``, the way DBOS documents it (the
client only writes rows to the system database; it runs no workflow code), one
enqueue after another as fast as the loop goes. Then it polls DBOS's own
``list_workflows`` until all N are finished, and prints one line of JSON:
``{"runs": N, "seconds": S, "runs_per_second": N / S}``, where S runs from just before
the first enqueue to the ``completed_at`` DBOS recorded for the last run to finish.
Exits 1 (the JSON line still printed) if any run did not end in SUCCESS.

Environment: ``DATABASE_URL`` (as for worker.py); optional ``TIMEOUT_SECONDS`` (600).
"""

from __future__ import annotations

import json
import os
import sys
import time

from dbos import DBOSClient, EnqueueOptions
from sqlalchemy.exc import DBAPIError

try:
    from bench.peers.dbos_flows.common import APP_NAME, QUEUE_NAME, WORKFLOW_NAME, system_database_url
except ImportError:  # run by path (python bench/peers/dbos_flows/X.py): this folder is on sys.path
    from common import APP_NAME, QUEUE_NAME, WORKFLOW_NAME, system_database_url  # type: ignore[no-redef]

FINISHED = ["SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"]


def connect_when_ready(deadline: float) -> DBOSClient:
    """A client, once worker.py has launched (creating the system database) and registered the queue.

    The client never creates or migrates the system database itself, so until the
    worker's first launch there is nothing to connect to: retry until the deadline.
    """
    while True:
        client = None
        try:
            client = DBOSClient(system_database_url=system_database_url(), application_name=APP_NAME)
            if client.retrieve_queue(QUEUE_NAME) is not None:
                return client
        except DBAPIError:  # no database yet, or its schema is still being migrated
            pass
        if client is not None:
            client.destroy()
        if time.monotonic() > deadline:
            sys.exit(f"enqueue: queue {QUEUE_NAME!r} never appeared; is worker.py running?")
        time.sleep(0.5)


def main() -> None:
    """Enqueue, wait, report."""
    runs = int(sys.argv[1])
    deadline = time.monotonic() + float(os.environ.get("TIMEOUT_SECONDS", "600"))
    client = connect_when_ready(deadline)
    try:
        options: EnqueueOptions = {"queue_name": QUEUE_NAME, "workflow_name": WORKFLOW_NAME}

        started = time.time()
        ids = [client.enqueue(options, run).get_workflow_id() for run in range(runs)]

        while True:
            done = client.list_workflows(workflow_ids=ids, status=FINISHED, load_input=False, load_output=False)
            if len(done) == runs:
                break
            if time.monotonic() > deadline:
                sys.exit(f"enqueue: only {len(done)} of {runs} runs finished in time")
            time.sleep(0.05)
    finally:
        client.destroy()

    seconds = max(w.completed_at or w.updated_at for w in done) / 1000 - started
    print(json.dumps({"runs": runs, "seconds": round(seconds, 3), "runs_per_second": round(runs / seconds, 1)}))
    failed = [w.workflow_id for w in done if w.status != "SUCCESS"]
    if failed:
        print(f"enqueue: {len(failed)} runs did not succeed, e.g. {failed[0]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
