"""Configuration errors stop the service and the command line with one line naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from tolstoy import cli
from tolstoy.api.app import admin_url
from tolstoy.config import PRIVATE_FIELDS, PUBLIC_FIELDS, Config, ConfigError

ROOT = Path(__file__).resolve().parents[2]


def gunicorn(env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "tolstoy.api.app:get_app()"],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_invalid_configuration_fails_with_one_line():
    process = gunicorn({"PORT": "not-a-port", "DATABASE_URL": "postgresql://localhost/x"})
    out, err = process.communicate(timeout=30)
    assert process.returncode != 0
    assert "tolstoy: configuration error: PORT must be a whole number (got 'not-a-port')" in err
    assert "Traceback" not in err


def run_cli(monkeypatch, env: dict, *argv: str):
    for key in ("DATABASE_URL", "DIRECT_URL", "TOLSTOY_ENV", "NODE_ENV"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cli.main(list(argv))


def test_serve_requires_a_database_url(monkeypatch):
    with pytest.raises(SystemExit, match="DATABASE_URL must be set"):
        run_cli(monkeypatch, {}, "serve")


def test_invalid_configuration_stops_the_cli(monkeypatch):
    with pytest.raises(SystemExit, match="configuration error: TOLSTOY_POOL_MAX_SIZE must be a whole number"):
        run_cli(monkeypatch, {"TOLSTOY_POOL_MAX_SIZE": "lots"}, "serve")


def test_a_production_worker_needs_its_own_database_role():
    app = "postgresql://tolstoy_app@db.internal/tolstoy"
    with pytest.raises(SystemExit, match="WORKER_DATABASE_URL"):
        cli.worker_database_url(Config(env="production", database_url=app))
    worker = "postgresql://tolstoy_worker@db.internal/tolstoy"
    assert cli.worker_database_url(Config(env="production", database_url=app, worker_database_url=worker)) \
        == (worker, None)
    assert cli.worker_database_url(Config(env="development", database_url=app)) == (app, None)


def test_every_setting_is_reviewed_for_detailed_status():
    """/status/detailed shows PUBLIC_FIELDS only: a new setting is private until someone says otherwise."""
    names = {f.name for f in fields(Config)}
    assert not set(PUBLIC_FIELDS) & set(PRIVATE_FIELDS)
    assert names == set(PUBLIC_FIELDS) | set(PRIVATE_FIELDS), (
        f"classify in tolstoy/config.py: {sorted(names - set(PUBLIC_FIELDS) - set(PRIVATE_FIELDS))}, "
        f"gone: {sorted((set(PUBLIC_FIELDS) | set(PRIVATE_FIELDS)) - names)}")
    facts = Config(database_url="postgresql://u:pw@h/db", admin_token="t" * 40).public_facts()
    assert not set(facts) & set(PRIVATE_FIELDS)


def test_the_admin_login_is_configured_in_production_and_derived_elsewhere():
    app = "postgresql://tolstoy_app@db.internal/tolstoy?sslmode=require"
    admin = "postgresql://tolstoy_admin:secret@db.internal/tolstoy"
    assert admin_url(Config(env="production", database_url=app)) is None  # organization management off: 503
    assert admin_url(Config(env="production", database_url=app, admin_database_url=admin)) == admin
    assert admin_url(Config(env="development", database_url=app)) == \
        "postgresql://tolstoy_admin@db.internal/tolstoy?sslmode=require"  # tolstoy_app sees only its own
    owner = "postgresql://tolstoy_owner:pw@localhost/tolstoy"
    assert admin_url(Config(env="development", database_url=owner)) == owner  # as for the workers
    assert admin_url(Config(env="test")) is None
    facts = Config.from_env({"ADMIN_DATABASE_URL": admin, "USE_AWS_SECRETS": "false"}).public_facts()
    assert "admin_database_url" not in facts and "tolstoy_admin:secret" not in str(facts)


def test_the_bounds_of_templates_and_stored_bytes_are_read_and_checked():
    assert (Config().template_max_operations, Config().template_max_ms, Config().template_max_size) == (
        1_000_000, 1000, 1_000_000)
    assert (Config().step_max_bytes, Config().run_max_bytes) == (10 * 1024 * 1024, 32 * 1024 * 1024)
    read = Config.from_env({"TOLSTOY_TEMPLATE_MAX_OPERATIONS": "5000", "TOLSTOY_TEMPLATE_MAX_MS": "250",
                            "TOLSTOY_TEMPLATE_MAX_SIZE": "20000", "TOLSTOY_STEP_MAX_BYTES": "2048",
                            "TOLSTOY_RUN_MAX_BYTES": "4096"})
    assert (read.template_max_operations, read.template_max_ms, read.template_max_size, read.step_max_bytes,
            read.run_max_bytes) == (5000, 250, 20000, 2048, 4096)
    with pytest.raises(ConfigError, match=r"TOLSTOY_STEP_MAX_BYTES must not exceed TOLSTOY_RUN_MAX_BYTES"):
        Config.from_env({"TOLSTOY_STEP_MAX_BYTES": "8192", "TOLSTOY_RUN_MAX_BYTES": "4096"})
    # A run's checkpoints travel as one jsonb document, which PostgreSQL refuses past 256 MB.
    with pytest.raises(ConfigError, match=r"TOLSTOY_RUN_MAX_BYTES must be between 1024 and 134217728"):
        Config.from_env({"TOLSTOY_RUN_MAX_BYTES": str(300 * 1024 * 1024)})


@pytest.mark.parametrize("step_max, run_max", [
    (64 * 1024 * 1024, 128 * 1024 * 1024), (10 * 1024 * 1024, 32 * 1024 * 1024), (1024, 1024),
    (64 * 1024 * 1024, 64 * 1024 * 1024), (10 * 1024 * 1024, 128 * 1024 * 1024),
])
def test_a_run_at_its_bounds_fits_one_jsonb_document_at_any_setting(step_max, run_max):
    """A claim returns each run, with its checkpoints (at most run_max) and variables (at most
    step_max: a subflow step's inputs), as one jsonb document, refused past 256 MB (issue 20 row 1):
    at the settings' extremes as at their defaults, a run at its bounds fits it."""
    from tolstoy.engine import sizes

    read = Config.from_env({"TOLSTOY_STEP_MAX_BYTES": str(step_max), "TOLSTOY_RUN_MAX_BYTES": str(run_max)})
    assert read.run_max_bytes + read.step_max_bytes + sizes.PLAN_MAX_BYTES <= sizes.PAYLOAD_MAX_BYTES
    assert sizes.PAYLOAD_MAX_BYTES < 256 * 1024 * 1024 - 1024 * 1024
    with pytest.raises(ConfigError, match=r"TOLSTOY_STEP_MAX_BYTES must be between 1024 and 67108864"):
        Config.from_env({"TOLSTOY_STEP_MAX_BYTES": str(64 * 1024 * 1024 + 1)})


@pytest.mark.parametrize("value", ["jaeger.example.com/trace/{traceId}", "https://jaeger.example.com/trace/"])
def test_a_trace_url_must_be_http_with_the_trace_id_placeholder(value):
    with pytest.raises(ConfigError, match="TOLSTOY_TRACE_URL must be an http:// or https:// URL with {traceId}"):
        Config.from_env({"TOLSTOY_TRACE_URL": value})
    assert Config.from_env({"TOLSTOY_TRACE_URL": "https://j.example.com/trace/{traceId}"}).trace_url \
        == "https://j.example.com/trace/{traceId}"
