"""The audit trail over the whole catalog (issue 23), so that the next table holding configuration
cannot be forgotten: every table a service role may write either records its changes (the
tolstoy_audit trigger, after insert, update and delete of each row) or is on a reviewed list with
the reason its rows are no configuration; no audited table keeps a secret in a column the trigger
would show; the trigger's secret names are tolstoy/redaction.py's; and events go only past
retention, only through tolstoy_prune_audit."""

from __future__ import annotations

import json
import re

from tolstoy import engine
from tolstoy.api.audit import AUDIT_TARGET_TYPES
from tolstoy.redaction import SENSITIVE_HEADERS, SENSITIVE_KEYS, mask_json

# Tables a service role writes whose rows are not configuration, each with the reason.
NOT_AUDITED = {
    "flow_versions": "written by the flows triggers as part of a flow's change, whose event carries steps and version",
    "flow_runs": "run history (the runs' own records)",
    "flow_run_steps": "run history",
    "flow_run_signals": "signals delivered to waiting runs",
    "execution_logs": "run history: the runs' own audit trail, with the user who wrote each row",
    "flow_trigger_deliveries": "the inbox of received webhook requests (run inputs)",
    "webhook_deliveries": "the outbox of events sent to webhooks",
    "oauth_tokens": "access tokens the engine refreshes for an oauth2 credential (the credential's changes are audited)",
    "oauth_states": "a login in progress (the connection it makes is audited)",
    "organization_keys": "wrapped data keys: made on first use and rotated by `tolstoy secrets`, not by a request",
    "secret_reads": "the trail of credential reads, append-only itself",
    "sync_execute_slots": "slots of synchronous calls in flight",
    "organization_usage": "counters of an organization's runs, kept by admitting and finishing them",
    "history_bytes": "the stored bytes of finished runs, appended as they finish (usage, not configuration)",
    "webhook_lines": "the delivery order of each webhook's events (the outbox's own bookkeeping)",
    "organization_worker_time": "the worker time each organization used lately, kept by the engine (fair claims)",
    "flow_step_slots": "the slots of steps' concurrency limits, taken and freed by running runs (the limit is the "
                       "flow's step, audited with the flow)",
    "tool_rate_budgets": "each credential's rate budget, taken by every call and taught by providers' answers "
                         "(usage; the declared limit is the tool's, audited with it)",
}
# A column of an audited table whose name says it holds a secret must be bytea (encrypted or hashed):
# the trigger shows every bytea column as '***'.
SECRET_NAMED = re.compile(r"secret|token|password|hash|credential|wrapped|private")
# Columns whose names match but hold no secret, each with what it holds.
NAMED_LIKE_A_SECRET = {
    ("user_connections", "token_url"): "the token endpoint a connection's tokens were issued by (a public URL)",
}


def writable_tables(conn) -> set[str]:
    rows = conn.execute(
        "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = 'public' and c.relkind in ('r', 'p') and not c.relispartition "
        "and exists (select 1 from unnest(array['tolstoy_app', 'tolstoy_worker', 'tolstoy_admin']) as r(role) "
        "            where has_table_privilege(r.role, c.oid, 'insert, update, delete'))").fetchall()
    return {row["relname"] for row in rows}


def audit_triggers(conn) -> dict[str, list[dict]]:
    rows = conn.execute(
        "select c.relname as table, t.tgname as name, t.tgtype as type, t.tgnargs as nargs, t.tgargs as args "
        "from pg_trigger t join pg_class c on c.oid = t.tgrelid join pg_proc p on p.oid = t.tgfoid "
        "where p.proname = 'tolstoy_audit' and not t.tgisinternal").fetchall()
    found: dict[str, list[dict]] = {}
    for row in rows:
        row["args"] = bytes(row["args"]).split(b"\x00")[:row["nargs"]]
        found.setdefault(row["table"], []).append(row)
    return found


def test_every_table_a_service_writes_is_audited_or_reviewed(db):
    with db.pool.connection() as conn:
        writable = writable_tables(conn)
        triggers = audit_triggers(conn)
    assert {"tools", "flows", "api_keys", "webhooks", "user_connections"} <= writable
    audited = set(triggers)
    assert writable - audited - set(NOT_AUDITED) == set(), "tables written by a service: audit them or say why not"
    assert audited & set(NOT_AUDITED) == set()
    assert set(NOT_AUDITED) - writable == set(), "reviewed tables that are gone or no longer written"
    for table, found in triggers.items():
        assert len(found) == 1, table
        [trigger] = found
        # tgtype bits: 1 row, 2 before, 4 insert, 8 delete, 16 update (and not before: after).
        assert trigger["type"] & 1 and not trigger["type"] & 2, table
        assert trigger["type"] & (4 | 8 | 16) == 4 | 8 | 16, table
        assert trigger["args"][0].decode() in AUDIT_TARGET_TYPES, (table, trigger["args"])


def test_no_audited_table_keeps_a_secret_in_a_column_the_trigger_would_show(db):
    with db.pool.connection() as conn:
        audited = list(audit_triggers(conn))
        columns = conn.execute(
            "select c.relname as table, a.attname as column, format_type(a.atttypid, a.atttypmod) as type "
            "from pg_attribute a join pg_class c on c.oid = a.attrelid "
            "where c.relname = any(%s) and a.attnum > 0 and not a.attisdropped", (audited,)).fetchall()
    secret_named = [c for c in columns if SECRET_NAMED.search(c["column"])]
    assert {(c["table"], c["column"]) for c in secret_named} >= {
        ("tool_credentials", "secret"), ("webhooks", "secret"), ("flow_triggers", "secret"),
        ("api_keys", "key_hash"), ("user_connections", "tokens")}
    assert [c for c in secret_named if c["type"] != "bytea" and (c["table"], c["column"]) not in NAMED_LIKE_A_SECRET] == []
    assert set(NAMED_LIKE_A_SECRET) <= {(c["table"], c["column"]) for c in secret_named}, "reviewed columns that are gone"


# Values the trigger's masking must treat as tolstoy/redaction.py's mask_json does: nested, under
# names in any case and spelling, composite values under a secret name, and text that only looks
# like a secret-named key (inside a string, a longer name).
MASK_SAMPLES = [
    {"a": [{"Authorization": "Bearer x", "X-Api-Key": "k"}], "clientSecret": "s", "keep": {"n": 1}},
    {"token": {"nested": ["a", {"b": 1}]}, "password": [1, 2], "TOKEN": 5, "Set-Cookie": True, "X-API-KEY": None},
    {"note": 'he said "token": "abc" and \\"password\\": 1', "tokens": "not a secret name", "mytoken": "x"},
    [{"steps": [{"config": {"headers": {"proxy-authorization": "Basic abc", "Accept": "json"}}}]}, "token", 3],
    {"weird \"token\"": "kept", "refresh_token": "a\\", "after": "b", "api-key": -1.5e3},
    {"deep": [[[[{"access_token": {"token": "t"}, "plain": "p"}]]]]},
]


def test_the_triggers_masking_is_the_redaction_rule(db):
    with db.pool.connection() as conn:
        names = conn.execute("select tolstoy_audit_secret_names() as names").fetchone()["names"]
        masked = [conn.execute("select tolstoy_audit_mask(%s::jsonb) as v", (json.dumps(sample),)).fetchone()["v"]
                  for sample in MASK_SAMPLES]
    assert set(names) == {name.lower().replace("-", "_") for name in SENSITIVE_KEYS | SENSITIVE_HEADERS}
    assert masked == [mask_json(sample) for sample in MASK_SAMPLES]
    # Spelling a header's name with '_' (x_api_key) is masked here too: more, never less, than the rule.
    assert all(mask_json(value) == value for value in masked)
    assert masked[0] == {"a": [{"Authorization": "***", "X-Api-Key": "***"}], "clientSecret": "***", "keep": {"n": 1}}


def test_events_go_only_past_retention_through_the_workers_upkeep(db, worker_db, config, api, org):
    api.tool(org)
    with db.pool.connection() as conn:
        for days in (400, 300):
            conn.execute("insert into audit_events (org_id, created_at, actor, action, target_type, target_id, "
                         "changes) values (%s, now() - make_interval(days => %s), '{}', 'tool.created', 'tool', %s, "
                         "'{}')", (org["id"], days, org["id"]))
        before = conn.execute("select count(*) as n from audit_events").fetchone()["n"]
    # Without a retention nothing goes.
    kept = engine.worker(config, worker_db, audit_retention_days=None).prune()
    assert kept["audit"] == 0
    # The workers' housekeeping, as configured (TOLSTOY_AUDIT_RETENTION_DAYS, 365 by default).
    assert config.audit_retention_days == 365
    assert engine.worker(config, worker_db).maintain()["pruned"]["audit"] == 1
    with db.pool.connection() as conn:
        left = conn.execute("select now() - created_at < interval '366 days' as recent from audit_events").fetchall()
    assert len(left) == before - 1 and all(row["recent"] for row in left)
