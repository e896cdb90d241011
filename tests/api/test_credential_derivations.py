"""What a credential made is bound to the credential that made it (issue 19, attacker pass):
replacing a tool's per-user oauth2 credential with another token URL on the same origin (so the
origin binding did not trip) kept its users' connections, and the next refresh sent a user's
refresh token to the new URL, so a write-scoped key without ``impersonate`` could collect them.

Every derived grant now records the token URL and client id it was issued under, and is
refreshed, sent or exchanged only while the tool's credential names the same two. The class-wide
check is ``test_changing_what_a_credential_points_at_invalidates_what_it_made``: for every stored
credential type (``engine.SECRET_FIELDS``: a new type without a case here fails it) and every field
that decides where its secrets go, it changes that field the way a tenant can and checks that
nothing derived from the old credential goes out under the new one. Real PostgreSQL, a local
OAuth provider, and a second endpoint on the same origin that records what reaches it."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
from pytest_httpserver import HTTPServer
from support import FakeOAuthProvider, follow
from werkzeug import Response

from tolstoy import engine

ATTACKER_CLIENT = "client-attacker"


@pytest.fixture
def provider(server):
    provider = FakeOAuthProvider(server)
    provider.refresh_delay = 0
    # The endpoint a write key re-points the credential at: same origin, another path. It answers as
    # a token endpoint would, and keeps whatever it was sent.
    provider.harvested = []

    def harvest(request):
        provider.harvested.append(dict(request.form))
        return Response(json.dumps({"access_token": "attacker-access", "expires_in": 3600}),
                        content_type="application/json")

    server.expect_request("/collect", method="POST").respond_with_handler(harvest)
    return provider


def changed(provider: FakeOAuthProvider, field: str) -> dict:
    """A credential's config changes as a write key changes it: the same origin, another token URL
    (its own endpoint) or another OAuth client (its own app at the same provider)."""
    return {"tokenUrl": provider.url("/collect")} if field == "tokenUrl" else {"clientId": ATTACKER_CLIENT}


def per_user_tool(api, org, provider) -> dict:
    tool = api.tool(org, name="GitHub", key="github", baseUrl=provider.url("/"), authType="oauth2")
    api.create(f"/tools/{tool['id']}/auth", org, provider.credential())
    api.action(org, tool, key="gh.me", method="GET", endpoint="/me")
    return tool


def login(api, org, user: dict):
    result = api.client.simulate_get("/auth/github/login", params={"userId": user["id"]},
                                     headers=api.headers(org, user))
    assert result.status_code == 302, result.text
    return result.headers["location"]


def callback(api, location: str, who: str):
    back = urlsplit(follow(location, **{"as": who}))
    return api.client.simulate_get(back.path, params={k: v[0] for k, v in parse_qs(back.query).items()})


def execute(api, org, user, key: str) -> dict:
    result = api.client.simulate_post(f"/actions/{key}/execute", json={"inputs": {}}, headers=api.headers(org, user))
    assert result.status_code == 200, result.text
    return result.json


def as_owner(db, sql: str, *params) -> None:
    with db.pool.connection() as conn:
        conn.execute(sql, params)


def sent_refresh_tokens(provider) -> list[tuple[str, str]]:
    """(client id, refresh token) of every refresh the provider and the other endpoint were sent."""
    return [(form.get("client_id"), form.get("refresh_token"))
            for form in provider.token_requests + provider.harvested if form.get("grant_type") == "refresh_token"]


# ---- the cases: one per credential type and field that decides where its secrets go -------------

def user_connection(api, org, user, provider, db, field: str) -> None:
    """A user's connection (perUser oauth2): neither refreshed nor used under a changed credential;
    the user is told to connect again, and after doing so it works under the new credential."""
    tool = per_user_tool(api, org, provider)
    assert callback(api, login(api, org, user), "ada").status_code == 200
    assert execute(api, org, user, "gh.me")["success"] is True
    provider.token_requests.clear()
    seen = list(provider.seen_auth)
    api.create(f"/tools/{tool['id']}/auth", org, provider.credential(**changed(provider, field)))

    fresh = execute(api, org, user, "gh.me")  # the access token is still fresh
    as_owner(db, "update user_connections set expires_at = now() - interval '1 minute'")
    expired = execute(api, org, user, "gh.me")  # it must be refreshed
    for call in (fresh, expired):
        assert call["success"] is False, call
        assert "connect the tool again" in call["data"]["error"], call
    assert provider.harvested == [] and provider.token_requests == []
    assert provider.seen_auth == seen  # nothing went to the tool either


def login_in_progress(api, org, user, provider, db, field: str) -> None:
    """A login begun under the old credential: its code (and PKCE verifier) are not exchanged
    under the new one."""
    tool = per_user_tool(api, org, provider)
    started = login(api, org, user)
    api.create(f"/tools/{tool['id']}/auth", org, provider.credential(**changed(provider, field)))
    refused = callback(api, started, "ada")
    assert refused.status_code == 400, refused.text
    assert refused.json["errors"][0]["field"] == "state" and "start the login again" in refused.text
    assert provider.harvested == [] and provider.token_requests == []


def organization_token(api, org, user, provider, db, field: str) -> None:
    """An organization's oauth2 credential: its shared access token is not used under a changed
    credential, whatever the clocks said, and the refresh token it was issued with is not carried
    over to another client (``POST /tools/{id}/secrets`` keeps the fields it is not sent)."""
    provider.refresh_tokens["refresh-org-0"] = "org"
    tool = api.tool(org, name="Org", key="orgtool", baseUrl=provider.url("/"), authType="oauth2")
    config = {"clientId": provider.client_id, "clientSecret": provider.client_secret,
              "tokenUrl": provider.url("/token"), "refreshToken": "refresh-org-0"}
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "oauth2", "config": config})
    api.action(org, tool, key="org.me", method="GET", endpoint="/me")
    assert execute(api, org, user, "org.me")["success"] is True
    assert provider.seen_auth == ["Bearer access-org-1"]
    # Two transactions' clocks need not follow their commit order: a token stored by a refresh that
    # began after the credential was replaced, and committed before it, is dated after it.
    as_owner(db, "update oauth_tokens set updated_at = now() + interval '1 hour'")
    if field == "tokenUrl":
        # A whole new config (a write key cannot read the refresh token back to carry it over).
        api.create(f"/tools/{tool['id']}/auth", org, {"type": "oauth2", "config": {
            "clientId": ATTACKER_CLIENT, "clientSecret": "attacker-secret", "tokenUrl": provider.url("/collect")}})
    else:
        stored = api.post(f"/tools/{tool['id']}/secrets", org, {"credentials": {"clientId": ATTACKER_CLIENT}})
        assert stored.status_code == 201, stored.text
        assert "refreshToken" not in stored.json["maskedCredentials"], stored.text
    execute(api, org, user, "org.me")
    assert "Bearer access-org-1" not in provider.seen_auth[1:]
    # The organization's refresh token went only to its own token URL, with its own client.
    assert sent_refresh_tokens(provider) == [(provider.client_id, "refresh-org-0")]


def origin_bound(kind: str):
    """apiKey, bearer, basic: what decides where their secret goes is the tool's base URL; moved past
    the API, the credential is not sent (tests/api/test_tool_origins.py covers the API's 409)."""

    def case(api, org, user, provider, db, field: str) -> None:
        elsewhere = HTTPServer(host="127.0.0.1", port=0, threaded=True)
        elsewhere.expect_request("/me").respond_with_json({"ok": True})
        elsewhere.start()
        try:
            tool = api.tool(org, name=kind, key=kind.lower(), baseUrl=provider.url("/"), authType=kind)
            config = {"apiKey": {"headerName": "X-Key", "headerValue": "key-SECRET-0123"},
                      "bearer": {"token": "bearer-SECRET-0123"},
                      "basic": {"username": "ada", "password": "basic-SECRET-0123"}}[kind]
            api.create(f"/tools/{tool['id']}/auth", org, {"type": kind, "config": config})
            api.action(org, tool, key=f"{kind.lower()}.me", method="GET", endpoint="/me")
            as_owner(db, "update tools set base_url = %s where id = %s", elsewhere.url_for("/"), tool["id"])
            call = execute(api, org, user, f"{kind.lower()}.me")
            assert call["success"] is False and "not sent" in call["data"]["error"], call
            assert elsewhere.log == []
        finally:
            elsewhere.clear()
            elsewhere.stop()

    case.__name__ = "origin_bound"
    return case


# Per credential type: the fields that decide where its secrets go, and what each derived thing is.
CASES = {
    "apiKey": {"baseUrl": [origin_bound("apiKey")]},
    "bearer": {"baseUrl": [origin_bound("bearer")]},
    "basic": {"baseUrl": [origin_bound("basic")]},
    "oauth2": {field: [organization_token, user_connection, login_in_progress] for field in ("tokenUrl", "clientId")},
}


def test_every_credential_type_has_its_cases():
    """A new credential type is added here with what it derives, or this fails."""
    assert set(CASES) == set(engine.SECRET_FIELDS)


@pytest.mark.parametrize(("kind", "field", "case"), [
    pytest.param(kind, field, case, id=f"{kind}-{field}-{case.__name__}")
    for kind, fields in CASES.items() for field, cases in fields.items() for case in cases])
def test_changing_what_a_credential_points_at_invalidates_what_it_made(api, org, provider, db, kind, field, case):
    case(api, org, api.user(org, name="Ada"), provider, db, field)


def test_a_connection_made_before_issuers_were_recorded_is_used_while_fresh_and_never_refreshed(api, org,
                                                                                                  provider, db):
    """Rows from before the migration have no token URL or client id: SQL could not read them from
    the encrypted credential. Trusting the credential as it is at their first refresh would hand
    the window to whoever replaces it first, so they are not refreshed: the user connects again
    when the access token expires (until then it goes only to the tool's origin, as before)."""
    user = api.user(org, name="Ada")
    per_user_tool(api, org, provider)
    assert callback(api, login(api, org, user), "ada").status_code == 200
    as_owner(db, "update user_connections set token_url = null, client_id = null")
    assert execute(api, org, user, "gh.me")["success"] is True
    provider.token_requests.clear()
    as_owner(db, "update user_connections set expires_at = now() - interval '1 minute'")
    call = execute(api, org, user, "gh.me")
    assert call["success"] is False and "connect the tool again" in call["data"]["error"], call
    assert provider.token_requests == []
    # Connecting again records them, and refreshes work from then on.
    assert callback(api, login(api, org, user), "ada").status_code == 200
    as_owner(db, "update user_connections set expires_at = now() - interval '1 minute'")
    assert execute(api, org, user, "gh.me")["success"] is True
    assert [form["grant_type"] for form in provider.token_requests] == ["authorization_code", "refresh_token"]
