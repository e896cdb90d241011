"""The step graph: what each step depends on, whether the graph is acyclic, and
the order a run executes it in. Flow validation and the engine use these same
functions, so what is accepted is what runs."""

from __future__ import annotations

import heapq
from graphlib import CycleError, TopologicalSorter


def dependencies(steps: list[dict], index: int) -> list[str]:
    """A step's dependencies: its dependsOn, or by default the step before it."""
    step = steps[index]
    if step.get("dependsOn") is not None:
        return list(step["dependsOn"])
    return [steps[index - 1]["id"]] if index else []


def _sorter(steps: list[dict]) -> TopologicalSorter:
    return TopologicalSorter({s["id"]: dependencies(steps, i) for i, s in enumerate(steps)})


def graph_errors(steps: list[dict]) -> dict:
    """Field errors ``{index: {field: [message]}}`` for duplicate ids, unknown or self dependencies, and cycles."""
    problems: dict = {}
    ids = [s["id"] for s in steps]
    seen: set[str] = set()
    for index, step_id in enumerate(ids):
        if step_id in seen:
            problems[index] = {"id": [f"Duplicate step id {step_id!r}."]}
        seen.add(step_id)
    for index, step in enumerate(steps):
        for dep in step.get("dependsOn") or []:
            if dep == step["id"]:
                problems[index] = {"dependsOn": ["A step cannot depend on itself."]}
            elif dep not in seen:
                problems[index] = {"dependsOn": [f"Unknown step id {dep!r}."]}
    if problems:
        return problems
    try:
        _sorter(steps).prepare()
    except CycleError as exc:
        cycle = exc.args[1]  # [a, b, …, a]
        first = min(cycle, key=ids.index)
        path = " → ".join(cycle)
        return {ids.index(first): {"dependsOn": [f"Dependency cycle: {path}."]}}
    return {}


def step_order(steps: list[dict]) -> list[dict]:
    """Steps in a dependency-respecting order; of the steps ready at any moment, the one
    listed first runs first (the graph was validated acyclic when the flow was saved)."""
    position = {s["id"]: i for i, s in enumerate(steps)}
    sorter = _sorter(steps)
    sorter.prepare()
    ready: list[int] = []
    order: list[dict] = []
    while sorter.is_active():
        for step_id in sorter.get_ready():
            heapq.heappush(ready, position[step_id])
        index = heapq.heappop(ready)
        order.append(steps[index])
        sorter.done(steps[index]["id"])
    return order
