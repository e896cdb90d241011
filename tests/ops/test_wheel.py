"""Tolstoy as a package: the wheel carries its SQL, migrations and Gunicorn
settings, so a clean install (no checkout) migrates a database and serves."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tomllib
import urllib.request
import venv
from pathlib import Path

import pytest
from support import free_port, made_once, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


def wheelhouse() -> Path:
    """Wheels of Tolstoy's dependencies and of its build requirements, fetched once per pyproject.toml
    (and Python) and kept in .tolstoy/, where every later run finds them: the wheel is then built and
    installed offline in seconds. Fetching them took about a minute and a half of each run."""
    pyproject = (ROOT / "pyproject.toml").read_bytes()
    key = hashlib.sha256(pyproject + sys.version.encode()).hexdigest()[:16]

    def fetch(folder: Path) -> None:
        requires = tomllib.loads(pyproject.decode())["build-system"]["requires"]
        fetched = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(folder), str(ROOT), *requires],
                                 capture_output=True, text=True, timeout=900)
        assert fetched.returncode == 0, fetched.stderr[-3000:]
        for own in folder.glob("tolstoy-*.whl"):  # built from this tree each run, never kept
            own.unlink()

    return made_once(ROOT / ".tolstoy" / f"wheelhouse-{key}", fetch)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A new virtual environment with the freshly built wheel (and its dependencies) installed, with
    nothing but the wheelhouse as its package index."""
    house = wheelhouse()
    offline = ["--no-index", "--find-links", str(house)]
    work = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *offline, "-w", str(work),
                            str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    [wheel] = work.glob("tolstoy-*.whl")
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    install = subprocess.run([str(env_dir / "bin" / "pip"), "install", "-q", *offline, str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    return env_dir


def test_the_wheel_holds_the_queries_migrations_and_gunicorn_settings(installed):
    code = ("from tolstoy import paths; from tolstoy.db.queries import SQL; import json; "
            "print(json.dumps([str(paths.BASE), SQL.users.get.source, "
            "sorted(p.name for p in paths.MIGRATIONS_DIR.glob('*.sql')), paths.GUNICORN_CONF.is_file()]))")
    result = subprocess.run([str(installed / "bin" / "python"), "-c", code], capture_output=True, text=True,
                            cwd=installed, timeout=60)
    assert result.returncode == 0, result.stderr
    base, source, migrations, gunicorn_conf = json.loads(result.stdout)
    assert base.startswith(str(installed)) and source.startswith("users.sql:")
    assert migrations == sorted(p.name for p in (ROOT / "db" / "migrations").glob("*.sql"))
    assert gunicorn_conf
    help_text = subprocess.run([str(installed / "bin" / "tolstoy"), "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "worker" in help_text.stdout


def test_the_wheel_holds_the_console_templates_and_static_files(installed):
    code = ("from tolstoy.api import console; import json; "
            "print(json.dumps([str(console.TEMPLATES), sorted(p.name for p in console.TEMPLATES.glob('*.html')), "
            "sorted(p.name for p in console.STATIC.iterdir())]))")
    result = subprocess.run([str(installed / "bin" / "python"), "-c", code], capture_output=True, text=True,
                            cwd=installed, timeout=60)
    assert result.returncode == 0, result.stderr
    where, templates, static = json.loads(result.stdout)
    assert where.startswith(str(installed))
    assert templates == sorted(p.name for p in (ROOT / "tolstoy" / "api" / "templates" / "console").glob("*.html"))
    assert static == ["console.css", "console.js"]


def test_a_clean_install_migrates_and_serves(installed, database_url, app_url, tmp_path):
    env = {"PATH": f"{installed / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "USE_AWS_SECRETS": "false",
           "DIRECT_URL": database_url, "DATABASE_URL": app_url}
    schema = (installed / "share" / "tolstoy" / "db" / "schema.sql").read_text()
    # The test database is a migrated clone; roll one migration back so `db up` has work to do.
    rollback = subprocess.run([str(installed / "bin" / "tolstoy"), "db", "rollback"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    assert rollback.returncode == 0, rollback.stderr
    up = subprocess.run([str(installed / "bin" / "tolstoy"), "db", "up"], env=env, cwd=tmp_path,
                        capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    assert "Applied" in up.stdout + up.stderr
    # An installed copy never rewrites its schema dump (only a checkout's is committed).
    assert (installed / "share" / "tolstoy" / "db" / "schema.sql").read_text() == schema
    port = free_port()
    server = subprocess.Popen([str(installed / "bin" / "tolstoy"), "serve"], env={**env, "PORT": str(port),
                              "WEB_CONCURRENCY": "1"}, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, server)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=60) as answer:
            assert json.loads(answer.read())["status"] == "ok"
        request = urllib.request.Request(f"http://127.0.0.1:{port}/organizations", data=b'{"name": "W"}',
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert answer.status == 201
    finally:
        server.terminate()
        server.wait(timeout=30)
