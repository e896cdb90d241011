"""Refusals tell a tenant the rule, not the address (issue 19, row 12): a connection the outbound
guard refuses used to name what the tenant's hostname resolved to ("Refusing to connect to
db.internal (10.0.3.7)…"), a map of the operator's network one guess at a time. Now every place
the refusal surfaces (a synchronous execute's answer and its execution log, a flow step's error,
a webhook delivery's attempt, a webhook's 400 at save) names the host as given and the rule;
the operator's log has the address. ``localhost`` stands for a name that resolves to a private
address: these tests allow only a documentation network, so 127.0.0.1 is refused."""

from __future__ import annotations

import threading

import pytest
from falcon import testing
from test_engine import execute, step, wait_for
from test_worker_processes import wait_until

from tolstoy import engine
from tolstoy.api.app import create_app
from tolstoy.config import Config
from tolstoy.engine.outbound import ForbiddenTarget, Outbound

RULE = ("it is not a public address (or does not resolve). The operator may allow its network with "
        "TOLSTOY_ALLOW_NETWORKS.")
RESOLVED = "127.0.0.1"


@pytest.fixture
def closed(worker_env) -> Config:
    """Outbound rules that do not admit loopback."""
    return Config.from_env({**worker_env, "TOLSTOY_ALLOW_NETWORKS": "192.0.2.0/24"})


def test_the_refusal_names_the_host_as_given_and_the_log_the_address(caplog):
    caplog.set_level("WARNING", logger="tolstoy.outbound")
    client = Outbound(())
    try:
        with pytest.raises(ForbiddenTarget) as refused:
            client.request("GET", "http://localhost:9/latest/meta-data/", timeout_ms=2000)
    finally:
        client.close()
    assert str(refused.value) == f"Refusing to connect to localhost: {RULE}"
    assert "refused a connection to localhost: it resolved to 127.0.0.1" in caplog.text


def test_every_surface_of_a_refusal_names_the_rule_not_the_address(api, org, user, closed, app_db, worker_db,
                                                                  caplog):
    caplog.set_level("WARNING", logger="tolstoy.outbound")
    port = 9  # nothing is ever connected to
    # A synchronous execute: its answer and its execution log.
    app = testing.TestClient(create_app(closed, app_db))
    tool = api.tool(org, baseUrl=f"http://localhost:{port}/")
    action = api.action(org, tool, key="probe", method="GET", endpoint="/probe")
    answer = app.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                               headers=api.headers(org, user))
    assert answer.status_code == 200 and answer.json["success"] is False, answer.text
    assert answer.json["data"]["error"] == f"Refusing to connect to localhost: {RULE}"
    logs = app.simulate_get("/execution-logs", params={"executionId": answer.json["executionId"]},
                            headers=api.headers(org))
    assert "Refusing to connect to localhost" in logs.text and RESOLVED not in logs.text

    # A webhook saved while loopback was allowed, delivered by a worker whose rules refuse it; a flow
    # step calling the same host.
    webhook = api.create("/webhooks", org, {"name": "Receiver", "url": f"http://localhost:{port}/hook",
                                            "eventTypes": ["flow.failed"]})
    flow = api.flow(org, steps=[step("probe", "http_request", {"method": "GET",
                                                                "url": f"http://localhost:{port}/probe"})])
    worker = engine.worker(closed, worker_db, concurrency=2, poll_seconds=0.1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        run = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
        attempts = wait_until(lambda: [a for d in app.simulate_get(f"/webhooks/{webhook['id']}/deliveries",
                                                                   headers=api.headers(org)).json
                                       for a in d["attemptLog"]], 15, "a delivery attempt")
    finally:
        worker.stop()
        thread.join(timeout=10)
    assert run["status"] == "failed" and run["error"]["message"] == f"Refusing to connect to localhost: {RULE}", run
    assert RESOLVED not in str(run)
    assert attempts[0]["error"] == f"Refusing to connect to localhost: {RULE}", attempts
    # A webhook's 400 at save names the rule too.
    refused = app.simulate_post("/webhooks", headers=api.headers(org), json={
        "name": "Direct", "url": f"http://2130706433:{port}/hook", "eventTypes": ["flow.failed"]})
    assert refused.status_code == 400 and RESOLVED not in refused.text, refused.text
    # The operator sees the address.
    assert f"refused a connection to localhost: it resolved to {RESOLVED}" in caplog.text


def test_a_name_that_does_not_resolve_is_refused_in_the_same_words_as_a_private_one(api, org, user, closed, app_db,
                                                                                    caplog):
    """Attacker pass: "Cannot resolve db.internal" (a retryable network error) against "Refusing to
    connect to db.internal" told a tenant which internal names exist, one guess at a time. A name
    that does not resolve is refused as a private one is: the same words, not retried; the
    operator's log tells them apart."""
    caplog.set_level("WARNING", logger="tolstoy.outbound")
    app = testing.TestClient(create_app(closed, app_db))
    said = {}
    for host in ("localhost", "no-such-name.invalid"):
        tool = api.tool(org, baseUrl=f"http://{host}:9/")
        action = api.action(org, tool, key=f"probe.{host.split('.')[0]}", method="GET", endpoint="/probe")
        answer = app.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                   headers=api.headers(org, user))
        assert answer.status_code == 200 and answer.json["success"] is False, answer.text
        said[host] = answer.json["data"]["error"].replace(host, "HOST")
    assert said["localhost"] == said["no-such-name.invalid"] == f"Refusing to connect to HOST: {RULE}"
    assert "refused a connection to no-such-name.invalid: it does not resolve" in caplog.text
    with pytest.raises(ForbiddenTarget) as refused:
        client = Outbound(())
        try:
            client.request("GET", "http://no-such-name.invalid/", timeout_ms=2000)
        finally:
            client.close()
    assert refused.value.retryable is False
