"""The WSGI application: ``create_app(config, db)`` wires routes, middleware and
error handling; ``get_app()`` is what Gunicorn loads.

The route table below is the whole HTTP surface: each row names the resource
module that answers it, and each model's module names its SQL file."""

from __future__ import annotations

import logging
from urllib.parse import urlparse

import falcon

from .. import engine, logs
from ..config import Config
from ..db import migrate
from ..db.database import Database
from ..jsonsafe import dumps
from . import (
    actions,
    api_keys,
    audit,
    compat,
    connections,
    console,
    errors,
    execution_logs,
    flows,
    health,
    hooks,
    openapi,
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
from .middleware import (
    BodyGuardMiddleware,
    MetricsMiddleware,
    RequestContextMiddleware,
    RequestIdMiddleware,
    SecurityHeadersMiddleware,
    allowed_methods,
)
from .tenancy import TenantMiddleware

log = logging.getLogger("tolstoy.api")

# The models served as collection + item, in the order the OpenAPI document lists them.
MODELS = (organizations.MODEL, users.MODEL, tools.MODEL, actions.MODEL, flows.MODEL, execution_logs.MODEL)


def build_routes(db: Database, config: Config,
                 buckets: quotas.RequestBuckets | None = None) -> list[tuple[str, object, str | None]]:
    """Every route as (URI template, resource, responder suffix); ``buckets``: the process's request
    quota per organization (the tenant middleware's), which the usage route shows."""
    buckets = buckets or quotas.RequestBuckets.from_config(config)
    tool_calls = engine.tools(config, db)
    flow_item = flows.Item(db)
    action_item = actions.Item(db, tool_calls, config)
    flow_runs = runs.FlowRuns(db, tool_calls.vault)
    run_signals = signals.RunSignals(db, config)
    credentials = tool_credentials.ToolCredentials(db, tool_calls.vault)
    flow_triggers = triggers.FlowTriggers(db, tool_calls.vault)
    outbound_hooks = webhooks.Webhooks(db, tool_calls.vault, config.allow_networks)
    status = health.Status(db, config)
    detailed = health.DetailedStatus(db, config)
    docs = openapi.Docs(config.app_name)
    secrets = compat.ToolSecrets(db, tool_calls.vault)
    user_connections = connections.UserConnections(db)
    return [
        ("/", compat.Welcome(), None),
        ("/organizations", organizations.Collection(db, config.api_key_secret), None),
        ("/organizations/{id}", organizations.Item(db), None),
        ("/organizations/{id}/quotas", quotas.Quotas(db, config), None),
        ("/organizations/{id}/usage", quotas.Usage(db, config, buckets), None),
        ("/api-keys", api_keys.Collection(db, config.api_key_secret), None),
        ("/api-keys/{id}", api_keys.Item(db), None),
        ("/audit-events", audit.AuditEvents(db), None),
        ("/users", users.Collection(db), None),
        ("/users/{id}", users.Item(db), None),
        ("/users/{id}/connections", user_connections, None),
        ("/users/{id}/connections/{tool_id}", user_connections, "tool"),
        ("/tools", tools.Collection(db), None),
        ("/tools/secrets", secrets, None),
        ("/tools/{id}", tools.Item(db), None),
        ("/tools/{id}/secrets", secrets, "item"),
        ("/tools/{id}/auth", credentials, None),
        ("/tools/{id}/auth/{name}", credentials, "named"),
        ("/auth/{tool_key}/login", connections.OAuthLogin(db, tool_calls, config), None),
        ("/auth/{tool_key}/callback", connections.OAuthCallback(db, tool_calls, config), None),
        ("/actions", actions.Collection(db), None),
        ("/actions/{id}", action_item, None),
        ("/actions/{id}/execute", action_item, "execute"),
        ("/flows", flows.Collection(db), None),
        ("/flows/{id}", flow_item, None),
        ("/flows/{id}/versions", flow_item, "versions"),
        ("/flows/{id}/versions/{version}", flows.Version(db), None),
        ("/flows/{id}/execute", flow_runs, "execute"),
        ("/flows/{id}/executions", flow_runs, "executions"),
        ("/flows/{id}/executions/{execution_id}", flow_runs, "execution"),
        ("/flows/{id}/executions/{execution_id}/cancel", flow_runs, "cancel"),
        ("/flows/{id}/executions/{execution_id}/retry", flow_runs, "retry"),
        ("/flows/{id}/executions/{execution_id}/steps/{step_id}/resolve", flow_runs, "resolve"),
        ("/flows/{id}/executions/{execution_id}/signals/{signal}", run_signals, "signal"),
        ("/flows/{id}/executions/{execution_id}/signals/{signal}/links", run_signals, "links"),
        ("/approvals/{token}", signals.Approval(db, config), None),
        ("/flows/{id}/metrics", flow_runs, "metrics"),
        ("/flows/{id}/triggers", flow_triggers, "triggers"),
        ("/flows/{id}/triggers/{trigger_id}", flow_triggers, "trigger"),
        ("/flows/{id}/triggers/{trigger_id}/deliveries", flow_triggers, "deliveries"),
        ("/flows/{id}/triggers/{trigger_id}/deliveries/{delivery_id}/replay", triggers.DeliveryReplay(flow_triggers),
         None),
        ("/hooks/{trigger_id}", hooks.Hook(db, tool_calls.vault, trusted_proxies=config.trusted_proxies,
                                           max_sources=config.hook_refused_sources), None),
        ("/webhooks", outbound_hooks, None),
        ("/webhooks/event-types", outbound_hooks, "event_types"),
        ("/webhooks/{id}", outbound_hooks, "item"),
        ("/webhooks/{id}/toggle", outbound_hooks, "toggle"),
        ("/webhooks/{id}/test", outbound_hooks, "test"),
        ("/webhooks/{id}/deliveries", outbound_hooks, "deliveries"),
        ("/execution-logs", execution_logs.Collection(db), None),
        ("/execution-logs/{id}", execution_logs.Item(db), None),
        ("/health", health.Health(), None),
        ("/status", status, None),
        ("/status/detailed", detailed, None),
        ("/detailed", detailed, None),
        ("/version", health.Version(config), None),
        ("/openapi.json", openapi.OpenAPI(MODELS, config.app_name), None),
        ("/docs", docs, None),
        ("/docs/static/docs-init.js", docs, "init"),
    ]


def admin_url(config: Config) -> str | None:
    """Where the /organizations routes' cross-tenant operations log in: ADMIN_DATABASE_URL (the
    tolstoy_admin role). Outside production, DATABASE_URL will do (as for the workers), unless it logs
    in as tolstoy_app, which sees no organization but its own: then its server as tolstoy_admin (local
    trust authentication, as `tolstoy dev` and the tests use). None: organization management is off."""
    if config.admin_database_url or config.is_production or not config.database_url:
        return config.admin_database_url
    if urlparse(config.database_url).username == migrate.APP_ROLE:
        return migrate.as_role(config.database_url, migrate.ADMIN_ROLE)
    return config.database_url


def admin_database(config: Config) -> Database | None:
    """The admin login's pool, for the /organizations routes' cross-tenant operations: rare, so small
    and without idle connections. None when not configured."""
    url = admin_url(config)
    if url is None:
        return None
    db = Database.from_config(config, url=url, min_size=0, max_size=2, application_name=f"{config.app_name}-admin")
    db.open()
    return db


def create_app(config: Config, db: Database, admin_db: Database | None = None) -> falcon.App:
    """A Falcon app serving the contract on the given (opened) database; ``admin_db`` is the admin
    login's pool (built from the configuration when not given)."""
    # Every unit of work sets the configured quota defaults the database enforces on new runs.
    db.use_quotas(config.database_quotas())
    buckets = quotas.RequestBuckets.from_config(config)
    routes = build_routes(db, config, buckets)
    methods = allowed_methods(routes)
    admin_db = admin_db or admin_database(config)
    if admin_db is not None:
        admin_db.use_quotas(config.database_quotas())
    tenancy = TenantMiddleware(db, methods, config, admin_db, buckets)
    app = falcon.App(
        middleware=[
            # First in, last out: its clock spans every other middleware.
            MetricsMiddleware(db),
            RequestIdMiddleware(),
            RequestContextMiddleware(),
            BodyGuardMiddleware(methods),
            SecurityHeadersMiddleware(config.cors_origins),
            tenancy,
            # After tenancy, whose context says who acts: who the request's changes are recorded as.
            audit.AuditMiddleware(),
        ]
    )
    # Answers are serialized with orjson (tolstoy.jsonsafe.dumps); request bodies are parsed
    # strictly by tolstoy.api.requests.read_json, never by this handler.
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = falcon.media.JSONHandler(dumps=dumps)
    app.req_options.strip_url_path_trailing_slash = True
    # Bodies are read by tolstoy.api.requests.read_json, which enforces the size cap.
    app.req_options.auto_parse_form_urlencoded = False
    for template, resource, suffix in routes:
        app.add_route(template, resource, suffix=suffix)
    app.add_static_route("/docs/static", openapi.DOCS_STATIC)
    # The run console: HTML for people, outside build_routes (the contract's routes) and the OpenAPI
    # document; its pages read through the same SQL and tenancy, its actions are the routes above.
    # One cache of API-key grants per process; its organization picker lists through the admin login.
    run_console = console.Console(db, config, tenancy.keys, admin_db, tenancy.buckets)
    for template, suffix in console.ROUTES:
        app.add_route(template, run_console, suffix=suffix)
    # Sinks and static routes added later win: the static files over the console's 404 sink.
    app.add_sink(console.NotFoundSink(run_console), console.SINK)
    app.add_static_route("/console/static", str(console.STATIC))
    # For operators, not clients: outside build_routes (the contract's routes) and the
    # OpenAPI document; Nginx only lets the monitoring host reach it.
    app.add_route("/metrics", health.Metrics(db))
    errors.install(app)
    return app


def get_app() -> falcon.App:
    """Gunicorn's entry point: configuration from the environment, pool opened in this worker."""
    logs.configure()
    config = Config.from_env()
    if admin_url(config) is None:
        log.warning("ADMIN_DATABASE_URL is not set: /organizations answers 503, except to an organization's "
                    "own API key (see docs/deploying.md)")
    db = Database.from_config(config)
    db.open()
    return create_app(config, db)
