"""Per-organization envelope encryption, on real PostgreSQL: each organization's
secrets under a data key of its own, wrapped by a key-encryption key (Fernet
keys from the environment or the AWS secret, or AWS KMS against moto); every
ciphertext names its key version; tokens from before still decrypt and are
rewritten; `tolstoy secrets rotate --reencrypt` moves everything to a new
version in batches; every credential decryption leaves a `secret_reads` row a
DBA can query."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import boto3
import pytest
from cryptography.fernet import Fernet, InvalidToken
from falcon import testing
from moto import mock_aws
from test_engine import execute, step, wait_for, wait_until_sleeping
from test_worker_processes import run_status

from tolstoy import engine
from tolstoy.api.app import create_app
from tolstoy.cli import main as cli_main
from tolstoy.cli import reencrypt_secrets, rotate_secrets
from tolstoy.config import Config
from tolstoy.db import migrate
from tolstoy.db.database import Database
from tolstoy.db.queries import Query
from tolstoy.engine.keys import fingerprint
from tolstoy.engine.vault import version_of
from tolstoy.errors import VaultError

README = Path(__file__).resolve().parents[2] / "db" / "README.md"
LOGIN = step("login", "transform", {"output": {"access_token": "tok-sealed-123456", "user": "ada"}})


# ---- helpers ------------------------------------------------------------------------------------

def vault(db, config):
    return engine.vault_from_config(config, db)


def rows(db, sql: str, *params) -> list[dict]:
    """Rows as the owner sees them (every organization)."""
    with db.pool.connection() as conn:
        return conn.execute(sql, params).fetchall()


def data_key(db, config, org_id, version: int = 1) -> Fernet:
    """An organization's unwrapped data key, as the keyring has it."""
    with db.tenant(org_id):
        return vault(db, config).keyring.get(org_id, version)


def credential(api, org, httpserver, token: str, name: str = "Svc") -> tuple[dict, dict]:
    """A bearer tool on httpserver with a default credential, and an action calling GET /me."""
    tool = api.tool(org, name, baseUrl=httpserver.url_for("/api"), authType="bearer")
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "bearer", "config": {"token": token}, "isDefault": True})
    return tool, api.action(org, tool, key=f"me.{name.lower()}", endpoint="/me")


def legacy_token(config, value) -> bytes:
    """A ciphertext as written before envelope encryption: a Fernet token under TOLSTOY_ENCRYPTION_KEY."""
    return Fernet(config.encryption_key.split(",")[0].encode()).encrypt(json.dumps(value).encode())


def secret_of(db, credential_id) -> bytes:
    return bytes(rows(db, "select secret from tool_credentials where id = %s", credential_id)[0]["secret"])


def reads(db, org_id) -> list[dict]:
    return rows(db, "select actor, user_id::text, tool_id::text, credential_id::text, run_id::text, purpose "
                    "from secret_reads where org_id = %s order by read_at, id", org_id)


def sealed_run(api, org, user, worker, flow_steps=None) -> tuple[dict, str]:
    """A finished run whose first step's output holds a secret (so it is sealed)."""
    flow = api.flow(org, steps=flow_steps or [LOGIN])
    run = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    assert run["status"] == "completed", run
    return flow, run["executionId"]


# ---- one data key per organization ----------------------------------------------------------------

def test_two_organizations_get_different_data_keys(api, db, config):
    a, b = api.org("A"), api.org("B")
    made = {}
    for org in (a, b):
        tool = api.tool(org, "Same", authType="bearer")
        made[org["id"]] = api.create(f"/tools/{tool['id']}/auth", org,
                                     {"type": "bearer", "config": {"token": "the-same-secret-1"}})
    stored = {str(r["org_id"]): bytes(r["secret"]) for r in rows(db, "select org_id, secret from tool_credentials")}
    assert stored[a["id"]] != stored[b["id"]]
    keys = rows(db, "select org_id, version, wrapped, kek_id from organization_keys order by org_id")
    assert [r["version"] for r in keys] == [1, 1]
    assert keys[0]["wrapped"] != keys[1]["wrapped"]
    assert {r["kek_id"] for r in keys} == {fingerprint(config.encryption_key)}
    key_a, key_b = data_key(db, config, a["id"]), data_key(db, config, b["id"])
    assert key_a.decrypt(stored[a["id"]][5:]) == key_b.decrypt(stored[b["id"]][5:]) == b'{"token":"the-same-secret-1"}'
    # One organization's data key cannot open the other's ciphertext …
    with pytest.raises(InvalidToken):
        key_a.decrypt(stored[b["id"]][5:])
    # … and a ciphertext copied into another organization's row does not decrypt there.
    with db.tenant(a["id"]), pytest.raises(VaultError):
        vault(db, config).decrypt(a["id"], stored[b["id"]])


def test_every_ciphertext_names_its_data_key_version(api, org, user, db, config, worker):
    tool = api.tool(org, authType="bearer")
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "bearer", "config": {"token": "versioned-token"}})
    _, run_id = sealed_run(api, org, user, worker)
    secret = bytes(rows(db, "select secret from tool_credentials")[0]["secret"])
    [sealed] = rows(db, "select sealed, tolstoy_key_version(sealed) as version from flow_run_steps "
                        "where run_id = %s and sealed is not null", run_id)
    for ciphertext in (secret, bytes(sealed["sealed"])):
        assert ciphertext[0] == 1 and int.from_bytes(ciphertext[1:5], "big") == 1 == version_of(ciphertext)
        assert ciphertext[5:].startswith(b"gAAAAA")  # then the Fernet token
    assert sealed["version"] == 1
    assert rows(db, "select tolstoy_key_version(secret) as v from tool_credentials")[0]["v"] == 1
    legacy = legacy_token(config, {"token": "x"})
    assert version_of(legacy) is None
    assert rows(db, "select tolstoy_key_version(%s) as v", legacy)[0]["v"] is None


def test_a_data_key_made_by_a_transaction_that_rolls_back_is_never_used(api, org, db, config):
    keeper = vault(db, config)
    with pytest.raises(RuntimeError), db.transaction(), db.tenant(org["id"]):
        db.all(Query("test.open", "all", "select 1 as one", "", "test"))  # the transaction is open
        lost = keeper.encrypt(org["id"], {"token": "never-stored"})  # makes version 1 in it
        raise RuntimeError("rolled back")
    assert rows(db, "select * from organization_keys") == []
    with db.tenant(org["id"]):
        kept = keeper.encrypt(org["id"], {"token": "stored"})  # a new version 1, committed at once
        fresh = vault(db, config)
        assert fresh.decrypt(org["id"], kept) == {"token": "stored"}
        with pytest.raises(VaultError):
            fresh.decrypt(org["id"], lost)


# ---- older ciphertexts ----------------------------------------------------------------------------

def test_legacy_tokens_still_decrypt_and_are_rewritten_when_used(api, org, user, db, app_db, config, httpserver):
    tool, action = credential(api, org, httpserver, "placeholder-token")
    [row] = rows(db, "select id from tool_credentials")
    with db.pool.connection() as conn:  # as a credential written before envelope encryption
        conn.execute("update tool_credentials set secret = %s where id = %s",
                     (legacy_token(config, {"token": "legacy-token-1"}), row["id"]))
        conn.execute("delete from organization_keys")
    assert version_of(secret_of(db, row["id"])) is None
    httpserver.expect_request("/api/me", headers={"Authorization": "Bearer legacy-token-1"}) \
        .respond_with_json({"ok": True})
    fresh = testing.TestClient(create_app(config, app_db))  # a process that never saw this organization's keys
    for _ in range(2):  # the first use rewrites it, the second reads the new form
        result = fresh.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                      headers=api.headers(org, user))
        assert result.status_code == 200 and result.json["success"] is True, result.text
        assert version_of(secret_of(db, row["id"])) == 1
    assert len(httpserver.log) == 2
    listed = api.client.simulate_get(f"/tools/{tool['id']}/auth", headers=api.headers(org)).json
    assert listed[0]["config"] == {"token": "***en-1"}


def test_a_legacy_sealed_output_is_still_read_by_the_engine(api, org, user, db, worker, httpserver):
    httpserver.expect_request("/use", headers={"Authorization": "Bearer tok-sealed-123456"}) \
        .respond_with_json({"ok": True})
    flow = api.flow(org, steps=[
        LOGIN,
        step("nap", "delay", {"ms": 400}),
        step("use", "http_request", {"method": "GET", "url": httpserver.url_for("/use"),
                                     "headers": {"Authorization": "Bearer {{ steps.login.access_token }}"}}),
    ])
    run_id = execute(api, org, user, flow)["executionId"]
    wait_until_sleeping(api, org, flow, run_id, "nap")
    legacy = worker.engine.tools.vault.legacy
    with db.pool.connection() as conn:  # the sealed output as the engine wrote it before envelope encryption
        conn.execute("update flow_run_steps set sealed = %s where run_id = %s and step_id = 'login'",
                     (legacy.encrypt(b'{"access_token":"tok-sealed-123456","user":"ada"}'), run_id))
    assert wait_for(api, org, flow, run_id)["status"] == "completed"
    assert len(httpserver.log) == 1


# ---- rotation ---------------------------------------------------------------------------------------

def test_reencrypt_moves_everything_to_version_2_in_batches(api, org, user, db, config, worker, httpserver):
    other = api.org("Other")
    tokens = {f"Svc{i}": f"token-number-{i}-abcdef" for i in range(4)}
    ids = {}
    for name, token in tokens.items():
        credential(api, org, httpserver, token, name)
    credential(api, other, httpserver, "other-org-token-1", "Elsewhere")
    for r in rows(db, "select c.id, t.name from tool_credentials c join tools t on t.id = c.tool_id"):
        ids[r["name"]] = r["id"]
    with db.pool.connection() as conn:  # one of them from before envelope encryption
        conn.execute("update tool_credentials set secret = %s where id = %s",
                     (legacy_token(config, {"token": tokens["Svc3"]}), ids["Svc3"]))
    sealed_run(api, org, user, worker)
    before_rewrap = rotate_secrets(db, vault(db, config))
    assert before_rewrap["rewrapped"] == 0 and before_rewrap["legacy"] == 1

    counts = reencrypt_secrets(db, vault(db, config), batch=2, settle_seconds=0)

    assert counts == {"organizations": 2, "versions": 2, "credentials": 5, "outputs": 1, "retired": 2,
                      "tokens": 0, "triggers": 0, "connections": 0, "webhooks": 0,
                      # this organization: 4 credentials in 2 batches, 1 output; the other: 1 and none
                      "batches": 4}
    versions = rows(db, "select tolstoy_key_version(secret) as v from tool_credentials union all "
                        "select tolstoy_key_version(sealed) from flow_run_steps where sealed is not null")
    assert [r["v"] for r in versions] == [2] * 6
    keys = rows(db, "select version, retired_at is not null as retired from organization_keys "
                    "where org_id = %s order by version", org["id"])
    assert keys == [{"version": 1, "retired": True}, {"version": 2, "retired": False}]
    with db.tenant(org["id"]):
        fresh = vault(db, config)
        assert {name: fresh.decrypt(org["id"], secret_of(db, ids[name]))["token"] for name in tokens} == tokens
    # Each decryption by the command line is on record.
    assert [(r["actor"], r["purpose"]) for r in reads(db, org["id"])
            if r["actor"] == "cli"] == [("cli", "reencrypt")] * 4
    # The API and the engine go on with version 2 (read on a cache miss).
    httpserver.expect_oneshot_request("/api/me", headers={"Authorization": f"Bearer {tokens['Svc0']}"}) \
        .respond_with_json({"ok": True})
    action = next(a for a in api.client.simulate_get("/actions", headers=api.headers(org)).json
                  if a["key"] == "me.svc0")
    result = api.client.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                      headers=api.headers(org, user))
    assert result.json["success"] is True, result.text


def test_an_interrupted_reencrypt_is_finished_by_the_next_run(api, org, db, config, httpserver):
    credential(api, org, httpserver, "interrupted-token-1")
    keeper = vault(db, config)
    with db.transaction(), db.tenant(org["id"]):  # a run that made version 2, then stopped
        db.all(Query("test.open", "all", "select 1 as one", "", "test"))
        assert keeper.keyring.add_version(org["id"]) == 2
    counts = reencrypt_secrets(db, vault(db, config), batch=500, settle_seconds=0)
    assert (counts["versions"], counts["credentials"], counts["retired"]) == (0, 1, 1)
    assert [r["v"] for r in rows(db, "select max(version) as v from organization_keys")] == [2]
    assert rows(db, "select tolstoy_key_version(secret) as v from tool_credentials")[0]["v"] == 2
    # A settled organization (one version in use) gets the next version on the next run.
    again = reencrypt_secrets(db, vault(db, config), batch=500, settle_seconds=0)
    assert (again["versions"], again["credentials"], again["retired"]) == (1, 1, 1)


def test_secrets_rotate_reencrypt_command(api, org, db, httpserver, worker_env, database_url, monkeypatch, capsys):
    credential(api, org, httpserver, "command-token-1")
    for name, value in worker_env.items():
        monkeypatch.setenv(name, value)
    # As a DBA runs it: as the schema owner (not a superuser), which sees every organization.
    monkeypatch.setenv("DIRECT_URL", migrate.as_role(database_url, migrate.OWNER_ROLE))
    monkeypatch.setenv("TOLSTOY_DATA_KEY_TTL", "1")  # how long other processes may cache the old key
    assert cli_main(["secrets", "rotate", "--reencrypt", "--batch-size", "10"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"waiting [01] s for other processes to stop using the older data keys", err), err
    assert ("re-encrypted 1 credential(s), 0 sealed output(s), 0 OAuth2 token(s), 0 trigger secret(s) and "
            "0 user connection(s) of 1 organization(s) in 1 batch(es)") in err
    assert "1 new data key version(s), 1 older version(s) retired" in err


def test_reencrypt_waits_out_other_processes_key_caches_and_moves_tokens_and_trigger_secrets(
        api, org, user, db, config, server):
    """The API process has version 1 cached when the command makes version 2 and goes on encrypting
    with it for up to TOLSTOY_DATA_KEY_TTL: what it writes meanwhile is moved too before version 1 is
    retired. Shared OAuth2 access tokens and webhook trigger secrets move with the credentials."""
    server.expect_request("/token", method="POST").respond_with_json({"access_token": "acc-77", "expires_in": 3600})
    server.expect_request("/me").respond_with_json({"ok": True})
    tool = api.tool(org, baseUrl=server.url_for("/"), authType="oauth2")
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "oauth2", "config": {
        "clientId": "c", "clientSecret": "client-secret-9", "tokenUrl": server.url_for("/token")}})
    action = api.action(org, tool, key="me", method="GET", endpoint="/me")
    executed = api.client.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                        headers=api.headers(org, user))
    assert executed.json["success"] is True, executed.text
    flow = api.flow(org)
    api.create(f"/flows/{flow['id']}/triggers", org, {"type": "webhook"})
    waited = []

    def meanwhile(seconds):  # the API, its cache still on version 1, stores a new credential
        waited.append(seconds)
        other = api.tool(org, name="Late", authType="bearer")
        api.create(f"/tools/{other['id']}/auth", org, {"type": "bearer", "config": {"token": "late-token-1"}})

    counts = reencrypt_secrets(db, vault(db, config), settle_seconds=30, sleep=meanwhile)
    assert len(waited) == 1 and 25 < waited[0] <= 30
    assert (counts["credentials"], counts["tokens"], counts["triggers"], counts["retired"]) == (2, 1, 1, 1)
    versions = rows(db, "select tolstoy_key_version(secret) as v from tool_credentials union all "
                        "select tolstoy_key_version(access_token) from oauth_tokens union all "
                        "select tolstoy_key_version(secret) from flow_triggers where secret is not null")
    assert [r["v"] for r in versions] == [2] * 4


# ---- the audit trail --------------------------------------------------------------------------------

def test_api_and_engine_decryptions_are_recorded_and_a_dba_can_query_them(api, org, user, db, app_db, config,
                                                                          worker, httpserver):
    tool, action = credential(api, org, httpserver, "audited-token-1")
    [cred] = rows(db, "select id::text from tool_credentials")
    assert reads(db, org["id"]) == []  # storing it decrypted nothing
    httpserver.expect_request("/api/me").respond_with_json({"ok": True})
    result = api.client.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                      headers=api.headers(org, user))
    assert result.json["success"] is True, result.text
    flow = api.flow(org, steps=[step("me", "action", {"actionKey": action["key"], "inputs": {}})])
    run = wait_for(api, org, flow, execute(api, org, user, flow)["executionId"])
    assert run["status"] == "completed", run
    api.client.simulate_get(f"/tools/{tool['id']}/auth", headers=api.headers(org, user))
    common = {"user_id": user["id"], "tool_id": tool["id"], "credential_id": cred["id"]}
    assert reads(db, org["id"]) == [
        {"actor": "api", "purpose": "execute", "run_id": None, **common},
        {"actor": "worker", "purpose": "step", "run_id": run["executionId"], **common},
        {"actor": "api", "purpose": "show", "run_id": None, **common},
    ]
    # The DBA's query in db/README.md, as written there.
    query = re.search(r"```sql\n(-- Who decrypted which credential.*?)```", README.read_text(), re.DOTALL).group(1)
    with db.pool.connection() as conn:
        for statement in [s for s in query.replace(":'org'", f"'{org['id']}'").split(";") if s.strip()]:
            cursor = conn.execute(statement)
            if "from secret_reads" in statement:
                found = cursor.fetchall()
    assert [(r["actor"], r["purpose"], r["tool"], r["credential"], r["user_email"]) for r in found] == [
        ("api", "show", tool["name"], "default", user["email"]),
        ("worker", "step", tool["name"], "default", user["email"]),
        ("api", "execute", tool["name"], "default", user["email"]),
    ]
    # The services may add to the trail, never change or remove it, nor delete a data key.
    with app_db.tenant(org["id"]):
        for statement in ("delete from secret_reads", "update secret_reads set purpose = 'x'",
                          "delete from organization_keys"):
            with pytest.raises(Exception, match="permission denied"):
                app_db.rowcount(Query("test.tamper", "rowcount", statement, "", "test"))


def test_a_run_using_a_credential_and_sealing_an_output_costs_no_extra_round_trip(api, org, user, app_url, config,
                                                                                    httpserver, db):
    _, action = credential(api, org, httpserver, "counted-token-1")
    httpserver.expect_request("/api/me").respond_with_json({"ok": True})
    flow = api.flow(org, steps=[LOGIN, step("me", "action", {"actionKey": action["key"], "inputs": {}})])
    counted = Database(migrate.as_role(app_url, migrate.WORKER_ROLE), min_size=1, max_size=2, timeout=5)
    counted.open(wait=True)
    try:
        w = engine.worker(config, counted, concurrency=1, poll_seconds=10)
        w.maintain()
        spent = []
        for _ in range(2):  # the first run finds the organization's data key, the second has it in memory
            w.stopping.clear()  # run() ends by setting it
            run = execute(api, org, user, flow)["executionId"]
            before = counted.counts.snapshot()
            w.run(stop_after_idle=True)
            after = counted.counts.snapshot()
            spent.append({k: after[k] - before[k] for k in after})
            assert run_status(db, run) == "completed"
        # Two claims, the checkpoint before the call, the credential's read (which records it), the finish:
        # what the same run cost before envelope encryption.
        assert spent[1]["round_trips"] <= 5 and spent[1]["statements"] <= 10, spent
        # The first: that, the worker's first history upkeep, and one read of the organization's data keys.
        assert spent[0]["round_trips"] <= spent[1]["round_trips"] + 2, spent
    finally:
        counted.close()


# ---- key-encryption keys from AWS ----------------------------------------------------------------------

@pytest.fixture
def aws(monkeypatch):
    """moto in this process, with the dummy credentials and region boto3 reads from the environment."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "eu-west-1",
                        "AWS_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield


def test_kms_wraps_the_data_keys_and_rotation_moves_them_from_the_environment_key(aws, api, org, user, db, app_db,
                                                                                   config, httpserver):
    kms = boto3.client("kms", region_name="eu-west-1")
    arn = kms.create_key(Description="tolstoy KEK")["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName="alias/tolstoy", TargetKeyId=arn)
    # An organization whose data key the environment's key wrapped, from before KMS.
    tool, action = credential(api, org, httpserver, "before-kms-token")
    with_kms = dataclasses.replace(config, kms_key_id="alias/tolstoy", kms_region="eu-west-1")
    other = api.org("Kms")
    kms_app = testing.TestClient(create_app(with_kms, app_db))
    kms_tool = api.tool(other, "K", baseUrl=httpserver.url_for("/api"), authType="bearer")
    made = kms_app.simulate_post(f"/tools/{kms_tool['id']}/auth", headers=api.headers(other),
                                 json={"type": "bearer", "config": {"token": "kms-wrapped-token"}})
    assert made.status_code == 201, made.text
    keys = {str(r["org_id"]): r for r in rows(db, "select org_id, kek_id, wrapped from organization_keys")}
    assert keys[other["id"]]["kek_id"] == f"kms:{arn}"
    assert keys[org["id"]]["kek_id"] == fingerprint(config.encryption_key)
    # KMS alone unwraps the new organization's key (KMS Decrypt), a fresh process reads its credential.
    kms_only = dataclasses.replace(with_kms, encryption_key=None)
    plain = kms.decrypt(CiphertextBlob=bytes(keys[other["id"]]["wrapped"]))["Plaintext"]
    assert len(plain) == 32
    with db.tenant(other["id"]):
        assert vault(db, kms_only).decrypt(other["id"], rows(db, "select secret from tool_credentials where "
                                                                 "org_id = %s", other["id"])[0]["secret"]) \
            == {"token": "kms-wrapped-token"}
    # … but not the older organization's, wrapped by the environment's key: a clean error naming it.
    with db.tenant(org["id"]), pytest.raises(VaultError, match="TOLSTOY_ENCRYPTION_KEY"):
        vault(db, kms_only).decrypt(org["id"], rows(db, "select secret from tool_credentials where org_id = %s",
                                                    org["id"])[0]["secret"])
    # Rotation re-wraps it with KMS; afterwards KMS alone reads everything, and the engine's calls work.
    before = rows(db, "select id, secret from tool_credentials order by id")
    assert rotate_secrets(db, vault(db, with_kms))["rewrapped"] == 1
    assert rows(db, "select id, secret from tool_credentials order by id") == before
    assert {r["kek_id"] for r in rows(db, "select kek_id from organization_keys")} == {f"kms:{arn}"}
    assert rotate_secrets(db, vault(db, with_kms))["rewrapped"] == 0
    httpserver.expect_oneshot_request("/api/me", headers={"Authorization": "Bearer before-kms-token"}) \
        .respond_with_json({"ok": True})
    kms_only_app = testing.TestClient(create_app(kms_only, app_db))
    result = kms_only_app.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                        headers=api.headers(org, user))
    assert result.json["success"] is True, result.text


def test_the_key_encryption_key_may_come_from_the_aws_secret(aws, app_url, db, api, org):
    key = engine.generate_key()
    boto3.client("secretsmanager", region_name="eu-west-1").create_secret(
        Name="tolstoy-db-secret", SecretString=json.dumps({"TOLSTOY_ENCRYPTION_KEY": key}))
    config = Config.from_env({"USE_AWS_SECRETS": "true", "AWS_REGION": "eu-west-1", "DATABASE_URL": app_url})
    assert config.encryption_key == key
    with db.tenant(org["id"]):
        sealed = vault(db, config).encrypt(org["id"], {"token": "from-the-secret"})
    assert rows(db, "select kek_id from organization_keys")[0]["kek_id"] == fingerprint(key)
    with db.tenant(org["id"]):
        assert vault(db, config).decrypt(org["id"], sealed) == {"token": "from-the-secret"}


def test_kms_settings_are_checked():
    with pytest.raises(Exception, match="AWS_REGION"):
        Config.from_env({"TOLSTOY_KMS_KEY_ID": "alias/tolstoy"})
    arn = "arn:aws:kms:eu-central-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    assert Config.from_env({"TOLSTOY_KMS_KEY_ID": arn}).kms_region == "eu-central-1"
    assert Config.from_env({"TOLSTOY_KMS_KEY_ID": "k", "AWS_REGION": "us-east-1"}).kms_region == "us-east-1"
