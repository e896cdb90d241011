"""Provenance of a run's audit trail (docs/security.md, "Provenance"): clients may write
execution logs (the contract's POST /execution-logs), even under a real run's id, but never
under the step keys the engine names its own rows with, every row says who wrote it
(``source``: engine or client) wherever it is shown, and the engine's rows cannot be changed
or deleted through the API."""

from __future__ import annotations

import json
import re
import threading

from test_engine import execute, logs_of, step, wait_for
from werkzeug import Response

from tolstoy import engine
from tolstoy.db.queries import SQL

RESERVED = ["$flow", "$run", "$", "onFailure.note", "onFailure.x", "each[0]", "each[12]", "a[1][2]"]


def post_log(api, org, user, flow, execution_id: str, step_key: str):
    return api.post("/execution-logs", org, {"flowId": flow["id"], "executionId": execution_id,
                                             "stepKey": step_key, "status": "completed", "inputs": {}}, user)


def test_a_client_cannot_write_the_engines_step_keys_into_a_run(api, org, user):
    flow = api.flow(org)
    run = execute(api, org, user, flow)["executionId"]  # queued: the engine's "$flow" row exists
    for key in RESERVED:
        for execution_id in (run, "my-own-run"):
            result = post_log(api, org, user, flow, execution_id, key)
            assert result.status_code == 400, (key, result.text)
            assert [e["field"] for e in result.json["errors"]] == ["stepKey"] and "reserved" in result.json["message"]
    # Nor by changing a log of its own into one.
    own = post_log(api, org, user, flow, run, "hello")
    assert own.status_code == 201, own.text
    changed = api.client.simulate_patch(f"/execution-logs/{own.json['id']}", json={"stepKey": "$flow"},
                                        headers=api.headers(org, user))
    assert changed.status_code == 400 and changed.json["errors"][0]["field"] == "stepKey"
    # Keys a flow step may have, and lookalikes of the reserved ones, stay the client's to use.
    for key in ("hello", "onFailure", "onFailure_x", "each[x]", "each[]", "a$b", "items.fetch"):
        assert post_log(api, org, user, flow, run, key).status_code == 201, key
    assert [log["stepKey"] for log in logs_of(api, org, run) if log["source"] == "engine"] == ["$flow"]


def test_every_row_says_who_wrote_it(api, org, user, client):
    flow = api.flow(org)
    run = execute(api, org, user, flow)["executionId"]
    sent = api.post("/execution-logs", org, {"flowId": flow["id"], "executionId": run, "stepKey": "hello",
                                             "status": "completed", "inputs": {}, "source": "engine"}, user)
    assert sent.status_code == 201 and sent.json["source"] == "client", sent.text  # read-only: ignored
    assert client.simulate_get(f"/execution-logs/{sent.json['id']}", headers=api.headers(org)).json["source"] == "client"
    listed = {(log["stepKey"], log["source"]) for log in logs_of(api, org, run)}
    assert listed == {("$flow", "engine"), ("hello", "client")}
    # A GET body PUT back as it is (source included) is accepted and changes nothing of it.
    body = client.simulate_get(f"/execution-logs/{sent.json['id']}", headers=api.headers(org)).json
    back = client.simulate_put(f"/execution-logs/{sent.json['id']}", json=body, headers=api.headers(org))
    assert back.status_code == 200 and back.json["source"] == "client"
    document = client.simulate_get("/openapi.json").json
    field = document["components"]["schemas"]["ExecutionLog"]["properties"]["source"]
    assert field["readOnly"] is True and field["enum"] == ["engine", "client"]


def test_the_engines_rows_cannot_be_changed_or_deleted_through_the_api(api, org, user, client, db):
    flow = api.flow(org)
    run = execute(api, org, user, flow)["executionId"]
    [queued] = logs_of(api, org, run)
    assert (queued["stepKey"], queued["source"]) == ("$flow", "engine")
    path, headers = f"/execution-logs/{queued['id']}", api.headers(org, user)
    for method, body in (("PATCH", {"status": "completed"}), ("PUT", {"error": {"forged": True}}), ("DELETE", None)):
        result = client.simulate_request(method, path, json=body, headers=headers)
        assert result.status_code == 409, (method, result.text)
        assert "written by the engine" in result.json["message"] and "cannot be changed or deleted" in result.json["message"]
    # The contract's order of checks still holds: a stale If-Match is a 412, a bad field a 400, first.
    stale = client.simulate_patch(path, json={"status": "completed"}, headers={**headers, "If-Match": '"x"'})
    assert stale.status_code == 412
    assert client.simulate_patch(path, json={"status": "done"}, headers=headers).status_code == 400
    assert client.simulate_get(path, headers=headers).json == queued  # untouched
    # A client's own row is still the client's to change and delete.
    own = post_log(api, org, user, flow, run, "hello").json
    assert client.simulate_patch(f"/execution-logs/{own['id']}", json={"status": "failed"},
                                 headers=headers).json["status"] == "failed"
    assert client.simulate_delete(f"/execution-logs/{own['id']}", headers=headers).status_code == 204
    # The statements themselves refuse an engine row, whoever calls them.
    with db.pool.connection() as conn:
        params = {"org_id": org["id"], "id": queued["id"]}
        assert conn.execute(SQL.execution_logs.delete.sql, params).rowcount == 0


def test_every_key_the_engine_writes_is_a_step_id_or_reserved(api, org, user, worker, server, db):
    """The class: run a flow through what writes log rows of its own (foreach items and their retries,
    a failing step, onFailure steps, the run's own rows), then every step key of an engine row is one of
    the flow's step ids or reserved, and a client is refused each reserved one it saw."""
    calls: dict[str, int] = {}
    lock = threading.Lock()

    def flaky(request):
        with lock:
            calls[request.args["i"]] = calls.get(request.args["i"], 0) + 1
            first = calls[request.args["i"]] == 1
        return Response(json.dumps({"i": request.args["i"]}), status=503 if first else 200,
                        content_type="application/json")

    server.expect_request("/flaky").respond_with_handler(flaky)
    server.expect_request("/boom").respond_with_data("no", status=422)
    flow = api.flow(org, steps=[
        step("each", "foreach", {"items": [1, 2], "step": {
            "type": "http_request", "config": {"method": "GET", "url": server.url_for("/flaky") + "?i={{ item }}"},
            "retryPolicy": {"maxRetries": 2, "delayMs": 10, "backoffStrategy": "fixed"}}}),
        step("skipped", "transform", {"output": 1}, executeIf="{{ false }}"),
        step("boom", "http_request", {"method": "GET", "url": server.url_for("/boom")}),
    ], onFailure=[step("note", "transform", {"output": {"failed": "{{ failedStepId }}"}})])
    run = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    assert run["status"] == "failed" and run["outputs"]["onFailure.note"] == {"failed": "boom"}, run
    with db.pool.connection() as conn:
        keys = {row["step_key"] for row in conn.execute(
            "select distinct step_key from execution_logs where execution_id = %s and source = 'engine'",
            (run["executionId"],))}
    step_ids = {s["id"] for s in flow["steps"]}
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", sid) for sid in step_ids)
    unreserved = {key for key in keys - step_ids if not engine.reserved_step_key(key)}
    assert not unreserved, f"the engine wrote step keys a client may forge: {unreserved}"
    reserved = keys - step_ids
    assert {"$flow", "onFailure.note"} <= reserved and any(key.startswith("each[") for key in reserved), keys
    for key in sorted(reserved):
        assert post_log(api, org, user, flow, run["executionId"], key).status_code == 400, key


def test_the_console_marks_client_rows_and_draws_the_timeline_from_the_engines_alone(api, org, user, worker,
                                                                                        client):
    flow = api.flow(org)
    run_id = execute(api, org, user, flow)["executionId"]
    assert wait_for(api, org, flow, run_id)["status"] == "completed"
    path = f"/console/orgs/{org['id']}/runs/{run_id}"

    def timeline(text: str) -> str:
        return re.search(r'<svg id="timeline".*?</svg>', text, re.S).group(0)

    before = client.simulate_get(path).text
    assert "client-written" not in before
    # A client's rows under the run's id, one naming its step: a start that never ended, a failure.
    for status in ("started", "failed"):
        assert api.post("/execution-logs", org, {"flowId": flow["id"], "executionId": run_id, "stepKey": "hello",
                                                 "status": status, "inputs": {"forged": True}}, user).status_code == 201
    after = client.simulate_get(path)
    assert after.status_code == 200
    assert timeline(after.text) == timeline(before)  # the engine's timing alone
    rows = re.findall(r"<tr><td>.*?</tr>", after.text.split('id="logs-title"')[1], re.S)
    marked = [row for row in rows if 'class="tag client"' in row]
    assert len(marked) == 2 and all("forged" in row for row in marked)
    assert len(rows) > 2 and not any("forged" in row for row in rows if row not in marked)
    assert "were sent by a client through <code>POST /execution-logs</code>" in after.text
