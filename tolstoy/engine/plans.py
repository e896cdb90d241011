"""A run's plan: the steps of its flow version and the actions (with their
tools) they call, as they were when the run was queued. A run in flight never
sees an action edited after it started."""

from __future__ import annotations

from .errors import StepFailed


class Plan:
    """Lookups over a run's plan (``flow_runs.plan``)."""

    def __init__(self, plan: dict):
        self.steps: list[dict] = plan["steps"]
        # Run when the run fails (the flow version's onFailure, added when the run was queued).
        self.on_failure: list[dict] = plan.get("onFailure") or []
        actions = plan.get("actions") or []
        self.by_id = {str(a["id"]): a for a in actions}
        self.by_key = {a["key"]: a for a in actions}

    def action(self, config: dict) -> dict:
        """The action a step's config names by actionId or actionKey."""
        found = self.by_id.get(str(config["actionId"])) if config.get("actionId") else \
            self.by_key.get(config.get("actionKey"))
        if found is None:
            raise StepFailed("The action this step names did not exist when the run was queued")
        return found
