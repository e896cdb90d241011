"""Issue 19, row 11, as a class: every path that encrypts or decrypts works on a process whose key
cache is cold, because it acts for the organization when it does (row-level security shows an
organization's data keys to it alone), and the keyring refuses any call outside that tenancy
whatever its cache holds, so a path that forgets fails its first test instead of failing only on
the process that happens to be cold. Here the app and the worker keep no data key at all
(TOLSTOY_DATA_KEY_TTL 0: every use reads the keys again), as the application and worker roles."""

from __future__ import annotations

import dataclasses
import json
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from support import FakeOAuthProvider, follow
from test_engine import step, wait_for
from test_webhook_delivery import Receiver, deliveries, hook
from test_worker_processes import wait_until

from tolstoy import engine, signatures
from tolstoy.engine.keys import OutsideTenancy
from tolstoy.engine.vault import Vault


@pytest.fixture
def config(config):
    """The test's configuration with no data key kept between uses: the app (``api``) and the worker
    (``worker``) of this module read the keys again at every use."""
    return dataclasses.replace(config, data_key_ttl=0.0)


def ok(result, status: int = 200):
    assert result.status_code == status, result.text
    return result.json


def test_every_path_that_uses_a_data_key_works_on_a_cold_process(api, worker, server, monkeypatch):
    used: list[str] = []
    for name in ("encrypt", "decrypt"):  # which kinds of use the scenario reached (the end checks both)
        original = getattr(Vault, name)
        monkeypatch.setattr(Vault, name, lambda self, *a, _o=original, _n=name, **k: used.append(_n) or _o(self, *a, **k))
    org = api.org()
    ada = api.user(org, name="Ada")
    h, hu = api.headers(org), api.headers(org, ada)
    provider = FakeOAuthProvider(server)
    server.expect_request("/api/me").respond_with_json({"ok": True})

    # Credentials: stored (the organization's first data key), shown masked, the compat secrets routes.
    svc = api.tool(org, "Svc", baseUrl=server.url_for("/api"), authType="bearer")
    api.create(f"/tools/{svc['id']}/auth", org, {"type": "bearer", "config": {"token": "tok-cold-0123456789"}})
    assert "tok-cold-0123456789" not in json.dumps(ok(api.client.simulate_get(f"/tools/{svc['id']}/auth", headers=h)))
    ok(api.client.simulate_post(f"/tools/{svc['id']}/secrets", json={"credentials": {"token": "tok-cold-abcdefgh"}},
                                headers=h), 201)
    ok(api.client.simulate_get(f"/tools/{svc['id']}/secrets", headers=h))
    assert ok(api.client.simulate_get("/tools/secrets", headers=h))[0]["credentialKeys"] == ["token"]
    api.action(org, svc, key="svc.me", endpoint="/me")

    # Per-user OAuth: login, then the public callback (row 11), then calls as the user.
    gh = api.tool(org, "GitHub", key="github", baseUrl=provider.url("/"), authType="oauth2")
    api.create(f"/tools/{gh['id']}/auth", org, provider.credential())
    api.action(org, gh, key="gh.me", endpoint="/me")
    login = api.client.simulate_get("/auth/github/login", headers=hu)
    assert login.status_code == 302, login.text
    back = urlsplit(follow(login.headers["location"], **{"as": "ada"}))
    assert ok(api.client.simulate_get(back.path, params={k: v[0] for k, v in parse_qs(back.query).items()}))["success"]
    for key in ("svc.me", "gh.me"):
        assert ok(api.client.simulate_post(f"/actions/{key}/execute", json={"inputs": {}}, headers=hu))["success"]

    # A flow: credentials read by the worker, a secret output sealed, then unsealed by the next step.
    flow = api.flow(org, [step("svc", "action", {"actionKey": "svc.me", "inputs": {}}),
                          step("me", "action", {"actionKey": "gh.me", "inputs": {}}),
                          step("login", "transform", {"output": {"access_token": "tok-sealed-987654321"}}),
                          step("use", "transform", {"output": {"t": "{{ steps.login.access_token }}"}})])
    queued = ok(api.client.simulate_post(f"/flows/{flow['id']}/execute", json={}, headers=hu), 202)
    assert wait_for(api, org, flow, queued["executionId"], timeout=20)["status"] == "completed"

    # A webhook trigger: its secret encrypted at creation, decrypted by the public /hooks route.
    trigger = api.create(f"/flows/{flow['id']}/triggers", org, {"type": "webhook"})
    body = b'{"n": 1}'
    hooked = api.client.simulate_post(trigger["url"], body=body, headers={
        "Content-Type": "application/json", "X-Tolstoy-Signature": signatures.sign(trigger["secret"], body,
                                                                                     int(time.time()))})
    ok(hooked, 202)

    # An outbound webhook: secret and headers encrypted, the headers decrypted by a change, both by a delivery.
    receiver = Receiver(server)
    outbound = hook(api, org, receiver.url, ["flow.completed"], headers={"X-Team": "ops"})
    ok(api.client.simulate_patch(f"/webhooks/{outbound['id']}", json={"headers": {"X-Team": "dev"}}, headers=h))
    ok(api.client.simulate_post(f"/webhooks/{outbound['id']}/test", headers=h), 202)
    wait_until(lambda: [d for d in deliveries(api, org, outbound) if d["state"] == "delivered"], 15, "the delivery")
    assert receiver.got and receiver.got[-1][0]["X-Team"] == "dev"
    assert {"encrypt", "decrypt"} <= set(used)


def test_the_vault_refuses_an_organization_it_does_not_act_for_whatever_its_cache_holds(api, db, config):
    a, b = api.org("A"), api.org("B")
    keeper = engine.vault_from_config(config, db)  # the owner's pool: row-level security would not stop it
    with db.tenant(a["id"]):
        sealed = keeper.encrypt(a["id"], {"token": "t"})
        assert keeper.decrypt(a["id"], sealed) == {"token": "t"}  # the keys are in its cache now
    legacy = engine.legacy_keys(config.encryption_key).encrypt(b'{"token": "old"}')
    uses = (lambda: keeper.decrypt(a["id"], sealed), lambda: keeper.encrypt(a["id"], 1),
            lambda: keeper.stale(a["id"], sealed), lambda: keeper.decrypt(a["id"], legacy),
            lambda: keeper.keyring.add_version(a["id"]))
    for use in uses:
        with pytest.raises(OutsideTenancy):  # no organization at all
            use()
        with db.tenant(b["id"]), pytest.raises(OutsideTenancy):  # another organization
            use()
        with db.transaction(), db.tenant(b["id"]), pytest.raises(OutsideTenancy):  # another's unit of work
            use()
    with db.transaction(), db.tenant(a["id"]):
        assert keeper.decrypt(a["id"], sealed) == {"token": "t"}
        assert keeper.decrypt(a["id"], legacy) == {"token": "old"}
