"""Rate budgets per credential: many runs at once against a provider that allows 10 requests a second.

Issue 26: a stub provider on 127.0.0.1 (bench/rate_stub.py) lets one token make 10 requests a second
(fixed one-second windows) and answers 429 beyond. --runs runs (200 by default) of a one-step flow
calling it with one credential are queued at once, then 3 `tolstoy worker` processes (concurrency 4)
drain them. Scenarios: ``ietf`` (the provider sends RateLimit-Policy/RateLimit and Retry-After),
``github`` (X-RateLimit-* only), ``plain`` (only Retry-After on a 429) and ``declared`` (the tool
declares 9 a second; the provider says nothing). Measures the 429s received, the failed runs, the
attempts spent, the time to drain and the rate the provider admitted. Targets: no failed run and
no attempt spent on a 429; at most 15 429s where the provider states its limit, none where the tool
declares it. Writes bench/results/<date>-rate-budgets.json; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import sys
import time

import psycopg

from .__main__ import record, target
from .rate_stub import RateStub
from .stack import Stack

SCENARIOS = ("ietf", "github", "plain", "declared")


def drain(stack: Stack, scenario: str, runs: int, timeout: float) -> dict:
    """One scenario on a fresh organization: its figures."""
    stub = RateStub(limit=10, style="plain" if scenario == "declared" else scenario).start()
    try:
        client, orgs = stack.in_process_api(f"rated-{scenario}")
        headers = {"X-Org-ID": orgs[f"rated-{scenario}"]}
        user = client.simulate_post("/users", headers=headers, json={"email": f"{scenario}@example.com"}).json
        headers["X-User-ID"] = user["id"]
        body = {"name": f"Provider {scenario}", "baseUrl": stub.url, "authType": "bearer"}
        if scenario == "declared":
            body["rateLimit"] = {"requests": 9, "perSeconds": 1}
        tool = client.simulate_post("/tools", headers=headers, json=body).json
        client.simulate_post(f"/tools/{tool['id']}/auth", headers=headers, json={
            "name": "default", "type": "bearer", "config": {"token": f"tok-{scenario}-0123456789"},
            "isDefault": True})
        client.simulate_post("/actions", headers=headers, json={
            "toolId": tool["id"], "name": "call", "key": f"call.{scenario}", "method": "GET", "endpoint": "/call"})
        flow = client.simulate_post("/flows", headers=headers, json={"name": f"calls {scenario}", "steps": [
            {"id": "call", "type": "action", "config": {"actionKey": f"call.{scenario}"}}]}).json
        for n in range(runs):
            started = client.simulate_post(f"/flows/{flow['id']}/execute", headers=headers,
                                           json={"variables": {"n": n}})
            assert started.status_code == 202, started.text
        began = time.monotonic()
        workers = [stack.worker(4, f"{scenario}-{i}") for i in range(3)]
        with psycopg.connect(stack.owner_url, autocommit=True) as conn:
            while time.monotonic() - began < timeout:
                row = conn.execute(
                    "select count(*) filter (where status in ('completed', 'failed', 'cancelled')), "
                    "count(*) filter (where status = 'failed') from flow_runs where flow_id = %s",
                    (flow["id"],)).fetchone()
                if row[0] == runs:
                    break
                time.sleep(0.2)
            seconds = time.monotonic() - began
            attempts = conn.execute("select max(attempt) from flow_run_steps s join flow_runs r on r.id = s.run_id "
                                    "where r.flow_id = %s", (flow["id"],)).fetchone()[0]
        for worker in workers:
            stack.stop(worker)
        accepted = sorted(t for times in stub.accepted.values() for t in times)
        span = (accepted[-1] - accepted[0]) if len(accepted) > 1 else 0.0
        return {"runs": runs, "finished": row[0], "failed": row[1], "max_attempt": attempts,
                "throttled_429": stub.throttled, "most_in_one_second": stub.most_in_a_second(),
                "seconds_to_drain": round(seconds, 1),
                "admitted_per_second": round((len(accepted) - 1) / span, 2) if span else None}
    finally:
        stub.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rate_budgets", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs queued at once per scenario")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="which of " + ", ".join(SCENARIOS))
    parser.add_argument("--timeout", type=float, default=600, help="give up on a scenario after this many seconds")
    args = parser.parse_args(argv)
    began = time.monotonic()
    stack = Stack()
    figures: dict = {}
    targets: list[dict] = []
    try:
        stack.start_database()
        for scenario in args.scenarios.split(","):
            print(f"bench: {scenario}: {args.runs} runs, 3 workers", flush=True)
            found = figures[scenario] = drain(stack, scenario, args.runs, args.timeout)
            print(f"bench: {scenario}: {found}", flush=True)
            targets.append(target(f"{scenario}: runs failed", found["failed"] + args.runs - found["finished"],
                                  "<= 0", "runs"))
            targets.append(target(f"{scenario}: attempts per step", found["max_attempt"] or 0, "<= 1", ""))
            if scenario == "declared":
                targets.append(target("declared: 429s", found["throttled_429"], "<= 0", "answers"))
            elif scenario != "plain":  # Retry-After alone teaches pauses, not a rate: no target on it
                targets.append(target(f"{scenario}: 429s", found["throttled_429"], "<= 15", "answers"))
    finally:
        stack.close()
    return record("rate-budgets", {"runs": args.runs, "worker_processes": 3, "worker_concurrency": 4,
                                   "provider_limit_per_second": 10, "declared_per_second": 9}, figures, targets,
                  began)


if __name__ == "__main__":
    sys.exit(main())
