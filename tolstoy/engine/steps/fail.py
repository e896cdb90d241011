"""``fail``: the step fails, and with it the run (unless the step is not ``critical``), with its
rendered ``message``. With the ``executeIf`` every step has, it is how a flow asserts what it needs
and stops with a reason: a tool that answered ``200 {"ok": false}``, a record in the wrong state.
Its error is ``{"name": "FailStep", "message": …}`` (withheld, as every error is, when the message
was made from a secret); a foreach may run it per item."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import StepFailed
from .kind import Kind, Outcome, Site

if TYPE_CHECKING:
    from ...redaction import Hidden
    from ..runner import Engine, Run


def config() -> type:
    """The schema of its config, for the API (marshmallow is imported here: a worker never loads it)."""
    from marshmallow import RAISE, Schema, fields, validate

    class FailStepConfig(Schema):
        """``fail``: fail with ``message`` (templates allowed)."""

        class Meta:
            unknown = RAISE

        message = fields.String(required=True, validate=validate.Length(min=1, max=2000))

    return FailStepConfig


def run(engine: Engine, run: Run, site: Site, step: dict, attempt: int, checkpoint: dict | None, config: dict,
        tree: Hidden) -> Outcome:
    """Fail with the rendered message."""
    shown = run.conceal(config, tree)
    return engine.fail(run, step, attempt, shown, StepFailed(str(config["message"]), details={"name": "FailStep"}), 0)


KIND = Kind(run, item=True, config=config)
