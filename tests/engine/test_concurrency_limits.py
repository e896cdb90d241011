"""Concurrency limits by key (issue 26), against a stub on 127.0.0.1 that records how many requests of
each key are in flight at once: a flow's ``concurrency`` ({key, limit, flowLimit?} or {limit}) holds
across worker processes; a run over a limit waits queued (waitingFor.concurrency), holding no thread,
while other keys and other organizations go on; cancelling or finishing frees the slot, and a dead
worker's run keeps its slot only until its lease runs out (then another worker finishes it). Timings
never go to an assertion: the stub holds each request a moment so that runs overlap."""

from __future__ import annotations

import collections
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_engine import execute, step, wait_for
from test_worker_processes import log_tail, run_status, start_worker, stop, wait_until

from tolstoy import engine
from tolstoy.db import migrate
from tolstoy.db.database import Database

FILL_SECONDS = 10.0


class KeyStub:
    """An HTTP server on 127.0.0.1: GET /<group>/<key> is held ``hold`` seconds (or until ``release``
    when the key is ``blocked``), and the most requests of each (group, key) and of each group in
    flight at once are kept, with the order requests were answered in."""

    def __init__(self, hold: float = 0.1):
        self.hold = hold
        self.lock = threading.Lock()
        self.in_flight: collections.Counter = collections.Counter()
        self.most: collections.Counter = collections.Counter()
        self.served: list[tuple[str, str]] = []
        self.blocked: dict[tuple[str, str], threading.Event] = {}
        self.fills: dict[tuple[str, str], int] = {}
        self.arrived = threading.Condition(self.lock)
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server name
                _, group, key = self.path.split("/", 2)
                with stub.lock:
                    for counted in ((group, key), (group, "*")):
                        stub.in_flight[counted] += 1
                        stub.most[counted] = max(stub.most[counted], stub.in_flight[counted])
                    stub.arrived.notify_all()
                    gate = stub.blocked.get((group, key))
                    # Held until the limit was reached once (see fill), so that "the limit was used" does
                    # not depend on how fast a loaded machine starts the next run.
                    filling = [(c, n) for c in ((group, key), (group, "*")) if (n := stub.fills.get(c))]
                    stub.arrived.wait_for(lambda: all(stub.most[c] >= n for c, n in filling), FILL_SECONDS)
                if gate is not None:
                    gate.wait(30)
                else:
                    time.sleep(stub.hold)
                with stub.lock:
                    for counted in ((group, key), (group, "*")):
                        stub.in_flight[counted] -= 1
                    stub.served.append((group, key))
                body = b'{"ok": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> KeyStub:
        self.thread.start()
        return self

    def stop(self) -> None:
        for gate in self.blocked.values():
            gate.set()
        self.server.shutdown()
        self.server.server_close()

    def block(self, group: str, key: str) -> threading.Event:
        """Hold requests of (group, key) until the event returned is set."""
        self.blocked[(group, key)] = threading.Event()
        return self.blocked[(group, key)]

    def fill(self, group: str, key: str, n: int) -> None:
        """Hold requests of (group, key) (key ``*``: of the group) until ``n`` were in flight at once, or
        FILL_SECONDS passed: a test asserting that a limit of ``n`` was used then fails only when the
        engine never let ``n`` in, not when a loaded machine started the runs one after another."""
        self.fills[(group, key)] = n

    def wait_in_flight(self, group: str, key: str, n: int, timeout: float = 30) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: self.in_flight[(group, key)] >= n, timeout), (group, key, n)


@pytest.fixture
def stub():
    provider = KeyStub().start()
    yield provider
    provider.stop()


def limited_flow(api, org, url: str, group: str, concurrency: dict, steps: int = 1) -> dict:
    """A flow of ``steps`` GETs of /<group>/<the run's customer> on the stub, with ``concurrency``."""
    return api.flow(org, name=f"Limited {group}", concurrency=concurrency, steps=[
        step(f"call{i}", "http_request", {"method": "GET", "url": url + f"/{group}/{{{{ variables.customer }}}}"})
        for i in range(steps)])


def statuses(db, flow_id: str) -> collections.Counter:
    with db.pool.connection() as conn:
        rows = conn.execute("select status::text from flow_runs where flow_id = %s", (flow_id,)).fetchall()
    return collections.Counter(row["status"] for row in rows)


def finished(db, *flows, n: int):
    def done():
        return sum(statuses(db, f["id"])["completed"] for f in flows) == n
    return done


def test_a_keyed_limit_holds_across_workers_while_other_keys_and_organizations_go_on(api, db, worker_env, stub):
    org, other = api.org(), api.org()
    user, other_user = api.user(org), api.user(other)
    key = {"key": "{{ variables.customer }}", "limit": 2}
    flow = limited_flow(api, org, stub.url, "a", key)
    stub.fill("a", "big", 2)
    others_flow = limited_flow(api, other, stub.url, "b", key)
    # 50 runs of one key queued first, then 10 runs of 10 other keys, and 10 of another organization
    # with the same key: first come would be first served, were it not for the limit.
    for _ in range(50):
        execute(api, org, user, flow, {"customer": "big"})
    for i in range(10):
        execute(api, org, user, flow, {"customer": f"small{i}"})
    for _ in range(10):
        execute(api, other, other_user, others_flow, {"customer": "big"})
    workers = [start_worker(worker_env) for _ in range(3)]
    try:
        wait_until(finished(db, flow, others_flow, n=70), 120, "70 runs to finish")
    finally:
        for worker in workers:
            stop(worker)
    assert all(w.returncode == 0 for w in workers), [log_tail(w) for w in workers]
    assert stub.most[("a", "big")] == 2  # never more than its limit, and the limit was used
    assert stub.most[("b", "big")] <= 2
    # The other keys and the other organization were not held behind the 50: they were all answered
    # while at least 10 of the 50 still waited.
    big = [i for i, served in enumerate(stub.served) if served == ("a", "big")]
    others = [i for i, served in enumerate(stub.served) if served != ("a", "big")]
    assert len(big) == 50 and len(others) == 20
    assert max(others) < big[40], stub.served
    with db.pool.connection() as conn:
        left = conn.execute("select count(*) as n from flow_runs where waiting_for is not null "
                            "or concurrency ? 'parkedAt'").fetchone()
    assert left["n"] == 0


def test_the_flows_limit_holds_across_two_workers_with_and_without_keys(api, org, user, db, worker_env, stub):
    whole = limited_flow(api, org, stub.url, "whole", {"limit": 3})
    stub.fill("whole", "*", 3)
    keyed = limited_flow(api, org, stub.url, "keyed", {"key": "{{ variables.customer }}", "limit": 2,
                                                       "flowLimit": 3})
    for i in range(20):
        execute(api, org, user, whole, {"customer": f"c{i}"})
        execute(api, org, user, keyed, {"customer": "abc"[i % 3]})
    workers = [start_worker(worker_env) for _ in range(2)]
    try:
        wait_until(finished(db, whole, keyed, n=40), 120, "40 runs to finish")
    finally:
        for worker in workers:
            stop(worker)
    assert all(w.returncode == 0 for w in workers), [log_tail(w) for w in workers]
    assert stub.most[("whole", "*")] == 3
    assert stub.most[("keyed", "*")] <= 3
    assert all(stub.most[("keyed", k)] <= 2 for k in "abc")


def waiting(api, org, flow, run_id: str) -> tuple[dict | None, str]:
    got = api.client.simulate_get(f"/flows/{flow['id']}/executions/{run_id}", headers=api.headers(org))
    assert got.status_code == 200, got.text
    return got.json["waitingFor"], got.json["status"]


def test_a_run_over_the_limit_waits_queued_and_cancelling_the_holder_frees_the_slot(api, org, user, worker,
                                                                                    db, stub):
    flow = limited_flow(api, org, stub.url, "c", {"key": "{{ variables.customer }}", "limit": 1}, steps=2)
    gate = stub.block("c", "acme")
    holder = execute(api, org, user, flow, {"customer": "acme"})["executionId"]
    stub.wait_in_flight("c", "acme", 1)
    second = execute(api, org, user, flow, {"customer": "acme"})["executionId"]
    third = execute(api, org, user, flow, {"customer": "acme"})["executionId"]
    elsewhere = execute(api, org, user, flow, {"customer": "other"})["executionId"]
    wait_for(api, org, flow, elsewhere, timeout=30)  # another key is not held back
    wait_until(lambda: waiting(api, org, flow, second)[0], 30, "the second run to wait for a slot")
    shown, status = waiting(api, org, flow, second)
    assert status == "queued"
    assert shown["concurrency"] == {"key": "acme", "limit": 1} and shown["stepId"] is None
    assert shown["since"] is not None and shown["until"] is None
    listed = api.client.simulate_get(f"/flows/{flow['id']}/executions", params={"waitingFor": "concurrency"},
                                     headers=api.headers(org)).json
    assert sorted(r["executionId"] for r in listed) == sorted([second, third])
    # Waiting holds no thread: the worker (4 threads) has one run in flight.
    assert len(worker._held) == 1
    cancelled = api.client.simulate_post(f"/flows/{flow['id']}/executions/{holder}/cancel",
                                         headers=api.headers(org, user))
    assert cancelled.status_code in (200, 202), cancelled.text
    gate.set()  # its call answers; the cancel ends it at the step boundary
    assert wait_for(api, org, flow, holder, timeout=30)["status"] == "cancelled"
    assert wait_for(api, org, flow, second, timeout=30)["status"] == "completed"
    assert wait_for(api, org, flow, third, timeout=30)["status"] == "completed"
    assert stub.most[("c", "acme")] == 1
    assert stub.served.count(("c", "acme")) == 1 + 2 + 2  # the holder's first call, then two runs of two


def test_a_killed_workers_slot_is_freed_with_its_lease(api, org, user, db, worker_env, stub, clock):
    flow = limited_flow(api, org, stub.url, "d", {"limit": 1})
    gate = stub.block("d", "one")
    first = execute(api, org, user, flow, {"customer": "one"})["executionId"]
    second = execute(api, org, user, flow, {"customer": "two"})["executionId"]
    # A lease longer than a loaded machine takes to start the survivor, so that the first run is still the
    # dead worker's when the second is seen waiting; the clock is moved past it below, not waited out.
    worker_env = {**worker_env, "TOLSTOY_WORKER_LEASE_SECONDS": "60"}
    dying = start_worker(worker_env)
    survivor = None
    try:
        stub.wait_in_flight("d", "one", 1)
        dying.send_signal(signal.SIGKILL)
        dying.wait(timeout=10)
        gate.set()
        survivor = start_worker(worker_env)
        # The dead worker's run still holds the slot while its lease runs: the second waits.
        wait_until(lambda: waiting(api, org, flow, second)[0] is not None, 30, "the second run to wait")
        assert run_status(db, first) == "running"
        clock.move_past_leases()  # rather than wait for the lease to run out
        wait_until(lambda: run_status(db, first) == "completed" and run_status(db, second) == "completed", 60,
                   "both runs to complete")
    finally:
        stop(dying)
        if survivor is not None:
            stop(survivor)
    assert stub.served.count(("d", "two")) == 1


def test_a_key_that_renders_to_no_key_is_a_400_naming_the_field(api, org, user, db):
    flow = api.flow(org, concurrency={"key": "{{ variables.customer }}", "limit": 2})
    for variables in ({"customer": "x" * 201}, {"customer": {"id": 1}}, {"customer": None}, {},
                      {"customer": "a\u0007b"}):
        got = api.client.simulate_post(f"/flows/{flow['id']}/execute", json={"variables": variables},
                                       headers=api.headers(org, user))
        assert got.status_code == 400, (variables, got.text)
        assert [e["field"] for e in got.json["errors"]] == ["concurrency.key"], got.json
    got = api.client.simulate_post(f"/flows/{flow['id']}/execute", json={"variables": {"customer": 42}},
                                   headers=api.headers(org, user))
    assert got.status_code == 202, got.text
    with db.pool.connection() as conn:
        row = conn.execute("select concurrency, concurrency_key from flow_runs where id = %s",
                           (got.json["executionId"],)).fetchone()
    assert row == {"concurrency": {"keyLimit": 2}, "concurrency_key": "42"}


@pytest.mark.parametrize(("concurrency", "field"), [
    ({"limit": 0}, "concurrency.limit"),
    ({"limit": 2, "flowLimit": 5}, "concurrency.flowLimit"),
    ({"key": "", "limit": 2}, "concurrency.key"),
    ({"key": "{{ variables.a }}"}, "concurrency.limit"),
    ({"limit": 2, "other": 1}, "concurrency.other"),
    ({"limit": "2"}, "concurrency.limit"),
])
def test_a_bad_declaration_is_a_400_naming_the_field(api, org, concurrency, field):
    got = api.client.simulate_post("/flows", json={"name": "F", "concurrency": concurrency, "steps": [
        step("a", "transform", {"output": 1})]}, headers=api.headers(org))
    assert got.status_code == 400, got.text
    assert field in [e["field"] for e in got.json["errors"]], got.json


def test_the_declaration_round_trips_and_clears(api, org):
    flow = api.flow(org, concurrency={"key": "{{ variables.c }}", "limit": 2, "flowLimit": 10})
    assert flow["concurrency"] == {"key": "{{ variables.c }}", "limit": 2, "flowLimit": 10}
    changed = api.client.simulate_patch(f"/flows/{flow['id']}", json={"concurrency": None},
                                        headers=api.headers(org))
    assert changed.status_code == 200, changed.text
    assert changed.json["concurrency"] is None
    assert changed.json["version"] == flow["version"]  # a limit is not a new version of the steps


def test_a_limited_run_costs_no_statement_more(api, org, user, app_url, config, stub, db):
    flow = limited_flow(api, org, stub.url, "e", {"key": "{{ variables.customer }}", "limit": 1, "flowLimit": 5},
                        steps=2)
    counted = Database(migrate.as_role(app_url, migrate.WORKER_ROLE), min_size=1, max_size=2, timeout=5)
    counted.open(wait=True)
    try:
        w = engine.worker(config, counted, concurrency=1, poll_seconds=10)
        w.maintain()
        run = execute(api, org, user, flow, {"customer": "x"})["executionId"]
        before = counted.counts.snapshot()
        w.run(stop_after_idle=True)
        after = counted.counts.snapshot()
        spent = {k: after[k] - before[k] for k in after}
        # As tests/engine/test_durable.py's three-step run without limits: two claims, a checkpoint
        # before each call and one at the finish; the slot is taken inside the claim, freed inside the last.
        assert spent["round_trips"] <= 5 and spent["transactions"] <= 5 and spent["statements"] <= 10, spent
        assert run_status(db, run) == "completed"
    finally:
        counted.close()
