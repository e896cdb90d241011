"""Masking is linear in the number of secrets and in the size of what is masked: a foreach whose every
item returns secrets of its own (secret-named fields, short ones and ones sharing a prefix as API keys
do, echoed elsewhere in the output) or echoes the run's credential costs the same per item at the
thousandth item as at the first, and no item's output is masked again as items go on. Asserted with
counts of the lines the engine and the redaction run (support.LinesRun), never timings;
bench/foreach_masking.py times 10,000 items."""

from __future__ import annotations

import pytest
from support import LinesRun
from test_engine import execute, step, wait_for
from werkzeug import Response

from tolstoy import engine

# The redaction and the engine's run loop, with the step kinds the items run through (tolstoy/engine/steps/).
MASKING = ("tolstoy/redaction.py", "tolstoy/engine/runner.py", "tolstoy/engine/steps/foreach.py",
           "tolstoy/engine/steps/transform.py", "tolstoy/engine/steps/calling.py", "tolstoy/engine/steps/action.py")


def secret_items(api, org, server) -> dict:
    """Items that each return secrets of their own: a long one sharing its first characters with every
    other item's (as sk_live_… keys do), a short one, and the long one echoed under a plain name."""
    return {"type": "transform", "config": {"output": {
        "i": "{{ index }}", "token": "sk_live_{{ variables.salt }}_{{ index }}",
        "password": "p{{ index + 10000 }}", "echo": "paid with sk_live_{{ variables.salt }}_{{ index }}"}}}


def credential_echo(api, org, server) -> dict:
    """Items that each call a tool which answers with the credential it was sent."""
    server.expect_request("/whoami").respond_with_handler(
        lambda request: Response('{"you": "%s"}' % request.headers.get("Authorization"),
                                 content_type="application/json"))
    tool = api.tool(org, baseUrl=server.url_for("/"), authType="bearer")
    api.create(f"/tools/{tool['id']}/auth", org, {"name": "ci", "type": "bearer",
                                                  "config": {"token": "tok-0123456789abcdef"}, "isDefault": True})
    action = api.action(org, tool, key="who.ami", method="GET", endpoint="/whoami")
    return {"type": "action", "config": {"actionKey": action["key"], "inputs": {}}}


@pytest.mark.parametrize(("items", "small"), [(secret_items, 250), (credential_echo, 60)])
def test_masking_a_foreach_costs_the_same_per_item_however_many_items(
        api, org, user, config, worker_db, server, items, small):
    inner = items(api, org, server)
    flow = api.flow(org, steps=[step("each", "foreach", {"items": "{{ range(variables.n) | list }}",
                                                         "step": inner, "concurrency": 4})])
    lines = {}
    for n in (small, 4 * small):
        execution_id = execute(api, org, user, flow, {"n": n, "salt": f"Zq{n}x"})["executionId"]
        with LinesRun(*MASKING) as counted:
            engine.worker(config, worker_db, concurrency=1, poll_seconds=0.1).run(stop_after_idle=True)
        run = wait_for(api, org, flow, execution_id)
        assert run["status"] == "completed" and len(run["outputs"]["each"]) == n, run["status"]
        shown = str(run["outputs"]["each"])
        assert "sk_live_" not in shown and "0123456789abcdef" not in shown  # masked, every one
        lines[n] = counted.count
    # Four times the items, four times the work (and a little less: the run's own fixed costs).
    assert lines[4 * small] <= 4.2 * lines[small], lines
