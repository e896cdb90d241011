"""Webhook triggers: signed requests start exactly one run, refusals are recorded
with the contract's statuses, redeliveries return the first run, the inbox can
be listed and replayed, and the GitHub, Stripe and Slack presets verify the
providers' own signatures."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time

import pytest

from tolstoy import signatures

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


def runs_of(db, flow_id: str) -> list[dict]:
    with db.pool.connection() as conn:
        return conn.execute("select id::text, variables, user_id from flow_runs where flow_id = %s order by created_at",
                            (flow_id,)).fetchall()


def webhook(api, org, flow, **fields) -> dict:
    result = api.post(f"/flows/{flow['id']}/triggers", org, {"type": "webhook", **fields})
    assert result.status_code == 201, result.text
    return result.json


def post_hook(client, trigger: dict, body: bytes, headers: dict):
    return client.simulate_post(trigger["url"], body=body, headers={"Content-Type": "application/json", **headers})


def signed(secret: str, body: bytes, at: int | None = None) -> dict:
    return {"X-Tolstoy-Signature": signatures.sign(secret, body, int(time.time()) if at is None else at)}


def test_creating_listing_disabling_and_deleting_triggers(api, org, db):
    flow = api.flow(org)
    hook = webhook(api, org, flow)
    assert hook["type"] == "webhook" and hook["url"] == f"/hooks/{hook['id']}" and hook["secret"].startswith("whsec_")
    assert hook["verification"] == "tolstoy" and hook["enabled"] is True and hook["cron"] is None
    result = api.post(f"/flows/{flow['id']}/triggers", org,
                      {"type": "schedule", "cron": "*/5 * * * *", "timezone": "Europe/Paris", "catchUp": "none"})
    assert result.status_code == 201, result.text
    schedule = result.json
    assert result.headers["location"] == f"/flows/{flow['id']}/triggers/{schedule['id']}"
    assert schedule["nextRunAt"] and schedule["catchUp"] == "none" and schedule["url"] is None
    listed = api.client.simulate_get(f"/flows/{flow['id']}/triggers", headers=api.headers(org))
    assert listed.status_code == 200
    assert [t["id"] for t in listed.json] == [schedule["id"], hook["id"]]
    assert all("secret" not in t for t in listed.json)  # shown once, at creation
    with db.pool.connection() as conn:  # stored encrypted, never in clear
        stored = conn.execute("select secret from flow_triggers where id = %s", (hook["id"],)).fetchone()["secret"]
    assert hook["secret"].encode() not in bytes(stored)

    path = f"/flows/{flow['id']}/triggers/{schedule['id']}"
    off = api.client.simulate_patch(path, json={"enabled": False}, headers=api.headers(org))
    assert off.status_code == 200 and off.json["enabled"] is False
    assert api.client.simulate_patch(path, json={"enabled": "no"}, headers=api.headers(org)).status_code == 400
    assert api.client.simulate_patch(path, json={"cron": "* * * * *"}, headers=api.headers(org)).status_code == 400
    # GET, change enabled, PUT it all back: the unchanged fields are ignored.
    back = api.client.simulate_put(path, json={**off.json, "enabled": True}, headers=api.headers(org))
    assert back.status_code == 200 and back.json["enabled"] is True, back.text
    stale = api.client.simulate_patch(path, json={"enabled": False}, headers={**api.headers(org), "If-Match": '"x"'})
    assert stale.status_code == 412
    assert api.client.simulate_delete(path, headers=api.headers(org)).status_code == 204
    assert api.client.simulate_get(path, headers=api.headers(org)).status_code == 404
    # Another organization sees none of it.
    other = api.org("Other")
    assert api.client.simulate_get(f"/flows/{flow['id']}/triggers", headers=api.headers(other)).status_code == 404
    # A flow with a trigger cannot be deleted until the trigger is.
    blocked = api.client.simulate_delete(f"/flows/{flow['id']}", headers=api.headers(org))
    assert blocked.status_code == 409 and "triggers" in blocked.json["message"]


@pytest.mark.parametrize("body, field", [
    ({"type": "webhook", "cron": "* * * * *"}, "cron"),
    ({"type": "schedule"}, "cron"),
    ({"type": "schedule", "cron": "every minute"}, "cron"),
    ({"type": "schedule", "cron": "* * * * *", "timezone": "Mars/Olympus"}, "timezone"),
    ({"type": "schedule", "cron": "* * * * *", "catchUp": "all"}, "catchUp"),
    ({"type": "schedule", "cron": "* * * * *", "secret": "abcdefghij"}, "secret"),
    ({"type": "webhook", "verification": "stripe"}, "secret"),
    ({"type": "webhook", "verification": "bitbucket"}, "verification"),
    ({"type": "cron"}, "type"),
    ({"type": "webhook", "colour": "red"}, "colour"),
])
def test_invalid_triggers_are_refused_naming_the_field(api, org, body, field):
    flow = api.flow(org)
    result = api.post(f"/flows/{flow['id']}/triggers", org, body)
    assert result.status_code == 400, result.text
    assert field in {e["field"] for e in result.json["errors"]}, result.json


def test_a_signed_call_starts_exactly_one_run_with_the_body_as_variables(api, org, db, client):
    flow = api.flow(org)
    hook = webhook(api, org, flow)
    body = b'{"order": 42, "items": ["a", "b"]}'
    result = post_hook(client, hook, body, signed(hook["secret"], body))  # no X-Org-ID
    assert result.status_code == 202, result.text
    assert set(result.json) == {"executionId"}
    runs = runs_of(db, flow["id"])
    assert [r["id"] for r in runs] == [result.json["executionId"]]
    assert runs[0]["variables"] == {"order": 42, "items": ["a", "b"]} and runs[0]["user_id"] is None
    inbox = client.simulate_get(f"/flows/{flow['id']}/triggers/{hook['id']}/deliveries", headers=api.headers(org))
    assert inbox.status_code == 200
    [delivery] = inbox.json
    assert delivery["verdict"] == "valid" and delivery["executionId"] == result.json["executionId"]
    assert delivery["bodyBytes"] == len(body) and delivery["headers"]["Content-Type"] == "application/json"
    assert "X-Tolstoy-Signature" in delivery["headers"]


def test_tampered_wrong_secret_stale_missing_and_replayed_requests_get_401(api, org, db, client):
    flow = api.flow(org)
    hook = webhook(api, org, flow)
    body = b'{"n": 1}'
    now = int(time.time())
    cases = {
        "tampered": (b'{"n": 2}', signed(hook["secret"], body, now)),
        "wrong secret": (body, signed("whsec_not-the-secret", body, now)),
        "stale": (body, signed(hook["secret"], body, now - 301)),  # only staler as the test runs
        "future": (body, signed(hook["secret"], body, now + 360)),  # margin: a slow run must not bring it inside 300 s
        "missing": (body, {}),
        "malformed": (body, {"X-Tolstoy-Signature": "v1=abc"}),
    }
    for name, (sent, headers) in cases.items():
        result = post_hook(client, hook, sent, headers)
        assert result.status_code == 401, (name, result.text)
        assert result.json["statusCode"] == 401 and result.json["message"], name
    assert runs_of(db, flow["id"]) == []

    first = post_hook(client, hook, body, signed(hook["secret"], body, now))
    assert first.status_code == 202
    replay = post_hook(client, hook, body, signed(hook["secret"], body, now))
    assert replay.status_code == 401 and "replay" in replay.json["message"]
    # Even under a new delivery id: the id is not signed, the signature is what was seen.
    again = post_hook(client, hook, body, {**signed(hook["secret"], body, now), "X-Tolstoy-Delivery": "new-id"})
    assert again.status_code == 401
    assert len(runs_of(db, flow["id"])) == 1
    inbox = client.simulate_get(f"/flows/{flow['id']}/triggers/{hook['id']}/deliveries?limit=200",
                                headers=api.headers(org)).json
    # Refusals of one hour, verdict and source are counted in one entry each.
    counted = {}
    for d in inbox:
        counted[d["verdict"]] = counted.get(d["verdict"], 0) + d["refusals"]
    assert counted == {"invalid": 4, "stale": 2, "valid": 1, "replayed": 2}
    assert sorted(d["verdict"] for d in inbox) == ["invalid", "replayed", "stale", "valid"]
    assert all(d["bodyBytes"] is None for d in inbox if d["verdict"] != "valid")  # unverified bodies are not kept


def test_unknown_disabled_non_json_and_oversize_requests(api, org, client, db):
    flow = api.flow(org)
    hook = webhook(api, org, flow)
    body = b'{"n": 1}'
    assert post_hook(client, {"url": "/hooks/5d1c0d5e-2b5c-4f6e-9a7e-000000000000"}, body,
                     signed(hook["secret"], body)).status_code == 404
    assert post_hook(client, {"url": "/hooks/not-a-uuid"}, body, signed(hook["secret"], body)).status_code == 404
    form = client.simulate_post(hook["url"], body=b"a=1", headers={"Content-Type": "application/x-www-form-urlencoded",
                                                                  **signed(hook["secret"], b"a=1")})
    assert form.status_code == 415
    broken = post_hook(client, hook, b'{"n": ', signed(hook["secret"], b'{"n": '))
    assert broken.status_code == 415
    array = post_hook(client, hook, b"[1, 2]", signed(hook["secret"], b"[1, 2]"))
    assert array.status_code == 400
    big = b'{"x": "' + b"a" * (1024 * 1024) + b'"}'
    assert post_hook(client, hook, big, signed(hook["secret"], big)).status_code == 413
    client.simulate_patch(f"/flows/{flow['id']}/triggers/{hook['id']}", json={"enabled": False},
                          headers=api.headers(org))
    disabled = post_hook(client, hook, body, signed(hook["secret"], body))
    assert disabled.status_code == 403
    assert runs_of(db, flow["id"]) == []


def test_the_same_sender_delivery_id_twice_gives_one_run(api, org, db, client):
    flow = api.flow(org)
    hook = webhook(api, org, flow)
    body = b'{"event": "paid"}'
    now = int(time.time())
    first = post_hook(client, hook, body, {**signed(hook["secret"], body, now), "X-Tolstoy-Delivery": "evt-1"})
    # The sender retries: a new timestamp (so a new signature), the same delivery id.
    second = post_hook(client, hook, body, {**signed(hook["secret"], body, now + 1), "X-Tolstoy-Delivery": "evt-1"})
    assert first.status_code == 202 and second.status_code == 200
    assert second.json["executionId"] == first.json["executionId"]
    assert len(runs_of(db, flow["id"])) == 1


def test_concurrent_redeliveries_make_one_run(api, org, db, client):
    flow = api.flow(org)
    hook = webhook(api, org, flow)
    body = b'{"event": "paid"}'
    now = int(time.time())
    answers = []

    def send(offset: int) -> None:
        headers = {**signed(hook["secret"], body, now + offset), "X-Tolstoy-Delivery": "evt-race"}
        answers.append(post_hook(client, hook, body, headers))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 200, 202], [a.text for a in answers]
    assert len({a.json["executionId"] for a in answers}) == 1
    assert len(runs_of(db, flow["id"])) == 1


def test_a_replay_from_the_inbox_starts_a_new_run_with_the_stored_body(api, org, user, db, client):
    flow = api.flow(org)
    hook = webhook(api, org, flow)
    body = b'{"order": 7}'
    first = post_hook(client, hook, body, signed(hook["secret"], body)).json["executionId"]
    base = f"/flows/{flow['id']}/triggers/{hook['id']}/deliveries"
    [delivery] = client.simulate_get(base, headers=api.headers(org)).json
    replayed = client.simulate_post(f"{base}/{delivery['id']}/replay", headers=api.headers(org, user))
    assert replayed.status_code == 202, replayed.text
    assert replayed.json["executionId"] != first and replayed.json["status"] == "queued"
    assert replayed.headers["location"] == f"/flows/{flow['id']}/executions/{replayed.json['executionId']}"
    runs = runs_of(db, flow["id"])
    assert [r["variables"] for r in runs] == [{"order": 7}, {"order": 7}]
    # The delivery still names its own run; a refused delivery cannot be replayed.
    [delivery] = client.simulate_get(base, headers=api.headers(org)).json
    assert delivery["executionId"] == first
    post_hook(client, hook, body, {"X-Tolstoy-Signature": "t=1,v1=00"})
    refused = [d for d in client.simulate_get(base, headers=api.headers(org)).json if d["verdict"] != "valid"][0]
    assert client.simulate_post(f"{base}/{refused['id']}/replay", headers=api.headers(org)).status_code == 409
    other = api.org("Other")
    assert client.simulate_post(f"{base}/{delivery['id']}/replay", headers=api.headers(other)).status_code == 404


def refusal_rows(db, trigger_id: str) -> list[dict]:
    with db.pool.connection() as conn:
        return conn.execute("select verdict, source, refusals from flow_trigger_deliveries "
                            "where trigger_id = %s and verdict <> 'valid' order by source", (trigger_id,)).fetchall()


def test_a_flood_of_refused_requests_is_counted_not_stored_one_by_one(api, org, db, client):
    """Anyone who knows a trigger's URL can send bad signatures: the inbox counts them per hour, verdict
    and source (at most TOLSTOY_HOOK_REFUSED_SOURCES sources an hour, the rest as '*'), so a flood of
    them writes a bounded number of rows, and no refusal goes uncounted."""
    flow = api.flow(org)
    hook = webhook(api, org, flow)
    body = b'{"n": 1}'
    bad = signed("whsec_not-the-secret", body)

    def refuse(remote_addr: str, **headers):
        result = client.simulate_post(hook["url"], body=body, remote_addr=remote_addr,
                                      headers={"Content-Type": "application/json", **bad, **headers})
        assert result.status_code == 401, result.text

    for _ in range(300):
        refuse("192.0.2.7")
    assert [dict(r) for r in refusal_rows(db, hook["id"])] == [
        {"verdict": "invalid", "source": "192.0.2.7", "refusals": 300}]
    # One IPv6 host has a whole /64 to send from: one source. X-Forwarded-For from a peer that is not a
    # trusted proxy is not believed.
    for host in range(1, 51):
        refuse(f"2001:db8:1:2::{host:x}", **{"X-Forwarded-For": f"198.51.100.{host}"})
    # Past 20 sources in the hour (the default cap), the rest are counted as one.
    for host in range(1, 41):
        refuse(f"203.0.113.{host}")
    rows = refusal_rows(db, hook["id"])
    sources = {r["source"]: r["refusals"] for r in rows}
    assert sources["192.0.2.7"] == 300 and sources["2001:db8:1:2::/64"] == 50
    assert len(rows) == 21 and sources["*"] == 40 - 18  # 18 of the 203.0.113 hosts fit under the cap
    assert sum(sources.values()) == 300 + 50 + 40
    # The tenant sees the counts; a verified request is its own entry as ever.
    assert post_hook(client, hook, body, signed(hook["secret"], body)).status_code == 202
    inbox = client.simulate_get(f"/flows/{flow['id']}/triggers/{hook['id']}/deliveries?limit=100",
                                headers=api.headers(org)).json
    assert sum(d["refusals"] for d in inbox if d["verdict"] == "invalid") == 390
    flood = next(d for d in inbox if d["source"] == "192.0.2.7")
    assert flood["refusals"] == 300 and flood["lastReceivedAt"] >= flood["receivedAt"]
    valid = [d for d in inbox if d["verdict"] == "valid"]
    assert len(valid) == 1 and valid[0]["refusals"] == 1 and valid[0]["source"] is None


def test_the_inbox_is_paginated(api, org, client):
    flow = api.flow(org)
    hook = webhook(api, org, flow)
    for n in range(3):
        body = json.dumps({"n": n}).encode()
        assert post_hook(client, hook, body, signed(hook["secret"], body)).status_code == 202
    base = f"/flows/{flow['id']}/triggers/{hook['id']}/deliveries"
    page = client.simulate_get(f"{base}?limit=2", headers=api.headers(org))
    assert len(page.json) == 2 and page.headers["x-next-cursor"]
    rest = client.simulate_get(f"{base}?limit=2&cursor={page.headers['x-next-cursor']}", headers=api.headers(org))
    assert len(rest.json) == 1 and "x-next-cursor" not in rest.headers
    assert client.simulate_get(f"{base}?cursor=nope", headers=api.headers(org)).status_code == 400


# ---- presets, with the providers' documented examples where they give one -----------------------------


def test_github_documented_example_verifies():
    # https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
    secret, payload = "It's a Secret to Everybody", b"Hello, World!"
    header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert signatures.verify("github", secret, {"X-Hub-Signature-256": header}.get, payload, time.time()).ok
    assert not signatures.verify("github", secret, {"X-Hub-Signature-256": header}.get, b"Hello, World?",
                                 time.time()).ok


def test_slack_documented_example_verifies():
    # https://api.slack.com/authentication/verifying-requests-from-slack
    secret = "8f742231b10e8888abcd99yyyzzz85a5"
    body = (b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
            b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
            b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
            b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
    headers = {"X-Slack-Request-Timestamp": "1531420618",
               "X-Slack-Signature": "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"}
    assert signatures.verify("slack", secret, headers.get, body, 1531420618 + 10).ok
    assert signatures.verify("slack", secret, headers.get, body, 1531420618 + 301).verdict == "stale"
    assert signatures.verify("slack", secret + "x", headers.get, body, 1531420618).verdict == "invalid"


def test_stripe_scheme_verifies_with_several_v1_and_a_v0():
    # Stripe documents the scheme (no fixed secret and payload): t=…,v1=… over "<t>.<body>", any v1 may match
    # (during a secret roll it sends one per secret), v0 is ignored.
    secret, body, t = "whsec_test_secret", b'{"id": "evt_1", "type": "charge.succeeded"}', 1492774577
    good = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    header = f"t={t},v1={'0' * 64},v1={good},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"
    assert signatures.verify("stripe", secret, {"Stripe-Signature": header}.get, body, t + 5).ok
    assert signatures.verify("stripe", secret, {"Stripe-Signature": header}.get, body, t + 301).verdict == "stale"
    assert signatures.delivery_id("stripe", {}.get, json.loads(body)) == "evt_1"


def test_github_preset_end_to_end_with_its_delivery_id(api, org, db, client):
    flow = api.flow(org)
    secret = "It's a Secret to Everybody"
    hook = webhook(api, org, flow, verification="github", secret=secret)
    assert "secret" in hook and hook["secret"] == secret
    body = b'{"action": "opened", "number": 1}'
    headers = {"X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
               "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "X-GitHub-Event": "issues"}
    first = post_hook(client, hook, body, headers)
    redelivered = post_hook(client, hook, body, headers)  # GitHub's "Redeliver": same id, same signature
    assert first.status_code == 202 and redelivered.status_code == 200
    assert redelivered.json["executionId"] == first.json["executionId"]
    assert post_hook(client, hook, body + b" ", headers).status_code == 401
    [delivery] = [d for d in client.simulate_get(f"/flows/{flow['id']}/triggers/{hook['id']}/deliveries",
                                                 headers=api.headers(org)).json if d["verdict"] == "valid"]
    assert delivery["deliveryId"] == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert delivery["headers"]["X-GitHub-Event"] == "issues"
    assert len(runs_of(db, flow["id"])) == 1


def test_stripe_preset_end_to_end_dedups_by_event_id(api, org, db, client):
    flow = api.flow(org)
    secret = "whsec_abcdefghijklmnop"
    hook = webhook(api, org, flow, verification="stripe", secret=secret)
    body = b'{"id": "evt_123", "type": "invoice.paid"}'
    now = int(time.time())

    def stripe(at: int) -> dict:
        digest = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
        return {"Stripe-Signature": f"t={at},v1={digest}"}

    first = post_hook(client, hook, body, stripe(now))
    retried = post_hook(client, hook, body, stripe(now + 60))  # Stripe retries with a new signature
    assert first.status_code == 202 and retried.status_code == 200
    assert retried.json["executionId"] == first.json["executionId"]
    assert post_hook(client, hook, body, stripe(now - 400)).status_code == 401
    assert len(runs_of(db, flow["id"])) == 1


def test_slack_preset_end_to_end_answers_the_url_check_and_dedups_by_event_id(api, org, db, client):
    flow = api.flow(org)
    secret = "8f742231b10e8888abcd99yyyzzz85a5"
    hook = webhook(api, org, flow, verification="slack", secret=secret)

    def slack(body: bytes, at: int) -> dict:
        digest = hmac.new(secret.encode(), f"v0:{at}:".encode() + body, hashlib.sha256).hexdigest()
        return {"X-Slack-Signature": f"v0={digest}", "X-Slack-Request-Timestamp": str(at)}

    now = int(time.time())
    check = b'{"type": "url_verification", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}'
    answer = post_hook(client, hook, check, slack(check, now))
    assert answer.status_code == 200
    assert answer.json == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
    event = b'{"type": "event_callback", "event_id": "Ev123", "event": {"type": "app_mention"}}'
    first = post_hook(client, hook, event, slack(event, now))
    retry = post_hook(client, hook, event, {**slack(event, now + 3), "X-Slack-Retry-Num": "1"})
    assert first.status_code == 202 and retry.status_code == 200
    assert retry.json["executionId"] == first.json["executionId"]
    assert len(runs_of(db, flow["id"])) == 1


def test_the_trigger_tables_are_tenant_isolated(api, org, db, app_db, client):
    flow = api.flow(org)
    hook = webhook(api, org, flow)
    body = b'{"n": 1}'
    post_hook(client, hook, body, signed(hook["secret"], body))
    with db.pool.connection() as conn:
        rows = conn.execute("select relname, relrowsecurity, relforcerowsecurity from pg_class "
                            "where relname in ('flow_triggers', 'flow_trigger_deliveries')").fetchall()
    assert len(rows) == 2 and all(r["relrowsecurity"] and r["relforcerowsecurity"] for r in rows)
    from tolstoy.db.queries import Query

    def unscoped(sql: str) -> Query:
        return Query(name="test.unscoped", kind="all", sql=sql, doc="", source="test")

    other = api.org("Other")
    with app_db.tenant(other["id"]):
        assert app_db.all(unscoped("select id from flow_triggers")) == []
        assert app_db.all(unscoped("select id from flow_trigger_deliveries")) == []
    with app_db.tenant(org["id"]):
        assert len(app_db.all(unscoped("select id from flow_trigger_deliveries"))) == 1
    # The schedule claim is the workers' alone.
    with pytest.raises(Exception, match="permission denied"):
        app_db.all(unscoped("select * from tolstoy_claim_schedules('w', 1, null)"))
