"""Request-wide middleware: request ids, and the body checks the contract puts
before tenant resolution (413 by Content-Length, then 415)."""

from __future__ import annotations

import re
import uuid

import falcon

from .http import MAX_BODY_BYTES, is_chunked

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,200}$")
_JSON_TYPE = re.compile(r"^application/(json|[a-z0-9.+-]+\+json)$")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class RequestIdMiddleware:
    """Give every request an id (the client's ``X-Request-ID`` when sane) and echo it back."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        sent = req.get_header("X-Request-ID")
        req.context.request_id = sent if sent and _REQUEST_ID.match(sent) else uuid.uuid4().hex

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        resp.set_header("X-Request-ID", req.context.request_id)


def allowed_methods(app_routes: list[tuple[str, object, str | None]]) -> dict[str, frozenset]:
    """URI template → methods its resource answers, so checks can step aside for a 405."""
    return {
        template: frozenset(falcon.routing.map_http_methods(resource, suffix=suffix))
        for template, resource, suffix in app_routes
    }


def method_allowed(req: falcon.Request, routes: dict[str, frozenset]) -> bool:
    """True when the matched route answers this method (False means Falcon will send 405)."""
    return req.method in routes.get(req.uri_template, frozenset())


def has_body(req: falcon.Request) -> bool:
    """A body was sent: a positive Content-Length or a chunked transfer."""
    return bool(req.content_length) or is_chunked(req)


class BodyGuardMiddleware:
    """413 when Content-Length is over 1 MiB, 415 when a body is not JSON."""

    def __init__(self, routes: dict[str, frozenset]):
        self.routes = routes

    def process_resource(self, req, resp, resource, params) -> None:
        if not method_allowed(req, self.routes):
            return
        if req.content_length and req.content_length > MAX_BODY_BYTES:
            raise falcon.HTTPContentTooLarge(description="Request body is larger than 1 MiB.")
        if req.method in BODY_METHODS and has_body(req):
            media_type = (req.content_type or "").split(";")[0].strip().lower()
            if not _JSON_TYPE.match(media_type):
                raise falcon.HTTPUnsupportedMediaType(
                    description="Send the body as JSON (Content-Type: application/json)."
                )
