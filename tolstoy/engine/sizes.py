"""How many bytes a run keeps, bounded before they are written.

Every checkpoint a run writes (a step's inputs, output, sealed output and
error) is stored in PostgreSQL as jsonb, and a claim hands a worker its runs,
each with all its checkpoints, as one jsonb document per run, which PostgreSQL
refuses past 256 MB (``ProgramLimitExceeded``): a run allowed to grow that far
could never be claimed again (the claim strikes it and goes on with the others:
tolstoy_claim_runs_v2). So the run loop's one exit for what it writes
(``Writes`` in runner.py) asks the run's ``Ledger`` before queueing a
checkpoint: past ``step_max`` for the checkpoint, or ``run_max`` for all the
run's checkpoints together, the step fails instead (``TooLarge``, naming the
bound and its setting; ``Engine._attempt``), and the run fails or goes on as
after any failed step. The settings' ranges keep a run at its bounds within
``PAYLOAD_MAX_BYTES`` (tests/unit/test_config_errors.py).

Sizes are measured the way jsonb stores them, estimated from the compact JSON
text (``stored_bytes``): the text's length, plus ``PER_VALUE`` bytes for each
value and key and for the document, since jsonb keeps a header for each
(``[1,1,1…]`` takes six times its text); tests hold it against PostgreSQL.
The ledger starts from the checkpoints the claim handed over and follows each
write, so the run's total is known without asking the database.

Errors are kept too: one longer than ``ERROR_MAX_BYTES`` (a tool's 10 MB error
page) keeps its name, its message and the start of the rest (``bounded_error``).
"""

from __future__ import annotations

import threading
from typing import Any

from ..jsonsafe import dumps
from .errors import StepFailed

STEP_MAX_BYTES = 10 * 1024 * 1024  # TOLSTOY_STEP_MAX_BYTES: one response as the outbound client reads it
RUN_MAX_BYTES = 32 * 1024 * 1024  # TOLSTOY_RUN_MAX_BYTES
# What one run's payload in a claim may hold, well under the 256 MB of one jsonb document (the rest: its keys).
PAYLOAD_MAX_BYTES = 200 * 1024 * 1024
# A run's payload besides its checkpoints: its plan (a flow, at most the API's 1 MB body) and its variables
# (an execute's body, or a subflow step's inputs: at most step_max), with their jsonb headers.
PLAN_MAX_BYTES = 2 * 1024 * 1024
ERROR_MAX_BYTES = 64 * 1024
LOG_INPUTS_MAX_BYTES = 64 * 1024  # an execution log row's inputs (the checkpoint keeps them whole)
BRIEF_CHARS = 500  # what an error keeps of its message once its run is past a byte bound
PER_ROW = 256  # a checkpoint's or log row's own keys (step_id, status, attempt, times) and headers
PER_VALUE = 16  # a jsonb entry's header, alignment and a number's own header, at most
_STORED = ("outputs", "sealed", "error")


def stored_bytes(value: Any) -> int:
    """At least as many bytes as jsonb takes to store ``value`` (0 for None)."""
    if value is None:
        return 0
    text = dumps(value)
    values = 1 + text.count(b",") + text.count(b":") + text.count(b"[") + text.count(b"{")
    return len(text) + PER_VALUE * (values + 1)  # and the document's own headers



STEP_FULL, RUN_FULL = "StepTooLarge", "RunTooLarge"  # the names of TooLarge's errors


class TooLarge(StepFailed):
    """A checkpoint would take a run past one of its byte bounds."""

    def __init__(self, message: str, bound: str, size: int, limit: int):
        super().__init__(message, details={"name": STEP_FULL if bound == "TOLSTOY_STEP_MAX_BYTES" else RUN_FULL,
                                           "bytes": size, "limit": limit, "setting": bound})


class Ledger:
    """The bytes each checkpoint of a run holds (its inputs apart: a write without inputs keeps the
    stored ones), with PER_ROW for the checkpoint's own keys in a claim's payload, and the bytes of
    the log rows the run writes in this claim; and the bounds they are kept within."""

    def __init__(self, checkpoints: dict[str, dict], step_max: int = STEP_MAX_BYTES, run_max: int = RUN_MAX_BYTES):
        self.step_max = step_max
        self.run_max = run_max
        self._lock = threading.Lock()  # foreach items write from threads of their own
        self._inputs: dict[str, int] = {}
        self._rest: dict[str, int] = {}
        for step_id, done in checkpoints.items():
            self._inputs[step_id] = stored_bytes(done.get("inputs"))
            self._rest[step_id] = PER_ROW + sum(stored_bytes(done.get(name)) for name in _STORED)
        self.total = sum(self._inputs.values()) + sum(self._rest.values())
        self.logged = 0  # the log rows written in this claim: they go out with the checkpoints

    def _measure(self, step_id: str, checkpoint: dict) -> tuple[int, int, int]:
        inputs = (stored_bytes(checkpoint["inputs"]) if checkpoint.get("inputs") is not None
                  else self._inputs.get(step_id, 0))
        rest = PER_ROW + sum(stored_bytes(checkpoint.get(name)) for name in _STORED)
        return inputs, rest, self.total - self._inputs.get(step_id, 0) - self._rest.get(step_id, 0) + inputs + rest

    def admit(self, checkpoint: dict, strict: bool) -> None:
        """Record ``checkpoint`` (as Writes queues it: masked, sealed). With ``strict``, TooLarge
        instead when it would hold more than ``step_max`` bytes or take the run past ``run_max``.
        Without, it is written all the same (a failure's own checkpoint must be), but past a bound
        no larger than its bare facts: its error cut to ``brief_error``, its inputs left as stored."""
        step_id = checkpoint["step_id"]
        with self._lock:
            inputs, rest, total = self._measure(step_id, checkpoint)
            if inputs + rest > self.step_max or total > self.run_max:
                if strict:
                    if inputs + rest > self.step_max:
                        raise TooLarge(
                            f"The step's checkpoint would hold {inputs + rest} bytes (its inputs, output and error "
                            f"as stored), more than the limit of {self.step_max} (TOLSTOY_STEP_MAX_BYTES)",
                            "TOLSTOY_STEP_MAX_BYTES", inputs + rest, self.step_max)
                    raise TooLarge(
                        f"The run's checkpoints would hold {total} bytes with this step's, more than the limit of "
                        f"{self.run_max} (TOLSTOY_RUN_MAX_BYTES)", "TOLSTOY_RUN_MAX_BYTES", total, self.run_max)
                checkpoint["error"] = brief_error(checkpoint.get("error"))
                checkpoint["inputs"] = None
                inputs, rest, total = self._measure(step_id, checkpoint)
            self._inputs[step_id] = inputs
            self._rest[step_id] = rest
            self.total = total

    def admit_event(self, event: dict) -> None:
        """Record an execution log row the run writes (its inputs at most LOG_INPUTS_MAX_BYTES, else
        a note of their size: the step's checkpoint keeps them). Once this claim's rows hold half of
        ``run_max``, each further row keeps only its bare facts (``brief_error``, no inputs): the rows
        go out with the checkpoints in one statement, whose document PostgreSQL bounds too."""
        size = stored_bytes(event["inputs"])
        if size > LOG_INPUTS_MAX_BYTES:
            event["inputs"] = {"truncated": True, "bytes": size}
        with self._lock:
            size = PER_ROW + stored_bytes(event["inputs"]) + stored_bytes(event.get("error"))
            if self.logged + size > self.run_max // 2:
                event["inputs"] = {"truncated": True} if event["inputs"] else event["inputs"]
                event["error"] = brief_error(event.get("error"))
                size = PER_ROW + stored_bytes(event["inputs"]) + stored_bytes(event.get("error"))
            self.logged += size


def brief_error(error: Any) -> Any:
    """An error's bare facts, for a run past its byte bounds: its name and the start of its message."""
    if not isinstance(error, dict):
        return None if error is None else {"message": str(error)[:BRIEF_CHARS], "truncated": True}
    kept = {key: error[key] for key in ("stepId", "item", "setting") if isinstance(error.get(key), (str, int))}
    for key in ("name", "message"):
        if isinstance(error.get(key), str):
            kept[key] = error[key][:BRIEF_CHARS]
    kept["truncated"] = True
    return kept


def bounded_error(error: Any) -> Any:
    """A step's or run's error as stored: as it is up to ERROR_MAX_BYTES; past that its name, its
    message (cut at 2,000 characters) and the start of the rest as JSON text (``details``), with
    ``truncated: true``. Applied after masking, so no cut can leave part of a secret unmasked."""
    if not isinstance(error, dict) or stored_bytes(error) <= ERROR_MAX_BYTES:
        return error
    kept = {key: error[key] for key in ("name", "stepId", "status", "attempt") if key in error}
    if isinstance(error.get("message"), str):
        kept["message"] = error["message"][:2000]
    rest = {key: value for key, value in error.items() if key not in kept and key != "message"}
    kept["details"] = dumps(rest)[:ERROR_MAX_BYTES // 2].decode("utf-8", errors="ignore")
    kept["truncated"] = True
    return kept
