"""``/flows/{id}/execute`` and ``/flows/{id}/executions``: runs of a flow over
HTTP (queue, list, read, cancel, retry, resolve an unknown outcome, move a parked
run to another version, purge) and
the flow's run metrics. A run is an "execution" in the API and a row of
``flow_runs`` (sql/runs.sql).

Executing only queues: the run (with its plan: the flow version and the actions
it calls, as they are now) and its first execution log are written in one
statement, and a worker (``tolstoy worker``) claims and runs it."""

from __future__ import annotations

import contextlib

import falcon
from marshmallow import fields, validate

from .. import engine, tracing
from ..db import database as dbmod
from ..db.queries import SQL
from ..fieldtypes import Base, JSONObject, PageQuery, StrictBoolean, Timestamp, text
from ..times import iso
from . import flows, resources
from .dumping import dumper
from .errors import Conflict, Constraints, NotFound, ValidationFailed, field_error
from .requests import parse_uuid, read_json, validate_body
from .responses import respond
from .routing import PAGE, PAGE_HEADERS, Route, Services, errors, json_content, path_id, tenant_params
from .tenancy import may_act_as, require_user

# What the database's constraints on flow_runs and flow_run_steps mean to a client (errors.Constraints).
CONSTRAINTS = Constraints(
    checks={"flow_runs_idempotency_key_length": "Idempotency-Key", "flow_runs_variables_object": "variables"},
    dependents={"flow_runs_flow_id_fkey": "executions (DELETE /flows/{id}/executions purges finished ones)",
        "flow_runs_flow_version_fkey": "executions", "flow_runs_user_id_fkey": "executions"},
    service=frozenset({"flow_run_steps_attempt_positive", "flow_run_steps_status", "flow_runs_lease_complete",
        "flow_runs_plan_object", "flow_runs_waiting_for_kind"}),
)


# The run view lists at most this many of a run's re-runs (the list filter has them all).
MAX_RERUNS_SHOWN = 50
MAX_STEPS = flows.MAX_STEPS


class ExecutionsQuery(PageQuery):
    """``GET /flows/{id}/executions``: a page, optionally only the children of one run, its re-runs, or
    only the runs parked for one reason."""

    parentExecutionId = fields.UUID(metadata={"description": "Only the runs this run's subflow steps queued."})
    rerunOf = fields.UUID(metadata={"description": "Only the runs re-run from this run."})
    waitingFor = fields.String(validate=validate.OneOf(engine.WAITING_KINDS), metadata={
        "description": "Only the runs parked for this reason (their waitingFor names it)."})


class ExecuteSchema(Base):
    """``POST /flows/{id}/execute``: the run's input."""

    variables = JSONObject(load_default=dict)


class RunStepSchema(Base):
    """One step checkpoint of a run."""

    step_id = fields.String(data_key="stepId", dump_only=True)
    status = fields.String(dump_only=True)
    attempt = fields.Integer(dump_only=True)
    inputs = fields.Raw(dump_only=True)
    outputs = fields.Raw(dump_only=True)
    error = fields.Raw(dump_only=True)
    wake_at = Timestamp(data_key="wakeAt", dump_only=True, allow_none=True)
    started_at = Timestamp(data_key="startedAt", dump_only=True)
    finished_at = Timestamp(data_key="finishedAt", dump_only=True, allow_none=True)
    duration_ms = fields.Integer(data_key="durationMs", dump_only=True, allow_none=True)
    child_execution_id = fields.UUID(data_key="childExecutionId", dump_only=True, allow_none=True,
                                     metadata={"description": "The run a subflow step queued; null otherwise."})
    phase = fields.String(dump_only=True, metadata={"description": "main, or onFailure for failure handlers."})
    waiting_for = fields.Dict(data_key="waitingFor", dump_only=True, allow_none=True,
                              metadata={"description": "A wait step parked for a signal: {signal, since, "
                                                       "timeoutAt} (signal: the name, or the names of a "
                                                       "signals wait); null otherwise."})


class RunSchema(Base):
    """A flow run (execution)."""

    id = fields.UUID(data_key="executionId", dump_only=True)
    org_id = fields.UUID(data_key="orgId", dump_only=True)
    flow_id = fields.UUID(data_key="flowId", dump_only=True)
    flow_version = fields.Integer(data_key="flowVersion", dump_only=True)
    user_id = fields.UUID(data_key="userId", dump_only=True, allow_none=True)
    status = fields.String(dump_only=True)
    variables = fields.Dict(dump_only=True)
    outputs = fields.Raw(dump_only=True)
    error = fields.Raw(dump_only=True)
    retry_of = fields.UUID(data_key="retryOf", dump_only=True, allow_none=True)
    rerun_of = fields.UUID(data_key="rerunOf", dump_only=True, allow_none=True,
                           metadata={"description": "The run this one re-runs from a step (POST …/rerun); null "
                                                    "otherwise."})
    parent_run_id = fields.UUID(data_key="parentExecutionId", dump_only=True, allow_none=True,
                                metadata={"description": "The run whose subflow step queued this one; null for "
                                                         "a top-level run."})
    parent_step_id = fields.String(data_key="parentStepId", dump_only=True, allow_none=True,
                                   metadata={"description": "The id of that subflow step."})
    created_at = Timestamp(data_key="createdAt", dump_only=True)
    started_at = Timestamp(data_key="startedAt", dump_only=True, allow_none=True)
    finished_at = Timestamp(data_key="finishedAt", dump_only=True, allow_none=True)
    waiting_for = fields.Dict(data_key="waitingFor", dump_only=True, allow_none=True, metadata={
        "description": "Why the run is parked, null when it is not: {signal: name or names}, {outcomeUnknown: "
                       "stepId}, {child: executionId}, {retry: stepId}, {delay: stepId}, {rateLimit: …} or {concurrency: "
                       "{key, limit} or {flowLimit}} (stepId null: the flow's limits; else that step's), each with "
                       "stepId, since and until (null when only an event ends the wait)."})


class RunDetailSchema(RunSchema):
    """A run with its step checkpoints."""

    steps = fields.List(fields.Nested(RunStepSchema), dump_only=True)
    reruns = fields.List(fields.UUID(), dump_only=True, metadata={
        "description": f"The ids of the runs re-run from this one, newest first: at most {MAX_RERUNS_SHOWN} "
                       "(all of them: GET /flows/{id}/executions?rerunOf=<executionId>)."})


class RunAcceptedSchema(Base):
    """202 body of execute, retry and rerun."""

    id = fields.UUID(data_key="executionId", dump_only=True)
    flow_id = fields.UUID(data_key="flowId", dump_only=True)
    flow_version = fields.Integer(data_key="flowVersion", dump_only=True)
    status = fields.String(dump_only=True)
    retry_of = fields.UUID(data_key="retryOf", dump_only=True, allow_none=True)
    rerun_of = fields.UUID(data_key="rerunOf", dump_only=True, allow_none=True)


class RerunStepSchema(Base):
    """A step's new config in a re-run."""

    config = JSONObject(required=True, metadata={"description": "Checked as a flow's save checks it."})


class RerunSchema(Base):
    """``POST …/executions/{executionId}/rerun``: which step to run again from, and what to change."""

    fromStep = fields.String(required=True, validate=validate.Length(1, 1200), metadata={
        "description": "A step id (charge), one item of a foreach step (each[7]), or a step of a subflow step's "
                       "child run (call/charge; deeper: a/b/c)."})
    variables = JSONObject(metadata={"description": "The new run's variables (default: the run's)."})
    steps = fields.Dict(keys=fields.String(validate=validate.Length(1, 1200)), values=fields.Nested(RerunStepSchema),
                        validate=validate.Length(max=MAX_STEPS),
                        metadata={"description": "New configs by step id (or path into a child: call/charge)."})
    version = fields.Integer(strict=True, validate=validate.Range(1, 2_147_483_647),
                             metadata={"description": "Another version of the flow to take the steps of."})
    dryRun = StrictBoolean(load_default=False, metadata={"description": "Answer the preview; write nothing."})


class RerunCallSchema(Base):
    """One call a re-run would send again."""

    stepId = fields.String(dump_only=True)
    kind = fields.String(dump_only=True)
    tool = fields.String(dump_only=True, allow_none=True)
    method = fields.String(dump_only=True, allow_none=True)
    url = fields.String(dump_only=True, allow_none=True, metadata={
        "description": "Rendered where it reads nothing that runs again, else with its templates; never a "
                       "credential (added only on the wire)."})
    notIdempotent = fields.Boolean(dump_only=True, allow_none=True, metadata={
        "description": "Neither its method nor its tool (honorsIdempotencyKey) makes sending it twice harmless."})
    dataDependent = fields.Boolean(dump_only=True, metadata={
        "description": "Its URL, body, executeIf or foreach list reads a step that runs again: the preview "
                       "cannot know it exactly."})


class RerunPreviewSchema(Base):
    """200 body of a dry run: what the re-run would keep, run again and send again."""

    dryRun = fields.Boolean(dump_only=True)
    rerunOf = fields.UUID(dump_only=True)
    fromStep = fields.String(dump_only=True)
    flowVersion = fields.Integer(dump_only=True)
    keep = fields.List(fields.String(), dump_only=True, metadata={
        "description": "Steps that keep their recorded outputs (not executed)."})
    runAgain = fields.List(fields.String(), dump_only=True)
    calls = fields.List(fields.Nested(RerunCallSchema), dump_only=True)
    idempotencyKeys = fields.String(dump_only=True)


class ResolveSchema(Base):
    """``POST …/steps/{stepId}/resolve``: what became of a call whose outcome was unknown."""

    outcome = fields.String(required=True, validate=validate.OneOf(("succeeded", "failed", "retry")))
    outputs = fields.Raw(allow_none=True, metadata={"description": "What the step returned (with succeeded)."})
    message = fields.String(validate=validate.Length(max=2000), allow_none=True,
                            metadata={"description": "Why (with failed); kept in the step's error."})


# A move names at most this many checkpoints to discard (a flow has at most a few hundred steps).
MAX_DROP_STEPS = 1000


class MoveSchema(Base):
    """``POST …/executions/{executionId}/move``: the version a parked run moves to."""

    version = fields.Integer(required=True, strict=True, validate=validate.Range(1, 2_147_483_647),
                             metadata={"description": "A version of the run's flow (GET /flows/{id}/versions)."})
    dryRun = StrictBoolean(load_default=False, metadata={
        "description": "true: answer the diff and write nothing."})
    dropSteps = fields.List(text(1, 200), load_default=list, validate=validate.Length(max=MAX_DROP_STEPS), metadata={
        "description": "Step ids whose recorded checkpoints the move may discard: steps the version removes, and "
                       "kept steps whose output no longer fits (they run again)."})


class MoveStepSchema(Base):
    """A step in a move's diff, with what the run recorded of it (null: nothing)."""

    stepId = fields.String(dump_only=True)
    status = fields.String(dump_only=True, allow_none=True)


class MoveChangedSchema(Base):
    """A step of both versions whose definition differs, and which of its fields do."""

    stepId = fields.String(dump_only=True)
    fields_ = fields.List(fields.String(), data_key="fields", attribute="fields", dump_only=True)


class MoveUnfitSchema(Base):
    """A step with a checkpoint whose target (kind; action, method, endpoint and tool; URL; subflow) differs."""

    stepId = fields.String(dump_only=True)
    status = fields.String(dump_only=True)
    was = fields.Dict(dump_only=True, metadata={"description": "What the step called (its kind, action, URL, flow)."})
    now = fields.Dict(dump_only=True, metadata={"description": "What it calls in the version moved to."})


class MoveDiffSchema(Base):
    """What moving a parked run to a version changes (docs/flows.md, Moving a parked run)."""

    fromVersion = fields.Integer(dump_only=True)
    toVersion = fields.Integer(dump_only=True)
    parked = fields.List(fields.String(), dump_only=True, metadata={"description": "The steps the run is parked on."})
    added = fields.List(fields.String(), dump_only=True)
    removed = fields.List(fields.Nested(MoveStepSchema), dump_only=True)
    changed = fields.List(fields.Nested(MoveChangedSchema), dump_only=True)
    kept = fields.List(fields.Nested(MoveStepSchema), dump_only=True, metadata={
        "description": "Steps of both versions with a checkpoint: kept as recorded (unless dropped)."})
    outputNoLongerFits = fields.List(fields.Nested(MoveUnfitSchema), dump_only=True)
    mustDrop = fields.List(fields.String(), dump_only=True, metadata={
        "description": "Checkpoints the move would discard that dropSteps does not name: the move is refused (409)."})
    dropped = fields.List(fields.String(), dump_only=True, metadata={
        "description": "Checkpoints discarded (dropSteps): removed steps, and kept ones that run again."})
    wakes = fields.Boolean(dump_only=True, metadata={
        "description": "Every parked step is dropped: the run goes on at once."})


class MovedSchema(Base):
    """200 body of a move (or its dry run)."""

    moved = fields.Boolean(dump_only=True, metadata={"description": "false for a dry run."})
    dryRun = fields.Boolean(dump_only=True)
    id = fields.UUID(data_key="executionId", dump_only=True)
    flow_id = fields.UUID(data_key="flowId", dump_only=True)
    flow_version = fields.Integer(data_key="flowVersion", dump_only=True)
    status = fields.String(dump_only=True)
    diff = fields.Nested(MoveDiffSchema, dump_only=True)


class MoveRefusedSchema(Base):
    """409 body of a refused move: the error, and the diff when checkpoints would be discarded."""

    statusCode = fields.Integer(dump_only=True)
    error = fields.String(dump_only=True)
    message = fields.String(dump_only=True)
    diff = fields.Nested(MoveDiffSchema, dump_only=True, metadata={
        "description": "Present when checkpoints would be discarded (its mustDrop names them)."})


class FlowMetricsSchema(Base):
    """``GET /flows/{id}/metrics``."""

    totalExecutions = fields.Integer(dump_only=True)
    statusBreakdown = fields.Dict(keys=fields.String(), values=fields.Integer(), dump_only=True)
    successRate = fields.Float(dump_only=True, allow_none=True,
                               metadata={"description": "completed / finished runs; null before any finished."})
    p50Ms = fields.Float(dump_only=True, allow_none=True)
    p95Ms = fields.Float(dump_only=True, allow_none=True)


_ACCEPTED = dumper(RunAcceptedSchema())
_PREVIEW = dumper(RerunPreviewSchema())
_RERUN = RerunSchema()
_RUN = dumper(RunSchema())
_DETAIL = dumper(RunDetailSchema())
_METRICS = dumper(FlowMetricsSchema())
_EXECUTE = ExecuteSchema()
_PAGE = PageQuery()
_EXECUTIONS = ExecutionsQuery()
# What the preview says of the keys of the calls a re-run sends (docs/flows.md, Re-running from a step).
NEW_KEYS = ("new: a re-run is a run of its own (its root is itself), so each call it sends is a new effect under a "
            "new Idempotency-Key, also to a tool that honours keys")
# The statuses a run ends in (a step's own are the engine's).
FINISHED_RUN_STATUSES = ("completed", "failed", "cancelled")
_RESOLVE = ResolveSchema()
_MOVE = MoveSchema()
_MOVED = dumper(MovedSchema())


class MoveConflict(Conflict):
    """409 for a move that would discard checkpoints nobody named: the body carries the diff."""

    def __init__(self, message: str, diff: dict):
        super().__init__(message)
        self.extra = {"diff": dumper(MoveDiffSchema())(diff)}


@contextlib.contextmanager
def lifecycle_errors():
    """The engine's refusals of a run's state change, as HTTP: 404, 409, 410 (an approval link used), 503."""
    try:
        yield
    except engine.NoSuchRun as exc:
        raise NotFound(exc.noun) from None
    except engine.MoveRefused as exc:
        raise MoveConflict(str(exc), exc.diff) from None
    except engine.RunStateConflict as exc:
        raise Conflict(str(exc)) from None
    except engine.BadMoveRequest as exc:
        raise field_error(exc.field, str(exc)) from None
    except engine.LinkUsed as exc:
        raise falcon.HTTPGone(title="Link used", description=str(exc)) from None
    except engine.NoKeyToSeal as exc:
        raise falcon.HTTPServiceUnavailable(description=str(exc)) from None
    except engine.RerunRefused as exc:
        raise field_error(exc.field, exc.message) from None
    except engine.ConcurrencyKeyRefused as exc:
        raise field_error(exc.field, str(exc)) from None


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


def run_view(run: dict) -> dict:
    """A run row as the API shows it: with why it is parked (engine.waiting_for)."""
    return {**run, "waiting_for": engine.waiting_for(run)}


def step_view(step: dict) -> dict:
    """A step checkpoint as the run view shows it: its phase (``onFailure`` for the flow's failure
    handlers, whose ids are ``onFailure.<id>``) and, for a wait step parked for a signal, what it
    waits for since when and until when."""
    inputs = step.get("inputs")
    waiting = (step["status"] == "waiting" and isinstance(inputs, dict) and "onTimeout" in inputs
               and ("signal" in inputs or "signals" in inputs))
    return {**step, "phase": "onFailure" if step["step_id"].startswith("onFailure.") else "main",
            "waiting_for": {"signal": inputs.get("signal", inputs.get("signals")), "since": iso(step["started_at"]),
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
        with lifecycle_errors():
            return engine.queue_run(self.db, org_id=req.context.org_id, flow_id=flow["id"], version=version,
                                    user_id=req.context.user_id, variables=variables, key=key,
                                    acts_as_user=may_act_as(req, req.context.user_id),
                                    concurrency=flow.get("concurrency"), trace_parent=tracing.caller(req))

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
                                              waiting_for=query.get("waitingFor"),
                                              rerun_of=query.get("rerunOf"), **page),
            lambda rows: [_RUN(run_view(run)) for run in rows],
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
        steps = self.db.all(SQL.runs.steps, org_id=req.context.org_id, run_id=run["id"],
                            run_created_at=run["created_at"])
        reruns = self.db.all(SQL.runs.reruns, commit=True, org_id=req.context.org_id, id=run["id"],
                             limit=MAX_RERUNS_SHOWN)
        respond(resp, _DETAIL({**run_view(run), "steps": [step_view(step) for step in steps],
                               "reruns": [r["id"] for r in reruns]}))

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
                                   acts_as_user=may_act_as(req, req.context.user_id),
                                   concurrency=flow.get("concurrency"), trace_parent=tracing.caller(req))
        self.accepted(req, resp, flow, run)

    def on_post_rerun(self, req: falcon.Request, resp: falcon.Response, id: str, execution_id: str) -> None:
        """Run a finished run again from a step (202 with the new run), or with ``dryRun`` say what that
        would keep, run again and send again (200, nothing written)."""
        require_user(req)
        key = idempotency_key(req)
        data = read_json(req)
        flow = self.flow(req, id)
        original = self.run(req, flow, execution_id)
        values = validate_body(_RERUN, data, writable=frozenset({"version"}))
        changes = {sid: change["config"] for sid, change in (values.get("steps") or {}).items()}
        with lifecycle_errors():
            answer = engine.rerun_run(
                self.db, original, values["fromStep"], user_id=req.context.user_id,
                acts_as_user=may_act_as(req, req.context.user_id), variables=values.get("variables"),
                changes=changes, version=values.get("version"), key=key, dry_run=values["dryRun"],
                check=lambda field, step: flows.check_step(self.db, req, field, step),
                concurrency=flow.get("concurrency"), trace_parent=tracing.caller(req))
        if values["dryRun"]:
            respond(resp, _PREVIEW({"dryRun": True, **answer, "idempotencyKeys": NEW_KEYS}))
            return
        self.accepted(req, resp, flow, answer)

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

    def on_post_move(self, req: falcon.Request, resp: falcon.Response, id: str, execution_id: str) -> None:
        """Move a parked run to another version of its flow (or, with dryRun, say what that would do)."""
        require_user(req)
        data = read_json(req)
        flow = self.flow(req, id)
        run_id = parse_uuid(execution_id, "Execution")
        try:
            # "version" names the version to move to here, not the read-only version of a record.
            values = validate_body(_MOVE, data, writable=frozenset({"version"}))
        except ValidationFailed:
            # A run that is not there answers 404 before a wrong body does (docs/api.md, Order of checks).
            resources.get_or_404(self.db, SQL.runs.status_of, "Execution", org_id=req.context.org_id,
                                 flow_id=flow["id"], id=run_id)
            raise
        with lifecycle_errors():
            answer = engine.move_run(self.db, org_id=req.context.org_id, flow_id=flow["id"], run_id=run_id,
                                     version=values["version"], user_id=req.context.user_id,
                                     drop_steps=values["dropSteps"], dry_run=values["dryRun"])
        resp.media = _MOVED({**answer["run"], "moved": answer["moved"], "dryRun": values["dryRun"],
                             "diff": answer["diff"]})

    def on_get_metrics(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Run counts by status, success rate and duration percentiles."""
        flow = self.flow(req, id)
        row = self.db.one(SQL.runs.metrics, commit=True, org_id=req.context.org_id, flow_id=flow["id"])
        breakdown = row["breakdown"]
        finished = sum(breakdown.get(s, 0) for s in FINISHED_RUN_STATUSES)
        resp.media = _METRICS({
            "totalExecutions": sum(breakdown.values()),
            "statusBreakdown": breakdown,
            "successRate": round(breakdown.get("completed", 0) / finished, 4) if finished else None,
            "p50Ms": row["p50_ms"],
            "p95Ms": row["p95_ms"],
        })


def _runs(s: Services) -> FlowRuns:
    return FlowRuns(s.db, s.vault)


# Parameters of the routes below a flow's runs (signals.py uses them too).
FLOW_PARAMS = [*tenant_params(), path_id()]
ACTING_PARAMS = [*tenant_params(user_required=True), path_id()]
EXECUTION_PARAM = path_id("executionId")
IDEMPOTENCY_PARAM = {"name": "Idempotency-Key", "in": "header", "required": False,
                     "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                     "description": "Repeating a key returns the run it first created."}
_ACCEPTED_202 = {"202": {"description": "Queued; follow it at Location.",
                         "headers": {"Location": "Location"}, "content": json_content("RunAccepted")}}
SCHEMAS = {"Execute": ExecuteSchema, "RunStep": RunStepSchema, "Run": RunSchema, "RunDetail": RunDetailSchema,
           "RunAccepted": RunAcceptedSchema, "Resolve": ResolveSchema, "FlowMetrics": FlowMetricsSchema,
           "Rerun": RerunSchema,
           "RerunPreview": RerunPreviewSchema,
           "Move": MoveSchema, "Moved": MovedSchema, "MoveRefused": MoveRefusedSchema}
ROUTES = (
    Route("/flows/{id}/execute", _runs, "execute", operations={"post": {
        "tags": ["Executions"], "summary": "Queue a run of the flow's current version",
        "parameters": ACTING_PARAMS + [IDEMPOTENCY_PARAM],
        "requestBody": {"required": True, "content": json_content("Execute")},
        "responses": {**_ACCEPTED_202, **errors("400", "404", "413", "415")}}}),
    Route("/flows/{id}/executions", _runs, "executions", operations={
        "get": {"tags": ["Executions"], "summary": "The flow's runs, newest first",
                "parameters": FLOW_PARAMS + [*PAGE, {
                    "name": "parentExecutionId", "in": "query", "required": False,
                    "schema": {"type": "string", "format": "uuid"},
                    "description": "Only the runs this run's subflow steps queued."}, {
                    "name": "rerunOf", "in": "query", "required": False,
                    "schema": {"type": "string", "format": "uuid"},
                    "description": "Only the runs re-run from this run."}],
                "responses": {"200": {"description": "One page.", "headers": PAGE_HEADERS,
                                      "content": json_content("Run", many=True)}, **errors("400", "404")}},
        "delete": {"tags": ["Executions"],
                   "summary": "Purge the flow's finished runs and the engine's log rows of them",
                   "parameters": FLOW_PARAMS,
                   "responses": {"204": {"description": "Purged."},
                                 "409": {"description": "Some runs have not finished (cancel them first).",
                                         "content": json_content("Error")},
                                 **errors("400", "404")}}}),
    Route("/flows/{id}/executions/{execution_id}", _runs, "execution", operations={"get": {
        "tags": ["Executions"], "summary": "One run with its step checkpoints",
        "parameters": FLOW_PARAMS + [EXECUTION_PARAM],
        "responses": {"200": {"description": "The run.", "content": json_content("RunDetail")},
                      **errors("400", "404")}}}),
    Route("/flows/{id}/executions/{execution_id}/cancel", _runs, "cancel", operations={"post": {
        "tags": ["Executions"], "summary": "Cancel (now if queued or sleeping, else at the next step)",
        "parameters": FLOW_PARAMS + [EXECUTION_PARAM],
        "responses": {"202": {"description": "Cancelled or cancelling.", "content": json_content("RunAccepted")},
                      **errors("400", "404", "409")}}}),
    Route("/flows/{id}/executions/{execution_id}/retry", _runs, "retry", operations={"post": {
        "tags": ["Executions"], "summary": "Run a failed or cancelled run again from its failed step",
        "parameters": ACTING_PARAMS + [EXECUTION_PARAM],
        "responses": {**_ACCEPTED_202, **errors("400", "404", "409")}}}),
    Route("/flows/{id}/executions/{execution_id}/rerun", _runs, "rerun", operations={"post": {
        "tags": ["Executions"],
        "summary": "Run a finished run again from a step (its calls are new effects), or preview it (dryRun)",
        "parameters": ACTING_PARAMS + [EXECUTION_PARAM, IDEMPOTENCY_PARAM],
        "requestBody": {"required": True, "content": json_content("Rerun")},
        "responses": {"200": {"description": "dryRun: what it would keep, run again and send again; nothing "
                                             "written.", "content": json_content("RerunPreview")},
                      **_ACCEPTED_202, **errors("400", "404", "409", "413", "415")}}}),
    Route("/flows/{id}/executions/{execution_id}/steps/{step_id}/resolve", _runs, "resolve", operations={"post": {
        "tags": ["Executions"],
        "summary": "Say what became of a call whose outcome is unknown; the run goes on",
        "parameters": ACTING_PARAMS + [EXECUTION_PARAM, {"name": "stepId", "in": "path", "required": True,
                                                         "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": json_content("Resolve")},
        "responses": {**_ACCEPTED_202, **errors("400", "404", "409", "413", "415")}}}),
    Route("/flows/{id}/executions/{execution_id}/move", _runs, "move", operations={"post": {
        "tags": ["Executions"],
        "summary": "Move a parked run to another version of its flow (dryRun: only the diff)",
        "parameters": ACTING_PARAMS + [EXECUTION_PARAM],
        "requestBody": {"required": True, "content": json_content("Move")},
        "responses": {"200": {"description": "Moved (or, with dryRun, what moving would do).",
                              "content": json_content("Moved")},
                      "409": {"description": "Not parked; or checkpoints would be discarded that dropSteps does "
                                             "not name (the body carries the diff).",
                              "content": json_content("MoveRefused")},
                      **errors("400", "404", "413", "415")}}}),
    Route("/flows/{id}/metrics", _runs, "metrics", operations={"get": {
        "tags": ["Executions"], "summary": "Run counts, success rate and duration percentiles",
        "parameters": FLOW_PARAMS,
        "responses": {"200": {"description": "Metrics.", "content": json_content("FlowMetrics")},
                      **errors("400", "404")}}}),
)
