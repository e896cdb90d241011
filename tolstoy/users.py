"""``/users``: the people of an organization."""

from __future__ import annotations

from . import resources
from .schemas import UserListQuery, UserSchema


class UserModel:
    """Shared settings of the user resources."""

    noun = "User"
    schema = UserSchema()


class Collection(UserModel, resources.Collection):
    """``GET/POST /users``; ``?email=`` ignores case."""

    list_query = UserListQuery()
    filters = {"email": "email"}


class Item(UserModel, resources.Item):
    """``GET/PUT/PATCH/DELETE /users/{id}``; delete is 409 while execution logs name the user."""
