"""The step kinds: one table that top-level steps and foreach items both dispatch through.

A step, wherever it runs (at the top of its run, or as one item of a foreach
step), takes the same path (``Engine._attempt``): a sleep that ended, its
``executeIf``, its config rendered, then its kind's work, found here; what a
kind may do per item is said here too, and the API accepts exactly these kinds
(``STEP_TYPES``, ``ITEM_STEP_TYPES``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """What the one step path needs to know of a step kind.

    ``work``: the name of the Engine method that does the kind's work once the config is rendered,
    called as ``work(run, site, step, attempt, checkpoint, rendered, tree)``. ``item``: whether a
    foreach step may run it per item. ``renders``: the one config field rendered before the work
    (a foreach renders its items; its item step is rendered per item), else the whole config.
    ``on_wake``: what a ``waiting`` checkpoint of it means when its run comes back: ``done`` (it
    slept: a delay is over), ``next`` (a retry back-off ended: the next attempt) or ``same`` (it
    waits for something else: a signal, a child run)."""

    work: str
    item: bool = False
    renders: str | None = None
    on_wake: str = "next"


KINDS: dict[str, Kind] = {
    "action": Kind("_call", item=True),
    "http_request": Kind("_call", item=True),
    "delay": Kind("_delay", item=True, on_wake="done"),
    "transform": Kind("_transform", item=True),
    "foreach": Kind("_foreach", renders="items", on_wake="same"),
    "wait": Kind("_wait", on_wake="same"),
    "subflow": Kind("_subflow", on_wake="same"),
}

STEP_TYPES = tuple(KINDS)
# What a foreach step may run for each item.
ITEM_STEP_TYPES = tuple(name for name, kind in KINDS.items() if kind.item)
