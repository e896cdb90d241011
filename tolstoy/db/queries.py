"""Load named SQL queries from the project's ``sql/`` directory (aiosql's format).

A file holds blocks that start with ``-- name: <name><suffix>``; comment lines
right under the header are the query's description. The suffix tells the
database layer what the caller wants back: none for all rows, ``^`` for one
row or None, ``$`` for a single value, ``!`` for the affected row count.
Parameters are written ``:name`` and rewritten to psycopg's ``%(name)s`` (``Query.sql``, for
psycopg's own ``execute``) and to PostgreSQL's ``$n`` with the names in order (``Query.positional``,
for the batches of tolstoy/db/wire.py).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from ..paths import SQL_DIR

_HEADER = re.compile(r"^--\s*name:\s*(?P<name>[a-z_][a-z0-9_]*)(?P<suffix>[\^$!]?)\s*$")
# ":name" but not the second colon of a "::type" cast, nor "10:30" inside a literal.
_PARAM = re.compile(r"(?<![:\w]):([a-zA-Z_]\w*)")
_PYFORMAT = re.compile(r"%%|%\((\w+)\)s")
KINDS = {"": "all", "^": "one", "$": "scalar", "!": "rowcount"}


@dataclass(frozen=True)
class Query:
    """A named statement ready for psycopg, with where it came from."""

    name: str
    kind: str
    sql: str
    doc: str
    source: str

    @functools.cached_property
    def positional(self) -> tuple[bytes, tuple[str, ...]]:
        """The statement with $1, $2, … in place of its parameters, and the parameter names in that order."""
        return to_positional(self.sql)

    def __repr__(self) -> str:
        return f"<Query {self.name} ({self.source})>"


def to_pyformat(text: str) -> str:
    """Rewrite ``:name`` parameters to ``%(name)s``, escaping literal percent signs."""
    return _PARAM.sub(r"%(\1)s", text.replace("%", "%%"))


def to_positional(pyformat: str) -> tuple[bytes, tuple[str, ...]]:
    """Rewrite psycopg's ``%(name)s`` parameters to ``$1``, ``$2``, … (a name used twice is one
    parameter) and ``%%`` back to ``%``, as psycopg does before sending a statement."""
    names: list[str] = []

    def number(match: re.Match) -> str:
        if match[1] is None:
            return "%"
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return _PYFORMAT.sub(number, pyformat).encode(), tuple(names)


def parse(text: str, namespace: str, filename: str) -> dict[str, Query]:
    """Split one .sql file into its named queries."""
    queries: dict[str, Query] = {}
    current: dict | None = None

    def finish() -> None:
        if current is None:
            return
        body = "\n".join(current["body"]).strip()
        if not body:
            raise ValueError(f"{current['source']}: query {current['name']} has no SQL")
        name = current["name"]
        if name in queries:
            raise ValueError(f"{current['source']}: query {name} defined twice")
        queries[name] = Query(
            name=f"{namespace}.{name}",
            kind=KINDS[current["suffix"]],
            sql=to_pyformat(body),
            doc=" ".join(current["doc"]),
            source=current["source"],
        )

    for lineno, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line.strip())
        if header:
            finish()
            current = {
                "name": header["name"],
                "suffix": header["suffix"],
                "doc": [],
                "body": [],
                "source": f"{filename}:{lineno}",
            }
        elif current is None:
            continue  # file preamble: prose for the reader
        elif not current["body"] and line.startswith("--"):
            current["doc"].append(line.lstrip("-").strip())
        else:
            current["body"].append(line)
    finish()
    return queries


def load(directory: Path = SQL_DIR) -> SimpleNamespace:
    """Load every ``*.sql`` file: ``load().users.get`` is the ``get`` query of users.sql."""
    namespaces = {}
    for path in sorted(directory.glob("*.sql")):
        namespaces[path.stem] = SimpleNamespace(**parse(path.read_text(), path.stem, path.name))
    return SimpleNamespace(**namespaces)


SQL = load()
