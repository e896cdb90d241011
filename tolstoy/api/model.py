"""One declaration per model served as a collection and items: its SQL file, the
columns a client may write and those stored as jsonb, its list filters and its
representation. The generic resources (tolstoy/api/resources.py) read it to answer
and to describe their routes."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from marshmallow import Schema
from marshmallow import fields as ma_fields

from ..fieldtypes import PageQuery


@dataclass(frozen=True)
class Filter:
    """A list filter: the query parameter, the list query's parameter, how it is checked, what it means."""

    param: str
    column: str
    field: ma_fields.Field
    description: str


@dataclass(frozen=True)
class Model:
    """A table the API serves as a collection (``path``) and items (``path/{id}``)."""

    name: str  # sql/<name>.sql, and the resource module tolstoy/api/<name>.py
    path: str
    noun: str  # "User": in 404 messages
    tag: str  # OpenAPI tag
    schema: type[Schema]  # validates bodies and shapes the list's rows
    writable: tuple[str, ...]
    json_columns: tuple[str, ...] = ()
    filters: tuple[Filter, ...] = ()
    # How one record is shown when that differs from a row of the list (a tool with its actions).
    detail_schema: type[Schema] | None = None
    tenant: bool = True
    user_required_on_create: bool = False
    delete_blocked_by: str = ""
    # Fields a GET returns but that are derived, so a PUT of the same body ignores them.
    derived_fields: frozenset = field(default_factory=frozenset)

    @cached_property
    def list_query(self) -> Schema:
        """``?limit=&cursor=`` plus this model's filters."""
        declared = {f.param: f.field for f in self.filters}
        return type(f"{self.schema.__name__}ListQuery", (PageQuery,), declared)()

    @property
    def schema_name(self) -> str:
        """The component name in the OpenAPI document (``UserSchema`` → ``User``)."""
        return self.schema.__name__.removesuffix("Schema")

    @property
    def detail_schema_name(self) -> str:
        """The OpenAPI component of one record."""
        return (self.detail_schema or self.schema).__name__.removesuffix("Schema")
