"""The step kinds: a module of this package per kind, and one table of them (``KINDS``) that
top-level steps and foreach items both dispatch through.

A step, wherever it runs (at the top of its run, or as one item of a foreach step), takes the same
path (``Engine._attempt``): a pause that ended, its ``executeIf``, its config rendered, then its
kind's work, found here. Each module exports ``KIND`` (kind.Kind: its work, what a pause of it
means, whether a foreach may run it per item). The API accepts exactly these kinds (``STEP_TYPES``,
and per item ``ITEM_STEP_TYPES``). Adding a kind: docs/adding-a-step-kind.md.
"""

from __future__ import annotations

import importlib

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
# What a foreach step may run for each item.
ITEM_STEP_TYPES = tuple(name for name, kind in KINDS.items() if kind.item)


def step_configs() -> dict[str, type]:
    """The schemas of the configs of the kinds that bring their own: the API validates a step's config
    with it (this imports marshmallow: the API's, never a worker's)."""
    return {name: kind.config() for name, kind in KINDS.items() if kind.config is not None}


__all__ = ["ITEM_STEP_TYPES", "KINDS", "STEP_TYPES", "Kind", "Site", "step_configs"]
