"""Run lookups name their month (issue 21): with two years of monthly partitions, finding a run by
its id reads one partition, not 24.

A run's id carries the time it was queued (tolstoy_new_run_id), and every lookup by id bounds
created_at with it (tolstoy_run_from / tolstoy_run_until). Checked here: the API's statements by
EXPLAIN, custom and generic plans alike, and every statement and function that looks a run up by
id, children by parent or retries by original, by a rule over their text. The engine as it runs is
checked by tests/engine/test_run_months.py."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from support import HISTORY_MONTHS, month_start, two_years_of_partitions

from tolstoy.db.queries import SQL


@pytest.fixture
def two_years(db):
    """Monthly partitions for the 23 months before this one, this one and three ahead; this month's name."""
    return two_years_of_partitions(db)


def execute(api, org, user, flow) -> str:
    answer = api.client.simulate_post(f"/flows/{flow['id']}/execute", json={}, headers=api.headers(org, user))
    assert answer.status_code == 202, answer.text
    return answer.json["executionId"]


def scanned(plan: dict) -> list[str]:
    """The flow_runs partitions a plan read (EXPLAIN ANALYZE: those pruned when it ran never ran)."""
    found = []
    if ("Scan" in plan["Node Type"] and plan.get("Relation Name", "").startswith("flow_runs")
            and plan.get("Actual Loops", 1) > 0):
        found.append(plan["Relation Name"])
    for child in plan.get("Plans", []):
        found += scanned(child)
    return found


def positional(query) -> tuple[str, list[str]]:
    """A named query with $1, $2, … for PREPARE, and its parameter names in order."""
    names: list[str] = []

    def number(match: re.Match) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return re.sub(r"%\((\w+)\)s", number, query.sql).replace("%%", "%"), names


def plans(app_url: str, tenant: str, query, **params) -> dict[str, list[str]]:
    """The flow_runs partitions a named query reads as the application role acting for ``tenant``
    (EXPLAIN ANALYZE, rolled back): planned with its parameters (custom), and as a prepared
    statement's generic plan, pruned when it starts (what psycopg's prepared statements and PL/pgSQL
    get after a few runs)."""
    text, names = positional(query)
    with psycopg.connect(app_url, row_factory=dict_row) as conn:
        conn.execute("select set_config('app.org_id', %s, false)", (tenant,))
        custom = conn.execute(b"explain (analyze, format json) " + query.sql.encode(), params).fetchone()["QUERY PLAN"]
        conn.execute("set plan_cache_mode = force_generic_plan")
        conn.execute(f"prepare q as {text}".encode())
        arguments = sql.SQL(", ").join(sql.Literal(params[name]) for name in names)
        generic = conn.execute(sql.SQL("explain (analyze, format json) execute q({})").format(arguments)).fetchone()[
            "QUERY PLAN"]
        conn.rollback()
    return {"custom": scanned(custom[0]["Plan"]), "generic": scanned(generic[0]["Plan"])}


def function_reads(app_url: str, tenant: str, mode: str, query, **params) -> set[str]:
    """The flow_runs partitions a named query that calls a function scans, as the application role
    acting for ``tenant`` with ``plan_cache_mode`` ``mode`` (rolled back): by pg_stat_xact_user_tables,
    the transaction's own counts, which see the statements inside the function."""
    with psycopg.connect(app_url, row_factory=dict_row) as conn:
        conn.execute("select set_config('app.org_id', %s, false)", (tenant,))
        conn.execute(sql.SQL("set plan_cache_mode = {}").format(sql.Identifier(mode)))
        conn.execute(query.sql, params)
        rows = conn.execute("select relname from pg_stat_xact_user_tables where relname like 'flow_runs_p%%' "
                            "and coalesce(seq_scan, 0) + coalesce(idx_scan, 0) > 0").fetchall()
        conn.rollback()
    return {row["relname"] for row in rows}


def test_a_run_id_carries_its_created_at_and_other_ids_are_looked_up_everywhere(api, org, user, db):
    flow = api.flow(org)
    run = execute(api, org, user, flow)
    with db.pool.connection() as conn:
        row = conn.execute("select created_at, tolstoy_run_epoch(id) as epoch, tolstoy_run_from(id) as from_, "
                           "tolstoy_run_until(id) as until from flow_runs where id = %s", (run,)).fetchone()
        assert uuid.UUID(run).version == 7 and uuid.UUID(run).variant == uuid.RFC_4122
        assert row["epoch"] == pytest.approx(row["created_at"].timestamp(), abs=1e-6)
        assert row["from_"] < row["created_at"] < row["until"]
        assert row["until"] - row["from_"] <= dt.timedelta(seconds=2, microseconds=2)
        # A random (version 4) id, every run queued before ids carried their time: every month.
        assert conn.execute("select tolstoy_run_from(%s) = '-infinity' and tolstoy_run_until(%s) = 'infinity' "
                            "as open", (str(uuid.uuid4()),) * 2).fetchone()["open"]
        # Ids a client makes up never raise (a time past year 9999, or 0).
        for made_up in ("ffffffff-ffff-7fff-bfff-ffffffffffff", "00000000-0000-7000-8000-000000000000"):
            conn.execute("select tolstoy_run_from(%s), tolstoy_run_until(%s)", (made_up, made_up))
        ids = conn.execute("select tolstoy_new_run_id(now()) as id from generate_series(1, 1000)").fetchall()
        assert len({r["id"] for r in ids}) == 1000
    for made_up in ("ffffffff-ffff-7fff-bfff-ffffffffffff", "00000000-0000-7000-8000-000000000000"):
        assert api.client.simulate_get(f"/flows/{flow['id']}/executions/{made_up}",
                                       headers=api.headers(org)).status_code == 404


def test_the_apis_lookups_by_id_read_one_month_of_two_years(api, org, user, app_url, db, two_years):
    flow = api.flow(org)
    run = execute(api, org, user, flow)
    ids = {"org_id": org["id"], "flow_id": flow["id"], "id": run}
    for query in (SQL.runs.get, SQL.runs.get_for_update, SQL.runs.status_of):
        found = plans(app_url, org["id"], query, **ids)
        assert found == {"custom": [two_years], "generic": [two_years]}, (query, found)
    # Children and retries are never older than the run they name: the months before it are skipped
    # (the console's run page looks for the run's retry too).
    older = {f"flow_runs_p{month_start(dt.date.today(), back):%Y_%m}" for back in range(1, HISTORY_MONTHS)}
    for query, params in ((SQL.console.run, ids),
                          (SQL.runs.list, {"org_id": org["id"], "flow_id": flow["id"], "parent_id": run,
                                           "waiting_for": None, "rerun_of": None, "after_created_at": None,
                                           "after_id": None, "limit": 10}),
                          (SQL.runs.list, {"org_id": org["id"], "flow_id": flow["id"], "parent_id": None,
                                           "waiting_for": None, "rerun_of": run, "after_created_at": None,
                                           "after_id": None, "limit": 10}),
                          (SQL.runs.reruns, {"org_id": org["id"], "id": run, "limit": 10})):
        found = plans(app_url, org["id"], query, **params)
        # The list's parent filter is optional (null: every run of the flow), so only a plan made with
        # its value can leave months out.
        read = found["custom"] + (found["generic"] if query is not SQL.runs.list else [])
        assert found["custom"] and not older & set(read), (query, found)
    # The state changes are SQL functions (a plan of their call shows none of their statements): the
    # partitions their statements read, by the transaction's own statistics, planned with their values
    # and as generic plans alike. Resolving reads the run's month (the run is not waiting: refused);
    # cancelling reads it, and the months after it for the run's children, never one before.
    resolving = {**ids, "step_id": "x", "user_id": None, "outcome": "retry", "outputs": None, "sealed": None,
                 "error": None, "key_missing": False}
    for mode in ("force_custom_plan", "force_generic_plan"):
        assert function_reads(app_url, org["id"], mode, SQL.runs.resolve, **resolving) == {two_years}, mode
        read = function_reads(app_url, org["id"], mode, SQL.runs.cancel, **ids, user_id=None)
        assert two_years in read and not older & read, (mode, read)
    # A run whose id carries no time (queued before) is still found, in every month: the contrast.
    legacy = str(uuid.uuid4())
    with db.pool.connection() as conn:
        conn.execute("insert into flow_runs (org_id, id, flow_id, flow_version, plan, root_run_id, created_at) "
                     "values (%s, %s, %s, 1, '{}', %s, %s)",
                     (org["id"], legacy, flow["id"], legacy, month_start(dt.date.today(), 13)))
    found = plans(app_url, org["id"], SQL.runs.status_of, **{**ids, "id": legacy})
    assert len(found["custom"]) >= HISTORY_MONTHS
    shown = api.client.simulate_get(f"/flows/{flow['id']}/executions/{legacy}", headers=api.headers(org))
    assert shown.status_code == 200 and shown.json["executionId"] == legacy


# ---- the rule over every statement that looks a run up ------------------------------------------

# "r.id = run", "r.id = any(chain)", "c.parent_run_id in (select ...)".
LOOKUP = re.compile(r"\b(?P<alias>\w+)\.(?P<column>id|parent_run_id|retry_of|rerun_of)\s*(?:=\s*(?:any\s*\()?|\s+in\s*\()\s*"
                    r"(?P<arg>[:\w.]+(?:::uuid)?)")
BARE = re.compile(r"(?<![.\w])(?P<column>id)\s*=\s*(?P<arg>[:\w.]+(?:::uuid)?)")


def statements() -> list[tuple[str, str]]:
    """(where, statement) for each statement of sql/*.sql and of the schema's functions."""
    found = [(query.name, part) for ns in vars(SQL).values() for query in vars(ns).values()
             for part in query.sql.split(";")]
    return found


def function_statements(db) -> list[tuple[str, str]]:
    with db.pool.connection() as conn:
        rows = conn.execute("select p.proname, p.prosrc from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
                            "where n.nspname = 'public'").fetchall()
    return [(row["proname"], part) for row in rows for part in row["prosrc"].split(";")]


def unbounded(statement: str) -> list[str]:
    """The lookups of flow_runs in one statement that do not bound created_at."""
    text = re.sub(r"--[^\n]*", "", statement)
    aliases = set(re.findall(r"\b(?:from|join|update)\s+flow_runs\s+(?:as\s+)?(\w+)", text, re.I))
    aliases -= {"set", "where", "on", "using", "for", "order", "limit", "join", "returning"}
    problems = []
    for match in LOOKUP.finditer(text):
        if match["alias"] not in aliases:
            continue
        arg = match["arg"].removesuffix("::uuid")
        alias = match["alias"]
        if match["column"] == "id":
            ok = (re.search(rf"tolstoy_run_from\({re.escape(arg)}(::uuid)?\)", text)
                  or re.search(rf"\b{alias}\.created_at\s*(=|between\b)", text))
        else:  # children and retries are never older than the run they name
            ok = re.search(rf"\b{alias}\.created_at\s*>=", text)
        if not ok:
            problems.append(match[0])
    if re.search(r"\bupdate\s+flow_runs\s+set\b", text, re.I):
        for match in BARE.finditer(text):
            arg = match["arg"].removesuffix("::uuid")
            if not (re.search(rf"tolstoy_run_from\({re.escape(arg)}(::uuid)?\)", text)
                    or re.search(r"(?<![.\w])created_at\s*=", text)):
                problems.append(match[0])
    return problems


def test_every_lookup_of_a_run_by_id_bounds_its_month(db):
    """A rule over the text of every named query and every function of the schema: a run looked up
    by id (or its children by parent_run_id, its retries by retry_of) bounds created_at too."""
    found = [(where, problem) for where, statement in statements() + function_statements(db)
             for problem in unbounded(statement)]
    assert found == []
    # The rule sees what it is meant to: the lookups it checks exist, and an unbounded one is caught.
    assert unbounded("select * from flow_runs r where r.org_id = org and r.id = run") == ["r.id = run"]
    assert unbounded("update flow_runs set status = 'queued' where org_id = :org_id and id = :id") == ["id = :id"]
    assert unbounded("select 1 from flow_runs c where c.org_id = o and c.parent_run_id = run") == [
        "c.parent_run_id = run"]
    assert unbounded("update flow_runs p set status = 'queued' where p.org_id = o and p.id = any(chain)") == [
        "p.id = any(chain"]
    assert unbounded("select 1 from flow_runs c where c.parent_run_id in (select e.id from earlier e)") == [
        "c.parent_run_id in (select"]
    checked = [s for _, s in statements() + function_statements(db) if LOOKUP.search(s) and "flow_runs" in s]
    assert len(checked) >= 15
