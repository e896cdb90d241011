"""Where the files Tolstoy reads at run time live: the SQL queries, the dbmate
migrations and grants, the seed data and the Gunicorn settings.

In a checkout (an editable install, the tests) they are the repository's own
files; a wheel installs copies under ``<prefix>/share/tolstoy`` (see
``[tool.setuptools.data-files]`` in pyproject.toml).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def _base() -> Path:
    if (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / "sql").is_dir():
        return CHECKOUT
    return Path(sysconfig.get_path("data")) / "share" / "tolstoy"


BASE = _base()
# db/schema.sql is refreshed by `tolstoy db up` only in a checkout, where it is committed.
IN_CHECKOUT = BASE == CHECKOUT
SQL_DIR = BASE / "sql"
MIGRATIONS_DIR = BASE / "db" / "migrations"
SCHEMA_FILE = BASE / "db" / "schema.sql"
BOOTSTRAP_FILE = BASE / "db" / "bootstrap.sql"
GRANTS_FILE = BASE / "db" / "grants.sql"
SEED_FILE = BASE / "db" / "seed.sql"
GUNICORN_CONF = BASE / "gunicorn.conf.py"
