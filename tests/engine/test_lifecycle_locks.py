"""Every change of a run's state asked for from outside the run loop (tolstoy/engine/lifecycle.py)
waits for the run's row: while another transaction holds it (a worker's claim or checkpoint, another
change), the change does not decide on what it read before. A new transition of the lifecycle module
must be added to the table below, or to the reviewed list of those that change no existing run."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row
from test_engine import execute, step

ROOT = Path(__file__).resolve().parents[2]

# Each query the lifecycle module runs, as the SQL function it calls with arguments for the run below.
HOLDS_THE_RUN = {
    "runs.cancel": "select tolstoy_cancel_run(%(org)s, %(flow)s, %(run)s, %(user)s)",
    "runs.resolve": "select tolstoy_resolve_step(%(org)s, %(flow)s, %(run)s, 'gate', %(user)s, 'retry', null, "
                    "null, null)",
    # A dry run writes nothing: only holding the row before reading it makes it wait.
    "runs.move": "select tolstoy_move_run(%(org)s, %(flow)s, %(run)s, 1, '{}', true, %(user)s)",
    "signals.send": "select tolstoy_send_signal(%(org)s, %(flow)s, %(run)s, 'approval', '1', %(user)s, null, "
                    "null, null, 'api')",
}
# Reviewed: what changes no existing run's row.
CHANGES_NO_RUN = {
    "runs.queue": "makes a new run (a retry's and a re-run's too: the original is read, never changed; one retry "
                  "per run is an advisory lock on the original's id)",
    "runs.rerun_source": "reads the finished run a re-run starts from (and its children): a finished run no longer "
                         "changes, and the re-run is a new run",
    "flows.get_version": "reads a flow version a re-run takes its steps from: versions are never changed",
}


def test_every_transition_of_the_lifecycle_module_is_listed():
    source = (ROOT / "tolstoy" / "engine" / "lifecycle.py").read_text()
    used = set(re.findall(r"SQL\.(\w+\.\w+)", source))
    assert used == set(HOLDS_THE_RUN) | set(CHANGES_NO_RUN), used ^ (set(HOLDS_THE_RUN) | set(CHANGES_NO_RUN))


@pytest.mark.parametrize("query", sorted(HOLDS_THE_RUN))
def test_a_change_of_a_run_waits_for_its_row(api, org, user, database_url, query):
    flow = api.flow(org, steps=[step("gate", "wait", {"signal": "approval", "timeoutMs": 60_000})])
    run_id = execute(api, org, user, flow)["executionId"]  # no worker: queued
    args = {"org": org["id"], "flow": flow["id"], "run": run_id, "user": user["id"]}
    with psycopg.connect(database_url, row_factory=dict_row) as holder, \
            psycopg.connect(database_url, row_factory=dict_row) as changer:
        holder.execute("select 1 from flow_runs where id = %s for update", (run_id,))
        changer.execute("set lock_timeout = '300ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            changer.execute(HOLDS_THE_RUN[query], args)
        changer.rollback()
        holder.rollback()
        # Once the row is free, it answers (whatever it decides for a run in this state).
        changer.execute(HOLDS_THE_RUN[query], args)
        changer.rollback()
