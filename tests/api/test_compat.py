"""Clients of the original service (CONTRACT.md, "Clients of the original service (compat)"):
the nine SDK methods that had no route (GET /, actions.execute(key), tools.auth.delete(toolId),
tools.secrets.store/get/list/delete, auth.oauthLogin, auth.oauthCallback) over HTTP with the
SDK's paths and parameters, tool keys, and the OAuth state's defences (replayed, expired,
tampered, cross-organization, another tool's) against a local fake provider."""

from __future__ import annotations

import json
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
from contract import assert_error
from support import FakeOAuthProvider, follow

from tolstoy.api.connections import pkce_challenge, pkce_verifier, sign_state, state_key
from tolstoy.config import Config

PUBLIC = "https://tolstoy.example.com"


@pytest.fixture
def config(worker_env):
    """The app's configuration with an externally visible base URL (redirect URIs start with it)."""
    return Config.from_env({**worker_env, "TOLSTOY_PUBLIC_URL": PUBLIC})


@pytest.fixture
def provider(server):
    return FakeOAuthProvider(server)


@pytest.fixture
def github(api, org, provider):
    """A tool with key ``github`` whose oauth2 credential is per user."""
    tool = api.tool(org, name="GitHub", key="github", baseUrl=provider.url("/"), authType="oauth2")
    api.create(f"/tools/{tool['id']}/auth", org, provider.credential())
    return tool


def login(client, api, org, tool_key: str, user: dict, **params):
    """``auth.oauthLogin``: GET /auth/{toolKey}/login?userId= (as that user: X-User-ID) → the 302's Location."""
    result = client.simulate_get(f"/auth/{tool_key}/login", params={"userId": user["id"], **params},
                                 headers=api.headers(org, user))
    assert result.status_code == 302, result.text
    return result.headers["location"]


def callback_of(location: str) -> tuple[str, dict]:
    """The path and query of the provider's redirect back to us (the public URL stripped)."""
    assert location.startswith(PUBLIC + "/auth/"), location
    parts = urlsplit(location)
    return parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}


def callback(client, path: str, query: dict):
    """``auth.oauthCallback``: no tenant header at all."""
    return client.simulate_get(path, params=query)


def connect(client, api, org, tool_key: str, user: dict, who: str) -> dict:
    """Login → consent at the provider → callback; the callback's JSON."""
    path, query = callback_of(follow(login(client, api, org, tool_key, user), **{"as": who}))
    result = callback(client, path, query)
    assert result.status_code == 200, result.text
    return result.json


# ---- the nine SDK methods -------------------------------------------------------------------

def test_welcome_is_one_plain_line_pointing_at_the_docs(client):
    result = client.simulate_get("/")  # no tenant header
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/plain")
    assert result.text.count("\n") == 1 and "Tolstoy" in result.text and "/docs" in result.text


def test_actions_execute_by_key_or_id(client, api, org, user, server):
    server.expect_request("/ping").respond_with_json({"pong": True})
    tool = api.tool(org, baseUrl=server.url_for("/"))
    action = api.action(org, tool, key="svc.ping", method="GET", endpoint="/ping")
    headers = api.headers(org, user)
    by_key = client.simulate_post("/actions/svc.ping/execute", json={"inputs": {}}, headers=headers)
    assert by_key.status_code == 200, by_key.text
    assert by_key.json["success"] is True and by_key.json["data"] == {"pong": True}
    by_id = client.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}}, headers=headers)
    assert by_id.status_code == 200 and by_id.json["success"] is True
    # A key nobody has, another organization's key, and a UUID that names nothing: 404.
    assert_error(client.simulate_post("/actions/svc.nope/execute", json={"inputs": {}}, headers=headers), 404)
    other = api.org("Other")
    assert_error(client.simulate_post("/actions/svc.ping/execute", json={"inputs": {}},
                                      headers=api.headers(other, api.user(other))), 404)
    assert_error(client.simulate_post(f"/actions/{uuid.uuid4()}/execute", json={"inputs": {}}, headers=headers), 404)


def test_tools_auth_delete_without_a_name_removes_the_organization_credentials(client, api, org):
    tool = api.tool(org, authType="bearer")
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "bearer", "config": {"token": "t-1"}, "isDefault": True})
    api.create(f"/tools/{tool['id']}/auth", org, {"name": "spare", "type": "bearer", "config": {"token": "t-2"}})
    result = client.simulate_delete(f"/tools/{tool['id']}/auth", headers=api.headers(org))
    assert result.status_code == 200, result.text
    assert result.json["success"] is True and isinstance(result.json["message"], str)
    assert client.simulate_get(f"/tools/{tool['id']}/auth", headers=api.headers(org)).json == []
    # The named route stays.
    assert_error(client.simulate_delete(f"/tools/{tool['id']}/auth/spare", headers=api.headers(org)), 404)
    assert_error(client.simulate_delete(f"/tools/{uuid.uuid4()}/auth", headers=api.headers(org)), 404)


def echoing(server, path: str, header: str) -> list:
    """A tool endpoint that echoes one request header (its answer masks a credential in it);
    returns what it received."""
    seen: list = []

    def handle(request):
        seen.append(request.headers.get(header))
        return __import__("werkzeug").Response(json.dumps({"echo": seen[-1]}), content_type="application/json")

    server.expect_request(path).respond_with_handler(handle)
    return seen


def test_tools_secrets_store_get_list_delete(client, api, org, user, server):
    seen = echoing(server, "/who", "Authorization")
    tool = api.tool(org, name="Svc", baseUrl=server.url_for("/"), authType="bearer")
    bare = api.tool(org, name="Bare", authType="apiKey")
    path, headers = f"/tools/{tool['id']}/secrets", api.headers(org)

    stored = client.simulate_post(path, json={"credentials": {"token": "tok-abcdef123456"}}, headers=headers)
    assert stored.status_code == 201, stored.text
    body = stored.json
    assert set(body) == {"toolId", "toolName", "maskedCredentials", "createdAt", "updatedAt"}
    assert (body["toolId"], body["toolName"]) == (tool["id"], "Svc")
    assert set(body["maskedCredentials"]) == {"token"} and "tok-abcdef123456" not in stored.text

    got = client.simulate_get(path, headers=headers)
    assert got.status_code == 200 and got.json["maskedCredentials"] == body["maskedCredentials"]
    assert "tok-abcdef123456" not in got.text
    assert_error(client.simulate_get(path, params={"unmask": "true"}, headers=headers), 403)
    assert_error(client.simulate_get(path, params={"reveal": "1"}, headers=headers), 400, "reveal")

    listed = client.simulate_get("/tools/secrets", headers=headers)
    assert listed.status_code == 200, listed.text
    rows = {row["toolId"]: row for row in listed.json}
    assert rows[tool["id"]] == {"toolId": tool["id"], "toolName": "Svc", "toolType": "bearer",
                                "hasCredentials": True, "credentialKeys": ["token"],
                                "lastUpdated": body["updatedAt"]}
    assert rows[bare["id"]]["hasCredentials"] is False and rows[bare["id"]]["credentialKeys"] == []
    assert rows[bare["id"]]["lastUpdated"] is None

    # The secret is the tool's default credential: calls use it.
    action = api.action(org, tool, key="svc.who", method="GET", endpoint="/who")
    called = client.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                  headers=api.headers(org, user))
    assert seen == ["Bearer tok-abcdef123456"] and called.json["data"]["echo"] == "Bearer ***"

    assert client.simulate_delete(path, headers=headers).status_code == 204
    assert_error(client.simulate_get(path, headers=headers), 404)
    assert client.simulate_get(f"/tools/{tool['id']}/auth", headers=headers).json == []


def test_secrets_keys_are_checked_against_the_tools_auth_type(client, api, org, user, server):
    seen = echoing(server, "/key", "X-Key")
    bearer = api.tool(org, authType="bearer")
    path, headers = f"/tools/{bearer['id']}/secrets", api.headers(org)
    assert_error(client.simulate_post(path, json={"credentials": {"token": "x", "sessionCookie": "y"}},
                                      headers=headers), 400, "credentials.sessionCookie")
    assert_error(client.simulate_post(path, json={"credentials": {"username": "ada"}}, headers=headers), 400,
                 "credentials.username")
    assert_error(client.simulate_post(path, json={"credentials": {}}, headers=headers), 400, "credentials")
    none = api.tool(org, authType="none")
    assert_error(client.simulate_post(f"/tools/{none['id']}/secrets", json={"credentials": {"token": "x"}},
                                      headers=headers), 400, "credentials")
    # An oauth2 tool's secrets need the credential's tokenUrl, which only /auth sets.
    oauth = api.tool(org, authType="oauth2")
    assert_error(client.simulate_post(f"/tools/{oauth['id']}/secrets", json={"credentials": {
        "clientId": "c", "clientSecret": "s"}}, headers=headers), 400, "credentials.tokenUrl")
    # apiKey: the header name is kept, the key is the header's value.
    keyed = api.tool(org, authType="apiKey", baseUrl=server.url_for("/"))
    stored = client.simulate_post(f"/tools/{keyed['id']}/secrets",
                                  json={"credentials": {"apiKey": "k-0123456789", "headerName": "X-Key"}},
                                  headers=headers)
    assert stored.status_code == 201, stored.text
    assert stored.json["maskedCredentials"]["headerName"] == "X-Key"
    assert stored.json["maskedCredentials"]["apiKey"] != "k-0123456789"
    action = api.action(org, keyed, key="svc.key", method="GET", endpoint="/key")
    called = client.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                  headers=api.headers(org, user))
    assert seen == ["k-0123456789"] and called.json["data"]["echo"] == "***"


def test_tools_have_an_optional_key_unique_per_organization(client, api, org):
    tool = api.tool(org, key="github")
    assert tool["key"] == "github"
    assert api.tool(org)["key"] is None
    assert_error(api.post("/tools", org, {"name": "Another", "baseUrl": "https://x.example", "authType": "none",
                                         "key": "github"}), 409)
    assert_error(api.post("/tools", org, {"name": "Bad", "baseUrl": "https://x.example", "authType": "none",
                                         "key": "Git Hub"}), 400, "key")
    api.tool(api.org("Other"), key="github")  # another organization may use it
    changed = client.simulate_patch(f"/tools/{tool['id']}", json={"key": None}, headers=api.headers(org))
    assert changed.status_code == 200 and changed.json["key"] is None


def test_oauth_login_and_callback(client, api, org, user, github, provider, db):
    location = login(client, api, org, "github", user)
    parts = urlsplit(location)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert location.startswith(provider.url("/authorize") + "?")
    assert query["response_type"] == "code" and query["client_id"] == "client-1"
    assert query["redirect_uri"] == f"{PUBLIC}/auth/github/callback"
    assert query["scope"] == "repo user" and query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43 and query["state"]
    # The verifier is in no URL and no row.
    assert "verifier" not in location
    with db.pool.connection() as conn:
        columns = [r["column_name"] for r in conn.execute(
            "select column_name from information_schema.columns where table_name = 'oauth_states'")]
    assert not any("verifier" in c for c in columns)

    path, back = callback_of(follow(location, **{"as": "ada"}))
    assert path == "/auth/github/callback" and set(back) == {"code", "state"}
    result = callback(client, path, back)
    assert result.status_code == 200, result.text
    assert result.json["success"] is True and result.json["message"]
    uuid.UUID(result.json["credentialId"])
    assert [r["grant_type"] for r in provider.token_requests] == ["authorization_code"]
    assert provider.token_requests[0]["redirect_uri"] == f"{PUBLIC}/auth/github/callback"

    listed = client.simulate_get(f"/users/{user['id']}/connections", headers=api.headers(org, user))
    assert listed.status_code == 200, listed.text
    [connection] = listed.json
    assert connection["toolId"] == github["id"] and connection["toolKey"] == "github"
    assert connection["id"] == result.json["credentialId"] and connection["userId"] == user["id"]
    assert "access-ada" not in listed.text and "refresh-ada" not in listed.text
    with db.pool.connection() as conn:
        sealed = bytes(conn.execute("select tokens from user_connections").fetchone()["tokens"])
    assert b"access-ada" not in sealed and b"refresh-ada" not in sealed

    gone = client.simulate_delete(f"/users/{user['id']}/connections/{github['id']}",
                                  headers=api.headers(org, user))
    assert gone.status_code == 204
    assert client.simulate_get(f"/users/{user['id']}/connections", headers=api.headers(org, user)).json == []
    assert_error(client.simulate_delete(f"/users/{user['id']}/connections/{github['id']}",
                                        headers=api.headers(org, user)), 404)


def test_oauth_login_refusals(client, api, org, user, github, provider):
    headers = api.headers(org, user)
    assert_error(client.simulate_get("/auth/nope/login", params={"userId": user["id"]}, headers=headers), 404)
    assert_error(client.simulate_get("/auth/github/login", params={"userId": "x"}, headers=headers), 400, "userId")
    assert_error(client.simulate_get("/auth/github/login", params={"userId": user["id"]}), 400, "X-Org-ID")
    # Headers mode: the gateway vouches for X-User-ID only, so a login needs it (userId alone once let
    # anyone connect their own account as any user) …
    assert_error(client.simulate_get("/auth/github/login", params={"userId": user["id"]},
                                     headers=api.headers(org)), 400, "X-User-ID")
    assert_error(client.simulate_get("/auth/github/login", headers=api.headers(org)), 400, "X-User-ID")
    # … it is enough when userId is not given, and an acting user connects only themselves.
    assert client.simulate_get("/auth/github/login", headers=headers).status_code == 302
    other_user = api.user(org)
    stranger = api.user(api.org("Other"))
    for someone in (other_user, stranger):
        assert_error(client.simulate_get("/auth/github/login", params={"userId": someone["id"]}, headers=headers),
                     403)
    # A tool whose oauth2 credential is not per user cannot be connected.
    plain = api.tool(org, key="plain", authType="oauth2")
    api.create(f"/tools/{plain['id']}/auth", org, {"type": "oauth2", "config": {
        "clientId": "c", "clientSecret": "s", "tokenUrl": provider.url("/token")}})
    assert_error(client.simulate_get("/auth/plain/login", params={"userId": user["id"]}, headers=headers), 400,
                 "toolKey")
    # perUser needs an authorizeUrl.
    assert_error(api.post(f"/tools/{plain['id']}/auth", org, {"type": "oauth2", "config": {
        "clientId": "c", "clientSecret": "s", "tokenUrl": provider.url("/token"), "perUser": True}}), 400,
        "config.authorizeUrl")


def test_replayed_expired_tampered_and_cross_organization_states_are_refused(client, api, org, user, github,
                                                                              provider, db, config):
    # Replayed: a state works once.
    path, query = callback_of(follow(login(client, api, org, "github", user), **{"as": "ada"}))
    assert callback(client, path, query).status_code == 200
    assert_error(callback(client, path, query), 400, "state")

    # Expired: the login's 10 minutes are over.
    path, query = callback_of(follow(login(client, api, org, "github", user), **{"as": "ada"}))
    with db.pool.connection() as conn:
        conn.execute("update oauth_states set expires_at = now() - interval '1 second'")
    expired = callback(client, path, query)
    assert_error(expired, 400, "state")
    assert "expired" in expired.json["message"]
    with db.pool.connection() as conn:  # and it is spent
        assert conn.execute("select count(*) as n from oauth_states").fetchone()["n"] == 0

    # Tampered: the signature, the nonce, or the organization changed.
    path, query = callback_of(follow(login(client, api, org, "github", user), **{"as": "ada"}))
    org_hex, nonce, signature = query["state"].split(".")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    other = api.org("Other")
    other_user = api.user(other)
    for state in (f"{org_hex}.{nonce}.{flipped}", f"{org_hex}.{nonce[::-1]}.{signature}",
                  f"{uuid.UUID(other['id']).hex}.{nonce}.{signature}", "garbage", query["state"] + "x"):
        assert_error(callback(client, path, {**query, "state": state}), 400, "state")
    # Cross-organization: even a state validly signed for the other organization cannot reach this
    # organization's login (row-level security and the org filter: the nonce is unknown there).
    key = state_key(config)
    forged = sign_state(key, uuid.UUID(other["id"]), nonce, "github")
    assert_error(callback(client, path, {**query, "state": forged}), 400, "state")
    # The untouched state still works: none of the attempts spent it.
    assert callback(client, path, query).status_code == 200

    # Another tool's callback: the signature binds the tool key.
    api.tool(org, name="Other tool", key="gitlab", authType="oauth2")
    path, query = callback_of(follow(login(client, api, org, "github", user), **{"as": "ada"}))
    assert_error(callback(client, "/auth/gitlab/callback", query), 400, "state")

    # Another organization's login stays its own: a state of org "Other" connects only its user.
    tool_b = api.tool(other, name="GitHub", key="github", baseUrl=provider.url("/"), authType="oauth2")
    api.create(f"/tools/{tool_b['id']}/auth", other, provider.credential())
    path, query = callback_of(follow(login(client, api, other, "github", other_user), **{"as": "bob"}))
    assert callback(client, path, query).status_code == 200
    assert [c["userId"] for c in client.simulate_get(f"/users/{other_user['id']}/connections",
                                                     headers=api.headers(other, other_user)).json] == [other_user["id"]]
    # From this organization the other's user is nobody's to see (403 before any query, so it says nothing
    # of whether the user exists; with an admin key it is a 404: test_acting_user.py).
    assert_error(client.simulate_get(f"/users/{other_user['id']}/connections", headers=api.headers(org, user)), 403)


def test_a_wrong_pkce_verifier_is_refused_by_the_provider_and_reported(client, api, org, user, github, provider,
                                                                       config):
    location = login(client, api, org, "github", user)
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    # The challenge the provider sees is another verifier's: ours no longer matches it.
    key = state_key(config)
    wrong = pkce_challenge(pkce_verifier(key, uuid.UUID(org["id"]), "x" * 32))
    assert wrong != query["code_challenge"]
    tampered = location.replace(query["code_challenge"], wrong)
    path, back = callback_of(follow(tampered, **{"as": "ada"}))
    result = callback(client, path, back)
    assert_error(result, 400)
    assert "PKCE verification failed" in result.json["message"] and "invalid_grant" in result.json["message"]
    assert client.simulate_get(f"/users/{user['id']}/connections", headers=api.headers(org, user)).json == []


def test_a_provider_error_is_a_400_with_its_description_and_spends_the_state(client, api, org, user, github,
                                                                            provider):
    path, query = callback_of(follow(login(client, api, org, "github", user), deny="1"))
    assert query["error"] == "access_denied"
    result = callback(client, path, query)
    assert_error(result, 400)
    assert "The user said no" in result.json["message"]
    # The same state with a code afterwards: already spent.
    assert_error(callback(client, path, {"code": "code-x", "state": query["state"]}), 400, "state")
    assert_error(callback(client, path, {"state": query["state"]}), 400)
    assert_error(callback(client, path, {"code": "c"}), 400, "state")


def test_the_nine_sdk_calls_over_http(worker_env, app_db, server):
    """The SDK's nine calls against a real HTTP server running the app, the provider's redirect
    back to the callback included (TOLSTOY_PUBLIC_URL is that server)."""
    import threading

    import httpx
    from support import free_port
    from werkzeug.serving import make_server

    from tolstoy.api.app import create_app

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = create_app(Config.from_env({**worker_env, "TOLSTOY_PUBLIC_URL": base}), app_db)
    http_server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=http_server.serve_forever, daemon=True)
    thread.start()
    provider = FakeOAuthProvider(server)
    try:
        with httpx.Client(base_url=base, timeout=10) as sdk:
            org = sdk.post("/organizations", json={"name": "SDK"}).json()
            h = {"X-Org-ID": org["id"]}
            user = sdk.post("/users", json={"email": "ada@sdk.example"}, headers=h).json()
            hu = {**h, "X-User-ID": user["id"]}
            tool = sdk.post("/tools", json={"name": "GitHub", "key": "github", "baseUrl": provider.url("/"),
                                            "authType": "oauth2"}, headers=h).json()
            assert sdk.post(f"/tools/{tool['id']}/auth", json=provider.credential(), headers=h).status_code == 201
            sdk.post("/actions", json={"toolId": tool["id"], "name": "Me", "key": "gh.me", "method": "GET",
                                       "endpoint": "/me"}, headers=h).raise_for_status()

            # 1. GET /
            welcome = sdk.get("/")
            assert welcome.status_code == 200 and welcome.headers["content-type"].startswith("text/plain")
            # 2, 3. auth.oauthLogin, then the provider, then auth.oauthCallback (redirected to us).
            login_reply = sdk.get("/auth/github/login", params={"userId": user["id"]}, headers=hu)
            assert login_reply.status_code == 302
            back = follow(login_reply.headers["location"], **{"as": "ada"})
            assert back.startswith(f"{base}/auth/github/callback?")
            connected = httpx.get(back, timeout=10)  # the browser: no tenant header
            assert connected.status_code == 200 and connected.json()["success"] is True, connected.text
            # 4. actions.execute(key), as the user who connected.
            executed = sdk.post("/actions/gh.me/execute", json={"inputs": {}}, headers=hu)
            assert executed.status_code == 200 and executed.json()["success"] is True, executed.text
            assert provider.seen_auth == ["Bearer access-ada-1"]
            # 5-8. tools.secrets.store / get / list / delete (on a bearer tool).
            svc = sdk.post("/tools", json={"name": "Svc", "baseUrl": "https://svc.example", "authType": "bearer"},
                           headers=h).json()
            stored = sdk.post(f"/tools/{svc['id']}/secrets", json={"credentials": {"token": "tok-0123456789"}},
                              headers=h)
            assert stored.status_code == 201, stored.text
            assert sdk.get(f"/tools/{svc['id']}/secrets", headers=h).status_code == 200
            assert sdk.get(f"/tools/{svc['id']}/secrets", params={"unmask": "true"}, headers=h).status_code == 403
            listed = sdk.get("/tools/secrets", headers=h)
            assert listed.status_code == 200 and {row["toolId"] for row in listed.json()} == {tool["id"], svc["id"]}
            assert sdk.delete(f"/tools/{svc['id']}/secrets", headers=h).status_code == 204
            # 9. tools.auth.delete(toolId)
            removed = sdk.delete(f"/tools/{tool['id']}/auth", headers=h)
            assert removed.status_code == 200 and removed.json()["success"] is True
    finally:
        http_server.shutdown()
        thread.join(5)


# ---- review: what a provider answers, and where the redirect URI comes from -------------------

def _token_endpoint(server, provider, status: int, body):
    """The provider's /token replaced by one fixed answer (consent still works)."""
    from werkzeug import Response
    server.clear()
    server.expect_request("/authorize").respond_with_handler(provider._authorize)
    server.expect_request("/token", method="POST").respond_with_handler(
        lambda request: Response(json.dumps(body), status=status, content_type="application/json"))


@pytest.mark.parametrize("status", [400, 502])
def test_a_provider_echoing_the_client_secret_or_the_code_is_not_reflected(client, api, org, user, github, provider,
                                                                           server, config, status):
    # A token endpoint whose error description repeats what it was sent: the client secret and the
    # code (or the PKCE verifier) must not reach the browser that holds the callback URL.
    from werkzeug import Response

    def echo(request):
        form = request.form
        said = f"bad client_secret {form['client_secret']} for code {form['code']} ({form['code_verifier']})"
        return Response(json.dumps({"error": "invalid_client", "error_description": said}), status=status,
                        content_type="application/json")

    server.clear()
    server.expect_request("/authorize").respond_with_handler(provider._authorize)
    server.expect_request("/token", method="POST").respond_with_handler(echo)
    path, query = callback_of(follow(login(client, api, org, "github", user), **{"as": "ada"}))
    result = callback(client, path, query)
    assert result.status_code == status, result.text
    assert "invalid_client" in result.text
    assert provider.client_secret not in result.text and query["code"] not in result.text
    verifier = pkce_verifier(state_key(config), uuid.UUID(org["id"]), query["state"].split(".")[1])
    assert verifier in provider_seen(server) and verifier not in result.text


def provider_seen(server) -> str:
    """Everything the fake provider's token endpoint was sent."""
    return " ".join(request.get_data(as_text=True) for request, _ in server.log)


@pytest.mark.parametrize("expires_in", ["3600", 3600.0])
def test_a_lifetime_given_as_a_string_is_kept(client, api, org, user, github, provider, server, db, expires_in):
    _token_endpoint(server, provider, 200, {"access_token": "access-1", "refresh_token": "refresh-1",
                                            "expires_in": expires_in})
    connect(client, api, org, "github", user, "ada")
    with db.pool.connection() as conn:
        left = conn.execute("select extract(epoch from expires_at - now()) as s from user_connections").fetchone()
    assert left["s"] is not None and 3500 < left["s"] <= 3600


@pytest.mark.parametrize("expires_in", [1e300, 10**30])
def test_an_absurd_lifetime_is_no_500(client, api, org, user, github, provider, server, expires_in):
    _token_endpoint(server, provider, 200, {"access_token": "access-1", "expires_in": expires_in})
    path, query = callback_of(follow(login(client, api, org, "github", user), **{"as": "ada"}))
    assert callback(client, path, query).status_code == 200


@pytest.mark.parametrize("token", [5, {"x": 1}, "", None])
def test_an_access_token_that_is_not_a_string_is_refused(client, api, org, user, github, provider, server, token):
    _token_endpoint(server, provider, 200, {"access_token": token, "expires_in": 3600})
    path, query = callback_of(follow(login(client, api, org, "github", user), **{"as": "ada"}))
    result = callback(client, path, query)
    assert result.status_code in (400, 502), result.text
    assert client.simulate_get(f"/users/{user['id']}/connections", headers=api.headers(org, user)).json == []


def test_production_without_a_public_url_does_not_trust_the_host_header(worker_env, app_db, api, org, user,
                                                                        github):
    # Behind ops/nginx/tolstoy.conf (one server block, `proxy_set_header Host $host`), the Host
    # header is whatever the client sent: a redirect_uri built from it sends the code elsewhere.
    import dataclasses

    from falcon import testing

    from tolstoy.api.app import create_app
    production = dataclasses.replace(Config.from_env(worker_env), env="production")
    assert production.public_url is None
    prod = testing.TestClient(create_app(production, app_db))
    result = prod.simulate_get("/auth/github/login", params={"userId": user["id"]},
                               headers={**api.headers(org, user), "Host": "evil.example"})
    assert result.status_code == 503, result.headers.get("location")
    assert "TOLSTOY_PUBLIC_URL" in result.json["message"]


def test_two_concurrent_callbacks_with_one_state_connect_once(client, api, org, user, github, provider):
    from concurrent.futures import ThreadPoolExecutor
    path, query = callback_of(follow(login(client, api, org, "github", user), **{"as": "ada"}))
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: callback(client, path, query), range(2)))
    assert sorted(r.status_code for r in results) == [200, 400], [r.text for r in results]
    refused = next(r for r in results if r.status_code == 400)
    assert_error(refused, 400, "state")  # the state, not the provider's refusal of a used code
    assert [r["grant_type"] for r in provider.token_requests] == ["authorization_code"]
