"""``/flows/{id}/execute`` and ``/flows/{id}/executions``: runs of a flow over
HTTP (queue, list, read, cancel, retry) and the flow's run metrics. A run is
an "execution" in the API and a row of ``flow_runs`` (sql/runs.sql).

Executing only queues: the run row and its first execution log are written in
one transaction, and a worker (``tolstoy worker``) claims and runs it."""

from __future__ import annotations

import falcon

from .. import metrics
from ..db import database as dbmod
from ..db.queries import SQL
from ..db.stores import write_execution_log
from ..engine import RUN_STEP_KEY
from . import resources
from .dumping import dumper, many
from .errors import Conflict, field_error
from .requests import parse_uuid, read_json, validate_body
from .responses import respond
from .schemas import (
    ExecuteSchema,
    FlowMetricsSchema,
    PageQuery,
    RunAcceptedSchema,
    RunDetailSchema,
    RunSchema,
)
from .tenancy import require_user

_ACCEPTED = dumper(RunAcceptedSchema())
_RUN = dumper(RunSchema())
_DETAIL = dumper(RunDetailSchema())
_METRICS = dumper(FlowMetricsSchema())
_EXECUTE = ExecuteSchema()
_PAGE = PageQuery()


def idempotency_key(req: falcon.Request) -> str | None:
    """The Idempotency-Key header, 1–200 characters."""
    key = req.get_header("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= 200:
        raise field_error("Idempotency-Key", "Must be 1 to 200 characters.")
    if not key.isprintable():  # NUL cannot be stored in text; control characters are no key
        raise field_error("Idempotency-Key", "Must not contain control characters.")
    return key


class FlowRuns:
    """Routes under ``/flows/{id}``: execute, executions, cancel, retry, metrics."""

    def __init__(self, db: dbmod.Database):
        self.db = db

    def flow(self, req: falcon.Request, raw_id: str, *, for_update: bool = False) -> dict:
        """The flow in the path, or 404."""
        query = SQL.flows.get_for_update if for_update else SQL.flows.get
        return resources.get_or_404(self.db, query, "Flow", org_id=req.context.org_id,
                                    id=parse_uuid(raw_id, "Flow"))

    def run(self, req: falcon.Request, flow: dict, raw_id: str) -> dict:
        """One run of the flow, or 404."""
        return resources.get_or_404(self.db, SQL.runs.get, "Execution", org_id=req.context.org_id,
                                    flow_id=flow["id"], id=parse_uuid(raw_id, "Execution"))

    def queue(self, req: falcon.Request, flow: dict, *, version: int, variables: dict,
              key: str | None = None, retry_of=None) -> tuple[dict, bool]:
        """Insert a queued run and its first log in one transaction; returns (run, created)."""
        org_id = req.context.org_id
        run = self.db.one(
            SQL.runs.insert, org_id=org_id, flow_id=flow["id"], flow_version=version,
            user_id=req.context.user_id, variables=dbmod.json(variables), idempotency_key=key,
            retry_of=retry_of,
        )
        if run is None:  # this Idempotency-Key already made a run of this flow
            return self.db.one(SQL.runs.get_by_idempotency_key, org_id=org_id, flow_id=flow["id"],
                               idempotency_key=key), False
        self.log_run(req, flow, run["id"], "queued", variables)
        return run, True

    def log_run(self, req: falcon.Request, flow: dict, run_id, status: str, inputs: dict) -> None:
        """The run-level execution log row (stepKey ``$flow``) for a change made here, counted in /metrics."""
        write_execution_log(self.db, org_id=req.context.org_id, flow_id=flow["id"], user_id=req.context.user_id,
                            execution_id=run_id, step_key=RUN_STEP_KEY, status=status, inputs=inputs)
        metrics.count_run(status)

    def accepted(self, req: falcon.Request, resp: falcon.Response, flow: dict, run: dict) -> None:
        """202 with the run's summary and where to follow it."""
        resp.status = falcon.HTTP_202
        resp.media = _ACCEPTED(run)
        resp.location = f"/flows/{flow['id']}/executions/{run['id']}"

    def on_post_execute(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Queue a run of the flow's current version."""
        require_user(req)
        key = idempotency_key(req)
        data = read_json(req)
        flow = self.flow(req, id, for_update=True)
        values = validate_body(_EXECUTE, data)
        run, _ = self.queue(req, flow, version=flow["version"], variables=values["variables"], key=key)
        self.accepted(req, resp, flow, run)

    def on_get_executions(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """The flow's runs, newest first, one keyset page at a time."""
        flow = self.flow(req, id)
        resources.list_page(
            req, resp, _PAGE,
            lambda query, **page: self.db.all(SQL.runs.list, commit=True, org_id=req.context.org_id,
                                              flow_id=flow["id"], **page),
            many(_RUN),
        )

    def on_get_execution(self, req: falcon.Request, resp: falcon.Response, id: str, execution_id: str) -> None:
        """One run with its step checkpoints."""
        flow = self.flow(req, id)
        run = self.run(req, flow, execution_id)
        steps = self.db.all(SQL.runs.steps, commit=True, org_id=req.context.org_id, run_id=run["id"])
        respond(resp, _DETAIL({**run, "steps": steps}))

    def on_post_cancel(self, req: falcon.Request, resp: falcon.Response, id: str, execution_id: str) -> None:
        """Cancel: at once when queued or sleeping, at the next step boundary when running."""
        flow = self.flow(req, id)
        run = self.run(req, flow, execution_id)
        changed = self.db.one(SQL.runs.request_cancel, org_id=req.context.org_id, flow_id=flow["id"], id=run["id"])
        if changed is None:
            raise Conflict(f"The execution already finished with status {run['status']}.")
        if changed["status"] == "cancelled":
            self.log_run(req, flow, run["id"], "cancelled", {})
        resp.status = falcon.HTTP_202
        resp.media = _ACCEPTED({**run, "status": changed["status"]})

    def on_post_retry(self, req: falcon.Request, resp: falcon.Response, id: str, execution_id: str) -> None:
        """A new run of the same version that starts with the original's finished steps."""
        require_user(req)
        flow = self.flow(req, id)
        original = self.run(req, flow, execution_id)
        if original["status"] not in ("failed", "cancelled"):
            raise Conflict(f"Only failed or cancelled executions can be retried (this one is {original['status']}).")
        run, _ = self.queue(req, flow, version=original["flow_version"], variables=original["variables"],
                            retry_of=original["id"])
        self.db.rowcount(SQL.runs.copy_finished_steps, commit=True, org_id=req.context.org_id,
                         from_run_id=original["id"], run_id=run["id"])
        self.accepted(req, resp, flow, run)

    def on_get_metrics(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Run counts by status, success rate and duration percentiles."""
        flow = self.flow(req, id)
        row = self.db.one(SQL.runs.metrics, commit=True, org_id=req.context.org_id, flow_id=flow["id"])
        breakdown = row["breakdown"]
        finished = sum(breakdown.get(s, 0) for s in ("completed", "failed", "cancelled"))
        resp.media = _METRICS({
            "totalExecutions": sum(breakdown.values()),
            "statusBreakdown": breakdown,
            "successRate": round(breakdown.get("completed", 0) / finished, 4) if finished else None,
            "p50Ms": row["p50_ms"],
            "p95Ms": row["p95_ms"],
        })
