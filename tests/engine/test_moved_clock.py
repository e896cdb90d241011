"""Time runs out because the test moves the clock (conftest ``clock``), never because it sleeps: a
lease, a delay, a wait step's timeout, a schedule and a retention period each end when the database's
clock (tolstoy_now()) passes them, and not before."""

from __future__ import annotations

import pytest
from test_engine import execute, step, wait_for, wait_until_sleeping

from tolstoy import engine
from tolstoy.db.database import json as dbjson
from tolstoy.db.queries import SQL

HOUR = 3600


def claim(worker_db, worker: str, lease_seconds: float = 30) -> list[dict]:
    rows = worker_db.all(SQL.runs.claim, worker=worker, limit=10, lease_seconds=lease_seconds, max_recoveries=3,
                         half_life_seconds=300)
    return [row["run"] for row in rows if row["run"] is not None]


def test_an_expired_lease_is_recovered_once_the_clock_passes_it_and_its_holder_writes_nothing(
        api, org, user, worker_db, clock):
    flow = api.flow(org, steps=[step("one", "transform", {"output": 1})])
    run_id = execute(api, org, user, flow)["executionId"]
    [held] = claim(worker_db, "first")
    assert held["id"] == run_id
    clock.move(29)
    assert claim(worker_db, "second") == []  # 1 s of the 30 s lease is left
    clock.move(2)
    [recovered] = claim(worker_db, "second")
    assert recovered["id"] == run_id and recovered["token"] == held["token"] + 1
    renewed = worker_db.all(SQL.runs.renew_leases, worker="first", orgs=[org["id"]], runs=[run_id],
                            tokens=[held["token"]], lease_seconds=30)
    assert renewed == []
    with pytest.raises(Exception, match="lease"):
        worker_db.scalar(SQL.runs.checkpoint, worker="first", org_id=org["id"], run_id=run_id, token=held["token"],
                         writes=dbjson({"run": {"action": "finish", "status": "completed"}}))


def test_a_delay_of_an_hour_ends_when_the_clock_has_moved_an_hour(api, org, user, worker, clock):
    flow = api.flow(org, steps=[step("nap", "delay", {"ms": HOUR * 1000}), step("after", "transform", {"output": 2})])
    run_id = execute(api, org, user, flow)["executionId"]
    wait_until_sleeping(api, org, flow, run_id, "nap")
    clock.move(HOUR - 60)
    with pytest.raises(pytest.fail.Exception):
        wait_for(api, org, flow, run_id, timeout=1.0)  # a minute early: still asleep
    clock.move(61)
    assert wait_for(api, org, flow, run_id)["status"] == "completed"


def test_a_wait_step_times_out_when_the_clock_passes_its_timeout(api, org, user, worker, clock):
    flow = api.flow(org, steps=[step("gate", "wait", {"signal": "approval", "timeoutMs": 2 * HOUR * 1000,
                                                      "onTimeout": "continue"}),
                                step("after", "transform", {"output": 3})])
    run_id = execute(api, org, user, flow)["executionId"]
    wait_until_sleeping(api, org, flow, run_id, "gate")
    clock.move(2 * HOUR + 1)
    run = wait_for(api, org, flow, run_id)
    assert run["status"] == "completed", run
    assert {s["stepId"]: s["status"] for s in run["steps"]}["after"] == "completed"


def test_an_hourly_schedule_fires_when_the_clock_reaches_the_hour(api, org, config, worker_db, db, clock):
    flow = api.flow(org)
    created = api.post(f"/flows/{flow['id']}/triggers", org, {"type": "schedule", "cron": "0 * * * *"})
    assert created.status_code == 201, created.text
    w = engine.worker(config, worker_db, concurrency=1)  # the database's clock: no clock injected
    assert w.fire_schedules() == []
    clock.move(HOUR)
    fired = w.fire_schedules()
    assert [each["trigger_id"] for each in fired] == [created.json["id"]]
    assert w.fire_schedules() == []  # the next one is an hour away again


def test_finished_deliveries_are_kept_for_their_retention_then_pruned(api, org, config, worker_db, db, clock):
    hook = api.create("/webhooks", org, {"name": "w", "url": "https://hooks.example.com/x",
                                         "eventTypes": ["flow.completed"]})
    assert api.client.simulate_post(f"/webhooks/{hook['id']}/test", headers=api.headers(org)).status_code == 202
    with db.pool.connection() as conn:
        conn.execute("update webhook_deliveries set state = 'delivered'")
    w = engine.worker(config, worker_db, concurrency=1)  # TOLSTOY_WEBHOOK_RETENTION_DAYS: 30 by default
    assert w.maintain()["pruned"]["deliveries"] == 0
    clock.move(31 * 24 * HOUR)
    assert w.maintain()["pruned"]["deliveries"] == 1
