"""How a step or a run stops early; the run loop turns each into an outcome."""

from __future__ import annotations


class StepFailed(Exception):
    """A step failed; ``retryable`` failures are tried again per the step's retryPolicy."""

    def __init__(self, message: str, *, retryable: bool = False, details: dict | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.details = details or {}

    def as_error(self) -> dict:
        """The error as stored and shown: ``{name, message, …}``."""
        return {"name": type(self).__name__, "message": str(self), **self.details}


class InvalidInputs(StepFailed):
    """Inputs do not match the action's inputSchema; ``problems`` name each field (``inputs.<path>``)."""

    def __init__(self, problems: list[dict]):
        super().__init__("Inputs do not match the action's inputSchema", details={"errors": problems})
        self.problems = problems


class ActAsUserRefused(StepFailed):
    """A call would use a user's own OAuth tokens (a per-user tool) for a run or caller that may not
    act as that user: only a key bound to the user, or with the impersonate scope, may (in headers
    mode, the X-User-ID the gateway vouches for)."""

    def __init__(self, user_id, tool: dict):
        super().__init__(
            f"Not allowed to call the tool {tool['name']!r} as user {user_id}: acting as a user (with the account "
            "they connected) needs an API key bound to that user or with the 'impersonate' scope, and this "
            "run (or call) was started by one that has neither",
            details={"userId": str(user_id), "toolId": str(tool["id"])})


class SkipStep(Exception):
    """The step's action has an ``executeIf`` that is false for these inputs."""


class LeaseLost(Exception):
    """Another worker owns the run now; stop touching it."""


class Stop(Exception):
    """This worker is shutting down: hand the run back at the step boundary."""
