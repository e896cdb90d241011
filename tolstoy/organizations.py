"""``/organizations``: the tenants themselves (no tenant header)."""

from __future__ import annotations

from . import resources
from .schemas import OrganizationSchema


class OrganizationModel:
    """Shared settings of the organization resources."""

    noun = "Organization"
    schema = OrganizationSchema()
    tenant_scoped = False


class Collection(OrganizationModel, resources.Collection):
    """``GET/POST /organizations``."""


class Item(OrganizationModel, resources.Item):
    """``GET/PUT/PATCH/DELETE /organizations/{id}``; delete is 409 while tenant rows remain."""
