"""OAuth2 tokens shared through the database: a refresh token the provider rotates is kept
(the old one is never sent again), and processes that need a token at the same moment
cause one refresh, not one each. Each app below has its own in-process token cache, as two
Gunicorn workers do."""

from __future__ import annotations

import threading
import time
import urllib.parse

import pytest
from falcon import testing
from werkzeug import Response

from tolstoy.api.app import create_app
from tolstoy.config import Config


def echo_auth(server, path: str = "/me") -> list[str]:
    """A tool endpoint that echoes its Authorization header (the answer masks it: one exit for
    outputs); returns the list of what it received, the token as it went on the wire."""
    seen: list[str] = []

    def handle(request):
        seen.append(request.headers.get("Authorization"))
        return Response(f'{{"auth": "{request.headers.get("Authorization")}"}}', content_type="application/json")

    server.expect_request(path).respond_with_handler(handle)
    return seen


@pytest.fixture
def provider(server):
    """A token endpoint with reuse detection: each refresh token works once and is rotated."""
    state = {"valid": {"refresh-1"}, "seen": [], "issued": 0, "lock": threading.Lock()}

    def token(request):
        form = dict(urllib.parse.parse_qsl(request.get_data(as_text=True)))
        time.sleep(0.3)  # slow enough for concurrent requests to overlap
        with state["lock"]:
            state["seen"].append(form.get("refresh_token"))
            if form.get("refresh_token") not in state["valid"]:
                state["valid"].clear()  # reuse detected: the whole grant is revoked
                return Response('{"error": "invalid_grant"}', status=400, content_type="application/json")
            state["valid"].discard(form["refresh_token"])
            state["issued"] += 1
            n = state["issued"]
            state["valid"].add(f"refresh-{n + 1}")
        return Response(f'{{"access_token": "access-{n}", "refresh_token": "refresh-{n + 1}", "expires_in": 3600}}',
                        content_type="application/json")

    server.expect_request("/token", method="POST").respond_with_handler(token)
    state["auth"] = echo_auth(server)
    return server, state


def test_a_rotated_refresh_token_is_kept_and_processes_share_one_refresh(api, org, user, worker_env, app_db, db,
                                                                          provider):
    config = Config.from_env({**worker_env, "TOLSTOY_SYNC_EXECUTE_PER_ORG": "5"})
    server, state = provider
    tool = api.tool(org, baseUrl=server.url_for("/"), authType="oauth2")
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "oauth2", "config": {
        "clientId": "c", "clientSecret": "client-secret-1", "tokenUrl": server.url_for("/token"),
        "refreshToken": "refresh-1"}})
    action = api.action(org, tool, key="me", method="GET", endpoint="/me")
    workers = [testing.TestClient(create_app(config, app_db)) for _ in range(3)]

    def execute(client):
        result = client.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                      headers=api.headers(org, user))
        assert result.status_code == 200, result.text
        return result.json

    answers: list = []
    threads = [threading.Thread(target=lambda c=c: answers.append(execute(c))) for c in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    # Three processes at once: one refresh, the same token everywhere.
    assert state["seen"] == ["refresh-1"]
    assert state["auth"] == ["Bearer access-1"] * 3
    assert [a["data"]["auth"] for a in answers] == ["Bearer ***"] * 3  # echoed, masked

    with db.pool.connection() as conn:  # the token runs out
        conn.execute("update oauth_tokens set expires_at = now() - interval '1 minute'")
    with db.pool.connection() as conn:
        stored = conn.execute("select access_token from oauth_tokens").fetchone()
    assert b"access-1" not in bytes(stored["access_token"])  # encrypted at rest
    # A fresh process (empty cache) refreshes with the rotated token, never the spent one.
    fresh = testing.TestClient(create_app(config, app_db))
    assert execute(fresh)["data"]["auth"] == "Bearer ***" and state["auth"][-1] == "Bearer access-2"
    assert state["seen"] == ["refresh-1", "refresh-2"] and state["valid"] == {"refresh-3"}


def test_a_token_that_lives_less_than_the_refresh_margin_still_works(api, org, user, worker_env, app_db, server):
    server.expect_request("/token", method="POST").respond_with_json(
        {"access_token": "short-lived", "expires_in": 10})
    seen = echo_auth(server)
    tool = api.tool(org, baseUrl=server.url_for("/"), authType="oauth2")
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "oauth2", "config": {
        "clientId": "c", "clientSecret": "client-secret-1", "tokenUrl": server.url_for("/token")}})
    action = api.action(org, tool, key="me", method="GET", endpoint="/me")
    client = testing.TestClient(create_app(Config.from_env(worker_env), app_db))
    result = client.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                  headers=api.headers(org, user))
    assert result.status_code == 200 and result.json["data"]["auth"] == "Bearer ***", result.text
    assert seen == ["Bearer short-lived"]


def test_a_token_refresh_is_part_of_the_calls_deadline(api, org, user, worker_env, app_db, server):
    """A token endpoint that stalls ends the call at the action's timeoutMs, not at the HTTP
    client's default: the refresh is spent from the same budget as the call."""
    from support import trickle

    server.expect_request("/token", method="POST").respond_with_handler(trickle(40, 0.1))
    tool = api.tool(org, baseUrl=server.url_for("/"), authType="oauth2")
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "oauth2", "config": {
        "clientId": "c", "clientSecret": "client-secret-1", "tokenUrl": server.url_for("/token")}})
    action = api.action(org, tool, key="me", method="GET", endpoint="/me", timeoutMs=800)
    client = testing.TestClient(create_app(Config.from_env(worker_env), app_db))
    started = time.monotonic()
    result = client.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                  headers=api.headers(org, user))
    assert time.monotonic() - started < 2.5
    assert result.status_code == 200 and result.json["success"] is False, result.text
    assert "Timed out" in result.json["data"]["error"] or "deadline" in result.json["data"]["error"]


@pytest.mark.parametrize("lifetime", ["3600", 1e300])
def test_a_lifetime_as_a_string_or_absurdly_long_still_gives_a_token(api, org, user, worker_env, app_db, server,
                                                                     lifetime):
    """An organization's token is read like a user's (tool_auth.expires_in): a numeric string is a
    number, and a lifetime past any interval PostgreSQL can hold is bounded instead of failing."""
    server.expect_request("/token", method="POST").respond_with_json(
        {"access_token": "long-lived", "expires_in": lifetime})
    seen = echo_auth(server)
    tool = api.tool(org, baseUrl=server.url_for("/"), authType="oauth2")
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "oauth2", "config": {
        "clientId": "c", "clientSecret": "client-secret-1", "tokenUrl": server.url_for("/token")}})
    action = api.action(org, tool, key="me", method="GET", endpoint="/me")
    client = testing.TestClient(create_app(Config.from_env(worker_env), app_db))
    result = client.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                  headers=api.headers(org, user))
    assert result.status_code == 200 and result.json["data"]["auth"] == "Bearer ***", result.text
    assert seen == ["Bearer long-lived"]
