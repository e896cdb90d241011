"""``/organizations``: the tenants themselves (no X-Org-ID).

In api_key mode the admin token manages every organization and creating one
returns its first API key; an organization's own key sees and renames only
its own organization."""

from __future__ import annotations

import falcon

from ..fieldtypes import Record, text
from . import resources
from .api_keys import issue_key
from .errors import Constraints, NotFound
from .model import Model
from .requests import parse_uuid, read_json, validate_query
from .responses import created

# What the database's constraints on organizations mean to a client (errors.Constraints).
CONSTRAINTS = Constraints(
    checks={"organizations_name_length": "name"},
)


class OrganizationSchema(Record):
    """``{name}``."""

    name = text(1, 200, required=True)


MODEL = Model(
    name="organizations", path="/organizations", noun="Organization", tag="Organizations",
    schema=OrganizationSchema, writable=("name",), tenant=False,
    delete_blocked_by="users, tools or flows",
)


class OrganizationResource(resources.ModelResource):
    """Shared settings of the organization resources."""

    model = MODEL
    access = "organizations"

    def visible(self, req: falcon.Request, org_id) -> bool:
        """An API key sees only its own organization; the admin token and headers mode see all."""
        return req.context.key_org_id is None or req.context.key_org_id == org_id


class Collection(OrganizationResource, resources.Collection):
    """``GET/POST /organizations``."""

    def __init__(self, db, key_secret: str | None = None):
        super().__init__(db)
        self.key_secret = key_secret

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Every organization, or only the caller's own for an API key."""
        if req.context.key_org_id is None:
            return super().on_get(req, resp)
        validate_query(self.model.list_query, req)  # same 400s for unknown parameters as the full list
        row = self.db.one(self.sql.get, commit=True, org_id=None, id=req.context.key_org_id)
        resp.media = [self.dump(row)] if row else []

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Create an organization; in api_key mode (admin only) the answer holds its first ``apiKey``."""
        if req.context.key_org_id is not None:
            raise falcon.HTTPForbidden(description="Creating organizations needs the admin token.")
        if not req.context.is_admin:
            return super().on_post(req, resp)
        data = read_json(req)
        values = self.load_values(data, partial=False)
        row = self.db.one(self.sql.insert, org_id=None, **self.columns(values))
        with self.db.tenant(row["id"]):
            key = issue_key(self.db, self.key_secret, row["id"], "default")
        created(req, resp, {**self.represent(row), "apiKey": key["api_key"]})


class Item(OrganizationResource, resources.Item):
    """``GET/PUT/PATCH/DELETE /organizations/{id}``; delete is 409 while tenant rows remain."""

    def find(self, req: falcon.Request, raw_id: str, *, for_update: bool = False, commit: bool = False):
        """Another organization than an API key's own is a 404, like a missing one."""
        record_id, row = super().find(req, raw_id, for_update=for_update, commit=commit)
        if not self.visible(req, record_id):
            raise NotFound(self.noun)
        return record_id, row

    def on_delete(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Deleting an organization is the admin's (or, in headers mode, anyone's)."""
        if req.context.key_org_id is not None:
            self.find(req, id)
            raise falcon.HTTPForbidden(description="Deleting an organization needs the admin token.")
        super().on_delete(req, resp, id)
        # This process stops answering for it at once (others within seconds: tolstoy/db/database.py).
        self.db.verified.forget(parse_uuid(id, self.noun))


SCHEMAS = {"Organization": OrganizationSchema}
ROUTES = resources.routes(MODEL, lambda s: Collection(s.db, s.config.api_key_secret), lambda s: Item(s.db))
