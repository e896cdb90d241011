"""``transform``: its output is its rendered ``output`` (any JSON with templates); it calls nothing
and writes nothing of its own (its checkpoint goes out with the run's next statement)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .kind import Kind, Outcome, Site

if TYPE_CHECKING:
    from ...redaction import Hidden
    from ..runner import Engine, Run


def config() -> type:
    """The schema of its config, for the API (marshmallow is imported here: a worker never loads it)."""
    from marshmallow import fields

    from ...fieldtypes import Base

    class TransformStepConfig(Base):
        """``transform``: render ``output`` (any JSON with templates)."""

        output = fields.Raw(required=True, allow_none=True)

    return TransformStepConfig


def run(engine: Engine, run: Run, site: Site, step: dict, attempt: int, checkpoint: dict | None, inputs: dict,
        tree: Hidden) -> Outcome:
    """A transform step: its output is its rendered ``output``."""
    shown = run.conceal(inputs, tree)
    if not site.item:
        with run.lock:
            run.writes.event(step["id"], "started", inputs=shown)
    return engine.complete(run, step, attempt, inputs["output"], shown, 0, shown["output"], item=site.item)


KIND = Kind(run, item=True, config=config)
