"""The audit trail of configuration changes: who a request's changes are recorded as, and
``GET /audit-events``, which shows them.

Events are written by the database, not here: every audited table has an AFTER ROW trigger
(tolstoy_audit, migration audit_events) that writes one event per row a request creates, changes
or deletes, in the request's own transaction, with secrets masked. What the API adds is who acted
and which request it was: ``AuditMiddleware`` sets them for each configuration request before its
first query, and the statement that opens each unit of work passes them to the database
(``Database.auditing``, sql/session.sql), so recording costs no statement and no round trip.

A configuration request is one that may change something but runs nothing: POST, PUT, PATCH and
DELETE of a tenant or /organizations route, except those that need the ``execute`` scope (running
a flow or an action, acting on a run: the engine's own writes, such as refreshing a user's token,
are not changes anyone made). A public route records only what it vouches for itself: the OAuth
callback records the connection it makes as made by the user who started the login
(``recorded_as_user``). tests/api/test_audit.py walks every route of the app: each changing route
writes exactly one event or is listed there as no configuration, with the reason.

The actor, as the request authenticated:
- api_key mode: ``{"apiKeyPrefix": "tsk_…", "userId": …}`` (userId: the user the key is bound to,
  absent when none); the admin token: ``{"admin": true}``.
- headers mode: ``{"userId": X-User-ID}`` (null when the gateway sent none); on /organizations,
  the operator's door, ``{"admin": true}``.
"""

from __future__ import annotations

import contextlib
import re

import falcon
from marshmallow import fields, validate

from ..db.database import Database
from ..db.queries import SQL
from ..fieldtypes import Base, PageQuery, Timestamp, text
from ..redaction import MASK, is_sensitive_key, mask_json
from ..times import iso
from . import resources
from .errors import Constraints
from .routing import PAGE, PAGE_HEADERS, Route, errors, json_content, tenant_params
from .tenancy import scope_needed

# What the database's constraints on audit_events mean to a client (errors.Constraints).
CONSTRAINTS = Constraints(
    service=frozenset({"audit_events_action_length", "audit_events_actor_object", "audit_events_changes_object",
        "audit_events_request_id_length"}),
)

AUDIT_TARGET_TYPES = ("organization", "user", "tool", "tool_credential", "action", "flow", "trigger", "webhook",
                      "api_key", "user_connection", "quota")


class AuditActorSchema(Base):
    """Who made a change, as the API authenticated the request (the keys that apply)."""

    userId = fields.UUID(dump_only=True, allow_none=True, metadata={
        "description": "headers mode: the X-User-ID the gateway forwarded (null: none); api_key mode: the user "
                       "the key is bound to (absent: none)."})
    apiKeyPrefix = fields.String(dump_only=True, metadata={"description": "The key's shown prefix (api_key mode)."})
    admin = fields.Boolean(dump_only=True, metadata={
        "description": "true: the admin token (api_key mode) or the gateway on /organizations (headers mode)."})


class AuditTargetSchema(Base):
    """The record changed."""

    type = fields.String(dump_only=True, metadata={"enum": list(AUDIT_TARGET_TYPES)})
    id = fields.UUID(dump_only=True)


class AuditEventSchema(Base):
    """``{id, orgId, actor, action, target, changes, requestId, at}``: one record changed by one request."""

    id = fields.UUID(dump_only=True)
    orgId = fields.UUID(dump_only=True)
    actor = fields.Nested(AuditActorSchema, dump_only=True)
    action = fields.String(dump_only=True, metadata={"description": "<target type>.created, .updated or .deleted."})
    target = fields.Nested(AuditTargetSchema, dump_only=True)
    changes = fields.Dict(dump_only=True, metadata={
        "description": "{field: [old, new]} of the fields that changed (creation: [null, new]; deletion: "
                       "[old, null]); secrets show as \"***\", never their values."})
    requestId = fields.String(dump_only=True, allow_none=True, metadata={"description": "X-Request-ID."})
    at = Timestamp(dump_only=True)


class AuditEventsQuery(PageQuery):
    """``GET /audit-events``: a page, optionally of one target or one actor."""

    targetType = fields.String(validate=validate.OneOf(AUDIT_TARGET_TYPES),
                               metadata={"description": "Only changes of this kind of record."})
    targetId = fields.UUID(metadata={"description": "Only changes of this record."})
    actorUserId = fields.UUID(metadata={"description": "Only changes made by this user."})
    actorApiKeyPrefix = text(1, 40, metadata={"description": "Only changes made with this API key (its prefix)."})
    actorAdmin = fields.Boolean(metadata={"description": "true: only the admin's changes; false: only others'."})


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_QUERY = AuditEventsQuery()
_CAMEL = re.compile(r"_([a-z0-9])")


def camel(column: str) -> str:
    """A column's name as the API spells its field (base_url: baseUrl)."""
    return _CAMEL.sub(lambda m: m.group(1).upper(), column)


def actor_of(req: falcon.Request, access: str = "tenant") -> dict:
    """Who the request's changes are made by, as it authenticated (see the module's docstring)."""
    context = req.context
    if context.is_admin:
        return {"admin": True}
    if context.key_hash is not None:
        actor = {"apiKeyPrefix": context.key_prefix}
        if context.key_user_id is not None:
            actor["userId"] = str(context.key_user_id)
        return actor
    if access == "organizations":
        return {"admin": True}
    return {"userId": None if context.user_id is None else str(context.user_id)}


def is_configuration(req: falcon.Request, resource) -> bool:
    """Whether the request's changes are recorded (a change that runs nothing; see the docstring)."""
    access = getattr(resource, "access", "tenant")
    if access not in ("tenant", "organizations") or req.method in SAFE_METHODS:
        return False
    return scope_needed(req, resource) != "execute"


class AuditMiddleware:
    """Sets who the request's configuration changes are recorded as, before its first query (after
    TenantMiddleware, whose context it reads), and forgets it when the request ends."""

    def process_resource(self, req, resp, resource, params) -> None:
        if getattr(req.context, "audit_token", None) is None and is_configuration(req, resource):
            context = {"actor": actor_of(req, getattr(resource, "access", "tenant")),
                       "requestId": req.context.request_id}
            req.context.audit_token = Database.auditing(context)

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        token = getattr(req.context, "audit_token", None)
        if token is not None:
            req.context.audit_token = None
            Database.stop_auditing(token)


def recorded_as_user(req: falcon.Request, user_id) -> contextlib.AbstractContextManager[None]:
    """The changes of the block (units opened in it) are recorded as made by ``user_id``: a public
    route that proved who acts by itself (the OAuth callback, by its state)."""
    return Database.audited_as({"userId": str(user_id)}, req.context.request_id)


def _masked(field: str, pair: list) -> list:
    """[old, new] of one field as it may be shown: a secret-named field's values masked whole, others
    through the one masking rule (tolstoy/redaction.py). The database masked them already; this is
    the same rule applied once more on the way out."""
    if is_sensitive_key(field):
        return [None if value is None else MASK for value in pair]
    return [mask_json(value) for value in pair]


def represent(row: dict) -> dict:
    """An event as the API shows it."""
    return {
        "id": str(row["id"]),
        "orgId": str(row["org_id"]),
        "actor": row["actor"],
        "action": row["action"],
        "target": {"type": row["target_type"], "id": str(row["target_id"])},
        "changes": {camel(field): _masked(field, pair) for field, pair in row["changes"].items()},
        "requestId": row["request_id"],
        "at": iso(row["created_at"]),
    }


class AuditEvents:
    """``GET /audit-events``: the organization's configuration changes, newest first."""

    scope = "admin"  # an API key needs the admin scope: events show every change of the organization

    def __init__(self, db: Database):
        self.db = db

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """One keyset page, optionally of one target or one actor."""

        def fetch(query: dict, **page) -> list[dict]:
            target_id = query.get("targetId")
            user_id = query.get("actorUserId")
            return self.db.all(SQL.audit_events.list, commit=True, org_id=req.context.org_id,
                               target_type=query.get("targetType"),
                               target_id=target_id, actor_user_id=None if user_id is None else str(user_id),
                               actor_key_prefix=query.get("actorApiKeyPrefix"), actor_admin=query.get("actorAdmin"),
                               **page)

        resources.list_page(req, resp, _QUERY, fetch, lambda rows: [represent(row) for row in rows])


# The list's filters, described from the query schema that checks them.
_FILTERS = [{"name": name, "in": "query", "required": False, "description": f.metadata.get("description", ""),
             "schema": {"type": "boolean"} if name == "actorAdmin" else
             {"type": "string", **({"format": "uuid"} if name in ("targetId", "actorUserId") else {}),
              **({"enum": list(AUDIT_TARGET_TYPES)} if name == "targetType" else {})}}
            for name, f in _QUERY.fields.items() if name not in ("limit", "cursor")]
SCHEMAS = {"AuditEvent": AuditEventSchema}
ROUTES = (
    Route("/audit-events", lambda s: AuditEvents(s.db), operations={"get": {
        "tags": ["Audit"], "summary": "Configuration changes, newest first: who changed which record, and how "
                                      "(one event per record a request created, changed or deleted; secrets masked)",
        "parameters": tenant_params() + PAGE + _FILTERS,
        "responses": {"200": {"description": "One page.", "headers": PAGE_HEADERS,
                              "content": json_content("AuditEvent", many=True)}, **errors("400"),
                      "403": {"description": "The calling key lacks the admin scope.",
                              "content": json_content("Error")}}}}),
)
