"""HTTP edges of the flow execution routes, mostly without a worker running.

Covers POST /flows/{id}/execute (X-User-ID required, body checks, Idempotency-Key
length, 404s, the 202 body and Location, the run row and its first "$flow" log
written together or not at all), GET /flows/{id}/executions (keyset pagination,
newest first, 404s), GET …/executions/{executionId} (404 for another flow's or
organization's run and for non-UUIDs), cancel (queued → cancelled at once, then 409),
retry (409 unless failed or cancelled, X-User-ID required), metrics, deletes blocked
by executions, and 405s with ``Allow``."""

from __future__ import annotations

import re
import threading
import time
import uuid

import pytest
from contract import assert_error
from psycopg.rows import dict_row
from support import app_routes

from tolstoy import engine

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
RUN_FIELDS = {"executionId", "orgId", "flowId", "flowVersion", "userId", "status", "variables", "outputs",
              "error", "retryOf", "rerunOf", "createdAt", "startedAt", "finishedAt", "parentExecutionId",
              "parentStepId", "waitingFor"}


@pytest.fixture
def flow(api, org):
    return api.flow(org)


def execute(api, org, user, flow, body=None, headers=None):
    """POST /flows/{id}/execute; returns the raw result."""
    return api.client.simulate_post(f"/flows/{flow['id']}/execute",
                                    json={"variables": {}} if body is None else body,
                                    headers={**api.headers(org, user), **(headers or {})})


def started(api, org, user, flow, variables=None, headers=None) -> dict:
    result = execute(api, org, user, flow, {"variables": variables or {}}, headers)
    assert result.status_code == 202, result.text
    return result.json


def runs_path(flow: dict, execution_id: str | None = None, action: str | None = None) -> str:
    path = f"/flows/{flow['id']}/executions"
    if execution_id is not None:
        path += f"/{execution_id}"
    if action is not None:
        path += f"/{action}"
    return path


def get(api, org, path, **params):
    return api.client.simulate_get(path, params=params or None, headers=api.headers(org))


def rows(db, sql: str, **params) -> list[dict]:
    """Rows read directly from the database (as its owner)."""
    with db.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def run_logs(api, org, execution_id) -> list[dict]:
    result = get(api, org, "/execution-logs", executionId=execution_id)
    assert result.status_code == 200, result.text
    return list(reversed(result.json))


# ---- execute -------------------------------------------------------------------------------

def test_execute_queues_a_run_with_its_first_log(api, org, user, flow, db):
    result = execute(api, org, user, flow, {"variables": {"n": 1, "name": "Ada", "list": [1, {"a": None}]}})
    assert result.status_code == 202, result.text
    body = result.json
    assert {k: body[k] for k in ("flowId", "flowVersion", "status")} == {
        "flowId": flow["id"], "flowVersion": 1, "status": "queued"}
    assert set(body) <= {"executionId", "flowId", "flowVersion", "status", "retryOf", "rerunOf"}
    assert body.get("retryOf") is None
    execution_id = body["executionId"]
    uuid.UUID(execution_id)
    assert result.headers["location"] == f"/flows/{flow['id']}/executions/{execution_id}"

    [run] = rows(db, "select * from flow_runs where id = %(id)s", id=execution_id)
    assert str(run["org_id"]) == org["id"] and str(run["flow_id"]) == flow["id"]
    assert str(run["user_id"]) == user["id"]
    assert run["status"] == "queued" and run["flow_version"] == 1
    assert run["variables"] == {"n": 1, "name": "Ada", "list": [1, {"a": None}]}
    assert run["idempotency_key"] is None and run["retry_of"] is None

    [entry] = run_logs(api, org, execution_id)
    assert (entry["stepKey"], entry["status"]) == ("$flow", "queued")
    assert entry["flowId"] == flow["id"] and entry["userId"] == user["id"]
    assert entry["inputs"] == {"n": 1, "name": "Ada", "list": [1, {"a": None}]}

    detail = get(api, org, result.headers["location"])
    assert detail.status_code == 200, detail.text
    assert set(detail.json) == RUN_FIELDS | {"steps", "reruns"}
    assert detail.json["executionId"] == execution_id
    assert detail.json["status"] == "queued" and detail.json["steps"] == []
    assert detail.json["startedAt"] is None and detail.json["finishedAt"] is None
    assert detail.json["outputs"] is None and detail.json["error"] is None
    assert TIMESTAMP.match(detail.json["createdAt"])
    assert detail.headers["etag"].startswith('"')


def test_variables_default_to_an_empty_object(api, org, user, flow, db):
    result = execute(api, org, user, flow, {})
    assert result.status_code == 202, result.text
    [run] = rows(db, "select variables from flow_runs where id = %(id)s", id=result.json["executionId"])
    assert run["variables"] == {}


def test_execute_uses_the_current_version(api, org, user, flow):
    changed = api.client.simulate_patch(f"/flows/{flow['id']}", json={"steps": [
        {"id": "v2", "type": "transform", "config": {"output": 2}}]}, headers=api.headers(org))
    assert changed.json["version"] == 2
    assert started(api, org, user, flow)["flowVersion"] == 2


def test_run_and_first_log_are_written_together_or_not_at_all(api, org, user, flow, db):
    # Make the log insert fail inside the execute transaction: the run must not survive it.
    with db.pool.connection() as conn:
        conn.execute("create function test_refuse_log() returns trigger language plpgsql as "
                     "$$ begin raise exception 'log refused'; end; $$")
        conn.execute("create trigger test_refuse_log before insert on execution_logs "
                     "for each row execute function test_refuse_log()")
    result = execute(api, org, user, flow)
    assert result.status_code == 500
    assert "log refused" not in result.text
    assert rows(db, "select id from flow_runs") == []
    assert rows(db, "select id from execution_logs") == []
    with db.pool.connection() as conn:
        conn.execute("drop trigger test_refuse_log on execution_logs")
    assert started(api, org, user, flow)["status"] == "queued"
    assert len(rows(db, "select id from flow_runs")) == 1


def test_execute_requires_x_user_id(api, org, flow, db):
    result = api.client.simulate_post(f"/flows/{flow['id']}/execute", json={"variables": {}},
                                      headers=api.headers(org))
    assert_error(result, 400, "X-User-ID")
    other_user = api.user(api.org("Other"))
    assert_error(execute(api, org, other_user, flow), 400, "X-User-ID")
    assert_error(execute(api, org, "not-a-uuid", flow), 400, "X-User-ID")
    assert rows(db, "select id from flow_runs") == []


@pytest.mark.parametrize("raw", [b"", b"   ", b"{", b'{"variables": }', b"[]", b"[{}]", b'"x"', b"null", b"1"])
def test_malformed_empty_or_non_object_body_is_400(api, org, user, flow, db, raw):
    result = api.client.simulate_post(f"/flows/{flow['id']}/execute", body=raw,
                                      headers={**api.headers(org, user), "Content-Type": "application/json"})
    assert_error(result, 400, "body")
    assert rows(db, "select id from flow_runs") == []


@pytest.mark.parametrize("body, field", [
    ({"variables": []}, "variables"),
    ({"variables": "x"}, "variables"),
    ({"variables": 3}, "variables"),
    ({"variables": None}, "variables"),
    ({"variables": {}, "inputs": {}}, "inputs"),
    ({"vars": {}}, "vars"),
    ({"variables": {"s": "nul\u0000"}}, "variables.s"),
])
def test_invalid_body_fields_are_400(api, org, user, flow, db, body, field):
    assert_error(execute(api, org, user, flow, body), 400, field)
    assert rows(db, "select id from flow_runs") == []


def test_read_only_fields_in_the_body_are_ignored(api, org, user, flow):
    result = execute(api, org, user, flow, {"variables": {"a": 1}, "id": str(uuid.uuid4()), "version": 7})
    assert result.status_code == 202, result.text
    assert result.json["flowVersion"] == 1


def test_unknown_and_other_organizations_flows_are_404(api, org, user, flow, db):
    other = api.org("Other")
    other_user = api.user(other)
    assert_error(execute(api, other, other_user, flow), 404)
    # 404 comes before field validation.
    assert_error(execute(api, other, other_user, flow, {"variables": []}), 404)
    for flow_id in (str(uuid.uuid4()), "not-a-uuid", "1"):
        assert_error(execute(api, org, user, {"id": flow_id}), 404)
    assert rows(db, "select id from flow_runs") == []


# Every route that acts on one run of a flow: a new one (rerun, move, …) is under it and so in the rule below.
RUN_ROUTES = "/flows/{id}/executions/{execution_id}"


def test_every_route_of_a_run_is_a_404_for_another_organization_and_writes_nothing(api, org, user, flow, client, db):
    """The class rule: whatever route is added below a run, another organization's request for it,
    naming the run under its flow or under a flow of its own, is a 404 (before its body is read) and
    writes nothing."""
    run = started(api, org, user, flow)["executionId"]
    other = api.org("Other")
    other_user = api.user(other)
    other_flow = api.flow(other)
    routes = {template: methods for template, (_, methods) in app_routes(client.app).items()
              if template.startswith(RUN_ROUTES)}
    assert f"{RUN_ROUTES}/rerun" in routes and f"{RUN_ROUTES}/retry" in routes, routes
    before = rows(db, "select id, status from flow_runs order by id")
    for template, methods in sorted(routes.items()):
        for flow_id in (flow["id"], other_flow["id"]):
            path = re.sub(r"\{\w+\}", "x", template.replace("{id}", flow_id).replace("{execution_id}", run))
            for method in sorted(methods):
                # An empty body, and for the re-run a dry run that would answer 200 for its organization.
                for body in ({}, *([{"fromStep": "hello", "dryRun": True}] if template.endswith("/rerun") else [])):
                    result = client.simulate_request(method, path, json=body, headers=api.headers(other, other_user))
                    assert result.status_code == 404, (method, path, body, result.text)
    assert rows(db, "select id, status from flow_runs order by id") == before


def test_idempotency_key_length(api, org, user, flow, db):
    assert_error(execute(api, org, user, flow, headers={"Idempotency-Key": "k" * 201}), 400, "Idempotency-Key")
    assert rows(db, "select id from flow_runs") == []
    longest = started(api, org, user, flow, headers={"Idempotency-Key": "k" * 200})
    again = started(api, org, user, flow, headers={"Idempotency-Key": "k" * 200})
    assert again["executionId"] == longest["executionId"]
    one = started(api, org, user, flow, headers={"Idempotency-Key": "1"})
    assert one["executionId"] != longest["executionId"]
    assert len(rows(db, "select id from flow_runs")) == 2
    # The replay wrote no second "$flow" log.
    assert len(run_logs(api, org, longest["executionId"])) == 1


def test_idempotency_keys_are_per_flow(api, org, user, flow):
    other_flow = api.flow(org)
    a = started(api, org, user, flow, headers={"Idempotency-Key": "order-1"})
    b = started(api, org, user, other_flow, headers={"Idempotency-Key": "order-1"})
    assert a["executionId"] != b["executionId"] and b["flowId"] == other_flow["id"]


# ---- list and read ----------------------------------------------------------------------------

def test_list_is_paginated_newest_first(api, org, user, flow):
    other_flow = api.flow(org)
    started(api, org, user, other_flow)
    ids = [started(api, org, user, flow, {"i": i})["executionId"] for i in range(5)]
    expected = list(reversed(ids))

    everything = get(api, org, runs_path(flow))
    assert everything.status_code == 200
    assert [r["executionId"] for r in everything.json] == expected
    assert "link" not in everything.headers and "x-next-cursor" not in everything.headers
    first = everything.json[0]
    assert set(first) == RUN_FIELDS
    assert first["variables"] == {"i": 4} and first["userId"] == user["id"] and first["status"] == "queued"

    seen, path, pages = [], runs_path(flow) + "?limit=2", 0
    while path:
        page = api.client.simulate_get(path.split("?")[0], query_string=path.partition("?")[2],
                                       headers=api.headers(org))
        assert page.status_code == 200, page.text
        assert len(page.json) <= 2
        seen += [r["executionId"] for r in page.json]
        pages += 1
        link = page.headers.get("link")
        if link:
            match = re.fullmatch(r'<(/flows/[^>]+)>; rel="next"', link)
            assert match, link
            path = match.group(1)
            assert "limit=2" in path and page.headers["x-next-cursor"] in path
        else:
            path = None
    assert seen == expected and pages == 3


@pytest.mark.parametrize("params, field", [
    ({"limit": "0"}, "limit"),
    ({"limit": "201"}, "limit"),
    ({"limit": "x"}, "limit"),
    ({"cursor": "garbage!"}, "cursor"),
    ({"status": "queued"}, "status"),
])
def test_list_rejects_bad_query(api, org, flow, params, field):
    assert_error(get(api, org, runs_path(flow), **params), 400, field)


def test_list_404s(api, org, user, flow):
    started(api, org, user, flow)
    other = api.org("Other")
    assert_error(get(api, other, runs_path(flow)), 404)
    assert_error(get(api, other, runs_path(flow), limit="0"), 404)
    assert_error(get(api, org, runs_path({"id": str(uuid.uuid4())})), 404)
    assert_error(get(api, org, runs_path({"id": "nope"})), 404)
    assert get(api, org, runs_path(api.flow(org))).json == []


def test_read_another_flows_or_organizations_run_is_404(api, org, user, flow):
    run = started(api, org, user, flow)
    sibling = api.flow(org)
    assert_error(get(api, org, runs_path(sibling, run["executionId"])), 404)
    other = api.org("Other")
    other_flow = api.flow(other)
    assert_error(get(api, other, runs_path(flow, run["executionId"])), 404)
    assert_error(get(api, other, runs_path(other_flow, run["executionId"])), 404)
    for bad in ("not-a-uuid", "123", str(uuid.uuid4())):
        assert_error(get(api, org, runs_path(flow, bad)), 404)
    assert get(api, org, runs_path(flow, run["executionId"])).status_code == 200


# ---- cancel ---------------------------------------------------------------------------------

def test_cancel_a_queued_run_then_409(api, org, user, flow):
    run = started(api, org, user, flow)
    path = runs_path(flow, run["executionId"], "cancel")
    cancel = api.client.simulate_post(path, headers=api.headers(org, user))
    assert cancel.status_code == 202, cancel.text
    assert cancel.json["status"] == "cancelled" and cancel.json["executionId"] == run["executionId"]
    detail = get(api, org, runs_path(flow, run["executionId"])).json
    assert detail["status"] == "cancelled" and TIMESTAMP.match(detail["finishedAt"])
    assert [(e["stepKey"], e["status"]) for e in run_logs(api, org, run["executionId"])] == [
        ("$flow", "queued"), ("$flow", "cancelled")]
    again = assert_error(api.client.simulate_post(path, headers=api.headers(org, user)), 409)
    assert "cancelled" in again["message"]
    assert len(run_logs(api, org, run["executionId"])) == 2


def test_cancel_404s(api, org, user, flow):
    run = started(api, org, user, flow)
    other = api.org("Other")
    assert_error(api.client.simulate_post(runs_path(flow, run["executionId"], "cancel"),
                                          headers=api.headers(other)), 404)
    assert_error(api.client.simulate_post(runs_path(api.flow(org), run["executionId"], "cancel"),
                                          headers=api.headers(org)), 404)
    assert_error(api.client.simulate_post(runs_path(flow, "nope", "cancel"), headers=api.headers(org)), 404)
    assert get(api, org, runs_path(flow, run["executionId"])).json["status"] == "queued"


# ---- retry ----------------------------------------------------------------------------------

def test_retry_of_a_queued_run_is_409(api, org, user, flow, db):
    run = started(api, org, user, flow)
    result = api.client.simulate_post(runs_path(flow, run["executionId"], "retry"), headers=api.headers(org, user))
    body = assert_error(result, 409)
    assert "queued" in body["message"]
    assert len(rows(db, "select id from flow_runs")) == 1


def test_retry_requires_x_user_id_and_makes_a_new_run(api, org, user, flow, db):
    run = started(api, org, user, flow, {"x": 1})
    api.client.simulate_post(runs_path(flow, run["executionId"], "cancel"), headers=api.headers(org, user))
    path = runs_path(flow, run["executionId"], "retry")
    assert_error(api.client.simulate_post(path, headers=api.headers(org)), 400, "X-User-ID")
    assert len(rows(db, "select id from flow_runs")) == 1
    retry = api.client.simulate_post(path, headers=api.headers(org, user))
    assert retry.status_code == 202, retry.text
    assert retry.json["retryOf"] == run["executionId"] and retry.json["status"] == "queued"
    assert retry.json["executionId"] != run["executionId"]
    assert retry.headers["location"] == runs_path(flow, retry.json["executionId"])
    detail = get(api, org, retry.headers["location"]).json
    assert detail["variables"] == {"x": 1} and detail["retryOf"] == run["executionId"]
    assert [(e["stepKey"], e["status"]) for e in run_logs(api, org, retry.json["executionId"])] == [
        ("$flow", "queued")]


def test_retry_404s(api, org, user, flow):
    run = started(api, org, user, flow)
    other = api.org("Other")
    other_user = api.user(other)
    assert_error(api.client.simulate_post(runs_path(flow, run["executionId"], "retry"),
                                          headers=api.headers(other, other_user)), 404)
    assert_error(api.client.simulate_post(runs_path(flow, str(uuid.uuid4()), "retry"),
                                          headers=api.headers(org, user)), 404)
    assert_error(api.client.simulate_post(runs_path(flow, "x", "retry"), headers=api.headers(org, user)), 404)


def test_retry_of_a_completed_run_is_409(api, org, user, flow, config, worker_db):
    worker = engine.worker(config, worker_db, concurrency=2, poll_seconds=0.1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        run = started(api, org, user, flow)
        deadline = time.monotonic() + 15
        while get(api, org, runs_path(flow, run["executionId"])).json["status"] != "completed":
            assert time.monotonic() < deadline, "run did not complete"
            time.sleep(0.05)
    finally:
        worker.stop()
        thread.join(timeout=10)
    result = api.client.simulate_post(runs_path(flow, run["executionId"], "retry"), headers=api.headers(org, user))
    assert "completed" in assert_error(result, 409)["message"]
    cancel = api.client.simulate_post(runs_path(flow, run["executionId"], "cancel"), headers=api.headers(org, user))
    assert "completed" in assert_error(cancel, 409)["message"]
    metrics = get(api, org, f"/flows/{flow['id']}/metrics").json
    assert metrics["totalExecutions"] == 1 and metrics["successRate"] == 1.0


# ---- metrics --------------------------------------------------------------------------------

def test_metrics_without_runs(api, org, flow):
    result = get(api, org, f"/flows/{flow['id']}/metrics")
    assert result.status_code == 200, result.text
    assert result.json == {"totalExecutions": 0, "statusBreakdown": {}, "successRate": None,
                           "p50Ms": None, "p95Ms": None}


def test_metrics_count_queued_and_cancelled_runs(api, org, user, flow):
    started(api, org, user, flow)
    cancelled = started(api, org, user, flow)
    api.client.simulate_post(runs_path(flow, cancelled["executionId"], "cancel"), headers=api.headers(org))
    started(api, org, user, api.flow(org))  # another flow's run is not counted
    metrics = get(api, org, f"/flows/{flow['id']}/metrics").json
    assert metrics["totalExecutions"] == 2
    assert metrics["statusBreakdown"] == {"queued": 1, "cancelled": 1}
    assert metrics["successRate"] == 0.0
    assert metrics["p50Ms"] is None and metrics["p95Ms"] is None


def test_metrics_404s(api, org, flow):
    assert_error(get(api, api.org("Other"), f"/flows/{flow['id']}/metrics"), 404)
    assert_error(get(api, org, f"/flows/{uuid.uuid4()}/metrics"), 404)
    assert_error(get(api, org, "/flows/nope/metrics"), 404)


# ---- deletes and methods --------------------------------------------------------------------

def test_a_flow_with_executions_cannot_be_deleted(api, org, user, flow, db):
    run = started(api, org, user, flow)
    body = assert_error(api.client.simulate_delete(f"/flows/{flow['id']}", headers=api.headers(org)), 409)
    assert "execution" in body["message"].lower()
    assert get(api, org, f"/flows/{flow['id']}").status_code == 200
    assert get(api, org, runs_path(flow, run["executionId"])).status_code == 200
    # Without its logs the run itself still blocks the delete.
    with db.pool.connection() as conn:
        conn.execute("delete from execution_logs")
    body = assert_error(api.client.simulate_delete(f"/flows/{flow['id']}", headers=api.headers(org)), 409)
    assert "executions" in body["message"]


def test_a_user_with_executions_cannot_be_deleted(api, org, user, flow, db):
    started(api, org, user, flow)
    with db.pool.connection() as conn:
        conn.execute("delete from execution_logs")
    body = assert_error(api.client.simulate_delete(f"/users/{user['id']}", headers=api.headers(org)), 409)
    assert "executions" in body["message"]


@pytest.mark.parametrize("method, suffix, allowed", [
    ("GET", "/execute", {"POST"}),
    ("PUT", "/execute", {"POST"}),
    ("POST", "/executions", {"GET", "DELETE"}),
    ("PUT", "/executions", {"GET", "DELETE"}),
    ("PUT", "/executions/{run}", {"GET"}),
    ("DELETE", "/executions/{run}", {"GET"}),
    ("GET", "/executions/{run}/cancel", {"POST"}),
    ("DELETE", "/executions/{run}/retry", {"POST"}),
    ("POST", "/metrics", {"GET"}),
])
def test_methods_not_allowed(api, org, user, flow, method, suffix, allowed):
    run = started(api, org, user, flow)
    path = f"/flows/{flow['id']}" + suffix.replace("{run}", run["executionId"])
    result = api.client.simulate_request(method, path, headers=api.headers(org, user))
    assert_error(result, 405)
    methods = set(result.headers["allow"].split(", ")) - {"OPTIONS"}
    assert methods == allowed
    # Even without tenant headers the method check comes first.
    assert api.client.simulate_request(method, path).status_code == 405


def test_tenant_header_is_required(api, user, flow):
    assert_error(api.client.simulate_post(f"/flows/{flow['id']}/execute", json={}), 400, "X-Org-ID")
    assert_error(api.client.simulate_get(runs_path(flow)), 400, "X-Org-ID")
    assert_error(api.client.simulate_get(f"/flows/{flow['id']}/metrics"), 400, "X-Org-ID")


def test_resolving_checks_the_run_before_the_body_then_its_state(api, org, user, flow):
    # The order of checks (docs/api.md): a run that is not there is a 404 whatever the body says; then
    # the body (400); then the run's state (409: it is not waiting for a resolution).
    path = runs_path(flow, "ffffffff-ffff-7fff-bfff-ffffffffffff") + "/steps/charge/resolve"
    assert_error(api.client.simulate_post(path, json={"outcome": "maybe"}, headers=api.headers(org, user)), 404)
    assert_error(api.client.simulate_post(path, json={"outcome": "retry"}, headers=api.headers(org, user)), 404)
    queued = started(api, org, user, flow)["executionId"]
    path = runs_path(flow, queued) + "/steps/charge/resolve"
    assert_error(api.client.simulate_post(path, json={"outcome": "maybe"}, headers=api.headers(org, user)), 400,
                 "outcome")
    conflict = api.client.simulate_post(path, json={"outcome": "retry"}, headers=api.headers(org, user))
    assert_error(conflict, 409)
    assert "not waiting for a resolution" in conflict.json["message"]
