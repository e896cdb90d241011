"""The run list's ?waitingFor= filter reads one range of its partial index, not the flow's history: a
flow with 30,000 finished runs and a few parked ones, EXPLAIN ANALYZE of the list query as the
application role (row-level security on). And the parked-runs gauge's function reads the same index,
not the history."""

from __future__ import annotations

import re

import psycopg
from test_long_history_plans import explain, rows_read, scans

from tolstoy.db.queries import SQL

RUNS = 30_000


def params(org_id, flow_id, **over):
    return {"org_id": org_id, "flow_id": flow_id, "parent_id": None, "waiting_for": None, "rerun_of": None,
            "after_created_at": None, "after_id": None, "limit": 51, **over}


def test_the_waiting_for_filter_reads_an_index_range_not_the_history(api, org, database_url, app_url):
    flow = api.flow(org)
    with psycopg.connect(database_url) as conn:
        conn.execute("set local synchronous_commit = off")
        conn.execute(
            """insert into flow_runs (org_id, flow_id, flow_version, status, plan, root_run_id, created_at,
                                      waiting_for, waiting_on, waiting_step, waiting_since)
               select %(org)s, %(flow)s, 1,
                      (case when g %% 5000 = 0 then 'queued' else 'completed' end)::flow_run_status,
                      '{}'::jsonb, gen_random_uuid(), now() - g * interval '1 second',
                      case when g %% 5000 = 0 then 'signal' end, case when g %% 5000 = 0 then '"go"'::jsonb end,
                      case when g %% 5000 = 0 then 'gate' end, case when g %% 5000 = 0 then now() end
               from generate_series(1, %(runs)s) g""",
            {"org": org["id"], "flow": flow["id"], "runs": RUNS})
        conn.commit()
        conn.execute("analyze flow_runs")
        populated = {row[0] for row in conn.execute("select distinct tableoid::regclass::text from flow_runs")}
        # The function behind the gauge, as it runs its one statement (a plpgsql `return query`).
        source = conn.execute("select prosrc from pg_proc where proname = 'tolstoy_parked_runs'").fetchone()[0]
        query = re.search(r"return query\s+(.*?);\s*end;", source, re.S).group(1)
        gauge = conn.execute(f"explain (format json) {query}").fetchone()[0][0]["Plan"]
    plan = explain(app_url, org["id"], SQL.runs.list, **params(org["id"], flow["id"], waiting_for="signal"))
    # The month holding the 30,000 runs is read through the index (the planner may seq-scan the empty
    # months: there is nothing to read), and only the parked runs are read.
    for found in (scans(plan["Plan"]), scans(gauge)):
        assert not [s for s in found if s[0] == "Seq Scan" and s[1] in populated], found
        assert any(rel in populated and node.startswith("Index") for node, rel in found), found
    assert plan["Plan"]["Actual Rows"] == RUNS // 5000
    assert rows_read(plan["Plan"]) <= RUNS // 5000, rows_read(plan["Plan"])
