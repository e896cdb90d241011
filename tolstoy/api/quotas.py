"""Quotas per organization: what the operator lets one organization hold and ask for.

Three quotas, each a default in configuration (``TOLSTOY_QUOTA_*``) that the operator may override
per organization (``organization_quotas``, ``PUT /organizations/{id}/quotas``):

- ``queuedRuns`` and ``storedBytes`` bind new runs, in the database: ``tolstoy_queue_run`` admits
  every new run (execute, retry, webhook triggers, schedules, subflow children) one at a time per
  organization, and refuses it whole (SQLSTATE TQ001/TQ002, a 429 naming the quota here) over either.
- ``requestsPerSecond`` (with ``requestBurst``) binds API requests, in each API process: a token
  bucket per organization (``RequestBuckets``), checked by the tenant middleware before the request's
  unit of work opens, so a refused request costs the database nothing. With P API processes an
  organization gets at most P × the rate (documented in docs/operations.md): one bucket in the
  database would cost every request a round trip, and a row every request of an organization locks.

``GET /organizations/{id}/usage`` shows an organization's usage against each quota, and
``GET /organizations/{id}/quotas`` its overrides; both are the organization's own (an API key of it)
or the admin's, like ``GET /organizations/{id}``. Changing quotas is the admin's only."""

from __future__ import annotations

import contextlib
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator

import falcon
from marshmallow import fields, validate

from ..config import QUOTA_RANGES, Config
from ..db.database import Database
from ..db.queries import SQL
from ..errors import TenantRejected
from ..fieldtypes import Base, Timestamp
from .dumping import dumper
from .errors import Constraints, NotFound, TooManyRequests, ValidationFailed
from .requests import parse_uuid, read_json, validate_body
from .responses import check_if_match, etag_of, respond
from .routing import Route, errors, json_content, path_id

# What the database's constraints on organization_quotas and organization_worker_time mean to a client (errors.Constraints).
CONSTRAINTS = Constraints(
    checks={"organization_quotas_queued_runs_range": "queuedRuns",
        "organization_quotas_stored_bytes_range": "storedBytes",
        "organization_quotas_requests_per_second_range": "requestsPerSecond",
        "organization_quotas_request_burst_range": "requestBurst"},
    service=frozenset({"organization_worker_time_seconds_check"}),
)


def _quota(name: str, low: int, description: str) -> fields.Integer:
    return fields.Integer(data_key=name, strict=True, allow_none=True, validate=validate.Range(low, QUOTA_RANGES[name]),
                          metadata={"description": description + " Null: the configured default."})


class QuotaValuesSchema(Base):
    """The four quotas of an organization."""

    queued_runs = _quota("queuedRuns", 0, "Most runs not finished (queued, running or waiting) at once; over it a "
                                          "new run is a 429. 0 refuses every new run.")
    stored_bytes = _quota("storedBytes", 0, "Most bytes of run history (variables, plans, step inputs and outputs, "
                                            "log rows of finished runs) kept within retention; at or over it a new "
                                            "run is a 429.")
    requests_per_second = _quota("requestsPerSecond", 1, "API requests a second (a token bucket per API process: "
                                                         "with P processes, P times this at most).")
    request_burst = _quota("requestBurst", 1, "API requests one burst may hold (the bucket's size, per API process).")


class QuotasSchema(QuotaValuesSchema):
    """``GET/PUT/PATCH /organizations/{id}/quotas``: the operator's overrides (null: the default) and the
    quotas in force (``effective``)."""

    org_id = fields.UUID(data_key="organizationId", dump_only=True)
    effective = fields.Nested(QuotaValuesSchema, dump_only=True,
                              metadata={"description": "The quotas in force: the override, else the default."})
    updated_at = Timestamp(data_key="updatedAt", dump_only=True, allow_none=True,
                           metadata={"description": "When an override last changed (null: never set)."})


class UsedSchema(Base):
    """One quota's usage and limit."""

    used = fields.Integer(dump_only=True)
    limit = fields.Integer(dump_only=True)


class RequestUsageSchema(Base):
    """The request quota as the API process that answered sees it."""

    used = fields.Float(dump_only=True, metadata={"description": "Requests a second admitted of late (about the "
                                                                 "last 10 s), by this API process."})
    available = fields.Float(dump_only=True, metadata={"description": "Tokens in this process's bucket now."})
    limit = fields.Integer(dump_only=True)
    burst = fields.Integer(dump_only=True)
    scope = fields.String(dump_only=True, metadata={"description": "process: each API process counts apart."})


class UsageSchema(Base):
    """``GET /organizations/{id}/usage``."""

    org_id = fields.UUID(data_key="organizationId", dump_only=True)
    queued_runs = fields.Nested(UsedSchema, data_key="queuedRuns", dump_only=True,
                                metadata={"description": "Runs queued, running or waiting now (exact)."})
    stored_bytes = fields.Nested(UsedSchema, data_key="storedBytes", dump_only=True,
                                 metadata={"description": "Bytes of run history within retention, counted as "
                                                          "each run finished (runs in flight count from their end)."})
    requests_per_second = fields.Nested(RequestUsageSchema, data_key="requestsPerSecond", dump_only=True)


# The quotas an organization has, as the API names them, and their columns in organization_quotas.
COLUMNS = {"queuedRuns": "queued_runs", "storedBytes": "stored_bytes", "requestsPerSecond": "requests_per_second",
           "requestBurst": "request_burst"}
# How long a process trusts what it read of an organization's request quota before reading it again
# (with the organization's next admitted request, in the same round trip as its first statement).
LEARN_SECONDS = 30.0
# The "recent" request rate of GET .../usage: requests admitted, averaged over about this many seconds.
RECENT_SECONDS = 10.0


class Bucket:
    """One organization's token bucket in this process, and what this process knows of its quota."""

    __slots__ = ("tokens", "stamp", "rate", "burst", "learned_at", "recent", "seen")

    def __init__(self, rate: int, burst: int, now: float):
        self.tokens = float(burst)
        self.stamp = now
        self.rate = rate
        self.burst = burst
        self.learned_at: float | None = None  # never read from the database yet: the defaults
        self.recent = 0.0
        self.seen = now

    def refill(self, now: float) -> None:
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def recent_rate(self, now: float) -> float:
        return self.recent * math.exp(-(now - self.seen) / RECENT_SECONDS)


class RequestBuckets:
    """A token bucket per organization (``rate`` tokens a second, ``burst`` at most), per process.

    Bounded: at most ``size`` organizations are remembered, the least recently seen forgotten first,
    so requests naming ever new organizations (headers mode trusts X-Org-ID) cannot grow it; a
    forgotten organization starts again with a full bucket. An organization's own quota is learned
    from the database with one of its admitted requests (``stale``, ``learn``); until then, and when
    it has none, the defaults apply."""

    def __init__(self, rate: int, burst: int, *, size: int = 10_000, learn_seconds: float = LEARN_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self.size = size
        self.learn_seconds = learn_seconds
        self.clock = clock
        self._buckets: OrderedDict[uuid.UUID, Bucket] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config) -> RequestBuckets:
        return cls(config.quota_requests_per_second, config.quota_request_burst)

    def _bucket(self, org_id: uuid.UUID, now: float) -> Bucket:
        bucket = self._buckets.get(org_id)
        if bucket is None:
            bucket = self._buckets[org_id] = Bucket(self.rate, self.burst, now)
            while len(self._buckets) > self.size:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(org_id)
        bucket.refill(now)
        return bucket

    def take(self, org_id: uuid.UUID) -> tuple[float, int, int]:
        """Take a token for one request of ``org_id``: (0, rate, burst) when admitted, else (seconds
        until a token is free, rate, burst)."""
        now = self.clock()
        with self._lock:
            bucket = self._bucket(org_id, now)
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                bucket.recent = bucket.recent_rate(now) + 1 / RECENT_SECONDS
                bucket.seen = now
                return 0.0, bucket.rate, bucket.burst
            return (1 - bucket.tokens) / bucket.rate, bucket.rate, bucket.burst

    def stale(self, org_id: uuid.UUID) -> bool:
        """Whether this process should read the organization's request quota again."""
        with self._lock:
            bucket = self._buckets.get(org_id)
            return bucket is None or bucket.learned_at is None or \
                self.clock() - bucket.learned_at >= self.learn_seconds

    def learn(self, org_id: uuid.UUID, rows: list[dict]) -> None:
        """The organization's request quota as read from organization_quotas (no row, or nulls: the
        defaults)."""
        row = rows[0] if rows else {}
        rate = row.get("requests_per_second") or self.rate
        burst = row.get("request_burst") or self.burst
        now = self.clock()
        with self._lock:
            bucket = self._bucket(org_id, now)
            bucket.rate, bucket.burst = rate, burst
            bucket.tokens = min(bucket.tokens, float(burst))
            bucket.learned_at = now

    def usage(self, org_id: uuid.UUID) -> dict:
        """What this process saw of the organization: the admitted request rate of late, and the tokens
        its bucket holds now."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(org_id)
            if bucket is None:
                return {"used": 0.0, "available": float(self.burst)}
            bucket.refill(now)
            return {"used": round(bucket.recent_rate(now), 3), "available": round(bucket.tokens, 3)}

    def refusal(self, wait: float, rate: int, burst: int) -> TooManyRequests:
        """The 429 of a request over the organization's request quota."""
        return TooManyRequests(
            f"This organization is over its requestsPerSecond quota ({rate} requests a second, bursts of {burst}, "
            f"per API process); retry after the Retry-After seconds.",
            retry_after=max(1, math.ceil(wait)), quota="requestsPerSecond", limit=rate)


# ---- the routes ----------------------------------------------------------------------------------

_QUOTAS = QuotasSchema()
_SHOW_QUOTAS = dumper(_QUOTAS)
_SHOW_USAGE = dumper(UsageSchema())
# What GET answers that a PUT of the same body ignores (updatedAt is ignored everywhere).
_DERIVED = frozenset({"organizationId", "effective"})


def found(row: dict | None) -> dict:
    """The row of a query that names the organization: none, and the organization does not exist (or
    was just deleted, which the check of the tenant may remember for seconds yet)."""
    if row is None:
        raise NotFound("Organization")
    return row


class OrganizationQuota:
    """What both routes share: ``/organizations/{id}/…`` of the caller's own organization (an API key)
    or of any (the admin token, headers mode), read or written as that organization."""

    access = "organizations"

    def __init__(self, db: Database, config: Config):
        self.db = db
        self.defaults = config.quota_defaults()

    def organization(self, req: falcon.Request, raw_id: str) -> uuid.UUID:
        """The organization in the path: 404 for another one than an API key's (as a missing one)."""
        org_id = parse_uuid(raw_id, "Organization")
        if req.context.key_org_id is not None and req.context.key_org_id != org_id:
            raise NotFound("Organization")
        return org_id

    @contextlib.contextmanager
    def acting_for(self, req: falcon.Request, org_id: uuid.UUID) -> Iterator[None]:
        """Queries act for the organization (row-level security): an API key's unit does already (its key
        checked by its first statement); the admin login's switches to it, and the tenant check of its
        first statement is the 404 of an organization that does not exist."""
        if req.context.key_org_id is not None:
            yield
            return
        try:
            with self.db.tenant(org_id):
                yield
        except TenantRejected:
            raise NotFound("Organization") from None

    def represent(self, org_id: uuid.UUID, row: dict) -> dict:
        """The overrides (null: the default) and the quotas in force."""
        overrides = {column: row.get(column) for column in COLUMNS.values()}
        effective = {column: self.defaults[name] if overrides[column] is None else overrides[column]
                     for name, column in COLUMNS.items()}
        return _SHOW_QUOTAS({"org_id": org_id, **overrides, "effective": effective,
                             "updated_at": row.get("updated_at")})


class Quotas(OrganizationQuota):
    """``GET/PUT/PATCH /organizations/{id}/quotas``: the operator's overrides of an organization's quotas.
    Reading is the organization's own; changing them needs the admin token (api_key mode)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """The overrides and the quotas in force, with an ETag."""
        org_id = self.organization(req, id)
        with self.acting_for(req, org_id):
            row = found(self.db.one(SQL.quotas.get, commit=True, org_id=org_id))
        respond(resp, self.represent(org_id, row))

    def on_patch(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Set the quotas sent (null: back to the default); the others stay as they are."""
        org_id = self.organization(req, id)
        if req.context.key_org_id is not None:
            raise falcon.HTTPForbidden(description="Changing an organization's quotas needs the admin token.")
        data = read_json(req)
        with self.acting_for(req, org_id):
            if req.if_match is not None:  # read (locked) only to compare: a plain write is one statement
                current = found(self.db.one(SQL.quotas.get_for_update, org_id=org_id))
                check_if_match(req, etag_of(self.represent(org_id, current)))
            try:
                values = validate_body(_QUOTAS, data, partial=True, ignore=_DERIVED)
            except ValidationFailed:
                found(self.db.one(SQL.quotas.get, org_id=org_id))  # a missing organization: 404 before a bad field's 400
                raise
            row = found(self.db.one(SQL.quotas.upsert, commit=True, org_id=org_id,
                                    sent=[COLUMNS[name] for name in COLUMNS if COLUMNS[name] in values],
                                    **{column: values.get(column) for column in COLUMNS.values()}))
        respond(resp, self.represent(org_id, row))

    on_put = on_patch


class Usage(OrganizationQuota):
    """``GET /organizations/{id}/usage``: the organization's usage against each of its quotas. Runs and
    stored bytes are the database's; requests per second are what the API process that answers saw."""

    def __init__(self, db: Database, config: Config, buckets: RequestBuckets):
        super().__init__(db, config)
        self.buckets = buckets

    def on_get(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        """Usage and limit of each quota."""
        org_id = self.organization(req, id)
        with self.acting_for(req, org_id):
            row = found(self.db.one(SQL.quotas.usage, commit=True, org_id=org_id))
        limits = self.represent(org_id, row)["effective"]
        requests = self.buckets.usage(org_id)
        respond(resp, _SHOW_USAGE({
            "org_id": org_id,
            "queued_runs": {"used": row["runs_held"], "limit": limits["queuedRuns"]},
            "stored_bytes": {"used": row["bytes_stored"], "limit": limits["storedBytes"]},
            "requests_per_second": {**requests, "limit": limits["requestsPerSecond"],
                                    "burst": limits["requestBurst"], "scope": "process"},
        }), etag=False)


_ORG = [path_id()]
_WHO = ("No tenant header. In api_key mode an organization's key reads its own organization (another is a "
        "404) and the admin token any; in headers mode any.")
_UPDATE = {"tags": ["Organizations"], "summary": "Set quotas of the organization (null: back to the default)",
           "description": "The operator's: the admin token in api_key mode (an organization's key is a 403); "
                          "fields not sent stay as they are. queuedRuns and storedBytes bind new runs at once; "
                          "requestsPerSecond and requestBurst within 30 s in each API process.",
           "parameters": [*_ORG, "IfMatch"], "requestBody": {"required": True, "content": json_content("Quotas")},
           "responses": {"200": {"description": "The quotas.", "headers": {"ETag": "ETag"},
                                 "content": json_content("Quotas")}, **errors("400", "404", "412", "413", "415")}}
SCHEMAS = {"Quotas": QuotasSchema, "Usage": UsageSchema}
ROUTES = (
    Route("/organizations/{id}/quotas", lambda s: Quotas(s.db, s.config), operations={
        "get": {"tags": ["Organizations"], "summary": "The organization's quotas: overrides and those in force",
                "description": _WHO, "parameters": _ORG,
                "responses": {"200": {"description": "The quotas.", "headers": {"ETag": "ETag"},
                                      "content": json_content("Quotas")}, **errors("404")}},
        "put": _UPDATE, "patch": _UPDATE}),
    Route("/organizations/{id}/usage", lambda s: Usage(s.db, s.config, s.buckets), operations={"get": {
        "tags": ["Organizations"], "summary": "The organization's usage against each of its quotas",
        "description": _WHO + " Runs and stored bytes are the database's; requests per second are what the API "
                              "process that answers saw (each process has its own bucket).",
        "parameters": _ORG,
        "responses": {"200": {"description": "Usage and limits.", "content": json_content("Usage")},
                      **errors("404")}}}),
)
