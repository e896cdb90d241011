"""The layers as processes see them: what each entry point loads, and the import
contracts of pyproject.toml (lint-imports) holding on the tree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("falcon", "marshmallow", "jsonschema", "httpx", "cryptography", "psycopg", "jinja2", "apispec")


def loaded_after(statement: str) -> set[str]:
    """Top-level modules a fresh interpreter has loaded after running ``statement``."""
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "USE_AWS_SECRETS": "false"})
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_the_gunicorn_master_reads_settings_without_loading_the_app():
    loaded = loaded_after("import runpy; runpy.run_path('gunicorn.conf.py')\n"
                          "import tolstoy.api.access_log")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_reading_the_configuration_loads_nothing_of_the_app():
    loaded = loaded_after("import tolstoy.config")
    assert not loaded & {*HEAVY, "gunicorn", "prometheus_client", "boto3"}


def test_a_worker_does_not_load_gunicorn_or_falcon():
    loaded = loaded_after("import tolstoy.engine, tolstoy.cli")
    assert not loaded & {"gunicorn", "falcon", "marshmallow", "apispec", "swagger_ui"}


@pytest.mark.parametrize("tool", ["lint-imports", "ruff"])
def test_the_architecture_and_style_checks_pass(tool):
    args = [str(Path(sys.executable).parent / tool)] + (["check", "."] if tool == "ruff" else [])
    result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
