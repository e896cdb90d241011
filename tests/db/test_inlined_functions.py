"""A small SQL function that queries call per row or per lookup (tolstoy_run_from/until bound every
lookup of a run by id) costs next to nothing when PostgreSQL inlines it into the query, and about 45 µs
a call when it does not: then every call goes through the SQL-function executor. PostgreSQL inlines a
`language sql` function whose body is one expression unless something forbids it: `strict` on a body
that is not strict (a coalesce, a case), a body more volatile than the function says, security definer
or a `set` clause. Over the catalog: every such function of the schema is inlined, or listed here with
the reason it cannot be."""

from __future__ import annotations

import re

import psycopg

# Functions whose body is one expression but which PostgreSQL calls rather than inlines, and why that
# is accepted.
CALLED = {
    # to_char(timestamp, text) is stable (its TM patterns read the locale), the function immutable (it
    # is used where only immutable functions may be); four calls per run, about 25 µs each.
    "tolstoy_iso(timestamp with time zone)": "to_char is stable",
}

CANDIDATES = """
select p.oid::regprocedure::text, p.proname, array(select format_type(t, null) from unnest(p.proargtypes) t),
       p.prosrc
from pg_proc p join pg_language l on l.oid = p.prolang
where p.pronamespace = 'public'::regnamespace and l.lanname = 'sql' and p.prokind = 'f' and not p.proretset
  and p.provolatile in ('i', 's') and not p.prosecdef and p.proconfig is null
  and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid
                  and d.deptype = 'e')
order by 1
"""


def called_functions(url: str) -> dict[str, str]:
    """Each single-expression SQL function of the schema that a generic plan calling it with parameters
    still calls (its name in EXPLAIN VERBOSE), with the plan."""
    called = {}
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("set plan_cache_mode = force_generic_plan")
        for signature, name, types, body in conn.execute(CANDIDATES).fetchall():
            if re.search(r"\bfrom\b", body, re.IGNORECASE):
                continue  # a FROM: reads a table (never inlined as a scalar), or an extract (left out too)
            args = ", ".join(f"${i + 1}" for i in range(len(types)))
            conn.execute(f"prepare probe ({', '.join(types)}) as select {name}({args})" if types
                         else f"prepare probe as select {name}()")
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


def test_every_single_expression_sql_function_is_inlined(database_url):
    called = called_functions(database_url)
    unexpected = {name: plan for name, plan in called.items() if name not in CALLED}
    assert not unexpected, (
        "these SQL functions are called, not inlined, by the queries that use them (drop `strict` and "
        "return null for null yourself, or match the body's volatility):\n"
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
