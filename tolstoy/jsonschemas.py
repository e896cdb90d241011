"""Actions' input schemas (JSON Schema 2020-12): the one place validators are built, for the
API when a schema is saved and for the engine when inputs are checked.

A schema is a tenant's text, so reading it must never reach the network. jsonschema's default
registry retrieves any ``$ref`` it cannot find in the document with urllib (no timeout, past the
outbound guard: ``http://127.0.0.1:…``, ``http://2130706433/``, ``file:///…``), and a ``#``
reference can be made absolute by an ``$id`` or a nested ``$schema``. So:

- every validator here is built on ``REGISTRY``, whose retrieve function refuses every URI: a
  reference resolves against the document's own resources or not at all, whatever the schema
  says and whenever it was stored;
- ``problem`` (at save, and before each validation) refuses what could make a reference leave
  the document or fail: a ``$ref``/``$dynamicRef``/``$recursiveRef`` that is not ``#…``, an
  ``$id`` below the root (it would change the base ``#`` resolves against), a nested
  ``$schema`` naming another dialect (its keywords and ids would be read another way), and a
  reference that points at nothing or at something that is not a schema (``#/info/title``), and
  references that loop back without reading further into the input (``{"allOf": [{"$ref":
  "#"}]}``), on which validation would never end. With no ``$id`` below the root every ``#``
  reference resolves against the root, so each is checked by one lookup.

A schema's regular expressions (``pattern``, the keys of ``patternProperties``, strings checked
with ``format: regex``) are a tenant's text too, and Python's backtracking engine holds the
interpreter lock while it runs: ``^(a+)+$`` against 31 ``a`` and a ``!`` stopped every thread of a
worker for a minute (every organization's runs, their heartbeats, their leases). So every one of
them is compiled and matched by RE2 (google-re2), whose time is linear in the input, and
``problem`` refuses at save what RE2 cannot run (backreferences, lookaround) or is longer than
``MAX_PATTERN``; a schema stored before that fails its calls with the same words.
"""

from __future__ import annotations

import functools
from typing import Any

import jsonschema
import re2
from referencing import Registry
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT202012

__all__ = ["DIALECT", "MAX_PATTERN", "REGISTRY", "Unresolvable", "problem", "reference_problem", "validator"]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
REFERENCE_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
MAX_PATTERN = 1000  # characters of one regular expression (the field definitions' own limit)
_DRAFT = jsonschema.Draft202012Validator

# RE2 compiles each pattern within max_mem (its default, 8 MiB) and never backtracks; it reports a
# pattern it cannot run by raising, not on stderr.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


@functools.lru_cache(maxsize=1024)
def _regex(pattern: str):
    """A tenant's pattern compiled by RE2 (re2.error when RE2 cannot run it); the compiled forms of
    the patterns in use are kept, as ``re`` keeps its own."""
    return re2.compile(pattern, options=_RE2_OPTIONS)


def pattern_problem(pattern: Any) -> str | None:
    """Why a regular expression cannot be matched here (None when it can)."""
    if not isinstance(pattern, str):
        return None  # the meta-schema says what is wrong with it
    if len(pattern) > MAX_PATTERN:
        return f"Pattern is longer than {MAX_PATTERN} characters."
    try:
        _regex(pattern)
    except re2.error as exc:
        detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        return (f"Pattern {pattern[:100]!r} cannot be used ({detail}): patterns are matched in linear time "
                "(RE2 syntax: no backreferences, no lookahead or lookbehind).")
    return None


def _pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not _regex(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator, patterns, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _regex(pattern).search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _is_regex(instance: Any) -> bool:
    return not isinstance(instance, str) or pattern_problem(instance) is None


# 2020-12 with every regular expression through RE2: the two keywords that match one, and the
# "regex" format (a string the input says is a pattern).
_VALIDATOR = jsonschema.validators.extend(_DRAFT, {"pattern": _pattern, "patternProperties": _pattern_properties})
_FORMATS = jsonschema.FormatChecker()
_FORMATS.checkers = {**_DRAFT.FORMAT_CHECKER.checkers, "regex": (_is_regex, ())}


def _refuse(uri: str):
    """The registry's retrieve function: nothing outside the document is ever fetched."""
    raise NoSuchResource(ref=uri)


# jsonschema adds the meta-schemas it ships (no network either) to any registry it is given.
REGISTRY: Registry = Registry(retrieve=_refuse)


def validator(schema: dict | bool, format_checker: jsonschema.FormatChecker = _FORMATS) -> jsonschema.Validator:
    """A validator of instances against ``schema`` (formats checked), resolving references only
    inside the document and matching regular expressions with RE2."""
    return _VALIDATOR(schema, registry=REGISTRY, format_checker=format_checker)


# Checks a schema against the 2020-12 meta-schema, as Draft202012Validator.check_schema does,
# but on the registry that refuses retrieval. The schema's own patterns (the meta-schema's "regex"
# format) are left to pattern_problem, which says what RE2 makes of each in words a writer can use.
_SCHEMA_FORMATS = jsonschema.FormatChecker()
_SCHEMA_FORMATS.checkers = {name: check for name, check in _DRAFT.FORMAT_CHECKER.checkers.items() if name != "regex"}
_META = validator(_DRAFT.META_SCHEMA, _SCHEMA_FORMATS)


def problem(schema: Any) -> str | None:
    """Why ``schema`` cannot be an action's inputSchema (None when it can): not a valid JSON Schema
    2020-12, or a reference that leaves the document or points at no schema."""
    error = next(_META.iter_errors(schema), None)
    if error is not None:
        return f"Not a valid JSON Schema: {error.message}"
    return reference_problem(schema)


def reference_problem(schema: Any) -> str | None:
    """What is wrong with the references or the regular expressions of an otherwise valid schema
    (None when nothing is): what must hold before any input is validated against it."""
    if not isinstance(schema, dict):
        return None
    resolver = REGISTRY.resolver_with_root(DRAFT202012.create_resource(schema))
    nodes: dict[int, dict] = {}
    # Schemas applied to the same part of the input as their node: by a reference or an in-place
    # applicator. A loop of these never reads further into the input, so validation would not end.
    in_place: dict[int, list] = {}
    pending = [(schema, True)]
    try:
        while pending:
            node, is_root = pending.pop()
            if not isinstance(node, dict) or id(node) in nodes:
                continue
            nodes[id(node)] = node
            wrong = _own_problem(node, is_root) or _patterns_problem(node)
            if wrong:
                return wrong
            targets = []
            for keyword in REFERENCE_KEYWORDS:
                if keyword in node:
                    target, wrong = _target(resolver, keyword, node[keyword])
                    if wrong:
                        return wrong
                    targets.append(target)
            in_place[id(node)] = [each for each in [*targets, *_in_place_subschemas(node)] if isinstance(each, dict)]
            pending.extend((target, False) for target in targets)
            # The subschemas of a 2020-12 schema object, by referencing's own list of its keywords.
            pending.extend((sub, False) for sub in DRAFT202012.subresources_of(node))
    except (AttributeError, TypeError, ValueError):  # a shape the meta-schema would have refused
        return "Not a valid JSON Schema."
    if _loops(in_place):
        return ("References loop back to a schema they started from without reading further into the input "
                "(e.g. {\"allOf\": [{\"$ref\": \"#\"}]}): validation would never end.")
    return None


_IN_PLACE_ONE = ("not", "if", "then", "else")
_IN_PLACE_MANY = ("allOf", "anyOf", "oneOf")


def _in_place_subschemas(node: dict) -> list:
    found = [node[keyword] for keyword in _IN_PLACE_ONE if keyword in node]
    found += [each for keyword in _IN_PLACE_MANY for each in node.get(keyword) or ()]
    found += list((node.get("dependentSchemas") or {}).values())
    return found


def _loops(edges: dict[int, list]) -> bool:
    """Whether the graph of in-place applications has a cycle (iterative depth-first search)."""
    done: set[int] = set()
    for start in edges:
        if start in done:
            continue
        path: set[int] = {start}
        stack = [(start, iter(edges.get(start, ())))]
        while stack:
            current, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.discard(current)
                done.add(current)
                continue
            if id(child) in path:
                return True
            if id(child) not in done:
                path.add(id(child))
                stack.append((id(child), iter(edges.get(id(child), ()))))
    return False


def _patterns_problem(node: dict) -> str | None:
    """The first regular expression of this schema object that cannot be matched here."""
    patterns = [node.get("pattern")]
    if isinstance(node.get("patternProperties"), dict):
        patterns += list(node["patternProperties"])
    return next(filter(None, map(pattern_problem, patterns)), None)


def _own_problem(node: dict, is_root: bool) -> str | None:
    if is_root:
        return None
    if isinstance(node.get("$id"), str):
        return (f"$id {node['$id']!r} below the root is not supported: references resolve only inside this "
                "document, against its root.")
    if "$schema" in node and node["$schema"] not in (DIALECT, DIALECT + "#"):
        return f"$schema {node['$schema']!r} inside the schema is not supported: only JSON Schema 2020-12 is."
    return None


_JSON_TYPES = {str: "a string", int: "a number", float: "a number", list: "an array", type(None): "null"}


def _target(resolver, keyword: str, ref: Any) -> tuple[Any, str | None]:
    """(what a reference points at, None), or (None, why it cannot be followed)."""
    if not isinstance(ref, str):
        return None, f"{keyword} must be a string."
    if not ref.startswith("#"):
        return None, (f"{keyword} {ref!r} leaves the document: references may only point inside it "
                      "('#/$defs/…', '#anchor').")
    try:
        target = resolver.lookup(ref).contents
    except (Unresolvable, LookupError, TypeError, ValueError):
        return None, f"{keyword} {ref!r} points at nothing in this document."
    if not isinstance(target, (dict, bool)):
        return None, f"{keyword} {ref!r} points at {_JSON_TYPES.get(type(target), 'a value')}, not a schema."
    return target, None
