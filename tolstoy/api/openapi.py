"""The OpenAPI 3.1 document, generated from the marshmallow schemas with apispec,
and the ``/openapi.json`` and ``/docs`` routes that serve it."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable

import falcon
import swagger_ui
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from .. import __version__
from . import (
    actions,
    api_keys,
    audit,
    compat,
    connections,
    errors,
    execution_logs,
    fieldtypes,
    flow_steps,
    flows,
    health,
    hooks,
    organizations,
    quotas,
    runs,
    signals,
    tool_credentials,
    tools,
    triggers,
    users,
    webhooks,
)
from .model import Model

DOCS_STATIC = os.path.join(os.path.dirname(swagger_ui.__file__), "static")
SCHEMAS = {
    "Organization": organizations.OrganizationSchema,
    "Quotas": quotas.QuotasSchema,
    "Usage": quotas.UsageSchema,
    "User": users.UserSchema,
    "Tool": tools.ToolSchema,
    "Action": actions.ActionSchema,
    "ToolDetail": tools.ToolDetailSchema,
    "Step": flow_steps.StepSchema,
    "Flow": flows.FlowSchema,
    "FlowVersion": flows.FlowVersionSchema,
    "ExecutionLog": execution_logs.ExecutionLogSchema,
    "FieldError": errors.FieldErrorSchema,
    "Error": errors.ErrorSchema,
    "Health": health.HealthSchema,
    "Status": health.StatusSchema,
    "Version": health.VersionSchema,
    "Execute": runs.ExecuteSchema,
    "RunStep": runs.RunStepSchema,
    "Run": runs.RunSchema,
    "RunDetail": runs.RunDetailSchema,
    "RunAccepted": runs.RunAcceptedSchema,
    "Resolve": runs.ResolveSchema,
    "Signal": signals.SignalSchema,
    "SignalAccepted": signals.SignalAcceptedSchema,
    "Link": signals.LinkSchema,
    "LinkCreated": signals.LinkCreatedSchema,
    "Approval": signals.ApprovalSchema,
    "FlowMetrics": runs.FlowMetricsSchema,
    "ActionExecute": actions.ActionExecuteSchema,
    "ActionResult": actions.ActionResultSchema,
    "Credential": tool_credentials.CredentialSchema,
    "ApiKey": api_keys.ApiKeySchema,
    "Webhook": webhooks.WebhookSchema,
    "WebhookCreated": webhooks.WebhookCreatedSchema,
    "WebhookDelivery": webhooks.WebhookDeliverySchema,
    "WebhookTest": webhooks.WebhookTestSchema,
    "Trigger": triggers.TriggerSchema,
    "TriggerCreated": triggers.TriggerCreatedSchema,
    "TriggerPatch": triggers.TriggerPatchSchema,
    "Delivery": triggers.DeliverySchema,
    "HookAccepted": hooks.HookAcceptedSchema,
    "Secrets": compat.SecretsSchema,
    "ToolSecrets": compat.ToolSecretsSchema,
    "ToolSecretsSummary": compat.ToolSecretsSummarySchema,
    "Connected": connections.ConnectedSchema,
    "UserConnection": connections.UserConnectionSchema,
    "AuditEvent": audit.AuditEventSchema,
}

ERRORS = {
    "400": "Malformed JSON, failed validation, bad tenant headers or a reference to an unseen record.",
    "404": "No such record (also another organization's, or an id that is not a UUID).",
    "405": "Method not allowed on this path (see the Allow header).",
    "409": "A unique value is taken, or dependent rows block the delete.",
    "412": "If-Match does not match the record's ETag.",
    "413": "Body larger than 1 MiB.",
    "415": "Body is not JSON.",
    "401": "TOLSTOY_AUTH_MODE=api_key: missing, invalid or revoked API key (WWW-Authenticate: Bearer).",
    "403": "TOLSTOY_AUTH_MODE=api_key: X-Org-ID names another organization, or the admin token is needed.",
    "503": "The database (or the credential key) is unavailable; retry later.",
    "429": "Over a quota of the organization (`quota` names it, `limit` is its value; Retry-After says when to "
           "try again): requestsPerSecond on any route; queuedRuns or storedBytes on a route that starts a run "
           "(nothing of the run is written).",
}


def _error(code: str) -> dict:
    return {"description": ERRORS[code], "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _errors(*codes: str) -> dict:
    # Every data route may also meet API-key auth (401/403), the organization's request quota (429) and an
    # unreachable database (503).
    return {code: _error(code) for code in (*codes, "401", "403", "429", "503")}


def _json(ref: str, many: bool = False) -> dict:
    schema = {"$ref": f"#/components/schemas/{ref}"}
    if many:
        schema = {"type": "array", "items": schema}
    return {"application/json": {"schema": schema}}


def _tenant_params(user_required: bool = False) -> list[dict]:
    return [
        "OrgId",
        "UserIdRequired" if user_required else "UserId",
    ]


def _crud_paths(spec: APISpec, model: Model) -> None:
    tenant = _tenant_params() if model.tenant else []
    item_ref = model.detail_schema_name
    filters = [
        {"name": f.param, "in": "query", "required": False, "description": f.description,
         "schema": {"type": "string"}}
        for f in model.filters
    ]
    spec.path(
        path=model.path,
        operations={
            "get": {
                "tags": [model.tag],
                "summary": f"List {model.tag.lower()}, newest first",
                "parameters": tenant + [
                    "Limit",
                    "Cursor",
                ] + filters,
                "responses": {
                    "200": {
                        "description": "One page; Link and X-Next-Cursor when more exist.",
                        "headers": {
                            "Link": "Link",
                            "X-Next-Cursor": "NextCursor",
                        },
                        "content": _json(model.schema_name, many=True),
                    },
                    **_errors("400"),
                },
            },
            "post": {
                "tags": [model.tag],
                "summary": f"Create a record in {model.tag.lower()}",
                "parameters": _tenant_params(model.user_required_on_create) if model.tenant else [],
                "requestBody": {"required": True, "content": _json(model.schema_name)},
                "responses": {
                    "201": {
                        "description": "Created.",
                        "headers": {
                            "Location": "Location",
                            "ETag": "ETag",
                        },
                        "content": _json(item_ref),
                    },
                    **_errors("400", "409", "413", "415"),
                },
            },
        },
    )
    id_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
    if_match = "IfMatch"
    update = {
        "tags": [model.tag],
        "parameters": tenant + [id_param, if_match],
        "description": "Partial update: fields not sent stay as they are; null clears an optional field.",
        "requestBody": {"required": True, "content": _json(model.schema_name)},
        "responses": {
            "200": {"description": "Updated.", "headers": {"ETag": "ETag"},
                    "content": _json(item_ref)},
            **_errors("400", "404", "409", "412", "413", "415"),
        },
    }
    spec.path(
        path=f"{model.path}/{{id}}",
        operations={
            "get": {
                "tags": [model.tag],
                "parameters": tenant + [id_param],
                "responses": {
                    "200": {"description": "The record.", "headers": {"ETag": "ETag"},
                            "content": _json(item_ref)},
                    **_errors("400", "404"),
                },
            },
            "put": {**update, "summary": "Update (partial)"},
            "patch": {**update, "summary": "Update (partial)"},
            "delete": {
                "tags": [model.tag],
                "parameters": tenant + [id_param, if_match],
                "description": f"Refused with 409 while {model.delete_blocked_by} reference it."
                if model.delete_blocked_by else "Delete the record.",
                "responses": {"204": {"description": "Deleted."}, **_errors("400", "404", "409", "412")},
            },
        },
    )


@functools.cache
def spec_bytes(models: tuple[Model, ...], app_name: str) -> bytes:
    """The document as served; built once per process (it only changes with the code)."""
    return json.dumps(build_spec(models, app_name)).encode()


def build_spec(models: Iterable[Model], app_name: str = "Tolstoy") -> dict:
    """The whole OpenAPI 3.1 document as a dict."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title=app_name,
        version=__version__,
        openapi_version="3.1.0",
        plugins=[plugin],
        info={"description": "Multi-tenant workflow automation: tools, actions, flows and their execution logs."},
    )
    plugin.map_to_openapi_type(fieldtypes.Timestamp, "string", "date-time")
    plugin.map_to_openapi_type(fieldtypes.JSONObject, "object", None)
    for name, schema in SCHEMAS.items():
        spec.components.schema(name, schema=schema)
    # Fields whose accepted shapes marshmallow cannot describe by itself.
    for name in ("Action",):
        props = spec.components.schemas[name]["properties"]
        props["inputSchema"] = {
            "description": "JSON Schema object, or the original service's array of field definitions (stored converted).",
            "oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}, {"type": "null"}],
        }
        props["executeIf"] = {"oneOf": [{"type": "string"}, {"type": "object"}, {"type": "null"}]}
    spec.components.schemas["Flow"]["properties"]["steps"]["items"] = {"$ref": "#/components/schemas/Step"}
    spec.components.schemas["Step"]["properties"]["config"]["description"] = (
        "action: {actionId | actionKey, inputs}; http_request: {method, url, headers, body}; "
        "delay: {ms}; transform: {output}; foreach: {items, step (any step but foreach, without id), "
        "concurrency (1-50, default 1), continueOnError (default false)}; subflow: {flowId | flowKey (exactly "
        "one: a flow of the organization, or its key), version?, variables, wait (default true)}; "
        "wait: {signal, timeoutMs, onTimeout}."
    )

    spec.components.parameter("OrgId", "header", {
        "name": "X-Org-ID", "required": True, "schema": {"type": "string", "format": "uuid"},
        "description": "The caller's organization."})
    spec.components.parameter("UserId", "header", {
        "name": "X-User-ID", "required": False, "schema": {"type": "string", "format": "uuid"},
        "description": "Acting user; must belong to the organization when sent."})
    spec.components.parameter("UserIdRequired", "header", {
        "name": "X-User-ID", "required": True, "schema": {"type": "string", "format": "uuid"},
        "description": "Acting user, recorded on the new row."})
    spec.components.parameter("Limit", "query", {
        "name": "limit", "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": fieldtypes.MAX_PAGE, "default": fieldtypes.DEFAULT_PAGE}})
    spec.components.parameter("Cursor", "query", {
        "name": "cursor", "required": False, "schema": {"type": "string"},
        "description": "Opaque cursor from X-Next-Cursor."})
    spec.components.parameter("IfMatch", "header", {
        "name": "If-Match", "required": False, "schema": {"type": "string"},
        "description": "Apply only if the record's ETag still matches."})
    spec.components.security_scheme("apiKey", {
        "type": "http", "scheme": "bearer",
        "description": "TOLSTOY_AUTH_MODE=api_key: `Authorization: Bearer <API key>`. A key's scopes decide what "
                       "it may do: read (GET), write (create, change, delete), execute (run flows and actions, "
                       "cancel, retry, resolve), admin (the organization's API keys), impersonate (act as any "
                       "user: call per-user tools with their connected accounts, connect one for them; a key "
                       "bound to a user, userId, acts as that user only); a missing scope is a 403 naming it. "
                       "X-User-ID only records who a request is for. In headers mode no credential is sent "
                       "(X-Org-ID names the organization, and the gateway vouches for X-User-ID)."})
    spec.options["security"] = [{"apiKey": []}, {}]
    spec.components.header("Link", {"schema": {"type": "string"}, "description": 'Relative URL of the next page, rel="next".'})
    spec.components.header("NextCursor", {"schema": {"type": "string"}, "description": "Cursor of the next page."})
    spec.components.header("Location", {"schema": {"type": "string"}, "description": "Relative path of the new record."})
    spec.components.header("ETag", {"schema": {"type": "string"}, "description": "Strong entity tag."})

    for model in models:
        _crud_paths(spec, model)

    flow_params = _tenant_params() + [
        {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
    ]
    spec.path(path="/flows/{id}/versions", operations={"get": {
        "tags": ["Flows"], "summary": "Every version of a flow's steps, newest first",
        "parameters": flow_params + ["Limit",
                                     "Cursor"],
        "responses": {"200": {"description": "One page of versions.",
                              "headers": {"Link": "Link",
                                          "X-Next-Cursor": "NextCursor"},
                              "content": _json("FlowVersion", many=True)},
                      **_errors("400", "404")}}})
    spec.path(path="/flows/{id}/versions/{version}", operations={"get": {
        "tags": ["Flows"], "summary": "One version of a flow",
        "parameters": flow_params + [{"name": "version", "in": "path", "required": True,
                                      "schema": {"type": "integer", "minimum": 1}}],
        "responses": {"200": {"description": "The version.", "content": _json("FlowVersion")},
                      **_errors("400", "404")}}})

    def simple(path: str, summary: str, ref: str, unhealthy: bool = False) -> None:
        responses = {"200": {"description": summary, "content": _json(ref)}}
        if unhealthy:
            responses["503"] = {"description": "The database does not answer.", "content": _json("Status")}
        spec.path(path=path, operations={"get": {"tags": ["Health"], "summary": summary, "responses": responses}})

    _quota_paths(spec)
    _engine_paths(spec)
    _trigger_paths(spec)
    _webhook_paths(spec)
    _api_key_paths(spec)
    _audit_paths(spec)
    _compat_paths(spec)
    simple("/health", "The process is up (no database call).", "Health")
    simple("/status", "The database answers.", "Status", unhealthy=True)
    for path in ("/status/detailed", "/detailed"):
        spec.path(path=path, operations={"get": {
            "tags": ["Health"], "summary": "Database latency, pool, migration version, counts, process and config",
            "description": "For operators: in api_key mode only the admin token (TOLSTOY_ADMIN_TOKEN) reads it "
                           "(401 without a token, 403 with an organization's key); the shipped Nginx answers "
                           "it to the monitoring host only.",
            "responses": {"200": {"description": "Details.", "content": {"application/json": {"schema": {"type": "object"}}}},
                          **_errors()}}})
    simple("/version", "Name and versions of the service.", "Version")
    spec.path(path="/openapi.json", operations={"get": {"tags": ["Docs"], "summary": "This document",
              "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}})
    spec.path(path="/docs", operations={"get": {"tags": ["Docs"], "summary": "Interactive documentation",
              "responses": {"200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}}}})
    return spec.to_dict()


def _quota_paths(spec: APISpec) -> None:
    """An organization's quotas (the operator's overrides) and its usage against them."""
    org = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}]
    who = ("No tenant header. In api_key mode an organization's key reads its own organization (another is a "
           "404) and the admin token any; in headers mode any.")
    update = {"tags": ["Organizations"], "summary": "Set quotas of the organization (null: back to the default)",
              "description": "The operator's: the admin token in api_key mode (an organization's key is a 403); "
                             "fields not sent stay as they are. queuedRuns and storedBytes bind new runs at once; "
                             "requestsPerSecond and requestBurst within 30 s in each API process.",
              "parameters": [*org, "IfMatch"], "requestBody": {"required": True, "content": _json("Quotas")},
              "responses": {"200": {"description": "The quotas.", "headers": {"ETag": "ETag"},
                                    "content": _json("Quotas")}, **_errors("400", "404", "412", "413", "415")}}
    spec.path(path="/organizations/{id}/quotas", operations={
        "get": {"tags": ["Organizations"], "summary": "The organization's quotas: overrides and those in force",
                "description": who, "parameters": org,
                "responses": {"200": {"description": "The quotas.", "headers": {"ETag": "ETag"},
                                      "content": _json("Quotas")}, **_errors("404")}},
        "put": update, "patch": update})
    spec.path(path="/organizations/{id}/usage", operations={"get": {
        "tags": ["Organizations"], "summary": "The organization's usage against each of its quotas",
        "description": who + " Runs and stored bytes are the database's; requests per second are what the API "
                             "process that answers saw (each process has its own bucket).",
        "parameters": org,
        "responses": {"200": {"description": "Usage and limits.", "content": _json("Usage")}, **_errors("404")}}})


def _engine_paths(spec: APISpec) -> None:
    """Flow execution, action execution and tool credential routes."""
    uuid_param = {"in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
    flow = [*_tenant_params(), {"name": "id", **uuid_param}]
    acting = [*_tenant_params(user_required=True), {"name": "id", **uuid_param}]
    execution = {"name": "executionId", **uuid_param}
    accepted = {"202": {"description": "Queued; follow it at Location.",
                        "headers": {"Location": "Location"}, "content": _json("RunAccepted")}}
    idem = {"name": "Idempotency-Key", "in": "header", "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": 200},
            "description": "Repeating a key returns the run it first created."}
    spec.path(path="/flows/{id}/execute", operations={"post": {
        "tags": ["Executions"], "summary": "Queue a run of the flow's current version",
        "parameters": acting + [idem], "requestBody": {"required": True, "content": _json("Execute")},
        "responses": {**accepted, **_errors("400", "404", "413", "415")}}})
    spec.path(path="/flows/{id}/executions", operations={
        "get": {"tags": ["Executions"], "summary": "The flow's runs, newest first",
                "parameters": flow + ["Limit", "Cursor", {
                    "name": "parentExecutionId", "in": "query", "required": False,
                    "schema": {"type": "string", "format": "uuid"},
                    "description": "Only the runs this run's subflow steps queued."}],
                "responses": {"200": {"description": "One page.",
                                      "headers": {"Link": "Link", "X-Next-Cursor": "NextCursor"},
                                      "content": _json("Run", many=True)}, **_errors("400", "404")}},
        "delete": {"tags": ["Executions"],
                   "summary": "Purge the flow's finished runs and the engine's log rows of them",
                   "parameters": flow,
                   "responses": {"204": {"description": "Purged."},
                                 "409": {"description": "Some runs have not finished (cancel them first).",
                                         "content": _json("Error")},
                                 **_errors("400", "404")}}})
    spec.path(path="/flows/{id}/executions/{executionId}", operations={"get": {
        "tags": ["Executions"], "summary": "One run with its step checkpoints",
        "parameters": flow + [execution],
        "responses": {"200": {"description": "The run.", "content": _json("RunDetail")}, **_errors("400", "404")}}})
    spec.path(path="/flows/{id}/executions/{executionId}/cancel", operations={"post": {
        "tags": ["Executions"], "summary": "Cancel (now if queued or sleeping, else at the next step)",
        "parameters": flow + [execution],
        "responses": {"202": {"description": "Cancelled or cancelling.", "content": _json("RunAccepted")},
                      **_errors("400", "404", "409")}}})
    spec.path(path="/flows/{id}/executions/{executionId}/retry", operations={"post": {
        "tags": ["Executions"], "summary": "Run a failed or cancelled run again from its failed step",
        "parameters": acting + [execution],
        "responses": {**accepted, **_errors("400", "404", "409")}}})
    spec.path(path="/flows/{id}/executions/{executionId}/steps/{stepId}/resolve", operations={"post": {
        "tags": ["Executions"],
        "summary": "Say what became of a call whose outcome is unknown; the run goes on",
        "parameters": acting + [execution, {"name": "stepId", "in": "path", "required": True,
                                            "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": _json("Resolve")},
        "responses": {**accepted, **_errors("400", "404", "409", "413", "415")}}})
    signal = {"name": "signal", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": flow_steps.SIGNAL_NAME}}
    spec.path(path="/flows/{id}/executions/{executionId}/signals/{signal}", operations={"post": {
        "tags": ["Executions"],
        "summary": "Send a signal to a run; its wait step returns the payload (idempotent per Idempotency-Key)",
        "parameters": flow + [execution, signal, idem],
        "requestBody": {"required": True, "content": _json("Signal")},
        "responses": {"202": {"description": "Stored; the run wakes if it waits for it.",
                              "content": _json("SignalAccepted")},
                      **_errors("400", "404", "409", "413", "415")}}})
    spec.path(path="/flows/{id}/executions/{executionId}/signals/{signal}/links", operations={"post": {
        "tags": ["Executions"], "summary": "An approval link (signed, expiring, single-use) for this run and signal",
        "parameters": flow + [execution, signal],
        "requestBody": {"required": True, "content": _json("Link")},
        "responses": {"201": {"description": "The link.", "content": _json("LinkCreated")},
                      **_errors("400", "404", "409", "413", "415")}}})
    token = {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}
    link_errors = {"401": {"description": "Not a valid link (malformed or tampered).", "content": _json("Error")},
                   "410": {"description": "The link expired, or was used.", "content": _json("Error")}}
    spec.path(path="/approvals/{token}", operations={
        "get": {"tags": ["Executions"], "security": [{}],
                "summary": "What an approval link approves (no credentials; does nothing)",
                "parameters": [token],
                "responses": {"200": {"description": "The run, signal, approver and expiry.",
                                      "content": {"application/json": {"schema": {"type": "object"}}}},
                              **link_errors, **_errors("404")}},
        "post": {"tags": ["Executions"], "security": [{}],
                 "summary": "Approve or reject through the link: the signal {approved, approver, comment, at}",
                 "parameters": [token], "requestBody": {"required": True, "content": _json("Approval")},
                 "responses": {"202": {"description": "Delivered.", "content": _json("SignalAccepted")},
                               **link_errors, **_errors("400", "404", "409", "413", "415")}}})
    spec.path(path="/flows/{id}/metrics", operations={"get": {
        "tags": ["Executions"], "summary": "Run counts, success rate and duration percentiles",
        "parameters": flow, "responses": {"200": {"description": "Metrics.", "content": _json("FlowMetrics")},
                                          **_errors("400", "404")}}})
    by_id_or_key = [*_tenant_params(user_required=True),
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
                     "description": "The action's id, or its key (as the original service)."}]
    spec.path(path="/actions/{id}/execute", operations={"post": {
        "tags": ["Actions"], "summary": "Call the action's tool now (inputs checked against inputSchema)",
        "parameters": by_id_or_key, "requestBody": {"required": True, "content": _json("ActionExecute")},
        "responses": {"200": {"description": "The tool's answer (an upstream error is success: false).",
                              "content": _json("ActionResult")}, **_errors("400", "404", "413", "415"),
                      "403": {"description": "A missing scope; or the tool is per-user and the API key may not act "
                                             "as X-User-ID (bound to another user, no impersonate scope).",
                              "content": _json("Error")}}}})
    spec.path(path="/tools/{id}/auth", operations={
        "post": {"tags": ["Tools"], "summary": "Store a credential (encrypted); the answer is masked",
                 "parameters": flow, "requestBody": {"required": True, "content": _json("Credential")},
                 "responses": {"201": {"description": "Stored.", "headers": {"Location": "Location"},
                                       "content": _json("Credential")}, **_errors("400", "404", "413", "415")}},
        "get": {"tags": ["Tools"], "summary": "The tool's credentials, masked", "parameters": flow,
                "responses": {"200": {"description": "Credentials.", "content": _json("Credential", many=True)},
                              **_errors("400", "404")}},
        "delete": {"tags": ["Tools"], "summary": "Delete every organization-level credential of the tool",
                   "parameters": flow,
                   "responses": {"200": {"description": "{success: true, message}.",
                                         "content": {"application/json": {"schema": {"type": "object"}}}},
                                 **_errors("400", "404")}}})
    spec.path(path="/tools/{id}/auth/{name}", operations={"delete": {
        "tags": ["Tools"], "summary": "Delete a credential by name",
        "parameters": flow + [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"204": {"description": "Deleted."}, **_errors("400", "404")}}})


def _trigger_paths(spec: APISpec) -> None:
    """Triggers on a flow, their inbox, and the public webhook door."""
    uuid_param = {"in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
    flow = [*_tenant_params(), {"name": "id", **uuid_param}]
    trigger = [*flow, {"name": "triggerId", **uuid_param}]
    page = {"Link": "Link", "X-Next-Cursor": "NextCursor"}
    spec.path(path="/flows/{id}/triggers", operations={
        "get": {"tags": ["Triggers"], "summary": "The flow's triggers, newest first (schedules with nextRunAt)",
                "parameters": flow + ["Limit", "Cursor"],
                "responses": {"200": {"description": "One page.", "headers": page,
                                      "content": _json("Trigger", many=True)}, **_errors("400", "404")}},
        "post": {"tags": ["Triggers"], "summary": "Add a webhook or schedule trigger; a webhook's secret is shown "
                                                  "in this answer only",
                 "parameters": flow, "requestBody": {"required": True, "content": _json("Trigger")},
                 "responses": {"201": {"description": "Created.", "headers": {"Location": "Location", "ETag": "ETag"},
                                       "content": _json("TriggerCreated")},
                               **_errors("400", "404", "413", "415")}}})
    update = {"tags": ["Triggers"], "summary": "Enable or disable a trigger",
              "parameters": trigger + ["IfMatch"], "requestBody": {"required": True, "content": _json("TriggerPatch")},
              "responses": {"200": {"description": "Updated.", "headers": {"ETag": "ETag"},
                                    "content": _json("Trigger")}, **_errors("400", "404", "412", "413", "415")}}
    spec.path(path="/flows/{id}/triggers/{triggerId}", operations={
        "get": {"tags": ["Triggers"], "summary": "One trigger", "parameters": trigger,
                "responses": {"200": {"description": "The trigger.", "headers": {"ETag": "ETag"},
                                      "content": _json("Trigger")}, **_errors("400", "404")}},
        "patch": update, "put": update,
        "delete": {"tags": ["Triggers"], "summary": "Delete a trigger and its inbox",
                   "parameters": trigger + ["IfMatch"],
                   "responses": {"204": {"description": "Deleted."}, **_errors("400", "404", "412")}}})
    spec.path(path="/flows/{id}/triggers/{triggerId}/deliveries", operations={"get": {
        "tags": ["Triggers"], "summary": "The webhook trigger's inbox, newest first",
        "parameters": trigger + ["Limit", "Cursor"],
        "responses": {"200": {"description": "One page.", "headers": page, "content": _json("Delivery", many=True)},
                      **_errors("400", "404")}}})
    spec.path(path="/flows/{id}/triggers/{triggerId}/deliveries/{deliveryId}/replay", operations={"post": {
        "tags": ["Triggers"], "summary": "Start a new run from a verified delivery's stored body",
        "parameters": trigger + [{"name": "deliveryId", **uuid_param}],
        "responses": {"202": {"description": "Queued; follow it at Location.", "headers": {"Location": "Location"},
                              "content": _json("RunAccepted")},
                      "409": {"description": "The delivery was refused (only verified ones are kept whole).",
                              "content": _json("Error")},
                      **_errors("400", "404")}}})
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    spec.path(path="/hooks/{triggerId}", operations={"post": {
        "tags": ["Triggers"], "security": [{}],
        "summary": "Public webhook of a trigger: a signed JSON body starts a run with it as variables",
        "description": "No tenant header. Signed with X-Tolstoy-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "
                       "\"<t>.<raw body>\")> (or the trigger's GitHub, Stripe or Slack preset).",
        "parameters": [{"name": "triggerId", **uuid_param},
                       {"name": "X-Tolstoy-Signature", "in": "header", "required": False,
                        "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {
            "202": {"description": "Verified, recorded and queued.", "content": _json("HookAccepted")},
            "200": {"description": "A redelivered event (same sender delivery id): the first run.",
                    "content": _json("HookAccepted")},
            "400": {"description": "The JSON body is not an object.", "content": error},
            "401": {"description": "Bad or missing signature, stale timestamp (> 300 s) or replay.",
                    "content": error},
            "403": {"description": "The trigger is disabled.", "content": error},
            "404": {"description": "No such webhook trigger.", "content": error},
            "413": _error("413"), "415": _error("415"),
            "429": {"description": "The run would take the organization over its queuedRuns or storedBytes quota: "
                                   "nothing is recorded; send it again after Retry-After.", "content": error},
            "503": {"description": "The database (or the secret's key) is unavailable.", "content": error}}}})


def _webhook_paths(spec: APISpec) -> None:
    """Outbound event webhooks and their deliveries."""
    uuid_param = {"in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
    tenant = _tenant_params()
    item = [*tenant, {"name": "id", **uuid_param}]
    page = {"Link": "Link", "X-Next-Cursor": "NextCursor"}
    tags = ["Webhooks"]
    spec.path(path="/webhooks", operations={
        "get": {"tags": tags, "summary": "The organization's webhooks, newest first (secrets masked)",
                "parameters": tenant + ["Limit", "Cursor"],
                "responses": {"200": {"description": "One page.", "headers": page,
                                      "content": _json("Webhook", many=True)}, **_errors("400")}},
        "post": {"tags": tags, "summary": "Subscribe a URL to event types; the secret is shown in this answer only",
                 "parameters": tenant, "requestBody": {"required": True, "content": _json("Webhook")},
                 "responses": {"201": {"description": "Created.", "headers": {"Location": "Location"},
                                       "content": _json("WebhookCreated")}, **_errors("400", "413", "415")}}})
    spec.path(path="/webhooks/event-types", operations={"get": {
        "tags": tags, "summary": "The event types a webhook may subscribe to", "parameters": tenant,
        "responses": {"200": {"description": "Event types.", "content": {"application/json": {"schema": {
            "type": "array", "items": {"type": "string"}}}}}, **_errors("400")}}})
    update = {"tags": tags, "summary": "Change the fields sent (masked values sent back keep the stored ones)",
              "parameters": item + ["IfMatch"], "requestBody": {"required": True, "content": _json("Webhook")},
              "responses": {"200": {"description": "Updated.", "headers": {"ETag": "ETag"},
                                    "content": _json("Webhook")}, **_errors("400", "404", "412", "413", "415")}}
    spec.path(path="/webhooks/{id}", operations={
        "get": {"tags": tags, "summary": "One webhook (secret and header values masked)", "parameters": item,
                "responses": {"200": {"description": "The webhook.", "headers": {"ETag": "ETag"},
                                      "content": _json("Webhook")}, **_errors("400", "404")}},
        "patch": update, "put": update,
        "delete": {"tags": tags, "summary": "Delete a webhook and its deliveries", "parameters": item + ["IfMatch"],
                   "responses": {"204": {"description": "Deleted."}, **_errors("400", "404", "412")}}})
    spec.path(path="/webhooks/{id}/toggle", operations={"patch": {
        "tags": tags, "summary": "Switch the webhook on or off (off cancels its pending deliveries)",
        "parameters": item + ["IfMatch"],
        "responses": {"200": {"description": "Toggled.", "headers": {"ETag": "ETag"}, "content": _json("Webhook")},
                      **_errors("400", "404", "412", "413", "415")}}})
    spec.path(path="/webhooks/{id}/test", operations={"post": {
        "tags": tags, "summary": "Queue a webhook.test event for this webhook; the workers send it like any other",
        "parameters": item,
        "responses": {"202": {"description": "Queued.", "content": _json("WebhookTest")},
                      "409": {"description": "The webhook is disabled.", "content": _json("Error")},
                      **_errors("400", "404", "413", "415")}}})
    spec.path(path="/webhooks/{id}/deliveries", operations={"get": {
        "tags": tags, "summary": "The webhook's deliveries, newest first, each with every attempt",
        "parameters": item + ["Limit", "Cursor"],
        "responses": {"200": {"description": "One page.", "headers": page,
                              "content": _json("WebhookDelivery", many=True)}, **_errors("400", "404")}}})


def _compat_paths(spec: APISpec) -> None:
    """Routes the original service's SDK calls (docs/api.md, "Compatibility with the original service")."""
    uuid_param = {"in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
    tool = [*_tenant_params(), {"name": "id", **uuid_param}]
    tool_key = {"name": "toolKey", "in": "path", "required": True,
                "schema": {"type": "string", "pattern": tools.TOOL_KEY}}
    text = {"text/plain": {"schema": {"type": "string"}}}
    spec.path(path="/", operations={"get": {
        "tags": ["Docs"], "summary": "One line naming the service and pointing at /docs", "security": [{}],
        "responses": {"200": {"description": "Welcome.", "content": text}}}})
    spec.path(path="/tools/{id}/secrets", operations={
        "post": {"tags": ["Tools"], "summary": "Store the original's free-form secrets as the tool's default "
                                               "credential (typed by its authType); the answer is masked",
                 "parameters": tool, "requestBody": {"required": True, "content": _json("Secrets")},
                 "responses": {"201": {"description": "Stored.", "headers": {"Location": "Location"},
                                       "content": _json("ToolSecrets")}, **_errors("400", "404", "413", "415")}},
        "get": {"tags": ["Tools"], "summary": "The tool's secrets, masked (unmask=true is refused: write-only)",
                "parameters": tool + [{"name": "unmask", "in": "query", "required": False,
                                       "schema": {"type": "boolean"}}],
                "responses": {"200": {"description": "Masked.", "content": _json("ToolSecrets")},
                              "403": {"description": "unmask=true.", "content": _json("Error")},
                              **_errors("400", "404")}},
        "delete": {"tags": ["Tools"], "summary": "Delete the tool's default credential", "parameters": tool,
                   "responses": {"204": {"description": "Deleted (or there was none)."}, **_errors("400", "404")}}})
    spec.path(path="/tools/secrets", operations={"get": {
        "tags": ["Tools"], "summary": "Every tool, whether it has secrets and under which keys",
        "parameters": [*_tenant_params(), "Limit", "Cursor"],
        "responses": {"200": {"description": "One page.", "headers": {"Link": "Link", "X-Next-Cursor": "NextCursor"},
                              "content": _json("ToolSecretsSummary", many=True)}, **_errors("400")}}})
    spec.path(path="/auth/{toolKey}/login", operations={"get": {
        "tags": ["Connections"], "summary": "Start a user's OAuth connection to a per-user tool: 302 to its "
                                            "authorizeUrl (authorization code + PKCE S256)",
        "parameters": [*_tenant_params(), tool_key, {"name": "userId", "in": "query", "required": False,
                                                     "schema": {"type": "string", "format": "uuid"},
                                                     "description": "The user who connects (else X-User-ID)."}],
        "responses": {"302": {"description": "To the provider's consent page."},
                      **_errors("400", "404"),
                      "403": {"description": "userId is not the acting user (X-User-ID); or, with an API key, the "
                                             "key may not act as that user (not bound to them, no impersonate "
                                             "scope).", "content": _json("Error")}}}})
    spec.path(path="/auth/{toolKey}/callback", operations={"get": {
        "tags": ["Connections"], "security": [{}],
        "summary": "Where the provider sends the user back: exchanges the code, keeps the user's tokens",
        "parameters": [tool_key] + [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                                    for name in ("code", "state", "error", "error_description")],
        "responses": {"200": {"description": "Connected.", "content": _json("Connected")},
                      "400": {"description": "A bad, expired or reused state; the provider's error or its refusal "
                                             "of the code.", "content": _json("Error")},
                      "404": {"description": "toolKey is not a tool key at all (malformed).", "content": _json("Error")},
                      "502": {"description": "The provider's token endpoint failed.", "content": _json("Error")}}}})
    user = [*_tenant_params(), {"name": "id", **uuid_param}]
    not_theirs = {"description": "Not that user (headers mode: X-User-ID; api_key mode: a key bound to them) "
                                 "and no API key with the admin scope.", "content": _json("Error")}
    spec.path(path="/users/{id}/connections", operations={"get": {
        "tags": ["Connections"], "summary": "The tools the user connected (never their tokens)",
        "parameters": user + ["Limit", "Cursor"],
        "responses": {"200": {"description": "One page.", "headers": {"Link": "Link", "X-Next-Cursor": "NextCursor"},
                              "content": _json("UserConnection", many=True)}, **_errors("400", "404"),
                      "403": not_theirs}}})
    spec.path(path="/users/{id}/connections/{toolId}", operations={"delete": {
        "tags": ["Connections"], "summary": "Disconnect the user from the tool (forget their tokens)",
        "parameters": user + [{"name": "toolId", **uuid_param}],
        "responses": {"204": {"description": "Disconnected."}, **_errors("400", "404"), "403": not_theirs}}})


def _api_key_paths(spec: APISpec) -> None:
    """``/api-keys``: an organization's keys (used when TOLSTOY_AUTH_MODE=api_key)."""
    spec.path(path="/api-keys", operations={
        "get": {"tags": ["API keys"], "summary": "Active keys, newest first (prefixes only, never the keys)",
                "parameters": _tenant_params() + ["Limit", "Cursor"],
                "responses": {"200": {"description": "One page.",
                                      "headers": {"Link": "Link", "X-Next-Cursor": "NextCursor"},
                                      "content": _json("ApiKey", many=True)}, **_errors("400")}},
        "post": {"tags": ["API keys"], "summary": "Create a key; apiKey is shown in this answer only",
                 "parameters": _tenant_params(), "requestBody": {"required": True, "content": _json("ApiKey")},
                 "responses": {"201": {"description": "Created.", "headers": {"Location": "Location"},
                                       "content": _json("ApiKey")}, **_errors("400", "413", "415"),
                               "403": {"description": "The calling key lacks the admin scope, or a scope it "
                                                      "would grant; or it would bind the key to a user it may "
                                                      "not act as itself (not bound to them, no impersonate).",
                                       "content": _json("Error")}}}})
    spec.path(path="/api-keys/{id}", operations={"delete": {
        "tags": ["API keys"], "summary": "Revoke a key at once",
        "parameters": _tenant_params() + [{"name": "id", "in": "path", "required": True,
                                           "schema": {"type": "string", "format": "uuid"}}],
        "responses": {"204": {"description": "Revoked."}, **_errors("400", "404")}}})


def _audit_paths(spec: APISpec) -> None:
    """``/audit-events``: the organization's configuration changes (tolstoy/api/audit.py)."""
    query = audit.AuditEventsQuery()
    filters = [{"name": name, "in": "query", "required": False, "description": f.metadata.get("description", ""),
                "schema": {"type": "boolean"} if name == "actorAdmin" else
                {"type": "string", **({"format": "uuid"} if name in ("targetId", "actorUserId") else {}),
                 **({"enum": list(audit.AUDIT_TARGET_TYPES)} if name == "targetType" else {})}}
               for name, f in query.fields.items() if name not in ("limit", "cursor")]
    spec.path(path="/audit-events", operations={"get": {
        "tags": ["Audit"], "summary": "Configuration changes, newest first: who changed which record, and how "
                                      "(one event per record a request created, changed or deleted; secrets masked)",
        "parameters": _tenant_params() + ["Limit", "Cursor"] + filters,
        "responses": {"200": {"description": "One page.", "headers": {"Link": "Link", "X-Next-Cursor": "NextCursor"},
                              "content": _json("AuditEvent", many=True)}, **_errors("400"),
                      "403": {"description": "The calling key lacks the admin scope.", "content": _json("Error")}}}})


DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/docs-init.js"></script>
</body>
</html>
"""

# Kept out of the page so a strict Content-Security-Policy needs no inline script.
DOCS_INIT = """window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});
"""


class OpenAPI:
    """``GET /openapi.json``: built once per process."""

    access = "public"

    def __init__(self, models: tuple[Model, ...], app_name: str):
        self.body = spec_bytes(models, app_name)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The spec."""
        resp.data = self.body
        resp.content_type = falcon.MEDIA_JSON


class Docs:
    """``GET /docs``: Swagger UI from files shipped in a Python package (no CDN)."""

    access = "public"

    def __init__(self, app_name: str):
        self.page = DOCS_PAGE.format(title=app_name).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The HTML page."""
        resp.data = self.page
        resp.content_type = falcon.MEDIA_HTML

    def on_get_init(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The page's start-up script."""
        resp.data = DOCS_INIT.encode()
        resp.content_type = falcon.MEDIA_JS
