"""Credentials bound to an origin (issue 19, row 8): a key with the write scope re-pointed a
tool's ``baseUrl`` at a host it controlled, and the next call carried the stored credential
there. A credential (and a user's connection) is now bound to the origin (scheme, host, port)
of the tool's base URL when it was stored: moving the tool to another origin is a 409 naming
``baseUrl`` unless the body says ``"dropCredentials": true``, which deletes credentials,
their OAuth2 tokens, users' connections and logins in progress in the same transaction; and
the engine sends a credential to no other origin, however the tool moved or the URL was
built. Two local servers are the two origins: the second records whatever reaches it."""

from __future__ import annotations

import hashlib
import json

import pytest
from contract import assert_error
from pytest_httpserver import HTTPServer
from werkzeug import Response

SECRET = "bearer-SECRET-0123456789"


def who(authorization) -> dict:
    """What the tools here answer: a fingerprint of the Authorization they received, so a test can
    tell which credential arrived (the answer itself is redacted of the credential's values)."""
    return {"who": hashlib.sha256(str(authorization).encode()).hexdigest()[:16]}


@pytest.fixture
def elsewhere():
    """Another origin (another port on 127.0.0.1) that answers anything and records it."""
    other = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    other.expect_request("/who").respond_with_handler(
        lambda request: Response(json.dumps(who(request.headers.get("Authorization"))),
                                 content_type="application/json"))
    other.start()
    yield other
    other.clear()
    other.stop()


@pytest.fixture
def tool(api, org, server):
    """A bearer tool on ``server`` with its credential and one action."""
    server.expect_request("/who").respond_with_handler(
        lambda request: Response(json.dumps(who(request.headers.get("Authorization"))),
                                 content_type="application/json"))
    made = api.tool(org, baseUrl=server.url_for("/"), authType="bearer")
    api.create(f"/tools/{made['id']}/auth", org, {"type": "bearer", "config": {"token": SECRET}})
    api.action(org, made, key="who", method="GET", endpoint="/who")
    return made


def base_of(server) -> str:
    return server.url_for("/").rstrip("/")


def counts(db, org, tool) -> dict:
    """The rows bound to the tool's origin, by table."""
    with db.pool.connection() as conn, conn.transaction():
        conn.execute("select set_config('app.org_id', %s, true)", (org["id"],))
        return {table: conn.execute(f"select count(*) as n from {table} where tool_id = %s",  # noqa: S608
                                    (tool["id"],)).fetchone()["n"]
                for table in ("tool_credentials", "user_connections", "oauth_states")} | {
            "oauth_tokens": conn.execute(
                "select count(*) as n from oauth_tokens o join tool_credentials c on c.org_id = o.org_id "
                "and c.id = o.credential_id where c.tool_id = %s", (tool["id"],)).fetchone()["n"]}


def as_owner(db, org, sql: str, *params) -> None:
    """A change made past the API (another path than PUT/PATCH /tools/{id})."""
    with db.pool.connection() as conn, conn.transaction():
        conn.execute("select set_config('app.org_id', %s, true)", (org["id"],))
        conn.execute(sql, params)


def execute(api, org, user, key="who"):
    result = api.client.simulate_post(f"/actions/{key}/execute", json={"inputs": {}}, headers=api.headers(org, user))
    assert result.status_code == 200, result.text
    return result.json


@pytest.mark.parametrize("method", ["simulate_patch", "simulate_put"])
def test_moving_a_tool_with_a_credential_to_another_origin_is_a_409_naming_base_url(api, org, user, tool, server,
                                                                                   elsewhere, db, method):
    headers = api.headers(org)
    port = server.port
    others = [elsewhere.url_for("/"), f"https://127.0.0.1:{port}/", f"http://localhost:{port}/",
              f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}/"]
    for target in others:
        result = getattr(api.client, method)(f"/tools/{tool['id']}", json={"baseUrl": target}, headers=headers)
        body = assert_error(result, 409)
        assert body["message"].startswith("baseUrl:") and "dropCredentials" in body["message"], body
        assert SECRET not in result.text
    assert api.client.simulate_get(f"/tools/{tool['id']}", headers=headers).json["baseUrl"] == tool["baseUrl"]
    assert counts(db, org, tool)["tool_credentials"] == 1
    assert execute(api, org, user)["data"] == who(f"Bearer {SECRET}")
    assert elsewhere.log == []


def test_a_new_path_on_the_same_origin_needs_no_flag(api, org, user, tool, server):
    headers = api.headers(org)
    for same in (server.url_for("/v2"), server.url_for("/").upper().replace("HTTP://", "http://"),
                 f"http://127.0.0.1:{server.port}/"):
        result = api.client.simulate_patch(f"/tools/{tool['id']}", json={"baseUrl": same}, headers=headers)
        assert result.status_code == 200, result.text
    assert execute(api, org, user)["data"] == who(f"Bearer {SECRET}")


def test_a_tool_without_credentials_moves_freely(api, org, elsewhere):
    bare = api.tool(org, baseUrl="https://api.example.com")
    result = api.client.simulate_patch(f"/tools/{bare['id']}", json={"baseUrl": elsewhere.url_for("/")},
                                       headers=api.headers(org))
    assert result.status_code == 200 and result.json["baseUrl"] == elsewhere.url_for("/"), result.text


def bind_everything(api, org, user, tool, server, db) -> None:
    """Give the tool an OAuth2 access token, a user's connection and a login in progress too."""
    server.expect_request("/token", method="POST").respond_with_json({"access_token": "org-token", "expires_in": 600})
    api.create(f"/tools/{tool['id']}/auth", org, {"name": "oauth", "type": "oauth2", "isDefault": True, "config": {
        "clientId": "c", "clientSecret": "client-secret-1", "tokenUrl": server.url_for("/token")}})
    assert execute(api, org, user)["data"] == who("Bearer org-token")  # an oauth_tokens row now
    as_owner(db, org, "insert into user_connections (org_id, user_id, tool_id, tokens) values (%s, %s, %s, %s)",
             org["id"], user["id"], tool["id"], b"sealed-user-tokens")
    as_owner(db, org, "insert into oauth_states (org_id, nonce, user_id, tool_id, redirect_uri) "
                      "values (%s, %s, %s, %s, 'https://tolstoy.example.com/auth/x/callback')",
             org["id"], "n" * 32, user["id"], tool["id"])
    assert counts(db, org, tool) == {"tool_credentials": 2, "oauth_tokens": 1, "user_connections": 1,
                                     "oauth_states": 1}


def test_drop_credentials_deletes_credentials_tokens_and_connections_with_the_move(api, org, user, tool, server,
                                                                                  elsewhere, db):
    bind_everything(api, org, user, tool, server, db)
    headers = api.headers(org)
    etag = api.client.simulate_get(f"/tools/{tool['id']}", headers=headers).headers["etag"]
    moved = api.client.simulate_patch(f"/tools/{tool['id']}", headers={**headers, "If-Match": etag},
                                      json={"baseUrl": elsewhere.url_for("/"), "dropCredentials": True})
    assert moved.status_code == 200, moved.text
    assert moved.json["baseUrl"] == elsewhere.url_for("/") and "dropCredentials" not in moved.json
    assert counts(db, org, tool) == {"tool_credentials": 0, "oauth_tokens": 0, "user_connections": 0,
                                     "oauth_states": 0}
    # Nothing left to send: the call goes out without a credential's header, and says why.
    call = execute(api, org, user)
    assert call["success"] is False and "has no credential" in call["data"]["error"], call
    assert elsewhere.log == []
    # A credential stored now is bound to the new origin and reaches it.
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "bearer", "config": {"token": "new-origin-token"}})
    assert execute(api, org, user)["data"] == who("Bearer new-origin-token")


@pytest.mark.parametrize("failure", ["duplicate name", "stale If-Match", "bad field"])
def test_a_move_that_fails_deletes_nothing(api, org, user, tool, server, elsewhere, db, failure):
    bind_everything(api, org, user, tool, server, db)
    api.tool(org, name="Taken")
    body = {"baseUrl": elsewhere.url_for("/"), "dropCredentials": True}
    headers = api.headers(org)
    if failure == "duplicate name":
        body["name"] = "Taken"  # the tool's row fails after the deletes ran: one transaction undoes all
    elif failure == "stale If-Match":
        headers["If-Match"] = '"stale"'
    else:
        body["authType"] = "kerberos"
    result = api.client.simulate_patch(f"/tools/{tool['id']}", json=body, headers=headers)
    assert result.status_code == {"duplicate name": 409, "stale If-Match": 412, "bad field": 400}[failure], result.text
    assert counts(db, org, tool) == {"tool_credentials": 2, "oauth_tokens": 1, "user_connections": 1,
                                     "oauth_states": 1}
    assert api.client.simulate_get(f"/tools/{tool['id']}", headers=headers).json["baseUrl"] == tool["baseUrl"]


def test_drop_credentials_is_a_write_only_boolean(api, org, tool):
    headers = api.headers(org)
    for value in ("yes", 1, None):
        result = api.client.simulate_patch(f"/tools/{tool['id']}", json={"dropCredentials": value}, headers=headers)
        assert_error(result, 400, "dropCredentials")
    same = api.client.simulate_patch(f"/tools/{tool['id']}", json={"dropCredentials": True}, headers=headers)
    assert same.status_code == 200 and "dropCredentials" not in same.json  # no move: nothing dropped
    assert api.client.simulate_get(f"/tools/{tool['id']}/auth", headers=headers).json != []
    spec = api.client.simulate_get("/openapi.json").json
    documented = spec["components"]["schemas"]["Tool"]["properties"]["dropCredentials"]
    assert documented["type"] == "boolean" and documented["writeOnly"] is True and "409" in documented["description"]


def test_a_credential_is_never_sent_to_another_origin_however_the_tool_moved(api, org, user, tool, elsewhere, db):
    """Defense in depth: the tool moved past the API (a migration, a DBA, a future route)."""
    as_owner(db, org, "update tools set base_url = %s where id = %s", elsewhere.url_for("/"), tool["id"])
    call = execute(api, org, user)
    assert call["success"] is False, call
    assert "was stored for" in call["data"]["error"] and "not sent" in call["data"]["error"], call
    assert SECRET not in str(call)
    assert elsewhere.log == []


def test_a_users_connection_is_not_sent_to_another_origin(api, org, user, server, elsewhere, db):
    """The credential stored again after the tool moved is bound to the new origin; the user's
    tokens, connected while the tool was at the old one, are not sent there."""
    server.expect_request("/who").respond_with_json({"ok": True})
    per_user = api.tool(org, key="gh", baseUrl=server.url_for("/"), authType="oauth2")
    config = {"clientId": "c", "clientSecret": "s", "tokenUrl": server.url_for("/token"),
              "authorizeUrl": server.url_for("/authorize"), "perUser": True}
    api.create(f"/tools/{per_user['id']}/auth", org, {"type": "oauth2", "config": config})
    api.action(org, per_user, key="gh.who", method="GET", endpoint="/who")
    as_owner(db, org, "insert into user_connections (org_id, user_id, tool_id, tokens) values (%s, %s, %s, %s)",
             org["id"], user["id"], per_user["id"], b"sealed-user-tokens")
    as_owner(db, org, "update tools set base_url = %s where id = %s", elsewhere.url_for("/"), per_user["id"])
    api.create(f"/tools/{per_user['id']}/auth", org, {"type": "oauth2", "config": config})  # bound to elsewhere

    call = execute(api, org, user, key="gh.who")
    assert call["success"] is False, call
    assert "must connect the tool again" in call["data"]["error"], call
    assert elsewhere.log == []


def test_an_http_request_step_carries_no_stored_credential(api, org, user, tool, server, worker):
    """An http_request step names a URL, not a tool: even at the tool's own origin it carries nothing
    the organization stored."""
    import time

    flow = api.flow(org, [{"id": "raw", "type": "http_request", "config": {"method": "GET",
                                                                           "url": server.url_for("/who")}}])
    run_id = api.post(f"/flows/{flow['id']}/execute", org, {"variables": {}}, user).json["executionId"]
    deadline = time.monotonic() + 20
    while True:
        run = api.client.simulate_get(f"/flows/{flow['id']}/executions/{run_id}", headers=api.headers(org)).json
        if run["status"] in ("completed", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert run["status"] == "completed", run
    assert run["outputs"]["raw"]["body"] == who(None)
