"""/organizations: the tenants themselves (no tenant header).

Covers create/get/list, partial PUT/PATCH (read-only fields ignored, no-op
updates leave updatedAt and the ETag alone), validation of ``name``, delete
(204 then 404) and deletes blocked by users or tools (409)."""

from __future__ import annotations

import dataclasses
import re
import uuid

from contract import assert_error, bad_request
from falcon import testing

from tolstoy.api.app import create_app
from tolstoy.config import Config
from tolstoy.db import migrate
from tolstoy.db.database import Database

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
FIELDS = {"id", "name", "createdAt", "updatedAt"}


def test_create_get_and_list(client):
    first = client.simulate_post("/organizations", json={"name": "Acme"})
    assert first.status_code == 201, first.text
    org = first.json
    assert set(org) == FIELDS
    uuid.UUID(org["id"])
    assert org["name"] == "Acme"
    assert TIMESTAMP.match(org["createdAt"]) and TIMESTAMP.match(org["updatedAt"])
    assert org["createdAt"] == org["updatedAt"]
    assert first.headers["location"] == f"/organizations/{org['id']}"
    assert first.headers["etag"].startswith('"') and first.headers["etag"].endswith('"')

    got = client.simulate_get(f"/organizations/{org['id']}")
    assert got.status_code == 200
    assert got.json == org
    assert got.headers["etag"] == first.headers["etag"]

    second = client.simulate_post("/organizations", json={"name": "Globex"}).json
    listed = client.simulate_get("/organizations")
    assert listed.status_code == 200
    assert [o["id"] for o in listed.json] == [second["id"], org["id"]]
    assert listed.json[1] == org


def test_name_boundaries_and_read_only_fields_on_create(client):
    other_id = str(uuid.uuid4())
    result = client.simulate_post(
        "/organizations",
        json={"name": "x" * 200, "id": other_id, "createdAt": "2000-01-01T00:00:00.000Z"},
    )
    assert result.status_code == 201, result.text
    assert result.json["name"] == "x" * 200
    assert result.json["id"] != other_id
    assert not result.json["createdAt"].startswith("2000")


CREATE_CASES = [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"name": 42}, "name"),
    ({"name": None}, "name"),
    ({"name": ["Acme"]}, "name"),
    ({"name": "Acme", "plan": "gold"}, "plan"),
]


def test_create_validation(client):
    problems = [
        f"{body}: {problem}"
        for body, field in CREATE_CASES
        if (problem := bad_request(client.simulate_post("/organizations", json=body), field))
    ]
    assert not problems, "\n".join(problems)
    assert client.simulate_get("/organizations").json == []


def test_create_rejects_empty_malformed_or_non_object_body(client):
    for raw in (b"", b"{not json", b"[1, 2]", b'"Acme"', b"null"):
        result = client.simulate_post(
            "/organizations", body=raw, headers={"Content-Type": "application/json"}
        )
        assert bad_request(result, "body") is None, (raw, result.text)
    assert client.simulate_get("/organizations").json == []


def test_put_and_patch_are_partial_updates(client, api):
    org = api.org("Acme")
    created_etag = client.simulate_get(f"/organizations/{org['id']}").headers["etag"]

    put = client.simulate_put(f"/organizations/{org['id']}", json={"name": "Acme Corp"})
    assert put.status_code == 200, put.text
    assert put.json["name"] == "Acme Corp"
    assert put.json["id"] == org["id"]
    assert put.json["createdAt"] == org["createdAt"]
    assert put.json["updatedAt"] > org["updatedAt"]
    assert TIMESTAMP.match(put.json["updatedAt"])
    assert put.headers["etag"] != created_etag

    # An empty PATCH changes nothing.
    patch = client.simulate_patch(f"/organizations/{org['id']}", json={})
    assert patch.status_code == 200
    assert patch.json == put.json
    assert patch.headers["etag"] == put.headers["etag"]

    got = client.simulate_get(f"/organizations/{org['id']}")
    assert got.json == put.json
    assert got.headers["etag"] == put.headers["etag"]


def test_get_modify_put_ignores_read_only_fields(client, api):
    org = api.org("Acme")
    body = client.simulate_get(f"/organizations/{org['id']}").json

    # Sending the record back unchanged changes neither updatedAt nor the ETag.
    same = client.simulate_put(f"/organizations/{org['id']}", json=body)
    assert same.status_code == 200, same.text
    assert same.json == org
    before = client.simulate_get(f"/organizations/{org['id']}")
    assert same.headers["etag"] == before.headers["etag"]

    body.update(
        name="Renamed",
        id=str(uuid.uuid4()),
        createdAt="2000-01-01T00:00:00.000Z",
        updatedAt="2000-01-01T00:00:00.000Z",
        orgId=str(uuid.uuid4()),
        userId=str(uuid.uuid4()),
        version=99,
    )
    result = client.simulate_patch(f"/organizations/{org['id']}", json=body)
    assert result.status_code == 200, result.text
    assert result.json["id"] == org["id"]
    assert result.json["name"] == "Renamed"
    assert result.json["createdAt"] == org["createdAt"]
    assert result.json["updatedAt"] != "2000-01-01T00:00:00.000Z"
    assert set(result.json) == FIELDS


UPDATE_CASES = [
    ({"name": None}, "name"),
    ({"name": ""}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"name": 7}, "name"),
    ({"name": "Ok", "color": "red"}, "color"),
]


def test_update_validation(client, api):
    org = api.org("Acme")
    problems = [
        f"{method} {body}: {problem}"
        for method in ("PUT", "PATCH")
        for body, field in UPDATE_CASES
        if (problem := bad_request(
            client.simulate_request(method, f"/organizations/{org['id']}", json=body), field))
    ]
    assert not problems, "\n".join(problems)
    assert client.simulate_get(f"/organizations/{org['id']}").json == org


def test_missing_and_non_uuid_ids_are_404(client, api):
    api.org()
    for path in (f"/organizations/{uuid.uuid4()}", "/organizations/not-a-uuid"):
        assert_error(client.simulate_get(path), 404)
        assert_error(client.simulate_put(path, json={"name": "x"}), 404)
        assert_error(client.simulate_patch(path, json={"name": "x"}), 404)
        assert_error(client.simulate_delete(path), 404)


def test_delete_then_404(client, api):
    keep = api.org("Keep")
    gone = api.org("Gone")
    result = client.simulate_delete(f"/organizations/{gone['id']}")
    assert result.status_code == 204
    assert result.text == ""
    body = assert_error(client.simulate_get(f"/organizations/{gone['id']}"), 404)
    assert "errors" not in body
    assert_error(client.simulate_delete(f"/organizations/{gone['id']}"), 404)
    assert_error(client.simulate_patch(f"/organizations/{gone['id']}", json={"name": "x"}), 404)
    assert [o["id"] for o in client.simulate_get("/organizations").json] == [keep["id"]]


def test_delete_blocked_by_users(client, api):
    org = api.org()
    user = api.user(org)
    body = assert_error(client.simulate_delete(f"/organizations/{org['id']}"), 409)
    assert body["error"] == "Conflict"
    assert "users" in body["message"]
    assert "errors" not in body
    assert client.simulate_get(f"/organizations/{org['id']}").status_code == 200

    assert client.simulate_delete(f"/users/{user['id']}", headers=api.headers(org)).status_code == 204
    assert client.simulate_delete(f"/organizations/{org['id']}").status_code == 204
    assert client.simulate_get(f"/organizations/{org['id']}").status_code == 404


def test_delete_blocked_by_tools(client, api):
    org = api.org()
    tool = api.tool(org)
    body = assert_error(client.simulate_delete(f"/organizations/{org['id']}"), 409)
    assert "tools" in body["message"]
    assert client.simulate_get(f"/organizations/{org['id']}").status_code == 200

    assert client.simulate_delete(f"/tools/{tool['id']}", headers=api.headers(org)).status_code == 204
    assert client.simulate_delete(f"/organizations/{org['id']}").status_code == 204


def test_no_tenant_header_needed_and_bogus_one_ignored(client, api):
    org = api.org()
    bogus = {"X-Org-ID": str(uuid.uuid4())}
    assert client.simulate_get(f"/organizations/{org['id']}", headers=bogus).json == org
    assert [o["id"] for o in client.simulate_get("/organizations", headers=bogus).json] == [org["id"]]
    created = client.simulate_post("/organizations", json={"name": "B"}, headers={"X-Org-ID": "nope"})
    assert created.status_code == 201
    assert created.json["name"] == "B"


def counted_apps(config, app_db, database_url):
    """A client whose admin login's pool is this test's, and a way to see what a request cost each pool."""
    admin_db = Database(migrate.as_role(database_url, migrate.ADMIN_ROLE), min_size=0, max_size=2, timeout=5)
    admin_db.open(wait=False)
    client = testing.TestClient(create_app(config, app_db, admin_db))

    def call(method: str, path: str, **kwargs):
        before = (admin_db.counts.snapshot(), app_db.counts.snapshot())
        result = client.simulate_request(method, path, **kwargs)
        after = (admin_db.counts.snapshot(), app_db.counts.snapshot())
        return result, *({k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True))

    return admin_db, call


def test_every_organization_is_managed_through_the_admin_login_at_the_same_cost(config, app_db, database_url):
    """The cross-tenant operations run on the admin login's pool (tolstoy_admin), none on the API's,
    and cost what they cost before: one round trip for a read or a create, two for a change or a
    delete (the row is read locked, then written and committed)."""
    admin_db, call = counted_apps(config, app_db, database_url)
    try:
        nothing = {"statements": 0, "round_trips": 0, "transactions": 0}
        one = {"statements": 2, "round_trips": 1, "transactions": 1}
        created, on_admin, on_app = call("POST", "/organizations", json={"name": "Acme"})
        assert created.status_code == 201, created.text
        assert (on_admin, on_app) == (one, nothing)
        path = f"/organizations/{created.json['id']}"
        for method, target, kwargs, status, round_trips in [
                ("GET", "/organizations", {}, 200, 1), ("GET", path, {}, 200, 1),
                ("PATCH", path, {"json": {"name": "Acme 2"}}, 200, 2), ("PUT", path, {"json": {"name": "A"}}, 200, 2),
                ("DELETE", path, {}, 204, 2)]:
            result, on_admin, on_app = call(method, target, **kwargs)
            assert result.status_code == status, (method, target, result.text)
            assert on_app == nothing, (method, target, on_app)
            assert on_admin["transactions"] == 1 and on_admin["round_trips"] == round_trips, (method, target, on_admin)
    finally:
        admin_db.close()


def test_without_the_admin_login_cross_tenant_routes_are_a_503_and_a_key_still_has_its_own(worker_env, app_db):
    admin_token, secret = "admin-token-" + "t" * 40, "key-secret-" + "s" * 40
    keyed = Config.from_env({**worker_env, "TOLSTOY_AUTH_MODE": "api_key", "TOLSTOY_API_KEY_SECRET": secret,
                             "TOLSTOY_ADMIN_TOKEN": admin_token})
    org = testing.TestClient(create_app(keyed, app_db)).simulate_post(
        "/organizations", json={"name": "Acme"}, headers={"Authorization": f"Bearer {admin_token}"}).json
    key = {"Authorization": f"Bearer {org['apiKey']}"}
    # Production without ADMIN_DATABASE_URL: the admin token's routes answer 503 naming the setting...
    production = dataclasses.replace(keyed, env="production", admin_database_url=None)
    client = testing.TestClient(create_app(production, app_db))
    for method, path in [("GET", "/organizations"), ("POST", "/organizations"),
                         ("GET", f"/organizations/{org['id']}"), ("DELETE", f"/organizations/{org['id']}")]:
        body = assert_error(client.simulate_request(method, path, json={"name": "x"},
                                                    headers={"Authorization": f"Bearer {admin_token}"}), 503)
        assert "ADMIN_DATABASE_URL" in body["message"], (method, path)
    # ...while an organization's own key still reads and renames its own organization (tolstoy_app).
    assert [o["id"] for o in client.simulate_get("/organizations", headers=key).json] == [org["id"]]
    renamed = client.simulate_patch(f"/organizations/{org['id']}", json={"name": "Acme 2"}, headers=key)
    assert renamed.status_code == 200 and renamed.json["name"] == "Acme 2", renamed.text
    assert client.simulate_get(f"/organizations/{org['id']}", headers=key).json["name"] == "Acme 2"
