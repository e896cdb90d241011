"""Indexes on the run history (partitioned tables) are built partition by partition, concurrently,
never holding writes to the runs back: a migration declares one on the parent only (CREATE INDEX …
ON ONLY) and `tolstoy db up` (tolstoy/db/migrate.py build_partition_indexes) builds each partition's
with CREATE INDEX CONCURRENTLY and attaches it. Checked over the catalog and over every migration, so
the next index is covered the day it is written."""

from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest

from tolstoy.db import migrate
from tolstoy.paths import MIGRATIONS_DIR

# Migrations from these on declare an index on a partitioned table ON ONLY (every one not yet released
# when the rule came); the earlier ones built theirs on the parent, holding writes back while each
# partition was read (applied in production: never edited).
FIRST_ON_ONLY = "20261210000000"


def test_every_index_is_valid_once_migrated(db):
    # An ON ONLY index whose partitions were never built would be invalid: the runs page would read
    # months without it.
    with db.pool.connection() as conn:
        invalid = conn.execute("select indexrelid::regclass::text as name from pg_index where not indisvalid "
                               "order by 1").fetchall()
    assert invalid == []


def test_each_new_index_on_the_run_history_is_declared_on_the_parent_only(db):
    with db.pool.connection() as conn:
        partitioned = {row["relname"] for row in conn.execute(
            "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where c.relkind = 'p' and n.nspname = 'public'").fetchall()}
    assert {"flow_runs", "flow_run_steps", "execution_logs"} <= partitioned
    offenders = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name[:14] < FIRST_ON_ONLY:
            continue
        up = path.read_text().split("-- migrate:down", 1)[0]
        for match in re.finditer(r"create\s+(?:unique\s+)?index\s+(?:concurrently\s+)?(?:if\s+not\s+exists\s+)?"
                                 r"\w+\s+on\s+(only\s+)?(\w+)", up, re.IGNORECASE):
            if match.group(2) in partitioned and not match.group(1):
                offenders.append(f"{path.name}: {match.group(0)}")
    assert offenders == [], ("an index on a partitioned table is built on every partition under a lock that "
                             "holds writes back: declare it ON ONLY (tolstoy db up builds each partition's "
                             f"concurrently): {offenders}")


def test_a_partition_index_is_built_without_holding_writes_back(database_url):
    owner_url = migrate.as_role(database_url, migrate.OWNER_ROLE)
    with psycopg.connect(database_url, autocommit=True) as conn:
        org = conn.execute("insert into organizations (name) values ('o') returning id").fetchone()[0]
        flow = conn.execute("insert into flows (org_id, name, steps) values (%s, 'f', "
                            "'[{\"id\": \"a\", \"type\": \"transform\", \"config\": {\"output\": 1}}]') returning id",
                            (org,)).fetchone()[0]
    insert = ("insert into flow_runs (org_id, flow_id, flow_version, plan, root_run_id) "
              "values (%s, %s, 1, '{}', gen_random_uuid())")
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute("create index flow_runs_test_updated_at_idx on only flow_runs (org_id, updated_at)")
    # A writer in the middle of its transaction: a build must wait for it, and while it waits other
    # writers must go on (a plain CREATE INDEX would queue its lock and stop every insert behind it).
    writer = psycopg.connect(database_url)
    writer.execute(insert, (org, flow))
    built: list = []
    failed: list = []

    def build():
        try:
            built.extend(migrate.build_partition_indexes(owner_url, quiet=True))
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            failed.append(exc)

    builder = threading.Thread(target=build)
    builder.start()
    try:
        with psycopg.connect(database_url, autocommit=True) as other:
            deadline = time.monotonic() + 30
            while not other.execute("select exists (select 1 from pg_stat_activity where application_name = "
                                    "'tolstoy-indexes' and wait_event_type = 'Lock')").fetchone()[0]:
                assert time.monotonic() < deadline and builder.is_alive(), failed
                time.sleep(0.05)
            other.execute("set statement_timeout = '3s'")
            other.execute(insert, (org, flow))  # not held back by the waiting build
    finally:
        writer.commit()
        writer.close()
        builder.join(timeout=60)
    assert not failed, failed
    with psycopg.connect(database_url, autocommit=True) as conn:
        partitions = {row[0] for row in conn.execute(
            "select inhrelid::regclass::text from pg_inherits where inhparent = 'flow_runs'::regclass")}
        attached = {row[0] for row in conn.execute(
            "select i.indrelid::regclass::text from pg_inherits h join pg_index i on i.indexrelid = h.inhrelid "
            "where h.inhparent = 'flow_runs_test_updated_at_idx'::regclass")}
        valid = conn.execute("select indisvalid from pg_index "
                             "where indexrelid = 'flow_runs_test_updated_at_idx'::regclass").fetchone()[0]
    assert attached == partitions and len(built) == len(partitions)
    assert valid
    assert migrate.build_partition_indexes(owner_url, quiet=True) == []  # nothing left: idempotent


def test_a_build_that_failed_is_dropped_and_built_again(database_url):
    owner_url = migrate.as_role(database_url, migrate.OWNER_ROLE)
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute("create index flow_runs_test_status_idx on only flow_runs (org_id, status)")
        # What a cancelled CREATE INDEX CONCURRENTLY leaves: an invalid index of the partition's name.
        conn.execute("create index flow_runs_default_test_status_idx on flow_runs_default (org_id, status)")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("update pg_index set indisvalid = false "
                     "where indexrelid = 'flow_runs_default_test_status_idx'::regclass")
    built = migrate.build_partition_indexes(owner_url, quiet=True)
    assert "public.flow_runs_default_test_status_idx" in built
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute("select bool_and(indisvalid) from pg_index where indexrelid in "
                            "('flow_runs_test_status_idx'::regclass, 'flow_runs_default_test_status_idx'::regclass)"
                            ).fetchone()[0]


@pytest.mark.parametrize("tool", ["bench/stack.py", "bench/claim_latency.py", "bench/foreach_masking.py",
                                  "bench/gunicorn_workers.py", "tests/ops/test_nginx.py"])
def test_what_runs_the_app_migrates_through_upgrade(tool):
    # dbmate alone leaves the ON ONLY indexes unbuilt; migrate.upgrade builds them (and the grants).
    source = (MIGRATIONS_DIR.parent.parent / tool).read_text()
    assert 'migrate.run(["up"]' not in source and 'migrate.run(["--wait", "up"]' not in source
