"""Rate budgets per credential (issue 26), against a stub provider on 127.0.0.1 that allows 10
requests a second per token and answers 429 beyond (bench/rate_stub.py): a declared limit is never
exceeded; what the provider says (Retry-After, GitHub's headers, the IETF fields) teaches the budget
every worker shares; a step waiting for its budget holds no thread, spends no attempt, and waits at
most TOLSTOY_RATE_LIMIT_MAX_WAIT_SECONDS; a call costs no statement more. Timings go to the bench
(``python -m bench rate``), never to an assertion here."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from test_engine import execute, step, wait_for
from test_worker_processes import log_tail, start_worker, stop, wait_until

from bench.rate_stub import RateStub
from tolstoy import engine
from tolstoy.db import migrate
from tolstoy.db.database import Database

TOKEN = "tok-rate-budget-0123456789"


@pytest.fixture
def stub(request):
    provider = RateStub(limit=10, style=getattr(request, "param", "ietf")).start()
    yield provider
    provider.stop()


def rated_tool(api, org, url: str, rate_limit: dict | None = None) -> dict:
    """A bearer tool on ``url`` with its credential, and a GET action on it."""
    tool = api.create("/tools", org, {"name": "Provider", "baseUrl": url, "authType": "bearer",
                                      **({"rateLimit": rate_limit} if rate_limit else {})})
    stored = api.post(f"/tools/{tool['id']}/auth", org, {"name": "default", "type": "bearer",
                                                         "config": {"token": TOKEN}, "isDefault": True})
    assert stored.status_code == 201, stored.text
    return tool


def call_flow(api, org, tool, key: str = "provider.call", name: str = "Calls") -> dict:
    api.create("/actions", org, {"toolId": tool["id"], "name": key, "key": key, "method": "GET",
                                 "endpoint": "/call"})
    return api.flow(org, name=name, steps=[step("call", "action", {"actionKey": key})])


def start_runs(api, org, user, flow, n: int) -> list[str]:
    return [execute(api, org, user, flow, {"n": i})["executionId"] for i in range(n)]


def summary(db) -> dict:
    with db.pool.connection() as conn:
        return conn.execute(
            "select count(*) filter (where r.status = 'completed') as completed,"
            " count(*) filter (where r.status = 'failed') as failed,"
            " count(*) as runs,"
            " (select max(s.attempt) from flow_run_steps s where s.step_id = 'call') as max_attempt "
            "from flow_runs r").fetchone()


def all_finished(db, n: int):
    def done():
        with db.pool.connection() as conn:
            return conn.execute("select count(*) = %s as done from flow_runs where status in "
                                "('completed', 'failed', 'cancelled')", (n,)).fetchone()["done"]
    return done


def budget(api, org, tool) -> dict:
    got = api.client.simulate_get(f"/tools/{tool['id']}/rate-limit", headers=api.headers(org))
    assert got.status_code == 200, got.text
    return got.json


def run_with_workers(worker_env, db, n: int, processes: int = 3, timeout: float = 180) -> None:
    workers = [start_worker(worker_env) for _ in range(processes)]
    try:
        wait_until(all_finished(db, n), timeout, f"{n} runs to finish")
    finally:
        for worker in workers:
            stop(worker)
    assert all(w.returncode == 0 for w in workers), [log_tail(w) for w in workers]


@pytest.mark.parametrize("stub", ["ietf"], indirect=True)
def test_many_runs_across_three_workers_learn_the_limit_and_none_fails(api, org, user, db, worker_env, stub):
    tool = rated_tool(api, org, stub.url)
    flow = call_flow(api, org, tool)
    n = 60  # the full 200 runs: the slow test below, and `python -m bench rate`
    start_runs(api, org, user, flow, n)
    run_with_workers(worker_env, db, n)
    assert summary(db) == {"completed": n, "failed": 0, "runs": n, "max_attempt": 1}
    # A few 429s while the first answers are on their way; then the budget knows (each is a wait, not a failure).
    assert stub.throttled <= 12, stub.throttled
    assert stub.most_in_a_second() <= 10
    shown = budget(api, org, tool)
    [org_budget] = shown["budgets"]
    assert org_budget["scope"] == "organization" and org_budget["learned"]["requests"] == 10
    assert org_budget["learned"]["perSeconds"] == 1
    assert org_budget["throttled"] == stub.throttled


@pytest.mark.slow
@pytest.mark.parametrize("stub", ["ietf"], indirect=True)
def test_200_runs_started_at_once_across_three_workers(api, org, user, db, worker_env, stub):
    tool = rated_tool(api, org, stub.url)
    flow = call_flow(api, org, tool)
    start_runs(api, org, user, flow, 200)
    run_with_workers(worker_env, db, 200, timeout=400)
    assert summary(db) == {"completed": 200, "failed": 0, "runs": 200, "max_attempt": 1}
    assert stub.throttled <= 15, stub.throttled


@pytest.mark.parametrize("stub", ["plain"], indirect=True)
def test_a_declared_limit_gets_no_429_at_all(api, org, user, db, worker_env, stub):
    # Declared a little under the provider's 10 a second: calls are spaced evenly when they are sent, and
    # arrive with the network's jitter (docs/flows.md says so).
    tool = rated_tool(api, org, stub.url, {"requests": 9, "perSeconds": 1})
    flow = call_flow(api, org, tool)
    n = 45
    start_runs(api, org, user, flow, n)
    run_with_workers(worker_env, db, n)
    assert summary(db) == {"completed": n, "failed": 0, "runs": n, "max_attempt": 1}
    assert stub.throttled == 0
    assert budget(api, org, tool)["declared"] == {"requests": 9, "perSeconds": 1}


@pytest.mark.parametrize("stub", ["github"], indirect=True)
def test_githubs_headers_alone_teach_the_limit(api, org, user, db, worker_env, stub):
    tool = rated_tool(api, org, stub.url)
    flow = call_flow(api, org, tool)
    n = 40
    start_runs(api, org, user, flow, n)
    run_with_workers(worker_env, db, n)
    assert summary(db) == {"completed": n, "failed": 0, "runs": n, "max_attempt": 1}
    assert stub.throttled <= 12, stub.throttled
    [learned] = budget(api, org, tool)["budgets"]
    assert learned["learned"]["requests"] == 10 and learned["learned"]["perSeconds"] is None


def step_row(db, execution_id: str) -> dict | None:
    with db.pool.connection() as conn:
        return conn.execute("select status, attempt, inputs, wake_at, error from flow_run_steps "
                            "where run_id = %s and step_id = 'call'", (execution_id,)).fetchone()


def run_row(db, execution_id: str) -> dict:
    with db.pool.connection() as conn:
        return conn.execute("select status::text, run_after from flow_runs where id = %s", (execution_id,)).fetchone()


def test_a_429_pauses_the_credential_for_every_run_and_spends_no_attempt(api, org, user, worker, server, db, clock):
    answers = {"n": 0}
    lock = threading.Lock()

    def provider(request):
        from werkzeug import Response
        with lock:
            answers["n"] += 1
            first = answers["n"] == 1
        if first:
            return Response('{"error": "slow down"}', status=429, headers={"Retry-After": "120"},
                            content_type="application/json")
        return Response('{"ok": true}', content_type="application/json")

    server.expect_request("/call").respond_with_handler(provider)
    tool = rated_tool(api, org, server.url_for("/").rstrip("/"))
    flow = call_flow(api, org, tool)
    first = execute(api, org, user, flow)["executionId"]
    wait_until(lambda: (step_row(db, first) or {}).get("status") == "waiting", 15, "the throttled step to wait")
    second = execute(api, org, user, flow)["executionId"]
    wait_until(lambda: (step_row(db, second) or {}).get("status") == "waiting", 15, "the second run to wait")
    for execution_id in (first, second):
        row = step_row(db, execution_id)
        # Waiting for the budget, as the run view will show it: inputs.rateLimit and the wake time.
        assert row["attempt"] == 1 and row["inputs"]["rateLimit"]["toolId"] == tool["id"], row
        assert row["inputs"]["rateLimit"]["scope"] == "organization" and row["wake_at"] is not None
        assert run_row(db, execution_id)["status"] == "queued"  # no lease, no thread
        # The run itself says why it waits, until when.
        view = api.client.simulate_get(f"/flows/{flow['id']}/executions/{execution_id}",
                                       headers=api.headers(org)).json
        assert view["waitingFor"]["rateLimit"] == {"toolId": tool["id"], "scope": "organization"}, view
        assert view["waitingFor"]["stepId"] == "call" and view["waitingFor"]["until"] is not None, view
    listed = api.client.simulate_get(f"/flows/{flow['id']}/executions", params={"waitingFor": "rateLimit"},
                                     headers=api.headers(org)).json
    assert {r["executionId"] for r in listed} == {first, second}
    assert answers["n"] == 1  # the second run did not call: the credential is paused for every run
    shown = budget(api, org, tool)["budgets"][0]
    assert shown["throttled"] == 1 and shown["pausedUntil"] is not None
    clock.move(125)
    for execution_id in (first, second):
        done = wait_for(api, org, flow, execution_id)
        assert done["status"] == "completed", done  # maxRetries is 0, and the 429 spent nothing
        assert step_row(db, execution_id)["attempt"] == 1
    assert answers["n"] == 3
    assert budget(api, org, tool)["budgets"][0]["waitedSeconds"] > 0


def test_waiting_for_budget_holds_no_thread_and_is_bounded(api, org, user, config, worker_db, server, db, clock):
    server.expect_request("/call").respond_with_json({"ok": True})
    server.expect_request("/other").respond_with_json({"ok": True})
    # One call every 10 minutes; a call waits 25 minutes at most.
    tool = rated_tool(api, org, server.url_for("/").rstrip("/"), {"requests": 1, "perSeconds": 600})
    flow = call_flow(api, org, tool)
    other = api.flow(org, name="Other", steps=[step("call", "http_request", {"method": "GET",
                                                                            "url": server.url_for("/other")})])
    # And many runs waiting for another budget: one call every 30 s, 40 runs (the last slot 19.5 min away).
    server.expect_request("/many").respond_with_json({"ok": True})
    many_tool = api.create("/tools", org, {"name": "Many", "baseUrl": server.url_for("/many").rsplit("/", 1)[0],
                                           "authType": "none", "rateLimit": {"requests": 1, "perSeconds": 30}})
    api.create("/actions", org, {"toolId": many_tool["id"], "name": "m", "key": "m", "method": "GET",
                                 "endpoint": "/many"})
    many = api.flow(org, name="Many", steps=[step("call", "action", {"actionKey": "m"})])
    w = engine.worker(dataclasses.replace(config, rate_limit_max_wait_seconds=1500), worker_db, concurrency=2,
                      poll_seconds=0.1)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        waiting_many = start_runs(api, org, user, many, 40)
        budgeted = start_runs(api, org, user, flow, 6)
        others = start_runs(api, org, user, other, 10)
        # Two threads: every other run completes while the budgeted ones wait (or fail for the bound).
        for execution_id in others:
            assert wait_for(api, org, other, execution_id)["status"] == "completed"
        wait_until(lambda: sorted(run_row(db, e)["status"] for e in waiting_many) == ["completed"] + ["queued"] * 39,
                   30, "one of the 40 to go, 39 to wait")
        assert all(step_row(db, e)["attempt"] == 1 for e in waiting_many)
        wait_until(lambda: all(run_row(db, e)["status"] in ("completed", "queued", "failed") and step_row(db, e)
                               and step_row(db, e)["status"] != "running" for e in budgeted), 15,
                   "the budgeted runs to settle")
        rows = {e: step_row(db, e) for e in budgeted}
        statuses = sorted(r["status"] for r in rows.values())
        # One call now, two reserve the next slots (10 and 20 minutes away), three would wait longer than 25.
        assert statuses == ["completed", "failed", "failed", "failed", "waiting", "waiting"], rows
        for row in rows.values():
            assert row["attempt"] == 1
            if row["status"] == "failed":
                assert row["error"]["name"] == "RateLimitWaitExceeded", row
        waiting = [e for e, r in rows.items() if r["status"] == "waiting"]
        clock.move(601)
        wait_until(lambda: sum(step_row(db, e)["status"] == "completed" for e in waiting) == 1, 15,
                   "the first reserved slot")
        clock.move(601)
        for execution_id in waiting:
            assert wait_for(api, org, flow, execution_id)["status"] == "completed"
            assert step_row(db, execution_id)["attempt"] == 1
        assert len([r for r, _ in server.log if r.path == "/call"]) == 3
    finally:
        w.stop()
        thread.join(timeout=10)


def test_a_call_to_a_tool_with_no_limit_costs_no_statement_more(api, org, user, app_url, config, server, db):
    server.expect_request("/call").respond_with_json({"ok": True})
    tool = rated_tool(api, org, server.url_for("/").rstrip("/"))
    api.create("/actions", org, {"toolId": tool["id"], "name": "c", "key": "c", "method": "POST", "endpoint": "/call"})
    api.create("/actions", org, {"toolId": tool["id"], "name": "g", "key": "g", "method": "GET", "endpoint": "/call"})
    flow = api.flow(org, steps=[step("a", "action", {"actionKey": "c"}),
                                step("b", "transform", {"output": "{{ steps.a.body.ok }}"}),
                                step("call", "action", {"actionKey": "g"})])
    counted = Database(migrate.as_role(app_url, migrate.WORKER_ROLE), min_size=1, max_size=2, timeout=5)
    counted.open(wait=True)
    try:
        w = engine.worker(config, counted, concurrency=1, poll_seconds=10)
        w.maintain()
        run = execute(api, org, user, flow)["executionId"]
        before = counted.counts.snapshot()
        w.run(stop_after_idle=True)
        after = counted.counts.snapshot()
    finally:
        counted.close()
    spent = {k: after[k] - before[k] for k in after}
    # Exactly what the same run cost before budgets (measured on the tree before them): two claims, a
    # checkpoint before each call (now with its take from the budget) and one at the finish, and the
    # credential's reads, the action's own.
    assert spent["round_trips"] <= 8 and spent["statements"] <= 16, spent
    assert run_row(db, run)["status"] == "completed"
    with db.pool.connection() as conn:  # nothing declared, nothing learned: no budget row was written
        assert conn.execute("select count(*) as n from tool_rate_budgets").fetchone()["n"] == 0


def test_foreach_items_wait_for_the_budget_each_alone(api, org, user, worker, server, db, clock):
    server.expect_request("/call").respond_with_json({"ok": True})
    tool = rated_tool(api, org, server.url_for("/").rstrip("/"), {"requests": 1, "perSeconds": 600})
    api.create("/actions", org, {"toolId": tool["id"], "name": "g", "key": "g", "method": "GET", "endpoint": "/call"})
    flow = api.flow(org, steps=[step("each", "foreach", {
        "items": [1, 2, 3], "concurrency": 3, "step": {"type": "action", "config": {"actionKey": "g"}}})])
    execution_id = execute(api, org, user, flow)["executionId"]

    def items():
        with db.pool.connection() as conn:
            return conn.execute("select step_id, status, attempt, inputs from flow_run_steps "
                                "where run_id = %s and step_id like 'each[%%' order by step_id",
                                (execution_id,)).fetchall()

    wait_until(lambda: sorted(i["status"] for i in items()) == ["completed", "waiting", "waiting"], 15,
               "one item to go and two to wait")
    assert run_row(db, execution_id)["status"] == "queued"  # the run holds no thread while its items wait
    assert all(i["inputs"]["rateLimit"]["reserved"] for i in items() if i["status"] == "waiting")
    for done_before in (1, 2):
        clock.move(601)
        # Until the item that called has checkpointed its end, not merely until the stub saw its call: the
        # next move of the clock would otherwise expire the lease the item still needs for that checkpoint
        # (on a loaded machine the gap is long enough), its worker would lose the run, and the item, sent
        # again, would wait for a later slot no move of the clock brings.
        wait_until(lambda n=done_before: sum(i["status"] == "completed" for i in items()) == n + 1, 15,
                   "the next reserved slot's item done")
    done = wait_for(api, org, flow, execution_id)
    assert done["status"] == "completed", done
    assert [i["attempt"] for i in items()] == [1, 1, 1]
    assert len([r for r, _ in server.log if r.path == "/call"]) == 3
