"""``/execution-logs``: the audit trail of runs, one row per step event."""

from __future__ import annotations

import falcon

from . import resources
from .queries import SQL
from .schemas import ExecutionLogListQuery, ExecutionLogSchema
from .tenancy import require_user


class ExecutionLogModel:
    """Shared settings and checks of the execution log resources."""

    noun = "Execution log"
    schema = ExecutionLogSchema()
    # Written by the engine; a GET body PUT back must not be refused for carrying it.
    derived_fields = frozenset({"durationMs"})

    def check_references(self, req: falcon.Request, values: dict) -> None:
        """flowId must be a flow of the caller's organization."""
        if "flow_id" in values:
            self.require_visible(req, SQL.flows.exists, values["flow_id"], "flowId", "flow")


class Collection(ExecutionLogModel, resources.Collection):
    """``GET/POST /execution-logs``; creating one records X-User-ID as its actor."""

    list_query = ExecutionLogListQuery()
    filters = {
        "flowId": "flow_id",
        "executionId": "execution_id",
        "status": "status",
        "userId": "user_id",
    }

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Create a log; X-User-ID is required (checked with the other headers)."""
        require_user(req)
        super().on_post(req, resp)

    def insert(self, req: falcon.Request, values: dict) -> dict:
        """The actor comes from the header, never from the body; durationMs is the engine's."""
        return self.store.insert(req.context.org_id, values, user_id=req.context.user_id, duration_ms=None)


class Item(ExecutionLogModel, resources.Item):
    """``GET/PUT/PATCH/DELETE /execution-logs/{id}``."""
