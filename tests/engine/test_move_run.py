"""Moving a parked run to another version of its flow (POST …/executions/{executionId}/move): only a
parked run moves (a wait step's signal, a delay, an unknown outcome), its row held; the answer is a
diff; checkpoints it would discard are discarded only when dropSteps names them, else 409 with the
diff and nothing written; a dry run writes nothing; the parked state survives the move, and a worker
that claims the run afterwards runs the new plan."""

from __future__ import annotations

import signal
import threading

import pytest
from test_durable import leave_outcome_unknown
from test_engine import execute, logs_of, step, wait_for, wait_until_sleeping
from test_wait_signals import send, until_waiting, wait_step
from test_worker_processes import log_tail, start_worker, stop
from werkzeug import Response


def move(api, org, flow, execution_id, body, user=None):
    return api.client.simulate_post(f"/flows/{flow['id']}/executions/{execution_id}/move", json=body,
                                    headers=api.headers(org, user))


def new_version(api, org, flow, steps):
    changed = api.client.simulate_patch(f"/flows/{flow['id']}", json={"steps": steps}, headers=api.headers(org))
    assert changed.status_code == 200, changed.text
    return changed.json["version"]


def snapshot(db, execution_id):
    """Everything the database holds of a run: its row, its steps, its log rows and signals."""
    with db.pool.connection() as conn:
        run = conn.execute("select * from flow_runs where id = %s", (execution_id,)).fetchone()
        steps = conn.execute("select * from flow_run_steps where run_id = %s order by step_id",
                             (execution_id,)).fetchall()
        logs = conn.execute("select * from execution_logs where execution_id = %s order by created_at, id",
                            (execution_id,)).fetchall()
    return run, steps, logs


FIRST = step("first", "transform", {"output": {"n": 1}})
AFTER = step("after", "transform", {"output": "{{ steps.gate.answer }} then {{ steps.extra }}"})
EXTRA = step("extra", "transform", {"output": "extra saw {{ steps.first.n }}"}, dependsOn=["gate"])


def test_a_run_parked_on_a_signal_moved_to_a_version_with_an_extra_step_completes_through_it(
        api, org, user, worker_env, db, clock):
    flow = api.flow(org, steps=[FIRST, wait_step(timeoutMs=600_000),
                                step("after", "transform", {"output": "{{ steps.gate.answer }}"})])
    first = start_worker(worker_env)
    second = None
    try:
        run_id = execute(api, org, user, flow)["executionId"]
        parked = until_waiting(api, org, flow, run_id)
        assert parked["flowVersion"] == 1
        # The worker dies with the run parked: it holds nothing of it, and the move loses nothing.
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        after = dict(AFTER, dependsOn=["extra"])
        version = new_version(api, org, flow, [FIRST, wait_step(timeoutMs=600_000), EXTRA, after])
        assert version == 2

        moved = move(api, org, flow, run_id, {"version": 2}, user)
        assert moved.status_code == 200, moved.text
        body = moved.json
        assert body["moved"] is True and body["dryRun"] is False
        assert body["executionId"] == run_id and body["flowVersion"] == 2 and body["status"] == "queued"
        diff = body["diff"]
        assert diff["fromVersion"] == 1 and diff["toVersion"] == 2 and diff["parked"] == ["gate"]
        assert diff["added"] == ["extra"] and diff["removed"] == []
        assert diff["changed"] == [{"stepId": "after", "fields": ["config", "dependsOn"]}]
        assert diff["kept"] == [{"stepId": "first", "status": "completed"}, {"stepId": "gate", "status": "waiting"}]
        assert diff["outputNoLongerFits"] == [] and diff["mustDrop"] == [] and diff["dropped"] == []
        assert diff["wakes"] is False

        # Still parked on its signal, under the new version (a worker started now claims nothing).
        second = start_worker(worker_env)
        view = until_waiting(api, org, flow, run_id)
        assert view["flowVersion"] == 2
        assert send(api, org, flow, run_id, payload={"answer": "yes"}, user=user).status_code == 202
        done = wait_for(api, org, flow, run_id, timeout=30)
        assert done["status"] == "completed", (done, log_tail(second))
        assert done["outputs"]["extra"] == "extra saw 1"
        assert done["outputs"]["after"] == "yes then extra saw 1"
        assert done["outputs"]["first"] == {"n": 1}
        moves = [log for log in logs_of(api, org, run_id)
                 if log["stepKey"] == "$flow" and "moved" in (log["inputs"] or {})]
        assert len(moves) == 1 and moves[0]["status"] == "pending" and moves[0]["userId"] == user["id"]
        assert moves[0]["inputs"]["moved"]["fromVersion"] == 1 and moves[0]["inputs"]["moved"]["toVersion"] == 2
        # first ran once: its completed checkpoint was kept, not run again by the new plan.
        first_logs = [log["status"] for log in logs_of(api, org, run_id) if log["stepKey"] == "first"]
        assert first_logs.count("completed") == 1 and first_logs.count("started") <= 1, first_logs
    finally:
        stop(first)
        if second is not None:
            stop(second)


def test_a_refused_move_leaves_the_run_untouched_and_a_named_drop_moves_it(api, org, user, worker, db):
    flow = api.flow(org, steps=[FIRST, wait_step(timeoutMs=600_000)])
    run_id = execute(api, org, user, flow)["executionId"]
    until_waiting(api, org, flow, run_id)
    new_version(api, org, flow, [wait_step(timeoutMs=600_000), step("later", "transform", {"output": 2})])
    before = snapshot(db, run_id)

    refused = move(api, org, flow, run_id, {"version": 2}, user)
    assert refused.status_code == 409, refused.text
    assert "'first'" in refused.json["message"] and "dropSteps" in refused.json["message"]
    diff = refused.json["diff"]
    assert diff["removed"] == [{"stepId": "first", "status": "completed"}]
    assert diff["mustDrop"] == ["first"] and diff["added"] == ["later"]
    assert snapshot(db, run_id) == before

    dry = move(api, org, flow, run_id, {"version": 2, "dryRun": True, "dropSteps": ["first"]}, user)
    assert dry.status_code == 200, dry.text
    assert dry.json["moved"] is False and dry.json["dryRun"] is True and dry.json["flowVersion"] == 1
    assert dry.json["diff"]["dropped"] == ["first"] and dry.json["diff"]["mustDrop"] == []
    # A dry run of a refused move answers the same diff, 200, and writes nothing either.
    dry_refused = move(api, org, flow, run_id, {"version": 2, "dryRun": True}, user)
    assert dry_refused.status_code == 200 and dry_refused.json["diff"] == diff
    assert snapshot(db, run_id) == before

    # Naming a step the move does not discard is a mistake, not a no-op.
    stray = move(api, org, flow, run_id, {"version": 2, "dropSteps": ["first", "gate"]}, user)
    assert stray.status_code == 400 and stray.json["errors"][0]["field"] == "dropSteps", stray.text
    assert snapshot(db, run_id) == before

    moved = move(api, org, flow, run_id, {"version": 2, "dropSteps": ["first"]}, user)
    assert moved.status_code == 200, moved.text
    assert moved.json["diff"]["dropped"] == ["first"]
    run, steps, logs = snapshot(db, run_id)
    assert run["flow_version"] == 2 and [s["step_id"] for s in steps] == ["gate"]
    assert [s["id"] for s in run["plan"]["steps"]] == ["gate", "later"]
    assert len(logs) == len(before[2]) + 1
    assert send(api, org, flow, run_id, payload={"ok": 1}, user=user).status_code == 202
    done = wait_for(api, org, flow, run_id)
    assert done["status"] == "completed" and done["outputs"] == {"gate": {"ok": 1}, "later": 2}, done


def test_a_kept_step_whose_output_no_longer_fits_must_be_dropped_and_then_runs_again(api, org, user, worker, db):
    flow = api.flow(org, steps=[FIRST, wait_step(timeoutMs=600_000)])
    run_id = execute(api, org, user, flow)["executionId"]
    until_waiting(api, org, flow, run_id)
    # Same id, another kind: what "first" recorded was a transform's output, not a delay's.
    new_version(api, org, flow, [step("first", "delay", {"ms": 0}), wait_step(timeoutMs=600_000)])
    before = snapshot(db, run_id)
    refused = move(api, org, flow, run_id, {"version": 2}, user)
    assert refused.status_code == 409, refused.text
    unfit = refused.json["diff"]["outputNoLongerFits"]
    assert unfit == [{"stepId": "first", "status": "completed", "was": {"type": "transform"},
                      "now": {"type": "delay"}}]
    assert refused.json["diff"]["mustDrop"] == ["first"]
    assert snapshot(db, run_id) == before
    moved = move(api, org, flow, run_id, {"version": 2, "dropSteps": ["first"]}, user)
    assert moved.status_code == 200, moved.text
    assert send(api, org, flow, run_id, payload={"ok": 1}, user=user).status_code == 202
    done = wait_for(api, org, flow, run_id)
    assert done["status"] == "completed" and done["outputs"]["first"] == {"delayedMs": 0}, done


def test_an_action_step_now_calling_another_endpoint_no_longer_fits(api, org, user, worker, server, db):
    server.expect_request("/a").respond_with_json({"a": 1})
    tool = api.create("/tools", org, {"name": "T", "baseUrl": server.url_for(""), "authType": "none"})
    api.create("/actions", org, {"toolId": tool["id"], "name": "A", "key": "t.a", "method": "GET", "endpoint": "/a"})
    api.create("/actions", org, {"toolId": tool["id"], "name": "B", "key": "t.b", "method": "GET", "endpoint": "/b"})
    flow = api.flow(org, steps=[step("call", "action", {"actionKey": "t.a"}), wait_step(timeoutMs=600_000)])
    run_id = execute(api, org, user, flow)["executionId"]
    until_waiting(api, org, flow, run_id)
    new_version(api, org, flow, [step("call", "action", {"actionKey": "t.b"}), wait_step(timeoutMs=600_000)])
    dry = move(api, org, flow, run_id, {"version": 2, "dryRun": True}, user)
    assert dry.status_code == 200, dry.text
    (unfit,) = dry.json["diff"]["outputNoLongerFits"]
    assert unfit["stepId"] == "call" and unfit["was"]["action"]["endpoint"] == "/a"
    assert unfit["now"]["action"]["endpoint"] == "/b" and dry.json["diff"]["mustDrop"] == ["call"]
    # The same version again: the same action, nothing to drop (a version's plan freezes actions as they are).
    same = move(api, org, flow, run_id, {"version": 1, "dryRun": True}, user)
    assert same.status_code == 200 and same.json["diff"]["outputNoLongerFits"] == []


def test_a_delayed_run_keeps_sleeping_and_dropping_its_parked_step_wakes_it(api, org, user, worker, db, clock):
    flow = api.flow(org, steps=[FIRST, step("nap", "delay", {"ms": 3_600_000}),
                                step("last", "transform", {"output": "v1"})])
    run_id = execute(api, org, user, flow)["executionId"]
    wait_until_sleeping(api, org, flow, run_id, "nap")
    new_version(api, org, flow, [FIRST, step("nap", "delay", {"ms": 3_600_000}),
                                 step("last", "transform", {"output": "v2"})])
    with db.pool.connection() as conn:
        run_after = conn.execute("select run_after from flow_runs where id = %s", (run_id,)).fetchone()["run_after"]
    moved = move(api, org, flow, run_id, {"version": 2}, user)
    assert moved.status_code == 200 and moved.json["diff"]["parked"] == ["nap"], moved.text
    assert moved.json["diff"]["wakes"] is False
    with db.pool.connection() as conn:
        assert conn.execute("select run_after from flow_runs where id = %s",
                            (run_id,)).fetchone()["run_after"] == run_after  # still asleep until then
    clock.move(3601)
    done = wait_for(api, org, flow, run_id)
    assert done["status"] == "completed" and done["outputs"]["last"] == "v2", done

    # A version without the delay: dropping the parked step wakes the run at once.
    sleeper = execute(api, org, user, flow)["executionId"]
    wait_until_sleeping(api, org, flow, sleeper, "nap")
    new_version(api, org, flow, [FIRST, step("last", "transform", {"output": "v3"})])
    woken = move(api, org, flow, sleeper, {"version": 3, "dropSteps": ["nap"]}, user)
    assert woken.status_code == 200 and woken.json["diff"]["wakes"] is True, woken.text
    done = wait_for(api, org, flow, sleeper)
    assert done["status"] == "completed" and done["outputs"] == {"first": {"n": 1}, "last": "v3"}, done


def test_a_run_waiting_for_a_resolution_moves_and_stays_waiting(api, org, user, worker, db):
    flow = api.flow(org, steps=[
        step("charge", "http_request", {"method": "POST", "url": "http://127.0.0.1:9/charge"}),
        step("receipt", "transform", {"output": "paid"}),
    ])
    run_id = execute(api, org, user, flow)["executionId"]
    wait_for(api, org, flow, run_id)  # the call fails (nothing listens); now make it an unknown outcome instead
    leave_outcome_unknown(db, run_id, "charge")  # as a worker that died during the call leaves it
    new_version(api, org, flow, [
        step("charge", "http_request", {"method": "POST", "url": "http://127.0.0.1:9/charge"}),
        step("receipt", "transform", {"output": "paid v2"}),
    ])
    moved = move(api, org, flow, run_id, {"version": 2}, user)
    assert moved.status_code == 200, moved.text
    assert moved.json["status"] == "waiting" and moved.json["diff"]["parked"] == ["charge"]
    resolved = api.client.simulate_post(f"/flows/{flow['id']}/executions/{run_id}/steps/charge/resolve",
                                        json={"outcome": "succeeded", "outputs": {"ok": True}},
                                        headers=api.headers(org, user))
    assert resolved.status_code == 202, resolved.text
    done = wait_for(api, org, flow, run_id)
    assert done["status"] == "completed" and done["outputs"]["receipt"] == "paid v2", done


def test_only_a_parked_run_moves(api, org, user, worker, server, db):
    in_call = threading.Event()
    release = threading.Event()

    def slow(request):
        in_call.set()
        release.wait(20)
        return Response('{"ok": true}', content_type="application/json")

    server.expect_request("/slow").respond_with_handler(slow)
    flow = api.flow(org, steps=[step("call", "http_request", {"method": "GET", "url": server.url_for("/slow")})])
    new_version(api, org, flow, [step("call", "http_request", {"method": "GET", "url": server.url_for("/slow")}),
                                 step("more", "transform", {"output": 1})])
    # Running (its worker holds it): 409, and nothing changes.
    running = execute(api, org, user, flow)["executionId"]
    try:
        assert in_call.wait(20)
        before = snapshot(db, running)
        answer = move(api, org, flow, running, {"version": 1}, user)
        assert answer.status_code == 409 and "running" in answer.json["message"], answer.text
        assert "diff" not in answer.json
        assert snapshot(db, running) == before
    finally:
        release.set()
    # Finished: 409.
    done = wait_for(api, org, flow, running)
    answer = move(api, org, flow, running, {"version": 1}, user)
    assert answer.status_code == 409 and done["status"] in answer.json["message"]

    # Waiting for a subflow's child: the parent does not move (the child does: it is parked itself).
    child_flow = api.flow(org, steps=[wait_step(timeoutMs=600_000)])
    parent_flow = api.flow(org, steps=[step("call", "subflow", {"flowId": child_flow["id"]})])
    parent = execute(api, org, user, parent_flow)["executionId"]
    waiting = wait_for(api, org, parent_flow, parent, statuses=("waiting",))
    child_id = waiting["steps"][0]["childExecutionId"]
    until_waiting(api, org, child_flow, child_id)
    before = snapshot(db, parent)
    answer = move(api, org, parent_flow, parent, {"version": 1}, user)
    assert answer.status_code == 409 and "child run" in answer.json["message"], answer.text
    assert snapshot(db, parent) == before
    assert move(api, org, child_flow, child_id, {"version": 1}, user).status_code == 200


def test_a_queued_run_that_never_started_is_not_parked(api, org, user):
    flow = api.flow(org, steps=[wait_step(timeoutMs=600_000)])
    run_id = execute(api, org, user, flow)["executionId"]  # no worker: it stays queued, no step parked
    answer = move(api, org, flow, run_id, {"version": 1}, user)
    assert answer.status_code == 409 and "no step of it is parked" in answer.json["message"], answer.text


@pytest.mark.parametrize(("body", "field"), [
    ({}, "version"),
    ({"version": -1}, "version"),
    ({"version": 0}, "version"),
    ({"version": "2"}, "version"),
    ({"version": 1.5}, "version"),
    ({"version": 2**40}, "version"),
    ({"version": None}, "version"),
    ({"version": 7}, "version"),  # no such version
    ({"version": 1, "dropSteps": "first"}, "dropSteps"),
    ({"version": 1, "dropSteps": [1]}, "dropSteps[0]"),
    ({"version": 1, "dropSteps": [""]}, "dropSteps[0]"),
    ({"version": 1, "dropSteps": ["x" * 201]}, "dropSteps[0]"),
    ({"version": 1, "dropSteps": [f"s{i}" for i in range(1001)]}, "dropSteps"),
    ({"version": 1, "dropSteps": ["nope"]}, "dropSteps"),  # discards nothing of this run
    ({"version": 1, "dropSteps": ["gate\u0000"]}, "dropSteps[0]"),  # text PostgreSQL cannot hold
    ({"version": True}, "version"),
    ({"version": 1, "dryRun": "yes"}, "dryRun"),
    ({"version": 1, "extra": 1}, "extra"),
])
def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(api, org, user, worker, db, body, field):
    flow = api.flow(org, steps=[FIRST, wait_step(timeoutMs=600_000)])
    run_id = execute(api, org, user, flow)["executionId"]
    until_waiting(api, org, flow, run_id)
    before = snapshot(db, run_id)
    answer = move(api, org, flow, run_id, body, user)
    assert answer.status_code == 400, answer.text
    assert answer.json["errors"][0]["field"] == field, answer.json
    assert snapshot(db, run_id) == before


def test_another_organization_gets_404_and_changes_nothing(api, org, user, worker, db):
    flow = api.flow(org, steps=[FIRST, wait_step(timeoutMs=600_000)])
    run_id = execute(api, org, user, flow)["executionId"]
    until_waiting(api, org, flow, run_id)
    before = snapshot(db, run_id)
    other = api.org("Other")
    other_user = api.user(other)
    other_flow = api.flow(other, steps=[FIRST, wait_step(timeoutMs=600_000)])
    for target_flow, who in ((flow, other), (other_flow, other)):
        answer = move(api, who, target_flow, run_id, {"version": 1}, other_user)
        assert answer.status_code == 404, answer.text
        # 404 before the body is looked at, too.
        assert move(api, who, target_flow, run_id, {"version": -1}, other_user).status_code == 404
    assert move(api, org, flow, "6f1c1a2e-0000-4000-8000-000000000000", {"version": 1}, user).status_code == 404
    assert move(api, org, flow, "not-a-uuid", {"version": 1}, user).status_code == 404
    assert snapshot(db, run_id) == before


def test_a_moved_run_is_pinned_to_the_plan_a_new_run_of_that_version_gets(api, org, user, worker, server, db):
    """One place says what a version's plan is (tolstoy_plan_for): its steps, the actions its steps and
    onFailure steps call (with their tools) and its onFailure steps, whether a run is queued or moved."""
    tool = api.create("/tools", org, {"name": "T", "baseUrl": server.url_for(""), "authType": "none"})
    api.create("/actions", org, {"toolId": tool["id"], "name": "A", "key": "t.a", "method": "GET", "endpoint": "/a"})
    api.create("/actions", org, {"toolId": tool["id"], "name": "N", "key": "t.n", "method": "POST", "endpoint": "/n"})
    flow = api.flow(org, steps=[wait_step(timeoutMs=600_000)])
    run_id = execute(api, org, user, flow)["executionId"]
    until_waiting(api, org, flow, run_id)
    changed = api.client.simulate_patch(f"/flows/{flow['id']}", headers=api.headers(org), json={
        "steps": [wait_step(timeoutMs=600_000), step("call", "action", {"actionKey": "t.a"})],
        "onFailure": [step("notify", "action", {"actionKey": "t.n"})]})
    assert changed.status_code == 200 and changed.json["version"] == 2, changed.text
    assert move(api, org, flow, run_id, {"version": 2}, user).status_code == 200
    fresh = execute(api, org, user, flow)["executionId"]
    with db.pool.connection() as conn:
        plans = {row["id"]: row["plan"] for row in conn.execute(
            "select id::text, plan from flow_runs where id in (%s, %s)", (run_id, fresh)).fetchall()}
    moved_plan, fresh_plan = plans[run_id], plans[fresh]
    assert {a["key"] for a in moved_plan["actions"]} == {"t.a", "t.n"}
    assert [s["id"] for s in moved_plan["onFailure"]] == ["notify"]
    assert moved_plan["steps"] == fresh_plan["steps"] and moved_plan["onFailure"] == fresh_plan["onFailure"]
    assert sorted(moved_plan["actions"], key=lambda a: a["key"]) == sorted(fresh_plan["actions"],
                                                                           key=lambda a: a["key"])


def test_a_move_holds_the_runs_row_so_a_claim_or_a_signal_comes_wholly_before_or_after_it(
        api, org, user, worker_env, database_url, db, clock):
    """Two processes at once: while a move is under way (its transaction open), a worker's claim skips the
    run and a signal waits; once it commits, the claim reads the new plan and the signal is judged by it."""
    import psycopg
    from psycopg.rows import dict_row

    flow = api.flow(org, steps=[FIRST, wait_step(timeoutMs=60_000)])
    process = start_worker(worker_env)
    try:
        run_id = execute(api, org, user, flow)["executionId"]
        until_waiting(api, org, flow, run_id)
    finally:
        stop(process)  # gracefully: the parked run holds no lease, nothing is running
    # Version 2 waits for another signal, and adds a step.
    new_version(api, org, flow, [FIRST, wait_step(signal="go", timeoutMs=60_000), EXTRA])
    clock.move(61)  # the wait step's timeout is due: a claim would take the run now
    claim = "select run from tolstoy_claim_runs_v2('race-worker', 10, 30, 3, 300) where run is not null"
    with psycopg.connect(database_url, row_factory=dict_row) as mover, \
            psycopg.connect(database_url, row_factory=dict_row, autocommit=True) as claimer:
        moved = mover.execute("select tolstoy_move_run(%s, %s, %s, 2, '{}', false, %s) as answer",
                              (org["id"], flow["id"], run_id, user["id"])).fetchone()["answer"]
        assert moved["moved"] is True
        assert claimer.execute(claim).fetchall() == []  # held by the move: skipped, not waited for
        answers = []
        signal_sent = threading.Thread(target=lambda: answers.append(send(api, org, flow, run_id, user=user)))
        signal_sent.start()
        signal_sent.join(timeout=1)
        assert signal_sent.is_alive()  # the signal waits for the move's transaction
        mover.commit()
        signal_sent.join(timeout=10)
        # Judged by the new plan: no wait step of version 2 waits for "approval".
        assert answers[0].status_code == 409 and "not waiting for the signal 'approval'" in answers[0].json["message"]
        (claimed,) = claimer.execute(claim).fetchall()
    payload = claimed["run"]
    assert payload["id"] == run_id and payload["flow_version"] == 2
    assert [s["id"] for s in payload["plan"]["steps"]] == ["first", "gate", "extra"]
    assert {c["step_id"]: c["status"] for c in payload["checkpoints"]} == {"first": "completed", "gate": "waiting"}
