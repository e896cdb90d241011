"""The ``tolstoy`` command: run the service, and manage the database with dbmate."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import engine, logs
from .config import Config, ConfigError
from .db import embedded, migrate
from .db.database import Database
from .paths import GUNICORN_CONF, IN_CHECKOUT, SEED_FILE


def load_config() -> Config:
    """The configuration, or exit with its one-line error."""
    try:
        return Config.from_env()
    except ConfigError as exc:
        raise SystemExit(f"tolstoy: configuration error: {exc}") from None


def database_url(config: Config, *, for_migrations: bool) -> tuple[str, object]:
    """The URL to use, starting the embedded PostgreSQL in development when none is set.

    Returns (url, server handle or None); keep the handle alive while the URL is used.
    """
    url = config.migration_url if for_migrations else config.database_url
    if url:
        return url, None
    if config.is_production:
        raise SystemExit("tolstoy: DATABASE_URL (or DIRECT_URL) must be set in production")
    server, url = embedded.start(Path(config.data_dir))
    print(f"tolstoy: using the embedded PostgreSQL in {Path(config.data_dir).resolve() / 'pgdata'}",
          file=sys.stderr)
    # Migrations run as the schema owner (tolstoy_owner, no superuser, as in production); the app
    # and workers as the roles row-level security binds.
    owner_url = migrate.prepare_owner(url)
    if owner_url == url:
        print("tolstoy: this embedded database was made by an older version and is migrated as the "
              "superuser; `tolstoy db reset --force` makes it again, owned by tolstoy_owner", file=sys.stderr)
    return (owner_url if for_migrations else migrate.as_role(url)), server


def worker_database_url(config: Config) -> tuple[str, object]:
    """WORKER_DATABASE_URL (the tolstoy_worker role); outside production DATABASE_URL will do, and
    with neither, the embedded PostgreSQL as tolstoy_worker. Returns (url, server handle or None)."""
    if config.worker_database_url:
        return config.worker_database_url, None
    if config.is_production:
        raise SystemExit("tolstoy: WORKER_DATABASE_URL must be set in production: workers log in as "
                         "tolstoy_worker, the only role that may claim runs (see db/grants.sql)")
    if config.database_url:
        return config.database_url, None
    owner_url, server = database_url(config, for_migrations=True)
    return migrate.as_role(owner_url, migrate.WORKER_ROLE), server


def die_with_parent(parent: int) -> None:
    """In a child, before it runs: ask Linux to send it SIGTERM when this process dies.

    A supervisor killed with SIGKILL runs no handler, and its Gunicorn and worker would live on,
    holding the port and the database, so the next ``tolstoy dev`` could not start. Elsewhere than
    Linux there is no such request and nothing is done.
    """
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def supervise(commands: list[list[str]], env: dict) -> int:
    """Run processes side by side, forwarding Ctrl-C and SIGTERM; when the first exits, stop the rest.

    Returns the first one's exit code.
    """
    me = os.getpid()
    processes = [subprocess.Popen(command, env=env, preexec_fn=lambda: die_with_parent(me)) for command in commands]

    def forward(signum, frame):
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    # SIGHUP (a closed terminal) would otherwise end this process without its exit handlers, which
    # stop the embedded PostgreSQL; Gunicorn and the worker take it as "stop" as well.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    while True:
        for process in processes:
            code = process.poll()
            if code is not None:
                for other in processes:
                    if other.poll() is None:
                        other.terminate()
                for other in processes:
                    other.wait()
                return code
        time.sleep(0.2)


GUNICORN = [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF), "tolstoy.api.app:get_app()"]
WORKER = [sys.executable, "-m", "tolstoy.cli", "worker"]


def cmd_dev(args: argparse.Namespace) -> int:
    """Embedded database (unless DATABASE_URL is set), migrations, then Gunicorn on PORT and one worker."""
    config = load_config()
    owner_url, _server = database_url(config, for_migrations=True)
    # With the embedded server the app logs in as the row-level-security role of the same server.
    url = config.database_url or migrate.as_role(owner_url)
    # The worker claims runs as tolstoy_worker; with DATABASE_URL set and no worker URL, it
    # uses DATABASE_URL (development only: that role may not claim in a real deployment).
    worker_url = config.worker_database_url or (
        migrate.as_role(owner_url, migrate.WORKER_ROLE) if config.database_url is None else config.database_url)
    # The /organizations routes log in as tolstoy_admin on DATABASE_URL's server unless
    # ADMIN_DATABASE_URL says otherwise (tolstoy/api/app.py admin_url).
    migrate.upgrade(owner_url)
    env = {**os.environ, "DATABASE_URL": url, "WORKER_DATABASE_URL": worker_url}
    # Tool credentials need a key; development keeps its own next to the embedded data.
    env.setdefault("TOLSTOY_ENCRYPTION_KEY", engine.local_key(config.data_dir))
    print(f"tolstoy: serving on http://127.0.0.1:{config.port} (docs at /docs), with one worker",
          file=sys.stderr)
    return supervise([GUNICORN, WORKER], env)


def cmd_worker(args: argparse.Namespace) -> int:
    """Claim and run flow runs until SIGTERM."""
    logs.configure()  # JSON lines, with each run's executionId, like the API's
    config = load_config()
    url, _server = worker_database_url(config)
    concurrency = args.concurrency or config.worker_concurrency
    # One connection per run in flight, plus the claim loop and the heartbeat.
    config = dataclasses.replace(config, database_url=url, app_name=f"{config.app_name}-worker",
                                 pool_max_size=max(config.pool_max_size, concurrency + 2))
    db = Database.from_config(config)
    db.open(wait=True, timeout=30)
    worker = engine.worker(config, db, concurrency)
    worker.install_signal_handlers()
    worker.run()
    if worker.abandoned:
        # Threads that would not stop (a render that checks nothing) must not hold the exit: the
        # interpreter would wait for them, and systemd would kill the worker without a word.
        logging.getLogger("tolstoy.worker").warning("exiting without waiting for %d run thread(s)", worker.abandoned)
        logging.shutdown()
        os._exit(0)
    db.close()
    return 0


def cmd_secrets(args: argparse.Namespace) -> int:
    """``tolstoy secrets rotate [--reencrypt]``: re-wrap every organization's data keys with the newest
    key-encryption key; with --reencrypt, move every ciphertext to a new data key version."""
    config = load_config()
    url, _server = database_url(config, for_migrations=True)
    db = Database(url, min_size=1, max_size=1, application_name=f"{config.app_name}-secrets")
    vault = engine.vault_from_config(config, db)
    if vault is None:
        raise SystemExit("tolstoy: TOLSTOY_ENCRYPTION_KEY (or TOLSTOY_KMS_KEY_ID) is not set")
    db.open(wait=True)
    try:
        if args.reencrypt:
            counts = reencrypt_secrets(db, vault, args.batch_size,
                                       say=lambda line: print(f"tolstoy: {line}", file=sys.stderr, flush=True))
            print(f"tolstoy: re-encrypted {counts['credentials']} credential(s), {counts['outputs']} sealed "
                  f"output(s), {counts['tokens']} OAuth2 token(s), {counts['triggers']} trigger secret(s) and "
                  f"{counts['connections']} user connection(s) of "
                  f"{counts['organizations']} organization(s) in {counts['batches']} batch(es); "
                  f"{counts['versions']} new data key version(s), {counts['retired']} older version(s) retired",
                  file=sys.stderr)
        else:
            counts = rotate_secrets(db, vault)
            print(f"tolstoy: re-wrapped {counts['rewrapped']} data key(s) of {counts['organizations']} "
                  f"organization(s) with {counts['kek_id']}; {counts['legacy']} ciphertext(s) still under "
                  "TOLSTOY_ENCRYPTION_KEY itself (`tolstoy secrets rotate --reencrypt` moves them)", file=sys.stderr)
    finally:
        db.close()
    return 0


def rotate_secrets(db: Database, vault) -> dict:
    """Re-wrap every organization's data keys with the newest KEK (no data is re-encrypted); counts."""
    return engine.rewrap(db, vault)


def reencrypt_secrets(db: Database, vault, batch: int = 500, **options) -> dict:
    """Move every ciphertext to a new data key version per organization, ``batch`` rows per transaction,
    and retire the older versions once no process can still be using them; counts. ``options``:
    settle_seconds, sleep, say (see engine.reencrypt)."""
    return engine.reencrypt(db, vault, batch, **options)


def cmd_serve(args: argparse.Namespace) -> int:
    """Gunicorn only: the database and its migrations are the operator's."""
    config = load_config()
    if not config.database_url:
        raise SystemExit("tolstoy: DATABASE_URL must be set for 'tolstoy serve' (use 'tolstoy dev' locally)")
    return supervise([GUNICORN], os.environ.copy())


def cmd_db(args: argparse.Namespace) -> int:
    """``tolstoy db new|up|indexes|status|rollback|reset|seed|dump``."""
    config = load_config()
    if args.action == "new":
        return migrate.run(["new", args.name], "postgres://unused@localhost/unused")
    if args.action == "reset":
        if config.is_production:
            raise SystemExit("tolstoy: refusing to reset a production database")
        if not args.force:
            raise SystemExit(
                "tolstoy: 'db reset' drops the database and every row in it; "
                "run 'tolstoy db reset --force' to confirm"
            )
    url, server = database_url(config, for_migrations=True)
    # Developers keep db/schema.sql in step with the migrations; production and installed
    # copies never write it.
    dump = not config.is_production and IN_CHECKOUT
    if dump:
        embedded.put_pg_tools_on_path()
    if args.action == "up":
        return migrate.upgrade(url, dump_schema=dump)
    if args.action == "indexes":
        migrate.build_partition_indexes(url)
        return 0
    if args.action == "status":
        return migrate.run(["status"], url, check=False)
    if args.action == "rollback":
        return migrate.run(["rollback"], url, dump_schema=dump)
    if args.action == "dump":
        embedded.put_pg_tools_on_path()
        return migrate.run(["dump"], url, dump_schema=True)
    if args.action == "reset":
        migrate.run(["drop"], url)
        if server is not None:  # the embedded server: the database is made again, for its owner role
            url, server = database_url(config, for_migrations=True)
        return migrate.upgrade(url, dump_schema=dump)
    if args.action == "seed":
        return seed(config, url)
    raise AssertionError(args.action)


def seed(config: Config, url: str) -> int:
    """Load db/seed.sql (idempotent demo data) after bringing the schema up to date."""

    migrate.upgrade(url)
    db = Database(url, min_size=1, max_size=1, application_name=f"{config.app_name}-seed")
    db.open(wait=True)
    try:
        db.script(SEED_FILE.read_text())
    finally:
        db.close()
    print("tolstoy: demo data loaded (organization 00000000-0000-4000-8000-000000000001)", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    """The command line."""
    top = argparse.ArgumentParser(prog="tolstoy", description="Tolstoy workflow automation service.")
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("dev", help="embedded PostgreSQL + migrations + Gunicorn on PORT").set_defaults(func=cmd_dev)
    sub.add_parser("serve", help="Gunicorn with gunicorn.conf.py on DATABASE_URL").set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="claim and run flow runs (run as many as you like, anywhere)")
    worker.add_argument("--concurrency", type=int, default=None,
                        help="runs in flight at once (default TOLSTOY_WORKER_CONCURRENCY, 4)")
    worker.set_defaults(func=cmd_worker)
    secrets = sub.add_parser("secrets", help="encryption of tool credentials and sealed step outputs")
    secrets.set_defaults(func=cmd_secrets)
    rotate = secrets.add_subparsers(dest="action", required=True).add_parser(
        "rotate", help="re-wrap every organization's data keys with the newest key-encryption key "
                       "(the first TOLSTOY_ENCRYPTION_KEY, or TOLSTOY_KMS_KEY_ID)")
    rotate.add_argument("--reencrypt", action="store_true",
                        help="also give each organization a new data key and move every ciphertext to it")
    rotate.add_argument("--batch-size", type=int, default=500, help="rows per transaction with --reencrypt")
    db = sub.add_parser("db", help="migrations with dbmate (uses DIRECT_URL, else DATABASE_URL)")
    db.set_defaults(func=cmd_db)
    actions = db.add_subparsers(dest="action", required=True)
    new = actions.add_parser("new", help="create db/migrations/<timestamp>_NAME.sql")
    new.add_argument("name")
    actions.add_parser("up", help="create the database if needed and apply pending migrations")
    actions.add_parser("status", help="list applied and pending migrations")
    actions.add_parser("indexes", help="build, concurrently and partition by partition, the indexes migrations "
                                       "declared on the run history (up does it too; for dbmate run alone)")
    actions.add_parser("rollback", help="undo the most recent migration")
    reset = actions.add_parser("reset", help="drop the database and migrate again (never in production)")
    reset.add_argument("--force", action="store_true", help="confirm that every row may be lost")
    actions.add_parser("seed", help="load idempotent demo data")
    actions.add_parser("dump", help="write db/schema.sql from the database")
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tolstoy`` console script."""
    args = parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
