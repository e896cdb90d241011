"""The promise of a durable engine, tried the way it breaks: later steps see what earlier
steps really returned (after a delay, a SIGKILL, a retry); poison runs end within their
bounds; a stolen lease writes nothing; a killed database connection or a worker dead in
the middle of a call never repeats what must not be repeated; history is pruned by
dropping partitions; the claim stays an index scan however long the history."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import signal
import threading
import time

import pytest
from support import trickle
from test_engine import execute, logs_of, step, wait_for  # the same helpers as the main engine tests
from test_worker_processes import log_tail, run_status, start_worker, stop, wait_until
from werkzeug import Response

from tolstoy import engine
from tolstoy.db import migrate
from tolstoy.db.database import Database

TOKEN = "tok-42-a-real-login-token"
LOGIN = step("login", "transform", {"output": {"access_token": TOKEN, "user": "ada"}})
USE_HEADERS = {"Authorization": "Bearer {{ steps.login.access_token }}"}


@pytest.fixture
def flow(api, org):
    return api.flow(org)


def everything_shown(api, org, flow, execution_id, db) -> str:
    """All a person (or a log reader) can see of a run: its API views, its log rows, its stored rows."""
    run = api.client.simulate_get(f"/flows/{flow['id']}/executions/{execution_id}", headers=api.headers(org)).json
    listing = api.client.simulate_get(f"/flows/{flow['id']}/executions", headers=api.headers(org)).json
    with db.pool.connection() as conn:
        rows = conn.execute(
            "select (select coalesce(jsonb_agg(l), '[]') from execution_logs l where l.execution_id = %(id)s::text)"
            "    as logs,"
            " (select coalesce(jsonb_agg(jsonb_build_array(s.inputs, s.outputs, s.error)), '[]')"
            "    from flow_run_steps s where s.run_id = %(id)s::uuid) as steps,"
            " (select to_jsonb(r) - 'plan' from flow_runs r where r.id = %(id)s::uuid) as run",
            {"id": execution_id}).fetchone()
    return json.dumps([run, listing, logs_of(api, org, execution_id), rows], default=str)


def auth_seen(httpserver) -> list:
    return [request.headers.get("Authorization") for request, _ in httpserver.log if request.path == "/use"]


def test_the_real_token_is_sent_after_a_delay_and_in_a_retried_run(api, org, user, worker, httpserver, db):
    calls = {"n": 0}

    def use(request):
        calls["n"] += 1
        # The first run's call fails for good, so the run fails and is retried.
        return Response("{}", status=400 if calls["n"] == 1 else 200, content_type="application/json")

    httpserver.expect_request("/use").respond_with_handler(use)
    flow = api.flow(org, steps=[
        LOGIN,
        step("nap", "delay", {"ms": 300}),
        step("use", "http_request", {"method": "POST", "url": httpserver.url_for("/use"), "headers": USE_HEADERS}),
    ])
    first = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    assert first["status"] == "failed", first
    retry = api.client.simulate_post(f"/flows/{flow['id']}/executions/{first['executionId']}/retry",
                                     headers=api.headers(org, user))
    assert retry.status_code == 202, retry.text
    second = wait_for(api, org, flow, retry.json["executionId"])
    assert second["status"] == "completed", second
    # Both calls carried the real token: after the delay, and in the retry, where login was not run again.
    assert auth_seen(httpserver) == [f"Bearer {TOKEN}"] * 2
    # The retry sends the same Idempotency-Key as the run it retries: a tool that saw it does nothing twice.
    keys = [request.headers.get("Idempotency-Key") for request, _ in httpserver.log if request.path == "/use"]
    assert keys == [f"{first['executionId']}:use:1"] * 2
    again = api.client.simulate_post(f"/flows/{flow['id']}/executions/{first['executionId']}/retry",
                                     headers=api.headers(org, user))
    assert again.status_code == 202 and again.json["executionId"] == retry.json["executionId"]  # one retry per run
    for run in (first, second):
        shown = everything_shown(api, org, flow, run["executionId"], db)
        assert TOKEN not in shown and '"***"' in shown


def test_the_real_token_is_sent_after_the_worker_is_killed_between_steps(api, org, user, worker_env, server, db,
                                                                        clock):
    entered = threading.Event()
    killed = threading.Event()

    def slow(request):
        entered.set()
        killed.wait(30)  # in flight until its worker is dead
        return Response('{"ok": true}', content_type="application/json")

    server.expect_request("/slow").respond_with_handler(slow)
    server.expect_request("/use").respond_with_json({"ok": True})
    flow = api.flow(org, steps=[
        LOGIN,
        step("nap", "delay", {"ms": 200}),
        step("slow", "http_request", {"method": "GET", "url": server.url_for("/slow")}),
        step("use", "http_request", {"method": "POST", "url": server.url_for("/use"), "headers": USE_HEADERS}),
    ])
    first = start_worker(worker_env)
    second = None
    try:
        run = execute(api, org, user, flow)
        assert entered.wait(20), log_tail(first)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed.set()
        clock.move_past_leases()  # rather than wait 2 s for its lease to run out
        second = start_worker(worker_env)
        wait_until(lambda: run_status(db, run["executionId"]) in ("completed", "failed"), 30, "the run to end")
    finally:
        stop(first)
        if second is not None:
            stop(second)
    assert run_status(db, run["executionId"]) == "completed", log_tail(second)
    assert auth_seen(server) == [f"Bearer {TOKEN}"]
    assert TOKEN not in everything_shown(api, org, flow, run["executionId"], db)


def test_poison_runs_end_within_their_bounds_while_another_tenant_runs(api, user, worker, server, org):
    server.expect_request("/trickle").respond_with_handler(trickle(60, 0.3))
    server.expect_request("/fine").respond_with_json({"fine": True})
    poison = {
        "center": (step("big", "transform", {"output": "{{ 'x' | center(1500000000) }}"}), "longer than"),
        "percent": (step("big", "transform", {"output": "{{ '%01500000000d' % 1 }}"}), "longer than"),
        "format": (step("big", "transform", {"output": "{{ '{:>1500000000}'.format(1) }}"}), "longer than"),
        "loop": (step("big", "transform", {"output": "{% for i in range(100000) %}{% for j in range(100000) %}"
                                                     "{% endfor %}{% endfor %}"}), "TOLSTOY_TEMPLATE_MAX_"),
        # Issue 20 row 2: loops over a string call nothing, so no deadline was ever looked at.
        "spin": (step("big", "transform", {"output": "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}"
                                                     "{% for c in s %}{% endfor %}{% endfor %}{% endfor %}"}),
                 "TOLSTOY_TEMPLATE_MAX_"),
        # Issue 20 row 3: one multiplication held the interpreter for seconds; a list was weighed only
        # once built (+382 MB); `self` could not be stored, so the run crashed until its recovery limit.
        "power": (step("big", "transform", {"output": "{{ ((((10**100)**100)**100)**10) > 5 }}"}),
                  "integer of more than 4300 digits"),
        "repeat": (step("big", "transform", {"output": "{{ ['x'*999999]*400 }}"}), "TOLSTOY_TEMPLATE_MAX_SIZE"),
        "self": (step("big", "transform", {"output": "{{ self }}"}), "TemplateReference, which is not a JSON value"),
        "trickle": (step("big", "http_request", {"method": "GET", "url": server.url_for("/trickle")},
                         timeoutMs=1500), "Timed out after 1500 ms"),
    }
    flows = {name: api.flow(org, steps=[kind]) for name, (kind, _) in poison.items()}
    other = api.org("Other")
    other_user = api.user(other)
    fine = api.flow(other, steps=[step("fine", "http_request", {"method": "GET", "url": server.url_for("/fine")})])
    started = time.monotonic()
    runs = {name: execute(api, org, user, flows[name])["executionId"] for name in poison}
    fine_run = execute(api, other, other_user, fine)["executionId"]
    assert wait_for(api, other, fine, fine_run, timeout=20)["status"] == "completed"
    for name, (_, message) in poison.items():
        run = wait_for(api, org, flows[name], runs[name], timeout=20)
        assert run["status"] == "failed" and message in run["error"]["message"], (name, run["error"])
    assert time.monotonic() - started < 15  # each ended at its bound, not when the tool or the loop gave up


def test_a_run_past_its_recovery_limit_fails_with_the_reason(api, org, user, flow, db, config, worker_db):
    run = execute(api, org, user, flow)
    with db.pool.connection() as conn:  # as if three workers had died holding it, each in the same step
        conn.execute("update flow_runs set status = 'running', recoveries = 3, strikes = 3, claims = 4, lease_token = 4, "
                     "lease_owner = 'gone', lease_expires_at = now() - interval '1 second' where id = %s",
                     (run["executionId"],))
    w = engine.worker(config, worker_db, concurrency=2, poll_seconds=0.1, max_recoveries=3)
    w.run(stop_after_idle=True)
    done = wait_for(api, org, flow, run["executionId"])
    assert done["status"] == "failed" and done["error"]["name"] == "RecoveryLimit", done
    assert "4 times" in done["error"]["message"]


def test_a_worker_whose_lease_was_stolen_writes_nothing(api, org, user, worker_env, server, db, clock):
    first_call = threading.Event()
    release = threading.Event()
    hits = {"slow": 0, "after": 0}

    def slow(request):
        hits["slow"] += 1
        if hits["slow"] == 1:
            first_call.set()
            release.wait(30)
        return Response('{"n": %d}' % hits["slow"], content_type="application/json")

    def after(request):
        hits["after"] += 1
        return Response("{}", content_type="application/json")

    server.expect_request("/slow").respond_with_handler(slow)
    server.expect_request("/after").respond_with_handler(after)
    flow = api.flow(org, steps=[
        step("slow", "http_request", {"method": "GET", "url": server.url_for("/slow")}, timeoutMs=60000),
        step("after", "http_request", {"method": "POST", "url": server.url_for("/after")}),
    ])
    stalled = start_worker(worker_env)
    other = None
    try:
        run = execute(api, org, user, flow)
        assert first_call.wait(20), log_tail(stalled)
        stalled.send_signal(signal.SIGSTOP)  # a long GC pause, a frozen VM: the lease (2 s) runs out...
        clock.move_past_leases()  # ...at once, as far as the database can tell
        other = start_worker(worker_env)
        wait_until(lambda: run_status(db, run["executionId"]) == "completed", 30, "the other worker to finish")

        def history():
            with db.pool.connection() as conn:
                return conn.execute(
                    "select (select jsonb_agg(s order by s.step_id) from flow_run_steps s where s.run_id = %(id)s)"
                    " as steps, (select count(*) from execution_logs where execution_id = %(id)s::text) as logs,"
                    " (select to_jsonb(r) - 'updated_at' from flow_runs r where r.id = %(id)s) as run",
                    {"id": run["executionId"]}).fetchone()

        before = history()
        release.set()  # the stalled worker's call now answers...
        stalled.send_signal(signal.SIGCONT)  # ...and it wakes up to a lease that is no longer its own
        wait_until(lambda: re.search(r"lease (lost|not renewed)", log_tail(stalled)), 30,
                   "the stalled worker to find its lease gone")
        assert history() == before
        assert stalled.poll() is None, log_tail(stalled)  # it lost a run, not its mind
    finally:
        release.set()
        if stalled.poll() is None:
            stalled.send_signal(signal.SIGCONT)
        stop(stalled)
        if other is not None:
            stop(other)
    assert hits == {"slow": 2, "after": 1}
    assert before["steps"][1]["outputs"]["body"] == {"n": 2}
    assert "lease" in log_tail(stalled)


@pytest.fixture
def patient_worker(config, worker_db):
    """An in-process worker with a 10 s lease, so a slow machine cannot lose it while a test holds a lock."""
    w = engine.worker(config, worker_db, concurrency=2, poll_seconds=0.1, lease_seconds=10)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    yield w
    w.stop()
    thread.join(timeout=15)


def three_calls_pausing_in_two(api, org, server) -> tuple[dict, dict, threading.Event, threading.Event]:
    """A flow of three POST steps whose second answers once ``go_on`` is set; (flow, hits per step,
    set when step two is in flight, go_on)."""
    hits = {"one": 0, "two": 0, "three": 0}
    in_two = threading.Event()
    go_on = threading.Event()

    def handler(name):
        def respond(request):
            hits[name] += 1
            if name == "two":
                in_two.set()
                go_on.wait(10)
            return Response("{}", content_type="application/json")
        return respond

    for name in hits:
        server.expect_request(f"/{name}").respond_with_handler(handler(name))
    flow = api.flow(org, steps=[step(name, "http_request", {"method": "POST", "url": server.url_for(f"/{name}")})
                                for name in hits])
    return flow, hits, in_two, go_on


def test_a_connection_killed_mid_checkpoint_does_not_fail_the_run(api, org, user, patient_worker, server, db):
    flow, hits, in_two, go_on = three_calls_pausing_in_two(api, org, server)
    run = execute(api, org, user, flow)
    assert in_two.wait(10)
    with db.pool.connection() as locker, locker.transaction(force_rollback=True):
        # Hold the run's row so that the checkpoint after step two waits on it, then kill it there.
        locker.execute("select 1 from flow_runs where id = %s for update", (run["executionId"],))
        go_on.set()
        waiting = wait_until(lambda: locker.execute(
            "select pid from pg_stat_activity where usename = 'tolstoy_worker' and wait_event_type = 'Lock' "
            "and query like '%%tolstoy_checkpoint%%'").fetchall(), 10, "the checkpoint to wait on the row")
        for row in waiting:
            locker.execute("select pg_terminate_backend(%s)", (row["pid"],))
    with db.pool.connection() as conn:
        wait_until(lambda: conn.execute("select status::text from flow_runs where id = %s",
                                        (run["executionId"],)).fetchone()["status"] in ("completed", "failed"),
                   20, "the run to end")
        steps = conn.execute("select step_id, status::text, attempt from flow_run_steps where run_id = %s "
                             "order by step_id", (run["executionId"],)).fetchall()
        status = conn.execute("select status::text from flow_runs where id = %s", (run["executionId"],)).fetchone()
    assert status["status"] == "completed"
    assert [(s["step_id"], s["status"], s["attempt"]) for s in steps] == [
        ("one", "completed", 1), ("three", "completed", 1), ("two", "completed", 1)]
    assert hits == {"one": 1, "two": 1, "three": 1}


def test_a_call_cut_off_by_a_dead_worker_waits_for_a_person_unless_it_is_safe_to_send_again(
        api, org, user, worker_env, server, db, clock):
    entered = {"charge": threading.Event(), "fetch": threading.Event()}
    hits = {"charge": 0, "fetch": 0}
    killed = threading.Event()

    def handler(name):
        def respond(request):
            hits[name] += 1
            entered[name].set()
            if hits[name] == 1:
                killed.wait(30)  # in flight until its worker is dead
            return Response('{"id": "ch_1"}', content_type="application/json")
        return respond

    for name in hits:
        server.expect_request(f"/{name}").respond_with_handler(handler(name))
    charge = api.flow(org, steps=[
        step("charge", "http_request", {"method": "POST", "url": server.url_for("/charge")}),
        step("receipt", "transform", {"output": "paid {{ steps.charge.body.id }}"}),
    ])
    fetch = api.flow(org, steps=[step("fetch", "http_request", {"method": "GET", "url": server.url_for("/fetch")})])
    first = start_worker(worker_env)
    second = None
    try:
        charged = execute(api, org, user, charge)["executionId"]
        fetched = execute(api, org, user, fetch)["executionId"]
        assert entered["charge"].wait(20) and entered["fetch"].wait(20), log_tail(first)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed.set()
        clock.move_past_leases()
        second = start_worker(worker_env)
        waiting = wait_for(api, org, charge, charged, statuses=("waiting", "completed", "failed"), timeout=30)
        assert waiting["status"] == "waiting", waiting
        assert {s["stepId"]: s["status"] for s in waiting["steps"]} == {"charge": "outcome_unknown"}
        assert wait_for(api, org, fetch, fetched, timeout=30)["status"] == "completed"
        assert hits == {"charge": 1, "fetch": 2}  # the GET was sent again; the POST was not

        path = f"/flows/{charge['id']}/executions/{charged}/steps/charge/resolve"
        bad = api.client.simulate_post(path, json={"outcome": "maybe"}, headers=api.headers(org, user))
        assert bad.status_code == 400 and "outcome" in bad.text
        missing = api.client.simulate_post(path.replace("/charge/", "/nope/"), json={"outcome": "retry"},
                                           headers=api.headers(org, user))
        assert missing.status_code == 404
        resolved = api.client.simulate_post(path, json={"outcome": "succeeded", "outputs": {"body": {"id": "ch_9"}}},
                                            headers=api.headers(org, user))
        assert resolved.status_code == 202, resolved.text
        done = wait_for(api, org, charge, charged, timeout=30)
    finally:
        stop(first)
        if second is not None:
            stop(second)
    assert done["status"] == "completed", done
    assert done["outputs"]["receipt"] == "paid ch_9" and hits["charge"] == 1
    again = api.client.simulate_post(path, json={"outcome": "retry"}, headers=api.headers(org, user))
    assert again.status_code == 409


def age(db, execution_id: str, when: str) -> None:
    """Move a run, its steps and its log rows to another month, as if it had been made then."""
    with db.pool.connection() as conn:
        conn.execute("select tolstoy_ensure_partitions(%s::date, 1)", (when,))
        conn.execute("update flow_runs set created_at = %s where id = %s", (when, execution_id))
        conn.execute("update flow_run_steps set run_created_at = %s where run_id = %s", (when, execution_id))
        conn.execute("update execution_logs set created_at = %s where execution_id = %s", (when, execution_id))


def partitions(db) -> set:
    with db.pool.connection() as conn:
        return {row["relname"] for row in conn.execute(
            "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
            "join pg_class p on p.oid = i.inhparent where p.relname = 'flow_runs'").fetchall()}


def test_partitions_are_made_ahead_and_dropped_past_retention(api, org, user, flow, db, config, worker_db):
    old = execute(api, org, user, flow)["executionId"]
    w = engine.worker(config, worker_db, concurrency=1, retention_days=90)
    w.run(stop_after_idle=True)
    unfinished = execute(api, org, user, api.flow(org))  # queued, never claimed
    assert run_status(db, old) == "completed" and run_status(db, unfinished["executionId"]) == "queued"
    age(db, old, "2025-01-15T12:00:00Z")
    age(db, unfinished["executionId"], "2025-02-15T12:00:00Z")

    result = w.maintain()
    this_month = dt.date.today().replace(day=1)
    ahead = {f"flow_runs_p{(this_month + dt.timedelta(days=31 * i)):%Y_%m}" for i in range(4)}
    assert ahead | {"flow_runs_default"} <= partitions(db)
    assert {"flow_runs_p2025_01", "flow_run_steps_p2025_01", "execution_logs_p2025_01"} <= set(result["dropped"])
    assert "flow_runs_p2025_02" in result["kept"]  # a month with an unfinished run stays whole
    assert run_status(db, old) is None  # gone with its partition; no DELETE ran
    assert run_status(db, unfinished["executionId"]) == "queued"
    with db.pool.connection() as conn:
        left = conn.execute("select count(*) as n from execution_logs where execution_id = %s", (old,)).fetchone()
    assert left["n"] == 0
    # The flow's runs are past retention: it can be deleted now.
    assert api.client.simulate_delete(f"/flows/{flow['id']}", headers=api.headers(org, user)).status_code == 204


def test_history_upkeep_refuses_a_date_ahead_of_the_database(config, worker_db, db):
    # The function drops partitions as their owner: a caller's clock must not make history look old.
    w = engine.worker(config, worker_db, concurrency=1, retention_days=30)
    with pytest.raises(Exception, match="invalid arguments"):
        w.maintain(today=dt.date.today() + dt.timedelta(days=400))
    assert w.maintain(today=dt.date.today() - dt.timedelta(days=1))["dropped"] == []


def test_purge_lets_a_flow_with_runs_be_deleted(api, org, user, flow, worker):
    run = execute(api, org, user, flow)["executionId"]
    wait_for(api, org, flow, run)
    refused = api.client.simulate_delete(f"/flows/{flow['id']}", headers=api.headers(org, user))
    assert refused.status_code == 409 and "executions" in refused.json["message"]
    purged = api.client.simulate_delete(f"/flows/{flow['id']}/executions", headers=api.headers(org, user))
    assert purged.status_code == 204, purged.text
    assert api.client.simulate_get(f"/flows/{flow['id']}/executions", headers=api.headers(org)).json == []
    assert api.client.simulate_delete(f"/flows/{flow['id']}", headers=api.headers(org, user)).status_code == 204


def test_purge_refuses_while_a_run_is_unfinished(api, org, user, flow):
    execute(api, org, user, flow)
    refused = api.client.simulate_delete(f"/flows/{flow['id']}/executions", headers=api.headers(org, user))
    assert refused.status_code == 409 and "cancel" in refused.json["message"]


def test_a_three_step_run_takes_few_statements_and_an_idle_worker_almost_none(api, org, user, app_url, config,
                                                                                httpserver, db):
    httpserver.expect_request("/call").respond_with_json({"ok": True})
    flow = api.flow(org, steps=[
        step("a", "http_request", {"method": "POST", "url": httpserver.url_for("/call")}),
        step("b", "transform", {"output": "{{ steps.a.body.ok }}"}),
        step("c", "http_request", {"method": "GET", "url": httpserver.url_for("/call")}),
    ])
    counted = Database(migrate.as_role(app_url, migrate.WORKER_ROLE), min_size=1, max_size=2, timeout=5)
    counted.open(wait=True)
    try:
        w = engine.worker(config, counted, concurrency=1, poll_seconds=10)
        w.maintain()  # the once-a-day upkeep is not part of a run
        run = execute(api, org, user, flow)["executionId"]
        before = counted.counts.snapshot()
        w.run(stop_after_idle=True)
        after = counted.counts.snapshot()
        spent = {k: after[k] - before[k] for k in after}
        # Two claims (the run, then nothing), a checkpoint before each call and one at the finish:
        # each one transaction, one round trip, the tenant set with the statement (104 statements before).
        assert spent["round_trips"] <= 6 and spent["transactions"] <= 6 and spent["statements"] <= 12, spent
        assert run_status(db, run) == "completed"

        idle = engine.worker(config, counted, concurrency=1, poll_seconds=10)
        thread = threading.Thread(target=idle.run, daemon=True)
        thread.start()
        time.sleep(1)  # started: its upkeep and first claim are behind it
        before = counted.counts.snapshot()["statements"]
        time.sleep(5)
        assert counted.counts.snapshot()["statements"] - before <= 1  # at most 0.2 a second
        idle.stop()
        thread.join(timeout=10)
    finally:
        counted.close()


def test_a_worker_with_free_threads_does_not_claim_again_at_once_after_a_short_claim(api, org, user, app_url,
                                                                                     config, httpserver, db):
    """A claim that took fewer runs than it asked for found all that was due: asking again at once
    costs a claim's work in PostgreSQL per wake-up (beside the run it just started, on the same
    cores), and finds nothing. A run queued since wakes the worker by NOTIFY; one due later is what
    the claim's next_due says. So one run on a worker with four threads is two claims (the run,
    then nothing once it ended) and its two checkpoints: four round trips, not five. (The tool answers
    after 0.3 s, so the run is still in flight whenever a second claim would go out.)"""
    def slow(request):
        time.sleep(0.3)
        return Response('{"ok": true}', content_type="application/json")

    httpserver.expect_request("/call").respond_with_handler(slow)
    flow = api.flow(org, steps=[step("a", "http_request", {"method": "POST", "url": httpserver.url_for("/call")})])
    counted = Database(migrate.as_role(app_url, migrate.WORKER_ROLE), min_size=1, max_size=3, timeout=5)
    counted.open(wait=True)
    try:
        w = engine.worker(config, counted, concurrency=4, poll_seconds=10)
        w.maintain()
        run = execute(api, org, user, flow)["executionId"]
        before = counted.counts.snapshot()
        w.run(stop_after_idle=True)
        after = counted.counts.snapshot()
        assert after["round_trips"] - before["round_trips"] == 4, (before, after)
        assert run_status(db, run) == "completed"
    finally:
        counted.close()


def test_a_run_writes_one_log_line_per_step_and_one_at_its_end(api, org, user, config, httpserver, db, caplog):
    """The worker's log lines are part of its CPU per run (each formatted, masked and written under
    the handler's lock): a 3-step run writes one line per step (logs.step_event) and one when it ends
    (logs.run_event), not a second line saying it finished."""
    httpserver.expect_request("/call").respond_with_json({"ok": True})
    flow = api.flow(org, steps=[
        step("a", "transform", {"output": 1}),
        step("b", "http_request", {"method": "POST", "url": httpserver.url_for("/call")}),
        step("c", "transform", {"output": 2}),
    ])
    run = execute(api, org, user, flow)["executionId"]
    w = engine.worker(config, db, concurrency=1, poll_seconds=10)
    w.maintain()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        w.run(stop_after_idle=True)
    assert run_status(db, run) == "completed"
    lines = [(r.name, r.getMessage()) for r in caplog.records if r.name in ("tolstoy.runs", "tolstoy.engine")]
    assert lines == [("tolstoy.runs", f"step {s} completed") for s in "abc"] + [("tolstoy.runs", "run completed completed")]


def leave_outcome_unknown(db, run_id: str, step_id: str) -> None:
    """Put a finished run back as a worker that died during ``step_id``'s call leaves it: that step
    ``outcome_unknown`` (its only checkpoint), the run ``waiting`` for a person."""
    with db.pool.connection() as conn:
        conn.execute("delete from flow_run_steps where run_id = %s", (run_id,))
        conn.execute("insert into flow_run_steps (org_id, run_id, run_created_at, step_id, status, attempt, error) "
                     "select org_id, id, created_at, %s, 'outcome_unknown', 1, '{\"name\": \"OutcomeUnknown\"}' "
                     "from flow_runs where id = %s", (step_id, run_id))
        conn.execute("update flow_runs set status = 'waiting', finished_at = null, error = null where id = %s",
                     (run_id,))


def test_a_step_resolved_as_failed_fails_the_run(api, org, user, worker, db):
    flow = api.flow(org, steps=[
        step("charge", "http_request", {"method": "POST", "url": "http://127.0.0.1:9/charge"}),
        step("receipt", "transform", {"output": "paid"}),
    ])
    run = execute(api, org, user, flow)["executionId"]
    wait_for(api, org, flow, run)  # the call fails (nothing listens); now make it an unknown outcome instead
    leave_outcome_unknown(db, run, "charge")
    resolved = api.client.simulate_post(f"/flows/{flow['id']}/executions/{run}/steps/charge/resolve",
                                        json={"outcome": "failed", "message": "The charge was declined."},
                                        headers=api.headers(org, user))
    assert resolved.status_code == 202, resolved.text
    done = wait_for(api, org, flow, run)
    assert done["status"] == "failed" and done["error"]["stepId"] == "charge", done
    assert "declined" in done["error"]["message"]
    assert "receipt" not in {s["stepId"] for s in done["steps"] if s["status"] == "completed"}


def test_an_upstream_echoing_a_secret_in_a_retried_error_stays_masked(api, org, user, worker, server, db):
    server.expect_request("/flaky").respond_with_handler(
        lambda request: Response(f'{{"echo": "{request.headers.get("Authorization")}"}}', status=503,
                                 content_type="application/json"))
    flow = api.flow(org, steps=[
        LOGIN,
        step("use", "http_request", {"method": "GET", "url": server.url_for("/flaky"), "headers": USE_HEADERS},
             retryPolicy={"maxRetries": 1, "delayMs": 10}),
    ])
    run = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    assert run["status"] == "failed"
    assert TOKEN not in everything_shown(api, org, flow, run["executionId"], db)


def test_a_worker_cut_off_from_the_database_stops_its_call_once_its_lease_may_be_gone(
        api, org, user, config, worker_db, server, db):
    """Renewals that keep failing (the database unreachable from this worker) end the run's call
    in flight within about a lease, not when the tool answers: another worker may own the run by
    then. Once the database is back, the run is claimed again and completes."""
    started, ended = [], []

    def tool(request):
        started.append(time.monotonic())
        if len(started) > 1:
            return Response('{"ok": true}', content_type="application/json")

        def body():
            try:
                for _ in range(400):  # 20 s, a byte at a time, so no read timeout fires
                    yield b" "
                    time.sleep(0.05)
            finally:
                ended.append(time.monotonic())
        return Response(body(), content_type="application/json")

    server.expect_request("/slow").respond_with_handler(tool)
    flow = api.flow(org, steps=[step("slow", "http_request", {"method": "GET", "url": server.url_for("/slow")},
                                     timeoutMs=60000)])
    w = engine.worker(config, worker_db, concurrency=1, poll_seconds=0.1, lease_seconds=1.5)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        run = execute(api, org, user, flow)
        wait_until(lambda: started, 10, "the call to start")
        with db.pool.connection() as conn:
            conn.execute("alter role tolstoy_worker connection limit 0")
            conn.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                         "where usename = 'tolstoy_worker' and datname = current_database()")
        cut = time.monotonic()
        wait_until(lambda: ended, 10, "the call to be cut")
        assert ended[0] - cut < 4, "the call went on long after the lease could have run out"
    finally:
        with db.pool.connection() as conn:
            conn.execute("alter role tolstoy_worker connection limit -1")
    try:
        done = wait_for(api, org, flow, run["executionId"], timeout=30)
        assert done["status"] == "completed" and len(started) == 2, done
    finally:
        w.stop()
        thread.join(timeout=10)
