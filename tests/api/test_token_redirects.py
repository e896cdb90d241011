"""OAuth2 token requests never follow a redirect to another origin (issue 19, row 7): a 307 or
308 from a token endpoint would re-send the form, with ``client_secret`` and the refresh token
or authorization code, to wherever the ``Location`` points (only headers were dropped). A
refresh (organization credential), and the per-user callback's code exchange, against a local
token endpoint that redirects to a second local origin: nothing reaches the second origin, and
the call or the callback fails saying why."""

from __future__ import annotations

import pytest
from contract import assert_error
from pytest_httpserver import HTTPServer
from support import FakeOAuthProvider, follow

from tolstoy.config import Config

PUBLIC = "https://tolstoy.example.com"


@pytest.fixture
def elsewhere():
    """A second origin (another port on 127.0.0.1) that records whatever reaches it."""
    other = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    other.expect_request("/token").respond_with_json({"access_token": "stolen", "expires_in": 3600})
    other.start()
    yield other
    other.clear()
    other.stop()


def redirect_to(server, path: str, target: str, status: int) -> None:
    server.expect_request(path, method="POST").respond_with_data("", status=status, headers={"Location": target})


@pytest.mark.parametrize("status", [307, 308, 302, 303])
@pytest.mark.parametrize("grant", ["refresh_token", "client_credentials"])
def test_a_refresh_redirected_to_another_origin_sends_it_nothing(api, org, user, server, elsewhere, status, grant):
    redirect_to(server, "/token", elsewhere.url_for("/token"), status)
    server.expect_request("/me").respond_with_json({"ok": True})
    tool = api.tool(org, baseUrl=server.url_for("/"), authType="oauth2")
    config = {"clientId": "c", "clientSecret": "client-secret-1", "tokenUrl": server.url_for("/token")}
    if grant == "refresh_token":
        config["refreshToken"] = "refresh-1"
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "oauth2", "config": config})
    action = api.action(org, tool, key="me", method="GET", endpoint="/me")

    result = api.client.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                      headers=api.headers(org, user))
    assert result.status_code == 200 and result.json["success"] is False, result.text
    error = result.json["data"]["error"]
    assert f"answered {status} with a redirect to another origin ({elsewhere.url_for('').rstrip('/')})" in error
    assert "client-secret-1" not in result.text and "refresh-1" not in result.text
    assert elsewhere.log == []  # neither the form nor anything else reached the other origin
    [(sent, _)] = server.log  # the token endpoint itself got the form, as it should
    assert sent.path == "/token" and "client_secret=client-secret-1" in sent.get_data(as_text=True)


def test_a_redirect_within_the_token_endpoints_origin_is_still_followed(api, org, user, server):
    redirect_to(server, "/token", server.url_for("/oauth/token"), 307)
    server.expect_request("/oauth/token", method="POST").respond_with_json({"access_token": "a-1", "expires_in": 60})
    server.expect_request("/me").respond_with_json({"ok": True})
    tool = api.tool(org, baseUrl=server.url_for("/"), authType="oauth2")
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "oauth2", "config": {
        "clientId": "c", "clientSecret": "client-secret-1", "tokenUrl": server.url_for("/token")}})
    action = api.action(org, tool, key="me", method="GET", endpoint="/me")
    result = api.client.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                      headers=api.headers(org, user))
    assert result.status_code == 200 and result.json["success"] is True, result.text
    [moved] = [r for r, _ in server.log if r.path == "/oauth/token"]
    assert "client_secret=client-secret-1" in moved.get_data(as_text=True)


@pytest.fixture
def config(worker_env):
    """The app's configuration with an externally visible base URL (redirect URIs start with it)."""
    return Config.from_env({**worker_env, "TOLSTOY_PUBLIC_URL": PUBLIC})


@pytest.mark.parametrize("status", [307, 308])
def test_the_callbacks_code_exchange_redirected_to_another_origin_sends_it_nothing(client, api, org, user, server,
                                                                                  elsewhere, status):
    provider = FakeOAuthProvider(server)
    redirect_to(server, "/moved-token", elsewhere.url_for("/token"), status)
    tool = api.tool(org, name="GitHub", key="github", baseUrl=provider.url("/"), authType="oauth2")
    api.create(f"/tools/{tool['id']}/auth", org, provider.credential(tokenUrl=provider.url("/moved-token")))
    login = client.simulate_get("/auth/github/login", params={"userId": user["id"]}, headers=api.headers(org, user))
    assert login.status_code == 302, login.text
    back = follow(login.headers["location"], **{"as": "ada"})
    assert back.startswith(PUBLIC + "/auth/github/callback?")
    result = client.simulate_get("/auth/github/callback", query_string=back.split("?", 1)[1])

    body = assert_error(result, 502)
    assert "redirect to another origin" in body["message"], body
    assert "client-secret-1" not in result.text
    assert elsewhere.log == []
    assert client.simulate_get(f"/users/{user['id']}/connections", headers=api.headers(org, user)).json == []
