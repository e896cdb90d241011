"""``/users``: the people of an organization."""

from __future__ import annotations

import falcon

from . import resources
from .model import Filter, Model
from .schemas import UserSchema, text

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
