"""/organizations: the tenants themselves (no tenant header).

Covers create/get/list, partial PUT/PATCH (read-only fields ignored, no-op
updates leave updatedAt and the ETag alone), validation of ``name``, delete
(204 then 404) and deletes blocked by users or tools (409)."""

from __future__ import annotations

import re
import uuid

from contract import assert_error, bad_request

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
