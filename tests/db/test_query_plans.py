"""The SQL layer: every named query loads, parses against the real schema, and
every query on a tenant table is scoped by org_id."""

from __future__ import annotations

import re

from tolstoy.db.queries import SQL

TRANSACTION_CONTROL = re.compile(r"^(begin|commit|rollback|listen|do)\b")


def all_queries():
    return [q for ns in vars(SQL).values() for q in vars(ns).values()]


def test_every_query_is_valid_against_the_schema(db):
    """EXPLAIN (which plans but does not run) each statement with NULL parameters."""
    with db.pool.connection() as conn:
        for query in all_queries():
            if TRANSACTION_CONTROL.match(query.sql):
                continue  # nothing to plan: begin, commit, rollback, listen, a DO block
            statement = re.sub(r"%\(\w+\)s", "NULL", query.sql).replace("%%", "%")
            with conn.transaction():
                conn.execute(f"explain {statement}".encode())
