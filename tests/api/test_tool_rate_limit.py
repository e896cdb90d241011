"""A tool's declared rate limit (``rateLimit``) and ``GET /tools/{id}/rate-limit`` (issue 26): the
field's round trip and its validation (a 400 naming the field, nothing written); the sub-resource
shows the declared limit and each credential's budget as the database's clock sees it, another
organization's tool is a 404, and budgets moving leave the tool's own ETag alone."""

from __future__ import annotations

import json

import pytest
from contract import bad_request

VALID = {"name": "Shopify", "baseUrl": "https://shop.example.com", "authType": "bearer"}


def test_rate_limit_round_trip_and_clear(client, api):
    org = api.org()
    tool = api.create("/tools", org, {**VALID, "rateLimit": {"requests": 100, "perSeconds": 60}})
    assert tool["rateLimit"] == {"requests": 100, "perSeconds": 60}
    path, headers = f"/tools/{tool['id']}", api.headers(org)
    assert client.simulate_get(path, headers=headers).json["rateLimit"] == {"requests": 100, "perSeconds": 60}
    changed = client.simulate_patch(path, headers=headers, json={"rateLimit": {"requests": 2, "perSeconds": 1}})
    assert changed.status_code == 200 and changed.json["rateLimit"] == {"requests": 2, "perSeconds": 1}
    cleared = client.simulate_patch(path, headers=headers, json={"rateLimit": None})
    assert cleared.status_code == 200 and cleared.json["rateLimit"] is None
    # Without the field, a tool declares none (and the contract's body still creates it).
    assert api.create("/tools", org, {**VALID, "name": "Other"})["rateLimit"] is None


@pytest.mark.parametrize(("value", "field"), [
    ({"requests": 0, "perSeconds": 60}, "rateLimit.requests"),
    ({"requests": 1_000_001, "perSeconds": 60}, "rateLimit.requests"),
    ({"requests": 10, "perSeconds": 0}, "rateLimit.perSeconds"),
    ({"requests": 10, "perSeconds": 86_401}, "rateLimit.perSeconds"),
    ({"requests": "10", "perSeconds": 60}, "rateLimit.requests"),
    ({"requests": 1.5, "perSeconds": 60}, "rateLimit.requests"),
    ({"perSeconds": 60}, "rateLimit.requests"),
    ({"requests": 10}, "rateLimit.perSeconds"),
    ({"requests": 10, "perSeconds": 60, "burst": 5}, "rateLimit.burst"),
    ("100/min", "rateLimit"),
    ([100, 60], "rateLimit"),
])
def test_bad_rate_limits_are_a_400_naming_the_field(client, api, value, field):
    org = api.org()
    result = api.post("/tools", org, {**VALID, "rateLimit": value})
    assert bad_request(result, field) is None, bad_request(result, field)
    assert client.simulate_get("/tools", headers=api.headers(org)).json == []  # nothing written


def test_the_rate_limit_sub_resource(client, api, db):
    org, other = api.org(), api.org("Other")
    tool = api.create("/tools", org, {**VALID, "rateLimit": {"requests": 5, "perSeconds": 10}})
    path, headers = f"/tools/{tool['id']}/rate-limit", api.headers(org)
    got = client.simulate_get(path, headers=headers)
    assert got.status_code == 200, got.text
    assert got.json == {"toolId": tool["id"], "declared": {"requests": 5, "perSeconds": 10}, "budgets": []}
    etag = client.simulate_get(f"/tools/{tool['id']}", headers=headers).headers["etag"]

    # What a worker's checkpoints write: a lesson from a provider (a 429 with Retry-After and GitHub's
    # headers), and a take. As the database's functions do it, for the organization.
    with db.pool.connection() as conn:
        conn.execute("select set_config('app.org_id', %s, false)", (org["id"],))
        conn.execute("select tolstoy_learn_budget(%s, %s, 'organization', %s::jsonb)",
                     (org["id"], tool["id"], json.dumps({"throttled": True, "pause_seconds": 30, "requests": 5000,
                                                         "remaining": 0, "reset_seconds": 600})))
        conn.execute("select tolstoy_take_budget(%s, %s, 'organization', '{}'::jsonb)", (org["id"], tool["id"]))
    [budget] = client.simulate_get(path, headers=headers).json["budgets"]
    assert budget["scope"] == "organization" and budget["userId"] is None
    assert budget["learned"]["requests"] == 5000 and budget["learned"]["perSeconds"] is None
    assert budget["window"]["remaining"] == 0 and budget["window"]["resetsAt"]
    assert budget["pausedUntil"] and budget["throttled"] == 1 and budget["waitedSeconds"] == 0
    # The tool itself did not change: its ETag is the same.
    assert client.simulate_get(f"/tools/{tool['id']}", headers=headers).headers["etag"] == etag

    # Another organization's tool, and ids that name nothing, are 404s.
    assert client.simulate_get(path, headers=api.headers(other)).status_code == 404
    assert client.simulate_get("/tools/not-a-uuid/rate-limit", headers=headers).status_code == 404
    assert client.simulate_get(f"/tools/{org['id']}/rate-limit", headers=headers).status_code == 404
