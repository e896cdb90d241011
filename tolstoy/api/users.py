"""``/users``: the people of an organization."""

from __future__ import annotations

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
