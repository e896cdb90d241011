"""Re-running a finished run from a step (POST …/executions/{id}/rerun), end to end: real PostgreSQL,
a recording tool server on 127.0.0.1 and a worker. What runs again sends its calls again, as new
effects (new Idempotency-Keys); what is kept is not executed; the dry run lists exactly the calls the
real re-run then sends (but those it flags data-dependent)."""

from __future__ import annotations

import signal
import threading

from test_engine import execute, step, wait_for
from test_one_exit import ACCESS, derived_forms, leaks, login_flow
from test_subflow import subflow
from test_worker_processes import run_status, start_worker, stop, wait_until
from werkzeug import Response


def rerun(api, org, user, flow, execution_id, body, headers=None):
    return api.client.simulate_post(f"/flows/{flow['id']}/executions/{execution_id}/rerun", json=body,
                                    headers={**api.headers(org, user), **(headers or {})})


def sent(httpserver, since=0):
    """(method, path, Idempotency-Key) of each request the stub tool server got, in order."""
    return [(r.method, r.path, r.headers.get("Idempotency-Key")) for r, _ in httpserver.log[since:]]


def runs_count(db):
    with db.pool.connection() as conn:
        return conn.execute("select count(*) as n from flow_runs").fetchone()["n"]


def assert_preview_sent(preview, requests):
    """The dry run's calls are what was sent: one call each, and those not flagged data-dependent
    exactly (method and URL)."""
    sent_now = sorted((r.method, r.url) for r in requests)
    assert len(preview["calls"]) == len(sent_now), (preview["calls"], sent_now)
    exact = sorted((c["method"], c["url"]) for c in preview["calls"] if not c["dataDependent"])
    left = list(sent_now)
    for call in exact:
        assert call in left, (call, sent_now)
        left.remove(call)


def five_steps(api, org, httpserver):
    for n in (1, 2, 3, 5):
        httpserver.expect_request(f"/s{n}").respond_with_json({"n": n})
    httpserver.expect_request("/s4").respond_with_json({"down": True}, status=400)
    httpserver.expect_request("/s4b").respond_with_json({"n": 4})
    return api.flow(org, steps=[
        step(f"s{n}", "http_request", {"method": "POST", "url": httpserver.url_for(f"/s{n}"),
                                       "body": {"previous": "{{ steps.s%d.body.n }}" % (n - 1)} if n > 1 else {}})
        for n in range(1, 6)])


def test_a_failed_five_step_run_re_run_from_step_four_sends_only_steps_four_and_five(
        api, org, user, worker, httpserver, db):
    flow = five_steps(api, org, httpserver)
    first = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    assert first["status"] == "failed" and first["error"]["stepId"] == "s4"
    before = len(httpserver.log)
    original_keys = {path: key for _, path, key in sent(httpserver)}
    changed = {"s4": {"config": {"method": "POST", "url": httpserver.url_for("/s4b"),
                                 "body": {"previous": "{{ steps.s3.body.n }}"}}}}

    preview = rerun(api, org, user, flow, first["executionId"], {"fromStep": "s4", "steps": changed, "dryRun": True})
    assert preview.status_code == 200, preview.text
    assert preview.json["keep"] == ["s1", "s2", "s3"] and preview.json["runAgain"] == ["s4", "s5"]
    assert "new" in preview.json["idempotencyKeys"]
    # A dry run writes nothing.
    assert runs_count(db) == 1
    assert len(httpserver.log) == before

    made = rerun(api, org, user, flow, first["executionId"], {"fromStep": "s4", "steps": changed})
    assert made.status_code == 202, made.text
    assert made.json["rerunOf"] == first["executionId"] and made.json["retryOf"] is None
    second = wait_for(api, org, flow, made.json["executionId"])
    assert second["status"] == "completed", second
    assert second["rerunOf"] == first["executionId"]
    assert [(m, p) for m, p, _ in sent(httpserver, before)] == [("POST", "/s4b"), ("POST", "/s5")]
    # New effects: keys of the re-run's own, not the original's chain.
    for _, _path, key in sent(httpserver, before):
        assert key.startswith(made.json["executionId"] + ":"), key
        assert key not in original_keys.values()
    # The kept steps keep their recorded outputs (not executed); the re-run's steps see them.
    assert second["outputs"]["s1"]["body"] == {"n": 1} and second["outputs"]["s5"]["body"] == {"n": 5}
    # The dry run listed exactly what the re-run sent.
    assert_preview_sent(preview.json, [r for r, _ in httpserver.log[before:]])
    assert [c["dataDependent"] for c in preview.json["calls"]] == [False, True]  # s5's body reads s4
    # Both ways: the original lists its re-run.
    again = wait_for(api, org, flow, first["executionId"])
    assert again["reruns"] == [made.json["executionId"]]
    listed = api.client.simulate_get(f"/flows/{flow['id']}/executions", params={"rerunOf": first["executionId"]},
                                     headers=api.headers(org))
    assert [r["executionId"] for r in listed.json] == [made.json["executionId"]]


def test_an_idempotency_key_makes_one_re_run(api, org, user, worker, httpserver):
    flow = five_steps(api, org, httpserver)
    first = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    one = rerun(api, org, user, flow, first["executionId"], {"fromStep": "s5"}, {"Idempotency-Key": "again-1"})
    two = rerun(api, org, user, flow, first["executionId"], {"fromStep": "s5"}, {"Idempotency-Key": "again-1"})
    assert one.status_code == two.status_code == 202
    assert one.json["executionId"] == two.json["executionId"]
    # Without a key, each request is a re-run of its own (a run may be re-run many times).
    three = rerun(api, org, user, flow, first["executionId"], {"fromStep": "s5"})
    assert three.json["executionId"] != one.json["executionId"]


def test_bad_requests_name_the_field_and_write_nothing(api, org, user, worker, httpserver, db):
    flow = five_steps(api, org, httpserver)
    first = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    cases = [
        ({"fromStep": "nope"}, 400, "fromStep"),
        ({"fromStep": "s1/x"}, 400, "fromStep"),
        ({"fromStep": "s1[3]"}, 400, "fromStep"),
        ({"fromStep": "a[1]/b"}, 400, "fromStep"),
        ({"fromStep": ""}, 400, "fromStep"),
        ({}, 400, "fromStep"),
        ({"fromStep": "s4", "steps": {"s4": {"config": {"method": "FETCH", "url": "x"}}}}, 400, "steps.s4.config.method"),
        ({"fromStep": "s4", "steps": {"zz": {"config": {}}}}, 400, "steps.zz"),
        ({"fromStep": "s4", "steps": {"s4/x": {"config": {}}}}, 400, "steps.s4/x"),
        ({"fromStep": "s1/" * 20 + "s2"}, 400, "fromStep"),
        ({"fromStep": "s4", "steps": {"s4": {"config": {"method": "POST", "url": "{{ steps.s3"}}}}, 400,
         "steps.s4.config.url"),
        ({"fromStep": "s4", "version": 9}, 400, "version"),
        ({"fromStep": "s4", "variables": [1]}, 400, "variables"),
        ({"fromStep": "s4", "dryRun": "yes"}, 400, "dryRun"),
    ]
    for body, status, field in cases:
        result = rerun(api, org, user, flow, first["executionId"], body)
        assert result.status_code == status, (body, result.text)
        assert result.json["errors"][0]["field"] == field, (body, result.json)
    assert runs_count(db) == 1


def test_a_run_that_has_not_finished_is_a_409(api, org, user, httpserver, db):
    flow = five_steps(api, org, httpserver)
    queued = execute(api, org, user, flow)  # no worker: it stays queued
    result = rerun(api, org, user, flow, queued["executionId"], {"fromStep": "s4"})
    assert result.status_code == 409, result.text
    assert runs_count(db) == 1


def test_one_foreach_item_of_a_hundred_is_sent_again(api, org, user, worker, httpserver):
    httpserver.expect_request("/item").respond_with_json({"ok": True})
    httpserver.expect_request("/after").respond_with_json({"ok": True})
    flow = api.flow(org, steps=[
        step("each", "foreach", {"items": "{{ variables.ids }}", "concurrency": 5, "step": {
            "type": "http_request", "config": {"method": "POST", "url": httpserver.url_for("/item") + "?id={{ item }}"}}}),
        step("after", "http_request", {"method": "POST", "url": httpserver.url_for("/after")}),
    ])
    first = wait_for(api, org, flow, execute(api, org, user, flow, {"ids": list(range(100))})["executionId"], timeout=60)
    assert first["status"] == "completed"
    before = len(httpserver.log)
    preview = rerun(api, org, user, flow, first["executionId"], {"fromStep": "each[7]", "dryRun": True}).json
    assert [c["stepId"] for c in preview["calls"]] == ["each[7]", "after"]
    made = rerun(api, org, user, flow, first["executionId"], {"fromStep": "each[7]"})
    assert made.status_code == 202, made.text
    second = wait_for(api, org, flow, made.json["executionId"], timeout=60)
    assert second["status"] == "completed", second
    requests = [(r.method, r.path, r.query_string.decode()) for r, _ in httpserver.log[before:]]
    assert requests == [("POST", "/item", "id=7"), ("POST", "/after", "")]
    assert len(second["outputs"]["each"]) == 100
    assert_preview_sent(preview, [r for r, _ in httpserver.log[before:]])


def test_a_re_run_reaches_into_a_subflow_steps_child(api, org, user, worker, httpserver, db):
    httpserver.expect_request("/charge").respond_with_json({"id": "ch_1"})
    httpserver.expect_request("/quote").respond_with_json({"price": 3})
    httpserver.expect_request("/notify").respond_with_json({"ok": True})
    child = api.flow(org, steps=[
        step("quote", "http_request", {"method": "GET", "url": httpserver.url_for("/quote")}),
        step("charge", "http_request", {"method": "POST", "url": httpserver.url_for("/charge")}),
    ])
    parent = api.flow(org, steps=[
        subflow("call", child),
        step("notify", "http_request", {"method": "POST", "url": httpserver.url_for("/notify")}),
    ])
    first = wait_for(api, org, parent, execute(api, org, user, parent)["executionId"], timeout=30)
    assert first["status"] == "completed", first
    before = len(httpserver.log)
    preview = rerun(api, org, user, parent, first["executionId"], {"fromStep": "call/charge", "dryRun": True})
    assert preview.status_code == 200, preview.text
    assert preview.json["keep"] == ["call/quote"]
    assert preview.json["runAgain"] == ["call", "call/charge", "notify"]
    made = rerun(api, org, user, parent, first["executionId"], {"fromStep": "call/charge"})
    assert made.status_code == 202, made.text
    second = wait_for(api, org, parent, made.json["executionId"], timeout=30)
    assert second["status"] == "completed", second
    assert [(m, p) for m, p, _ in sent(httpserver, before)] == [("POST", "/charge"), ("POST", "/notify")]
    assert_preview_sent(preview.json, [r for r, _ in httpserver.log[before:]])
    # The child is a re-run of the original's child, linked as any re-run is.
    original_child = next(s for s in first["steps"] if s["stepId"] == "call")["childExecutionId"]
    new_child = next(s for s in second["steps"] if s["stepId"] == "call")["childExecutionId"]
    with db.pool.connection() as conn:
        row = conn.execute("select rerun_of, root_run_id, id from flow_runs where id = %s", (new_child,)).fetchone()
    assert str(row["rerun_of"]) == original_child and row["root_run_id"] == row["id"]


def test_another_organizations_run_is_a_404(api, org, user, worker, httpserver, db):
    flow = five_steps(api, org, httpserver)
    first = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    other = api.org("Other")
    other_user = api.user(other)
    for body in ({"fromStep": "s4"}, {"fromStep": "s4", "dryRun": True}, {"fromStep": 7}):
        result = rerun(api, other, other_user, flow, first["executionId"], body)
        assert result.status_code == 404, result.text
    own_flow = api.flow(other)
    result = rerun(api, other, other_user, own_flow, first["executionId"], {"fromStep": "s4"})
    assert result.status_code == 404, result.text
    assert runs_count(db) == 1


def test_a_worker_killed_during_a_re_run_leaves_it_to_another_which_finishes_it(api, db, worker_env, httpserver,
                                                                                 clock):
    seen: list[tuple[str, str]] = []
    in_flight = threading.Event()
    killed = threading.Event()

    def record(request):
        seen.append((request.path, request.headers.get("Idempotency-Key")))
        if request.path == "/b" and len([p for p, _ in seen if p == "/b"]) == 2:
            in_flight.set()  # the re-run's call: in flight until its worker is dead
            killed.wait(30)
        return Response('{"ok": true}', content_type="application/json")

    for path in ("/a", "/b", "/c"):
        httpserver.expect_request(path).respond_with_handler(record)
    org = api.org()
    user = api.user(org)
    flow = api.flow(org, steps=[
        step("a", "http_request", {"method": "POST", "url": httpserver.url_for("/a")}),
        step("b", "http_request", {"method": "POST", "url": httpserver.url_for("/b")}, onUnknownOutcome="retry"),
        step("c", "http_request", {"method": "POST", "url": httpserver.url_for("/c")}),
    ])
    first = start_worker(worker_env)
    second = None
    try:
        original = execute(api, org, user, flow)["executionId"]
        wait_until(lambda: run_status(db, original) == "completed", 30, "the original to complete")
        made = rerun(api, org, user, flow, original, {"fromStep": "b"})
        assert made.status_code == 202, made.text
        again = made.json["executionId"]
        assert in_flight.wait(20), "the worker never reached the re-run's step b"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert run_status(db, again) == "running"  # orphaned under an expiring lease
        killed.set()
        clock.move_past_leases()
        second = start_worker(worker_env)
        wait_until(lambda: run_status(db, again) == "completed", 30, "the re-run to complete")
    finally:
        stop(first)
        if second is not None:
            stop(second)
    paths = [path for path, _ in seen]
    assert paths.count("/a") == 1  # kept by the re-run: never executed again, not even on its recovery
    assert paths.count("/c") == 2  # the original's and the re-run's
    b_keys = [key for path, key in seen if path == "/b"]
    # The original's, then the re-run's twice (in flight when its worker died, sent again under its key).
    assert b_keys == [f"{original}:b:1", f"{again}:b:1", f"{again}:b:1"]
    with db.pool.connection() as conn:
        row = conn.execute("select claims, rerun_of::text from flow_runs where id = %s", (again,)).fetchone()
    assert row == {"claims": 2, "rerun_of": original}


def test_the_preview_names_each_calls_tool_and_says_which_are_not_idempotent(api, org, user, worker, httpserver):
    httpserver.expect_request("/api/orders/5").respond_with_json({"id": 5})
    httpserver.expect_request("/api/items/5").respond_with_json({"id": 5})
    httpserver.expect_request("/start").respond_with_json({"n": 5})
    httpserver.expect_request("/hook").respond_with_json({})
    keyed = api.tool(org, "Payments", baseUrl=httpserver.url_for("/api"), honorsIdempotencyKey=True)
    plain = api.tool(org, "Catalog", baseUrl=httpserver.url_for("/api"))
    api.action(org, keyed, key="orders.create", method="POST", endpoint="/orders/{id}")
    api.action(org, plain, key="items.get", method="GET", endpoint="/items/{id}")
    api.action(org, plain, key="items.touch", method="POST", endpoint="/items/{id}")
    flow = api.flow(org, steps=[
        step("start", "http_request", {"method": "GET", "url": httpserver.url_for("/start")}),
        step("order", "action", {"actionKey": "orders.create", "inputs": {"id": "{{ steps.start.body.n }}"}}),
        step("item", "action", {"actionKey": "items.get", "inputs": {"id": "{{ steps.start.body.n }}"}}),
        step("touch", "action", {"actionKey": "items.touch", "inputs": {"id": "{{ steps.order.body.id }}"}},
             executeIf="{{ variables.touch is defined and variables.touch }}"),
        step("hook", "http_request", {"method": "POST", "url": httpserver.url_for("/hook")}),
    ])
    first = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    assert first["status"] == "completed", first
    preview = rerun(api, org, user, flow, first["executionId"], {"fromStep": "order", "dryRun": True})
    assert preview.status_code == 200, preview.text
    calls = {c["stepId"]: c for c in preview.json["calls"]}
    assert list(calls) == ["order", "item", "hook"]  # touch's executeIf is false: it sends nothing
    assert calls["order"] == {"stepId": "order", "kind": "action", "tool": "Payments", "method": "POST",
                              "url": httpserver.url_for("/api/orders/5"), "notIdempotent": False,
                              "dataDependent": False}
    assert calls["item"]["notIdempotent"] is False and calls["item"]["url"] == httpserver.url_for("/api/items/5")
    assert calls["hook"]["notIdempotent"] is True and calls["hook"]["tool"] is None
    # With touch's executeIf true, its call reads what order returns (which runs again): data-dependent,
    # its URL left with its placeholder.
    preview = rerun(api, org, user, flow, first["executionId"],
                    {"fromStep": "order", "dryRun": True, "variables": {"touch": True}}).json
    touch = next(c for c in preview["calls"] if c["stepId"] == "touch")
    assert touch["dataDependent"] is True and touch["notIdempotent"] is True
    assert touch["url"] == httpserver.url_for("/api/items/{id}")
    before = len(httpserver.log)
    made = rerun(api, org, user, flow, first["executionId"], {"fromStep": "order", "variables": {"touch": True}})
    httpserver.expect_request("/api/items/5", method="POST").respond_with_json({"ok": True})
    assert wait_for(api, org, flow, made.json["executionId"])["status"] == "completed"
    assert_preview_sent(preview, [r for r, _ in httpserver.log[before:]])


def test_a_retry_of_a_re_run_continues_the_re_runs_keys_and_another_version_adds_its_steps(
        api, org, user, worker, httpserver):
    flow = five_steps(api, org, httpserver)
    first = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    before = len(httpserver.log)
    again = rerun(api, org, user, flow, first["executionId"], {"fromStep": "s4"}).json["executionId"]
    assert wait_for(api, org, flow, again)["status"] == "failed"  # s4 still answers 400
    retried = api.client.simulate_post(f"/flows/{flow['id']}/executions/{again}/retry",
                                       headers=api.headers(org, user)).json["executionId"]
    assert wait_for(api, org, flow, retried)["status"] == "failed"
    # The re-run's call, then its retry's under the same key: a retry continues the re-run's chain.
    assert sent(httpserver, before) == [("POST", "/s4", f"{again}:s4:1"), ("POST", "/s4", f"{again}:s4:1")]

    # Another version: its steps, the kept ones' outputs as the original recorded them.
    httpserver.expect_request("/s6").respond_with_json({"n": 6})
    steps = api.client.simulate_get(f"/flows/{flow['id']}", headers=api.headers(org)).json["steps"]
    steps[3]["config"]["url"] = httpserver.url_for("/s4b")
    patched = api.client.simulate_patch(f"/flows/{flow['id']}", headers=api.headers(org), json={"steps": [
        *steps, step("s6", "http_request", {"method": "GET", "url": httpserver.url_for("/s6")})]})
    assert patched.status_code == 200 and patched.json["version"] == 2, patched.text
    before = len(httpserver.log)
    made = rerun(api, org, user, flow, first["executionId"], {"fromStep": "s4", "version": 2})
    assert made.status_code == 202 and made.json["flowVersion"] == 2, made.text
    assert wait_for(api, org, flow, made.json["executionId"])["status"] == "completed"
    assert [(m, p) for m, p, _ in sent(httpserver, before)] == [("POST", "/s4b"), ("POST", "/s5"), ("GET", "/s6")]


def test_kept_sealed_outputs_stay_sealed_and_the_re_run_sees_their_real_values(api, org, user, worker, httpserver,
                                                                                db):
    received: list = []
    flow = login_flow(api, org, httpserver, received)
    first = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    assert first["status"] == "completed", first
    preview = rerun(api, org, user, flow, first["executionId"], {"fromStep": "use", "dryRun": True})
    assert preview.status_code == 200 and preview.json["keep"] == ["login", "derive", "nap"], preview.text
    assert leaks(preview.text, ACCESS) == [] and not [v for v in derived_forms() if v in preview.text]
    made = rerun(api, org, user, flow, first["executionId"], {"fromStep": "use"})
    second = wait_for(api, org, flow, made.json["executionId"])
    assert second["status"] == "completed", second
    # The kept outputs' real values reach the step that runs again, as in the original.
    assert len(received) == 2 and received[1] == received[0]
    assert [r.path for r, _ in httpserver.log].count("/login") == 1  # kept: not executed
    with db.pool.connection() as conn:
        rows = conn.execute("select run_id::text, step_id, sealed from flow_run_steps where run_id in (%s, %s)",
                            (first["executionId"], made.json["executionId"])).fetchall()
    sealed = {(r["run_id"], r["step_id"]): r["sealed"] for r in rows}
    for kept in ("login", "derive"):  # copied sealed as they were
        assert sealed[(made.json["executionId"], kept)] == sealed[(first["executionId"], kept)] is not None
    assert sealed[(made.json["executionId"], "use")] is not None
