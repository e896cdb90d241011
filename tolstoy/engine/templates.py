"""Flow templates: ``{{ … }}`` evaluated by Jinja2's immutable sandbox, with
StrictUndefined so a typo fails the step instead of rendering an empty string.

**A budget, paid before the cost.** A template is tenant-written code running on
shared workers, so every render (a step's config, a foreach item's, an
``executeIf``) has a budget (``Limits``), and going past any bound fails the step
with a message naming the bound and its setting:

- *operations* (``TOLSTOY_TEMPLATE_MAX_OPERATIONS``): every loop iteration (the
  compiled ``for`` body and its ``if`` test spend one, ``_BudgetedCode``), every
  attribute, item, call, operator, filter, test and output spends one, and
  building a value spends one more per ``BUILD_UNIT`` characters or items, so the
  cost of a render is counted whatever it does, and the budget also bounds what a
  render may build in all;
- *time* (``TOLSTOY_TEMPLATE_MAX_MS``) and *stop*: every ``LOOK_EVERY``
  operations the render looks at the clock and at the events it was given
  (``bounded``: the run's cancel, the worker's shutdown), and stops
  (``RenderStopped``) within a few microseconds of one being set;
- *size* (``TOLSTOY_TEMPLATE_MAX_SIZE``): no value a template builds may be
  larger than it, measured as its JSON text would be (``_weight``: deep, so a list
  holding the same big list twice weighs twice), and it is checked *before*
  building wherever Python would build at once: ``*`` and ``+``, ``~``, ``%`` and
  ``format`` (their widths and what each field may print), padding, ``replace``,
  ``join``, ``indent``, ``wordwrap``, ``batch``, ``slice``, ``sum``, ``tojson``…;
  literals and what a render returns are weighed as they are made;
- *integers* have at most ``MAX_INTEGER_DIGITS`` digits (Python's own limit for
  turning one into text), checked from the operands' bit lengths before ``*`` and
  ``**`` multiply, so ``((10**100)**100)**100`` is refused before the big
  multiplication that would hold the interpreter for seconds.

Methods of strings, numbers, lists and dicts are an allow-list (``_METHODS``),
each either bounded by what it is called on or projected before it runs; filters
are Jinja's, with the amplifying ones replaced by bounded versions and ``urlize``
(HTML) left out. What a render returns must be JSON (``_json_result``): a
template yielding ``self``, a function, an undefined value inside a list, a
non-finite number or a string PostgreSQL cannot store fails its step with a
message saying so. Compiled templates are cached, so a step rendered a thousand
times is parsed once.

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

import contextlib
import contextvars
import copy
import functools
import math
import re
import string
import threading
import time
from collections.abc import Iterator, Mapping, MappingView, Sequence
from dataclasses import dataclass
from types import BuiltinFunctionType
from typing import Any

from jinja2 import StrictUndefined, Undefined, filters, nodes, pass_environment, pass_eval_context
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from markupsafe import soft_str

from ..jsonsafe import MAX_JSON_DEPTH, UNSTORABLE
from ..redaction import Hidden

# ---- the budget of a render ----------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """The budget of one render; the engine takes it from the settings named in each field."""

    max_operations: int = 1_000_000  # TOLSTOY_TEMPLATE_MAX_OPERATIONS
    max_ms: int = 1000  # TOLSTOY_TEMPLATE_MAX_MS
    max_size: int = 1_000_000  # TOLSTOY_TEMPLATE_MAX_SIZE: characters, items, or JSON text of a value


DEFAULT_LIMITS = Limits()
MAX_EXPONENT = 100
# Python refuses to turn a longer integer into text (sys.int_info.default_max_str_digits); a template
# may not make one, and the bit length that guarantees it is checked before multiplying.
MAX_INTEGER_DIGITS = 4300
MAX_INTEGER_BITS = int(MAX_INTEGER_DIGITS * math.log2(10))
BUILD_UNIT = 8  # building this many characters or items costs one operation more
LOOK_EVERY = 64  # operations between looks at the clock and the stop events
# Width and precision in a format spec: "%-10000s", "{:>10000}", "{:.5000f}".
_PERCENT_SPEC = re.compile(r"%[#0\- +]*(\d+|\*)?(?:\.(\d+|\*))?[a-zA-Z%]", re.ASCII)
_FORMAT_WIDTHS = re.compile(r"(\d+)")


class TemplateFailure(Exception):
    """A template could not be evaluated; the message names the template and the cause."""


class TemplateLimit(ValueError):
    """A template went past a bound of its budget; the message names the bound and its setting."""


class NotJson(TypeError):
    """A template's value is not JSON (a Python object, a function, an undefined value…)."""


class RenderStopped(Exception):  # noqa: N818 - not an error: the run's owner asked for it
    """The render was stopped because an event it watches was set (the run was cancelled, lost its
    lease, or the worker is stopping): the run loop ends the run as it would between steps."""


_settings: contextvars.ContextVar[tuple[Limits, tuple[threading.Event, ...]]] = contextvars.ContextVar(
    "tolstoy_template_settings", default=(DEFAULT_LIMITS, ()))


@contextlib.contextmanager
def bounded(limits: Limits, *stops: threading.Event) -> Iterator[None]:
    """Renders in this block (and in the threads that copy its context: foreach items) use ``limits``
    and stop (RenderStopped) once any of ``stops`` is set."""
    token = _settings.set((limits, stops))
    try:
        yield
    finally:
        _settings.reset(token)


@contextlib.contextmanager
def stopped_only_by(*stops: threading.Event) -> Iterator[None]:
    """Renders in this block keep their limits but stop only for ``stops``."""
    token = _settings.set((_settings.get()[0], stops))
    try:
        yield
    finally:
        _settings.reset(token)


class _Budget:
    """What one render has spent: operations, time, and the containers it weighed (``weights``, kept
    alive by it so that an id is not reused while it is remembered)."""

    __slots__ = ("limits", "ops", "look_at", "deadline", "stops", "weights")

    def __init__(self, limits: Limits, stops: tuple[threading.Event, ...]):
        self.limits = limits
        self.ops = 0
        self.look_at = min(LOOK_EVERY, limits.max_operations + 1)
        self.deadline = time.monotonic() + limits.max_ms / 1000
        self.stops = stops
        self.weights: dict[int, tuple[Any, int]] = {}

    def look(self) -> None:
        if self.ops > self.limits.max_operations:
            raise TemplateLimit(f"more than {self.limits.max_operations} operations "
                                "(TOLSTOY_TEMPLATE_MAX_OPERATIONS)")
        if time.monotonic() > self.deadline:
            raise TemplateLimit(f"took longer than {self.limits.max_ms} ms (TOLSTOY_TEMPLATE_MAX_MS)")
        for event in self.stops:
            if event.is_set():
                raise RenderStopped()
        self.look_at = min(self.ops + LOOK_EVERY, self.limits.max_operations + 1)


_state = threading.local()


def _budget() -> _Budget:
    budget = getattr(_state, "budget", None)
    if budget is None:
        raise RuntimeError("templates are rendered only by render_tracked, which gives them a budget")
    return budget


def _tick(cost: int = 1) -> None:
    """Spend ``cost`` operations of the render's budget."""
    budget = _state.budget
    budget.ops += cost
    if budget.ops >= budget.look_at:
        budget.look()


def _charge(value: Any) -> Any:
    """Spend what building ``value`` cost (one operation per BUILD_UNIT characters or items); an
    integer past MAX_INTEGER_BITS is refused however it was made."""
    kind = type(value)
    if kind is str or kind is list or kind is tuple or kind is dict:
        if len(value) >= BUILD_UNIT:
            _tick(len(value) // BUILD_UNIT)
    elif kind is int:
        _check_bits(value.bit_length())
    return value


def _check_size(size: int, what: str = "result") -> None:
    limit = _budget().limits.max_size
    if size > limit:
        raise TemplateLimit(f"{what} longer than {limit} (TOLSTOY_TEMPLATE_MAX_SIZE)")


def _check_bits(bits: int) -> None:
    if bits > MAX_INTEGER_BITS:
        raise TemplateLimit(f"integer of more than {MAX_INTEGER_DIGITS} digits")


def _weight(value: Any) -> int:
    """About how long ``value`` is as JSON text (as ``str`` would print it, for what is not JSON),
    counting a container each time it is held (``[a, a]`` weighs twice ``a``): what printing,
    comparing or storing it costs. Stops counting past the size bound (the answer is then anything
    larger); a container weighed once in a render is remembered."""
    budget = _budget()
    limit = budget.limits.max_size
    memo = budget.weights
    total = 0
    visited = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        visited += 1
        kind = type(item)
        if kind is str or isinstance(item, str):
            total += len(item) + 2
        elif item is None or kind is bool:
            total += 5
        elif kind is int:
            total += item.bit_length() * 77 // 256 + 2  # digits: bits * log10(2)
        elif kind is float:
            total += 24
        elif kind is list or kind is tuple or kind is dict:
            known = memo.get(id(item))
            if known is not None and known[0] is item:
                total += known[1]
                continue
            total += 2 + (3 if kind is dict else 1) * len(item)
            if total <= limit:
                stack.extend(item)
                if kind is dict:
                    stack.extend(item.values())
        elif isinstance(item, (_HiddenMap, _HiddenList)):
            stack.append(item._value)
        elif isinstance(item, _HiddenName):
            stack.append(item.value)
        elif isinstance(item, Namespace):
            stack.append(item._Namespace__attrs)
        elif isinstance(item, MappingView):
            total += 2 + len(item)
            if total <= limit:
                stack.extend(item)
        else:  # a Python object prints as a short repr (Undefined, a macro, the loop…)
            total += 64
    if visited >= BUILD_UNIT:
        _tick(visited // BUILD_UNIT)
    weight = min(total, limit + 1)
    if type(value) in (list, tuple, dict) and len(value) >= BUILD_UNIT:
        memo[id(value)] = (value, weight)
    return weight


def _text_size(value: Any) -> int:
    """At most how long ``str(value)`` (or a ``%``/``format`` conversion of it) is."""
    if isinstance(value, str):
        return len(value)
    if type(value) is float:
        return 330  # '%f' % 1e308 prints every digit
    return _weight(value)


def _layout(value: Any) -> tuple[int, int]:
    """(values, depth) of a JSON value, counted up to the size bound: what indenting it costs."""
    limit = _budget().limits.max_size
    count = deepest = 0
    stack = [(value, 1)]
    while stack and count <= limit:
        item, depth = stack.pop()
        count += 1
        deepest = max(deepest, depth)
        if isinstance(item, (_HiddenMap, _HiddenList)):
            item = item._value
        if isinstance(item, (list, tuple)):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
    _tick(count // BUILD_UNIT)
    return count, deepest


# ---- projections: the size of what an operation would build, before it builds it -----------------

def _project_percent(spec: str, args: Any) -> None:
    """``spec % args`` (and the ``format`` filter): refused when a width or precision, or what its
    conversions may print in all, is past the size bound."""
    if isinstance(args, tuple):
        values = args
    elif isinstance(args, Mapping):
        values = tuple(args.values())
    else:
        values = (args,)
    numbers = [v for v in values if type(v) is int]
    widest = max((_text_size(v) for v in values), default=0)
    total = len(spec)
    for width, precision in _PERCENT_SPEC.findall(spec):
        field = widest
        for part in (width, precision):
            if part == "*":
                part = max(numbers, default=0)
            field = max(field, int(part) if part else 0)  # ASCII digits (re.ASCII)
            _check_size(field, "format width")
        total += field
    _check_size(total)


def _project_format(spec: str, args: tuple, kwargs: dict) -> None:
    """``spec.format(*args, **kwargs)``: widths and precisions, literal or taken from the arguments,
    and what the fields may print in all."""
    mappings = [a for a in args if isinstance(a, Mapping)]  # format_map's one argument
    values = (*args, *kwargs.values(), *(v for m in mappings for v in m.values()))
    widest = max((_text_size(v) for v in values), default=0)
    total = 0
    for literal, field, format_spec, _ in string.Formatter().parse(spec):
        total += len(literal)
        if field is None:
            continue
        width = widest
        for number in _FORMAT_WIDTHS.findall(format_spec or ""):
            width = max(width, int(number))
        if format_spec and "{" in format_spec:
            width = max([width, *(v for v in values if type(v) is int)])
        _check_size(width, "format width")
        total += width
    _check_size(total)


def _project_join(separator: Any, items: list) -> None:
    _check_size(sum(_text_size(item) for item in items) + _text_size(separator) * max(len(items) - 1, 0))


def _project_replace(text: str, old: Any, new: Any, count: Any = None) -> None:
    found = text.count(str(old)) if str(old) else len(text) + 1
    if type(count) is int and count >= 0:
        found = min(found, count)
    _check_size(len(text) + found * max(0, len(str(new)) - len(str(old))))


def _project_pad(text: str, width: Any) -> None:
    if type(width) is int:
        _check_size(max(width, len(text)), "padding")


def _project_expandtabs(text: str, tabsize: Any = 8) -> None:
    if type(tabsize) is int:
        _check_size(len(text) + text.count("\t") * tabsize + text.count("\n"), "padding")


def _project_binop(operator: str, left: Any, right: Any) -> None:
    """What ``left <operator> right`` would build, refused past the bounds before it is built."""
    if operator == "*":
        if type(left) is int and type(right) is int:
            _check_bits(left.bit_length() + right.bit_length())
            return
        for seq, times in ((left, right), (right, left)):
            if isinstance(times, int) and times > 1:
                if isinstance(seq, str):
                    _check_size(len(seq) * times)
                elif isinstance(seq, (list, tuple)):
                    _check_size(len(seq) * times)
                    _check_size(_weight(seq) * times)
    elif operator == "**":
        if isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
            raise TemplateLimit(f"exponent larger than {MAX_EXPONENT}")
        if type(left) is int and type(right) is int and right > 0 and abs(left) > 1:
            _check_bits(left.bit_length() * right)
    elif operator == "%" and isinstance(left, str):
        _project_percent(left, right)
    elif operator == "+":
        if isinstance(left, str) and isinstance(right, str):
            _check_size(len(left) + len(right))
        elif isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
            _check_size(_weight(left) + _weight(right))


def _built(value: Any) -> Any:
    """A list, tuple or dict a template wrote (``[a, a]``, ``{'k': v}``): refused past the size bound."""
    _tick()
    if len(value) > 1:
        _check_size(_weight(value))
    return _charge(value)


def _ticking(items: Iterator) -> Iterator:
    """An iterator a filter returned (map, select, batch…): each item it yields spends operations, so
    what consumes it (``list``, ``join``, a loop) stays within the budget."""
    for item in items:
        _tick()
        yield _charge(item)


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
        _project_binop("+", self._value, other)
        return self._value + other

    def __radd__(self, other):
        _read_secret()
        other = _plain(other)
        _project_binop("+", other, self._value)
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


# ---- filters and methods -----------------------------------------------------------------------

def _bounded_center(value, width=80):
    _project_pad(str(value), width)
    return filters.do_center(value, width)


def _bounded_indent(value, width=4, *args, **kwargs):
    text = str(value)
    indentation = width if type(width) is int else len(str(width))
    _check_size(len(text) + (text.count("\n") + 2) * indentation, "indentation")
    return filters.do_indent(value, width, *args, **kwargs)


def _bounded_format(value, *args, **kwargs):
    _project_percent(str(value), args or kwargs)
    return filters.do_format(value, *args, **kwargs)


@pass_eval_context
def _bounded_replace(eval_ctx, value, old, new, count=None):
    _project_replace(str(value), old, new, count)
    return filters.do_replace(eval_ctx, value, old, new, count)


@pass_eval_context
def _bounded_join(eval_ctx, value, d="", attribute=None):
    if attribute is not None:
        value = map(filters.make_attrgetter(eval_ctx.environment, attribute), value)
    items = list(_ticking(iter(value)))
    _project_join(d, items)
    return filters.sync_do_join(eval_ctx, items, d)


@pass_environment
def _bounded_wordwrap(environment, s, width=79, break_long_words=True, wrapstring=None, break_on_hyphens=True):
    text = str(s)
    joint = len(str(environment.newline_sequence if wrapstring is None else wrapstring))
    if type(width) is int and width > 0:
        # Two lines in a row hold more than ``width`` characters (else they would be one), or a line is
        # a paragraph's last: that many joints at most.
        lines = min(len(text), 2 * (len(text) // width + 1)) + text.count("\n") + 1
        _check_size(len(text) + lines * joint)
    return filters.do_wordwrap(environment, s, width, break_long_words, wrapstring, break_on_hyphens)


def _bounded_batch(value, linecount, fill_with=None):
    if fill_with is not None and type(linecount) is int:
        _check_size(linecount)
        _check_size(_weight(fill_with) * linecount)
    return filters.do_batch(value, linecount, fill_with)


def _bounded_slice(value, slices, fill_with=None):
    if type(slices) is int:
        _check_size(slices)
        if fill_with is not None:
            _check_size(_weight(fill_with) * slices)
    return filters.sync_do_slice(value, slices, fill_with)


@pass_environment
def _bounded_sum(environment, iterable, attribute=None, start=0):
    """``sum`` one addition at a time, each bounded like ``+`` (C's sum would copy a growing list
    over and over where nothing can stop it); a growing sequence's weight is kept, not recounted."""
    if attribute is not None:
        iterable = map(filters.make_attrgetter(environment, attribute), iterable)
    total = start
    weight = _weight(total) if isinstance(total, (list, tuple)) else 0
    for item in iterable:
        _tick()
        if isinstance(total, (list, tuple)) and isinstance(item, (list, tuple)):
            weight += _weight(item)
            _check_size(weight)
        else:
            _project_binop("+", total, item)
        total = _charge(total + item)
    return total


def _bounded_round(value, precision=0, method="common"):
    if type(precision) is int and abs(precision) > MAX_INTEGER_DIGITS:
        raise TemplateLimit(f"rounding to more than {MAX_INTEGER_DIGITS} digits")
    return filters.do_round(value, precision, method)


@pass_eval_context
def _bounded_tojson(eval_ctx, value, indent=None):
    size = _weight(value)
    if indent is not None:
        count, depth = _layout(value)
        size += count * (depth * (indent if type(indent) is int else len(str(indent))) + 2)
    _check_size(size)
    return filters.do_tojson(eval_ctx, value, indent)


def _bounded_pprint(value):
    count, depth = _layout(value)
    _check_size(_weight(value) + count * (depth + 2))
    return filters.do_pprint(value)


def _bounded_string(value):
    _check_size(_text_size(value))
    return soft_str(value)


_BOUNDED_FILTERS = {
    "center": _bounded_center, "indent": _bounded_indent, "format": _bounded_format, "replace": _bounded_replace,
    "join": _bounded_join, "wordwrap": _bounded_wordwrap, "batch": _bounded_batch, "slice": _bounded_slice,
    "sum": _bounded_sum, "round": _bounded_round, "tojson": _bounded_tojson, "pprint": _bounded_pprint,
    "string": _bounded_string,
}
# HTML links: what it adds to each word cannot be told before it runs.
_LEFT_OUT_FILTERS = frozenset({"urlize"})


def _budgeted(function):
    """A filter or test as templates call it: it spends an operation, and what it builds is paid for
    (an iterator it returns, item by item)."""

    @functools.wraps(function)  # keeps jinja_pass_arg: Jinja passes the same arguments
    def spend(*args, **kwargs):
        _tick()
        result = function(*args, **kwargs)
        if isinstance(result, Iterator):
            return _ticking(result)
        return _charge(result)

    return spend


def _method_join(owner: str, items: Any = ()) -> list:
    items = list(_ticking(iter(items)))
    _project_join(owner, items)
    return items


# The methods templates may call on the values they hold, each with what it may build checked
# before it runs (None: never longer than what it is called on, or a number). Any other method of
# these types is refused: the next one Python adds is not one more way to build without a bound.
_STR_METHODS: dict[str, Any] = {
    # Case mapping may make a string longer ('ß' → 'SS'), three times at most: paid for once built.
    **dict.fromkeys(("capitalize", "casefold", "lower", "upper", "swapcase", "title", "strip", "lstrip", "rstrip",
                     "removeprefix", "removesuffix", "split", "rsplit", "splitlines", "partition", "rpartition",
                     "startswith", "endswith", "find", "rfind", "index", "rindex",
                     "count", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower",
                     "isnumeric", "isprintable", "isspace", "istitle", "isupper"), None),
    "center": _project_pad, "ljust": _project_pad, "rjust": _project_pad, "zfill": _project_pad,
    "expandtabs": _project_expandtabs, "replace": _project_replace,
    "join": _method_join,  # returns the items it read: an iterator can be read only once
    "format": None, "format_map": None,  # bounded by wrap_str_format
}
_METHODS: dict[type, dict[str, Any]] = {
    str: _STR_METHODS,
    dict: dict.fromkeys(("get", "keys", "values", "items", "copy")),
    list: dict.fromkeys(("count", "index", "copy")),
    tuple: dict.fromkeys(("count", "index")),
    int: dict.fromkeys(("bit_length", "bit_count", "conjugate", "as_integer_ratio")),
    float: dict.fromkeys(("is_integer", "as_integer_ratio", "conjugate", "hex")),
}


_TYPE_NAMES = frozenset(kind.__name__ for kind in _METHODS)


def _method_rule(obj: Any) -> tuple[bool, Any]:
    """(is a method of a plain value, its projection) for a callable a template calls."""
    owner = getattr(obj, "__self__", None)
    if isinstance(owner, type) or (owner is None and isinstance(obj, BuiltinFunctionType)):
        # A class or static method reached through a value: {}.fromkeys, ''.maketrans, (1).from_bytes.
        kind, _, name = getattr(obj, "__qualname__", "").rpartition(".")
        if kind in _TYPE_NAMES or (isinstance(owner, type) and issubclass(owner, tuple(_METHODS))):
            raise SecurityError(f"the {kind} method {name!r} is not available in templates")
        return False, None
    for kind in type(owner).__mro__ if owner is not None else ():
        methods = _METHODS.get(kind)
        if methods is not None:
            name = getattr(obj, "__name__", "")
            if name not in methods:
                raise SecurityError(f"the {kind.__name__} method {name!r} is not available in templates")
            return True, methods[name]
    return False, None


_SCALARS = frozenset({int, float, bool, type(None)})


def _finalize(value: Any) -> Any:
    """What ``{{ … }}`` prints in text: JSON values only (a Python object's repr is no output), within
    the size bound."""
    _tick()
    if isinstance(value, str) or type(value) in _SCALARS:
        return value
    _check_size(_json_size(value, strict=False), "value")
    return value

# ---- the environment ---------------------------------------------------------------------------

# Markers the code generator writes as direct calls (no template can write an EnvironmentAttribute).
_LOOP_STEP = "tick (one loop iteration)"
_LOOP_TEST = "tick (one item a loop's test looks at)"

def _source(value: Any) -> str:
    """Python source for a constant Jinja folded (``has_safe_repr`` values), non-finite floats included."""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"float({str(value)!r})"
    if type(value) in (list, tuple):
        inner = ", ".join(_source(item) for item in value)
        return f"[{inner}]" if type(value) is list else f"({inner}{',' if len(value) == 1 else ''})"
    if type(value) is dict:
        return "{" + ", ".join(f"{_source(k)}: {_source(v)}" for k, v in value.items()) + "}"
    return repr(value)


class _BudgetedCode(CodeGenerator):
    """Jinja's code generator, with the budget where Python would loop or build on its own: each
    ``for`` iteration (and each item its ``if`` looks at) spends an operation, so loops nested over a
    long string stop at the budget although they call nothing; ``a ~ b`` is projected before it joins;
    list, tuple and dict literals are weighed as they are made."""

    def visit_For(self, node, frame):  # noqa: N802 - Jinja's visitor naming
        # Jinja allows no node types of its own: the first statement of the body is a marker that
        # visit_ExprStmt writes as a direct call (templates cannot write an EnvironmentAttribute).
        node = copy.copy(node)
        node.body = [nodes.ExprStmt(nodes.EnvironmentAttribute(_LOOP_STEP), lineno=node.lineno), *node.body]
        if node.test is not None:
            node.test = nodes.And(nodes.EnvironmentAttribute(_LOOP_TEST), node.test, lineno=node.lineno)
        node.set_environment(self.environment)
        super().visit_For(node, frame)

    def visit_ExprStmt(self, node, frame):  # noqa: N802
        if isinstance(node.node, nodes.EnvironmentAttribute) and node.node.name == _LOOP_STEP:
            self.writeline("environment.tick()", node)
        else:
            super().visit_ExprStmt(node, frame)

    def visit_EnvironmentAttribute(self, node, frame):  # noqa: N802
        if node.name == _LOOP_TEST:
            self.write("environment.tick_true()")
        else:
            super().visit_EnvironmentAttribute(node, frame)

    def visit_Const(self, node, frame):  # noqa: N802
        # A folded constant is written as Python source: Jinja writes float('nan') as `nan`, a name.
        self.write(_source(node.as_const(frame.eval_ctx)))

    def visit_Concat(self, node, frame):  # noqa: N802
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.bounded_concat({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def _built(self, visit, node, frame):
        self.write("environment.built(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node, frame):  # noqa: N802
        self._built(super().visit_List, node, frame)

    def visit_Dict(self, node, frame):  # noqa: N802
        self._built(super().visit_Dict, node, frame)

    def visit_Tuple(self, node, frame):  # noqa: N802
        if node.ctx != "load":  # a target: {% for a, b in … %}, {% set a, b = … %}
            return super().visit_Tuple(node, frame)
        return self._built(super().visit_Tuple, node, frame)


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox within a render's budget (see the module's docstring)."""

    intercepted_binops = frozenset({"*", "**", "%", "+", "-", "/", "//"})
    code_generator_class = _BudgetedCode
    context_class = _ScopeContext

    def __init__(self, **options):
        super().__init__(finalize=_finalize, **options)
        self.policies["json.dumps_kwargs"] = {"sort_keys": True, "default": _json_default}
        # lipsum builds paragraphs of any size.
        self.globals.pop("lipsum", None)
        chosen = {**self.filters, **_BOUNDED_FILTERS}
        self.filters = {name: _budgeted(f) for name, f in chosen.items() if name not in _LEFT_OUT_FILTERS}
        self.tests = {name: _budgeted(test) for name, test in self.tests.items()}

    tick = staticmethod(_tick)
    built = staticmethod(_built)

    @staticmethod
    def tick_true() -> bool:
        _tick()
        return True

    @staticmethod
    def concat(parts) -> str:
        """Joins what a block, a macro or a ``{% set %}`` block printed (Jinja's ``concat``)."""
        parts = list(parts)
        _check_size(sum(len(part) for part in parts))
        return _charge("".join(parts))

    @staticmethod
    def bounded_concat(join, values: tuple) -> str:
        """``a ~ b ~ c``: refused past the size bound before the parts are joined."""
        _tick()
        _check_size(sum(_text_size(value) for value in values))
        return _charge(join(values))

    def call_binop(self, context, operator, left, right):
        _tick()
        _project_binop(operator, left, right)
        return _charge(super().call_binop(context, operator, left, right))

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
        _tick()
        method, project = _method_rule(__obj)
        if project is not None:
            if project is _method_join:
                args = (project(__obj.__self__, *args, **kwargs),)
                kwargs = {}
            else:
                project(__obj.__self__, *args, **kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, Iterator) and not method:
            return _ticking(result)
        return _charge(result)

    def wrap_str_format(self, value: Any):
        """str.format and str.format_map, sandboxed by Jinja, with what they print projected."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        spec = value.__self__

        def bounded(*args, **kwargs):
            _project_format(spec, args, kwargs)
            return wrapped(*args, **kwargs)

        return bounded

    def getattr(self, obj, attribute):
        _tick()
        # Data first: in JSON, `body.items` means the field, not the dict method (Jinja's default).
        if isinstance(obj, (dict, _HiddenMap)) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        _tick()
        return super().getitem(obj, argument)


_ENV = LimitedEnvironment(undefined=StrictUndefined, autoescape=False)
_SINGLE = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}).)*)\}\}\s*$", re.S)


@functools.lru_cache(maxsize=4096)
def _expression(source: str):
    return _ENV.compile_expression(source, undefined_to_none=False)


@functools.lru_cache(maxsize=4096)
def _template(source: str):
    return _ENV.from_string(source)


def _json_size(value: Any, strict: bool = True) -> int:
    """The weight of a value a template yields, refusing what is not JSON (NotJson): a Python
    object, an undefined value (its own error), a key that is no string, nesting deeper than
    MAX_JSON_DEPTH (what the API accepts: whatever reads it later may recurse); with ``strict``,
    also what PostgreSQL cannot store: a non-finite number, NUL or a lone surrogate."""
    limit = _budget().limits.max_size
    total = 0
    stack = [(value, 0)]
    while stack and total <= limit:
        item, level = stack.pop()
        kind = type(item)
        if isinstance(item, str):
            if strict and UNSTORABLE.search(item):
                raise NotJson("a string holding NUL or an unpaired surrogate, which cannot be stored")
            total += len(item) + 2
        elif item is None or kind is bool or kind is int:
            total += 5 if kind is not int else item.bit_length() * 77 // 256 + 2
        elif kind is float:
            if strict and not math.isfinite(item):
                raise NotJson(f"{item}, which is not a JSON number")
            total += 24
        elif kind is list or kind is tuple or kind is dict:
            if level >= MAX_JSON_DEPTH:
                raise NotJson(f"nested deeper than {MAX_JSON_DEPTH} levels")
            if kind is dict:
                for key in item:
                    if not isinstance(key, str):
                        raise NotJson(f"an object with the key {key!r}: JSON keys are strings")
                total += 2 + 3 * len(item)
                stack.extend((key, level + 1) for key in item)
                stack.extend((child, level + 1) for child in item.values())
            else:
                total += 2 + len(item)
                stack.extend((child, level + 1) for child in item)
        elif isinstance(item, (_HiddenMap, _HiddenList)) and not strict:
            stack.append((item._value, level))
        elif isinstance(item, Undefined):
            item._fail_with_undefined_error()
        else:
            raise NotJson(f"a {kind.__name__}, which is not a JSON value")
    _tick(total // (BUILD_UNIT * 8))
    return min(total, limit + 1)


def _json_result(value: Any) -> Any:
    """What a template yields, as it is kept: JSON (tuples become lists), within the size bound."""
    _check_size(_json_size(value))
    return _lists(value)


def _lists(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_lists(item) for item in value]
    if isinstance(value, list) and any(isinstance(item, (tuple, list, dict)) for item in value):
        return [_lists(item) for item in value]
    if isinstance(value, dict) and any(isinstance(item, (tuple, list, dict)) for item in value.values()):
        return {key: _lists(item) for key, item in value.items()}
    return value


def _evaluate(source: str, context: dict) -> Any:
    value = _expression(source)(**context)
    if isinstance(value, Undefined):
        str(value)  # StrictUndefined raises here, naming what was missing
    return value


def _render_text(source: str, context: dict) -> str:
    parts: list[str] = []
    size = 0
    limit = _budget().limits.max_size
    for part in _template(source).generate(**context):
        size += len(part)
        if size > limit:
            _check_size(size)
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
            result = _json_result(result)
        except RenderStopped:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever tenant code raised (a filter's assert…) is its failure
            shown = f"{{{{{single['expr']}}}}}" if single else repr(value[:200])
            # A template that read a secret may have put what it made of it in the message ("no
            # attribute 'ACC-7HQ…'"): the message goes into the step's error, so it is withheld.
            cause = f"{type(exc).__name__} (details withheld: the template read a secret)" if _reads.secret else exc
            if isinstance(exc, NotJson) and not _reads.secret:
                cause = f"the value is {exc}"
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


def render_tracked(value: Any, context: dict, limits: Limits | None = None) -> tuple[Any, Hidden]:
    """Render every string inside a JSON value (as ``render``); also returns where the result holds
    secrets: each template string whose render read a hidden part of the context (``scope``) is
    hidden whole, and hidden parts copied as they are stay hidden where they are. The render has the
    budget ``bounded`` gave (else ``limits``, else the defaults) and raises RenderStopped when one of
    its stop events is set."""
    chosen, stops = _settings.get()
    previous = getattr(_state, "budget", None)
    _state.budget = _Budget(limits or chosen, stops)
    try:
        return _render(value, context, _has_views(context))
    finally:
        _state.budget = previous
        _reads.secret = False


def render(value: Any, context: dict, limits: Limits | None = None) -> Any:
    """Render every string inside a JSON value; a string that is exactly one template keeps the
    result's type. TemplateFailure when a template fails or goes past a bound."""
    return render_tracked(value, context, limits)[0]


def condition(template: str, context: dict) -> bool:
    """Evaluate an ``executeIf`` template to a boolean."""
    value = render(template, context)
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "no", "none", "null")
    return bool(value)


# What step_references answers for a template that reads ``steps`` other than by a constant name
# (``steps[variables.which]``, ``steps | list``): it may read any step.
ANY_STEP = "*"


def step_references(value: Any) -> set[str]:
    """The ids of the steps whose outputs the templates inside a JSON value read (``steps.a``,
    ``steps["a"]``), found by parsing them; ``ANY_STEP`` among them when one reads ``steps`` in a way
    that names no step. A template that does not parse reads nothing (it fails when rendered). A
    re-run's preview says with it which calls depend on a step that runs again."""
    found: set[str] = set()
    if isinstance(value, dict):
        for item in value.values():
            found |= step_references(item)
    elif isinstance(value, list):
        for item in value:
            found |= step_references(item)
    elif isinstance(value, str) and ("{{" in value or "{%" in value):
        try:
            tree = _ENV.parse(value)
        except Exception:  # noqa: BLE001 - any syntax error: reads nothing it could say
            return found
        named: set[int] = set()
        for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
            inner = node.node
            if isinstance(inner, nodes.Name) and inner.name == "steps":
                named.add(id(inner))
                if isinstance(node, nodes.Getattr):
                    found.add(node.attr)
                elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                    found.add(node.arg.value)
                else:
                    found.add(ANY_STEP)
        if any(n.name == "steps" and id(n) not in named for n in tree.find_all(nodes.Name)):
            found.add(ANY_STEP)
    return found
