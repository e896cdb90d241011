"""Flow templates: ``{{ … }}`` evaluated by Jinja2's sandbox, with StrictUndefined
so a typo fails the step instead of rendering an empty string."""

from __future__ import annotations

import re
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined
from jinja2.sandbox import SandboxedEnvironment

MAX_RESULT = 1_000_000  # characters or items a single * may build
MAX_EXPONENT = 100


class LimitedEnvironment(SandboxedEnvironment):
    """The sandbox, plus bounds on ``*`` and ``**`` so a template cannot eat a worker's memory."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent larger than {MAX_EXPONENT}")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_RESULT:
                    raise ValueError(f"result longer than {MAX_RESULT}")
        return super().call_binop(context, operator, left, right)


_ENV = LimitedEnvironment(undefined=StrictUndefined, autoescape=False)
_SINGLE = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}).)*)\}\}\s*$", re.S)


class TemplateFailure(Exception):
    """A template could not be evaluated; the message names the template and the cause."""


def _expression(source: str, context: dict) -> Any:
    try:
        value = _ENV.compile_expression(source, undefined_to_none=False)(**context)
        if isinstance(value, Undefined):
            str(value)  # StrictUndefined raises here, naming what was missing
    except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError, AttributeError) as exc:
        raise TemplateFailure(f"{{{{{source}}}}}: {exc}") from None
    return value


def render(value: Any, context: dict) -> Any:
    """Render every string inside a JSON value; a string that is exactly one template keeps the result's type."""
    if isinstance(value, str):
        if "{{" not in value and "{%" not in value:
            return value
        single = _SINGLE.match(value)
        if single:
            return _expression(single["expr"], context)
        try:
            return _ENV.from_string(value).render(**context)
        except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError, AttributeError) as exc:
            raise TemplateFailure(f"{value!r}: {exc}") from None
    if isinstance(value, dict):
        return {key: render(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, context) for item in value]
    return value


def condition(template: str, context: dict) -> bool:
    """Evaluate an ``executeIf`` template to a boolean."""
    value = render(template, context)
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "no", "none", "null")
    return bool(value)
