"""``/flows/{id}/triggers``: what starts a flow besides ``POST /flows/{id}/execute``
(sql/triggers.sql). A webhook trigger answers ``POST /hooks/{triggerId}``
(tolstoy/api/inbound_webhooks.py); a schedule trigger is fired by the workers
(tolstoy/engine/worker.py). Each webhook delivery is kept in the trigger's
inbox, which can be listed and replayed into a new run."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import falcon
from marshmallow import ValidationError, fields, validate, validates_schema

from .. import engine, schedules, signatures
from ..db import database as dbmod
from ..db.queries import SQL
from ..fieldtypes import Base, PageQuery, StrictBoolean, TenantRecord, Timestamp, text
from ..jsonsafe import loads
from ..signatures import new_secret
from ..times import utcnow
from . import resources
from .dumping import dumper, many
from .errors import Conflict, Constraints, NotFound
from .requests import parse_uuid, read_json, validate_body
from .responses import check_if_match, created, etag_of, respond
from .routing import PAGE, PAGE_HEADERS, Route, Services, errors, json_content, path_id, tenant_params, updating
from .runs import RunAcceptedSchema, lifecycle_errors
from .tenancy import may_act_as

# What the database's constraints on flow_triggers mean to a client (errors.Constraints).
CONSTRAINTS = Constraints(
    checks={"flow_triggers_catch_up": "catchUp", "flow_triggers_cron_length": "cron",
        "flow_triggers_schedule_fields": "type", "flow_triggers_timezone_length": "timezone",
        "flow_triggers_type": "type", "flow_triggers_verification": "verification",
        "flow_triggers_webhook_fields": "type"},
    dependents={"flow_triggers_flow_id_fkey": "triggers (DELETE /flows/{id}/triggers/{triggerId})"},
)

TRIGGER_TYPES = ("webhook", "schedule")
# Presets whose sender makes the secret (Stripe's whsec_…, Slack's signing secret): it must be given.
SENDER_SECRETS = ("stripe", "slack")
_WEBHOOK_ONLY = (("verification", "verification"), ("secret", "secret"))


_SCHEDULE_ONLY = (("cron", "cron"), ("timezone", "timezone"), ("catch_up", "catchUp"))


class TriggerSchema(TenantRecord):
    """``{type: "webhook", verification?, secret?}`` or ``{type: "schedule", cron, timezone?, catchUp?}``."""

    flow_id = fields.UUID(data_key="flowId", dump_only=True)
    type = fields.String(required=True, validate=validate.OneOf(TRIGGER_TYPES))
    enabled = StrictBoolean(load_default=True)
    verification = fields.String(
        validate=validate.OneOf(signatures.PRESETS), allow_none=True,
        metadata={"description": "webhook: how requests are verified (default tolstoy: X-Tolstoy-Signature)."})
    secret = text(8, 500, load_only=True, metadata={
        "description": "webhook: the signing secret (required for stripe and slack, whose sender makes it; "
                       "generated when omitted otherwise). Shown once, in the answer that creates the trigger."})
    url = fields.String(dump_only=True, allow_none=True,
                        metadata={"description": "webhook: the path to POST to (relative)."})
    cron = text(1, 200, allow_none=True, metadata={
        "description": "schedule: cron expression, five fields or six with seconds last."})
    timezone = text(1, 100, allow_none=True, metadata={"description": "schedule: IANA time zone (default UTC)."})
    catch_up = fields.String(data_key="catchUp", validate=validate.OneOf(("one", "none")), allow_none=True,
                             metadata={"description": "schedule: after downtime fire once (one, default) or "
                                                      "skip the missed times (none)."})
    next_run_at = Timestamp(data_key="nextRunAt", dump_only=True, allow_none=True)
    last_fired_at = Timestamp(data_key="lastFiredAt", dump_only=True, allow_none=True, metadata={
        "description": "schedule: when it last came due and fired (a run queued, or the slot skipped: see "
                       "lastSkippedAt)."})
    last_skipped_at = Timestamp(data_key="lastSkippedAt", dump_only=True, allow_none=True, metadata={
        "description": "schedule: when a run it was due to queue was last refused by a quota of the organization "
                       "(the slot was skipped; the schedule went on)."})
    last_skip_reason = fields.String(data_key="lastSkipReason", dump_only=True, allow_none=True, metadata={
        "description": "schedule: why (the quota's message)."})

    @validates_schema
    def _fields_of_the_type(self, data, **kwargs):
        kind = data.get("type")
        if kind not in TRIGGER_TYPES:
            return
        problems: dict = {}
        foreign = _SCHEDULE_ONLY if kind == "webhook" else _WEBHOOK_ONLY
        for attribute, key in foreign:
            if data.get(attribute) is not None:
                problems[key] = [f"Only {'schedule' if kind == 'webhook' else 'webhook'} triggers have this field."]
        if kind == "webhook" and data.get("verification") in SENDER_SECRETS and not data.get("secret"):
            problems["secret"] = ["Give the signing secret the sender made (required for this verification)."]
        if kind == "schedule":
            if not data.get("cron"):
                problems["cron"] = ["A schedule needs a cron expression."]
            else:
                try:
                    schedules.check_cron(data["cron"])
                except schedules.ScheduleError as exc:
                    problems["cron"] = [str(exc)]
            try:
                schedules.zone(data.get("timezone") or "UTC")
            except schedules.ScheduleError as exc:
                problems["timezone"] = [str(exc)]
        if problems:
            raise ValidationError(problems)


class TriggerCreatedSchema(TriggerSchema):
    """The answer that creates a trigger: a webhook's secret is shown here, once."""

    secret = fields.String(dump_only=True, allow_none=True)


class TriggerPatchSchema(Base):
    """``PATCH /flows/{id}/triggers/{triggerId}``: enable or disable."""

    enabled = StrictBoolean(required=True)


class DeliverySchema(Base):
    """One request to a webhook trigger, as the inbox keeps it (the body is not listed)."""

    id = fields.UUID(dump_only=True)
    org_id = fields.UUID(data_key="orgId", dump_only=True)
    trigger_id = fields.UUID(data_key="triggerId", dump_only=True)
    verdict = fields.String(dump_only=True, metadata={
        "description": "valid (verified, run queued), invalid (bad or missing signature), stale or replayed."})
    reason = fields.String(dump_only=True, allow_none=True)
    delivery_id = fields.String(data_key="deliveryId", dump_only=True, allow_none=True,
                                metadata={"description": "The sender's event id (X-GitHub-Delivery, …)."})
    headers = fields.Dict(dump_only=True)
    execution_id = fields.UUID(data_key="executionId", dump_only=True, allow_none=True)
    body_bytes = fields.Integer(data_key="bodyBytes", dump_only=True, allow_none=True)
    source = fields.String(dump_only=True, allow_none=True, metadata={
        "description": "A refused request's sender (its address, an IPv6 one by its /64; * for the sources past "
                       "the hour's cap); null for verified requests."})
    refusals = fields.Integer(dump_only=True, metadata={
        "description": "How many requests this entry counts: refused requests of one trigger, hour, verdict and "
                       "source are counted in one entry (1 for a verified request)."})
    last_received_at = Timestamp(data_key="lastReceivedAt", dump_only=True, metadata={
        "description": "When the latest request this entry counts was received (receivedAt for one request)."})
    received_at = Timestamp(data_key="receivedAt", dump_only=True)
    created_at = Timestamp(data_key="createdAt", dump_only=True)


_SCHEMA = TriggerSchema()
_DUMP = dumper(_SCHEMA)
_CREATED = dumper(TriggerCreatedSchema())
_PATCH = TriggerPatchSchema()
_DELIVERY = dumper(DeliverySchema())
_ACCEPTED = dumper(RunAcceptedSchema())
_PAGE = PageQuery()


def represent(row: dict) -> dict:
    """A trigger as the API shows it (a webhook with the path to call)."""
    return _DUMP({**row, "url": f"/hooks/{row['id']}" if row["type"] == "webhook" else None})


class FlowTriggers:
    """``GET/POST /flows/{id}/triggers``, ``GET/PATCH/DELETE …/{triggerId}`` and ``GET …/deliveries``."""

    def __init__(self, db: dbmod.Database, vault: engine.Vault | None,
                 clock: Callable[[], dt.datetime] = utcnow):
        self.db = db
        self.vault = vault
        self.clock = clock

    def flow(self, req: falcon.Request, raw_id: str) -> dict:
        """The flow in the path, or 404."""
        return resources.get_or_404(self.db, SQL.flows.get, "Flow", org_id=req.context.org_id,
                                    id=parse_uuid(raw_id, "Flow"))

    def trigger(self, req: falcon.Request, flow: dict, raw_id: str, *, for_update: bool = False,
                commit: bool = False) -> dict:
        """One trigger of the flow, or 404."""
        query = SQL.triggers.get_for_update if for_update else SQL.triggers.get
        return resources.get_or_404(self.db, query, "Trigger", commit=commit, org_id=req.context.org_id,
                                    flow_id=flow["id"], id=parse_uuid(raw_id, "Trigger"))

    def on_get_triggers(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """The flow's triggers, newest first, one keyset page at a time."""
        flow = self.flow(req, id)
        resources.list_page(
            req, resp, _PAGE,
            lambda query, **page: self.db.all(SQL.triggers.list, commit=True, org_id=req.context.org_id,
                                              flow_id=flow["id"], **page),
            lambda rows: [represent(row) for row in rows],
        )

    def on_post_triggers(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Create a trigger: 201; a webhook's secret is in this answer only."""
        data = read_json(req)
        flow = self.flow(req, id)
        values = validate_body(_SCHEMA, data)
        secret = encrypted = next_run_at = None
        if values["type"] == "webhook":
            if self.vault is None:
                raise falcon.HTTPServiceUnavailable(
                    description="Webhook triggers need TOLSTOY_ENCRYPTION_KEY (or TOLSTOY_KMS_KEY_ID) to keep "
                                "their secrets.")
            secret = values.get("secret") or new_secret()
            encrypted = self.vault.encrypt(req.context.org_id, secret)
            verification = values.get("verification") or "tolstoy"
            cron = timezone = catch_up = None
        else:
            verification = None
            cron, timezone = values["cron"], values.get("timezone") or "UTC"
            catch_up = values.get("catch_up") or "one"
            next_run_at = schedules.next_after(cron, timezone, self.clock())
        row = self.db.one(SQL.triggers.insert, commit=True, org_id=req.context.org_id, flow_id=flow["id"],
                          type=values["type"], enabled=values["enabled"], secret=encrypted,
                          verification=verification, cron=cron, timezone=timezone, catch_up=catch_up,
                          next_run_at=next_run_at)
        body = _CREATED({**row, "url": f"/hooks/{row['id']}" if row["type"] == "webhook" else None,
                         "secret": secret})
        created(req, resp, body)

    def on_get_trigger(self, req: falcon.Request, resp: falcon.Response, id: str, trigger_id: str) -> None:
        """One trigger with its ETag."""
        flow = self.flow(req, id)
        respond(resp, represent(self.trigger(req, flow, trigger_id, commit=True)))

    def on_patch_trigger(self, req: falcon.Request, resp: falcon.Response, id: str, trigger_id: str) -> None:
        """Enable or disable a trigger (``{enabled}``); a schedule enabled again fires from its next
        time after now, not for the times it was off."""
        data = read_json(req)
        flow = self.flow(req, id)
        row = self.trigger(req, flow, trigger_id, for_update=True)
        current = represent(row)
        check_if_match(req, etag_of(current))
        # A client may GET, change enabled and send it all back: fields it did not change are
        # ignored; changing any other field is a 400 (only enabled can change).
        unchanged = {k for k, v in data.items() if k != "enabled" and k in current and current[k] == v}
        enabled = validate_body(_PATCH, {k: v for k, v in data.items() if k not in unchanged})["enabled"]
        next_run_at = row["next_run_at"]
        if row["type"] == "schedule" and enabled and not row["enabled"]:
            next_run_at = schedules.next_after(row["cron"], row["timezone"], self.clock())
        row = self.db.one(SQL.triggers.set_enabled, commit=True, org_id=req.context.org_id, flow_id=flow["id"],
                          id=row["id"], enabled=enabled, next_run_at=next_run_at)
        respond(resp, represent(row))

    on_put_trigger = on_patch_trigger

    def on_delete_trigger(self, req: falcon.Request, resp: falcon.Response, id: str, trigger_id: str) -> None:
        """Delete a trigger and its inbox: 204."""
        flow = self.flow(req, id)
        row = self.trigger(req, flow, trigger_id, for_update=True)
        check_if_match(req, etag_of(represent(row)))
        self.db.rowcount(SQL.triggers.delete, commit=True, org_id=req.context.org_id, flow_id=flow["id"],
                         id=row["id"])
        resp.status = falcon.HTTP_204

    def on_get_deliveries(self, req: falcon.Request, resp: falcon.Response, id: str, trigger_id: str) -> None:
        """The trigger's inbox, newest first, one keyset page at a time."""
        flow = self.flow(req, id)
        trigger = self.trigger(req, flow, trigger_id)
        resources.list_page(
            req, resp, _PAGE,
            lambda query, **page: self.db.all(SQL.triggers.deliveries, commit=True, org_id=req.context.org_id,
                                              trigger_id=trigger["id"], **page),
            many(_DELIVERY),
        )


class DeliveryReplay:
    """``POST /flows/{id}/triggers/{triggerId}/deliveries/{deliveryId}/replay``: a new run of the flow's
    current version from the stored body of a verified delivery."""

    # It starts a run, as POST /flows/{id}/execute does.
    scope = "execute"

    def __init__(self, triggers: FlowTriggers):
        self.triggers = triggers
        self.db = triggers.db

    def on_post(self, req: falcon.Request, resp: falcon.Response, id: str, trigger_id: str,
                delivery_id: str) -> None:
        """202 with the new run."""
        flow = self.triggers.flow(req, id)
        trigger = self.triggers.trigger(req, flow, trigger_id)
        delivery = self.db.one(SQL.triggers.delivery, org_id=req.context.org_id, trigger_id=trigger["id"],
                               id=parse_uuid(delivery_id, "Delivery"))
        if delivery is None:
            raise NotFound("Delivery")
        if delivery["verdict"] != "valid" or delivery["body"] is None:
            raise Conflict(f"Only verified deliveries can be replayed (this one is {delivery['verdict']}).")
        with lifecycle_errors():
            run = engine.queue_run(self.db, org_id=req.context.org_id, flow_id=flow["id"], version=flow["version"],
                                   user_id=req.context.user_id, variables=loads(bytes(delivery["body"])),
                                   acts_as_user=may_act_as(req, req.context.user_id),
                                   concurrency=flow.get("concurrency"))
        resp.status = falcon.HTTP_202
        resp.media = _ACCEPTED(run)
        resp.location = f"/flows/{flow['id']}/executions/{run['id']}"


def _triggers(s: Services) -> FlowTriggers:
    return FlowTriggers(s.db, s.vault)


_FLOW = [*tenant_params(), path_id()]
_TRIGGER = [*_FLOW, path_id("triggerId")]
_UPDATE = updating(["Triggers"], "Enable or disable a trigger", _TRIGGER, "TriggerPatch", "Trigger")
SCHEMAS = {"Trigger": TriggerSchema, "TriggerCreated": TriggerCreatedSchema, "TriggerPatch": TriggerPatchSchema,
           "Delivery": DeliverySchema}
ROUTES = (
    Route("/flows/{id}/triggers", _triggers, "triggers", operations={
        "get": {"tags": ["Triggers"], "summary": "The flow's triggers, newest first (schedules with nextRunAt)",
                "parameters": _FLOW + PAGE,
                "responses": {"200": {"description": "One page.", "headers": PAGE_HEADERS,
                                      "content": json_content("Trigger", many=True)}, **errors("400", "404")}},
        "post": {"tags": ["Triggers"], "summary": "Add a webhook or schedule trigger; a webhook's secret is shown "
                                                  "in this answer only",
                 "parameters": _FLOW, "requestBody": {"required": True, "content": json_content("Trigger")},
                 "responses": {"201": {"description": "Created.", "headers": {"Location": "Location", "ETag": "ETag"},
                                       "content": json_content("TriggerCreated")},
                               **errors("400", "404", "413", "415")}}}),
    Route("/flows/{id}/triggers/{trigger_id}", _triggers, "trigger", operations={
        "get": {"tags": ["Triggers"], "summary": "One trigger", "parameters": _TRIGGER,
                "responses": {"200": {"description": "The trigger.", "headers": {"ETag": "ETag"},
                                      "content": json_content("Trigger")}, **errors("400", "404")}},
        "patch": _UPDATE, "put": _UPDATE,
        "delete": {"tags": ["Triggers"], "summary": "Delete a trigger and its inbox",
                   "parameters": _TRIGGER + ["IfMatch"],
                   "responses": {"204": {"description": "Deleted."}, **errors("400", "404", "412")}}}),
    Route("/flows/{id}/triggers/{trigger_id}/deliveries", _triggers, "deliveries", operations={"get": {
        "tags": ["Triggers"], "summary": "The webhook trigger's inbox, newest first",
        "parameters": _TRIGGER + PAGE,
        "responses": {"200": {"description": "One page.", "headers": PAGE_HEADERS,
                              "content": json_content("Delivery", many=True)},
                      **errors("400", "404")}}}),
    Route("/flows/{id}/triggers/{trigger_id}/deliveries/{delivery_id}/replay",
          lambda s: DeliveryReplay(s.resource(_triggers)), operations={"post": {
              "tags": ["Triggers"], "summary": "Start a new run from a verified delivery's stored body",
              "parameters": _TRIGGER + [path_id("deliveryId")],
              "responses": {"202": {"description": "Queued; follow it at Location.",
                                    "headers": {"Location": "Location"}, "content": json_content("RunAccepted")},
                            "409": {"description": "The delivery was refused (only verified ones are kept whole).",
                                    "content": json_content("Error")},
                            **errors("400", "404")}}}),
)
