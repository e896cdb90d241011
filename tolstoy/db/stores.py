"""The execution log rows Tolstoy writes itself, from the API (run changes) and the
engine (direct action calls): one statement each, shared so both write them alike."""

from __future__ import annotations

from typing import Any

from . import database as dbmod
from .queries import SQL


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
