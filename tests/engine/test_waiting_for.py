"""Why a run waits, at a glance (issue 25): a parked run says so itself (``waitingFor`` in the run view
and the run list) whatever parked it (a wait step, a delay, a retry's back-off, an unknown outcome, a
child run), with since and until where known; it is cleared when the run goes on; the run list filters
by it (one index range, no more round trips) and /metrics counts parked runs by reason."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from support import scrape, value
from test_engine import execute, step, wait_for
from test_wait_signals import run_of, send, until_waiting
from werkzeug import Response

from tolstoy import engine


def until_parked(api, org, flow, run_id, kind, timeout=15.0):
    """The run once its waitingFor names ``kind``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = run_of(api, org, flow, run_id)
        if (run.get("waitingFor") or {}).get(kind, False) is not False:
            return run
        time.sleep(0.05)
    pytest.fail(f"run {run_id} never waited for {kind}: {run}")


def listed(api, org, flow, **params):
    result = api.client.simulate_get(f"/flows/{flow['id']}/executions", params=params, headers=api.headers(org))
    assert result.status_code == 200, result.text
    return {run["executionId"]: run for run in result.json}


def steps_of(run):
    return {s["stepId"]: s for s in run["steps"]}


def cancel(api, org, flow, run_id):
    result = api.client.simulate_post(f"/flows/{flow['id']}/executions/{run_id}/cancel", headers=api.headers(org))
    assert result.status_code == 202, result.text
    return result.json


def test_a_run_parked_on_a_wait_step_says_it_waits_for_the_signal_until_it_is_sent(api, org, user, worker):
    flow = api.flow(org, steps=[step("gate", "wait", {"signal": "approval", "timeoutMs": 60_000}),
                                step("after", "transform", {"output": 1})])
    run_id = execute(api, org, user, flow)["executionId"]
    run = until_waiting(api, org, flow, run_id)
    gate = steps_of(run)["gate"]
    # The status keeps its meaning (a wait step's run is queued); waitingFor says why.
    assert run["status"] == "queued"
    assert run["waitingFor"] == {"signal": "approval", "stepId": "gate", "since": gate["startedAt"],
                                 "until": gate["wakeAt"]}
    assert listed(api, org, flow)[run_id]["waitingFor"] == run["waitingFor"]
    assert list(listed(api, org, flow, waitingFor="signal")) == [run_id]
    for other in ("delay", "outcomeUnknown", "child", "retry", "rateLimit"):
        assert listed(api, org, flow, waitingFor=other) == {}

    assert send(api, org, flow, run_id, payload="ok").status_code == 202
    done = wait_for(api, org, flow, run_id)
    assert done["status"] == "completed" and done["waitingFor"] is None
    assert listed(api, org, flow, waitingFor="signal") == {}


def test_a_signal_clears_it_at_once_before_a_worker_takes_the_run(api, org, user, config, worker_db):
    """Woken by its signal, the run is due, not parked: it no longer says it waits, even before a worker
    claims it (no worker runs here once it parked)."""
    flow = api.flow(org, steps=[step("gate", "wait", {"signal": "approval", "timeoutMs": 60_000})])
    run_id = execute(api, org, user, flow)["executionId"]
    lone = engine.worker(config, worker_db, concurrency=1, poll_seconds=0.1)
    thread = threading.Thread(target=lone.run, daemon=True)
    thread.start()
    try:
        assert until_parked(api, org, flow, run_id, "signal")["waitingFor"]["signal"] == "approval"
    finally:
        lone.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert send(api, org, flow, run_id, payload=1).status_code == 202
    run = run_of(api, org, flow, run_id)
    assert run["status"] == "queued" and run["waitingFor"] is None, run
    assert listed(api, org, flow, waitingFor="signal") == {}


def test_a_signals_wait_names_its_signals(api, org, user, worker):
    flow = api.flow(org, steps=[step("gate", "wait", {"signals": ["approve", "reject"], "timeoutMs": 60_000})])
    run_id = execute(api, org, user, flow)["executionId"]
    run = until_parked(api, org, flow, run_id, "signal")
    assert run["waitingFor"]["signal"] == ["approve", "reject"] and run["waitingFor"]["stepId"] == "gate"
    cancel(api, org, flow, run_id)
    assert run_of(api, org, flow, run_id)["waitingFor"] is None


def test_a_delay_and_a_retrys_back_off_say_until_when(api, org, user, worker, server):
    server.expect_request("/flaky").respond_with_response(Response("no", status=503))
    delayed = api.flow(org, steps=[step("pause", "delay", {"ms": 3_600_000})])
    retried = api.flow(org, steps=[step("call", "http_request", {"method": "GET", "url": server.url_for("/flaky")},
                                        retryPolicy={"maxRetries": 3, "backoffStrategy": "fixed",
                                                     "delayMs": 3_600_000})])
    delay_id = execute(api, org, user, delayed)["executionId"]
    retry_id = execute(api, org, user, retried)["executionId"]
    run = until_parked(api, org, delayed, delay_id, "delay")
    pause = steps_of(run)["pause"]
    assert run["status"] == "queued"
    assert run["waitingFor"] == {"delay": "pause", "stepId": "pause", "since": pause["startedAt"],
                                 "until": pause["wakeAt"]}
    run = until_parked(api, org, retried, retry_id, "retry")
    call = steps_of(run)["call"]
    assert run["waitingFor"] == {"retry": "call", "stepId": "call", "since": call["startedAt"],
                                 "until": call["wakeAt"]}
    assert list(listed(api, org, delayed, waitingFor="delay")) == [delay_id]
    assert list(listed(api, org, retried, waitingFor="retry")) == [retry_id]
    assert listed(api, org, retried, waitingFor="delay") == {}
    for flow, run_id in ((delayed, delay_id), (retried, retry_id)):
        cancel(api, org, flow, run_id)
        assert run_of(api, org, flow, run_id)["waitingFor"] is None


def test_a_parent_says_it_waits_for_its_child_and_the_child_why_it_waits(api, org, user, worker):
    child = api.flow(org, steps=[step("gate", "wait", {"signal": "go", "timeoutMs": 60_000})])
    parent = api.flow(org, steps=[step("call", "subflow", {"flowId": child["id"], "wait": True}),
                                  step("after", "transform", {"output": "{{ steps.call.gate }}"})])
    parent_id = execute(api, org, user, parent)["executionId"]
    run = until_parked(api, org, parent, parent_id, "child")
    child_id = steps_of(run)["call"]["childExecutionId"]
    assert run["status"] == "waiting"
    assert run["waitingFor"] == {"child": child_id, "stepId": "call", "since": steps_of(run)["call"]["startedAt"],
                                 "until": None}
    assert list(listed(api, org, parent, waitingFor="child")) == [parent_id]
    assert until_parked(api, org, child, child_id, "signal")["waitingFor"]["signal"] == "go"
    assert send(api, org, child, child_id, name="go", payload="went").status_code == 202
    done = wait_for(api, org, parent, parent_id)
    assert done["status"] == "completed" and done["outputs"]["after"] == "went" and done["waitingFor"] is None


def test_a_run_waiting_on_an_unknown_outcome_names_the_step(api, org, user, worker_db, config, db, server):
    """A worker died during the call (its lease expired with the step's call started): the next worker
    parks the run for a person, and the run says so; resolving it clears it."""
    server.expect_request("/charge").respond_with_data("{}", content_type="application/json")
    flow = api.flow(org, steps=[step("charge", "http_request", {"method": "POST", "url": server.url_for("/charge")}),
                                step("receipt", "transform", {"output": "paid"})])
    run_id = execute(api, org, user, flow)["executionId"]
    with db.pool.connection() as conn:
        conn.execute("update flow_runs set status = 'running', lease_owner = 'gone', lease_token = 1, claims = 1, "
                     "lease_expires_at = tolstoy_now() - interval '1 second' where id = %s", (run_id,))
        conn.execute("insert into flow_run_steps (org_id, run_id, run_created_at, step_id, status, attempt, "
                     "                            call_started_at) "
                     "select org_id, id, created_at, 'charge', 'running', 1, tolstoy_now() - interval '1 minute' "
                     "from flow_runs where id = %s", (run_id,))
    engine.worker(config, worker_db, concurrency=1).run(stop_after_idle=True)
    run = run_of(api, org, flow, run_id)
    assert run["status"] == "waiting" and steps_of(run)["charge"]["status"] == "outcome_unknown", run
    assert run["waitingFor"]["outcomeUnknown"] == "charge" and run["waitingFor"]["stepId"] == "charge"
    assert run["waitingFor"]["since"] is not None and run["waitingFor"]["until"] is None
    assert list(listed(api, org, flow, waitingFor="outcomeUnknown")) == [run_id]
    resolved = api.client.simulate_post(f"/flows/{flow['id']}/executions/{run_id}/steps/charge/resolve",
                                        json={"outcome": "succeeded", "outputs": {"id": 1}},
                                        headers=api.headers(org, user))
    assert resolved.status_code == 202, resolved.text
    after = run_of(api, org, flow, run_id)
    assert after["status"] == "queued" and after["waitingFor"] is None, after
    assert listed(api, org, flow, waitingFor="outcomeUnknown") == {}


def test_the_filter_is_checked_and_tenant_scoped(api, org, user):
    flow = api.flow(org)
    for bad in ("nothing", "SIGNAL", ""):
        result = api.client.simulate_get(f"/flows/{flow['id']}/executions", params={"waitingFor": bad},
                                         headers=api.headers(org))
        assert result.status_code == 400, result.text
        assert [e["field"] for e in result.json["errors"]] == ["waitingFor"]
    other = api.org("Other")
    result = api.client.simulate_get(f"/flows/{flow['id']}/executions", params={"waitingFor": "signal"},
                                     headers=api.headers(other))
    assert result.status_code == 404
    # A fresh run is not parked: null, not omitted.
    run_id = execute(api, org, user, flow)["executionId"]
    assert run_of(api, org, flow, run_id)["waitingFor"] is None
    assert listed(api, org, flow)[run_id]["waitingFor"] is None
    assert listed(api, org, flow, waitingFor="signal", parentExecutionId=str(uuid.uuid4())) == {}


def test_metrics_count_parked_runs_by_reason(api, org, user, worker):
    flow = api.flow(org, steps=[step("gate", "wait", {"signal": "approval", "timeoutMs": 60_000})])
    before = scrape(api.client)
    for kind in engine.WAITING_KINDS:
        assert ("tolstoy_flow_runs_parked", frozenset({("waiting_for", kind)})) in before
    run_ids = [execute(api, org, user, flow)["executionId"] for _ in range(2)]
    for run_id in run_ids:
        until_parked(api, org, flow, run_id, "signal")
    during = scrape(api.client)
    assert value(during, "tolstoy_flow_runs_parked", waiting_for="signal") - \
        value(before, "tolstoy_flow_runs_parked", waiting_for="signal") == 2
    for run_id in run_ids:
        cancel(api, org, flow, run_id)
    after = scrape(api.client)
    assert value(after, "tolstoy_flow_runs_parked", waiting_for="signal") == \
        value(before, "tolstoy_flow_runs_parked", waiting_for="signal")
