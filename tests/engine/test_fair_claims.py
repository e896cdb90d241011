"""Fair claims (issue 21): no organization's backlog holds another's runs back. The claim takes due
runs round-robin across organizations, each weighed by the worker time it holds now and used lately,
and in order within each (tolstoy_claim_runs_v2). The positions are asserted here, deterministically;
bench/fairness.py measures the seconds (a victim's run claimed within 1 s behind 10,000 of another
organization's, and what that costs the noisy one)."""

from __future__ import annotations

import threading

import pytest
from test_engine import execute, wait_for

from tolstoy import engine


class Recorder:
    """Stands in for the worker's thread pool: keeps what the claim hands over instead of running it."""

    def __init__(self):
        self.runs: list[dict] = []

    def submit(self, fn, claimed, run):
        self.runs.append(claimed)


def claim(worker, slots: int | None = None) -> list[dict]:
    """One claim of a worker with ``slots`` free threads (all of them by default)."""
    worker._held.clear()
    if slots is not None:
        worker._held.update({f"busy-{n}": None for n in range(worker.concurrency - slots)})
    pool = Recorder()
    worker.claim(pool)
    worker._held.clear()
    return pool.runs


def backlog(db, org: dict, flow: dict, count: int, hours_ago: int = 1) -> None:
    """``count`` queued runs of ``flow``, queued ``hours_ago`` hours ago one millisecond apart (inserted
    directly: the API would take minutes), oldest first."""
    with db.pool.connection() as conn:
        conn.execute(
            "insert into flow_runs (org_id, flow_id, flow_version, plan, status, root_run_id, run_after, created_at) "
            "select %s, %s, 1, '{\"steps\": []}', 'queued', gen_random_uuid(), "
            "       now() - make_interval(hours => %s) + n * interval '1 millisecond', now() "
            "from generate_series(1, %s) as n", (org["id"], flow["id"], hours_ago, count))
        conn.execute("analyze flow_runs")


def oldest(db, org: dict, count: int) -> list[str]:
    with db.pool.connection() as conn:
        return [str(r["id"]) for r in conn.execute(
            "select id from flow_runs where org_id = %s and status in ('queued', 'running') "
            "order by run_after, id limit %s", (org["id"], count)).fetchall()]


@pytest.fixture
def noisy(api):
    org = api.org("Noisy")
    return org, api.user(org), api.flow(org)


@pytest.fixture
def victim(api):
    org = api.org("Victim")
    return org, api.user(org), api.flow(org)


def test_another_organizations_run_is_among_the_next_claims_whatever_the_backlog(
        api, db, config, worker_db, noisy, victim):
    a, _, a_flow = noisy
    b, b_user, b_flow = victim
    backlog(db, a, a_flow, 10_000)
    first = execute(api, b, b_user, b_flow)["executionId"]  # queued after all of A's
    w = engine.worker(config, worker_db)  # the default concurrency: four threads
    assert w.concurrency == 4
    taken = claim(w)
    assert first in [r["id"] for r in taken]
    # The other three are A's, its oldest, in order: within an organization the queue is kept.
    assert [r["id"] for r in taken if r["org_id"] == a["id"]] == oldest(db, a, 3)

    # One thread frees up (A has 3 runs running, B 1): B's next run goes before A's 9,997 others.
    second = execute(api, b, b_user, b_flow)["executionId"]
    assert [r["id"] for r in claim(w, slots=1)] == [second]
    # With nothing of B's left, A's runs go on in order.
    assert [r["id"] for r in claim(w, slots=2)] == oldest(db, a, 5)[3:]


def test_organizations_take_turns_weighed_by_the_worker_time_they_used_lately(
        api, db, config, worker_db, noisy, victim):
    a, _, a_flow = noisy
    b, _, b_flow = victim
    c = api.org("Quiet")
    c_flow = api.flow(c)
    backlog(db, a, a_flow, 50, hours_ago=3)  # A's runs have waited longest
    backlog(db, b, b_flow, 50, hours_ago=2)
    backlog(db, c, c_flow, 50, hours_ago=1)
    with db.pool.connection() as conn:  # A kept about 7 runs going over the last few minutes
        conn.execute("insert into organization_worker_time (org_id, seconds, counted_at) values (%s, 3000, now())",
                     (a["id"],))
    w = engine.worker(config, worker_db, concurrency=8)
    taken = [r["org_id"] for r in claim(w, slots=6)]
    # B and C (no recent use) take turns, B first (its runs have waited longer); A waits for its turn.
    assert taken == [b["id"], c["id"]] * 3
    # A day later A's use has decayed to nothing: it takes its turn, first (it has waited longest).
    with db.pool.connection() as conn:
        conn.execute("update flow_runs set status = 'queued', lease_owner = null, lease_token = null, "
                     "lease_expires_at = null where status = 'running'")
        conn.execute("update organization_worker_time set counted_at = now() - interval '1 day'")
    assert [r["org_id"] for r in claim(w, slots=3)] == [a["id"], b["id"], c["id"]]


def test_the_checkpoint_counts_each_organizations_worker_time(api, org, user, db, config, worker_db):
    flow = api.flow(org, steps=[{"id": "nap", "type": "delay", "config": {"ms": 300}},
                                {"id": "done", "type": "transform", "config": {"output": 1}}])
    w = engine.worker(config, worker_db, concurrency=2, poll_seconds=0.1)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        runs = [execute(api, org, user, flow)["executionId"] for _ in range(3)]
        for run in runs:
            assert wait_for(api, org, flow, run)["status"] == "completed"
    finally:
        w.stop()
        thread.join(timeout=10)
    with db.pool.connection() as conn:
        used = conn.execute("select seconds, counted_at from organization_worker_time where org_id = %s",
                            (org["id"],)).fetchone()
    # Held by the worker while rendering and writing only: the delay is spent in the queue.
    assert used is not None and 0 < used["seconds"] < 3, used
