"""Concurrency limits declared on a step (issue 26), against the stub of test_concurrency_limits.py that
records how many requests of each key are in flight at once: an action or http_request step's
``concurrency`` ({key?, limit}, the key rendered over the step's context when it is about to run) holds
across worker processes and runs of its flow; a step without a slot waits (its run parked queued, showing
waitingFor.concurrency with its stepId), holding no thread and spending no attempt, while other keys, other
flows and other organizations go on; the end of the step, a cancel, or a dead worker's lease running out
frees the slot for the run that waited longest. Timings never go to an assertion."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from test_concurrency_limits import KeyStub, statuses, waiting
from test_engine import execute, step, wait_for
from test_worker_processes import log_tail, run_status, start_worker, stop, wait_until

from tolstoy import engine
from tolstoy.db import migrate
from tolstoy.db.database import Database


@pytest.fixture
def stub():
    provider = KeyStub().start()
    yield provider
    provider.stop()


def step_limited_flow(api, org, url: str, group: str, concurrency: dict | None, after: int = 0) -> dict:
    """A flow whose first step names the run's customer (a transform), then a GET of /<group>/<customer> on
    the stub with ``concurrency`` (keyed on the first step's output), then ``after`` GETs without a limit."""
    return api.flow(org, name=f"Step-limited {group}", steps=[
        step("who", "transform", {"output": "{{ variables.customer }}"}),
        step("call", "http_request", {"method": "GET", "url": url + f"/{group}/{{{{ steps.who }}}}"},
             dependsOn=["who"], **({"concurrency": concurrency} if concurrency is not None else {})),
        *[step(f"after{i}", "http_request", {"method": "GET", "url": url + f"/{group}-after/x"},
               dependsOn=["call"]) for i in range(after)]])


def slots_left(db) -> int:
    with db.pool.connection() as conn:
        return conn.execute("select count(*) as n from flow_step_slots").fetchone()["n"]


def completed(db, *flows, n: int):
    def done():
        return sum(statuses(db, f["id"])["completed"] for f in flows) == n
    return done


def test_a_steps_keyed_limit_holds_across_three_workers_while_other_keys_and_organizations_go_on(
        api, db, worker_env, stub):
    org, other = api.org(), api.org()
    user, other_user = api.user(org), api.user(other)
    key = {"key": "{{ steps.who }}", "limit": 2}
    flow = step_limited_flow(api, org, stub.url, "a", key)
    stub.fill("a", "big", 2)
    others_flow = step_limited_flow(api, other, stub.url, "b", key)
    # 30 runs of one key queued first, then 10 runs of 10 other keys, and 10 of another organization with
    # the same key: first come would be first served, were it not for the limit.
    for _ in range(30):
        execute(api, org, user, flow, {"customer": "big"})
    for i in range(10):
        execute(api, org, user, flow, {"customer": f"small{i}"})
    for _ in range(10):
        execute(api, other, other_user, others_flow, {"customer": "big"})
    workers = [start_worker(worker_env) for _ in range(3)]
    try:
        wait_until(completed(db, flow, others_flow, n=50), 120, "50 runs to finish")
    finally:
        for worker in workers:
            stop(worker)
    assert all(w.returncode == 0 for w in workers), [log_tail(w) for w in workers]
    assert stub.most[("a", "big")] == 2  # never more than its limit, and the limit was used
    assert stub.most[("b", "big")] <= 2  # another organization's slots are its own
    big = [i for i, served in enumerate(stub.served) if served == ("a", "big")]
    others = [i for i, served in enumerate(stub.served) if served != ("a", "big")]
    assert len(big) == 30 and len(others) == 20
    # The other keys and the other organization were not held behind the 30.
    assert max(others) < big[20], stub.served
    assert slots_left(db) == 0
    with db.pool.connection() as conn:
        left = conn.execute("select count(*) as n from flow_runs where waiting_for is not null").fetchone()
        attempts = conn.execute("select max(attempt) as n from flow_run_steps where step_id = 'call'").fetchone()
    assert left["n"] == 0
    assert attempts["n"] == 1  # waiting for a slot spent no attempt


def test_a_step_limit_without_a_key_holds_for_the_step_across_runs(api, org, user, db, worker_env, stub):
    flow = step_limited_flow(api, org, stub.url, "n", {"limit": 3}, after=1)
    stub.fill("n", "*", 3)
    for i in range(20):
        execute(api, org, user, flow, {"customer": f"c{i}"})
    workers = [start_worker(worker_env) for _ in range(2)]
    try:
        wait_until(completed(db, flow, n=20), 120, "20 runs to finish")
    finally:
        for worker in workers:
            stop(worker)
    assert all(w.returncode == 0 for w in workers), [log_tail(w) for w in workers]
    assert stub.most[("n", "*")] == 3
    assert stub.served.count(("n-after", "x")) == 20
    assert slots_left(db) == 0


def test_a_waiting_step_holds_no_thread_spends_no_attempt_and_cancelling_the_holder_frees_the_slot(
        api, org, user, config, worker_db, db, stub):
    flow = step_limited_flow(api, org, stub.url, "c", {"key": "{{ steps.who }}", "limit": 1}, after=1)
    free = step_limited_flow(api, org, stub.url, "free", None)
    gate = stub.block("c", "acme")
    w = engine.worker(config, worker_db, concurrency=2, poll_seconds=0.1)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        holder = execute(api, org, user, flow, {"customer": "acme"})["executionId"]
        stub.wait_in_flight("c", "acme", 1)
        waiters = [execute(api, org, user, flow, {"customer": "acme"})["executionId"] for _ in range(5)]
        for run in waiters:
            wait_until(lambda run=run: waiting(api, org, flow, run)[0], 30, "a run to wait for the step's slot")
        shown, status = waiting(api, org, flow, waiters[0])
        assert status == "queued"
        assert shown["concurrency"] == {"key": "acme", "limit": 1} and shown["stepId"] == "call"
        assert shown["since"] is not None and shown["until"] is None
        listed = api.client.simulate_get(f"/flows/{flow['id']}/executions", params={"waitingFor": "concurrency"},
                                         headers=api.headers(org)).json
        assert sorted(r["executionId"] for r in listed) == sorted(waiters)
        # Five runs wait and one holds a thread: the worker's other thread runs other flows' runs.
        for i in range(5):
            other = execute(api, org, user, free, {"customer": f"f{i}"})["executionId"]
            assert wait_for(api, org, free, other, timeout=30)["status"] == "completed"
        elsewhere = execute(api, org, user, flow, {"customer": "other"})["executionId"]
        assert wait_for(api, org, flow, elsewhere, timeout=30)["status"] == "completed"  # another key goes on
        assert len(w._held) == 1
        cancelled = api.client.simulate_post(f"/flows/{flow['id']}/executions/{holder}/cancel",
                                             headers=api.headers(org, user))
        assert cancelled.status_code in (200, 202), cancelled.text
        gate.set()  # its call answers; the cancel ends it at the step boundary
        assert wait_for(api, org, flow, holder, timeout=30)["status"] == "cancelled"
        for run in waiters:
            assert wait_for(api, org, flow, run, timeout=30)["status"] == "completed"
    finally:
        w.stop()
        thread.join(timeout=10)
    assert stub.most[("c", "acme")] == 1
    # First queued, first served: the waiters' calls went in the order they began to wait.
    with db.pool.connection() as conn:
        rows = conn.execute("select run_id::text as run, attempt from flow_run_steps where step_id = 'call' "
                            "and run_id = any(%s::uuid[]) order by started_at", (waiters,)).fetchall()
    assert [r["run"] for r in rows] == waiters
    assert {r["attempt"] for r in rows} == {1}
    assert slots_left(db) == 0


def test_a_killed_workers_step_slot_is_freed_with_its_lease(api, org, user, db, worker_env, stub, clock):
    flow = step_limited_flow(api, org, stub.url, "d", {"limit": 1})
    gate = stub.block("d", "one")
    first = execute(api, org, user, flow, {"customer": "one"})["executionId"]
    # A lease longer than a loaded machine takes to start the survivor, so that the first run is still the
    # dead worker's when the second is seen waiting; the clock is moved past it below, not waited out.
    worker_env = {**worker_env, "TOLSTOY_WORKER_LEASE_SECONDS": "60"}
    dying = start_worker(worker_env)
    survivor = None
    try:
        stub.wait_in_flight("d", "one", 1)
        second = execute(api, org, user, flow, {"customer": "two"})["executionId"]
        # Parked before the kill: killed while it ran, the second would be the dead worker's too.
        wait_until(lambda: waiting(api, org, flow, second)[0] is not None, 30, "the second run to wait")
        dying.send_signal(signal.SIGKILL)
        dying.wait(timeout=10)
        gate.set()
        survivor = start_worker(worker_env)
        # The dead worker's run still holds the slot while its lease runs: the second still waits.
        time.sleep(1)  # the survivor's first claims, which must leave both runs as they are
        assert waiting(api, org, flow, second)[0] is not None
        assert run_status(db, first) == "running"
        clock.move_past_leases()  # rather than wait for the lease to run out
        wait_until(lambda: run_status(db, first) == "completed" and run_status(db, second) == "completed", 60,
                   "both runs to complete")
    finally:
        stop(dying)
        if survivor is not None:
            stop(survivor)
    assert stub.served.count(("d", "two")) == 1
    assert slots_left(db) == 0


def test_a_key_that_renders_to_no_key_fails_the_step_naming_the_field(api, org, user, worker, db, stub):
    flow = api.flow(org, steps=[
        step("call", "http_request", {"method": "GET", "url": stub.url + "/k/x"},
             concurrency={"key": "{{ variables.customer }}", "limit": 1})])
    for variables in ({"customer": {"id": 1}}, {}, {"customer": "x" * 201}):
        run = execute(api, org, user, flow, variables)["executionId"]
        done = wait_for(api, org, flow, run, timeout=30)
        assert done["status"] == "failed", done
        assert "concurrency key" in done["error"]["message"], done["error"]
        assert done["error"]["field"] == "concurrency.key", done["error"]
    assert stub.served == [] and slots_left(db) == 0


def test_a_key_read_from_a_secret_fails_the_step_and_shows_nothing_of_it(api, org, user, worker, db, stub):
    flow = api.flow(org, steps=[
        step("t", "transform", {"output": {"password": "hunter2-secret"}}),
        step("call", "http_request", {"method": "GET", "url": stub.url + "/s/x"}, dependsOn=["t"],
             concurrency={"key": "{{ steps.t.password }}", "limit": 1})])
    run = execute(api, org, user, flow)["executionId"]
    done = wait_for(api, org, flow, run, timeout=30)
    assert done["status"] == "failed", done
    assert done["error"]["name"] == "ConcurrencyKeyRefused" and "secret" in done["error"]["message"], done
    assert "hunter2" not in str(done)
    assert stub.served == [] and slots_left(db) == 0


@pytest.mark.parametrize(("declared", "field"), [
    ({"limit": 0}, "steps[0].concurrency.limit"),
    ({"limit": 10001}, "steps[0].concurrency.limit"),
    ({"key": "", "limit": 2}, "steps[0].concurrency.key"),
    ({"key": 5, "limit": 2}, "steps[0].concurrency.key"),
    ({"key": "{{ variables.a }}"}, "steps[0].concurrency.limit"),
    ({"limit": 2, "flowLimit": 3}, "steps[0].concurrency.flowLimit"),
    ({"limit": "2"}, "steps[0].concurrency.limit"),
    ("two", "steps[0].concurrency"),
])
def test_a_bad_step_declaration_is_a_400_naming_the_field(api, org, declared, field):
    got = api.client.simulate_post("/flows", json={"name": "F", "steps": [
        step("a", "http_request", {"method": "GET", "url": "http://127.0.0.1:9/x"}, concurrency=declared)]},
        headers=api.headers(org))
    assert got.status_code == 400, got.text
    assert field in [e["field"] for e in got.json["errors"]], got.json


def test_only_steps_that_call_out_declare_a_limit_and_not_per_item(api, org):
    got = api.client.simulate_post("/flows", json={"name": "F", "steps": [
        step("a", "transform", {"output": 1}, concurrency={"limit": 2})]}, headers=api.headers(org))
    assert got.status_code == 400, got.text
    assert [e["field"] for e in got.json["errors"]] == ["steps[0].concurrency"], got.json
    got = api.client.simulate_post("/flows", json={"name": "F", "steps": [
        step("each", "foreach", {"items": [1, 2], "step": {
            "type": "http_request", "config": {"method": "GET", "url": "http://127.0.0.1:9/x"},
            "concurrency": {"limit": 1}}})]}, headers=api.headers(org))
    assert got.status_code == 400, got.text
    assert [e["field"] for e in got.json["errors"]] == ["steps[0].config.step.concurrency"], got.json
    flow = api.flow(org, steps=[step("a", "http_request", {"method": "GET", "url": "http://127.0.0.1:9/x"},
                                     concurrency={"key": "{{ variables.c }}", "limit": 2})])
    assert flow["steps"][0]["concurrency"] == {"key": "{{ variables.c }}", "limit": 2}


def run_counted(api, org, user, config, app_url, flow) -> dict:
    counted = Database(migrate.as_role(app_url, migrate.WORKER_ROLE), min_size=1, max_size=2, timeout=5)
    counted.open(wait=True)
    try:
        w = engine.worker(config, counted, concurrency=1, poll_seconds=10)
        w.maintain()
        run = execute(api, org, user, flow, {"customer": "x"})["executionId"]
        before = counted.counts.snapshot()
        w.run(stop_after_idle=True)
        after = counted.counts.snapshot()
        assert wait_for(api, org, flow, run, timeout=5)["status"] == "completed"
        return {k: after[k] - before[k] for k in after}
    finally:
        counted.close()


def test_a_step_limit_costs_no_statement_more(api, org, user, app_url, config, stub, db):
    # The same flow (a transform, a limited call, a call after it) with and without the step's limit: the
    # slot is taken in the statement that records the call as starting, freed in the one recording its end.
    plain = run_counted(api, org, user, config, app_url, step_limited_flow(api, org, stub.url, "p", None, after=1))
    limited = run_counted(api, org, user, config, app_url,
                          step_limited_flow(api, org, stub.url, "l", {"key": "{{ steps.who }}", "limit": 1},
                                            after=1))
    assert limited == plain, (limited, plain)
    assert plain["round_trips"] <= 5 and plain["statements"] <= 10, plain
    assert slots_left(db) == 0


def test_a_flows_release_wakes_the_run_waiting_for_the_flows_slot_not_one_waiting_for_a_steps(
        api, org, user, worker, db, stub):
    # A flow limited per key whose step is limited with the same key: a run that leaves running frees a slot
    # of the flow, which goes to the run waiting for the flow's slot, not to an older one waiting for the
    # step's (which would take the wake, find the step's slot still held and park again, round and round).
    flow = api.flow(org, concurrency={"key": "{{ variables.customer }}", "limit": 2}, steps=[
        step("pre", "http_request", {"method": "GET", "url": stub.url + "/pre/{{ variables.customer }}"}),
        step("call", "http_request", {"method": "GET", "url": stub.url + "/w/{{ variables.customer }}"},
             dependsOn=["pre"], concurrency={"key": "{{ variables.customer }}", "limit": 1})])

    def step_waits(run):
        return lambda: (waiting(api, org, flow, run)[0] or {}).get("stepId") == "call"

    gate = stub.block("w", "k")
    runs = [execute(api, org, user, flow, {"customer": "k"})["executionId"]]
    stub.wait_in_flight("w", "k", 1)  # the first holds the step's slot
    runs.append(execute(api, org, user, flow, {"customer": "k"})["executionId"])
    wait_until(step_waits(runs[1]), 30, "the second to wait for the step's slot")
    before = stub.block("pre", "k")
    runs.append(execute(api, org, user, flow, {"customer": "k"})["executionId"])
    stub.wait_in_flight("pre", "k", 1)  # the third runs its first step: two of the flow run
    runs.append(execute(api, org, user, flow, {"customer": "k"})["executionId"])
    wait_until(lambda: (waiting(api, org, flow, runs[3])[0] or {}).get("concurrency") == {"key": "k", "limit": 2},
               30, "the fourth to wait for the flow's slot")
    before.set()
    # The third reaches the step and waits for its slot, leaving running: the fourth gets the flow's slot.
    wait_until(step_waits(runs[2]), 30, "the third to wait for the step's slot")
    wait_until(step_waits(runs[3]), 30, "the fourth to be woken and wait for the step's slot")
    gate.set()
    for run in runs:
        assert wait_for(api, org, flow, run, timeout=60)["status"] == "completed"
    assert stub.most[("w", "k")] == 1
    assert slots_left(db) == 0
