"""What every step kind is to the run loop: one small interface (``Kind``), and
where a step runs (``Site``).

The run loop (``Engine._attempt`` in runner.py) takes every step the same way,
at the top of its run or as one item of a foreach step: a pause that ended
(``resume``), its ``executeIf``, its config rendered (``renders``), then the
kind's own work (``run``). A kind's module holds that work and nothing the loop
already does: checkpoints, outcomes, retries of a step that failed to render,
the byte bounds and the masking of what it writes are the loop's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..runner import Engine, Run

# What a step returns to the loop: ('completed', (output, as shown)), ('skipped', None), ('failed', error),
# ('sleep', ms until it is due), ('unknown', None), ('cancelled', None) or ('paused', None): Engine._attempt.
Outcome = tuple[str, Any]


@dataclass
class Site:
    """Where a step runs: at the top of its run, or as one item of a foreach step (``item``).
    ``context`` is what its executeIf and an action's executeIf read, ``view`` what its templates
    see (the outputs' hidden parts behind views; an item's ``item`` and ``index`` too)."""

    context: dict
    view: Any
    item: bool = False


def run_again(engine: Engine, run: Run, site: Site, step: dict, attempt: int, checkpoint: dict) -> Outcome | None:
    """The default ``resume``: the pause did not end the step; it runs again (it waits for something
    else: a signal, a child run, its items; or its retry back-off ended)."""
    return None


@dataclass(frozen=True)
class Kind:
    """A step kind: what the one step path needs to know of it.

    ``run(engine, run, site, step, attempt, checkpoint, rendered, tree)``: the kind's work once its
    config is rendered (``rendered``; ``tree`` says which parts of it a template derived from a
    secret); returns an ``Outcome``. ``resume(engine, run, site, step, attempt, checkpoint)``: what a
    ``waiting`` checkpoint of it means when its run comes back: an outcome (the pause was the step: a
    delay is over) or None (run it again). ``retries``: a ``waiting`` checkpoint of it is a retry
    back-off that ended, so it runs again as the next attempt. ``item``: whether a foreach step may
    run it per item. ``renders``: the one config field rendered before ``run`` (a foreach renders its
    items; its item step is rendered per item), else the whole config. ``config``: returns the
    marshmallow schema that validates its config when a flow is saved (the API loads
    ``steps[i].config`` with it, errors named under it); a function, so that marshmallow is imported
    by the API only, never by a worker (tests/unit/test_layers.py). Every kind has one: the API
    takes its ``STEP_CONFIGS`` from the kinds (``step_configs``). ``limits``: a top-level step of it may
    declare ``concurrency`` ({key?, limit}): its work takes a slot first (the kinds that call out)."""

    run: Callable[..., Outcome]
    config: Callable[[], type]
    resume: Callable[..., Outcome | None] = run_again
    retries: bool = False
    item: bool = False
    renders: str | None = None
    limits: bool = False
