"""The compiled dumpers of tolstoy/api/dumping.py answer exactly what marshmallow's
Schema.dump answers, for every schema the API shows: rows of every shape, and rows
generated per field type (so a field added to a schema is checked with the rest)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import fields

from tolstoy import fieldtypes
from tolstoy.api.app import NOUNS
from tolstoy.api.dumping import dumper
from tolstoy.api.openapi import components
from tolstoy.jsonsafe import dumps
from tolstoy.times import iso

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


@pytest.mark.parametrize("name", ["Tool", "ToolDetail", "Action", "Run"])
def test_whole_rows_and_rows_with_keys_missing_answer_alike_in_any_order(name):
    """A row holding every field is shaped in one dict display, one lacking some field by field; after
    enough rows lacking one the display is no longer tried. Either way the answer is Schema.dump's."""
    schema = SCHEMAS[name]()
    dump = dumper(schema)
    whole = make_row(schema, 0)
    lacking = dict(whole)
    del lacking[next(iter(lacking))]
    for row in [whole, lacking] * 3 + [lacking] * 100 + [whole]:
        assert dump(row) == schema.dump(row)


# ---- generated rows: the compiled dumpers against Schema.dump, byte for byte ---------------------

ZONES = st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(-dt.timedelta(hours=8))])
TIMES = st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=ZONES)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=8) |
                    st.floats(allow_nan=False, allow_infinity=False),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8)


def postgres_spelling(value: dt.datetime) -> str:
    """A timestamptz as PostgreSQL writes it in JSON: the fraction without its trailing zeros, none
    at all for whole seconds."""
    text = value.isoformat()
    if value.microsecond:
        head, rest = text.split(".")
        return f"{head}.{rest[:6].rstrip('0')}{rest[6:]}"
    return text


def stored(field: fields.Field) -> st.SearchStrategy:
    """The values a field may meet in a row: what psycopg returns, what a jsonb-nested row carries, None."""
    if isinstance(field, fieldtypes.Timestamp):
        return st.none() | TIMES | TIMES.map(postgres_spelling) | TIMES.map(dt.datetime.isoformat)
    if isinstance(field, fields.Nested):
        row = st.deferred(lambda: rows(field.schema))
        return st.none() | (st.lists(row, max_size=2) if field.many else row)
    if isinstance(field, fields.List):
        return st.none() | st.lists(stored(field.inner), max_size=3)
    if isinstance(field, fields.UUID):
        return st.none() | st.uuids() | st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper())
    if isinstance(field, fields.String):
        return st.none() | st.text(max_size=12) | st.integers()
    if isinstance(field, fields.Integer):
        return st.none() | st.integers(-2**63, 2**63 - 1)
    if isinstance(field, fields.Float):
        return st.none() | st.floats(allow_nan=False, allow_infinity=False) | st.integers(-2**53, 2**53)
    if isinstance(field, fields.Boolean):
        return st.none() | st.booleans()
    if isinstance(field, fields.Dict) and field.value_field is not None:
        return st.none() | st.dictionaries(st.text(max_size=5), stored(field.value_field), max_size=3)
    return JSON


def rows(schema) -> st.SearchStrategy:
    """Rows for a schema: any of its dump fields present or missing, each with a value it may meet."""
    present = {(field.attribute or name): stored(field) for name, field in schema.dump_fields.items()}
    return st.fixed_dictionaries({}, optional=present)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_a_compiled_dumper_writes_the_json_schema_dump_writes(name, data):
    schema = SCHEMAS[name]()
    row = data.draw(rows(schema))
    try:
        expected = dumps(schema.dump(row))
    except (TypeError, ValueError, AttributeError) as refused:
        # What marshmallow cannot serialize, the compiled dumper refuses too (a bug either way).
        with pytest.raises(type(refused)):
            dumper(schema)(row)
        return
    assert dumps(dumper(schema)(row)) == expected


@settings(max_examples=300, deadline=None)
@given(value=TIMES | st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)))
def test_a_timestamp_is_spelled_as_isoformat_spells_it(value):
    assert iso(value) == value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
