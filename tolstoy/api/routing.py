"""Routes are declared once, in the noun module that answers them: each ``Route`` names its
URI template, how its resource is built and the OpenAPI operations it answers. The app's
route table (tolstoy/api/app.py) and ``/openapi.json`` (tolstoy/api/openapi.py) both read
the nouns' ``ROUTES``, so a route cannot be served undocumented or documented unserved.

Below them, the pieces of an OpenAPI operation every noun uses (tenant headers, error
answers, JSON bodies), so that each noun writes only what is its own."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import ModuleType

    from .. import engine
    from ..config import Config
    from ..db.database import Database
    from .quotas import RequestBuckets


@dataclass(eq=False)
class Services:
    """What resources are built from: the process's pool, configuration, client of tools and
    request quotas, and the nouns served (the document describes them)."""

    db: Database
    config: Config
    tools: engine.ToolClient
    buckets: RequestBuckets
    nouns: tuple[ModuleType, ...] = ()
    built: dict = field(default_factory=dict)

    @property
    def vault(self) -> engine.Vault | None:
        """The credential vault (None without TOLSTOY_ENCRYPTION_KEY)."""
        return self.tools.vault

    def resource(self, build: Callable[[Services], Any]) -> Any:
        """The one resource ``build`` makes for this app: routes that name the same builder share it."""
        if build not in self.built:
            self.built[build] = build(self)
        return self.built[build]


_PARAM = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True, eq=False)
class Route:
    """A URI template, the builder of the resource that answers it, Falcon's responder suffix and
    the OpenAPI operations by method (None: served but not in the document)."""

    template: str
    build: Callable[[Services], Any]
    suffix: str | None = None
    operations: Mapping[str, dict] | None = None

    @property
    def path(self) -> str:
        """The template as the document spells it: parameters in camelCase (``{execution_id}`` →
        ``{executionId}``)."""
        return _PARAM.sub(lambda m: "{" + re.sub(r"_([a-z])", lambda c: c[1].upper(), m[1]) + "}", self.template)


# ---- pieces of OpenAPI operations --------------------------------------------------------------

ERRORS = {
    "400": "Malformed JSON, failed validation, bad tenant headers or a reference to an unseen record.",
    "404": "No such record (also another organization's, or an id that is not a UUID).",
    "405": "Method not allowed on this path (see the Allow header).",
    "409": "A unique value is taken, or dependent rows block the delete.",
    "412": "If-Match does not match the record's ETag.",
    "413": "Body larger than 1 MiB.",
    "415": "Body is not JSON.",
    "401": "TOLSTOY_AUTH_MODE=api_key: missing, invalid or revoked API key (WWW-Authenticate: Bearer).",
    "403": "TOLSTOY_AUTH_MODE=api_key: X-Org-ID names another organization, or the admin token is needed.",
    "503": "The database (or the credential key) is unavailable; retry later.",
    "429": "Over a quota of the organization (`quota` names it, `limit` is its value; Retry-After says when to "
           "try again): requestsPerSecond on any route; queuedRuns or storedBytes on a route that starts a run "
           "(nothing of the run is written).",
}
ERROR_BODY = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
# A UUID in the path, a page's headers and query parameters (components of the document).
UUID_PATH = {"in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
PAGE = ["Limit", "Cursor"]
PAGE_HEADERS = {"Link": "Link", "X-Next-Cursor": "NextCursor"}


def error(code: str) -> dict:
    """The answer ``code`` with its usual description and the error body."""
    return {"description": ERRORS[code], "content": ERROR_BODY}


def errors(*codes: str) -> dict:
    """The error answers of a data route: ``codes`` and those any data route may meet."""
    # Every data route may also meet API-key auth (401/403), the organization's request quota (429) and an
    # unreachable database (503).
    return {code: error(code) for code in (*codes, "401", "403", "429", "503")}


def json_content(ref: str, many: bool = False) -> dict:
    """A JSON body of the component ``ref`` (a list of them with ``many``)."""
    schema = {"$ref": f"#/components/schemas/{ref}"}
    if many:
        schema = {"type": "array", "items": schema}
    return {"application/json": {"schema": schema}}


def updating(tags: list, summary: str, parameters: list, body: str, answer: str | None = None) -> dict:
    """A PUT or PATCH guarded by If-Match: a ``body`` component in, 200 with ``answer`` (else the body's
    component) and its ETag out."""
    return {"tags": tags, "summary": summary, "parameters": parameters + ["IfMatch"],
            "requestBody": {"required": True, "content": json_content(body)},
            "responses": {"200": {"description": "Updated.", "headers": {"ETag": "ETag"},
                                  "content": json_content(answer or body)},
                          **errors("400", "404", "412", "413", "415")}}


def tenant_params(user_required: bool = False) -> list:
    """X-Org-ID and X-User-ID (required when the route records who acted)."""
    return ["OrgId", "UserIdRequired" if user_required else "UserId"]


def path_id(name: str = "id") -> dict:
    """A UUID path parameter."""
    return {"name": name, **UUID_PATH}
