"""Settings from AWS Secrets Manager (a local moto server stands in for AWS): precedence,
errors in one line, the TTL cache, rotation."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tolstoy.aws_secrets import SecretCache, SecretError
from tolstoy.config import Config, ConfigError

ROOT = Path(__file__).resolve().parents[2]


REGION = "eu-west-3"


@pytest.fixture(scope="module")
def moto_endpoint():
    """A Secrets Manager stand-in listening on 127.0.0.1 only."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_endpoint, monkeypatch):
    """What boto3 reads from the process environment: where AWS is and dummy keys for moto."""
    values = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture
def secrets(aws_env):
    """A boto3 client on moto, to create and rotate secrets as an operator would."""
    return boto3.client("secretsmanager", region_name=REGION, endpoint_url=aws_env["AWS_ENDPOINT_URL"])


def new_secret(secrets, values) -> str:
    name = f"tolstoy-test-{uuid.uuid4().hex[:8]}"
    text = values if isinstance(values, str) else json.dumps(values)
    secrets.create_secret(Name=name, SecretString=text)
    return name


def production(name: str, **extra) -> dict:
    # Production defaults to API-key auth, whose two secrets the API needs to start.
    return {"TOLSTOY_ENV": "production", "AWS_SECRET_NAME": name, "AWS_REGION": REGION,
            "TOLSTOY_API_KEY_SECRET": "k" * 40, "TOLSTOY_ADMIN_TOKEN": "a" * 40, **extra}


class FakeClock:
    """A monotonic clock that only moves when the test says so (from the real one's reading)."""

    def __init__(self):
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


class CountingClient:
    """Wraps the boto3 client to count calls to AWS."""

    def __init__(self, client):
        self.client = client
        self.calls = 0

    def get_secret_value(self, **kwargs):
        self.calls += 1
        return self.client.get_secret_value(**kwargs)


def test_production_reads_every_setting_from_the_secret(secrets):
    name = new_secret(secrets, {
        "DATABASE_URL": "postgresql://app:pw1@db.internal/tolstoy",
        "DIRECT_URL": "postgresql://owner:pw2@db.internal/tolstoy",
        "TOLSTOY_POOL_MAX_SIZE": 7,
        "APP_NAME": "tolstoy-prod",
        "username": "not a setting: ignored",
    })
    config = Config.from_env(production(name))
    assert config.database_url == "postgresql://app:pw1@db.internal/tolstoy"
    assert config.migration_url == "postgresql://owner:pw2@db.internal/tolstoy"
    assert (config.pool_max_size, config.app_name) == (7, "tolstoy-prod")
    assert (config.aws_secret_name, config.aws_region) == (name, REGION)
    facts = json.dumps(config.public_facts())
    assert "pw1" not in facts and "pw2" not in facts


def test_the_secret_wins_unless_precedence_is_env(secrets):
    name = new_secret(secrets, {"DATABASE_URL": "postgresql://secret@h/db"})
    env = production(name, DATABASE_URL="postgresql://env@h/db", PORT="4000")
    config = Config.from_env(env)
    assert config.database_url == "postgresql://secret@h/db"
    assert callable(config.database_conninfo())
    assert config.port == 4000  # not in the secret: the environment still counts

    config = Config.from_env({**env, "TOLSTOY_CONFIG_PRECEDENCE": "env"})
    assert config.database_url == "postgresql://env@h/db"
    assert config.database_conninfo() == "postgresql://env@h/db"

    with pytest.raises(ConfigError, match="TOLSTOY_CONFIG_PRECEDENCE must be secret or env"):
        Config.from_env({**env, "TOLSTOY_CONFIG_PRECEDENCE": "both"})


def test_secret_is_opt_in_outside_production_and_opt_out_in_it(secrets):
    name = new_secret(secrets, {"DATABASE_URL": "postgresql://secret@h/db"})
    assert Config.from_env({"AWS_SECRET_NAME": name, "AWS_REGION": REGION}).database_url is None
    dev = Config.from_env({"USE_AWS_SECRETS": "true", "AWS_SECRET_NAME": name, "AWS_REGION": REGION})
    assert dev.database_url == "postgresql://secret@h/db"
    off = Config.from_env(production(name, USE_AWS_SECRETS="false", DATABASE_URL="postgresql://env@h/db"))
    assert off.database_url == "postgresql://env@h/db" and off.secret is None


def test_a_secret_cannot_change_where_the_secret_is_read_from(secrets):
    name = new_secret(secrets, {"DATABASE_URL": "postgresql://secret@h/db", "TOLSTOY_ENV": "development",
                                "AWS_SECRET_NAME": "elsewhere"})
    config = Config.from_env(production(name))
    assert (config.env, config.aws_secret_name) == ("production", name)


def test_missing_secret_fails_with_one_line_naming_it_and_the_region(aws_env):
    with pytest.raises(ConfigError) as caught:
        Config.from_env(production("no-such-secret"))
    message = str(caught.value)
    assert "'no-such-secret'" in message and REGION in message and "ResourceNotFoundException" in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["not json", '["a list"]', '{"DATABASE_URL": {"nested": 1}}'])
def test_invalid_secret_fails_with_one_line(secrets, text):
    name = new_secret(secrets, text)
    with pytest.raises(ConfigError) as caught:
        Config.from_env(production(name))
    assert f"'{name}'" in str(caught.value) and REGION in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unreachable_aws_fails_with_one_line(monkeypatch, aws_env):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    with pytest.raises(ConfigError) as caught:
        Config.from_env(production("tolstoy-db-secret"))
    assert str(caught.value).startswith(f"cannot read AWS secret 'tolstoy-db-secret' in region {REGION}:")


def test_region_is_required(aws_env):
    with pytest.raises(ConfigError, match="AWS_REGION must be set to read the AWS secret 'tolstoy-db-secret'"):
        Config.from_env({"TOLSTOY_ENV": "production"})


def test_cache_fetches_once_per_ttl_and_picks_up_a_rotation(secrets):
    name = new_secret(secrets, {"DATABASE_URL": "postgresql://u:v1@h/db"})
    clock = FakeClock()
    client = CountingClient(secrets)
    cache = SecretCache(name, REGION, ttl=300, clock=clock, client=client)
    assert cache.load()["DATABASE_URL"].endswith(":v1@h/db")
    secrets.put_secret_value(SecretId=name, SecretString=json.dumps({"DATABASE_URL": "postgresql://u:v2@h/db"}))
    for _ in range(50):
        assert cache.get()["DATABASE_URL"].endswith(":v1@h/db")
    clock.now += 299
    assert cache.get()["DATABASE_URL"].endswith(":v1@h/db")
    assert client.calls == 1
    clock.now += 1
    assert cache.get()["DATABASE_URL"].endswith(":v2@h/db")
    assert client.calls == 2


def test_failed_refresh_keeps_the_old_values_and_logs_no_secret(secrets, caplog):
    name = new_secret(secrets, {"DATABASE_URL": "postgresql://u:hunter2@h/db"})
    clock = FakeClock()
    cache = SecretCache(name, REGION, ttl=60, clock=clock, client=secrets)
    cache.load()
    secrets.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
    clock.now += 61
    with caplog.at_level(logging.WARNING, logger="tolstoy.aws_secrets"):
        assert cache.get()["DATABASE_URL"] == "postgresql://u:hunter2@h/db"
    assert name in caplog.text and "hunter2" not in caplog.text
    with pytest.raises(SecretError):
        SecretCache(name, REGION, ttl=60, client=secrets).get()


def gunicorn(env: dict) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DIRECT_URL")}
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "tolstoy.api.app:get_app()"],
        cwd=ROOT, env={**environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_gunicorn_without_the_secret_stops_with_one_line(aws_env):
    process = gunicorn({**production("tolstoy-missing"), "USE_AWS_SECRETS": "true"})
    out, err = process.communicate(timeout=60)
    assert process.returncode != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [
        f"tolstoy: configuration error: cannot read AWS secret 'tolstoy-missing' in region {REGION}: "
        "ResourceNotFoundException (Secrets Manager can't find the specified secret.)"
    ]
