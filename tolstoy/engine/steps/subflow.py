"""``subflow``: the step queues a run of another flow of the organization (named by ``flowId`` or
``flowKey``; its ``version``, or its version at that moment) with ``variables``, and with ``wait``
(the default) parks its run until the child ends, then takes the child's outputs as its output.
Finding or queueing the child and parking are one statement with the checkpoint (tolstoy_subflow),
so a resumed step finds its child instead of queueing another. A foreach step cannot run it per
item."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ... import metrics
from ...redaction import mask_json
from ..errors import StepFailed
from .kind import Kind, Outcome, Site

if TYPE_CHECKING:
    from ...redaction import Hidden
    from ..runner import Engine, Run

log = logging.getLogger("tolstoy.engine")
# How deep sub-flows may nest (TOLSTOY_SUBFLOW_MAX_DEPTH): a run started by execute is at depth 0.
SUBFLOW_MAX_DEPTH = 10


def config() -> type:
    """The schema of its config, for the API (marshmallow is imported here: a worker never loads it)."""
    from marshmallow import ValidationError, fields, validate, validates_schema

    from ...fieldtypes import Base, StrictBoolean, json_or_template, key_field

    class SubflowStepConfig(Base):
        """``subflow``: queue a run of another flow of the organization, named by ``flowId`` or ``flowKey`` (its
        ``version``, or its version at that moment) with ``variables`` (templates), and with ``wait`` take its
        outputs as this step's output."""

        flowId = fields.UUID(metadata={"description": "A flow of the same organization (this or flowKey)."})
        flowKey = key_field("The key of a flow of the same organization (this or flowId), resolved to the flow when "
                            "the step runs.")
        version = fields.Integer(strict=True, allow_none=True, validate=validate.Range(1, 2_147_483_647))
        variables = fields.Raw(load_default=dict, validate=json_or_template(
            dict, "Must be a JSON object, or a template (at most 2000 characters) that renders to one."))
        wait = StrictBoolean(load_default=True)

        @validates_schema
        def _one_flow_reference(self, data, **kwargs):
            if "flowId" in data and "flowKey" in data:
                raise ValidationError("Name the flow by flowId or by flowKey, not both.", "flowKey")
            if "flowId" not in data and "flowKey" not in data:
                raise ValidationError("Missing data for required field (flowId or flowKey).", "flowId")

    return SubflowStepConfig


def run(engine: Engine, run: Run, site: Site, step: dict, attempt: int, checkpoint: dict | None,
        config: dict, tree: Hidden = None) -> Outcome:
    """A subflow step: one statement writes the pending checkpoints, finds the child run this step
    queued before or queues it (pinned to ``version``, or the flow's version now), and, with ``wait``,
    parks this run until the child ends (the child's end queues it again; no thread is held). The
    output is ``{executionId}`` without ``wait``, else the child's outputs; a failed or cancelled
    child fails the step."""
    sid = step["id"]
    wait = config.get("wait", True) is not False
    variables = config.get("variables")
    variables = {} if variables is None else variables
    flow_key = config.get("flowKey")
    named = {"flowKey": flow_key} if flow_key is not None else {"flowId": config.get("flowId")}
    shown = mask_json(run.conceal({**named, "version": config.get("version"), "wait": wait,
                                   "variables": variables}, tree),
                      run.secrets)
    if not isinstance(variables, dict):
        return engine.fail(run, step, attempt, shown, StepFailed(
            f"subflow variables must be a JSON object, not {type(variables).__name__}"), 0)
    if shown["variables"] != variables:
        # A run's variables are stored and shown as they are: a secret passed on would be in clear.
        return engine.fail(run, step, attempt, shown, StepFailed(
            "subflow variables would carry a secret (a credential, or a secret-named output such as "
            "access_token) into the child run, whose variables are stored and shown in clear; let the "
            "child call the tool with its credential instead", details={"name": "SecretInVariables"},
            own_words=True), 0)
    if checkpoint is None or checkpoint["status"] not in ("waiting", "running"):
        run.writes.event(sid, "started", inputs=shown)
    run.writes.step(step_id=sid, status="waiting" if wait else "running", attempt=attempt, inputs=shown)
    # A flowKey is resolved to its flow in the subflow statement itself (sql/runs.sql).
    spec = {"step_id": sid, "flow_id": None if flow_key is not None else str(config.get("flowId")),
            "flow_key": None if flow_key is None else str(flow_key), "version": config.get("version"),
            "variables": variables, "wait": wait, "max_depth": engine.subflow_max_depth}
    answer = engine.checkpoint(run, subflow=spec) or {}
    if answer.get("cancel"):
        engine.boundary(run)  # finishes the run as cancelled
    if answer.get("waitingFor"):
        # The child an earlier run of this retry chain started at this step is still under way: this
        # run waits for its end (which wakes it), then continues that child's chain; never a second child.
        metrics.count_run("waiting")
        log.info("waiting for the child run of an earlier run of the chain",
                 extra={"execution_id": str(run.id), "step_id": sid, "child_execution_id": answer["waitingFor"]})
        return "paused", None
    if answer.get("error"):
        error = answer["error"]
        if flow_key is not None and answer.get("flowId") is None and error.get("name") == "SubflowNotFound":
            error = {"name": "SubflowNotFound",
                     "message": f"No flow with key {flow_key!r} in this organization (any more)."}
        return engine.fail(run, step, attempt, shown, StepFailed(error["message"], details={
            "name": error.get("name", "SubflowFailed")}), 0)
    child = answer["child"]
    if answer.get("created"):
        metrics.count_run("queued")
        metrics.count_child_run("wait" if wait else "nowait")
        log.info("child run queued", extra={"execution_id": str(run.id), "step_id": sid,
                                            "child_execution_id": child["id"]})
    if not wait:
        return engine.complete(run, step, attempt, {"executionId": child["id"]}, shown, 0)
    if answer.get("parked"):
        metrics.count_run("waiting")
        return "paused", None
    if child["status"] == "completed":
        outputs = dict(child.get("outputs") or {})
        for child_step, sealed in (child.get("sealed") or {}).items():
            outputs[child_step] = engine.tools.unseal(run.org_id, sealed)
        # What the child hid (its masked outputs) stays hidden: this run may not know its secrets.
        return engine.complete(run, step, attempt, outputs, shown, 0, child.get("outputs") or {})
    error = child.get("error") or {}
    message = error.get("message") if isinstance(error, dict) else None
    verb = "was cancelled" if child["status"] == "cancelled" else "failed"
    return engine.fail(run, step, attempt, shown, StepFailed(
        f"Sub-flow execution {child['id']} {verb}: {message or child['status']}",
        details={"name": "SubflowFailed", "childExecutionId": child["id"], "childError": error}), 0)

# ---- foreach ------------------------------------------------------------------------


KIND = Kind(run, config=config)
