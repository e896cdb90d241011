"""One trace per run (tolstoy/tracing.py), exported by real worker processes over OTLP/HTTP to a receiver on
127.0.0.1 that decodes the protobuf: a run with a subflow, a foreach and a retried call, whose worker is
SIGKILLed mid-call and whose run another worker finishes, is one trace (its id the run's) under one run
span; the spans carry placeholders, never the secrets the run used (planted and grepped for)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from otlp import Receiver, exporting_env, waterfall
from test_engine import execute, step
from test_wait_signals import until_waiting
from test_worker_processes import log_tail, run_status, start_worker, stop, wait_until
from werkzeug import Response

from tolstoy import signatures, tracing

API_KEY = "key-planted-credential-7f3a"
TOKEN = "tok-planted-sealed-output-91bc"
BODY = "body-planted-request-5e2d"
VARIABLE = "var-planted-password-0c4e"
ROOT = Path(__file__).resolve().parents[2]
CALLER_TRACE, CALLER_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


@pytest.fixture
def receiver():
    with Receiver() as running:
        yield running


def by_id(spans):
    return {s["span_id"]: s for s in spans}


def test_a_run_is_one_trace_across_a_sigkill_with_placeholders_and_no_secrets(api, org, user, worker_env, server,
                                                                               receiver, db, clock):
    entered, killed = threading.Event(), threading.Event()
    flaky = {"n": 0}

    def answer_flaky(request):
        flaky["n"] += 1
        return Response('{"ok": true}', status=503 if flaky["n"] == 1 else 200, content_type="application/json")

    def slow(request):
        entered.set()
        killed.wait(30)  # in flight until its worker is dead
        return Response('{"ok": true}', content_type="application/json")

    server.expect_request("/api/items/42").respond_with_json({"id": 42})
    server.expect_request("/flaky").respond_with_handler(answer_flaky)
    server.expect_request("/slow").respond_with_handler(slow)
    tool = api.tool(org, baseUrl=server.url_for("/api"), authType="apiKey")
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "apiKey", "isDefault": True,
                                                  "config": {"headerName": "X-Api-Key", "headerValue": API_KEY}})
    action = api.action(org, tool, key="items.get", method="GET", endpoint="/items/{id}",
                        inputSchema={"type": "object", "properties": {"id": {"type": "integer"},
                                                                      "note": {"type": "string"}}})
    child = api.flow(org, steps=[step("inner", "transform", {"output": {"done": True}})])
    flow = api.flow(org, steps=[
        step("login", "transform", {"output": {"access_token": TOKEN}}),
        step("fetch", "action", {"actionKey": action["key"], "inputs": {"id": 42, "note": BODY}}),
        step("child", "subflow", {"flowId": child["id"]}),
        step("each", "foreach", {"items": [1, 2], "step": {"type": "transform", "config": {"output": "{{ item }}"}}}),
        step("flaky", "http_request", {"method": "POST", "url": server.url_for("/flaky"),
                                       "body": {"token": "{{ steps.login.access_token }}", "v": "{{ variables.password }}"}},
             retryPolicy={"maxRetries": 2, "delayMs": 10}),
        step("slow", "http_request", {"method": "GET", "url": server.url_for("/slow")}),
        step("last", "transform", {"output": 1}),
    ])
    env = {**worker_env, **exporting_env(receiver)}
    first = start_worker(env)
    second = None
    try:
        # The caller's trace: the run's spans, in whatever process, join it.
        run = execute(api, org, user, flow, {"password": VARIABLE},
                      headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
        assert entered.wait(30), log_tail(first)
        # What the first worker finished is exported before it dies (a batch every 50 ms).
        receiver.wait_for(lambda spans: any(s["name"] == "step flaky" and s["attributes"].get(
            "tolstoy.step.outcome") == "completed" for s in spans), what="the first worker's spans")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed.set()
        clock.move_past_leases()
        second = start_worker(env)
        wait_until(lambda: run_status(db, run["executionId"]) in ("completed", "failed"), 60, "the run to end")
        assert run_status(db, run["executionId"]) == "completed", log_tail(second)
        trace_id = CALLER_TRACE
        spans = receiver.wait_for(lambda got: any(s["name"] == f"run {flow['id']}" and s["trace_id"] == trace_id
                                                  for s in got), what="the run span")
    finally:
        stop(first)
        if second is not None:
            stop(second)
    mine = [s for s in spans if s["trace_id"] == trace_id]
    spans_by_id = by_id(mine)
    # One run span, exported by the worker that finished the run, from the run's queueing on.
    [run_span] = [s for s in mine if s["name"] == f"run {flow['id']}"]
    assert run_span["span_id"] == format(tracing.run_ids(run["executionId"])[1], "016x")
    assert run_span["attributes"]["tolstoy.run.status"] == "completed"
    assert run_span["parent_span_id"] == CALLER_SPAN
    # Two processes worked on it: every claim's span is a child of the run span, from both pids.
    claims = [s for s in mine if s["name"] == f"claim {flow['id']}"]
    assert {c["parent_span_id"] for c in claims} == {run_span["span_id"]}
    assert len({c["resource"]["process.pid"] for c in claims}) == 2, [c["resource"] for c in claims]
    # It spans the run from its queueing to its finish (the last claim's span ends just after, as it returns).
    assert all(run_span["start"] <= c["start"] <= run_span["end"] for c in claims)
    assert all(s["end"] <= run_span["end"] for s in mine if s["name"].startswith("step "))

    def steps_named(name):
        return [s for s in mine if s["name"] == f"step {name}"]

    for name in ("login", "fetch", "child", "each", "flaky", "slow", "last"):
        assert steps_named(name), name
        # Under the run span, not under a claim's (a SIGKILLed worker never exports the claim it was in).
        assert {s["parent_span_id"] for s in steps_named(name)} == {run_span["span_id"]}, name
    # The retried call: attempt 1 failed on a 503, attempt 2 completed, each with its call span.
    flaky_steps = sorted(steps_named("flaky"), key=lambda s: s["attributes"]["tolstoy.step.attempt"])
    assert [(s["attributes"]["tolstoy.step.attempt"], s["attributes"]["tolstoy.step.outcome"])
            for s in flaky_steps] == [(1, "sleep"), (2, "completed")]
    calls = [s for s in mine if s["name"] == f"POST {server.url_for('/flaky').rsplit('/', 1)[0]}"]
    assert sorted((c["attributes"]["tolstoy.call.retries"], c["attributes"]["http.response.status_code"])
                  for c in calls) == [(0, 503), (1, 200)]
    assert {spans_by_id[c["parent_span_id"]]["name"] for c in calls} == {"step flaky"}
    # The action's call: the endpoint's placeholder, not the id it was sent with.
    [fetch_call] = [s for s in mine if s["attributes"].get("url.template", "").endswith("/items/{id}")]
    assert fetch_call["name"].startswith("GET ") and fetch_call["attributes"]["http.response.status_code"] == 200
    # The foreach's items are steps under the foreach step.
    items = [s for s in mine if s["name"] in ("step each[0]", "step each[1]")]
    assert len(items) == 2 and {spans_by_id[i["parent_span_id"]]["name"] for i in items} == {"step each"}
    # The step cut off by the SIGKILL was sent again by the second worker (a GET: safe), its span completed.
    assert any(s["attributes"].get("tolstoy.step.outcome") == "completed" for s in steps_named("slow"))
    # SQL time: on each span, its round trips by query name, without parameters (tracing.SqlTally).
    tallies = [s["attributes"]["tolstoy.sql.queries"] for s in mine if "tolstoy.sql.queries" in s["attributes"]]
    assert tallies and any(re.search(r"(^|[+ ])runs\.checkpoint_call[+ ]", tally) for tally in tallies), tallies
    assert not [e for s in mine for e in s["events"] if e["name"] == "sql"]
    # The tool saw our trace context on every call (the slow call's, sent by the second worker, too).
    sent = [request.headers.get("traceparent") for request, _ in server.log]
    assert sent and all(value and value.split("-")[1] == trace_id for value in sent), sent
    # The subflow's child run (queued by the parent's checkpoint, not by a caller) is in the same trace, under
    # the parent's run span, and its steps under its own run span.
    [child_run] = [s for s in mine if s["name"] == f"run {child['id']}"]
    assert child_run["parent_span_id"] == run_span["span_id"]
    assert child_run["span_id"] == format(tracing.run_ids(child_run["attributes"]["tolstoy.run.id"])[1], "016x")
    assert {s["parent_span_id"] for s in steps_named("inner")} == {child_run["span_id"]}
    if os.environ.get("TOLSTOY_SCREENSHOTS") == "docs":  # docs/observability.md's picture, when asked
        picture(mine, f"Trace {trace_id}: run {run['executionId']}, its worker SIGKILLed during step slow")
    # No secret in anything exported: the credential, the sealed output, the request body, the variable.
    exported = json.dumps([s["raw"] for s in spans]) + "".join(b.decode("latin-1") for b in receiver.bodies)
    for secret in (API_KEY, TOKEN, BODY, VARIABLE):
        assert secret not in exported, secret


def picture(spans: list[dict], title: str) -> None:
    """The trace as a waterfall, screenshotted in Debian's chromium (as the console's pictures are)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1240, "height": 400})
        page.set_content(waterfall(spans, title))
        page.screenshot(path=str(ROOT / "docs" / "trace-run.png"), full_page=True)
        browser.close()


def stored_trace(db, run_id: str) -> str | None:
    with db.pool.connection() as conn:
        return conn.execute("select trace_parent from flow_runs where id = %s", (run_id,)).fetchone()["trace_parent"]


@pytest.mark.parametrize("sent, kept", [
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", True),
    ("00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01", False),  # upper case: not W3C
    ("00-00000000000000000000000000000000-b7ad6b7169203331-01", False),  # an all-zero trace id
    ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", False),  # an all-zero span id
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" + "x" * 5000, False),
    ("garbage", False),
])
def test_a_callers_traceparent_is_kept_with_the_run_on_execute_and_on_a_webhook_trigger(api, org, user, db, client,
                                                                                          sent, kept):
    flow = api.flow(org)
    run = execute(api, org, user, flow, headers={"traceparent": sent})
    assert stored_trace(db, run["executionId"]) == (sent if kept else None)
    hook = api.create(f"/flows/{flow['id']}/triggers", org, {"type": "webhook"})
    body = b'{"a": 1}'
    answer = client.simulate_post(hook["url"], body=body, headers={
        "Content-Type": "application/json", "traceparent": sent,
        "X-Tolstoy-Signature": signatures.sign(hook["secret"], body, int(time.time()))})
    assert answer.status_code == 202, answer.text
    assert stored_trace(db, answer.json["executionId"]) == (sent if kept else None)
    # Nothing else is told by it: the run's view is as before.
    assert "trace" not in json.dumps(api.client.simulate_get(
        f"/flows/{flow['id']}/executions/{run['executionId']}", headers=api.headers(org)).json).lower()


def test_a_retry_and_a_re_run_keep_their_callers_traceparent(api, org, user, db):
    """POST …/retry and …/rerun queue runs as execute does: the caller's trace context is kept with them."""
    flow = api.flow(org)
    run = execute(api, org, user, flow)  # no worker: it stays queued, and cancelling it ends it at once
    base = f"/flows/{flow['id']}/executions/{run['executionId']}"
    assert api.client.simulate_post(f"{base}/cancel", headers=api.headers(org, user)).status_code == 202
    sent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    retried = api.client.simulate_post(f"{base}/retry", headers={**api.headers(org, user), "traceparent": sent})
    assert retried.status_code == 202, retried.text
    assert stored_trace(db, retried.json["executionId"]) == sent
    again = api.client.simulate_post(f"{base}/rerun", json={"fromStep": "hello"},
                                     headers={**api.headers(org, user), "traceparent": sent})
    assert again.status_code == 202, again.text
    assert stored_trace(db, again.json["executionId"]) == sent


def test_a_signal_keeps_its_senders_trace_and_the_wait_step_that_takes_it_links_to_it(api, org, user, worker_env,
                                                                                       receiver, db):
    """The traceparent sent with a signal is stored with it (a malformed one is dropped), and the span of the
    wait step that takes it, in the run's own trace, links to the sender's span."""
    flow = api.flow(org, steps=[step("approve", "wait", {"signal": "approval"}), step("after", "transform",
                                                                                      {"output": 1})])
    worker = start_worker({**worker_env, **exporting_env(receiver)})
    try:
        run = execute(api, org, user, flow)
        until_waiting(api, org, flow, run["executionId"], "approve", timeout=30)
        base = f"/flows/{flow['id']}/executions/{run['executionId']}/signals/approval"
        malformed = api.client.simulate_post(base, json={"payload": 1}, headers={
            **api.headers(org, user), "traceparent": "00-xyz", "Idempotency-Key": "first"})
        assert malformed.status_code == 202, malformed.text
        assert stored_signal_trace(db, malformed.json["signalId"]) is None
        # A second run, woken by a signal sent in a caller's trace.
        second = execute(api, org, user, flow)
        until_waiting(api, org, flow, second["executionId"], "approve", timeout=30)
        sent = api.client.simulate_post(
            f"/flows/{flow['id']}/executions/{second['executionId']}/signals/approval", json={"payload": 2},
            headers={**api.headers(org, user), "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
        assert sent.status_code == 202, sent.text
        assert stored_signal_trace(db, sent.json["signalId"]) == f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        own_trace = format(tracing.run_ids(second["executionId"])[0], "032x")
        spans = receiver.wait_for(lambda got: any(
            s["name"] == "step approve" and s["trace_id"] == own_trace and s["links"] for s in got),
            what="the wait step's span with its link")
    finally:
        stop(worker)
    [taking] = [s for s in spans if s["name"] == "step approve" and s["trace_id"] == own_trace and s["links"]]
    assert [(k["trace_id"], k["span_id"]) for k in taking["links"]] == [(CALLER_TRACE, CALLER_SPAN)]
    assert taking["links"][0]["attributes"] == {"tolstoy.signal.id": sent.json["signalId"]}
    # The first run's signal had no trace context to link to.
    first_trace = format(tracing.run_ids(run["executionId"])[0], "032x")
    assert not [s for s in spans if s["trace_id"] == first_trace and s["links"]]


def stored_signal_trace(db, signal_id: str) -> str | None:
    with db.pool.connection() as conn:
        return conn.execute("select trace_parent from flow_run_signals where id = %s",
                            (signal_id,)).fetchone()["trace_parent"]
