"""The ``fail`` step kind (tolstoy/engine/steps/fail.py): with ``executeIf``, a flow stops itself
with a reason, as a step and as a foreach item; its config is checked when the flow is saved."""

from __future__ import annotations

from test_engine import execute, step, wait_for


def guarded_flow(api, org):
    """An order check: the run fails naming the status unless the order is paid; ``after`` runs only then,
    and the failure handler sees the message."""
    return api.flow(org, steps=[
        step("order", "transform", {"output": {"id": "o-7", "status": "{{ variables.status }}"}}),
        step("paid", "fail", {"message": "Order {{ steps.order.id }} is {{ steps.order.status }}"},
             dependsOn=["order"], executeIf="{{ steps.order.status != 'paid' }}"),
        step("after", "transform", {"output": "shipped"}, dependsOn=["paid"]),
    ], onFailure=[step("alert", "transform", {"output": "{{ error.stepId }}: {{ error.message }}"})])


def test_a_fail_step_stops_the_run_with_its_message_when_its_condition_holds(api, org, user, worker):
    flow = guarded_flow(api, org)
    failed = wait_for(api, org, flow, execute(api, org, user, flow, {"status": "open"})["executionId"])
    assert failed["status"] == "failed", failed
    assert failed["error"] == {"stepId": "paid", "name": "FailStep", "message": "Order o-7 is open"}, failed["error"]
    steps = {s["stepId"]: s for s in failed["steps"]}
    assert steps["paid"]["status"] == "failed" and "after" not in failed["outputs"]
    assert steps["paid"]["inputs"] == {"message": "Order o-7 is open"}
    assert failed["outputs"]["onFailure.alert"] == "paid: Order o-7 is open"
    # The condition does not hold: the step is skipped and the run goes on.
    done = wait_for(api, org, flow, execute(api, org, user, flow, {"status": "paid"})["executionId"])
    assert done["status"] == "completed" and done["outputs"]["after"] == "shipped", done
    assert {s["stepId"]: s["status"] for s in done["steps"]}["paid"] == "skipped"


def test_a_fail_item_fails_its_foreach_unless_it_continues_on_errors(api, org, user, worker):
    item = {"type": "fail", "executeIf": "{{ item % 2 == 0 }}", "config": {"message": "even: {{ item }}"}}
    strict = api.flow(org, steps=[step("each", "foreach", {"items": [1, 2, 3], "step": item})])
    run = wait_for(api, org, strict, execute(api, org, user, strict)["executionId"])
    assert run["status"] == "failed", run
    assert run["error"]["message"] == "Item 1 failed: even: 2"
    assert run["error"]["itemError"] == {"name": "FailStep", "message": "even: 2"}
    lenient = api.flow(org, steps=[step("each", "foreach", {"items": [1, 2, 3, 4], "step": item,
                                                             "continueOnError": True})])
    run = wait_for(api, org, lenient, execute(api, org, user, lenient)["executionId"])
    assert run["status"] == "completed", run
    statuses = {s["stepId"]: s["status"] for s in run["steps"]}
    assert [statuses[f"each[{i}]"] for i in range(4)] == ["skipped", "failed", "skipped", "failed"]
    assert {s["stepId"]: s for s in run["steps"]}["each"]["inputs"]["failed"] == 2


def test_a_fail_steps_config_is_checked_when_the_flow_is_saved(api, org):
    def refused(*steps) -> dict:
        result = api.client.simulate_post("/flows", json={"name": "F", "steps": list(steps)}, headers=api.headers(org))
        assert result.status_code == 400, result.text
        return {e["field"]: e["message"] for e in result.json["errors"]}

    assert set(refused(step("x", "fail", {}))) == {"steps[0].config.message"}
    assert set(refused(step("x", "fail", {"message": ""}))) == {"steps[0].config.message"}
    assert set(refused(step("x", "fail", {"message": "m", "reason": "r"}))) == {"steps[0].config.reason"}
    assert set(refused(step("x", "fail", {"message": 7}))) == {"steps[0].config.message"}
    assert set(refused(step("each", "foreach", {"items": [1], "step": {"type": "fail", "config": {}}}))) == {
        "steps[0].config.step.config.message"}
    saved = api.client.simulate_post("/flows", json={"name": "F", "steps": [step("x", "fail", {"message": "m"})]},
                                     headers=api.headers(org))
    assert saved.status_code == 201, saved.text
