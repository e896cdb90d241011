"""The OpenAPI 3.1 document, assembled from the nouns: each noun module declares its
components (``SCHEMAS``, marshmallow schemas that apispec describes) and its routes with their
operations (``ROUTES``, tolstoy/api/routing.py); this module adds the parts every route shares
(tenant headers, paging, the API-key scheme) and serves ``/openapi.json`` and ``/docs``."""

from __future__ import annotations

import copy
import functools
import json
import os
from types import ModuleType

import falcon
import swagger_ui
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from .. import __version__
from ..fieldtypes import DEFAULT_PAGE, MAX_PAGE, JSONObject, Timestamp
from .errors import ErrorSchema, FieldErrorSchema
from .routing import Route, Services

DOCS_STATIC = os.path.join(os.path.dirname(swagger_ui.__file__), "static")


def components(nouns: tuple[ModuleType, ...]) -> dict:
    """The error body every route may answer, then every noun's schemas by component name, in the nouns'
    order (a schema another nests comes first)."""
    found: dict = {"FieldError": FieldErrorSchema, "Error": ErrorSchema}
    for noun in nouns:
        for name, schema in getattr(noun, "SCHEMAS", {}).items():
            assert name not in found, f"two nouns declare the component {name}"
            found[name] = schema
    return found


@functools.cache
def spec_bytes(nouns: tuple[ModuleType, ...], app_name: str) -> bytes:
    """The document as served; built once per process (it only changes with the code)."""
    return json.dumps(build_spec(nouns, app_name)).encode()


def build_spec(nouns: tuple[ModuleType, ...], app_name: str = "Tolstoy") -> dict:
    """The whole OpenAPI 3.1 document as a dict."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title=app_name,
        version=__version__,
        openapi_version="3.1.0",
        plugins=[plugin],
        info={"description": "Multi-tenant workflow automation: tools, actions, flows and their execution logs."},
    )
    plugin.map_to_openapi_type(Timestamp, "string", "date-time")
    plugin.map_to_openapi_type(JSONObject, "object", None)
    for name, schema in components(nouns).items():
        spec.components.schema(name, schema=schema)
    spec.components.parameter("OrgId", "header", {
        "name": "X-Org-ID", "required": True, "schema": {"type": "string", "format": "uuid"},
        "description": "The caller's organization."})
    spec.components.parameter("UserId", "header", {
        "name": "X-User-ID", "required": False, "schema": {"type": "string", "format": "uuid"},
        "description": "Acting user; must belong to the organization when sent."})
    spec.components.parameter("UserIdRequired", "header", {
        "name": "X-User-ID", "required": True, "schema": {"type": "string", "format": "uuid"},
        "description": "Acting user, recorded on the new row."})
    spec.components.parameter("Limit", "query", {
        "name": "limit", "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE}})
    spec.components.parameter("Cursor", "query", {
        "name": "cursor", "required": False, "schema": {"type": "string"},
        "description": "Opaque cursor from X-Next-Cursor."})
    spec.components.parameter("IfMatch", "header", {
        "name": "If-Match", "required": False, "schema": {"type": "string"},
        "description": "Apply only if the record's ETag still matches."})
    spec.components.security_scheme("apiKey", {
        "type": "http", "scheme": "bearer",
        "description": "TOLSTOY_AUTH_MODE=api_key: `Authorization: Bearer <API key>`. A key's scopes decide what "
                       "it may do: read (GET), write (create, change, delete), execute (run flows and actions, "
                       "cancel, retry, resolve), admin (the organization's API keys), impersonate (act as any "
                       "user: call per-user tools with their connected accounts, connect one for them; a key "
                       "bound to a user, userId, acts as that user only); a missing scope is a 403 naming it. "
                       "X-User-ID only records who a request is for. In headers mode no credential is sent "
                       "(X-Org-ID names the organization, and the gateway vouches for X-User-ID)."})
    spec.options["security"] = [{"apiKey": []}, {}]
    spec.components.header("Link", {"schema": {"type": "string"}, "description": 'Relative URL of the next page, rel="next".'})
    spec.components.header("NextCursor", {"schema": {"type": "string"}, "description": "Cursor of the next page."})
    spec.components.header("Location", {"schema": {"type": "string"}, "description": "Relative path of the new record."})
    spec.components.header("ETag", {"schema": {"type": "string"}, "description": "Strong entity tag."})

    for noun in nouns:
        for route in noun.ROUTES:
            if route.operations is not None:
                # apispec rewrites what it is given in place: the declaration stays as written.
                spec.path(path=route.path, operations=copy.deepcopy(dict(route.operations)))
    return spec.to_dict()


DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/docs-init.js"></script>
</body>
</html>
"""

# Kept out of the page so a strict Content-Security-Policy needs no inline script.
DOCS_INIT = """window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});
"""


class OpenAPI:
    """``GET /openapi.json``: built once per process."""

    access = "public"

    def __init__(self, nouns: tuple[ModuleType, ...], app_name: str):
        self.body = spec_bytes(nouns, app_name)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The spec."""
        resp.data = self.body
        resp.content_type = falcon.MEDIA_JSON


class Docs:
    """``GET /docs``: Swagger UI from files shipped in a Python package (no CDN)."""

    access = "public"

    def __init__(self, app_name: str):
        self.page = DOCS_PAGE.format(title=app_name).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The HTML page."""
        resp.data = self.page
        resp.content_type = falcon.MEDIA_HTML

    def on_get_init(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The page's start-up script."""
        resp.data = DOCS_INIT.encode()
        resp.content_type = falcon.MEDIA_JS


def _document(s: Services) -> OpenAPI:
    return OpenAPI(s.nouns, s.config.app_name)


def _docs(s: Services) -> Docs:
    return Docs(s.config.app_name)


ROUTES = (
    Route("/openapi.json", _document, operations={"get": {
        "tags": ["Docs"], "summary": "This document",
        "responses": {"200": {"description": "OpenAPI 3.1",
                              "content": {"application/json": {"schema": {"type": "object"}}}}}}}),
    Route("/docs", _docs, operations={"get": {
        "tags": ["Docs"], "summary": "Interactive documentation",
        "responses": {"200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}}}}),
    Route("/docs/static/docs-init.js", _docs, "init"),
)
