"""Issue 19, row 4: who may act as a user. X-User-ID records who a run or call is for; *using* a
user's stored OAuth tokens (a per-user tool) or connecting an account for them acts as that user,
which in api_key mode needs a key bound to the user or with the impersonate scope, and in headers
mode is the X-User-ID the gateway vouches for. Listing or removing a user's connections needs that
user, or an API key with the admin scope. Against a local fake provider (which records every token
it is sent), a real worker (as tolstoy_worker) and real PostgreSQL as the application role."""

from __future__ import annotations

import json

import pytest
from conftest import Api
from contract import assert_error
from falcon import testing
from support import FakeOAuthProvider, follow
from test_engine import step, wait_for

from tolstoy.api.app import create_app
from tolstoy.config import Config

ADMIN = "admin-token-" + "a" * 40
KEY_SECRET = "key-secret-" + "k" * 40


class KeyedApi(Api):
    """The test helpers of conftest.Api with an API key instead of X-Org-ID (X-User-ID still records
    the user)."""

    def __init__(self, client: testing.TestClient, key: str):
        super().__init__(client)
        self.key = key

    def headers(self, org, user=None) -> dict:
        headers = {"Authorization": f"Bearer {self.key}"}
        if user is not None:
            headers["X-User-ID"] = user["id"] if isinstance(user, dict) else user
        return headers

    def make_key(self, **body) -> KeyedApi:
        """A new key made with this one (``userId``, ``scopes``…), as a KeyedApi."""
        made = self.create("/api-keys", None, {"name": "made", **body})
        return KeyedApi(self.client, made["apiKey"])


@pytest.fixture
def provider(server):
    return FakeOAuthProvider(server)


@pytest.fixture
def keyed(worker_env, app_db):
    """A client of the app in api_key mode."""
    config = Config.from_env({**worker_env, "TOLSTOY_AUTH_MODE": "api_key", "TOLSTOY_API_KEY_SECRET": KEY_SECRET,
                              "TOLSTOY_ADMIN_TOKEN": ADMIN})
    return testing.TestClient(create_app(config, app_db))


@pytest.fixture
def world(keyed, provider):
    """An organization with its first key (``root``: every scope), Alice and Bob, a per-user tool with an
    action and a flow calling it, Alice connected (the root key connects her), and ``plain``, a key
    with read, write and execute, bound to no one: any key of yesterday but the admin's."""
    made = keyed.simulate_post("/organizations", json={"name": "Acme"}, headers={"Authorization": f"Bearer {ADMIN}"})
    assert made.status_code == 201, made.text
    root = KeyedApi(keyed, made.json["apiKey"])
    alice = root.create("/users", None, {"email": "alice@acme.example", "name": "Alice"})
    bob = root.create("/users", None, {"email": "bob@acme.example", "name": "Bob"})
    tool = root.tool(None, name="GitHub", key="github", baseUrl=provider.url("/"), authType="oauth2")
    root.create(f"/tools/{tool['id']}/auth", None, provider.credential())
    root.action(None, tool, key="gh.me", method="GET", endpoint="/me")
    flow = root.flow(None, [step("me", "action", {"actionKey": "gh.me", "inputs": {}})])
    connect(root, "alice", userId=alice["id"])
    return {"org": made.json, "alice": alice, "bob": bob, "tool": tool, "flow": flow, "root": root,
            "plain": root.make_key(scopes=WORK)}


WORK = ["read", "write", "execute"]


def bound_to(world: dict, user: dict, scopes=WORK) -> KeyedApi:
    """A key bound to ``user`` (made with the organization's first key)."""
    return world["root"].make_key(scopes=scopes, userId=user["id"])


def impersonating(world: dict) -> KeyedApi:
    """A key with the impersonate scope, bound to no one."""
    return world["root"].make_key(scopes=[*WORK, "impersonate"])


def connect(api: Api, who: str, **params) -> dict:
    """Login (as the key or headers say) → the provider's consent as ``who`` → callback."""
    login = api.client.simulate_get("/auth/github/login", params=params, headers=api.headers(None))
    assert login.status_code == 302, login.text
    back = follow(login.headers["location"], **{"as": who})
    path, _, query = back.partition("?")
    result = api.client.simulate_get(path[path.index("/auth/"):], query_string=query)
    assert result.status_code == 200, result.text
    return result.json


def execute(api: Api, user: dict):
    return api.client.simulate_post("/actions/gh.me/execute", json={"inputs": {}}, headers=api.headers(None, user))


def run(api: Api, world: dict, user: dict, flow: dict | None = None) -> dict:
    flow = flow or world["flow"]
    queued = api.client.simulate_post(f"/flows/{flow['id']}/execute", json={}, headers=api.headers(None, user))
    assert queued.status_code == 202, queued.text  # recording a user stays allowed for every key
    return wait_for(api, None, flow, queued.json["executionId"], timeout=20)


def refused(run_view: dict) -> str:
    """The text of a run's error and its steps' errors."""
    return json.dumps(run_view["error"]) + json.dumps([s.get("error") for s in run_view["steps"]])


# ---- api_key mode: using a user's tokens --------------------------------------------------------

def test_a_key_that_only_names_a_user_does_not_send_their_token(world, provider, worker):
    plain, alice = world["plain"], world["alice"]
    # The reproduction: any key, X-User-ID: alice, and the call went out with Alice's token.
    answer = execute(plain, alice)
    assert_error(answer, 403)
    assert "'impersonate'" in answer.json["message"] and alice["id"] in answer.json["message"]
    attacked = run(plain, world, alice)
    assert attacked["status"] == "failed", attacked
    assert attacked["userId"] == alice["id"]  # recorded, as the contract wants
    text = refused(attacked)
    assert "ActAsUserRefused" in text and "'impersonate'" in text and alice["id"] in text
    # A retry by the same key is refused the same way; nothing ever reached the tool.
    retried = plain.client.simulate_post(f"/flows/{world['flow']['id']}/executions/{attacked['executionId']}/retry",
                                         json={}, headers=plain.headers(None, alice))
    assert retried.status_code == 202, retried.text
    again = wait_for(plain, None, world["flow"], retried.json["executionId"], timeout=20)
    assert again["status"] == "failed" and "ActAsUserRefused" in refused(again)
    assert provider.seen_auth == []
    # The sync execute left no execution log (nothing was sent); the runs' logs name the rule.
    logs = plain.client.simulate_get("/execution-logs", params={"limit": "200"}, headers=plain.headers(None)).json
    assert not [log for log in logs if log["stepKey"] == "gh.me"]


def test_a_key_bound_to_the_user_or_with_impersonate_acts_as_them(world, provider, worker):
    alice, bob = world["alice"], world["bob"]
    bound, imp = bound_to(world, alice), impersonating(world)
    assert execute(bound, alice).json["success"] is True
    assert run(bound, world, alice)["status"] == "completed"
    assert execute(imp, alice).json["success"] is True
    assert run(imp, world, alice)["status"] == "completed"
    assert provider.seen_auth == ["Bearer access-alice-1"] * 4
    # Bound to Alice is not bound to Bob (who connected nothing: his would fail anyway, but on the rule).
    assert_error(execute(bound, bob), 403)
    # The first key of an organization holds impersonate; a retry takes the authority of whoever retries.
    failed = run(world["plain"], world, alice)
    assert failed["status"] == "failed"
    retried = imp.client.simulate_post(f"/flows/{world['flow']['id']}/executions/{failed['executionId']}/retry",
                                       json={}, headers=imp.headers(None, alice))
    assert retried.status_code == 202, retried.text
    assert wait_for(imp, None, world["flow"], retried.json["executionId"], timeout=20)["status"] == "completed"
    assert len(provider.seen_auth) == 5


def test_a_subflow_acts_as_the_user_only_if_its_parent_may(world, provider, worker):
    root, alice = world["root"], world["alice"]
    parent = root.flow(None, [step("call", "subflow", {"flowId": world["flow"]["id"]})])
    assert run(impersonating(world), world, alice, parent)["status"] == "completed"
    assert provider.seen_auth == ["Bearer access-alice-1"]
    denied = run(world["plain"], world, alice, parent)
    assert denied["status"] == "failed", denied
    assert "ActAsUserRefused" in json.dumps(denied)
    assert len(provider.seen_auth) == 1


def test_a_foreach_item_acts_as_the_user_of_its_run(world, provider, worker):
    root, alice = world["root"], world["alice"]
    flow = root.flow(None, [step("each", "foreach", {"items": [1, 2], "step": {
        "type": "action", "config": {"actionKey": "gh.me", "inputs": {}}}})])
    assert run(bound_to(world, alice), world, alice, flow)["status"] == "completed"
    assert provider.seen_auth == ["Bearer access-alice-1"] * 2
    assert run(world["plain"], world, alice, flow)["status"] == "failed"
    assert len(provider.seen_auth) == 2


# ---- api_key mode: connecting an account for a user ---------------------------------------------

def test_connecting_an_account_for_a_user_needs_their_key_or_impersonate(world, provider, db):
    plain, alice, bob = world["plain"], world["alice"], world["bob"]

    def login(api, user=None, **params):
        return api.client.simulate_get("/auth/github/login", params=params, headers=api.headers(None, user))

    # The reproduction: ?userId=alice without X-User-ID let anyone lend Alice their own account.
    for answer in (login(plain, userId=alice["id"]), login(plain, alice), login(plain, alice, userId=alice["id"])):
        assert_error(answer, 403)
        assert "'impersonate'" in answer.json["message"]
    bound, imp = bound_to(world, alice, ["read", "write"]), impersonating(world)
    assert login(bound, userId=bob["id"]).status_code == 403  # bound to Alice only
    assert login(bound, alice, userId=bob["id"]).status_code == 403  # and a user connects only themselves
    # A key bound to Alice connects Alice, with or without naming her; impersonate connects anyone.
    assert login(bound).status_code == 302
    assert connect(imp, "bob", userId=bob["id"])["success"] is True
    other = world["root"].client.simulate_post("/organizations", json={"name": "Other"},
                                               headers={"Authorization": f"Bearer {ADMIN}"}).json
    stranger = KeyedApi(world["root"].client, other["apiKey"]).create("/users", None, {"email": "x@other.example"})
    assert_error(login(imp, userId=stranger["id"]), 400, "userId")
    with db.pool.connection() as conn:  # no login was started by a key that may not act as its user
        starts = conn.execute("select user_id::text from oauth_states").fetchall()
    assert [r["user_id"] for r in starts] == [alice["id"]]  # the bound key's login, not called back


# ---- api_key mode: a user's connections ---------------------------------------------------------

def test_a_users_connections_are_theirs_or_the_admins(world):
    plain, alice, bob, tool = world["plain"], world["alice"], world["bob"], world["tool"]
    path = f"/users/{alice['id']}/connections"
    for answer in (plain.client.simulate_get(path, headers=plain.headers(None, alice)),
                   plain.client.simulate_delete(f"{path}/{tool['id']}", headers=plain.headers(None, alice))):
        assert_error(answer, 403)
        assert "'admin'" in answer.json["message"]
    bob_key = bound_to(world, bob, ["read", "write"])
    assert_error(bob_key.client.simulate_get(path, headers=bob_key.headers(None)), 403)
    # impersonate is about acting as a user, not about managing their connections: the admin scope is.
    imp = impersonating(world)
    assert_error(imp.client.simulate_get(path, headers=imp.headers(None, alice)), 403)
    bound = bound_to(world, alice, ["read", "write"])
    assert [c["toolKey"] for c in bound.client.simulate_get(path, headers=bound.headers(None)).json] == ["github"]
    root = world["root"]
    assert [c["toolKey"] for c in root.client.simulate_get(path, headers=root.headers(None)).json] == ["github"]
    # Another organization's user: 404 for an admin key (a 403 would say nothing either).
    other = root.client.simulate_post("/organizations", json={"name": "Other"},
                                      headers={"Authorization": f"Bearer {ADMIN}"}).json
    stranger = KeyedApi(root.client, other["apiKey"]).create("/users", None, {"email": "x@other.example"})
    assert_error(root.client.simulate_get(f"/users/{stranger['id']}/connections", headers=root.headers(None)), 404)
    assert bound.client.simulate_delete(f"{path}/{tool['id']}", headers=bound.headers(None)).status_code == 204
    assert root.client.simulate_get(path, headers=root.headers(None)).json == []


# ---- headers mode: the gateway vouches for X-User-ID ---------------------------------------------

@pytest.fixture
def github(api, org, provider):
    tool = api.tool(org, name="GitHub", key="github", baseUrl=provider.url("/"), authType="oauth2")
    api.create(f"/tools/{tool['id']}/auth", org, provider.credential())
    return tool


def test_headers_mode_login_needs_x_user_id_and_connects_only_that_user(client, api, org, github):
    ada, bob = api.user(org, name="Ada"), api.user(org, name="Bob")
    login = "/auth/github/login"
    # The reproduction: ?userId= alone connected whoever consented as that user.
    assert_error(client.simulate_get(login, params={"userId": ada["id"]}, headers=api.headers(org)), 400, "X-User-ID")
    assert_error(client.simulate_get(login, params={"userId": bob["id"]}, headers=api.headers(org, ada)), 403)
    assert client.simulate_get(login, params={"userId": ada["id"]}, headers=api.headers(org, ada)).status_code == 302
    assert client.simulate_get(login, headers=api.headers(org, ada)).status_code == 302


def test_headers_mode_connections_are_listed_and_removed_by_their_user(client, api, org, github):
    ada, bob = api.user(org, name="Ada"), api.user(org, name="Bob")
    path = f"/users/{ada['id']}/connections"
    assert_error(client.simulate_get(path, headers=api.headers(org)), 400, "X-User-ID")
    assert_error(client.simulate_get(path, headers=api.headers(org, bob)), 403)
    assert_error(client.simulate_delete(f"{path}/{github['id']}", headers=api.headers(org, bob)), 403)
    assert client.simulate_get(path, headers=api.headers(org, ada)).json == []
    assert_error(client.simulate_delete(f"{path}/{github['id']}", headers=api.headers(org, ada)), 404)
