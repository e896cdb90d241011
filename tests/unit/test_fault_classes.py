"""Faults of the database are sorted in one place (tolstoy.errors.FAULT_CLASSES, applied by
tolstoy.db.database.wrap_errors), and docs/flows.md shows that same table: every SQLSTATE PostgreSQL
can raise is either transient, refused (the data's own) or neither (a bug), as documented."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest
from psycopg import errors as pg_errors

from tolstoy import errors
from tolstoy.db.database import wrap_errors

FLOWS = Path(__file__).resolve().parents[2] / "docs" / "flows.md"


def documented() -> dict[str, str]:
    """The table of docs/flows.md, "Faults: hand back or fail": SQLSTATE or class -> kind."""
    section = FLOWS.read_text().split("### Faults: hand back or fail", 1)[1].split("\n### ", 1)[0]
    return {code: kind for code, kind in re.findall(r"^\| `(\w{2}|\w{5})` \| (transient|refused) \|", section, re.M)}


def every_sqlstate() -> list[str]:
    return sorted({cls.sqlstate for cls in vars(pg_errors).values()
                   if isinstance(cls, type) and issubclass(cls, psycopg.Error) and getattr(cls, "sqlstate", None)})


def test_every_sqlstate_is_sorted_as_the_documented_table_says():
    table = documented()
    assert table == {code: kind for code, kind, _ in errors.FAULT_CLASSES}
    states = every_sqlstate()
    assert len(states) > 200
    for state in states:
        expected = table.get(state, table.get(state[:2]))
        assert errors.fault_kind(state) == expected, state
    # What the issue names, by its SQLSTATE.
    assert {s: errors.fault_kind(s) for s in ("57014", "57P01", "57P03", "40001", "40P01", "25006", "08006")} == \
        dict.fromkeys(("57014", "57P01", "57P03", "40001", "40P01", "25006", "08006"), errors.TRANSIENT)
    assert {s: errors.fault_kind(s) for s in ("54000", "22P02", "22003", "22P05")} == \
        dict.fromkeys(("54000", "22P02", "22003", "22P05"), errors.REFUSED)
    # A statement sent into a transaction that is already aborted is our bug, not the database's state.
    assert errors.fault_kind("25P02") is None and errors.fault_kind("42601") is None


@pytest.mark.parametrize(("raised", "expected", "sqlstate"), [
    (pg_errors.QueryCanceled("canceling statement due to statement timeout"), errors.DatabaseUnavailable, "57014"),
    (pg_errors.SerializationFailure("could not serialize access"), errors.DatabaseUnavailable, "40001"),
    (pg_errors.ReadOnlySqlTransaction("cannot execute UPDATE in a read-only transaction"), errors.DatabaseUnavailable,
     "25006"),
    (psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"),
     errors.DatabaseUnavailable, None),
    (pg_errors.ProgramLimitExceeded("total size of jsonb array elements exceeds the maximum"), errors.DataRefused,
     "54000"),
    (pg_errors.InvalidTextRepresentation("invalid input syntax for type integer"), errors.DataRefused, "22P02"),
])
def test_wrap_errors_turns_each_kind_into_its_domain_error(raised, expected, sqlstate):
    with pytest.raises(expected) as caught, wrap_errors():
        raise raised
    assert caught.value.sqlstate == sqlstate
    assert caught.value.as_error()["name"] == expected.__name__


@pytest.mark.parametrize("raised", [pg_errors.InFailedSqlTransaction("current transaction is aborted"),
                                    pg_errors.SyntaxError("syntax error"), psycopg.ProgrammingError("no sqlstate")])
def test_what_the_table_does_not_sort_is_raised_as_it_is(raised):
    with pytest.raises(type(raised)), wrap_errors():
        raise raised
