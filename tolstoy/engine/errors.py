"""How a step or a run stops early; the run loop turns each into an outcome."""

from __future__ import annotations


class StepFailed(Exception):
    """A step failed; ``retryable`` failures are tried again per the step's retryPolicy. ``own_words``:
    the message and details are Tolstoy's own, made of nothing the step's config holds (a rule it
    broke, a user and tool it names), so they are shown even when that config was derived from a
    secret (``as_error``)."""

    def __init__(self, message: str, *, retryable: bool = False, details: dict | None = None,
                 own_words: bool = False):
        super().__init__(message)
        self.retryable = retryable
        self.details = details or {}
        self.own_words = own_words

    def as_error(self, withhold: bool = False) -> dict:
        """The error as stored and shown: ``{name, message, …}``. ``withhold``: the step's config was
        derived from a secret, and the message and details may quote what was made of it (a URL's
        host, an input a schema refused, a header that could not be sent), transformed past what the
        redaction recognises; only the name and the tool's own answer (``status``, ``body``: shown
        redacted, as a call's output is) are kept."""
        error = {"name": type(self).__name__, "message": str(self), **self.details}
        if not withhold or self.own_words:
            return error
        kept = {key: error[key] for key in WITHHELD_KEEPS if key in error}
        status = f", the tool answered {error['status']}" if isinstance(error.get("status"), int) else ""
        return {**kept, "message": f"Withheld ({error['name']}{status}): this step's config was made from a "
                                   "secret, and its error may repeat what was made of it"}


# What a withheld error keeps (StepFailed.as_error): its kind, and the tool's answer to the call.
WITHHELD_KEEPS = ("name", "status", "body")


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
            details={"userId": str(user_id), "toolId": str(tool["id"])}, own_words=True)


class SkipStep(Exception):
    """The step's action has an ``executeIf`` that is false for these inputs."""


class LeaseLost(Exception):
    """Another worker owns the run now; stop touching it."""


class Stop(Exception):
    """This worker is shutting down: hand the run back at the step boundary."""


# ---- changes of a run's state asked for from outside the run loop (lifecycle.py) ----------------

class NoSuchRun(Exception):
    """What a run's state change names is not there (for this organization): ``noun`` says what
    (the run, or the step waiting for a resolution)."""

    def __init__(self, noun: str):
        super().__init__(noun)
        self.noun = noun


class RunStateConflict(Exception):
    """The run's state does not allow the change; the message says which state it is in."""


class MoveRefused(RunStateConflict):
    """A move would discard checkpoints the request did not name in ``dropSteps``; ``diff`` is the
    move's diff (``mustDrop`` names them)."""

    def __init__(self, message: str, diff: dict):
        super().__init__(message)
        self.diff = diff


class BadMoveRequest(Exception):
    """What a move request names does not fit the run: ``field`` (``version``, ``dropSteps``) says which."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class ConcurrencyKeyRefused(Exception):
    """The flow's concurrency key does not render to a key over a new run's variables (the API's 400 names
    the field ``concurrency.key``)."""

    field = "concurrency.key"


class LinkUsed(Exception):
    """An approval link delivers one signal, and this one was used already."""


class NoKeyToSeal(Exception):
    """What would be kept holds secrets, and no encryption key is configured to seal it."""
