"""``/flows/{id}/execute`` and ``/flows/{id}/executions``: runs of a flow over
HTTP (queue, list, read, cancel, retry, resolve an unknown outcome, purge) and
the flow's run metrics. A run is an "execution" in the API and a row of
``flow_runs`` (sql/runs.sql).

Executing only queues: the run (with its plan: the flow version and the actions
it calls, as they are now) and its first execution log are written in one
statement, and a worker (``tolstoy worker``) claims and runs it."""

from __future__ import annotations

import contextlib

import falcon

from .. import engine
from ..db import database as dbmod
from ..db.queries import SQL
from ..times import iso
from . import resources
from .dumping import dumper, many
from .errors import Conflict, NotFound, ValidationFailed, field_error
from .requests import parse_uuid, read_json, validate_body
from .responses import respond
from .schemas import (
    ExecuteSchema,
    ExecutionsQuery,
    FlowMetricsSchema,
    PageQuery,
    ResolveSchema,
    RunAcceptedSchema,
    RunDetailSchema,
    RunSchema,
)
from .tenancy import may_act_as, require_user

_ACCEPTED = dumper(RunAcceptedSchema())
_RUN = dumper(RunSchema())
_DETAIL = dumper(RunDetailSchema())
_METRICS = dumper(FlowMetricsSchema())
_EXECUTE = ExecuteSchema()
_PAGE = PageQuery()
_EXECUTIONS = ExecutionsQuery()
FINISHED = ("completed", "failed", "cancelled")


_RESOLVE = ResolveSchema()


@contextlib.contextmanager
def lifecycle_errors():
    """The engine's refusals of a run's state change, as HTTP: 404, 409, 503."""
    try:
        yield
    except engine.NoSuchRun as exc:
        raise NotFound(exc.noun) from None
    except engine.RunStateConflict as exc:
        raise Conflict(str(exc)) from None
    except engine.NoKeyToSeal as exc:
        raise falcon.HTTPServiceUnavailable(description=str(exc)) from None


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


def step_view(step: dict) -> dict:
    """A step checkpoint as the run view shows it: its phase (``onFailure`` for the flow's failure
    handlers, whose ids are ``onFailure.<id>``) and, for a wait step parked for a signal, what it
    waits for since when and until when."""
    inputs = step.get("inputs")
    waiting = (step["status"] == "waiting" and isinstance(inputs, dict) and "signal" in inputs
               and "onTimeout" in inputs)
    return {**step, "phase": "onFailure" if step["step_id"].startswith("onFailure.") else "main",
            "waiting_for": {"signal": inputs["signal"], "since": iso(step["started_at"]),
                            "timeoutAt": iso(step["wake_at"])} if waiting else None}


class FlowRuns:
    """Routes under ``/flows/{id}``: execute, executions, cancel, retry, resolve, purge, metrics."""

    def __init__(self, db: dbmod.Database, vault: engine.Vault | None = None):
        self.db = db
        self.vault = vault

    def flow(self, req: falcon.Request, raw_id: str) -> dict:
        """The flow in the path, or 404."""
        return resources.get_or_404(self.db, SQL.flows.get, "Flow", org_id=req.context.org_id,
                                    id=parse_uuid(raw_id, "Flow"))

    def run(self, req: falcon.Request, flow: dict, raw_id: str, *, for_update: bool = False) -> dict:
        """One run of the flow, or 404."""
        query = SQL.runs.get_for_update if for_update else SQL.runs.get
        return resources.get_or_404(self.db, query, "Execution", org_id=req.context.org_id,
                                    flow_id=flow["id"], id=parse_uuid(raw_id, "Execution"))

    def queue(self, req: falcon.Request, flow: dict, *, version: int, variables: dict,
              key: str | None = None) -> dict:
        """Queue a run (or find the one an Idempotency-Key already made): the request's last query. The
        run records X-User-ID, and may use that user's connections only if this request may act as them."""
        return engine.queue_run(self.db, org_id=req.context.org_id, flow_id=flow["id"], version=version,
                                user_id=req.context.user_id, variables=variables, key=key,
                                acts_as_user=may_act_as(req, req.context.user_id))

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
        flow = self.flow(req, id)
        values = validate_body(_EXECUTE, data)
        run = self.queue(req, flow, version=flow["version"], variables=values["variables"], key=key)
        self.accepted(req, resp, flow, run)

    def on_get_executions(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """The flow's runs, newest first, one keyset page at a time."""
        flow = self.flow(req, id)
        resources.list_page(
            req, resp, _EXECUTIONS,
            lambda query, **page: self.db.all(SQL.runs.list, commit=True, org_id=req.context.org_id,
                                              flow_id=flow["id"], parent_id=query.get("parentExecutionId"),
                                              **page),
            many(_RUN),
        )

    def on_delete_executions(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Purge the flow's finished runs (and the engine's log rows of them): 409 while any is unfinished."""
        flow = self.flow(req, id)
        unfinished = self.db.scalar(SQL.runs.unfinished_count, org_id=req.context.org_id, flow_id=flow["id"])
        if unfinished:
            raise Conflict(f"{unfinished} execution(s) of this flow have not finished; cancel them first.")
        self.db.rowcount(SQL.runs.purge, commit=True, org_id=req.context.org_id, flow_id=flow["id"])
        resp.status = falcon.HTTP_204

    def on_get_execution(self, req: falcon.Request, resp: falcon.Response, id: str, execution_id: str) -> None:
        """One run with its step checkpoints."""
        flow = self.flow(req, id)
        run = self.run(req, flow, execution_id)
        steps = self.db.all(SQL.runs.steps, commit=True, org_id=req.context.org_id, run_id=run["id"],
                            run_created_at=run["created_at"])
        respond(resp, _DETAIL({**run, "steps": [step_view(step) for step in steps]}))

    def on_post_cancel(self, req: falcon.Request, resp: falcon.Response, id: str, execution_id: str) -> None:
        """Cancel: at once when queued, sleeping or waiting; within one heartbeat when running. The runs
        its subflow steps queued (and theirs) are cancelled with it (engine.cancel_run)."""
        flow = self.flow(req, id)
        with lifecycle_errors():
            run = engine.cancel_run(self.db, org_id=req.context.org_id, flow_id=flow["id"],
                                    run_id=parse_uuid(execution_id, "Execution"), user_id=req.context.user_id)
        resp.status = falcon.HTTP_202
        resp.media = _ACCEPTED(run)

    def on_post_retry(self, req: falcon.Request, resp: falcon.Response, id: str, execution_id: str) -> None:
        """A new run of the same plan that starts with the original's finished steps and sends the same
        Idempotency-Keys. One retry per run: retrying it again answers the same retry."""
        require_user(req)
        flow = self.flow(req, id)
        original = self.run(req, flow, execution_id)
        with lifecycle_errors():
            run = engine.retry_run(self.db, original, user_id=req.context.user_id,
                                   acts_as_user=may_act_as(req, req.context.user_id))
        self.accepted(req, resp, flow, run)

    def on_post_resolve(self, req: falcon.Request, resp: falcon.Response, id: str, execution_id: str,
                        step_id: str) -> None:
        """Say what became of a call whose outcome is unknown; the run goes on from there."""
        require_user(req)
        data = read_json(req)
        flow = self.flow(req, id)
        run_id = parse_uuid(execution_id, "Execution")
        try:
            values = validate_body(_RESOLVE, data)
        except ValidationFailed:
            # A run that is not there answers 404 before a wrong body does (docs/api.md, Order of checks).
            resources.get_or_404(self.db, SQL.runs.status_of, "Execution", org_id=req.context.org_id,
                                 flow_id=flow["id"], id=run_id)
            raise
        with lifecycle_errors():
            run = engine.resolve_step(self.db, self.vault, org_id=req.context.org_id, flow_id=flow["id"],
                                      run_id=run_id, step_id=step_id, user_id=req.context.user_id,
                                      outcome=values["outcome"], outputs=values.get("outputs"),
                                      message=values.get("message"))
        resp.status = falcon.HTTP_202
        resp.media = _ACCEPTED(run)

    def on_get_metrics(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Run counts by status, success rate and duration percentiles."""
        flow = self.flow(req, id)
        row = self.db.one(SQL.runs.metrics, commit=True, org_id=req.context.org_id, flow_id=flow["id"])
        breakdown = row["breakdown"]
        finished = sum(breakdown.get(s, 0) for s in FINISHED)
        resp.media = _METRICS({
            "totalExecutions": sum(breakdown.values()),
            "statusBreakdown": breakdown,
            "successRate": round(breakdown.get("completed", 0) / finished, 4) if finished else None,
            "p50Ms": row["p50_ms"],
            "p95Ms": row["p95_ms"],
        })
