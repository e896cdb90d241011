"""Concurrency keys (issue 26): a flow's ``concurrency.key`` rendered over a new run's variables when it is
queued (lifecycle.concurrency_key), and a step's over the step's template context when it is about to run
(steps/calling.py). One rule for both: a key is a short printable string (a number or a boolean is a key as
its text), and a template that renders to anything else is refused, naming the field."""

from __future__ import annotations

from typing import Any

from . import templates
from .errors import ConcurrencyKeyRefused

# A concurrency key is a short name (the API's field concurrency.key says so): at most this many characters.
MAX_KEY = 200


def render_key(template: str, context: Any, whose: str, over: str) -> str:
    """``template`` rendered over ``context`` as a concurrency key. ``whose`` names the key in errors
    ("The flow's", "The step's"), ``over`` what it was rendered over. ConcurrencyKeyRefused when it fails
    to render, or renders to nothing, to a list or an object, to more than MAX_KEY characters, or to
    control characters, or reads a secret (a key is shown in the run view and stored in the clear)."""
    try:
        value, tree = templates.render_tracked(template, context)
    except templates.TemplateFailure as exc:
        raise ConcurrencyKeyRefused(f"{whose} concurrency key did not render over {over}: {exc}") from None
    if tree is not None:
        raise ConcurrencyKeyRefused(f"{whose} concurrency key may not be derived from a secret: it is shown in the "
                                    "run's waitingFor.")
    if value is None or isinstance(value, (dict, list)):
        raise ConcurrencyKeyRefused(f"{whose} concurrency key must render to a string or a number over {over}, "
                                    f"not {'null' if value is None else type(value).__name__}.")
    text = value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    if not 1 <= len(text) <= MAX_KEY:
        raise ConcurrencyKeyRefused(f"{whose} concurrency key must render to 1 to {MAX_KEY} characters over "
                                    f"{over}; it rendered to {len(text)}.")
    if not text.isprintable():  # NUL cannot be stored in text; control characters are no key
        raise ConcurrencyKeyRefused(f"{whose} concurrency key rendered to control characters.")
    return text
