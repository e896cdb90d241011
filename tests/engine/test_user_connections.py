"""Runs act as their user: an action step of a tool whose oauth2 credential is per user calls the
tool with the tokens the run's user connected (login → consent → callback against a local fake
provider), refreshed once across concurrent runs with the rotated refresh token kept; a user who
has not connected the tool fails the step with an error naming both; tokens never reach run
outputs or logs. Real PostgreSQL, a real worker (as tolstoy_worker)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
from support import FakeOAuthProvider, follow
from test_engine import execute, logs_of, step, wait_for


@pytest.fixture
def provider(server):
    return FakeOAuthProvider(server)


@pytest.fixture
def github(api, org, provider):
    """A per-user oauth2 tool, an action that calls it, and a flow of that action."""
    tool = api.tool(org, name="GitHub", key="github", baseUrl=provider.url("/"), authType="oauth2")
    api.create(f"/tools/{tool['id']}/auth", org, provider.credential())
    api.action(org, tool, key="gh.me", method="GET", endpoint="/me")
    flow = api.flow(org, [step("me", "action", {"actionKey": "gh.me", "inputs": {}})])
    return tool, flow


def connect(api, org, user: dict, who: str) -> dict:
    """Login → the provider's consent (its 302 followed by hand) → callback."""
    client = api.client
    login = client.simulate_get("/auth/github/login", params={"userId": user["id"]}, headers=api.headers(org, user))
    assert login.status_code == 302, login.text
    back = urlsplit(follow(login.headers["location"], **{"as": who}))
    result = client.simulate_get(back.path, params={k: v[0] for k, v in parse_qs(back.query).items()})
    assert result.status_code == 200, result.text
    return result.json


def run_as(api, org, user, flow) -> dict:
    return wait_for(api, org, flow, execute(api, org, user, flow)["executionId"], timeout=20)


def test_each_user_runs_with_their_own_token_and_an_unconnected_user_fails(api, org, worker, github, provider, db):
    tool, flow = github
    ada, bob, eve = (api.user(org, name=n) for n in ("Ada", "Bob", "Eve"))
    connect(api, org, ada, "ada")
    connect(api, org, bob, "bob")

    first = run_as(api, org, ada, flow)
    assert first["status"] == "completed", first
    assert provider.seen_auth == ["Bearer access-ada-1"]
    second = run_as(api, org, bob, flow)
    assert second["status"] == "completed", second
    assert provider.seen_auth == ["Bearer access-ada-1", "Bearer access-bob-2"]
    # The tool echoed the token: what the run shows and logs is masked.
    for run in (first, second):
        shown = json.dumps(run) + json.dumps(logs_of(api, org, run["executionId"]))
        assert "access-ada" not in shown and "access-bob" not in shown
        assert "refresh-" not in shown

    third = run_as(api, org, eve, flow)
    assert third["status"] == "failed"
    message = third["error"]["message"] if isinstance(third["error"], dict) else json.dumps(third["error"])
    step_error = json.dumps([s.get("error") for s in third["steps"]])
    for text in (message + step_error,):
        assert eve["id"] in text and eve["email"] in text and "GitHub" in text
    assert len(provider.seen_auth) == 2  # nothing was sent for Eve

    # Disconnected: Bob's next run fails the same way, at once.
    assert api.client.simulate_delete(f"/users/{bob['id']}/connections/{tool['id']}",
                                      headers=api.headers(org, bob)).status_code == 204
    assert run_as(api, org, bob, flow)["status"] == "failed"
    assert len(provider.seen_auth) == 2


def test_a_synchronous_execute_uses_the_callers_connection(api, org, github, provider):
    ada, eve = api.user(org, name="Ada"), api.user(org, name="Eve")
    connect(api, org, ada, "ada")
    result = api.client.simulate_post("/actions/gh.me/execute", json={"inputs": {}}, headers=api.headers(org, ada))
    assert result.status_code == 200 and result.json["success"] is True, result.text
    assert provider.seen_auth == ["Bearer access-ada-1"]
    refused = api.client.simulate_post("/actions/gh.me/execute", json={"inputs": {}}, headers=api.headers(org, eve))
    assert refused.status_code == 200 and refused.json["success"] is False
    assert eve["id"] in refused.json["data"]["error"] and "GitHub" in refused.json["data"]["error"]
    assert len(provider.seen_auth) == 1


def test_an_expired_token_is_refreshed_once_across_concurrent_runs(api, org, worker, github, provider, db):
    _, flow = github
    ada = api.user(org, name="Ada")
    connect(api, org, ada, "ada")
    with db.pool.connection() as conn:
        conn.execute("update user_connections set expires_at = now() - interval '1 minute'")
    runs = [execute(api, org, ada, flow)["executionId"] for _ in range(4)]
    done = [wait_for(api, org, flow, run_id, timeout=20) for run_id in runs]
    assert [r["status"] for r in done] == ["completed"] * 4, done
    assert provider.refreshes == 1
    assert provider.seen_auth == ["Bearer access-ada-2"] * 4
    # The rotated refresh token was kept: the next refresh sends refresh-ada-2, which the provider
    # accepts (it refuses a refresh token used before).
    with db.pool.connection() as conn:
        conn.execute("update user_connections set expires_at = now() - interval '1 minute'")
        sealed = bytes(conn.execute("select tokens from user_connections").fetchone()["tokens"])
    assert b"access-ada" not in sealed and b"refresh-ada" not in sealed
    assert run_as(api, org, ada, flow)["status"] == "completed"
    assert provider.refreshes == 2 and provider.seen_auth[-1] == "Bearer access-ada-3"
    refreshes = [r["refresh_token"] for r in provider.token_requests if r["grant_type"] == "refresh_token"]
    assert refreshes == ["refresh-ada-1", "refresh-ada-2"]


def test_a_refused_refresh_names_no_token_in_the_run(api, org, worker, github, provider, server, db):
    # A token endpoint that repeats the refresh token it was sent in its error: the run's error
    # (and logs) must not carry the user's refresh token, which no credential config holds.
    from werkzeug import Response
    _, flow = github
    ada = api.user(org, name="Ada")
    connect(api, org, ada, "ada")

    def refuse(request):
        said = f"refresh token {request.form.get('refresh_token')} was revoked"
        return Response(json.dumps({"error": "invalid_grant", "error_description": said}), status=400,
                        content_type="application/json")

    server.clear()
    server.expect_request("/token", method="POST").respond_with_handler(refuse)
    server.expect_request("/me").respond_with_handler(provider._me)
    with db.pool.connection() as conn:
        conn.execute("update user_connections set expires_at = now() - interval '1 minute'")
    run = run_as(api, org, ada, flow)
    assert run["status"] == "failed", run
    shown = json.dumps(run) + json.dumps(logs_of(api, org, run["executionId"]))
    assert "invalid_grant" in shown and "revoked" in shown
    assert "refresh-ada" not in shown
    assert provider.seen_auth == []
