"""The SQL of rate budgets (db/functions/rate_budgets.sql), one function at a time: whose credential a
call uses (the scope), what a provider's answers teach a window as they cross on the way back, and
the takes of a declared rate: even spacing, reserved slots in turn, the longest wait refused."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def setup(api, db):
    org = api.org()
    user = api.user(org)
    tool = api.create("/tools", org, {"name": "T", "baseUrl": "https://t.example.com", "authType": "oauth2"})
    conn = db.pool.getconn()
    conn.autocommit = True
    conn.execute("select set_config('app.org_id', %s, false)", (org["id"],))
    yield conn, org["id"], user["id"], tool["id"]
    db.pool.putconn(conn)


def scope(conn, org, tool, user, acts_as_user):
    return conn.execute("select tolstoy_rate_scope(%s, %s, %s, %s) as s", (org, tool, user, acts_as_user)).fetchone()["s"]


def test_a_users_connection_has_its_own_budget_only_when_the_run_acts_as_that_user(setup):
    conn, org, user, tool = setup
    assert scope(conn, org, tool, user, True) == "organization"  # not connected: the tool's credential
    conn.execute("insert into user_connections (org_id, user_id, tool_id, tokens) values (%s, %s, %s, '\\x00')",
                 (org, user, tool))
    assert scope(conn, org, tool, user, True) == f"user:{user}"
    assert scope(conn, org, tool, user, False) == "organization"
    assert scope(conn, org, tool, None, True) == "organization"


def window(conn, org, tool):
    return conn.execute("select window_remaining, extract(epoch from window_reset_at - tolstoy_now()) as left "
                        "from tool_rate_budgets where org_id = %s and tool_id = %s", (org, tool)).fetchone()


def learn(conn, org, tool, **lesson):
    conn.execute("select tolstoy_learn_budget(%s, %s, 'organization', %s::jsonb)", (org, tool, json.dumps(lesson)))


def test_answers_crossing_on_the_way_back_keep_the_least_left_of_a_window(setup):
    conn, org, _, tool = setup
    learn(conn, org, tool, requests=10, remaining=7, reset_seconds=30)
    learn(conn, org, tool, remaining=9, reset_seconds=30.2)  # sent earlier, answered later: same window
    assert window(conn, org, tool)["window_remaining"] == 7
    learn(conn, org, tool, remaining=3, reset_seconds=5)  # an earlier window's late answer
    assert window(conn, org, tool)["window_remaining"] == 7
    learn(conn, org, tool, remaining=10, reset_seconds=90)  # the next window
    assert window(conn, org, tool)["window_remaining"] == 10


def take(conn, org, tool, **call):
    return conn.execute("select tolstoy_take_budget(%s, %s, 'organization', %s::jsonb) as t",
                        (org, tool, json.dumps(call))).fetchone()["t"]


def test_takes_of_a_declared_rate_are_spaced_reserved_in_turn_and_bounded(setup, api, clock):
    conn, org, _, tool = setup
    conn.execute("update tools set rate_limit = '{\"requests\": 2, \"perSeconds\": 60}' where id = %s", (tool,))
    assert take(conn, org, tool)["wait"] == 0
    second = take(conn, org, tool, max_wait_seconds=100)
    third = take(conn, org, tool, max_wait_seconds=100)
    assert second["reserved"] and third["reserved"]
    assert 29 < second["wait"] <= 30 and 59 < third["wait"] <= 60  # one slot each, in turn
    refused = take(conn, org, tool, max_wait_seconds=60)
    assert refused["refused"]  # its slot would be 90 s away
    clock.move(31)
    # The second's slot came: it goes; a fresh call queues behind the third's reservation.
    assert take(conn, org, tool, reserved_until=second["until"])["wait"] == 0
    assert take(conn, org, tool, max_wait_seconds=1000)["wait"] > 29


def test_a_window_with_nothing_left_holds_calls_until_its_reset_then_the_next_window(setup, clock):
    conn, org, _, tool = setup
    # GitHub's form: a limit and what is left until the reset, no window length; the resets show it.
    learn(conn, org, tool, requests=2, remaining=1, reset_seconds=10)
    assert take(conn, org, tool)["wait"] == 0
    held = take(conn, org, tool)
    assert 9 < held["wait"] <= 10 and held["reserved"]  # nothing left: its slot is the reset
    clock.move(11)
    # The next window is assumed as long as the last one seen, with the stated limit, spread over it.
    assert take(conn, org, tool, reserved_until=held["until"])["wait"] == 0
    assert 3 < take(conn, org, tool)["wait"] <= 5


def test_a_lesson_about_a_tool_deleted_since_the_plan_was_made_teaches_nothing(setup):
    conn, org, _, tool = setup
    conn.execute("delete from tools where id = %s", (tool,))
    learn(conn, org, tool, throttled=True, pause_seconds=30)  # no foreign key violation failing the checkpoint
    assert conn.execute("select count(*) as n from tool_rate_budgets").fetchone()["n"] == 0
    assert take(conn, org, tool) == {"wait": 0}
