"""The WSGI application: ``create_app(config, db)`` wires routes, middleware and
error handling; ``get_app()`` is what Gunicorn loads.

The HTTP surface is the nouns' route declarations (``NOUNS``, tolstoy/api/routing.py): each
noun module declares its routes, the resources that answer them and their OpenAPI
operations; the resources reach SQL by name (``SQL.<file>.<query>``)."""

from __future__ import annotations

import logging
from urllib.parse import urlparse

import falcon

from .. import engine, logs, tracing
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
    inbound_webhooks,
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
from .routing import Services
from .tenancy import TenantMiddleware

log = logging.getLogger("tolstoy.api")

# The nouns served, each a module declaring its ROUTES (and SCHEMAS, its OpenAPI components): the route
# table and /openapi.json are both read from them, in this order (a schema another nests comes first).
NOUNS = (
    compat, organizations, quotas, api_keys, audit, users, connections, actions, tools, tool_credentials, flows,
    runs, signals, triggers, inbound_webhooks, webhooks, execution_logs, health, openapi,
)
# What the database's constraints mean to a client: each noun's CONSTRAINTS (those on its tables), and the
# engine's own tables' (errors.ENGINE_CONSTRAINTS); the error handlers answer from them.
CONSTRAINTS = errors.Constraints.assemble(
    [errors.ENGINE_CONSTRAINTS, *(noun.CONSTRAINTS for noun in NOUNS if hasattr(noun, "CONSTRAINTS"))])


def build_routes(db: Database, config: Config,
                 buckets: quotas.RequestBuckets | None = None) -> list[tuple[str, object, str | None]]:
    """Every route as (URI template, resource, responder suffix), from the nouns' declarations; ``buckets``:
    the process's request quota per organization (the tenant middleware's), which the usage route shows."""
    services = Services(db, config, engine.tools(config, db), buckets or quotas.RequestBuckets.from_config(config),
                        NOUNS)
    return [(route.template, services.resource(route.build), route.suffix)
            for noun in NOUNS for route in noun.ROUTES]


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
    # Traces, when asked for (OTEL_TRACES_EXPORTER=otlp, or a provider the host set): in this process,
    # a Gunicorn worker's (the app is built after the fork). When off, no middleware at all.
    spans = [tracing.RequestSpans()] if tracing.setup() else []
    app = falcon.App(
        middleware=[
            *spans,
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
    errors.install(app, CONSTRAINTS)
    tracing.settle()  # traces on: what the process built so far is frozen out of the collector's passes
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
