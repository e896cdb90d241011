"""/actions: operations a tool offers (X-Org-ID required).

Covers create/get/list (newest first, ``?toolId=`` filter), every field's
validation, ``inputSchema`` as JSON Schema or the legacy field array (stored
converted), ``toolId`` references checked against the caller's organization on
create and update (400 naming ``toolId``), key uniqueness per organization
(409), partial PUT/PATCH (null clears optional fields, 400 on required ones,
read-only fields ignored), ``version`` rising by exactly 1 on definitional
changes only, no-op updates, delete (204 then 404) and isolation between
organizations."""

from __future__ import annotations

import re
import uuid

import pytest
from contract import assert_error

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
FIELDS = {
    "id", "orgId", "toolId", "name", "key", "method", "endpoint", "headers", "inputSchema",
    "executeIf", "timeoutMs", "version", "createdAt", "updatedAt",
}
DUPLICATE = "An action with this key already exists in this organization."
SCHEMA = {
    "type": "object",
    "properties": {"number": {"type": "integer", "minimum": 1}, "repo": {"type": "string"}},
    "required": ["number"],
}


def bad_request(result, field: str, *, prefix: bool = False) -> str | None:
    """None when result is a 400 in the contract's shape whose errors[0] names field
    (or a field under it when prefix); otherwise a description of what came back."""
    body = result.json if result.text else None
    errors = body.get("errors") if isinstance(body, dict) else None
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    named = first.get("field") or ""
    if (result.status_code == 400 and body.get("statusCode") == 400
            and body.get("error") == "Bad Request" and body.get("message") and first.get("message")
            and (named == field or (prefix and named.startswith(field)))):
        return None
    return f"expected 400 naming {field!r}, got {result.status_code} {result.text}"


def body_for(tool: dict, /, **fields) -> dict:
    """A valid create body for an action of tool."""
    return {"toolId": tool["id"], "name": "Get issue", "key": "gh.get_issue", "method": "GET",
            "endpoint": "/repos/{repo}/issues/{number}", **fields}


@pytest.fixture
def setup(api):
    """An organization with one tool."""
    org = api.org()
    return org, api.tool(org, "GitHub")


def test_create_and_get_minimal(client, api, setup):
    org, tool = setup
    result = api.post("/actions", org, body_for(tool))
    assert result.status_code == 201, result.text
    action = result.json
    assert set(action) == FIELDS
    uuid.UUID(action["id"])
    assert action["orgId"] == org["id"]
    assert action["toolId"] == tool["id"]
    assert (action["name"], action["key"], action["method"], action["endpoint"]) == (
        "Get issue", "gh.get_issue", "GET", "/repos/{repo}/issues/{number}")
    assert action["headers"] is None
    assert action["inputSchema"] is None
    assert action["executeIf"] is None
    assert action["version"] == 1
    assert TIMESTAMP.match(action["createdAt"]) and action["createdAt"] == action["updatedAt"]
    assert result.headers["location"] == f"/actions/{action['id']}"
    assert result.headers["etag"].startswith('"')

    got = client.simulate_get(f"/actions/{action['id']}", headers=api.headers(org))
    assert got.status_code == 200
    assert got.json == action
    assert got.headers["etag"] == result.headers["etag"]


def test_create_with_every_optional_field(client, api, setup):
    org, tool = setup
    full = api.create("/actions", org, body_for(
        tool, method="POST", headers={"Accept": "application/vnd.github+json", "X-Empty": ""},
        inputSchema=SCHEMA, executeIf="{{ variables.number > 0 }}"))
    assert full["method"] == "POST"
    assert full["headers"] == {"Accept": "application/vnd.github+json", "X-Empty": ""}
    assert full["inputSchema"] == SCHEMA
    assert full["executeIf"] == "{{ variables.number > 0 }}"
    assert full["version"] == 1

    condition = {"field": "variables.number", "operator": "gt", "value": 0}
    obj = api.create("/actions", org, body_for(tool, key="gh.obj", executeIf=condition, headers=None,
                                               inputSchema=None, endpoint="/"))
    assert obj["executeIf"] == condition
    assert obj["headers"] is None and obj["inputSchema"] is None
    assert obj["endpoint"] == "/"
    assert client.simulate_get(f"/actions/{obj['id']}", headers=api.headers(org)).json == obj

    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        assert api.create("/actions", org, body_for(tool, key=f"m.{method}", method=method))["method"] == method


def test_read_only_fields_ignored_on_create(client, api, setup):
    org, tool = setup
    forged = str(uuid.uuid4())
    action = api.create("/actions", org, body_for(tool, id=forged, orgId=str(uuid.uuid4()), version=9,
                                                  userId=str(uuid.uuid4()),
                                                  createdAt="2000-01-01T00:00:00.000Z"))
    assert action["id"] != forged
    assert action["orgId"] == org["id"]
    assert action["version"] == 1
    assert not action["createdAt"].startswith("2000")


def test_legacy_input_schema_is_converted(client, api, setup):
    org, tool = setup
    legacy = [
        {"name": "title", "type": "string", "required": True, "description": "Issue title",
         "validation": {"min": 1, "max": 100, "pattern": "^[A-Z]"}},
        {"name": "email", "type": "string", "validation": {"format": "email"}},
        {"name": "count", "type": "number", "default": 3, "validation": {"min": 0, "max": 10}},
        {"name": "draft", "type": "boolean", "required": False, "default": False},
        {"name": "state", "type": "enum", "options": ["open", "closed"], "required": True},
        {"name": "due", "type": "date"},
        {"name": "at", "type": "date", "validation": {"format": "date-time"}},
    ]
    action = api.create("/actions", org, body_for(tool, inputSchema=legacy))
    expected = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": "^[A-Z]",
                      "description": "Issue title"},
            "email": {"type": "string", "format": "email"},
            "count": {"type": "number", "minimum": 0, "maximum": 10, "default": 3},
            "draft": {"type": "boolean", "default": False},
            "state": {"enum": ["open", "closed"]},
            "due": {"type": "string", "format": "date"},
            "at": {"type": "string", "format": "date-time"},
        },
        "required": ["title", "state"],
    }
    assert action["inputSchema"] == expected
    got = client.simulate_get(f"/actions/{action['id']}", headers=api.headers(org)).json
    assert got["inputSchema"] == expected

    # Nothing required: no "required" list; an empty array is an empty object schema.
    plain = api.create("/actions", org, body_for(tool, key="k.plain",
                                                 inputSchema=[{"name": "q", "type": "string"}]))
    assert plain["inputSchema"] == {"type": "object", "properties": {"q": {"type": "string"}}}
    empty = api.create("/actions", org, body_for(tool, key="k.empty", inputSchema=[]))
    assert empty["inputSchema"] == {"type": "object", "properties": {}}

    # Sending the legacy form that converts to the stored schema changes nothing.
    same = client.simulate_patch(f"/actions/{action['id']}", json={"inputSchema": legacy},
                                 headers=api.headers(org))
    assert same.status_code == 200
    assert same.json == got


CREATE_CASES = [
    ({"toolId": None}, "toolId"),
    ({"toolId": "not-a-uuid"}, "toolId"),
    ({"toolId": 5}, "toolId"),
    ({"name": None}, "name"),
    ({"name": ""}, "name"),
    ({"name": "n" * 201}, "name"),
    ({"name": 5}, "name"),
    ({"key": None}, "key"),
    ({"key": ""}, "key"),
    ({"key": "k" * 201}, "key"),
    ({"key": "has space"}, "key"),
    ({"key": ["k"]}, "key"),
    ({"method": None}, "method"),
    ({"method": "FETCH"}, "method"),
    ({"method": "HEAD"}, "method"),
    ({"method": 1}, "method"),
    ({"endpoint": None}, "endpoint"),
    ({"endpoint": ""}, "endpoint"),
    ({"endpoint": "issues"}, "endpoint"),
    ({"endpoint": "https://api.example.com/issues"}, "endpoint"),
    ({"endpoint": "/with space"}, "endpoint"),
    ({"endpoint": 7}, "endpoint"),
    ({"headers": ["Accept: json"]}, "headers"),
    ({"headers": "Accept: json"}, "headers"),
    ({"inputSchema": "string"}, "inputSchema"),
    ({"inputSchema": 5}, "inputSchema"),
    ({"inputSchema": {"type": "nope"}}, "inputSchema"),
    ({"inputSchema": {"type": "object", "required": "number"}}, "inputSchema"),
    ({"inputSchema": {"minLength": -1}}, "inputSchema"),
    ({"inputSchema": [{"name": "a", "type": "string"}, {"name": "a", "type": "number"}]}, "inputSchema"),
    ({"executeIf": 5}, "executeIf"),
    ({"executeIf": True}, "executeIf"),
    ({"executeIf": ""}, "executeIf"),
    ({"executeIf": ["a"]}, "executeIf"),
    ({"timeoutMs": 50}, "timeoutMs"),
    ({"retries": 3}, "retries"),
    ({"tool": "GitHub"}, "tool"),
]

# headers must be an object of strings (errors may name headers.<key>...).
HEADER_CASES = [
    ["Accept: json"], "Accept: json", 5, {"Accept": 1}, {"Accept": None}, {"Accept": ["a", "b"]},
    {"Accept": {"x": "y"}}, {"": "x"},
]

# Legacy field definitions that are not valid (errors may name inputSchema[i]...).
LEGACY_CASES = [
    [{"name": "state", "type": "enum"}],
    [{"name": "state", "type": "enum", "options": []}],
    [{"name": "state", "type": "enum", "options": None}],
    [{"name": "x", "type": "blob"}],
    [{"name": "x", "type": "integer"}],
    [{"type": "string"}],
    [{"name": "x"}],
    [{"name": "", "type": "string"}],
    [{"name": "x", "type": "string", "required": "maybe"}],
    [{"name": "x", "type": "string", "validation": {"pattern": "("}}],
    [{"name": "x", "type": "number", "validation": {"min": "low"}}],
    [{"name": "x", "type": "string", "validation": {"length": 3}}],
    [{"name": "x", "type": "string", "colour": "red"}],
    ["x"],
    [{"name": "ok", "type": "string"}, 5],
]


def test_create_validation(client, api, setup):
    org, tool = setup
    valid = body_for(tool)
    cases = [(body_for(tool, **change), field, False) for change, field in CREATE_CASES]
    cases += [({k: v for k, v in valid.items() if k != missing}, missing, False)
              for missing in ("toolId", "name", "key", "method", "endpoint")]
    cases += [(body_for(tool, headers=headers), "headers", True) for headers in HEADER_CASES]
    cases += [(body_for(tool, inputSchema=legacy), "inputSchema", True) for legacy in LEGACY_CASES]
    problems = [
        f"{body}: {problem}"
        for body, field, prefix in cases
        if (problem := bad_request(api.post("/actions", org, body), field, prefix=prefix))
    ]
    assert not problems, "\n".join(problems)
    assert client.simulate_get("/actions", headers=api.headers(org)).json == []


def test_list_newest_first_filter_by_tool_and_isolation(client, api, setup):
    org, tool = setup
    other_tool = api.tool(org, "Slack")
    other_org = api.org("Other")
    foreign_tool = api.tool(other_org, "GitHub")
    first = api.action(org, tool, key="a.first")
    second = api.action(org, other_tool, key="a.second")
    third = api.action(org, tool, key="a.third")
    foreign = api.action(other_org, foreign_tool, key="a.first")
    headers = api.headers(org)

    listed = client.simulate_get("/actions", headers=headers)
    assert listed.status_code == 200
    assert [a["id"] for a in listed.json] == [third["id"], second["id"], first["id"]]
    assert listed.json[2] == first

    by_tool = client.simulate_get("/actions", params={"toolId": tool["id"]}, headers=headers)
    assert by_tool.status_code == 200
    assert [a["id"] for a in by_tool.json] == [third["id"], first["id"]]
    by_other = client.simulate_get("/actions", params={"toolId": other_tool["id"]}, headers=headers)
    assert [a["id"] for a in by_other.json] == [second["id"]]

    # Another organization's tool, or no tool at all: an empty list.
    for tool_id in (foreign_tool["id"], str(uuid.uuid4())):
        result = client.simulate_get("/actions", params={"toolId": tool_id}, headers=headers)
        assert result.status_code == 200
        assert result.json == []
    assert_error(client.simulate_get("/actions", params={"toolId": "nope"}, headers=headers), 400, "toolId")
    assert_error(client.simulate_get("/actions", params={"key": "a.first"}, headers=headers), 400, "key")
    assert_error(client.simulate_get("/actions"), 400, "X-Org-ID")

    # Pages keep the filter in their relative Link.
    page = client.simulate_get("/actions", params={"toolId": tool["id"], "limit": "1"}, headers=headers)
    assert [a["id"] for a in page.json] == [third["id"]]
    link = page.headers["link"]
    assert link.startswith("</actions?") and 'rel="next"' in link
    assert f"toolId={tool['id']}" in link
    next_url = link[1:link.index(">")]
    rest = client.simulate_get(next_url, headers=headers)
    assert [a["id"] for a in rest.json] == [first["id"]]
    assert "link" not in rest.headers

    theirs = client.simulate_get("/actions", headers=api.headers(other_org)).json
    assert [a["id"] for a in theirs] == [foreign["id"]]


def test_tool_id_must_be_a_tool_of_this_org(client, api, setup):
    org, tool = setup
    other_org = api.org("Other")
    foreign_tool = api.tool(other_org, "Foreign")
    headers = api.headers(org)

    for tool_id in (foreign_tool["id"], str(uuid.uuid4())):
        result = api.post("/actions", org, body_for(tool, toolId=tool_id))
        assert_error(result, 400, "toolId")
    assert client.simulate_get("/actions", headers=headers).json == []

    # Field validation answers before the reference check, which answers before 409.
    result = api.post("/actions", org, body_for(tool, toolId=foreign_tool["id"], method="NOPE"))
    assert_error(result, 400, "method")
    assert client.simulate_get("/actions", headers=api.headers(other_org)).json == []

    action = api.action(org, tool)
    taken = api.post("/actions", org, body_for(tool, key=action["key"], toolId=foreign_tool["id"]))
    assert_error(taken, 400, "toolId")
    path = f"/actions/{action['id']}"
    for method in ("PUT", "PATCH"):
        for tool_id in (foreign_tool["id"], str(uuid.uuid4())):
            result = client.simulate_request(method, path, json={"toolId": tool_id}, headers=headers)
            assert_error(result, 400, "toolId")
    assert client.simulate_get(path, headers=headers).json == action

    # Moving to another tool of the same organization is allowed (and a new version).
    sibling = api.tool(org, "Sibling")
    moved = client.simulate_patch(path, json={"toolId": sibling["id"]}, headers=headers)
    assert moved.status_code == 200, moved.text
    assert moved.json["toolId"] == sibling["id"]
    assert moved.json["version"] == 2
    tool_view = client.simulate_get(f"/tools/{sibling['id']}", headers=headers).json
    assert [a["id"] for a in tool_view["actions"]] == [action["id"]]
    assert client.simulate_get(f"/tools/{tool['id']}", headers=headers).json["actions"] == []


def test_put_and_patch_are_partial_and_null_clears(client, api, setup):
    org, tool = setup
    action = api.create("/actions", org, body_for(tool, headers={"Accept": "application/json"},
                                                   inputSchema=SCHEMA, executeIf="{{ true }}"))
    path, headers = f"/actions/{action['id']}", api.headers(org)

    put = client.simulate_put(path, json={"name": "Fetch issue"}, headers=headers)
    assert put.status_code == 200, put.text
    assert put.json["name"] == "Fetch issue"
    for unchanged in ("toolId", "key", "method", "endpoint", "headers", "inputSchema", "executeIf", "version"):
        assert put.json[unchanged] == action[unchanged], unchanged

    # Objects are replaced whole, not merged.
    patched = client.simulate_patch(path, json={"headers": {"X-Token": "t"}}, headers=headers)
    assert patched.status_code == 200
    assert patched.json["headers"] == {"X-Token": "t"}

    cleared = client.simulate_patch(path, json={"headers": None, "inputSchema": None, "executeIf": None},
                                    headers=headers)
    assert cleared.status_code == 200, cleared.text
    assert cleared.json["headers"] is None
    assert cleared.json["inputSchema"] is None
    assert cleared.json["executeIf"] is None
    assert cleared.json["name"] == "Fetch issue"
    assert cleared.json["endpoint"] == action["endpoint"]
    got = client.simulate_get(path, headers=headers)
    assert got.json == cleared.json
    assert got.headers["etag"] == cleared.headers["etag"]


UPDATE_CASES = [
    ({"toolId": None}, "toolId"),
    ({"name": None}, "name"),
    ({"key": None}, "key"),
    ({"method": None}, "method"),
    ({"endpoint": None}, "endpoint"),
    ({"method": "GETS"}, "method"),
    ({"endpoint": "no-slash"}, "endpoint"),
    ({"key": "a b"}, "key"),
    ({"inputSchema": {"type": 5}}, "inputSchema"),
    ({"actions": []}, "actions"),
    ({"owner": "x"}, "owner"),
]


def test_update_validation(client, api, setup):
    org, tool = setup
    action = api.action(org, tool)
    path, headers = f"/actions/{action['id']}", api.headers(org)
    problems = [
        f"{method} {body}: {problem}"
        for method in ("PUT", "PATCH")
        for body, field in UPDATE_CASES
        if (problem := bad_request(client.simulate_request(method, path, json=body, headers=headers), field))
    ]
    assert not problems, "\n".join(problems)
    assert client.simulate_get(path, headers=headers).json == action


def test_version_rises_by_one_on_definitional_changes_only(client, api, setup):
    org, tool = setup
    sibling = api.tool(org, "Sibling")
    action = api.action(org, tool)
    path, headers = f"/actions/{action['id']}", api.headers(org)
    assert action["version"] == 1

    def patch(body):
        result = client.simulate_patch(path, json=body, headers=headers)
        assert result.status_code == 200, result.text
        return result

    renamed = patch({"name": "Renamed"}).json
    assert renamed["version"] == 1
    assert renamed["updatedAt"] > action["updatedAt"]
    rekeyed = patch({"key": "new.key"}).json
    assert rekeyed["version"] == 1

    expected = 1
    for change in (
        {"method": "POST"},
        {"endpoint": "/things"},
        {"headers": {"Accept": "application/json"}},
        {"headers": {"Accept": "text/plain"}},
        {"inputSchema": SCHEMA},
        {"executeIf": "{{ variables.go }}"},
        {"executeIf": {"field": "go", "operator": "eq", "value": True}},
        {"toolId": sibling["id"]},
        {"headers": None},
        # Several definitional fields in one update: still exactly one version.
        {"method": "PUT", "endpoint": "/other", "inputSchema": None},
    ):
        before = client.simulate_get(path, headers=headers).json
        after = patch(change).json
        expected += 1
        assert after["version"] == expected, change
        assert after["version"] == before["version"] + 1
        assert after["updatedAt"] >= before["updatedAt"]
    assert expected == 11

    # Sending current values again (or nothing) changes neither version, updatedAt nor ETag.
    current = client.simulate_get(path, headers=headers)
    for body in ({}, {"method": "PUT", "endpoint": "/other", "toolId": sibling["id"]},
                 {"headers": None, "inputSchema": None}, current.json):
        result = patch(body)
        assert result.json == current.json, body
        assert result.headers["etag"] == current.headers["etag"]
    put = client.simulate_put(path, json=current.json, headers=headers)
    assert put.status_code == 200
    assert put.json["version"] == 11
    assert put.json["updatedAt"] == current.json["updatedAt"]


def test_noop_update_with_objects_keeps_version_and_updated_at(client, api, setup):
    org, tool = setup
    condition = {"all": [{"field": "a", "eq": 1}]}
    action = api.create("/actions", org, body_for(tool, headers={"B": "2", "A": "1"},
                                                   inputSchema=SCHEMA, executeIf=condition))
    path, headers = f"/actions/{action['id']}", api.headers(org)
    before = client.simulate_get(path, headers=headers)
    same = client.simulate_put(
        path, json={"headers": {"A": "1", "B": "2"}, "inputSchema": SCHEMA, "executeIf": condition},
        headers=headers)
    assert same.status_code == 200
    assert same.json["version"] == 1
    assert same.json["updatedAt"] == action["updatedAt"]
    assert same.headers["etag"] == before.headers["etag"]


def test_get_modify_put_ignores_read_only_fields(client, api, setup):
    org, tool = setup
    other = api.org("Other")
    action = api.action(org, tool)
    path, headers = f"/actions/{action['id']}", api.headers(org)
    body = client.simulate_get(path, headers=headers).json
    body.update(method="DELETE", id=str(uuid.uuid4()), orgId=other["id"], version=42,
                userId=str(uuid.uuid4()), createdAt="2000-01-01T00:00:00.000Z",
                updatedAt="2000-01-01T00:00:00.000Z")
    result = client.simulate_put(path, json=body, headers=headers)
    assert result.status_code == 200, result.text
    assert result.json["id"] == action["id"]
    assert result.json["orgId"] == org["id"]
    assert result.json["method"] == "DELETE"
    assert result.json["version"] == 2
    assert result.json["createdAt"] == action["createdAt"]
    assert result.json["updatedAt"] > action["updatedAt"]


def test_key_unique_per_org(client, api, setup):
    org, tool = setup
    other_org = api.org("Other")
    api.action(org, tool, key="gh.get_issue")
    second = api.action(org, tool, key="gh.list")

    body = assert_error(api.post("/actions", org, body_for(tool, key="gh.get_issue", name="Other")), 409)
    assert body["error"] == "Conflict"
    assert body["message"] == DUPLICATE
    assert "errors" not in body

    theirs = api.action(other_org, api.tool(other_org), key="gh.get_issue")
    assert theirs["key"] == "gh.get_issue"

    path, headers = f"/actions/{second['id']}", api.headers(org)
    for method in ("PUT", "PATCH"):
        result = client.simulate_request(method, path, json={"key": "gh.get_issue"}, headers=headers)
        assert assert_error(result, 409)["message"] == DUPLICATE
    assert client.simulate_get(path, headers=headers).json == second
    assert len(client.simulate_get("/actions", headers=headers).json) == 2


def test_delete_then_404(client, api, setup):
    org, tool = setup
    action = api.action(org, tool)
    keep = api.action(org, tool)
    path, headers = f"/actions/{action['id']}", api.headers(org)
    result = client.simulate_delete(path, headers=headers)
    assert result.status_code == 204
    assert result.text == ""
    assert assert_error(client.simulate_get(path, headers=headers), 404)["error"] == "Not Found"
    assert_error(client.simulate_delete(path, headers=headers), 404)
    assert_error(client.simulate_put(path, json={"name": "x"}, headers=headers), 404)
    assert [a["id"] for a in client.simulate_get("/actions", headers=headers).json] == [keep["id"]]
    assert [a["id"] for a in client.simulate_get(f"/tools/{tool['id']}", headers=headers).json["actions"]] == [keep["id"]]
    assert_error(client.simulate_get("/actions/not-a-uuid", headers=headers), 404)


def test_other_organizations_action_is_404(client, api, setup):
    org, tool = setup
    other_org = api.org("Other")
    theirs = api.action(other_org, api.tool(other_org), key="their.key")
    path, headers = f"/actions/{theirs['id']}", api.headers(org)

    assert_error(client.simulate_get(path, headers=headers), 404)
    assert_error(client.simulate_put(path, json={"name": "Mine"}, headers=headers), 404)
    assert_error(client.simulate_patch(path, json={"toolId": tool["id"]}, headers=headers), 404)
    assert_error(client.simulate_delete(path, headers=headers), 404)
    # Not found is decided before the body is validated.
    assert_error(client.simulate_patch(path, json={"method": "NOPE"}, headers=headers), 404)
    assert client.simulate_get("/actions", headers=headers).json == []
    assert client.simulate_get(path, headers=api.headers(other_org)).json == theirs
