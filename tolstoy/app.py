"""The WSGI application: ``create_app(config, db)`` wires routes, middleware and
error handling; ``get_app()`` is what Gunicorn loads."""

from __future__ import annotations

import falcon

from . import (
    actions,
    api_keys,
    engine,
    errors,
    execution_logs,
    executions,
    flows,
    health,
    logs,
    metrics,
    openapi,
    organizations,
    tool_credentials,
    tools,
    users,
)
from .config import Config
from .db import Database
from .middleware import BodyGuardMiddleware, RequestIdMiddleware, allowed_methods
from .queries import SQL
from .store import TableStore
from .security import SecurityHeadersMiddleware
from .tenancy import TenantMiddleware


def build_routes(db: Database, config: Config) -> list[tuple[str, object, str | None]]:
    """Every route as (URI template, resource, responder suffix)."""
    stores = {
        "organizations": TableStore(db, SQL.organizations, writable=("name",)),
        "users": TableStore(db, SQL.users, writable=("email", "name"), filters=("email",)),
        "tools": TableStore(db, SQL.tools, writable=("name", "base_url", "auth_type")),
        "actions": TableStore(
            db, SQL.actions,
            writable=("tool_id", "name", "key", "method", "endpoint", "headers", "input_schema", "execute_if"),
            json_columns=("headers", "input_schema", "execute_if"),
            filters=("tool_id",),
        ),
        "flows": TableStore(
            db, SQL.flows, writable=("name", "description", "steps"), json_columns=("steps",)
        ),
        "execution_logs": TableStore(
            db, SQL.execution_logs,
            writable=("flow_id", "execution_id", "step_key", "status", "inputs", "outputs", "error"),
            json_columns=("inputs", "outputs", "error"),
            filters=("flow_id", "execution_id", "status", "user_id"),
        ),
    }
    flow_item = flows.Item(db, stores["flows"])
    api_engine = engine.build(config, db, worker_id="api")
    runs = executions.FlowRuns(db)
    action_item = actions.Item(db, stores["actions"], api_engine)
    credentials = tool_credentials.ToolCredentials(db, api_engine.vault)
    status = health.Status(db, config)
    docs = openapi.Docs(config.app_name)
    return [
        ("/organizations", organizations.Collection(db, stores["organizations"], config.api_key_secret), None),
        ("/organizations/{id}", organizations.Item(db, stores["organizations"]), None),
        ("/api-keys", api_keys.Collection(db, config.api_key_secret), None),
        ("/api-keys/{id}", api_keys.Item(db), None),
        ("/users", users.Collection(db, stores["users"]), None),
        ("/users/{id}", users.Item(db, stores["users"]), None),
        ("/tools", tools.Collection(db, stores["tools"]), None),
        ("/tools/{id}", tools.Item(db, stores["tools"]), None),
        ("/tools/{id}/auth", credentials, None),
        ("/tools/{id}/auth/{name}", credentials, "named"),
        ("/actions", actions.Collection(db, stores["actions"]), None),
        ("/actions/{id}", action_item, None),
        ("/actions/{id}/execute", action_item, "execute"),
        ("/flows", flows.Collection(db, stores["flows"]), None),
        ("/flows/{id}", flow_item, None),
        ("/flows/{id}/versions", flow_item, "versions"),
        ("/flows/{id}/versions/{version}", flows.Version(db, stores["flows"]), None),
        ("/flows/{id}/execute", runs, "execute"),
        ("/flows/{id}/executions", runs, "executions"),
        ("/flows/{id}/executions/{execution_id}", runs, "execution"),
        ("/flows/{id}/executions/{execution_id}/cancel", runs, "cancel"),
        ("/flows/{id}/executions/{execution_id}/retry", runs, "retry"),
        ("/flows/{id}/metrics", runs, "metrics"),
        ("/execution-logs", execution_logs.Collection(db, stores["execution_logs"]), None),
        ("/execution-logs/{id}", execution_logs.Item(db, stores["execution_logs"]), None),
        ("/health", health.Health(), None),
        ("/status", status, None),
        ("/status/detailed", status, "detailed"),
        ("/detailed", status, "detailed"),
        ("/version", health.Version(config), None),
        ("/openapi.json", openapi.OpenAPI(config.app_name), None),
        ("/docs", docs, None),
        ("/docs/static/docs-init.js", docs, "init"),
    ]


def create_app(config: Config, db: Database) -> falcon.App:
    """A Falcon app serving the contract on the given (opened) database."""
    routes = build_routes(db, config)
    methods = allowed_methods(routes)
    app = falcon.App(
        middleware=[
            # First in, last out: its clock spans every other middleware.
            metrics.MetricsMiddleware(db),
            RequestIdMiddleware(),
            logs.RequestContextMiddleware(),
            BodyGuardMiddleware(methods),
            SecurityHeadersMiddleware(config.cors_origins),
            TenantMiddleware(db, methods, config),
        ]
    )
    app.req_options.strip_url_path_trailing_slash = True
    # Bodies are read by tolstoy.http.read_json, which enforces the size cap.
    app.req_options.auto_parse_form_urlencoded = False
    for template, resource, suffix in routes:
        app.add_route(template, resource, suffix=suffix)
    app.add_static_route("/docs/static", openapi.DOCS_STATIC)
    # For operators, not clients: outside build_routes (the contract's routes) and the
    # OpenAPI document; Nginx only lets the monitoring host reach it.
    app.add_route("/metrics", metrics.Metrics(db))
    errors.install(app)
    return app


def get_app() -> falcon.App:
    """Gunicorn's entry point: configuration from the environment, pool opened in this worker."""
    logs.configure()
    config = Config.from_env()
    db = Database.from_config(config)
    db.open()
    return create_app(config, db)
