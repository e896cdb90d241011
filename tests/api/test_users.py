"""/users: people of an organization (X-Org-ID required).

Covers create/get/list (newest first, ``?email=`` case-insensitive), partial
PUT/PATCH with null clearing ``name`` and read-only fields ignored, validation
of every field, email uniqueness per organization ignoring case (409), delete
(204 then 404, 409 while execution logs name the user), tenant headers, and
isolation between organizations (404 / absent from lists)."""

from __future__ import annotations

import re
import uuid

from contract import assert_error, bad_request

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
FIELDS = {"id", "orgId", "email", "name", "createdAt", "updatedAt"}
DUPLICATE = "A user with this email already exists in this organization."


def test_create_and_get(client, api):
    org = api.org()
    result = api.post("/users", org, {"email": "Ada@Example.com", "name": "Ada Lovelace"})
    assert result.status_code == 201, result.text
    user = result.json
    assert set(user) == FIELDS
    uuid.UUID(user["id"])
    assert user["orgId"] == org["id"]
    assert user["email"] == "Ada@Example.com"  # stored as sent
    assert user["name"] == "Ada Lovelace"
    assert TIMESTAMP.match(user["createdAt"]) and user["createdAt"] == user["updatedAt"]
    assert result.headers["location"] == f"/users/{user['id']}"
    assert result.headers["etag"].startswith('"')

    got = client.simulate_get(f"/users/{user['id']}", headers=api.headers(org))
    assert got.status_code == 200
    assert got.json == user
    assert got.headers["etag"] == result.headers["etag"]


def test_optional_name_is_null_or_empty(client, api):
    org = api.org()
    no_name = api.create("/users", org, {"email": "a@example.com"})
    assert no_name["name"] is None
    null_name = api.create("/users", org, {"email": "b@example.com", "name": None})
    assert null_name["name"] is None
    empty = api.create("/users", org, {"email": "c@example.com", "name": ""})
    assert empty["name"] == ""
    longest = api.create("/users", org, {"email": "d@example.com", "name": "n" * 200})
    assert longest["name"] == "n" * 200
    fetched = client.simulate_get(f"/users/{no_name['id']}", headers=api.headers(org)).json
    assert "name" in fetched and fetched["name"] is None


def test_read_only_fields_ignored_on_create(client, api):
    org, other = api.org(), api.org("Other")
    forged = str(uuid.uuid4())
    user = api.create(
        "/users", org,
        {"email": "a@example.com", "id": forged, "orgId": other["id"], "version": 3,
         "createdAt": "2000-01-01T00:00:00.000Z", "updatedAt": "2000-01-01T00:00:00.000Z"},
    )
    assert user["id"] != forged
    assert user["orgId"] == org["id"]
    assert not user["createdAt"].startswith("2000")
    assert client.simulate_get("/users", headers=api.headers(other)).json == []


def test_list_newest_first_filtered_and_isolated(client, api):
    org, other = api.org(), api.org("Other")
    first = api.user(org, "Ada@Example.com")
    second = api.user(org, "bob@example.com")
    foreign = api.user(other, "ada@example.com")

    listed = client.simulate_get("/users", headers=api.headers(org))
    assert listed.status_code == 200
    assert [u["id"] for u in listed.json] == [second["id"], first["id"]]
    assert listed.json[1] == first

    assert [u["id"] for u in client.simulate_get("/users", headers=api.headers(other)).json] == [foreign["id"]]

    for email in ("ADA@EXAMPLE.COM", "ada@example.com", "Ada@Example.com"):
        found = client.simulate_get("/users", params={"email": email}, headers=api.headers(org))
        assert found.status_code == 200
        assert [u["id"] for u in found.json] == [first["id"]], email
    none = client.simulate_get("/users", params={"email": "carol@example.com"}, headers=api.headers(org))
    assert none.json == []

    assert_error(client.simulate_get("/users", params={"name": "Ada"}, headers=api.headers(org)), 400, "name")


def test_tenant_header_required(client, api):
    org = api.org()
    assert_error(client.simulate_get("/users"), 400, "X-Org-ID")
    assert_error(client.simulate_post("/users", json={"email": "a@example.com"}), 400, "X-Org-ID")
    assert_error(client.simulate_get("/users", headers={"X-Org-ID": "nope"}), 400, "X-Org-ID")
    assert_error(client.simulate_get("/users", headers={"X-Org-ID": str(uuid.uuid4())}), 400, "X-Org-ID")
    assert client.simulate_get("/users", headers=api.headers(org)).json == []


CREATE_CASES = [
    ({}, "email"),
    ({"name": "Ada"}, "email"),
    ({"email": None}, "email"),
    ({"email": ""}, "email"),
    ({"email": "not-an-email"}, "email"),
    ({"email": "ada@"}, "email"),
    ({"email": "@example.com"}, "email"),
    ({"email": "ada example@example.com"}, "email"),
    ({"email": 42}, "email"),
    ({"email": "a" * 64 + "@" + "b" * 250 + ".example.com"}, "email"),
    ({"email": "a@example.com", "name": "n" * 201}, "name"),
    ({"email": "a@example.com", "name": 5}, "name"),
    ({"email": "a@example.com", "name": {"first": "Ada"}}, "name"),
    ({"email": "a@example.com", "role": "admin"}, "role"),
]


def test_create_validation(client, api):
    org = api.org()
    problems = [
        f"{body}: {problem}"
        for body, field in CREATE_CASES
        if (problem := bad_request(api.post("/users", org, body), field))
    ]
    assert not problems, "\n".join(problems)
    assert client.simulate_get("/users", headers=api.headers(org)).json == []


def test_put_and_patch_are_partial(client, api):
    org = api.org()
    user = api.user(org, "ada@example.com", "Ada")
    path, headers = f"/users/{user['id']}", api.headers(org)

    patched = client.simulate_patch(path, json={"name": "Ada L."}, headers=headers)
    assert patched.status_code == 200, patched.text
    assert patched.json["name"] == "Ada L."
    assert patched.json["email"] == "ada@example.com"
    assert patched.json["createdAt"] == user["createdAt"]
    assert patched.json["updatedAt"] > user["updatedAt"]

    put = client.simulate_put(path, json={"email": "ada@lovelace.org"}, headers=headers)
    assert put.status_code == 200, put.text
    assert put.json["email"] == "ada@lovelace.org"
    assert put.json["name"] == "Ada L."

    cleared = client.simulate_patch(path, json={"name": None}, headers=headers)
    assert cleared.status_code == 200
    assert cleared.json["name"] is None
    assert cleared.json["email"] == "ada@lovelace.org"

    got = client.simulate_get(path, headers=headers)
    assert got.json == cleared.json
    assert got.headers["etag"] == cleared.headers["etag"]


UPDATE_CASES = [
    ({"email": None}, "email"),
    ({"email": "nope"}, "email"),
    ({"email": 1}, "email"),
    ({"name": "n" * 201}, "name"),
    ({"name": False}, "name"),
    ({"nickname": "A"}, "nickname"),
]


def test_update_validation(client, api):
    org = api.org()
    user = api.user(org, "ada@example.com", "Ada")
    path, headers = f"/users/{user['id']}", api.headers(org)
    problems = [
        f"{method} {body}: {problem}"
        for method in ("PUT", "PATCH")
        for body, field in UPDATE_CASES
        if (problem := bad_request(client.simulate_request(method, path, json=body, headers=headers), field))
    ]
    assert not problems, "\n".join(problems)
    assert client.simulate_get(path, headers=headers).json == user


def test_get_modify_put_and_noop_update(client, api):
    org, other = api.org(), api.org("Other")
    user = api.user(org, "ada@example.com", "Ada")
    path, headers = f"/users/{user['id']}", api.headers(org)
    before = client.simulate_get(path, headers=headers)

    same = client.simulate_put(path, json=before.json, headers=headers)
    assert same.status_code == 200, same.text
    assert same.json == user
    assert same.headers["etag"] == before.headers["etag"]

    body = dict(before.json, name="Grace", id=str(uuid.uuid4()), orgId=other["id"],
                userId=str(uuid.uuid4()), version=7, createdAt="2000-01-01T00:00:00.000Z",
                updatedAt="2000-01-01T00:00:00.000Z")
    changed = client.simulate_put(path, json=body, headers=headers)
    assert changed.status_code == 200, changed.text
    assert changed.json["id"] == user["id"]
    assert changed.json["orgId"] == org["id"]
    assert changed.json["name"] == "Grace"
    assert changed.json["createdAt"] == user["createdAt"]
    assert changed.json["updatedAt"] > user["updatedAt"]
    assert changed.headers["etag"] != before.headers["etag"]


def test_email_unique_per_org_ignoring_case(client, api):
    org, other = api.org(), api.org("Other")
    ada = api.user(org, "ada@example.com")
    bob = api.user(org, "bob@example.com")

    for email in ("ada@example.com", "ADA@Example.COM"):
        body = assert_error(api.post("/users", org, {"email": email}), 409)
        assert body["error"] == "Conflict"
        assert body["message"] == DUPLICATE
        assert "errors" not in body

    # The same address is fine in another organization.
    elsewhere = api.create("/users", other, {"email": "Ada@Example.com"})
    assert elsewhere["orgId"] == other["id"]

    # Updating into a taken address conflicts too; changing one's own case does not.
    result = client.simulate_patch(f"/users/{bob['id']}", json={"email": "ADA@example.com"},
                                   headers=api.headers(org))
    assert assert_error(result, 409)["message"] == DUPLICATE
    assert client.simulate_get(f"/users/{bob['id']}", headers=api.headers(org)).json["email"] == "bob@example.com"
    own = client.simulate_patch(f"/users/{ada['id']}", json={"email": "ADA@example.com"},
                                headers=api.headers(org))
    assert own.status_code == 200
    assert own.json["email"] == "ADA@example.com"


def test_delete_then_404(client, api):
    org = api.org()
    user = api.user(org)
    keep = api.user(org)
    path, headers = f"/users/{user['id']}", api.headers(org)
    result = client.simulate_delete(path, headers=headers)
    assert result.status_code == 204
    assert result.text == ""
    body = assert_error(client.simulate_get(path, headers=headers), 404)
    assert body["error"] == "Not Found"
    assert_error(client.simulate_delete(path, headers=headers), 404)
    assert_error(client.simulate_put(path, json={"name": "x"}, headers=headers), 404)
    assert [u["id"] for u in client.simulate_get("/users", headers=headers).json] == [keep["id"]]
    assert_error(client.simulate_get("/users/not-a-uuid", headers=headers), 404)


def test_delete_blocked_by_execution_logs(client, api):
    org = api.org()
    user = api.user(org)
    flow = api.flow(org)
    log = api.log(org, user, flow)
    path, headers = f"/users/{user['id']}", api.headers(org)

    body = assert_error(client.simulate_delete(path, headers=headers), 409)
    assert "execution logs" in body["message"]
    assert client.simulate_get(path, headers=headers).status_code == 200

    assert client.simulate_delete(f"/execution-logs/{log['id']}", headers=headers).status_code == 204
    assert client.simulate_delete(path, headers=headers).status_code == 204


def test_other_organizations_user_is_404(client, api):
    org, other = api.org(), api.org("Other")
    theirs = api.user(other, "eve@example.com", "Eve")
    path, headers = f"/users/{theirs['id']}", api.headers(org)

    assert_error(client.simulate_get(path, headers=headers), 404)
    assert_error(client.simulate_put(path, json={"name": "Mallory"}, headers=headers), 404)
    assert_error(client.simulate_patch(path, json={"name": "Mallory"}, headers=headers), 404)
    assert_error(client.simulate_delete(path, headers=headers), 404)
    # Not found is decided before the body is validated.
    assert_error(client.simulate_put(path, json={"email": "nope", "bogus": 1}, headers=headers), 404)
    assert client.simulate_get("/users", headers=headers).json == []
    assert client.simulate_get("/users", params={"email": "eve@example.com"}, headers=headers).json == []

    # Untouched for its owner.
    assert client.simulate_get(path, headers=api.headers(other)).json == theirs
