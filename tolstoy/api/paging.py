"""Keyset pagination: opaque cursors over a list's sort key, page sizes, and
the ``Link``/``X-Next-Cursor`` headers of a page that has a next one."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from collections.abc import Callable
from urllib.parse import urlencode

import falcon

from ..fieldtypes import DEFAULT_PAGE
from ..signatures import b64url
from .errors import field_error


def encode_cursor(values: list) -> str:
    """An opaque, URL-safe cursor holding the last row's sort key."""
    raw = json.dumps(values, separators=(",", ":"), default=str).encode()
    return b64url(raw)


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
        if len(values) != 2 or not all(isinstance(value, str) for value in values):
            raise field_error("cursor", "Not a valid cursor.")
        try:
            params["after_created_at"] = dt.datetime.fromisoformat(values[0])
            params["after_id"] = uuid.UUID(values[1])
        except ValueError:
            raise field_error("cursor", "Not a valid cursor.") from None
    return params


def page_limit(query: dict) -> int:
    """Requested page size (already range-checked by PageQuery)."""
    return query.get("limit", DEFAULT_PAGE)


def time_id_key(row: dict) -> list:
    """The sort key of a row in a list ordered by (created_at, id) desc."""
    return [row["created_at"].isoformat(), str(row["id"])]


def version_cursor(query: dict) -> dict:
    """Keyset parameter for a flow's versions, ordered by version desc."""
    if not query.get("cursor"):
        return {"before_version": None}
    values = decode_cursor(query["cursor"])
    if (len(values) != 1 or not isinstance(values[0], int) or isinstance(values[0], bool)
            or not 1 <= values[0] <= 2_147_483_647):
        raise field_error("cursor", "Not a valid cursor.")
    return {"before_version": values[0]}


def version_key(row: dict) -> list:
    """The sort key of a flow version."""
    return [row["version"]]


def finish_page(
    req: falcon.Request,
    resp: falcon.Response,
    rows: list[dict],
    limit: int,
    key: Callable[[dict], list] = time_id_key,
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
