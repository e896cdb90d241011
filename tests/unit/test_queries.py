"""The named-query loader and the rules every query file follows (no database)."""

from __future__ import annotations

import re

import pytest

from tolstoy.db import queries
from tolstoy.db.queries import SQL

# session.sql opens and closes units of work: it is what sets the tenant. server.sql prepares a
# server we run ourselves (the schema owner role, its database) before any migration.
UNSCOPED = {"organizations", "health", "metrics", "session", "server"}


# The worker's: security-definer functions that check their own arguments (the durable_engine migration).
# The flow_triggers migration's: the public webhook's lookup of its trigger, the workers' claim of due
# schedules and the time of the next one (security definer), and the fire of claimed schedules, which
# acts for each schedule's organization in turn (row-level security).
CROSS_TENANT = {"runs.claim", "runs.renew_leases", "runs.maintain_history", "triggers.hook_target",
                "triggers.claim_schedules", "triggers.next_schedule", "triggers.fire_schedules",
                # The event_webhooks migration's claim of due deliveries (security definer).
                "webhooks.claim",
                # The upkeep's housekeeping batch (security-definer functions of the event_webhooks,
                # wait_signals and housekeeping_keeps_up migrations; the audit_events one's retention).
                "runs.prune"}
# A function that acts for one organization takes it as an argument.
FOR_ORG = r"tolstoy_\w+\((%\(\w+\)s(::\w+)?, )*%\(org_id\)s"


def all_queries():
    return [q for ns in vars(SQL).values() for q in vars(ns).values()]


def test_parser_reads_headers_suffixes_docs_and_params():
    text = (
        "-- preamble prose\n\n"
        "-- name: get_thing^\n-- Fetch one thing.\n"
        "select a::text, '10:30' from t where id = :id and x like 'a%';\n\n"
        "-- name: count$\nselect count(*) from t where org_id = :org_id;\n"
    )
    parsed = queries.parse(text, "things", "things.sql")
    assert set(parsed) == {"get_thing", "count"}
    get = parsed["get_thing"]
    assert get.kind == "one" and get.doc == "Fetch one thing." and get.source == "things.sql:3"
    assert get.sql == "select a::text, '10:30' from t where id = %(id)s and x like 'a%%';"
    assert parsed["count"].kind == "scalar"


def test_parser_rejects_duplicates_and_empty_queries():
    with pytest.raises(ValueError, match="defined twice"):
        queries.parse("-- name: a\nselect 1;\n-- name: a\nselect 2;\n", "x", "x.sql")
    with pytest.raises(ValueError, match="has no SQL"):
        queries.parse("-- name: a\n-- only a comment\n", "x", "x.sql")


def test_every_query_has_a_description():
    for query in all_queries():
        assert query.doc, f"{query} has no description line"


def test_tenant_queries_filter_by_org_id():
    for namespace, group in vars(SQL).items():
        if namespace in UNSCOPED:
            continue
        for query in vars(group).values():
            if query.name in CROSS_TENANT:
                continue
            if query.sql.startswith("insert"):
                # An insert writes the caller's org_id as the row's first value.
                assert re.search(r"(values \(|select )%\(org_id\)s,|\borg_id = %\(org_id\)s", query.sql), \
                    f"{query} does not set org_id"
            else:
                assert re.search(r"\borg_id = %\(org_id\)s|" + FOR_ORG, query.sql), f"{query} is not scoped by org_id"


def test_lists_use_keyset_pagination():
    for query in all_queries():
        if query.name.endswith(".list"):
            assert re.search(r"order by (\w+\.)?created_at desc, (\w+\.)?id desc", query.sql), query
            assert re.search(r"\((\w+\.)?created_at, (\w+\.)?id\) <", query.sql), query
            assert "offset" not in query.sql.lower(), query
