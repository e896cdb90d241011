"""PostgreSQL inlines a `language sql` function into the query that calls it when it can: then it
costs next to nothing (tolstoy_run_from/until bound every lookup of a run by id: about 1 µs inlined).
When it cannot (a body that reads a table as a scalar, `strict` on a body that is not strict, a body
more volatile than the function says, security definer, a `set` clause, a data-modifying WITH),
PostgreSQL 16 parses and plans the body anew in every statement that calls it: 45 µs for the month
bounds when they were strict, and for the claim's tolstoy_run_payload, the queue's tolstoy_plan and
the clock's tolstoy_now a fifth of PostgreSQL's CPU per run, until they became plpgsql, whose plans are
kept for the session (migration functions_keep_their_plans). Over the catalog: every SQL function of
the schema is inlined where a generic plan calls it (a function of a table, in FROM), or listed here
with the reason it must stay SQL and be called."""

from __future__ import annotations

import re

import psycopg

# `language sql` functions that PostgreSQL calls rather than inlines, and why that is accepted (none:
# write such a function in plpgsql).
CALLED: dict[str, str] = {}

CANDIDATES = """
select p.oid::regprocedure::text, p.proname, array(select format_type(t, null) from unnest(p.proargtypes) t),
       p.proretset
from pg_proc p join pg_language l on l.oid = p.prolang
where p.pronamespace = 'public'::regnamespace and l.lanname = 'sql' and p.prokind = 'f'
  and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid
                  and d.deptype = 'e')
order by 1
"""


def called_functions(url: str) -> dict[str, str]:
    """Each SQL function of the schema that a generic plan calling it with parameters still calls
    (its name in EXPLAIN VERBOSE), with the plan: a function of a table as the FROM of a query, any
    other in its select list."""
    called = {}
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("set plan_cache_mode = force_generic_plan")
        for signature, name, types, returns_set in conn.execute(CANDIDATES).fetchall():
            args = ", ".join(f"${i + 1}" for i in range(len(types)))
            query = f"select * from {name}({args})" if returns_set else f"select {name}({args})"
            conn.execute(f"prepare probe ({', '.join(types)}) as {query}" if types else f"prepare probe as {query}")
            try:
                values = ", ".join("null" for _ in types)
                plan = "\n".join(row[0] for row in conn.execute(
                    f"explain (verbose, costs off) execute probe ({values})" if types
                    else "explain (verbose, costs off) execute probe"))
            finally:
                conn.execute("deallocate probe")
            if re.search(rf"\b{re.escape(name)}\(", plan):
                called[signature] = plan
    return called


def test_every_sql_function_is_inlined(database_url):
    called = called_functions(database_url)
    unexpected = {name: plan for name, plan in called.items() if name not in CALLED}
    assert not unexpected, (
        "these SQL functions are called, not inlined, by the queries that use them, and so planned anew in "
        "every statement (write them in plpgsql; a single expression: drop `strict` and return null for null "
        "yourself, or match the body's volatility):\n"
        + "\n".join(f"{name}:\n{plan}" for name, plan in unexpected.items()))
    stale = set(CALLED) - set(called)
    assert not stale, f"inlined now, take them out of CALLED: {sorted(stale)}"


def test_the_run_month_bounds_keep_their_answers(database_url):
    """Not strict any more, the month bounds still answer null for a null id, and what they answered
    before for a run id and for an id that carries no time."""
    with psycopg.connect(database_url) as conn:
        conn.execute("set timezone = 'UTC'")
        row = conn.execute(
            "select tolstoy_run_from(null), tolstoy_run_until(null), tolstoy_run_epoch(null), "
            "tolstoy_run_from('00000000-0000-4000-8000-000000000000')::text, "
            "tolstoy_run_until('00000000-0000-4000-8000-000000000000')::text, "
            "tolstoy_run_from(tolstoy_new_run_id(timestamptz '2026-12-07 12:00:00.123456+00'))::text, "
            "tolstoy_run_until(tolstoy_new_run_id(timestamptz '2026-12-07 12:00:00.123456+00'))::text").fetchone()
    assert row == (None, None, None, "-infinity", "infinity", "2026-12-07 11:59:59.123456+00",
                   "2026-12-07 12:00:01.123456+00")
