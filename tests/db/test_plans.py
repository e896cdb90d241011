"""A run's plan (tolstoy_plan) holds the actions its steps name, by key or by id, wherever in the
steps they are named (a foreach's step, onFailure), each once and with its tool; and it reads no other
action of the organization: queueing a run costs what the flow calls, not what the organization has
(migration plans_look_up_their_actions)."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb


def organization_with_actions(conn, count: int) -> tuple[str, list[dict]]:
    org = conn.execute("insert into organizations (name) values ('plans') returning id").fetchone()[0]
    tool = conn.execute("insert into tools (org_id, name, base_url, auth_type) "
                        "values (%s, 'tool', 'https://tool.example.com', 'none') returning id", (org,)).fetchone()[0]
    actions = conn.execute(
        "insert into actions (org_id, tool_id, name, key, method, endpoint) "
        "select %s, %s, 'Action ' || n, 'action-' || n, 'GET', '/things' from generate_series(1, %s) as n "
        "returning id::text, key", (org, tool, count)).fetchall()
    conn.execute("analyze actions")
    return str(org), [{"id": a[0], "key": a[1]} for a in actions]


def action_step(step_id: str, **config) -> dict:
    return {"id": step_id, "type": "action", "config": {"inputs": {}, **config}}


def test_the_plan_holds_the_actions_the_steps_name_each_once(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        org, actions = organization_with_actions(conn, 6)
        a, b, c, d = actions[:4]
        steps = [action_step("by-key", actionKey=a["key"]),
                 {"id": "each", "type": "foreach", "config": {"items": [1], "step": {
                     "type": "action", "config": {"actionId": b["id"], "inputs": {}}}}},
                 action_step("both", actionKey=a["key"]),  # a second time: still once
                 action_step("id-and-key", actionId=a["id"]),
                 action_step("not-an-id", actionId="nope"),
                 action_step("upper", actionId=d["id"].upper()),  # ids compare as their text: no match
                 action_step("unknown", actionKey="no-such-action")]
        on_failure = [action_step("rescue", actionKey=c["key"])]
        plan = conn.execute("select tolstoy_plan(%s, %s, %s)", (org, Jsonb(steps), Jsonb(on_failure))).fetchone()[0]
        other = conn.execute("insert into organizations (name) values ('other') returning id").fetchone()[0]
        elsewhere = conn.execute("select tolstoy_plan(%s, %s)", (other, Jsonb(steps))).fetchone()[0]
        none = conn.execute("select tolstoy_plan(%s, %s)",
                            (org, Jsonb([{"id": "t", "type": "transform", "config": {"output": 1}}]))).fetchone()[0]
    assert plan["steps"] == steps and plan["onFailure"] == on_failure
    assert sorted(x["key"] for x in plan["actions"]) == sorted([a["key"], b["key"], c["key"]])
    assert all(x["tool"]["name"] == "tool" and x["tool"]["base_url"] == "https://tool.example.com"
               for x in plan["actions"])
    assert elsewhere["actions"] == []  # another organization's actions are not its own
    assert none == {"steps": [{"id": "t", "type": "transform", "config": {"output": 1}}], "actions": []}


def test_the_plan_reads_only_the_actions_it_names(database_url):
    """Over an organization of 3,000 actions, a plan naming two reads a handful of rows of actions by
    index, not a pass over them, and one naming none reads none: what the session's table counters
    (pg_stat_xact_user_tables) gained during the call."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        org, actions = organization_with_actions(conn, 3000)
    counters = ("select seq_scan, seq_tup_read, idx_scan, idx_tup_fetch from pg_stat_xact_user_tables "
                "where relname = 'actions'")

    def read_by(conn, steps) -> tuple[dict, list[int]]:
        with conn.transaction():
            before = conn.execute(counters).fetchone()
            plan = conn.execute("select tolstoy_plan(%s, %s)", (org, Jsonb(steps))).fetchone()[0]
            after = conn.execute(counters).fetchone()
        return plan, [(a or 0) - (b or 0) for a, b in zip(after, before, strict=True)]

    with psycopg.connect(database_url) as conn:
        steps = [action_step("one", actionKey=actions[10]["key"]), action_step("two", actionId=actions[2000]["id"])]
        for _ in range(8):  # past the five custom plans, to the session's generic plan
            plan, (seq_scans, seq_rows, _, fetched) = read_by(conn, steps)
            assert sorted(a["key"] for a in plan["actions"]) == sorted([actions[10]["key"], actions[2000]["key"]])
            # No pass over the table; the index scans fetch a handful of rows (a bitmap scan counts some twice).
            assert (seq_scans, seq_rows) == (0, 0) and fetched <= 4, (seq_scans, seq_rows, fetched)
        plan, read = read_by(conn, [{"id": "t", "type": "transform", "config": {"output": 1}}])
        assert plan["actions"] == [] and read == [0, 0, 0, 0]
