"""API-key mode (TOLSTOY_AUTH_MODE=api_key): keys, the admin token, and proof
that one organization's key cannot read, change, delete, count or detect
another organization's rows on any route."""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest
from falcon import testing

from tolstoy.api.app import create_app
from tolstoy.config import Config

ADMIN = "admin-token-" + "a" * 40
KEY_SECRET = "key-secret-" + "k" * 40


@pytest.fixture
def keyed(worker_env, app_db):
    """A client of the app in api_key mode."""
    config = Config.from_env({**worker_env, "TOLSTOY_AUTH_MODE": "api_key",
                              "TOLSTOY_API_KEY_SECRET": KEY_SECRET, "TOLSTOY_ADMIN_TOKEN": ADMIN})
    return testing.TestClient(create_app(config, app_db))


def bearer(token: str, **headers) -> dict:
    return {"Authorization": f"Bearer {token}", **headers}


def new_org(client, name: str) -> tuple[dict, str]:
    result = client.simulate_post("/organizations", json={"name": name}, headers=bearer(ADMIN))
    assert result.status_code == 201, result.text
    return result.json, result.json["apiKey"]


def test_admin_creates_organizations_and_gets_a_key_once(keyed):
    org, key = new_org(keyed, "Acme")
    assert key.startswith("tsk_") and len(key) > 40
    assert keyed.simulate_post("/organizations", json={"name": "x"}).status_code == 401
    assert keyed.simulate_post("/organizations", json={"name": "x"}, headers=bearer("nope")).status_code == 401
    # An organization's own key cannot create organizations.
    assert keyed.simulate_post("/organizations", json={"name": "x"}, headers=bearer(key)).status_code == 403
    listed = keyed.simulate_get("/api-keys", headers=bearer(key)).json
    assert [(k["name"], k["prefix"]) for k in listed] == [("default", key[:12])]
    assert "apiKey" not in listed[0] and key not in json.dumps(listed)


def test_missing_invalid_and_revoked_keys_get_401_with_a_challenge(keyed):
    org, key = new_org(keyed, "Acme")
    for headers in ({}, bearer("tsk_not-a-real-key"), {"Authorization": "Basic abc"}, {"X-Org-ID": org["id"]}):
        result = keyed.simulate_get("/users", headers=headers)
        assert result.status_code == 401, headers
        assert result.headers["www-authenticate"] == "Bearer"
        assert result.json["statusCode"] == 401 and result.json["error"] == "Unauthorized"
    assert keyed.simulate_get("/users", headers=bearer(key)).status_code == 200
    second = keyed.simulate_post("/api-keys", json={"name": "ci"}, headers=bearer(key))
    assert second.status_code == 201 and set(second.json) >= {"id", "name", "prefix", "apiKey", "createdAt"}
    other_key = second.json["apiKey"]
    assert keyed.simulate_delete(f"/api-keys/{second.json['id']}", headers=bearer(key)).status_code == 204
    assert keyed.simulate_get("/users", headers=bearer(other_key)).status_code == 401
    assert keyed.simulate_delete(f"/api-keys/{second.json['id']}", headers=bearer(key)).status_code == 404
    assert keyed.simulate_get("/users", headers=bearer(key)).status_code == 200


def test_x_org_id_must_match_the_key(keyed):
    org_a, key_a = new_org(keyed, "A")
    org_b, _ = new_org(keyed, "B")
    assert keyed.simulate_get("/users", headers=bearer(key_a, **{"X-Org-ID": org_a["id"]})).status_code == 200
    forbidden = keyed.simulate_get("/users", headers=bearer(key_a, **{"X-Org-ID": org_b["id"]}))
    assert forbidden.status_code == 403 and forbidden.json["statusCode"] == 403


def test_last_used_at_is_recorded(keyed):
    _, key = new_org(keyed, "A")
    assert keyed.simulate_get("/api-keys", headers=bearer(key)).json[0]["lastUsedAt"] is not None


def test_an_org_key_sees_only_its_own_organization(keyed):
    org_a, key_a = new_org(keyed, "A")
    org_b, _ = new_org(keyed, "B")
    assert [o["id"] for o in keyed.simulate_get("/organizations", headers=bearer(key_a)).json] == [org_a["id"]]
    assert {o["id"] for o in keyed.simulate_get("/organizations", headers=bearer(ADMIN)).json} == {org_a["id"], org_b["id"]}
    assert keyed.simulate_get(f"/organizations/{org_b['id']}", headers=bearer(key_a)).status_code == 404
    assert keyed.simulate_patch(f"/organizations/{org_b['id']}", json={"name": "x"},
                                headers=bearer(key_a)).status_code == 404
    assert keyed.simulate_delete(f"/organizations/{org_b['id']}", headers=bearer(key_a)).status_code == 404
    renamed = keyed.simulate_patch(f"/organizations/{org_a['id']}", json={"name": "A2"}, headers=bearer(key_a))
    assert renamed.status_code == 200 and renamed.json["name"] == "A2"
    assert keyed.simulate_delete(f"/organizations/{org_a['id']}", headers=bearer(key_a)).status_code == 403
    # The admin token is not a tenant key.
    assert keyed.simulate_get("/users", headers=bearer(ADMIN)).status_code == 401


def populate(client, key: str) -> dict:
    """One record of every kind in the key's organization; returns their ids."""
    h = bearer(key)
    user = client.simulate_post("/users", json={"email": "ada@a.example"}, headers=h).json
    h_user = bearer(key, **{"X-User-ID": user["id"]})
    tool = client.simulate_post("/tools", json={"name": "T", "baseUrl": "https://t.example", "authType": "bearer"},
                                headers=h).json
    client.simulate_post(f"/tools/{tool['id']}/auth", json={"type": "bearer", "config": {"token": "secret-token-a"}},
                         headers=h)
    action = client.simulate_post("/actions", json={"toolId": tool["id"], "name": "A", "key": "a.get",
                                                    "method": "GET", "endpoint": "/a"}, headers=h).json
    flow = client.simulate_post("/flows", json={"steps": [{"id": "s", "type": "transform", "config": {"output": 1}}]},
                                headers=h).json
    log = client.simulate_post("/execution-logs", json={"flowId": flow["id"], "executionId": "run-a", "stepKey": "s",
                                                        "status": "completed", "inputs": {}}, headers=h_user).json
    run = client.simulate_post(f"/flows/{flow['id']}/execute", json={}, headers=h_user).json
    api_key = client.simulate_get("/api-keys", headers=h).json[0]
    return {"user": user["id"], "tool": tool["id"], "action": action["id"], "flow": flow["id"], "log": log["id"],
            "run": run["executionId"], "api_key": api_key["id"]}


def test_another_organizations_key_cannot_read_change_delete_count_or_detect(keyed, db):
    _, key_a = new_org(keyed, "A")
    _, key_b = new_org(keyed, "B")
    a = populate(keyed, key_a)
    b_user = keyed.simulate_post("/users", json={"email": "bob@b.example"}, headers=bearer(key_b)).json
    hb = bearer(key_b)
    hb_user = bearer(key_b, **{"X-User-ID": b_user["id"]})
    # Item routes: 404, exactly as for an id that does not exist.
    item_requests = [
        ("GET", f"/users/{a['user']}"), ("PATCH", f"/users/{a['user']}"), ("PUT", f"/users/{a['user']}"),
        ("DELETE", f"/users/{a['user']}"),
        ("GET", f"/tools/{a['tool']}"), ("PATCH", f"/tools/{a['tool']}"), ("DELETE", f"/tools/{a['tool']}"),
        ("GET", f"/tools/{a['tool']}/auth"), ("POST", f"/tools/{a['tool']}/auth"),
        ("DELETE", f"/tools/{a['tool']}/auth/default"),
        ("GET", f"/actions/{a['action']}"), ("PATCH", f"/actions/{a['action']}"), ("DELETE", f"/actions/{a['action']}"),
        ("POST", f"/actions/{a['action']}/execute"),
        ("GET", f"/flows/{a['flow']}"), ("PATCH", f"/flows/{a['flow']}"), ("DELETE", f"/flows/{a['flow']}"),
        ("GET", f"/flows/{a['flow']}/versions"), ("GET", f"/flows/{a['flow']}/versions/1"),
        ("POST", f"/flows/{a['flow']}/execute"), ("GET", f"/flows/{a['flow']}/executions"),
        ("GET", f"/flows/{a['flow']}/executions/{a['run']}"),
        ("POST", f"/flows/{a['flow']}/executions/{a['run']}/cancel"),
        ("POST", f"/flows/{a['flow']}/executions/{a['run']}/retry"),
        ("GET", f"/flows/{a['flow']}/metrics"),
        ("GET", f"/execution-logs/{a['log']}"), ("PATCH", f"/execution-logs/{a['log']}"),
        ("DELETE", f"/execution-logs/{a['log']}"),
        ("DELETE", f"/api-keys/{a['api_key']}"),
    ]
    bodies = {"PATCH": {"name": "stolen"}, "PUT": {"name": "stolen"},
              "POST": {"inputs": {}, "type": "bearer", "config": {"token": "x"}}}
    for method, path in item_requests:
        body = {} if path.endswith("/execute") and "flows" in path else bodies.get(method)
        if path.endswith("/auth") and method == "POST":
            body = {"type": "bearer", "config": {"token": "x"}}
        result = keyed.simulate_request(method, path, json=body, headers=hb_user)
        assert result.status_code == 404, (method, path, result.status_code, result.text)
    # Lists and filters: nothing of A, not even through a filter naming A's ids.
    for path, params in [("/users", {}), ("/users", {"email": "ada@a.example"}), ("/tools", {}), ("/actions", {}),
                         ("/actions", {"toolId": a["tool"]}), ("/flows", {}), ("/execution-logs", {}),
                         ("/execution-logs", {"flowId": a["flow"]}), ("/execution-logs", {"userId": a["user"]}),
                         ("/execution-logs", {"executionId": "run-a"}), ("/api-keys", {})]:
        result = keyed.simulate_get(path, params=params, headers=hb)
        assert result.status_code == 200
        assert not (set(json.dumps(result.json).split('"')) & set(a.values())), (path, params)
        if path != "/users" and path != "/api-keys":
            assert result.json == [], (path, params)
    # References inside bodies: a 400 naming the field, as for ids that do not exist.
    for path, body, field in [
        ("/actions", {"toolId": a["tool"], "name": "x", "key": "x", "method": "GET", "endpoint": "/"}, "toolId"),
        ("/execution-logs", {"flowId": a["flow"], "executionId": "r", "stepKey": "s", "status": "completed",
                             "inputs": {}}, "flowId"),
        ("/flows", {"steps": [{"id": "s", "type": "action", "config": {"actionId": a["action"]}}]},
         "steps[0].config.actionId"),
    ]:
        result = keyed.simulate_post(path, json=body, headers=hb_user)
        assert result.status_code == 400 and result.json["errors"][0]["field"] == field, (path, result.text)
    # Nothing of A changed.
    with db.pool.connection() as conn:
        counts = conn.execute(
            "select (select count(*) from users where id = %(u)s) u, (select count(*) from tools where id = %(t)s) t, "
            "(select name from tools where id = %(t)s) tool_name, "
            "(select count(*) from tool_credentials where tool_id = %(t)s) c, "
            "(select count(*) from api_keys where id = %(k)s and revoked_at is null) k",
            {"u": a["user"], "t": a["tool"], "k": a["api_key"]}).fetchone()
    assert counts == {"u": 1, "t": 1, "tool_name": "T", "c": 1, "k": 1}


def test_keys_never_reach_the_logs(keyed, caplog):
    caplog.set_level(logging.DEBUG)
    _, key = new_org(keyed, "A")
    keyed.simulate_get("/users", headers=bearer(key))
    keyed.simulate_get("/users", headers=bearer(key + "x"))
    created = keyed.simulate_post("/api-keys", json={"name": "two"}, headers=bearer(key)).json["apiKey"]
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for secret in (key, created, ADMIN, KEY_SECRET):
        assert secret not in text


def make_key(client, key: str, **body) -> dict:
    result = client.simulate_post("/api-keys", json={"name": "scoped", **body}, headers=bearer(key))
    assert result.status_code == 201, result.text
    return result.json


def test_a_key_does_only_what_its_scopes_allow(keyed):
    org, admin_key = new_org(keyed, "Scoped")
    user = keyed.simulate_post("/users", json={"email": "s@example.com"}, headers=bearer(admin_key)).json
    flow = keyed.simulate_post("/flows", json={"name": "F", "steps": [
        {"id": "a", "type": "transform", "config": {"output": 1}}]}, headers=bearer(admin_key)).json
    reader = make_key(keyed, admin_key, scopes=["read"])
    assert reader["scopes"] == ["read"] and reader["expiresAt"] is None
    runner = make_key(keyed, admin_key, scopes=["read", "execute"])["apiKey"]
    writer = make_key(keyed, admin_key, scopes=["write"])["apiKey"]
    reader = reader["apiKey"]

    def status(method, path, key, body=None):
        headers = bearer(key, **{"X-User-ID": user["id"]})
        return keyed.simulate_request(method, path, json=body, headers=headers)

    assert status("GET", "/flows", reader).status_code == 200
    refused = status("POST", "/flows", reader, {"name": "G", "steps": [{"id": "a", "type": "transform",
                                                                        "config": {"output": 1}}]})
    assert refused.status_code == 403 and "'write' scope" in refused.json["message"]
    assert status("POST", f"/flows/{flow['id']}/execute", reader, {}).status_code == 403
    assert status("POST", f"/flows/{flow['id']}/execute", runner, {}).status_code == 202
    assert status("POST", f"/flows/{flow['id']}/execute", writer, {}).status_code == 403
    # Moving a run to another version acts on a run, as cancel and retry do: execute, not write.
    queued = status("POST", f"/flows/{flow['id']}/execute", runner, {}).json["executionId"]
    move = f"/flows/{flow['id']}/executions/{queued}/move"
    assert status("POST", move, writer, {"version": 1}).status_code == 403
    assert status("POST", move, reader, {"version": 1}).status_code == 403
    assert status("POST", move, runner, {"version": 1}).status_code == 409  # allowed; not parked
    # A re-run starts a run, as a retry does.
    rerun = f"/flows/{flow['id']}/executions/{queued}/rerun"
    assert status("POST", rerun, writer, {"fromStep": "x"}).status_code == 403
    assert status("POST", rerun, reader, {"fromStep": "x"}).status_code == 403
    assert status("POST", rerun, runner, {"fromStep": "x"}).status_code in (400, 409)  # allowed; not finished
    assert status("GET", "/flows", writer).status_code == 403  # writing is not reading
    assert status("PATCH", f"/flows/{flow['id']}", writer, {"name": "G"}).status_code == 200
    # Keys are the admin scope's business, and no key hands out more than it holds.
    assert status("GET", "/api-keys", runner).status_code == 403
    assert status("POST", "/api-keys", runner, {"name": "x"}).status_code == 403
    listed = status("GET", "/api-keys", admin_key).json
    assert {tuple(k["scopes"]) for k in listed} >= {("read",), ("read", "execute"), ("write",)}


def test_scopes_and_expiry_are_validated_and_an_expired_key_is_refused(keyed, db):
    org, key = new_org(keyed, "Expiring")
    for body, field in (({"scopes": ["root"]}, "scopes"), ({"scopes": []}, "scopes"),
                        ({"scopes": ["read", "read"]}, "scopes"), ({"expiresAt": "2020-01-01T00:00:00Z"}, "expiresAt"),
                        ({"expiresAt": "tomorrow"}, "expiresAt"), ({"expiresAt": "2099-01-01T00:00:00"}, "expiresAt")):
        result = keyed.simulate_post("/api-keys", json={"name": "x", **body}, headers=bearer(key))
        assert result.status_code == 400 and field in json.dumps(result.json), (body, result.text)
    soon = make_key(keyed, key, expiresAt="2099-01-01T00:00:00Z")
    assert soon["expiresAt"] == "2099-01-01T00:00:00.000Z"
    assert keyed.simulate_get("/users", headers=bearer(soon["apiKey"])).status_code == 200
    with db.pool.connection() as conn:  # time passes
        conn.execute("update api_keys set created_at = now() - interval '2 days', "
                     "expires_at = now() - interval '1 second' where id = %s", (soon["id"],))
    expired = keyed.simulate_get("/users", headers=bearer(soon["apiKey"]))
    assert expired.status_code == 401 and "expired" in expired.json["message"]


def test_a_keys_expiry_is_judged_by_the_clock_that_expires_it(keyed, clock):
    # The database expires keys by tolstoy_now(); the API's "in the future" must read the same clock, or
    # it accepts a key that is expired the moment it is made.
    _, key = new_org(keyed, "Ahead")
    clock.move(2 * 24 * 3600)
    real_tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat().replace("+00:00", "Z")
    past = keyed.simulate_post("/api-keys", json={"name": "x", "expiresAt": real_tomorrow}, headers=bearer(key))
    assert past.status_code == 400 and past.json["errors"][0]["field"] == "expiresAt", past.text
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).isoformat().replace("+00:00", "Z")
    assert keyed.simulate_get("/users", headers=bearer(make_key(keyed, key, expiresAt=later)["apiKey"])).status_code == 200


def test_a_key_cannot_outlive_the_key_that_creates_it(keyed):
    _, key = new_org(keyed, "Mortal")
    parent = make_key(keyed, key, expiresAt="2099-01-01T00:00:00Z")
    assert make_key(keyed, parent["apiKey"])["expiresAt"] == "2099-01-01T00:00:00.000Z"  # inherits it
    assert make_key(keyed, parent["apiKey"], expiresAt="2098-06-01T00:00:00Z")["expiresAt"].startswith("2098-06-01")
    later = keyed.simulate_post("/api-keys", json={"name": "x", "expiresAt": "2100-01-01T00:00:00Z"},
                                headers=bearer(parent["apiKey"]))
    assert later.status_code == 400 and later.json["errors"][0]["field"] == "expiresAt", later.text
    assert make_key(keyed, key)["expiresAt"] is None  # a key without expiry makes keys without one


def test_the_openapi_document_names_the_api_key_scheme_and_scopes(keyed):
    spec = keyed.simulate_get("/openapi.json").json
    scheme = spec["components"]["securitySchemes"]["apiKey"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert all(scope in scheme["description"] for scope in ("read", "write", "execute", "admin"))
    assert {"apiKey": []} in spec["security"]


def test_a_key_may_be_bound_to_a_user_and_impersonate_is_given_only_by_name(keyed):
    _, root = new_org(keyed, "Bound")
    _, other_root = new_org(keyed, "Other")
    # An organization's first key holds every scope, impersonate included …
    [first] = keyed.simulate_get("/api-keys", headers=bearer(root)).json
    assert first["scopes"] == ["read", "write", "execute", "admin", "impersonate"] and first["userId"] is None
    ada = keyed.simulate_post("/users", json={"email": "ada@b.example"}, headers=bearer(root)).json
    bob = keyed.simulate_post("/users", json={"email": "bob@b.example"}, headers=bearer(root)).json
    stranger = keyed.simulate_post("/users", json={"email": "s@o.example"}, headers=bearer(other_root)).json
    # … a key made without scopes the four of old: acting as users is never given by default.
    plain = make_key(keyed, root)
    assert plain["scopes"] == ["read", "write", "execute", "admin"] and plain["userId"] is None
    bound = make_key(keyed, root, scopes=["read", "execute"], userId=ada["id"])
    assert bound["userId"] == ada["id"]
    listed = {k["id"]: k for k in keyed.simulate_get("/api-keys", headers=bearer(root)).json}
    assert listed[bound["id"]]["userId"] == ada["id"] and listed[plain["id"]]["userId"] is None
    for user_id in ("not-a-uuid", stranger["id"], "6f1b4a0e-8f0c-4c55-9a57-000000000000"):
        result = keyed.simulate_post("/api-keys", json={"name": "x", "userId": user_id}, headers=bearer(root))
        assert result.status_code == 400 and result.json["errors"][0]["field"] == "userId", result.text
    # No key grants more than it has: binding a key to a user lets it act as them, so a key that may not
    # act as that user (not bound to them, no impersonate) may neither bind nor grant impersonate; it is
    # refused before the user is looked up, so it learns nothing of who exists.
    for body in ({"scopes": ["read", "impersonate"]}, {"userId": ada["id"]}, {"userId": stranger["id"]}):
        result = keyed.simulate_post("/api-keys", json={"name": "x", **body}, headers=bearer(plain["apiKey"]))
        assert result.status_code == 403 and "impersonate" in result.json["message"], (body, result.text)
    ada_admin = make_key(keyed, root, scopes=["read", "admin"], userId=ada["id"])
    assert make_key(keyed, ada_admin["apiKey"], scopes=["read"], userId=ada["id"])["userId"] == ada["id"]
    assert keyed.simulate_post("/api-keys", json={"name": "x", "scopes": ["read"], "userId": bob["id"]},
                               headers=bearer(ada_admin["apiKey"])).status_code == 403
    # A key goes with the user it is bound to.
    bobs = make_key(keyed, root, scopes=["read"], userId=bob["id"])["apiKey"]
    assert keyed.simulate_get("/users", headers=bearer(bobs)).status_code == 200
    assert keyed.simulate_delete(f"/users/{bob['id']}", headers=bearer(root)).status_code == 204
    assert keyed.simulate_get("/users", headers=bearer(bobs)).status_code == 401


def test_the_openapi_document_names_impersonate_and_a_keys_user(keyed):
    spec = keyed.simulate_get("/openapi.json").json
    assert "impersonate" in spec["components"]["securitySchemes"]["apiKey"]["description"]
    assert "userId" in spec["components"]["schemas"]["ApiKey"]["properties"]
