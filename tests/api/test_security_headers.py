"""Browser-facing hardening: security headers on every answer, a strict CSP
(looser only where /docs needs it), and CORS off unless origins are listed."""

from __future__ import annotations

from falcon import testing

from tolstoy.api.app import create_app
from tolstoy.config import Config


def test_every_answer_carries_the_security_headers(client, api):
    org = api.org()
    for result in (client.simulate_get("/health"), client.simulate_get("/users", headers={"X-Org-ID": org["id"]}),
                   client.simulate_get("/nope"), client.simulate_post("/users", body="x",
                                                                       headers={"Content-Type": "text/plain"})):
        assert result.headers["x-content-type-options"] == "nosniff"
        assert result.headers["referrer-policy"] == "no-referrer"
        assert result.headers["x-frame-options"] == "DENY"
        assert result.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_docs_get_a_csp_that_allows_only_their_own_scripts(client):
    policy = client.simulate_get("/docs").headers["content-security-policy"]
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    page = client.simulate_get("/docs").text
    assert "<script>" not in page  # every script is a file from this service


def test_cors_is_off_by_default(client):
    result = client.simulate_get("/health", headers={"Origin": "https://app.example"})
    assert not any(name.startswith("access-control-") for name in result.headers)


def test_cors_allows_only_listed_origins(worker_env, app_db):
    config = Config.from_env({**worker_env, "TOLSTOY_CORS_ORIGINS": "https://app.example, https://admin.example"})
    client = testing.TestClient(create_app(config, app_db))
    allowed = client.simulate_get("/health", headers={"Origin": "https://app.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "X-Next-Cursor" in allowed.headers["access-control-expose-headers"]
    other = client.simulate_get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
