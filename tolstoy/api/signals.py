"""Signals to runs (table ``flow_run_signals``, sql/signals.sql): what a ``wait``
step waits for.

- ``POST /flows/{id}/executions/{executionId}/signals/{signal}`` ``{payload}``
  (tenant routes, idempotent per ``Idempotency-Key``) → 202.
- ``POST …/signals/{signal}/links`` ``{approver?, expiresInSeconds?}`` → 201
  ``{url, expiresAt}``: an approval link for a person.
- ``GET/POST /approvals/{token}``: the link itself, public (no API key, no tenant
  header): the signed token names the organization, run and signal. ``GET``
  only describes (link scanners fetch URLs); ``POST {decision, comment?}``
  delivers ``{approved, approver, comment, at}`` once.

Sending one is the run lifecycle's (engine.send_signal, one SQL function,
tolstoy_send_signal): it holds the run's row while it checks, stores the signal
and wakes the run when a wait step of it is parked for that signal; the worker
takes signals under the same lock (tolstoy_take_signal), so a run never parks
past a signal. A signal sent before the run reaches its wait step
is kept and taken when it gets there; one the run can no longer take (no
unfinished wait step for it, or as many pending signals as such steps) is a 409.
"""

from __future__ import annotations

import binascii
import datetime as dt
import hashlib
import hmac
import json
import re
import uuid

import falcon
from marshmallow import fields, validate

from .. import engine, tracing
from ..config import Config
from ..db import database as dbmod
from ..db.queries import SQL
from ..engine import SIGNAL_NAME
from ..fieldtypes import Base, Timestamp
from ..signatures import b64url, unb64url
from ..times import iso, unix_seconds
from .dumping import dumper
from .errors import Conflict, Constraints, NotFound
from .requests import parse_uuid, read_json, validate_body
from .routing import Route, Services, errors, json_content
from .runs import EXECUTION_PARAM, FINISHED_RUN_STATUSES, FLOW_PARAMS, IDEMPOTENCY_PARAM, idempotency_key, lifecycle_errors

# What the database's constraints on flow_run_signals mean to a client (errors.Constraints).
CONSTRAINTS = Constraints(
    checks={"flow_run_signals_approver_length": "approver",
        "flow_run_signals_idempotency_key_length": "Idempotency-Key", "flow_run_signals_signal_format": "signal"},
    service=frozenset({"flow_run_signals_consumed"}),
)

SIGNAL_NAME_RE = re.compile(SIGNAL_NAME)
MAX_LINK_SECONDS = 30 * 24 * 3600


class SignalSchema(Base):
    """``POST …/executions/{executionId}/signals/{signal}``: what the wait step returns."""

    payload = fields.Raw(allow_none=True, load_default=None,
                         metadata={"description": "Any JSON; the wait step's output."})


class SignalAcceptedSchema(Base):
    """202 body of a signal: the stored signal."""

    id = fields.UUID(data_key="signalId", dump_only=True)
    run_id = fields.UUID(data_key="executionId", dump_only=True)
    signal = fields.String(dump_only=True)
    created_at = Timestamp(data_key="createdAt", dump_only=True)


class LinkSchema(Base):
    """``POST …/signals/{signal}/links``: an approval link for a person."""

    approver = fields.Email(allow_none=True, validate=validate.Length(max=320))
    expiresInSeconds = fields.Integer(strict=True, load_default=7 * 24 * 3600,
                                      validate=validate.Range(60, MAX_LINK_SECONDS))


class LinkCreatedSchema(Base):
    """201 body of an approval link."""

    url = fields.String(dump_only=True)
    expires_at = Timestamp(data_key="expiresAt", dump_only=True)
    approver = fields.String(dump_only=True, allow_none=True)
    signal = fields.String(dump_only=True)
    run_id = fields.UUID(data_key="executionId", dump_only=True)


class ApprovalSchema(Base):
    """``POST /approvals/{token}``: the person's decision."""

    decision = fields.String(required=True, validate=validate.OneOf(("approve", "reject")))
    comment = fields.String(allow_none=True, validate=validate.Length(max=2000))


_SIGNAL = SignalSchema()
_LINK = LinkSchema()
_APPROVAL = ApprovalSchema()
_ACCEPTED = dumper(SignalAcceptedSchema())
_CREATED = dumper(LinkCreatedSchema())


# ---- approval link tokens ------------------------------------------------------------

def link_key(config: Config) -> bytes | None:
    """The HMAC key of approval links: TOLSTOY_LINK_SECRET, else one derived from the first
    TOLSTOY_ENCRYPTION_KEY (so links work wherever secrets can be kept), else None."""
    if config.link_secret:
        return config.link_secret.encode()
    if config.encryption_key:
        first = config.encryption_key.split(",")[0].strip()
        return hmac.new(first.encode(), b"tolstoy approval links v1", hashlib.sha256).digest()
    return None




def sign_link(key: bytes, claims: dict) -> str:
    """``<base64url JSON claims>.<base64url HMAC-SHA256 of the first part>``."""
    body = b64url(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{b64url(hmac.new(key, b'approval.' + body.encode(), hashlib.sha256).digest())}"


def _claims(data) -> dict | None:
    """The claims sign_link wrote, each of its type, or None."""
    if not isinstance(data, dict) or not all(isinstance(data.get(name), str) for name in "ofrsl"):
        return None
    if type(data.get("e")) is not int or not isinstance(data.get("a"), str | None):
        return None
    return {"org": uuid.UUID(data["o"]), "flow": uuid.UUID(data["f"]), "run": uuid.UUID(data["r"]),
            "signal": data["s"], "approver": data.get("a"), "expires": data["e"], "link": uuid.UUID(data["l"])}


def read_link(key: bytes, token: str, now: float) -> dict:
    """The claims of a link: 401 when it is not one of ours (malformed, tampered), 410 when expired."""
    body, _, mac = token.partition(".")
    try:
        good = hmac.compare_digest(unb64url(mac), hmac.new(key, b"approval." + body.encode(), hashlib.sha256).digest())
        claims = _claims(json.loads(unb64url(body))) if good else None
    except (ValueError, binascii.Error, UnicodeError):
        claims = None
    if claims is None:
        raise falcon.HTTPUnauthorized(title="Invalid link", description="This approval link is not valid.")
    if claims["expires"] <= now:
        raise falcon.HTTPGone(title="Link expired", description="This approval link has expired.")
    return claims


# ---- the signal of a path --------------------------------------------------------------

def check_signal_name(signal: str) -> str:
    """The signal of the path: 404 when no wait step could ever wait for it."""
    if not SIGNAL_NAME_RE.match(signal):
        raise NotFound("Signal")
    return signal


class RunSignals:
    """``POST /flows/{id}/executions/{executionId}/signals/{signal}`` and ``…/links``."""

    def __init__(self, db: dbmod.Database, config: Config, clock=unix_seconds):
        self.db = db
        self.key = link_key(config)
        self.public_url = config.public_url
        self.clock = clock

    def on_post_signal(self, req: falcon.Request, resp: falcon.Response, id: str, execution_id: str,
                       signal: str) -> None:
        """Send the signal with its payload: 202 once stored (the run wakes if it waits for it)."""
        key = idempotency_key(req)
        data = read_json(req)
        flow_id = parse_uuid(id, "Flow")
        run_id = parse_uuid(execution_id, "Execution")
        check_signal_name(signal)
        values = validate_body(_SIGNAL, data)
        with lifecycle_errors():
            sent, _ = engine.send_signal(self.db, org_id=req.context.org_id, flow_id=flow_id, run_id=run_id,
                                         signal=signal, payload=values.get("payload"), source="api",
                                         user_id=req.context.user_id, key=key, trace_parent=tracing.caller(req))
        resp.status = falcon.HTTP_202
        resp.media = _ACCEPTED(sent)

    def on_post_links(self, req: falcon.Request, resp: falcon.Response, id: str, execution_id: str,
                      signal: str) -> None:
        """An approval link for this run and signal: 201 ``{url, expiresAt}``."""
        data = read_json(req)
        flow_id = parse_uuid(id, "Flow")
        run_id = parse_uuid(execution_id, "Execution")
        check_signal_name(signal)
        values = validate_body(_LINK, data)
        if self.key is None:
            raise falcon.HTTPServiceUnavailable(
                description="Approval links need TOLSTOY_LINK_SECRET (or TOLSTOY_ENCRYPTION_KEY) to be signed.")
        run = self.db.one(SQL.runs.status_of, org_id=req.context.org_id, flow_id=flow_id, id=run_id)
        if run is None:
            raise NotFound("Execution")
        if run["status"] in FINISHED_RUN_STATUSES:
            raise Conflict(f"The execution already finished with status {run['status']}; it takes no signal.")
        state = self.db.one(SQL.signals.state, commit=True, org_id=req.context.org_id, run_id=run["id"],
                            run_created_at=run["created_at"], signal=signal, link_id=None)
        if state["waits"] <= state["pending"]:
            raise Conflict(f"The execution is not waiting for the signal {signal!r}.")
        expires = int(self.clock()) + values["expiresInSeconds"]
        token = sign_link(self.key, {"o": str(req.context.org_id), "f": str(flow_id), "r": str(run_id),
                                     "s": signal, "a": values.get("approver"), "e": expires,
                                     "l": str(uuid.uuid4())})
        path = f"/approvals/{token}"
        resp.status = falcon.HTTP_201
        resp.location = path
        resp.media = _CREATED({"url": (self.public_url or "") + path,
                               "expires_at": dt.datetime.fromtimestamp(expires, dt.UTC),
                               "approver": values.get("approver"), "signal": signal, "run_id": run_id})


class Approval:
    """``GET/POST /approvals/{token}``: an approval link, usable without credentials."""

    access = "public"

    def __init__(self, db: dbmod.Database, config: Config, clock=unix_seconds):
        self.db = db
        self.key = link_key(config)
        self.clock = clock

    def claims(self, token: str) -> dict:
        if self.key is None:
            raise falcon.HTTPServiceUnavailable(description="Approval links are not configured.")
        return read_link(self.key, token, self.clock())

    def on_get(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """What the link approves (it does nothing: scanners and previews fetch links)."""
        claims = self.claims(token)
        with self.db.transaction(), self.db.tenant(claims["org"]):
            run = self.db.one(SQL.runs.status_of, org_id=claims["org"], flow_id=claims["flow"], id=claims["run"])
            if run is None:
                raise NotFound("Execution")
            state = self.db.one(SQL.signals.state, org_id=claims["org"], run_id=run["id"],
                                run_created_at=run["created_at"], signal=claims["signal"], link_id=claims["link"])
        resp.media = {
            "executionId": str(run["id"]), "flowId": str(run["flow_id"]), "signal": claims["signal"],
            "approver": claims["approver"], "expiresAt": iso(dt.datetime.fromtimestamp(claims["expires"], dt.UTC)),
            "executionStatus": run["status"], "used": state["link_used"],
            "waiting": run["status"] not in FINISHED_RUN_STATUSES and state["waits"] > state["pending"],
            "decisions": ["approve", "reject"],
            "message": "POST this URL with {\"decision\": \"approve\" | \"reject\", \"comment\"?} to decide.",
        }
        resp.cache_control = ["no-store"]

    def on_post(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """Approve or reject: the signal ``{approved, approver, comment, at}``, once per link."""
        claims = self.claims(token)
        data = read_json(req)
        values = validate_body(_APPROVAL, data)
        approved = values["decision"] == "approve"
        payload = {"approved": approved, "approver": claims["approver"], "comment": values.get("comment"),
                   "at": iso(dt.datetime.now(dt.UTC))}
        with self.db.transaction(), self.db.tenant(claims["org"]), lifecycle_errors():
            sent, _ = engine.send_signal(self.db, org_id=claims["org"], flow_id=claims["flow"], run_id=claims["run"],
                                         signal=claims["signal"], payload=payload, source="link",
                                         approver=claims["approver"], link_id=claims["link"],
                                         trace_parent=tracing.caller(req))
        resp.status = falcon.HTTP_202
        resp.media = {**_ACCEPTED(sent), "approved": approved}


def _signals(s: Services) -> RunSignals:
    return RunSignals(s.db, s.config)


_SIGNAL_PARAM = {"name": "signal", "in": "path", "required": True, "schema": {"type": "string", "pattern": SIGNAL_NAME}}
_TOKEN_PARAM = {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}
_LINK_ERRORS = {"401": {"description": "Not a valid link (malformed or tampered).", "content": json_content("Error")},
                "410": {"description": "The link expired, or was used.", "content": json_content("Error")}}
SCHEMAS = {"Signal": SignalSchema, "SignalAccepted": SignalAcceptedSchema, "Link": LinkSchema,
           "LinkCreated": LinkCreatedSchema, "Approval": ApprovalSchema}
ROUTES = (
    Route("/flows/{id}/executions/{execution_id}/signals/{signal}", _signals, "signal", operations={"post": {
        "tags": ["Executions"],
        "summary": "Send a signal to a run; its wait step returns the payload (idempotent per Idempotency-Key)",
        "parameters": FLOW_PARAMS + [EXECUTION_PARAM, _SIGNAL_PARAM, IDEMPOTENCY_PARAM],
        "requestBody": {"required": True, "content": json_content("Signal")},
        "responses": {"202": {"description": "Stored; the run wakes if it waits for it.",
                              "content": json_content("SignalAccepted")},
                      **errors("400", "404", "409", "413", "415")}}}),
    Route("/flows/{id}/executions/{execution_id}/signals/{signal}/links", _signals, "links", operations={"post": {
        "tags": ["Executions"], "summary": "An approval link (signed, expiring, single-use) for this run and signal",
        "parameters": FLOW_PARAMS + [EXECUTION_PARAM, _SIGNAL_PARAM],
        "requestBody": {"required": True, "content": json_content("Link")},
        "responses": {"201": {"description": "The link.", "content": json_content("LinkCreated")},
                      **errors("400", "404", "409", "413", "415")}}}),
    Route("/approvals/{token}", lambda s: Approval(s.db, s.config), operations={
        "get": {"tags": ["Executions"], "security": [{}],
                "summary": "What an approval link approves (no credentials; does nothing)",
                "parameters": [_TOKEN_PARAM],
                "responses": {"200": {"description": "The run, signal, approver and expiry.",
                                      "content": {"application/json": {"schema": {"type": "object"}}}},
                              **_LINK_ERRORS, **errors("404")}},
        "post": {"tags": ["Executions"], "security": [{}],
                 "summary": "Approve or reject through the link: the signal {approved, approver, comment, at}",
                 "parameters": [_TOKEN_PARAM], "requestBody": {"required": True, "content": json_content("Approval")},
                 "responses": {"202": {"description": "Delivered.", "content": json_content("SignalAccepted")},
                               **_LINK_ERRORS, **errors("400", "404", "409", "413", "415")}}}),
)
