"""The who_may_act_as_a_user migration on a database that already holds keys and runs, migrated as
production migrates it: by the schema's owner, a role that is no superuser, so row-level security
(forced on api_keys and flow_runs) binds it too. Each organization's first key gets impersonate
(so every organization keeps a key that may bind keys to users), no other key gains anything, runs
queued before keep the authority they were queued with, and the down section takes impersonate
away again."""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
from psycopg.rows import dict_row

from tolstoy.db import migrate

VERSION = "20261207000300"


@pytest.fixture
def owned_url(url_for, admin_db, template_url):
    """An empty database owned by the schema owner role the template is migrated by (tolstoy_owner:
    LOGIN CREATEROLE, no superuser, made by migrate.prepare_owner), readied and migrated as
    `tolstoy db up` does it (db/bootstrap.sql, dbmate, db/grants.sql)."""
    name = f"upgrade_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin_db.execute_admin(f'create database "{name}" owner {migrate.OWNER_ROLE}')
    url = migrate.as_role(url_for(name), migrate.OWNER_ROLE)
    migrate.upgrade(url, quiet=True)
    yield url
    admin_db.execute_admin(f'drop database if exists "{name}" with (force)')


def newest(conn) -> str:
    return conn.execute("select max(version) as v from schema_migrations").fetchone()["v"]


def as_org(conn, org_id, sql: str, *params) -> list[dict]:
    """Rows of one statement in a transaction acting for ``org_id`` (row-level security)."""
    with conn.transaction():
        conn.execute("select set_config('app.org_id', %s, true)", (str(org_id),))
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def test_first_keys_get_impersonate_and_earlier_runs_keep_their_user(owned_url):
    migrate.run(["up"], owned_url, quiet=True)
    with psycopg.connect(owned_url, autocommit=True, row_factory=dict_row) as conn:
        assert not conn.execute("select rolsuper from pg_roles where rolname = current_user").fetchone()["rolsuper"]
        while newest(conn) >= VERSION:  # back to the schema before it (and anything newer)
            migrate.run(["rollback"], owned_url, quiet=True)
        orgs = [uuid.uuid4(), uuid.uuid4()]
        for n, org in enumerate(orgs):
            as_org(conn, org, "insert into organizations (id, name) values (%s, %s)", org, f"Org {n}")
            for name, scopes, age in (("default", "{read,write,execute,admin}", "2 hours"),
                                      ("ci", "{read,write,execute,admin}", "1 hour"),
                                      ("reader", "{read}", "1 minute")):
                as_org(conn, org, "insert into api_keys (org_id, name, prefix, key_hash, scopes, created_at) "
                                  "values (%s, %s, 'tsk_test', sha256(gen_random_uuid()::text::bytea), %s, "
                                  "now() - %s::interval)",
                       org, name, scopes, age)
        org = orgs[0]
        [user] = as_org(conn, org, "insert into users (org_id, email) values (%s, 'ada@old.example') returning id",
                        org)
        [flow] = as_org(conn, org, "insert into flows (org_id, name, steps) values (%s, 'F', "
                                   "'[{\"id\": \"a\", \"type\": \"transform\", \"config\": {\"output\": 1}}]') "
                                   "returning id", org)
        queue = "select (q.run).id from tolstoy_queue_run(%s, %s, 1, %s, '{}', null, null) q"
        as_org(conn, org, queue, org, flow["id"], user["id"])

        migrate.run(["up"], owned_url, quiet=True)
        for each in orgs:
            scopes = {r["name"]: r["scopes"] for r in as_org(conn, each, "select name, scopes from api_keys")}
            assert scopes == {"default": ["read", "write", "execute", "admin", "impersonate"],
                              "ci": ["read", "write", "execute", "admin"], "reader": ["read"]}
        assert [r["acts_as_user"] for r in as_org(conn, org, "select acts_as_user from flow_runs")] == [True]
        # From now on a run acts as its user only when whoever queues it says it may.
        queue = "select (q.run).acts_as_user from tolstoy_queue_run(%s, %s, 1, %s, '{}', null, null"
        for extra, actor, expected in (("", user["id"], False), (", true", user["id"], True), (", true", None, False)):
            [row] = as_org(conn, org, queue + extra + ") q", org, flow["id"], actor)
            assert row["acts_as_user"] is expected, (extra, actor)

        while newest(conn) >= VERSION:
            migrate.run(["rollback"], owned_url, quiet=True)
        scopes = {r["name"]: r["scopes"] for r in as_org(conn, org, "select name, scopes from api_keys")}
        assert scopes["default"] == ["read", "write", "execute", "admin"]
