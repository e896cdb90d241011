"""Every error the API can answer, in the contract's body shape, and the
translation of domain errors (constraint names, an unreachable database, an
undecryptable credential) into those answers."""

from __future__ import annotations

import http
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import falcon
from marshmallow import fields

from ..errors import (
    CheckViolation,
    DatabaseUnavailable,
    ForeignKeyViolation,
    KeyRejected,
    QuotaExceeded,
    TenantRejected,
    UniqueViolation,
    VaultError,
)
from ..fieldtypes import Base


class FieldErrorSchema(Base):
    """One validation problem."""

    field = fields.String(dump_only=True)
    message = fields.String(dump_only=True)


class ErrorSchema(Base):
    """Every error response."""

    statusCode = fields.Integer(dump_only=True)
    error = fields.String(dump_only=True)
    message = fields.String(dump_only=True)
    errors = fields.List(fields.Nested(FieldErrorSchema), dump_only=True)
    quota = fields.String(dump_only=True, metadata={
        "description": "429 over a quota only: which (queuedRuns, storedBytes, requestsPerSecond)."})
    limit = fields.Integer(dump_only=True, metadata={"description": "429 over a quota only: its limit."})


log = logging.getLogger("tolstoy.errors")


class ValidationFailed(falcon.HTTPBadRequest):
    """400 with per-field errors: ``[{"field": ..., "message": ...}]``."""

    def __init__(self, errors: list[dict], message: str | None = None):
        self.errors = errors
        if message is None:
            first = errors[0]
            message = f"{first['field']}: {first['message']}"
            if len(errors) > 1:
                message += f" (and {len(errors) - 1} more)"
        super().__init__(description=message)


def field_error(field: str, message: str) -> ValidationFailed:
    """A 400 naming one field (a body field, a query parameter or a header)."""
    return ValidationFailed([{"field": field, "message": message}])


class NotFound(falcon.HTTPNotFound):
    """404 for a record that does not exist or belongs to another organization."""

    def __init__(self, what: str = "Record"):
        super().__init__(description=f"{what} not found.")


class Conflict(falcon.HTTPConflict):
    """409: a unique value is taken, or dependent rows block a delete."""

    def __init__(self, message: str):
        super().__init__(description=message)


class TooManyRequests(falcon.HTTPTooManyRequests):
    """429 with Retry-After (seconds); over one of the organization's quotas, the body also names it
    (``quota``) with its ``limit``."""

    def __init__(self, message: str, retry_after: int, quota: str | None = None, limit=None):
        super().__init__(description=message, retry_after=retry_after)
        self.extra = {"quota": quota, "limit": limit} if quota is not None else {}


# When to try again after a quota refused a new run: runs finish within seconds to minutes; stored bytes
# shrink only when the workers' hourly upkeep drops a month past retention (or someone purges runs).
QUOTA_RETRY_AFTER = {"queuedRuns": 30, "storedBytes": 3600}


class PreconditionFailed(falcon.HTTPPreconditionFailed):
    """412: the If-Match header does not match the record's current ETag."""

    def __init__(self):
        super().__init__(description="If-Match does not match the current ETag of this record.")


@dataclass(frozen=True)
class Constraints:
    """What the database's constraints on a noun's tables mean to a client; each noun module declares its
    own (``CONSTRAINTS``) and the app assembles them (``assemble``), as it does routes. Constraint names come
    from db/migrations; tests/db/test_check_constraints.py and tests/db/test_migrations.py check each exists.

    ``checks``: the body field a check constraint guards. When it refuses what validation let through (the
    two disagreeing is a bug of ours, but the value came from the client) the answer is a 400 naming that
    field, never a 500. ``service``: the check constraints only the service's own values meet (ids, versions,
    hashes, states); every check constraint of the schema is in one of the two. ``unique``: the message of a
    409 for a taken value. ``dependents``: what a foreign key's rows are, named in the 409 of a delete they
    block. ``references``: the field of a reference that vanished mid-request (a 400)."""

    checks: Mapping[str, str] = field(default_factory=dict)
    unique: Mapping[str, str] = field(default_factory=dict)
    dependents: Mapping[str, str] = field(default_factory=dict)
    references: Mapping[str, str] = field(default_factory=dict)
    service: frozenset[str] = frozenset()

    @classmethod
    def assemble(cls, parts: Iterable[Constraints]) -> Constraints:
        """One map of each kind from the nouns' parts; a constraint two nouns name is a mistake."""
        merged: dict[str, dict] = {"checks": {}, "unique": {}, "dependents": {}, "references": {}}
        service: set[str] = set()
        for part in parts:
            for kind, into in merged.items():
                mine = getattr(part, kind)
                twice = into.keys() & mine.keys()
                if twice:
                    raise ValueError(f"constraints named by two nouns: {sorted(twice)}")
                into.update(mine)
            if service & part.service:
                raise ValueError(f"constraints named by two nouns: {sorted(service & part.service)}")
            service |= part.service
        return cls(**merged, service=frozenset(service))

    def check_violation(self, req, resp, exc: CheckViolation, params):
        """400 naming the field whose value the database refused (validation should have: see ``checks``)."""
        log.error("check constraint %s refused what validation accepted", exc.constraint)
        raise field_error(self.checks.get(exc.constraint or "", "body"), "Not an allowed value.")

    def unique_violation(self, req, resp, exc: UniqueViolation, params):
        """409 naming the value that is already taken."""
        message = self.unique.get(exc.constraint or "", "A record with these values already exists.")
        raise Conflict(message)

    def foreign_key_violation(self, req, resp, exc: ForeignKeyViolation, params):
        """409 for a delete blocked by dependents; 400 for a reference that vanished mid-request."""
        if exc.on_delete:
            dependents = self.dependents.get(exc.constraint or "", "other records")
            raise Conflict(f"Cannot delete: still referenced by {dependents}. Delete those first.")
        raise field_error(self.references.get(exc.constraint or "", "body"), "Refers to a record that does not exist.")


# The check constraints of the tables no noun writes (the vault's keys and its read log, the slots steps
# hold: the engine's).
ENGINE_CONSTRAINTS = Constraints(
    service=frozenset({"organization_keys_kek_id_length", "organization_keys_version_positive",
        "secret_reads_actor_known", "secret_reads_purpose_length",
        "flow_step_slots_key_check", "flow_step_slots_step_id_check"}),
)


def database_unavailable(req, resp, exc: DatabaseUnavailable, params):
    """503 when the pool cannot hand out a connection in time."""
    log.warning("database unavailable: %s", exc)
    raise falcon.HTTPServiceUnavailable(
        description="The database is not answering; try again shortly.", retry_after=5
    )


def vault_error(req, resp, exc: Exception, params):
    """503 when stored credentials cannot be decrypted with the configured keys."""
    log.error("credential vault: %s", exc)
    raise falcon.HTTPServiceUnavailable(
        description="Stored credentials cannot be decrypted with the configured TOLSTOY_ENCRYPTION_KEY."
    )


def quota_exceeded(req, resp, exc: QuotaExceeded, params):
    """429 naming the quota a new run would exceed (nothing of the run was written)."""
    raise TooManyRequests(exc.message, QUOTA_RETRY_AFTER.get(exc.quota, 60), quota=exc.quota, limit=exc.limit)


def tenant_rejected(req, resp, exc: TenantRejected, params):
    """400 naming the tenant header whose organization or user does not exist."""
    raise field_error(exc.field, exc.message)


KEY_REJECTED = "The API key is not valid, has expired or has been revoked."


def key_rejected(req, resp, exc: KeyRejected, params):
    """401 for an API key that is unknown or was revoked."""
    raise falcon.HTTPUnauthorized(description=KEY_REJECTED, challenges=["Bearer"])


def http_error(req, resp, exc: falcon.HTTPError, params):
    """Every HTTP error a resource raises: a bad tenant is answered first (the contract's order of
    checks), even when the resource failed before its first query checked the tenant."""
    unit = getattr(req.context, "unit", None)
    if unit is not None and exc.status_code < 500:
        try:
            unit.verify()
        except TenantRejected as rejected:
            tenant_rejected(req, resp, rejected, params)
        except KeyRejected as rejected:
            key_rejected(req, resp, rejected, params)
        except DatabaseUnavailable:
            pass  # the tenant cannot be checked now; the resource's own error stands
    raise exc


def unexpected(req, resp, exc: Exception, params):
    """500 for bugs: logged with the traceback, the client sees no internals."""
    if isinstance(exc, falcon.HTTPError):
        raise exc
    log.exception("unhandled error on %s %s", req.method, req.path)
    raise falcon.HTTPInternalServerError(description="Unexpected server error.")


def _encodable(value):
    """A string that UTF-8 can encode: a client's lone surrogate (echoed in a field name) is escaped."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def serialize(req, resp, exc: falcon.HTTPError) -> None:
    """Write the contract's error body for every HTTPError, including Falcon's own 404/405."""
    status = exc.status_code
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = exc.title or str(status)
    message = exc.description or exc.title or phrase
    if status == 404 and not exc.description:
        message = "No route or record at this path."
    if status == 405:
        message = f"Method {req.method} is not allowed here."
    body = {"statusCode": status, "error": phrase, "message": _encodable(message)}
    errors = getattr(exc, "errors", None)
    if errors:
        body["errors"] = [{k: _encodable(v) for k, v in e.items()} for e in errors]
    body.update(getattr(exc, "extra", None) or {})
    resp.media = body
    resp.content_type = falcon.MEDIA_JSON


def install(app: falcon.App, constraints: Constraints) -> None:
    """Register the serializer and the handlers, most general first (Falcon picks the most specific);
    ``constraints``: what the nouns' constraints mean to a client."""
    app.add_error_handler(Exception, unexpected)
    app.add_error_handler(falcon.HTTPError, http_error)
    app.add_error_handler(TenantRejected, tenant_rejected)
    app.add_error_handler(KeyRejected, key_rejected)
    app.add_error_handler(UniqueViolation, constraints.unique_violation)
    app.add_error_handler(CheckViolation, constraints.check_violation)
    app.add_error_handler(ForeignKeyViolation, constraints.foreign_key_violation)
    app.add_error_handler(DatabaseUnavailable, database_unavailable)
    app.add_error_handler(VaultError, vault_error)
    app.add_error_handler(QuotaExceeded, quota_exceeded)
    app.set_error_serializer(serialize)
