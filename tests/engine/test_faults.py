"""Two kinds of fault, told apart (docs/flows.md, "Faults: hand back or fail"): a *transient* fault of
the database (a statement cancelled or timed out, a serialization failure, a lost connection, a
failover) hands the run back to the queue as it was, spending no attempt and inventing no unknown
outcome; a fault of *the run's own* data (a program limit such as jsonb's 256 MB, a data exception)
counts against that run alone and fails it at the recovery limit. Neither stops other runs, and
neither bounces a run forever.

Faults are injected where they happen in production: a statement cancelled by ``pg_cancel_backend``
while it runs, or raised with the SQLSTATE PostgreSQL would raise, by a trigger the test installs on
the table that statement writes (the client cannot tell the two apart: it sees the SQLSTATE)."""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import threading
import time

import psycopg
import pytest
from test_engine import execute, step, wait_for, wait_until_sleeping
from test_worker_processes import log_tail, run_status, start_worker, stop, wait_until
from werkzeug import Response

from tolstoy import engine, errors
from tolstoy.db.queries import SQL


def inject(db, table: str, when: str, action: str, *, times: int | None = 1) -> None:
    """A trigger on ``table`` that does ``action`` (plpgsql) for the first ``times`` rows written that
    match ``when`` (over ``new``), or for every one (``times=None``). The count lives in a sequence,
    which a rolled-back transaction does not undo."""
    gate = "true" if times is None else f"nextval('fault_injected') <= {times}"
    with db.pool.connection() as conn:
        conn.execute("create sequence if not exists fault_injected")
        conn.execute(f"""
            create or replace function fault_injection() returns trigger
            language plpgsql security definer set search_path = public as $$
            begin
                if ({when}) and {gate} then
                    {action};
                end if;
                return new;
            end $$""")
        conn.execute(f"create trigger fault_injection before insert or update on {table} "
                     "for each row execute function fault_injection()")


def raising(sqlstate: str, message: str = "injected fault") -> str:
    return f"raise exception '{message}' using errcode = '{sqlstate}'"


def remove_injection(db, table: str) -> None:
    with db.pool.connection() as conn:
        conn.execute(f"drop trigger if exists fault_injection on {table}")


def row(db, sql: str, *args):
    with db.pool.connection() as conn:
        return conn.execute(sql, args).fetchone()


def rows(db, sql: str, *args):
    with db.pool.connection() as conn:
        return conn.execute(sql, args).fetchall()


@pytest.fixture
def quick_worker(config, worker_db):
    """An in-process worker whose hand-backs wait milliseconds, not seconds (the back-off is what
    the test would otherwise sit through), with a 10 s lease, so a slow machine cannot lose it while a
    test holds a statement of it."""
    w = engine.worker(config, worker_db, concurrency=4, poll_seconds=0.1, lease_seconds=10)
    w.engine.handback_delay_ms = 20
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    yield w
    w.stop()
    thread.join(timeout=15)


def bearer_action(api, org, server, method: str = "POST"):
    """An action on a tool with a bearer credential: calling it reads the credential first (a
    statement that records the read in secret_reads), before anything is sent."""
    tool = api.tool(org, baseUrl=server.url_for("/api"), authType="bearer")
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "bearer", "config": {"token": "tok-fault-1234"},
                                                   "isDefault": True})
    return api.action(org, tool, key="charge.create", method=method, endpoint="/charge")


# ---- row 1: one run whose state cannot be loaded ----------------------------------------------


def test_a_run_whose_state_cannot_be_loaded_does_not_stop_other_organizations_runs(
        api, org, user, db, config, worker_db):
    """The claim loads each run on its own: one that fails to load (here its claim's update meets a
    program limit) is charged and retried later, then failed at the recovery limit with the fault
    named, while another organization's run is claimed and completes."""
    poisoned = execute(api, org, user, api.flow(org))["executionId"]
    other = api.org("Other")
    fine_flow = api.flow(other)
    fine = execute(api, other, api.user(other), fine_flow)["executionId"]
    inject(db, "flow_runs", f"new.id = '{poisoned}' and new.status = 'running'",
           raising("54000", "total size of jsonb array elements exceeds the maximum of 268435455 bytes"),
           times=None)
    w = engine.worker(config, worker_db, concurrency=4, poll_seconds=0.1, max_recoveries=1)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        assert wait_for(api, other, fine_flow, fine)["status"] == "completed"
        wait_until(lambda: run_status(db, poisoned) == "failed", 20, "the poisoned run to fail")
    finally:
        w.stop()
        thread.join(timeout=15)
    failed = row(db, "select error, strikes, claims from flow_runs where id = %s", poisoned)
    assert failed["error"]["name"] == "RecoveryLimit", failed
    assert "54000" in failed["error"]["message"] and "268435455" in failed["error"]["message"], failed
    assert "TOLSTOY_MAX_RECOVERIES" in failed["error"]["message"]
    assert failed["claims"] == 0  # never handed to a worker: nothing of it ran


def test_a_run_past_jsonbs_size_limit_fails_alone_and_says_so(api, org, user, db, config, worker_db):
    """The genuine limit, once: a run whose checkpoints add up to more than jsonb's 256 MB cannot be
    loaded by any claim. It fails (naming the limit); another organization's run is not held up."""
    big = execute(api, org, user, api.flow(org))["executionId"]
    with db.pool.connection() as conn:  # three 95 MB outputs: 285 MB once gathered (about 1 MB stored)
        conn.execute("insert into flow_run_steps (org_id, run_id, run_created_at, step_id, status, attempt, outputs) "
                     "select r.org_id, r.id, r.created_at, 'big' || n, 'completed', 1, to_jsonb(repeat('x', 95000000)) "
                     "from flow_runs r, generate_series(1, 3) n where r.id = %s", (big,))
    other = api.org("Other")
    fine_flow = api.flow(other)
    fine = execute(api, other, api.user(other), fine_flow)["executionId"]
    w = engine.worker(config, worker_db, concurrency=4, poll_seconds=0.1, max_recoveries=0)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        done = wait_for(api, other, fine_flow, fine, timeout=60)
        assert done["status"] == "completed", (done["error"], done["steps"])
        wait_until(lambda: run_status(db, big) == "failed", 60, "the oversized run to fail")
    finally:
        w.stop()
        thread.join(timeout=30)
    error = row(db, "select error from flow_runs where id = %s", big)["error"]
    assert error["name"] == "RecoveryLimit" and "54000" in error["message"], error
    assert "jsonb" in error["message"]


# ---- row 5: a statement cancelled is no failure, no attempt, no unknown outcome -----------------


def test_a_statement_cancelled_during_a_wait_steps_checkpoint_hands_the_run_back(
        api, org, user, quick_worker, db):
    """The wait step writes its checkpoint in the transaction that looked for its signal. A cancel of
    that statement (what a statement timeout does) rolls the transaction back and hands the run back:
    it goes on waiting for its signal instead of failing with InFailedSqlTransaction."""
    inject(db, "flow_run_steps", "new.step_id = 'gate'", "perform pg_sleep(30)")
    flow = api.flow(org, steps=[step("gate", "wait", {"signal": "go", "timeoutMs": 600000}),
                                step("after", "transform", {"output": "{{ steps.gate.ok }}"})])
    run = execute(api, org, user, flow)["executionId"]
    sleeping = wait_until(lambda: rows(db, "select pid from pg_stat_activity where wait_event = 'PgSleep' "
                                           "and query like '%%tolstoy_checkpoint%%'"), 20, "the checkpoint to stall")
    for each in sleeping:
        row(db, "select pg_cancel_backend(%s)", each["pid"])
    # Back in the queue until its timeout (as a wait step waits), its step waiting for the signal.
    parked = wait_until_sleeping(api, org, flow, run, "gate", timeout=20)
    assert parked["steps"][0]["attempt"] == 1
    counted = row(db, "select handbacks, strikes, recoveries, claims from flow_runs where id = %s", run)
    assert counted["handbacks"] == 1, counted
    sent = api.post(f"/flows/{flow['id']}/executions/{run}/signals/go", org, {"payload": {"ok": 1}}, user)
    assert sent.status_code == 202, sent.text
    done = wait_for(api, org, flow, run, timeout=20)
    assert done["status"] == "completed" and done["outputs"]["after"] == 1, done
    assert row(db, "select handbacks, strikes from flow_runs where id = %s", run) == {"handbacks": 0, "strikes": 0}


def test_a_statement_cancelled_before_a_foreach_items_call_is_not_an_unknown_outcome(
        api, org, user, quick_worker, db, server):
    """An item's call reads the tool's credential first; a cancel of that statement means nothing was
    sent. The run is handed back and the item's POST is sent once, with its first attempt's key,
    instead of waiting for a person to say whether it happened."""
    posts = []
    server.expect_request("/api/charge", method="POST").respond_with_handler(
        lambda request: posts.append(request.headers.get("Idempotency-Key")) or Response("{}", content_type="application/json"))
    action = bearer_action(api, org, server)
    flow = api.flow(org, steps=[step("each", "foreach", {"items": [1, 2, 3], "concurrency": 1, "step": {
        "type": "action", "config": {"actionKey": action["key"], "inputs": {"n": "{{ item }}"}}}})])
    inject(db, "secret_reads", "true", raising("57014", "canceling statement due to statement timeout"))
    run = execute(api, org, user, flow)["executionId"]
    done = wait_for(api, org, flow, run, statuses=("completed", "failed", "cancelled", "waiting"), timeout=20)
    assert done["status"] == "completed", done
    assert sorted(posts) == [f"{run}:each[{n}]:1" for n in range(3)]
    assert row(db, "select handbacks from flow_runs where id = %s", run)["handbacks"] == 0  # progress since


def test_a_statement_cancelled_before_a_steps_call_spends_no_attempt(api, org, user, quick_worker, db, server):
    posts = []
    server.expect_request("/api/charge", method="POST").respond_with_handler(
        lambda request: posts.append(request.headers.get("Idempotency-Key")) or Response("{}", content_type="application/json"))
    action = bearer_action(api, org, server)
    flow = api.flow(org, steps=[step("charge", "action", {"actionKey": action["key"], "inputs": {}})])
    inject(db, "secret_reads", "true", raising("57014", "canceling statement due to statement timeout"))
    run = execute(api, org, user, flow)["executionId"]
    done = wait_for(api, org, flow, run, timeout=20)
    assert done["status"] == "completed", done
    assert posts == [f"{run}:charge:1"]
    assert [s["attempt"] for s in done["steps"]] == [1]


def test_a_transient_fault_after_a_call_was_sent_leaves_it_to_the_unknown_outcome_policy(
        api, org, user, config, worker_db, db, server):
    """The POST went out, then recording its outcome keeps failing (a statement cancelled each time):
    the run is handed back without that record, and when it is claimed again the call's outcome is
    unknown. The step's policy decides (a POST waits for a person); it is not sent a second time."""
    posts = []
    server.expect_request("/charge", method="POST").respond_with_handler(
        lambda request: posts.append(request.headers.get("Idempotency-Key")) or Response("{}", content_type="application/json"))
    flow = api.flow(org, steps=[step("charge", "http_request", {"method": "POST", "url": server.url_for("/charge")})])
    inject(db, "flow_run_steps", "new.step_id = 'charge' and new.status = 'completed'",
           raising("57014", "canceling statement due to statement timeout"), times=None)
    w = engine.worker(config, worker_db, concurrency=2, poll_seconds=0.1, lease_seconds=2)
    w.engine.handback_delay_ms = 20
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        run = execute(api, org, user, flow)["executionId"]
        done = wait_for(api, org, flow, run, statuses=("completed", "failed", "cancelled", "waiting"), timeout=30)
    finally:
        w.stop()
        thread.join(timeout=15)
    assert done["status"] == "waiting", done
    assert [(s["stepId"], s["status"]) for s in done["steps"]] == [("charge", "outcome_unknown")], done["steps"]
    assert posts == [f"{run}:charge:1"]
    assert row(db, "select handbacks, recoveries from flow_runs where id = %s", run) == {"handbacks": 1,
                                                                                         "recoveries": 0}


def test_a_run_that_keeps_meeting_transient_faults_fails_at_the_hand_back_limit(
        api, org, user, config, worker_db, db, server):
    """No run bounces forever: a tool whose credential can never be read (every read is cancelled)
    hands its run back TOLSTOY_MAX_HANDBACKS times, then the run fails naming the limit."""
    action = bearer_action(api, org, server)
    flow = api.flow(org, steps=[step("charge", "action", {"actionKey": action["key"], "inputs": {}})])
    inject(db, "secret_reads", "true", raising("40001", "could not serialize access"), times=None)
    w = engine.worker(config, worker_db, concurrency=2, poll_seconds=0.1, max_handbacks=3)
    w.engine.handback_delay_ms = 20
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        run = execute(api, org, user, flow)["executionId"]
        done = wait_for(api, org, flow, run, timeout=30)
    finally:
        w.stop()
        thread.join(timeout=15)
    assert done["status"] == "failed", done
    assert done["error"]["name"] == "HandbackLimit", done["error"]
    assert "TOLSTOY_MAX_HANDBACKS" in done["error"]["message"] and "40001" in done["error"]["message"]
    assert row(db, "select handbacks from flow_runs where id = %s", run)["handbacks"] == 4
    assert [s["attempt"] for s in done["steps"]] == [1]


def test_a_runs_own_fault_while_writing_counts_against_it_and_fails_it_at_the_limit(
        api, org, user, config, worker_db, db):
    """A checkpoint the database refuses for its data (a data exception) is no outage: it is not
    retried in place nor handed back for free. It counts against the run, which fails at the
    recovery limit with the fault named; the other organization's run is not touched."""
    flow = api.flow(org, steps=[step("bad", "transform", {"output": "x"})])
    other = api.org("Other")
    fine_flow = api.flow(other, steps=[step("bad", "transform", {"output": "fine"})])
    inject(db, "flow_run_steps", f"new.org_id = '{org['id']}'", raising("22P02", "invalid input syntax"),
           times=None)
    w = engine.worker(config, worker_db, concurrency=2, poll_seconds=0.1, max_recoveries=2)
    w.engine.handback_delay_ms = 20
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        run = execute(api, org, user, flow)["executionId"]
        fine = execute(api, other, api.user(other), fine_flow)["executionId"]
        done = wait_for(api, org, flow, run, timeout=30)
        assert wait_for(api, other, fine_flow, fine)["status"] == "completed"
    finally:
        w.stop()
        thread.join(timeout=15)
    assert done["status"] == "failed" and done["error"]["name"] == "RecoveryLimit", done
    assert "22P02" in done["error"]["message"] and "TOLSTOY_MAX_RECOVERIES" in done["error"]["message"]
    assert row(db, "select strikes, handbacks from flow_runs where id = %s", run) == {"strikes": 3, "handbacks": 0}


# ---- row 6: a cancel asked for while the worker is dead -----------------------------------------


def test_a_cancel_asked_for_while_the_worker_is_dead_is_honoured_when_the_run_is_recovered(
        api, org, user, worker_env, server, db, clock):
    entered = threading.Event()
    killed = threading.Event()

    def charge(request):
        entered.set()
        killed.wait(30)  # in flight until its worker is dead
        return Response("{}", content_type="application/json")

    server.expect_request("/charge").respond_with_handler(charge)
    flow = api.flow(org, steps=[step("charge", "http_request", {"method": "POST", "url": server.url_for("/charge")}),
                                step("after", "transform", {"output": 1})])
    first = start_worker(worker_env)
    second = None
    try:
        run = execute(api, org, user, flow)["executionId"]
        assert entered.wait(20), log_tail(first)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed.set()
        asked = api.client.simulate_post(f"/flows/{flow['id']}/executions/{run}/cancel",
                                         headers=api.headers(org, user))
        assert asked.status_code == 202, asked.text
        if asked.json["status"] == "running":  # the lease had not run out yet: the claim carries the cancel
            clock.move_past_leases()  # now it has
            second = start_worker(worker_env)
        done = wait_for(api, org, flow, run, statuses=("cancelled", "waiting", "failed", "completed"), timeout=30)
    finally:
        stop(first)
        if second is not None:
            stop(second)
    assert done["status"] == "cancelled", done
    assert row(db, "select cancel_requested from flow_runs where id = %s", run)["cancel_requested"]


def test_a_cancel_of_a_run_whose_worker_is_gone_ends_it_at_once(api, org, user, db):
    """A running run whose lease expired has no worker: nothing will pass a step boundary to honour
    a cancel, so the cancel ends it there and then."""
    flow = api.flow(org)
    run = execute(api, org, user, flow)["executionId"]
    with db.pool.connection() as conn:  # as a worker that died holding it leaves it
        conn.execute("update flow_runs set status = 'running', claims = 1, lease_token = 1, lease_owner = 'gone', "
                     "lease_expires_at = now() - interval '1 second', started_at = now() where id = %s", (run,))
    asked = api.client.simulate_post(f"/flows/{flow['id']}/executions/{run}/cancel", headers=api.headers(org, user))
    assert asked.status_code == 202 and asked.json["status"] == "cancelled", asked.text
    ended = row(db, "select status::text, lease_owner, finished_at is not null as finished from flow_runs "
                    "where id = %s", run)
    assert ended == {"status": "cancelled", "lease_owner": None, "finished": True}


def transitions(db) -> set[str]:
    """The run actions tolstoy_checkpoint knows (its `when '<action>' then` branches)."""
    source = row(db, "select pg_get_functiondef('tolstoy_checkpoint'::regproc) as src")["src"]
    return set(re.findall(r"when '(\w+)' then", source))


def test_every_checkpoint_transition_honours_a_pending_cancel(api, org, user, db, worker_db):
    """Whatever a worker asks of a run whose cancel is pending, the run does not go on parked or
    queued: every transition of tolstoy_checkpoint (and the subflow step's park) ends it cancelled,
    or, for continue and finish, says so (the worker stops at its next step boundary)."""
    expected = {"continue": "running", "pause": "cancelled", "wait": "cancelled", "handback": "cancelled",
                "fault": "cancelled", "finish": "completed"}
    assert transitions(db) == set(expected)  # a new transition must be added here, and honour cancels
    flow = api.flow(org)
    for action, status in expected.items():
        run = execute(api, org, user, flow)["executionId"]
        with db.pool.connection() as conn:
            conn.execute("update flow_runs set status = 'running', claims = 1, lease_token = 1, lease_owner = 'w', "
                         "lease_expires_at = now() + interval '1 minute', cancel_requested = true where id = %s",
                         (run,))
        transition = {"action": action, "status": "completed", "error": None, "after_ms": 0}
        with worker_db.pool.connection() as conn:
            answer = conn.execute("select tolstoy_checkpoint('w', %s, %s, 1, %s::jsonb) as a",
                                  (org["id"], run, json.dumps({"run": transition, "steps": [], "events": []}))
                                  ).fetchone()["a"]
        assert answer["cancel"] is True, (action, answer)
        assert run_status(db, run) == status, action
    # The subflow step parks its run to wait for a child: not with a cancel pending.
    run = execute(api, org, user, flow)["executionId"]
    with db.pool.connection() as conn:
        conn.execute("update flow_runs set status = 'running', claims = 1, lease_token = 1, lease_owner = 'w', "
                     "lease_expires_at = now() + interval '1 minute', cancel_requested = true where id = %s", (run,))
    with worker_db.pool.connection() as conn:
        answer = conn.execute(
            "select tolstoy_subflow('w', %s, %s, 1, '{\"run\": {\"action\": \"continue\"}}', %s::jsonb) as a",
            (org["id"], run, json.dumps({"step_id": "child", "flow_id": flow["id"], "variables": {},
                                         "wait": True}))).fetchone()["a"]
    assert answer["cancel"] is True and not answer.get("parked"), answer


# ---- recoveries count against the run that was in flight ----------------------------------------


def test_recoveries_are_charged_to_the_run_that_does_not_get_past_its_step(api, org, user, worker_env, server, db,
                                                                            clock):
    """Four workers die in turn, each while run P's call hangs (P kills them, as far as anyone can
    tell) and run Q, a bystander, is part-way through its steps. P never gets past its step and fails
    at the recovery limit (3); Q finishes a step between deaths, so no death is held against it."""
    release = threading.Event()
    hits = {"p": 0, "q": 0}

    def hang(request):
        hits["p"] += 1
        release.wait(60)
        return Response("{}", content_type="application/json")

    def quick(request):
        hits["q"] += 1
        time.sleep(0.4)
        return Response("{}", content_type="application/json")

    server.expect_request("/p").respond_with_handler(hang)
    server.expect_request("/q").respond_with_handler(quick)
    p_flow = api.flow(org, steps=[step("p", "http_request", {"method": "POST", "url": server.url_for("/p")},
                                       timeoutMs=120000, onUnknownOutcome="retry")])
    q_flow = api.flow(org, steps=[step(f"q{n}", "http_request", {"method": "GET", "url": server.url_for("/q")})
                                  for n in range(24)])
    p = execute(api, org, user, p_flow)["executionId"]
    q = execute(api, org, user, q_flow)["executionId"]
    worker = None
    try:
        for _ in range(4):
            seen = dict(hits)
            worker = start_worker(worker_env)
            wait_until(lambda seen=seen: hits["p"] > seen["p"] and hits["q"] > seen["q"] + 1, 30,
                       "P's call in flight and Q a step further")
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            clock.move_past_leases()  # the next worker recovers both at once
        worker = start_worker(worker_env)
        wait_until(lambda: run_status(db, p) == "failed" and run_status(db, q) in ("completed", "failed"), 60,
                   "P to fail and Q to end")
    finally:
        release.set()
        if worker is not None:
            stop(worker)
    assert run_status(db, q) == "completed", row(db, "select error, strikes, recoveries from flow_runs where id = %s", q)
    p_run = row(db, "select error, recoveries from flow_runs where id = %s", p)
    assert p_run["error"]["name"] == "RecoveryLimit" and p_run["recoveries"] == 4, p_run
    assert row(db, "select recoveries from flow_runs where id = %s", q)["recoveries"] == 4  # recovered, not charged


# ---- SIGTERM drains within its timeout -----------------------------------------------------------


def test_sigterm_drains_within_its_timeout_whatever_the_runs_do(api, org, user, worker_env, server, db, clock):
    """A stopping worker hands back the runs that reach a step boundary; one stuck in a slow call is
    cut off at TOLSTOY_WORKER_DRAIN_SECONDS and the worker exits; the run it left is resumed by another
    worker once its lease expires. (A second run renders a long template meanwhile: whether its render
    bound ends it first or the cut-off does, it holds nothing up.)"""
    entered = threading.Event()
    release = threading.Event()

    def slow(request):
        if not entered.is_set():
            entered.set()
            release.wait(60)
        return Response('{"ok": true}', content_type="application/json")

    server.expect_request("/slow").respond_with_handler(slow)
    call = api.flow(org, steps=[step("slow", "http_request", {"method": "GET", "url": server.url_for("/slow")},
                                     timeoutMs=120000)])
    loops = "{% for a in variables.s %}{% for b in variables.s %}{% for c in variables.s %}" \
            "{% endfor %}{% endfor %}{% endfor %}"
    render = api.flow(org, steps=[step("spin", "transform", {"output": loops})])
    env = {**worker_env, "TOLSTOY_WORKER_DRAIN_SECONDS": "2"}
    first = start_worker(env)
    second = None
    try:
        called = execute(api, org, user, call)["executionId"]
        spun = execute(api, org, user, render, {"s": "x" * 1000})["executionId"]
        assert entered.wait(20), log_tail(first)
        wait_until(lambda: run_status(db, spun) != "queued", 20, "the render to be claimed")
        time.sleep(0.5)  # well into the render
        first.send_signal(signal.SIGTERM)
        try:
            first.wait(timeout=20)  # the drain (2 s), cutting off, exiting; not the call's 60 s
        except Exception:
            pytest.fail("the worker did not exit after its drain timeout:\n" + log_tail(first))
        assert "drain" in log_tail(first)
        assert run_status(db, called) == "running"  # left to its lease, not failed or cancelled
        api.client.simulate_post(f"/flows/{render['id']}/executions/{spun}/cancel", headers=api.headers(org, user))
        release.set()
        clock.move_past_leases()  # rather than wait for the lease it left to run out
        second = start_worker(env)
        done = wait_for(api, org, call, called, timeout=30)
    finally:
        release.set()
        stop(first)
        if second is not None:
            stop(second)
    assert done["status"] == "completed", done


def test_the_claim_charges_a_run_for_every_fault_of_its_own_and_goes_on(api, org, user, db, config, worker_db):
    """The claim's per-run block catches exactly the classes FAULT_CLASSES calls the run's own, each
    with any of its codes; one run of each is charged, and the claim hands over the run that loads."""
    source = row(db, "select pg_get_functiondef('tolstoy_claim_runs_v2'::regproc) as src")["src"]
    caught = set()
    for names in re.findall(r"exception when (.*?) then", source):
        for name in names.split(" or "):
            cls = getattr(psycopg.errors, "".join(part.title() for part in name.split("_")))
            caught.add(cls.sqlstate[:2])
    assert caught == {code for code, kind, _ in errors.FAULT_CLASSES if kind == errors.REFUSED and len(code) == 2}
    flow = api.flow(org)
    bad = {state: execute(api, org, user, flow)["executionId"] for state in ("22P05", "23514", "54001")}
    good = execute(api, org, user, flow)["executionId"]
    inject(db, "flow_runs", "new.status = 'running' and new.id::text = any(array[{}])".format(
        ", ".join(f"'{run}'" for run in bad.values())),
        "raise exception 'injected' using errcode = (select k from (values {}) v(r, k) where r = new.id::text)".format(
            ", ".join(f"('{run}', '{state}')" for state, run in bad.items())), times=None)
    w = engine.worker(config, worker_db, concurrency=4)
    taken = w.db.all(SQL.runs.claim, worker=w.id, limit=4, lease_seconds=30, max_recoveries=3, half_life_seconds=300)
    assert [r["run"]["id"] for r in taken if r["run"]] == [good]
    charged = rows(db, "select id::text, status::text, strikes, error from flow_runs where id = any(%s::uuid[])",
                   list(bad.values()))
    assert {r["id"]: (r["status"], r["strikes"]) for r in charged} == {run: ("queued", 1) for run in bad.values()}


def test_a_checkpoint_naming_a_step_twice_keeps_its_last_write(api, org, user, db, worker_db):
    """tolstoy_checkpoint writes a checkpoint's steps in one insert, which may not update one row
    twice: a step named twice (the worker sends each once; a hostile or buggy caller may not) is one
    row with the last write, and the run goes on, as when each step was an insert of its own."""
    flow = api.flow(org)
    run = execute(api, org, user, flow)["executionId"]
    with db.pool.connection() as conn:
        conn.execute("update flow_runs set status = 'running', claims = 1, lease_token = 1, lease_owner = 'w', "
                     "lease_expires_at = now() + interval '1 minute' where id = %s", (run,))
    steps = [{"step_id": "a", "status": "running", "attempt": 1, "inputs": {"n": 1}},
             {"step_id": "b", "status": "completed", "attempt": 1, "outputs": {"b": 1}},
             {"step_id": "a", "status": "completed", "attempt": 2, "outputs": {"a": 2}}]
    with worker_db.pool.connection() as conn:
        answer = conn.execute("select tolstoy_checkpoint('w', %s, %s, 1, %s::jsonb) as a",
                              (org["id"], run, json.dumps({"run": {"action": "continue"}, "steps": steps,
                                                           "events": []}))).fetchone()["a"]
    assert answer == {"cancel": False, "status": "running"}
    with db.pool.connection() as conn:
        written = conn.execute("select step_id, status, attempt, outputs from flow_run_steps where run_id = %s "
                               "order by step_id", (run,)).fetchall()
    assert [(w["step_id"], w["status"], w["attempt"], w["outputs"]) for w in written] == [
        ("a", "completed", 2, {"a": 2}), ("b", "completed", 1, {"b": 1})]


def test_a_quick_runs_continue_checkpoint_writes_its_steps_and_nothing_else(api, org, user, db, worker_db):
    """A checkpoint of a run that goes on counts the worker time at most once a second, and renews the
    lease (the heartbeat's job) only once half of it is gone: a quick run's checkpoint before its call
    writes its steps and leaves the run's row (its version, xmin) and the organization's worker time
    alone. Past a second, or with less than half the lease left, it writes both as before."""
    flow = api.flow(org)
    run = execute(api, org, user, flow)["executionId"]
    with db.pool.connection() as conn:
        # Counted "just now" (a minute ahead: a loaded machine may take seconds to reach the checkpoint).
        conn.execute("update flow_runs set status = 'running', claims = 1, lease_token = 1, lease_owner = 'w', "
                     "lease_expires_at = now() + interval '1 minute', accounted_at = now() + interval '1 minute' "
                     "where id = %s", (run,))

    def checkpoint(step_id: str, **more) -> None:
        with worker_db.pool.connection() as conn:
            answer = conn.execute("select tolstoy_checkpoint('w', %s, %s, 1, %s::jsonb) as a", (
                org["id"], run, json.dumps({"run": {"action": "continue"}, "lease_seconds": 60, "events": [],
                                            "steps": [{"step_id": step_id, "status": "completed"}], **more}))
            ).fetchone()["a"]
        assert answer == {"cancel": False, "status": "running"}

    def state() -> dict:
        found = row(db, "select xmin::text as version, lease_expires_at, accounted_at from flow_runs where id = %s", run)
        worker_time = row(db, "select seconds, counted_at from organization_worker_time where org_id = %s", org["id"])
        return {**found, "worker_time": worker_time}

    before = state()
    checkpoint("a")
    assert state() == before
    assert row(db, "select count(*) as n from flow_run_steps where run_id = %s", run)["n"] == 1
    # Its time last counted two seconds ago: counted now, on the organization and on the run.
    with db.pool.connection() as conn:
        conn.execute("update flow_runs set accounted_at = now() - interval '2 seconds' where id = %s", (run,))
    before = state()
    checkpoint("b")
    after = state()
    assert after["version"] != before["version"] and after["accounted_at"] > before["accounted_at"]
    assert after["worker_time"] is not None and after["worker_time"]["seconds"] >= 2
    # Less than half of a 60 s lease left: renewed to a whole one, the time not counted again.
    with db.pool.connection() as conn:
        conn.execute("update flow_runs set lease_expires_at = now() + interval '20 seconds', "
                     "accounted_at = now() + interval '1 minute' where id = %s", (run,))
    before = state()
    checkpoint("c")
    after = state()
    assert after["lease_expires_at"] - before["lease_expires_at"] > dt.timedelta(seconds=35)
    assert after["accounted_at"] == before["accounted_at"] and after["worker_time"] == before["worker_time"]
    # A caller that may park the run right after (tolstoy_subflow, tolstoy_checkpoint_slots) has its time
    # counted at once (writes.count_time): a run's time not counted when it leaves running never is.
    with db.pool.connection() as conn:
        conn.execute("update flow_runs set accounted_at = now() - interval '500 milliseconds' where id = %s", (run,))
    before = state()
    checkpoint("d", count_time=True)
    after = state()
    assert after["worker_time"]["counted_at"] > before["worker_time"]["counted_at"]
    assert after["accounted_at"] > before["accounted_at"]


@pytest.mark.parametrize("caller", ["tolstoy_subflow", "tolstoy_checkpoint_slots"])
def test_a_checkpoint_that_may_park_the_run_counts_its_time_at_once(db, caller):
    """The callers of tolstoy_checkpoint that may park the run right after it ask it to count the worker
    time (writes.count_time) whatever a quick run's continue would skip."""
    source = row(db, f"select pg_get_functiondef('{caller}'::regproc) as src")["src"]
    assert '"count_time": true' in source
