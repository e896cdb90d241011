"""The clock tests move (tolstoy_now() in SQL, tolstoy.times.CLOCK in Python): only the schema owner
can move the database's, no service role can, and every time-based decision of the SQL reads it."""

from __future__ import annotations

import ast
import datetime as dt
import re
from pathlib import Path

import psycopg
import pytest

from tolstoy import times
from tolstoy.db import migrate

ROOT = Path(__file__).resolve().parents[2]
SERVICE_ROLES = (migrate.APP_ROLE, migrate.WORKER_ROLE, migrate.ADMIN_ROLE)


def ahead(url: str) -> dt.timedelta:
    with psycopg.connect(url) as conn:
        return conn.execute("select tolstoy_now() - now()").fetchone()[0]


@pytest.mark.parametrize("role", SERVICE_ROLES)
def test_no_service_role_can_move_or_read_the_clock_offset(database_url, role):
    url = migrate.as_role(database_url, role)
    attempts = [
        "update tolstoy_clock set ahead = interval '1 day'",
        "insert into tolstoy_clock (ahead) values (interval '1 day')",
        "delete from tolstoy_clock",
        "truncate tolstoy_clock",
        "select ahead from tolstoy_clock",
        "alter table tolstoy_clock alter column ahead set default interval '1 day'",
        "create or replace function tolstoy_now() returns timestamptz language sql as $$ select now() + interval '1 day' $$",
        "create function pg_temp.tolstoy_now() returns timestamptz language sql as $$ select now() + interval '1 day' $$",
        "create temporary table tolstoy_clock as select interval '1 day' as ahead",
    ]
    for statement in attempts:
        with psycopg.connect(url) as conn:
            try:
                conn.execute(statement)
            except psycopg.errors.InsufficientPrivilege:
                continue
            # A temporary function of the same name is not what the queries call (functions are found in
            # pg_temp only when the call names the schema), and a temporary table of the clock's name is
            # not what tolstoy_now() reads (its search_path puts public before pg_temp).
            assert statement.startswith(("create function pg_temp.", "create temporary table")), statement
            assert conn.execute("select tolstoy_now() - now()").fetchone()[0] == dt.timedelta(0)
    assert ahead(url) == dt.timedelta(0)


def test_the_owner_moves_the_clock_every_role_reads(database_url, clock):
    for role in SERVICE_ROLES:
        assert ahead(migrate.as_role(database_url, role)) == dt.timedelta(0)
    before = times.utcnow()
    clock.move(3600)
    for role in SERVICE_ROLES:
        assert ahead(migrate.as_role(database_url, role)) == dt.timedelta(hours=1)
    assert times.utcnow() - before >= dt.timedelta(hours=1)
    with psycopg.connect(database_url) as conn:
        moved, real = conn.execute("select tolstoy_clock_timestamp(), clock_timestamp()").fetchone()
    assert dt.timedelta(minutes=59) < moved - real <= dt.timedelta(hours=1)
    with pytest.raises(ValueError):
        times.CLOCK.move(dt.timedelta(seconds=-1))


def test_the_python_clock_is_back_after_the_test_that_moved_it():
    # Runs after the test above in the same process (one file runs whole on one worker).
    assert times.CLOCK.ahead == dt.timedelta(0)
    assert abs(times.utcnow() - dt.datetime.now(dt.UTC)) < dt.timedelta(seconds=5)


# ---- every time-based decision reads tolstoy_now() -----------------------------------------------

# Where the SQL may read the real clock: these record when something happened (or show it), and
# decide nothing a test would have to wait for. A new use of now() elsewhere is a decision the tests
# could not move: use tolstoy_now() (tolstoy_clock_timestamp() for the time a statement runs).
REAL_TIME = {
    ("db/functions/clock.sql", "tolstoy_now"): "the clock itself",
    ("db/functions/clock.sql", "tolstoy_clock_timestamp"): "the clock itself",
    ("db/functions/queue_and_claim.sql", "tolstoy_queue_run_v4"):
        "created_at, and the month the run's id names: the partition it is stored in",
    ("db/functions/deliveries.sql", "tolstoy_webhook_emit"): "when an event happened",
    ("db/functions/deliveries.sql", "webhooks_cancel_pending"): "when a delivery was cancelled",
    ("db/functions/rows.sql", "tolstoy_touch_updated_at"): "updated_at",
    ("db/functions/signals.sql", "tolstoy_take_signal"): "when a signal was taken",
    ("sql/api_keys.sql", "revoke"): "when a key was revoked",
    ("sql/webhooks.sql", "emit"): "when an event happened",
    ("sql/console.sql", "flows"): "the console's last-24-hours counts, shown to a person",
    # OAuth2 tokens live as long as the provider says, in real seconds, and the engine compares their
    # expiry with the real clock (engine/tool_auth.py); their refresh leases are bounded by a request's
    # timeout. Their tests set expires_at directly rather than wait.
    **{("sql/oauth_tokens.sql", name): "an OAuth2 token's real lifetime" for name in (
        "current", "take_lease", "store")},
    **{("sql/user_connections.sql", name): "an OAuth2 token's real lifetime" for name in (
        "start_login", "take_login", "connect", "current", "take_lease", "refreshed")},
    # Data keys age in real time; the rotation's tests pass the settle time and the sleep in.
    **{("sql/organization_keys.sql", name): "a data key's real age" for name in (
        "versions", "settle_left", "retire")},
}
REAL_CLOCK = re.compile(r"(?<![\w.])(now\(\)|clock_timestamp\(\)|current_date|current_timestamp|localtimestamp"
                        r"|transaction_timestamp\(\)|statement_timestamp\(\))", re.I)


def units(path: Path) -> list[tuple[str, str]]:
    """(name, code) of each query of a sql/ file or each function of a db/functions/ file, without
    comments and string literals (prose may say now())."""
    def code(text: str) -> str:
        return re.sub(r"'(?:[^']|'')*'", "''", re.sub(r"--[^\n]*", "", text))

    raw = path.read_text()
    header = r"^-- name: ([\w-]+)" if path.parent.name == "sql" else r"^create or replace function (\w+)\("
    starts = [(m.start(), m.group(1)) for m in re.finditer(header, raw, re.M)]
    bounds = [start for start, _ in starts[1:]] + [len(raw)]
    assert not REAL_CLOCK.search(code(raw[:starts[0][0]] if starts else raw)), f"{path}: outside any unit"
    return [(name, code(raw[start:end])) for (start, name), end in zip(starts, bounds, strict=True)]


def test_time_based_decisions_read_the_clock_tests_move():
    offenders, used = [], set()
    for path in sorted([*ROOT.glob("sql/*.sql"), *ROOT.glob("db/functions/*.sql")]):
        relative = str(path.relative_to(ROOT))
        for name, code in units(path):
            if REAL_CLOCK.search(code):
                if (relative, name) in REAL_TIME:
                    used.add((relative, name))
                else:
                    offenders.append(f"{relative} {name}: {sorted(set(REAL_CLOCK.findall(code)))}")
    assert offenders == [], "read tolstoy_now() (db/functions/clock.sql), or say in REAL_TIME why not"
    assert sorted(set(REAL_TIME) - used) == [], "REAL_TIME names a place that no longer reads the real clock"


# ---- and every time-based decision of the API reads tolstoy.times ------------------------------

# Where tolstoy/api may read the real clock: a time it records or shows, deciding nothing a test would
# have to wait for. Anything else reads tolstoy.times (utcnow(), unix_seconds()), the clock tests move
# with the database's; time.monotonic() measures what is only waited for and is never moved.
API_REAL_TIME = {
    ("tolstoy/api/signals.py", "Approval.on_post"): "when a person decided, recorded in the signal's payload",
}
# A reading of the real clock: the names Python reaches it by (however the module was imported).
REAL_CLOCK_CALLS = {"datetime.now", "datetime.utcnow", "datetime.today", "date.today", "time.time", "time.time_ns",
                    "time.gmtime", "time.localtime"}


def real_clock_reads(source: str) -> list[tuple[str, str]]:
    """(the enclosing ``Class.function`` or ``<module>``, what it reads) of each reading of the real
    clock in Python ``source``: a call or a reference (a default argument ``clock=time.time`` reads it
    later), or ``from time import time``."""
    found = []

    def dotted(node) -> str | None:
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Attribute):
            base = dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def visit(node, where: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            where = node.name if where == "<module>" else f"{where}.{node.name}"
        if isinstance(node, ast.Attribute):
            name = dotted(node) or ""
            if any(name == call or name.endswith("." + call) for call in REAL_CLOCK_CALLS):
                found.append((where, name))
                return
        if isinstance(node, ast.ImportFrom) and node.module in ("time", "datetime"):
            found.extend((where, f"{node.module}.{alias.name}") for alias in node.names
                         if f"{node.module}.{alias.name}" in REAL_CLOCK_CALLS)
        for child in ast.iter_child_nodes(node):
            visit(child, where)

    visit(ast.parse(source), "<module>")
    return found


def test_the_apis_time_based_decisions_read_the_clock_tests_move():
    offenders, used = [], set()
    for path in sorted((ROOT / "tolstoy" / "api").rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        for where, name in real_clock_reads(path.read_text()):
            if (relative, where) in API_REAL_TIME:
                used.add((relative, where))
            else:
                offenders.append(f"{relative} {where}: {name}")
    assert offenders == [], "read tolstoy.times (utcnow(), unix_seconds()), or say in API_REAL_TIME why not"
    assert sorted(set(API_REAL_TIME) - used) == [], "API_REAL_TIME names a place that no longer reads the real clock"
    # The rule sees each way of reaching the clock.
    assert [name for _, name in real_clock_reads(
        "import datetime as dt, time\nfrom datetime import datetime\nfrom time import time as t\n"
        "def f(clock=time.time):\n    return dt.datetime.now(dt.UTC), datetime.utcnow(), dt.date.today()\n"
        "class A:\n    def g(self):\n        return time.monotonic()\n")] == [
        "time.time", "time.time", "dt.datetime.now", "datetime.utcnow", "dt.date.today"]
