"""The audit trail (issue 23): every configuration change writes exactly one event per record it
changes, in its own transaction, with the actor as the request authenticated, in both auth modes;
another organization never sees it; a secret's value never appears in one; the services can read
events but never write, change or delete them.

The route walk closes the class: every route of the app that may change something
(POST/PUT/PATCH/DELETE) either has a recipe here, run in both modes, that must write exactly the
events it declares, or is listed in NOT_CONFIGURATION with the reason. A new changing route fails
test_every_changing_route_is_audited_or_listed_as_no_configuration until it is one or the other."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from falcon import testing
from support import FakeOAuthProvider, follow

from tolstoy.api.app import build_routes, create_app
from tolstoy.api.middleware import allowed_methods
from tolstoy.config import Config
from tolstoy.db import database, migrate

ADMIN = "admin-token-" + "a" * 40
KEY_SECRET = "key-secret-" + "k" * 40
# Secret values sent through every secret-bearing field of the API: none may appear in any event.
SECRETS = {
    "bearer": "tok-SECRET-bearer-0123456789",
    "password": "pw-SECRET-basic-0123456789",
    "header": "hv-SECRET-apikey-0123456789",
    "client": "cs-SECRET-oauth-0123456789",
    "access": "at-SECRET-oauth-0123456789",
    "refresh": "rt-SECRET-oauth-0123456789",
    "compat": "tok-SECRET-compat-0123456789",
    "trigger": "whsec_SECRET-trigger-0123456789",
    "webhook_header": "Bearer SECRET-webhook-header-0123456789",
    "action_header": "Bearer SECRET-action-header-0123456789",
}

# Routes that may change something but change no configuration: what they write is run history,
# deliveries or signals (recorded by the runs and logs themselves), never a record of the audited
# kinds. The reason is part of the review.
RUNS = "runs something or acts on a run: run history, not configuration"
NOT_CONFIGURATION = {
    ("POST", "/actions/{id}/execute"): RUNS,
    ("POST", "/flows/{id}/execute"): RUNS,
    ("DELETE", "/flows/{id}/executions"): "deletes run history (the runs' own records), not configuration",
    ("POST", "/flows/{id}/executions/{execution_id}/cancel"): RUNS,
    ("POST", "/flows/{id}/executions/{execution_id}/retry"): RUNS,
    ("POST", "/flows/{id}/executions/{execution_id}/rerun"): RUNS,
    ("POST", "/flows/{id}/executions/{execution_id}/steps/{step_id}/resolve"): RUNS,
    ("POST", "/flows/{id}/executions/{execution_id}/move"): RUNS + " (the move is a $flow event of the run's log, "
                                                           "written as its user's)",
    ("POST", "/flows/{id}/executions/{execution_id}/signals/{signal}"): RUNS,
    ("POST", "/flows/{id}/executions/{execution_id}/signals/{signal}/links"): RUNS + " (a signed approval link)",
    ("POST", "/approvals/{token}"): "public: a signed link delivers a signal to a waiting run",
    ("POST", "/flows/{id}/triggers/{trigger_id}/deliveries/{delivery_id}/replay"): "queues a run of a received "
                                                                                    "delivery again",
    ("POST", "/hooks/{trigger_id}"): "public: a signed inbound webhook queues a run",
    ("POST", "/webhooks/{id}/test"): "sends a test event (a delivery), changes no webhook",
    ("POST", "/execution-logs"): "execution logs are the runs' own audit trail (their userId is the actor)",
    ("PUT", "/execution-logs/{id}"): "as POST /execution-logs",
    ("PATCH", "/execution-logs/{id}"): "as POST /execution-logs",
    ("DELETE", "/execution-logs/{id}"): "as POST /execution-logs",
}


@dataclass
class World:
    """One organization set up through the API in one auth mode, and how to call it."""

    mode: str
    client: testing.TestClient
    org: str
    user: str
    auth: dict  # the headers of every call (tenant headers, or the user's bound key)
    admin: dict  # the headers that create and delete organizations
    actor: dict  # the actor the events of `auth` calls must name
    provider: FakeOAuthProvider
    made: dict = field(default_factory=dict)

    def call(self, method: str, path: str, body: dict | None = None, headers: dict | None = None,
             request_id: str | None = None, **kwargs):
        headers = {**(self.auth if headers is None else headers), "X-Request-ID": request_id or new_request_id()}
        return self.client.simulate_request(method, path, json=body, headers=headers, **kwargs)

    def create(self, path: str, body: dict) -> dict:
        result = self.call("POST", path, body)
        assert result.status_code == 201, (path, result.text)
        return result.json

    def tool(self, **fields) -> dict:
        return self.create("/tools", {"name": f"tool-{uuid.uuid4().hex[:8]}", "baseUrl": "https://api.example.com",
                                      "authType": "bearer", **fields})

    def action(self) -> dict:
        return self.create("/actions", {"toolId": self.made["tool"]["id"], "name": "Get", "key": f"k.{new_id()}",
                                        "method": "GET", "endpoint": "/things",
                                        "headers": {"Authorization": SECRETS["action_header"]}})

    def flow(self) -> dict:
        return self.create("/flows", {"name": "F", "steps": [{"id": "a", "type": "transform",
                                                               "config": {"output": 1}}]})

    def trigger(self) -> dict:
        return self.create(f"/flows/{self.made['flow']['id']}/triggers", {"type": "webhook"})

    def webhook(self) -> dict:
        return self.create("/webhooks", {"name": "Ops", "url": "https://hooks.example.com/t",
                                         "eventTypes": ["flow.failed"],
                                         "headers": {"Authorization": SECRETS["webhook_header"]}})

    def user_record(self) -> dict:
        return self.create("/users", {"email": f"u-{new_id()}@example.com", "name": "Grace"})

    def api_key(self) -> dict:
        return self.create("/api-keys", {"name": f"k-{new_id()}", "scopes": ["read"]})

    def organization(self) -> dict:
        result = self.client.simulate_post("/organizations", json={"name": "Spare"}, headers=self.admin)
        assert result.status_code == 201, result.text
        return result.json

    def connect(self, request_id: str) -> dict:
        """Login → the provider's consent → callback (sent with ``request_id``)."""
        login = self.call("GET", "/auth/github/login", params={"userId": self.user})
        assert login.status_code == 302, login.text
        back = urlsplit(follow(login.headers["location"], **{"as": "ada"}))
        result = self.client.simulate_get(back.path, params={k: v[0] for k, v in parse_qs(back.query).items()},
                                          headers={"X-Request-ID": request_id})
        assert result.status_code == 200, result.text
        return result.json


def new_id() -> str:
    return uuid.uuid4().hex[:10]


def new_request_id() -> str:
    return f"test-{uuid.uuid4().hex}"


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def events_of(db, request_id: str) -> list[dict]:
    """The events of one request, as the database holds them (read past row-level security)."""
    with db.pool.connection() as conn:
        return conn.execute(
            "select org_id::text, actor, action, target_type, target_id::text, changes, request_id "
            "from audit_events where request_id = %s order by created_at, id", (request_id,)).fetchall()


def all_events_text(db) -> str:
    with db.pool.connection() as conn:
        rows = conn.execute("select action || actor::text || changes::text || coalesce(request_id, '') as t "
                            "from audit_events").fetchall()
    return "\n".join(row["t"] for row in rows)


@pytest.fixture
def provider(server):
    return FakeOAuthProvider(server)


def headers_world(worker_env, app_db, provider) -> World:
    # API keys may be made in headers mode too, given the server's key secret.
    config = Config.from_env({**worker_env, "TOLSTOY_API_KEY_SECRET": KEY_SECRET})
    client = testing.TestClient(create_app(config, app_db))
    org = client.simulate_post("/organizations", json={"name": "Acme"}).json
    user = client.simulate_post("/users", json={"email": "ada@example.com"}, headers={"X-Org-ID": org["id"]}).json
    auth = {"X-Org-ID": org["id"], "X-User-ID": user["id"]}
    return World("headers", client, org["id"], user["id"], auth, {}, {"userId": user["id"]}, provider)


def keyed_world(worker_env, app_db, provider) -> World:
    config = Config.from_env({**worker_env, "TOLSTOY_AUTH_MODE": "api_key", "TOLSTOY_API_KEY_SECRET": KEY_SECRET,
                              "TOLSTOY_ADMIN_TOKEN": ADMIN})
    client = testing.TestClient(create_app(config, app_db))
    created = client.simulate_post("/organizations", json={"name": "Acme"}, headers=bearer(ADMIN))
    assert created.status_code == 201, created.text
    first = created.json["apiKey"]
    user = client.simulate_post("/users", json={"email": "ada@example.com"}, headers=bearer(first)).json
    key = client.simulate_post("/api-keys", json={"name": "ada", "userId": user["id"],
                                                  "scopes": ["read", "write", "execute", "admin"]},
                               headers=bearer(first))
    assert key.status_code == 201, key.text
    actor = {"apiKeyPrefix": key.json["prefix"], "userId": user["id"]}
    return World("api_key", client, created.json["id"], user["id"], bearer(key.json["apiKey"]), bearer(ADMIN), actor,
                 provider)


@pytest.fixture(params=["headers", "api_key"])
def world(request, worker_env, app_db, provider) -> World:
    w = (headers_world(worker_env, app_db, provider) if request.param == "headers"
         else keyed_world(worker_env, app_db, provider))
    w.made["tool"] = w.tool()
    w.made["flow"] = w.flow()
    github = w.create("/tools", {"name": "GitHub", "key": "github", "baseUrl": provider.url("/"),
                                 "authType": "oauth2"})
    w.create(f"/tools/{github['id']}/auth", provider.credential())
    w.made["github"] = github
    return w


# ---- the recipes: one per changing route ------------------------------------------------
# Each makes what it needs, then sends the one request under test (with request id `rid`) and returns
# (result, [(action, target type, target id)]) of the events that request must write, in order.

Recipe = Callable[[World, str], tuple]


def _org_create(w: World, rid: str):
    result = w.call("POST", "/organizations", {"name": "New"}, headers=w.admin, request_id=rid)
    expected = [("organization.created", "organization", result.json["id"])]
    if w.mode == "api_key":  # an organization made with the admin token comes with its first key
        expected.append(("api_key.created", "api_key", result.json.get("apiKeyId") or "*"))
    return result, expected


def _org_change(method: str) -> Recipe:
    def recipe(w: World, rid: str):
        result = w.call(method, f"/organizations/{w.org}", {"name": f"Acme {method}"}, request_id=rid)
        return result, [("organization.updated", "organization", w.org)]
    return recipe


def _org_delete(w: World, rid: str):
    spare = w.organization()
    result = w.call("DELETE", f"/organizations/{spare['id']}", headers=w.admin, request_id=rid)
    expected = [("organization.deleted", "organization", spare["id"])]
    if w.mode == "api_key":  # its first key goes with it, first: one event per record
        expected.insert(0, ("api_key.deleted", "api_key", "*"))
    return result, expected


def _quotas(method: str) -> Recipe:
    """The operator sets an organization's quotas: the first override creates its row, later ones change it."""
    def recipe(w: World, rid: str):
        created = not getattr(w, "quotas_set", False)
        w.queued_runs = getattr(w, "queued_runs", 1000) + 1  # a new value each time: an update that changes nothing writes nothing
        result = w.call(method, f"/organizations/{w.org}/quotas", {"queuedRuns": w.queued_runs},
                        headers=w.admin, request_id=rid)
        w.quotas_set = True
        return result, [("quota.created" if created else "quota.updated", "quota", w.org)]
    return recipe


def _simple(path: str, make: Callable[[World], dict], kind: str, method: str, body: dict | None = None) -> Recipe:
    """Change (or delete) a record made by ``make``: one event of that record."""
    verb = "deleted" if method == "DELETE" else "updated"

    def recipe(w: World, rid: str):
        record = make(w)
        result = w.call(method, path.format(**record, **{k: v["id"] for k, v in w.made.items()}), body,
                        request_id=rid)
        return result, [(f"{kind}.{verb}", kind, record["id"])]
    return recipe


def _create(path: str, body: Callable[[World], dict], kind: str) -> Recipe:
    def recipe(w: World, rid: str):
        result = w.call("POST", path.format(**{k: v["id"] for k, v in w.made.items()}), body(w), request_id=rid)
        return result, [(f"{kind}.created", kind, result.json["id"])]
    return recipe


def _credential_create(w: World, rid: str):
    tool = w.tool()
    result = w.call("POST", f"/tools/{tool['id']}/auth",
                    {"type": "bearer", "name": "main", "config": {"token": SECRETS["bearer"]}}, request_id=rid)
    return result, [("tool_credential.created", "tool_credential", result.json["id"])]


def _credential_delete(named: bool) -> Recipe:
    def recipe(w: World, rid: str):
        tool = w.tool(authType="basic")
        made = w.create(f"/tools/{tool['id']}/auth", {"type": "basic", "name": "main",
                                                      "config": {"username": "ada",
                                                                 "password": SECRETS["password"]}})
        path = f"/tools/{tool['id']}/auth" + ("/main" if named else "")
        result = w.call("DELETE", path, request_id=rid)
        return result, [("tool_credential.deleted", "tool_credential", made["id"])]
    return recipe


def _secrets_create(w: World, rid: str):
    tool = w.tool()
    result = w.call("POST", f"/tools/{tool['id']}/secrets", {"credentials": {"token": SECRETS["compat"]}},
                    request_id=rid)
    return result, [("tool_credential.created", "tool_credential", "*")]


def _secrets_delete(w: World, rid: str):
    tool = w.tool(authType="apiKey")
    made = w.create(f"/tools/{tool['id']}/auth", {"type": "apiKey", "config": {"headerName": "X-Api-Key",
                                                                               "headerValue": SECRETS["header"]}})
    result = w.call("DELETE", f"/tools/{tool['id']}/secrets", request_id=rid)
    return result, [("tool_credential.deleted", "tool_credential", made["id"])]


def _oauth_credential(w: World) -> dict:
    tool = w.tool(authType="oauth2")
    w.create(f"/tools/{tool['id']}/auth", {"type": "oauth2", "config": {
        "clientId": "c", "clientSecret": SECRETS["client"], "tokenUrl": "https://auth.example.com/token",
        "accessToken": SECRETS["access"], "refreshToken": SECRETS["refresh"]}})
    return tool


def _connection_delete(w: World, rid: str):
    w.connect(new_request_id())
    github = w.made["github"]
    with_id = w.call("GET", f"/users/{w.user}/connections").json
    [connection] = [c for c in with_id if c["toolId"] == github["id"]]
    result = w.call("DELETE", f"/users/{w.user}/connections/{github['id']}", request_id=rid)
    return result, [("user_connection.deleted", "user_connection", connection["id"])]


def _key_revoke(w: World, rid: str):
    key = w.api_key()
    result = w.call("DELETE", f"/api-keys/{key['id']}", request_id=rid)
    return result, [("api_key.updated", "api_key", key["id"])]


def _trigger_put(w: World, rid: str):
    trigger = w.trigger()
    path = f"/flows/{w.made['flow']['id']}/triggers/{trigger['id']}"
    current = w.call("GET", path).json
    result = w.call("PUT", path, {**current, "enabled": False}, request_id=rid)
    return result, [("trigger.updated", "trigger", trigger["id"])]


def _webhook_put(w: World, rid: str):
    hook = w.webhook()
    current = w.call("GET", f"/webhooks/{hook['id']}").json
    result = w.call("PUT", f"/webhooks/{hook['id']}", {**current, "name": "Renamed"}, request_id=rid)
    return result, [("webhook.updated", "webhook", hook["id"])]


RECIPES: dict[tuple[str, str], Recipe] = {
    ("POST", "/organizations"): _org_create,
    ("PATCH", "/organizations/{id}"): _org_change("PATCH"),
    ("PUT", "/organizations/{id}"): _org_change("PUT"),
    ("DELETE", "/organizations/{id}"): _org_delete,
    ("PATCH", "/organizations/{id}/quotas"): _quotas("PATCH"),
    ("PUT", "/organizations/{id}/quotas"): _quotas("PUT"),
    ("POST", "/api-keys"): _create("/api-keys", lambda w: {"name": "another", "scopes": ["read"]}, "api_key"),
    ("DELETE", "/api-keys/{id}"): _key_revoke,
    ("POST", "/users"): _create("/users", lambda w: {"email": f"n-{new_id()}@example.com"}, "user"),
    ("PATCH", "/users/{id}"): _simple("/users/{id}", World.user_record, "user", "PATCH", {"name": "Lin"}),
    ("PUT", "/users/{id}"): _simple("/users/{id}", World.user_record, "user", "PUT", {"name": "Lin"}),
    ("DELETE", "/users/{id}"): _simple("/users/{id}", World.user_record, "user", "DELETE"),
    ("DELETE", "/users/{id}/connections/{tool_id}"): _connection_delete,
    ("POST", "/tools"): _create("/tools", lambda w: {"name": f"t-{new_id()}", "baseUrl": "https://x.example.com",
                                                      "authType": "none"}, "tool"),
    ("PATCH", "/tools/{id}"): _simple("/tools/{id}", World.tool, "tool", "PATCH", {"name": "Renamed"}),
    ("PUT", "/tools/{id}"): _simple("/tools/{id}", World.tool, "tool", "PUT", {"baseUrl": "https://y.example.com"}),
    ("DELETE", "/tools/{id}"): _simple("/tools/{id}", World.tool, "tool", "DELETE"),
    ("POST", "/tools/{id}/secrets"): _secrets_create,
    ("DELETE", "/tools/{id}/secrets"): _secrets_delete,
    ("POST", "/tools/{id}/auth"): _credential_create,
    ("DELETE", "/tools/{id}/auth"): _credential_delete(named=False),
    ("DELETE", "/tools/{id}/auth/{name}"): _credential_delete(named=True),
    ("POST", "/actions"): _create("/actions", lambda w: {"toolId": w.made["tool"]["id"], "name": "A",
                                                          "key": f"k.{new_id()}", "method": "GET",
                                                          "endpoint": "/a"}, "action"),
    ("PATCH", "/actions/{id}"): _simple("/actions/{id}", World.action, "action", "PATCH", {"endpoint": "/b"}),
    ("PUT", "/actions/{id}"): _simple("/actions/{id}", World.action, "action", "PUT", {"name": "Renamed"}),
    ("DELETE", "/actions/{id}"): _simple("/actions/{id}", World.action, "action", "DELETE"),
    ("POST", "/flows"): _create("/flows", lambda w: {"steps": [{"id": "b", "type": "transform",
                                                                 "config": {"output": 2}}]}, "flow"),
    ("PATCH", "/flows/{id}"): _simple("/flows/{id}", World.flow, "flow", "PATCH",
                                      {"steps": [{"id": "c", "type": "transform", "config": {"output": 3}}]}),
    ("PUT", "/flows/{id}"): _simple("/flows/{id}", World.flow, "flow", "PUT", {"description": "new"}),
    ("DELETE", "/flows/{id}"): _simple("/flows/{id}", World.flow, "flow", "DELETE"),
    ("POST", "/flows/{id}/triggers"): _create("/flows/{flow}/triggers",
                                              lambda w: {"type": "webhook", "verification": "stripe",
                                                         "secret": SECRETS["trigger"]}, "trigger"),
    ("PATCH", "/flows/{id}/triggers/{trigger_id}"): _simple("/flows/{flow}/triggers/{id}", World.trigger, "trigger",
                                                            "PATCH", {"enabled": False}),
    ("PUT", "/flows/{id}/triggers/{trigger_id}"): _trigger_put,
    ("DELETE", "/flows/{id}/triggers/{trigger_id}"): _simple("/flows/{flow}/triggers/{id}", World.trigger,
                                                             "trigger", "DELETE"),
    ("POST", "/webhooks"): _create("/webhooks", lambda w: {"name": "W", "url": "https://hooks.example.com/w",
                                                           "eventTypes": ["flow.completed"]}, "webhook"),
    ("PATCH", "/webhooks/{id}"): _simple("/webhooks/{id}", World.webhook, "webhook", "PATCH",
                                         {"headers": {"Authorization": SECRETS["webhook_header"] + "2"}}),
    ("PUT", "/webhooks/{id}"): _webhook_put,
    ("DELETE", "/webhooks/{id}"): _simple("/webhooks/{id}", World.webhook, "webhook", "DELETE"),
    ("PATCH", "/webhooks/{id}/toggle"): _simple("/webhooks/{id}/toggle", World.webhook, "webhook", "PATCH"),
}


def changing_routes(config, app_db) -> set[tuple[str, str]]:
    """Every (method, URI template) of the app that may change something."""
    methods = allowed_methods(build_routes(app_db, config))
    return {(method, template) for template, allowed in methods.items()
            for method in allowed if method not in ("GET", "HEAD", "OPTIONS")}


def test_every_changing_route_is_audited_or_listed_as_no_configuration(config, app_db):
    routes = changing_routes(config, app_db)
    assert not set(RECIPES) & set(NOT_CONFIGURATION)
    assert routes - set(RECIPES) - set(NOT_CONFIGURATION) == set(), \
        "changing routes with neither an audit recipe nor a reason they change no configuration"
    assert (set(RECIPES) | set(NOT_CONFIGURATION)) - routes == set(), "recipes or reasons of routes that are gone"
    assert all(len(reason) > 20 for reason in NOT_CONFIGURATION.values())


def test_each_kind_of_change_writes_exactly_its_events_with_the_right_actor(world, db):
    problems = []
    for (method, template), recipe in RECIPES.items():
        rid = new_request_id()
        result, expected = recipe(world, rid)
        if result.status_code >= 400:
            problems.append(f"{method} {template}: {result.status_code} {result.text}")
            continue
        found = events_of(db, rid)
        # Events of one transaction share their time: compared as a set ("*": any id of that kind).
        shape = sorted((e["action"], e["target_type"], e["target_id"]) for e in found)
        ids = {(e["action"], e["target_type"]): e["target_id"] for e in found}
        wanted = sorted((a, t, ids.get((a, t), i) if i == "*" else i) for a, t, i in expected)
        if shape != wanted:
            problems.append(f"{method} {template}: events {shape}, expected {wanted}")
            continue
        # /organizations: the operator's door (the admin token; the gateway in headers mode), except
        # that an organization's own key may rename its organization (never change its quotas).
        admin = template.startswith("/organizations") and (world.mode == "headers" or method in ("POST", "DELETE")
                                                           or template.endswith("/quotas"))
        actor = {"admin": True} if admin else world.actor
        for event in found:
            if event["actor"] != actor:
                problems.append(f"{method} {template}: actor {event['actor']}, expected {actor}")
            if not event["changes"]:
                problems.append(f"{method} {template}: no changes recorded")
    assert not problems, "\n".join(problems)


def test_an_oauth_connection_is_recorded_as_made_by_its_user(world, db):
    rid = new_request_id()
    world.connect(rid)
    [event] = events_of(db, rid)
    assert (event["action"], event["target_type"], event["org_id"]) == (
        "user_connection.created", "user_connection", world.org)
    assert event["actor"] == {"userId": world.user}
    assert event["changes"]["tokens"] == [None, "***"]
    # Connecting again replaces the tokens: one event, the tokens shown only as changed.
    again = new_request_id()
    world.connect(again)
    [event] = events_of(db, again)
    assert event["action"] == "user_connection.updated" and event["changes"]["tokens"] == ["***", "***"]


def test_a_change_that_changes_nothing_writes_nothing_and_a_refused_one_neither(world, db):
    tool = world.tool()
    same = new_request_id()
    assert world.call("PATCH", f"/tools/{tool['id']}", {"name": tool["name"]}, request_id=same).status_code == 200
    refused = new_request_id()
    result = world.call("PATCH", f"/tools/{tool['id']}", {"name": "x", "baseUrl": "ftp://no"}, request_id=refused)
    assert result.status_code == 400
    conflict = new_request_id()
    world.create("/actions", {"toolId": tool["id"], "name": "A", "key": "k.keep", "method": "GET", "endpoint": "/a"})
    assert world.call("DELETE", f"/tools/{tool['id']}", request_id=conflict).status_code == 409
    assert events_of(db, same) == events_of(db, refused) == events_of(db, conflict) == []


def test_no_secret_value_ever_appears_in_an_event(world, db):
    """Every secret-bearing field of the API, set and changed: the events say a secret changed, never
    what it is (credentials, compat secrets, OAuth client secret and tokens, trigger signing secrets,
    webhook secrets and header values, an action's Authorization header, API keys)."""
    made = [
        world.create(f"/tools/{world.tool()['id']}/auth", {"type": "bearer", "config": {"token": SECRETS["bearer"]}}),
        world.create(f"/tools/{world.tool(authType='basic')['id']}/auth",
                     {"type": "basic", "config": {"username": "u", "password": SECRETS["password"]}}),
        world.create(f"/tools/{world.tool(authType='apiKey')['id']}/auth",
                     {"type": "apiKey", "config": {"headerName": "X-Key", "headerValue": SECRETS["header"]}}),
    ]
    _oauth_credential(world)
    compat = world.tool()
    assert world.call("POST", f"/tools/{compat['id']}/secrets",
                      {"credentials": {"token": SECRETS["compat"]}}).status_code == 201
    trigger = world.create(f"/flows/{world.made['flow']['id']}/triggers",
                           {"type": "webhook", "verification": "stripe", "secret": SECRETS["trigger"]})
    hook = world.webhook()
    assert world.call("PATCH", f"/webhooks/{hook['id']}",
                      {"headers": {"Authorization": SECRETS["webhook_header"] + "-2"}}).status_code == 200
    action = world.action()
    assert world.call("PATCH", f"/actions/{action['id']}",
                      {"headers": {"Authorization": SECRETS["action_header"] + "-2"}}).status_code == 200
    key = world.api_key()
    world.connect(new_request_id())
    assert made and trigger["secret"] and hook["secret"] and key["apiKey"]
    stored = all_events_text(db)
    shown = world.call("GET", "/audit-events", params={"limit": "100"}).text
    assert "tool_credential.created" in stored and "***" in stored
    for text in (stored, shown):
        for name, secret in {**SECRETS, "trigger secret": trigger["secret"], "webhook secret": hook["secret"],
                             "api key": key["apiKey"]}.items():
            assert secret not in text, name
            assert secret.split(" ")[-1][:20] not in text, name
    # The OAuth tokens the provider issued (ada's) are in no event either.
    for token in world.provider.refresh_tokens:
        assert token not in stored


def test_another_organization_never_sees_an_event(world, db):
    tool = world.tool()
    if world.mode == "headers":
        other = world.client.simulate_post("/organizations", json={"name": "Other"}).json
        theirs = {"X-Org-ID": other["id"]}
    else:
        other = world.client.simulate_post("/organizations", json={"name": "Other"}, headers=bearer(ADMIN)).json
        theirs = bearer(other["apiKey"])
    mine = world.call("GET", "/audit-events", params={"targetId": tool["id"]})
    assert mine.status_code == 200 and [e["target"]["id"] for e in mine.json] == [tool["id"]]
    seen = world.call("GET", "/audit-events", headers=theirs, params={"limit": "100"})
    assert seen.status_code == 200, seen.text
    assert all(event["orgId"] == other["id"] for event in seen.json)
    assert tool["id"] not in seen.text and world.org not in seen.text
    by_target = world.call("GET", "/audit-events", headers=theirs, params={"targetId": tool["id"]})
    assert by_target.status_code == 200 and by_target.json == []


def test_the_list_filters_by_target_and_actor_and_pages_newest_first(world):
    tools = [world.tool() for _ in range(3)]
    for tool in tools:
        assert world.call("PATCH", f"/tools/{tool['id']}", {"name": f"renamed-{tool['id'][:8]}"}).status_code == 200
    page = world.call("GET", "/audit-events", params={"targetType": "tool", "limit": "2"})
    assert page.status_code == 200, page.text
    assert [e["action"] for e in page.json] == ["tool.updated", "tool.updated"]
    assert page.json[0]["target"]["id"] == tools[2]["id"]
    seen = [e["id"] for e in page.json]
    cursor = page.headers["x-next-cursor"]
    while cursor:
        nxt = world.call("GET", "/audit-events", params={"targetType": "tool", "limit": "2", "cursor": cursor})
        seen += [e["id"] for e in nxt.json]
        cursor = nxt.headers.get("x-next-cursor")
    assert len(seen) == len(set(seen)) >= 2 * 3 + 1
    one = world.call("GET", "/audit-events", params={"targetType": "tool", "targetId": tools[0]["id"]}).json
    assert [e["action"] for e in one] == ["tool.updated", "tool.created"]
    assert one[0]["changes"] == {"name": [tools[0]["name"], f"renamed-{tools[0]['id'][:8]}"]}
    assert set(one[0]) == {"id", "orgId", "actor", "action", "target", "changes", "requestId", "at"}
    if world.mode == "headers":
        mine = world.call("GET", "/audit-events", params={"actorUserId": world.user, "limit": "100"}).json
        assert mine and all(e["actor"] == {"userId": world.user} for e in mine)
    else:
        mine = world.call("GET", "/audit-events", params={"actorApiKeyPrefix": world.actor["apiKeyPrefix"],
                                                         "limit": "100"}).json
        assert mine and all(e["actor"] == world.actor for e in mine)
    admins = world.call("GET", "/audit-events", params={"actorAdmin": "true"}).json
    # Made in one transaction (the organization and, with the admin token, its first key): one time.
    assert sorted(e["action"] for e in admins) == (["organization.created"] if world.mode == "headers"
                                                   else ["api_key.created", "organization.created"])
    for bad in ({"targetType": "nope"}, {"targetId": "x"}, {"actorUserId": "x"}, {"cursor": "!!"}, {"limit": "0"}):
        result = world.call("GET", "/audit-events", params=bad)
        assert result.status_code == 400 and result.json["errors"][0]["field"] == next(iter(bad)), result.text


def test_reading_events_needs_the_admin_scope_in_api_key_mode(worker_env, app_db, provider):
    w = keyed_world(worker_env, app_db, provider)
    reader = w.create("/api-keys", {"name": "writer", "scopes": ["read", "write"]})
    refused = w.call("GET", "/audit-events", headers=bearer(reader["apiKey"]))
    assert refused.status_code == 403 and "admin" in refused.json["message"], refused.text
    assert w.call("GET", "/audit-events").status_code == 200


def test_the_services_cannot_write_change_or_delete_an_event(world, database_url):
    world.tool()
    for role in (migrate.APP_ROLE, migrate.WORKER_ROLE, migrate.ADMIN_ROLE):
        for statement in (
            "update audit_events set action = 'forged'",
            "delete from audit_events",
            "insert into audit_events (org_id, actor, action, target_type, target_id, changes) "
            f"values ('{world.org}', '{{}}', 'forged', 'tool', '{world.org}', '{{}}')",
            "truncate audit_events",
        ):
            with psycopg.connect(migrate.as_role(database_url, role), autocommit=True) as conn:
                conn.execute("select set_config('app.org_id', %s, false)", (world.org,))
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
    # What tolstoy_app may do is read its organization's events, as the API does.
    with psycopg.connect(migrate.as_role(database_url, migrate.APP_ROLE), autocommit=True) as conn:
        conn.execute("select set_config('app.org_id', %s, false)", (world.org,))
        assert conn.execute("select count(*) from audit_events").fetchone()[0] >= 2


def test_the_console_shows_the_audit_trail_to_whom_the_api_would(world):
    tool = world.tool()
    assert world.call("PATCH", f"/tools/{tool['id']}", {"name": "Console-renamed"}).status_code == 200
    path = f"/console/orgs/{world.org}/audit"
    auth = {} if world.mode == "headers" else world.auth
    page = world.client.simulate_get(path, headers=auth)
    assert page.status_code == 200, page.text
    assert "tool.updated" in page.text and "Console-renamed" in page.text and tool["id"] in page.text
    assert 'aria-current="page">Audit trail' in page.text
    one = world.client.simulate_get(path, params={"type": "tool", "target": tool["id"]}, headers=auth)
    assert one.status_code == 200 and one.text.count("<tr>") == 1 + 2  # header row, updated, created
    assert world.client.simulate_get(path, params={"type": "nope"}, headers=auth).status_code == 400
    assert world.client.simulate_get(path, params={"target": "x"}, headers=auth).status_code == 400
    if world.mode == "api_key":
        reader = world.create("/api-keys", {"name": "reader", "scopes": ["read"]})
        refused = world.client.simulate_get(path, headers=bearer(reader["apiKey"]))
        assert refused.status_code == 403 and "admin" in refused.text
        assert world.client.simulate_get(f"/console/orgs/{world.org}/flows",
                                         headers=bearer(reader["apiKey"])).status_code == 200
        other = world.client.simulate_post("/organizations", json={"name": "Other"}, headers=bearer(ADMIN)).json
        assert world.client.simulate_get(f"/console/orgs/{other['id']}/audit", headers=auth).status_code == 404
    else:
        other = world.client.simulate_post("/organizations", json={"name": "Other"}).json
        theirs = world.client.simulate_get(f"/console/orgs/{other['id']}/audit")
        assert theirs.status_code == 200 and tool["id"] not in theirs.text


def test_recording_costs_no_statement_and_no_round_trip(client, api, org, user, app_db, db):
    """The event rides in the change's own statement (the trigger) and the actor in the statement that
    opens the unit of work: the counts of tests/api/test_round_trips.py, with the event written."""
    tool = api.tool(org)
    headers = {**api.headers(org, user)}

    def counted(method, path, body=None):
        rid = new_request_id()
        before = app_db.counts.snapshot()
        result = client.simulate_request(method, path, json=body, headers={**headers, "X-Request-ID": rid})
        after = app_db.counts.snapshot()
        return result, {k: after[k] - before[k] for k in after}, events_of(db, rid)

    result, cost, events = counted("POST", "/tools", {"name": "Slack", "baseUrl": "https://slack.com/api",
                                                      "authType": "bearer"})
    assert result.status_code == 201 and [e["action"] for e in events] == ["tool.created"]
    assert cost == {"statements": 2, "round_trips": 1, "transactions": 1}
    result, cost, events = counted("PATCH", f"/tools/{tool['id']}", {"name": "GitHub 2"})
    assert result.status_code == 200 and [e["action"] for e in events] == ["tool.updated"]
    assert cost["round_trips"] == 2 and cost["transactions"] == 1
    result, cost, events = counted("DELETE", f"/tools/{result.json['id']}")
    assert result.status_code == 204 and [e["action"] for e in events] == ["tool.deleted"]
    assert cost["round_trips"] == 2 and cost["transactions"] == 1


def test_writes_outside_a_configuration_request_record_nothing(world, db):
    """The engine's own writes (a webhook disabled after failures, here as SQL with no actor set) are
    not changes anyone made; and a request's actor does not outlive the request on its thread."""
    hook = world.webhook()
    assert database._audit.get() == ""
    with db.pool.connection() as conn:
        conn.execute("update webhooks set enabled = false, disabled_reason = 'failing' where id = %s", (hook["id"],))
        assert conn.execute("select count(*) as n from audit_events where target_id = %s",
                            (hook["id"],)).fetchone()["n"] == 1  # its creation only
    # A run executed through the API is no configuration change either.
    rid = new_request_id()
    result = world.call("POST", f"/flows/{world.made['flow']['id']}/execute", {}, request_id=rid,
                        headers={**world.auth, "X-User-ID": world.user})
    assert result.status_code in (200, 202), result.text
    assert events_of(db, rid) == []
