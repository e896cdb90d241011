"""Inbound webhooks, ``POST /hooks/{triggerId}``: the public door of a webhook trigger (not Falcon's
hooks: a request from outside that starts a run).

No tenant header: the trigger id names the organization, found through
``tolstoy_hook_target`` (security definer) before any tenant is known; from
then on the request acts for that organization (row-level security). The
request is verified over its raw bytes (tolstoy/signatures.py) with the
trigger's secret, decrypted with the organization's data key. A verified
request and the run it queues are written in one transaction (the inbox row
first: a concurrent twin waits on its unique delivery id), and the answer is
sent only after that commit. Refused requests are kept too, without their
body, so a sender's misconfiguration can be seen in the inbox; but anyone who
knows the URL can send them, so they are counted, not stored one by one: one
row per trigger, hour, verdict and source (the sender's address, an IPv6 one by
its /64), at most ``max_sources`` sources an hour, the rest counted as ``*``.

Answers: 202 ``{executionId}``; 200 ``{executionId}`` of the first run for a
redelivered event (same sender delivery id); 401 bad, missing, stale or
replayed signature; 403 disabled trigger; 404 no such webhook trigger; 413,
415 not JSON; 400 JSON that is not an object.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

import falcon
from marshmallow import fields

from .. import engine, metrics, signatures, tracing
from ..db import database as dbmod
from ..db.queries import SQL
from ..fieldtypes import Base
from ..jsonsafe import MAX_JSON_DEPTH, depth, loads, unstorable_strings
from ..times import unix_seconds
from .access_log import client_address
from .dumping import dumper
from .errors import Constraints, NotFound, ValidationFailed, field_error
from .requests import parse_uuid, read_raw
from .routing import ERROR_BODY, Route, error, json_content, path_id

# What the database's constraints on flow_trigger_deliveries mean to a client (errors.Constraints).
CONSTRAINTS = Constraints(
    service=frozenset({"flow_trigger_deliveries_delivery_id_length", "flow_trigger_deliveries_headers_object",
        "flow_trigger_deliveries_refusals_positive", "flow_trigger_deliveries_source_length",
        "flow_trigger_deliveries_valid_has_run", "flow_trigger_deliveries_verdict"}),
)


class HookAcceptedSchema(Base):
    """202 (or 200 for a redelivered event) body of ``POST /hooks/{triggerId}``."""

    execution_id = fields.UUID(data_key="executionId", dump_only=True)


_ACCEPTED = dumper(HookAcceptedSchema())


def parse_object(raw: bytes) -> dict:
    """The verified body as the run's variables: 415 when it is not JSON, 400 when not an object."""
    try:
        data = loads(raw)
    except (ValueError, RecursionError):
        raise falcon.HTTPUnsupportedMediaType(description="The body is not JSON.") from None
    if not isinstance(data, dict):
        raise field_error("body", "The body must be a JSON object (it becomes the run's variables).")
    if depth(data) > MAX_JSON_DEPTH:
        raise field_error("body", f"JSON is nested deeper than {MAX_JSON_DEPTH} levels.")
    unstorable = unstorable_strings(data)
    if unstorable:
        raise ValidationFailed(unstorable)
    return data


def source_of(req: falcon.Request, trusted: Iterable[str]) -> str:
    """Who sent a request, as refusals are counted: the client's address (X-Forwarded-For believed
    from trusted proxies only), an IPv6 address by its /64 (one host has a whole /64 to send from)."""
    address = client_address(req.remote_addr, req.get_header("X-Forwarded-For"), trusted)
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return "unknown"
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def refused(verdict: signatures.Verdict) -> falcon.HTTPUnauthorized:
    """401 naming why (the scheme is the trigger's, not a bearer token)."""
    return falcon.HTTPUnauthorized(title="Invalid signature", description=verdict.reason)


class InboundWebhook:
    """``POST /hooks/{triggerId}``."""

    access = "public"

    def __init__(self, db: dbmod.Database, vault: engine.Vault | None, clock: Callable[[], float] = unix_seconds, *,
                 trusted_proxies: Iterable[str] = ("127.0.0.1", "::1"), max_sources: int = 20):
        self.db = db
        self.vault = vault
        self.clock = clock
        self.trusted_proxies = tuple(trusted_proxies)
        self.max_sources = max_sources

    def _refuse(self, req: falcon.Request, org_id, hook_id, verdict: signatures.Verdict, delivery_id, kept) -> None:
        """Count a refused request into the inbox (sql/triggers.sql, refuse)."""
        self.db.rowcount(SQL.triggers.refuse, commit=True, org_id=org_id, trigger_id=hook_id, verdict=verdict.verdict,
                         reason=verdict.reason, delivery_id=delivery_id, headers=kept,
                         source=source_of(req, self.trusted_proxies), max_sources=self.max_sources)

    def on_post(self, req: falcon.Request, resp: falcon.Response, trigger_id: str) -> None:
        """Verify, record and queue: 202 ``{executionId}`` once committed."""
        hook_id = parse_uuid(trigger_id, "Trigger")
        raw = read_raw(req)
        # Errors are decided inside the transaction but raised after it, so a refusal is recorded.
        failure: Exception | None = None
        status, media = falcon.HTTP_202, None
        with self.db.transaction():
            target = self.db.one(SQL.triggers.hook_target, id=hook_id)
            if target is None:
                raise NotFound("Webhook trigger")
            if self.vault is None:
                raise falcon.HTTPServiceUnavailable(
                    description="Webhook secrets cannot be read: TOLSTOY_ENCRYPTION_KEY is not set.")
            org_id, preset = target["org_id"], target["verification"]
            with self.db.tenant(org_id):
                secret = self.vault.decrypt(org_id, target["secret"])
                verdict = signatures.verify(preset, secret, req.get_header, raw, self.clock())
                kept = dbmod.json(signatures.kept_headers(preset, req.get_header))
                if not verdict.ok:
                    self._refuse(req, org_id, hook_id, verdict, None, kept)
                    failure = refused(verdict)
                elif not target["enabled"]:
                    failure = falcon.HTTPForbidden(title="Trigger disabled",
                                                   description="This trigger is disabled; enable it to start runs.")
                else:
                    status, media, failure = self._receive(req, target, hook_id, raw, verdict, kept)
        if failure is not None:
            raise failure
        resp.status = status
        resp.media = media

    def _receive(self, req, target: dict, hook_id, raw: bytes, verdict: signatures.Verdict, kept):
        """Inside the organization's transaction: (status, body, error to raise instead)."""
        org_id, preset = target["org_id"], target["verification"]
        data = parse_object(raw)
        if preset == "slack" and data.get("type") == "url_verification":
            # Slack checks a new Events API URL with a signed challenge it wants echoed; no run.
            return falcon.HTTP_200, {"challenge": data.get("challenge")}, None
        sender_id = signatures.delivery_id(preset, req.get_header, data)
        inserted = self.db.one(SQL.triggers.receive, org_id=org_id, trigger_id=hook_id, delivery_id=sender_id,
                               signature=verdict.signature, headers=kept, body=raw)
        if inserted is None:
            earlier = self.db.one(SQL.triggers.earlier, org_id=org_id, trigger_id=hook_id, delivery_id=sender_id,
                                  signature=verdict.signature)
            if earlier is not None and earlier["same_delivery"]:
                # A redelivery of an event already received: its first run, not a second one.
                return falcon.HTTP_200, _ACCEPTED({"execution_id": earlier["execution_id"]}), None
            replay = signatures.Verdict("replayed", "This signature was seen before: the request is a replay.")
            self._refuse(req, org_id, hook_id, replay, sender_id, kept)
            return None, None, refused(replay)
        run = self.db.one(SQL.triggers.queue, commit=True, org_id=org_id, flow_id=target["flow_id"],
                          user_id=None, variables=dbmod.json(data), delivery_id=inserted["id"],
                          trace_parent=tracing.caller(req))
        metrics.count_run("queued")
        return falcon.HTTP_202, _ACCEPTED({"execution_id": run["id"]}), None


SCHEMAS = {"HookAccepted": HookAcceptedSchema}
ROUTES = (
    Route("/hooks/{trigger_id}", lambda s: InboundWebhook(s.db, s.vault, trusted_proxies=s.config.trusted_proxies,
                                                max_sources=s.config.hook_refused_sources), operations={"post": {
        "tags": ["Triggers"], "security": [{}],
        "summary": "Public webhook of a trigger: a signed JSON body starts a run with it as variables",
        "description": "No tenant header. Signed with X-Tolstoy-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "
                       "\"<t>.<raw body>\")> (or the trigger's GitHub, Stripe or Slack preset).",
        "parameters": [path_id("triggerId"),
                       {"name": "X-Tolstoy-Signature", "in": "header", "required": False,
                        "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {
            "202": {"description": "Verified, recorded and queued.", "content": json_content("HookAccepted")},
            "200": {"description": "A redelivered event (same sender delivery id): the first run.",
                    "content": json_content("HookAccepted")},
            "400": {"description": "The JSON body is not an object.", "content": ERROR_BODY},
            "401": {"description": "Bad or missing signature, stale timestamp (> 300 s) or replay.",
                    "content": ERROR_BODY},
            "403": {"description": "The trigger is disabled.", "content": ERROR_BODY},
            "404": {"description": "No such webhook trigger.", "content": ERROR_BODY},
            "413": error("413"), "415": error("415"),
            "429": {"description": "The run would take the organization over its queuedRuns or storedBytes quota: "
                                   "nothing is recorded; send it again after Retry-After.", "content": ERROR_BODY},
            "503": {"description": "The database (or the secret's key) is unavailable.", "content": ERROR_BODY}}}}),
)
