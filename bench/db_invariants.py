"""The invariants a settled Tolstoy database keeps (bench/db_invariants.sql): after a restore
(bench/drill.py), after a soak. ``check(url)`` answers each rule's offending rows; none is good."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from tolstoy.db.queries import parse

QUERIES = parse((Path(__file__).with_name("db_invariants.sql")).read_text(), "db_invariants", "bench/db_invariants.sql")


def check(url: str, *, grace_seconds: float = 30) -> dict[str, list[dict]]:
    """Every rule's broken rows (``{}`` when all hold), read as ``url``'s role: a superuser, the one
    role that sees every organization (row-level security binds even the schema owner).
    ``grace_seconds``: how long a due run or delivery may wait for a worker before it counts as stuck."""
    broken: dict[str, list[dict]] = {}
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        for name, query in QUERIES.items():
            rows = conn.execute(query.sql, {"grace_seconds": grace_seconds}).fetchall()
            if rows:
                broken[name] = rows
    return broken


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.db_invariants <superuser URL>``: print the rules a database breaks; exit 1 if any."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m bench.db_invariants", description=main.__doc__)
    parser.add_argument("url", help="the database, as a superuser (e.g. postgresql://postgres@/tolstoy?host=/var/run/postgresql)")
    parser.add_argument("--grace-seconds", type=float, default=30)
    args = parser.parse_args(argv)
    broken = check(args.url, grace_seconds=args.grace_seconds)
    for rule, rows in broken.items():
        print(f"{rule}: {len(rows)} row(s); first: {json.dumps(rows[0], default=str)}")
    if not broken:
        print(f"all {len(QUERIES)} invariants hold")
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
