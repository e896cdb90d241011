"""The dbmate migrations: reversible, linted names that the nouns' CONSTRAINTS rely on, and
db/schema.sql equal to what they produce."""

from __future__ import annotations

import re

import pytest

from tolstoy.api.app import CONSTRAINTS
from tolstoy.db import embedded, migrate


@pytest.fixture
def empty_url(url_for, admin_db):
    """An empty database (not cloned from the migrated template)."""
    name = "migration_check"
    admin_db.execute_admin(f'drop database if exists "{name}" with (force)')
    admin_db.execute_admin(f'create database "{name}"')
    yield url_for(name)
    admin_db.execute_admin(f'drop database if exists "{name}" with (force)')


def dump(url: str, path) -> str:
    """The schema dbmate writes for this database (pg_dump plus applied versions)."""
    embedded.put_pg_tools_on_path()
    migrate.run(["dump"], url, dump_schema=True, schema_file=path, quiet=True)
    return path.read_text()


def migration_files() -> list:
    return sorted(migrate.MIGRATIONS_DIR.glob("*.sql"))


def test_up_down_up_on_an_empty_database(empty_url, tmp_path):
    migrate.run(["up"], empty_url, quiet=True)
    first = dump(empty_url, tmp_path / "first.sql")
    for _ in migration_files():
        migrate.run(["rollback"], empty_url, quiet=True)
    emptied = dump(empty_url, tmp_path / "empty.sql")
    assert "CREATE TABLE public.organizations" not in emptied
    assert "CREATE FUNCTION" not in emptied
    assert "CREATE TYPE" not in emptied
    migrate.run(["up"], empty_url, quiet=True)
    assert dump(empty_url, tmp_path / "again.sql") == first


def test_schema_file_matches_the_migrations(template_url, tmp_path):
    fresh = dump(template_url, tmp_path / "schema.sql")
    committed = migrate.SCHEMA_FILE.read_text()
    assert committed == fresh, "db/schema.sql is stale: run `tolstoy db dump` (or `tolstoy db up`)"


def test_monthly_partitions_stay_out_of_the_schema_file(database_url, db, tmp_path):
    # Partitions depend on the date and the rows (tolstoy_maintain_history makes them), not on the migrations.
    with db.pool.connection() as conn:
        conn.execute("select tolstoy_ensure_partitions('2031-06-01', 4)")
        assert conn.execute("select to_regclass('flow_runs_p2031_09') is not null as made").fetchone()["made"]
    assert dump(database_url, tmp_path / "schema.sql") == migrate.SCHEMA_FILE.read_text()


def test_constraint_names_used_by_errors_exist(db):
    names = set(CONSTRAINTS.unique) | set(CONSTRAINTS.dependents) | set(CONSTRAINTS.references)
    with db.pool.connection() as conn:
        rows = conn.execute(
            "select conname as name from pg_constraint union select indexname from pg_indexes"
        ).fetchall()
    existing = {row["name"] for row in rows}
    assert names <= existing, names - existing


def test_every_tenant_table_leads_its_keys_with_org_id(db):
    with db.pool.connection() as conn:
        rows = conn.execute(
            """
            select c.conrelid::regclass::text as table_name, c.conname,
                   c.contype, (select a.attname from pg_attribute a
                               where a.attrelid = c.conrelid and a.attnum = c.conkey[1]) as first_column
            from pg_constraint c
            join pg_namespace n on n.oid = c.connamespace and n.nspname = 'public'
            where c.contype in ('p', 'u', 'f')
              and c.conrelid::regclass::text <> 'organizations'
              and c.conrelid::regclass::text <> 'schema_migrations'
            """
        ).fetchall()
        unique_indexes = conn.execute(
            "select indexname, indexdef from pg_indexes where schemaname = 'public' "
            "and indexdef like 'CREATE UNIQUE INDEX%' and tablename not in ('organizations', 'schema_migrations')"
        ).fetchall()
    assert rows
    for row in rows:
        assert row["first_column"] == "org_id", row
    for index in unique_indexes:
        if index["indexname"] == "api_keys_key_hash_key":
            continue  # authentication finds a key by its hash before knowing its organization
        assert "(org_id" in index["indexdef"], index


# What a migration changes that its down must put back, read from the catalog (fast enough to take
# after every step, unlike pg_dump): functions and triggers as defined, policies, indexes, columns,
# constraints and privileges of the public schema (none granted reads as the default privileges).
SNAPSHOT = """
select 'function ' || p.oid::regprocedure::text, pg_get_functiondef(p.oid) || coalesce(p.proacl, acldefault('f', p.proowner))::text
from pg_proc p where p.pronamespace = 'public'::regnamespace and p.prokind in ('f', 'p')
union all
select 'trigger ' || t.tgrelid::regclass::text || '.' || t.tgname, pg_get_triggerdef(t.oid)
from pg_trigger t join pg_class c on c.oid = t.tgrelid
where c.relnamespace = 'public'::regnamespace and not t.tgisinternal and not c.relispartition
union all
select 'policy ' || p.tablename || '.' || p.policyname,
       concat_ws(' ', p.cmd, p.roles::text, p.qual, p.with_check)
from pg_policies p where p.schemaname = 'public' and p.tablename !~ '_p[0-9]{4}_[0-9]{2}$'
union all
select 'index ' || i.indexname, i.indexdef
from pg_indexes i where i.schemaname = 'public' and i.tablename !~ '_p[0-9]{4}_[0-9]{2}$'
union all
select 'column ' || c.table_name || '.' || c.column_name,
       concat_ws(' ', c.data_type, c.is_nullable, c.column_default)
from information_schema.columns c where c.table_schema = 'public' and c.table_name !~ '_p[0-9]{4}_[0-9]{2}$'
union all
select 'constraint ' || k.conrelid::regclass::text || '.' || k.conname, pg_get_constraintdef(k.oid)
from pg_constraint k join pg_class c on c.oid = k.conrelid
where c.relnamespace = 'public'::regnamespace and not c.relispartition
union all
select 'relation ' || c.relname, concat_ws(' ', c.relkind, c.relrowsecurity, c.relforcerowsecurity,
                 coalesce(c.relacl, acldefault(case when c.relkind = 'S' then 's'::"char" else 'r'::"char" end, c.relowner))::text)
from pg_class c
where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p', 'v', 'S') and not c.relispartition
"""


def snapshot(url: str) -> dict:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(SNAPSHOT).fetchall()
    # A down may restore a body with its comments trimmed or rewrapped: compare code, not prose.
    # dbmate's own table comes with the first migration and stays.
    return {key: " ".join(re.sub(r"--[^\n]*", "", value or "").split()) for key, value in rows
            if "schema_migrations" not in key}


def test_each_down_puts_back_exactly_what_its_up_changed(empty_url, tmp_path):
    """Migrating up one file at a time, then rolling back one at a time, passes through the same
    schemas. Two migrations of one release that redefine the same function from the same older body
    fail here: the later one's down restores a body the earlier one had already replaced (and its up
    undid the earlier one's change)."""
    import shutil
    import subprocess

    files = migration_files()
    steps = tmp_path / "migrations"
    steps.mkdir()

    def dbmate(*args, folder):
        subprocess.run([migrate.dbmate_executable(), "--url", migrate.dbmate_url(empty_url), "--migrations-dir",
                        str(folder), "--no-dump-schema", *args], check=True, stdout=subprocess.DEVNULL)

    going_up = [snapshot(empty_url)]
    for path in files:
        shutil.copy(path, steps / path.name)
        dbmate("up", folder=steps)
        going_up.append(snapshot(empty_url))
    for index in range(len(files), 0, -1):
        dbmate("rollback", folder=steps)
        after = snapshot(empty_url)
        before = going_up[index - 1]
        changed = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
        first = changed[0] if changed else None
        assert not changed, (f"rolling back {files[index - 1].name} does not restore: {changed[:10]}; the first was "
                             f"{before.get(first)!r} and is {after.get(first)!r}")
