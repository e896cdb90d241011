"""One step path: a top-level step and a foreach item are run by the same code (render, the kind's
work through one table of step kinds, the call's checkpoint, the outcome), so the same fault ends
the same way for both. Each fault here is caused for real (an upstream's answer, a template, a
statement cancelled by PostgreSQL, a worker killed with SIGKILL) on a step and on an item alike,
and their endings are compared; then every step kind is run both ways through the one table."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
from test_engine import execute, step, wait_for
from test_worker_processes import log_tail, start_worker, stop, wait_until
from werkzeug import Response

from tolstoy import engine
from tolstoy.api import flow_steps
from tolstoy.engine import runner

ENDED = ("completed", "failed", "cancelled", "waiting")


class Calls:
    """A tool that records each call's Idempotency-Key; ``answer(attempt, seen)`` gives the status to
    answer, and ``hold`` keeps every call of attempt 1 waiting until ``release`` is set."""

    def __init__(self, answer=lambda attempt, seen: 200, hold: bool = False):
        self.keys: list[str] = []
        self.answer = answer
        self.hold = hold
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, request):
        key = request.headers.get("Idempotency-Key") or "::0"
        attempt = int(key.rsplit(":", 1)[1])
        with self.lock:
            self.keys.append(key)
            seen = sum(1 for k in self.keys if k == key)
        if self.hold and attempt == 1 and seen == 1:
            self.entered.release()
            self.release.wait(30)
        return Response(json.dumps({"key": key}), status=self.answer(attempt, seen), content_type="application/json")

    def of(self, execution_id: str) -> list[str]:
        """The calls a run made, as '<site>:<attempt>' with its run's id left out."""
        return [k.split(":", 1)[1] for k in self.keys if k.startswith(execution_id)]


def pair(api, org, user, item_step: dict) -> dict:
    """The same step run as a top-level step ``x`` and as the one item of a foreach ``each``:
    {checkpoint id: (flow, execution id)}."""
    top = api.flow(org, steps=[{"id": "x", **item_step}])
    each = api.flow(org, steps=[step("each", "foreach", {"items": ["one"], "step": item_step})])
    return {"x": (top, execute(api, org, user, top)["executionId"]),
            "each[0]": (each, execute(api, org, user, each)["executionId"])}


def ending(api, org, runs: dict, calls: Calls, timeout: float = 30) -> dict:
    """How each run of ``pair`` ended, in terms that do not name its site: the run's status, its
    step's (or item's) checkpoint and the calls it made."""
    found = {}
    for checkpoint_id, (flow, execution_id) in runs.items():
        run = wait_for(api, org, flow, execution_id, statuses=ENDED, timeout=timeout)
        row = {s["stepId"]: s for s in run["steps"]}.get(checkpoint_id) or {}
        error = row.get("error") or {}
        found[checkpoint_id] = {
            "run": run["status"], "status": row.get("status"), "attempt": row.get("attempt"),
            "error": error.get("name"), "message": error.get("message"),
            "output": (row.get("outputs") or {}).get("body") if row.get("status") == "completed" else None,
            "calls": [c.replace(checkpoint_id, "<site>") for c in calls.of(execution_id)],
        }
        if found[checkpoint_id]["output"]:  # the key the tool echoed names the site and the run
            found[checkpoint_id]["output"] = {"key": calls.of(execution_id)[-1].replace(checkpoint_id, "<site>")}
    return found


def blocked(db, waiting_on: str, count: int):
    """The worker's backends waiting on a lock in a statement that mentions ``waiting_on``."""
    def find():
        with db.pool.connection() as conn:
            rows = conn.execute("select pid from pg_stat_activity where usename = 'tolstoy_worker' "
                                "and wait_event_type = 'Lock' and query like %s",
                                (f"%{waiting_on}%",)).fetchall()
        return rows if len(rows) >= count else None
    return wait_until(find, 20, f"{count} statements to wait on {waiting_on}")


def cancelled_behind_a_lock(db, lock: str, start, waiting_on: str):
    """Hold ``lock`` (a LOCK TABLE statement), ``start()`` the runs, wait for two of the worker's
    statements (one per run) that mention ``waiting_on`` to queue behind it, cancel them as a statement
    timeout would (pg_cancel_backend), then let go; returns what ``start`` returned."""
    with db.pool.connection() as locker:
        with locker.transaction():
            locker.execute(lock)
            started = start()
            for row in blocked(db, waiting_on, 2):
                locker.execute("select pg_cancel_backend(%s)", (row["pid"],))
            time.sleep(0.2)
    return started


def post(server, path="/call", **extra) -> dict:
    return {"type": "http_request", "config": {"method": "POST", "url": server.url_for(path)}, **extra}


FAULTS = ["retryable 503", "retries spent", "4xx", "template error", "database fault before the call",
          "database fault in the call's checkpoint"]


@pytest.mark.parametrize("fault", FAULTS)
def test_the_same_fault_ends_a_step_and_an_item_the_same_way(api, org, user, worker, server, db, fault):
    retry = {"maxRetries": 1, "delayMs": 10, "backoffStrategy": "fixed"}
    if fault == "retryable 503":
        calls = Calls(lambda attempt, seen: 503 if attempt == 1 else 200)
        item_step = post(server, retryPolicy=retry)
    elif fault == "retries spent":
        calls = Calls(lambda attempt, seen: 503)
        item_step = post(server, retryPolicy=retry)
    elif fault == "4xx":
        calls = Calls(lambda attempt, seen: 422)
        item_step = post(server, retryPolicy=retry)
    elif fault == "template error":
        calls = Calls()
        item_step = {**post(server), "config": {"method": "POST", "url": server.url_for("/call"),
                                                "body": {"n": "{{ variables.nothing_here }}"}}}
    elif fault == "database fault before the call":
        # The credential's read (which records itself in secret_reads) is cancelled by PostgreSQL:
        # nothing was sent.
        calls = Calls()
        tool = api.tool(org, baseUrl=server.url_for("/"), authType="bearer")
        api.create(f"/tools/{tool['id']}/auth", org, {"name": "ci", "type": "bearer",
                                                      "config": {"token": "tok-abcdefghijk"}, "isDefault": True})
        action = api.action(org, tool, key="calls.post", method="POST", endpoint="/call")
        item_step = {"type": "action", "config": {"actionKey": action["key"], "inputs": {}}}
    else:
        calls = Calls()
        item_step = post(server)
    server.expect_request("/call").respond_with_handler(calls)
    if fault == "database fault before the call":
        runs = cancelled_behind_a_lock(db, "lock table secret_reads in exclusive mode",
                                       lambda: pair(api, org, user, item_step), "secret_reads")
    elif fault == "database fault in the call's checkpoint":
        # Checkpoints write flow_run_steps (claims only read it): the one that records each call as
        # starting waits on this lock, and is cancelled there.
        runs = cancelled_behind_a_lock(db, "lock table flow_run_steps in exclusive mode",
                                       lambda: pair(api, org, user, item_step), "tolstoy_checkpoint")
    else:
        runs = pair(api, org, user, item_step)
    found = ending(api, org, runs, calls)
    assert found["x"] == found["each[0]"], found
    # What that way is: a step's own faults as the flow says; a database fault never fails the run, and
    # sends the call once (how many attempts it costs is the engine's handling of database faults).
    expected = {
        "retryable 503": ("completed", "completed", ["<site>:1", "<site>:2"]),
        "retries spent": ("failed", "failed", ["<site>:1", "<site>:2"]),
        "4xx": ("failed", "failed", ["<site>:1"]),
        "template error": ("failed", "failed", []),
    }.get(fault)
    got = found["x"]
    if expected is None:
        assert (got["run"], got["status"], len(got["calls"])) == ("completed", "completed", 1), found
    else:
        assert (got["run"], got["status"], got["calls"]) == expected, found


def test_a_call_cut_off_by_a_dead_worker_ends_a_step_and_an_item_the_same_way(api, org, user, worker_env, server,
                                                                              clock):
    # A worker SIGKILLed while its calls are in flight: a POST waits for a person, a PUT is sent again
    # under its key, whether it was a step's call or an item's.
    calls = Calls(hold=True)
    server.expect_request("/call").respond_with_handler(calls)
    first = start_worker(worker_env, concurrency=4)
    second = None
    try:
        posts = pair(api, org, user, post(server))
        puts = pair(api, org, user, {**post(server), "config": {"method": "PUT", "url": server.url_for("/call")}})
        for _ in range(4):
            assert calls.entered.acquire(timeout=20), log_tail(first)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        calls.release.set()
        clock.move_past_leases()  # rather than wait for the dead worker's leases to run out
        second = start_worker(worker_env, concurrency=4)
        found_posts = ending(api, org, posts, calls)
        found_puts = ending(api, org, puts, calls)
    finally:
        calls.release.set()
        stop(first)
        if second is not None:
            stop(second)
    assert found_posts["x"] == found_posts["each[0]"], found_posts
    assert found_puts["x"] == found_puts["each[0]"], found_puts
    assert (found_posts["x"]["run"], found_posts["x"]["status"], found_posts["x"]["error"]) == \
        ("waiting", "outcome_unknown", "OutcomeUnknown")
    assert found_posts["x"]["calls"] == ["<site>:1"]
    assert (found_puts["x"]["run"], found_puts["x"]["status"], found_puts["x"]["calls"]) == \
        ("completed", "completed", ["<site>:1", "<site>:1"])


def test_every_step_kind_runs_through_the_one_table_as_a_step_and_as_an_item(
        api, org, user, worker, server, monkeypatch):
    # The class: whatever kinds the engine knows, each runs as a top-level step and (where a foreach may
    # run it) as an item, through the same Engine._attempt, and gives the same output both ways; the API
    # accepts exactly the kinds the table has, per item exactly those it marks so.
    server.expect_request("/get").respond_with_json({"ok": True})
    tool = api.tool(org, baseUrl=server.url_for("/"), authType="none")
    action = api.action(org, tool, key="kinds.get", method="GET", endpoint="/get")
    child = api.flow(org, steps=[step("leaf", "transform", {"output": "deep"})])
    samples = {
        "transform": ({"type": "transform", "config": {"output": {"n": 1}}}, {"n": 1}),
        "delay": ({"type": "delay", "config": {"ms": 20}}, {"delayedMs": 20}),
        "http_request": ({"type": "http_request", "config": {"method": "GET", "url": server.url_for("/get")}},
                         {"ok": True}),
        "action": ({"type": "action", "config": {"actionKey": action["key"], "inputs": {}}}, {"ok": True}),
        "wait": ({"type": "wait", "config": {"signal": "go", "timeoutMs": 50, "onTimeout": "continue"}},
                 {"timedOut": True}),
        "subflow": ({"type": "subflow", "config": {"flowId": child["id"]}}, {"leaf": "deep"}),
        "foreach": ({"type": "foreach", "config": {"items": [1, 2], "step": {
            "type": "transform", "config": {"output": "{{ item * 10 }}"}}}}, [10, 20]),
        "fail": ({"type": "fail", "config": {"message": "stop {{ 1 + 1 }}"}}, "stop 2"),
    }
    failing = {"fail"}  # kinds whose sample ends its run failed, with the message expected
    assert set(samples) == set(engine.STEP_TYPES), "a step kind without a sample here"
    assert set(engine.STEP_TYPES) == set(flow_steps.STEP_CONFIGS), "the API and the engine know other kinds"
    dispatched = []
    real = runner.Engine._attempt

    def spy(self, run, site, step_, done):
        dispatched.append((step_["type"], site.item))
        return real(self, run, site, step_, done)
    monkeypatch.setattr(runner.Engine, "_attempt", spy)

    def shown(output):  # what a calling step returned: its body is what the sample compares
        return output["body"] if isinstance(output, dict) and "body" in output else output
    for kind, (definition, expected) in samples.items():
        top = api.flow(org, steps=[{"id": "x", **definition}])
        run = wait_for(api, org, top, execute(api, org, user, top)["executionId"])
        if kind in failing:
            assert run["status"] == "failed" and run["error"]["message"] == expected, (kind, run)
        else:
            assert run["status"] == "completed" and shown(run["outputs"]["x"]) == expected, (kind, run)
        if kind in engine.ITEM_STEP_TYPES:
            each = api.flow(org, steps=[step("each", "foreach", {"items": ["a"], "step": definition})])
            run = wait_for(api, org, each, execute(api, org, user, each)["executionId"])
            if kind in failing:
                assert run["status"] == "failed" and run["error"]["message"] == f"Item 0 failed: {expected}", \
                    (kind, run)
            else:
                assert run["status"] == "completed" and [shown(o) for o in run["outputs"]["each"]] == [expected], \
                    (kind, run)
        else:
            refused = api.client.simulate_post("/flows", json={"name": "F", "steps": [
                step("each", "foreach", {"items": ["a"], "step": definition})]}, headers=api.headers(org))
            assert refused.status_code == 400, (kind, refused.text)
            assert "steps[0].config.step.type" in {e["field"] for e in refused.json["errors"]}, refused.text
    assert {k for k, item in dispatched if not item} == set(engine.STEP_TYPES)
    assert {k for k, item in dispatched if item} == set(engine.ITEM_STEP_TYPES)


def test_a_kind_no_foreach_may_run_fails_its_item_with_a_clear_error(api, org, user, config, worker_db, db):
    # A plan written past the API (an older version's, or by hand): the engine's own table refuses it.
    flow = api.flow(org, steps=[step("each", "foreach", {"items": [1], "step": {
        "type": "transform", "config": {"output": 1}}})])
    execution_id = execute(api, org, user, flow)["executionId"]
    with db.pool.connection() as conn:
        conn.execute("update flow_runs set plan = jsonb_set(plan, '{steps,0,config,step}', %s::jsonb) "
                     "where id = %s", (json.dumps({"type": "wait", "config": {"signal": "go"}}), execution_id))
    engine.worker(config, worker_db, concurrency=1, poll_seconds=0.1).run(stop_after_idle=True)
    run = wait_for(api, org, flow, execution_id)
    assert run["status"] == "failed", run
    item = {s["stepId"]: s for s in run["steps"]}["each[0]"]
    assert item["status"] == "failed"
    assert item["error"]["message"] == "A wait step cannot run per item of a foreach step", item
