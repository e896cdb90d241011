"""Answering with a record: its JSON, a strong ETag, If-Match preconditions,
and 201 with a relative Location."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import falcon

from ..jsonsafe import dumps
from .errors import PreconditionFailed

# Falcon parses one unquoted tag leniently; an entity-tag is quoted (RFC 9110 8.8.3), and a
# malformed If-Match must never match.
_ENTITY_TAG_LIST = re.compile(r'^\s*(\*|(W/)?"[^"]*"(\s*,\s*(W/)?"[^"]*")*)\s*$')


def etag_of(body: Any) -> str:
    """Strong ETag: a hash of the exact JSON representation."""
    return '"' + hashlib.sha256(dumps(body, sort_keys=True)).hexdigest()[:32] + '"'


def check_if_match(req: falcon.Request, current_etag: str) -> None:
    """412 unless If-Match is absent, ``*``, or lists the current ETag (strong comparison)."""
    tags = req.if_match
    if tags is None:
        return
    current = falcon.ETag.loads(current_etag)
    well_formed = _ENTITY_TAG_LIST.match(req.get_header("If-Match") or "")
    if well_formed and any(tag == "*" or current.strong_compare(tag) for tag in tags):
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
