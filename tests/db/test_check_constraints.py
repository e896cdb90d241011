"""Every check constraint is accounted for: a value the database refuses that validation let through
(``HTTP://…`` in a tool's baseUrl passed marshmallow and failed tools_base_url_scheme: a 500, found
attacking issue 19's fixes) answers 400 naming its field. The noun module that owns a table names the
field of each constraint on what a client sends (``CONSTRAINTS.checks``) and lists those on what only the
service decides (``CONSTRAINTS.service``); the app assembles them (tolstoy/api/app.py CONSTRAINTS). A new
constraint must be put in one of them."""

from __future__ import annotations

import pytest
from contract import assert_error

from tolstoy.api.app import CONSTRAINTS
from tolstoy.errors import CheckViolation


def test_every_check_constraint_names_its_field_or_is_the_services_own(db):
    with db.pool.connection() as conn:
        found = {row["conname"] for row in conn.execute(
            "select distinct c.conname from pg_constraint c join pg_class t on t.oid = c.conrelid "
            "join pg_namespace n on n.oid = t.relnamespace "
            "where c.contype = 'c' and n.nspname = 'public' and not t.relispartition").fetchall()}
    checks, service = set(CONSTRAINTS.checks), CONSTRAINTS.service
    assert not checks & service
    unaccounted = found - checks - service
    assert not unaccounted, ("name each constraint's field in its noun's CONSTRAINTS.checks (or .service): "
                             f"{sorted(unaccounted)}")
    gone = (checks | service) - found
    assert not gone, f"no such constraint any more: {sorted(gone)}"


def test_a_check_constraint_the_store_meets_is_a_400_naming_its_field(api, org, monkeypatch):
    """Validation and the database disagreeing (a bug of ours) still answers the client with a 400:
    the store is made to meet the constraint as the database would raise it."""
    tool = api.tool(org)
    from tolstoy.db.database import Database

    real = Database.one

    def one(self, query, /, **params):
        if query.name == "tools.update":
            raise CheckViolation("tools_base_url_scheme")
        return real(self, query, **params)

    monkeypatch.setattr(Database, "one", one)
    result = api.client.simulate_patch(f"/tools/{tool['id']}", json={"baseUrl": "https://api.example.org"},
                                       headers=api.headers(org))
    body = assert_error(result, 400, "baseUrl")
    assert body["errors"][0]["message"] == "Not an allowed value.", body


@pytest.mark.parametrize("scheme", ["HTTP", "Https", "hTTp"])
def test_a_url_scheme_in_any_case_is_stored_in_lower_case(api, org, scheme):
    tool = api.create("/tools", org, {"name": f"t-{scheme}", "baseUrl": f"{scheme}://api.example.com/v1",
                                      "authType": "none"})
    assert tool["baseUrl"] == f"{scheme.lower()}://api.example.com/v1"
    moved = api.client.simulate_patch(f"/tools/{tool['id']}", json={"baseUrl": f"{scheme}://api.example.com/v2"},
                                      headers=api.headers(org))
    assert moved.status_code == 200 and moved.json["baseUrl"] == f"{scheme.lower()}://api.example.com/v2", moved.text
    hook = api.create("/webhooks", org, {"name": f"w-{scheme}", "url": f"{scheme}://hooks.example.com/in",
                                         "eventTypes": ["flow.completed"]})
    assert hook["url"] == f"{scheme.lower()}://hooks.example.com/in"
