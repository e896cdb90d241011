"""A wait step for the first of several signals (``"signals": [...]``, issue 25): it takes whichever
came first, signals sent before it parks are taken in arrival order across its names, once it took
one the others are refused (409) or, pending already, superseded (never delivered, never left
pending for a step that ended), a later wait step of the run for the same name is neither starved
nor fed a superseded one, approval links follow the same rule, and two senders racing on worker
processes end with exactly one signal taken."""

from __future__ import annotations

import threading

import pytest
from test_engine import execute, logs_of, step, wait_for
from test_wait_signals import count, run_of, send, until_waiting
from test_worker_processes import log_tail, start_worker, stop


def either(step_id="gate", names=("approve", "reject"), **config):
    return step(step_id, "wait", {"signals": list(names), **config})


def rows(db, run_id):
    """The run's signals, oldest first: (signal, step_id, superseded_by is set, id)."""
    with db.pool.connection() as conn:
        return conn.execute(
            "select signal, step_id, superseded_by, id from flow_run_signals where run_id = %s "
            "order by created_at, id", (run_id,)).fetchall()


def pending(db, run_id):
    return count(db, "select count(*) from flow_run_signals where run_id = %s and step_id is null", run_id)


def test_signals_is_validated_when_the_flow_is_saved(api, org):
    def fields(config):
        result = api.post("/flows", org, {"name": "f", "steps": [step("gate", "wait", config)]})
        assert result.status_code == 400, result.text
        return {e["field"] for e in result.json["errors"]}

    assert "steps[0].config.signals" in fields({"signal": "a", "signals": ["b"]})
    assert "steps[0].config.signal" in fields({})
    assert "steps[0].config.signals" in fields({"signals": []})
    assert "steps[0].config.signals" in fields({"signals": ["a", "b", "a"]})
    assert "steps[0].config.signals" in fields({"signals": [f"s{i}" for i in range(21)]})
    assert any(f.startswith("steps[0].config.signals") for f in fields({"signals": ["ok", "no spaces"]}))
    assert any(f.startswith("steps[0].config.signals") for f in fields({"signals": "approve"}))
    assert any(f.startswith("steps[0].config.signals") for f in fields({"signals": ["ok", 7]}))
    saved = api.flow(org, steps=[either(timeoutMs=60_000)])
    assert saved["steps"][0]["config"]["signals"] == ["approve", "reject"]


def test_the_first_of_two_signals_sent_before_it_parks_is_taken_and_the_second_is_not_left_pending(
        api, org, user, worker, db):
    # A later wait step (for another name) keeps the run alive after the first one ended.
    flow = api.flow(org, steps=[
        step("pause", "delay", {"ms": 500}), either(timeoutMs=60_000),
        step("after", "transform", {"output": "{{ steps.gate.signal }}: {{ steps.gate.payload.why }}"}),
        step("later", "wait", {"signal": "later", "timeoutMs": 60_000}),
    ])
    run_id = execute(api, org, user, flow)["executionId"]
    first = send(api, org, flow, run_id, name="reject", payload={"why": "too dear"})
    second = send(api, org, flow, run_id, name="approve", payload={"why": "fine"})
    assert first.status_code == 202 and second.status_code == 202, (first.text, second.text)
    # One per name may be pending for one step: a second reject is refused at once.
    assert send(api, org, flow, run_id, name="reject").status_code == 409

    run = until_waiting(api, org, flow, run_id, step_id="later")
    assert run["outputs"]["gate"] == {"signal": "reject", "payload": {"why": "too dear"}}
    assert run["outputs"]["after"] == "reject: too dear"
    gate = {s["stepId"]: s for s in run["steps"]}["gate"]
    assert gate["inputs"]["signals"] == ["approve", "reject"] and gate["inputs"]["signal"] == "reject"
    assert gate["inputs"]["signalId"] == first.json["signalId"]
    # The approve sent second was superseded by the reject: taken by nobody, pending no more.
    assert [(r["signal"], r["step_id"], r["superseded_by"]) for r in rows(db, run_id)] == [
        ("reject", "gate", None), ("approve", "gate", rows(db, run_id)[0]["id"])]
    assert pending(db, run_id) == 0
    superseded = [log for log in logs_of(api, org, run_id) if log["status"] == "cancelled"]
    assert len(superseded) == 1 and superseded[0]["stepKey"] == "gate"
    assert superseded[0]["inputs"]["signalId"] == second.json["signalId"]
    assert superseded[0]["inputs"]["supersededBy"] == first.json["signalId"]
    # Sent after the take: refused, both names, while the run still waits (for "later").
    for name in ("approve", "reject"):
        late = send(api, org, flow, run_id, name=name)
        assert late.status_code == 409 and f"not waiting for the signal {name!r}" in late.json["message"], late.text
    assert send(api, org, flow, run_id, name="later", payload=1).status_code == 202
    assert wait_for(api, org, flow, run_id)["status"] == "completed"


def test_a_parked_signals_wait_takes_the_one_sent_and_refuses_the_other(api, org, user, worker, db):
    flow = api.flow(org, steps=[either(timeoutMs=60_000), step("later", "wait", {"signal": "later"})])
    run_id = execute(api, org, user, flow)["executionId"]
    run = until_waiting(api, org, flow, run_id)
    gate = {s["stepId"]: s for s in run["steps"]}["gate"]
    assert gate["waitingFor"]["signal"] == ["approve", "reject"]
    assert send(api, org, flow, run_id, name="approve", payload="yes").status_code == 202
    run = until_waiting(api, org, flow, run_id, step_id="later")
    assert run["outputs"]["gate"] == {"signal": "approve", "payload": "yes"}
    refused = send(api, org, flow, run_id, name="reject")
    assert refused.status_code == 409 and "not waiting for the signal 'reject'" in refused.json["message"]
    assert pending(db, run_id) == 0


def test_a_later_wait_for_the_same_name_is_neither_starved_nor_fed_the_superseded_one(api, org, user, worker, db):
    flow = api.flow(org, steps=[
        step("pause", "delay", {"ms": 500}), either(timeoutMs=60_000),
        step("second", "wait", {"signal": "reject", "timeoutMs": 60_000}),
    ])
    # approve, then two rejects: the first reject held the first step's place (superseded when it took
    # approve), the second is the later step's.
    run_id = execute(api, org, user, flow)["executionId"]
    assert send(api, org, flow, run_id, name="approve", payload="a").status_code == 202
    assert send(api, org, flow, run_id, name="reject", payload="r1").status_code == 202
    assert send(api, org, flow, run_id, name="reject", payload="r2").status_code == 202
    assert send(api, org, flow, run_id, name="reject", payload="r3").status_code == 409  # two places, two pending
    run = wait_for(api, org, flow, run_id)
    assert run["status"] == "completed", run
    assert run["outputs"]["gate"] == {"signal": "approve", "payload": "a"}
    assert run["outputs"]["second"] == "r2"
    assert pending(db, run_id) == 0

    # approve and one reject: that reject was the first step's; the later step waits for a new one.
    run_id = execute(api, org, user, flow)["executionId"]
    assert send(api, org, flow, run_id, name="approve", payload="a").status_code == 202
    assert send(api, org, flow, run_id, name="reject", payload="stale").status_code == 202
    until_waiting(api, org, flow, run_id, step_id="second")
    assert pending(db, run_id) == 0
    assert send(api, org, flow, run_id, name="reject", payload="fresh").status_code == 202
    run = wait_for(api, org, flow, run_id)
    assert run["status"] == "completed" and run["outputs"]["second"] == "fresh", run


def test_the_timeout_applies_as_for_one_signal(api, org, user, worker):
    failing = api.flow(org, steps=[either(timeoutMs=300)])
    going_on = api.flow(org, steps=[either(timeoutMs=300, onTimeout="continue")])
    failed = wait_for(api, org, failing, execute(api, org, user, failing)["executionId"])
    assert failed["status"] == "failed" and failed["error"]["name"] == "WaitTimedOut", failed
    assert "waiting for any of the signals 'approve', 'reject'" in failed["error"]["message"]
    went_on = wait_for(api, org, going_on, execute(api, org, user, going_on)["executionId"])
    assert went_on["status"] == "completed" and went_on["outputs"]["gate"] == {"timedOut": True}
    refused = send(api, org, going_on, went_on["executionId"], name="approve")
    assert refused.status_code == 409


def test_an_approval_link_for_the_other_signal_is_refused_once_one_was_taken(api, org, user, worker, db):
    flow = api.flow(org, steps=[either(timeoutMs=60_000), step("later", "wait", {"signal": "later"})])
    run_id = execute(api, org, user, flow)["executionId"]
    until_waiting(api, org, flow, run_id)
    links = {}
    for name in ("approve", "reject"):
        made = api.client.simulate_post(f"/flows/{flow['id']}/executions/{run_id}/signals/{name}/links",
                                        json={"approver": "ada@example.com"}, headers=api.headers(org))
        assert made.status_code == 201, made.text
        links[name] = made.json["url"]
    decided = api.client.simulate_post(links["approve"], json={"decision": "approve"})
    assert decided.status_code == 202, decided.text
    run = until_waiting(api, org, flow, run_id, step_id="later")
    assert run["outputs"]["gate"]["signal"] == "approve" and run["outputs"]["gate"]["payload"]["approved"] is True
    seen = api.client.simulate_get(links["reject"])
    assert seen.status_code == 200 and seen.json["waiting"] is False and seen.json["used"] is False
    refused = api.client.simulate_post(links["reject"], json={"decision": "reject"})
    assert refused.status_code == 409 and "not waiting for the signal 'reject'" in refused.json["message"]
    late = api.client.simulate_post(f"/flows/{flow['id']}/executions/{run_id}/signals/reject/links", json={},
                                    headers=api.headers(org))
    assert late.status_code == 409
    assert pending(db, run_id) == 0


@pytest.mark.parametrize("attempt", range(3))
def test_two_senders_racing_on_worker_processes_leave_exactly_one_signal_taken(api, org, user, worker_env, db,
                                                                              attempt):
    flow = api.flow(org, steps=[either(timeoutMs=60_000),
                                step("after", "transform", {"output": "{{ steps.gate.signal }}"})])
    process = start_worker(worker_env)
    try:
        run_id = execute(api, org, user, flow)["executionId"]
        until_waiting(api, org, flow, run_id, timeout=30)
        start = threading.Barrier(2)
        answers = {}

        def sender(name):
            start.wait()
            answers[name] = send(api, org, flow, run_id, name=name, payload=name).status_code

        threads = [threading.Thread(target=sender, args=(name,)) for name in ("approve", "reject")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        run = wait_for(api, org, flow, run_id, timeout=30)
    except BaseException:
        print(log_tail(process))
        raise
    finally:
        stop(process)
    assert run["status"] == "completed", run
    winner = run["outputs"]["after"]
    assert answers[winner] == 202 and sorted(answers.values()) in ([202, 202], [202, 409]), answers
    signals = rows(db, run_id)
    taken = [r for r in signals if r["step_id"] == "gate" and r["superseded_by"] is None]
    assert [r["signal"] for r in taken] == [winner]
    # The loser was refused (409, never stored) or superseded by the winner; nothing is left pending.
    assert all(r["superseded_by"] == taken[0]["id"] for r in signals if r is not taken[0])
    assert pending(db, run_id) == 0
    assert run_of(api, org, flow, run_id)["outputs"]["gate"] == {"signal": winner, "payload": winner}
