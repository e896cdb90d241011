"""/tools/{id}/auth: a tool's credentials, encrypted at rest and shown masked.

Covers POST of every credential type (201, Location, ``name`` defaulting to
"default", secrets masked and non-secret fields shown), validation (type, config
fields per type, unknown fields, header names, tokenUrl, isDefault), replacing a
credential by posting its name again, at most one default per tool, GET (masked),
DELETE by name (204 then 404), other organizations' tools (404 everywhere), the
stored ``secret`` column (encrypted, never the clear value), deleting a tool that
still has credentials (409), the service without an encryption key (503), and
``tolstoy secrets rotate`` (data keys re-wrapped with the newest key while the
ciphertexts stay as they are, the old key refused, the engine still authenticating
with the new key). Envelope encryption itself: tests/engine/test_envelope_encryption.py."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid

import pytest
from contract import assert_error
from falcon import testing
from psycopg.rows import dict_row

from tolstoy.api.app import create_app
from tolstoy.cli import main as cli_main
from tolstoy.cli import rotate_secrets
from tolstoy.db import migrate
from tolstoy.engine import generate_key, vault_from_config
from tolstoy.engine.keys import fingerprint
from tolstoy.errors import VaultError
from tolstoy.redaction import MASK

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
FIELDS = {"id", "toolId", "name", "type", "config", "isDefault", "createdAt", "updatedAt"}

# type → (config sent, secret fields, fields shown as sent)
CASES = {
    "apiKey": ({"headerName": "X-Api-Key", "headerValue": "key-123456789"}, ["headerValue"], ["headerName"]),
    "bearer": ({"token": "tok-abcdefghijk"}, ["token"], []),
    "basic": ({"username": "ada", "password": "s3cret-pass"}, ["password"], ["username"]),
    "oauth2": ({"clientId": "client-1", "clientSecret": "csecret-123456", "tokenUrl": "https://auth.example.com/token",
                "scopes": ["read", "write"], "accessToken": "access-tok-9999", "refreshToken": "refresh-tok-8888"},
               ["clientSecret", "accessToken", "refreshToken"], ["clientId", "tokenUrl", "scopes"]),
}
ALL_SECRETS = [config[f] for config, secret, _ in CASES.values() for f in secret]


@pytest.fixture
def tool(api, org):
    return api.tool(org, "Service", authType="bearer")


def auth_path(tool: dict, name: str | None = None) -> str:
    return f"/tools/{tool['id']}/auth" + (f"/{name}" if name is not None else "")


def listing(api, org, tool) -> list:
    result = api.client.simulate_get(auth_path(tool), headers=api.headers(org))
    assert result.status_code == 200, result.text
    return result.json


def stored(db, tool_id=None) -> list[dict]:
    """tool_credentials rows as the database holds them."""
    with db.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "select org_id, id, tool_id, name, type::text as type, secret, is_default from tool_credentials"
            " where %(tool)s::uuid is null or tool_id = %(tool)s::uuid order by created_at, id",
            {"tool": tool_id})
        return cur.fetchall()


def vault(db, config, keys: str | None = None):
    """A vault on the owner's pool with these TOLSTOY_ENCRYPTION_KEY keys (the configured ones by default)."""
    return vault_from_config(dataclasses.replace(config, encryption_key=keys or config.encryption_key), db)


def opened(db, config, row: dict, keys: str | None = None):
    """A stored secret decrypted as its organization (row-level security binds the owner too)."""
    with db.tenant(row["org_id"]):
        return vault(db, config, keys).decrypt(row["org_id"], row["secret"])


def wrapped_keys(db) -> dict:
    """organization_keys rows: {(org_id, version): (kek_id, wrapped)}."""
    with db.pool.connection() as conn:
        rows = conn.execute("select org_id, version, kek_id, wrapped from organization_keys").fetchall()
    return {(str(r["org_id"]), r["version"]): (r["kek_id"], bytes(r["wrapped"])) for r in rows}


# ---- create ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(CASES))
def test_create_each_type_masks_its_secrets(api, org, tool, db, config, kind):
    sent, secret_fields, shown = CASES[kind]
    result = api.post(auth_path(tool), org, {"type": kind, "config": sent})
    assert result.status_code == 201, result.text
    body = result.json
    assert set(body) == FIELDS
    uuid.UUID(body["id"])
    assert body["toolId"] == tool["id"]
    assert body["name"] == "default"
    assert body["type"] == kind
    assert body["isDefault"] is False
    assert TIMESTAMP.match(body["createdAt"]) and TIMESTAMP.match(body["updatedAt"])
    assert result.headers["location"] == f"/tools/{tool['id']}/auth/default"
    assert set(body["config"]) == set(sent)
    for field in shown:
        assert body["config"][field] == sent[field]
    for field in secret_fields:
        assert isinstance(body["config"][field], str)
        assert body["config"][field] != sent[field]
        assert body["config"][field].startswith(MASK)
        assert sent[field] not in result.text
    # Listed the same way, masked.
    assert listing(api, org, tool) == [body]
    # At rest: encrypted with the organization's data key (version 1), decryptable with the configured key.
    [row] = stored(db, tool["id"])
    assert (row["name"], row["type"], row["is_default"]) == ("default", kind, False)
    raw = bytes(row["secret"])
    assert raw[:5] == b"\x01\x00\x00\x00\x01"
    for field in secret_fields:
        assert sent[field].encode() not in raw
    for field in shown:
        if isinstance(sent[field], str):
            assert sent[field].encode() not in raw  # the whole config is encrypted
    assert opened(db, config, row) == sent


def test_short_secrets_are_fully_masked(api, org, tool):
    body = api.create(auth_path(tool), org, {"type": "basic", "config": {"username": "u", "password": "pw"}})
    assert body["config"] == {"username": "u", "password": MASK}
    empty = api.create(auth_path(tool), org, {"name": "empty", "type": "basic",
                                              "config": {"username": "u", "password": ""}})
    assert empty["config"]["username"] == "u"
    assert empty["config"]["password"] in ("", MASK)


def test_name_and_is_default_are_kept(api, org, tool):
    result = api.post(auth_path(tool), org, {"name": "prod key", "type": "bearer", "config": {"token": "t" * 20},
                                             "isDefault": True})
    assert result.status_code == 201, result.text
    assert result.json["name"] == "prod key" and result.json["isDefault"] is True
    assert result.headers["location"] == f"/tools/{tool['id']}/auth/prod%20key"


def test_oauth2_optional_fields_may_be_left_out(api, org, tool):
    body = api.create(auth_path(tool), org, {"type": "oauth2", "config": {
        "clientId": "c", "clientSecret": "secret-secret-1", "tokenUrl": "http://localhost:8080/token"}})
    assert body["config"] == {"clientId": "c", "clientSecret": MASK + "et-1", "tokenUrl": "http://localhost:8080/token"}


@pytest.mark.parametrize("body, field", [
    ({"type": "digest", "config": {"token": "x"}}, "type"),
    ({"type": "none", "config": {}}, "type"),
    ({"type": "Bearer", "config": {"token": "x"}}, "type"),
    ({"type": None, "config": {"token": "x"}}, "type"),
    ({"config": {"token": "x"}}, "type"),
    ({"type": "bearer"}, "config"),
    ({"type": "bearer", "config": None}, "config"),
    ({"type": "bearer", "config": "token"}, "config"),
    ({"type": "bearer", "config": {}}, "config.token"),
    ({"type": "bearer", "config": {"token": ""}}, "config.token"),
    ({"type": "bearer", "config": {"token": 123}}, "config.token"),
    ({"type": "bearer", "config": {"token": "x", "extra": 1}}, "config.extra"),
    ({"type": "apiKey", "config": {"headerName": "X-Key"}}, "config.headerValue"),
    ({"type": "apiKey", "config": {"headerValue": "v"}}, "config.headerName"),
    ({"type": "apiKey", "config": {"headerName": "Bad Header", "headerValue": "v"}}, "config.headerName"),
    ({"type": "apiKey", "config": {"headerName": "X-Key:", "headerValue": "v"}}, "config.headerName"),
    ({"type": "apiKey", "config": {"headerName": "", "headerValue": "v"}}, "config.headerName"),
    ({"type": "basic", "config": {"username": "ada"}}, "config.password"),
    ({"type": "basic", "config": {"password": "p"}}, "config.username"),
    ({"type": "basic", "config": {"username": "ada", "password": "p", "token": "t"}}, "config.token"),
    ({"type": "oauth2", "config": {"clientId": "c", "clientSecret": "s"}}, "config.tokenUrl"),
    ({"type": "oauth2", "config": {"clientId": "c", "clientSecret": "s", "tokenUrl": "not a url"}}, "config.tokenUrl"),
    ({"type": "oauth2", "config": {"clientId": "c", "clientSecret": "s", "tokenUrl": "ftp://x.example/t"}},
     "config.tokenUrl"),
    ({"type": "oauth2", "config": {"clientId": "c", "tokenUrl": "https://x.example/t"}}, "config.clientSecret"),
    ({"type": "oauth2", "config": {"clientSecret": "s", "tokenUrl": "https://x.example/t"}}, "config.clientId"),
    ({"type": "oauth2", "config": {"clientId": "c", "clientSecret": "s", "tokenUrl": "https://x.example/t",
                                   "scopes": "read"}}, "config.scopes"),
    ({"type": "bearer", "config": {"token": "x"}, "isDefault": "true"}, "isDefault"),
    ({"type": "bearer", "config": {"token": "x"}, "isDefault": 1}, "isDefault"),
    ({"type": "bearer", "config": {"token": "x"}, "isDefault": None}, "isDefault"),
    ({"type": "bearer", "config": {"token": "x"}, "name": ""}, "name"),
    ({"type": "bearer", "config": {"token": "x"}, "name": "n" * 201}, "name"),
    ({"type": "bearer", "config": {"token": "x"}, "name": 5}, "name"),
    ({"type": "bearer", "config": {"token": "x"}, "secret": "x"}, "secret"),
])
def test_validation(api, org, tool, body, field):
    assert_error(api.post(auth_path(tool), org, body), 400, field)
    assert listing(api, org, tool) == []


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null"])
def test_malformed_body_is_400(api, org, tool, raw):
    result = api.client.simulate_post(auth_path(tool), body=raw,
                                      headers={**api.headers(org), "Content-Type": "application/json"})
    assert_error(result, 400, "body")


def test_secret_values_do_not_appear_in_validation_errors(api, org, tool):
    result = api.post(auth_path(tool), org, {"type": "bearer", "config": {"token": "tok-abcdefghijk", "oops": 1}})
    assert_error(result, 400, "config.oops")
    assert "tok-abcdefghijk" not in result.text


# ---- replace, default ---------------------------------------------------------------------

def test_posting_the_same_name_replaces_it(api, org, tool, db, config):
    first = api.create(auth_path(tool), org, {"name": "main", "type": "bearer", "config": {"token": "first-token-1"}})
    second = api.create(auth_path(tool), org, {"name": "main", "type": "apiKey",
                                               "config": {"headerName": "X-K", "headerValue": "second-value-2"}})
    assert second["name"] == "main" and second["type"] == "apiKey"
    assert second["config"] == {"headerName": "X-K", "headerValue": MASK + "ue-2"}
    assert listing(api, org, tool) == [second]
    rows = stored(db, tool["id"])
    assert len(rows) == 1
    assert opened(db, config, rows[0]) == {"headerName": "X-K", "headerValue": "second-value-2"}
    assert first["id"] == second["id"]
    # Names are per tool: the same name on another tool is another credential.
    other_tool = api.tool(org, "Other")
    api.create(auth_path(other_tool), org, {"name": "main", "type": "bearer", "config": {"token": "x"}})
    assert len(stored(db)) == 2


def test_only_one_default_per_tool(api, org, tool, db):
    other_tool = api.tool(org, "Other")
    elsewhere = api.create(auth_path(other_tool), org, {"name": "x", "type": "bearer", "config": {"token": "t"},
                                                        "isDefault": True})
    a = api.create(auth_path(tool), org, {"name": "a", "type": "bearer", "config": {"token": "a"}, "isDefault": True})
    assert a["isDefault"] is True
    b = api.create(auth_path(tool), org, {"name": "b", "type": "bearer", "config": {"token": "b"}, "isDefault": True})
    assert b["isDefault"] is True
    assert {c["name"]: c["isDefault"] for c in listing(api, org, tool)} == {"a": False, "b": True}
    # A non-default post leaves the default alone.
    api.create(auth_path(tool), org, {"name": "c", "type": "bearer", "config": {"token": "c"}})
    api.create(auth_path(tool), org, {"name": "a", "type": "bearer", "config": {"token": "a2"}})
    assert {c["name"]: c["isDefault"] for c in listing(api, org, tool)} == {"a": False, "b": True, "c": False}
    # Re-posting the default without isDefault makes it not the default.
    api.create(auth_path(tool), org, {"name": "b", "type": "bearer", "config": {"token": "b"}})
    assert [c["isDefault"] for c in listing(api, org, tool)] == [False, False, False]
    # Other tools are unaffected.
    assert listing(api, org, other_tool) == [elsewhere]
    assert sum(r["is_default"] for r in stored(db)) == 1


def test_list_is_newest_first_and_masked(api, org, tool):
    names = ["one", "two", "three"]
    for name in names:
        api.create(auth_path(tool), org, {"name": name, "type": "basic",
                                          "config": {"username": name, "password": f"password-{name}-xyz"}})
    got = listing(api, org, tool)
    assert [c["name"] for c in got] == list(reversed(names))
    assert [c["config"]["username"] for c in got] == list(reversed(names))
    for name in names:
        result = api.client.simulate_get(auth_path(tool), headers=api.headers(org))
        assert f"password-{name}-xyz" not in result.text
    assert all(set(c) == FIELDS for c in got)


def test_empty_list(api, org, tool):
    assert listing(api, org, tool) == []


# ---- delete ---------------------------------------------------------------------------------

def test_delete_by_name_then_404(api, org, tool, db):
    api.create(auth_path(tool), org, {"name": "keep", "type": "bearer", "config": {"token": "k"}})
    api.create(auth_path(tool), org, {"name": "prod key", "type": "bearer", "config": {"token": "p"}})
    path = auth_path(tool, "prod%20key")
    result = api.client.simulate_delete(path, headers=api.headers(org))
    assert result.status_code == 204, result.text
    assert result.text == ""
    assert [c["name"] for c in listing(api, org, tool)] == ["keep"]
    assert [r["name"] for r in stored(db)] == ["keep"]
    assert_error(api.client.simulate_delete(path, headers=api.headers(org)), 404)
    assert_error(api.client.simulate_delete(auth_path(tool, "missing"), headers=api.headers(org)), 404)
    assert api.client.simulate_delete(auth_path(tool, "keep"), headers=api.headers(org)).status_code == 204
    assert listing(api, org, tool) == []


def test_delete_on_another_tool_does_not_touch_this_one(api, org, tool):
    other_tool = api.tool(org, "Other")
    api.create(auth_path(tool), org, {"name": "main", "type": "bearer", "config": {"token": "k"}})
    assert_error(api.client.simulate_delete(auth_path(other_tool, "main"), headers=api.headers(org)), 404)
    assert len(listing(api, org, tool)) == 1


def test_deleting_a_tool_with_credentials_is_409(api, org, tool):
    api.create(auth_path(tool), org, {"type": "bearer", "config": {"token": "k"}})
    body = assert_error(api.client.simulate_delete(f"/tools/{tool['id']}", headers=api.headers(org)), 409)
    assert "credentials" in body["message"]
    assert api.client.simulate_get(f"/tools/{tool['id']}", headers=api.headers(org)).status_code == 200
    assert api.client.simulate_delete(auth_path(tool, "default"), headers=api.headers(org)).status_code == 204
    assert api.client.simulate_delete(f"/tools/{tool['id']}", headers=api.headers(org)).status_code == 204


# ---- tenancy and routing ---------------------------------------------------------------------

def test_another_organizations_tool_is_404_on_every_route(api, org, tool, db):
    api.create(auth_path(tool), org, {"type": "bearer", "config": {"token": "tok-abcdefghijk"}})
    other = api.org("Other")
    assert_error(api.post(auth_path(tool), other, {"type": "bearer", "config": {"token": "stolen"}}), 404)
    # 404 comes before body validation.
    assert_error(api.post(auth_path(tool), other, {"type": "nope"}), 404)
    assert_error(api.client.simulate_get(auth_path(tool), headers=api.headers(other)), 404)
    assert_error(api.client.simulate_delete(auth_path(tool, "default"), headers=api.headers(other)), 404)
    # The owner's credential is untouched.
    [row] = stored(db)
    assert row["name"] == "default" and len(listing(api, org, tool)) == 1


@pytest.mark.parametrize("tool_id", ["7d4c5a36-2f0e-4d59-9a4e-0b6f1c2d3e4f", "not-a-uuid"])
def test_missing_or_malformed_tool_is_404(api, org, tool_id):
    fake = {"id": tool_id}
    assert_error(api.post(auth_path(fake), org, {"type": "bearer", "config": {"token": "t"}}), 404)
    assert_error(api.client.simulate_get(auth_path(fake), headers=api.headers(org)), 404)
    assert_error(api.client.simulate_delete(auth_path(fake, "default"), headers=api.headers(org)), 404)


def test_org_header_is_required(api, tool):
    result = api.client.simulate_get(auth_path(tool))
    assert_error(result, 400, "X-Org-ID")


def test_methods_not_allowed(api, org, tool):
    # DELETE /tools/{id}/auth (no name) is the original service's tools.auth.delete (test_compat.py).
    for method in ("PUT", "PATCH"):
        result = api.client.simulate_request(method, auth_path(tool), headers=api.headers(org))
        assert_error(result, 405)
        assert set(result.headers["allow"].split(", ")) >= {"GET", "POST", "DELETE"}
    for method in ("GET", "POST", "PUT", "PATCH"):
        result = api.client.simulate_request(method, auth_path(tool, "default"), headers=api.headers(org))
        assert_error(result, 405)
        assert "DELETE" in result.headers["allow"]


def test_without_an_encryption_key_credentials_are_unavailable(api, org, tool, config, db, app_db):
    keyless = testing.TestClient(create_app(dataclasses.replace(config, encryption_key=None), app_db))
    result = keyless.simulate_post(auth_path(tool), json={"type": "bearer", "config": {"token": "t"}},
                                   headers=api.headers(org))
    assert_error(result, 503)
    assert "TOLSTOY_ENCRYPTION_KEY" in result.json["message"]
    assert stored(db) == []


# ---- rotation -------------------------------------------------------------------------------

def setup_rotation(api, org, tool, httpserver):
    """A bearer tool on httpserver with a default credential, plus a basic one elsewhere."""
    api.client.simulate_patch(f"/tools/{tool['id']}", json={"baseUrl": httpserver.url_for("/api")},
                              headers=api.headers(org))
    api.create(auth_path(tool), org, {"type": "bearer", "config": {"token": "rotating-token-1"}, "isDefault": True})
    other_org = api.org("Other")
    other_tool = api.tool(other_org, "Basic", authType="basic")
    api.create(auth_path(other_tool), other_org, {"type": "basic", "config": {"username": "u", "password": "pw-123"}})
    return api.action(org, tool, key="me.get", endpoint="/me")


def test_rotate_secrets_rewraps_the_data_keys_with_the_new_key(api, org, tool, db, app_db, config, httpserver):
    user = api.user(org)
    action = setup_rotation(api, org, tool, httpserver)
    old_key, new_key = config.encryption_key, generate_key()
    before = {r["id"]: bytes(r["secret"]) for r in stored(db)}
    keys_before = wrapped_keys(db)
    assert {kek for kek, _ in keys_before.values()} == {fingerprint(old_key)}

    counts = rotate_secrets(db, vault(db, config, f"{new_key},{old_key}"))
    assert (counts["organizations"], counts["rewrapped"], counts["legacy"]) == (2, 2, 0)
    assert counts["kek_id"] == fingerprint(new_key)

    # The data keys are wrapped anew; the data they encrypt is untouched.
    keys_after = wrapped_keys(db)
    assert set(keys_after) == set(keys_before)
    for key, (kek, wrapped) in keys_after.items():
        assert kek == fingerprint(new_key) and wrapped != keys_before[key][1]
    rows = stored(db)
    assert {r["id"]: bytes(r["secret"]) for r in rows} == before
    configs = {}
    for row in rows:
        configs[row["type"]] = opened(db, config, row, new_key)
        with pytest.raises(VaultError):
            opened(db, config, row, old_key)
    assert configs == {"bearer": {"token": "rotating-token-1"}, "basic": {"username": "u", "password": "pw-123"}}

    # The engine with the new key still authenticates the tool's requests.
    httpserver.expect_oneshot_request("/api/me", headers={"Authorization": "Bearer rotating-token-1"}) \
        .respond_with_json({"ok": True})
    rotated = testing.TestClient(create_app(dataclasses.replace(config, encryption_key=new_key), app_db))
    result = rotated.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                   headers=api.headers(org, user))
    assert result.status_code == 200 and result.json["success"] is True, result.text
    httpserver.check_assertions()
    # The masked listing works with the new key.
    listed = rotated.simulate_get(auth_path(tool), headers=api.headers(org)).json
    assert listed[0]["config"] == {"token": MASK + "en-1"}

    # A process with only the old key (and no data key in memory) can no longer read the credential:
    # a clean failure, no request.
    stale_app = testing.TestClient(create_app(dataclasses.replace(config, encryption_key=old_key), app_db))
    stale = stale_app.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                    headers=api.headers(org, user))
    assert stale.status_code == 200 and stale.json["success"] is False
    assert "TOLSTOY_ENCRYPTION_KEY" in stale.json["data"]["error"]
    assert len(httpserver.log) == 1


def test_rotate_is_idempotent_and_a_foreign_key_fails_without_changes(api, org, tool, db, config, httpserver):
    setup_rotation(api, org, tool, httpserver)
    old_key, new_key = config.encryption_key, generate_key()
    assert rotate_secrets(db, vault(db, config, f"{new_key},{old_key}"))["rewrapped"] == 2
    assert rotate_secrets(db, vault(db, config, f"{new_key},{old_key}"))["rewrapped"] == 0
    for row in stored(db):
        opened(db, config, row, new_key)
    before = ({r["id"]: bytes(r["secret"]) for r in stored(db)}, wrapped_keys(db))
    # A key that wraps nothing stored cannot unwrap the data keys: nothing changes, for any organization.
    with pytest.raises(VaultError):
        rotate_secrets(db, vault(db, config, generate_key()))
    assert ({r["id"]: bytes(r["secret"]) for r in stored(db)}, wrapped_keys(db)) == before


def test_secrets_rotate_command(api, org, tool, db, config, httpserver, worker_env, database_url, monkeypatch,
                                capsys):
    setup_rotation(api, org, tool, httpserver)
    new_key = generate_key()
    for name, value in {**worker_env, "TOLSTOY_ENCRYPTION_KEY": f"{new_key},{config.encryption_key}"}.items():
        monkeypatch.setenv(name, value)
    # As a DBA runs it: as the schema owner (not a superuser), which sees every organization.
    monkeypatch.setenv("DIRECT_URL", migrate.as_role(database_url, migrate.OWNER_ROLE))
    assert cli_main(["secrets", "rotate"]) == 0
    assert "re-wrapped 2 data key(s) of 2 organization(s)" in capsys.readouterr().err
    for row in stored(db):
        assert opened(db, config, row, new_key)


def test_apikey_credential_is_sent_as_its_header_and_kept_out_of_logs(api, org, db, config, httpserver):
    user = api.user(org)
    tool = api.tool(org, "Keyed", baseUrl=httpserver.url_for("/"), authType="apiKey")
    api.create(auth_path(tool), org, {"type": "apiKey", "config": {"headerName": "X-Secret-Key",
                                                                   "headerValue": "value-abcdef-123"}})
    httpserver.expect_oneshot_request("/k", headers={"X-Secret-Key": "value-abcdef-123"}).respond_with_json({})
    action = api.action(org, tool, endpoint="/k")
    result = api.client.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                      headers=api.headers(org, user))
    assert result.json["success"] is True, result.text
    httpserver.check_assertions()
    logs = api.client.simulate_get("/execution-logs", headers=api.headers(org)).json
    assert logs and "value-abcdef-123" not in json.dumps(logs)


def test_a_masked_value_sent_back_is_a_400_not_a_broken_secret(client, api, org):
    """A client that reads a credential (masked) and sends it back would store the mask in place of the
    secret; found attacking issue 19's fixes. The secret fields of every type, and the original
    service's secrets route, refuse it, naming the field."""
    tool = api.tool(org, authType="oauth2")
    headers = api.headers(org)
    stored = api.create(f"/tools/{tool['id']}/auth", org, {"type": "oauth2", "config": {
        "clientId": "c", "clientSecret": "client-secret-12345678", "tokenUrl": "https://id.example.com/token"}})
    shown = stored["config"]["clientSecret"]
    assert shown.startswith("***")
    for kind, config, field in (
            ("oauth2", {"clientId": "c", "clientSecret": shown, "tokenUrl": "https://id.example.com/token"},
             "config.clientSecret"),
            ("bearer", {"token": "***5678"}, "config.token"),
            ("basic", {"username": "u", "password": "***"}, "config.password"),
            ("apiKey", {"headerName": "X-Key", "headerValue": "***abcd"}, "config.headerValue")):
        result = client.simulate_post(f"/tools/{tool['id']}/auth", json={"name": kind, "type": kind, "config": config},
                                      headers=headers)
        body = assert_error(result, 400, field)
        assert "masked form" in str(body), body
    compat = client.simulate_post(f"/tools/{tool['id']}/secrets", json={"credentials": {"clientSecret": shown}},
                                  headers=headers)
    body = assert_error(compat, 400, "credentials.clientSecret")
    assert "masked form" in str(body), body
