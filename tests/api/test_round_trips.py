"""What each request costs the database: one unit of work (one transaction) per
request, the tenant checked in the same round trip as the first query, and no
connection at all for requests that need no data. Counts decide speed, so a
regression fails here rather than in a benchmark."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest
from falcon import testing

from tolstoy.api.app import create_app
from tolstoy.db.database import Database


@pytest.fixture
def counted(client, app_db, api):
    """Call the API and return (result, what it cost: statements, round trips, transactions)."""

    def call(method: str, path: str, **kwargs):
        before = app_db.counts.snapshot()
        result = client.simulate_request(method, path, **kwargs)
        after = app_db.counts.snapshot()
        return result, {key: after[key] - before[key] for key in after}

    return call


@pytest.fixture
def world(api, org, user):
    tool = api.tool(org, authType="bearer")
    action = api.action(org, tool)
    flow = api.flow(org)
    log = api.log(org, user, flow)
    return {"org": org, "user": user, "tool": tool, "action": action, "flow": flow, "log": log,
            "headers": api.headers(org), "acting": api.headers(org, user)}


def test_reading_a_tool_is_one_round_trip_of_two_statements(counted, world):
    result, cost = counted("GET", f"/tools/{world['tool']['id']}", headers=world["acting"])
    assert result.status_code == 200 and result.json["actions"][0]["id"] == world["action"]["id"]
    # tolstoy_enter (tenant, user, timeout) and the tool with its actions, committed by the Sync.
    assert cost == {"statements": 2, "round_trips": 1, "transactions": 1}


def test_creating_a_tool_is_one_round_trip_of_two_statements(counted, world):
    body = {"name": "Slack", "baseUrl": "https://slack.com/api", "authType": "bearer"}
    result, cost = counted("POST", "/tools", json=body, headers=world["headers"])
    assert result.status_code == 201, result.text
    assert cost == {"statements": 2, "round_trips": 1, "transactions": 1}


@pytest.mark.parametrize("kind", ["users", "tools", "actions", "flows", "execution-logs"])
def test_every_crud_route_is_one_transaction(counted, world, kind):
    item = {"users": world["user"], "tools": world["tool"], "actions": world["action"], "flows": world["flow"],
            "execution-logs": world["log"]}[kind]
    changes = {"users": {"name": "Grace"}, "tools": {"name": "GitHub 2"}, "actions": {"name": "Renamed"},
               "flows": {"description": "new"}, "execution-logs": {"status": "failed"}}[kind]
    path = f"/{kind}/{item['id']}"
    for method, target, kwargs in [("GET", f"/{kind}", {}), ("GET", path, {}),
                                   ("PATCH", path, {"json": changes}), ("PUT", path, {"json": changes})]:
        result, cost = counted(method, target, headers=world["acting"], **kwargs)
        assert result.status_code == 200, (method, target, result.text)
        assert cost["transactions"] == 1, (method, target, cost)
        # A read is one round trip; an update reads (locking) then writes and commits: two.
        assert cost["round_trips"] == (1 if method == "GET" else 2), (method, target, cost)


def test_create_and_delete_are_one_transaction_each(counted, world, api):
    org = world["org"]
    for path, body in [("/users", {"email": "new@example.com"}),
                       ("/actions", {"toolId": world["tool"]["id"], "name": "n", "key": "k.new", "method": "GET",
                                     "endpoint": "/x"}),
                       ("/flows", {"steps": [{"id": "a", "type": "transform", "config": {"output": 1}}]}),
                       ("/execution-logs", {"flowId": world["flow"]["id"], "executionId": "r", "stepKey": "s",
                                            "status": "completed", "inputs": {}})]:
        result, cost = counted("POST", path, json=body, headers=world["acting"])
        assert result.status_code == 201, (path, result.text)
        assert cost["transactions"] == 1, (path, cost)
        deleted, cost = counted("DELETE", f"{path}/{result.json['id']}", headers=api.headers(org))
        assert deleted.status_code == 204, (path, deleted.text)
        assert cost["transactions"] == 1 and cost["round_trips"] == 2, (path, cost)


def test_executing_a_flow_is_one_transaction_of_two_round_trips(counted, world, db):
    """The flow is read, then the run queued (admitted against the organization's quotas in the same
    statement: tolstoy_queue_run) and committed."""
    flow = world["flow"]
    result, cost = counted("POST", f"/flows/{flow['id']}/execute", json={}, headers=world["acting"])
    assert result.status_code == 202, result.text
    assert cost == {"statements": 5, "round_trips": 2, "transactions": 1}, cost
    with db.pool.connection() as conn:
        usage = conn.execute("select runs from organization_usage where org_id = %s", (world["org"]["id"],)).fetchone()
    assert usage == {"runs": 1}  # the admission ran (against the configured default)


def test_a_process_reads_an_organizations_request_quota_with_its_first_statement(world, app_db, config):
    """Each API process learns an organization's own request quota from the database with one of its
    requests every 30 s: one more statement in that request's first round trip, never a round trip."""
    fresh = testing.TestClient(create_app(config, app_db))
    path, headers = f"/tools/{world['tool']['id']}", world["headers"]
    costs = []
    for _ in range(2):
        before = app_db.counts.snapshot()
        assert fresh.simulate_get(path, headers=headers).status_code == 200
        after = app_db.counts.snapshot()
        costs.append({key: after[key] - before[key] for key in after})
    assert costs == [{"statements": 3, "round_trips": 1, "transactions": 1},
                     {"statements": 2, "round_trips": 1, "transactions": 1}], costs


def test_requests_that_need_no_data_take_no_connection(counted, world, app_db):
    for method, path, kwargs in [
        ("GET", "/health", {}),
        ("GET", "/openapi.json", {}),
        # The tenant was checked by the world's requests moments ago, so a 400 from
        # validation needs nothing from the database.
        ("POST", "/tools", {"json": {"name": ""}, "headers": world["headers"]}),
        ("GET", "/tools", {"params": {"limit": "0"}, "headers": world["headers"]}),
        ("GET", "/users", {"headers": {"X-Org-ID": "not-a-uuid"}}),
    ]:
        result, cost = counted(method, path, **kwargs)
        assert result.status_code in (200, 400), (path, result.text)
        assert cost == {"statements": 0, "round_trips": 0, "transactions": 0}, (method, path, cost)
    assert app_db.stats()["size"] - app_db.stats()["available"] == 0  # nothing left checked out


def test_a_bad_tenant_is_answered_before_a_bad_body_even_with_no_query_made(counted):
    ghost = str(uuid.uuid4())
    result, cost = counted("POST", "/tools", json={"name": ""}, headers={"X-Org-ID": ghost})
    assert result.status_code == 400 and result.json["errors"][0]["field"] == "X-Org-ID", result.text
    # Not known lately, so the tenant check ran on its own: one statement.
    assert cost == {"statements": 1, "round_trips": 1, "transactions": 1}


def test_a_bad_user_never_commits_the_write_sent_with_the_check(counted, world, db):
    body = {"name": "Never", "baseUrl": "https://never.example.com", "authType": "none"}
    result, _ = counted("POST", "/tools", json=body, headers={**world["headers"], "X-User-ID": str(uuid.uuid4())})
    assert result.status_code == 400 and result.json["errors"][0]["field"] == "X-User-ID", result.text
    with db.pool.connection() as conn:
        assert conn.execute("select count(*) as n from tools where name = 'Never'").fetchone()["n"] == 0


def test_a_connection_that_died_in_the_pool_is_replaced_transparently(world, app_db, db, client):
    """A database restart or a killed backend leaves dead connections in the pool: the first
    batch of a unit notices, and sends itself again on a fresh connection."""
    client.simulate_get("/users", headers=world["headers"])  # a pooled connection exists
    with db.pool.connection() as conn:
        killed = conn.execute("select count(*) as n from (select pg_terminate_backend(pid) from pg_stat_activity "
                              "where usename = 'tolstoy_app' and datname = current_database()) as t").fetchone()["n"]
    assert killed >= 1
    time.sleep(0.2)
    result = client.simulate_get(f"/tools/{world['tool']['id']}", headers=world["headers"])
    assert result.status_code == 200, result.text


def test_every_connection_that_died_in_the_pool_is_replaced_not_only_the_first(world, app_url, db, config):
    """A pooler restart or a failover kills every idle connection of the pool at once, not one. The
    soak's CI run met it: a PgBouncer restart, then a quiet API host whose next request found a dead
    connection, sent itself again on the next idle one, dead too, and answered 503 seconds after the
    restart was over. After the first dead one the whole pool is checked, so the resend goes out on a
    live connection, for a unit of work and for a tenant check of its own alike."""
    database = Database(app_url, min_size=4, max_size=4, timeout=5)
    database.open(wait=True)
    try:
        client = testing.TestClient(create_app(config, database))
        for attempt in range(2):
            with db.pool.connection() as conn:
                killed = conn.execute(
                    "select count(*) as n from (select pg_terminate_backend(pid) from pg_stat_activity "
                    "where usename = 'tolstoy_app' and datname = current_database()) as t").fetchone()["n"]
            assert killed >= 4, killed  # every pooled connection, idle (and the fixtures' own)
            time.sleep(0.2)
            if attempt == 0:
                result = client.simulate_get(f"/tools/{world['tool']['id']}", headers=world["headers"])
            else:
                # No statement of its own but the tenant check, sent alone (Unit.resolve).
                database.verified.forget()
                result = client.simulate_post("/tools", json={"name": ""}, headers=world["headers"])
                assert result.status_code == 400 and result.json["errors"][0]["field"] == "name", result.text
                continue
            assert result.status_code == 200, result.text
            database.pool.wait(timeout=5)  # four connections again before the next round kills them
    finally:
        database.close()


def test_no_database_is_a_clean_503(config):
    """Nothing listens: every data route answers 503 with the error body, never a 500."""
    nowhere = Database("postgresql://tolstoy_app@127.0.0.1:9/none?connect_timeout=1", min_size=0, max_size=1,
                       timeout=1)
    nowhere.open(wait=False)
    try:
        client = testing.TestClient(create_app(config, nowhere))
        result = client.simulate_get("/users", headers={"X-Org-ID": str(uuid.uuid4())})
        assert result.status_code == 503 and result.json["statusCode"] == 503, result.text
        assert result.headers["retry-after"]
    finally:
        nowhere.close()


def test_the_server_sees_what_the_counts_say(world, app_url, db, config):
    """Cross-check the counter with PostgreSQL's own statement log for one request."""
    with db.pool.connection() as conn:
        data_dir = conn.execute("show data_directory").fetchone()["data_directory"]
        name = conn.execute("select current_database() as d").fetchone()["d"]
        conn.execute("alter system set log_line_prefix = '%m [%p] db=%d '")
        conn.execute("select pg_reload_conf()")
        conn.execute(f'alter database "{name}" set log_statement = \'all\'')
    log = Path(data_dir) / "log"
    fresh = Database(app_url, min_size=0, max_size=1, timeout=5)  # new connections read the new setting
    fresh.open(wait=False)
    try:
        client = testing.TestClient(create_app(config, fresh))
        client.simulate_get("/health")
        # A new process reads an organization's request quota with its first request (one statement more,
        # test_a_process_reads_an_organizations_request_quota_with_its_first_statement): not this one.
        client.simulate_get(f"/tools/{world['tool']['id']}", headers=world["headers"])
        mark = log.stat().st_size
        before = fresh.counts.snapshot()["statements"]
        result = client.simulate_get(f"/tools/{world['tool']['id']}", headers=world["headers"])
        assert result.status_code == 200
        counted = fresh.counts.snapshot()["statements"] - before
        deadline = time.monotonic() + 5
        while True:
            with log.open("rb") as handle:
                handle.seek(mark)
                lines = handle.read().decode(errors="replace").splitlines()
            logged = [line for line in lines if f"db={name} " in line and re.search(r"LOG:  (statement|execute)", line)]
            if len(logged) >= counted or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert counted == 2 and len(logged) == counted, logged
    finally:
        fresh.close()


def test_cancelling_a_run_is_the_flows_lookup_and_one_function(counted, world):
    # A state change is one SQL function (tolstoy_cancel_run): the run, the runs below it and the log
    # row in one statement, not a lookup, two passes over the descendants, an update and a log write.
    flow = world["flow"]
    queued, _ = counted("POST", f"/flows/{flow['id']}/execute", json={}, headers=world["acting"])
    assert queued.status_code == 202, queued.text
    path = f"/flows/{flow['id']}/executions/{queued.json['executionId']}/cancel"
    result, cost = counted("POST", path, headers=world["acting"])
    assert result.status_code == 202 and result.json["status"] == "cancelled", result.text
    # begin, tolstoy_enter and the flow; then tolstoy_cancel_run and the commit (before: the run, the
    # descendants, the update, the descendants again and the log row too: 9).
    assert cost == {"statements": 5, "round_trips": 2, "transactions": 1}
    again, _ = counted("POST", path, headers=world["acting"])
    assert again.status_code == 409 and "already finished with status cancelled" in again.json["message"], again.text


def test_sending_a_signal_is_one_function(counted, world, api):
    # A state change is one SQL function (tolstoy_send_signal): the run locked, checked, the signal stored,
    # the run woken and the log row written in one statement, not a lock, a check, a write and a log write.
    flow = api.flow(world["org"], steps=[{"id": "gate", "type": "wait", "config": {"signal": "approval"}}])
    queued, _ = counted("POST", f"/flows/{flow['id']}/execute", json={}, headers=world["acting"])
    assert queued.status_code == 202, queued.text
    path = f"/flows/{flow['id']}/executions/{queued.json['executionId']}/signals/approval"
    headers = {**world["acting"], "Idempotency-Key": "once"}
    result, cost = counted("POST", path, json={"payload": {"ok": True}}, headers=headers)
    assert result.status_code == 202, result.text
    # The tenant checked with tolstoy_send_signal, and the commit, in one round trip (before: the run
    # locked, its state read, the signal stored and the log row written: 7 statements in 4 round trips).
    assert cost == {"statements": 2, "round_trips": 1, "transactions": 1}
    again, cost = counted("POST", path, json={"payload": {"ok": True}}, headers=headers)
    assert again.status_code == 202 and again.json["signalId"] == result.json["signalId"], again.text
    assert cost == {"statements": 2, "round_trips": 1, "transactions": 1}
    refused, cost = counted("POST", path, json={"payload": {}}, headers=world["acting"])
    assert refused.status_code == 409 and "a signal of that name is pending already" in refused.json["message"]
    assert cost["statements"] <= 4 and cost["transactions"] == 1


def test_listing_runs_by_why_they_wait_costs_what_listing_them_costs(counted, world):
    # waitingFor is a column of the run (set when it parks), so the filter and the field add no statement.
    flow = world["flow"]
    queued, _ = counted("POST", f"/flows/{flow['id']}/execute", json={}, headers=world["acting"])
    assert queued.status_code == 202, queued.text
    plain, plain_cost = counted("GET", f"/flows/{flow['id']}/executions", headers=world["headers"])
    assert plain.status_code == 200 and plain.json[0]["waitingFor"] is None, plain.text
    filtered, cost = counted("GET", f"/flows/{flow['id']}/executions", params={"waitingFor": "signal"},
                             headers=world["headers"])
    assert filtered.status_code == 200 and filtered.json == [], filtered.text
    assert cost == plain_cost
    assert cost["round_trips"] <= 2 and cost["transactions"] == 1
