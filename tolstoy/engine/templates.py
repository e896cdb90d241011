"""Flow templates: ``{{ … }}`` evaluated by Jinja2's immutable sandbox, with
StrictUndefined so a typo fails the step instead of rendering an empty string.

A template is tenant-written code running on shared workers, so it is bounded:
no attribute access to Python internals and no mutation (the sandbox); no
string, list or number it builds may exceed ``MAX_OUTPUT`` (checked before
building where Python would allocate it at once: ``*``, ``**``, ``%`` and
format widths, ``center``/``ljust``/``replace``…); nothing it renders may exceed
it either; and a render stops after ``RENDER_SECONDS``. Compiled templates are
cached, so a step rendered a thousand times is parsed once.

**Secrets by derivation.** Parts of the context can be hidden (``scope``): a
login's token, an output a tool echoed a credential in, a value an earlier
template derived from a secret. Templates see them through views (``_HiddenMap``,
``_HiddenList``, a hidden top-level name) that hold the real values where no
template can reach them (the sandbox refuses ``_`` attributes, and the views are
no ``dict`` or ``list`` whose contents C code could read behind their back):
every way to get at a hidden value, by key, index, iteration, ``str``, JSON or
comparison, goes through the view's own methods, which mark the render in
progress as having *read a secret*. ``render_tracked`` hides each template
string whose render read one, whole, whatever string functions, filters,
loops or arithmetic made its result, so no function launders a secret; a
template that copies hidden parts as they are (``{{ steps.login.body }}``) keeps
them hidden exactly where they are, and reading only the parts that are not
hidden (``{{ steps.login.body.user }}``, a dict's keys, a list's length) hides
nothing.
"""

from __future__ import annotations

import functools
import re
import string
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined, filters, pass_eval_context
from jinja2.compiler import CodeGenerator
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..jsonsafe import dumps
from ..redaction import Hidden

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

# ---- hidden parts of the context ---------------------------------------------------------------

class _Reads(threading.local):
    """Whether the template string being rendered on this thread read a hidden value."""

    secret = False


_reads = _Reads()


def _read_secret() -> None:
    _reads.secret = True


def _view(value: Any, tree: Hidden) -> Any:
    """What a template gets for ``value``: itself where nothing is hidden; a view where parts are;
    the value, with the render marked, where it is hidden whole."""
    if tree is None:
        return value
    if tree is not True:
        if isinstance(value, dict):
            return _HiddenMap(value, tree)
        if isinstance(value, list):
            return _HiddenList(value, tree)
    _read_secret()
    return value


class _HiddenMap(Mapping):
    """A dict some of whose parts are hidden: its keys and size are free to read; a hidden value,
    or the whole as text or JSON, marks the render."""

    __slots__ = ("_value", "_hidden")

    def __init__(self, value: dict, hidden: dict):
        self._value = value
        self._hidden = hidden

    def __getitem__(self, key):
        return _view(self._value[key], self._hidden.get(key))

    def __iter__(self):
        return iter(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __contains__(self, key) -> bool:
        return key in self._value

    def __str__(self) -> str:
        _read_secret()
        return str(self._value)

    __repr__ = __str__


class _HiddenList(Sequence):
    """A list some of whose items are hidden (their positions in ``_hidden``)."""

    __slots__ = ("_value", "_hidden")

    def __init__(self, value: list, hidden: dict):
        self._value = value
        self._hidden = hidden

    def __getitem__(self, index):
        if isinstance(index, slice):
            picked = range(len(self._value))[index]
            tree = {n: self._hidden[i] for n, i in enumerate(picked) if i in self._hidden}
            return _view([self._value[i] for i in picked], tree or None)
        item = self._value[index]  # IndexError, TypeError as a list raises them
        return _view(item, self._hidden.get(index % len(self._value)))

    def __len__(self) -> int:
        return len(self._value)

    def __str__(self) -> str:
        _read_secret()
        return str(self._value)

    __repr__ = __str__

    def __add__(self, other):
        _read_secret()
        other = _plain(other)
        _bounded(len(self._value) + len(other))
        return self._value + other

    def __radd__(self, other):
        _read_secret()
        other = _plain(other)
        _bounded(len(self._value) + len(other))
        return other + self._value


class _HiddenName:
    """A top-level name whose whole value is hidden (a foreach item derived from a secret)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


class _ScopeContext(Context):
    """Jinja's template context; resolving a hidden top-level name marks the render."""

    def resolve_or_missing(self, key: str) -> Any:
        value = super().resolve_or_missing(key)
        if type(value) is _HiddenName:
            _read_secret()
            return value.value
        return value


def _plain(value: Any) -> Any:
    """A view's real value, the render marked (it is read whole)."""
    if isinstance(value, (_HiddenMap, _HiddenList)):
        _read_secret()
        return value._value
    return value


def _json_default(value: Any) -> Any:
    """``tojson`` of a view: its real value, the render marked."""
    if isinstance(value, (_HiddenMap, _HiddenList)):
        return _plain(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _unwrap(value: Any) -> tuple[Any, Hidden]:
    """A template's result with the views in it replaced by their real values, and where those
    hide something (a copy keeps the hidden parts hidden where they are)."""
    if isinstance(value, (_HiddenMap, _HiddenList)):
        return value._value, value._hidden
    if isinstance(value, dict):
        out, tree = {}, {}
        for key, child in value.items():
            out[key], sub = _unwrap(child)
            if sub is not None:
                tree[key] = sub
        return out, tree or None
    if isinstance(value, (list, tuple)):
        pairs = [_unwrap(child) for child in value]
        tree = {i: sub for i, (_, sub) in enumerate(pairs) if sub is not None}
        items = [item for item, _ in pairs]
        return (tuple(items) if isinstance(value, tuple) else items), tree or None
    return value, None


def scope(values: dict, hidden: dict[str, Hidden]) -> dict:
    """The context templates see: ``values`` with the parts ``hidden`` names (per top-level name:
    a Hidden tree) behind views that mark a render reading them (``render_tracked``)."""
    if not any(tree is not None for tree in hidden.values()):
        return values
    seen = dict(values)
    for name, tree in hidden.items():
        if tree is None or name not in seen:
            continue
        value = seen[name]
        if tree is not True and isinstance(value, dict):
            seen[name] = _HiddenMap(value, tree)
        elif tree is not True and isinstance(value, list):
            seen[name] = _HiddenList(value, tree)
        else:
            seen[name] = _HiddenName(value)
    return seen


def _has_views(context: dict) -> bool:
    return any(isinstance(v, (_HiddenMap, _HiddenList, _HiddenName)) for v in context.values())


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
    context_class = _ScopeContext

    def __init__(self, **options):
        super().__init__(**options)
        self.policies["json.dumps_kwargs"] = {"sort_keys": True, "default": _json_default}
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
        if isinstance(obj, (dict, _HiddenMap)) and attribute in obj:
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
    return value


def _render_text(source: str, context: dict) -> str:
    parts: list[str] = []
    size = 0
    for part in _template(source).generate(**context):
        size += len(part)
        _bounded(size)
        parts.append(part)
    return "".join(parts)


def _render(value: Any, context: dict, views: bool) -> tuple[Any, Hidden]:
    if isinstance(value, str):
        if "{{" not in value and "{%" not in value:
            return value, None
        single = _SINGLE.match(value)
        _reads.secret = False
        try:
            result = _evaluate(single["expr"], context) if single else _render_text(value, context)
            result, tree = _unwrap(result) if views else (result, None)
            _bounded(_size(result))
        except _ERRORS as exc:
            shown = f"{{{{{single['expr']}}}}}" if single else repr(value[:200])
            # A template that read a secret may have put what it made of it in the message ("no
            # attribute 'ACC-7HQ…'"): the message goes into the step's error, so it is withheld.
            cause = f"{type(exc).__name__} (details withheld: the template read a secret)" if _reads.secret else exc
            raise TemplateFailure(f"{shown}: {cause}") from None
        return result, True if _reads.secret else tree
    if isinstance(value, dict):
        out, tree = {}, {}
        for key, item in value.items():
            out[key], sub = _render(item, context, views)
            if sub is not None:
                tree[key] = sub
        return out, tree or None
    if isinstance(value, list):
        pairs = [_render(item, context, views) for item in value]
        tree = {i: sub for i, (_, sub) in enumerate(pairs) if sub is not None}
        return [item for item, _ in pairs], tree or None
    return value, None


def render_tracked(value: Any, context: dict, seconds: float = RENDER_SECONDS) -> tuple[Any, Hidden]:
    """Render every string inside a JSON value (as ``render``); also returns where the result holds
    secrets: each template string whose render read a hidden part of the context (``scope``) is
    hidden whole, and hidden parts copied as they are stay hidden where they are."""
    _clock.deadline = time.monotonic() + seconds
    try:
        return _render(value, context, _has_views(context))
    finally:
        _clock.deadline = None
        _reads.secret = False


def render(value: Any, context: dict, seconds: float = RENDER_SECONDS) -> Any:
    """Render every string inside a JSON value; a string that is exactly one template keeps the
    result's type. TemplateFailure when a template fails or goes past a bound."""
    return render_tracked(value, context, seconds)[0]


def condition(template: str, context: dict) -> bool:
    """Evaluate an ``executeIf`` template to a boolean."""
    value = render(template, context)
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "no", "none", "null")
    return bool(value)
