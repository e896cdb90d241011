"""Fair, ordered webhook deliveries (issue 21): one organization's backlog never holds another's
events, turns go round organizations and webhooks, and a webhook's deliveries go out in the order
their transactions committed.

The claim's order is asserted by calling tolstoy_claim_deliveries as a worker does (tolstoy_worker);
the rest with worker processes and local receivers, by the order requests arrive, never by timing."""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg.rows import dict_row
from test_webhook_delivery import Receiver, deliveries, hook
from test_worker_processes import log_tail, start_worker, stop, wait_until

from tolstoy.db.queries import SQL

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")

BURST = 2000


def burst(db, org_id: str, count: int, kind: str = "flow.completed") -> None:
    """``count`` events of one organization, written by one transaction (as a busy tenant's runs would,
    many at a time), each to every webhook of it subscribed to ``kind``; {"n": 1…count} in order."""
    with db.pool.connection() as conn:
        conn.execute("select set_config('app.org_id', %s, false)", (org_id,))
        conn.execute("select tolstoy_webhook_emit(%s, %s, jsonb_build_object('n', g)) from generate_series(1, %s) g",
                     (org_id, kind, count))


def claim(worker_db, limit: int, worker: str = "w") -> list[dict]:
    with worker_db.pool.connection() as conn:
        return conn.execute("select tolstoy_claim_deliveries(%s, %s, 30) as a", (worker, limit)).fetchone()["a"][
            "deliveries"]


def delivered(worker_db, delivery: dict, worker: str = "w") -> None:
    result = {"outcome": "delivered", "status_code": 200, "duration_ms": 1, "error": None}
    with worker_db.pool.connection() as conn:
        recorded = conn.execute("select tolstoy_record_delivery(%s, %s, %s, %s, %s) as r",
                                (worker, delivery["org_id"], delivery["id"], delivery["token"], json.dumps(result))
                                ).fetchone()["r"]
    assert recorded["recorded"] and recorded["outcome"] == "delivered", recorded


def test_another_organizations_event_is_claimed_at_once_behind_a_burst_of_2000(api, db, worker_db):
    noisy, victim = api.org("Noisy"), api.org("Victim")
    loud = hook(api, noisy, "https://noisy.example.com/hook", ["flow.completed"])
    quiet = hook(api, victim, "https://victim.example.com/hook", ["flow.completed"])
    burst(db, noisy["id"], BURST)
    burst(db, victim["id"], 1)  # written after the whole burst

    first = claim(worker_db, 4)
    # Head of line per webhook: one of the noisy webhook's 2,000 (its first), and the victim's event.
    assert sorted((d["webhook_id"], d["data"]["n"]) for d in first) == sorted([(loud["id"], 1), (quiet["id"], 1)])
    # The noisy line goes on in its order, one at a time, as each is recorded.
    head = next(d for d in first if d["webhook_id"] == loud["id"])
    for n in range(2, 6):
        delivered(worker_db, head)
        [head] = claim(worker_db, 4)
        assert (head["webhook_id"], head["data"]["n"]) == (loud["id"], n)


def test_turns_go_round_organizations_then_their_webhooks(api, db, worker_db):
    """Organization A has three webhooks, B and C one each, three events per webhook. Handed out one
    at a time: A, B and C take turns (A is not served three times as often for having three
    webhooks), A's turns go round its webhooks, and each webhook's events keep their order."""
    orgs = {name: api.org(name) for name in "ABC"}
    hooks = {"A": [hook(api, orgs["A"], f"https://a{i}.example.com/", ["flow.completed"], name=f"a{i}")
                   for i in range(3)],
             "B": [hook(api, orgs["B"], "https://b.example.com/", ["flow.completed"])],
             "C": [hook(api, orgs["C"], "https://c.example.com/", ["flow.completed"])]}
    for org in orgs.values():
        burst(db, org["id"], 3)
    owner = {h["id"]: name for name, each in hooks.items() for h in each}
    served = []
    for _ in range(15):
        [taken] = claim(worker_db, 1)
        served.append((owner[taken["webhook_id"]], taken["webhook_id"], taken["data"]["n"]))
        delivered(worker_db, taken)
    assert claim(worker_db, 4) == []
    orders = [org for org, _, _ in served]
    assert [set(orders[i:i + 3]) for i in (0, 3, 6)] == [{"A", "B", "C"}] * 3, orders
    assert orders[9:] == ["A"] * 6, orders
    a_hooks = [webhook for org, webhook, _ in served if org == "A"]
    assert len(set(a_hooks[:3])) == 3 and len(set(a_hooks[3:6])) == 3, a_hooks
    for webhook in owner:
        assert [n for _, w, n in served if w == webhook] == [1, 2, 3]


def test_two_workers_never_get_the_same_line(api, db, worker_db):
    org = api.org()
    webhooks = [hook(api, org, f"https://h{i}.example.com/", ["flow.completed"], name=f"h{i}") for i in range(3)]
    burst(db, org["id"], 5)
    first, second = claim(worker_db, 2, "one"), claim(worker_db, 2, "two")
    lines = [d["webhook_id"] for d in first + second]
    assert len(lines) == 3 and set(lines) == {w["id"] for w in webhooks}  # one each: the third line once


def test_a_webhook_receives_its_events_in_commit_order(api, org, app_url, worker_env, server):
    """The event inserted first but committed last goes out last: its transaction's change happened
    after the other one's (it used to go first, by insert order)."""
    receiver = Receiver(server)
    webhook = hook(api, org, receiver.url, ["flow.completed"])
    sessions = [psycopg.connect(app_url, row_factory=dict_row) for _ in range(2)]
    try:
        ids = []
        for n, session in enumerate(sessions, 1):
            session.execute("select set_config('app.org_id', %s, false)", (org["id"],))
            ids.append(session.execute(SQL.webhooks.emit.sql, {
                "org_id": org["id"], "id": webhook["id"], "event_type": "webhook.test",
                "data": json.dumps({"n": n})}).fetchone()["id"])
        sessions[1].commit()  # inserted second, committed first
        sessions[0].commit()
    finally:
        for session in sessions:
            session.close()
    process = start_worker(worker_env, concurrency=2)
    try:
        wait_until(lambda: len(receiver.events()) >= 2, 20, "both events")
        assert [e["data"]["n"] for e in receiver.events()] == [2, 1], log_tail(process)
        assert [h["X-Webhook-Delivery"] for h, _ in receiver.got] == [str(ids[1]), str(ids[0])]
    finally:
        stop(process)


def test_a_burst_of_2000_does_not_hold_another_organizations_event(api, db, worker_env, server):
    """A worker process delivering a noisy organization's 2,000 events to a healthy receiver: the
    victim's event, written while the burst is being sent, is among the next few requests sent, not
    behind the rest of the burst."""
    noisy, victim = api.org("Noisy"), api.org("Victim")
    loud = Receiver(server, "/noisy")
    quiet = Receiver(server, "/victim")
    hook(api, noisy, loud.url, ["flow.completed"])
    webhook = hook(api, victim, quiet.url, ["flow.completed"])
    burst(db, noisy["id"], BURST)
    process = start_worker(worker_env)
    try:
        wait_until(lambda: len(loud.got) >= 20, 30, "the burst under way")
        answer = api.client.simulate_post(f"/webhooks/{webhook['id']}/test", headers=api.headers(victim))
        assert answer.status_code == 202
        # Counted from when the victim's event is committed (the answer): how long the request itself
        # took on a busy machine is no part of what the claim decides.
        before = len(loud.got)
        wait_until(lambda: quiet.got, 30, "the victim's event")
        sent_meanwhile = len(loud.got) - before
        assert sent_meanwhile <= 10, (sent_meanwhile, log_tail(process))
        assert len(loud.got) < BURST
        [done] = wait_until(lambda: [d for d in deliveries(api, victim, webhook) if d["state"] == "delivered"], 10,
                            "recorded")
        assert done["id"] == answer.json["deliveryId"]
        # The noisy organization's events arrive in their order, one at a time.
        got = [json.loads(body)["data"]["n"] for _, body in list(loud.got)]
        assert got == list(range(1, len(got) + 1))
    finally:
        stop(process)
