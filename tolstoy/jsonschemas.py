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
"""

from __future__ import annotations

from typing import Any

import jsonschema
from referencing import Registry
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT202012

__all__ = ["DIALECT", "REGISTRY", "Unresolvable", "problem", "reference_problem", "validator"]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
REFERENCE_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
_VALIDATOR = jsonschema.Draft202012Validator


def _refuse(uri: str):
    """The registry's retrieve function: nothing outside the document is ever fetched."""
    raise NoSuchResource(ref=uri)


# jsonschema adds the meta-schemas it ships (no network either) to any registry it is given.
REGISTRY: Registry = Registry(retrieve=_refuse)


def validator(schema: dict | bool) -> jsonschema.Draft202012Validator:
    """A validator of instances against ``schema`` (formats checked), resolving references only
    inside the document."""
    return _VALIDATOR(schema, registry=REGISTRY, format_checker=_VALIDATOR.FORMAT_CHECKER)


# Checks a schema against the 2020-12 meta-schema, as Draft202012Validator.check_schema does,
# but on the registry that refuses retrieval.
_META = validator(_VALIDATOR.META_SCHEMA)


def problem(schema: Any) -> str | None:
    """Why ``schema`` cannot be an action's inputSchema (None when it can): not a valid JSON Schema
    2020-12, or a reference that leaves the document or points at no schema."""
    error = next(_META.iter_errors(schema), None)
    if error is not None:
        return f"Not a valid JSON Schema: {error.message}"
    return reference_problem(schema)


def reference_problem(schema: Any) -> str | None:
    """What is wrong with the references of an otherwise valid schema (None when nothing is)."""
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
            wrong = _own_problem(node, is_root)
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
