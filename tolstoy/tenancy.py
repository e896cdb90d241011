"""Tenant resolution: who the caller's organization (and acting user) is, checked
against the database before any tenant-scoped resource runs."""

from __future__ import annotations

import uuid

import falcon

from .errors import field_error
from .middleware import method_allowed
from .queries import SQL


def header_uuid(req: falcon.Request, name: str, required: bool) -> uuid.UUID | None:
    """A tenant header as a UUID; 400 naming the header when missing or malformed."""
    value = req.get_header(name)
    if value is None or value.strip() == "":
        if required:
            raise field_error(name, f"The {name} header is required.")
        return None
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise field_error(name, f"{name} must be a UUID.") from None


def require_user(req: falcon.Request) -> uuid.UUID:
    """The acting user, for routes that record one; 400 when X-User-ID was not sent."""
    if req.context.user_id is None:
        raise field_error("X-User-ID", "The X-User-ID header is required for this request.")
    return req.context.user_id


class TenantMiddleware:
    """Sets ``req.context.org_id`` and ``req.context.user_id`` for tenant-scoped resources.

    Resources opt out with ``tenant_scoped = False`` (organizations, health, docs).
    """

    def __init__(self, db, routes: dict[str, frozenset]):
        self.db = db
        self.routes = routes

    def process_resource(self, req, resp, resource, params) -> None:
        req.context.org_id = None
        req.context.user_id = None
        if not getattr(resource, "tenant_scoped", True) or not method_allowed(req, self.routes):
            return
        org_id = header_uuid(req, "X-Org-ID", required=True)
        user_id = header_uuid(req, "X-User-ID", required=False)
        row = self.db.one(SQL.organizations.resolve_tenant, org_id=org_id, user_id=user_id)
        if row is None:
            raise field_error("X-Org-ID", "No organization with this id.")
        if user_id is not None and row["user_id"] is None:
            raise field_error("X-User-ID", "Not a user of this organization.")
        req.context.org_id = org_id
        req.context.user_id = user_id
