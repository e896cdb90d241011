"""``/webhooks``: outbound event webhooks (sql/webhooks.sql). Events are written to
the outbox by the database in the transaction of the change they describe, and
the workers deliver them (tolstoy/engine/webhooks.py). The secret and the custom
header values are encrypted with the organization's data key and shown masked;
the secret is shown in full once, in the answer that creates the webhook."""

from __future__ import annotations

import re

import falcon
from marshmallow import ValidationError, fields, validate, validates

from .. import engine
from ..db import database as dbmod
from ..db.queries import SQL
from ..fieldtypes import Base, HttpUrl, PageQuery, StrictBoolean, TenantRecord, Timestamp, text, unique_items
from ..signatures import new_secret
from . import resources
from .dumping import dumper, many
from .errors import Conflict, Constraints, field_error
from .requests import parse_uuid, read_json, validate_body
from .responses import check_if_match, created, etag_of, respond
from .routing import PAGE, PAGE_HEADERS, Route, Services, errors, json_content, path_id, tenant_params, updating

# What the database's constraints on webhooks and webhook_deliveries mean to a client (errors.Constraints).
CONSTRAINTS = Constraints(
    checks={"webhooks_event_types_known": "eventTypes", "webhooks_name_length": "name",
        "webhooks_url_length": "url"},
    service=frozenset({"webhook_deliveries_attempt_log_array", "webhook_deliveries_data_object",
        "webhook_deliveries_lease_complete", "webhook_deliveries_pending_due", "webhook_deliveries_state",
        "webhooks_disabled_reason_length"}),
)

WEBHOOK_EVENT_TYPES = engine.WEBHOOK_EVENT_TYPES
# Shown instead of a webhook's secret and its header values (sending it back keeps the stored value).
MASK = "********"
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,200}$")


def _header_problem(name: str, value) -> str | None:
    if not _HEADER_NAME.match(name):
        return f"{name!r} is not a valid header name."
    if name.lower() in engine.WEBHOOK_RESERVED_HEADERS:
        return f"{name} is set by Tolstoy on every delivery."
    if not isinstance(value, str) or len(value) > 8192 or any(c in value for c in "\r\n\0"):
        return f"The value of {name} must be a string of at most 8192 characters, on one line."
    return None


class WebhookSchema(TenantRecord):
    """``{name, url, eventTypes, enabled, secret?, headers?}``; the secret and header values are
    shown masked (the secret in full once, in the answer that creates the webhook)."""

    name = text(1, 200, required=True)
    url = HttpUrl(required=True, validate=validate.Length(max=2048),
                     metadata={"description": "Where deliveries are POSTed (http or https; checked by the "
                                              "outbound guard at every attempt)."})
    event_types = fields.List(fields.String(), data_key="eventTypes", required=True,
                              metadata={"description": "Event types to deliver (GET /webhooks/event-types)."})
    enabled = StrictBoolean(load_default=True)
    secret = text(16, 500, metadata={
        "description": "HMAC-SHA256 signing secret (generated when omitted; shown in full only when created, "
                       f"masked as {MASK} afterwards; sending {MASK} back keeps it)."})
    headers = fields.Dict(keys=fields.String(), values=fields.Raw(), allow_none=True, metadata={
        "description": f"Custom headers sent with every delivery; values encrypted at rest, shown as {MASK}."})
    disabled_reason = fields.String(data_key="disabledReason", dump_only=True, allow_none=True,
                                    metadata={"description": "Why the workers disabled the webhook, if they did."})
    failing_since = Timestamp(data_key="failingSince", dump_only=True, allow_none=True,
                              metadata={"description": "First failed attempt since the last success."})

    @validates("event_types")
    def _known_types(self, value, **_):
        unknown = sorted({t for t in value if t not in WEBHOOK_EVENT_TYPES}, key=str)
        if unknown:
            raise ValidationError(f"Unknown event types: {', '.join(map(str, unknown))} "
                                  f"(known: {', '.join(WEBHOOK_EVENT_TYPES)}).")
        if not value:
            raise ValidationError("Give at least one event type.")
        unique_items(value)

    @validates("headers")
    def _valid_headers(self, value, **_):
        if value is None:
            return
        if len(value) > 50:
            raise ValidationError("At most 50 headers.")
        problems = [p for p in (_header_problem(k, v) for k, v in value.items()) if p]
        if problems:
            raise ValidationError(problems)


class WebhookCreatedSchema(WebhookSchema):
    """The answer that creates a webhook: its secret in full, once."""

    secret = fields.String(dump_only=True)


class WebhookDeliverySchema(Base):
    """One event sent (or to send) to a webhook, with every attempt made."""

    id = fields.UUID(dump_only=True, metadata={"description": "Sent as X-Webhook-Delivery (same every attempt)."})
    org_id = fields.UUID(data_key="orgId", dump_only=True)
    webhook_id = fields.UUID(data_key="webhookId", dump_only=True)
    event_id = fields.UUID(data_key="eventId", dump_only=True, metadata={"description": "The envelope's id."})
    event_type = fields.String(data_key="eventType", dump_only=True)
    data = fields.Dict(dump_only=True, metadata={"description": "The event's data, as the envelope carries it."})
    state = fields.String(dump_only=True, metadata={
        "description": "pending (due at nextAttemptAt, or after the unfinished delivery before it), sending, "
                       "delivered, failed (given up), cancelled (the webhook was disabled)."})
    attempts = fields.Integer(dump_only=True)
    attempt_log = fields.List(fields.Dict(), data_key="attemptLog", dump_only=True, metadata={
        "description": "Every attempt: {attempt, at, statusCode, durationMs, error, location} (location: the "
                       "Location of a 3xx answer, which is never followed)."})
    next_attempt_at = Timestamp(data_key="nextAttemptAt", dump_only=True, allow_none=True)
    last_status_code = fields.Integer(data_key="lastStatusCode", dump_only=True, allow_none=True)
    last_error = fields.String(data_key="lastError", dump_only=True, allow_none=True)
    first_attempt_at = Timestamp(data_key="firstAttemptAt", dump_only=True, allow_none=True)
    last_attempt_at = Timestamp(data_key="lastAttemptAt", dump_only=True, allow_none=True)
    finished_at = Timestamp(data_key="finishedAt", dump_only=True, allow_none=True)
    event_created_at = Timestamp(data_key="eventCreatedAt", dump_only=True)
    created_at = Timestamp(data_key="createdAt", dump_only=True)
    updated_at = Timestamp(data_key="updatedAt", dump_only=True)


class WebhookTestSchema(Base):
    """202 body of ``POST /webhooks/{id}/test``: the delivery queued."""

    delivery_id = fields.UUID(data_key="deliveryId", dump_only=True)
    state = fields.String(dump_only=True)


_SCHEMA = WebhookSchema()
_DUMP = dumper(_SCHEMA)
_CREATED = dumper(WebhookCreatedSchema())
_DELIVERY = dumper(WebhookDeliverySchema())
_TEST = dumper(WebhookTestSchema())
_PAGE = PageQuery()
# Shown by GET, ignored when a client sends them back with PUT.
DERIVED = frozenset({"disabledReason", "failingSince"})


def represent(row: dict) -> dict:
    """A webhook as the API shows it: secret and header values masked."""
    return _DUMP({**row, "secret": MASK, "headers": {name: MASK for name in row.get("header_names") or []}})


class Webhooks:
    """``GET/POST /webhooks``, ``GET/PUT/PATCH/DELETE /webhooks/{id}``, ``PATCH …/toggle``,
    ``GET /webhooks/event-types``, ``POST …/test`` and ``GET …/deliveries``."""

    def __init__(self, db: dbmod.Database, vault: engine.Vault | None, allow_networks=()):
        self.db = db
        self.vault = vault
        self.allow_networks = tuple(allow_networks)

    def _vault(self) -> engine.Vault:
        if self.vault is None:
            raise falcon.HTTPServiceUnavailable(
                description="Webhooks need TOLSTOY_ENCRYPTION_KEY (or TOLSTOY_KMS_KEY_ID) to keep their secrets.")
        return self.vault

    def find(self, req: falcon.Request, raw_id: str, *, for_update: bool = False, commit: bool = False) -> dict:
        """The webhook in the path, or 404 (also another organization's)."""
        query = SQL.webhooks.get_for_update if for_update else SQL.webhooks.get
        return resources.get_or_404(self.db, query, "Webhook", commit=commit, org_id=req.context.org_id,
                                    id=parse_uuid(raw_id, "Webhook"))

    def check_url(self, values: dict) -> None:
        """400 naming url for a target the outbound guard would certainly refuse."""
        if "url" in values:
            problem = engine.webhook_target_problem(values["url"], self.allow_networks)
            if problem:
                raise field_error("url", problem)

    # ---- collection ------------------------------------------------------------------

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The organization's webhooks, newest first, one keyset page at a time."""
        resources.list_page(
            req, resp, _PAGE,
            lambda query, **page: self.db.all(SQL.webhooks.list, commit=True, org_id=req.context.org_id, **page),
            lambda rows: [represent(row) for row in rows],
        )

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Create a webhook: 201 with its secret in full (the only time it is shown)."""
        data = read_json(req)
        values = validate_body(_SCHEMA, data, ignore=DERIVED)
        self.check_url(values)
        vault = self._vault()
        org_id = req.context.org_id
        secret = values.get("secret") or new_secret()
        if secret == MASK:
            raise field_error("secret", "Give a secret of your own, or none to have one generated.")
        headers = values.get("headers") or {}
        row = self.db.one(SQL.webhooks.insert, commit=True, org_id=org_id, name=values["name"], url=values["url"],
                          event_types=values["event_types"], enabled=values["enabled"],
                          secret=vault.encrypt(org_id, secret),
                          headers=vault.encrypt(org_id, headers) if headers else None,
                          header_names=sorted(headers))
        created(req, resp, _CREATED({**row, "secret": secret, "headers": {n: MASK for n in row["header_names"]}}))

    def on_get_event_types(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Every event type a webhook may subscribe to."""
        resp.media = list(WEBHOOK_EVENT_TYPES)

    # ---- item ----------------------------------------------------------------------------

    def on_get_item(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """One webhook with its ETag."""
        respond(resp, represent(self.find(req, id, commit=True)))

    def on_patch_item(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Change the fields sent (a field sent replaces the stored value whole; a masked secret or
        header value sent back keeps the stored one)."""
        data = read_json(req)
        row = self.find(req, id, for_update=True)
        check_if_match(req, etag_of(represent(row)))
        if data.get("secret") == MASK:  # sent back as GET showed it: kept
            data = {k: v for k, v in data.items() if k != "secret"}
        values = validate_body(_SCHEMA, data, partial=True, ignore=DERIVED)
        self.check_url(values)
        self.check_origin(row, values)
        org_id = req.context.org_id
        secret, headers, header_names = row["secret"], row["headers"], row["header_names"]
        if "secret" in values:
            secret = self._vault().encrypt(org_id, values["secret"])
        if "headers" in values:
            sent = values["headers"] or {}
            if any(value == MASK for value in sent.values()):
                stored = self._vault().decrypt(org_id, row["headers"], "webhook headers") if row["headers"] else {}
                unknown = [name for name, value in sent.items() if value == MASK and name not in stored]
                if unknown:
                    raise field_error("headers", f"No stored value to keep for {', '.join(unknown)}.")
                sent = {name: stored[name] if value == MASK else value for name, value in sent.items()}
            headers = self._vault().encrypt(org_id, sent) if sent else None
            header_names = sorted(sent)
        row = self.db.one(SQL.webhooks.update, commit=True, org_id=org_id, id=row["id"],
                          name=values.get("name", row["name"]), url=values.get("url", row["url"]),
                          event_types=values.get("event_types", row["event_types"]),
                          enabled=values.get("enabled", row["enabled"]), secret=secret, headers=headers,
                          header_names=header_names)
        respond(resp, represent(row))

    on_put_item = on_patch_item

    @staticmethod
    def check_origin(row: dict, values: dict) -> None:
        """Stored header values are credentials bound to the origin they were stored for, as a tool's
        are: moving the webhook to another origin (scheme, host, port) while keeping any of them (not
        sending headers, or sending a value back masked) is a 409 naming url."""
        if "url" not in values or engine.origin_of(values["url"]) == engine.origin_of(row["url"]):
            return
        if "headers" in values:
            kept = [name for name, value in (values["headers"] or {}).items() if value == MASK]
        else:
            kept = row["header_names"] or []
        if kept:
            raise Conflict(f"url: the stored values of {', '.join(kept)} are sent only to "
                           f"{engine.origin_of(row['url'])}, where they were stored; to move the webhook to "
                           f"{engine.origin_of(values['url'])}, send headers again with their values (or null).")

    def on_delete_item(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Delete a webhook with its deliveries: 204."""
        row = self.find(req, id, for_update=True)
        check_if_match(req, etag_of(represent(row)))
        self.db.rowcount(SQL.webhooks.delete, commit=True, org_id=req.context.org_id, id=row["id"])
        resp.status = falcon.HTTP_204

    def on_patch_toggle(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Switch the webhook on or off (off cancels its pending deliveries; on forgets why the
        workers disabled it)."""
        row = self.find(req, id, for_update=True)
        check_if_match(req, etag_of(represent(row)))
        row = self.db.one(SQL.webhooks.toggle, commit=True, org_id=req.context.org_id, id=row["id"])
        respond(resp, represent(row))

    def on_post_test(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Queue a ``webhook.test`` event for this webhook (whatever it subscribes to): the workers
        send it like any other, signed; 202 with the delivery to follow in …/deliveries."""
        row = self.find(req, id)
        if not row["enabled"]:
            raise falcon.HTTPConflict(description="The webhook is disabled: enable it first (PATCH …/toggle).")
        delivery_id = self.db.scalar(SQL.webhooks.emit, commit=True, org_id=req.context.org_id, id=row["id"],
                                     event_type="webhook.test",
                                     data=dbmod.json({"webhookId": str(row["id"]), "name": row["name"],
                                                      "message": "A test event sent through POST /webhooks/"
                                                                 f"{row['id']}/test."}))
        resp.status = falcon.HTTP_202
        resp.media = _TEST({"delivery_id": delivery_id, "state": "pending"})
        resp.location = f"/webhooks/{row['id']}/deliveries"

    def on_get_deliveries(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """The webhook's deliveries, newest first, each with every attempt, one keyset page at a time."""
        row = self.find(req, id)
        resources.list_page(
            req, resp, _PAGE,
            lambda query, **page: self.db.all(SQL.webhooks.deliveries, commit=True, org_id=req.context.org_id,
                                              webhook_id=row["id"], **page),
            many(_DELIVERY),
        )


def _webhooks(s: Services) -> Webhooks:
    return Webhooks(s.db, s.vault, s.config.allow_networks)


_TAGS = ["Webhooks"]
_ITEM = [*tenant_params(), path_id()]
_UPDATE = updating(_TAGS, "Change the fields sent (masked values sent back keep the stored ones)", _ITEM, "Webhook")
SCHEMAS = {"Webhook": WebhookSchema, "WebhookCreated": WebhookCreatedSchema, "WebhookDelivery": WebhookDeliverySchema,
           "WebhookTest": WebhookTestSchema}
ROUTES = (
    Route("/webhooks", _webhooks, operations={
        "get": {"tags": _TAGS, "summary": "The organization's webhooks, newest first (secrets masked)",
                "parameters": tenant_params() + PAGE,
                "responses": {"200": {"description": "One page.", "headers": PAGE_HEADERS,
                                      "content": json_content("Webhook", many=True)}, **errors("400")}},
        "post": {"tags": _TAGS, "summary": "Subscribe a URL to event types; the secret is shown in this answer only",
                 "parameters": tenant_params(), "requestBody": {"required": True, "content": json_content("Webhook")},
                 "responses": {"201": {"description": "Created.", "headers": {"Location": "Location"},
                                       "content": json_content("WebhookCreated")}, **errors("400", "413", "415")}}}),
    Route("/webhooks/event-types", _webhooks, "event_types", operations={"get": {
        "tags": _TAGS, "summary": "The event types a webhook may subscribe to", "parameters": tenant_params(),
        "responses": {"200": {"description": "Event types.", "content": {"application/json": {"schema": {
            "type": "array", "items": {"type": "string"}}}}}, **errors("400")}}}),
    Route("/webhooks/{id}", _webhooks, "item", operations={
        "get": {"tags": _TAGS, "summary": "One webhook (secret and header values masked)", "parameters": _ITEM,
                "responses": {"200": {"description": "The webhook.", "headers": {"ETag": "ETag"},
                                      "content": json_content("Webhook")}, **errors("400", "404")}},
        "patch": _UPDATE, "put": _UPDATE,
        "delete": {"tags": _TAGS, "summary": "Delete a webhook and its deliveries", "parameters": _ITEM + ["IfMatch"],
                   "responses": {"204": {"description": "Deleted."}, **errors("400", "404", "412")}}}),
    Route("/webhooks/{id}/toggle", _webhooks, "toggle", operations={"patch": {
        "tags": _TAGS, "summary": "Switch the webhook on or off (off cancels its pending deliveries)",
        "parameters": _ITEM + ["IfMatch"],
        "responses": {"200": {"description": "Toggled.", "headers": {"ETag": "ETag"},
                              "content": json_content("Webhook")},
                      **errors("400", "404", "412", "413", "415")}}}),
    Route("/webhooks/{id}/test", _webhooks, "test", operations={"post": {
        "tags": _TAGS, "summary": "Queue a webhook.test event for this webhook; the workers send it like any other",
        "parameters": _ITEM,
        "responses": {"202": {"description": "Queued.", "content": json_content("WebhookTest")},
                      "409": {"description": "The webhook is disabled.", "content": json_content("Error")},
                      **errors("400", "404", "413", "415")}}}),
    Route("/webhooks/{id}/deliveries", _webhooks, "deliveries", operations={"get": {
        "tags": _TAGS, "summary": "The webhook's deliveries, newest first, each with every attempt",
        "parameters": _ITEM + PAGE,
        "responses": {"200": {"description": "One page.", "headers": PAGE_HEADERS,
                              "content": json_content("WebhookDelivery", many=True)}, **errors("400", "404")}}}),
)
