"""Stores: the named queries of one table behind plain methods. A store knows
nothing of HTTP; resources get one injected."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from . import database as dbmod
from .queries import SQL


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

    # ``commit=True`` makes the statement the last of its unit of work (tolstoy/db/database.py).

    def list(self, org_id: uuid.UUID | None, *, limit: int, filters: dict, commit: bool = False,
             **keyset: Any) -> list[dict]:
        """Up to ``limit`` rows after the keyset position, newest first; ``filters`` by column."""
        params = {name: filters.get(name) for name in self.filters}
        return self.db.all(self.queries.list, commit=commit, org_id=org_id, limit=limit, **keyset, **params)

    def get(self, org_id: uuid.UUID | None, record_id: uuid.UUID, *, commit: bool = False) -> dict | None:
        """One row of the organization, or None."""
        return self.db.one(self.queries.get, commit=commit, org_id=org_id, id=record_id)

    def get_for_update(self, org_id: uuid.UUID | None, record_id: uuid.UUID) -> dict | None:
        """One row, locked for the rest of the caller's transaction."""
        return self.db.one(self.queries.get_for_update, org_id=org_id, id=record_id)

    def insert(self, org_id: uuid.UUID | None, values: dict, *, commit: bool = False, **extra: Any) -> dict:
        """Insert a row from the writable values; returns it as stored."""
        return self.db.one(self.queries.insert, commit=commit, org_id=org_id, **self._values(values), **extra)

    def update(self, org_id: uuid.UUID | None, record_id: uuid.UUID, values: dict, *, commit: bool = False) -> dict:
        """Replace the writable columns of one row; returns it as stored."""
        return self.db.one(self.queries.update, commit=commit, org_id=org_id, id=record_id, **self._values(values))

    def delete(self, org_id: uuid.UUID | None, record_id: uuid.UUID, *, commit: bool = False) -> bool:
        """Delete one row; False when there was none."""
        return self.db.rowcount(self.queries.delete, commit=commit, org_id=org_id, id=record_id) > 0


def write_execution_log(db: dbmod.Database, *, org_id, flow_id, user_id, execution_id, step_key: str, status: str,
                        inputs: Any = None, outputs: Any = None, error: Any = None,
                        duration_ms: int | None = None, commit: bool = False) -> dict:
    """Append one execution log row written by Tolstoy itself (source ``engine``: run changes made
    through the API); non-object inputs become ``{}``, outputs ``{"value": …}``."""
    return db.one(
        SQL.execution_logs.write, commit=commit, org_id=org_id, flow_id=flow_id, user_id=user_id,
        execution_id=str(execution_id), step_key=step_key, status=status,
        inputs=dbmod.json(inputs if isinstance(inputs, dict) else {}),
        outputs=dbmod.json(outputs if isinstance(outputs, dict) or outputs is None else {"value": outputs}),
        error=dbmod.json(error), duration_ms=duration_ms,
    )


def write_action_log(db: dbmod.Database, *, org_id, user_id, execution_id, action: dict, success: bool,
                     inputs: Any, outputs: Any, error: Any, duration_ms: int, status_code: int | None) -> dict:
    """The execution log row of a direct action call (``POST /actions/{id}/execute``) and its
    ``action.executed`` / ``action.failed`` event for the organization's webhooks, in one statement."""
    data = {"executionId": str(execution_id), "actionId": str(action["id"]), "actionKey": action["key"],
            "toolId": str(action["tool_id"]), "success": success, "statusCode": status_code,
            "durationMs": duration_ms, "error": error}
    return db.one(
        SQL.webhooks.action_logged, commit=True, org_id=org_id, user_id=user_id, execution_id=str(execution_id),
        step_key=action["key"], status="completed" if success else "failed",
        inputs=dbmod.json(inputs if isinstance(inputs, dict) else {}),
        outputs=dbmod.json(outputs if isinstance(outputs, dict) or outputs is None else {"value": outputs}),
        error=dbmod.json(error), duration_ms=duration_ms,
        event_type="action.executed" if success else "action.failed", data=dbmod.json(data),
    )
