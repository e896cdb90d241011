"""Flow templates: ``{{ … }}`` evaluated by Jinja2's immutable sandbox, with
StrictUndefined so a typo fails the step instead of rendering an empty string.

A template is tenant-written code running on shared workers, so it is bounded:
no attribute access to Python internals and no mutation (the sandbox); no
string, list or number it builds may exceed ``MAX_OUTPUT`` (checked before
building where Python would allocate it at once: ``*``, ``**``, ``%`` and
format widths, ``center``/``ljust``/``replace``…); nothing it renders may exceed
it either; and a render stops after ``RENDER_SECONDS``. Compiled templates are
cached, so a step rendered a thousand times is parsed once.
"""

from __future__ import annotations

import functools
import re
import string
import threading
import time
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined, filters, pass_eval_context
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..jsonsafe import dumps

MAX_OUTPUT = 1_000_000  # characters (or items) any one value may have
MAX_EXPONENT = 100
RENDER_SECONDS = 1.0
# Width and precision in a format spec: "%-10000s", "{:>10000}", "{:.5000f}".
_PERCENT_SPEC = re.compile(r"%[#0\- +]*(\d+|\*)?(?:\.(\d+|\*))?[a-zA-Z%]", re.ASCII)
_FORMAT_WIDTHS = re.compile(r"(\d+)")
_PAD_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


class TemplateFailure(Exception):
    """A template could not be evaluated; the message names the template and the cause."""


class TemplateLimit(ValueError):
    """A template went past a bound (size or time)."""


_clock = threading.local()


def _check_deadline() -> None:
    deadline = getattr(_clock, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise TemplateLimit(f"took longer than {RENDER_SECONDS} s")


def _bounded(size: int, what: str = "result") -> None:
    if size > MAX_OUTPUT:
        raise TemplateLimit(f"{what} longer than {MAX_OUTPUT}")


def _bounded_range(*args: int):
    """range() whose loops stop at the render deadline (the sandbox already caps their length)."""
    for index, value in enumerate(range(*args)):
        if index % 1000 == 0:
            _check_deadline()
        yield value


def _bounded_center(value, width=80):
    if isinstance(width, int):
        _bounded(width, "padding")
    return filters.do_center(value, width)


def _bounded_indent(value, width=4, *args, **kwargs):
    if isinstance(width, int):
        _bounded(width * (str(value).count("\n") + 1), "indentation")
    return filters.do_indent(value, width, *args, **kwargs)


def _bounded_format(value, *args, **kwargs):
    LimitedEnvironment.check_percent(str(value), args or tuple(kwargs.values()))
    return filters.do_format(value, *args, **kwargs)


def _check_format(spec: str, args: tuple, kwargs: dict) -> None:
    """Refuse str.format widths and precisions past the bound, literal or taken from the arguments."""
    for _, _, format_spec, _ in string.Formatter().parse(spec):
        if not format_spec:
            continue
        for number in _FORMAT_WIDTHS.findall(format_spec):
            _bounded(int(number), "format width")
        if "{" in format_spec:
            mappings = [a for a in args if isinstance(a, dict)]  # format_map's one argument
            for value in (*args, *kwargs.values(), *(v for m in mappings for v in m.values())):
                if isinstance(value, int):
                    _bounded(value, "format width")


@pass_eval_context
def _bounded_replace(eval_ctx, value, old, new, count=None):
    text = str(value)
    occurrences = text.count(str(old)) if count is None else min(count, text.count(str(old)))
    _bounded(len(text) + occurrences * max(0, len(str(new)) - len(str(old))))
    return filters.do_replace(eval_ctx, value, old, new, count)


class _BoundedConcat(CodeGenerator):
    """``a ~ b`` compiles to a string join the sandbox never sees: route it through a check, so
    doubling a string with ``~`` stops at the size bound like ``+`` and ``*`` do."""

    def visit_Concat(self, node, frame):  # noqa: N802 - Jinja's visitor naming
        self.write("environment.bounded_concat(")
        super().visit_Concat(node, frame)
        self.write(")")


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with bounds on size and time."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = _BoundedConcat

    def __init__(self, **options):
        super().__init__(**options)
        # lipsum builds paragraphs of any size without looking at the clock.
        self.globals.pop("lipsum", None)
        self.globals["range"] = _bounded_range
        self.filters.update(center=_bounded_center, indent=_bounded_indent, format=_bounded_format,
                            replace=_bounded_replace)

    @staticmethod
    def bounded_concat(value: Any) -> Any:
        """The result of ``~``, refused past the size bound."""
        _check_deadline()
        _bounded(len(value))
        return value

    def call_binop(self, context, operator, left, right):
        _check_deadline()
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
            raise TemplateLimit(f"exponent larger than {MAX_EXPONENT}")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                    _bounded(len(seq) * times)
        if operator == "%" and isinstance(left, str):
            self.check_percent(left, right)
        if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, type(left)):
            _bounded(len(left) + len(right))
        return super().call_binop(context, operator, left, right)

    @staticmethod
    def check_percent(spec: str, args: Any) -> None:
        """Refuse printf-style widths and precisions past the bound (they build the string at once)."""
        numbers = [a for a in (args if isinstance(args, tuple) else (args,)) if isinstance(a, int)]
        for width, precision in _PERCENT_SPEC.findall(spec):
            for part in (width, precision):
                if part and part != "*":  # ASCII digits (re.ASCII)
                    _bounded(int(part), "format width")
                elif part == "*" and numbers:
                    _bounded(max(numbers), "format width")

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
        _check_deadline()
        name = getattr(__obj, "__name__", "")
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            if name in _PAD_METHODS:
                width = args[0] if args else kwargs.get("width", kwargs.get("tabsize", 0))
                if isinstance(width, int):
                    _bounded(width * (len(owner) if name == "expandtabs" else 1))
            elif name == "replace" and len(args) >= 2:
                _bounded(len(owner) + owner.count(str(args[0])) * max(0, len(str(args[1])) - len(str(args[0]))))
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any):
        """str.format and str.format_map, sandboxed by Jinja, with their widths bounded."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        spec = value.__self__

        def bounded(*args, **kwargs):
            _check_format(spec, args, kwargs)
            return wrapped(*args, **kwargs)

        return bounded

    def getattr(self, obj, attribute):
        _check_deadline()
        # Data first: in JSON, `body.items` means the field, not the dict method (Jinja's default).
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        _check_deadline()
        return super().getitem(obj, argument)


_ENV = LimitedEnvironment(undefined=StrictUndefined, autoescape=False)
_SINGLE = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}).)*)\}\}\s*$", re.S)
_ERRORS = (TemplateError, ArithmeticError, TypeError, ValueError, LookupError, AttributeError, RecursionError,
           MemoryError)


@functools.lru_cache(maxsize=4096)
def _expression(source: str):
    return _ENV.compile_expression(source, undefined_to_none=False)


@functools.lru_cache(maxsize=4096)
def _template(source: str):
    return _ENV.from_string(source)


def _size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (list, dict)):
        return len(dumps(value))
    return 0


def _evaluate(source: str, context: dict) -> Any:
    value = _expression(source)(**context)
    if isinstance(value, Undefined):
        str(value)  # StrictUndefined raises here, naming what was missing
    _bounded(_size(value))
    return value


def _render_text(source: str, context: dict) -> str:
    parts: list[str] = []
    size = 0
    for part in _template(source).generate(**context):
        size += len(part)
        _bounded(size)
        parts.append(part)
    return "".join(parts)


def _render(value: Any, context: dict) -> Any:
    if isinstance(value, str):
        if "{{" not in value and "{%" not in value:
            return value
        single = _SINGLE.match(value)
        try:
            if single:
                return _evaluate(single["expr"], context)
            return _render_text(value, context)
        except _ERRORS as exc:
            shown = f"{{{{{single['expr']}}}}}" if single else repr(value[:200])
            raise TemplateFailure(f"{shown}: {exc}") from None
    if isinstance(value, dict):
        return {key: _render(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [_render(item, context) for item in value]
    return value


def render(value: Any, context: dict, seconds: float = RENDER_SECONDS) -> Any:
    """Render every string inside a JSON value; a string that is exactly one template keeps the
    result's type. TemplateFailure when a template fails or goes past a bound."""
    _clock.deadline = time.monotonic() + seconds
    try:
        return _render(value, context)
    finally:
        _clock.deadline = None


def condition(template: str, context: dict) -> bool:
    """Evaluate an ``executeIf`` template to a boolean."""
    value = render(template, context)
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "no", "none", "null")
    return bool(value)
