"""HTTP plumbing shared by the resources: reading bodies, validating with a
schema, keyset cursors, ETags and If-Match, Location and Link headers."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import math
import re
import uuid
from typing import Any, Callable
from urllib.parse import urlencode

import falcon
from marshmallow import Schema, ValidationError

from .errors import NotFound, PreconditionFailed, ValidationFailed, field_error
from .schemas import DEFAULT_PAGE, READ_ONLY_FIELDS

MAX_BODY_BYTES = 1024 * 1024
# Deeper bodies are refused up front: serialising, hashing and JSON Schema checks recurse.
MAX_JSON_DEPTH = 64
# PostgreSQL text and jsonb cannot hold NUL; UTF-8 cannot encode a lone surrogate ("\ud800").
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_UNSTORABLE_MESSAGE = "Must not contain NUL characters or unpaired surrogates."


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


def read_json(req: falcon.Request) -> dict:
    """The request body as a JSON object; 413 past 1 MiB, 400 when empty, malformed or not an object."""
    if req.content_length is None and is_chunked(req):
        # No length to bound by: the server de-chunks, and we stop one byte past the cap.
        raw = req.stream.read(MAX_BODY_BYTES + 1)
    else:
        raw = req.bounded_stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise falcon.HTTPContentTooLarge(description="Request body is larger than 1 MiB.")
    if not raw.strip():
        raise field_error("body", "A JSON object is required.")
    try:
        data = json.loads(raw, parse_constant=reject_constant, parse_float=finite_float)
    except (ValueError, RecursionError) as exc:
        raise field_error("body", f"Malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise field_error("body", "The body must be a JSON object.")
    if _depth(data) > MAX_JSON_DEPTH:
        raise field_error("body", f"JSON is nested deeper than {MAX_JSON_DEPTH} levels.")
    return data


def reject_constant(name: str) -> None:
    """NaN and Infinity are not JSON (and jsonb refuses them)."""
    raise ValueError(f"{name} is not valid JSON")


def finite_float(text: str) -> float:
    """A JSON number as a float; one beyond a double's range (1e400) cannot be stored."""
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (so deep input cannot overflow the stack)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                children = item.values() if isinstance(item, dict) else item
                stack.extend((child, depth + 1) for child in children)
    return deepest


def unstorable_strings(value: Any, path: str = "") -> list[dict]:
    """Field errors for strings (values or keys) PostgreSQL cannot store: NUL, lone surrogates."""
    problems = []
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if UNSTORABLE.search(item):
                problems.append({"field": where or "body", "message": _UNSTORABLE_MESSAGE})
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and UNSTORABLE.search(key):
                    problems.append({"field": where or "body", "message": _UNSTORABLE_MESSAGE})
                    continue
                stack.append((child, f"{where}.{key}" if where else str(key)))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{index}]") for index, child in enumerate(item))
    return sorted(problems, key=lambda p: p["field"])


def validate_body(schema: Schema, data: dict, *, partial: bool = False, ignore: frozenset = frozenset()) -> dict:
    """Drop read-only fields, then load with the schema; 400 naming every bad field."""
    cleaned = {k: v for k, v in data.items() if k not in READ_ONLY_FIELDS and k not in ignore}
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
            raise field_error(key, _UNSTORABLE_MESSAGE)
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


# ---- keyset pagination -------------------------------------------------------

def encode_cursor(values: list) -> str:
    """An opaque, URL-safe cursor holding the last row's sort key."""
    raw = json.dumps(values, separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> list:
    """The sort key inside a cursor; 400 when it was not made by encode_cursor."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error):
        raise field_error("cursor", "Not a valid cursor.") from None
    if not isinstance(values, list):
        raise field_error("cursor", "Not a valid cursor.")
    return values


def time_id_cursor(query: dict) -> dict:
    """Keyset parameters for lists ordered by (created_at, id) desc."""
    params = {"after_created_at": None, "after_id": None}
    if query.get("cursor"):
        values = decode_cursor(query["cursor"])
        try:
            created_at, row_id = values
            params["after_created_at"] = dt.datetime.fromisoformat(created_at)
            params["after_id"] = uuid.UUID(row_id)
        except (ValueError, TypeError):
            raise field_error("cursor", "Not a valid cursor.") from None
    return params


def page_limit(query: dict) -> int:
    """Requested page size (already range-checked by PageQuery)."""
    return query.get("limit", DEFAULT_PAGE)


def finish_page(
    req: falcon.Request,
    resp: falcon.Response,
    rows: list[dict],
    limit: int,
    key: Callable[[dict], list] = lambda row: [row["created_at"].isoformat(), str(row["id"])],
) -> list[dict]:
    """Trim the look-ahead row; when more exist set ``Link: rel="next"`` and ``X-Next-Cursor``."""
    if len(rows) <= limit:
        return rows
    rows = rows[:limit]
    cursor = encode_cursor(key(rows[-1]))
    params = {k: v for k, v in req.params.items() if k != "cursor"}
    params["cursor"] = cursor
    resp.set_header("X-Next-Cursor", cursor)
    resp.append_header("Link", f'<{req.path}?{urlencode(params)}>; rel="next"')
    return rows


# ---- representations, ETags and preconditions -----------------------------------

def etag_of(body: Any) -> str:
    """Strong ETag: a hash of the exact JSON representation."""
    raw = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()
    return '"' + hashlib.sha256(raw).hexdigest()[:32] + '"'


def check_if_match(req: falcon.Request, current_etag: str) -> None:
    """412 unless If-Match is absent, ``*``, or lists the current ETag (strong comparison)."""
    header = req.get_header("If-Match")
    if header is None:
        return
    tags = [t.strip() for t in header.split(",")]
    if "*" in tags or current_etag in tags:
        return
    raise PreconditionFailed()


def respond(resp: falcon.Response, body: Any, *, status: str = falcon.HTTP_200, etag: bool = True) -> None:
    """Send a record's representation with its ETag."""
    resp.status = status
    resp.media = body
    if etag:
        resp.etag = etag_of(body)


def created(req: falcon.Request, resp: falcon.Response, body: dict, location: str | None = None) -> None:
    """201 with a relative Location for the new record."""
    respond(resp, body, status=falcon.HTTP_201)
    resp.location = location or f"{req.path.rstrip('/')}/{body['id']}"
