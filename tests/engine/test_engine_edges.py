"""Engine edge cases: nothing leaves a run stuck, cancel beats a back-off,
skips caused by failures survive a resume, templates have bounds, secrets
stay out of run outputs, and redirects keep credentials on their origin."""

from __future__ import annotations

import json
import threading
import time

from test_engine import execute, step, wait_for  # the same helpers as the main engine tests
from werkzeug import Response


def test_a_request_that_cannot_be_built_fails_the_step_not_the_worker(api, org, user, worker, httpserver):
    tool = api.tool(org, baseUrl=httpserver.url_for("/"))
    api.action(org, tool, key="accent", headers={"X-Name": "café"})
    flow = api.flow(org, steps=[step("call", "action", {"actionKey": "accent", "inputs": {"id": 1}})])
    run = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    assert run["status"] == "failed" and "Cannot build the request" in run["error"]["message"]
    direct = api.client.simulate_post(f"/actions/{api.client.simulate_get('/actions', headers=api.headers(org)).json[0]['id']}/execute",
                                      json={"inputs": {"id": 1}}, headers=api.headers(org, user))
    assert direct.status_code == 200 and direct.json["success"] is False


def test_templates_cannot_build_huge_values(api, org, user, worker):
    flow = api.flow(org, steps=[step("big", "transform", {"output": "{{ 'ab' * 50000000 }}"})])
    run = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    assert run["status"] == "failed" and "result longer than" in run["error"]["message"]


def test_cancel_during_a_failing_step_is_not_delayed_by_its_back_off(api, org, user, worker, httpserver):
    entered = threading.Event()

    def slow_failure(request):
        entered.set()
        time.sleep(0.8)
        return Response("down", status=503)

    httpserver.expect_request("/flaky").respond_with_handler(slow_failure)
    flow = api.flow(org, steps=[step("call", "http_request", {"method": "GET", "url": httpserver.url_for("/flaky")},
                                     retryPolicy={"maxRetries": 5, "delayMs": 600000})])
    started = execute(api, org, user, flow)
    assert entered.wait(10)
    cancel = api.client.simulate_post(f"/flows/{flow['id']}/executions/{started['executionId']}/cancel",
                                      headers=api.headers(org, user))
    assert cancel.status_code == 202
    run = wait_for(api, org, flow, started["executionId"], timeout=10)
    assert run["status"] == "cancelled"


def test_a_step_skipped_because_a_dependency_failed_stays_failed_after_a_resume(api, org, user, worker, httpserver):
    httpserver.expect_request("/boom").respond_with_data("no", status=400)
    flow = api.flow(org, steps=[
        step("boom", "http_request", {"method": "GET", "url": httpserver.url_for("/boom")}, critical=False),
        step("needs_boom", "transform", {"output": 1}, dependsOn=["boom"]),
        step("nap", "delay", {"ms": 200}, dependsOn=[]),
        step("needs_needs_boom", "transform", {"output": 2}, dependsOn=["needs_boom", "nap"]),
    ])
    run = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    statuses = {s["stepId"]: s["status"] for s in run["steps"]}
    assert run["status"] == "completed"
    assert statuses == {"boom": "failed", "needs_boom": "skipped", "nap": "completed", "needs_needs_boom": "skipped"}


def test_secrets_echoed_by_a_tool_stay_out_of_run_outputs_and_logs(api, org, user, worker, httpserver):
    httpserver.expect_request("/echo").respond_with_handler(
        lambda r: Response(json.dumps({"seen": r.headers.get("Authorization")}), content_type="application/json"))
    tool = api.tool(org, baseUrl=httpserver.url_for("/"), authType="bearer")
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "bearer", "config": {"token": "tok-very-secret-1"}})
    api.action(org, tool, key="echo", endpoint="/echo")
    flow = api.flow(org, steps=[step("echo", "action", {"actionKey": "echo", "inputs": {}}),
                                step("copy", "transform", {"output": "{{ steps.echo.body.seen }}"})])
    started = execute(api, org, user, flow)
    run = wait_for(api, org, flow, started["executionId"])
    assert run["status"] == "completed"
    logs = api.client.simulate_get("/execution-logs", params={"executionId": started["executionId"]},
                                   headers=api.headers(org)).json
    assert "tok-very-secret-1" not in json.dumps(run) + json.dumps(logs)


def test_redirects_keep_credentials_on_their_origin(api, org, user, httpserver, config, app_db):
    seen = {}

    def landing(request):
        seen[request.host.split(":")[0]] = request.headers.get("X-Api-Key")
        return Response("{}", content_type="application/json")

    port = httpserver.port
    httpserver.expect_request("/same").respond_with_data("", status=302, headers={"Location": "/landing"})
    httpserver.expect_request("/away").respond_with_data(
        "", status=302, headers={"Location": f"http://127.0.0.1:{port}/landing"})
    httpserver.expect_request("/landing").respond_with_handler(landing)
    tool = api.tool(org, baseUrl=f"http://localhost:{port}", authType="apiKey")
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "apiKey",
                                                   "config": {"headerName": "X-Api-Key", "headerValue": "key-abcdefgh"}})
    same = api.action(org, tool, key="same", endpoint="/same")
    away = api.action(org, tool, key="away", endpoint="/away")
    for action in (same, away):
        result = api.client.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                          headers=api.headers(org, user))
        assert result.status_code == 200 and result.json["success"] is True, result.text
    assert seen == {"localhost": "key-abcdefgh", "127.0.0.1": None}


def test_credentials_are_placeholders_until_the_request_is_sent(api, org, user, worker, httpserver, caplog):
    """The call a step builds, and every log line about it, holds ``{{secret:…}}``; only the
    request on the wire carries the credential (no string-matched mask involved)."""
    caplog.set_level("DEBUG")
    seen = []

    def echo(request):
        seen.append(request.headers.get("Authorization"))
        return Response("{}", content_type="application/json")

    httpserver.expect_request("/me").respond_with_handler(echo)
    tool = api.tool(org, baseUrl=httpserver.url_for("/"), authType="basic")
    api.create(f"/tools/{tool['id']}/auth", org, {"name": "ops", "type": "basic",
                                                   "config": {"username": "ada", "password": "pw-7c1e9a"}})
    api.action(org, tool, key="me", endpoint="/me")
    flow = api.flow(org, steps=[step("me", "action", {"actionKey": "me", "inputs": {}})])
    run = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    assert run["status"] == "completed", run
    wire = "Basic " + __import__("base64").b64encode(b"ada:pw-7c1e9a").decode()
    assert seen == [wire]
    assert "'Authorization': 'Basic {{secret:ops.basic}}'" in caplog.text
    assert wire.split()[1] not in caplog.text and "pw-7c1e9a" not in caplog.text
