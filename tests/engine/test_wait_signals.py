"""wait steps and signals (the API and approval links), and flow-level onFailure: a waiting run
holds no worker thread, wakes on its signal (stored in the transaction that wakes it), times out
as configured, survives its worker; a failing run's onFailure steps run once, see the error, and
never hide it."""

from __future__ import annotations

import datetime as dt
import signal as signals
import threading
import time

import pytest
from support import scrape, value
from test_engine import execute, logs_of, step, wait_for
from test_worker_processes import log_tail, start_worker, stop, wait_until
from werkzeug import Response

from tolstoy import engine
from tolstoy.api.signals import link_key, sign_link


def wait_step(step_id="gate", signal="approval", **config):
    return step(step_id, "wait", {"signal": signal, **config})


def run_of(api, org, flow, execution_id):
    return api.client.simulate_get(f"/flows/{flow['id']}/executions/{execution_id}", headers=api.headers(org)).json


def until_waiting(api, org, flow, execution_id, step_id="gate", timeout=15.0):
    """The run once its wait step is parked for a signal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = run_of(api, org, flow, execution_id)
        steps = {s["stepId"]: s for s in run["steps"]}
        if run["status"] == "queued" and steps.get(step_id, {}).get("waitingFor"):
            return run
        time.sleep(0.05)
    pytest.fail(f"run {execution_id} never waited in {step_id}: {run}")


def send(api, org, flow, execution_id, name="approval", payload=None, key=None, user=None):
    headers = {**api.headers(org, user), **({"Idempotency-Key": key} if key else {})}
    return api.client.simulate_post(f"/flows/{flow['id']}/executions/{execution_id}/signals/{name}",
                                    json={"payload": payload}, headers=headers)


def count(db, sql, *args):
    with db.pool.connection() as conn:
        return next(iter(conn.execute(sql, args).fetchone().values()))


def test_a_signal_is_the_wait_steps_output_and_a_repeated_key_delivers_once(api, org, user, worker, db):
    flow = api.flow(org, steps=[
        wait_step(timeoutMs=60_000),
        step("after", "transform", {"output": "{{ steps.gate.ok }} by {{ steps.gate.who }}"}),
    ])
    run_id = execute(api, org, user, flow)["executionId"]
    run = until_waiting(api, org, flow, run_id)
    gate = {s["stepId"]: s for s in run["steps"]}["gate"]
    assert gate["status"] == "waiting" and gate["phase"] == "main"
    assert gate["waitingFor"]["signal"] == "approval"
    assert gate["waitingFor"]["since"] == gate["startedAt"] and gate["waitingFor"]["timeoutAt"] == gate["wakeAt"]
    before = scrape(api.client)

    first = send(api, org, flow, run_id, payload={"ok": "yes", "who": "ada"}, key="k-1", user=user)
    assert first.status_code == 202, first.text
    again = send(api, org, flow, run_id, payload={"ok": "other"}, key="k-1", user=user)
    assert again.status_code == 202 and again.json == first.json  # the same answer, no second delivery
    assert first.json["executionId"] == run_id and first.json["signal"] == "approval"

    run = wait_for(api, org, flow, run_id)
    assert run["status"] == "completed", run
    assert run["outputs"]["gate"] == {"ok": "yes", "who": "ada"}
    assert run["outputs"]["after"] == "yes by ada"
    assert count(db, "select count(*) from flow_run_signals where run_id = %s", run_id) == 1
    assert count(db, "select count(*) from flow_run_signals where run_id = %s and step_id = 'gate'", run_id) == 1
    logs = logs_of(api, org, run_id)
    received = [log for log in logs if log["stepKey"] == "$flow" and log["inputs"].get("signal") == "approval"]
    assert len(received) == 1 and received[0]["status"] == "pending"
    assert received[0]["inputs"]["signalId"] == first.json["signalId"]
    gate_logs = [log["status"] for log in logs if log["stepKey"] == "gate"]
    assert gate_logs == ["pending", "completed"]
    assert value(scrape(api.client), "tolstoy_signals_total", source="api") - \
        value(before, "tolstoy_signals_total", source="api") == 1

    # Finished: no more signals.
    late = send(api, org, flow, run_id, payload=1, key="k-2")
    assert late.status_code == 409 and "finished" in late.json["message"]


def test_signals_are_tenant_checked_and_refused_where_no_wait_step_can_take_them(api, org, user):
    flow = api.flow(org, steps=[wait_step(timeoutMs=60_000)])
    run_id = execute(api, org, user, flow)["executionId"]  # no worker: the run stays queued
    other = api.org("Other")
    assert send(api, other, flow, run_id).status_code == 404
    assert send(api, org, flow, "6f1c1a2e-0000-4000-8000-000000000000").status_code == 404
    assert send(api, org, flow, run_id, name="bad name!").status_code == 404
    wrong = send(api, org, flow, run_id, name="other")
    assert wrong.status_code == 409 and "not waiting for the signal 'other'" in wrong.json["message"]
    unknown = api.client.simulate_post(f"/flows/{flow['id']}/executions/{run_id}/signals/approval",
                                       json={"payload": 1, "extra": 2}, headers=api.headers(org))
    assert unknown.status_code == 400 and unknown.json["errors"][0]["field"] == "extra"
    # Sent before the run reaches its wait step: kept (one per wait step), taken when it gets there.
    assert send(api, org, flow, run_id, payload={"early": True}).status_code == 202
    second = send(api, org, flow, run_id, payload={"early": 2})
    assert second.status_code == 409 and "pending already" in second.json["message"]
    # Cancelled while waiting: at once; then no signal.
    cancel = api.client.simulate_post(f"/flows/{flow['id']}/executions/{run_id}/cancel", headers=api.headers(org))
    assert cancel.status_code == 202 and cancel.json["status"] == "cancelled"
    assert send(api, org, flow, run_id).status_code == 409


def test_a_signal_sent_early_is_taken_when_the_run_gets_there(api, org, user, worker):
    flow = api.flow(org, steps=[step("pause", "delay", {"ms": 700}), wait_step(timeoutMs=60_000)])
    run_id = execute(api, org, user, flow)["executionId"]
    assert send(api, org, flow, run_id, payload={"early": True}).status_code == 202
    run = wait_for(api, org, flow, run_id)
    assert run["status"] == "completed" and run["outputs"]["gate"] == {"early": True}
    pause = {s["stepId"]: s for s in run["steps"]}["pause"]
    assert pause["status"] == "completed"


def test_timeouts_fail_or_continue(api, org, user, worker):
    before = scrape(api.client)
    failing = api.flow(org, steps=[wait_step(timeoutMs=300), step("never", "transform", {"output": 1})])
    going_on = api.flow(org, steps=[wait_step(timeoutMs=300, onTimeout="continue"),
                                    step("after", "transform", {"output": "{{ steps.gate.timedOut }}"})])
    failed = wait_for(api, org, failing, execute(api, org, user, failing)["executionId"])
    assert failed["status"] == "failed", failed
    assert failed["error"]["stepId"] == "gate" and failed["error"]["name"] == "WaitTimedOut"
    assert "waiting for the signal 'approval'" in failed["error"]["message"]
    went_on = wait_for(api, org, going_on, execute(api, org, user, going_on)["executionId"])
    assert went_on["status"] == "completed", went_on
    assert went_on["outputs"] == {"gate": {"timedOut": True}, "after": True}
    after = scrape(api.client)
    for on_timeout in ("fail", "continue"):
        assert value(after, "tolstoy_wait_timeouts_total", on_timeout=on_timeout) - \
            value(before, "tolstoy_wait_timeouts_total", on_timeout=on_timeout) == 1


def test_a_waiting_run_holds_no_worker_thread(api, org, user, config, worker_db):
    lone = engine.worker(config, worker_db, concurrency=1, poll_seconds=0.1)
    thread = threading.Thread(target=lone.run, daemon=True)
    thread.start()
    try:
        waiting = api.flow(org, steps=[wait_step(timeoutMs=60_000)])
        quick = api.flow(org)
        waiting_id = execute(api, org, user, waiting)["executionId"]
        until_waiting(api, org, waiting, waiting_id)
        for _ in range(3):  # the only thread is free while the first run waits
            assert wait_for(api, org, quick, execute(api, org, user, quick)["executionId"],
                            timeout=10)["status"] == "completed"
        assert send(api, org, waiting, waiting_id, payload="go").status_code == 202
        run = wait_for(api, org, waiting, waiting_id, timeout=10)
        assert run["status"] == "completed" and run["outputs"]["gate"] == "go"
    finally:
        lone.stop()
        thread.join(timeout=10)


def test_a_run_waiting_when_its_worker_is_killed_completes_on_its_signal(api, org, user, worker_env, db):
    flow = api.flow(org, steps=[step("first", "transform", {"output": 1}), wait_step(timeoutMs=60_000),
                                step("after", "transform", {"output": "{{ steps.gate.n + steps.first }}"})])
    first = start_worker(worker_env)
    second = None
    try:
        run_id = execute(api, org, user, flow)["executionId"]
        until_waiting(api, org, flow, run_id, timeout=30)
        first.send_signal(signals.SIGKILL)
        first.wait(timeout=10)
        second = start_worker(worker_env)
        assert send(api, org, flow, run_id, payload={"n": 41}).status_code == 202
        wait_until(lambda: run_of(api, org, flow, run_id)["status"] == "completed", 30,
                   "the run to complete on the second worker")
        assert run_of(api, org, flow, run_id)["outputs"]["after"] == 42
    except BaseException:
        print(log_tail(first), log_tail(second) if second else "")
        raise
    finally:
        stop(first)
        if second is not None:
            stop(second)


# ---- approval links ------------------------------------------------------------------------

def make_link(api, org, flow, run_id, **body):
    result = api.client.simulate_post(f"/flows/{flow['id']}/executions/{run_id}/signals/approval/links",
                                      json=body, headers=api.headers(org))
    assert result.status_code == 201, result.text
    return result.json


def test_an_approval_link_approves_once_without_credentials(api, org, user, worker, db):
    flow = api.flow(org, steps=[wait_step(timeoutMs=60_000),
                                step("after", "transform", {"output": "{{ steps.gate.approved }}"})])
    run_id = execute(api, org, user, flow)["executionId"]
    until_waiting(api, org, flow, run_id)
    link = make_link(api, org, flow, run_id, approver="alice@example.com", expiresInSeconds=3600)
    assert link["url"].startswith("/approvals/") and link["approver"] == "alice@example.com"
    assert link["expiresAt"].endswith("Z") and link["executionId"] == run_id

    seen = api.client.simulate_get(link["url"])  # no tenant header, no key
    assert seen.status_code == 200, seen.text
    assert seen.json["executionId"] == run_id and seen.json["signal"] == "approval"
    assert seen.json["approver"] == "alice@example.com" and seen.json["waiting"] is True
    assert seen.json["used"] is False
    time.sleep(0.3)  # a GET acts on nothing
    assert run_of(api, org, flow, run_id)["status"] == "queued"
    assert count(db, "select count(*) from flow_run_signals where run_id = %s", run_id) == 0

    decided = api.client.simulate_post(link["url"], json={"decision": "approve", "comment": "fine"})
    assert decided.status_code == 202, decided.text
    assert decided.json["approved"] is True
    run = wait_for(api, org, flow, run_id)
    assert run["status"] == "completed", run
    gate = run["outputs"]["gate"]
    assert gate["approved"] is True and gate["approver"] == "alice@example.com" and gate["comment"] == "fine"
    assert gate["at"].endswith("Z")
    assert run["outputs"]["after"] is True
    assert count(db, "select count(*) from flow_run_signals where run_id = %s and approver = 'alice@example.com'",
                 run_id) == 1
    again = api.client.simulate_post(link["url"], json={"decision": "reject"})
    assert again.status_code == 410, again.text
    assert api.client.simulate_get(link["url"]).json["used"] is True


def test_an_approval_link_expires_by_the_clock_tests_move(api, org, user, clock):
    flow = api.flow(org, steps=[wait_step(timeoutMs=600_000)])
    run_id = execute(api, org, user, flow)["executionId"]  # queued: its wait step is still to come
    link = make_link(api, org, flow, run_id, expiresInSeconds=60)
    assert api.client.simulate_get(link["url"]).status_code == 200
    clock.move(61)  # the link's minute is over, without waiting for it
    for result in (api.client.simulate_get(link["url"]),
                   api.client.simulate_post(link["url"], json={"decision": "approve"})):
        assert result.status_code == 410 and "expired" in result.json["message"], result.text
    # A link made now expires a minute after the moved clock's now.
    made = dt.datetime.fromisoformat(make_link(api, org, flow, run_id, expiresInSeconds=60)["expiresAt"])
    assert made - dt.datetime.now(dt.UTC) > dt.timedelta(seconds=100)


def test_tampered_expired_and_malformed_links_are_refused(api, org, user, config):
    flow = api.flow(org, steps=[wait_step(timeoutMs=60_000)])
    run_id = execute(api, org, user, flow)["executionId"]  # queued: its wait step is still to come
    link = make_link(api, org, flow, run_id)
    token = link["url"].rsplit("/", 1)[1]
    body, mac = token.split(".")
    tampered = f"/approvals/{body[:-2]}{'A' if body[-2] != 'A' else 'B'}{body[-1]}.{mac}"
    for url in (tampered, "/approvals/nonsense", f"/approvals/{body}.{mac[::-1]}"):
        for result in (api.client.simulate_get(url), api.client.simulate_post(url, json={"decision": "approve"})):
            assert result.status_code == 401, (url, result.text)
            assert result.json["statusCode"] == 401
    expired = sign_link(link_key(config), {"o": org["id"], "f": flow["id"], "r": run_id, "s": "approval",
                                           "a": None, "e": int(time.time()) - 1,
                                           "l": "00000000-0000-4000-8000-000000000001"})
    for result in (api.client.simulate_get(f"/approvals/{expired}"),
                   api.client.simulate_post(f"/approvals/{expired}", json={"decision": "approve"})):
        assert result.status_code == 410, result.text
    bad = api.client.simulate_post(link["url"], json={"decision": "maybe"})
    assert bad.status_code == 400 and bad.json["errors"][0]["field"] == "decision"
    # A link for a signal no wait step takes is refused when asked for.
    other = api.client.simulate_post(f"/flows/{flow['id']}/executions/{run_id}/signals/other/links", json={},
                                     headers=api.headers(org))
    assert other.status_code == 409


# ---- validation ---------------------------------------------------------------------------

def test_wait_and_on_failure_are_validated_when_the_flow_is_saved(api, org):
    def errors(steps, **extra):
        result = api.post("/flows", org, {"name": "f", "steps": steps, **extra})
        assert result.status_code == 400, result.text
        return {e["field"] for e in result.json["errors"]}

    assert "steps[0].config.signal" in errors([wait_step(signal="no spaces")])
    assert "steps[0].config.timeoutMs" in errors([wait_step(timeoutMs=31 * 24 * 3600 * 1000)])
    assert "steps[0].config.timeoutMs" in errors([wait_step(timeoutMs=0)])
    assert "steps[0].config.onTimeout" in errors([wait_step(onTimeout="sometimes")])
    assert "steps[0].config.step.type" in errors([step("each", "foreach", {"items": [1], "step": {
        "type": "wait", "config": {"signal": "x"}}})])
    main = [step("a", "transform", {"output": 1})]
    assert "onFailure[0].type" in errors(main, onFailure=[step("b", "nope", {})])
    assert "onFailure[0].id" in errors(main, onFailure=[step("a", "transform", {"output": 1})])
    assert "onFailure[0].config.actionKey" in errors(main, onFailure=[step("b", "action", {"actionKey": "no.such"})])
    assert "onFailure" in errors(main, onFailure=[])

    flow = api.flow(org, steps=main)
    assert flow["onFailure"] is None and flow["version"] == 1
    handlers = [step("note", "transform", {"output": "{{ error.message }}"})]
    changed = api.client.simulate_patch(f"/flows/{flow['id']}", json={"onFailure": handlers},
                                        headers=api.headers(org))
    assert changed.status_code == 200, changed.text
    assert changed.json["version"] == 2 and changed.json["onFailure"][0]["id"] == "note"
    version = api.client.simulate_get(f"/flows/{flow['id']}/versions/2", headers=api.headers(org)).json
    assert version["onFailure"][0]["id"] == "note"
    assert api.client.simulate_get(f"/flows/{flow['id']}/versions/1", headers=api.headers(org)).json[
        "onFailure"] is None


# ---- onFailure ------------------------------------------------------------------------------

def test_on_failure_runs_once_sees_the_error_and_keeps_it(api, org, user, worker, server):
    alerts = []
    server.expect_request("/boom").respond_with_data("nope", status=422)
    server.expect_request("/alert").respond_with_handler(
        lambda request: alerts.append(request.json) or Response("{}", content_type="application/json"))
    before = scrape(api.client)
    flow = api.flow(org, steps=[
        step("ok", "transform", {"output": {"n": 1}}),
        step("boom", "http_request", {"method": "GET", "url": server.url_for("/boom")}),
        step("never", "transform", {"output": 2}),
    ], onFailure=[
        step("note", "transform", {"output": {"failed": "{{ failedStepId }}", "message": "{{ error.message }}",
                                              "stepId": "{{ error.stepId }}", "n": "{{ steps.ok.n }}"}}),
        step("alert", "http_request", {"method": "POST", "url": server.url_for("/alert"),
                                       "body": {"step": "{{ steps.note.failed }}"}}),
    ])
    run = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    assert run["status"] == "failed", run
    assert run["error"]["stepId"] == "boom" and "onFailureError" not in run["error"]
    note = run["outputs"]["onFailure.note"]
    assert note == {"failed": "boom", "message": run["error"]["message"], "stepId": "boom", "n": 1}
    assert alerts == [{"step": "boom"}]
    steps = {s["stepId"]: s for s in run["steps"]}
    assert "never" not in steps
    assert steps["onFailure.note"]["phase"] == "onFailure" and steps["onFailure.alert"]["status"] == "completed"
    assert steps["boom"]["phase"] == "main" and steps["boom"]["status"] == "failed"
    started = [log for log in logs_of(api, org, run["executionId"])
               if log["stepKey"] == "$flow" and log["inputs"].get("phase") == "onFailure"]
    assert len(started) == 1 and started[0]["inputs"]["failedStepId"] == "boom"
    after = scrape(api.client)
    assert value(after, "tolstoy_on_failure_runs_total", outcome="started") - \
        value(before, "tolstoy_on_failure_runs_total", outcome="started") == 1
    assert value(after, "tolstoy_on_failure_runs_total", outcome="completed") - \
        value(before, "tolstoy_on_failure_runs_total", outcome="completed") == 1

    # A run that does not fail runs no handler.
    fine = api.flow(org, steps=[step("ok", "transform", {"output": 1})], onFailure=[
        step("alert", "http_request", {"method": "POST", "url": server.url_for("/alert"), "body": {"x": 1}})])
    assert wait_for(api, org, fine, execute(api, org, user, fine)["executionId"])["status"] == "completed"
    assert len(alerts) == 1


def test_a_failing_handler_never_hides_the_original_error(api, org, user, worker, server):
    server.expect_request("/boom").respond_with_data("nope", status=422)
    server.expect_request("/down").respond_with_data("down", status=400)
    flow = api.flow(org, steps=[step("boom", "http_request", {"method": "GET", "url": server.url_for("/boom")})],
                    onFailure=[step("alert", "http_request", {"method": "GET", "url": server.url_for("/down")}),
                               step("after", "transform", {"output": 1})])
    run = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    assert run["status"] == "failed"
    assert run["error"]["stepId"] == "boom" and "422" in run["error"]["message"]
    assert run["error"]["onFailureError"]["stepId"] == "onFailure.alert"
    assert "400" in run["error"]["onFailureError"]["message"]
    steps = {s["stepId"]: s["status"] for s in run["steps"]}
    assert steps["onFailure.alert"] == "failed" and "onFailure.after" not in steps


def test_cancelled_runs_run_no_handler(api, org, user, worker, server):
    calls = []
    server.expect_request("/alert").respond_with_handler(
        lambda request: calls.append(1) or Response("{}", content_type="application/json"))
    flow = api.flow(org, steps=[wait_step(timeoutMs=60_000)], onFailure=[
        step("alert", "http_request", {"method": "POST", "url": server.url_for("/alert"), "body": {}})])
    run_id = execute(api, org, user, flow)["executionId"]
    until_waiting(api, org, flow, run_id)
    cancel = api.client.simulate_post(f"/flows/{flow['id']}/executions/{run_id}/cancel", headers=api.headers(org))
    assert cancel.json["status"] == "cancelled"
    time.sleep(0.5)
    assert run_of(api, org, flow, run_id)["status"] == "cancelled" and calls == []


def test_on_failure_resumes_after_its_worker_is_killed(api, org, user, worker_env, server, clock):
    alerts = []
    server.expect_request("/boom").respond_with_data("nope", status=422)
    server.expect_request("/alert").respond_with_handler(
        lambda request: alerts.append(request.json) or Response("{}", content_type="application/json"))
    flow = api.flow(org, steps=[step("boom", "http_request", {"method": "GET", "url": server.url_for("/boom")})],
                    onFailure=[step("alert", "http_request", {"method": "POST", "url": server.url_for("/alert"),
                                                              "body": {"e": "{{ error.stepId }}"}}),
                               step("pause", "delay", {"ms": 1500}),
                               step("done", "transform", {"output": "{{ steps.alert.status }}"})])
    first = start_worker(worker_env)
    second = None
    try:
        run_id = execute(api, org, user, flow)["executionId"]
        wait_until(lambda: {s["stepId"]: s["status"] for s in run_of(api, org, flow, run_id)["steps"]}.get(
            "onFailure.pause") == "waiting", 30, "the handler to sleep")
        first.send_signal(signals.SIGKILL)
        first.wait(timeout=10)
        clock.move(1.5)  # the handler's delay is over
        second = start_worker(worker_env)
        wait_until(lambda: run_of(api, org, flow, run_id)["status"] == "failed", 30, "the run to fail")
        run = run_of(api, org, flow, run_id)
        assert run["error"]["stepId"] == "boom" and "onFailureError" not in run["error"]
        assert run["outputs"]["onFailure.done"] == 200
        assert alerts == [{"e": "boom"}]  # sent once, before the kill
    except BaseException:
        print(log_tail(first), log_tail(second) if second else "")
        raise
    finally:
        stop(first)
        if second is not None:
            stop(second)


# ---- review: retries, retention, the timeout race, saving through PATCH -------------------------

def test_a_retry_that_fails_again_runs_its_handlers_again(api, org, user, worker, server):
    # A retry copies the original's completed steps, but not its failure handlers: they belong to
    # the original's failure ("a run's retry ... runs them again only if it fails again").
    alerts = []
    server.expect_request("/boom").respond_with_data("nope", status=422)
    server.expect_request("/alert").respond_with_handler(
        lambda request: alerts.append(request.json) or Response("{}", content_type="application/json"))
    flow = api.flow(org, steps=[step("ok", "transform", {"output": 1}),
                                step("boom", "http_request", {"method": "GET", "url": server.url_for("/boom")})],
                    onFailure=[step("alert", "http_request", {"method": "POST", "url": server.url_for("/alert"),
                                                              "body": {"e": "{{ error.stepId }}"}})])
    first = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    assert first["status"] == "failed" and alerts == [{"e": "boom"}]
    retry = api.client.simulate_post(f"/flows/{flow['id']}/executions/{first['executionId']}/retry",
                                     headers=api.headers(org, user))
    assert retry.status_code == 202, retry.text
    second = wait_for(api, org, flow, retry.json["executionId"])
    assert second["status"] == "failed" and second["error"]["stepId"] == "boom"
    assert alerts == [{"e": "boom"}, {"e": "boom"}]
    steps = {s["stepId"]: s for s in second["steps"]}
    assert steps["ok"]["status"] == "completed"  # the main steps' results are still copied
    started = [log for log in logs_of(api, org, second["executionId"])
               if log["stepKey"] == "$flow" and log["inputs"].get("phase") == "onFailure"]
    assert len(started) == 1


def test_signals_of_runs_dropped_past_retention_go_with_them(api, org, user, worker_db, config, db):
    from test_durable import age
    from test_worker_processes import run_status

    flow = api.flow(org, steps=[wait_step(timeoutMs=60_000)])
    run_id = execute(api, org, user, flow)["executionId"]
    assert send(api, org, flow, run_id, payload={"ok": True}, user=user).status_code == 202
    w = engine.worker(config, worker_db, concurrency=1, retention_days=90)
    w.run(stop_after_idle=True)
    assert run_status(db, run_id) == "completed"
    age(db, run_id, "2025-01-15T12:00:00Z")
    with db.pool.connection() as conn:
        conn.execute("update flow_run_signals set created_at = '2025-01-15T12:00:01Z' where run_id = %s", (run_id,))
    w.maintain()
    assert run_status(db, run_id) is None
    assert count(db, "select count(*) from flow_run_signals where run_id = %s", run_id) == 0
    # Nothing of the run holds its user any more.
    gone = api.client.simulate_delete(f"/users/{user['id']}", headers=api.headers(org))
    assert gone.status_code == 204, gone.text


def test_a_signal_sent_after_the_wait_timed_out_is_refused_not_lost(api, org, user, worker, monkeypatch):
    # Between the worker deciding that the wait timed out and its next write, a signal must not be
    # accepted (202) for a step that will never take it.
    from tolstoy import metrics

    answers = []
    timed_out = metrics.count_wait_timeout

    def signal_then_count(on_timeout):
        answers.append(send(api, org, flow, run_id, payload={"late": True}).status_code)
        timed_out(on_timeout)

    monkeypatch.setattr(metrics, "count_wait_timeout", signal_then_count)
    flow = api.flow(org, steps=[wait_step(timeoutMs=300, onTimeout="continue"),
                                step("after", "transform", {"output": "{{ steps.gate.timedOut }}"})])
    run_id = execute(api, org, user, flow)["executionId"]
    run = wait_for(api, org, flow, run_id)
    assert run["status"] == "completed" and run["outputs"]["gate"] == {"timedOut": True}
    assert answers == [409]


def test_on_failure_ids_stay_apart_from_step_ids_when_patched(api, org):
    flow = api.flow(org, steps=[step("a", "transform", {"output": 1})],
                    onFailure=[step("note", "transform", {"output": 2})])
    clash = api.client.simulate_patch(f"/flows/{flow['id']}", json={"onFailure": [step("a", "transform", {"output": 3})]},
                                      headers=api.headers(org))
    assert clash.status_code == 400, clash.text
    assert clash.json["errors"][0]["field"] == "onFailure[0].id"
    clash = api.client.simulate_patch(f"/flows/{flow['id']}", json={"steps": [step("note", "transform", {"output": 3})]},
                                      headers=api.headers(org))
    assert clash.status_code == 400, clash.text
    assert clash.json["errors"][0]["field"] == "steps[0].id"
    fine = api.client.simulate_patch(f"/flows/{flow['id']}", json={"steps": [step("b", "transform", {"output": 3})]},
                                     headers=api.headers(org))
    assert fine.status_code == 200, fine.text
