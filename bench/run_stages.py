"""Where execute→completed goes, stage by stage, for the engine benchmark's 3-step flow (transform →
call to the stub tool → transform) at light load, one worker process (concurrency 8):

    .venv/bin/python -m bench.run_stages [--runs 40] [--api]

Runs are queued one at a time, 4 a second, as ``tolstoy_queue_run`` in a transaction of their own
(the NOTIFY goes out at its commit), or with ``--api`` through ``POST /flows/{id}/execute`` of
Tolstoy under Gunicorn, as ``python -m bench`` measures it. Each stage is read from the database's
own timestamps of the run: its ``created_at`` (the queueing transaction's start), ``started_at`` (the
claim's), the call step's ``call_started_at`` (the checkpoint written before the call), the last
step's log row (written by the finishing checkpoint) and ``finished_at`` (that checkpoint's start).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request

import psycopg

from . import data as bench_data
from . import engine_load
from .stack import Stack, free_port

STAGES = """
select extract(epoch from r.started_at - r.created_at) * 1000,
       extract(epoch from s.call_started_at - r.started_at) * 1000,
       extract(epoch from l.created_at - s.call_started_at) * 1000,
       extract(epoch from r.finished_at - r.created_at) * 1000
from flow_runs r
join flow_run_steps s on s.org_id = r.org_id and s.run_id = r.id and s.run_created_at = r.created_at
                         and s.step_id = 'call'
cross join lateral (select min(e.created_at) as created_at
                    from execution_logs e
                    where e.org_id = r.org_id and e.execution_id = r.id::text and e.step_key = 'finish'
                      and e.created_at >= r.created_at) as l
where r.flow_id = %s and r.status = 'completed'
"""
NAMES = ("queued → claimed (commit, NOTIFY, wake-up)", "claimed → checkpoint before the call",
         "that checkpoint → the finishing one", "execute → completed")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_stages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--api", action="store_true", help="queue through POST /flows/{id}/execute")
    args = parser.parse_args()
    stack = Stack()
    try:
        stack.start_database()
        loaded = bench_data.load(stack.owner_url, large_logs=10)
        stub = free_port()
        stack.stub_tool(stub)
        flow = engine_load.create_flow(stack.owner_url, loaded.org, f"http://127.0.0.1:{stub}/echo")
        api = None
        if args.api:
            api = free_port()
            stack.tolstoy(api)
        worker = stack.worker(engine_load.WORKER_CONCURRENCY, "stages")
        time.sleep(2.0)  # started and idle
        with psycopg.connect(stack.owner_url, autocommit=True) as conn:
            for n in range(args.runs):
                if api is None:
                    conn.execute("select tolstoy_queue_run(%s, %s, 1, %s, jsonb_build_object('n', %s::integer), "
                                 "null, null)", (loaded.org, flow, loaded.user, n))
                else:
                    request = urllib.request.Request(
                        f"http://127.0.0.1:{api}/flows/{flow}/execute", method="POST",
                        data=json.dumps({"variables": {"n": n}}).encode(),
                        headers={"Content-Type": "application/json", "X-Org-ID": loaded.org,
                                 "X-User-ID": loaded.user})
                    with urllib.request.urlopen(request, timeout=10) as answer:
                        answer.read()
                time.sleep(0.25)
            engine_load._wait_finished(conn, flow, args.runs, timeout=120)
            rows = conn.execute(STAGES, (flow,)).fetchall()
        stack.stop(worker)
    finally:
        stack.close()
    print(f"{len(rows)} runs, {'through the API' if args.api else 'queued in SQL'}; ms:")
    for i, name in enumerate(NAMES):
        values = sorted(float(row[i]) for row in rows)
        print(f"  {name:45s} p50 {statistics.median(values):6.1f}  p90 {values[int(len(values) * 0.9)]:6.1f}  "
              f"min {values[0]:6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
