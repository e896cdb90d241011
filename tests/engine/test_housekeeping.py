"""Housekeeping that keeps up (issue 21): the workers' upkeep prunes the outbox, the trigger inbox
and signals in proportion to what comes in (batches until caught up, a time budget per pass, the
next pass soon when it was not done), where it used to stop at 50,000 rows of each an hour; and a
step parked on an unknown outcome that nobody resolves fails after TOLSTOY_UNKNOWN_OUTCOME_TIMEOUT_DAYS,
so its run ends and retention can drop its month."""

from __future__ import annotations

import time

from test_engine import execute, step, wait_for
from test_worker_processes import log_tail, start_worker, stop, wait_until

from tolstoy import engine

# More than the old hourly cap of one pass (50,000 rows of each kind).
ROWS = 60_000


def backlog(db, org_id: str, webhook_id: str, trigger_id: str, rows: int) -> None:
    """``rows`` finished deliveries, refused inbox rows and signals of runs that are gone, all 40 days old
    (past the 30 days that deliveries are kept by default, and the 1 day of run retention set below)."""
    with db.pool.connection() as conn:
        conn.execute(
            "insert into webhook_deliveries (org_id, webhook_id, placed, event_id, event_type, data, state, "
            "created_at, finished_at) "
            "select %s, %s, true, gen_random_uuid(), 'webhook.test', '{}', "
            "'delivered', now() - interval '40 days', now() - interval '40 days' from generate_series(1, %s)",
            (org_id, webhook_id, rows))
        conn.execute(
            "insert into flow_trigger_deliveries (org_id, trigger_id, verdict, reason, received_at) "
            "select %s, %s, 'invalid', 'old', now() - interval '40 days' from generate_series(1, %s)",
            (org_id, trigger_id, rows))
        conn.execute(
            "insert into flow_run_signals (org_id, run_id, signal, created_at) "
            "select %s, gen_random_uuid(), 'go', now() - interval '40 days' from generate_series(1, %s)",
            (org_id, rows))


def left(db) -> dict:
    with db.pool.connection() as conn:
        return conn.execute(
            "select (select count(*) from webhook_deliveries) as deliveries, "
            "(select count(*) from flow_trigger_deliveries) as inbox, "
            "(select count(*) from flow_run_signals) as signals").fetchone()


def fixtures(api, org):
    webhook = api.create("/webhooks", org, {"name": "w", "url": "https://hooks.example.com/x",
                                            "eventTypes": ["flow.completed"]})
    flow = api.flow(org)
    trigger = api.create(f"/flows/{flow['id']}/triggers", org, {"type": "webhook"})
    return webhook, trigger


def test_one_upkeep_pass_prunes_more_than_the_old_hourly_cap_in_batches(api, org, config, worker_db, db):
    webhook, trigger = fixtures(api, org)
    backlog(db, org["id"], webhook["id"], trigger["id"], ROWS)
    w = engine.worker(config, worker_db, concurrency=1, retention_days=1, prune_batch=7_000)
    result = w.maintain()
    assert result["pruned"] == {"deliveries": ROWS, "inbox": ROWS, "signals": ROWS, "unknown_outcomes": 0, "audit": 0,
                                "behind": False}
    assert dict(left(db)) == {"deliveries": 0, "inbox": 0, "signals": 0}
    # The next pass is an hour away: it caught up.
    assert w._next_maintenance - time.monotonic() > 3000

    # A pass that runs out of its budget says it is behind, and the next one comes soon, not in an hour.
    backlog(db, org["id"], webhook["id"], trigger["id"], 3_000)
    hurried = engine.worker(config, worker_db, concurrency=1, retention_days=1, prune_batch=1_000,
                            prune_budget_seconds=0.001)
    result = hurried.maintain()
    assert result["pruned"]["behind"] is True and result["pruned"]["deliveries"] == 1_000
    assert hurried._next_maintenance - time.monotonic() < 600
    assert hurried.maintain()["pruned"]["deliveries"] == 1_000


def test_a_worker_process_keeps_pruning_until_it_has_caught_up(api, org, worker_env, db):
    """A real worker whose every pass may prune only one batch (a budget it spends at once): it comes
    back pass after pass, well within its hour, until the backlog is gone."""
    webhook, trigger = fixtures(api, org)
    backlog(db, org["id"], webhook["id"], trigger["id"], ROWS)
    worker = start_worker({**worker_env, "TOLSTOY_RUN_RETENTION_DAYS": "1", "TOLSTOY_PRUNE_BATCH": "5000",
                           "TOLSTOY_PRUNE_BUDGET_SECONDS": "0.1"}, concurrency=1)
    try:
        wait_until(lambda: not any(left(db).values()), 180, "the backlog pruned")
    except AssertionError:
        raise AssertionError(f"{dict(left(db))}\n{log_tail(worker)}") from None
    finally:
        stop(worker)
    assert '"behind": true' in log_tail(worker).replace('"behind":true', '"behind": true')


def test_a_step_parked_on_an_unknown_outcome_nobody_resolves_fails_and_its_month_can_go(
        api, org, user, config, worker_db, db):
    """A run parked on an unknown outcome in a month past retention kept that month (every
    organization's runs of it) forever. After TOLSTOY_UNKNOWN_OUTCOME_TIMEOUT_DAYS the step fails as a
    person's "failed" resolution would, the run ends, and the next upkeep drops the month."""
    flow = api.flow(org, steps=[
        step("charge", "http_request", {"method": "POST", "url": "http://127.0.0.1:9/charge"}),
        step("receipt", "transform", {"output": "paid"}),
    ])
    template = execute(api, org, user, flow)["executionId"]
    old = "2025-01-15T12:00:00Z"
    with db.pool.connection() as conn:
        conn.execute("select tolstoy_ensure_partitions(%s::date, 1)", (old,))
        # Runs as a worker that died during the call leaves them, one queued in January 2025 (its id carries
        # that time, as ids do), one parked yesterday (not timed out yet).
        parked = {}
        for name, at, since in (("old", old, "31 days"), ("recent", None, "1 day")):
            row = conn.execute(
                "with made as (select tolstoy_new_run_id(coalesce(%s::timestamptz, now())) as id) "
                "insert into flow_runs (org_id, id, flow_id, flow_version, user_id, variables, plan, root_run_id, "
                "                       status, created_at) "
                "select r.org_id, made.id, r.flow_id, r.flow_version, r.user_id, r.variables, r.plan, made.id, "
                "       'waiting', coalesce(%s::timestamptz, now()) "
                "from flow_runs r, made where r.id = %s returning id::text, created_at",
                (at, at, template)).fetchone()
            conn.execute(
                "insert into flow_run_steps (org_id, run_id, run_created_at, step_id, status, attempt, error, "
                "                            call_started_at, updated_at) "
                "values (%s, %s, %s, 'charge', 'outcome_unknown', 1, '{\"name\": \"OutcomeUnknown\"}', "
                "        now() - %s::interval, now() - %s::interval)",
                (org["id"], row["id"], row["created_at"], since, since))
            parked[name] = row["id"]
    w = engine.worker(config, worker_db, concurrency=1, retention_days=90)
    first = w.maintain()
    assert "flow_runs_p2025_01" in first["kept"]  # still waiting when the month was looked at
    assert first["pruned"]["unknown_outcomes"] == 1
    w.run(stop_after_idle=True)
    done = wait_for(api, org, flow, parked["old"])
    assert done["status"] == "failed" and done["error"]["stepId"] == "charge", done
    assert "TOLSTOY_UNKNOWN_OUTCOME_TIMEOUT_DAYS" in done["error"]["message"]
    charge = next(s for s in done["steps"] if s["stepId"] == "charge")
    assert charge["status"] == "failed" and charge["error"]["timedOut"] is True
    assert "receipt" not in {s["stepId"] for s in done["steps"] if s["status"] == "completed"}
    with db.pool.connection() as conn:
        logged = conn.execute("select inputs from execution_logs where execution_id = %s and step_key = 'charge' "
                              "and status = 'failed'", (parked["old"],)).fetchone()
        recent = conn.execute("select status from flow_run_steps where run_id = %s", (parked["recent"],)).fetchone()
    assert logged["inputs"] == {"resolved": "failed", "attempt": 1, "timedOut": True}
    assert recent["status"] == "outcome_unknown"  # a day parked: left for a person
    second = w.maintain()
    assert "flow_runs_p2025_01" in second["dropped"] and "flow_run_steps_p2025_01" in second["dropped"]
