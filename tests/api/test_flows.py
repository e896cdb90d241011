"""/flows, /flows/{id}, /flows/{id}/versions and /flows/{id}/versions/{n}: CRUD,
step format validation, action references, versioning and tenancy, as
docs/api.md describes them (executing flows is not covered here)."""

from __future__ import annotations

import re
import uuid
from urllib.parse import urlsplit

import pytest

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FLOW_KEYS = {"id", "orgId", "name", "key", "description", "steps", "onFailure", "concurrency", "version", "createdAt",
             "updatedAt"}
VERSION_KEYS = {"version", "steps", "onFailure", "createdAt"}
PHRASES = {400: "Bad Request", 404: "Not Found", 409: "Conflict", 412: "Precondition Failed"}


def transform(step_id: str, **extra) -> dict:
    """A minimal valid step."""
    return {"id": step_id, "type": "transform", "config": {"output": {"from": step_id}}, **extra}


def assert_error(result, status: int, field: str | tuple | None = None) -> dict:
    """The contract's error body; with ``field``, field errors that all name it
    (a tuple lists acceptable alternatives)."""
    assert result.status_code == status, result.text
    body = result.json
    assert body["statusCode"] == status
    assert body["error"] == PHRASES[status]
    assert isinstance(body["message"], str) and body["message"]
    if field is not None:
        errors = body["errors"]
        assert errors and all(set(e) == {"field", "message"} and e["message"] for e in errors), errors
        named = {e["field"] for e in errors}
        assert len(named) == 1, errors
        if isinstance(field, tuple):
            assert named <= set(field), errors
        else:
            assert named == {field}, errors
    return body


def get(client, path, org, **kwargs):
    return client.simulate_get(path, headers=_h(org), **kwargs)


def _h(org, extra: dict | None = None) -> dict:
    headers = {"X-Org-ID": org["id"]}
    headers.update(extra or {})
    return headers


def patch(client, path, org, body, method="PATCH", extra_headers=None):
    return client.simulate_request(method, path, json=body, headers=_h(org, extra_headers))


def next_link(result) -> str:
    """The relative URL of Link rel=next."""
    link = result.headers["Link"]
    match = re.match(r'^<([^>]+)>;\s*rel="?next"?$', link)
    assert match, link
    assert match.group(1).startswith("/"), link
    return match.group(1)


def follow(client, link, org):
    parts = urlsplit(link)
    return client.simulate_get(parts.path, query_string=parts.query, headers=_h(org))


def version_rows(db, flow_id: str) -> list[int]:
    with db.pool.connection() as conn:
        rows = conn.execute(
            "select version from flow_versions where flow_id = %s order by version", (flow_id,)
        ).fetchall()
    return [row["version"] for row in rows]


def moved_since_create(db, table: str, row_id: str) -> bool:
    """updated_at > created_at, read from the database."""
    with db.pool.connection() as conn:
        row = conn.execute(f"select updated_at > created_at as moved from {table} where id = %s",
                           (row_id,)).fetchone()
    return row["moved"]


# ---- create and read ----------------------------------------------------------

def test_create_and_get_flow_with_full_step(client, api):
    org = api.org()
    tool = api.tool(org)
    action = api.action(org, tool, key="github.get_issue")
    steps = [
        {"id": "fetch", "type": "action", "name": "Get issue",
         "config": {"actionKey": "github.get_issue", "inputs": {"number": "{{ variables.n }}"}},
         "executeIf": "{{ variables.n > 0 }}", "dependsOn": [],
         "retryPolicy": {"maxRetries": 3, "backoffStrategy": "exponential", "delayMs": 500},
         "timeoutMs": 30000, "critical": True},
        {"id": "by_id", "type": "action", "config": {"actionId": action["id"]}, "dependsOn": ["fetch"]},
        {"id": "call", "type": "http_request",
         "config": {"method": "POST", "url": "https://hooks.example.com/x",
                    "headers": {"X-A": "b"}, "body": {"id": "{{ steps.fetch.body.id }}"}}},
        {"id": "wait", "type": "delay", "config": {"ms": 0}},
        {"id": "shape", "type": "transform", "config": {"output": None}, "critical": False,
         "retryPolicy": {"backoffStrategy": "fixed"}, "timeoutMs": None, "name": None},
    ]
    result = api.post("/flows", org, {"name": "Triage", "description": "Sort issues", "steps": steps})
    assert result.status_code == 201, result.text
    flow = result.json
    assert set(flow) == FLOW_KEYS
    assert result.headers["Location"] == f"/flows/{flow['id']}"
    assert uuid.UUID(flow["id"])
    assert flow["orgId"] == org["id"]
    assert flow["name"] == "Triage"
    assert flow["description"] == "Sort issues"
    assert flow["steps"] == steps
    assert flow["version"] == 1
    assert TIMESTAMP.match(flow["createdAt"]) and TIMESTAMP.match(flow["updatedAt"])

    fetched = get(client, f"/flows/{flow['id']}", org)
    assert fetched.status_code == 200
    assert fetched.json == flow
    assert fetched.headers["ETag"].startswith('"') and fetched.headers["ETag"].endswith('"')

    versions = get(client, f"/flows/{flow['id']}/versions", org)
    assert versions.status_code == 200
    assert len(versions.json) == 1
    assert set(versions.json[0]) == VERSION_KEYS
    assert versions.json[0]["version"] == 1
    assert versions.json[0]["steps"] == steps
    assert TIMESTAMP.match(versions.json[0]["createdAt"])


def test_create_flow_optional_fields_are_null(api):
    org = api.org()
    flow = api.create("/flows", org, {"steps": [transform("only")]})
    assert flow["name"] is None
    assert flow["key"] is None
    assert flow["description"] is None
    assert flow["version"] == 1
    # explicit null is accepted for the optional fields too
    flow = api.create("/flows", org, {"name": None, "description": None, "steps": [transform("a")]})
    assert flow["name"] is None and flow["description"] is None


def test_create_flow_ignores_read_only_fields(api):
    org = api.org()
    flow = api.create("/flows", org, {
        "id": str(uuid.uuid4()), "orgId": str(uuid.uuid4()), "version": 7,
        "createdAt": "2000-01-01T00:00:00.000Z", "updatedAt": "2000-01-01T00:00:00.000Z",
        "steps": [transform("a")],
    })
    assert flow["version"] == 1
    assert flow["orgId"] == org["id"]
    assert not flow["createdAt"].startswith("2000")


def test_list_flows_newest_first_paginated_and_tenant_scoped(client, api):
    org, other = api.org("A"), api.org("B")
    ids = [api.flow(org, name=f"f{i}")["id"] for i in range(3)]
    api.flow(other)

    result = get(client, "/flows", org)
    assert result.status_code == 200
    assert [f["id"] for f in result.json] == ids[::-1]
    assert all(set(f) == FLOW_KEYS and f["orgId"] == org["id"] for f in result.json)
    assert "Link" not in result.headers and "X-Next-Cursor" not in result.headers

    first = get(client, "/flows", org, params={"limit": "2"})
    assert [f["id"] for f in first.json] == [ids[2], ids[1]]
    link = next_link(first)
    assert first.headers["X-Next-Cursor"] in link
    assert urlsplit(link).path == "/flows"
    second = follow(client, link, org)
    assert second.status_code == 200
    assert [f["id"] for f in second.json] == [ids[0]]
    assert "Link" not in second.headers

    other_list = get(client, "/flows", other)
    assert len(other_list.json) == 1 and other_list.json[0]["orgId"] == other["id"]


def test_list_flows_bad_query(client, api):
    org = api.org()
    api.flow(org)
    for params, field in (({"limit": "0"}, "limit"), ({"limit": "201"}, "limit"), ({"limit": "ten"}, "limit"),
                          ({"cursor": "not-a-cursor"}, "cursor"), ({"name": "Flow"}, "name")):
        assert_error(get(client, "/flows", org, params=params), 400, field)


def test_flow_routes_require_org_header(client, api):
    org = api.org()
    flow = api.flow(org)
    assert_error(client.simulate_get("/flows"), 400, "X-Org-ID")
    assert_error(client.simulate_post("/flows", json={"steps": [transform("a")]}), 400, "X-Org-ID")
    assert_error(client.simulate_get(f"/flows/{flow['id']}/versions"), 400, "X-Org-ID")
    assert_error(client.simulate_get("/flows", headers={"X-Org-ID": str(uuid.uuid4())}), 400, "X-Org-ID")


# ---- step validation --------------------------------------------------------------

def _action(config, **extra):
    return {"id": "act", "type": "action", "config": config, **extra}


def _http(config, **extra):
    return {"id": "req", "type": "http_request", "config": config, **extra}


def _delay(config, **extra):
    return {"id": "pause", "type": "delay", "config": config, **extra}


OK_HTTP = {"method": "GET", "url": "https://api.example.com/x"}

INVALID_STEPS = [
    # the steps array itself
    pytest.param([], "steps", id="empty"),
    pytest.param(None, "steps", id="null"),
    pytest.param("fetch", "steps", id="string"),
    pytest.param({"id": "a"}, "steps", id="object"),
    pytest.param([transform(f"s{i}") for i in range(201)], "steps", id="201-steps"),
    pytest.param(["fetch"], "steps[0]", id="step-not-object"),
    # id
    pytest.param([{"type": "transform", "config": {"output": 1}}], "steps[0].id", id="id-missing"),
    pytest.param([transform("")], "steps[0].id", id="id-empty"),
    pytest.param([transform("bad-id")], "steps[0].id", id="id-dash"),
    pytest.param([transform("has space")], "steps[0].id", id="id-space"),
    pytest.param([transform("a.b")], "steps[0].id", id="id-dot"),
    pytest.param([{"id": 5, "type": "transform", "config": {"output": 1}}], "steps[0].id", id="id-number"),
    pytest.param([transform("a"), transform("a")], "steps[1].id", id="id-duplicate"),
    pytest.param([transform("a"), transform("b"), transform("b")], "steps[2].id", id="id-duplicate-later"),
    # type
    pytest.param([{"id": "a", "config": {"output": 1}}], "steps[0].type", id="type-missing"),
    pytest.param([{"id": "a", "type": "email", "config": {"output": 1}}], "steps[0].type", id="type-unknown"),
    pytest.param([{"id": "a", "type": "Transform", "config": {"output": 1}}], "steps[0].type", id="type-case"),
    # config
    pytest.param([{"id": "a", "type": "transform"}], "steps[0].config", id="config-missing"),
    pytest.param([{"id": "a", "type": "transform", "config": None}], "steps[0].config", id="config-null"),
    pytest.param([{"id": "a", "type": "transform", "config": [1]}], "steps[0].config", id="config-array"),
    pytest.param([{"id": "a", "type": "transform", "config": "x"}], "steps[0].config", id="config-string"),
    # unknown keys
    pytest.param([transform("a", foo=1)], "steps[0].foo", id="step-unknown-key"),
    pytest.param([transform("a"), transform("b", onError="skip")], "steps[1].onError", id="step-unknown-key-2"),
    pytest.param([{"id": "a", "type": "transform", "config": {"output": 1, "input": 2}}],
                 "steps[0].config.input", id="transform-unknown-key"),
    pytest.param([_http({**OK_HTTP, "timeout": 5})], "steps[0].config.timeout", id="http-unknown-key"),
    pytest.param([_delay({"ms": 5, "seconds": 1})], "steps[0].config.seconds", id="delay-unknown-key"),
    pytest.param([_action({"actionKey": "k", "url": "https://x.example.com"})],
                 "steps[0].config.url", id="action-unknown-key"),
    # action
    pytest.param([_action({})], ("steps[0].config.actionId", "steps[0].config.actionKey"), id="action-no-ref"),
    pytest.param([_action({"inputs": {}})], ("steps[0].config.actionId", "steps[0].config.actionKey"),
                 id="action-inputs-only"),
    pytest.param([_action({"actionKey": "k", "actionId": str(uuid.uuid4())})],
                 ("steps[0].config.actionId", "steps[0].config.actionKey"), id="action-both-refs"),
    pytest.param([_action({"actionId": "nope"})], "steps[0].config.actionId", id="action-id-not-uuid"),
    pytest.param([_action({"actionKey": ""})], "steps[0].config.actionKey", id="action-key-empty"),
    pytest.param([_action({"actionKey": 7})], "steps[0].config.actionKey", id="action-key-number"),
    pytest.param([_action({"actionKey": "k", "inputs": []})], "steps[0].config.inputs", id="action-inputs-array"),
    pytest.param([_action({"actionKey": "k", "inputs": "n=1"})], "steps[0].config.inputs", id="action-inputs-string"),
    # http_request
    pytest.param([_http({"url": "https://a.example.com"})], "steps[0].config.method", id="http-method-missing"),
    pytest.param([_http({"method": "FETCH", "url": "https://a.example.com"})], "steps[0].config.method",
                 id="http-method-unknown"),
    pytest.param([_http({"method": "GET"})], "steps[0].config.url", id="http-url-missing"),
    pytest.param([_http({"method": "GET", "url": "ftp://files.example.com/a"})], "steps[0].config.url",
                 id="http-url-ftp"),
    pytest.param([_http({"method": "GET", "url": "/relative/path"})], "steps[0].config.url", id="http-url-relative"),
    pytest.param([_http({"method": "GET", "url": "not a url"})], "steps[0].config.url", id="http-url-garbage"),
    pytest.param([_http({"method": "GET", "url": ""})], "steps[0].config.url", id="http-url-empty"),
    pytest.param([_http({"method": "GET", "url": 42})], "steps[0].config.url", id="http-url-number"),
    pytest.param([_http({**OK_HTTP, "headers": ["X-A: b"]})], "steps[0].config.headers", id="http-headers-array"),
    # delay
    pytest.param([_delay({})], "steps[0].config.ms", id="delay-ms-missing"),
    pytest.param([_delay({"ms": -1})], "steps[0].config.ms", id="delay-ms-negative"),
    pytest.param([_delay({"ms": "500"})], "steps[0].config.ms", id="delay-ms-string"),
    pytest.param([_delay({"ms": 1.5})], "steps[0].config.ms", id="delay-ms-float"),
    pytest.param([_delay({"ms": True})], "steps[0].config.ms", id="delay-ms-bool"),
    pytest.param([_delay({"ms": None})], "steps[0].config.ms", id="delay-ms-null"),
    # transform
    pytest.param([{"id": "a", "type": "transform", "config": {}}], "steps[0].config.output", id="transform-no-output"),
    # dependsOn
    pytest.param([transform("a"), transform("b", dependsOn=["zzz"])], "steps[1].dependsOn", id="depends-unknown"),
    pytest.param([transform("a", dependsOn=["a"])], "steps[0].dependsOn", id="depends-self"),
    pytest.param([transform("a"), transform("b", dependsOn=["a", "b"])], "steps[1].dependsOn",
                 id="depends-self-among-others"),
    pytest.param([transform("a"), transform("b", dependsOn="a")], "steps[1].dependsOn", id="depends-not-list"),
    pytest.param([transform("a", dependsOn=["b"]), transform("b", dependsOn=["a"])],
                 ("steps[0].dependsOn", "steps[1].dependsOn"), id="depends-cycle-2"),
    pytest.param([transform("a", dependsOn=[]), transform("b", dependsOn=["c"]),
                  transform("c", dependsOn=["d"]), transform("d", dependsOn=["b"])],
                 ("steps[1].dependsOn", "steps[2].dependsOn", "steps[3].dependsOn"), id="depends-cycle-3"),
    # retryPolicy, timeoutMs, critical
    pytest.param([transform("a", retryPolicy={"backoffStrategy": "linear"})],
                 "steps[0].retryPolicy.backoffStrategy", id="retry-strategy"),
    pytest.param([transform("a", retryPolicy={"maxRetries": -1})], "steps[0].retryPolicy.maxRetries",
                 id="retry-max-negative"),
    pytest.param([transform("a", retryPolicy={"maxRetries": "3"})], "steps[0].retryPolicy.maxRetries",
                 id="retry-max-string"),
    pytest.param([transform("a", retryPolicy={"delayMs": -5})], "steps[0].retryPolicy.delayMs",
                 id="retry-delay-negative"),
    pytest.param([transform("a", retryPolicy={"delayMs": 0.5})], "steps[0].retryPolicy.delayMs",
                 id="retry-delay-float"),
    pytest.param([transform("a", retryPolicy={"maxRetries": 1, "jitter": True})], "steps[0].retryPolicy.jitter",
                 id="retry-unknown-key"),
    pytest.param([transform("a", retryPolicy=[3])], "steps[0].retryPolicy", id="retry-not-object"),
    pytest.param([transform("a", timeoutMs="1000")], "steps[0].timeoutMs", id="timeout-string"),
    pytest.param([transform("a", timeoutMs=-1)], "steps[0].timeoutMs", id="timeout-negative"),
    pytest.param([transform("a", critical="yes")], "steps[0].critical", id="critical-string"),
    pytest.param([transform("a", critical="false")], "steps[0].critical", id="critical-string-false"),
    pytest.param([transform("a", critical=1)], "steps[0].critical", id="critical-number"),
]


@pytest.mark.parametrize("steps, field", INVALID_STEPS)
def test_create_flow_rejects_invalid_steps(client, api, steps, field):
    org = api.org()
    body = {"name": "Bad", "steps": steps}
    assert_error(api.post("/flows", org, body), 400, field)
    assert get(client, "/flows", org).json == []


def test_create_flow_requires_steps_and_rejects_unknown_fields(client, api):
    org = api.org()
    assert_error(api.post("/flows", org, {"name": "No steps"}), 400, "steps")
    assert_error(api.post("/flows", org, {"steps": [transform("a")], "trigger": "cron"}), 400, "trigger")
    assert_error(api.post("/flows", org, {"steps": [transform("a")], "name": "x" * 201}), 400, "name")
    assert_error(api.post("/flows", org, {"steps": [transform("a")], "name": 5}), 400, "name")
    result = client.simulate_post("/flows", body="[1]", headers={**_h(org), "Content-Type": "application/json"})
    assert_error(result, 400)
    result = client.simulate_post("/flows", body="{bad", headers={**_h(org), "Content-Type": "application/json"})
    assert_error(result, 400)
    assert get(client, "/flows", org).json == []


def test_create_flow_accepts_valid_edge_cases(api):
    org = api.org()
    steps = [
        # a forward dependency is fine when the target does not (by default) depend back
        transform("first", dependsOn=["_second2"]),
        transform("_second2", dependsOn=[]),
        _http({"method": "HEAD", "url": "{{ variables.url }}"}),
        {"id": "templ", "type": "http_request",
         "config": {"method": "OPTIONS", "url": "https://{{ variables.host }}/v1/items"}},
        {"id": "local", "type": "http_request", "config": {"method": "DELETE", "url": "http://localhost:8080/x"}},
        _delay({"ms": 604_800_000}),
        _action({"actionKey": "k.local", "inputs": {}}),
        {"id": "Z9", "type": "transform", "config": {"output": [1, "{{ steps.first }}", {"a": None}]},
         "dependsOn": ["first", "templ", "local"], "retryPolicy": {}, "critical": None},
    ]
    api.action(org, api.tool(org), key="k.local")
    flow = api.create("/flows", org, {"steps": steps})
    assert flow["steps"] == steps
    assert flow["version"] == 1

    many = [transform(f"s{i}") for i in range(200)]
    flow = api.create("/flows", org, {"steps": many})
    assert len(flow["steps"]) == 200


# ---- action references -----------------------------------------------------------------

def test_action_step_must_name_an_action_of_the_callers_org(client, api):
    org, other = api.org("A"), api.org("B")
    mine = api.action(org, api.tool(org), key="mine.get")
    theirs = api.action(other, api.tool(other), key="theirs.get")
    lead = transform("lead")

    cases = [
        ({"actionKey": "theirs.get"}, "steps[1].config.actionKey"),
        ({"actionKey": "nobody.get"}, "steps[1].config.actionKey"),
        ({"actionId": theirs["id"]}, "steps[1].config.actionId"),
        ({"actionId": str(uuid.uuid4())}, "steps[1].config.actionId"),
    ]
    for config, field in cases:
        result = api.post("/flows", org, {"steps": [lead, {"id": "call", "type": "action", "config": config}]})
        assert_error(result, 400, field)
    assert get(client, "/flows", org).json == []

    by_key = api.create("/flows", org, {"steps": [lead, {"id": "call", "type": "action",
                                                         "config": {"actionKey": "mine.get"}}]})
    by_id = api.create("/flows", org, {"steps": [{"id": "call", "type": "action",
                                                  "config": {"actionId": mine["id"], "inputs": {"id": 1}}}]})
    assert by_key["steps"][1]["config"] == {"actionKey": "mine.get"}
    assert by_id["steps"][0]["config"]["actionId"] == mine["id"]
    # the other org can use its own action, not ours
    api.create("/flows", other, {"steps": [{"id": "c", "type": "action", "config": {"actionKey": "theirs.get"}}]})
    assert_error(api.post("/flows", other, {"steps": [{"id": "c", "type": "action",
                                                        "config": {"actionId": mine["id"]}}]}),
                 400, "steps[0].config.actionId")

    # updates are checked the same way and leave the flow untouched when refused
    path = f"/flows/{by_key['id']}"
    for method in ("PATCH", "PUT"):
        result = patch(client, path, org, {"steps": [{"id": "x", "type": "action",
                                                      "config": {"actionKey": "theirs.get"}}]}, method)
        assert_error(result, 400, "steps[0].config.actionKey")
    assert get(client, path, org).json == by_key


def test_delete_action_used_by_flow_is_not_blocked_by_steps(client, api):
    """Steps hold references as JSON; the flow stays readable if its action is deleted."""
    org = api.org()
    action = api.action(org, api.tool(org), key="gone.soon")
    flow = api.create("/flows", org, {"steps": [{"id": "c", "type": "action", "config": {"actionKey": "gone.soon"}}]})
    assert client.simulate_delete(f"/actions/{action['id']}", headers=_h(org)).status_code == 204
    assert get(client, f"/flows/{flow['id']}", org).json == flow


# ---- updates and versions ------------------------------------------------------------------

def test_flow_key_is_optional_settable_and_does_not_change_the_version(client, api):
    org = api.org()
    flow = api.create("/flows", org, {"name": "F", "key": "billing.v2-run_1", "steps": [transform("a")]})
    assert flow["key"] == "billing.v2-run_1" and flow["version"] == 1
    path = f"/flows/{flow['id']}"
    assert get(client, path, org).json["key"] == "billing.v2-run_1"
    assert [f["key"] for f in get(client, "/flows", org).json] == ["billing.v2-run_1"]
    renamed = patch(client, path, org, {"key": "billing"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json["key"] == "billing" and renamed.json["version"] == 1
    # An update without key keeps it (PUT is partial too).
    for method in ("PATCH", "PUT"):
        kept = patch(client, path, org, {"name": "G", "steps": [transform("a")]}, method=method)
        assert kept.status_code == 200, kept.text
        assert kept.json["key"] == "billing" and kept.json["version"] == 1
    assert patch(client, path, org, {"key": "k" * 64}).json["key"] == "k" * 64
    assert patch(client, path, org, {"key": None}).json["key"] is None


@pytest.mark.parametrize("key", ["", "Billing", "-lead", ".x", "has space", "k" * 65, "é", 7, ["x"]])
def test_flow_key_format_is_checked(client, api, key):
    org = api.org()
    assert_error(api.post("/flows", org, {"key": key, "steps": [transform("a")]}), 400, "key")
    flow = api.flow(org)
    assert_error(patch(client, f"/flows/{flow['id']}", org, {"key": key}), 400, "key")


def test_flow_key_unique_per_org(client, api):
    org, other = api.org("A"), api.org("B")
    api.create("/flows", org, {"key": "billing", "steps": [transform("a")]})
    second = api.create("/flows", org, {"key": "shipping", "steps": [transform("a")]})
    body = assert_error(api.post("/flows", org, {"key": "billing", "steps": [transform("a")]}), 409)
    assert body["message"] == "A flow with this key already exists in this organization."
    assert "errors" not in body
    path = f"/flows/{second['id']}"
    for method in ("PUT", "PATCH"):
        result = patch(client, path, org, {"key": "billing", "steps": [transform("a")]}, method=method)
        assert_error(result, 409)
    assert get(client, path, org).json == second
    # Another organization may use the same key; flows without a key never clash.
    assert api.create("/flows", other, {"key": "billing", "steps": [transform("a")]})["key"] == "billing"
    assert api.flow(org)["key"] is None and api.flow(org)["key"] is None


def test_version_rises_only_when_steps_really_change(client, api, db):
    org = api.org()
    steps_v1 = [transform("a"), {"id": "b", "type": "delay", "config": {"ms": 10}, "dependsOn": ["a"]}]
    flow = api.create("/flows", org, {"name": "F", "description": "d", "steps": steps_v1})
    path = f"/flows/{flow['id']}"
    etag_v1 = get(client, path, org).headers["ETag"]

    # name/description change: no version bump, updatedAt moves
    renamed = patch(client, path, org, {"name": "G", "description": "e"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json["version"] == 1
    assert renamed.json["name"] == "G" and renamed.json["description"] == "e"
    assert renamed.json["steps"] == steps_v1
    assert renamed.json["updatedAt"] >= flow["updatedAt"]
    assert moved_since_create(db, "flows", flow["id"])  # microsecond precision, unlike the API's
    assert renamed.json["createdAt"] == flow["createdAt"]
    assert renamed.headers["ETag"] != etag_v1
    etag = renamed.headers["ETag"]

    # the same steps again (even with keys in another order, and the same name): nothing changes
    reordered = [{"config": {"output": {"from": "a"}}, "type": "transform", "id": "a"},
                 {"dependsOn": ["a"], "config": {"ms": 10}, "type": "delay", "id": "b"}]
    for method, body in (("PUT", {"steps": steps_v1}), ("PATCH", {"steps": reordered, "name": "G"}),
                         ("PUT", renamed.json)):
        same = patch(client, path, org, body, method)
        assert same.status_code == 200, same.text
        assert same.json["version"] == 1
        assert same.json["updatedAt"] == renamed.json["updatedAt"]
        assert same.headers["ETag"] == etag
    assert get(client, path, org).headers["ETag"] == etag

    # real step changes bump by exactly one each time
    steps_v2 = [transform("a")]
    v2 = patch(client, path, org, {"steps": steps_v2})
    assert v2.status_code == 200
    assert v2.json["version"] == 2 and v2.json["steps"] == steps_v2
    steps_v3 = [transform("a"), transform("c")]
    v3 = patch(client, path, org, {"steps": steps_v3}, "PUT")
    assert v3.json["version"] == 3
    v4 = patch(client, path, org, {"steps": steps_v1, "name": "H"})
    assert v4.json["version"] == 4 and v4.json["name"] == "H"
    # a rename after that does not create a version
    v4b = patch(client, path, org, {"name": "I"})
    assert v4b.json["version"] == 4

    versions = get(client, f"{path}/versions", org)
    assert versions.status_code == 200
    assert [v["version"] for v in versions.json] == [4, 3, 2, 1]
    assert [v["steps"] for v in versions.json] == [steps_v1, steps_v3, steps_v2, steps_v1]
    assert all(set(v) == VERSION_KEYS for v in versions.json)

    for number, steps in ((1, steps_v1), (2, steps_v2), (3, steps_v3), (4, steps_v1)):
        one = get(client, f"{path}/versions/{number}", org)
        assert one.status_code == 200, one.text
        assert one.json["version"] == number
        assert one.json["steps"] == steps
        assert set(one.json) == VERSION_KEYS
        assert one.headers.get("ETag")
    assert versions.json[0]["createdAt"] >= versions.json[-1]["createdAt"]


def test_unknown_or_malformed_version_is_404(client, api):
    org = api.org()
    flow = api.flow(org)
    patch(client, f"/flows/{flow['id']}", org, {"steps": [transform("x")]})  # version 2 exists
    assert get(client, f"/flows/{flow['id']}/versions/2", org).status_code == 200
    for number in ("3", "0", "-1", "abc", "1.0", "1e0", "+1", "99999999999999999999"):
        assert_error(get(client, f"/flows/{flow['id']}/versions/{number}", org), 404)


def test_versions_are_paginated_newest_first(client, api):
    org = api.org()
    flow = api.flow(org)
    path = f"/flows/{flow['id']}"
    for i in range(4):
        assert patch(client, path, org, {"steps": [transform(f"v{i + 2}")]}).json["version"] == i + 2

    first = get(client, f"{path}/versions", org, params={"limit": "2"})
    assert first.status_code == 200
    assert [v["version"] for v in first.json] == [5, 4]
    link = next_link(first)
    assert urlsplit(link).path == f"{path}/versions"
    assert first.headers["X-Next-Cursor"] in link
    assert "limit=2" in link
    second = follow(client, link, org)
    assert [v["version"] for v in second.json] == [3, 2]
    third = follow(client, next_link(second), org)
    assert [v["version"] for v in third.json] == [1]
    assert third.json[0]["steps"] == flow["steps"]
    assert "Link" not in third.headers and "X-Next-Cursor" not in third.headers

    cursor = first.headers["X-Next-Cursor"]
    by_cursor = get(client, f"{path}/versions", org, params={"cursor": cursor})
    assert [v["version"] for v in by_cursor.json] == [3, 2, 1]

    assert_error(get(client, f"{path}/versions", org, params={"limit": "0"}), 400, "limit")
    assert_error(get(client, f"{path}/versions", org, params={"limit": "201"}), 400, "limit")
    assert_error(get(client, f"{path}/versions", org, params={"cursor": "%%%"}), 400, "cursor")
    assert_error(get(client, f"{path}/versions", org, params={"version": "1"}), 400, "version")


def test_partial_update_keeps_unsent_fields(client, api):
    org = api.org()
    steps = [transform("a")]
    flow = api.create("/flows", org, {"name": "N", "description": "D", "steps": steps})
    path = f"/flows/{flow['id']}"

    result = patch(client, path, org, {"description": "only this"}, "PUT")
    assert result.status_code == 200
    assert (result.json["name"], result.json["description"], result.json["steps"]) == ("N", "only this", steps)

    result = patch(client, path, org, {"description": None})
    assert result.status_code == 200
    assert result.json["description"] is None and result.json["name"] == "N"

    result = patch(client, path, org, {"name": None}, "PUT")
    assert result.json["name"] is None and result.json["steps"] == steps

    # an empty object changes nothing
    before = get(client, path, org)
    result = patch(client, path, org, {})
    assert result.status_code == 200 and result.json == before.json

    # a GET body can be modified and PUT back (read-only fields are ignored)
    body = dict(before.json, name="Round trip", version=99, id=str(uuid.uuid4()), orgId=str(uuid.uuid4()))
    result = patch(client, path, org, body, "PUT")
    assert result.status_code == 200, result.text
    assert result.json["name"] == "Round trip"
    assert result.json["id"] == flow["id"] and result.json["orgId"] == org["id"]
    assert result.json["version"] == 1


@pytest.mark.parametrize("body, field", [
    ({"steps": None}, "steps"),
    ({"steps": []}, "steps"),
    ({"steps": [transform("a"), transform("a")]}, "steps[1].id"),
    ({"steps": [{"id": "r", "type": "http_request", "config": {"method": "GET", "url": "nope"}}]},
     "steps[0].config.url"),
    ({"steps": [transform("a", dependsOn=["a"])]}, "steps[0].dependsOn"),
    ({"name": "x" * 201}, "name"),
    ({"owner": "me"}, "owner"),
])
def test_update_validation_leaves_flow_unchanged(client, api, body, field):
    org = api.org()
    flow = api.flow(org)
    path = f"/flows/{flow['id']}"
    for method in ("PATCH", "PUT"):
        assert_error(patch(client, path, org, body, method), 400, field)
    assert get(client, path, org).json == flow
    assert [v["version"] for v in get(client, f"{path}/versions", org).json] == [1]


def test_if_match_on_flow_updates_and_delete(client, api):
    org = api.org()
    flow = api.flow(org)
    path = f"/flows/{flow['id']}"
    etag = get(client, path, org).headers["ETag"]
    assert_error(patch(client, path, org, {"name": "x"}, extra_headers={"If-Match": '"stale"'}), 412)
    assert get(client, path, org).json["name"] == "Flow"
    ok = patch(client, path, org, {"name": "x"}, extra_headers={"If-Match": etag})
    assert ok.status_code == 200 and ok.json["name"] == "x"
    assert_error(client.simulate_delete(path, headers=_h(org, {"If-Match": etag})), 412)
    assert client.simulate_delete(path, headers=_h(org, {"If-Match": ok.headers["ETag"]})).status_code == 204


# ---- delete ---------------------------------------------------------------------------------

def test_delete_flow_removes_its_versions(client, api, db):
    org = api.org()
    flow = api.flow(org)
    keep = api.flow(org)
    path = f"/flows/{flow['id']}"
    patch(client, path, org, {"steps": [transform("two")]})
    assert version_rows(db, flow["id"]) == [1, 2]

    result = client.simulate_delete(path, headers=_h(org))
    assert result.status_code == 204
    assert result.text == ""
    assert_error(get(client, path, org), 404)
    assert_error(get(client, f"{path}/versions", org), 404)
    assert_error(get(client, f"{path}/versions/1", org), 404)
    assert version_rows(db, flow["id"]) == []
    assert_error(client.simulate_delete(path, headers=_h(org)), 404)
    # the other flow is untouched
    assert version_rows(db, keep["id"]) == [1]
    assert [f["id"] for f in get(client, "/flows", org).json] == [keep["id"]]


def test_delete_flow_with_execution_logs_is_409(client, api, db):
    org = api.org()
    user = api.user(org)
    flow = api.flow(org)
    log = api.log(org, user, flow)
    path = f"/flows/{flow['id']}"

    body = assert_error(client.simulate_delete(path, headers=_h(org)), 409)
    assert "execution log" in body["message"].lower()
    assert get(client, path, org).json == flow
    assert version_rows(db, flow["id"]) == [1]

    assert client.simulate_delete(f"/execution-logs/{log['id']}", headers=_h(org)).status_code == 204
    assert client.simulate_delete(path, headers=_h(org)).status_code == 204
    assert version_rows(db, flow["id"]) == []


# ---- tenancy -------------------------------------------------------------------------------

def test_another_orgs_flow_is_404_on_every_item_route(client, api):
    org, other = api.org("A"), api.org("B")
    flow = api.flow(org)
    path = f"/flows/{flow['id']}"
    assert_error(get(client, path, other), 404)
    assert_error(patch(client, path, other, {"name": "stolen"}), 404)
    assert_error(patch(client, path, other, {"steps": [transform("x")]}, "PUT"), 404)
    assert_error(client.simulate_delete(path, headers=_h(other)), 404)
    assert_error(get(client, f"{path}/versions", other), 404)
    assert_error(get(client, f"{path}/versions/1", other), 404)
    # 404 comes before body and query validation
    assert_error(patch(client, path, other, {"steps": []}), 404)
    assert_error(get(client, f"{path}/versions", other, params={"limit": "0"}), 404)
    # untouched for its owner
    assert get(client, path, org).json == flow
    assert [v["version"] for v in get(client, f"{path}/versions", org).json] == [1]


@pytest.mark.parametrize("flow_id", ["7d4c5a36-2f0e-4d59-9a4e-0b6f1c2d3e4f", "not-a-uuid", "123"])
def test_missing_or_malformed_flow_id_is_404(client, api, flow_id):
    org = api.org()
    path = f"/flows/{flow_id}"
    assert_error(get(client, path, org), 404)
    assert_error(patch(client, path, org, {"name": "x"}), 404)
    assert_error(patch(client, path, org, {"name": "x"}, "PUT"), 404)
    assert_error(client.simulate_delete(path, headers=_h(org)), 404)
    assert_error(get(client, f"{path}/versions", org), 404)
    assert_error(get(client, f"{path}/versions/1", org), 404)


def test_flow_steps_are_replaced_whole_not_merged(client, api):
    org = api.org()
    steps = [transform("a", retryPolicy={"maxRetries": 2, "delayMs": 100}), transform("b")]
    flow = api.create("/flows", org, {"steps": steps})
    replacement = [transform("a", retryPolicy={"maxRetries": 5})]
    result = patch(client, f"/flows/{flow['id']}", org, {"steps": replacement})
    assert result.json["steps"] == replacement
    assert get(client, f"/flows/{flow['id']}", org).json["steps"] == replacement
