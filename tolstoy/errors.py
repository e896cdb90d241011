"""Domain errors shared by the layers. They know nothing of HTTP: the API maps
them to status codes (tolstoy/api/errors.py), the engine to step outcomes."""

from __future__ import annotations


class DatabaseUnavailable(Exception):
    """The database could not be reached in time."""


class VaultError(Exception):
    """The encryption key is missing or cannot decrypt a stored secret."""


class UniqueViolation(Exception):
    """A unique constraint refused a write; carries the constraint's name."""

    def __init__(self, constraint: str | None):
        super().__init__(constraint)
        self.constraint = constraint


class CheckViolation(Exception):
    """A check constraint refused a write; carries the constraint's name (and the SQLSTATE, so code
    that classifies database errors by it sees what it was)."""

    sqlstate = "23514"

    def __init__(self, constraint: str | None):
        super().__init__(constraint)
        self.constraint = constraint


class ForeignKeyViolation(Exception):
    """A foreign key refused a write; ``on_delete`` tells a blocked delete from a dangling reference."""

    def __init__(self, constraint: str | None, on_delete: bool):
        super().__init__(constraint)
        self.constraint = constraint
        self.on_delete = on_delete


class TenantRejected(Exception):
    """The organization or acting user a request names does not exist (``field`` names the header)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class KeyRejected(Exception):
    """The API key is unknown or revoked."""
