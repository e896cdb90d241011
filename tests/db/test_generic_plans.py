"""A plpgsql function prepares its queries once per session; for each call PostgreSQL then picks the
generic plan or a custom one made for the call's values. On the run history, partitioned by month, it
always picked custom plans (the generic plan's cost counts every month's partition), so every call
of the claim, the checkpoints, the queue planned its lookups of a run again: a fifth of the claim's
CPU. A generic plan prunes the other months when it starts, from the values. So every function that a
query of sql/ calls and that reads or writes the run history runs with plan_cache_mode =
force_generic_plan (which holds for what it calls, triggers included), a new one as well as these
(migration run_functions_keep_generic_plans), but the housekeeping's, listed with why."""

from __future__ import annotations

import re

import psycopg

from tolstoy.db.queries import SQL

HISTORY = r"\m(flow_runs|flow_run_steps|execution_logs)\M"  # a PostgreSQL regular expression
# Functions on the run history that keep PostgreSQL's choice, and why.
CUSTOM_PLANS = {
    # The housekeeping runs once a tick: its planning costs nothing that matters, and a custom plan
    # weighs its cutoff (usually nothing is old enough, which an index range shows at once, where a
    # generic plan guesses a third of the table and may read all of it).
    "tolstoy_prune_signals": "housekeeping",
    "tolstoy_expire_unknown_outcomes": "housekeeping",
    "tolstoy_maintain_history": "housekeeping (creates and drops partitions)",
}
FUNCTIONS = """
select p.proname as name, p.prosrc ~ %s as history, coalesce(p.proconfig, '{}') as config
from pg_proc p join pg_language l on l.oid = p.prolang
where p.pronamespace = 'public'::regnamespace and l.lanname = 'plpgsql'
"""


def called_by_queries() -> dict[str, list[str]]:
    """Each tolstoy_* function a named query of sql/ calls, with the queries that call it."""
    called: dict[str, list[str]] = {}
    for namespace, queries in vars(SQL).items():
        for name, query in vars(queries).items():
            for function in set(re.findall(r"\b(tolstoy_\w+)\(", query.sql)):
                called.setdefault(function, []).append(f"{namespace}.{name}")
    return called


def test_every_function_the_queries_call_on_the_run_history_keeps_a_generic_plan(database_url):
    with psycopg.connect(database_url) as conn:
        functions = {row[0]: row[1:] for row in conn.execute(FUNCTIONS, (HISTORY,)).fetchall()}
    called = called_by_queries()
    on_history = {name: queries for name, queries in called.items() if functions.get(name, (False,))[0]}
    assert {"tolstoy_claim_runs_v2", "tolstoy_checkpoint", "tolstoy_queue_run_v4"} <= set(on_history)
    missing = {name: queries for name, queries in on_history.items()
               if "plan_cache_mode=force_generic_plan" not in functions[name][1] and name not in CUSTOM_PLANS}
    assert missing == {}, ("add `set plan_cache_mode = force_generic_plan` to these functions (they read or write the "
                           f"run history and a query of sql/ calls them), or say in CUSTOM_PLANS why not: {missing}")
    assert set(CUSTOM_PLANS) <= set(on_history), "CUSTOM_PLANS names a function no query calls on the run history"
    forced = {name for name in CUSTOM_PLANS if "plan_cache_mode=force_generic_plan" in functions[name][1]}
    assert not forced, f"CUSTOM_PLANS says these keep custom plans, yet they force generic ones: {forced}"


def test_a_generic_plan_of_a_run_lookup_reads_one_month(database_url):
    """Why the setting costs nothing in what is read: the generic plan of a lookup of a run by id, its
    month bounded as the engine's queries bound it, leaves the months to the executor, which keeps
    the one the id names (the others are removed when the plan starts)."""
    with psycopg.connect(database_url) as conn:
        conn.execute("select tolstoy_maintain_history(current_date, null, 3)")  # months beside this one
        conn.execute("set plan_cache_mode = force_generic_plan")
        conn.execute("prepare lookup (uuid, uuid) as select r.status from flow_runs r "
                     "where r.org_id = $1 and r.id = $2 "
                     "and r.created_at between tolstoy_run_from($2) and tolstoy_run_until($2)")
        plan = "\n".join(row[0] for row in conn.execute(
            "explain (analyze, costs off, timing off, summary off) execute lookup "
            "('00000000-0000-0000-0000-000000000000', tolstoy_new_run_id(now()))").fetchall())
    assert "$2" in plan and "Subplans Removed" in plan, plan
    assert len(re.findall(r"on flow_runs_\w+", plan)) == 1, plan
