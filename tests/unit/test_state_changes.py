"""A state change is one SQL function (issue 24): no named query changes the state of a run or of a
step (its status, or its place in the queue) by itself, so an API responder (or anything else) cannot compose a state change from several
statements; it calls the function that makes it (tolstoy/engine/lifecycle.py, runner.py's
tolstoy_checkpoint), whose source says the whole of it."""

from __future__ import annotations

import re

from tolstoy import paths

# An update of flow_runs or flow_run_steps (any alias) whose set list (up to its where) names a column of
# the run's state: its status, or where it stands in the queue (when it is due, who holds it, whether a
# cancel was asked for; a step's wake time). Waking a run is a state change too: the signal's send set
# run_after in a named query until sending became tolstoy_send_signal.
STATE_COLUMNS = r"(status|run_after|wake_at|cancel_requested|lease_owner|lease_token|lease_expires_at)"
STATE_WRITE = re.compile(r"\bupdate\s+(flow_runs|flow_run_steps)\b[^;]*?\bset\b(?:(?!\bwhere\b)[^;])*?(?<![\w.])"
                         + STATE_COLUMNS + r"\s*=", re.IGNORECASE | re.S)


def state_writes(text: str) -> list[str]:
    """The tables whose state the SQL ``text`` changes (comments left out)."""
    return [match[1] for match in STATE_WRITE.finditer(re.sub(r"--[^\n]*", "", text))]


def test_no_named_query_changes_a_runs_or_a_steps_state():
    found = {path.name: state_writes(path.read_text()) for path in sorted((paths.CHECKOUT / "sql").glob("*.sql"))}
    assert {name: tables for name, tables in found.items() if tables} == {}
    # The rule sees what it is meant to: the statements cancel, resolve and a signal's send were composed from.
    assert state_writes("update flow_runs\nset status = case when status in ('queued') then 'cancelled' end, "
                        "cancel_requested = true where org_id = :org_id") == ["flow_runs"]
    assert state_writes("update flow_run_steps\nset status = :status, outputs = :outputs where step_id = :s") == [
        "flow_run_steps"]
    assert state_writes("update flow_runs r set run_after = tolstoy_now() where r.status = 'queued'") == ["flow_runs"]
    # ...and not what it is not: other columns, or the state named only where rows are chosen.
    assert state_writes("update flow_run_steps s set sealed = n.sealed from n where s.status = 'completed'") == []
    assert state_writes("update flow_runs set variables = '{}' where status = 'queued'") == []
