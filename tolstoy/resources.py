"""Collection and Item resources shared by every model. A model module subclasses
them, names its schema, store and filters, and adds its own reference checks.

Each write follows the contract's order of checks: body parsed (400) → record
found (404) → If-Match (412) → fields valid (400) → references visible (400) →
uniqueness and dependents (409, from the database's constraints)."""

from __future__ import annotations

import uuid

import falcon
from marshmallow import Schema

from .db import Database
from .errors import NotFound, field_error
from .http import (
    check_if_match,
    created,
    etag_of,
    finish_page,
    page_limit,
    parse_uuid,
    read_json,
    respond,
    time_id_cursor,
    validate_body,
    validate_query,
)
from .schemas import PageQuery
from .store import TableStore


class Model:
    """What a model's Collection and Item share: its name, schema, store and checks."""

    noun = "Record"
    schema: Schema
    store: TableStore
    # Body fields that a GET returns but that are derived, so a PUT ignores them.
    derived_fields: frozenset = frozenset()

    def __init__(self, db: Database, store: TableStore):
        self.db = db
        self.store = store

    def represent(self, row: dict) -> dict:
        """The record as the API shows it."""
        return self.schema.dump(row)

    def check_references(self, req: falcon.Request, values: dict) -> None:
        """400 naming a field that points at a record the caller cannot see."""

    def require_visible(self, req: falcon.Request, exists, record_id, field: str, noun: str) -> None:
        """400 naming ``field`` unless the caller's organization has that record (``exists`` query)."""
        if not self.db.scalar(exists, org_id=req.context.org_id, id=record_id):
            raise field_error(field, f"No {noun} with this id in this organization.")

    def load_values(self, data: dict, partial: bool) -> dict:
        """Validate a body; subclasses may normalise the result."""
        return validate_body(self.schema, data, partial=partial, ignore=self.derived_fields)

    def find(self, req: falcon.Request, raw_id: str, *, for_update: bool = False) -> tuple[uuid.UUID, dict]:
        """The record named in the path, or 404 (also for another organization's)."""
        record_id = parse_uuid(raw_id, self.noun)
        getter = self.store.get_for_update if for_update else self.store.get
        row = getter(req.context.org_id, record_id)
        if row is None:
            raise NotFound(self.noun)
        return record_id, row


class Collection(Model):
    """``GET`` a keyset page, ``POST`` a new record."""

    list_query: Schema = PageQuery()
    # query parameter → list query parameter
    filters: dict[str, str] = {}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """List records newest first, one page at a time."""
        query = validate_query(self.list_query, req)
        limit = page_limit(query)
        filters = {column: query.get(param) for param, column in self.filters.items()}
        rows = self.store.list(
            req.context.org_id, limit=limit, keyset=time_id_cursor(query), filters=filters
        )
        rows = finish_page(req, resp, rows, limit)
        resp.media = self.schema.dump(rows, many=True)

    def insert(self, req: falcon.Request, values: dict) -> dict:
        """Write the new row; subclasses add columns that do not come from the body."""
        return self.store.insert(req.context.org_id, values)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Create a record: 201 with Location."""
        data = read_json(req)
        values = self.load_values(data, partial=False)
        with self.db.transaction():
            self.check_references(req, values)
            row = self.insert(req, values)
            body = self.represent(row)
        created(req, resp, body)


class Item(Model):
    """``GET``, partial ``PUT``/``PATCH`` and ``DELETE`` of one record."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Read one record with its ETag."""
        _, row = self.find(req, id)
        respond(resp, self.represent(row))

    def on_patch(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Change the fields sent; the others stay as they are."""
        data = read_json(req)
        with self.db.transaction():
            record_id, row = self.find(req, id, for_update=True)
            check_if_match(req, etag_of(self.represent(row)))
            values = self.load_values(data, partial=True)
            self.check_references(req, values)
            merged = {column: row.get(column) for column in self.store.writable}
            merged.update(values)
            row = self.store.update(req.context.org_id, record_id, merged)
            body = self.represent(row)
        respond(resp, body)

    on_put = on_patch

    def on_delete(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Delete one record: 204, or 409 while other rows reference it."""
        with self.db.transaction():
            record_id, row = self.find(req, id, for_update=True)
            check_if_match(req, etag_of(self.represent(row)))
            self.store.delete(req.context.org_id, record_id)
        resp.status = falcon.HTTP_204
