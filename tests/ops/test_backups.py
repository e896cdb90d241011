"""The backup configuration ops/ ships: pgBackRest takes every option of ops/pgbackrest/pgbackrest.conf,
the systemd units that schedule backups pass systemd-analyze, and the pieces name the same stanza.
(The restore drill that uses them is tests/ops/test_drill.py.)"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
from pathlib import Path

import pytest
from support import require_program

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
UNITS = [OPS / "systemd" / name for name in
         ("pgbackrest-backup@.service", "pgbackrest-full.timer", "pgbackrest-diff.timer")]


def shipped_config() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str
    parser.read(OPS / "pgbackrest" / "pgbackrest.conf")
    return parser


def pgbackrest_reads(config: Path, tmp_path: Path) -> str:
    """What pgBackRest says loading ``config`` for archive-push with no segment: it checks every option
    of the file, then stops before touching a repository (no network, no S3)."""
    pgbackrest = require_program("pgbackrest")
    result = subprocess.run([pgbackrest, f"--config={config}", "--stanza=tolstoy", f"--log-path={tmp_path}",
                             f"--lock-path={tmp_path}", f"--spool-path={tmp_path}", "--log-level-console=warn",
                             "archive-push"], capture_output=True, text=True, timeout=30, cwd="/",
                            env={"PATH": os.environ["PATH"], "PGBACKREST_REPO1_CIPHER_PASS": "not-the-real-one"})
    return result.stdout + result.stderr


def test_pgbackrest_takes_every_option_of_the_shipped_configuration(tmp_path):
    said = pgbackrest_reads(OPS / "pgbackrest" / "pgbackrest.conf", tmp_path)
    assert "invalid option" not in said and "WAL segment to push required" in said, said
    # The check can fail: a misspelt option is named.
    bad = tmp_path / "bad.conf"
    bad.write_text((OPS / "pgbackrest" / "pgbackrest.conf").read_text().replace("compress-level=3", "compres-level=3"))
    assert "invalid option 'compres-level'" in pgbackrest_reads(bad, tmp_path)


def test_one_stanza_named_alike_by_the_configuration_the_archive_command_and_the_units():
    config = shipped_config()
    stanzas = [section for section in config.sections() if section != "global" and ":" not in section]
    assert stanzas == ["tolstoy"]
    archive = re.search(r"^archive_command = '(.*)'$", (OPS / "pgbackrest" / "postgresql.conf").read_text(), re.M)
    assert archive and "--stanza=tolstoy archive-push %p" in archive[1]
    service = UNITS[0].read_text()
    assert "--stanza=tolstoy --type=%i backup" in service and "--stanza=tolstoy expire" in service
    assert "Unit=pgbackrest-backup@full.service" in UNITS[1].read_text()
    assert "Unit=pgbackrest-backup@diff.service" in UNITS[2].read_text()
    # Production keeps backups encrypted, off the host, for two full cycles.
    g = config["global"]
    assert g["repo1-type"] == "s3" and g["repo1-cipher-type"] == "aes-256-cbc" and g["repo1-retention-full"] == "2"
    assert "repo1-cipher-pass" not in g  # the passphrase is never in the repository


def test_systemd_analyze_verify_accepts_the_backup_units(tmp_path):
    analyze = require_program("systemd-analyze")
    require_program("pgbackrest")
    require_program("psql", "/usr/bin/psql")
    for unit in UNITS:
        (tmp_path / unit.name).write_text(unit.read_text())
    result = subprocess.run([analyze, "verify", *(str(tmp_path / u.name) for u in UNITS)],
                            capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "pgbackrest" in line]
    if result.returncode != 0 and "Failed to" in result.stderr and "pgbackrest" not in result.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {result.stderr[:200]}")
    assert result.returncode == 0 and complaints == [], result.stdout + result.stderr
