"""The fast dumpers of tolstoy/api/dumping.py answer exactly what marshmallow's
Schema.dump answers, for every schema the API shows and rows of every shape."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from marshmallow import fields

from tolstoy import fieldtypes
from tolstoy.api.app import NOUNS
from tolstoy.api.dumping import dumper
from tolstoy.api.openapi import components

SCHEMAS = components(NOUNS)
NOW = dt.datetime(2026, 11, 25, 21, 8, 32, 123456, tzinfo=dt.UTC)


def sample(field: fields.Field, variant: int):
    """A stored value a field may meet: variant 0 typical, 1 the other typical form, 2 None."""
    if variant == 2:
        return None
    if isinstance(field, fieldtypes.Timestamp):
        return NOW if variant == 0 else NOW.isoformat()  # jsonb-nested rows carry ISO strings
    if isinstance(field, fields.Nested):
        row = make_row(field.schema, variant)
        return [row, make_row(field.schema, 1 - variant)] if field.many else row
    if isinstance(field, fields.List):
        return [sample(field.inner, variant), sample(field.inner, 1 - variant)]
    if isinstance(field, fields.UUID):
        return uuid.uuid4() if variant == 0 else str(uuid.uuid4())
    if isinstance(field, fields.Email):
        return "ada@example.com"
    if isinstance(field, fields.Url):
        return "https://api.example.com/v1"
    if isinstance(field, fields.String):
        return "näme ✓" if variant == 0 else "x"
    if isinstance(field, fields.Integer):
        return 42 if variant == 0 else 0
    if isinstance(field, fields.Float):
        return 1.5 if variant == 0 else 3.0
    if isinstance(field, fields.Boolean):
        return variant == 0
    if isinstance(field, fields.Dict) and field.value_field is not None:
        return {"a": sample(field.value_field, variant), "b": sample(field.value_field, 1 - variant)}
    if isinstance(field, fields.Dict):
        return {"a": 1, "b": [True, None]} if variant == 0 else {}
    return {"any": ["json", 1, {"nested": None}]} if variant == 0 else 7


def make_row(schema, variant: int) -> dict:
    return {(field.attribute or name): sample(field, variant) for name, field in schema.dump_fields.items()}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@pytest.mark.parametrize("variant", [0, 1, 2])
def test_a_dumper_answers_what_schema_dump_answers(name, variant):
    schema = SCHEMAS[name]()
    row = make_row(schema, variant)
    assert dumper(schema)(row) == schema.dump(row)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_keys_missing_from_a_row_are_left_out_alike(name):
    schema = SCHEMAS[name]()
    row = make_row(schema, 0)
    for key in list(row)[::2]:
        del row[key]
    assert dumper(schema)(row) == schema.dump(row)
