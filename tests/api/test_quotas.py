"""Quotas per organization (issue 21): defaults in configuration, overrides the admin sets through
PUT /organizations/{id}/quotas, and usage against each through GET /organizations/{id}/usage.

- queuedRuns: runs not finished (queued, running, waiting); a new run over it is a 429 naming the
  quota, admitted atomically (two executes racing at the boundary never both pass) and nothing of it
  written.
- storedBytes: bytes of run history of finished runs within retention; at or over it, new runs are
  refused (runs in flight finish).
- requestsPerSecond / requestBurst: a token bucket per organization and API process, checked before
  the unit of work opens (a refused request costs no database round trip); health, docs and operator
  routes and the admin's organization routes take no token."""

from __future__ import annotations

import threading
import uuid

import pytest
from falcon import testing
from support import REVIEWED_ROUTES, app_routes, assert_quota_refusal, execute_flow, set_quotas, usage, written
from test_auth import ADMIN, KEY_SECRET, bearer, new_org
from test_triggers import post_hook, signed, webhook

from tolstoy.api import quotas
from tolstoy.api.app import create_app
from tolstoy.config import Config, ConfigError

# The shipped defaults of the request quota (conftest's environment lifts them for the other tests).
DEFAULTS = {"TOLSTOY_QUOTA_REQUESTS_PER_SECOND": "100", "TOLSTOY_QUOTA_REQUEST_BURST": "200"}


def step(step_id, kind, config):
    return {"id": step_id, "type": kind, "config": config}


def client_with(worker_env, app_db, **settings) -> testing.TestClient:
    config = Config.from_env({**worker_env, **settings})
    return testing.TestClient(create_app(config, app_db))


# ---- queued runs --------------------------------------------------------------------------------------


def test_a_run_over_the_queued_runs_quota_is_a_429_naming_it_and_writes_nothing(api, org, user, worker_env,
                                                                                 app_db, db):
    client = client_with(worker_env, app_db, TOLSTOY_QUOTA_QUEUED_RUNS="2")
    flow = api.flow(org)
    first = execute_flow(client, org, user, flow, **{"Idempotency-Key": "first"})
    assert first.status_code == 202 and execute_flow(client, org, user, flow).status_code == 202
    before = written(db, org)
    refused = execute_flow(client, org, user, flow)
    assert_quota_refusal(refused, "queuedRuns", 2, "30")
    assert written(db, org) == before
    # The run an Idempotency-Key already made is answered again: nothing new to admit.
    again = execute_flow(client, org, user, flow, **{"Idempotency-Key": "first"})
    assert again.status_code == 202 and again.json["executionId"] == first.json["executionId"]
    assert execute_flow(client, org, user, flow, **{"Idempotency-Key": "new"}).status_code == 429
    # A finished run frees its place.
    cancelled = client.simulate_post(f"/flows/{flow['id']}/executions/{first.json['executionId']}/cancel",
                                     headers=api.headers(org))
    assert cancelled.status_code == 202 and cancelled.json["status"] == "cancelled"
    assert execute_flow(client, org, user, flow).status_code == 202
    assert execute_flow(client, org, user, flow).status_code == 429
    # Another organization has places of its own.
    other = api.org("Other")
    other_user = api.user(other)
    assert execute_flow(client, other, other_user, api.flow(other)).status_code == 202


def test_a_retry_over_the_quota_is_refused_and_makes_no_run(api, org, user, worker_env, app_db, db):
    client = client_with(worker_env, app_db, TOLSTOY_QUOTA_QUEUED_RUNS="1")
    flow = api.flow(org)
    original = execute_flow(client, org, user, flow).json["executionId"]
    client.simulate_post(f"/flows/{flow['id']}/executions/{original}/cancel", headers=api.headers(org))
    assert execute_flow(client, org, user, flow).status_code == 202  # the one place
    before = written(db, org)
    retried = client.simulate_post(f"/flows/{flow['id']}/executions/{original}/retry",
                                   headers=api.headers(org, user))
    assert_quota_refusal(retried, "queuedRuns", 1, "30")
    assert written(db, org) == before


def test_a_waiting_run_holds_its_place_until_it_finishes(api, org, user, worker_env, app_db, db):
    """A waiting run goes back to the queue by itself (a signal, its child, a resolution), never through
    admission: counting it is what keeps the bound exact."""
    client = client_with(worker_env, app_db, TOLSTOY_QUOTA_QUEUED_RUNS="1")
    flow = api.flow(org)
    run = execute_flow(client, org, user, flow).json["executionId"]
    with db.pool.connection() as conn:
        conn.execute("update flow_runs set status = 'waiting' where id = %s", (run,))
    assert execute_flow(client, org, user, flow).status_code == 429
    assert usage(client, org)["queuedRuns"] == {"used": 1, "limit": 1}
    with db.pool.connection() as conn:
        conn.execute("update flow_runs set status = 'completed', finished_at = now() where id = %s", (run,))
    assert execute_flow(client, org, user, flow).status_code == 202


def test_concurrent_executes_at_the_boundary_admit_exactly_the_quota(api, org, user, worker_env, app_db, db):
    client = client_with(worker_env, app_db, TOLSTOY_QUOTA_QUEUED_RUNS="5")
    flow = api.flow(org)
    start = threading.Barrier(6)
    statuses: list[int] = []
    lock = threading.Lock()

    def executes():
        start.wait()
        for _ in range(3):
            status = execute_flow(client, org, user, flow).status_code
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=executes) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(statuses) == [202] * 5 + [429] * 13, statuses
    assert written(db, org)["runs"] == 5


def test_a_webhook_over_the_quota_is_a_429_to_its_sender_and_records_nothing(api, org, client, db):
    hook = webhook(api, org, api.flow(org))
    set_quotas(client, org, queuedRuns=0)
    body = b'{"order": 42}'
    headers = signed(hook["secret"], body)
    assert_quota_refusal(post_hook(client, hook, body, headers), "queuedRuns", 0, "30")
    with db.pool.connection() as conn:
        assert conn.execute("select count(*) as n from flow_trigger_deliveries").fetchone()["n"] == 0
    assert written(db, org)["runs"] == 0
    # Nothing was kept, so the sender's retry of the same request is no replay: it starts the run.
    set_quotas(client, org, queuedRuns=None)
    accepted = post_hook(client, hook, body, headers)
    assert accepted.status_code == 202 and written(db, org)["runs"] == 1, accepted.text


# ---- overrides: the admin's, read by the organization ----------------------------------------------------


def test_the_admin_overrides_a_quota_and_null_gives_the_default_back(api, org, user, worker_env, app_db):
    client = client_with(worker_env, app_db, **DEFAULTS)
    shown = client.simulate_get(f"/organizations/{org['id']}/quotas")
    assert shown.status_code == 200 and shown.headers.get("etag"), shown.text
    defaults = {"queuedRuns": 10_000, "storedBytes": 10 * 1024 ** 3, "requestsPerSecond": 100, "requestBurst": 200}
    assert shown.json == {"organizationId": org["id"], "queuedRuns": None, "storedBytes": None,
                          "requestsPerSecond": None, "requestBurst": None, "effective": defaults,
                          "updatedAt": None}
    body = set_quotas(client, org, queuedRuns=1)
    assert body["queuedRuns"] == 1 and body["effective"]["queuedRuns"] == 1 and body["updatedAt"]
    assert body["storedBytes"] is None and body["effective"]["storedBytes"] == defaults["storedBytes"]
    flow = api.flow(org)
    assert execute_flow(client, org, user, flow).status_code == 202
    assert_quota_refusal(execute_flow(client, org, user, flow), "queuedRuns", 1, "30")
    # PUT and PATCH change what they are sent; a GET body sent back changes nothing.
    patched = client.simulate_patch(f"/organizations/{org['id']}/quotas", json={"requestBurst": 7})
    assert patched.json["queuedRuns"] == 1 and patched.json["requestBurst"] == 7, patched.text
    echoed = client.simulate_put(f"/organizations/{org['id']}/quotas", json=patched.json)
    assert echoed.status_code == 200 and echoed.json["queuedRuns"] == 1, echoed.text
    assert set_quotas(client, org, queuedRuns=0)["effective"]["queuedRuns"] == 0
    assert execute_flow(client, org, user, flow).status_code == 429  # 0: no new run at all
    assert set_quotas(client, org, queuedRuns=None)["effective"]["queuedRuns"] == defaults["queuedRuns"]
    assert execute_flow(client, org, user, flow).status_code == 202


@pytest.mark.parametrize("body, field", [
    ({"queuedRuns": -1}, "queuedRuns"), ({"queuedRuns": "5"}, "queuedRuns"), ({"queuedRuns": True}, "queuedRuns"),
    ({"queuedRuns": 1.5}, "queuedRuns"), ({"queuedRuns": 100_000_001}, "queuedRuns"),
    ({"storedBytes": 10 ** 15 + 1}, "storedBytes"), ({"requestsPerSecond": 0}, "requestsPerSecond"),
    ({"requestBurst": 0}, "requestBurst"), ({"runs": 5}, "runs"),
])
def test_bad_quotas_are_400_naming_the_field_and_change_nothing(client, org, body, field, db):
    result = client.simulate_put(f"/organizations/{org['id']}/quotas", json=body)
    assert result.status_code == 400 and result.json["errors"][0]["field"] == field, result.text
    with db.pool.connection() as conn:
        assert conn.execute("select count(*) as n from organization_quotas").fetchone()["n"] == 0


def test_quotas_of_an_organization_that_does_not_exist_are_404_before_a_bad_field(client):
    ghost = str(uuid.uuid4())
    for method, body in (("GET", None), ("PUT", {"queuedRuns": 5}), ("PUT", {"queuedRuns": -5})):
        result = client.simulate_request(method, f"/organizations/{ghost}/quotas", json=body)
        assert result.status_code == 404 and result.json["message"] == "Organization not found.", result.text
    assert client.simulate_get(f"/organizations/{ghost}/usage").status_code == 404
    assert client.simulate_get("/organizations/not-a-uuid/usage").status_code == 404


def test_quotas_of_an_organization_deleted_a_moment_ago_are_404(client, api):
    """The organization's row answers, not the process's memory of tenants it checked seconds ago: a
    deleted organization's quotas and usage are 404 at once, and no override can be set for it."""
    org = api.org("Gone")
    set_quotas(client, org, queuedRuns=3)
    assert usage(client, org)["queuedRuns"]["limit"] == 3  # checked (and remembered) just now
    assert client.simulate_delete(f"/organizations/{org['id']}").status_code == 204
    for method, path, body in (("GET", "quotas", None), ("GET", "usage", None), ("PUT", "quotas", {"queuedRuns": 1}),
                               ("PATCH", "quotas", {"requestBurst": 5}), ("PUT", "quotas", {"queuedRuns": -1})):
        result = client.simulate_request(method, f"/organizations/{org['id']}/{path}", json=body)
        assert result.status_code == 404 and result.json["message"] == "Organization not found.", (path, result.text)
    guarded = client.simulate_put(f"/organizations/{org['id']}/quotas", json={"queuedRuns": 1},
                                  headers={"If-Match": '"anything"'})
    assert guarded.status_code == 404, guarded.text


def test_if_match_guards_a_change_of_quotas(client, org):
    current = client.simulate_get(f"/organizations/{org['id']}/quotas").headers["etag"]
    set_quotas(client, org, queuedRuns=3)
    stale = client.simulate_put(f"/organizations/{org['id']}/quotas", json={"queuedRuns": 4},
                                headers={"If-Match": current})
    assert stale.status_code == 412, stale.text
    fresh = client.simulate_get(f"/organizations/{org['id']}/quotas").headers["etag"]
    result = client.simulate_put(f"/organizations/{org['id']}/quotas", json={"queuedRuns": 4},
                                 headers={"If-Match": fresh})
    assert result.status_code == 200 and result.json["queuedRuns"] == 4


@pytest.fixture
def keyed(worker_env, app_db):
    """A client of the app in api_key mode."""
    config = Config.from_env({**worker_env, "TOLSTOY_AUTH_MODE": "api_key",
                              "TOLSTOY_API_KEY_SECRET": KEY_SECRET, "TOLSTOY_ADMIN_TOKEN": ADMIN})
    return testing.TestClient(create_app(config, app_db))


def test_with_api_keys_the_admin_sets_quotas_and_an_organization_reads_only_its_own(keyed, db):
    org, key = new_org(keyed, "Acme")
    other, other_key = new_org(keyed, "Other")
    quotas_of = f"/organizations/{org['id']}/quotas"
    refused = keyed.simulate_put(quotas_of, json={"queuedRuns": 100_000}, headers=bearer(key))
    assert refused.status_code == 403 and "admin token" in refused.json["message"], refused.text
    assert keyed.simulate_patch(quotas_of, json={"queuedRuns": 1}, headers=bearer(key)).status_code == 403
    assert keyed.simulate_put(quotas_of, json={"queuedRuns": 1}).status_code == 401
    set_quotas(keyed, org, headers=bearer(ADMIN), queuedRuns=1)
    assert keyed.simulate_get(quotas_of, headers=bearer(key)).json["queuedRuns"] == 1
    # Another organization's quotas and usage do not exist for a key; the admin reads any.
    for path in (quotas_of, f"/organizations/{org['id']}/usage"):
        assert keyed.simulate_get(path, headers=bearer(other_key)).status_code == 404
        assert keyed.simulate_get(path, headers=bearer(ADMIN)).status_code == 200
    flow = keyed.simulate_post("/flows", json={"steps": [step("a", "transform", {"output": 1})]},
                               headers=bearer(key)).json
    user = keyed.simulate_post("/users", json={"email": "a@example.com"}, headers=bearer(key)).json
    run = keyed.simulate_post(f"/flows/{flow['id']}/execute", json={}, headers=bearer(key, **{"X-User-ID": user["id"]}))
    assert run.status_code == 202, run.text
    over = keyed.simulate_post(f"/flows/{flow['id']}/execute", json={},
                               headers=bearer(key, **{"X-User-ID": user["id"]}))
    assert_quota_refusal(over, "queuedRuns", 1, "30")
    own = usage(keyed, org, bearer(key))
    assert own["queuedRuns"] == {"used": 1, "limit": 1} and own["organizationId"] == org["id"]
    assert usage(keyed, org, bearer(ADMIN))["queuedRuns"] == {"used": 1, "limit": 1}
    assert usage(keyed, other, bearer(other_key))["queuedRuns"]["used"] == 0
    with db.pool.connection() as conn:
        rows = conn.execute("select org_id::text, queued_runs from organization_quotas").fetchall()
    assert rows == [{"org_id": org["id"], "queued_runs": 1}]


def test_the_usage_route_in_headers_mode_reads_any_organization(api, org, user, worker_env, app_db):
    client = client_with(worker_env, app_db, **DEFAULTS)
    flow = api.flow(org)
    execute_flow(client, org, user, flow)
    shown = usage(client, org)
    assert shown["organizationId"] == org["id"]
    assert shown["queuedRuns"] == {"used": 1, "limit": 10_000}
    assert shown["storedBytes"] == {"used": 0, "limit": 10 * 1024 ** 3}
    requests = shown["requestsPerSecond"]
    assert requests["limit"] == 100 and requests["burst"] == 200 and requests["scope"] == "process"
    assert requests["used"] > 0 and 0 <= requests["available"] <= 200  # this process saw the requests above


# ---- stored bytes ----------------------------------------------------------------------------------------


def test_months_past_retention_stop_counting_and_admission_folds_the_deltas(api, org, user, worker_env,
                                                                            app_db, db):
    client = client_with(worker_env, app_db, TOLSTOY_RUN_RETENTION_DAYS="30")
    with db.pool.connection() as conn:
        conn.execute("insert into history_bytes (org_id, month, bytes) "
                     "select %s, date_trunc('month', now() at time zone 'UTC')::date, 10 from generate_series(1, 60)",
                     (org["id"],))
        conn.execute("insert into history_bytes (org_id, month, bytes) "
                     "select %s, (date_trunc('month', now() at time zone 'UTC') - interval '3 years')::date, 1000 "
                     "from generate_series(1, 10)", (org["id"],))
    assert usage(client, org)["storedBytes"]["used"] == 600  # the old month's 10,000 are past retention
    assert execute_flow(client, org, user, api.flow(org)).status_code == 202
    with db.pool.connection() as conn:
        rows = conn.execute("select month, bytes from history_bytes where org_id = %s", (org["id"],)).fetchall()
    assert [r["bytes"] for r in rows] == [600], rows  # folded: one row of the month still kept
    assert usage(client, org)["storedBytes"]["used"] == 600


# ---- requests per second ---------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def frozen(monkeypatch):
    """Every app made in the test gets request buckets on a clock the test moves; yields (clock, buckets made)."""
    clock, made = Clock(), []
    original = quotas.RequestBuckets.from_config.__func__

    def from_config(cls, config):
        buckets = original(cls, config)
        buckets.clock = clock
        made.append(buckets)
        return buckets

    monkeypatch.setattr(quotas.RequestBuckets, "from_config", classmethod(from_config))
    return clock, made


def test_requests_over_the_rate_are_429_and_cost_the_database_nothing(api, org, worker_env, app_db, frozen):
    clock, _ = frozen
    client = client_with(worker_env, app_db, TOLSTOY_QUOTA_REQUESTS_PER_SECOND="2", TOLSTOY_QUOTA_REQUEST_BURST="3")
    headers = api.headers(org)
    assert [client.simulate_get("/tools", headers=headers).status_code for _ in range(3)] == [200] * 3
    before = app_db.counts.snapshot()
    refused = client.simulate_get("/tools", headers=headers)
    assert app_db.counts.snapshot() == before
    assert_quota_refusal(refused, "requestsPerSecond", 2, "1")
    assert "bursts of 3" in refused.json["message"] and refused.headers["x-request-id"]
    # Even for an organization that does not exist (headers mode): no tenant check, no round trip.
    ghost = {"X-Org-ID": str(uuid.uuid4())}
    assert [client.simulate_get("/tools", headers=ghost).status_code for _ in range(4)] == [400] * 3 + [429]
    clock.now += 0.5  # one token back at 2 a second
    assert client.simulate_get("/tools", headers=headers).status_code == 200
    assert client.simulate_get("/tools", headers=headers).status_code == 429
    # Another organization has its own bucket.
    assert client.simulate_get("/tools", headers=api.headers(api.org("Other"))).status_code == 200


def test_health_docs_operator_and_admin_routes_take_no_token(api, org, worker_env, app_db, frozen):
    client = client_with(worker_env, app_db, TOLSTOY_QUOTA_REQUESTS_PER_SECOND="1", TOLSTOY_QUOTA_REQUEST_BURST="1")
    assert client.simulate_get("/tools", headers=api.headers(org)).status_code == 200
    for _ in range(3):
        for path in ("/health", "/status", "/status/detailed", "/version", "/openapi.json", "/docs", "/",
                     "/organizations", f"/organizations/{org['id']}", f"/organizations/{org['id']}/usage",
                     f"/organizations/{org['id']}/quotas"):
            assert client.simulate_get(path).status_code == 200, path
    assert client.simulate_get("/tools", headers=api.headers(org)).status_code == 429


def test_every_tenant_route_answers_429_without_the_database_once_the_bucket_is_empty(api, org, worker_env,
                                                                                        app_db, frozen):
    client = client_with(worker_env, app_db, TOLSTOY_QUOTA_REQUESTS_PER_SECOND="1", TOLSTOY_QUOTA_REQUEST_BURST="1")
    headers = {**api.headers(org), "X-User-ID": str(uuid.uuid4())}
    assert client.simulate_get("/users", headers=headers).status_code == 400  # the one token (unknown user)
    checked = 0
    for template, (resource, methods) in app_routes(client.app).items():
        if getattr(resource, "access", "tenant") != "tenant" or template.split(" ")[0] in ("sink", "static"):
            continue
        path = template.replace("{version}", "1")
        for name in ("id", "execution_id", "trigger_id", "delivery_id", "tool_id", "step_id", "signal", "name",
                     "tool_key", "token"):
            path = path.replace("{" + name + "}", str(uuid.uuid4()))
        for method in methods:
            before = app_db.counts.snapshot()
            result = client.simulate_request(method, path, headers=headers,
                                             json={} if method in ("POST", "PUT", "PATCH") else None)
            assert result.status_code == 429, (method, path, result.status_code, result.text)
            assert result.json["quota"] == "requestsPerSecond", (method, path)
            assert app_db.counts.snapshot() == before, (method, path)
            checked += 1
    assert checked > 60, checked
    # The routes outside tenancy are the reviewed ones (tests/api/test_public_routes.py); a tenant route
    # added later is in the loop above.
    assert {t for t in REVIEWED_ROUTES if t.startswith("/organizations")} == {
        "/organizations", "/organizations/{id}", "/organizations/{id}/quotas", "/organizations/{id}/usage"}


def test_the_memory_of_buckets_is_bounded(api, worker_env, app_db, frozen):
    _, made = frozen
    client = client_with(worker_env, app_db)
    buckets = made[0]
    buckets.size = 50
    for _ in range(300):  # organizations that do not exist: 400s, each a new bucket
        assert client.simulate_get("/tools", headers={"X-Org-ID": str(uuid.uuid4())}).status_code == 400
    assert len(buckets._buckets) == 50
    unit = quotas.RequestBuckets(10, 10, size=3)
    for _ in range(10):
        unit.take(uuid.uuid4())
    assert len(unit._buckets) == 3


def test_an_organizations_request_quota_is_learned_with_its_requests(api, org, worker_env, app_db, frozen):
    clock, _ = frozen
    client = client_with(worker_env, app_db, **DEFAULTS)
    headers = api.headers(org)
    set_quotas(client, org, requestsPerSecond=1, requestBurst=2)
    statuses = [client.simulate_get("/tools", headers=headers).status_code for _ in range(4)]
    # The first request read the override (with its first statement); the bucket holds 2 from then on.
    assert statuses == [200, 200, 200, 429], statuses
    assert usage(client, org)["requestsPerSecond"]["limit"] == 1
    set_quotas(client, org, requestsPerSecond=None, requestBurst=None)
    clock.now += 2  # two tokens back at the old rate; the next request reads the quota again
    assert [client.simulate_get("/tools", headers=headers).status_code for _ in range(3)] == [200, 200, 429]
    clock.now += quotas.LEARN_SECONDS
    assert client.simulate_get("/tools", headers=headers).status_code == 200  # reads the defaults again
    clock.now += 1  # 100 tokens a second again
    assert all(client.simulate_get("/tools", headers=headers).status_code == 200 for _ in range(20))


def test_with_api_keys_the_bucket_is_the_keys_organizations(worker_env, app_db, frozen):
    config = {"TOLSTOY_AUTH_MODE": "api_key", "TOLSTOY_API_KEY_SECRET": KEY_SECRET, "TOLSTOY_ADMIN_TOKEN": ADMIN,
              "TOLSTOY_QUOTA_REQUESTS_PER_SECOND": "1", "TOLSTOY_QUOTA_REQUEST_BURST": "2"}
    client = client_with(worker_env, app_db, **config)
    org, key = new_org(client, "Acme")
    _, other_key = new_org(client, "Other")
    second = client.simulate_post("/api-keys", json={"name": "second"}, headers=bearer(key)).json["apiKey"]
    assert client.simulate_get("/tools", headers=bearer(second)).status_code == 200
    # The organization's keys share its bucket (the key above took the second token).
    assert client.simulate_get("/tools", headers=bearer(key)).status_code == 429
    assert client.simulate_get(f"/organizations/{org['id']}", headers=bearer(key)).status_code == 429
    assert client.simulate_get("/tools", headers=bearer(other_key)).status_code == 200
    # The admin token takes none.
    assert client.simulate_get(f"/organizations/{org['id']}/usage", headers=bearer(ADMIN)).status_code == 200


def test_console_pages_take_their_organizations_tokens(api, org, worker_env, app_db, frozen):
    client = client_with(worker_env, app_db, TOLSTOY_QUOTA_REQUESTS_PER_SECOND="1", TOLSTOY_QUOTA_REQUEST_BURST="1")
    assert client.simulate_get(f"/console/orgs/{org['id']}/flows").status_code == 200
    page = client.simulate_get(f"/console/orgs/{org['id']}/flows")
    assert page.status_code == 429 and page.headers["retry-after"] == "1"
    assert "requestsPerSecond" in page.text
    assert client.simulate_get("/tools", headers=api.headers(org)).status_code == 429


def test_a_refused_request_waits_as_long_as_its_bucket_needs(frozen):
    clock, _ = frozen
    buckets = quotas.RequestBuckets(4, 1, clock=clock)
    org = uuid.uuid4()
    assert buckets.take(org) == (0.0, 4, 1)
    wait, rate, burst = buckets.take(org)
    assert wait == pytest.approx(0.25) and (rate, burst) == (4, 1)
    assert buckets.refusal(wait, rate, burst).headers["Retry-After"] == "1"
    clock.now += 0.25
    assert buckets.take(org)[0] == 0.0


def test_the_quota_settings_have_defaults_and_refuse_what_is_out_of_range():
    assert Config.from_env({}).quota_defaults() == {
        "queuedRuns": 10_000, "storedBytes": 10 * 1024 ** 3, "requestsPerSecond": 100, "requestBurst": 200}
    config = Config.from_env({"TOLSTOY_QUOTA_QUEUED_RUNS": "0", "TOLSTOY_QUOTA_STORED_BYTES": "1000",
                              "TOLSTOY_RUN_RETENTION_DAYS": "30"})
    assert config.database_quotas() == {"queuedRuns": 0, "storedBytes": 1000, "retentionDays": 30}
    for name, value in (("TOLSTOY_QUOTA_QUEUED_RUNS", "-1"), ("TOLSTOY_QUOTA_STORED_BYTES", "lots"),
                        ("TOLSTOY_QUOTA_REQUESTS_PER_SECOND", "0"), ("TOLSTOY_QUOTA_REQUEST_BURST", "1000001")):
        with pytest.raises(ConfigError, match=name):
            Config.from_env({name: value})


# ---- what counts as stored history -------------------------------------------------------------------------


def stored_log_bytes(db, org, where: str) -> int:
    """The execution log rows' inputs, outputs and errors of ``org`` matching ``where``, as stored."""
    with db.pool.connection() as conn:
        return conn.execute("select coalesce(sum(pg_column_size(inputs) + coalesce(pg_column_size(outputs), 0) "
                            "+ coalesce(pg_column_size(error), 0)), 0) as bytes from execution_logs "
                            f"where org_id = %s and {where}", (org["id"],)).fetchone()["bytes"]


# A value of a few bytes is stored with a 1-byte header and measured by the trigger with a 4-byte one:
# the count may exceed the stored size by 3 bytes a column (it adds and takes back the same measure).
SMALL_VALUE_SLACK = 3 * 3


def test_a_direct_action_calls_log_row_counts_in_stored_bytes(api, org, user, client, httpserver, db):
    """Every log row of no run (a run's count when it finishes) counts when written: a direct action
    call's row holds the tool's answer, as large as the tool makes it."""
    noise = "".join(uuid.uuid4().hex for _ in range(625))  # 20,000 characters that hardly compress
    httpserver.expect_request("/big").respond_with_json({"text": noise})
    tool = api.tool(org, baseUrl=httpserver.url_for("/"))
    action = api.action(org, tool, endpoint="/big")
    called = client.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                  headers=api.headers(org, user))
    assert called.status_code == 200 and called.json["success"], called.text
    logged = stored_log_bytes(db, org, "flow_id is null")
    assert logged > 20_000
    assert 0 <= usage(client, org)["storedBytes"]["used"] - logged <= SMALL_VALUE_SLACK


def test_a_clients_log_rows_count_when_written_changed_and_deleted(api, org, user, client, db):
    """A client's rows count whatever execution id they name (a run's own included: the run counts only
    the engine's rows), and deleting them gives back exactly what they added."""
    flow = api.flow(org)
    run = execute_flow(client, org, user, flow).json["executionId"]
    noise = "".join(uuid.uuid4().hex for _ in range(625))
    body = {"flowId": flow["id"], "executionId": run, "stepKey": "mine", "status": "completed",
            "inputs": {"text": noise}}
    written_row = client.simulate_post("/execution-logs", json=body, headers=api.headers(org, user))
    assert written_row.status_code == 201, written_row.text
    counted = usage(client, org)["storedBytes"]["used"]
    assert 0 <= counted - stored_log_bytes(db, org, "source = 'client'") <= SMALL_VALUE_SLACK and counted > 20_000
    changed = client.simulate_patch(f"/execution-logs/{written_row.json['id']}", json={"inputs": {"text": "short"}},
                                    headers=api.headers(org, user))
    assert changed.status_code == 200, changed.text
    assert usage(client, org)["storedBytes"]["used"] < 100
    # The run it borrowed the id of finishes: its measure leaves the client's row out.
    client.simulate_post(f"/flows/{flow['id']}/executions/{run}/cancel", headers=api.headers(org))
    with db.pool.connection() as conn:
        measured = conn.execute("select stored_bytes from flow_runs where id = %s", (run,)).fetchone()["stored_bytes"]
    with_run = usage(client, org)["storedBytes"]["used"]
    deleted = client.simulate_delete(f"/execution-logs/{written_row.json['id']}", headers=api.headers(org, user))
    assert deleted.status_code == 204, deleted.text
    assert with_run > measured and usage(client, org)["storedBytes"]["used"] == measured
