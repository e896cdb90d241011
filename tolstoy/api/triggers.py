"""``/flows/{id}/triggers``: what starts a flow besides ``POST /flows/{id}/execute``
(sql/triggers.sql). A webhook trigger answers ``POST /hooks/{triggerId}``
(tolstoy/api/hooks.py); a schedule trigger is fired by the workers
(tolstoy/engine/worker.py). Each webhook delivery is kept in the trigger's
inbox, which can be listed and replayed into a new run."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import falcon

from .. import engine, schedules
from ..db import database as dbmod
from ..db.queries import SQL
from ..jsonsafe import loads
from ..signatures import new_secret
from ..times import utcnow
from . import resources
from .dumping import dumper, many
from .errors import Conflict, NotFound
from .requests import parse_uuid, read_json, validate_body
from .responses import check_if_match, created, etag_of, respond
from .schemas import (
    DeliverySchema,
    PageQuery,
    RunAcceptedSchema,
    TriggerCreatedSchema,
    TriggerPatchSchema,
    TriggerSchema,
)
from .tenancy import may_act_as

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
        run = engine.queue_run(self.db, org_id=req.context.org_id, flow_id=flow["id"], version=flow["version"],
                               user_id=req.context.user_id, variables=loads(bytes(delivery["body"])),
                               acts_as_user=may_act_as(req, req.context.user_id))
        resp.status = falcon.HTTP_202
        resp.media = _ACCEPTED(run)
        resp.location = f"/flows/{flow['id']}/executions/{run['id']}"
