"""Housekeeping at ten times the old limit: does the workers' upkeep keep up?

Issue 21: the upkeep deleted at most 50,000 rows of each kind (finished webhook deliveries, the
webhook-trigger inbox, signals of runs gone) an hour, so any of these tables growing faster than
~14 rows/s grew without bound. Now it prunes in batches until it has caught up, within a time budget
per pass, and comes back soon when it has not (tolstoy/engine/worker.py, Worker.prune).

An embedded PostgreSQL migrated like production; one hour of inflow at ten times the old limit
(500,000 rows of each kind, --rows), all past retention at once (the worst case: nothing of it was
pruned yet); one `tolstoy worker` process with the default settings (TOLSTOY_PRUNE_BATCH 10,000,
TOLSTOY_PRUNE_BUDGET_SECONDS 60). Measures how long until every row is gone and how many upkeep
passes that took; the target is less than the hour the rows took to come in (it keeps up), and
the old code's figure, 50,000 rows of each kind an hour, is printed beside it. Writes
bench/results/<date>-housekeeping.json; exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import psycopg

from .__main__ import record, target
from .stack import Stack

OLD_LIMIT_PER_HOUR = 50_000  # rows of each kind one upkeep pass deleted, once an hour


def counts(conn) -> dict:
    row = conn.execute(
        "select (select count(*) from webhook_deliveries), (select count(*) from flow_trigger_deliveries), "
        "(select count(*) from flow_run_signals)").fetchone()
    return dict(zip(("deliveries", "inbox", "signals"), row, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.housekeeping", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10 * OLD_LIMIT_PER_HOUR,
                        help="rows of each kind past retention (one hour of inflow)")
    parser.add_argument("--timeout", type=float, default=3600, help="give up waiting after this many seconds")
    args = parser.parse_args(argv)
    began = time.monotonic()
    stack = Stack()
    try:
        stack.start_database()
        client, orgs = stack.in_process_api("busy")
        org = orgs["busy"]
        headers = {"X-Org-ID": org}
        webhook = client.simulate_post("/webhooks", headers=headers, json={
            "name": "w", "url": "https://hooks.example.com/x", "eventTypes": ["flow.completed"]})
        assert webhook.status_code == 201, webhook.text
        flow = client.simulate_post("/flows", headers=headers, json={"name": "f", "steps": [
            {"id": "hello", "type": "transform", "config": {"output": {"hi": 1}}}]})
        assert flow.status_code == 201, flow.text
        trigger = client.simulate_post(f"/flows/{flow.json['id']}/triggers", headers=headers,
                                       json={"type": "webhook"})
        assert trigger.status_code == 201, trigger.text
        print(f"bench: writing {args.rows:,} rows of each kind, 40 days old", flush=True)
        written = time.monotonic()
        with psycopg.connect(stack.owner_url, autocommit=True) as conn:
            conn.execute("select set_config('app.org_id', %s, false)", (org,))
            conn.execute(
                "insert into webhook_deliveries (org_id, webhook_id, placed, event_id, event_type, data, state, "
                "created_at, finished_at) "
                "select %s, %s, true, gen_random_uuid(), 'webhook.test', '{}', 'delivered', "
                "now() - interval '40 days', now() - interval '40 days' from generate_series(1, %s)",
                (org, webhook.json["id"], args.rows))
            conn.execute(
                "insert into flow_trigger_deliveries (org_id, trigger_id, verdict, reason, received_at) "
                "select %s, %s, 'invalid', 'old', now() - interval '40 days' from generate_series(1, %s)",
                (org, trigger.json["id"], args.rows))
            conn.execute(
                "insert into flow_run_signals (org_id, run_id, signal, created_at) "
                "select %s, gen_random_uuid(), 'go', now() - interval '40 days' from generate_series(1, %s)",
                (org, args.rows))
            conn.execute("vacuum analyze webhook_deliveries, flow_trigger_deliveries, flow_run_signals")
            before = dict(counts(conn))
        print(f"bench: written in {time.monotonic() - written:.1f} s: {before}; starting a worker", flush=True)
        log_name = "worker-housekeeping.log"
        started = time.monotonic()
        worker = stack.spawn([sys.executable, "-m", "tolstoy.cli", "worker", "--concurrency", "1"],
                             stack.tolstoy_env(TOLSTOY_RUN_RETENTION_DAYS="1"), log=log_name)
        left = before
        with psycopg.connect(stack.owner_url, autocommit=True) as conn:
            while any(left.values()) and time.monotonic() - started < args.timeout:
                time.sleep(1)
                left = dict(counts(conn))
        seconds = time.monotonic() - started
        stack.stop(worker)
        passes = [json.loads(line) for line in (stack.work / log_name).read_text().splitlines()
                  if '"housekeeping pruned"' in line]
    finally:
        stack.close()
    pruned = sum(before.values()) - sum(left.values())
    figures = {
        "rows_of_each_kind": args.rows, "rows_left": left, "seconds_to_prune_all": round(seconds, 1),
        "rows_per_second": round(pruned / seconds, 1) if seconds else None,
        "passes": len(passes), "passes_behind": sum(1 for p in passes if p.get("behind")),
        # One pass an hour, 50,000 of each kind per pass: the last rows went in the pass of hour n - 1.
        "old_code_passes_for_this_backlog": math.ceil(args.rows / OLD_LIMIT_PER_HOUR),
    }
    inflow_seconds = 3600 * args.rows / (10 * OLD_LIMIT_PER_HOUR)
    targets = [target(f"{args.rows:,} rows of each kind (an hour at 10x the old limit) pruned",
                      seconds if not any(left.values()) else float("inf"), f"<= {inflow_seconds:.0f}", "s")]
    print("\n| | rows of each kind | time to prune them all | upkeep passes |")
    print("|---|---|---|---|")
    print(f"| now | {args.rows:,} | {figures['seconds_to_prune_all']} s | {figures['passes']} "
          f"({figures['passes_behind']} out of budget) |")
    old = figures["old_code_passes_for_this_backlog"]
    print(f"| before (50,000 an hour) | {args.rows:,} | {old - 1} h and a pass | {old} |")
    return record("housekeeping", {"worker_processes": 1, "prune_batch": 10_000, "prune_budget_seconds": 60,
                                     "run_retention_days": 1, "webhook_retention_days": 30}, figures, targets, began)


if __name__ == "__main__":
    sys.exit(main())
