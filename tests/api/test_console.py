"""The run console's pages as HTML (no browser): what they show, tenancy in both auth modes, the
console's 404 page for another organization's records, its security headers, and the timeline
built from a real run's checkpoints and log rows. The browser tests are tests/browser/."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time
import uuid

import pytest
from falcon import testing

from tolstoy.api import console
from tolstoy.api.app import create_app
from tolstoy.api.middleware import CONSOLE_POLICY
from tolstoy.config import Config

STEPS = [
    {"id": "hello", "type": "transform", "config": {"output": {"text": "hi {{ variables.who }}"}}},
    {"id": "pause", "type": "delay", "config": {"ms": 50}},
    {"id": "shout", "type": "transform", "config": {"output": "{{ steps.hello.text | upper }}"}},
]


def page(client, path, headers=None):
    result = client.simulate_get(path, headers=headers or {})
    return result


def run_flow(api, org, user, flow, variables=None):
    answer = api.post(f"/flows/{flow['id']}/execute", org, {"variables": variables or {"who": "Ada"}}, user)
    assert answer.status_code == 202, answer.text
    return answer.json["executionId"]


def finished(client, org, flow, run_id, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        got = client.simulate_get(f"/flows/{flow['id']}/executions/{run_id}", headers={"X-Org-ID": org["id"]}).json
        if got["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_pages_show_flows_runs_and_a_run_with_its_timeline(client, api, org, user, worker):
    flow = api.flow(org, STEPS, name="Greeter")
    api.client.simulate_patch(f"/flows/{flow['id']}", json={"steps": [*STEPS[:2], {**STEPS[2], "name": "Shout"}]},
                              headers={"X-Org-ID": org["id"]})
    run_id = run_flow(api, org, user, flow)
    assert finished(client, org, flow, run_id)["status"] == "completed"
    base = f"/console/orgs/{org['id']}"

    flows = page(client, f"{base}/flows")
    assert flows.status_code == 200 and flows.headers["content-type"].startswith("text/html")
    assert "Greeter" in flows.text and "v2" in flows.text and "status-completed" in flows.text
    assert re.search(r'class="num">1</td>\s*<td class="num">100 %', flows.text), flows.text

    one = page(client, f"{base}/flows/{flow['id']}")
    assert one.status_code == 200
    assert "v1 beside the current v2" in one.text and 'class="added"' in one.text and "Shout" in one.text

    runs = page(client, f"{base}/runs")
    assert runs.status_code == 200 and run_id[:8] in runs.text and 'data-live="idle"' in runs.text

    detail = page(client, f"{base}/runs/{run_id}")
    assert detail.status_code == 200
    text = detail.text
    assert '<svg id="timeline"' in text and 'seg seg-wait' in text and 'seg seg-run' in text
    assert "HI ADA" in text  # the step's output, as the API shows it
    assert "Critical path: hello → pause → shout" in text
    assert f'data-api-post="/flows/{flow["id"]}/executions/{run_id}/retry"' not in text  # completed: no retry
    assert "data-live" not in text  # finished: no polling
    assert 'id="move-run"' not in text  # finished: nothing to move


def test_only_a_parked_run_offers_to_move_to_a_version(client, api, org, user, worker):
    flow = api.flow(org, [{"id": "nap", "type": "delay", "config": {"ms": 600_000}}], name="Sleeper")
    api.client.simulate_patch(f"/flows/{flow['id']}", json={"steps": [
        {"id": "nap", "type": "delay", "config": {"ms": 600_000}},
        {"id": "after", "type": "transform", "config": {"output": 1}}]}, headers={"X-Org-ID": org["id"]})
    run_id = run_flow(api, org, user, flow)
    path = f"/console/orgs/{org['id']}/runs/{run_id}"
    deadline = time.monotonic() + 20
    while 'id="move-run"' not in page(client, path).text:  # queued, not yet parked: not offered
        assert time.monotonic() < deadline, "the run never parked in its delay"
        time.sleep(0.05)
    text = page(client, path).text
    assert f'data-api-post="/flows/{flow["id"]}/executions/{run_id}/move"' in text
    assert """<option value="2" selected>v2 (this run's)</option>""" in text and '<option value="1">v1</option>' in text


def test_filters_and_keyset_pages_of_runs(client, api, org, user, db):
    flow = api.flow(org, name="Busy")
    other = api.flow(org, name="Quiet")
    with db.pool.connection() as conn:
        conn.execute(
            "insert into flow_runs (org_id, flow_id, flow_version, status, plan, root_run_id, created_at) "
            "select %(org)s, case when g %% 2 = 0 then %(a)s::uuid else %(b)s::uuid end, 1, "
            "(case when g %% 10 = 0 then 'failed' else 'completed' end)::flow_run_status, '{}'::jsonb, "
            "gen_random_uuid(), now() - g * interval '1 minute' from generate_series(1, 130) g",
            {"org": org["id"], "a": flow["id"], "b": other["id"]})
    base = f"/console/orgs/{org['id']}/runs"
    first = page(client, base)
    ids = re.findall(r'/runs/([0-9a-f-]{36})"><code>', first.text)
    assert len(ids) == console.PAGE
    older = re.search(r'href="([^"]+)" rel="next"', first.text).group(1).replace("&amp;", "&")
    second = page(client, older)
    ids2 = re.findall(r'/runs/([0-9a-f-]{36})"><code>', second.text)
    assert len(ids2) == console.PAGE and not set(ids) & set(ids2)

    failed = page(client, f"{base}?status=failed&flow={flow['id']}")
    assert failed.status_code == 200
    assert len(re.findall(r"status-failed", failed.text)) == 13  # g = 10, 20, … 130: all even
    assert "status-completed" not in failed.text

    since = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10, seconds=30)).strftime("%Y-%m-%dT%H:%M:%S")
    recent = page(client, f"{base}?since={since}")
    assert len(re.findall(r'/runs/([0-9a-f-]{36})"><code>', recent.text)) == 10

    bad = page(client, f"{base}?status=nope")
    assert bad.status_code == 400 and "status: one of" in bad.text and "text/html" in bad.headers["content-type"]
    assert page(client, f"{base}?since=yesterday").status_code == 400
    assert page(client, f"{base}?cursor=abc").status_code == 400


def test_a_status_filter_reads_a_bounded_window_and_says_where_to_go_on(client, api, org, db, monkeypatch):
    monkeypatch.setattr(console, "STATUS_WINDOW", 60)
    flow = api.flow(org)
    with db.pool.connection() as conn:
        conn.execute(
            "insert into flow_runs (org_id, flow_id, flow_version, status, plan, root_run_id, created_at) "
            "select %(org)s, %(f)s, 1, (case when g = 120 then 'failed' else 'completed' end)::flow_run_status, "
            "'{}'::jsonb, gen_random_uuid(), now() - g * interval '1 minute' from generate_series(1, 150) g",
            {"org": org["id"], "f": flow["id"]})
    base = f"/console/orgs/{org['id']}/runs?status=failed"
    first = page(client, base)
    assert "status-failed" not in first.text and "searches on" in first.text
    second = page(client, re.search(r'href="([^"]+)" rel="next"', first.text).group(1).replace("&amp;", "&"))
    assert second.text.count("status-failed") == 1


def test_another_organizations_records_are_the_consoles_404_page(client, api, org, user, worker):
    flow = api.flow(org, STEPS)
    run_id = run_flow(api, org, user, flow)
    stranger = api.org("Stranger")
    for path in (f"/console/orgs/{stranger['id']}/runs/{run_id}", f"/console/orgs/{stranger['id']}/flows/{flow['id']}",
                 f"/console/orgs/{org['id']}/runs/{uuid.uuid4()}", f"/console/orgs/{org['id']}/runs/not-a-uuid",
                 f"/console/orgs/{uuid.uuid4()}/flows", "/console/nowhere"):
        answer = page(client, path)
        assert answer.status_code == 404, path
        assert "text/html" in answer.headers["content-type"] and "<h1>Not found</h1>" in answer.text, path
    assert run_id[:8] not in page(client, f"/console/orgs/{stranger['id']}/runs").text


def test_console_headers_policy_and_static_files(client, org):
    answer = page(client, f"/console/orgs/{org['id']}/flows")
    assert answer.headers["content-security-policy"] == CONSOLE_POLICY
    assert "unsafe-inline" not in CONSOLE_POLICY and "script-src 'self'" in CONSOLE_POLICY
    assert answer.headers["x-frame-options"] == "DENY" and answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-store"
    assert "<script>" not in answer.text and " style=" not in answer.text and "onclick" not in answer.text
    js = page(client, "/console/static/console.js")
    assert js.status_code == 200 and "sessionStorage" in js.text and "document.cookie" not in js.text
    assert page(client, "/console/static/console.css").status_code == 200
    home = page(client, "/console")
    assert home.status_code == 200 and org["id"] in home.text
    go = client.simulate_get("/console", params={"org": org["id"]})
    assert go.status_code == 303 and go.headers["location"].endswith(f"/console/orgs/{org['id']}/flows")
    assert page(client, "/console?org=nope").status_code == 400


@pytest.fixture
def keyed(worker_env, app_db):
    config = Config.from_env({**worker_env, "TOLSTOY_AUTH_MODE": "api_key", "TOLSTOY_API_KEY_SECRET": "s" * 32,
                              "TOLSTOY_ADMIN_TOKEN": "admin-token-" + "x" * 20})
    return testing.TestClient(create_app(config, app_db))


def test_api_key_mode_serves_a_shell_without_a_key_and_the_page_with_it(keyed):
    made = keyed.simulate_post("/organizations", json={"name": "Keyed"},
                               headers={"Authorization": "Bearer admin-token-" + "x" * 20})
    org, key = made.json["id"], made.json["apiKey"]
    other = keyed.simulate_post("/organizations", json={"name": "Other"},
                                headers={"Authorization": "Bearer admin-token-" + "x" * 20}).json
    flow = keyed.simulate_post("/flows", json={"name": "Keyed flow", "steps": STEPS},
                               headers={"Authorization": f"Bearer {key}"}).json
    path = f"/console/orgs/{org}/flows"
    shell = keyed.simulate_get(path)
    assert shell.status_code == 200 and "data-shell" in shell.text and "Keyed flow" not in shell.text
    full = keyed.simulate_get(path, headers={"Authorization": f"Bearer {key}"})
    assert full.status_code == 200 and "Keyed flow" in full.text and "data-shell" not in full.text
    assert full.headers["vary"] == "Authorization"
    # The key of one organization reads nothing of another: the 404 page, as for a missing one.
    assert keyed.simulate_get(f"/console/orgs/{other['id']}/flows",
                              headers={"Authorization": f"Bearer {key}"}).status_code == 404
    assert keyed.simulate_get(f"/console/orgs/{org}/flows/{flow['id']}",
                              headers={"Authorization": f"Bearer {other['apiKey']}"}).status_code == 404
    bad = keyed.simulate_get(path, headers={"Authorization": "Bearer tsk_nope"})
    assert bad.status_code == 401 and "Sign in again" in bad.text
    signin = keyed.simulate_get("/console")
    assert 'id="signin"' in signin.text and 'name="' not in signin.text.split('id="signin"')[1].split("</form>")[0]


def test_the_runs_page_and_the_run_view_say_why_a_run_waits(client, api, org, user, worker):
    """A run parked on a signals wait: the runs page and the run view say what it waits for, until
    when; a run parked for its child links to it."""
    child = api.flow(org, [{"id": "gate", "type": "wait", "config": {"signals": ["approve", "reject"],
                                                                     "timeoutMs": 600_000}}], name="Gate")
    parent = api.flow(org, [{"id": "call", "type": "subflow", "config": {"flowId": child["id"]}}], name="Parent")
    parent_id = run_flow(api, org, user, parent)
    base = f"/console/orgs/{org['id']}"
    deadline = time.monotonic() + 20
    while True:
        got = client.simulate_get(f"/flows/{parent['id']}/executions/{parent_id}", headers={"X-Org-ID": org["id"]}).json
        if got["waitingFor"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    child_id = got["waitingFor"]["child"]
    while True:
        kid = client.simulate_get(f"/flows/{child['id']}/executions/{child_id}", headers={"X-Org-ID": org["id"]}).json
        if kid["waitingFor"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert kid["waitingFor"]["signal"] == ["approve", "reject"], kid

    runs = page(client, f"{base}/runs")
    assert runs.status_code == 200
    assert 'data-waiting-for="signal"' in runs.text and "the first of <code>approve</code>, <code>reject</code>" in runs.text
    assert 'data-waiting-for="child"' in runs.text and f'/runs/{child_id}"><code>{child_id[:8]}</code>' in runs.text
    view = page(client, f"{base}/runs/{child_id}")
    assert view.status_code == 200 and 'id="run-waiting"' in view.text
    waiting = re.search(r'<dd id="run-waiting">(.*?)</dd>', view.text, re.S).group(1)
    assert "the first of" in waiting and " until <time" in waiting and ", since <time" in waiting
    client.simulate_post(f"/flows/{parent['id']}/executions/{parent_id}/cancel", headers={"X-Org-ID": org["id"]})
    done = page(client, f"{base}/runs/{child_id}")
    assert 'id="run-waiting"' not in done.text


def test_a_run_page_shows_its_trace_and_links_to_the_trace_viewer(client, api, org, user, config, app_db):
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    flow = api.flow(org, name="Traced")
    joined = api.client.simulate_post(f"/flows/{flow['id']}/execute", json={},
                                      headers={**api.headers(org, user), "traceparent": caller}).json["executionId"]
    own = run_flow(api, org, user, flow)
    text = page(client, f"/console/orgs/{org['id']}/runs/{joined}").text
    # The caller's trace; no viewer configured: the id alone.
    assert '<dd id="run-trace"><code>4bf92f3577b34da6a3ce929d0e0e4736</code></dd>' in text
    viewer = dataclasses.replace(config, trace_url="https://traces.example/trace/{traceId}?org=x")
    linked = testing.TestClient(create_app(viewer, app_db))
    text = page(linked, f"/console/orgs/{org['id']}/runs/{own}").text
    # A run queued without a trace context is a trace of its own: its id is the run's.
    own_trace = uuid.UUID(own).hex
    assert f'<a href="https://traces.example/trace/{own_trace}?org=x" rel="noreferrer noopener" target="_blank">' \
           f'<code>{own_trace}</code></a>' in text
