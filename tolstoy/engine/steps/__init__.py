"""The step kinds: a module of this package per kind, and one table of them (``KINDS``) that
top-level steps and foreach items both dispatch through.

A step, wherever it runs (at the top of its run, or as one item of a foreach step), takes the same
path (``Engine._attempt``): a pause that ended, its ``executeIf``, its config rendered, then its
kind's work, found here. Each module exports ``KIND`` (kind.Kind: its work, what a pause of it
means, whether a foreach may run it per item, its config's schema). The API accepts exactly these
kinds (``STEP_TYPES``, and per item ``ITEM_STEP_TYPES``), each config checked with its kind's schema
(``step_configs``). Adding a kind: docs/adding-a-step-kind.md.
"""

from __future__ import annotations

import functools
import importlib

from . import wait
from .kind import Kind, Site

# The one table: a step's ``type`` is the name of its kind's module here, in the order the API lists them.
MODULES = (
    "action",
    "http_request",
    "delay",
    "transform",
    "foreach",
    "wait",
    "subflow",
    "fail",
)

KINDS: dict[str, Kind] = {name: importlib.import_module(f"{__name__}.{name}").KIND for name in MODULES}

STEP_TYPES = tuple(KINDS)
# A wait step's signal name: the signal routes take the same names.
SIGNAL_NAME = wait.SIGNAL_NAME
# What a foreach step may run for each item.
ITEM_STEP_TYPES = tuple(name for name, kind in KINDS.items() if kind.item)
# What may declare a concurrency limit of its own (``concurrency`` on a top-level step).
LIMITED_STEP_TYPES = tuple(name for name, kind in KINDS.items() if kind.limits)


@functools.cache
def step_configs() -> dict[str, type]:
    """The schema of each kind's config: the API validates a step's config with it, and a foreach step
    its item step's (this imports marshmallow: the API's, never a worker's). Built once, so a schema is
    one class wherever it is used (the OpenAPI document names it once)."""
    return {name: kind.config() for name, kind in KINDS.items()}


__all__ = ["ITEM_STEP_TYPES", "KINDS", "LIMITED_STEP_TYPES", "SIGNAL_NAME", "STEP_TYPES", "Kind", "Site", "step_configs"]
