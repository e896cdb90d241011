"""The field types, base schemas and page query every noun's schemas are built from. Python names
are the database's snake_case; ``data_key`` gives the API's camelCase."""

from __future__ import annotations

import datetime as dt
import re

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from .times import iso

MAX_PAGE = 200
DEFAULT_PAGE = 50


# Sent back by clients that GET, modify and PUT a record; ignored on input.
READ_ONLY_FIELDS = frozenset({"id", "orgId", "userId", "version", "createdAt", "updatedAt"})


class Timestamp(fields.Field):
    """ISO 8601 in UTC with milliseconds and a ``Z``, as the contract spells timestamps
    (rows nested as jsonb, such as a tool's actions, carry them as ISO strings)."""

    default_error_messages = {"invalid": "Not an ISO 8601 timestamp with a time zone (e.g. 2027-01-31T12:00:00Z)."}

    def _serialize(self, value, attr, obj, **kwargs):
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        return iso(value)

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise self.make_error("invalid")
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise self.make_error("invalid") from None
        if parsed.tzinfo is None:
            raise self.make_error("invalid")
        return parsed


class JSONObject(fields.Dict):
    """Any JSON object (keys are strings, values any JSON)."""

    default_error_messages = {"invalid": "Must be a JSON object."}


class StrictBoolean(fields.Boolean):
    """JSON ``true``/``false`` only: flow steps are stored as sent, so ``"false"`` or ``1``
    must not pass validation as a boolean."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class HttpUrl(fields.Url):
    """An http(s) URL, kept with its scheme in lower case: schemes are case-insensitive (RFC 3986
    3.1), and everything downstream (the database's checks, origins, the outbound client) reads the
    canonical form. ``HTTP://host`` was accepted here and refused by tools_base_url_scheme: a 500."""

    def __init__(self, **kwargs):
        kwargs.setdefault("require_tld", False)
        super().__init__(schemes={"http", "https"}, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        url = super()._deserialize(value, attr, data, **kwargs)
        scheme, sep, rest = url.partition("://")
        return scheme.lower() + sep + rest


class Base(Schema):
    """Unknown fields are errors that name the field."""

    class Meta:
        unknown = RAISE


class Record(Base):
    """Fields every row has."""

    id = fields.UUID(dump_only=True)
    created_at = Timestamp(data_key="createdAt", dump_only=True)
    updated_at = Timestamp(data_key="updatedAt", dump_only=True)


class TenantRecord(Record):
    """Rows of tenant tables carry their organization."""

    org_id = fields.UUID(data_key="orgId", dump_only=True)


# A tool's or a flow's key: its optional short name, unique per organization, that routes and steps name it by.
KEY = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


def key_field(description: str, **kwargs) -> fields.String:
    """A field holding a key (``KEY``)."""
    return fields.String(validate=validate.Regexp(KEY, error="Must match {regex}: 1 to 64 lower-case letters, "
                                                             "digits, _ . or -."),
                         metadata={"description": description}, **kwargs)


def text(low: int, high: int, **kwargs) -> fields.String:
    """A string field whose length must lie in [low, high]."""
    return fields.String(validate=validate.Length(min=low, max=high), **kwargs)


class PageQuery(Base):
    """``?limit=&cursor=`` on every list."""

    limit = fields.Integer(validate=validate.Range(1, MAX_PAGE))
    cursor = text(1, 1000)


def unique_items(values: list) -> None:
    """A list without repeats."""
    if len(set(values)) != len(values):
        raise ValidationError("Items must be unique.")


# A flow's steps: what the API's step schema (api/flow_steps.py) and the step kinds' config schemas
# (engine/steps/, each kind's ``config()``) share.

# A template in a string: the string is checked when it is rendered, at run time.
TEMPLATE = re.compile(r"\{\{.*?\}\}", re.S)


def url_or_template(value: str) -> None:
    """An absolute http(s) URL, or a string built from templates at run time."""
    if TEMPLATE.search(value):
        return
    validate.URL(schemes={"http", "https"}, require_tld=False)(value)


def json_or_template(kind: type, error: str):
    """A validator: a value of JSON type ``kind``, or a template (at most 2000 characters) that renders to one."""

    def check(value) -> None:
        if isinstance(value, kind):
            return
        if isinstance(value, str) and TEMPLATE.search(value) and len(value) <= 2000:
            return
        raise ValidationError(error)

    return check


class RetryPolicySchema(Base):
    """How often and how fast a failed step is tried again."""

    maxRetries = fields.Integer(strict=True, validate=validate.Range(0, 20))
    backoffStrategy = fields.String(validate=validate.OneOf(("fixed", "exponential")))
    delayMs = fields.Integer(strict=True, validate=validate.Range(0, 3_600_000))


def load_config_for_type(data: dict, configs: dict) -> None:
    """Load ``data["config"]`` with the schema its ``type`` names; errors are reported under ``config``."""
    schema = configs.get(data.get("type"))
    if schema is None or "config" not in data:
        return  # an unknown type or a missing config is already reported by its own field
    try:
        data["config"] = schema().load(data["config"])
    except ValidationError as exc:
        raise ValidationError({"config": exc.messages}) from None
