"""subflow steps: a child run of another flow of the organization, queued in the same statement
as the parent's checkpoint (one child per parent step, also across crashes); a waiting parent
holds no worker thread and is woken by its child's end; cancel propagates; depth is bounded at
run time and cycles are refused at save time."""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time

import psycopg
import pytest
from test_engine import execute, logs_of, step, wait_for
from test_worker_processes import log_tail, run_status, start_worker, stop, wait_until
from werkzeug import Response

from tolstoy import engine


def subflow(step_id, flow, **config):
    return step(step_id, "subflow", {"flowId": flow["id"], **config})


def run_view(api, org, flow, execution_id):
    return api.client.simulate_get(f"/flows/{flow['id']}/executions/{execution_id}", headers=api.headers(org)).json


def children(db, parent_id):
    with db.pool.connection() as conn:
        return conn.execute("select id::text, status::text, depth, parent_step_id from flow_runs "
                            "where parent_run_id = %s order by created_at", (parent_id,)).fetchall()


def test_a_parent_waits_for_its_child_and_gets_its_outputs(api, org, user, worker, db):
    child = api.flow(org, steps=[
        step("greet", "transform", {"output": {"text": "hi {{ variables.who }}"}}),
        step("nap", "delay", {"ms": 200}),
        step("shout", "transform", {"output": "{{ steps.greet.text | upper }}"}),
    ])
    parent = api.flow(org, steps=[
        subflow("call", child, variables={"who": "{{ variables.name }}"}),
        step("after", "transform", {"output": "{{ steps.call.shout }}!"}),
    ])
    execution_id = execute(api, org, user, parent, {"name": "ada"})["executionId"]
    run = wait_for(api, org, parent, execution_id)
    assert run["status"] == "completed", run
    assert run["outputs"]["call"] == {"greet": {"text": "hi ada"}, "nap": {"delayedMs": 200}, "shout": "HI ADA"}
    assert run["outputs"]["after"] == "HI ADA!"
    assert run["parentExecutionId"] is None
    rows = {s["stepId"]: s for s in run["steps"]}
    child_id = rows["call"]["childExecutionId"]
    assert child_id and rows["after"]["childExecutionId"] is None
    assert rows["call"]["inputs"] == {"flowId": child["id"], "version": None, "wait": True,
                                      "variables": {"who": "ada"}}
    kid = run_view(api, org, child, child_id)
    assert kid["status"] == "completed" and kid["variables"] == {"who": "ada"}, kid
    assert kid["parentExecutionId"] == execution_id and kid["parentStepId"] == "call"
    assert kid["userId"] == user["id"] and kid["flowVersion"] == child["version"]
    assert [(c["id"], c["depth"]) for c in children(db, execution_id)] == [(child_id, 1)]
    # The child's runs are listed with their parent, and can be filtered by it.
    listed = api.client.simulate_get(f"/flows/{child['id']}/executions",
                                     params={"parentExecutionId": execution_id}, headers=api.headers(org))
    assert listed.status_code == 200 and [r["executionId"] for r in listed.json] == [child_id]
    other = api.client.simulate_get(f"/flows/{child['id']}/executions",
                                    params={"parentExecutionId": child_id}, headers=api.headers(org))
    assert other.json == []
    # The parent's log names the child it started.
    pending = [e for e in logs_of(api, org, execution_id) if e["stepKey"] == "call" and e["status"] == "pending"]
    assert len(pending) == 1 and pending[0]["inputs"]["childExecutionId"] == child_id


def by_key(step_id, key, **config):
    return step(step_id, "subflow", {"flowKey": key, **config})


def test_a_subflow_step_names_its_child_by_flow_key(api, org, user, worker, db):
    child = api.flow(org, key="greeter", steps=[
        step("greet", "transform", {"output": {"text": "hi {{ variables.who }}"}})])
    parent = api.flow(org, steps=[by_key("call", "greeter", variables={"who": "{{ variables.name }}"}),
                                  step("after", "transform", {"output": "{{ steps.call.greet.text }}!"})])
    assert parent["steps"][0]["config"] == {"flowKey": "greeter", "variables": {"who": "{{ variables.name }}"}}
    execution_id = execute(api, org, user, parent, {"name": "ada"})["executionId"]
    run = wait_for(api, org, parent, execution_id)
    assert run["status"] == "completed", run
    assert run["outputs"]["call"] == {"greet": {"text": "hi ada"}}
    assert run["outputs"]["after"] == "hi ada!"
    rows = {s["stepId"]: s for s in run["steps"]}
    assert rows["call"]["inputs"] == {"flowKey": "greeter", "version": None, "wait": True,
                                      "variables": {"who": "ada"}}
    kid = run_view(api, org, child, rows["call"]["childExecutionId"])
    assert kid["flowId"] == child["id"] and kid["parentExecutionId"] == execution_id, kid
    assert [c["id"] for c in children(db, execution_id)] == [rows["call"]["childExecutionId"]]


def test_a_flow_key_that_names_no_flow_when_the_step_runs_fails_the_step(api, org, user, worker, db):
    child = api.flow(org, key="billing", steps=[step("one", "transform", {"output": 1})])
    parent = api.flow(org, steps=[by_key("call", "billing"), step("never", "transform", {"output": 1})])
    renamed = api.client.simulate_patch(f"/flows/{child['id']}", json={"key": "invoicing"}, headers=api.headers(org))
    assert renamed.status_code == 200, renamed.text
    execution_id = execute(api, org, user, parent)["executionId"]
    run = wait_for(api, org, parent, execution_id)
    assert run["status"] == "failed", run
    assert run["error"]["stepId"] == "call" and run["error"]["name"] == "SubflowNotFound", run
    assert run["error"]["message"] == "No flow with key 'billing' in this organization (any more).", run
    assert children(db, execution_id) == []
    assert "never" not in {s["stepId"] for s in run["steps"]}
    # Another organization's flow with that key is not found either.
    theirs = api.org("Other")
    api.flow(theirs, key="billing")
    execution_id = execute(api, org, user, parent)["executionId"]
    run = wait_for(api, org, parent, execution_id)
    assert run["status"] == "failed" and run["error"]["name"] == "SubflowNotFound", run
    # With a pinned version too.
    pinned = api.flow(org, steps=[by_key("call", "invoicing", version=1)])
    assert api.client.simulate_patch(f"/flows/{child['id']}", json={"key": None},
                                     headers=api.headers(org)).status_code == 200
    execution_id = execute(api, org, user, pinned)["executionId"]
    run = wait_for(api, org, pinned, execution_id)
    assert run["error"]["message"] == "No flow with key 'invoicing' in this organization (any more).", run


def test_a_secret_is_not_passed_in_clear_into_a_childs_variables(api, org, user, worker, db):
    """A child run's variables are stored and shown as they are, so a step that would hand it a
    secret (here a login token) fails, naming why, and queues no child."""
    child = api.flow(org, steps=[step("use", "transform", {"output": "{{ variables.token }}"})])
    parent = api.flow(org, steps=[
        step("login", "transform", {"output": {"access_token": "tok-child-secret-991", "user": "ada"}}),
        subflow("call", child, variables={"token": "{{ steps.login.access_token }}", "who": "ada"}),
    ])
    execution_id = execute(api, org, user, parent)["executionId"]
    run = wait_for(api, org, parent, execution_id)
    assert run["status"] == "failed" and "would carry a secret" in run["error"]["message"], run
    assert children(db, execution_id) == []
    shown = json.dumps(run) + json.dumps(logs_of(api, org, execution_id))
    assert "tok-child-secret-991" not in shown


def test_a_failed_child_fails_the_parent_step_with_its_error(api, org, user, worker, server):
    server.expect_request("/broken").respond_with_data('{"oops": 1}', status=400, content_type="application/json")
    child = api.flow(org, steps=[step("post", "http_request", {"method": "PUT", "url": server.url_for("/broken")})])
    parent = api.flow(org, steps=[subflow("call", child), step("never", "transform", {"output": 1})])
    execution_id = execute(api, org, user, parent)["executionId"]
    run = wait_for(api, org, parent, execution_id)
    assert run["status"] == "failed", run
    rows = {s["stepId"]: s for s in run["steps"]}
    child_id = rows["call"]["childExecutionId"]
    kid = run_view(api, org, child, child_id)
    assert kid["status"] == "failed"
    assert run["error"]["stepId"] == "call" and run["error"]["name"] == "SubflowFailed"
    assert run["error"]["message"] == f"Sub-flow execution {child_id} failed: {kid['error']['message']}"
    assert run["error"]["childExecutionId"] == child_id and run["error"]["childError"] == kid["error"]
    assert "never" not in rows


def test_without_wait_the_output_is_the_child_execution_id(api, org, user, worker):
    child = api.flow(org, steps=[step("nap", "delay", {"ms": 300}), step("done", "transform", {"output": 1})])
    parent = api.flow(org, steps=[subflow("fire", child, wait=False, variables={"n": 1}),
                                  step("next", "transform", {"output": "{{ steps.fire.executionId }}"})])
    execution_id = execute(api, org, user, parent)["executionId"]
    run = wait_for(api, org, parent, execution_id)
    assert run["status"] == "completed", run
    child_id = run["outputs"]["fire"]["executionId"]
    assert run["outputs"]["next"] == child_id
    assert run_view(api, org, child, child_id)["status"] in ("queued", "running")  # still asleep in its delay
    kid = wait_for(api, org, child, child_id)
    assert kid["status"] == "completed" and kid["parentExecutionId"] == execution_id
    assert run_view(api, org, parent, execution_id)["status"] == "completed"  # nothing woke it again


def test_a_waiting_parent_holds_no_worker_thread(api, org, user, config, worker_db):
    # One thread: if the parent held it while waiting, its child (and the other run) could never run.
    child = api.flow(org, steps=[step("nap", "delay", {"ms": 300}), step("done", "transform", {"output": "ok"})])
    parent = api.flow(org, steps=[subflow("call", child)])
    other = api.flow(org)
    w = engine.worker(config, worker_db, concurrency=1, poll_seconds=0.1)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        execution_id = execute(api, org, user, parent)["executionId"]
        wait_until(lambda: run_view(api, org, parent, execution_id)["status"] == "waiting", 10,
                   "the parent to park")
        # Parked: in no thread's hands once its thread has let go (the status is committed a moment before
        # the thread returns; on a loaded machine that moment shows).
        wait_until(lambda: execution_id not in {str(k) for k in w._held}, 5, "the parent's thread to let it go")
        done = wait_for(api, org, other, execute(api, org, user, other)["executionId"])
        assert done["status"] == "completed"
        run = wait_for(api, org, parent, execution_id)
        assert run["status"] == "completed" and run["outputs"]["call"]["done"] == "ok", run
    finally:
        w.stop()
        thread.join(timeout=10)


def test_cancelling_a_parent_cancels_its_children(api, org, user, worker, db):
    grandchild = api.flow(org, steps=[step("nap", "delay", {"ms": 60_000})])
    child = api.flow(org, steps=[subflow("deeper", grandchild)])
    parent = api.flow(org, steps=[subflow("call", child), subflow("loose", grandchild, wait=False)],)
    execution_id = execute(api, org, user, parent)["executionId"]

    def waiting_tree():
        kids = children(db, execution_id)
        grandkids = children(db, kids[0]["id"]) if kids else []
        # The grandchild parked on its delay (queued), not still in a worker's hands: a running run is
        # cancelled at its next step boundary, not at once (on a loaded machine the worker may not be
        # there yet).
        parked = bool(grandkids) and all(run_status(db, g["id"]) == "queued" for g in grandkids)
        return run_status(db, execution_id) == "waiting" and parked and kids + grandkids
    tree = wait_until(waiting_tree, 10, "parent, child and grandchild to be in flight")
    result = api.client.simulate_post(f"/flows/{parent['id']}/executions/{execution_id}/cancel",
                                      headers=api.headers(org))
    assert result.status_code == 202, result.text
    assert result.json["status"] == "cancelled"
    assert run_status(db, execution_id) == "cancelled"
    assert [run_status(db, r["id"]) for r in tree] == ["cancelled", "cancelled"]
    kid = run_view(api, org, child, tree[0]["id"])
    assert kid["error"] == {"message": "Cancelled with its parent"}
    assert [e["status"] for e in logs_of(api, org, tree[0]["id"]) if e["stepKey"] == "$flow"][-1] == "cancelled"
    time.sleep(0.5)  # the cancelled parent is not woken again by its cancelled child
    assert run_status(db, execution_id) == "cancelled"
    assert len(children(db, execution_id)) == 1  # "loose" never ran


def test_retrying_a_parent_whose_subflow_failed_queues_a_new_child(api, org, user, worker, db, server):
    calls = {"n": 0}

    def flaky(request):
        calls["n"] += 1
        return Response("{}", status=500 if calls["n"] == 1 else 200, content_type="application/json")

    server.expect_request("/flaky").respond_with_handler(flaky)
    child = api.flow(org, steps=[step("put", "http_request", {"method": "PUT", "url": server.url_for("/flaky")})])
    parent = api.flow(org, steps=[step("first", "transform", {"output": 1}), subflow("call", child)])
    execution_id = execute(api, org, user, parent)["executionId"]
    assert wait_for(api, org, parent, execution_id)["status"] == "failed"
    retried = api.client.simulate_post(f"/flows/{parent['id']}/executions/{execution_id}/retry",
                                       headers=api.headers(org, user)).json
    run = wait_for(api, org, parent, retried["executionId"])
    assert run["status"] == "completed", run
    first, second = children(db, execution_id), children(db, retried["executionId"])
    assert len(first) == 1 and len(second) == 1 and first[0]["id"] != second[0]["id"]
    assert [first[0]["status"], second[0]["status"]] == ["failed", "completed"]


def test_the_depth_limit_fails_the_step_that_would_nest_too_deep(api, org, user, config, worker_db):
    d = api.flow(org, steps=[step("leaf", "transform", {"output": "deep"})])
    c = api.flow(org, steps=[subflow("call", d)])
    b = api.flow(org, steps=[subflow("call", c)])
    a = api.flow(org, steps=[subflow("call", b)])
    execution_id = execute(api, org, user, a)["executionId"]
    w = engine.worker(dataclasses.replace(config, subflow_max_depth=2), worker_db, concurrency=2,
                      poll_seconds=0.1)
    w.run(stop_after_idle=True)
    run = wait_for(api, org, a, execution_id)
    assert run["status"] == "failed", run
    # c (depth 2) could not queue d (depth 3); its failure went up the chain.
    b_id = {s["stepId"]: s for s in run["steps"]}["call"]["childExecutionId"]
    b_run = run_view(api, org, b, b_id)
    c_id = {s["stepId"]: s for s in b_run["steps"]}["call"]["childExecutionId"]
    c_run = run_view(api, org, c, c_id)
    assert c_run["status"] == "failed"
    assert c_run["error"] == {
        "stepId": "call", "name": "SubflowDepthExceeded",
        "message": "A child run here would be nested 3 deep, more than the limit of 2 (TOLSTOY_SUBFLOW_MAX_DEPTH)."}
    assert {s["stepId"]: s for s in c_run["steps"]}["call"]["childExecutionId"] is None
    assert "TOLSTOY_SUBFLOW_MAX_DEPTH" in run["error"]["message"]


def test_subflow_steps_are_checked_when_the_flow_is_saved(api, org):
    other_org = api.org("Other")
    theirs = api.flow(other_org)
    mine = api.flow(org)

    def errors_of(steps, flow=None):
        if flow is None:
            result = api.client.simulate_post("/flows", json={"name": "F", "steps": steps}, headers=api.headers(org))
        else:
            result = api.client.simulate_patch(f"/flows/{flow['id']}", json={"steps": steps},
                                               headers=api.headers(org))
        assert result.status_code == 400, result.text
        return {e["field"]: e["message"] for e in result.json["errors"]}

    assert errors_of([subflow("call", theirs)]) == {
        "steps[0].config.flowId": "No flow with this id in this organization."}
    assert errors_of([subflow("call", mine, version=2)]) == {
        "steps[0].config.version": "The flow has no version 2."}
    assert errors_of([step("call", "subflow", {"flowKey": "billing"})]) == {
        "steps[0].config.flowKey": "No flow with this key in this organization."}
    api.client.simulate_patch(f"/flows/{theirs['id']}", json={"key": "theirs"}, headers=api.headers(other_org))
    assert set(errors_of([step("call", "subflow", {"flowKey": "theirs"})])) == {"steps[0].config.flowKey"}
    assert set(errors_of([step("call", "subflow", {"flowKey": "Bad Key"})])) == {"steps[0].config.flowKey"}
    keyed = api.client.simulate_patch(f"/flows/{mine['id']}", json={"key": "mine"}, headers=api.headers(org))
    assert keyed.status_code == 200, keyed.text
    assert errors_of([step("call", "subflow", {"flowKey": "mine", "flowId": mine["id"]})]) == {
        "steps[0].config.flowKey": "Name the flow by flowId or by flowKey, not both."}
    assert set(errors_of([step("call", "subflow", {"variables": {}})])) == {"steps[0].config.flowId"}
    assert errors_of([step("call", "subflow", {"flowKey": "mine", "version": 2})]) == {
        "steps[0].config.version": "The flow has no version 2."}
    assert set(errors_of([step("call", "subflow", {"flowId": mine["id"], "wait": "yes", "variables": [1]})])) == {
        "steps[0].config.wait", "steps[0].config.variables"}
    assert set(errors_of([{"id": "each", "type": "foreach", "config": {
        "items": [1], "step": {"type": "subflow", "config": {"flowId": mine["id"]}}}}])) == {
        "steps[0].config.step.type"}
    # Cycles through current versions: a flow calling itself, and a → b → a.
    assert errors_of([subflow("me", mine)], mine) == {
        "steps[0].config.flowId": f"Sub-flow cycle: {mine['id']} → {mine['id']}."}
    b = api.flow(org, steps=[subflow("back", mine)])
    assert errors_of([step("x", "transform", {"output": 1}), subflow("call", b)], mine) == {
        "steps[1].config.flowId": f"Sub-flow cycle: {mine['id']} → {b['id']} → {mine['id']}."}
    # The same cycles named by key.
    assert errors_of([by_key("me", "mine")], mine) == {
        "steps[0].config.flowKey": f"Sub-flow cycle: {mine['id']} → {mine['id']}."}
    c = api.flow(org, key="c", steps=[by_key("back", "mine")])
    assert errors_of([by_key("call", "c")], mine) == {
        "steps[0].config.flowKey": f"Sub-flow cycle: {mine['id']} → {c['id']} → {mine['id']}."}
    assert errors_of([subflow("call", c)], mine) == {
        "steps[0].config.flowId": f"Sub-flow cycle: {mine['id']} → {c['id']} → {mine['id']}."}
    # A version of itself that calls nothing is no cycle.
    ok = api.client.simulate_patch(f"/flows/{mine['id']}", json={"steps": [subflow("old", mine, version=1)]},
                                   headers=api.headers(org))
    assert ok.status_code == 200, ok.text
    assert ok.json["steps"][0]["config"]["flowId"] == mine["id"]


def test_a_killed_worker_while_the_parent_waits_leaves_exactly_one_child(api, db, worker_env, server, clock):
    started = threading.Event()
    killed = threading.Event()
    hits = []

    def slow(request):
        hits.append(request.headers.get("Idempotency-Key"))
        started.set()
        killed.wait(30)  # in flight until its worker is dead
        return Response('{"ok": true}', content_type="application/json")

    server.expect_request("/slow").respond_with_handler(slow)
    org = api.org()
    user = api.user(org)
    child = api.flow(org, steps=[step("call", "http_request", {"method": "PUT", "url": server.url_for("/slow")}),
                                 step("done", "transform", {"output": "{{ variables.n }}"})])
    parent = api.flow(org, steps=[subflow("sub", child, variables={"n": "{{ variables.n }}"}),
                                  step("after", "transform", {"output": "{{ steps.sub.done }}"})])
    first = start_worker(worker_env, concurrency=2)
    second = None
    try:
        execution_id = execute(api, org, user, parent, {"n": 7})["executionId"]
        assert started.wait(20), log_tail(first)
        assert run_status(db, execution_id) == "waiting"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed.set()
        clock.move_past_leases()  # the child's: rather than wait for it to run out
        second = start_worker(worker_env, concurrency=2)
        wait_until(lambda: run_status(db, execution_id) == "completed", 40, "the parent to complete")
    finally:
        stop(first)
        if second is not None:
            stop(second)
    kids = children(db, execution_id)
    assert len(kids) == 1 and kids[0]["status"] == "completed", kids
    with db.pool.connection() as conn:
        outputs = conn.execute("select step_id, outputs from flow_run_steps where run_id = %s order by step_id",
                               (execution_id,)).fetchall()
    assert outputs == [{"step_id": "after", "outputs": 7}, {"step_id": "sub", "outputs": {"call": {
        "status": 200, "headers": outputs[1]["outputs"]["call"]["headers"], "body": {"ok": True}}, "done": 7}}]
    assert len(set(hits)) == 1  # the child's one call, resent with the same key after the crash


def test_a_resumed_subflow_step_finds_its_child_instead_of_queueing_another(api, org, user, db):
    # What a parent resumed after a crash does: the step's statement again, with the same run and step.
    child = api.flow(org)
    parent = api.flow(org, steps=[subflow("call", child, wait=False)])
    execution_id = execute(api, org, user, parent)["executionId"]
    spec = {"step_id": "call", "flow_id": child["id"], "version": None, "variables": {"a": 1}, "wait": False,
            "max_depth": 10}
    with db.pool.connection() as conn:
        claimed = conn.execute("select tolstoy_claim_runs('w1', 10, 30, 3) as answer").fetchone()["answer"]
        token = claimed["runs"][0]["token"]
        answers = [conn.execute("select tolstoy_subflow('w1', %s, %s, %s, '{}', %s::jsonb) as a",
                                (org["id"], execution_id, token, json.dumps(spec))).fetchone()["a"]
                   for _ in range(2)]
        conn.commit()
    assert [a["created"] for a in answers] == [True, False]
    assert answers[0]["child"]["id"] == answers[1]["child"]["id"]
    assert answers[0]["child"]["flow_version"] == child["version"]
    assert [c["id"] for c in children(db, execution_id)] == [answers[0]["child"]["id"]]
    # Another worker's token is refused (TL001), and queues nothing.
    with db.pool.connection() as conn, pytest.raises(psycopg.Error) as refused:
        conn.execute("select tolstoy_subflow('w2', %s, %s, %s, '{}', %s::jsonb)",
                     (org["id"], execution_id, token, json.dumps({**spec, "step_id": "other"})))
    assert refused.value.sqlstate == "TL001"
    assert len(children(db, execution_id)) == 1
    bad = api.client.simulate_get(f"/flows/{child['id']}/executions", params={"parentExecutionId": "nope"},
                                  headers=api.headers(org))
    assert bad.status_code == 400 and bad.json["errors"][0]["field"] == "parentExecutionId"


def test_a_cancel_racing_the_step_that_queues_the_child_cancels_that_child(api, org, user, db):
    # The API's cancel looks for children, then cancels the run. A parent whose subflow step commits its
    # child between the two (the cancel waits for the parent's row meanwhile) must not leave that child
    # queued: it would run on for a cancelled parent.
    child = api.flow(org)
    parent = api.flow(org, steps=[subflow("call", child)])
    execution_id = execute(api, org, user, parent)["executionId"]
    spec = {"step_id": "call", "flow_id": child["id"], "version": None, "variables": {}, "wait": True,
            "max_depth": 10}
    with db.pool.connection() as conn:
        token = conn.execute("select tolstoy_claim_runs('w1', 10, 30, 3) as answer").fetchone()["answer"]
        token = token["runs"][0]["token"]
        conn.execute("begin")
        answer = conn.execute("select tolstoy_subflow('w1', %s, %s, %s, '{}', %s::jsonb) as a",
                              (org["id"], execution_id, token, json.dumps(spec))).fetchone()["a"]
        assert answer["created"] and answer["parked"]
        result = {}

        def cancel():
            result["response"] = api.client.simulate_post(f"/flows/{parent['id']}/executions/{execution_id}/cancel",
                                                          headers=api.headers(org))
        thread = threading.Thread(target=cancel)
        thread.start()

        xid = conn.execute("select pg_current_xact_id()::text as x").fetchone()["x"]

        def cancel_blocked():
            with db.pool.connection() as other:
                return other.execute("select count(*) as n from pg_locks where not granted "
                                     "and locktype = 'transactionid' and transactionid::text = %s",
                                     (xid,)).fetchone()["n"]
        wait_until(cancel_blocked, 10, "the cancel to wait for the parent's row")
        conn.execute("commit")  # the step's statement commits: child queued, parent parked
    thread.join(timeout=10)
    assert result["response"].status_code == 202, result["response"].text
    assert run_status(db, execution_id) == "cancelled"
    kids = children(db, execution_id)
    assert [k["id"] for k in kids] == [answer["child"]["id"]]
    assert kids[0]["status"] == "cancelled", kids


def test_a_child_failed_by_the_recovery_limit_wakes_its_waiting_parent(api, org, user, db, worker_db):
    # The queue fails a child that keeps killing its workers (tolstoy_claim_runs, as its owner role):
    # the wake-up trigger runs there too, so the parent does not wait for ever.
    child = api.flow(org)
    parent = api.flow(org, steps=[subflow("call", child)])
    execution_id = execute(api, org, user, parent)["executionId"]
    spec = {"step_id": "call", "flow_id": child["id"], "version": None, "variables": {}, "wait": True,
            "max_depth": 10}
    with db.pool.connection() as conn:
        token = conn.execute("select tolstoy_claim_runs('w1', 1, 30, 3) as a").fetchone()["a"]["runs"][0]["token"]
        writes = {"steps": [{"step_id": "call", "status": "waiting", "attempt": 1}]}
        answer = conn.execute("select tolstoy_subflow('w1', %s, %s, %s, %s::jsonb, %s::jsonb) as a",
                              (org["id"], execution_id, token, json.dumps(writes), json.dumps(spec))).fetchone()["a"]
        assert answer["parked"]
        conn.execute("update flow_runs set status = 'running', lease_owner = 'dead', lease_token = 1, claims = 1, "
                     "recoveries = 3, strikes = 3, lease_expires_at = now() - interval '1 second', started_at = now() "
                     "where id = %s", (answer["child"]["id"],))
    with worker_db.pool.connection() as conn:
        conn.execute("select tolstoy_claim_runs('w2', 1, 30, 3)")
    assert run_status(db, answer["child"]["id"]) == "failed"
    assert run_status(db, execution_id) in ("queued", "running")  # woken (and claimed by the same call)


def test_cancelling_a_tree_while_a_grandchild_finishes_does_not_deadlock(api, org, user, db):
    # A grandchild's last checkpoint locks it, then (the wake-up trigger) its parent, the middle run. The
    # cancel of the top run must lock the tree in the same order (deepest first), or the two deadlock
    # and one of them is aborted (the cancel answering 503, or the worker's checkpoint retried).
    leaf = api.flow(org)
    middle = api.flow(org, steps=[subflow("deeper", leaf)])
    top = api.flow(org, steps=[subflow("call", middle)])
    execution_id = execute(api, org, user, top)["executionId"]

    def park(conn, run_id, step_id, flow):
        token = conn.execute("select tolstoy_claim_runs('w1', 1, 30, 3) as a").fetchone()["a"]["runs"][0]
        assert token["id"] == run_id
        spec = {"step_id": step_id, "flow_id": flow["id"], "version": None, "variables": {}, "wait": True,
                "max_depth": 10}
        writes = {"steps": [{"step_id": step_id, "status": "waiting", "attempt": 1}]}
        return conn.execute("select tolstoy_subflow('w1', %s, %s, %s, %s::jsonb, %s::jsonb) as a",
                            (org["id"], run_id, token["token"], json.dumps(writes),
                             json.dumps(spec))).fetchone()["a"]["child"]["id"]

    with db.pool.connection() as conn:
        middle_id = park(conn, execution_id, "call", middle)
        leaf_id = park(conn, middle_id, "deeper", leaf)
        assert conn.execute("select tolstoy_claim_runs('w1', 1, 30, 3) as a").fetchone()["a"]["runs"][0]["id"] \
            == leaf_id
        conn.execute("set deadlock_timeout = '10s'")  # so that the cancel, not this, notices a deadlock
        conn.execute("begin")
        conn.execute("select 1 from flow_runs where id = %s for update", (leaf_id,))  # the leaf's last checkpoint
        xid = conn.execute("select pg_current_xact_id()::text as x").fetchone()["x"]
        result = {}

        def cancel():
            result["response"] = api.client.simulate_post(f"/flows/{top['id']}/executions/{execution_id}/cancel",
                                                          headers=api.headers(org))
        thread = threading.Thread(target=cancel)
        thread.start()

        def cancel_blocked():
            with db.pool.connection() as other:
                return other.execute("select count(*) as n from pg_locks where not granted "
                                     "and locktype = 'transactionid' and transactionid::text = %s",
                                     (xid,)).fetchone()["n"]
        wait_until(cancel_blocked, 10, "the cancel to wait for the leaf's row")
        time.sleep(0.2)
        try:
            conn.execute("update flow_runs set status = 'completed', finished_at = now(), lease_owner = null, "
                         "lease_token = null, lease_expires_at = null where id = %s", (leaf_id,))
            conn.execute("commit")
        except psycopg.Error:
            conn.execute("rollback")
            raise
        finally:
            thread.join(timeout=20)
    assert result["response"].status_code == 202, result["response"].text
    assert [run_status(db, r) for r in (execution_id, middle_id, leaf_id)] == ["cancelled", "cancelled",
                                                                               "completed"]


def test_retrying_a_parent_retries_its_failed_child_without_repeating_its_completed_steps(
        api, org, user, worker, db, server):
    # "Retry propagates to children": the new child is a retry of the failed one, so what the failed child
    # did before it failed (here: a PUT) is not done a second time.
    posts, flaky = [], {"n": 0}

    def count(request):
        posts.append(request.headers.get("Idempotency-Key"))
        return Response("{}", content_type="application/json")

    def fail_once(request):
        flaky["n"] += 1
        return Response("{}", status=500 if flaky["n"] == 1 else 200, content_type="application/json")

    server.expect_request("/count").respond_with_handler(count)
    server.expect_request("/flaky").respond_with_handler(fail_once)
    child = api.flow(org, steps=[step("post", "http_request", {"method": "PUT", "url": server.url_for("/count")}),
                                 step("put", "http_request", {"method": "PUT", "url": server.url_for("/flaky")})])
    parent = api.flow(org, steps=[subflow("call", child)])
    execution_id = execute(api, org, user, parent)["executionId"]
    assert wait_for(api, org, parent, execution_id)["status"] == "failed"
    retried = api.client.simulate_post(f"/flows/{parent['id']}/executions/{execution_id}/retry",
                                       headers=api.headers(org, user)).json
    run = wait_for(api, org, parent, retried["executionId"])
    assert run["status"] == "completed", run
    first, second = children(db, execution_id), children(db, retried["executionId"])
    assert len(first) == 1 and len(second) == 1 and first[0]["id"] != second[0]["id"]
    kid = run_view(api, org, child, second[0]["id"])
    assert kid["retryOf"] == first[0]["id"] and kid["parentExecutionId"] == retried["executionId"]
    assert len(posts) == 1, posts
