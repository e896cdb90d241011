"""``/users``: the people of an organization."""

from __future__ import annotations

import falcon
from marshmallow import fields, validate

from ..fieldtypes import TenantRecord, text
from . import resources
from .errors import Constraints
from .model import Filter, Model

# What the database's constraints on users mean to a client (errors.Constraints).
CONSTRAINTS = Constraints(
    checks={"users_email_length": "email", "users_name_length": "name"},
    unique={"users_org_id_email_key": "A user with this email already exists in this organization."},
    dependents={"users_org_id_fkey": "users"},
)


class UserSchema(TenantRecord):
    """``{email, name?}``; email unique per organization, ignoring case."""

    email = fields.Email(required=True, validate=validate.Length(max=320))
    name = text(0, 200, allow_none=True)


MODEL = Model(
    name="users", path="/users", noun="User", tag="Users", schema=UserSchema, writable=("email", "name"),
    filters=(Filter("email", "email", text(1, 320), "Case-insensitive exact email."),),
    delete_blocked_by="execution logs",
)


class Collection(resources.Collection):
    """``GET/POST /users``; ``?email=`` ignores case."""

    model = MODEL


class Item(resources.Item):
    """``GET/PUT/PATCH/DELETE /users/{id}``; delete is 409 while execution logs name the user."""

    model = MODEL

    def on_delete(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Delete the user; this process stops accepting them as X-User-ID at once."""
        super().on_delete(req, resp, id)
        self.db.verified.forget(req.context.org_id)


SCHEMAS = {"User": UserSchema}
ROUTES = resources.routes(MODEL, lambda s: Collection(s.db), lambda s: Item(s.db))
