"""The run console in real Chromium (Debian's /usr/bin/chromium, driven by Playwright for Python):
a real HTTP server on 127.0.0.1 and a flow worker, both auth modes, live refresh, the timeline,
actions through the API, the 404 page for another organization's run, and axe-core (vendored)
with no serious or critical violation. With TOLSTOY_SCREENSHOTS=docs it rewrites the README's screenshots in docs/.

Skipped without Chromium or Playwright, failed instead under CI=true (.ci/run installs both)."""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from support import free_port, require_program

from tolstoy.api.app import create_app
from tolstoy.config import Config

ROOT = Path(__file__).resolve().parents[2]
# The README's screenshots: rewritten only when asked (TOLSTOY_SCREENSHOTS=docs), so an ordinary
# test run leaves the tree clean; otherwise they go to the test's temporary directory.
SHOTS_TO_DOCS = os.environ.get("TOLSTOY_SCREENSHOTS") == "docs"
AXE = (Path(__file__).parent / "vendor" / "axe.min.js").read_text()
ADMIN = "admin-token-" + "b" * 24
WAIT_MS = 20_000

GREETER = [
    {"id": "hello", "type": "transform", "config": {"output": {"text": "Hello {{ variables.who }}"}}},
    {"id": "pause", "type": "delay", "config": {"ms": 2500}},
    {"id": "shout", "type": "transform", "config": {"output": "{{ steps.hello.text | upper }}"}},
    # Refused at once (nothing listens there), retried once after a back-off; not critical.
    {"id": "ping", "type": "http_request", "dependsOn": ["hello"], "critical": False,
     "retryPolicy": {"maxRetries": 1, "backoffStrategy": "fixed", "delayMs": 400},
     "config": {"method": "GET", "url": f"http://127.0.0.1:{free_port()}/"}},
]
SLEEPER = [{"id": "nap", "type": "delay", "config": {"ms": 600_000}}]
BROKEN = [{"id": "oops", "type": "transform", "config": {"output": "{{ variables.missing.field }}"}}]


def playwright_api():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("playwright is not installed (pip install -e '.[test]')")
        pytest.skip("playwright is not installed")
    return sync_playwright


@pytest.fixture(scope="module")
def browser():
    chromium = require_program("chromium", "/usr/bin/chromium")
    sync_playwright = playwright_api()
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


def serve(app) -> tuple[str, callable]:
    """The app on a free port of 127.0.0.1, answering requests on threads."""
    server = make_server("127.0.0.1", 0, app, server_class=_Server, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
    return f"http://127.0.0.1:{server.server_address[1]}", stop


@pytest.fixture
def site(config, app_db, worker):
    """Headers mode: the app served for real, with a worker running flows."""
    url, stop = serve(create_app(config, app_db))
    yield url
    stop()


@pytest.fixture
def keyed_site(worker_env, app_db, worker):
    config = Config.from_env({**worker_env, "TOLSTOY_AUTH_MODE": "api_key", "TOLSTOY_API_KEY_SECRET": "k" * 32,
                              "TOLSTOY_ADMIN_TOKEN": ADMIN})
    url, stop = serve(create_app(config, app_db))
    yield url
    stop()


def call(base: str, method: str, path: str, body=None, headers=None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    problems: list[str] = []
    opened.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda e: problems.append(str(e)))
    opened.problems = problems
    yield opened
    context.close()


def no_serious_violations(page) -> None:
    """axe-core on the page as it is now: nothing serious or critical (contrast included)."""
    page.evaluate(AXE)  # through the DevTools protocol: the page's CSP still forbids inline scripts
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in result["violations"]
           if v["impact"] in ("serious", "critical")]
    assert not bad, bad


def csp_clean(page) -> None:
    """No script error and no Content-Security-Policy violation on the page."""
    assert not [p for p in page.problems if "Content Security Policy" in p or "Uncaught" in p], page.problems


def test_headers_mode_flows_live_runs_timeline_and_actions(site, page, tmp_path):
    status, org = call(site, "POST", "/organizations", {"name": "Acme Robotics"})
    h = {"X-Org-ID": org["id"]}
    status, user = call(site, "POST", "/users", {"email": "ada@acme.example", "name": "Ada"}, h)
    status, greeter = call(site, "POST", "/flows", {"name": "Greet", "steps": GREETER}, h)
    call(site, "PATCH", f"/flows/{greeter['id']}", {"steps": [*GREETER[:3], {**GREETER[3], "name": "Ping"}]}, h)
    status, sleeper = call(site, "POST", "/flows", {"name": "Sleep an hour", "steps": SLEEPER}, h)
    status, broken = call(site, "POST", "/flows", {"name": "Broken", "steps": BROKEN}, h)
    hu = {**h, "X-User-ID": user["id"]}

    # The organization picker, then the flows.
    page.goto(f"{site}/console")
    no_serious_violations(page)
    page.get_by_role("link", name="Acme Robotics").click()
    page.wait_for_url("**/flows")
    assert page.get_by_role("heading", level=1).inner_text() == "Flows"
    no_serious_violations(page)

    # A flow: its steps, and v1 beside the current v2.
    page.get_by_role("link", name="Greet").click()
    page.wait_for_selector("text=v1 beside the current v2")
    assert page.locator("table.diff tr.added").count() >= 1
    no_serious_violations(page)

    # Start a run through the API and watch it go from queued to completed without reloading.
    status, started = call(site, "POST", f"/flows/{greeter['id']}/execute", {"variables": {"who": "Ada"}}, hu)
    assert status == 202
    run_id = started["executionId"]
    page.goto(f"{site}/console/orgs/{org['id']}/runs")
    row = page.locator("table.runs tbody tr", has=page.locator(f"a[href$='{run_id}']"))
    assert row.locator(".status").inner_text().split()[-1] in ("queued", "running")
    page.evaluate("window.__sameDocument = true")
    row.locator(".status-completed").wait_for(timeout=WAIT_MS)
    assert page.evaluate("window.__sameDocument") is True  # refreshed in place, by polling
    failed_status, failed = call(site, "POST", f"/flows/{broken['id']}/execute", {}, hu)
    page.locator("table.runs tbody tr .status-failed").first.wait_for(timeout=WAIT_MS)
    shots = ROOT / "docs" if SHOTS_TO_DOCS else tmp_path
    page.screenshot(path=str(shots / "console-runs.png"), full_page=True)
    no_serious_violations(page)

    # Its timeline: a bar per step, the delay as its own segment, the critical path marked.
    row.get_by_role("link").first.click()
    page.wait_for_selector("#timeline")
    assert page.locator("#timeline rect.seg-wait").count() == 1
    assert page.locator("#timeline rect.seg-backoff").count() == 1  # ping's wait before attempt 2
    assert page.locator("#timeline rect.seg-run.outcome-failed").count() == 2
    assert page.locator("#timeline text.attempt-mark").text_content() == "▲2"
    # Steps run one after another: ping (which depends on hello only) waited for shout.
    assert page.locator("#timeline g.lane.critical").count() == 4
    assert "HELLO ADA" in page.inner_text("main")
    page.locator("#timeline").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "console-timeline.png"), full_page=True)
    no_serious_violations(page)

    # Cancel a delayed run with the page's button (the API's own endpoint).
    status, sleeping = call(site, "POST", f"/flows/{sleeper['id']}/execute", {}, hu)
    page.goto(f"{site}/console/orgs/{org['id']}/runs/{sleeping['executionId']}")
    page.get_by_role("button", name="Cancel run").click()
    page.locator("#run-status .status-cancelled").wait_for(timeout=WAIT_MS)
    assert "Accepted" in page.inner_text("#action-result")
    _, state = call(site, "GET", f"/flows/{sleeper['id']}/executions/{sleeping['executionId']}", headers=h)
    assert state["status"] == "cancelled"

    # Retry a failed run: a new run, linked both ways.
    page.goto(f"{site}/console/orgs/{org['id']}/runs/{failed['executionId']}")
    assert page.locator("#run-status .status-failed").count() == 1
    page.get_by_role("button", name="Retry run").click()
    page.locator("#action-link").wait_for(timeout=WAIT_MS)
    page.locator("#action-link").click()
    page.wait_for_selector("text=Retry of")
    assert failed["executionId"] in page.inner_text("main")
    # Retrying the same run again answers the same retry (the API's rule), shown as it says.
    csp_clean(page)

    # Another organization's run id: the console's 404 page.
    _, other = call(site, "POST", "/organizations", {"name": "Other"})
    answer = page.goto(f"{site}/console/orgs/{other['id']}/runs/{run_id}")
    assert answer.status == 404
    assert page.get_by_role("heading", level=1).inner_text() == "Not found"
    no_serious_violations(page)


def test_re_run_from_here_shows_the_dry_run_before_it_is_confirmed(site, page, httpserver, tmp_path):
    httpserver.expect_request("/quote").respond_with_json({"price": 12})
    httpserver.expect_request("/charge").respond_with_json({"id": "ch_1"})
    status, org = call(site, "POST", "/organizations", {"name": "Acme Robotics"})
    h = {"X-Org-ID": org["id"]}
    status, user = call(site, "POST", "/users", {"email": "ada@acme.example", "name": "Ada"}, h)
    status, flow = call(site, "POST", "/flows", {"name": "Pay", "steps": [
        {"id": "quote", "type": "http_request", "config": {"method": "GET", "url": httpserver.url_for("/quote")}},
        {"id": "charge", "type": "http_request",
         "config": {"method": "POST", "url": httpserver.url_for("/charge"),
                    "body": {"amount": "{{ steps.quote.body.price }}"}}},
        {"id": "receipt", "type": "transform", "config": {"output": "paid {{ steps.charge.body.id }}"}},
    ]}, h)
    hu = {**h, "X-User-ID": user["id"]}
    status, started = call(site, "POST", f"/flows/{flow['id']}/execute", {}, hu)
    page.goto(f"{site}/console/orgs/{org['id']}/runs/{started['executionId']}")
    page.locator("#run-status .status-completed").wait_for(timeout=WAIT_MS)
    page.reload()
    sent_before = len(httpserver.log)

    page.get_by_role("button", name="Re-run from charge").click()
    preview = page.locator("#rerun-preview")
    preview.wait_for(state="visible", timeout=WAIT_MS)
    assert page.locator("#rerun-keep").inner_text().split() == ["quote"]
    assert page.locator("#rerun-again").inner_text().split() == ["charge", "receipt"]
    calls = page.locator("#rerun-calls tr.rerun-call")
    assert calls.count() == 1
    row = calls.first.inner_text()
    assert "POST" in row and httpserver.url_for("/charge") in row and "not idempotent" in row
    assert len(httpserver.log) == sent_before  # the preview sent nothing
    shots = ROOT / "docs" if SHOTS_TO_DOCS else tmp_path
    preview.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "console-rerun.png"), full_page=True)
    no_serious_violations(page)

    page.get_by_role("button", name="Confirm re-run").click()
    page.locator("#action-link").wait_for(timeout=WAIT_MS)
    page.locator("#action-link").click()
    page.wait_for_selector("text=Re-run of")
    page.locator("#run-status .status-completed").wait_for(timeout=WAIT_MS)
    assert started["executionId"] in page.inner_text("main")
    assert [r.path for r, _ in httpserver.log[sent_before:]] == ["/charge"]
    csp_clean(page)
    no_serious_violations(page)


def until_parked(site, h, flow_id, run_id, step_id):
    for _ in range(400):
        _, run = call(site, "GET", f"/flows/{flow_id}/executions/{run_id}", headers=h)
        if run["status"] == "queued" and any(s["stepId"] == step_id and s["status"] == "waiting"
                                             for s in run["steps"]):
            return run
        threading.Event().wait(0.05)
    pytest.fail(f"run {run_id} never parked in {step_id}: {run}")


def test_moving_a_waiting_run_to_another_version_shows_the_diff_before_it_moves(site, page, tmp_path):
    status, org = call(site, "POST", "/organizations", {"name": "Acme Robotics"})
    h = {"X-Org-ID": org["id"]}
    _, user = call(site, "POST", "/users", {"email": "ada@acme.example", "name": "Ada"}, h)
    hu = {**h, "X-User-ID": user["id"]}
    gate = {"id": "approve", "type": "wait", "config": {"signal": "approve", "timeoutMs": 600_000}}
    _, flow = call(site, "POST", "/flows", {"name": "Refund", "steps": [
        {"id": "lookup", "type": "transform", "config": {"output": {"order": "{{ variables.order }}"}}},
        {"id": "draft", "type": "transform", "config": {"output": "refund {{ steps.lookup.order }}"}},
        gate]}, h)
    status, started = call(site, "POST", f"/flows/{flow['id']}/execute", {"variables": {"order": "A-17"}}, hu)
    run_id = started["executionId"]
    until_parked(site, h, flow["id"], run_id, "approve")
    # v2: "draft" is gone, "lookup" is kept, a notification after the approval is new.
    status, _ = call(site, "PATCH", f"/flows/{flow['id']}", {"steps": [
        {"id": "lookup", "type": "transform", "config": {"output": {"order": "{{ variables.order }}"}}},
        gate,
        {"id": "notify", "type": "transform", "config": {"output": "approved {{ steps.lookup.order }}"}}]}, h)
    assert status == 200

    page.goto(f"{site}/console/orgs/{org['id']}/runs/{run_id}")
    form = page.locator("#move-run")
    form.wait_for()
    assert page.locator("#move-version").input_value() == "2"
    page.get_by_role("button", name="Preview move").click()
    diff = page.locator("#move-diff")
    diff.get_by_text("Steps added").wait_for(timeout=WAIT_MS)
    text = diff.inner_text()
    assert "Moving from v1 to v2 (parked on approve)" in text
    assert "notify" in text and "draft (recorded: completed)" in text and "lookup (completed)" in text
    assert "Preview of the move to v2" in page.inner_text("#action-result")
    # Nothing moved yet, and the live refresh leaves the preview alone.
    page.wait_for_timeout(2500)
    assert page.locator("#move-diff").get_by_text("Steps added").count() == 1
    _, run = call(site, "GET", f"/flows/{flow['id']}/executions/{run_id}", headers=h)
    assert run["flowVersion"] == 1
    shots = ROOT / "docs" if SHOTS_TO_DOCS else tmp_path
    form.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "console-move.png"), full_page=True)
    no_serious_violations(page)

    # Confirming without ticking the step it would discard: the API's 409, shown as it says.
    page.get_by_role("button", name="Confirm move").click()
    page.locator("#action-result.is-error").wait_for(timeout=WAIT_MS)
    assert "409" in page.inner_text("#action-result") and "'draft'" in page.inner_text("#action-result")
    _, run = call(site, "GET", f"/flows/{flow['id']}/executions/{run_id}", headers=h)
    assert run["flowVersion"] == 1
    page.get_by_label("Discard draft").check()
    page.get_by_role("button", name="Confirm move").click()
    page.get_by_text("Moved to v2: the run is queued.").wait_for(timeout=WAIT_MS)
    page.wait_for_selector("text=v2")
    _, run = call(site, "GET", f"/flows/{flow['id']}/executions/{run_id}", headers=h)
    assert run["flowVersion"] == 2 and "draft" not in {s["stepId"] for s in run["steps"]}
    status, _ = call(site, "POST", f"/flows/{flow['id']}/executions/{run_id}/signals/approve", {"payload": {}}, hu)
    assert status == 202
    page.locator("#run-status .status-completed").wait_for(timeout=WAIT_MS)
    assert "approved A-17" in page.inner_text("main")
    csp_clean(page)


def test_api_key_mode_signs_in_with_a_key_kept_in_session_storage(keyed_site, page):
    _, org = call(keyed_site, "POST", "/organizations", {"name": "Keyed Co"}, {"Authorization": f"Bearer {ADMIN}"})
    key = org["apiKey"]
    auth = {"Authorization": f"Bearer {key}"}
    call(keyed_site, "POST", "/users", {"email": "kim@keyed.example", "name": "Kim"}, auth)
    _, flow = call(keyed_site, "POST", "/flows", {"name": "Quick", "steps": GREETER[:1]}, auth)
    _, stranger = call(keyed_site, "POST", "/organizations", {"name": "Stranger"}, {"Authorization": f"Bearer {ADMIN}"})
    _, foreign_flow = call(keyed_site, "POST", "/flows", {"name": "Theirs", "steps": GREETER[:1]},
                           {"Authorization": f"Bearer {stranger['apiKey']}"})
    _, foreign_user = call(keyed_site, "POST", "/users", {"email": "sam@stranger.example"},
                           {"Authorization": f"Bearer {stranger['apiKey']}"})
    _, foreign_run = call(keyed_site, "POST", f"/flows/{foreign_flow['id']}/execute", {"variables": {"who": "S"}},
                          {"Authorization": f"Bearer {stranger['apiKey']}", "X-User-ID": foreign_user["id"]})

    page.goto(f"{keyed_site}/console")
    no_serious_violations(page)
    page.get_by_label("API key").fill("tsk_not-a-key")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Sign-in refused").wait_for()
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/flows")
    page.get_by_role("link", name="Quick").wait_for(timeout=WAIT_MS)  # fetched with the key
    assert page.evaluate("sessionStorage.getItem('tolstoy.console.key')") == key
    assert page.evaluate("document.cookie") == ""
    no_serious_violations(page)

    # Run the flow from its page (the API's execute, with the key and the acting user).
    page.get_by_role("link", name="Quick").click()
    page.get_by_label("Variables (a JSON object)").fill('{"who": "Kim"}')
    page.get_by_role("button", name="Run now").click()
    page.locator("#action-link").wait_for(timeout=WAIT_MS)
    page.locator("#action-link").click()
    page.locator("#run-status .status-completed").wait_for(timeout=WAIT_MS)
    assert "HELLO KIM" not in page.inner_text("main") and "Hello Kim" in page.inner_text("main")
    no_serious_violations(page)

    # The other organization's run, with this key: the 404 page.
    page.goto(f"{keyed_site}/console/orgs/{stranger['id']}/runs/{foreign_run['executionId']}")
    page.get_by_role("heading", name="Not found").wait_for(timeout=WAIT_MS)
    page.goto(f"{keyed_site}/console/orgs/{org['id']}/runs/{foreign_run['executionId']}")
    page.get_by_role("heading", name="Not found").wait_for(timeout=WAIT_MS)
    csp_clean(page)

    # Signing out forgets the key; the pages then ask for it again.
    page.goto(f"{keyed_site}/console/orgs/{org['id']}/flows")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/console*")
    assert page.evaluate("sessionStorage.getItem('tolstoy.console.key')") is None
    page.goto(f"{keyed_site}/console/orgs/{org['id']}/flows")
    page.wait_for_selector("#signin")
