"""POST /actions/{id}/execute: call an action's tool now and log the call.

Covers the X-User-ID requirement, the ``{inputs}`` body (missing, not an object,
unknown fields, malformed/empty), inputs checked against ``inputSchema`` (400 naming
``inputs.<field>``, no request made), the request built against a real local HTTP
server (tool.baseUrl + endpoint with URL-encoded ``{placeholders}``, remaining inputs
as the query string for GET/DELETE and as a JSON body for POST/PUT/PATCH, the tool's
default credential injected), the 200 result for successes, upstream errors and
refused targets (never a 500 of ours), the execution log written for every call
(no secret in it), and 404s for missing, malformed and other organizations' actions."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from werkzeug import Response


def assert_error(result, status: int, field: str | None = None) -> dict:
    """The contract's error body; when field is given, one of errors names it."""
    assert result.status_code == status, result.text
    body = result.json
    assert body["statusCode"] == status
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and body["message"]
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
        assert all(e["message"] for e in body["errors"])
    return body


class Recorder:
    """Answers every request with a canned reply and remembers what came in."""

    def __init__(self, body=None, status: int = 200):
        self.requests = []
        self.body = {"ok": True} if body is None else body
        self.status = status

    def __call__(self, request):
        self.requests.append({
            "method": request.method,
            "raw_uri": request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI"),
            "path": request.path,
            "args": request.args.to_dict(flat=False),
            "headers": dict(request.headers),
            "body": request.get_data(),
        })
        return Response(json.dumps(self.body), status=self.status, content_type="application/json")


def execute(api, org, user, action, inputs=None, **kwargs):
    """POST /actions/{id}/execute with tenant headers; returns the raw result."""
    body = kwargs.pop("body", {"inputs": inputs if inputs is not None else {}})
    return api.client.simulate_post(f"/actions/{action['id']}/execute", json=body,
                                    headers=api.headers(org, user), **kwargs)


def logs_of(api, org, execution_id):
    result = api.client.simulate_get("/execution-logs", params={"executionId": execution_id},
                                     headers=api.headers(org))
    assert result.status_code == 200, result.text
    return result.json


# ---- request checks ----------------------------------------------------------------------

def test_requires_x_user_id(api, org, httpserver):
    tool = api.tool(org, baseUrl=httpserver.url_for("/"))
    action = api.action(org, tool, endpoint="/ping")
    result = api.client.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                      headers=api.headers(org))
    assert_error(result, 400, "X-User-ID")
    other_org_user = api.user(api.org("Other"))
    assert_error(execute(api, org, other_org_user, action), 400, "X-User-ID")
    assert httpserver.log == []


@pytest.mark.parametrize("body, field", [
    ({}, "inputs"),
    ({"inputs": None}, "inputs"),
    ({"inputs": []}, "inputs"),
    ({"inputs": "id=1"}, "inputs"),
    ({"inputs": 5}, "inputs"),
    ({"inputs": {}, "extra": 1}, "extra"),
    ({"input": {}}, "input"),
    ({"inputs": {"q": "a\u0000b"}}, "inputs.q"),
])
def test_body_must_be_an_inputs_object(api, org, user, httpserver, body, field):
    tool = api.tool(org, baseUrl=httpserver.url_for("/"))
    action = api.action(org, tool, endpoint="/ping")
    assert_error(execute(api, org, user, action, body=body), 400, field)
    assert httpserver.log == []
    assert logs_of(api, org, "x") == [] and api.client.simulate_get(
        "/execution-logs", headers=api.headers(org)).json == []


@pytest.mark.parametrize("raw", [b"", b"{", b"[1]", b'"inputs"'])
def test_malformed_empty_or_non_object_body_is_400(api, org, user, raw):
    action = api.action(org, api.tool(org), endpoint="/ping")
    result = api.client.simulate_post(f"/actions/{action['id']}/execute", body=raw,
                                      headers={**api.headers(org, user), "Content-Type": "application/json"})
    assert_error(result, 400, "body")


SCHEMA = {"type": "object", "required": ["id"],
          "properties": {"id": {"type": "integer"}, "q": {"type": "string"}}}


@pytest.mark.parametrize("inputs, field, word", [
    ({}, "inputs.id", "required"),
    ({"q": "x"}, "inputs.id", "required"),
    ({"id": "seven"}, "inputs.id", "integer"),
    ({"id": 1.5}, "inputs.id", "integer"),
    ({"id": 1, "q": 3}, "inputs.q", "string"),
])
def test_inputs_are_checked_against_the_input_schema(api, org, user, httpserver, inputs, field, word):
    tool = api.tool(org, baseUrl=httpserver.url_for("/"))
    action = api.action(org, tool, endpoint="/items/{id}", inputSchema=SCHEMA)
    body = assert_error(execute(api, org, user, action, inputs), 400, field)
    named = [e for e in body["errors"] if e["field"] == field]
    assert word in named[0]["message"]
    assert httpserver.log == []
    # Nothing was executed, so nothing was logged.
    assert api.client.simulate_get("/execution-logs", headers=api.headers(org)).json == []


def test_every_input_error_is_named(api, org, user):
    schema = {"type": "object", "required": ["a", "b"],
              "properties": {"a": {"type": "string"}, "b": {"type": "boolean"}, "c": {"type": "integer"}}}
    action = api.action(org, api.tool(org), endpoint="/x", inputSchema=schema)
    body = assert_error(execute(api, org, user, action, {"c": "no"}), 400)
    assert sorted(e["field"] for e in body["errors"]) == ["inputs.a", "inputs.b", "inputs.c"]


def test_legacy_field_definitions_are_enforced(api, org, user):
    action = api.action(org, api.tool(org), endpoint="/x", inputSchema=[
        {"name": "count", "type": "number", "required": True, "validation": {"min": 1, "max": 5}},
    ])
    assert_error(execute(api, org, user, action, {}), 400, "inputs.count")
    assert_error(execute(api, org, user, action, {"count": 9}), 400, "inputs.count")


# ---- requests sent ------------------------------------------------------------------------

def test_get_fills_encoded_path_parameters_and_sends_the_rest_as_query(api, org, user, httpserver):
    recorder = Recorder({"id": 42, "name": "Widget", "tags": ["a", "b"]})
    httpserver.expect_request("/api/things/a b&c/parts/x", method="GET").respond_with_handler(recorder)
    tool = api.tool(org, baseUrl=httpserver.url_for("/api"))
    action = api.action(org, tool, key="things.get", method="GET", endpoint="/things/{id}/parts/{part}")
    result = execute(api, org, user, action, {"id": "a b&c", "part": "x", "q": "hello world", "n": 3})
    assert result.status_code == 200, result.text
    body = result.json
    assert set(body) == {"success", "executionId", "durationMs", "statusCode", "data"}
    assert body["success"] is True and body["statusCode"] == 200
    assert body["data"] == {"id": 42, "name": "Widget", "tags": ["a", "b"]}
    uuid.UUID(body["executionId"])
    assert isinstance(body["durationMs"], int) and body["durationMs"] >= 0

    [sent] = recorder.requests
    assert sent["raw_uri"].split("?")[0] == "/api/things/a%20b%26c/parts/x"
    assert sent["args"] == {"q": ["hello world"], "n": ["3"]}
    assert sent["body"] == b""
    assert sent["headers"]["Accept"] == "application/json"
    assert sent["headers"]["Idempotency-Key"] == f"{body['executionId']}:things.get:1"
    assert "Authorization" not in sent["headers"]


def test_delete_sends_remaining_inputs_as_query(api, org, user, httpserver):
    recorder = Recorder({"deleted": True})
    httpserver.expect_request("/v1/items/7", method="DELETE").respond_with_handler(recorder)
    tool = api.tool(org, baseUrl=httpserver.url_for("/v1/"))  # trailing slash is not doubled
    action = api.action(org, tool, method="DELETE", endpoint="/items/{id}")
    result = execute(api, org, user, action, {"id": 7, "force": True})
    assert result.status_code == 200, result.text
    assert result.json["success"] is True and result.json["data"] == {"deleted": True}
    [sent] = recorder.requests
    assert sent["path"] == "/v1/items/7"
    assert sent["args"] == {"force": ["true"]}
    assert sent["body"] == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_body_methods_send_remaining_inputs_as_json(api, org, user, httpserver, method):
    recorder = Recorder({"saved": 1}, status=201 if method == "POST" else 200)
    httpserver.expect_request("/api/items/7", method=method).respond_with_handler(recorder)
    tool = api.tool(org, baseUrl=httpserver.url_for("/api"))
    action = api.action(org, tool, method=method, endpoint="/items/{id}")
    inputs = {"id": 7, "name": "Widget", "tags": ["a"], "meta": {"n": 1.5, "ok": None}}
    result = execute(api, org, user, action, inputs)
    assert result.status_code == 200, result.text
    assert result.json["success"] is True
    assert result.json["statusCode"] == (201 if method == "POST" else 200)
    assert result.json["data"] == {"saved": 1}
    [sent] = recorder.requests
    assert sent["method"] == method
    assert sent["args"] == {}
    assert sent["headers"]["Content-Type"] == "application/json"
    assert json.loads(sent["body"]) == {"name": "Widget", "tags": ["a"], "meta": {"n": 1.5, "ok": None}}


def test_action_headers_are_sent(api, org, user, httpserver):
    recorder = Recorder()
    httpserver.expect_request("/h").respond_with_handler(recorder)
    tool = api.tool(org, baseUrl=httpserver.url_for("/"))
    action = api.action(org, tool, endpoint="/h", headers={"X-Trace": "abc", "Accept": "application/vnd+json"})
    assert execute(api, org, user, action).json["success"] is True
    [sent] = recorder.requests
    assert sent["headers"]["X-Trace"] == "abc"
    assert sent["headers"]["Accept"] == "application/vnd+json"


def test_text_response_is_returned_as_text(api, org, user, httpserver):
    httpserver.expect_request("/plain").respond_with_data("hello", content_type="text/plain")
    tool = api.tool(org, baseUrl=httpserver.url_for("/"))
    action = api.action(org, tool, endpoint="/plain")
    result = execute(api, org, user, action)
    assert result.status_code == 200
    assert result.json["success"] is True and result.json["data"] == "hello"


CREDENTIALS = {
    "apiKey": ({"headerName": "X-Api-Key", "headerValue": "key-123456789"}, "X-Api-Key", "key-123456789"),
    "bearer": ({"token": "tok-abcdefghijk"}, "Authorization", "Bearer tok-abcdefghijk"),
    "basic": ({"username": "ada", "password": "s3cret-pass"}, "Authorization",
              "Basic " + base64.b64encode(b"ada:s3cret-pass").decode()),
}
SECRETS = ("key-123456789", "tok-abcdefghijk", "s3cret-pass", "oauth-access-1", "csecret-123456",
           base64.b64encode(b"ada:s3cret-pass").decode())


@pytest.mark.parametrize("kind", list(CREDENTIALS))
def test_the_default_credential_is_injected_and_never_logged(api, org, user, httpserver, kind):
    config, header, expected = CREDENTIALS[kind]

    def echo(request):
        # A careless upstream echoes the credential back: the log must still not hold it.
        return Response(json.dumps({"seen": request.headers.get(header)}), content_type="application/json")

    httpserver.expect_oneshot_request("/api/me", headers={header: expected}).respond_with_handler(echo)
    tool = api.tool(org, baseUrl=httpserver.url_for("/api"), authType=kind)
    # A non-default credential first: the default one is the one used.
    decoy = {"apiKey": {"headerName": "X-Api-Key", "headerValue": "wrong-value-0000"},
             "bearer": {"token": "wrong-token-0000"},
             "basic": {"username": "bob", "password": "wrong-pass-0000"}}[kind]
    api.create(f"/tools/{tool['id']}/auth", org, {"name": "old", "type": kind, "config": decoy})
    api.create(f"/tools/{tool['id']}/auth", org, {"name": "main", "type": kind, "config": config,
                                                  "isDefault": True})
    action = api.action(org, tool, key=f"{kind}.me", endpoint="/me")
    result = execute(api, org, user, action)
    assert result.status_code == 200, result.text
    assert result.json["success"] is True, result.json
    # The tool got the credential (the request matched); what it echoed is answered masked.
    httpserver.check_assertions()
    assert result.json["data"] == {"seen": {"apiKey": "***", "bearer": "Bearer ***", "basic": "Basic ***"}[kind]}
    assert [secret for secret in SECRETS if secret in result.text] == []

    [entry] = logs_of(api, org, result.json["executionId"])
    assert entry["status"] == "completed"
    dumped = json.dumps(entry)
    for secret in SECRETS:
        assert secret not in dumped, secret


def test_a_single_credential_is_used_without_being_default(api, org, user, httpserver):
    httpserver.expect_oneshot_request("/me", headers={"Authorization": "Bearer only-one-token"}) \
        .respond_with_json({"ok": 1})
    tool = api.tool(org, baseUrl=httpserver.url_for("/"), authType="bearer")
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "bearer", "config": {"token": "only-one-token"}})
    action = api.action(org, tool, endpoint="/me")
    assert execute(api, org, user, action).json["success"] is True
    httpserver.check_assertions()


def test_oauth2_client_credentials_token_is_fetched_and_used(api, org, user, httpserver):
    httpserver.expect_oneshot_request("/token", method="POST").respond_with_json(
        {"access_token": "oauth-access-1", "expires_in": 3600})
    httpserver.expect_oneshot_request("/api/me", headers={"Authorization": "Bearer oauth-access-1"}) \
        .respond_with_handler(lambda r: Response(json.dumps({"me": "ada", "auth": r.headers["Authorization"]}),
                                                 content_type="application/json"))
    tool = api.tool(org, baseUrl=httpserver.url_for("/api"), authType="oauth2")
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "oauth2", "isDefault": True, "config": {
        "clientId": "cid", "clientSecret": "csecret-123456", "tokenUrl": httpserver.url_for("/token"),
        "scopes": ["read", "write"]}})
    action = api.action(org, tool, endpoint="/me")
    result = execute(api, org, user, action)
    assert result.json["success"] is True, result.json
    httpserver.check_assertions()
    assert result.json["data"] == {"me": "ada", "auth": "Bearer ***"}  # the echoed token, masked
    token_request = httpserver.log[0][0]
    assert token_request.form.to_dict() == {"client_id": "cid", "client_secret": "csecret-123456",
                                            "grant_type": "client_credentials", "scope": "read write"}
    dumped = json.dumps(logs_of(api, org, result.json["executionId"]))
    assert "oauth-access-1" not in dumped and "csecret-123456" not in dumped


def test_tool_needing_auth_without_a_credential_fails_cleanly(api, org, user, httpserver):
    tool = api.tool(org, baseUrl=httpserver.url_for("/"), authType="bearer")
    action = api.action(org, tool, endpoint="/me")
    result = execute(api, org, user, action)
    assert result.status_code == 200, result.text
    assert result.json["success"] is False
    assert result.json["statusCode"] is None
    assert "no credential" in result.json["data"]["error"]
    assert httpserver.log == []


# ---- outcomes -------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [400, 404, 429, 500, 503])
def test_upstream_errors_are_a_200_with_success_false(api, org, user, httpserver, status):
    httpserver.expect_request("/api/items/1").respond_with_json({"error": "nope", "code": status}, status=status)
    tool = api.tool(org, baseUrl=httpserver.url_for("/api"))
    action = api.action(org, tool, key="items.get", endpoint="/items/{id}")
    result = execute(api, org, user, action, {"id": 1})
    assert result.status_code == 200, result.text
    body = result.json
    assert body["success"] is False
    assert body["statusCode"] == status
    assert body["data"] == {"error": "nope", "code": status}
    assert len(httpserver.log) == 1  # no retries on a direct execution
    [entry] = logs_of(api, org, body["executionId"])
    assert entry["status"] == "failed"
    assert entry["outputs"] == {"statusCode": status, "data": {"error": "nope", "code": status}}
    assert str(status) in entry["error"]["message"]


@pytest.mark.parametrize("base_url, words", [
    ("http://10.0.0.1", "not a public address"),
    ("http://169.254.169.254/latest", "not a public address"),
    ("http://localhost.invalid", "not a public address"),
])
def test_refused_or_unreachable_targets_are_a_200_with_success_false(api, org, user, base_url, words):
    tool = api.tool(org, baseUrl=base_url)
    action = api.action(org, tool, key="internal.get", endpoint="/admin")
    result = execute(api, org, user, action)
    assert result.status_code == 200, result.text
    body = result.json
    assert body["success"] is False
    assert body["statusCode"] is None
    assert words in body["data"]["error"]
    [entry] = logs_of(api, org, body["executionId"])
    assert entry["status"] == "failed"
    assert words in entry["error"]["message"]


def test_redirect_to_a_private_address_is_refused(api, org, user, httpserver):
    httpserver.expect_request("/jump").respond_with_data(
        "", status=302, headers={"Location": "http://10.9.8.7/secret"})
    tool = api.tool(org, baseUrl=httpserver.url_for("/"))
    action = api.action(org, tool, endpoint="/jump")
    body = execute(api, org, user, action).json
    assert body["success"] is False and "10.9.8.7" in body["data"]["error"]


def test_the_call_is_logged(api, org, user, httpserver):
    httpserver.expect_request("/api/items/5").respond_with_json({"id": 5})
    tool = api.tool(org, baseUrl=httpserver.url_for("/api"))
    action = api.action(org, tool, key="items.fetch", endpoint="/items/{id}", inputSchema=SCHEMA)
    result = execute(api, org, user, action, {"id": 5, "q": "x"})
    assert result.status_code == 200 and result.json["success"] is True
    execution_id = result.json["executionId"]
    logs = logs_of(api, org, execution_id)
    assert len(logs) == 1
    entry = logs[0]
    assert entry["executionId"] == execution_id
    assert entry["stepKey"] == "items.fetch"
    assert entry["flowId"] is None
    assert entry["userId"] == user["id"]
    assert entry["orgId"] == org["id"]
    assert entry["status"] == "completed"
    assert entry["inputs"] == {"id": 5, "q": "x"}
    assert entry["outputs"] == {"statusCode": 200, "data": {"id": 5}}
    assert entry["error"] is None
    assert isinstance(entry["durationMs"], int) and entry["durationMs"] >= 0
    # Readable by id too; each call gets its own executionId.
    got = api.client.simulate_get(f"/execution-logs/{entry['id']}", headers=api.headers(org))
    assert got.status_code == 200 and got.json == entry
    again = execute(api, org, user, action, {"id": 5}).json
    assert again["executionId"] != execution_id
    assert len(logs_of(api, org, again["executionId"])) == 1


def test_secret_named_inputs_are_masked_in_the_log(api, org, user, httpserver):
    httpserver.expect_request("/login", method="POST").respond_with_json({"ok": True})
    tool = api.tool(org, baseUrl=httpserver.url_for("/"))
    action = api.action(org, tool, method="POST", endpoint="/login")
    result = execute(api, org, user, action, {"user": "ada", "password": "hunter2-hunter2"})
    assert result.json["success"] is True
    assert json.loads(httpserver.log[0][0].get_data()) == {"user": "ada", "password": "hunter2-hunter2"}
    [entry] = logs_of(api, org, result.json["executionId"])
    assert entry["inputs"]["user"] == "ada"
    assert "hunter2-hunter2" not in json.dumps(entry)


# ---- not found ----------------------------------------------------------------------------

def test_another_organizations_action_is_404(api, org, user, httpserver):
    tool = api.tool(org, baseUrl=httpserver.url_for("/"))
    action = api.action(org, tool, endpoint="/ping")
    other = api.org("Other")
    other_user = api.user(other)
    result = execute(api, other, other_user, action)
    assert_error(result, 404)
    # 404 comes before body validation.
    assert_error(execute(api, other, other_user, action, body={"inputs": []}), 404)
    assert httpserver.log == []
    assert api.client.simulate_get("/execution-logs", headers=api.headers(other)).json == []


@pytest.mark.parametrize("action_id", ["7d4c5a36-2f0e-4d59-9a4e-0b6f1c2d3e4f", "not-a-uuid", "42"])
def test_missing_or_malformed_action_id_is_404(api, org, user, action_id):
    result = api.client.simulate_post(f"/actions/{action_id}/execute", json={"inputs": {}},
                                      headers=api.headers(org, user))
    assert_error(result, 404)


def test_deleted_action_is_404(api, org, user):
    action = api.action(org, api.tool(org), endpoint="/x")
    assert api.client.simulate_delete(f"/actions/{action['id']}", headers=api.headers(org)).status_code == 204
    assert_error(execute(api, org, user, action), 404)


def test_only_post_is_allowed(api, org, user):
    action = api.action(org, api.tool(org), endpoint="/x")
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        result = api.client.simulate_request(method, f"/actions/{action['id']}/execute",
                                             headers=api.headers(org, user))
        assert_error(result, 405)
        assert "POST" in result.headers["allow"]
        assert "GET" not in result.headers["allow"].split(", ")


@pytest.mark.parametrize("raw, data", [
    ('{"a": "x\\u0000y"}', {"a": "x\ufffdy"}),
    ('{"a\\u0000": [1, "\\ud800"]}', {"a\ufffd": [1, "\ufffd"]}),
    ('{"ok": "\\ud83d\\ude00"}', {"ok": "\U0001F600"}),
    ('{"n": NaN}', '{"n": NaN}'),
    ('[1e400]', '[1e400]'),
    ('[' * 100000 + ']' * 100000, '[' * 100000 + ']' * 100000),
])
def test_upstream_bodies_postgresql_cannot_store_are_not_a_500(api, org, user, httpserver, raw, data):
    httpserver.expect_request("/odd").respond_with_data(raw, content_type="application/json")
    tool = api.tool(org, baseUrl=httpserver.url_for("/"))
    action = api.action(org, tool, endpoint="/odd")
    result = execute(api, org, user, action)
    assert result.status_code == 200, result.text
    assert result.json["success"] is True
    assert result.json["data"] == data
    [entry] = logs_of(api, org, result.json["executionId"])
    assert entry["outputs"] == {"statusCode": 200, "data": data}


def test_upstream_text_with_nul_is_not_a_500(api, org, user, httpserver):
    httpserver.expect_request("/nul").respond_with_data(b"a\x00b", content_type="text/plain")
    tool = api.tool(org, baseUrl=httpserver.url_for("/"))
    action = api.action(org, tool, endpoint="/nul")
    result = execute(api, org, user, action)
    assert result.status_code == 200, result.text
    assert result.json["data"] == "a\ufffdb"
