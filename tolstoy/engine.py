"""The flow engine: runs one claimed flow run step by step, checkpointing each
step in flow_run_steps and logging it in execution_logs before the next starts.

A run is resumable at any point: finished checkpoints are never run again; a
step that was started but not finished (the worker died) runs again with the
same attempt number, so the Idempotency-Key it sends is the same; delays and
retry back-offs put the run back in the queue instead of holding a worker.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import jsonschema
from referencing.exceptions import Unresolvable

from . import db as dbmod
from . import logs, metrics
from .credentials import TokenCache, Vault, VaultError, auth_headers, secret_values
from .outbound import Outbound, OutboundError, Reply, mask_secrets, retryable_status
from .queries import SQL
from .schemas import dependencies
from .templates import TemplateFailure, condition, render

log = logging.getLogger("tolstoy.engine")

RUN_STEP_KEY = "$flow"  # execution log rows about the run itself (not a valid step id)
DEFAULT_TIMEOUT_MS = 30000
FINISHED = ("completed", "skipped", "failed")


class StepFailed(Exception):
    """A step failed; ``retryable`` failures are tried again per the step's retryPolicy."""

    def __init__(self, message: str, *, retryable: bool = False, details: dict | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.details = details or {}

    def as_error(self) -> dict:
        """The error as stored and shown: ``{name, message, …}``."""
        return {"name": type(self).__name__, "message": str(self), **self.details}


class SkipStep(Exception):
    """The step's action has an ``executeIf`` that is false for these inputs."""


class LeaseLost(Exception):
    """Another worker owns the run now; stop touching it."""


class Stop(Exception):
    """This worker is shutting down: hand the run back at the step boundary."""


def utcnow() -> dt.datetime:
    """Timezone-aware now, for wake-up times."""
    return dt.datetime.now(dt.timezone.utc)


def step_order(steps: list[dict]) -> list[dict]:
    """Steps in a dependency-respecting order; independent steps keep the list's order."""
    ids = [s["id"] for s in steps]
    deps = {s["id"]: set(dependencies(steps, i)) for i, s in enumerate(steps)}
    done: list[str] = []
    remaining = list(ids)
    while remaining:
        ready = next(i for i in remaining if deps[i] <= set(done))  # validated acyclic on write
        done.append(ready)
        remaining.remove(ready)
    by_id = {s["id"]: s for s in steps}
    return [by_id[i] for i in done]


def backoff_ms(policy: dict, attempt: int) -> int:
    """Wait before attempt ``attempt + 1``: fixed delayMs, or delayMs doubled per failed attempt."""
    delay = int(policy.get("delayMs", 1000))
    if policy.get("backoffStrategy", "exponential") == "exponential":
        return delay * (2 ** (attempt - 1))
    return delay


def fill_endpoint(endpoint: str, inputs: dict) -> tuple[str, dict]:
    """Put ``{name}`` path parameters from inputs into the endpoint; returns (path, unused inputs)."""
    rest = dict(inputs)
    path = endpoint
    for name in list(rest):
        token = "{" + name + "}"
        if token in path:
            path = path.replace(token, quote(str(rest.pop(name)), safe=""))
    if "{" in path and "}" in path:
        missing = path[path.index("{") + 1:path.index("}")]
        raise StepFailed(f"Input {missing!r} is needed to build the endpoint {endpoint}")
    return path, rest


@dataclass
class ToolCall:
    """A request to a tool, built from an action and its inputs."""

    method: str
    url: str
    headers: dict
    params: dict | None
    body: Any
    secrets: list = field(default_factory=list)
    secret_headers: list = field(default_factory=list)  # dropped when a redirect leaves the origin


class Engine:
    """Executes runs claimed by a worker (and single action calls for the API)."""

    def __init__(self, db: dbmod.Database, http: Outbound, vault: Vault | None, worker_id: str,
                 stopping: threading.Event | None = None):
        self.db = db
        self.http = http
        self.vault = vault
        self.worker_id = worker_id
        self.stopping = stopping or threading.Event()
        self.tokens = TokenCache()

    # ---- tools ------------------------------------------------------------------

    def credential(self, org_id, tool_id) -> tuple[dict | None, dict | None]:
        """The tool's default credential and its decrypted config (None, None without one)."""
        row = self.db.one(SQL.tool_credentials.get_default, org_id=org_id, tool_id=tool_id)
        if row is None:
            return None, None
        if self.vault is None:
            raise StepFailed("TOLSTOY_ENCRYPTION_KEY is not set, so tool credentials cannot be read")
        try:
            return row, self.vault.decrypt(row["secret"])
        except VaultError as exc:
            raise StepFailed(str(exc)) from None

    def find_action(self, org_id, config: dict) -> dict:
        """The action a step names by actionId or actionKey, in the run's organization."""
        if config.get("actionId"):
            action = self.db.one(SQL.actions.get, org_id=org_id, id=config["actionId"])
        else:
            action = self.db.one(SQL.actions.get_by_key, org_id=org_id, key=config.get("actionKey"))
        if action is None:
            raise StepFailed("The action this step names no longer exists")
        return action

    def build_call(self, org_id, action: dict, inputs: dict, context: dict | None = None) -> ToolCall:
        """Validate inputs, then build the request: base URL + endpoint, auth, query or JSON body."""
        if action.get("input_schema"):
            problems = input_errors(action["input_schema"], inputs)
            if problems:
                raise StepFailed("Inputs do not match the action's inputSchema",
                                 details={"errors": problems})
        tool = self.db.one(SQL.tools.get, org_id=org_id, id=action["tool_id"])
        path, rest = fill_endpoint(action["endpoint"], inputs)
        headers = {"Accept": "application/json"}
        if action.get("headers"):
            try:
                rendered = render(action["headers"], context) if context else action["headers"]
            except TemplateFailure as exc:
                raise StepFailed(f"Template error in the action's headers: {exc}") from None
            headers.update({name: str(value) for name, value in rendered.items()})
        secrets: list = []
        if tool["auth_type"] != "none":
            credential, config = self.credential(org_id, tool["id"])
            if credential is None:
                raise StepFailed(f"Tool {tool['name']!r} uses {tool['auth_type']} but has no credential")
            try:
                injected = auth_headers(credential, config, self.http, self.tokens)
            except OutboundError as exc:
                raise StepFailed(str(exc), retryable=exc.retryable) from None
            headers.update(injected)
            secrets = secret_values(credential["type"], config)
            # What the headers carry is secret too: Basic's base64 pair, a fetched OAuth2 token.
            for value in injected.values():
                secrets += [value, value.split(" ", 1)[-1]]
        url = tool["base_url"].rstrip("/") + path
        credential_headers = list(injected) if tool["auth_type"] != "none" else []
        if action["method"] in ("GET", "DELETE"):
            return ToolCall(action["method"], url, headers, {k: _query_value(v) for k, v in rest.items()} or None,
                            None, secrets, credential_headers)
        return ToolCall(action["method"], url, headers, None, rest, secrets, credential_headers)

    def send(self, call: ToolCall, timeout_ms: int, idempotency_key: str | None) -> Reply:
        """Make the call; OutboundError becomes StepFailed."""
        headers = dict(call.headers)
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        try:
            return self.http.request(call.method, call.url, headers=headers, params=call.params,
                                     json_body=call.body, timeout_ms=timeout_ms,
                                     secret_headers=call.secret_headers)
        except OutboundError as exc:
            raise StepFailed(str(exc), retryable=exc.retryable) from None

    # ---- steps ------------------------------------------------------------------

    def execute_step(self, org_id, step: dict, inputs: dict, context: dict, key: str) -> tuple[Any, list]:
        """Run one step whose config is already rendered; returns (output, secrets to scrub from logs)."""
        kind = step["type"]
        timeout = step.get("timeoutMs") or DEFAULT_TIMEOUT_MS
        if kind == "transform":
            return inputs["output"], []
        if kind == "action":
            action = self.find_action(org_id, step["config"])
            if isinstance(action.get("execute_if"), str):
                try:
                    if not condition(action["execute_if"], {**context, "inputs": inputs.get("inputs") or {}}):
                        raise SkipStep()
                except TemplateFailure as exc:
                    raise StepFailed(f"Template error in the action's executeIf: {exc}") from None
            call = self.build_call(org_id, action, inputs.get("inputs") or {}, context)
        elif kind == "http_request":
            call = ToolCall(inputs["method"], inputs["url"], dict(inputs.get("headers") or {}), None,
                            inputs.get("body"))
        else:
            raise StepFailed(f"Unknown step type {kind!r}")
        try:
            return checked(self.send(call, timeout, key)), call.secrets
        except StepFailed as exc:
            exc.details = mask_secrets(exc.details, call.secrets)
            raise

    # ---- runs -------------------------------------------------------------------

    def log(self, run: dict, step_key: str, status: str, inputs: Any = None, outputs: Any = None,
            error: Any = None, duration_ms: int | None = None, step_type: str = "unknown") -> None:
        """Append one execution log row for this run; finished steps and run changes also
        go to the JSON log and the metrics."""
        if step_key == RUN_STEP_KEY:
            metrics.count_run(status)
            logs.run_event(status, execution=run["id"], flow_id=run["flow_id"], org_id=run["org_id"], status=status)
        elif status in FINISHED:
            seconds = (duration_ms or 0) / 1000
            metrics.observe_step(seconds, status, step_type)
            logs.step_event(execution=run["id"], step_id=step_key, step_type=step_type, status=status,
                            duration=seconds, error=(error or {}).get("message") if isinstance(error, dict) else None)
        self.db.one(
            SQL.execution_logs.insert, org_id=run["org_id"], flow_id=run["flow_id"], user_id=run["user_id"],
            execution_id=str(run["id"]), step_key=step_key, status=status,
            inputs=dbmod.json(inputs if isinstance(inputs, dict) else {}),
            outputs=dbmod.json(outputs if isinstance(outputs, dict) or outputs is None else {"value": outputs}),
            error=dbmod.json(error), duration_ms=duration_ms,
        )

    def save(self, run: dict, step_id: str, status: str, attempt: int, *, inputs=None, outputs=None,
             error=None, wake_at=None, duration_ms=None) -> None:
        """Write a checkpoint; LeaseLost when this worker no longer owns the run."""
        finished = utcnow() if status in FINISHED else None
        saved = self.db.one(
            SQL.runs.save_step, org_id=run["org_id"], run_id=run["id"], step_id=step_id, status=status,
            attempt=attempt, inputs=dbmod.json(inputs), outputs=dbmod.json(outputs), error=dbmod.json(error),
            wake_at=wake_at, finished_at=finished, duration_ms=duration_ms, worker=self.worker_id,
        )
        if saved is None:
            raise LeaseLost(str(run["id"]))

    def boundary(self, run: dict) -> bool:
        """At a step boundary: False when cancel was requested; LeaseLost/Stop as they apply."""
        state = self.db.scalar(SQL.runs.holds_lease, org_id=run["org_id"], id=run["id"], worker=self.worker_id)
        if state is None:
            raise LeaseLost(str(run["id"]))
        if state == "cancel":
            return False
        if self.stopping.is_set():
            raise Stop()
        return True

    def pause(self, run: dict, until: dt.datetime) -> tuple[str, None]:
        """Back to the queue until ``until`` (a delay or a retry back-off), unless cancel was asked."""
        if not self.boundary(run):
            self.finish(run, "cancelled", self.stored_outputs(run), {"message": "Cancelled"})
        else:
            self.release(run, until)
        return "paused", None

    def release(self, run: dict, run_after: dt.datetime) -> None:
        """Put the run back in the queue until run_after."""
        self.db.rowcount(SQL.runs.release, org_id=run["org_id"], id=run["id"], worker=self.worker_id,
                         run_after=run_after)

    def stored_outputs(self, run: dict) -> dict:
        """The completed steps' outputs as checkpointed (secrets scrubbed), keyed by step id."""
        return {row["step_id"]: row["outputs"]
                for row in self.db.all(SQL.runs.steps, org_id=run["org_id"], run_id=run["id"])
                if row["status"] == "completed"}

    def finish(self, run: dict, status: str, outputs: dict | None, error: dict | None) -> None:
        """End the run and log it, in one transaction."""
        with self.db.transaction():
            done = self.db.one(SQL.runs.finish, org_id=run["org_id"], id=run["id"], worker=self.worker_id,
                               status=status, outputs=dbmod.json(outputs), error=dbmod.json(error))
            if done is None:
                raise LeaseLost(str(run["id"]))
            self.log(run, RUN_STEP_KEY, status, outputs=outputs, error=error)
        log.info("run finished", extra={"execution_id": str(run["id"]), "status": status})

    def run(self, run: dict) -> None:
        """Advance a claimed run as far as it can go now, acting for the run's organization."""
        with self.db.tenant(run["org_id"]), logs.execution(run["id"]):
            self._advance(run)

    def _advance(self, run: dict) -> None:
        try:
            self._run(run)
        except LeaseLost:
            log.warning("lease lost", extra={"execution_id": str(run["id"])})
        except Stop:
            self.release(run, utcnow())
            log.info("run handed back on shutdown", extra={"execution_id": str(run["id"])})
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the run 'running' forever
            log.exception("run crashed", extra={"execution_id": str(run["id"])})
            try:
                self.finish(run, "failed", self.stored_outputs(run),
                            {"name": type(exc).__name__, "message": "Internal error while running the flow."})
            except Exception:  # noqa: BLE001 - the lease expires and another worker retries
                log.exception("could not record the crash", extra={"execution_id": str(run["id"])})

    def _run(self, run: dict) -> None:
        org_id = run["org_id"]
        steps = self.db.scalar(SQL.runs.version_steps, org_id=org_id, flow_id=run["flow_id"],
                               version=run["flow_version"])
        checkpoints = {row["step_id"]: row for row in self.db.all(SQL.runs.steps, org_id=org_id, run_id=run["id"])}
        if run["claims"] == 1 and not checkpoints:
            self.log(run, RUN_STEP_KEY, "running", inputs=run["variables"])
        context = {"variables": run["variables"], "steps": {}}
        failed: set[str] = set()
        by_id = {s["id"]: i for i, s in enumerate(steps)}
        for step in step_order(steps):
            sid = step["id"]
            done = checkpoints.get(sid)
            if done and done["status"] in FINISHED:
                if done["status"] == "completed":
                    context["steps"][sid] = done["outputs"]
                elif done["status"] == "failed" or (done["status"] == "skipped" and done["error"]):
                    failed.add(sid)  # skipped with an error: skipped because a dependency failed
                continue
            if not self.boundary(run):
                return self.finish(run, "cancelled", self.stored_outputs(run), {"message": "Cancelled"})
            if failed & set(dependencies(steps, by_id[sid])):
                self.save(run, sid, "skipped", 1, error={"message": "A step it depends on failed"})
                self.log(run, sid, "skipped", error={"message": "A step it depends on failed"})
                failed.add(sid)
                continue
            outcome, error = self.run_step(run, step, done, context)
            if outcome == "paused":
                return
            if outcome == "failed":
                failed.add(sid)
                if step.get("critical", True) is not False:
                    return self.finish(run, "failed", self.stored_outputs(run), {"stepId": sid, **error})
        self.finish(run, "completed", self.stored_outputs(run), None)

    def run_step(self, run: dict, step: dict, checkpoint: dict | None, context: dict) -> tuple[str, dict | None]:
        """Run one step to a checkpoint; returns (outcome, error) where outcome is
        'completed', 'skipped', 'failed' or 'paused' (the run went back to the queue)."""
        sid = step["id"]
        attempt = checkpoint["attempt"] if checkpoint else 1
        if checkpoint and checkpoint["status"] == "waiting":
            if checkpoint["wake_at"] > utcnow():
                return self.pause(run, checkpoint["wake_at"])
            if step["type"] == "delay":
                self.save(run, sid, "completed", attempt, inputs=checkpoint["inputs"],
                          outputs={"delayedMs": step["config"]["ms"]})
                self.log(run, sid, "completed", inputs=checkpoint["inputs"], outputs={"delayedMs": step["config"]["ms"]},
                         step_type="delay")
                context["steps"][sid] = {"delayedMs": step["config"]["ms"]}
                return "completed", None
            attempt += 1  # a retry back-off ended
        try:
            if step.get("executeIf") and not condition(step["executeIf"], context):
                self.save(run, sid, "skipped", attempt)
                self.log(run, sid, "skipped", inputs={"executeIf": step["executeIf"]}, step_type=step["type"])
                return "skipped", None
            inputs = render(step["config"], context)
        except TemplateFailure as exc:
            return self.fail(run, step, attempt, None, StepFailed(f"Template error: {exc}"), 0)
        if step["type"] == "delay":
            wake = utcnow() + dt.timedelta(milliseconds=int(inputs["ms"]))
            self.save(run, sid, "waiting", attempt, inputs=inputs, wake_at=wake)
            self.log(run, sid, "started", inputs=inputs)
            return self.pause(run, wake)
        key = f"{run['id']}:{sid}:{attempt}"
        # Credentials an earlier step of this claim sent may flow into later inputs and outputs.
        known_secrets = run.setdefault("secrets", [])
        logged_inputs = mask_secrets(inputs, known_secrets)
        self.save(run, sid, "running", attempt, inputs=logged_inputs)
        self.log(run, sid, "started", inputs={**logged_inputs, "attempt": attempt})
        started = time.perf_counter()
        try:
            output, secrets = self.execute_step(run["org_id"], step, inputs, context, key)
        except SkipStep:
            self.save(run, sid, "skipped", attempt, inputs=logged_inputs)
            self.log(run, sid, "skipped", inputs=logged_inputs, step_type=step["type"])
            return "skipped", None
        except StepFailed as exc:
            duration = int((time.perf_counter() - started) * 1000)
            policy = step.get("retryPolicy") or {}
            if exc.retryable and attempt <= int(policy.get("maxRetries", 0)):
                wake = utcnow() + dt.timedelta(milliseconds=backoff_ms(policy, attempt))
                self.save(run, sid, "waiting", attempt, inputs=logged_inputs, error=exc.as_error(), wake_at=wake)
                self.log(run, sid, "failed", inputs=logged_inputs,
                         error={**exc.as_error(), "attempt": attempt, "retryAt": wake.isoformat()},
                         duration_ms=duration)
                return self.pause(run, wake)
            return self.fail(run, step, attempt, logged_inputs, exc, duration)
        duration = int((time.perf_counter() - started) * 1000)
        # Later steps see the real output; what is stored and logged has secrets scrubbed.
        context["steps"][sid] = output
        known_secrets.extend(secrets)
        stored = mask_secrets(output, known_secrets)
        self.save(run, sid, "completed", attempt, inputs=logged_inputs, outputs=stored, duration_ms=duration)
        self.log(run, sid, "completed", inputs=logged_inputs, outputs=stored, duration_ms=duration,
                 step_type=step["type"])
        return "completed", None

    def fail(self, run: dict, step: dict, attempt: int, inputs, exc: StepFailed, duration: int) -> tuple[str, dict]:
        """Checkpoint and log a failed step."""
        error = exc.as_error()
        self.save(run, step["id"], "failed", attempt, inputs=inputs, error=error, duration_ms=duration)
        self.log(run, step["id"], "failed", inputs=inputs, error=error, duration_ms=duration, step_type=step["type"])
        return "failed", error


def checked(reply: Reply) -> dict:
    """A step's output, or StepFailed for a non-2xx answer (retryable for 429 and 5xx)."""
    if reply.status >= 400:
        raise StepFailed(f"Upstream answered {reply.status}", retryable=retryable_status(reply.status),
                         details={"status": reply.status, "body": reply.body})
    return reply.as_output()


def _query_value(value: Any) -> Any:
    return value if isinstance(value, (str, int, float)) else str(value)


def input_errors(schema: dict, inputs: dict) -> list[dict]:
    """Field errors of inputs against an action's JSON Schema, named ``inputs.<path>``."""
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    problems = []
    try:
        found = sorted(validator.iter_errors(inputs), key=lambda e: list(e.path))
    except Unresolvable as exc:
        return [{"field": "inputs", "message": f"The action's inputSchema cannot resolve {exc.ref!r}."}]
    for error in found:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path)
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else ""
            path += f".{missing}"
        problems.append({"field": f"inputs{path}", "message": error.message})
    return problems


def vault_from_config(config) -> Vault | None:
    """The credential vault, or None when no TOLSTOY_ENCRYPTION_KEY is configured."""
    return Vault(config.encryption_key) if config.encryption_key else None


def build(config, db: dbmod.Database, worker_id: str, stopping: threading.Event | None = None) -> Engine:
    """An Engine wired from configuration."""
    return Engine(db, Outbound(config.allow_networks), vault_from_config(config), worker_id, stopping=stopping)
