"""Request-wide middleware, in the order create_app installs it: timing and
counting for /metrics, request ids (and the log context that carries them),
the body checks the contract puts before tenant resolution (413 by
Content-Length, then 415), and the security headers every answer carries.
Tenant resolution is tolstoy/api/tenancy.py."""

from __future__ import annotations

import re
import time
import uuid

import falcon

from .. import logs, metrics
from .access_log import ENV_ORG, ENV_ROUTE
from .requests import MAX_BODY_BYTES, is_chunked

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


class MetricsMiddleware:
    """Times every request and counts it by method, route template and status."""

    # The pool gauges change slowly; publishing them once a second (and at each scrape)
    # costs a fraction of doing it per request.
    POOL_EVERY = 1.0

    def __init__(self, db):
        self.db = db
        self._children: dict[tuple, tuple] = {}
        self._pool_published = 0.0

    def process_request(self, req, resp) -> None:
        req.context.metrics_started = time.perf_counter()

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        started = getattr(req.context, "metrics_started", None)
        if started is None:
            return
        now = time.perf_counter()
        key = (req.method, req.uri_template, resp.status_code)
        children = self._children.get(key)
        if children is None:
            method = req.method if req.method in metrics.METHODS else "other"
            labels = {"method": method, "route": req.uri_template or metrics.UNMATCHED, "status": str(resp.status_code)}
            children = (metrics.HTTP_REQUESTS.labels(**labels), metrics.HTTP_LATENCY.labels(**labels))
            if len(self._children) < 10_000:  # bounded: methods, routes and statuses are few
                self._children[key] = children
        children[0].inc()
        children[1].observe(now - started)
        if now - self._pool_published >= self.POOL_EVERY:
            self._pool_published = now
            metrics.observe_pool(self.db)


class RequestContextMiddleware:
    """Puts the request id in the log context, and the route and organization where the access log finds them."""

    def process_request(self, req, resp) -> None:
        req.context.log_token = logs.request_id.set(req.context.request_id)

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        req.env[ENV_ROUTE] = req.uri_template
        org = getattr(req.context, "org_id", None)
        if org is not None:
            req.env[ENV_ORG] = str(org)
        token = getattr(req.context, "log_token", None)
        if token is not None:
            logs.request_id.reset(token)


# JSON answers load nothing.
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
# Swagger UI: its own script and stylesheet from /docs/static, the spec from /openapi.json.
# Styles allow inline attributes (the UI sets them); scripts never run inline.
DOCS_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
               "form-action 'none'")
# The run console (tolstoy/api/console.py): its own script and stylesheet only, nothing inline (no
# 'unsafe-inline' for either), fetches to this origin, forms that submit here.
CONSOLE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
                  "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
EXPOSED = ["ETag", "Location", "Link", "X-Next-Cursor", "X-Request-ID", "Retry-After"]


class SecurityHeadersMiddleware:
    """Adds the headers to every answer, errors included."""

    def __init__(self, cors_origins: tuple[str, ...] = ()):
        # CORS stays off (no Access-Control-* headers at all) unless origins are listed.
        self.cors = falcon.CORSMiddleware(allow_origins=list(cors_origins), expose_headers=EXPOSED) \
            if cors_origins else None

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Referrer-Policy", "no-referrer")
        resp.set_header("X-Frame-Options", "DENY")
        docs = req.path == "/docs" or req.path.startswith("/docs/")
        console = req.path == "/console" or req.path.startswith("/console/")
        resp.set_header("Content-Security-Policy", DOCS_POLICY if docs else CONSOLE_POLICY if console else API_POLICY)
        if self.cors is not None:
            self.cors.process_response(req, resp, resource, req_succeeded)
