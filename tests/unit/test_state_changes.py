"""A state change is one SQL function (issue 24): no named query changes the status of a run or of a
step by itself, so an API responder (or anything else) cannot compose a state change from several
statements; it calls the function that makes it (tolstoy/engine/lifecycle.py, runner.py's
tolstoy_checkpoint), whose source says the whole of it."""

from __future__ import annotations

import re

from tolstoy import paths

# An update of flow_runs or flow_run_steps (any alias) whose set list names status.
STATUS_WRITE = re.compile(r"\bupdate\s+(flow_runs|flow_run_steps)\b[^;]*?\bset\b[^;]*?(?<![\w.])status\s*=",
                          re.IGNORECASE | re.S)


def status_writes(text: str) -> list[str]:
    """The tables whose status the SQL ``text`` sets (comments left out)."""
    return [match[1] for match in STATUS_WRITE.finditer(re.sub(r"--[^\n]*", "", text))]


def test_no_named_query_changes_a_runs_or_a_steps_status():
    found = {path.name: status_writes(path.read_text()) for path in sorted((paths.CHECKOUT / "sql").glob("*.sql"))}
    assert {name: tables for name, tables in found.items() if tables} == {}
    # The rule sees what it is meant to: the statements cancel and resolve were composed from.
    assert status_writes("update flow_runs\nset status = case when status in ('queued') then 'cancelled' end, "
                         "cancel_requested = true where org_id = :org_id") == ["flow_runs"]
    assert status_writes("update flow_run_steps\nset status = :status, outputs = :outputs where step_id = :s") == [
        "flow_run_steps"]
    assert status_writes("update flow_runs r set run_after = now() where r.status = 'queued'") == []
