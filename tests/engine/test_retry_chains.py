"""What a retry shares with the run it retries, and what it does not: a retry chain (a run and its
retries) has one child run per subflow step, ever, so retrying a parent whose child is still running
waits for that child instead of starting a second one; a step's Idempotency-Keys are the chain's
(a call in flight is sent again under its key), and failure handlers' keys are each run's own (a
retry that fails alerts again). The receivers here honour keys, as a payment API does."""

from __future__ import annotations

import threading

import pytest
from test_engine import execute, step, wait_for
from test_subflow import children, run_view, subflow
from test_worker_processes import run_status, wait_until
from werkzeug import Response

from tolstoy import engine


class Receiver:
    """A tool that honours Idempotency-Key: the first request under a key takes effect, a repeat gets
    the same answer and does nothing. ``hold`` makes the first request wait until ``release``."""

    def __init__(self, hold: bool = False):
        self.keys: list[str] = []
        self.effects: list[dict] = []
        self.entered = threading.Event()
        self.released = threading.Event()
        self.hold = hold
        self.lock = threading.Lock()

    def __call__(self, request):
        key = request.headers.get("Idempotency-Key")
        with self.lock:
            self.keys.append(key)
            first = len(self.keys) == 1
            if key not in {e["key"] for e in self.effects}:
                self.effects.append({"key": key, "body": request.get_json(silent=True)})
        if first and self.hold:
            self.entered.set()
            self.released.wait(30)
        return Response('{"id": "ch_1"}', content_type="application/json")


@pytest.fixture
def patient_worker(config, worker_db):
    """An in-process worker whose heartbeat comes only every 10 s (a 30 s lease): a child cancelled
    with its parent goes on running until its next checkpoint, as one in a long call does."""
    w = engine.worker(config, worker_db, concurrency=4, poll_seconds=0.1, lease_seconds=30)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    yield w
    w.stop()
    thread.join(timeout=15)


def test_a_retried_parent_waits_for_its_cancelled_child_instead_of_starting_a_second(
        api, org, user, patient_worker, server, db):
    charges = Receiver(hold=True)
    server.expect_request("/charge", method="POST").respond_with_handler(charges)
    child = api.flow(org, steps=[
        step("charge", "http_request", {"method": "POST", "url": server.url_for("/charge")}, timeoutMs=60000),
        step("nap", "delay", {"ms": 50}),
        step("receipt", "transform", {"output": "paid {{ steps.charge.body.id }}"}),
    ])
    parent = api.flow(org, steps=[subflow("pay", child), step("after", "transform", {"output": "{{ steps.pay.receipt }}"})])
    execution_id = execute(api, org, user, parent)["executionId"]
    try:
        assert charges.entered.wait(20), "the child never charged"
        [kid] = children(db, execution_id)
        cancelled = api.client.simulate_post(f"/flows/{parent['id']}/executions/{execution_id}/cancel",
                                             headers=api.headers(org))
        assert cancelled.status_code == 202 and cancelled.json["status"] == "cancelled", cancelled.text
        assert run_status(db, kid["id"]) == "running"  # cancel asked for; it learns of it at its next checkpoint
        retried = api.client.simulate_post(f"/flows/{parent['id']}/executions/{execution_id}/retry",
                                           headers=api.headers(org, user))
        assert retried.status_code == 202, retried.text
        retry_id = retried.json["executionId"]
        wait_until(lambda: run_status(db, retry_id) == "waiting", 20, "the retry to reach its subflow step")
        # The retry waits for the child its chain started; it starts none of its own meanwhile.
        assert children(db, retry_id) == [] and run_status(db, kid["id"]) == "running"
        assert charges.keys == [f"{kid['id']}:charge:1"]
    finally:
        charges.released.set()
    done = wait_for(api, org, parent, retry_id, timeout=30)
    assert done["status"] == "completed", done
    assert done["outputs"]["after"] == "paid ch_1"
    assert run_status(db, kid["id"]) == "cancelled"  # it ended at its next checkpoint, the charge kept
    [second] = children(db, retry_id)
    assert run_view(api, org, child, second["id"])["retryOf"] == kid["id"]
    assert charges.keys == [f"{kid['id']}:charge:1"]  # charged once: the retry kept the completed charge
    assert len(charges.effects) == 1


def test_a_retry_of_a_parent_continues_its_childs_chain_not_a_new_one(api, org, user, worker, server, db):
    # The parent's retry finds the child's chain through every run of its own chain: here the child was
    # retried by hand (a run with no parent) before the parent was; the parent's retry continues from that
    # retry, so what it did is not done again under other keys.
    calls = Receiver()
    flaky = {"n": 0}

    def fail_twice(request):
        flaky["n"] += 1
        return Response("{}", status=500 if flaky["n"] <= 2 else 200, content_type="application/json")

    server.expect_request("/charge", method="POST").respond_with_handler(calls)
    server.expect_request("/ship", method="PUT").respond_with_handler(fail_twice)
    child = api.flow(org, steps=[
        step("charge", "http_request", {"method": "POST", "url": server.url_for("/charge")}),
        step("ship", "http_request", {"method": "PUT", "url": server.url_for("/ship")}),
    ])
    parent = api.flow(org, steps=[subflow("pay", child)])
    execution_id = execute(api, org, user, parent)["executionId"]
    assert wait_for(api, org, parent, execution_id)["status"] == "failed"
    [kid] = children(db, execution_id)
    by_hand = api.client.simulate_post(f"/flows/{child['id']}/executions/{kid['id']}/retry",
                                       headers=api.headers(org, user)).json["executionId"]
    assert wait_for(api, org, child, by_hand)["status"] == "failed"  # ship failed a second time
    retried = api.client.simulate_post(f"/flows/{parent['id']}/executions/{execution_id}/retry",
                                       headers=api.headers(org, user)).json["executionId"]
    done = wait_for(api, org, parent, retried)
    assert done["status"] == "completed", done
    [second] = children(db, retried)
    assert run_view(api, org, child, second["id"])["retryOf"] == by_hand
    assert calls.keys == [f"{kid['id']}:charge:1"] and flaky["n"] == 3


def test_a_retry_that_fails_again_alerts_again_under_keys_of_its_own(api, org, user, worker, server, db):
    alerts = Receiver()
    server.expect_request("/alert", method="POST").respond_with_handler(alerts)
    server.expect_request("/sync", method="POST").respond_with_json({"error": "down"}, status=500)
    pager = api.flow(org, steps=[step("page", "http_request", {
        "method": "POST", "url": server.url_for("/alert"), "body": {"via": "child"}})])
    flow = api.flow(org, steps=[step("sync", "http_request", {"method": "POST", "url": server.url_for("/sync")})],
                    onFailure=[step("notify", "http_request", {"method": "POST", "url": server.url_for("/alert"),
                                                               "body": {"via": "step"}}),
                               subflow("escalate", pager)])
    first = execute(api, org, user, flow)["executionId"]
    assert wait_for(api, org, flow, first)["status"] == "failed"
    second = api.client.simulate_post(f"/flows/{flow['id']}/executions/{first}/retry",
                                      headers=api.headers(org, user)).json["executionId"]
    assert wait_for(api, org, flow, second)["status"] == "failed"
    # Each failed run alerted, directly and through its own child run, under keys of its own.
    assert sorted(e["body"]["via"] for e in alerts.effects) == ["child", "child", "step", "step"], alerts.keys
    direct = [k for k in alerts.keys if ":onFailure.notify:" in k]
    assert direct == [f"{first}:onFailure.notify:1", f"{second}:onFailure.notify:1"]
    pagers = [children(db, run) for run in (first, second)]
    assert [len(p) for p in pagers] == [1, 1] and pagers[0][0]["id"] != pagers[1][0]["id"]
    assert run_view(api, org, pager, pagers[1][0]["id"])["retryOf"] is None  # a run of its own, not a retry
