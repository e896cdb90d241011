"""/tools: external HTTP APIs of an organization (X-Org-ID required).

Covers create/get (with ``actions``)/list (newest first), partial PUT/PATCH
(null on required fields rejected, read-only fields and the ``actions`` array
ignored so GET-modify-PUT works, no-op updates keep updatedAt and the ETag),
validation of name/baseUrl/authType, name uniqueness per organization (409),
delete (204 then 404, 409 while the tool has actions) and isolation between
organizations."""

from __future__ import annotations

import re
import uuid

from contract import assert_error, bad_request

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
FIELDS = {"id", "orgId", "name", "key", "baseUrl", "authType", "createdAt", "updatedAt", "honorsIdempotencyKey",
          "rateLimit"}
DUPLICATE = "A tool with this name already exists in this organization."
VALID = {"name": "GitHub", "baseUrl": "https://api.github.com", "authType": "bearer"}


def test_create_and_get_with_actions(client, api):
    org = api.org()
    result = api.post("/tools", org, VALID)
    assert result.status_code == 201, result.text
    tool = result.json
    assert FIELDS <= set(tool)
    uuid.UUID(tool["id"])
    assert tool["orgId"] == org["id"]
    assert (tool["name"], tool["baseUrl"], tool["authType"]) == ("GitHub", "https://api.github.com", "bearer")
    assert TIMESTAMP.match(tool["createdAt"]) and tool["createdAt"] == tool["updatedAt"]
    assert result.headers["location"] == f"/tools/{tool['id']}"
    assert result.headers["etag"].startswith('"')

    path, headers = f"/tools/{tool['id']}", api.headers(org)
    got = client.simulate_get(path, headers=headers)
    assert got.status_code == 200
    assert set(got.json) == FIELDS | {"actions"}
    assert {k: got.json[k] for k in FIELDS} == {k: tool[k] for k in FIELDS}
    assert got.json["actions"] == []
    assert got.headers["etag"] == result.headers["etag"]

    older = api.action(org, tool, key="gh.get_issue")
    newer = api.action(org, tool, key="gh.list_issues", method="POST", endpoint="/issues")
    other_tool = api.tool(org)
    api.action(org, other_tool, key="other.thing")
    got = client.simulate_get(path, headers=headers)
    assert [a["id"] for a in got.json["actions"]] == [newer["id"], older["id"]]
    assert got.json["actions"][1] == client.simulate_get(f"/actions/{older['id']}", headers=headers).json
    assert got.json["actions"][0]["toolId"] == tool["id"]
    assert got.json["actions"][0]["method"] == "POST"


def test_every_auth_type_and_http_urls_accepted(client, api):
    org = api.org()
    for index, auth_type in enumerate(("none", "apiKey", "bearer", "basic", "oauth2")):
        tool = api.create("/tools", org, {"name": f"t{index}", "baseUrl": "https://api.example.com/v1",
                                          "authType": auth_type})
        assert tool["authType"] == auth_type
    for url in ("http://localhost:8080", "https://api.example.com/v1?x=1", "http://10.0.0.1/api"):
        tool = api.create("/tools", org, {"name": url, "baseUrl": url, "authType": "none"})
        assert tool["baseUrl"] == url
    edge = api.create("/tools", org, {"name": "n" * 200, "baseUrl": "https://x.io", "authType": "none"})
    assert edge["name"] == "n" * 200
    assert len(client.simulate_get("/tools", headers=api.headers(org)).json) == 9


def test_list_newest_first_and_isolated(client, api):
    org, other = api.org(), api.org("Other")
    first = api.tool(org, "first")
    second = api.tool(org, "second")
    theirs = api.tool(other, "first")

    listed = client.simulate_get("/tools", headers=api.headers(org))
    assert listed.status_code == 200
    assert [t["id"] for t in listed.json] == [second["id"], first["id"]]
    assert {k: listed.json[1][k] for k in FIELDS} == {k: first[k] for k in FIELDS}
    assert [t["id"] for t in client.simulate_get("/tools", headers=api.headers(other)).json] == [theirs["id"]]
    assert_error(client.simulate_get("/tools"), 400, "X-Org-ID")
    assert_error(client.simulate_get("/tools", params={"name": "first"}, headers=api.headers(org)), 400, "name")


CREATE_CASES = [
    ({"name": None}, "name"),
    ({"baseUrl": None}, "baseUrl"),
    ({"authType": None}, "authType"),
    ({"name": ""}, "name"),
    ({"name": "n" * 201}, "name"),
    ({"name": 12}, "name"),
    ({"baseUrl": "not a url"}, "baseUrl"),
    ({"baseUrl": "api.example.com"}, "baseUrl"),
    ({"baseUrl": "ftp://files.example.com"}, "baseUrl"),
    ({"baseUrl": "javascript:alert(1)"}, "baseUrl"),
    ({"baseUrl": "file:///etc/passwd"}, "baseUrl"),
    ({"baseUrl": ""}, "baseUrl"),
    ({"baseUrl": 443}, "baseUrl"),
    ({"baseUrl": "https://example.com/" + "p" * 2100}, "baseUrl"),
    ({"authType": "token"}, "authType"),
    ({"authType": "apikey"}, "authType"),
    ({"authType": "Bearer"}, "authType"),
    ({"authType": 1}, "authType"),
    ({"credentials": {"token": "x"}}, "credentials"),
]


def test_create_validation(client, api):
    org = api.org()
    cases = [({**VALID, **change}, field) for change, field in CREATE_CASES]
    cases += [({k: v for k, v in VALID.items() if k != missing}, missing) for missing in VALID]
    problems = [
        f"{body}: {problem}"
        for body, field in cases
        if (problem := bad_request(api.post("/tools", org, body), field))
    ]
    assert not problems, "\n".join(problems)
    assert client.simulate_get("/tools", headers=api.headers(org)).json == []


def test_put_and_patch_are_partial(client, api):
    org = api.org()
    tool = api.create("/tools", org, VALID)
    path, headers = f"/tools/{tool['id']}", api.headers(org)

    patched = client.simulate_patch(path, json={"baseUrl": "https://ghe.example.com/api"}, headers=headers)
    assert patched.status_code == 200, patched.text
    assert patched.json["baseUrl"] == "https://ghe.example.com/api"
    assert (patched.json["name"], patched.json["authType"]) == ("GitHub", "bearer")
    assert patched.json["updatedAt"] > tool["updatedAt"]
    assert patched.json["createdAt"] == tool["createdAt"]

    put = client.simulate_put(path, json={"authType": "oauth2", "name": "GitHub Enterprise"}, headers=headers)
    assert put.status_code == 200, put.text
    assert put.json["authType"] == "oauth2"
    assert put.json["name"] == "GitHub Enterprise"
    assert put.json["baseUrl"] == "https://ghe.example.com/api"

    got = client.simulate_get(path, headers=headers)
    assert {k: got.json[k] for k in FIELDS} == {k: put.json[k] for k in FIELDS}


UPDATE_CASES = [
    ({"name": None}, "name"),
    ({"baseUrl": None}, "baseUrl"),
    ({"authType": None}, "authType"),
    ({"baseUrl": "ftp://example.com"}, "baseUrl"),
    ({"authType": "digest"}, "authType"),
    ({"name": ""}, "name"),
    ({"owner": "me"}, "owner"),
]


def test_update_validation(client, api):
    org = api.org()
    tool = api.create("/tools", org, VALID)
    path, headers = f"/tools/{tool['id']}", api.headers(org)
    before = client.simulate_get(path, headers=headers).json
    problems = [
        f"{method} {body}: {problem}"
        for method in ("PUT", "PATCH")
        for body, field in UPDATE_CASES
        if (problem := bad_request(client.simulate_request(method, path, json=body, headers=headers), field))
    ]
    assert not problems, "\n".join(problems)
    assert client.simulate_get(path, headers=headers).json == before


def test_get_modify_put_ignores_read_only_fields_and_actions(client, api):
    org, other = api.org(), api.org("Other")
    tool = api.create("/tools", org, VALID)
    action = api.action(org, tool, key="gh.get")
    path, headers = f"/tools/{tool['id']}", api.headers(org)
    before = client.simulate_get(path, headers=headers)
    assert [a["id"] for a in before.json["actions"]] == [action["id"]]

    # Unchanged: neither updatedAt nor the ETag move.
    same = client.simulate_put(path, json=before.json, headers=headers)
    assert same.status_code == 200, same.text
    assert same.json == before.json
    assert same.headers["etag"] == before.headers["etag"]
    assert client.simulate_get(path, headers=headers).headers["etag"] == before.headers["etag"]

    body = dict(before.json, name="Renamed", id=str(uuid.uuid4()), orgId=other["id"], version=5,
                userId=str(uuid.uuid4()), createdAt="2000-01-01T00:00:00.000Z",
                updatedAt="2000-01-01T00:00:00.000Z", actions=[])
    changed = client.simulate_put(path, json=body, headers=headers)
    assert changed.status_code == 200, changed.text
    assert changed.json["name"] == "Renamed"
    assert changed.json["id"] == tool["id"]
    assert changed.json["orgId"] == org["id"]
    assert changed.json["createdAt"] == tool["createdAt"]
    assert changed.json["updatedAt"] > tool["updatedAt"]
    got = client.simulate_get(path, headers=headers).json
    assert [a["id"] for a in got["actions"]] == [action["id"]]
    assert got["actions"][0] == client.simulate_get(f"/actions/{action['id']}", headers=headers).json


def test_name_unique_per_org(client, api):
    org, other = api.org(), api.org("Other")
    api.create("/tools", org, VALID)
    slack = api.create("/tools", org, {**VALID, "name": "Slack"})

    body = assert_error(api.post("/tools", org, {**VALID, "baseUrl": "https://other.example.com"}), 409)
    assert body["error"] == "Conflict"
    assert body["message"] == DUPLICATE
    assert "errors" not in body

    theirs = api.create("/tools", other, VALID)
    assert theirs["orgId"] == other["id"]

    path, headers = f"/tools/{slack['id']}", api.headers(org)
    assert assert_error(client.simulate_patch(path, json={"name": "GitHub"}, headers=headers), 409)["message"] == DUPLICATE
    assert assert_error(client.simulate_put(path, json={"name": "GitHub"}, headers=headers), 409)["message"] == DUPLICATE
    assert client.simulate_get(path, headers=headers).json["name"] == "Slack"
    assert len(client.simulate_get("/tools", headers=headers).json) == 2


def test_delete_then_404(client, api):
    org = api.org()
    tool = api.tool(org)
    keep = api.tool(org)
    path, headers = f"/tools/{tool['id']}", api.headers(org)
    result = client.simulate_delete(path, headers=headers)
    assert result.status_code == 204
    assert result.text == ""
    assert assert_error(client.simulate_get(path, headers=headers), 404)["error"] == "Not Found"
    assert_error(client.simulate_delete(path, headers=headers), 404)
    assert_error(client.simulate_patch(path, json={"name": "x"}, headers=headers), 404)
    assert [t["id"] for t in client.simulate_get("/tools", headers=headers).json] == [keep["id"]]
    assert_error(client.simulate_get("/tools/123", headers=headers), 404)


def test_delete_blocked_by_actions(client, api):
    org = api.org()
    tool = api.tool(org)
    action = api.action(org, tool)
    path, headers = f"/tools/{tool['id']}", api.headers(org)

    body = assert_error(client.simulate_delete(path, headers=headers), 409)
    assert body["error"] == "Conflict"
    assert "actions" in body["message"]
    assert client.simulate_get(path, headers=headers).status_code == 200

    assert client.simulate_delete(f"/actions/{action['id']}", headers=headers).status_code == 204
    assert client.simulate_delete(path, headers=headers).status_code == 204
    assert client.simulate_get(path, headers=headers).status_code == 404


def test_other_organizations_tool_is_404(client, api):
    org, other = api.org(), api.org("Other")
    theirs = api.create("/tools", other, VALID)
    path, headers = f"/tools/{theirs['id']}", api.headers(org)

    assert_error(client.simulate_get(path, headers=headers), 404)
    assert_error(client.simulate_put(path, json={"name": "Mine"}, headers=headers), 404)
    assert_error(client.simulate_patch(path, json={"authType": "none"}, headers=headers), 404)
    assert_error(client.simulate_delete(path, headers=headers), 404)
    # Not found is decided before the body is validated.
    assert_error(client.simulate_patch(path, json={"name": None, "bogus": 1}, headers=headers), 404)
    assert client.simulate_get("/tools", headers=headers).json == []

    owner = client.simulate_get(path, headers=api.headers(other))
    assert owner.status_code == 200
    assert {k: owner.json[k] for k in FIELDS} == {k: theirs[k] for k in FIELDS}
