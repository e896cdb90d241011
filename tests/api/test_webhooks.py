"""Outbound event webhooks through the API: CRUD with validation and tenancy,
secrets and header values encrypted and masked, toggling, the event types, and
the outbox rows written in the same transaction as the change they describe."""

from __future__ import annotations

import psycopg
import pytest

from tolstoy.engine import WEBHOOK_EVENT_TYPES

HOOK = {"name": "Ops", "url": "https://hooks.example.com/tolstoy", "eventTypes": ["flow.completed", "flow.failed"]}


def create(api, org, **fields) -> dict:
    return api.create("/webhooks", org, {**HOOK, **fields})


def get(api, org, hook_id: str):
    return api.client.simulate_get(f"/webhooks/{hook_id}", headers=api.headers(org))


def errors_of(result) -> set[str]:
    return {e["field"] for e in result.json.get("errors", [])}


def test_create_read_list_update_delete(api, org, db):
    created = create(api, org, headers={"Authorization": "Bearer sekrit-token"})
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 30  # generated, shown once
    assert created["headers"] == {"Authorization": "********"} and created["enabled"] is True
    assert created["orgId"] == org["id"] and created["disabledReason"] is None
    read = get(api, org, created["id"])
    assert read.status_code == 200 and read.headers["etag"]
    assert read.json["secret"] == "********" and read.json["headers"] == {"Authorization": "********"}
    assert read.json["eventTypes"] == ["flow.completed", "flow.failed"]
    with db.pool.connection() as conn:  # stored encrypted, never in clear
        stored = conn.execute("select secret, headers from webhooks where id = %s", (created["id"],)).fetchone()
    assert created["secret"].encode() not in bytes(stored["secret"])
    assert b"sekrit-token" not in bytes(stored["headers"])

    second = create(api, org, name="Second")
    listed = api.client.simulate_get("/webhooks", params={"limit": "1"}, headers=api.headers(org))
    assert listed.status_code == 200 and [h["id"] for h in listed.json] == [second["id"]]
    assert listed.headers.get("x-next-cursor")

    # GET, modify, PUT back: masked values sent back keep the stored ones.
    body = {**read.json, "name": "Renamed", "headers": {"Authorization": "********", "X-Team": "ops"}}
    put = api.client.simulate_put(f"/webhooks/{created['id']}", json=body, headers=api.headers(org))
    assert put.status_code == 200, put.text
    assert put.json["name"] == "Renamed" and put.json["headers"] == {"Authorization": "********", "X-Team": "********"}
    with db.pool.connection() as conn:
        after = conn.execute("select secret, headers from webhooks where id = %s", (created["id"],)).fetchone()
    assert bytes(after["secret"]) == bytes(stored["secret"])  # the masked secret sent back changed nothing

    stale = api.client.simulate_patch(f"/webhooks/{created['id']}", json={"name": "x"},
                                      headers={**api.headers(org), "If-Match": read.headers["etag"]})
    assert stale.status_code == 412
    patched = api.client.simulate_patch(f"/webhooks/{created['id']}", json={"eventTypes": ["step.failed"]},
                                        headers=api.headers(org))
    assert patched.status_code == 200 and patched.json["eventTypes"] == ["step.failed"]
    assert patched.json["name"] == "Renamed"

    deleted = api.client.simulate_delete(f"/webhooks/{created['id']}", headers=api.headers(org))
    assert deleted.status_code == 204
    assert get(api, org, created["id"]).status_code == 404


def test_an_organization_deleted_takes_its_webhooks_and_deliveries_with_it(api, org, db):
    hook = create(api, org)
    assert api.client.simulate_post(f"/webhooks/{hook['id']}/test", headers=api.headers(org)).status_code == 202
    assert api.client.simulate_delete(f"/organizations/{org['id']}").status_code == 204
    with db.pool.connection() as conn:
        left = conn.execute("select (select count(*) from webhooks) + (select count(*) from webhook_deliveries) as n")
        assert left.fetchone()["n"] == 0


def test_a_secret_given_is_kept_and_never_shown_again(api, org):
    created = create(api, org, secret="my-own-secret-of-24-chars")
    assert created["secret"] == "my-own-secret-of-24-chars"
    assert get(api, org, created["id"]).json["secret"] == "********"


@pytest.mark.parametrize(("body", "field"), [
    ({**HOOK, "eventTypes": ["flow.completed", "flow.exploded"]}, "eventTypes"),
    ({**HOOK, "eventTypes": []}, "eventTypes"),
    ({**HOOK, "eventTypes": "flow.completed"}, "eventTypes"),
    ({**HOOK, "url": "ftp://example.com/x"}, "url"),
    ({**HOOK, "url": "not a url"}, "url"),
    ({**HOOK, "url": "http://169.254.169.254/latest/meta-data"}, "url"),
    ({**HOOK, "url": "http://10.0.0.7/hook"}, "url"),
    ({**HOOK, "url": "http://0x0a000001/hook"}, "url"),
    ({**HOOK, "url": "http://user:pw@hooks.example.com/x"}, "url"),
    ({**HOOK, "name": ""}, "name"),
    ({"url": HOOK["url"], "eventTypes": ["flow.started"]}, "name"),
    ({**HOOK, "secret": "short"}, "secret"),
    ({**HOOK, "headers": {"X-Webhook-Signature": "forged"}}, "headers"),
    ({**HOOK, "headers": {"Bad Name": "x"}}, "headers"),
    ({**HOOK, "headers": {"X-Ok": "line\r\nInjected: 1"}}, "headers"),
    ({**HOOK, "enabled": "yes"}, "enabled"),
    ({**HOOK, "color": "blue"}, "color"),
])
def test_bad_input_is_a_400_naming_the_field(api, org, body, field):
    result = api.post("/webhooks", org, body)
    assert result.status_code == 400, result.text
    assert field in errors_of(result), result.json


def test_a_loopback_target_is_accepted_only_where_allowed(api, org):
    # The tests allow 127.0.0.1/32 (TOLSTOY_ALLOW_NETWORKS), as a deployment with a local receiver would.
    assert create(api, org, url="http://127.0.0.1:9/hook")["url"] == "http://127.0.0.1:9/hook"
    assert api.post("/webhooks", org, {**HOOK, "url": "http://[::1]:9/hook"}).status_code == 400


def test_another_organizations_webhook_is_a_404(api, org):
    mine = create(api, org)
    other = api.org("Other")
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        result = api.client.simulate_request(method, f"/webhooks/{mine['id']}", json={"name": "x"},
                                             headers=api.headers(other))
        assert result.status_code == 404, (method, result.text)
    for path, method in (("toggle", "PATCH"), ("test", "POST"), ("deliveries", "GET")):
        result = api.client.simulate_request(method, f"/webhooks/{mine['id']}/{path}", headers=api.headers(other))
        assert result.status_code == 404, (path, result.text)
    assert api.client.simulate_get("/webhooks", headers=api.headers(other)).json == []
    assert api.client.simulate_get("/webhooks/not-a-uuid", headers=api.headers(org)).status_code == 404


def test_toggle_and_event_types(api, org):
    hook = create(api, org)
    queued = api.client.simulate_post(f"/webhooks/{hook['id']}/test", headers=api.headers(org))
    assert queued.status_code == 202 and queued.json["state"] == "pending"  # no worker runs here
    off = api.client.simulate_patch(f"/webhooks/{hook['id']}/toggle", headers=api.headers(org))
    assert off.status_code == 200 and off.json["enabled"] is False
    [delivery] = api.client.simulate_get(f"/webhooks/{hook['id']}/deliveries", headers=api.headers(org)).json
    assert delivery["id"] == queued.json["deliveryId"] and delivery["state"] == "cancelled"  # not sent once off
    assert api.client.simulate_post(f"/webhooks/{hook['id']}/test", headers=api.headers(org)).status_code == 409
    on = api.client.simulate_patch(f"/webhooks/{hook['id']}/toggle", headers=api.headers(org))
    assert on.status_code == 200 and on.json["enabled"] is True
    types = api.client.simulate_get("/webhooks/event-types", headers=api.headers(org))
    assert types.status_code == 200 and types.json == list(WEBHOOK_EVENT_TYPES)
    assert "webhook.test" in types.json and "step.outcome_unknown" in types.json


def test_the_outbox_row_exists_if_and_only_if_the_change_committed(api, org, user, db):
    """A run's state changes write their events in the same statement: a change rolled back
    leaves no event, and a committed change always has one (only for subscribed webhooks)."""
    flow = api.flow(org)
    subscribed = create(api, org, eventTypes=["flow.cancelled", "flow.started"])
    create(api, org, name="Not subscribed", eventTypes=["step.failed"])
    off = create(api, org, name="Disabled", eventTypes=["flow.cancelled"], enabled=False)
    queued = api.client.simulate_post(f"/flows/{flow['id']}/execute", json={"variables": {}},
                                      headers=api.headers(org, user))
    run_id = queued.json["executionId"]

    def events() -> list[tuple[str, str]]:
        with db.pool.connection() as conn:
            return [(r["webhook_id"], r["event_type"]) for r in conn.execute(
                "select webhook_id::text, event_type from webhook_deliveries order by seq").fetchall()]

    # The change aborted: neither the cancel nor its event.
    with db.pool.connection() as conn:
        with conn.transaction():
            conn.execute("select set_config('app.org_id', %s, true)", (org["id"],))
            conn.execute("update flow_runs set status = 'cancelled', finished_at = now() where id = %s", (run_id,))
            assert events() == []  # another connection sees nothing before the commit
            assert conn.execute("select count(*) as n from webhook_deliveries").fetchone()["n"] == 1
            raise psycopg.Rollback()
    assert events() == []
    with db.pool.connection() as conn:
        assert conn.execute("select status::text from flow_runs where id = %s", (run_id,)).fetchone()["status"] \
            == "queued"

    # The change committed (through the API): its event, for the subscribed enabled webhook only.
    cancel = api.client.simulate_post(f"/flows/{flow['id']}/executions/{run_id}/cancel",
                                      headers=api.headers(org, user))
    assert cancel.status_code in (200, 202), cancel.text
    assert events() == [(subscribed["id"], "flow.cancelled")]
    assert off["id"] not in {w for w, _ in events()}
    deliveries = api.client.simulate_get(f"/webhooks/{subscribed['id']}/deliveries", headers=api.headers(org))
    assert deliveries.status_code == 200
    [delivery] = deliveries.json
    assert delivery["eventType"] == "flow.cancelled" and delivery["state"] == "pending"
    assert delivery["attempts"] == 0 and delivery["attemptLog"] == []


def test_an_aborted_checkpoint_writes_neither_the_step_nor_its_event(api, org, user, db, worker_db):
    """tolstoy_checkpoint refused (lost lease) or rolled back: no step row, no event."""
    flow = api.flow(org)
    create(api, org, eventTypes=["step.started", "step.completed", "flow.started"])
    api.client.simulate_post(f"/flows/{flow['id']}/execute", json={"variables": {}}, headers=api.headers(org, user))
    with worker_db.pool.connection() as conn:
        answer = conn.execute("select tolstoy_claim_runs('w1', 1, 30, 3) as a").fetchone()["a"]
    [run] = answer["runs"]
    writes = ('{"steps": [{"step_id": "hello", "status": "completed", "outputs": {"hi": 1}}], '
              '"run": {"action": "continue"}}')
    with worker_db.pool.connection() as conn:
        with conn.transaction():
            conn.execute("select tolstoy_checkpoint('w1', %s, %s, %s, %s::jsonb)",
                         (run["org_id"], run["id"], run["token"], writes))
            raise psycopg.Rollback()
        with pytest.raises(Exception, match="lease"):  # a wrong token: refused, nothing written
            conn.execute("select tolstoy_checkpoint('w1', %s, %s, %s, %s::jsonb)",
                         (run["org_id"], run["id"], run["token"] + 1, writes))
    with db.pool.connection() as conn:
        types = [r["event_type"] for r in conn.execute(
            "select event_type from webhook_deliveries order by seq").fetchall()]
        steps = conn.execute("select count(*) as n from flow_run_steps where run_id = %s", (run["id"],)).fetchone()
    assert types == ["flow.started"] and steps["n"] == 0
    with worker_db.pool.connection() as conn:  # the same checkpoint, committed: the step and both its events
        conn.execute("select tolstoy_checkpoint('w1', %s, %s, %s, %s::jsonb)",
                     (run["org_id"], run["id"], run["token"], writes))
    with db.pool.connection() as conn:
        types = [r["event_type"] for r in conn.execute(
            "select event_type from webhook_deliveries order by seq").fetchall()]
    assert types == ["flow.started", "step.started", "step.completed"]


def test_only_the_workers_role_claims_and_records_deliveries(app_db, worker_db):
    with app_db.pool.connection() as conn:
        for call in ("tolstoy_claim_deliveries('api', 10, 30)",
                     "tolstoy_record_delivery('api', gen_random_uuid(), gen_random_uuid(), 1, '{}')",
                     "tolstoy_prune_deliveries(1, 10)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"select {call}")
            conn.rollback()
    with worker_db.pool.connection() as conn:
        assert conn.execute("select tolstoy_claim_deliveries('w', 10, 30) as a").fetchone()["a"]["deliveries"] == []
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("select tolstoy_claim_deliveries('', 10, 30)")


def test_a_direct_action_call_writes_its_event_with_its_log(api, org, user, server):
    server.expect_request("/things/1").respond_with_json({"ok": True})
    server.expect_request("/things/2").respond_with_json({"no": True}, status=404)
    tool = api.tool(org, baseUrl=server.url_for("/"))
    action = api.action(org, tool, inputSchema=[{"name": "id", "type": "number", "required": True}])
    hook = create(api, org, eventTypes=["action.executed", "action.failed"])
    results = [api.client.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {"id": n}},
                                        headers=api.headers(org, user)).json for n in (1, 2)]
    assert [r["success"] for r in results] == [True, False]
    deliveries = api.client.simulate_get(f"/webhooks/{hook['id']}/deliveries", headers=api.headers(org)).json
    events = {d["eventType"]: d for d in deliveries}
    assert set(events) == {"action.executed", "action.failed"}
    assert events["action.executed"]["data"] == {
        "executionId": results[0]["executionId"], "actionId": action["id"], "actionKey": action["key"],
        "toolId": tool["id"], "success": True, "statusCode": 200, "durationMs": results[0]["durationMs"],
        "error": None}
    assert events["action.failed"]["data"]["statusCode"] == 404
    assert events["action.failed"]["data"]["error"]["name"] == "UpstreamError"
    logs = api.client.simulate_get("/execution-logs", params={"executionId": results[0]["executionId"]},
                                   headers=api.headers(org)).json
    assert len(logs) == 1 and logs[0]["status"] == "completed"  # the log row, written with its event


def test_a_webhook_moved_to_another_origin_takes_no_stored_header_value_along(api, org):
    """Stored header values are credentials bound to their origin, like a tool's (issue 19, row 8)."""
    hook = create(api, org, url="https://hooks.example.com/in", headers={"Authorization": "Bearer sekrit-token"})
    path, headers = f"/webhooks/{hook['id']}", api.headers(org)
    for body in ({"url": "https://attacker.example/in"},
                 {"url": "https://hooks.example.com:8443/in"},
                 {"url": "http://hooks.example.com/in"},
                 {"url": "https://attacker.example/in", "headers": {"Authorization": "********"}}):
        result = api.client.simulate_patch(path, json=body, headers=headers)
        assert result.status_code == 409, result.text
        assert result.json["message"].startswith("url:") and "Authorization" in result.json["message"], result.text
    assert get(api, org, hook["id"]).json["url"] == "https://hooks.example.com/in"
    # The same origin keeps them; another one with the values sent again, or without headers, is a move.
    same = api.client.simulate_patch(path, json={"url": "https://HOOKS.example.com/v2"}, headers=headers)
    assert same.status_code == 200 and same.json["headers"] == {"Authorization": "********"}, same.text
    moved = api.client.simulate_patch(path, headers=headers, json={
        "url": "https://receiver.example/in", "headers": {"Authorization": "Bearer new-token"}})
    assert moved.status_code == 200 and moved.json["url"] == "https://receiver.example/in", moved.text
    dropped = api.client.simulate_patch(path, json={"url": "https://third.example/in", "headers": None},
                                        headers=headers)
    assert dropped.status_code == 200 and dropped.json["headers"] == {}, dropped.text
