"""Domain errors shared by the layers. They know nothing of HTTP: the API maps
them to status codes (tolstoy/api/errors.py), the engine to step outcomes."""

from __future__ import annotations

# ---- faults of the database, told apart by SQLSTATE ---------------------------------------------

TRANSIENT = "transient"
REFUSED = "refused"

# The one table that sorts what the database says: an SQLSTATE (five characters) or its class (the
# first two), and what the engine does about it (docs/flows.md, "Faults: hand back or fail", shows
# this table and tests/unit/test_fault_classes.py checks it matches). An exact SQLSTATE wins over its
# class. TRANSIENT: the database cannot do it now, the same statement may succeed later (a run is
# handed back, an API request answers 503). REFUSED: the database refuses the data the statement
# carries or builds, sending it again gives the same answer (it counts against the run). Anything
# else is a bug of ours (a run records it as a crash; an API request answers 500).
FAULT_CLASSES: tuple[tuple[str, str, str], ...] = (
    ("08", TRANSIENT, "connection exception: the connection was lost, or could not be made"),
    ("25006", TRANSIENT, "read-only transaction: connected to a standby (a failover is under way)"),
    ("28", TRANSIENT, "invalid authorization: the login was refused (a password being rotated)"),
    ("40", TRANSIENT, "transaction rollback: serialization failure, deadlock detected"),
    ("40002", REFUSED, "transaction integrity constraint violation (a deferred constraint, at commit)"),
    ("53", TRANSIENT, "insufficient resources: disk full, out of memory, too many connections"),
    ("55P03", TRANSIENT, "lock not available (lock_timeout)"),
    ("57", TRANSIENT, "operator intervention: statement cancelled or timed out, server shutting down or "
                      "not yet accepting connections"),
    ("58", TRANSIENT, "system error: an I/O error"),
    ("72", TRANSIENT, "snapshot too old"),
    ("22", REFUSED, "data exception: invalid text representation, numeric value out of range, "
                    "untranslatable character, …"),
    ("23", REFUSED, "integrity constraint violation (unique and foreign key violations are reported as such)"),
    ("54", REFUSED, "program limit exceeded: a jsonb value over 256 MB, a statement too complex"),
)
_FAULTS = {code: kind for code, kind, _ in FAULT_CLASSES}


def fault_kind(sqlstate: str | None) -> str | None:
    """TRANSIENT, REFUSED or None (neither: a bug) for an SQLSTATE, by FAULT_CLASSES. An error with no
    SQLSTATE at all is the connection's (it broke before the server said anything): TRANSIENT."""
    if not sqlstate:
        return TRANSIENT
    return _FAULTS.get(sqlstate, _FAULTS.get(sqlstate[:2]))


class DatabaseFault(Exception):
    """A statement failed for a reason FAULT_CLASSES sorts; ``sqlstate`` says which (None: the
    connection broke)."""

    def __init__(self, message: str, sqlstate: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate

    def as_error(self) -> dict:
        """As a run's error shows it: ``{name, message, sqlstate}``."""
        return {"name": type(self).__name__, "message": str(self)[:1000], "sqlstate": self.sqlstate}


class DatabaseUnavailable(DatabaseFault):
    """A transient fault: the database could not be reached in time, or could not do it now (a
    statement cancelled or timed out, a serialization failure, a failover). Trying again later may
    succeed."""


class DataRefused(DatabaseFault):
    """The database refused the data a statement carried or built (a program limit such as jsonb's
    256 MB, a data exception): sending it again gives the same answer."""


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


class QuotaExceeded(Exception):
    """A new run would take its organization over a quota (``quota``: queuedRuns or storedBytes)."""

    def __init__(self, quota: str | None, limit, used, message: str):
        super().__init__(message)
        self.quota = quota
        self.limit = limit
        self.used = used
        self.message = message
