"""Health and docs routes (docs/api.md, "Health and documentation"): /health, /status,
/status/detailed (alias /detailed), /version, /openapi.json and /docs, with a
working database and with one that cannot be reached."""

from __future__ import annotations

import base64
import json
import os
import platform
import re
import time
from pathlib import Path

import pytest
from falcon import testing
from openapi_spec_validator import validate

import tolstoy
from tolstoy.api.app import build_routes, create_app
from tolstoy.api.middleware import allowed_methods
from tolstoy.config import Config

ROOT = Path(__file__).resolve().parents[2]


TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


TABLES = {"organizations", "users", "tools", "actions", "flows", "flow_versions", "execution_logs"}


SECRET_URL = "postgresql://tolstoy_admin:Sup3r-S3cret-Pw@db.internal.example:5432/tolstoy?sslmode=require"


SECRET_DIRECT_URL = "postgresql://tolstoy_admin:D1rect-S3cret-Pw@db-direct.internal.example:5432/tolstoy"


ENCRYPTION_KEY = base64.urlsafe_b64encode(b"k" * 32).decode()


HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def newest_migration() -> str:
    return max(path.name.split("_", 1)[0] for path in (ROOT / "db" / "migrations").glob("*.sql"))


def test_health_is_ok(client):
    result = client.simulate_get("/health")
    assert result.status_code == 200
    assert result.json == {"status": "ok"}
    assert result.headers.get("X-Request-ID")


def test_status_is_ok_with_version_uptime_and_timestamp(client):
    result = client.simulate_get("/status")
    assert result.status_code == 200, result.text
    body = result.json
    assert set(body) == {"status", "version", "uptime", "timestamp"}
    assert body["status"] == "ok"
    assert body["version"] == tolstoy.__version__
    assert isinstance(body["uptime"], (int, float)) and body["uptime"] >= 0
    assert TIMESTAMP.match(body["timestamp"]), body["timestamp"]
    time.sleep(0.01)
    assert client.simulate_get("/status").json["uptime"] >= body["uptime"]


@pytest.mark.parametrize("path", ["/status/detailed", "/detailed"])
def test_detailed_status_reports_database_process_and_config(client, api, app_db, path):
    api.org("One")
    api.org("Two")
    result = client.simulate_get(path)
    assert result.status_code == 200, result.text
    body = result.json
    assert body["status"] == "ok"
    assert body["version"] == tolstoy.__version__
    assert TIMESTAMP.match(body["timestamp"])
    assert body["uptime"] >= 0

    database = body["database"]
    assert isinstance(database["latencyMs"], (int, float)) and 0 <= database["latencyMs"] < 10_000
    assert database["migrationVersion"] == newest_migration()
    pool = database["pool"]
    for key in ("size", "available", "waiting", "minSize", "maxSize"):
        assert isinstance(pool[key], int) and pool[key] >= 0, pool
    assert pool["maxSize"] == app_db.pool.max_size and pool["minSize"] == app_db.pool.min_size
    assert pool["size"] <= pool["maxSize"]
    counts = database["approximateRowCounts"]
    assert TABLES <= set(counts), counts
    assert all(isinstance(n, int) and n >= 0 for n in counts.values()), counts

    process = body["process"]
    assert process["pid"] == os.getpid()
    assert process["python"] == platform.python_version()

    config = body["config"]
    assert config["env"] == "test"
    assert config["database_configured"] is True
    assert "database_url" not in config and "direct_url" not in config


def test_record_counts_follow_the_tables(client, api, db):
    for name in ("a", "b", "c"):
        org = api.org(name)
    api.tool(org)
    with db.pool.connection() as conn:
        conn.execute("analyze organizations, tools")
    counts = client.simulate_get("/status/detailed").json["database"]["approximateRowCounts"]
    assert counts["organizations"] == 3, counts
    assert counts["tools"] == 1, counts


def test_detailed_status_shows_no_secret(app_db, database_url, app_url):
    config = Config.from_env({"DATABASE_URL": SECRET_URL, "DIRECT_URL": SECRET_DIRECT_URL, "TOLSTOY_ENV": "test",
                              "TOLSTOY_ENCRYPTION_KEY": ENCRYPTION_KEY})
    client = testing.TestClient(create_app(config, app_db))
    for path in ("/status", "/status/detailed", "/detailed", "/version", "/health", "/openapi.json"):
        result = client.simulate_get(path)
        assert result.status_code == 200, (path, result.text)
        for secret in (SECRET_URL, SECRET_DIRECT_URL, "Sup3r-S3cret-Pw", "D1rect-S3cret-Pw", "tolstoy_admin",
                       ENCRYPTION_KEY, database_url, app_url, "postgresql://", "postgres://"):
            assert secret not in result.text, (path, secret)


ADMIN = "admin-token-" + "a" * 40


@pytest.mark.parametrize("path", ["/status/detailed", "/detailed"])
def test_detailed_status_needs_the_admin_token_in_api_key_mode(worker_env, app_db, path):
    """Its row counts span every organization: never a tenant's to read, nor anyone's without a token."""
    config = Config.from_env({**worker_env, "TOLSTOY_AUTH_MODE": "api_key", "TOLSTOY_ADMIN_TOKEN": ADMIN,
                              "TOLSTOY_API_KEY_SECRET": "key-secret-" + "k" * 40})
    client = testing.TestClient(create_app(config, app_db))
    created = client.simulate_post("/organizations", json={"name": "Tenant"},
                                   headers={"Authorization": f"Bearer {ADMIN}"})
    key = created.json["apiKey"]
    for headers, status in (({}, 401), ({"Authorization": "Bearer tsk_not-a-key"}, 401),
                            ({"Authorization": f"Bearer {ADMIN}x"}, 401), ({"X-Org-ID": created.json["id"]}, 401),
                            ({"Authorization": f"Bearer {key}"}, 403)):
        result = client.simulate_get(path, headers=headers)
        assert result.status_code == status, (headers, result.text)
        assert "approximateRowCounts" not in result.text and "database" not in result.json
    assert "admin token" in result.json["message"]
    result = client.simulate_get(path, headers={"Authorization": f"Bearer {ADMIN}"})
    assert result.status_code == 200 and result.json["database"]["approximateRowCounts"]["organizations"] >= 0
    # Readiness and liveness stay open to probes.
    assert client.simulate_get("/status").status_code == 200 and client.simulate_get("/health").status_code == 200


def test_detailed_status_shows_what_an_operator_needs_and_nothing_that_helps_an_attacker(app_db):
    config = Config.from_env({
        "DATABASE_URL": SECRET_URL, "TOLSTOY_ENV": "test", "TOLSTOY_ENCRYPTION_KEY": ENCRYPTION_KEY,
        "TOLSTOY_KMS_KEY_ID": "arn:aws:kms:eu-west-3:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "TOLSTOY_ALLOW_NETWORKS": "10.20.0.0/16", "TOLSTOY_TRUSTED_PROXIES": "10.9.8.7",
        "TOLSTOY_BIND": "10.1.2.3:3000", "TOLSTOY_DATA_DIR": "/srv/secret-place"})
    body = testing.TestClient(create_app(config, app_db)).simulate_get("/status/detailed").json
    text = json.dumps(body)
    for leak in ("1234abcd", "111122223333", "eu-west-3", "10.20.0.0", "10.9.8.7", "10.1.2.3", "/srv/secret-place",
                 platform.release(), platform.platform()):
        assert leak not in text, leak
    facts = body["config"]
    assert facts["kms_configured"] is True and facts["allow_networks_configured"] is True
    assert facts["aws_secret_configured"] is False and facts["database_configured"] is True
    assert facts["env"] == "test" and facts["auth_mode"] == "headers" and facts["pool_max_size"] == 10
    assert set(body["process"]) == {"pid", "python", "maxRssKb", "cpuSeconds"}


def test_detailed_status_does_not_show_the_real_database_url(client, config):
    for path in ("/status/detailed", "/detailed"):
        text = client.simulate_get(path).text
        assert config.database_url not in text
        assert config.database_url.split("?")[0] not in text
        if config.encryption_key:
            assert config.encryption_key not in text


def test_version(client, config):
    result = client.simulate_get("/version")
    assert result.status_code == 200
    assert result.json["version"] == tolstoy.__version__
    assert result.json["name"] == config.app_name


@pytest.fixture
def spec(client):
    result = client.simulate_get("/openapi.json")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("application/json")
    return result.json


def test_openapi_is_valid_3_1(spec):
    assert spec["openapi"].startswith("3.1")
    assert spec["info"]["version"] == tolstoy.__version__
    validate(spec)


def shape(template: str) -> str:
    """A path template without its parameter names: /flows/{id}/executions/{executionId} -> /flows/{}/executions/{}."""
    return re.sub(r"\{[^{}]+\}", "{}", template)


def test_openapi_documents_every_route_and_method(spec, db, config):
    routes = build_routes(db, config)
    answered = allowed_methods(routes)
    documented = {shape(path): operations for path, operations in spec["paths"].items()}
    assert len(documented) == len(spec["paths"])
    for template, _, _ in routes:
        if template == "/docs/static/docs-init.js":
            continue
        assert shape(template) in documented, f"{template} is missing from /openapi.json"
        methods = {m.lower() for m in answered[template]} - {"options", "head"}
        in_spec = set(documented[shape(template)]) & HTTP_METHODS
        assert in_spec == methods, (template, sorted(in_spec), sorted(methods))
    phantom = set(documented) - {shape(template) for template, _, _ in routes}
    assert not phantom, f"documented but not served: {sorted(phantom)}"


def test_openapi_documents_the_error_body(spec):
    error = spec["components"]["schemas"]["Error"]
    assert {"statusCode", "error", "message", "errors"} <= set(error["properties"])
    tools = spec["paths"]["/tools"]["post"]["responses"]
    assert {"201", "400", "409", "413", "415"} <= set(tools)


def test_docs_page_loads_swagger_ui_from_this_service(client):
    page = client.simulate_get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="/docs/static/swagger-ui-bundle.js"></script>' in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/docs/static/swagger-ui-bundle.js" in assets
    for asset in assets:
        assert asset.startswith("/"), asset  # no CDN
        result = client.simulate_get(asset)
        assert result.status_code == 200, asset
        assert len(result.content) > 0
    bundle = client.simulate_get("/docs/static/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.content) > 100_000
    assert "SwaggerUIBundle" in bundle.text
    init = client.simulate_get("/docs/static/docs-init.js")
    assert init.status_code == 200 and "/openapi.json" in init.text


def test_docs_and_spec_need_no_tenant_header(client):
    for path in ("/docs", "/openapi.json", "/docs/static/swagger-ui-bundle.js", "/version", "/health"):
        assert client.simulate_get(path, headers={"X-Org-ID": "not-a-uuid"}).status_code == 200, path
