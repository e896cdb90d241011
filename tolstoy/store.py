"""Stores: the named queries of one table behind plain methods. A store knows
nothing of HTTP; resources get one injected."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any, Iterable

from . import db as dbmod


class TableStore:
    """list/get/insert/update/delete for a table whose sql file defines those queries.

    ``writable`` names the columns a client may set; ``json_columns`` those
    stored as jsonb; ``filters`` the optional list filters the list query takes.
    """

    def __init__(
        self,
        database: dbmod.Database,
        queries: SimpleNamespace,
        *,
        writable: Iterable[str],
        json_columns: Iterable[str] = (),
        filters: Iterable[str] = (),
    ):
        self.db = database
        self.queries = queries
        self.writable = tuple(writable)
        self.json_columns = frozenset(json_columns)
        self.filters = tuple(filters)

    def _values(self, values: dict) -> dict:
        return {
            column: dbmod.json(values.get(column)) if column in self.json_columns else values.get(column)
            for column in self.writable
        }

    def list(self, org_id: uuid.UUID | None, *, limit: int, keyset: dict, filters: dict) -> list[dict]:
        """One page of rows, plus one look-ahead row when more exist."""
        params = {name: filters.get(name) for name in self.filters}
        return self.db.all(self.queries.list, org_id=org_id, limit=limit + 1, **keyset, **params)

    def get(self, org_id: uuid.UUID | None, record_id: uuid.UUID) -> dict | None:
        """One row of the organization, or None."""
        return self.db.one(self.queries.get, org_id=org_id, id=record_id)

    def get_for_update(self, org_id: uuid.UUID | None, record_id: uuid.UUID) -> dict | None:
        """One row, locked for the rest of the caller's transaction."""
        return self.db.one(self.queries.get_for_update, org_id=org_id, id=record_id)

    def insert(self, org_id: uuid.UUID | None, values: dict, **extra: Any) -> dict:
        """Insert a row from the writable values; returns it as stored."""
        return self.db.one(self.queries.insert, org_id=org_id, **self._values(values), **extra)

    def update(self, org_id: uuid.UUID | None, record_id: uuid.UUID, values: dict) -> dict:
        """Replace the writable columns of one row; returns it as stored."""
        return self.db.one(self.queries.update, org_id=org_id, id=record_id, **self._values(values))

    def delete(self, org_id: uuid.UUID | None, record_id: uuid.UUID) -> bool:
        """Delete one row; False when there was none."""
        return self.db.rowcount(self.queries.delete, org_id=org_id, id=record_id) > 0
