"""Answers shaped by the marshmallow schemas, at a fraction of ``Schema.dump``'s cost.

``Schema.dump`` walks its fields through several layers of generic code for
every value of every row: about 3 µs a field, 150 µs for one tool with three
actions, more than the database round trip of the request. ``dumper(schema)``
reads the same schema once (its dump fields, attributes, data keys, nesting)
and returns a function that builds the same dictionary directly. Field types
it does not know are serialized by the field itself, so the output is always
``Schema.dump``'s (tests/unit/test_dumping.py compares them on every schema).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable
from typing import Any

from marshmallow import Schema, fields, missing

from ..fieldtypes import Timestamp
from ..times import iso

Dump = Callable[[dict], dict]
_MISSING = object()


def _timestamp(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return iso(value)


# How PostgreSQL spells a uuid in JSON: already what str(uuid.UUID(value)) gives.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _uuid(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
        return value
    return str(uuid.UUID(str(value)))


def _string(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else str(value)


def _integer(value: Any) -> Any:
    return value if value is None or type(value) is int else int(value)


def _float(value: Any) -> Any:
    return value if value is None or type(value) is float else float(value)


def _boolean(field: fields.Boolean) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if value is None or value is True or value is False:
            return value
        return field._serialize(value, None, None)
    return convert


def _mapping(value: Any) -> Any:
    return None if value is None else dict(value)


def _identity(value: Any) -> Any:
    return value


def _converter(field: fields.Field) -> Callable[[Any], Any]:
    """How one field turns a stored value into its JSON value."""
    kind = type(field)
    if isinstance(field, Timestamp):
        return _timestamp
    if isinstance(field, fields.Nested):
        inner = dumper(field.schema)
        if field.many:
            return lambda value: None if value is None else [inner(item) for item in value]
        return lambda value: None if value is None else inner(value)
    if isinstance(field, fields.List):
        item = _converter(field.inner)
        return lambda value: None if value is None else [item(each) for each in value]
    if kind is fields.UUID:
        return _uuid
    if kind in (fields.String, fields.Email, fields.Url):
        return _string
    if kind is fields.Integer and not field.as_string:
        return _integer
    if kind is fields.Float and not field.as_string:
        return _float
    if isinstance(field, fields.Boolean):
        return _boolean(field)
    if isinstance(field, fields.Dict) and field.key_field is None and field.value_field is None:
        return _mapping
    if kind._serialize is fields.Field._serialize:  # Raw and custom fields that serialize as they are
        return _identity
    return lambda value: field._serialize(value, None, None)


def dumper(schema: Schema) -> Dump:
    """A function shaping one row (a dict) exactly as ``schema.dump(row)`` would."""
    plan = [(field.attribute or name, field.data_key or name, _converter(field), field.dump_default)
            for name, field in schema.dump_fields.items()]

    def dump(row: dict) -> dict:
        out = {}
        for attribute, key, convert, default in plan:
            value = row.get(attribute, _MISSING)
            if value is _MISSING:
                if default is missing:
                    continue
                value = default() if callable(default) else default
            out[key] = convert(value)
        return out

    return dump


def many(dump: Dump) -> Callable[[list[dict]], list[dict]]:
    """The list form of a dumper."""
    return lambda rows: [dump(row) for row in rows]
