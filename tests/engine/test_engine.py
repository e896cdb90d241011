"""The flow engine end to end: real PostgreSQL, a real local HTTP server
(pytest-httpserver), the API to start runs and an in-process worker to run them."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest
from support import scrape, value
from werkzeug import Response

from tolstoy import engine
from tolstoy.engine import SECRET_FIELDS
from tolstoy.engine.outbound import Outbound, OutboundError


def execute(api, org, user, flow, variables=None, headers=None):
    result = api.client.simulate_post(
        f"/flows/{flow['id']}/execute", json={"variables": variables or {}},
        headers={**api.headers(org, user), **(headers or {})},
    )
    assert result.status_code == 202, result.text
    return result.json


def wait_for(api, org, flow, execution_id, statuses=("completed", "failed", "cancelled"), timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.client.simulate_get(f"/flows/{flow['id']}/executions/{execution_id}",
                                      headers=api.headers(org)).json
        if run["status"] in statuses:
            return run
        time.sleep(0.05)
    pytest.fail(f"run {execution_id} still {run['status']}: {json.dumps(run)[:2000]}")


def wait_until_sleeping(api, org, flow, execution_id, step_id, timeout=15.0):
    """Wait for a run to be back in the queue, asleep in a delay step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.client.simulate_get(f"/flows/{flow['id']}/executions/{execution_id}",
                                      headers=api.headers(org)).json
        steps = {s["stepId"]: s["status"] for s in run["steps"]}
        if run["status"] == "queued" and steps.get(step_id) == "waiting":
            return run
        time.sleep(0.05)
    pytest.fail(f"run {execution_id} never slept in {step_id}")


def logs_of(api, org, execution_id):
    result = api.client.simulate_get("/execution-logs", params={"executionId": execution_id, "limit": "200"},
                                     headers=api.headers(org))
    return list(reversed(result.json))


def step(step_id, kind, config, **extra):
    return {"id": step_id, "type": kind, "config": config, **extra}


AUTH_CASES = {
    "none": (None, {}),
    "apiKey": ({"type": "apiKey", "config": {"headerName": "X-Api-Key", "headerValue": "key-123456789"}},
               {"X-Api-Key": "key-123456789"}),
    "bearer": ({"type": "bearer", "config": {"token": "tok-abcdefghijk"}},
               {"Authorization": "Bearer tok-abcdefghijk"}),
    "basic": ({"type": "basic", "config": {"username": "ada", "password": "s3cret-pass"}},
              {"Authorization": "Basic " + base64.b64encode(b"ada:s3cret-pass").decode()}),
    "oauth2": ({"type": "oauth2", "config": {"clientId": "cid", "clientSecret": "csecret-123456",
                                             "tokenUrl": "TOKEN_URL", "scopes": ["read"]}},
               {"Authorization": "Bearer oauth-access-1"}),
}


@pytest.mark.parametrize("auth_type", list(AUTH_CASES))
def test_three_step_flow_with_each_auth_type(api, org, user, worker, httpserver, auth_type):
    credential, expected_headers = AUTH_CASES[auth_type]
    tool = api.tool(org, baseUrl=httpserver.url_for("/api"), authType=auth_type)
    if credential:
        body = json.loads(json.dumps(credential).replace("TOKEN_URL", httpserver.url_for("/token")))
        created = api.create(f"/tools/{tool['id']}/auth", org, {**body, "isDefault": True})
        for field in SECRET_FIELDS[auth_type]:
            if field in body["config"]:
                assert body["config"][field] not in json.dumps(created)
    if auth_type == "oauth2":
        httpserver.expect_oneshot_request("/token", method="POST").respond_with_json(
            {"access_token": "oauth-access-1", "expires_in": 3600})
    action = api.action(org, tool, key="items.get", method="GET", endpoint="/items/{id}",
                        inputSchema={"type": "object", "required": ["id"],
                                     "properties": {"id": {"type": "integer"}, "q": {"type": "string"}}})
    httpserver.expect_oneshot_request("/api/items/42", method="GET", query_string="q=hello",
                                      headers=expected_headers).respond_with_json({"id": 42, "name": "Widget"})
    httpserver.expect_oneshot_request("/hook", method="POST", json={"name": "Widget", "id": 42, "n": 7}) \
        .respond_with_json({"ok": True}, status=201)
    flow = api.flow(org, steps=[
        step("fetch", "action", {"actionKey": action["key"], "inputs": {"id": "{{ variables.id }}", "q": "hello"}}),
        step("shape", "transform", {"output": {"name": "{{ steps.fetch.body.name }}", "id": "{{ steps.fetch.body.id }}",
                                                "n": "{{ variables.n }}"}}),
        step("post", "http_request", {"method": "POST", "url": httpserver.url_for("/hook"),
                                      "body": "{{ steps.shape }}"}),
    ])
    started = execute(api, org, user, flow, {"id": 42, "n": 7})
    assert started["status"] == "queued" and started["flowVersion"] == 1
    run = wait_for(api, org, flow, started["executionId"])
    assert run["status"] == "completed", run
    httpserver.check_assertions()
    assert [s["stepId"] for s in run["steps"]] == ["fetch", "shape", "post"]
    assert run["outputs"]["shape"] == {"name": "Widget", "id": 42, "n": 7}
    assert run["outputs"]["post"]["status"] == 201 and run["outputs"]["post"]["body"] == {"ok": True}
    logs = logs_of(api, org, started["executionId"])
    assert [(entry["stepKey"], entry["status"]) for entry in logs] == [
        ("$flow", "queued"), ("$flow", "running"),
        ("fetch", "started"), ("fetch", "completed"),
        ("shape", "started"), ("shape", "completed"),
        ("post", "started"), ("post", "completed"),
        ("$flow", "completed"),
    ]
    assert all(entry["userId"] == user["id"] for entry in logs)
    fetched = next(e for e in logs if e["stepKey"] == "fetch" and e["status"] == "completed")
    assert fetched["inputs"] == {"inputs": {"id": 42, "q": "hello"}, "actionKey": "items.get"}
    assert fetched["durationMs"] is not None
    # No secret reaches the logs or the run.
    everything = json.dumps(logs) + json.dumps(run)
    for secret in ("key-123456789", "tok-abcdefghijk", "s3cret-pass", "oauth-access-1", "csecret-123456"):
        assert secret not in everything


def test_idempotency_key_is_stable_per_attempt_and_retries_back_off(api, org, user, worker, httpserver):
    seen = []

    def flaky(request):
        seen.append(request.headers.get("Idempotency-Key"))
        return Response("busy", status=503) if len(seen) < 3 else Response('{"ok": 1}', content_type="application/json")

    httpserver.expect_request("/flaky").respond_with_handler(flaky)
    flow = api.flow(org, steps=[step("call", "http_request", {"method": "GET", "url": httpserver.url_for("/flaky")},
                                     retryPolicy={"maxRetries": 3, "backoffStrategy": "exponential", "delayMs": 100})])
    started = execute(api, org, user, flow)
    run = wait_for(api, org, flow, started["executionId"])
    assert run["status"] == "completed"
    assert run["steps"][0]["attempt"] == 3
    assert seen == [f"{started['executionId']}:call:{n}" for n in (1, 2, 3)]
    statuses = [(e["stepKey"], e["status"]) for e in logs_of(api, org, started["executionId"]) if e["stepKey"] == "call"]
    assert statuses == [("call", "started"), ("call", "failed")] * 2 + [("call", "started"), ("call", "completed")]


def test_client_errors_are_not_retried_and_fail_the_run(api, org, user, worker, httpserver):
    httpserver.expect_request("/missing").respond_with_json({"error": "nope"}, status=404)
    flow = api.flow(org, steps=[
        step("call", "http_request", {"method": "GET", "url": httpserver.url_for("/missing")},
             retryPolicy={"maxRetries": 3, "delayMs": 10}),
        step("after", "transform", {"output": 1}),
    ])
    run = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    assert run["status"] == "failed"
    assert run["error"]["stepId"] == "call" and run["error"]["status"] == 404
    assert [(s["stepId"], s["status"], s["attempt"]) for s in run["steps"]] == [("call", "failed", 1)]
    assert len(httpserver.log) == 1


def test_timeout_fails_the_step(api, org, user, worker, httpserver):
    httpserver.expect_request("/slow").respond_with_handler(lambda r: (time.sleep(1.0), Response("late"))[1])
    flow = api.flow(org, steps=[step("slow", "http_request", {"method": "GET", "url": httpserver.url_for("/slow")},
                                     timeoutMs=200)])
    run = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    assert run["status"] == "failed"
    assert "Timed out after 200 ms" in run["error"]["message"]


def test_non_critical_failure_and_execute_if_and_depends_on(api, org, user, worker, httpserver):
    httpserver.expect_request("/boom").respond_with_data("no", status=400)
    flow = api.flow(org, steps=[
        step("last", "transform", {"output": "{{ steps.first.n + 1 }}"}, dependsOn=["first"]),
        step("first", "transform", {"output": {"n": "{{ variables.n }}"}}, dependsOn=[]),
        step("optional", "http_request", {"method": "GET", "url": httpserver.url_for("/boom")},
             critical=False, dependsOn=["first"]),
        step("needs_optional", "transform", {"output": 1}, dependsOn=["optional"]),
        step("never", "transform", {"output": 1}, executeIf="{{ variables.n > 100 }}", dependsOn=["first"]),
    ])
    started = execute(api, org, user, flow, {"n": 1})
    run = wait_for(api, org, flow, started["executionId"])
    assert run["status"] == "completed", run
    by_id = {s["stepId"]: s for s in run["steps"]}
    assert by_id["first"]["status"] == "completed" and by_id["last"]["status"] == "completed"
    assert run["outputs"]["last"] == 2
    assert by_id["optional"]["status"] == "failed"
    assert by_id["needs_optional"]["status"] == "skipped"
    assert by_id["never"]["status"] == "skipped"
    order = [e["stepKey"] for e in logs_of(api, org, started["executionId"]) if e["status"] == "started"]
    assert order.index("first") < order.index("last")


def test_template_errors_fail_the_step_with_a_clear_message(api, org, user, worker):
    flow = api.flow(org, steps=[step("t", "transform", {"output": "{{ variables.typo.x }}"})])
    run = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    assert run["status"] == "failed"
    assert "has no attribute 'typo'" in run["error"]["message"]
    sandbox = api.flow(org, steps=[step("t", "transform", {"output": "{{ variables.__class__.__mro__ }}"})])
    run = wait_for(api, org, sandbox, execute(api, org, user, sandbox)["executionId"])
    assert run["status"] == "failed"


def test_cancel_during_a_delay_and_retry_of_a_cancelled_run(api, org, user, worker, httpserver):
    httpserver.expect_request("/first").respond_with_json({"n": 1})
    httpserver.expect_request("/after").respond_with_json({"ok": True})
    flow = api.flow(org, steps=[
        step("first", "http_request", {"method": "GET", "url": httpserver.url_for("/first")}),
        step("nap", "delay", {"ms": 60000}),
        step("after", "http_request", {"method": "GET", "url": httpserver.url_for("/after")}),
    ])
    started = execute(api, org, user, flow)
    run = wait_until_sleeping(api, org, flow, started["executionId"], "nap")
    assert {s["stepId"]: s["status"] for s in run["steps"]} == {"first": "completed", "nap": "waiting"}
    cancel = api.client.simulate_post(f"/flows/{flow['id']}/executions/{started['executionId']}/cancel",
                                      headers=api.headers(org, user))
    assert cancel.status_code == 202 and cancel.json["status"] == "cancelled"
    run = wait_for(api, org, flow, started["executionId"])
    assert run["status"] == "cancelled" and run["finishedAt"]
    again = api.client.simulate_post(f"/flows/{flow['id']}/executions/{started['executionId']}/cancel",
                                     headers=api.headers(org, user))
    assert again.status_code == 409
    # Retry reuses "first" (no second request) and sleeps again in "nap".
    retry = api.client.simulate_post(f"/flows/{flow['id']}/executions/{started['executionId']}/retry",
                                     headers=api.headers(org, user))
    assert retry.status_code == 202 and retry.json["retryOf"] == started["executionId"]
    assert retry.json["executionId"] != started["executionId"]
    wait_until_sleeping(api, org, flow, retry.json["executionId"], "nap")
    assert [r.path for r, _ in httpserver.log].count("/first") == 1


def test_retry_of_a_failed_run_resumes_at_the_failed_step(api, org, user, worker, httpserver):
    calls = {"flaky": 0}

    def flaky(request):
        calls["flaky"] += 1
        return Response("down", status=500) if calls["flaky"] == 1 else Response("up")

    httpserver.expect_request("/one").respond_with_json({"v": 1})
    httpserver.expect_request("/two").respond_with_handler(flaky)
    flow = api.flow(org, steps=[
        step("one", "http_request", {"method": "GET", "url": httpserver.url_for("/one")}),
        step("two", "http_request", {"method": "GET", "url": httpserver.url_for("/two")}),
        step("three", "transform", {"output": "{{ steps.one.body.v }}"}),
    ])
    first = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    assert first["status"] == "failed"
    not_failed = api.client.simulate_post(f"/flows/{flow['id']}/executions/{first['executionId']}/retry",
                                          headers=api.headers(org))
    assert not_failed.status_code == 400 and not_failed.json["errors"][0]["field"] == "X-User-ID"
    retry = api.client.simulate_post(f"/flows/{flow['id']}/executions/{first['executionId']}/retry",
                                     headers=api.headers(org, user)).json
    second = wait_for(api, org, flow, retry["executionId"])
    assert second["status"] == "completed" and second["outputs"]["three"] == 1
    assert [r.path for r, _ in httpserver.log] == ["/one", "/two", "/two"]
    completed = api.client.simulate_post(f"/flows/{flow['id']}/executions/{retry['executionId']}/retry",
                                         headers=api.headers(org, user))
    assert completed.status_code == 409


def test_idempotent_execute_returns_the_same_run(api, org, user, worker):
    flow = api.flow(org)
    first = execute(api, org, user, flow, headers={"Idempotency-Key": "order-77"})
    second = execute(api, org, user, flow, headers={"Idempotency-Key": "order-77"})
    other = execute(api, org, user, flow, headers={"Idempotency-Key": "order-78"})
    assert first["executionId"] == second["executionId"] != other["executionId"]
    listing = api.client.simulate_get(f"/flows/{flow['id']}/executions", headers=api.headers(org)).json
    assert len(listing) == 2


def test_a_run_keeps_the_version_it_started_with(api, org, user, worker):
    flow = api.flow(org, steps=[step("nap", "delay", {"ms": 700}), step("out", "transform", {"output": "v1"})])
    started = execute(api, org, user, flow)
    wait_until_sleeping(api, org, flow, started["executionId"], "nap")
    changed = api.client.simulate_patch(f"/flows/{flow['id']}", json={"steps": [step("out", "transform", {"output": "v2"})]},
                                        headers=api.headers(org))
    assert changed.json["version"] == 2
    run = wait_for(api, org, flow, started["executionId"])
    assert run["status"] == "completed" and run["flowVersion"] == 1 and run["outputs"]["out"] == "v1"


def test_outbound_calls_refuse_private_targets_and_private_redirects(api, org, user, config, worker_db, httpserver):
    httpserver.expect_request("/jump").respond_with_data("", status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
    flow = api.flow(org, steps=[step("jump", "http_request", {"method": "GET", "url": httpserver.url_for("/jump")})])
    local = api.flow(org, steps=[step("local", "http_request", {"method": "GET", "url": "http://10.1.2.3:8080/admin"})])
    w = engine.worker(config, worker_db, poll_seconds=0.1, lease_seconds=2)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        jumped = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
        direct = wait_for(api, org, local, execute(api, org, user, local)["executionId"])
    finally:
        w.stop()
        thread.join(timeout=10)
    assert jumped["status"] == "failed" and "169.254.169.254" in jumped["error"]["message"]
    assert direct["status"] == "failed" and "not a public address" in direct["error"]["message"]
    # Without TOLSTOY_ALLOW_NETWORKS even loopback is refused.
    closed = Outbound(())
    with pytest.raises(OutboundError, match="not a public address"):
        closed.request("GET", httpserver.url_for("/jump"))


def test_metrics(api, org, user, worker, httpserver):
    httpserver.expect_request("/bad").respond_with_data("", status=400)
    good = api.flow(org)
    for _ in range(3):
        wait_for(api, org, good, execute(api, org, user, good)["executionId"])
    bad = api.flow(org, steps=[step("b", "http_request", {"method": "GET", "url": httpserver.url_for("/bad")})])
    wait_for(api, org, bad, execute(api, org, user, bad)["executionId"])
    metrics = api.client.simulate_get(f"/flows/{good['id']}/metrics", headers=api.headers(org)).json
    assert metrics["totalExecutions"] == 3 and metrics["statusBreakdown"] == {"completed": 3}
    assert metrics["successRate"] == 1.0 and metrics["p50Ms"] >= 0 and metrics["p95Ms"] >= metrics["p50Ms"]
    assert api.client.simulate_get(f"/flows/{bad['id']}/metrics", headers=api.headers(org)).json["successRate"] == 0.0


def test_runs_and_steps_reach_metrics_and_json_logs(api, org, user, worker, caplog):
    caplog.set_level("INFO", logger="tolstoy.runs")
    before = scrape(api.client)
    flow = api.flow(org, steps=[step("a", "transform", {"output": 1}),
                                step("b", "transform", {"output": "{{ variables.missing }}"})])
    started = execute(api, org, user, flow)
    assert wait_for(api, org, flow, started["executionId"])["status"] == "failed"
    after = scrape(api.client)
    for status in ("queued", "running", "failed"):
        assert value(after, "tolstoy_flow_runs_total", status=status) == \
            value(before, "tolstoy_flow_runs_total", status=status) + 1, status
    for status in ("completed", "failed"):
        assert value(after, "tolstoy_flow_step_duration_seconds_count", type="transform", status=status) == \
            value(before, "tolstoy_flow_step_duration_seconds_count", type="transform", status=status) + 1
    events = [r.fields for r in caplog.records if r.name == "tolstoy.runs"]
    steps = [(e["stepId"], e["status"]) for e in events if e["event"] == "step"]
    assert steps == [("a", "completed"), ("b", "failed")]
    assert {e["executionId"] for e in events} == {started["executionId"]}
