"""``delay``: the step sleeps ``ms`` milliseconds holding no thread: its checkpoint is ``waiting``
with its wake time, the run goes back to the queue until then, and the step completes when the
run comes back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .kind import Kind, Outcome, Site

if TYPE_CHECKING:
    from ...redaction import Hidden
    from ..runner import Engine, Run


def config() -> type:
    """The schema of its config, for the API (marshmallow is imported here: a worker never loads it)."""
    from marshmallow import fields, validate

    from ...fieldtypes import Base

    class DelayStepConfig(Base):
        """``delay``: wait this many milliseconds (at most seven days)."""

        ms = fields.Integer(required=True, strict=True, validate=validate.Range(0, 7 * 24 * 3600 * 1000))

    return DelayStepConfig


def run(engine: Engine, run: Run, site: Site, step: dict, attempt: int, checkpoint: dict | None, inputs: dict,
        tree: Hidden) -> Outcome:
    """A delay step: asleep (``waiting`` with its wake time) for ``ms``, holding no thread."""
    shown = run.conceal(inputs, tree)
    wait = int(inputs["ms"])
    with run.lock:
        run.writes.step(step_id=step["id"], status="waiting", attempt=attempt, inputs=shown, wake_in_ms=wait)
        if not site.item:
            run.writes.event(step["id"], "started", inputs=shown)
    return "sleep", wait


def resume(engine: Engine, run: Run, site: Site, step: dict, attempt: int, checkpoint: dict) -> Outcome:
    """The run came back: the sleep is over, and so is the step."""
    return engine.complete(run, step, attempt, {"delayedMs": step["config"]["ms"]}, checkpoint.get("inputs"), 0,
                           item=site.item)


KIND = Kind(run, resume=resume, item=True, config=config)
