"""The migration files as a DBA reviews them: commented up and down sections, squawk-clean."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tolstoy import paths
from tolstoy.db import migrate


def migration_files() -> list:
    return sorted(migrate.MIGRATIONS_DIR.glob("*.sql"))


def test_every_migration_has_commented_up_and_down_sections():
    for path in migration_files():
        text = path.read_text()
        assert re.match(r"^\d{14}_[a-z0-9_]+\.sql$", path.name), path.name
        up, sep, down = text.partition("-- migrate:down")
        assert up.startswith("-- migrate:up"), path.name
        assert sep, f"{path.name} has no down section"
        statements = [s for s in down.split(";") if s.strip() and "lock_timeout" not in s
                      and "statement_timeout" not in s]
        assert statements, f"{path.name} has an empty down section"


def test_squawk_passes_on_the_migrations():
    script = paths.CHECKOUT / ".ci" / "squawk-migrations"
    squawk = Path(sys.executable).parent / "squawk"
    env = {**os.environ, "SQUAWK": str(squawk) if squawk.exists() else "squawk"}
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
