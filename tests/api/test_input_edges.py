"""Odd but well-formed input that once reached the database or Python unchecked:
each must be a clean 4xx, never a 500."""

from __future__ import annotations

from falcon import testing

from tolstoy.api.app import create_app
from tolstoy.config import Config


def test_non_ascii_digits_are_not_a_version_number(api):
    org = api.org()
    flow = api.flow(org)
    for version in ("%C2%B2", "%D9%A3", "1"):
        result = api.client.simulate_get(f"/flows/{flow['id']}/versions/{version}", headers=api.headers(org))
        assert result.status_code == (200 if version == "1" else 404), version


def test_a_credential_name_with_nul_is_simply_not_found(api):
    org = api.org()
    tool = api.tool(org)
    result = api.client.simulate_delete(f"/tools/{tool['id']}/auth/a%00b", headers=api.headers(org))
    assert result.status_code == 404 and result.json["statusCode"] == 404


def test_action_ids_in_steps_are_stored_in_one_spelling(api):
    org = api.org()
    action = api.action(org, api.tool(org))
    spelled = f"urn:uuid:{action['id'].upper()}"
    flow = api.flow(org, steps=[{"id": "a", "type": "action", "config": {"actionId": spelled, "inputs": {}}}])
    assert flow["steps"][0]["config"]["actionId"] == action["id"]


def test_an_input_schema_with_a_dangling_ref_is_refused(api):
    org = api.org()
    result = api.post("/actions", org, {"toolId": api.tool(org)["id"], "name": "a", "key": "a", "method": "GET",
                                        "endpoint": "/", "inputSchema": {"$ref": "#/definitions/nowhere"}})
    assert result.status_code == 400 and result.json["errors"][0]["field"] == "inputSchema"


def test_an_api_key_listing_organizations_gets_the_same_query_checks(worker_env, app_db):
    admin = "admin-" + "a" * 40
    config = Config.from_env({**worker_env, "TOLSTOY_AUTH_MODE": "api_key",
                              "TOLSTOY_API_KEY_SECRET": "s" * 40, "TOLSTOY_ADMIN_TOKEN": admin})
    client = testing.TestClient(create_app(config, app_db))
    made = client.simulate_post("/organizations", json={"name": "A"},
                                headers={"Authorization": f"Bearer {admin}"}).json
    key = made["apiKey"]
    result = client.simulate_get("/organizations", params={"bogus": "1"}, headers={"Authorization": f"Bearer {key}"})
    assert result.status_code == 400 and result.json["errors"][0]["field"] == "bogus"
    listed = client.simulate_get("/organizations", headers={"Authorization": f"Bearer {key}"}).json
    assert [row["id"] for row in listed] == [made["id"]]
