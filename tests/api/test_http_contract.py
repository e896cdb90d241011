"""Cross-cutting HTTP rules of docs/api.md (conventions, errors, order of checks, lists, ETags):
the order of checks, the error body, X-Request-ID, ETags and If-Match, keyset
pagination of every list, which routes need tenant headers, trailing slashes,
and a broad sample of hostile input that must never produce a 500."""

from __future__ import annotations

import base64
import http
import itertools
import json
import random
import re
import uuid
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tolstoy.api.app import build_routes
from tolstoy.api.middleware import allowed_methods

MIB = 1024 * 1024
JSON = {"Content-Type": "application/json"}
ERROR_KEYS = {"statusCode", "error", "message"}
# A 429 over one of the organization's quotas also names the quota and its limit.
QUOTA_KEYS = ERROR_KEYS | {"quota", "limit"}
# Routes without tenant headers: organizations, health and docs (and signed inbound webhooks, "triggers").
EXEMPT_PREFIXES = ("/organizations", "/health", "/status", "/detailed", "/version", "/openapi.json", "/docs",
                   "/hooks/", "/approvals/")
# Public routes that no prefix names: the welcome line, the OAuth callback (its state names the organization).
EXEMPT_TEMPLATES = ("/", "/auth/{tool_key}/callback")


# ---- helpers ---------------------------------------------------------------------

def assert_error(result, status: int, field: str | None = None, *, validation: bool | None = None) -> dict:
    """The contract's error body: statusCode, reason phrase, message; errors only for validation."""
    assert result.status_code == status, (result.status_code, result.text)
    assert result.headers.get("content-type", "").startswith("application/json")
    assert result.headers.get("X-Request-ID")
    body = result.json
    assert set(body) in ((ERROR_KEYS, ERROR_KEYS | {"errors"}) + ((QUOTA_KEYS,) if status == 429 else ())), body
    assert body["statusCode"] == status
    assert body["error"] == http.HTTPStatus(status).phrase
    assert isinstance(body["message"], str) and body["message"]
    if validation is None:
        validation = field is not None
    if validation:
        assert body.get("errors"), body
        for error in body["errors"]:
            assert set(error) == {"field", "message"} and error["field"] and error["message"], error
    else:
        assert "errors" not in body, body
    if field is not None:
        assert body["errors"][0]["field"] == field, body
    return body


def send(client, method: str, path: str, body=None, headers: dict | None = None, content_type="application/json",
         **kwargs):
    """A request with a raw body (bytes/str) or a JSON value (dumped with ASCII escapes)."""
    headers = dict(headers or {})
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if body is not None and content_type is not None:
        headers.setdefault("Content-Type", content_type)
    return client.simulate_request(method, path, body=body, headers=headers, **kwargs)


def other_uuid() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def world(api):
    """Two organizations, each with a user, a tool, an action, a flow and an execution log."""
    data = {}
    for label in ("a", "b"):
        org = api.org(f"Org {label}")
        user = api.user(org)
        tool = api.tool(org, baseUrl="http://127.0.0.1:1")  # nothing listens: executing an action never leaves
        action = api.action(org, tool)
        flow = api.flow(org)
        log = api.log(org, user, flow)
        data[label] = {"org": org, "user": user, "tool": tool, "action": action, "flow": flow, "log": log,
                       "headers": api.headers(org, user)}
    return data


# ---- order of checks ------------------------------------------------------------------

def test_unknown_route_is_404_before_every_other_check(client):
    # ("/" is the original service's welcome line: GET / is 200, test_compat.py.)
    for path in ["/nope", "/tools/a/b/c", "/organizations/x/y", "/flows/x/versions/1/z", "/Tools"]:
        # Too large, not JSON and no tenant headers: still 404.
        result = send(client, "POST", path, body="x" * (MIB + 10), content_type="text/plain")
        assert_error(result, 404)
        assert_error(client.simulate_get(path), 404)
        assert_error(client.simulate_delete(path, headers={"X-Org-ID": "bad"}), 404)


def test_wrong_method_is_405_with_allow_on_every_route(client, db, config):
    routes = build_routes(db, config)
    methods = allowed_methods(routes)
    checked = 0
    for template, _, _ in routes:
        path = re.sub(r"\{\w+\}", lambda m: "1" if m.group() == "{version}" else other_uuid(), template)
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            if method in methods[template]:
                continue
            # No tenant headers, an oversized non-JSON body: the 405 answers first.
            result = send(client, method, path, body="x" * (MIB + 1), content_type="text/plain",
                          headers={"X-Org-ID": "not-a-uuid"})
            assert_error(result, 405)
            allow = {m.strip() for m in result.headers["Allow"].split(",")}
            assert methods[template] <= allow, (template, allow)
            assert method not in allow
            checked += 1
    assert checked > 20


def test_body_over_one_mebibyte_is_413_before_content_type_and_tenant(client, world):
    big = "x" * (MIB + 1)
    assert_error(send(client, "POST", "/tools", body=big, content_type="text/plain"), 413)
    assert_error(send(client, "POST", "/tools", body=big, headers={"X-Org-ID": "nope"}), 413)
    tool = world["a"]["tool"]
    assert_error(send(client, "PATCH", f"/tools/{tool['id']}", body=big), 413)
    assert_error(send(client, "PUT", f"/tools/{other_uuid()}", body=big, headers={"If-Match": '"x"'}), 413)
    assert_error(send(client, "POST", "/organizations", body=big), 413)


def test_body_of_exactly_one_mebibyte_is_read(client):
    body = json.dumps({"name": "Org", "padding": ""})
    body = body.replace('""', '"' + "p" * (MIB - len(body)) + '"')
    assert len(body.encode()) == MIB
    # Read and validated (the padding field is unknown), not refused for size.
    assert_error(send(client, "POST", "/organizations", body=body), 400, "padding")


def test_non_json_body_is_415_before_tenant_headers_and_parsing(client, world):
    tool = world["a"]["tool"]
    bad_tenant = {"X-Org-ID": "not-a-uuid"}
    cases = [("POST", "/tools"), ("PUT", f"/tools/{tool['id']}"), ("PATCH", f"/tools/{other_uuid()}"),
             ("POST", "/organizations"), ("PATCH", "/tools/not-a-uuid")]
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                         "application/jsonp", "text/json", "application/xml", None]:
        for method, path in cases:
            result = send(client, method, path, body="{malformed", headers=bad_tenant, content_type=content_type)
            assert_error(result, 415)
    # A valid body with a wrong type is refused as well, and nothing changes.
    result = send(client, "PATCH", f"/tools/{tool['id']}", body={"authType": "basic"},
                  headers=world["a"]["headers"], content_type="text/plain")
    assert_error(result, 415)
    assert client.simulate_get(f"/tools/{tool['id']}", headers=world["a"]["headers"]).json["authType"] == "none"


def test_json_content_types_are_accepted(client, world):
    a = world["a"]
    for content_type in ["application/json", "application/json; charset=utf-8", "application/merge-patch+json",
                         "Application/JSON"]:
        headers = {**a["headers"], "Content-Type": content_type}
        created = client.simulate_post("/tools", body=json.dumps(
            {"name": f"t-{uuid.uuid4().hex[:6]}", "baseUrl": "https://x.example", "authType": "none"}),
            headers=headers)
        assert created.status_code == 201, (content_type, created.text)
        patched = client.simulate_patch(f"/tools/{created.json['id']}", body='{"authType": "bearer"}',
                                        headers=headers)
        assert patched.status_code == 200, (content_type, patched.text)
        assert patched.json["authType"] == "bearer"


def test_tenant_header_problems_are_400_naming_the_header(client, world):
    a, b = world["a"], world["b"]
    org_id = a["org"]["id"]
    for headers, field in [
        ({}, "X-Org-ID"),
        ({"X-Org-ID": ""}, "X-Org-ID"),
        ({"X-Org-ID": "acme"}, "X-Org-ID"),
        ({"X-Org-ID": other_uuid()}, "X-Org-ID"),  # well-formed, no such organization
        ({"X-Org-ID": other_uuid(), "X-User-ID": a["user"]["id"]}, "X-Org-ID"),
        ({"X-Org-ID": org_id, "X-User-ID": "ada"}, "X-User-ID"),
        ({"X-Org-ID": org_id, "X-User-ID": other_uuid()}, "X-User-ID"),  # no such user
        ({"X-Org-ID": org_id, "X-User-ID": b["user"]["id"]}, "X-User-ID"),  # a user of another org
    ]:
        check_tenant_problem(client, world, headers, field)


def check_tenant_problem(client, world, headers: dict, field: str) -> None:
    a = world["a"]
    tool_id = a["tool"]["id"]
    requests = [
        ("GET", "/tools", None),
        ("GET", f"/tools/{tool_id}", None),
        ("GET", f"/tools/{other_uuid()}", None),  # tenant beats 404
        ("GET", "/tools/not-a-uuid", None),
        ("POST", "/tools", "{malformed"),  # tenant beats malformed JSON
        ("POST", "/execution-logs", ""),  # ... and an empty body
        ("PATCH", f"/tools/{tool_id}", '{"authType": "bogus"}'),
        ("DELETE", f"/tools/{tool_id}", None),
        ("GET", "/tools?limit=0", None),  # tenant beats query validation
    ]
    for method, path, body in requests:
        assert_error(send(client, method, path, body=body, headers=headers), 400, field)
    # Nothing was changed or deleted.
    assert client.simulate_get(f"/tools/{tool_id}", headers=a["headers"]).status_code == 200


def test_valid_tenant_headers_with_and_without_user(client, world):
    a = world["a"]
    assert client.simulate_get("/tools", headers={"X-Org-ID": a["org"]["id"]}).status_code == 200
    assert client.simulate_get("/tools", headers=a["headers"]).status_code == 200
    # Upper case is still the same UUID.
    assert client.simulate_get("/tools", headers={"X-Org-ID": a["org"]["id"].upper()}).status_code == 200


def test_malformed_empty_or_non_object_body_is_400_before_404(client, world):
    headers = world["a"]["headers"]
    bodies = ["{malformed", "", "   ", "[]", "[{}]", "null", "1", '"text"', "true", '{"a": NaN}', '{"a": 1e400}',
              '{"name": "x",}', "{'name': 'x'}", '{"name": "x"} trailing']
    targets = [("PATCH", f"/tools/{other_uuid()}"), ("PUT", f"/users/{other_uuid()}"),
               ("PATCH", f"/tools/{world['b']['tool']['id']}"), ("PUT", "/flows/not-a-uuid"),
               ("POST", "/tools"), ("POST", "/organizations"), ("PATCH", f"/organizations/{other_uuid()}")]
    for body, (method, path) in itertools.product(bodies, targets):
        assert_error(send(client, method, path, body=body, headers=headers), 400, "body")


def test_record_not_found_is_404_before_if_match_and_validation(client, world):
    a, b = world["a"], world["b"]
    headers = {**a["headers"], "If-Match": '"stale"'}
    invalid = {"authType": "bogus", "unknown": 1}
    for path in [f"/tools/{other_uuid()}", "/tools/not-a-uuid", f"/tools/{b['tool']['id']}", "/tools/%00",
                 f"/tools/{a['tool']['id']}x"]:
        for method in ("PUT", "PATCH"):
            assert_error(send(client, method, path, body=invalid, headers=headers), 404)
        assert_error(send(client, "DELETE", path, headers=headers), 404)
        assert_error(client.simulate_get(path, headers=a["headers"]), 404)


def test_other_orgs_records_are_404_everywhere(client, world):
    a, b = world["a"], world["b"]
    for kind, path in [("user", "/users"), ("tool", "/tools"), ("action", "/actions"), ("flow", "/flows"),
                       ("log", "/execution-logs")]:
        item = f"{path}/{b[kind]['id']}"
        assert_error(client.simulate_get(item, headers=a["headers"]), 404)
        assert_error(send(client, "PATCH", item, body={}, headers=a["headers"]), 404)
        assert_error(send(client, "PUT", item, body={}, headers=a["headers"]), 404)
        assert_error(client.simulate_delete(item, headers=a["headers"]), 404)
        assert client.simulate_get(item, headers=b["headers"]).status_code == 200
    versions = f"/flows/{b['flow']['id']}/versions"
    assert_error(client.simulate_get(versions, headers=a["headers"]), 404)
    assert_error(client.simulate_get(f"{versions}/1", headers=a["headers"]), 404)


def test_if_match_mismatch_is_412_before_field_validation(client, world):
    a = world["a"]
    tool = a["tool"]
    headers = {**a["headers"], "If-Match": '"stale"'}
    for method in ("PUT", "PATCH"):
        result = send(client, method, f"/tools/{tool['id']}", body={"authType": "bogus", "unknown": 1},
                      headers=headers)
        assert_error(result, 412)
    # A reference to another organization's tool is also checked after If-Match.
    result = send(client, "PATCH", f"/actions/{a['action']['id']}", body={"toolId": world["b"]["tool"]["id"]},
                  headers=headers)
    assert_error(result, 412)


def test_field_validation_before_unseen_references_before_conflicts(client, world, api):
    a, b = world["a"], world["b"]
    headers = a["headers"]
    taken_key = a["action"]["key"]
    foreign_tool = b["tool"]["id"]
    body = {"toolId": foreign_tool, "name": "n", "key": taken_key, "method": "BOGUS", "endpoint": "/x"}
    # Field validation (method) wins over the unseen tool and the taken key.
    assert_error(send(client, "POST", "/actions", body=body, headers=headers), 400, "method")
    # Then the unseen reference (400 naming toolId) wins over the duplicate key (409).
    body["method"] = "GET"
    assert_error(send(client, "POST", "/actions", body=body, headers=headers), 400, "toolId")
    assert_error(send(client, "POST", "/actions", body={**body, "toolId": other_uuid()}, headers=headers),
                 400, "toolId")
    # With a visible tool the duplicate key is the remaining problem: 409.
    conflict = assert_error(send(client, "POST", "/actions", body={**body, "toolId": a["tool"]["id"]},
                                 headers=headers), 409)
    assert "key" in conflict["message"].lower()
    # Same order on updates.
    other_action = api.action(a["org"], a["tool"])
    item = f"/actions/{other_action['id']}"
    assert_error(send(client, "PATCH", item, body={"key": taken_key, "toolId": foreign_tool, "endpoint": "x"},
                      headers=headers), 400, "endpoint")
    assert_error(send(client, "PATCH", item, body={"key": taken_key, "toolId": foreign_tool}, headers=headers),
                 400, "toolId")
    assert_error(send(client, "PATCH", item, body={"key": taken_key}, headers=headers), 409)
    # Execution logs: a flow of another organization is an unseen reference.
    log_body = {"flowId": b["flow"]["id"], "executionId": "r", "stepKey": "s", "status": "done", "inputs": {}}
    assert_error(send(client, "POST", "/execution-logs", body=log_body, headers=headers), 400, "status")
    log_body["status"] = "completed"
    assert_error(send(client, "POST", "/execution-logs", body=log_body, headers=headers), 400, "flowId")
    # Validation also beats a unique conflict on a plain record.
    tool_body = {"name": a["tool"]["name"], "baseUrl": "ftp://x", "authType": "none"}
    assert_error(send(client, "POST", "/tools", body=tool_body, headers=headers), 400, "baseUrl")
    tool_body["baseUrl"] = "https://x.example"
    assert_error(send(client, "POST", "/tools", body=tool_body, headers=headers), 409)


def test_delete_blocked_by_dependents_is_409_after_if_match(client, world):
    a = world["a"]
    item = f"/tools/{a['tool']['id']}"
    assert_error(client.simulate_delete(item, headers={**a["headers"], "If-Match": '"stale"'}), 412)
    etag = client.simulate_get(item, headers=a["headers"]).headers["ETag"]
    body = assert_error(client.simulate_delete(item, headers={**a["headers"], "If-Match": etag}), 409)
    assert "action" in body["message"].lower()


def test_unknown_fields_are_400_naming_them(client, world):
    a = world["a"]
    result = send(client, "POST", "/tools", headers=a["headers"],
                  body={"name": "n", "baseUrl": "https://x.example", "authType": "none", "colour": "red"})
    assert_error(result, 400, "colour")
    result = send(client, "PATCH", f"/users/{a['user']['id']}", headers=a["headers"], body={"nickname": "x"})
    assert_error(result, 400, "nickname")


# ---- error bodies and request ids ------------------------------------------------------

def error_zoo(client, world):
    """One response for each error status the contract names (and a success)."""
    a = world["a"]
    tool = f"/tools/{a['tool']['id']}"
    return {
        200: client.simulate_get("/tools", headers=a["headers"]),
        400: client.simulate_get("/tools"),
        404: client.simulate_get("/nowhere"),
        405: client.simulate_request("PATCH", "/tools", headers=a["headers"]),
        409: send(client, "POST", "/tools", headers=a["headers"],
                  body={"name": a["tool"]["name"], "baseUrl": "https://x.example", "authType": "none"}),
        412: send(client, "PATCH", tool, body={}, headers={**a["headers"], "If-Match": '"nope"'}),
        413: send(client, "POST", "/tools", body="x" * (MIB + 1)),
        415: send(client, "POST", "/tools", body="x", content_type="text/plain"),
        429: quota_refusal(client, world["b"]),
    }


def quota_refusal(client, member: dict):
    """A new run over the organization's queuedRuns quota (set to 0 by the admin): 429."""
    quotas = f"/organizations/{member['org']['id']}/quotas"
    assert send(client, "PUT", quotas, body={"queuedRuns": 0}).status_code == 200
    return send(client, "POST", f"/flows/{member['flow']['id']}/execute", body={}, headers=member["headers"])


def test_error_body_shape_on_every_error_status(client, world):
    for status, result in error_zoo(client, world).items():
        if status == 200:
            assert isinstance(result.json, list)
            continue
        assert_error(result, status, validation=(status == 400))


def test_request_id_generated_when_absent_on_success_and_errors(client, world):
    ids = []
    for status, result in error_zoo(client, world).items():
        assert result.status_code == status
        request_id = result.headers.get("X-Request-ID")
        assert request_id and request_id.strip() == request_id, status
        ids.append(request_id)
    assert len(set(ids)) == len(ids)


def test_request_id_echoed_when_sent(client, world):
    a = world["a"]
    for sent in ("abc-123", str(uuid.uuid4()), "req:42/retry=1"):
        cases = [
            client.simulate_get("/tools", headers={**a["headers"], "X-Request-ID": sent}),
            client.simulate_get("/tools", headers={"X-Request-ID": sent}),
            client.simulate_get("/nowhere", headers={"X-Request-ID": sent}),
            client.simulate_get("/health", headers={"X-Request-ID": sent}),
            send(client, "POST", "/tools", body="x" * (MIB + 1), headers={"X-Request-ID": sent}),
            send(client, "POST", "/organizations", body="{", headers={"X-Request-ID": sent}),
            send(client, "DELETE", "/organizations", headers={"X-Request-ID": sent}),
        ]
        for result in cases:
            assert result.headers.get("X-Request-ID") == sent, (result.status_code, result.headers)


# ---- ETags and If-Match ---------------------------------------------------------------

ITEMS = ["org", "user", "tool", "action", "flow", "log"]
COLLECTIONS = {"org": "/organizations", "user": "/users", "tool": "/tools", "action": "/actions",
               "flow": "/flows", "log": "/execution-logs"}
CHANGES = {"org": {"name": "Renamed"}, "user": {"name": "Grace"}, "tool": {"authType": "basic"},
           "action": {"endpoint": "/changed"}, "flow": {"description": "changed"}, "log": {"status": "failed"}}


def item_path(world, kind: str) -> str:
    return f"{COLLECTIONS[kind]}/{world['a'][kind]['id']}"


def test_etag_is_strong_and_changes_after_update(client, world):
    for kind in ITEMS:
        check_etag_changes(client, world, kind)


def check_etag_changes(client, world, kind: str) -> None:
    headers = world["a"]["headers"]
    path = item_path(world, kind)
    first = client.simulate_get(path, headers=headers)
    etag = first.headers.get("ETag")
    assert etag and re.fullmatch(r'"[^"\s]+"', etag), etag  # strong: no W/ prefix
    again = client.simulate_get(path, headers=headers)
    assert again.headers["ETag"] == etag
    updated = send(client, "PATCH", path, body=CHANGES[kind], headers=headers)
    assert updated.status_code == 200, updated.text
    new = updated.headers.get("ETag")
    assert new and not new.startswith("W/") and new != etag
    assert client.simulate_get(path, headers=headers).headers["ETag"] == new
    # An update that changes nothing keeps the ETag.
    same = send(client, "PUT", path, body=CHANGES[kind], headers={**headers, "If-Match": new})
    assert same.status_code == 200 and same.headers["ETag"] == new


def test_flow_version_has_strong_etag(client, world):
    result = client.simulate_get(f"/flows/{world['a']['flow']['id']}/versions/1", headers=world["a"]["headers"])
    assert result.status_code == 200
    assert re.fullmatch(r'"[^"\s]+"', result.headers["ETag"])


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_if_match_on_updates(client, world, method):
    for kind in ITEMS:
        check_if_match_on_update(client, world, kind, method)


def check_if_match_on_update(client, world, kind: str, method: str) -> None:
    headers = world["a"]["headers"]
    path = item_path(world, kind)
    etag = client.simulate_get(path, headers=headers).headers["ETag"]
    before = client.simulate_get(path, headers=headers).json
    for stale in ('"0000"', f"W/{etag}", etag.strip('"'), '"x", "y"'):
        result = send(client, method, path, body=CHANGES[kind], headers={**headers, "If-Match": stale})
        assert_error(result, 412)
    assert client.simulate_get(path, headers=headers).json == before
    ok = send(client, method, path, body=CHANGES[kind], headers={**headers, "If-Match": etag})
    assert ok.status_code == 200, ok.text
    # The old ETag is stale now.
    assert_error(send(client, method, path, body={}, headers={**headers, "If-Match": etag}), 412)
    current = ok.headers["ETag"]
    listed = send(client, method, path, body={}, headers={**headers, "If-Match": f'"other", {current}'})
    assert listed.status_code == 200, listed.text
    star = send(client, method, path, body={}, headers={**headers, "If-Match": "*"})
    assert star.status_code == 200, star.text


def test_if_match_on_delete(client, world):
    headers = world["a"]["headers"]
    free_user = send(client, "POST", "/users", body={"email": "free@example.com"}, headers=headers).json["id"]
    for path in (item_path(world, "log"), item_path(world, "action"), f"/users/{free_user}"):
        etag = client.simulate_get(path, headers=headers).headers["ETag"]
        for stale in ('"stale"', f"W/{etag}"):
            assert_error(client.simulate_delete(path, headers={**headers, "If-Match": stale}), 412)
        assert client.simulate_get(path, headers=headers).status_code == 200
        result = client.simulate_delete(path, headers={**headers, "If-Match": etag})
        assert result.status_code == 204, result.text
        assert_error(client.simulate_get(path, headers=headers), 404)
    tool = item_path(world, "tool")  # its action is gone now
    assert client.simulate_delete(tool, headers={**headers, "If-Match": "*"}).status_code == 204
    assert_error(client.simulate_get(tool, headers=headers), 404)


# ---- pagination -----------------------------------------------------------------------

class Lister:
    """One list endpoint: how to create its rows through the API and in bulk with SQL."""

    def __init__(self, name: str, client, api, db):
        self.name, self.client, self.api, self.db = name, client, api, db
        self.path = "/" + name
        self.table = name.replace("-", "_")
        self.headers: dict = {}
        self.org = None
        if name != "organizations":
            self.org = api.org("Lists")
            self.user = api.user(self.org)
            self.headers = api.headers(self.org, self.user)
            self.tool = api.tool(self.org)
            self.flow = api.flow(self.org)

    def create(self, **overrides) -> str:
        api, org = self.api, self.org
        if self.name == "organizations":
            return api.org(f"Org {uuid.uuid4().hex[:6]}")["id"]
        if self.name == "users":
            return api.user(org)["id"]
        if self.name == "tools":
            return api.tool(org)["id"]
        if self.name == "actions":
            return api.action(org, overrides.get("tool", self.tool))["id"]
        if self.name == "flows":
            return api.flow(org)["id"]
        return api.log(org, self.user, overrides.get("flow", self.flow), **overrides.get("fields", {}))["id"]

    def bulk(self, n: int, created_at_of: str | None = None) -> list[str]:
        """n rows in one statement, so they share created_at (that of row created_at_of if given)."""
        when = (f"(select created_at from {self.table} where id = %(ref)s)" if created_at_of
                else "now() - interval '1 day'")
        select = {
            "organizations": "select 'bulk ' || g, {t}, {t} from generate_series(1, %(n)s) g",
            "users": "select %(org)s, 'bulk' || g || '-' || %(tag)s || '@example.com', {t}, {t} "
                     "from generate_series(1, %(n)s) g",
            "tools": "select %(org)s, 'bulk-' || g || '-' || %(tag)s, 'https://x.example', 'none', {t}, {t} "
                     "from generate_series(1, %(n)s) g",
            "actions": "select %(org)s, %(tool)s, 'n', 'bulk.' || g || '.' || %(tag)s, 'GET', '/x', {t}, {t} "
                       "from generate_series(1, %(n)s) g",
            "flows": """select %(org)s, '[{{"id": "a", "type": "delay", "config": {{"ms": 1}}}}]'::jsonb, {t}, {t}
                        from generate_series(1, %(n)s) g""",
            "execution_logs": "select %(org)s, %(flow)s, %(user)s, 'bulk', 's', 'completed', '{{}}'::jsonb, {t}, {t} "
                              "from generate_series(1, %(n)s) g",
        }[self.table].format(t=when)
        columns = {
            "organizations": "name, created_at, updated_at",
            "users": "org_id, email, created_at, updated_at",
            "tools": "org_id, name, base_url, auth_type, created_at, updated_at",
            "actions": "org_id, tool_id, name, key, method, endpoint, created_at, updated_at",
            "flows": "org_id, steps, created_at, updated_at",
            "execution_logs": "org_id, flow_id, user_id, execution_id, step_key, status, inputs, created_at, "
                              "updated_at",
        }[self.table]
        params = {"n": n, "ref": created_at_of, "tag": uuid.uuid4().hex[:8]}
        if self.org:
            params.update(org=self.org["id"], user=self.user["id"], tool=self.tool["id"], flow=self.flow["id"])
        with self.db.pool.connection() as conn:
            rows = conn.execute(f"insert into {self.table} ({columns}) {select} returning id", params).fetchall()
        return [str(row["id"]) for row in rows]

    def db_order(self) -> list[str]:
        """Every row of the list, ordered as the contract says: createdAt desc, then id desc."""
        where = "where org_id = %(org)s" if self.org else ""
        with self.db.pool.connection() as conn:
            rows = conn.execute(f"select id from {self.table} {where} order by created_at desc, id desc",
                                {"org": self.org["id"] if self.org else None}).fetchall()
        return [str(row["id"]) for row in rows]

    def get(self, query: str = "", **kwargs):
        return self.client.simulate_get(self.path, query_string=query, headers=self.headers, **kwargs)


LISTS = ["organizations", "users", "tools", "actions", "flows", "execution-logs"]


@pytest.fixture(params=LISTS)
def lister(request, client, api, db):
    return Lister(request.param, client, api, db)


NEXT_LINK = re.compile(r'<([^<>]+)>; rel="next"')


def fetch_page(client, path: str, query: str, headers: dict):
    """One page; returns (ids, the next page's (path, query) or None)."""
    result = client.simulate_get(path, query_string=query, headers=headers)
    assert result.status_code == 200, result.text
    assert isinstance(result.json, list)
    link = result.headers.get("Link")
    cursor = result.headers.get("X-Next-Cursor")
    assert (link is None) == (cursor is None), result.headers
    ids = [row["id"] if "id" in row else row["version"] for row in result.json]
    if link is None:
        return ids, None
    match = NEXT_LINK.fullmatch(link)
    assert match, link
    target = urlsplit(match.group(1))
    assert not target.scheme and not target.netloc and target.path.startswith("/"), link  # relative
    assert parse_qs(target.query)["cursor"] == [cursor]
    return ids, (target.path, target.query)


def walk(client, path: str, params: dict, headers: dict) -> tuple[list[str], list[tuple[str, str]]]:
    """Follow Link rel=next from the first page; returns every id and each followed link."""
    ids, links = [], []
    page = (path, urlencode(params))
    while page:
        page_ids, page = fetch_page(client, *page, headers)
        ids.extend(page_ids)
        if page:
            links.append(page)
            assert len(page_ids) == params["limit"]
        assert len(links) < 100
    return ids, links


def test_walk_with_limit_two_collects_every_row_once_in_order(lister):
    first = lister.create()
    lister.create()
    ties = lister.bulk(4, created_at_of=first)  # same created_at as `first`: ordered by id desc
    lister.create()
    lister.bulk(3)  # older than everything else
    expected = lister.db_order()
    assert set(ties) <= set(expected)
    ids, links = walk(lister.client, lister.path, {"limit": 2}, lister.headers)
    assert ids == expected
    assert len(ids) == len(set(ids))
    assert len(links) == (len(expected) - 1) // 2
    for path, query in links:
        assert path == lister.path
        assert parse_qs(query)["limit"] == ["2"]


def test_default_page_is_50_and_limit_bounds(lister):
    lister.bulk(51)
    expected = lister.db_order()
    total = len(expected)
    assert total >= 51
    default = lister.get()
    assert [row["id"] for row in default.json] == expected[:50]
    assert default.headers.get("X-Next-Cursor") and default.headers.get("Link")
    everything = lister.get("limit=200")
    assert [row["id"] for row in everything.json] == expected
    assert "Link" not in everything.headers and "X-Next-Cursor" not in everything.headers
    one = lister.get("limit=1")
    assert [row["id"] for row in one.json] == expected[:1]
    rest = lister.get("limit=200&cursor=" + one.headers["X-Next-Cursor"])
    assert [row["id"] for row in rest.json] == expected[1:]


def test_no_next_link_when_the_page_is_exactly_full(lister):
    while len(lister.db_order()) < 2:
        lister.create()
    count = len(lister.db_order())
    exact = lister.get(f"limit={count}")
    assert len(exact.json) == count
    assert "Link" not in exact.headers and "X-Next-Cursor" not in exact.headers
    short = lister.get(f"limit={count - 1}")
    assert "Link" in short.headers and "X-Next-Cursor" in short.headers


BAD_CURSORS = [
    "garbage", "!!!!", "a", base64.urlsafe_b64encode(b"not json").decode(),
    base64.urlsafe_b64encode(b'{"a": 1}').decode(), base64.urlsafe_b64encode(b'["x", "y"]').decode(),
    base64.urlsafe_b64encode(b'["2026-01-01T00:00:00+00:00"]').decode(),
    base64.urlsafe_b64encode(b'[1, 2, 3]').decode(), "%00", "x" * 2000,
]


def test_bad_limit_cursor_or_parameter_is_400_naming_it(lister):
    lister.create()
    for limit in ["0", "201", "abc", "-1", "1.5", "1e2", "99999999999999999999", "0x10", "true"]:
        assert_error(lister.get(urlencode({"limit": limit})), 400, "limit")
    for limit in ["1", "200"]:
        assert lister.get(f"limit={limit}").status_code == 200
    for cursor in BAD_CURSORS:
        assert_error(lister.get(urlencode({"cursor": cursor})), 400, "cursor")
        assert_error(lister.get(urlencode({"limit": 2, "cursor": cursor})), 400, "cursor")
    for param in ["bogus", "page", "offset", "orgId", "sort", "Limit"]:
        assert_error(lister.get(urlencode({param: "1"})), 400, param)


def test_filters_of_other_lists_are_unknown_here(client, world):
    headers = world["a"]["headers"]
    assert_error(client.simulate_get("/tools", query_string="email=a@b.c", headers=headers), 400, "email")
    assert_error(client.simulate_get("/users", query_string="toolId=" + other_uuid(), headers=headers),
                 400, "toolId")
    assert_error(client.simulate_get("/organizations", query_string="status=completed"), 400, "status")


def test_new_rows_between_page_fetches_do_not_shift_pages(lister):
    for _ in range(5):
        lister.create()
    expected = lister.db_order()
    ids, page = fetch_page(lister.client, lister.path, "limit=2", lister.headers)
    added = [lister.create() for _ in range(3)]
    while page:
        more, page = fetch_page(lister.client, *page, lister.headers)
        ids.extend(more)
        added.append(lister.create())  # and one more before every fetch
    assert ids == expected
    assert not set(added) & set(ids)
    # A fresh walk sees everything, once.
    fresh, _ = walk(lister.client, lister.path, {"limit": 2}, lister.headers)
    assert fresh == lister.db_order()
    assert set(added) <= set(fresh)


def test_link_keeps_the_filters(client, api, db):
    lister = Lister("actions", client, api, db)
    other_tool = api.tool(lister.org)
    mine = [lister.create() for _ in range(3)] + lister.bulk(2)
    for _ in range(2):
        lister.create(tool=other_tool)
    params = {"toolId": lister.tool["id"], "limit": 2}
    ids, links = walk(client, "/actions", params, lister.headers)
    assert sorted(ids) == sorted(mine) and len(ids) == 5
    assert links
    for path, query in links:
        assert path == "/actions"
        assert parse_qs(query)["toolId"] == [lister.tool["id"]]

    logs = Lister("execution-logs", client, api, db)
    other_flow = api.flow(logs.org)
    wanted = [logs.create(fields={"status": "failed", "executionId": "run-x"}) for _ in range(5)]
    logs.create(fields={"status": "completed", "executionId": "run-x"})
    logs.create(flow=other_flow, fields={"status": "failed", "executionId": "run-x"})
    params = {"flowId": logs.flow["id"], "status": "failed", "executionId": "run-x", "userId": logs.user["id"],
              "limit": 2}
    ids, links = walk(client, "/execution-logs", params, logs.headers)
    assert sorted(ids) == sorted(wanted)
    assert len(links) == 2
    for _, query in links:
        parsed = parse_qs(query)
        for key in ("flowId", "status", "executionId", "userId"):
            assert parsed[key] == [str(params[key])], query


def test_filter_ids_must_be_uuids_and_foreign_ones_give_empty_lists(client, world):
    a, b = world["a"], world["b"]
    for path, param in [("/actions", "toolId"), ("/execution-logs", "flowId"), ("/execution-logs", "userId")]:
        assert_error(client.simulate_get(path, query_string=f"{param}=nope", headers=a["headers"]), 400, param)
    foreign = {"toolId": b["tool"]["id"], "flowId": b["flow"]["id"], "userId": b["user"]["id"]}
    for path, param in [("/actions", "toolId"), ("/execution-logs", "flowId"), ("/execution-logs", "userId")]:
        result = client.simulate_get(path, query_string=f"{param}={foreign[param]}", headers=a["headers"])
        assert result.status_code == 200 and result.json == []


def test_flow_versions_list_is_paginated_too(client, world):
    a = world["a"]
    path = f"/flows/{a['flow']['id']}"
    for n in range(4):
        steps = [{"id": "s", "type": "delay", "config": {"ms": n}}]
        assert send(client, "PATCH", path, body={"steps": steps}, headers=a["headers"]).status_code == 200
    ids, links = walk(client, f"{path}/versions", {"limit": 2}, a["headers"])
    assert len(links) == 2
    versions = client.simulate_get(f"{path}/versions", headers=a["headers"]).json
    assert [v["version"] for v in versions] == [5, 4, 3, 2, 1]
    for bad in ("limit=0", "limit=201", "limit=x"):
        assert_error(client.simulate_get(f"{path}/versions", query_string=bad, headers=a["headers"]), 400, "limit")
    for cursor in ("garbage", base64.urlsafe_b64encode(b"[99999999999999999999]").decode(),
                   base64.urlsafe_b64encode(b"[0]").decode(), base64.urlsafe_b64encode(b'["2"]').decode()):
        assert_error(client.simulate_get(f"{path}/versions", query_string=f"cursor={cursor}",
                                         headers=a["headers"]), 400, "cursor")
    assert_error(client.simulate_get(f"{path}/versions", query_string="bogus=1", headers=a["headers"]), 400, "bogus")


# ---- routes without tenant headers, trailing slashes ----------------------------------------

def test_tenant_headers_not_required_on_exempt_routes(client):
    for path in ("/organizations", "/health", "/status", "/status/detailed", "/detailed", "/version",
                 "/openapi.json", "/docs", "/docs/static/swagger-ui-bundle.js"):
        result = client.simulate_get(path)
        assert result.status_code == 200, (path, result.text[:200])
    created = send(client, "POST", "/organizations", body={"name": "No header"})
    assert created.status_code == 201
    item = created.headers["Location"]
    assert item == f"/organizations/{created.json['id']}"
    assert client.simulate_get(item).status_code == 200
    assert send(client, "PUT", item, body={"name": "Still none"}).status_code == 200
    assert send(client, "PATCH", item, body={"name": "Nope"}).status_code == 200
    assert client.simulate_delete(item).status_code == 204


def test_every_other_route_requires_x_org_id(client, db, config, world):
    a = world["a"]
    routes = build_routes(db, config)
    methods = allowed_methods(routes)
    checked = 0
    for template, _, _ in routes:
        if template.startswith(EXEMPT_PREFIXES) or template in EXEMPT_TEMPLATES:
            continue
        path = template.replace("{id}", a["flow"]["id"] if template.startswith("/flows") else other_uuid())
        path = re.sub(r"\{\w+\}", lambda m: "1" if m.group() == "{version}" else other_uuid(), path)
        for method in sorted(methods[template] - {"OPTIONS", "HEAD"}):
            body = {} if method in ("POST", "PUT", "PATCH") else None
            assert_error(send(client, method, path, body=body), 400, "X-Org-ID")
            checked += 1
    assert checked >= 20


def test_trailing_slash_works(client, world):
    a = world["a"]
    headers = a["headers"]
    listed = client.simulate_get("/tools/", headers=headers)
    assert listed.status_code == 200 and len(listed.json) == 1
    created = send(client, "POST", "/tools/", headers=headers,
                   body={"name": "slashed", "baseUrl": "https://x.example", "authType": "none"})
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    assert location == f"/tools/{created.json['id']}"
    assert client.simulate_get(location + "/", headers=headers).status_code == 200
    assert send(client, "PATCH", location + "/", body={"authType": "bearer"}, headers=headers).status_code == 200
    page = client.simulate_get("/tools/", query_string="limit=1", headers=headers)
    link = NEXT_LINK.fullmatch(page.headers["Link"]).group(1)
    assert link.startswith("/tools?")
    for path in ("/health/", "/status/", "/version/", "/organizations/", "/docs/",
                 f"/flows/{a['flow']['id']}/versions/", f"/flows/{a['flow']['id']}/versions/1/"):
        assert client.simulate_get(path, headers=headers).status_code == 200, path
    assert client.simulate_delete(location + "/", headers=headers).status_code == 204


def test_location_is_relative_on_every_create(client, world, api):
    a = world["a"]
    org = send(client, "POST", "/organizations", body={"name": "L"})
    assert org.headers["Location"] == f"/organizations/{org.json['id']}"
    bodies = {
        "/users": {"email": "loc@example.com"},
        "/tools": {"name": "loc", "baseUrl": "https://x.example", "authType": "none"},
        "/actions": {"toolId": a["tool"]["id"], "name": "n", "key": "loc.key", "method": "GET", "endpoint": "/x"},
        "/flows": {"steps": [{"id": "a", "type": "delay", "config": {"ms": 1}}]},
        "/execution-logs": {"flowId": a["flow"]["id"], "executionId": "r", "stepKey": "s", "status": "queued",
                            "inputs": {}},
    }
    for path, body in bodies.items():
        result = send(client, "POST", path, body=body, headers=a["headers"])
        assert result.status_code == 201, result.text
        assert result.headers["Location"] == f"{path}/{result.json['id']}"
        assert result.headers.get("ETag", "").startswith('"')


# ---- NUL characters and other values PostgreSQL cannot store ------------------------------------

UNSTORABLE = ["a\u0000b", "\u0000", "x\ud800y", "\udfff"]


def test_unstorable_strings_are_400_naming_the_field(client, world):
    for value in UNSTORABLE:
        check_unstorable(client, world, value)


def check_unstorable(client, world, value: str) -> None:
    a = world["a"]
    h = a["headers"]
    flow_id = a["flow"]["id"]
    log = {"flowId": flow_id, "executionId": "r", "stepKey": "s", "status": "completed", "inputs": {}}
    cases = [
        ("POST", "/organizations", {"name": value}, "name"),
        ("PATCH", f"/organizations/{a['org']['id']}", {"name": value}, "name"),
        ("POST", "/users", {"email": "nul@example.com", "name": value}, "name"),
        ("PUT", f"/users/{a['user']['id']}", {"name": value}, "name"),
        ("POST", "/tools", {"name": value, "baseUrl": "https://x.example", "authType": "none"}, "name"),
        ("POST", "/tools", {"name": "t", "baseUrl": f"https://x.example/{value}", "authType": "none"}, "baseUrl"),
        ("PATCH", f"/actions/{a['action']['id']}", {"name": value}, "name"),
        ("PATCH", f"/actions/{a['action']['id']}", {"headers": {"X-A": value}}, "headers.X-A"),
        ("PATCH", f"/actions/{a['action']['id']}", {"executeIf": value}, "executeIf"),
        ("PATCH", f"/actions/{a['action']['id']}",
         {"inputSchema": {"type": "object", "description": value}}, "inputSchema.description"),
        ("POST", "/flows", {"name": "f", "description": value,
                            "steps": [{"id": "a", "type": "delay", "config": {"ms": 1}}]}, "description"),
        ("POST", "/flows", {"steps": [{"id": "a", "type": "transform", "config": {"output": {"k": [value]}}}]},
         "steps[0].config.output.k[0]"),
        ("POST", "/flows", {"steps": [{"id": "a", "type": "delay", "config": {"ms": 1}, "name": value}]},
         "steps[0].name"),
        ("POST", "/execution-logs", {**log, "executionId": value}, "executionId"),
        ("POST", "/execution-logs", {**log, "stepKey": value}, "stepKey"),
        ("POST", "/execution-logs", {**log, "inputs": {"deep": {"er": value}}}, "inputs.deep.er"),
        ("POST", "/execution-logs", {**log, "inputs": {value: 1}}, "inputs"),
        ("POST", "/execution-logs", {**log, "outputs": {"o": value}}, "outputs.o"),
        ("POST", "/execution-logs", {**log, "error": value}, "error"),
        ("POST", "/execution-logs", {**log, "error": {"message": value}}, "error.message"),
        ("PATCH", f"/execution-logs/{a['log']['id']}", {"error": [value]}, "error[0]"),
    ]
    for method, path, body, field in cases:
        result = send(client, method, path, body=body, headers=h)
        assert_error(result, 400, validation=True)
        fields = [e["field"] for e in result.json["errors"]]
        assert field in fields, (path, body, result.json)
    # Nothing was stored.
    assert client.simulate_get(f"/organizations/{a['org']['id']}").json["name"] == "Org a"
    assert client.simulate_get(f"/actions/{a['action']['id']}", headers=h).json == a["action"]


def test_nul_in_query_parameters_is_400_naming_them(client, world):
    h = world["a"]["headers"]
    params = [("/users", "email"), ("/execution-logs", "executionId"), ("/execution-logs", "status"),
              ("/tools", "cursor"), ("/tools", "limit"), ("/actions", "toolId"),
              (f"/flows/{world['a']['flow']['id']}/versions", "cursor")]
    for value, (path, param) in itertools.product(["a\u0000b", "\u0000"], params):
        result = client.simulate_get(path, query_string=urlencode({param: value}), headers=h)
        assert_error(result, 400, param)


def test_nul_in_headers_is_400_or_ignored_never_500(client, world):
    a = world["a"]
    org_id, user_id = a["org"]["id"], a["user"]["id"]
    assert_error(client.simulate_get("/tools", headers={"X-Org-ID": org_id + "\x00"}), 400, "X-Org-ID")
    assert_error(client.simulate_get("/tools", headers={"X-Org-ID": org_id, "X-User-ID": "\x00" + user_id}),
                 400, "X-User-ID")
    flow = f"/flows/{a['flow']['id']}"
    result = send(client, "POST", f"{flow}/execute", body={}, headers={**a["headers"], "Idempotency-Key": "k\x00"})
    assert_error(result, 400, "Idempotency-Key")
    result = send(client, "PATCH", flow, body={}, headers={**a["headers"], "If-Match": '"\x00"'})
    assert_error(result, 412)
    result = client.simulate_get("/tools", headers={**a["headers"], "X-Request-ID": "a\x00b",
                                                    "Authorization": "Bearer \x00"})
    assert result.status_code in (200, 401), result.text
    assert result.headers["X-Request-ID"] and "\x00" not in result.headers["X-Request-ID"]


def test_unstorable_values_in_read_only_fields_are_ignored(client, world):
    a = world["a"]
    result = send(client, "PATCH", f"/tools/{a['tool']['id']}", headers=a["headers"],
                  body={"id": "\u0000", "createdAt": "\ud800", "authType": "basic"})
    assert result.status_code == 200, result.text
    assert result.json["authType"] == "basic"


def test_numbers_json_cannot_hold_are_400(client, world):
    a = world["a"]
    for raw in ['{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}', '{"a": 1e400}', '{"a": -1e999}']:
        body = '{"flowId": "%s", "executionId": "r", "stepKey": "s", "status": "completed", "inputs": %s}' % (
            a["flow"]["id"], raw)
        assert_error(send(client, "POST", "/execution-logs", body=body, headers=a["headers"]), 400, "body")
        patch = '{"outputs": %s}' % raw
        assert_error(send(client, "PATCH", item_path(world, "log"), body=patch, headers=a["headers"]), 400, "body")


def test_big_but_finite_numbers_are_stored_exactly_or_refused_cleanly(client, world):
    a = world["a"]
    base = {"flowId": a["flow"]["id"], "executionId": "r", "stepKey": "s", "status": "completed"}
    for number in (10 ** 30, -(10 ** 300), 10 ** 4000, 0.1, -2.5e-10):
        result = send(client, "POST", "/execution-logs", body={**base, "inputs": {"n": number}}, headers=a["headers"])
        assert result.status_code == 201, result.text
        assert result.json["inputs"]["n"] == number
    huge = '{"flowId": "%s", "executionId": "r", "stepKey": "s", "status": "completed", "inputs": {"n": %s}}' % (
        a["flow"]["id"], "9" * 5000)
    assert_error(send(client, "POST", "/execution-logs", body=huge, headers=a["headers"]), 400, "body")


def test_deeply_nested_json_is_400_not_500(client, world):
    a = world["a"]
    # 900-950 used to parse and then overflow the stack while being stored (a 500).
    for depth in [200, 900, 920, 940, 950, 999, 5000, 100_000]:
        arrays = "[" * depth + "]" * depth
        body = ('{"flowId": "%s", "executionId": "r", "stepKey": "s", "status": "completed", "inputs": {}, '
                '"error": %s}') % (a["flow"]["id"], arrays)
        assert_error(send(client, "POST", "/execution-logs", body=body, headers=a["headers"]), 400, "body")
        objects = '{"a":' * depth + "1" + "}" * depth
        assert_error(send(client, "PATCH", f"/flows/{a['flow']['id']}", body=objects, headers=a["headers"]),
                     400, "body")
        schema = '{"inputSchema": ' + '{"not":' * depth + "{}" + "}" * depth + "}"
        assert_error(send(client, "PATCH", item_path(world, "action"), body=schema, headers=a["headers"]),
                     400, "body")


def test_moderately_nested_json_is_accepted(client, world):
    a = world["a"]
    for key in ("not", "items"):  # JSON Schema checks recurse too: the deepest accepted body must not 500
        for depth in (30, 62):
            schema = '{"inputSchema": ' + ('{"%s":' % key) * depth + "{}" + "}" * depth + "}"
            result = send(client, "PATCH", item_path(world, "action"), body=schema, headers=a["headers"])
            assert result.status_code == 200, (key, depth, result.text[:300])
    value: object = {"leaf": True}
    for _ in range(30):
        value = {"k": [value]}
    body = {"flowId": a["flow"]["id"], "executionId": "r", "stepKey": "s", "status": "completed",
            "inputs": {"v": value}, "error": value}
    result = send(client, "POST", "/execution-logs", body=body, headers=a["headers"])
    assert result.status_code == 201, result.text
    assert result.json["inputs"]["v"] == value


# ---- never a 500 --------------------------------------------------------------------------

def nested(depth: int, leaf=1):
    value = leaf
    for index in range(depth):
        value = {"n": value} if index % 2 else [value]
    return value


def hostile_values(world) -> list:
    b = world["b"]
    return [
        None, True, False, 0, -1, 1.5, -0.0, 10 ** 30, -(10 ** 30), 2 ** 63, 1e308, 5e-324,
        "", " ", "\t\n", "x" * 5000, "y" * 100_000, "ü😀中\u200b\u202e\ufeff", "a\u0000b", "\ud800", "\\u0000",
        "' or 1=1; --", "<script>alert(1)</script>", "{{ 7 * 7 }}", "{{ ''.__class__.__mro__ }}", "%s%n",
        [], [1, "a", None], [{}], [[[]]], {}, {"a": {"b": [None, {"c": "\u0000"}]}}, {"\u0000": 1},
        nested(60), nested(70), b["tool"]["id"], b["flow"]["id"], b["action"]["id"], b["user"]["id"],
        b["org"]["id"], str(uuid.uuid4()), "00000000-0000-0000-0000-000000000000", "not-a-uuid",
        "2026-11-25T21:08:32.123Z", "https://evil.example/\u0000", "http://[::1]:99999/", "GET", "/x",
    ]


def baselines(world) -> dict[str, dict]:
    """A valid body per collection (values made unique per call where the contract needs it)."""
    a = world["a"]
    tag = uuid.uuid4().hex[:8]
    return {
        "/organizations": {"name": "Org"},
        "/users": {"email": f"fuzz-{tag}@example.com", "name": "Ada"},
        "/tools": {"name": f"tool-{tag}", "baseUrl": "https://api.example.com", "authType": "none"},
        "/actions": {"toolId": a["tool"]["id"], "name": "n", "key": f"k.{tag}", "method": "GET",
                     "endpoint": "/x/{id}", "headers": {"A": "b"}, "inputSchema": {"type": "object"},
                     "executeIf": "{{ true }}"},
        "/flows": {"name": "f", "description": "d",
                   "steps": [{"id": "a", "type": "transform", "config": {"output": {"x": 1}}, "name": "n",
                              "executeIf": "{{ true }}", "retryPolicy": {"maxRetries": 1}, "timeoutMs": 10,
                              "critical": True},
                             {"id": "b", "type": "action", "config": {"actionKey": a["action"]["key"],
                                                                      "inputs": {}}, "dependsOn": ["a"]},
                             {"id": "c", "type": "http_request",
                              "config": {"method": "POST", "url": "https://x.example", "headers": {},
                                         "body": None}},
                             {"id": "d", "type": "delay", "config": {"ms": 5}}]},
        "/execution-logs": {"flowId": a["flow"]["id"], "executionId": "r", "stepKey": "s", "status": "completed",
                            "inputs": {}, "outputs": {}, "error": None},
    }


def mutations(body: dict, value) -> list[dict]:
    """The body with each field (and each step field and step config field) replaced by value."""
    out = []
    for key in list(body) + ["unknownField", "id", "orgId"]:
        out.append({**body, key: value})
    out.append({k: value for k in body})  # every field wrong at once
    if "steps" in body:
        for index, step in enumerate(body["steps"]):
            for key in list(step) + ["dependsOn", "retryPolicy", "timeoutMs", "critical", "extra"]:
                steps = [dict(s) for s in body["steps"]]
                steps[index][key] = value
                out.append({**body, "steps": steps})
            for key in list(step["config"]) + ["actionId", "bogus"]:
                steps = [dict(s) for s in body["steps"]]
                steps[index]["config"] = {**step["config"], key: value}
                out.append({**body, "steps": steps})
    return out


class Failures:
    """Collects every contract violation of a fuzz run so one failure shows them all."""

    def __init__(self):
        self.items: list[str] = []
        self.count = 0

    def check(self, result, method: str, path: str, note: str = "") -> None:
        self.count += 1
        label = f"{method} {path} {note[:120]!r} -> {result.status_code}"
        if result.status_code >= 500:
            self.items.append(label + " " + result.text[:200])
            return
        if not result.headers.get("X-Request-ID"):
            self.items.append(label + " without X-Request-ID")
        if result.status_code >= 400 and method != "HEAD":
            try:
                body = result.json
                assert set(body) in ((ERROR_KEYS, ERROR_KEYS | {"errors"})
                                     + ((QUOTA_KEYS,) if result.status_code == 429 else ()))
                assert body["statusCode"] == result.status_code
                assert body["error"] == http.HTTPStatus(result.status_code).phrase
                assert isinstance(body["message"], str)
                assert "errors" not in body or result.status_code == 400
            except Exception as exc:  # noqa: BLE001 - reported below
                self.items.append(f"{label} bad error body {exc!r}: {result.text[:200]}")

    def assert_none(self, minimum: int) -> None:
        assert self.count >= minimum, self.count
        assert not self.items, f"{len(self.items)} of {self.count} requests broke the contract:\n" + "\n".join(
            self.items[:40])


def test_hostile_field_values_never_500(client, world):
    a = world["a"]
    failures = Failures()
    items = {"/organizations": a["org"]["id"], "/users": a["user"]["id"], "/tools": a["tool"]["id"],
             "/actions": a["action"]["id"], "/flows": a["flow"]["id"], "/execution-logs": a["log"]["id"]}
    for value_index, value in enumerate(hostile_values(world)):
        for collection, body in baselines(world).items():
            for index, mutated in enumerate(mutations(body, value)):
                if (value_index + index) % 4:
                    continue  # every value and every field, but a quarter of the pairs: fast enough
                data = json.dumps(mutated)
                method, path = ("POST", collection) if index % 2 == 0 else ("PATCH", f"{collection}/{items[collection]}")
                result = send(client, method, path, body=data, headers=a["headers"])
                failures.check(result, method, path, data)
    failures.assert_none(minimum=1000)


def route_paths(template: str, world) -> list[str]:
    a, b = world["a"], world["b"]
    own = {"/organizations": a["org"], "/users": a["user"], "/tools": a["tool"], "/actions": a["action"],
           "/flows": a["flow"], "/execution-logs": a["log"]}
    prefix = "/" + template.split("/")[1]
    record = own.get(prefix)
    foreign = {"/organizations": b["org"], "/users": b["user"], "/tools": b["tool"], "/actions": b["action"],
               "/flows": b["flow"], "/execution-logs": b["log"]}.get(prefix)
    ids = [other_uuid(), "not-a-uuid", "%00", "%ED%A0%80", "ü😀", "a" * 3000, "0", "-1", "1e400"]
    if record:
        ids = [record["id"], record["id"].upper(), foreign["id"]] + ids
    versions = ["1", "0", "-1", "99999999999999999999", "١", "1.0", "%00", "abc", "2147483648"]
    paths = []
    for index, id_ in enumerate(ids if "{" in template else [""]):
        path = template.replace("{id}", id_).replace("{version}", versions[index % len(versions)])
        other = ids[(index + 3) % len(ids)]
        path = re.sub(r"\{\w+\}", lambda _, other=other: other, path)  # any other parameter
        paths.append(path)
    return paths


RAW_BODIES = [
    None, b"", b"{", b"}", b"null", b"[]", b"[{}]", b'"s"', b"1e400", b'{"a": NaN}', b"\xff\xfe\xfd",
    b"{" * 50_000, b"[" * 100_000, b'{"name": "\\u0000"}', b'{"name": "\\ud800"}', b'{"\\ud800": 1}',
    b'{"name": "' + b"\xc3\x28" + b'"}', b'{"a": 1, "a": 2}', b'{"steps": "' + b"x" * 200_000 + b'"}',
]


def test_every_route_and_method_with_hostile_input_never_500(client, db, config, world):
    a, b = world["a"], world["b"]
    rng = random.Random(20261125)
    routes = build_routes(db, config)
    wrong_types = {}
    for body in baselines(world).values():
        for key in body:
            wrong_types[key] = [[], {}, 10 ** 30, "\u0000", None, True, "x" * 300][len(wrong_types) % 7]
    raw_bodies = RAW_BODIES + [rng.randbytes(rng.randint(1, 2000)) for _ in range(4)] + [
        json.dumps(wrong_types).encode(),
        json.dumps({k: [] for k in wrong_types}).encode(),
        json.dumps({k: {} for k in wrong_types}).encode(),
        json.dumps({k: "\u0000" for k in wrong_types}).encode(),
        json.dumps({k: nested(80) for k in wrong_types}).encode(),
        json.dumps({"toolId": b["tool"]["id"], "flowId": b["flow"]["id"],
                    "steps": [{"id": "x", "type": "action", "config": {"actionId": b["action"]["id"]}}]}).encode(),
    ]
    header_sets = [
        a["headers"],
        {},
        {"X-Org-ID": b["org"]["id"], "X-User-ID": a["user"]["id"]},
        {"X-Org-ID": "\u00e9" * 40, "X-User-ID": "x" * 5000},
        {**a["headers"], "If-Match": "\u00e9, W/, **, \"", "X-Request-ID": "x" * 5000},
        {**a["headers"], "Idempotency-Key": "\x00", "If-Match": "\x00", "Authorization": "Bearer \x00\xff"},
    ]
    content_types = ["application/json", "application/json", "text/plain", "application/problem+json", "",
                     "application/json; charset=latin-1"]
    failures = Failures()
    for template, _, _ in routes:
        for path_index, path in enumerate(route_paths(template, world)):
            for method in ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"):
                bodies = raw_bodies if method in ("POST", "PUT", "PATCH") else [None, b"{}", b"\x00"]
                if path_index:  # every body on the main path, a rotating few on the odd ids
                    bodies = [bodies[(path_index * 5 + len(method)) % len(bodies)]]
                for index, body in enumerate(bodies):
                    headers = dict(header_sets[index % len(header_sets)])
                    if body is not None:
                        headers["Content-Type"] = content_types[index % len(content_types)]
                    result = client.simulate_request(method, path, body=body, headers=headers)
                    failures.check(result, method, path, repr(body)[:80] if body else "")
    queries = ["limit=0", "limit=%00", "limit=1e999", "cursor=%00", "cursor=" + "A" * 5000,
               "cursor=" + base64.urlsafe_b64encode(b'["9999-12-31T23:59:59+14:00", "%s"]' % a["org"]["id"].encode()
                                                    ).decode(),
               "cursor=" + base64.urlsafe_b64encode(b"[1e400, null]").decode(),
               "email=%00&limit=1", "email=" + "a" * 5000, "toolId=%00", "flowId=" + b["flow"]["id"],
               "status=%ED%A0%80", "executionId=%00", "userId=not", "limit=1&limit=2", "%00=1", "a[b]=c"]
    for template, _, _ in routes:
        for path in route_paths(template, world)[:1]:
            for query in queries:
                result = client.simulate_get(path, query_string=query, headers=a["headers"])
                failures.check(result, "GET", path, query)
    print(f"{failures.count} requests")
    failures.assert_none(minimum=2000)
