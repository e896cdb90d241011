"""Collection and Item resources shared by every model. A model module declares
its Model (tolstoy/api/model.py), subclasses these and adds its own reference
checks or representation.

Each write follows the contract's order of checks: body parsed (400) → record
found (404) → If-Match (412) → fields valid (400) → references visible (400) →
uniqueness and dependents (409, from the database's constraints)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import falcon
from marshmallow import Schema

from ..db.database import Database, json
from ..db.queries import SQL, Query
from .dumping import dumper, many
from .errors import NotFound, field_error
from .model import Model
from .paging import finish_page, page_limit, time_id_cursor, time_id_key
from .requests import parse_uuid, read_json, validate_body, validate_query
from .responses import check_if_match, created, etag_of, respond
from .routing import Route, Services, errors, json_content, tenant_params


def get_or_404(db: Database, query: Query, noun: str, *, commit: bool = False, **params: Any) -> dict:
    """The one row a query finds, or 404 naming what was looked for (also another organization's);
    ``commit`` when it is the request's last query."""
    row = db.one(query, commit=commit, **params)
    if row is None:
        raise NotFound(noun)
    return row


def list_page(req: falcon.Request, resp: falcon.Response, query_schema: Schema,
              fetch: Callable[..., list[dict]], dump: Callable[[list[dict]], Any], *,
              cursor: Callable[[dict], dict] = time_id_cursor,
              key: Callable[[dict], list] = time_id_key) -> None:
    """One keyset page: check the query string, fetch ``limit + 1`` rows with
    ``fetch(query, limit=…, **keyset)`` (the request's last query), set Link/X-Next-Cursor,
    answer the dumped rows."""
    query = validate_query(query_schema, req)
    limit = page_limit(query)
    rows = fetch(query, limit=limit + 1, **cursor(query))
    resp.media = dump(finish_page(req, resp, rows, limit, key))


class ModelResource:
    """What a model's Collection and Item share: the declaration, its named queries (``sql/<name>.sql``:
    list, get, get_for_update, insert, update, delete) and its checks."""

    model: Model

    def __init__(self, db: Database):
        self.db = db
        self.sql = getattr(SQL, self.model.name)
        self.schema = self.model.schema()
        self.dump = dumper(self.schema)
        self.noun = self.model.noun

    def represent(self, row: dict) -> dict:
        """The record as the API shows it."""
        return self.dump(row)

    def check_references(self, req: falcon.Request, values: dict) -> None:
        """400 naming a field that points at a record the caller cannot see."""

    def check_changeable(self, row: dict) -> None:
        """409 when the found record may not be changed or deleted through this route (after every
        other check of the request, as the contract orders a 409)."""

    def require_visible(self, req: falcon.Request, exists: Query, record_id, field: str, noun: str) -> None:
        """400 naming ``field`` unless the caller's organization has that record (``exists`` query)."""
        if not self.db.scalar(exists, org_id=req.context.org_id, id=record_id):
            raise field_error(field, f"No {noun} with this id in this organization.")

    def columns(self, values: dict) -> dict:
        """The writable columns as the insert and update queries take them (jsonb ones as JSON)."""
        return {column: json(values.get(column)) if column in self.model.json_columns else values.get(column)
                for column in self.model.writable}

    def load_values(self, data: dict, partial: bool) -> dict:
        """Validate a body; subclasses may normalise the result."""
        return validate_body(self.schema, data, partial=partial, ignore=self.model.derived_fields)

    def find(self, req: falcon.Request, raw_id: str, *, for_update: bool = False,
             commit: bool = False) -> tuple[uuid.UUID, dict]:
        """The record named in the path, or 404 (also for another organization's)."""
        record_id = parse_uuid(raw_id, self.noun)
        query = self.sql.get_for_update if for_update else self.sql.get
        return record_id, get_or_404(self.db, query, self.noun, commit=commit, org_id=req.context.org_id,
                                     id=record_id)


class Collection(ModelResource):
    """``GET`` a keyset page, ``POST`` a new record."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """List records newest first, one page at a time."""
        def fetch(query: dict, **page) -> list[dict]:
            filters = {f.column: query.get(f.param) for f in self.model.filters}
            return self.db.all(self.sql.list, commit=True, org_id=req.context.org_id, **page, **filters)

        list_page(req, resp, self.model.list_query, fetch, many(self.dump))

    def insert(self, req: falcon.Request, values: dict) -> dict:
        """Write the new row (the request's last query); subclasses add columns that do not come
        from the body."""
        return self.db.one(self.sql.insert, commit=True, org_id=req.context.org_id, **self.columns(values))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Create a record: 201 with Location."""
        data = read_json(req)
        values = self.load_values(data, partial=False)
        self.check_references(req, values)
        row = self.insert(req, values)
        created(req, resp, self.represent(row))


class Item(ModelResource):
    """``GET``, partial ``PUT``/``PATCH`` and ``DELETE`` of one record."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Read one record with its ETag."""
        _, row = self.find(req, id, commit=True)
        respond(resp, self.represent(row))

    def on_patch(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Change the fields sent; the others stay as they are."""
        data = read_json(req)
        record_id, row = self.find(req, id, for_update=True)
        check_if_match(req, etag_of(self.represent(row)))
        values = self.load_values(data, partial=True)
        self.check_references(req, values)
        self.check_changeable(row)
        self.before_update(req, row, values)
        merged = {column: row.get(column) for column in self.model.writable}
        merged.update(values)
        row = self.db.one(self.sql.update, commit=True, org_id=req.context.org_id, id=record_id,
                          **self.columns(merged))
        respond(resp, self.represent(row))

    on_put = on_patch

    def before_update(self, req: falcon.Request, row: dict, values: dict) -> None:
        """What a model checks or changes, in the update's transaction with the record locked,
        before the record is written (its 409s come after every 400)."""

    def on_delete(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Delete one record: 204, or 409 while other rows reference it."""
        record_id, row = self.find(req, id, for_update=True)
        check_if_match(req, etag_of(self.represent(row)))
        self.check_changeable(row)
        self.db.rowcount(self.sql.delete, commit=True, org_id=req.context.org_id, id=record_id)
        resp.status = falcon.HTTP_204


def routes(model: Model, collection: Callable[[Services], Collection],
           item: Callable[[Services], Item]) -> tuple[Route, Route]:
    """A model's collection (``path``) and item (``path/{id}``) routes, documented from its declaration."""
    tenant = tenant_params() if model.tenant else []
    item_ref = model.detail_schema_name
    filters = [
        {"name": f.param, "in": "query", "required": False, "description": f.description,
         "schema": {"type": "string"}}
        for f in model.filters
    ]
    listing = {
        "get": {
            "tags": [model.tag],
            "summary": f"List {model.tag.lower()}, newest first",
            "parameters": tenant + ["Limit", "Cursor"] + filters,
            "responses": {
                "200": {
                    "description": "One page; Link and X-Next-Cursor when more exist.",
                    "headers": {"Link": "Link", "X-Next-Cursor": "NextCursor"},
                    "content": json_content(model.schema_name, many=True),
                },
                **errors("400"),
            },
        },
        "post": {
            "tags": [model.tag],
            "summary": f"Create a record in {model.tag.lower()}",
            "parameters": tenant_params(model.user_required_on_create) if model.tenant else [],
            "requestBody": {"required": True, "content": json_content(model.schema_name)},
            "responses": {
                "201": {"description": "Created.", "headers": {"Location": "Location", "ETag": "ETag"},
                        "content": json_content(item_ref)},
                **errors("400", "409", "413", "415"),
            },
        },
    }
    id_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
    update = {
        "tags": [model.tag],
        "parameters": tenant + [id_param, "IfMatch"],
        "description": "Partial update: fields not sent stay as they are; null clears an optional field.",
        "requestBody": {"required": True, "content": json_content(model.schema_name)},
        "responses": {
            "200": {"description": "Updated.", "headers": {"ETag": "ETag"}, "content": json_content(item_ref)},
            **errors("400", "404", "409", "412", "413", "415"),
        },
    }
    one = {
        "get": {
            "tags": [model.tag],
            "parameters": tenant + [id_param],
            "responses": {
                "200": {"description": "The record.", "headers": {"ETag": "ETag"}, "content": json_content(item_ref)},
                **errors("400", "404"),
            },
        },
        "put": {**update, "summary": "Update (partial)"},
        "patch": {**update, "summary": "Update (partial)"},
        "delete": {
            "tags": [model.tag],
            "parameters": tenant + [id_param, "IfMatch"],
            "description": f"Refused with 409 while {model.delete_blocked_by} reference it."
            if model.delete_blocked_by else "Delete the record.",
            "responses": {"204": {"description": "Deleted."}, **errors("400", "404", "409", "412")},
        },
    }
    return (Route(model.path, collection, operations=listing),
            Route(f"{model.path}/{{id}}", item, operations=one))
