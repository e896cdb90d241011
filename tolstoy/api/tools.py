"""``/tools``: external HTTP APIs; a single tool is shown with its actions."""

from __future__ import annotations

import datetime as dt

import falcon
from marshmallow import fields, validate

from .. import engine
from ..db.queries import SQL
from ..fieldtypes import Base, HttpUrl, StrictBoolean, TenantRecord, Timestamp, key_field, text
from ..times import seconds_between
from . import resources
from .actions import ActionSchema
from .dumping import dumper
from .errors import Conflict, Constraints
from .model import Model
from .requests import parse_uuid
from .responses import respond
from .routing import Route, errors, json_content, path_id, tenant_params

# What the database's constraints on tools mean to a client (errors.Constraints).
CONSTRAINTS = Constraints(
    checks={"tools_base_url_scheme": "baseUrl", "tools_key_format": "key", "tools_name_length": "name",
            "tools_rate_limit_shape": "rateLimit"},
    # The budgets are the engine's own writes (GET /tools/{id}/rate-limit shows them).
    service=frozenset({"tool_rate_budgets_scope_check", "tool_rate_budgets_learned_requests_check",
                       "tool_rate_budgets_learned_per_seconds_check", "tool_rate_budgets_window_seconds_check",
                       "tool_rate_budgets_throttled_check", "tool_rate_budgets_waited_seconds_check"}),
    unique={"tools_org_id_name_key": "A tool with this name already exists in this organization.",
        "tools_org_id_key_key": "A tool with this key already exists in this organization."},
    dependents={"tools_org_id_fkey": "tools"},
)

AUTH_TYPES = ("none", "apiKey", "bearer", "basic", "oauth2")
# The bounds of a declared rate limit (tools_rate_limit_shape says the same).
MAX_LIMIT_REQUESTS = 1_000_000
MAX_LIMIT_SECONDS = 86_400


class DeclaredRateLimitSchema(Base):
    """``{requests, perSeconds}``: at most ``requests`` requests every ``perSeconds`` seconds."""

    requests = fields.Integer(required=True, strict=True, validate=validate.Range(1, MAX_LIMIT_REQUESTS))
    perSeconds = fields.Integer(required=True, strict=True, validate=validate.Range(1, MAX_LIMIT_SECONDS))


class ToolSchema(TenantRecord):
    """``{name, key?, baseUrl, authType, honorsIdempotencyKey}``."""

    name = text(1, 200, required=True)
    key = key_field("Optional short name, unique per organization: the original service's /auth/{toolKey}/login and "
                    "callback routes name the tool by it.", allow_none=True, load_default=None)
    base_url = HttpUrl(data_key="baseUrl", required=True, validate=validate.Length(max=2048))
    auth_type = fields.String(
        data_key="authType", required=True, validate=validate.OneOf(AUTH_TYPES)
    )
    honors_idempotency_key = fields.Boolean(
        data_key="honorsIdempotencyKey", load_default=False,
        metadata={"description": "The tool treats a repeated Idempotency-Key as the same request, so the engine "
                                 "may send a call again when a worker died during it (see onUnknownOutcome)."},
    )
    rate_limit = fields.Nested(
        DeclaredRateLimitSchema, data_key="rateLimit", allow_none=True, load_default=None,
        metadata={"description": "The tool's own limit per credential (the organization's, and each user's "
                                 "connection): flows send at most `requests` calls every `perSeconds` seconds "
                                 "with it, spread evenly, across every worker. Null: what the provider's answers "
                                 "teach (Retry-After, X-RateLimit-*, RateLimit-Policy; GET /tools/{id}/rate-limit "
                                 "shows it). Calls wait for the budget; they do not fail for it."},
    )
    drop_credentials = StrictBoolean(
        data_key="dropCredentials", load_only=True,
        metadata={"description": "Write-only, for PUT/PATCH: a baseUrl on another origin (scheme, host, port) than "
                                 "the stored one is refused (409) while the tool has credentials or users' "
                                 "connections, which are sent only to the origin they were stored for; true "
                                 "deletes them (and their OAuth2 tokens) in the same transaction as the change."},
    )


class ToolDetailSchema(ToolSchema):
    """A tool with its actions, as ``GET /tools/{id}`` returns it."""

    actions = fields.List(fields.Nested(ActionSchema), dump_only=True)


MODEL = Model(
    name="tools", path="/tools", noun="Tool", tag="Tools", schema=ToolSchema,
    writable=("name", "key", "base_url", "auth_type", "honors_idempotency_key", "rate_limit"),
    json_columns=("rate_limit",), detail_schema=ToolDetailSchema,
    delete_blocked_by="actions",
    # GET /tools/{id} includes actions; a client may send them back on PUT.
    derived_fields=frozenset({"actions"}),
)


class ToolResource(resources.ModelResource):
    """A single tool is shown with every one of its actions (its queries return them)."""

    model = MODEL
    detail = staticmethod(dumper(ToolDetailSchema()))

    def represent(self, row: dict) -> dict:
        """A tool with every one of its actions."""
        return self.detail(row)


class Collection(ToolResource, resources.Collection):
    """``GET/POST /tools``; the list shows tools without their actions."""


class Item(ToolResource, resources.Item):
    """``GET/PUT/PATCH/DELETE /tools/{id}``; delete is 409 while the tool has actions."""

    def before_update(self, req: falcon.Request, row: dict, values: dict) -> None:
        """Credentials are bound to an origin: moving the tool to another one (scheme, host, port)
        is a 409 naming baseUrl while it has credentials or users' connections, unless the body says
        ``dropCredentials: true``, which deletes them in this transaction (the tool row is locked,
        so none is stored meanwhile). A new path on the same origin keeps them."""
        drop = values.pop("drop_credentials", False)
        moved_to = values.get("base_url")
        if moved_to is None or engine.origin_of(moved_to) == engine.origin_of(row["base_url"]):
            return
        org_id = req.context.org_id
        if not self.db.scalar(SQL.tool_credentials.bound_to_tool, org_id=org_id, tool_id=row["id"]):
            return
        if not drop:
            raise Conflict(
                f"baseUrl: the tool's credentials and users' connections are sent only to "
                f"{engine.origin_of(row['base_url'])}, where they were stored; to move the tool to "
                f"{engine.origin_of(moved_to)}, send \"dropCredentials\": true to delete them with the change "
                "(then store the credential for the new origin), or keep the origin.")
        self.db.rowcount(SQL.tool_credentials.drop_for_tool, org_id=org_id, tool_id=row["id"])


class LearnedLimitSchema(Base):
    """What the provider said of its limit."""

    requests = fields.Integer(dump_only=True)
    per_seconds = fields.Float(data_key="perSeconds", dump_only=True, allow_none=True,
                               metadata={"description": "Null when the provider gave no window (GitHub's form: "
                                                        "its windows are known from their resets)."})
    learned_at = Timestamp(data_key="learnedAt", dump_only=True)


class WindowSchema(Base):
    """The provider's current window, as it reported it (less what was sent since)."""

    remaining = fields.Integer(dump_only=True)
    resets_at = Timestamp(data_key="resetsAt", dump_only=True)


class CredentialBudgetSchema(Base):
    """The budget of one credential of the tool."""

    scope = fields.String(dump_only=True, metadata={"description": "organization (the tool's credential) or user "
                                                                   "(one user's connection)."})
    user_id = fields.String(data_key="userId", dump_only=True, allow_none=True)
    learned = fields.Nested(LearnedLimitSchema, dump_only=True, allow_none=True)
    window = fields.Nested(WindowSchema, dump_only=True, allow_none=True)
    next_call_at = Timestamp(data_key="nextCallAt", dump_only=True, allow_none=True,
                             metadata={"description": "The next call may go then (null: now)."})
    paused_until = Timestamp(data_key="pausedUntil", dump_only=True, allow_none=True,
                             metadata={"description": "A 429 or 503 with Retry-After paused the credential until "
                                                      "then, for every run (null: no pause now)."})
    throttled = fields.Integer(dump_only=True, metadata={"description": "429 answers received."})
    waited_seconds = fields.Float(data_key="waitedSeconds", dump_only=True,
                                  metadata={"description": "Seconds calls waited for this budget, in all."})
    updated_at = Timestamp(data_key="updatedAt", dump_only=True)


class ToolRateLimitSchema(Base):
    """``GET /tools/{id}/rate-limit``: the declared limit and each credential's budget."""

    tool_id = fields.UUID(data_key="toolId", dump_only=True)
    declared = fields.Nested(DeclaredRateLimitSchema, dump_only=True, allow_none=True,
                             metadata={"description": "The tool's rateLimit (it wins over what is learned)."})
    budgets = fields.List(fields.Nested(CredentialBudgetSchema), dump_only=True)


_SHOW_RATE_LIMIT = dumper(ToolRateLimitSchema())


def budget_view(row: dict, now) -> dict:
    """One credential's budget as the API shows it: only what holds at ``now`` (the database's clock)."""
    def current(value):
        return value if value is not None and seconds_between(value, now) > 0 else None

    window = None
    if row.get("window_reset_at") is not None and current(row["window_reset_at"]) and row.get("window_remaining") is not None:
        window = {"remaining": max(row["window_remaining"], 0), "resets_at": row["window_reset_at"]}
    learned = None
    if row.get("learned_requests") is not None:
        learned = {"requests": row["learned_requests"], "per_seconds": row.get("learned_per_seconds"),
                   "learned_at": row.get("learned_at")}
    user = row["scope"][len("user:"):] if row["scope"].startswith("user:") else None
    return {"scope": "user" if user else "organization", "user_id": user, "learned": learned, "window": window,
            "next_call_at": current(max((v for v in (row.get("tat"), row.get("next_slot")) if v is not None),
                                        default=None)), "paused_until": current(row.get("paused_until")),
            "throttled": row["throttled"], "waited_seconds": row["waited_seconds"], "updated_at": row["updated_at"]}


class RateLimit:
    """``GET /tools/{id}/rate-limit``: a sub-resource, so that the tool's own ETag stays the same while
    every call moves its budget. A user's connection's budget is shown as the organization's (it is
    the organization's tool; the user's connection's secret is not in it)."""

    def __init__(self, db):
        self.db = db

    def on_get(self, req: falcon.Request, resp: falcon.Response, id: str) -> None:
        row = resources.get_or_404(self.db, SQL.tools.rate_limit, "Tool", org_id=req.context.org_id,
                                   id=parse_uuid(id, "Tool"))
        now = row["now"]
        budgets = [budget_view({**b, **{k: _timestamp(b.get(k)) for k in _TIMES}}, now) for b in row["budgets"]]
        respond(resp, _SHOW_RATE_LIMIT({"tool_id": row["id"], "declared": row["rate_limit"], "budgets": budgets}),
                etag=False)


# The budget's timestamps (jsonb_build_object spells them as text).
_TIMES = ("tat", "next_slot", "paused_until", "learned_at", "window_reset_at", "updated_at")


def _timestamp(value):
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


SCHEMAS = {"Tool": ToolSchema, "ToolDetail": ToolDetailSchema, "ToolRateLimit": ToolRateLimitSchema}
ROUTES = (*resources.routes(MODEL, lambda s: Collection(s.db), lambda s: Item(s.db)),
          Route("/tools/{id}/rate-limit", lambda s: RateLimit(s.db), operations={"get": {
              "tags": ["Tools"], "summary": "The tool's declared rate limit and each credential's budget: what the "
                                            "provider taught it, the next free slot, any pause",
              "parameters": [*tenant_params(), path_id()],
              "responses": {"200": {"description": "The budgets.", "content": json_content("ToolRateLimit")},
                            **errors("400", "404")}}}))
