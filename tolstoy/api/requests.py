"""Reading a request: the JSON body (size, syntax, depth, storability), the
query string and path ids, each validated by a marshmallow schema into the
contract's 400 with field errors."""

from __future__ import annotations

import uuid
from typing import Any

import falcon
from marshmallow import Schema, ValidationError

from ..fieldtypes import READ_ONLY_FIELDS
from ..jsonsafe import MAX_JSON_DEPTH, UNSTORABLE, UNSTORABLE_MESSAGE, depth, loads, unstorable_strings
from .errors import NotFound, ValidationFailed, field_error

MAX_BODY_BYTES = 1024 * 1024


def flatten_messages(messages: Any, prefix: str = "") -> list[dict]:
    """marshmallow's nested error dict as ``[{"field": "steps[0].config.url", "message": …}]``."""
    if isinstance(messages, dict):
        found = []
        for key, value in messages.items():
            if key == "_schema":
                path = prefix or "body"
            elif isinstance(key, int):
                path = f"{prefix}[{key}]"
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            found.extend(flatten_messages(value, path))
        return found
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [{"field": prefix or "body", "message": m} for m in messages]
    if isinstance(messages, list):
        return [e for m in messages for e in flatten_messages(m, prefix)]
    return [{"field": prefix or "body", "message": str(messages)}]


def is_chunked(req: falcon.Request) -> bool:
    """The body comes with Transfer-Encoding: chunked (so without a Content-Length)."""
    return "chunked" in (req.get_header("Transfer-Encoding") or "").lower()


def read_raw(req: falcon.Request) -> bytes:
    """The body as sent, at most 1 MiB (413 beyond; the middleware already refused a larger Content-Length)."""
    # Chunked: no length to bound by; the server de-chunks, and we stop one byte past the cap.
    stream = req.stream if req.content_length is None and is_chunked(req) else req.bounded_stream
    raw = stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise falcon.HTTPContentTooLarge(description="Request body is larger than 1 MiB.")
    return raw


def read_json(req: falcon.Request) -> dict:
    """The request body as a JSON object; 413 past 1 MiB, 400 when empty, malformed or not an object."""
    raw = read_raw(req)
    if not raw.strip():
        raise field_error("body", "A JSON object is required.")
    try:
        data = loads(raw)
    except (ValueError, RecursionError) as exc:
        raise field_error("body", f"Malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise field_error("body", "The body must be a JSON object.")
    if depth(data) > MAX_JSON_DEPTH:
        raise field_error("body", f"JSON is nested deeper than {MAX_JSON_DEPTH} levels.")
    return data


def validate_body(schema: Schema, data: dict, *, partial: bool = False, ignore: frozenset = frozenset(),
                  writable: frozenset = frozenset()) -> dict:
    """Drop read-only fields (but those ``writable`` here, such as an API key's userId), then load with
    the schema; 400 naming every bad field."""
    cleaned = {k: v for k, v in data.items() if (k not in READ_ONLY_FIELDS or k in writable) and k not in ignore}
    unstorable = unstorable_strings(cleaned)
    try:
        values = schema.load(cleaned, partial=partial)
    except ValidationError as exc:
        problems = flatten_messages(exc.messages)
        named = {p["field"] for p in problems}
        raise ValidationFailed(problems + [p for p in unstorable if p["field"] not in named]) from None
    if unstorable:
        raise ValidationFailed(unstorable)
    return values


def validate_query(schema: Schema, req: falcon.Request) -> dict:
    """Load the query string with the schema; unknown or repeated parameters are 400."""
    params = {}
    for key, value in req.params.items():
        if isinstance(value, list):
            raise field_error(key, "Give this parameter once.")
        if UNSTORABLE.search(key) or UNSTORABLE.search(value):
            raise field_error(key, UNSTORABLE_MESSAGE)
        params[key] = value
    try:
        return schema.load(params)
    except ValidationError as exc:
        raise ValidationFailed(flatten_messages(exc.messages)) from None


def parse_uuid(value: str, what: str) -> uuid.UUID:
    """A path id; one that is not a UUID cannot name a record, so it is a 404."""
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError):
        raise NotFound(what) from None
