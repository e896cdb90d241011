"""foreach steps: items run in input order of their results, concurrently within the bound,
each item its own checkpoint, so a run resumed after its worker was killed half-way runs only
the unfinished items; items sleeping in a back-off hold no thread; the item limit holds."""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time

from test_engine import execute, step, wait_for
from test_worker_processes import log_tail, run_status, start_worker, stop, wait_until
from werkzeug import Response

from tolstoy import engine


def foreach(step_id, items, inner, **config):
    return step(step_id, "foreach", {"items": items, "step": inner, **config})


def test_items_see_item_and_index_and_results_keep_input_order(api, org, user, worker):
    flow = api.flow(org, steps=[
        step("list", "transform", {"output": {"names": "{{ variables.names }}"}}),
        foreach("each", "{{ steps.list.names }}",
                {"type": "transform", "config": {"output": {"n": "{{ index }}", "hello": "hi {{ item }}"}}},
                concurrency=3),
        step("after", "transform", {"output": "{{ steps.each | length }} {{ steps.each[2].hello }}"}),
    ])
    run = wait_for(api, org, flow, execute(api, org, user, flow, {"names": ["ada", "bob", "cy", "di"]})[
        "executionId"])
    assert run["status"] == "completed", run
    assert run["outputs"]["each"] == [{"n": 0, "hello": "hi ada"}, {"n": 1, "hello": "hi bob"},
                                      {"n": 2, "hello": "hi cy"}, {"n": 3, "hello": "hi di"}]
    assert run["outputs"]["after"] == "4 hi cy"
    assert set(run["outputs"]) == {"list", "each", "after"}  # items are in their step's output only
    rows = {s["stepId"]: s for s in run["steps"]}
    assert rows["each[3]"]["status"] == "completed" and rows["each[3]"]["outputs"] == {"n": 3, "hello": "hi di"}
    assert rows["each"]["inputs"] == {"items": 4, "concurrency": 3, "failed": 0}


def test_concurrency_is_real_and_bounded(api, org, user, worker, server):
    lock = threading.Lock()
    state = {"now": 0, "most": 0}

    def slow(request):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.3)
        with lock:
            state["now"] -= 1
        return Response(json.dumps({"got": request.json}), content_type="application/json")

    server.expect_request("/slow").respond_with_handler(slow)
    flow = api.flow(org, steps=[foreach("each", list(range(12)), {
        "type": "http_request", "config": {"method": "POST", "url": server.url_for("/slow"),
                                           "body": {"i": "{{ item }}"}}}, concurrency=4)])
    started = time.monotonic()
    run = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"], timeout=30)
    assert run["status"] == "completed", run
    assert time.monotonic() - started < 12 * 0.3  # not one at a time
    assert state["most"] == 4
    assert [r["body"]["got"]["i"] for r in run["outputs"]["each"]] == list(range(12))


def test_a_failed_item_fails_the_step_unless_it_continues_on_errors(api, org, user, worker, server):
    server.expect_request("/item").respond_with_handler(
        lambda request: Response("{}", status=400 if request.json["i"] == 2 else 200,
                                 content_type="application/json"))
    inner = {"type": "http_request", "config": {"method": "PUT", "url": server.url_for("/item"),
                                                "body": {"i": "{{ item }}"}}}
    strict = api.flow(org, steps=[foreach("each", [0, 1, 2, 3], inner)])
    run = wait_for(api, org, strict, execute(api, org, user, strict)["executionId"])
    assert run["status"] == "failed" and run["error"]["stepId"] == "each", run
    assert run["error"]["message"].startswith("Item 2 failed: "), run["error"]
    lenient = api.flow(org, steps=[foreach("each", [0, 1, 2, 3], inner, continueOnError=True)])
    run = wait_for(api, org, lenient, execute(api, org, user, lenient)["executionId"])
    assert run["status"] == "completed", run
    assert [r and r["status"] for r in run["outputs"]["each"]] == [200, 200, None, 200]
    rows = {s["stepId"]: s for s in run["steps"]}
    assert rows["each[2]"]["status"] == "failed" and rows["each"]["inputs"]["failed"] == 1


def test_items_in_back_off_or_asleep_go_back_to_the_queue(api, org, user, worker, server):
    seen: dict[int, int] = {}

    def flaky(request):
        i = request.json["i"]
        seen[i] = seen.get(i, 0) + 1
        return Response("{}", status=503 if i == 1 and seen[i] == 1 else 200, content_type="application/json")

    server.expect_request("/flaky").respond_with_handler(flaky)
    flow = api.flow(org, steps=[
        foreach("calls", [0, 1, 2], {"type": "http_request",
                                     "config": {"method": "PUT", "url": server.url_for("/flaky"),
                                                "body": {"i": "{{ item }}"}},
                                     "retryPolicy": {"maxRetries": 2, "delayMs": 300,
                                                     "backoffStrategy": "fixed"}}, concurrency=3),
        foreach("naps", [0, 1], {"type": "delay", "config": {"ms": 150}}, concurrency=2),
    ])
    execution_id = execute(api, org, user, flow)["executionId"]

    def asleep():  # items 0 and 2 done, item 1 in back-off: the run is back in the queue
        run = api.client.simulate_get(f"/flows/{flow['id']}/executions/{execution_id}",
                                      headers=api.headers(org)).json
        rows = {s["stepId"]: s["status"] for s in run["steps"]}
        return run["status"] == "queued" and rows.get("calls[1]") == "waiting" and rows
    rows = wait_until(asleep, 10, "the run to sleep in item 1's back-off")
    assert rows["calls"] == "running" and rows["calls[0]"] == rows["calls[2]"] == "completed", rows
    run = wait_for(api, org, flow, execution_id)
    assert run["status"] == "completed", run
    assert seen == {0: 1, 1: 2, 2: 1}
    assert run["outputs"]["naps"] == [{"delayedMs": 150}, {"delayedMs": 150}]


def test_more_items_than_the_limit_fail_the_step(api, org, user, config, worker_db):
    flow = api.flow(org, steps=[foreach("each", "{{ range(6) | list }}",
                                        {"type": "transform", "config": {"output": "{{ item }}"}})])
    execution_id = execute(api, org, user, flow)["executionId"]
    w = engine.worker(dataclasses.replace(config, foreach_max_items=5), worker_db, concurrency=1,
                      poll_seconds=0.1)
    w.run(stop_after_idle=True)
    run = wait_for(api, org, flow, execution_id)
    assert run["status"] == "failed", run
    assert run["error"]["message"] == ("foreach has 6 items, more than the limit of 5 (TOLSTOY_FOREACH_MAX_ITEMS)")
    assert run["error"]["name"] == "TooManyItems"


def test_a_foreach_is_validated_when_the_flow_is_saved(api, org):
    bad = {"name": "F", "steps": [step("each", "foreach", {
        "items": 7, "concurrency": 51,
        "step": {"type": "foreach", "config": {}}})]}
    result = api.client.simulate_post("/flows", json=bad, headers=api.headers(org))
    assert result.status_code == 400, result.text
    fields = {e["field"]: e["message"] for e in result.json["errors"]}
    assert set(fields) == {"steps[0].config.items", "steps[0].config.concurrency",
                           "steps[0].config.step.type"}, fields
    assert "cannot run a foreach" in fields["steps[0].config.step.type"]
    bad = {"name": "F", "steps": [step("each", "foreach", {
        "items": [1], "step": {"type": "http_request", "config": {"method": "POST"}}})]}
    result = api.client.simulate_post("/flows", json=bad, headers=api.headers(org))
    assert result.status_code == 400, result.text
    assert [e["field"] for e in result.json["errors"]] == ["steps[0].config.step.config.url"]


def test_a_thousand_posts_exactly_once_across_a_killed_worker(api, org, user, worker_env, server, db, clock):
    """Every item is posted once: a second worker resumes after the first is SIGKILLed half-way and
    runs only unfinished items. The few POSTs in flight at the kill have an unknown outcome; with
    onUnknownOutcome "retry" they are sent again with the same Idempotency-Key, which the stub (like
    any tool honouring keys) de-duplicates: one effect per item, at most `concurrency` repeats."""
    lock = threading.Lock()
    posts: list[str] = []
    effects: dict[str, int] = {}
    half = threading.Event()

    def post(request):
        key = request.headers.get("Idempotency-Key")
        with lock:
            posts.append(key)
            effects.setdefault(key, request.json["n"])  # a repeated key is the same request: no new effect
            if len(posts) >= 500:
                half.set()
        return Response(json.dumps({"n": request.json["n"]}), content_type="application/json")

    server.expect_request("/items").respond_with_json({"items": [{"n": n} for n in range(1000)]})
    server.expect_request("/post").respond_with_handler(post)
    flow = api.flow(org, steps=[
        step("list", "http_request", {"method": "GET", "url": server.url_for("/items")}),
        foreach("each", "{{ steps.list.body.items }}", {
            "type": "http_request", "onUnknownOutcome": "retry",
            "config": {"method": "POST", "url": server.url_for("/post"), "body": {"n": "{{ item.n }}"}}},
            concurrency=10),
        step("count", "transform", {"output": "{{ steps.each | length }}"}),
    ])
    first = start_worker(worker_env)
    second = None
    try:
        execution_id = execute(api, org, user, flow)["executionId"]
        assert half.wait(120), log_tail(first)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        with lock:
            at_kill = len(posts)
        assert at_kill < 1000
        clock.move_past_leases()  # rather than wait for the dead worker's lease to run out
        second = start_worker(worker_env)
        wait_until(lambda: run_status(db, execution_id) in ("completed", "failed"), 180, "the run to end")
    finally:
        stop(first)
        if second is not None:
            stop(second)
    run = wait_for(api, org, flow, execution_id)
    assert run["status"] == "completed", (run["error"], log_tail(second))
    assert run["outputs"]["count"] == 1000
    assert [r["body"]["n"] for r in run["outputs"]["each"]] == list(range(1000))
    assert sorted(effects.values()) == list(range(1000))  # every item took effect exactly once
    assert set(effects) == {f"{execution_id}:each[{n}]:1" for n in range(1000)}
    repeats = len(posts) - 1000
    assert 0 <= repeats <= 10, repeats  # only calls in flight at the kill were sent again
    with db.pool.connection() as conn:
        row = conn.execute("select claims, recoveries from flow_runs where id = %s", (execution_id,)).fetchone()
    assert row == {"claims": 2, "recoveries": 1}


def test_an_item_cut_off_mid_call_waits_for_a_person_and_is_resolved_by_its_id(api, org, user, config,
                                                                                worker_db, db, server):
    server.expect_request("/post").respond_with_json({"ok": True})
    flow = api.flow(org, steps=[foreach("each", [0, 1, 2], {
        "type": "http_request", "config": {"method": "POST", "url": server.url_for("/post")}})])
    execution_id = execute(api, org, user, flow)["executionId"]
    with db.pool.connection() as conn:  # as if a worker had died during item 1's POST
        conn.execute("insert into flow_run_steps (org_id, run_id, run_created_at, step_id, status, attempt, "
                     "call_started_at) select org_id, id, created_at, 'each[1]', 'running', 1, now() "
                     "from flow_runs where id = %s", (execution_id,))

    def drain():
        engine.worker(config, worker_db, concurrency=1, poll_seconds=0.1).run(stop_after_idle=True)

    drain()
    run = wait_for(api, org, flow, execution_id, statuses=("waiting",))
    rows = {s["stepId"]: s["status"] for s in run["steps"]}
    assert rows == {"each": "running", "each[0]": "completed", "each[1]": "outcome_unknown",
                    "each[2]": "completed"}, rows
    resolved = api.client.simulate_post(
        f"/flows/{flow['id']}/executions/{execution_id}/steps/each%5B1%5D/resolve",
        json={"outcome": "succeeded", "outputs": {"status": 201, "headers": {}, "body": {"by": "hand"}}},
        headers=api.headers(org, user))
    assert resolved.status_code == 202, resolved.text
    drain()
    run = wait_for(api, org, flow, execution_id)
    assert run["status"] == "completed", run
    assert [r["status"] for r in run["outputs"]["each"]] == [200, 201, 200]
    assert len(server.log) == 2  # items 0 and 2; item 1 was not sent again
