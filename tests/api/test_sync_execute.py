"""POST /actions/{id}/execute is bounded: an end-to-end time limit per call (the action's
timeoutMs within the server's maximum), and a per-organization limit on calls running at
once across every API process (429 with Retry-After beyond it)."""

from __future__ import annotations

import threading
import time

from falcon import testing
from support import trickle
from werkzeug import Response

from tolstoy.api.app import create_app
from tolstoy.config import Config


def client_with(worker_env, app_db, **settings) -> testing.TestClient:
    config = Config.from_env({**worker_env, **settings})
    return testing.TestClient(create_app(config, app_db))


def setup(api, client, server, org_name="Sync", **action_fields):
    org = api.org(org_name)
    user = api.user(org)
    tool = api.tool(org, baseUrl=server.url_for("/"), authType="none")
    action = api.action(org, tool, method="GET", endpoint="/slow", **action_fields)
    headers = api.headers(org, user)
    return org, action, lambda: client.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                                    headers=headers)


def test_a_call_ends_at_the_actions_time_limit_even_if_the_tool_trickles(api, worker_env, app_db, server):
    server.expect_request("/slow").respond_with_handler(trickle(40, 0.1))
    client = client_with(worker_env, app_db)
    _, action, execute = setup(api, client, server, timeoutMs=500)
    assert action["timeoutMs"] == 500
    started = time.monotonic()
    result = execute()
    assert result.status_code == 200 and result.json["success"] is False, result.text
    assert time.monotonic() - started < 2.5  # the tool would have taken 4 s
    assert "500 ms" in result.json["data"]["error"]


def test_the_server_maximum_caps_an_actions_time_limit(api, worker_env, app_db, server):
    server.expect_request("/slow").respond_with_handler(
        lambda request: (time.sleep(2), Response("{}", content_type="application/json"))[1])
    client = client_with(worker_env, app_db, TOLSTOY_SYNC_EXECUTE_MAX_TIMEOUT_MS="400")
    _, _, execute = setup(api, client, server, timeoutMs=60000)
    started = time.monotonic()
    assert execute().json["success"] is False
    assert time.monotonic() - started < 1.5


def test_bad_time_limits_are_refused_at_save(api, org, server):
    tool = api.tool(org, baseUrl=server.url_for("/"), authType="none")
    for value in (0, 50, 120001, "1000", 1.5):
        result = api.post("/actions", org, {"toolId": tool["id"], "name": "A", "key": f"a{value}", "method": "GET",
                                            "endpoint": "/x", "timeoutMs": value})
        assert result.status_code == 400 and "timeoutMs" in result.text, (value, result.text)


def test_one_organization_cannot_hold_every_worker(api, worker_env, app_db, server, db):
    release = threading.Event()
    entered = threading.Event()

    def slow(request):
        entered.set()
        release.wait(10)
        return Response('{"ok": true}', content_type="application/json")

    server.expect_request("/slow").respond_with_handler(slow)
    client = client_with(worker_env, app_db, TOLSTOY_SYNC_EXECUTE_PER_ORG="1")
    org, _, execute = setup(api, client, server)
    _, _, other_org_execute = setup(api, client, server, org_name="Other")
    first: dict = {}
    holder = threading.Thread(target=lambda: first.update(result=execute()))
    holder.start()
    try:
        assert entered.wait(10)
        busy = execute()
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert "flow" in busy.json["message"] and busy.json["statusCode"] == 429
        # Another organization is not affected.
        other = threading.Thread(target=other_org_execute)
        other.start()
    finally:
        release.set()
        holder.join(10)
    other.join(10)
    assert first["result"].json["success"] is True
    assert execute().json["success"] is True  # the slot came back
    # A slot whose process died comes back when its time is up.
    with db.pool.connection() as conn:
        conn.execute("update sync_execute_slots set holder = gen_random_uuid(), expires_at = now() + interval '1 hour' "
                     "where org_id = %s", (org["id"],))
        assert execute().status_code == 429
        conn.execute("update sync_execute_slots set expires_at = now() - interval '1 second' where org_id = %s",
                     (org["id"],))
    assert execute().json["success"] is True
