"""An action's regular expressions are matched in linear time (found attacking issue 19's fixes: a
ReDoS through ``inputSchema``).

Python's ``re`` backtracks and holds the interpreter lock while it does: ``"pattern": "^(a+)+$"``
against 31 ``a`` and a ``!`` held a synchronous execute for a minute (then Gunicorn's worker
timeout, an HTML 500), and in a flow it stopped every thread of the worker, so other
organizations' runs stalled and lost their leases mid-call. Every pattern a schema holds is now
compiled and matched by RE2 (tolstoy/jsonschemas.py): what RE2 cannot run is a 400 naming
``inputSchema`` at save, and a schema stored before fails its call naming ``inputs``."""

from __future__ import annotations

import re

import pytest
from contract import assert_error
from test_input_schema_refs import finished_run, save, stored_behind_the_api

from tolstoy import jsonschemas

HOSTILE = "^(a+)+$"
# Without a linear engine each of these takes longer than the age of the universe.
SLOW_INPUT = "a" * 64 + "!"


@pytest.fixture
def tool(api, org, server):
    return api.tool(org, baseUrl=server.url_for("/"))


@pytest.fixture
def no_backtracking(monkeypatch):
    """Python's ``re`` refuses to touch the hostile pattern (a test that fails fast instead of hanging
    for ever if a path ever matches a tenant's pattern with it again)."""
    for name in ("search", "match", "fullmatch", "compile", "findall", "finditer", "sub"):
        real = getattr(re, name)

        def guarded(pattern, *args, _real=real, _name=name, **kwargs):
            if isinstance(pattern, str) and pattern in (HOSTILE, "^(x+)+y$"):
                raise AssertionError(f"re.{_name} was given a tenant's pattern: it backtracks")
            return _real(pattern, *args, **kwargs)

        monkeypatch.setattr(re, name, guarded)


SCHEMAS = {
    "pattern": {"type": "object", "properties": {"s": {"type": "string", "pattern": HOSTILE}}},
    "patternProperties": {"type": "object", "patternProperties": {"^(x+)+y$": {"type": "string"}}},
    "format regex": {"type": "object", "properties": {"s": {"type": "string", "format": "regex"}}},
}
INPUTS = {"pattern": {"s": SLOW_INPUT}, "patternProperties": {"x" * 64 + "y": 1}, "format regex": {"s": HOSTILE + "(?=a)"}}


@pytest.mark.parametrize("keyword", list(SCHEMAS))
def test_every_regular_expression_of_a_schema_is_matched_by_re2(keyword, no_backtracking):
    errors = [e.message for e in jsonschemas.validator(SCHEMAS[keyword]).iter_errors(INPUTS[keyword])]
    assert len(errors) == 1, errors


@pytest.mark.parametrize("keyword", list(SCHEMAS))
def test_a_backtracking_pattern_answers_an_execute_at_once(api, org, user, tool, server, keyword, no_backtracking):
    saved = save(api, org, tool, SCHEMAS[keyword])
    assert saved.status_code == 201, saved.text
    call = api.client.simulate_post(f"/actions/{saved.json['id']}/execute", headers=api.headers(org, user),
                                    json={"inputs": INPUTS[keyword]})
    assert_error(call, 400)
    assert server.log == []


@pytest.mark.parametrize("schema", [
    {"type": "string", "pattern": "(a)\\1"},
    {"type": "string", "pattern": "^(?=a)"},
    {"type": "object", "patternProperties": {"(?<!x)y": {}}},
    {"type": "string", "pattern": "a" * (jsonschemas.MAX_PATTERN + 1)},
])
def test_a_pattern_re2_cannot_run_is_a_400_naming_input_schema(api, org, tool, schema):
    body = assert_error(save(api, org, tool, schema), 400, "inputSchema")
    assert "Pattern" in body["errors"][0]["message"], body


def test_the_original_field_array_pattern_is_held_to_the_same_rule(api, org, tool):
    result = api.post("/actions", org, {"toolId": tool["id"], "name": "Get", "key": "legacy", "method": "GET",
                                        "endpoint": "/things", "inputSchema": [
                                            {"name": "s", "type": "string", "validation": {"pattern": "(a)\\1"}}]})
    body = assert_error(result, 400)
    assert "linear time" in str(body), body


def test_an_old_row_with_a_pattern_re2_cannot_run_fails_its_call_not_the_worker(api, org, user, tool, server, db,
                                                                                 worker):
    action = api.create("/actions", org, {"toolId": tool["id"], "name": "Get", "key": "old", "method": "GET",
                                          "endpoint": "/things", "inputSchema": {"type": "object"}})
    stored_behind_the_api(db, org, action, {"type": "object", "properties": {"s": {"pattern": "(a)\\1"}}})
    call = api.client.simulate_post(f"/actions/{action['id']}/execute", headers=api.headers(org, user),
                                    json={"inputs": {"s": "aa"}})
    body = assert_error(call, 400, "inputs")
    assert "linear time" in body["errors"][0]["message"], body
    flow = api.flow(org, [{"id": "call", "type": "action", "config": {"actionId": action["id"], "inputs": {"s": "a"}}}])
    run = finished_run(api, org, user, flow)
    assert run["status"] == "failed" and "linear time" in str(run["error"]), run
    assert server.log == []
