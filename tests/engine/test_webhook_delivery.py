"""Outbound event webhooks delivered by real workers to real local receivers:
signed over the exact bytes received, a run's events in order, retries on 5xx
and 429 (honouring Retry-After) with every attempt recorded, a webhook failing
for the give-up period disabled with the reason, and the outbox surviving a
SIGKILLed worker."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import threading
import time

import pytest
from pytest_httpserver import HTTPServer
from support import free_port, scrape, value
from test_engine import execute, step, wait_for
from test_worker_processes import log_tail, start_worker, stop, wait_until
from werkzeug import Response

from tolstoy import engine
from tolstoy.cli import reencrypt_secrets

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


class Receiver:
    """Records what a webhook receiver got: (headers, raw body) per request; answers from a script
    of (status, headers) then 200."""

    def __init__(self, server: HTTPServer, path: str = "/hook", script=(), **match):
        self.got: list[tuple[dict, bytes]] = []
        self.script = list(script)
        self.lock = threading.Lock()
        server.expect_request(path, **({"method": "POST"} | match)).respond_with_handler(self.handle)
        self.url = server.url_for(path)

    def handle(self, request):
        with self.lock:
            self.got.append((dict(request.headers), request.get_data()))
            status, headers = self.script.pop(0) if self.script else (200, {})
        return Response("{}", status=status, headers=headers, content_type="application/json")

    def events(self) -> list[dict]:
        with self.lock:
            return [json.loads(body) for _, body in self.got]


def verify(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
    """What a receiver does (docs/api.md): HMAC over "<t>.<raw body>", constant-time compare, fresh t."""
    parts = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"]) and abs(time.time() - int(parts["t"])) <= tolerance


def hook(api, org, url: str, types: list[str], **fields) -> dict:
    return api.create("/webhooks", org, {"name": "Receiver", "url": url, "eventTypes": types, **fields})


def deliveries(api, org, webhook: dict) -> list[dict]:
    result = api.client.simulate_get(f"/webhooks/{webhook['id']}/deliveries", headers=api.headers(org))
    assert result.status_code == 200, result.text
    return result.json


@pytest.fixture
def fast_worker(config, worker_db):
    """A worker in this process whose webhook retries wait tens of milliseconds, not seconds."""
    quick = dataclasses.replace(config, webhook_retry_base_ms=50, webhook_retry_max_ms=2000, webhook_timeout_ms=2000)
    w = engine.worker(quick, worker_db, concurrency=2, poll_seconds=0.1)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    yield w
    w.stop()
    thread.join(timeout=10)


def test_test_sends_a_signed_webhook_test_event(api, org, worker, server):
    receiver = Receiver(server)
    webhook = hook(api, org, receiver.url, ["flow.completed"], headers={"X-Team": "ops"})
    result = api.client.simulate_post(f"/webhooks/{webhook['id']}/test", headers=api.headers(org))
    assert result.status_code == 202, result.text
    wait_until(lambda: receiver.got, 10, "the test event")
    headers, body = receiver.got[0]
    event = json.loads(body)
    assert event["type"] == "webhook.test" and event["organizationId"] == org["id"]
    assert set(event) == {"id", "type", "createdAt", "organizationId", "data"}
    assert event["data"]["webhookId"] == webhook["id"]
    assert headers["X-Webhook-Event"] == "webhook.test" and headers["X-Team"] == "ops"
    assert headers["X-Webhook-Delivery"] == result.json["deliveryId"]
    assert headers["Content-Type"] == "application/json"
    assert verify(webhook["secret"], headers["X-Webhook-Signature"], body)
    assert not verify("whsec_wrong", headers["X-Webhook-Signature"], body)
    assert not verify(webhook["secret"], headers["X-Webhook-Signature"], body.replace(b"}", b" }", 1))
    done = wait_until(lambda: [d for d in deliveries(api, org, webhook) if d["state"] == "delivered"], 10,
                      "the delivery recorded")
    [delivery] = done
    assert delivery["id"] == result.json["deliveryId"] and delivery["eventId"] == event["id"]
    [attempt] = delivery["attemptLog"]
    assert attempt["attempt"] == 1 and attempt["statusCode"] == 200 and attempt["error"] is None
    assert isinstance(attempt["durationMs"], int)


def test_a_run_delivers_its_subscribed_events_in_order(api, org, user, worker, server):
    receiver = Receiver(server)
    webhook = hook(api, org, receiver.url, ["flow.started", "flow.completed", "step.started", "step.completed"])
    unsubscribed = Receiver(server, "/other")
    hook(api, org, unsubscribed.url, ["flow.failed", "step.failed"])
    flow = api.flow(org, steps=[
        step("first", "transform", {"output": {"n": 1}}),
        step("pause", "delay", {"ms": 200}),
        step("last", "transform", {"output": "{{ steps.first.n }}"}),
    ])
    run = execute(api, org, user, flow)["executionId"]
    assert wait_for(api, org, flow, run)["status"] == "completed"
    wait_until(lambda: len(receiver.events()) >= 8, 15, "eight events")
    time.sleep(0.3)  # nothing more comes
    events = receiver.events()
    assert [(e["type"], e["data"].get("stepId")) for e in events] == [
        ("flow.started", None),
        ("step.started", "first"), ("step.completed", "first"),
        ("step.started", "pause"), ("step.completed", "pause"),
        ("step.started", "last"), ("step.completed", "last"),
        ("flow.completed", None),
    ]
    assert all(e["data"]["executionId"] == run and e["data"]["flowId"] == flow["id"] for e in events)
    assert events[2]["data"]["outputs"] == {"n": 1} and events[-1]["data"]["status"] == "completed"
    assert len({e["id"] for e in events}) == 8
    assert unsubscribed.events() == []
    assert all(verify(webhook["secret"], h["X-Webhook-Signature"], b) for h, b in receiver.got)


def test_a_receiver_failing_twice_gets_the_event_on_the_third_attempt(api, org, fast_worker, server):
    receiver = Receiver(server, script=[(503, {}), (429, {"Retry-After": "1"})])
    webhook = hook(api, org, receiver.url, ["flow.completed"])
    before = scrape(api.client)
    started = time.monotonic()
    assert api.client.simulate_post(f"/webhooks/{webhook['id']}/test", headers=api.headers(org)).status_code == 202
    wait_until(lambda: len(receiver.got) >= 3, 15, "three attempts")
    assert time.monotonic() - started >= 1.0  # Retry-After: 1 was honoured
    ids = {headers["X-Webhook-Delivery"] for headers, _ in receiver.got}
    bodies = {body for _, body in receiver.got}
    assert len(ids) == 1 and len(bodies) == 1  # the same delivery, the same bytes, every attempt
    [delivery] = wait_until(lambda: [d for d in deliveries(api, org, webhook) if d["state"] == "delivered"], 10,
                            "the delivery recorded")
    assert delivery["attempts"] == 3
    assert [(a["attempt"], a["statusCode"]) for a in delivery["attemptLog"]] == [(1, 503), (2, 429), (3, 200)]
    assert "503" in delivery["attemptLog"][0]["error"]
    assert all(isinstance(a["durationMs"], int) for a in delivery["attemptLog"])
    time.sleep(0.3)
    assert len(receiver.got) == 3
    after = scrape(api.client)  # the worker runs in this process: its counters are this registry's
    for outcome, count in (("retried", 2), ("sent", 1)):
        assert value(after, "tolstoy_webhook_deliveries_total", outcome=outcome) - \
            value(before, "tolstoy_webhook_deliveries_total", outcome=outcome) == count


def test_a_client_error_is_final_and_the_next_event_goes_on(api, org, fast_worker, server):
    receiver = Receiver(server, script=[(410, {})])
    webhook = hook(api, org, receiver.url, ["flow.completed"])
    for _ in range(2):
        assert api.client.simulate_post(f"/webhooks/{webhook['id']}/test", headers=api.headers(org)).status_code == 202
    wait_until(lambda: len(receiver.got) >= 2, 10, "both events")
    states = wait_until(lambda: sorted(d["state"] for d in deliveries(api, org, webhook))
                        if all(d["state"] in ("delivered", "failed") for d in deliveries(api, org, webhook))
                        else None, 10, "both recorded")
    assert states == ["delivered", "failed"]
    time.sleep(0.3)
    assert len(receiver.got) == 2


def test_a_webhook_failing_for_the_give_up_period_is_disabled_with_the_reason(api, org, worker, server, db):
    receiver = Receiver(server, script=[(500, {})] * 5)
    webhook = hook(api, org, receiver.url, ["flow.completed"])
    # It has been failing for a day and an hour (instead of waiting 24 h).
    with db.pool.connection() as conn:
        conn.execute("update webhooks set failing_since = now() - interval '25 hours' where id = %s",
                     (webhook["id"],))
    api.client.simulate_post(f"/webhooks/{webhook['id']}/test", headers=api.headers(org))
    shown = wait_until(lambda: (lambda w: w if not w["enabled"] else None)(
        api.client.simulate_get(f"/webhooks/{webhook['id']}", headers=api.headers(org)).json), 10, "disabled")
    assert "every delivery failed since" in shown["disabledReason"] and "HTTP 500" in shown["disabledReason"]
    [delivery] = deliveries(api, org, webhook)
    assert delivery["state"] == "failed" and delivery["attemptLog"][0]["statusCode"] == 500
    # Disabled: nothing is queued for it, and /test says why not.
    assert api.client.simulate_post(f"/webhooks/{webhook['id']}/test", headers=api.headers(org)).status_code == 409
    # Enabled again: the reason and the failing streak are forgotten.
    on = api.client.simulate_patch(f"/webhooks/{webhook['id']}/toggle", headers=api.headers(org)).json
    assert on["enabled"] is True and on["disabledReason"] is None and on["failingSince"] is None


def test_a_delivery_is_given_up_after_the_give_up_period(api, org, config, worker_db, server):
    receiver = Receiver(server, script=[(502, {})] * 10)
    # Give up after 1 s, retry after ~2 s: the first failure is already past the period.
    quick = dataclasses.replace(config, webhook_retry_base_ms=2000, webhook_give_up_seconds=1)
    w = engine.worker(quick, worker_db, concurrency=1, poll_seconds=0.1)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        webhook = hook(api, org, receiver.url, ["flow.completed"])
        api.client.simulate_post(f"/webhooks/{webhook['id']}/test", headers=api.headers(org))
        [delivery] = wait_until(lambda: [d for d in deliveries(api, org, webhook) if d["state"] == "failed"], 10,
                                "given up")
        assert delivery["attempts"] == 1 and delivery["lastStatusCode"] == 502
    finally:
        w.stop()
        thread.join(timeout=10)


def test_events_survive_a_sigkilled_worker(api, org, user, worker_env, db, clock):
    """The receiver is down while the run completes; the worker is SIGKILLed; another worker
    (the receiver now up) delivers every event, in order: the outbox committed with the run."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    webhook = hook(api, org, url, ["flow.started", "flow.completed", "step.completed"])
    flow = api.flow(org, steps=[step("a", "transform", {"output": 1}), step("b", "transform", {"output": 2})])
    env = {**worker_env, "TOLSTOY_WEBHOOK_RETRY_BASE_MS": "300", "TOLSTOY_WEBHOOK_TIMEOUT_MS": "1000"}
    first = start_worker(env, concurrency=1)
    second = None
    server = None
    try:
        run = execute(api, org, user, flow)["executionId"]
        assert wait_for(api, org, flow, run, timeout=60)["status"] == "completed", log_tail(first)

        def tried() -> bool:
            with db.pool.connection() as conn:
                return conn.execute("select count(*) as n from webhook_deliveries where attempts > 0").fetchone()["n"]
        wait_until(tried, 15, "a failed attempt")  # connection refused, recorded, retry later
        first.kill()  # SIGKILL: no chance to hand anything back
        first.wait()
        with db.pool.connection() as conn:
            rows = conn.execute("select event_type, state from webhook_deliveries order by seq").fetchall()
        assert [r["event_type"] for r in rows] == ["flow.started", "step.completed", "step.completed",
                                                   "flow.completed"]
        assert all(r["state"] in ("pending", "sending") for r in rows)
        clock.move_past_leases()  # a delivery the dead worker was sending is due again at once

        server = HTTPServer(host="127.0.0.1", port=port, threaded=True)
        server.start()
        receiver = Receiver(server)
        second = start_worker(env, concurrency=1)
        wait_until(lambda: len(receiver.events()) >= 4, 30, "the events after the kill")
        events = receiver.events()
        assert [(e["type"], e["data"].get("stepId")) for e in events] == [
            ("flow.started", None), ("step.completed", "a"), ("step.completed", "b"), ("flow.completed", None)]
        assert all(verify(webhook["secret"], h["X-Webhook-Signature"], b) for h, b in receiver.got)
    finally:
        if first.poll() is None:
            first.kill()
        if second is not None:
            stop(second)
        if server is not None:
            server.clear()
            server.stop()


def test_upkeep_prunes_old_finished_deliveries_and_the_trigger_inbox(api, org, config, worker_db, db):
    webhook = hook(api, org, "https://hooks.example.com/x", ["flow.completed"])
    flow = api.flow(org)
    trigger = api.create(f"/flows/{flow['id']}/triggers", org, {"type": "webhook"})
    for _ in range(3):
        api.client.simulate_post(f"/webhooks/{webhook['id']}/test", headers=api.headers(org))
    with db.pool.connection() as conn:
        ids = [r["id"] for r in conn.execute("select id from webhook_deliveries order by seq").fetchall()]
        # Two are finished: one 40 days ago, one today; the third (40 days old too) still pending.
        conn.execute("update webhook_deliveries set state = 'delivered', created_at = now() - interval '40 days' "
                     "where id = %s", (ids[0],))
        conn.execute("update webhook_deliveries set state = 'delivered' where id = %s", (ids[1],))
        conn.execute("update webhook_deliveries set created_at = now() - interval '40 days' where id = %s",
                     (ids[2],))
        for age in ("40 days", "1 day"):
            conn.execute("insert into flow_trigger_deliveries (org_id, trigger_id, verdict, reason, received_at) "
                         "values (%s, %s, 'invalid', 'test', now() - %s::interval)", (org["id"], trigger["id"], age))
    w = engine.worker(config, worker_db, concurrency=1)  # TOLSTOY_WEBHOOK_RETENTION_DAYS: 30 by default
    result = w.maintain()
    assert result["pruned"] == {"deliveries": 1, "inbox": 1, "signals": 0, "unknown_outcomes": 0, "audit": 0,
                                "behind": False}
    with db.pool.connection() as conn:
        left = [r["id"] for r in conn.execute("select id from webhook_deliveries order by seq").fetchall()]
        inbox = conn.execute("select count(*) as n from flow_trigger_deliveries").fetchone()["n"]
    assert left == ids[1:] and inbox == 1


def test_a_delivery_whose_worker_vanished_is_sent_by_another(api, org, config, worker_db, server):
    receiver = Receiver(server)
    webhook = hook(api, org, receiver.url, ["flow.completed"])
    api.client.simulate_post(f"/webhooks/{webhook['id']}/test", headers=api.headers(org))
    with worker_db.pool.connection() as conn:  # a worker claims it, then dies before it sends or records
        answer = conn.execute("select tolstoy_claim_deliveries('ghost', 10, 0.5) as a").fetchone()["a"]
    assert len(answer["deliveries"]) == 1
    with worker_db.pool.connection() as conn:  # held: nobody else gets it while the lease lasts
        assert conn.execute("select tolstoy_claim_deliveries('other', 10, 30) as a").fetchone()["a"]["deliveries"] \
            == []
    w = engine.worker(config, worker_db, concurrency=1, poll_seconds=0.1)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: receiver.got, 10, "the delivery sent by the other worker")
        [delivery] = wait_until(lambda: [d for d in deliveries(api, org, webhook) if d["state"] == "delivered"], 10,
                                "recorded")
        assert delivery["attempts"] == 2
        assert "vanished" in delivery["attemptLog"][0]["error"] and delivery["attemptLog"][1]["statusCode"] == 200
        assert receiver.got[0][0]["X-Webhook-Delivery"] == delivery["id"]
    finally:
        w.stop()
        thread.join(timeout=10)


def test_a_later_event_waits_for_an_earlier_one_being_retried(api, org, fast_worker, server):
    receiver = Receiver(server, script=[(503, {"Retry-After": "1"})])
    webhook = hook(api, org, receiver.url, ["flow.completed"])
    first = api.client.simulate_post(f"/webhooks/{webhook['id']}/test", headers=api.headers(org)).json
    second = api.client.simulate_post(f"/webhooks/{webhook['id']}/test", headers=api.headers(org)).json
    wait_until(lambda: len(receiver.got) >= 3, 15, "three requests")
    time.sleep(0.3)
    order = [headers["X-Webhook-Delivery"] for headers, _ in receiver.got]
    assert order == [first["deliveryId"], first["deliveryId"], second["deliveryId"]]


def test_key_rotation_moves_webhook_secrets_and_headers_and_deliveries_still_verify(api, org, worker, server, db,
                                                                                    config):
    receiver = Receiver(server)
    webhook = hook(api, org, receiver.url, ["flow.completed"], headers={"X-Key": "kept-through-rotation"})
    hook(api, org, "https://hooks.example.com/plain", ["flow.failed"], name="No headers")
    counts = reencrypt_secrets(db, engine.vault_from_config(config, db), settle_seconds=0)
    assert counts["webhooks"] == 3 and counts["retired"] == 1  # two secrets, one set of headers
    with db.pool.connection() as conn:
        versions = conn.execute("select tolstoy_key_version(secret) as s, tolstoy_key_version(headers) as h "
                                "from webhooks order by created_at").fetchall()
    assert [(r["s"], r["h"]) for r in versions] == [(2, 2), (2, None)]
    worker.engine.tools.vault.keyring.forget()  # as TOLSTOY_DATA_KEY_TTL would, sooner
    worker.deliverer.vault.keyring.forget()
    api.client.simulate_post(f"/webhooks/{webhook['id']}/test", headers=api.headers(org))
    wait_until(lambda: receiver.got, 10, "a delivery after the rotation")
    headers, body = receiver.got[0]
    assert headers["X-Key"] == "kept-through-rotation"
    assert verify(webhook["secret"], headers["X-Webhook-Signature"], body)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_a_failed_attempt_that_records_its_location_and_is_not_followed(api, org, fast_worker, server,
                                                                                      status):
    """A receiver answering 3xx gets no second request (a 302 followed as a GET used to be recorded as
    delivered, with the body lost; a 307 would have sent the signed body to wherever it points)."""
    elsewhere = Receiver(server, "/elsewhere", method="__ALL")  # a GET after a 302 as well
    moved = server.url_for("/elsewhere")
    receiver = Receiver(server, script=[(status, {"Location": moved})])
    webhook = hook(api, org, receiver.url, ["flow.completed"])
    assert api.client.simulate_post(f"/webhooks/{webhook['id']}/test", headers=api.headers(org)).status_code == 202
    [delivery] = wait_until(lambda: [d for d in deliveries(api, org, webhook) if d["state"] in ("delivered", "failed")],
                            10, "the attempt recorded")
    assert delivery["state"] == "failed" and delivery["attempts"] == 1 and delivery["lastStatusCode"] == status
    [attempt] = delivery["attemptLog"]
    assert attempt["statusCode"] == status and attempt["location"] == moved
    assert moved in attempt["error"] and moved in delivery["lastError"]
    time.sleep(0.3)
    assert len(receiver.got) == 1 and elsewhere.got == []
