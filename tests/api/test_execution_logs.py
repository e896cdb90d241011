"""/execution-logs and /execution-logs/{id}: the actor header, validation, flow
references, filters, partial updates, deletes and tenancy, as docs/api.md
describes them."""

from __future__ import annotations

import re
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LOG_KEYS = {"id", "orgId", "flowId", "userId", "executionId", "stepKey", "status", "inputs",
            "outputs", "error", "createdAt", "updatedAt"}
STATUSES = ["pending", "queued", "running", "started", "completed", "failed", "skipped", "cancelled"]
PHRASES = {400: "Bad Request", 404: "Not Found", 409: "Conflict", 412: "Precondition Failed"}


def assert_shape(log: dict) -> None:
    """Every contract field is present; no other key leaks in snake_case."""
    assert LOG_KEYS <= set(log), set(log)
    assert all(re.fullmatch(r"[a-z]+(?:[A-Z][a-z]*)*", key) for key in log), set(log)


def assert_error(result, status: int, field: str | None = None) -> dict:
    """The contract's error body; with ``field``, field errors that all name it."""
    assert result.status_code == status, result.text
    body = result.json
    assert body["statusCode"] == status
    assert body["error"] == PHRASES[status]
    assert isinstance(body["message"], str) and body["message"]
    if field is not None:
        errors = body["errors"]
        assert errors and all(set(e) == {"field", "message"} and e["message"] for e in errors), errors
        assert errors[0]["field"] == field, errors
        assert {e["field"] for e in errors} == {field}, errors
    return body


def h(org, user=None, **extra) -> dict:
    headers = {"X-Org-ID": org["id"]}
    if user is not None:
        headers["X-User-ID"] = user["id"] if isinstance(user, dict) else user
    headers.update(extra)
    return headers


def body_for(flow, **fields) -> dict:
    return {"flowId": flow["id"], "executionId": "run-1", "stepKey": "hello",
            "status": "completed", "inputs": {}, **fields}


def listing(client, org, **params):
    result = client.simulate_get("/execution-logs", params=params, headers=h(org))
    assert result.status_code == 200, result.text
    return [row["id"] for row in result.json]


def update(client, log, org, body, method="PATCH", user=None):
    return client.simulate_request(method, f"/execution-logs/{log['id']}", json=body, headers=h(org, user))


# ---- create and read -------------------------------------------------------------

def test_create_and_get_log(client, api):
    org = api.org()
    user = api.user(org)
    other_user = api.user(org)
    flow = api.flow(org)
    body = body_for(flow, executionId="exec-42", stepKey="fetch", status="failed",
                    inputs={"n": 1, "nested": {"a": [1, None]}}, outputs={"status": 500},
                    error={"message": "boom", "code": 500},
                    userId=other_user["id"])  # ignored: the actor comes from X-User-ID
    result = api.post("/execution-logs", org, body, user)
    assert result.status_code == 201, result.text
    log = result.json
    assert_shape(log)
    assert result.headers["Location"] == f"/execution-logs/{log['id']}"
    assert uuid.UUID(log["id"])
    assert log["orgId"] == org["id"]
    assert log["userId"] == user["id"]
    assert log["flowId"] == flow["id"]
    assert log["executionId"] == "exec-42"
    assert log["stepKey"] == "fetch"
    assert log["status"] == "failed"
    assert log["inputs"] == {"n": 1, "nested": {"a": [1, None]}}
    assert log["outputs"] == {"status": 500}
    assert log["error"] == {"message": "boom", "code": 500}
    assert TIMESTAMP.match(log["createdAt"]) and TIMESTAMP.match(log["updatedAt"])

    fetched = client.simulate_get(f"/execution-logs/{log['id']}", headers=h(org))
    assert fetched.status_code == 200
    assert fetched.json == log
    assert fetched.headers["ETag"].startswith('"')


def test_optional_fields_default_to_null(api):
    org = api.org()
    user = api.user(org)
    flow = api.flow(org)
    log = api.log(org, user, flow)
    assert log["outputs"] is None
    assert log["error"] is None
    assert log["inputs"] == {}
    explicit = api.log(org, user, flow, outputs=None, error=None)
    assert explicit["outputs"] is None and explicit["error"] is None


def test_create_requires_a_user_of_the_org(client, api):
    org, other = api.org("A"), api.org("B")
    stranger = api.user(other)
    flow = api.flow(org)
    body = body_for(flow)

    result = client.simulate_post("/execution-logs", json=body, headers=h(org))
    assert_error(result, 400, "X-User-ID")
    for bad in ("not-a-uuid", stranger["id"], str(uuid.uuid4())):
        assert_error(api.post("/execution-logs", org, body, bad), 400, "X-User-ID")
    # the header check comes before the body is read
    result = client.simulate_post("/execution-logs", body="{oops",
                                  headers=h(org, **{"Content-Type": "application/json"}))
    assert_error(result, 400, "X-User-ID")
    # the userId in the body cannot stand in for the header
    result = client.simulate_post("/execution-logs", json={**body, "userId": stranger["id"]}, headers=h(org))
    assert_error(result, 400, "X-User-ID")
    assert listing(client, org) == []


def test_every_status_is_accepted(client, api):
    org = api.org()
    user = api.user(org)
    flow = api.flow(org)
    for status in STATUSES:
        assert api.log(org, user, flow, status=status)["status"] == status
    assert len(listing(client, org)) == len(STATUSES)


@pytest.mark.parametrize("error", ["boom", "", {"message": "x", "details": [1, 2]}, 42, 0, 3.5,
                                   [1, "two"], True, False, None])
def test_error_accepts_any_json_value(client, api, error):
    org = api.org()
    user = api.user(org)
    flow = api.flow(org)
    log = api.log(org, user, flow, status="failed", error=error)
    assert log["error"] == error and type(log["error"]) is type(error)
    fetched = client.simulate_get(f"/execution-logs/{log['id']}", headers=h(org)).json
    assert fetched["error"] == error and type(fetched["error"]) is type(error)


def test_length_limits_accept_boundaries(api):
    org = api.org()
    user = api.user(org)
    flow = api.flow(org)
    log = api.log(org, user, flow, executionId="e" * 200, stepKey="s" * 200)
    assert log["executionId"] == "e" * 200 and log["stepKey"] == "s" * 200
    log = api.log(org, user, flow, executionId="e", stepKey="s")
    assert (log["executionId"], log["stepKey"]) == ("e", "s")


@pytest.mark.parametrize("change, field", [
    ({"flowId": None}, "flowId"),
    ({"flowId": "not-a-uuid"}, "flowId"),
    ({"flowId": 7}, "flowId"),
    ({"executionId": ""}, "executionId"),
    ({"executionId": "e" * 201}, "executionId"),
    ({"executionId": 12}, "executionId"),
    ({"executionId": None}, "executionId"),
    ({"stepKey": ""}, "stepKey"),
    ({"stepKey": "s" * 201}, "stepKey"),
    ({"stepKey": ["a"]}, "stepKey"),
    ({"status": "done"}, "status"),
    ({"status": "COMPLETED"}, "status"),
    ({"status": None}, "status"),
    ({"inputs": []}, "inputs"),
    ({"inputs": "x=1"}, "inputs"),
    ({"inputs": 1}, "inputs"),
    ({"inputs": None}, "inputs"),
    ({"outputs": []}, "outputs"),
    ({"outputs": "done"}, "outputs"),
    ({"outputs": 0}, "outputs"),
    ({"color": "red"}, "color"),
])
def test_create_rejects_invalid_fields(client, api, change, field):
    org = api.org()
    user = api.user(org)
    flow = api.flow(org)
    assert_error(api.post("/execution-logs", org, body_for(flow, **change), user), 400, field)
    assert listing(client, org) == []


@pytest.mark.parametrize("missing", ["flowId", "executionId", "stepKey", "status", "inputs"])
def test_create_requires_fields(client, api, missing):
    org = api.org()
    user = api.user(org)
    flow = api.flow(org)
    body = body_for(flow)
    del body[missing]
    assert_error(api.post("/execution-logs", org, body, user), 400, missing)
    assert listing(client, org) == []


def test_flow_reference_must_be_a_flow_of_the_org(client, api):
    org, other = api.org("A"), api.org("B")
    user = api.user(org)
    flow = api.flow(org)
    foreign = api.flow(other)
    for flow_id in (foreign["id"], str(uuid.uuid4())):
        assert_error(api.post("/execution-logs", org, body_for(flow, flowId=flow_id), user), 400, "flowId")
    assert listing(client, org) == []

    log = api.log(org, user, flow)
    for method in ("PATCH", "PUT"):
        for flow_id in (foreign["id"], str(uuid.uuid4())):
            assert_error(update(client, log, org, {"flowId": flow_id}, method), 400, "flowId")
    assert client.simulate_get(f"/execution-logs/{log['id']}", headers=h(org)).json == log

    second = api.flow(org)
    moved = update(client, log, org, {"flowId": second["id"]}, "PUT")
    assert moved.status_code == 200, moved.text
    assert moved.json["flowId"] == second["id"]


# ---- list and filters --------------------------------------------------------------

@pytest.fixture
def seeded(client, api):
    """Two orgs; org A has two users, two flows and five logs."""
    org, other = api.org("A"), api.org("B")
    ada, bob = api.user(org), api.user(org)
    f1, f2 = api.flow(org), api.flow(org)
    logs = {
        "l1": api.log(org, ada, f1, executionId="x1", status="completed"),
        "l2": api.log(org, ada, f1, executionId="x1", status="failed"),
        "l3": api.log(org, bob, f1, executionId="x2", status="completed"),
        "l4": api.log(org, bob, f2, executionId="x2", status="running"),
        "l5": api.log(org, ada, f2, executionId="x3", status="completed"),
    }
    other_user = api.user(other)
    other_flow = api.flow(other)
    other_log = api.log(other, other_user, other_flow, executionId="x1", status="completed")
    ids = {name: log["id"] for name, log in logs.items()}
    return dict(org=org, other=other, ada=ada, bob=bob, f1=f1, f2=f2, ids=ids,
                other_user=other_user, other_flow=other_flow, other_log=other_log)


def test_list_is_newest_first_and_tenant_scoped(client, seeded):
    ids = seeded["ids"]
    result = client.simulate_get("/execution-logs", headers=h(seeded["org"]))
    assert result.status_code == 200
    assert [r["id"] for r in result.json] == [ids["l5"], ids["l4"], ids["l3"], ids["l2"], ids["l1"]]
    for row in result.json:
        assert_shape(row)
        assert row["orgId"] == seeded["org"]["id"]
    assert listing(client, seeded["other"]) == [seeded["other_log"]["id"]]


def test_filters_alone_and_combined(client, seeded):
    org, ids = seeded["org"], seeded["ids"]
    f1, f2, ada, bob = seeded["f1"]["id"], seeded["f2"]["id"], seeded["ada"]["id"], seeded["bob"]["id"]

    def expect(names):
        return [ids[n] for n in names]

    assert listing(client, org, flowId=f1) == expect(["l3", "l2", "l1"])
    assert listing(client, org, flowId=f2) == expect(["l5", "l4"])
    assert listing(client, org, executionId="x2") == expect(["l4", "l3"])
    assert listing(client, org, executionId="nope") == []
    assert listing(client, org, status="completed") == expect(["l5", "l3", "l1"])
    assert listing(client, org, status="cancelled") == []
    assert listing(client, org, userId=bob) == expect(["l4", "l3"])
    assert listing(client, org, userId=ada) == expect(["l5", "l2", "l1"])

    assert listing(client, org, flowId=f1, status="completed") == expect(["l3", "l1"])
    assert listing(client, org, flowId=f1, userId=ada) == expect(["l2", "l1"])
    assert listing(client, org, executionId="x2", status="running") == expect(["l4"])
    assert listing(client, org, executionId="x1", userId=ada, status="failed", flowId=f1) == expect(["l2"])
    assert listing(client, org, flowId=f2, executionId="x1") == []
    assert listing(client, org, userId=bob, status="failed") == []

    # ids of another organization (or of nobody) match nothing
    assert listing(client, org, flowId=seeded["other_flow"]["id"]) == []
    assert listing(client, org, userId=seeded["other_user"]["id"]) == []
    assert listing(client, org, flowId=str(uuid.uuid4())) == []


def test_filtered_list_paginates_and_link_keeps_filters(client, seeded):
    org, ids = seeded["org"], seeded["ids"]
    first = client.simulate_get("/execution-logs", params={"status": "completed", "limit": "2"}, headers=h(org))
    assert [r["id"] for r in first.json] == [ids["l5"], ids["l3"]]
    link = re.match(r'^<([^>]+)>;\s*rel="?next"?$', first.headers["Link"]).group(1)
    parts = urlsplit(link)
    assert parts.path == "/execution-logs" and not parts.netloc
    query = parse_qs(parts.query)
    assert query["status"] == ["completed"] and query["limit"] == ["2"]
    assert query["cursor"] == [first.headers["X-Next-Cursor"]]
    second = client.simulate_get(parts.path, query_string=parts.query, headers=h(org))
    assert [r["id"] for r in second.json] == [ids["l1"]]
    assert "Link" not in second.headers and "X-Next-Cursor" not in second.headers


BAD_QUERIES = [
    ({"status": "done"}, "status"),
    ({"status": "Completed"}, "status"),
    ({"flowId": "not-a-uuid"}, "flowId"),
    ({"userId": "42"}, "userId"),
    ({"executionId": ""}, "executionId"),
    ({"stepKey": "hello"}, "stepKey"),
    ({"flow_id": str(uuid.uuid4())}, "flow_id"),
    ({"limit": "0"}, "limit"),
    ({"limit": "201"}, "limit"),
    ({"cursor": "garbage!"}, "cursor"),
    ({"status": "completed", "color": "red"}, "color"),
]


def test_list_rejects_bad_query(client, api):
    org = api.org()
    for params, field in BAD_QUERIES:
        result = client.simulate_get("/execution-logs", params=params, headers=h(org))
        assert_error(result, 400, field)


# ---- update ------------------------------------------------------------------------

def test_partial_update_changes_only_sent_fields(client, api, db):
    org = api.org()
    ada, bob = api.user(org), api.user(org)
    flow = api.flow(org)
    log = api.log(org, ada, flow, status="running", inputs={"a": 1}, outputs={"o": 1}, error="first")

    result = update(client, log, org, {"status": "completed"})
    assert result.status_code == 200, result.text
    changed = result.json
    assert changed["status"] == "completed"
    for key in ("id", "orgId", "flowId", "userId", "executionId", "stepKey", "inputs", "outputs", "error",
                "createdAt"):
        assert changed[key] == log[key], key
    assert changed["updatedAt"] >= log["updatedAt"]
    with db.pool.connection() as conn:  # microsecond precision, unlike the API's
        row = conn.execute("select updated_at > created_at as moved from execution_logs where id = %s",
                           (log["id"],)).fetchone()
    assert row["moved"] is True

    # PUT is partial too; objects are replaced whole; null clears optional fields
    result = update(client, log, org, {"inputs": {"b": 2}, "outputs": None, "error": None}, "PUT")
    assert result.status_code == 200
    assert result.json["inputs"] == {"b": 2}
    assert result.json["outputs"] is None and result.json["error"] is None
    assert result.json["status"] == "completed"

    result = update(client, log, org, {"outputs": {"x": [1]}, "error": 500, "executionId": "e2", "stepKey": "k2"})
    assert (result.json["outputs"], result.json["error"]) == ({"x": [1]}, 500)
    assert (result.json["executionId"], result.json["stepKey"]) == ("e2", "k2")

    # the actor never changes: userId in the body and another X-User-ID are ignored
    result = update(client, log, org, {"userId": bob["id"], "status": "failed"}, user=bob)
    assert result.status_code == 200
    assert result.json["userId"] == ada["id"] and result.json["status"] == "failed"

    # a GET body can be PUT back unchanged: nothing moves
    current = client.simulate_get(f"/execution-logs/{log['id']}", headers=h(org))
    same = update(client, log, org, current.json, "PUT")
    assert same.status_code == 200
    assert same.json == current.json
    assert same.headers["ETag"] == current.headers["ETag"]


@pytest.mark.parametrize("change, field", [
    ({"status": None}, "status"),
    ({"status": "finished"}, "status"),
    ({"inputs": None}, "inputs"),
    ({"inputs": [1]}, "inputs"),
    ({"outputs": "x"}, "outputs"),
    ({"flowId": None}, "flowId"),
    ({"executionId": ""}, "executionId"),
    ({"stepKey": "k" * 201}, "stepKey"),
    ({"note": "x"}, "note"),
])
def test_update_validation_leaves_log_unchanged(client, api, change, field):
    org = api.org()
    user = api.user(org)
    log = api.log(org, user, api.flow(org))
    for method in ("PATCH", "PUT"):
        assert_error(update(client, log, org, change, method), 400, field)
    assert client.simulate_get(f"/execution-logs/{log['id']}", headers=h(org)).json == log


def test_if_match_on_log_update(client, api):
    org = api.org()
    user = api.user(org)
    log = api.log(org, user, api.flow(org))
    etag = client.simulate_get(f"/execution-logs/{log['id']}", headers=h(org)).headers["ETag"]
    stale = client.simulate_patch(f"/execution-logs/{log['id']}", json={"status": "failed"},
                                  headers=h(org, **{"If-Match": '"0000"'}))
    assert_error(stale, 412)
    ok = client.simulate_patch(f"/execution-logs/{log['id']}", json={"status": "failed"},
                               headers=h(org, **{"If-Match": etag}))
    assert ok.status_code == 200 and ok.json["status"] == "failed"


# ---- delete and tenancy -------------------------------------------------------------

def test_delete_log(client, api):
    org = api.org()
    user = api.user(org)
    flow = api.flow(org)
    log, keep = api.log(org, user, flow), api.log(org, user, flow)
    result = client.simulate_delete(f"/execution-logs/{log['id']}", headers=h(org))
    assert result.status_code == 204
    assert result.text == ""
    assert_error(client.simulate_get(f"/execution-logs/{log['id']}", headers=h(org)), 404)
    assert_error(client.simulate_delete(f"/execution-logs/{log['id']}", headers=h(org)), 404)
    assert listing(client, org) == [keep["id"]]


def test_user_and_flow_with_logs_cannot_be_deleted(client, api):
    org = api.org()
    user = api.user(org)
    flow = api.flow(org)
    log = api.log(org, user, flow)

    body = assert_error(client.simulate_delete(f"/users/{user['id']}", headers=h(org)), 409)
    assert "execution log" in body["message"].lower()
    body = assert_error(client.simulate_delete(f"/flows/{flow['id']}", headers=h(org)), 409)
    assert "execution log" in body["message"].lower()
    assert client.simulate_get(f"/users/{user['id']}", headers=h(org)).status_code == 200
    assert client.simulate_get(f"/flows/{flow['id']}", headers=h(org)).status_code == 200
    assert listing(client, org) == [log["id"]]

    assert client.simulate_delete(f"/execution-logs/{log['id']}", headers=h(org)).status_code == 204
    assert client.simulate_delete(f"/users/{user['id']}", headers=h(org)).status_code == 204
    assert client.simulate_delete(f"/flows/{flow['id']}", headers=h(org)).status_code == 204


def test_another_orgs_log_is_404_on_every_item_route(client, api):
    org, other = api.org("A"), api.org("B")
    user = api.user(org)
    log = api.log(org, user, api.flow(org))
    other_user = api.user(other)
    path = f"/execution-logs/{log['id']}"
    assert_error(client.simulate_get(path, headers=h(other)), 404)
    assert_error(client.simulate_patch(path, json={"status": "failed"}, headers=h(other, other_user)), 404)
    assert_error(client.simulate_put(path, json={"status": "failed"}, headers=h(other)), 404)
    # 404 before body validation
    assert_error(client.simulate_patch(path, json={"status": "bogus"}, headers=h(other)), 404)
    assert_error(client.simulate_delete(path, headers=h(other)), 404)
    assert client.simulate_get(path, headers=h(org)).json == log


@pytest.mark.parametrize("log_id", ["7d4c5a36-2f0e-4d59-9a4e-0b6f1c2d3e4f", "not-a-uuid"])
def test_missing_or_malformed_log_id_is_404(client, api, log_id):
    org = api.org()
    path = f"/execution-logs/{log_id}"
    assert_error(client.simulate_get(path, headers=h(org)), 404)
    assert_error(client.simulate_patch(path, json={"status": "failed"}, headers=h(org)), 404)
    assert_error(client.simulate_put(path, json={"status": "failed"}, headers=h(org)), 404)
    assert_error(client.simulate_delete(path, headers=h(org)), 404)


def test_routes_require_org_header(client, api):
    org = api.org()
    user = api.user(org)
    flow = api.flow(org)
    assert_error(client.simulate_get("/execution-logs"), 400, "X-Org-ID")
    result = client.simulate_post("/execution-logs", json=body_for(flow), headers={"X-User-ID": user["id"]})
    assert_error(result, 400, "X-Org-ID")
    result = client.simulate_get("/execution-logs", headers={"X-Org-ID": "nope"})
    assert_error(result, 400, "X-Org-ID")
