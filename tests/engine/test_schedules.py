"""Schedule triggers: each due time fires exactly once across workers, catch-up
fires once or skips, daylight saving time skips a wall time that does not
exist and fires a repeated one once, disabled triggers do not fire. The
workers' clock is injected, so no test sleeps through a schedule."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from tolstoy import engine, schedules
from tolstoy.db import migrate
from tolstoy.db.database import Database

UTC = dt.UTC
PARIS = "Europe/Paris"


class Clock:
    """A clock the test moves; shared by every worker of a test."""

    def __init__(self, start: dt.datetime):
        self.now = start
        self.lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self.lock:
            return self.now

    def set(self, when: dt.datetime) -> None:
        with self.lock:
            self.now = when

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += dt.timedelta(seconds=seconds)


def at(*parts) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)


def schedule(api, org, flow, cron: str, **fields) -> dict:
    result = api.post(f"/flows/{flow['id']}/triggers", org, {"type": "schedule", "cron": cron, **fields})
    assert result.status_code == 201, result.text
    return result.json


def set_next_run(db, trigger: dict, when: dt.datetime) -> None:
    with db.pool.connection() as conn:
        conn.execute("update flow_triggers set next_run_at = %s where id = %s", (when, trigger["id"]))


def trigger_row(db, trigger: dict) -> dict:
    with db.pool.connection() as conn:
        return conn.execute("select next_run_at, last_fired_at, enabled from flow_triggers where id = %s",
                            (trigger["id"],)).fetchone()


def fired_times(db, flow: dict) -> list[str]:
    with db.pool.connection() as conn:
        rows = conn.execute("select variables -> 'trigger' ->> 'scheduledAt' as t from flow_runs "
                            "where flow_id = %s order by created_at", (flow["id"],)).fetchall()
    return [r["t"] for r in rows]


# ---- the rules, as pure functions -----------------------------------------------------------------


def test_a_wall_time_that_does_not_exist_is_skipped():
    # 2027-03-28: Paris goes from 02:00 CET to 03:00 CEST; 02:30 does not exist that day.
    assert schedules.next_after("30 2 * * *", PARIS, at(2027, 3, 27, 1, 30)) == at(2027, 3, 29, 0, 30)
    assert schedules.latest_at_or_before("30 2 * * *", PARIS, at(2027, 3, 28, 12)) == at(2027, 3, 27, 1, 30)
    # Times around the gap still fire: 01:30 CET and 03:30 CEST.
    assert schedules.next_after("30 1,3 * * *", PARIS, at(2027, 3, 28, 0)) == at(2027, 3, 28, 0, 30)
    assert schedules.next_after("30 1,3 * * *", PARIS, at(2027, 3, 28, 0, 30)) == at(2027, 3, 28, 1, 30)


def test_a_wall_time_that_occurs_twice_fires_once():
    # 2027-10-31: Paris goes from 03:00 CEST back to 02:00 CET; 02:30 happens at 00:30 and 01:30 UTC.
    first = schedules.next_after("30 2 * * *", PARIS, at(2027, 10, 30, 12))
    assert first == at(2027, 10, 31, 0, 30)  # the first occurrence (CEST)
    assert schedules.next_after("30 2 * * *", PARIS, first) == at(2027, 11, 1, 1, 30)  # not 01:30 UTC on the 31st
    # From inside the repeated hour, the next due time is not its second pass either.
    assert schedules.next_after("30 2 * * *", PARIS, at(2027, 10, 31, 1, 10)) == at(2027, 11, 1, 1, 30)
    # Every 20 minutes: the repeated hour's wall times fire once each (the first pass).
    times = []
    cursor = at(2027, 10, 30, 23, 50)
    while cursor < at(2027, 10, 31, 2, 30):
        cursor = schedules.next_after("*/20 * * * *", PARIS, cursor)
        times.append(cursor.strftime("%H:%M"))
    assert times == ["00:00", "00:20", "00:40", "02:00", "02:20", "02:40"]


def test_catch_up_one_fires_once_for_the_latest_missed_time_and_none_skips():
    due, now = at(2027, 1, 1, 10), at(2027, 1, 1, 13, 30)
    one = schedules.plan("0 * * * *", "UTC", "one", due, now)
    none = schedules.plan("0 * * * *", "UTC", "none", due, now)
    assert one == schedules.Firing(at(2027, 1, 1, 13), at(2027, 1, 1, 14))
    assert none == schedules.Firing(None, at(2027, 1, 1, 14))
    # On time (within a minute) is not missed, even with none.
    assert schedules.plan("0 * * * *", "UTC", "none", due, at(2027, 1, 1, 10, 0, 5)).scheduled_at == due


# ---- workers ----------------------------------------------------------------------------------------


def make_worker(config, url: str, clock: Clock, **options):
    db = Database(migrate.as_role(url, migrate.WORKER_ROLE), min_size=1, max_size=4, timeout=5)
    db.open(wait=True)
    return engine.worker(config, db, clock=clock, **options), db


def test_catch_up_both_ways_after_downtime(api, org, db, config, database_url):
    flow = api.flow(org)
    one = schedule(api, org, flow, "0 * * * *")
    none_flow = api.flow(org)
    none = schedule(api, org, none_flow, "0 * * * *", catchUp="none")
    assert one["catchUp"] == "one" and one["timezone"] == "UTC"
    for trigger in (one, none):
        set_next_run(db, trigger, at(2027, 1, 1, 10))  # then the workers were down for three and a half hours
    clock = Clock(at(2027, 1, 1, 13, 30))
    worker, worker_db = make_worker(config, database_url, clock)
    try:
        fired = worker.fire_schedules()
        assert len(fired) == 1
        assert fired_times(db, flow) == ["2027-01-01T13:00:00.000Z"]
        assert fired_times(db, none_flow) == []
        assert trigger_row(db, one)["next_run_at"] == at(2027, 1, 1, 14)
        assert trigger_row(db, none)["next_run_at"] == at(2027, 1, 1, 14)
        assert worker.fire_schedules() == []  # nothing due until 14:00
        clock.set(at(2027, 1, 1, 14, 0, 2))
        worker.fire_schedules()
        assert fired_times(db, flow)[-1] == fired_times(db, none_flow)[-1] == "2027-01-01T14:00:00.000Z"
        listed = api.client.simulate_get(f"/flows/{flow['id']}/triggers", headers=api.headers(org)).json
        assert listed[0]["nextRunAt"] == "2027-01-01T15:00:00.000Z"
        assert listed[0]["lastFiredAt"] == "2027-01-01T14:00:02.000Z"
    finally:
        worker_db.close()


def test_a_dst_transition_fires_the_repeated_time_once_and_skips_the_missing_one(api, org, db, config,
                                                                                  database_url):
    flow = api.flow(org)
    trigger = schedule(api, org, flow, "30 2 * * *", timezone=PARIS)
    clock = Clock(at(2027, 3, 27, 0, 0))
    set_next_run(db, trigger, schedules.next_after("30 2 * * *", PARIS, clock()))
    worker, worker_db = make_worker(config, database_url, clock)
    try:
        # Step through the spring-forward weekend and the fall-back one, a quarter hour at a time.
        for start, end in ((at(2027, 3, 27), at(2027, 3, 30)), (at(2027, 10, 30), at(2027, 11, 2))):
            clock.set(start)
            set_next_run(db, trigger, schedules.next_after("30 2 * * *", PARIS, start))
            while clock() < end:
                clock.advance(900)
                worker.fire_schedules()
        assert fired_times(db, flow) == [
            "2027-03-27T01:30:00.000Z",  # 02:30 CET
            # 2027-03-28: no 02:30 in Paris, skipped
            "2027-03-29T00:30:00.000Z",  # 02:30 CEST
            "2027-10-30T00:30:00.000Z",
            "2027-10-31T00:30:00.000Z",  # 02:30 CEST; 02:30 CET an hour later does not fire again
            "2027-11-01T01:30:00.000Z",  # 02:30 CET
        ]
    finally:
        worker_db.close()


def test_three_workers_fire_each_due_second_exactly_once(api, org, db, config, database_url):
    flow = api.flow(org)
    trigger = schedule(api, org, flow, "* * * * * *")  # every second (six fields: seconds last)
    start = at(2027, 6, 1, 12, 0, 0)
    set_next_run(db, trigger, start)
    clock = Clock(start - dt.timedelta(milliseconds=500))
    workers = [make_worker(config, database_url, clock, concurrency=2, poll_seconds=0.02,
                           worker_id=f"w{i}") for i in range(3)]
    threads = [threading.Thread(target=w.run, daemon=True) for w, _ in workers]
    for thread in threads:
        thread.start()
    try:
        for second in range(10):
            clock.advance(1)  # the clock reaches start + second (+ 0.5 s)
            deadline = time.monotonic() + 10
            while len(fired_times(db, flow)) < second + 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.1)  # give every worker a chance to fire it again, were that possible
        expected = [(start + dt.timedelta(seconds=s)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                    for s in range(10)]
        assert sorted(fired_times(db, flow)) == expected
        with db.pool.connection() as conn:
            statuses = conn.execute("select count(*) filter (where status = 'completed') as done, count(*) as n "
                                    "from flow_runs where flow_id = %s", (flow["id"],)).fetchone()
        assert statuses["n"] == 10
    finally:
        for w, _ in workers:
            w.stop()
        for thread in threads:
            thread.join(timeout=10)
        for _, worker_db in workers:
            worker_db.close()


def test_disabled_triggers_do_not_fire_and_enabling_starts_from_now(api, org, db, config, database_url):
    flow = api.flow(org)
    trigger = schedule(api, org, flow, "*/5 * * * *")
    set_next_run(db, trigger, at(2027, 1, 1, 10))
    path = f"/flows/{flow['id']}/triggers/{trigger['id']}"
    assert api.client.simulate_patch(path, json={"enabled": False}, headers=api.headers(org)).status_code == 200
    clock = Clock(at(2027, 1, 1, 11))
    worker, worker_db = make_worker(config, database_url, clock)
    try:
        assert worker.fire_schedules() == []
        assert fired_times(db, flow) == []
        enabled = api.client.simulate_patch(path, json={"enabled": True}, headers=api.headers(org)).json
        # Enabled again: the next time after now (the API's clock), not the times it was off.
        assert dt.datetime.fromisoformat(enabled["nextRunAt"]) > dt.datetime.now(UTC)
    finally:
        worker_db.close()


def test_an_idle_worker_wakes_for_a_schedule_on_the_real_clock(api, org, db, worker):
    flow = api.flow(org)
    schedule(api, org, flow, "* * * * * *")
    deadline = time.monotonic() + 10
    while not fired_times(db, flow) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fired_times(db, flow), "no run within 10 s of a schedule due every second"


@pytest.mark.parametrize("arguments", ["'', 1, null", "'w', 0, null", "'w', 5000, null"])
def test_the_schedule_claim_checks_its_arguments(worker_db, arguments):
    from tolstoy.db.queries import Query

    with pytest.raises(Exception, match="invalid arguments"):
        worker_db.all(Query(name="t", kind="all", sql=f"select * from tolstoy_claim_schedules({arguments})",
                            doc="", source="test"))
