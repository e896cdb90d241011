"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tolstoy import logs


def require_program(name: str, *also: str) -> str:
    """The path of a program the test needs; skipped without it, but failed under CI=true,
    where .ci/run installs every program the suite uses."""
    found = shutil.which(name) or next((path for path in also if os.path.exists(path)), None)
    if found:
        return found
    message = f"{name} is not installed (.ci/run installs it with apt-get)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def samples(text: str) -> dict:
    """{(name, frozenset(labels)): value} from the Prometheus text format."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict, name: str, **labels) -> float:
    """One sample's value (0 when absent)."""
    return found.get((name, frozenset(labels.items())), 0.0)


def scrape(client) -> dict:
    """GET /metrics through a test client, parsed."""
    result = client.simulate_get("/metrics")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/plain")
    return samples(result.text)


def made_once(home: Path, make: Callable[[Path], None]) -> Path:
    """``home``, a folder kept between runs (a venv, a wheelhouse), made by ``make(folder)`` in a folder
    beside it and renamed into place: a half-made one is never taken for it, and of test processes
    making it at once the first rename wins and the others use it."""
    if home.is_dir():
        return home
    home.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f"{home.name}-", dir=home.parent))
    try:
        make(building)
        os.rename(building, home)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        if not home.is_dir():  # else another test process made it meanwhile (the rename then fails)
            raise
    return home


def free_port() -> int:
    """A TCP port nothing listens on (yet) on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Wait until something accepts connections on 127.0.0.1:port; fail if ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"the process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"nothing listened on port {port} within {timeout} s")


@contextlib.contextmanager
def app_processes(env: dict, ports: list[int]) -> Iterator[list[str]]:
    """The base URLs of Gunicorn servers of the app on 127.0.0.1, one on each of ``ports`` with one worker
    (so which process answers a request is certain), ``env`` over this process's environment; stopped after."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    processes = [subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "tolstoy.api.app:get_app()"],
        cwd=root, env={**os.environ, **env, "PORT": str(port), "WEB_CONCURRENCY": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for port in ports]
    try:
        for port, process in zip(ports, processes, strict=True):
            wait_for_port(port, process)
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def serving(handler: type) -> Iterator[ThreadingHTTPServer]:
    """A threading HTTP server on 127.0.0.1 (a free port) answering with ``handler``, stopped afterwards."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def trickle(count: int, pause: float):
    """A pytest-httpserver handler whose answer sends one byte every ``pause`` seconds, ``count``
    times: a tool that never stalls long enough for a per-read timeout to fire."""
    from werkzeug import Response

    def handler(request):
        def body():
            for _ in range(count):
                yield b" "
                time.sleep(pause)
        return Response(body(), content_type="application/json")
    return handler


class FakeOAuthProvider:
    """An OAuth 2 provider on a test ``server``: ``/authorize`` (consent: redirects back with a code
    bound to the PKCE challenge; ``?as=`` says who consents), ``/token`` (authorization code with
    S256 checked, refresh tokens that work once and rotate, refreshes counted) and ``/me``, the tool
    itself, which answers with the Authorization header it got (and records it)."""

    def __init__(self, server, client_id: str = "client-1", client_secret: str = "client-secret-1"):
        import threading

        self.server = server
        self.client_id = client_id
        self.client_secret = client_secret
        self.lock = threading.Lock()
        self.codes: dict[str, dict] = {}
        self.refresh_tokens: dict[str, str] = {}  # valid refresh token -> who
        self.issued = 0
        self.refreshes = 0
        self.token_requests: list[dict] = []
        self.seen_auth: list[str] = []
        self.expires_in = 3600
        self.refresh_delay = 0.3
        server.expect_request("/authorize").respond_with_handler(self._authorize)
        server.expect_request("/token", method="POST").respond_with_handler(self._token)
        server.expect_request("/me").respond_with_handler(self._me)

    def url(self, path: str) -> str:
        return self.server.url_for(path)

    def credential(self, **extra) -> dict:
        """The body of POST /tools/{id}/auth for a per-user oauth2 credential of this provider."""
        return {"type": "oauth2", "config": {"clientId": self.client_id, "clientSecret": self.client_secret,
                                             "tokenUrl": self.url("/token"), "authorizeUrl": self.url("/authorize"),
                                             "scopes": ["repo", "user"], "perUser": True, **extra}}

    def _json(self, body: dict, status: int = 200):
        import json

        from werkzeug import Response
        return Response(json.dumps(body), status=status, content_type="application/json")

    def _authorize(self, request):
        import secrets
        from urllib.parse import urlencode

        from werkzeug import Response
        args = request.args
        assert args["response_type"] == "code" and args["client_id"] == self.client_id
        assert args["code_challenge_method"] == "S256"
        code = "code-" + secrets.token_hex(8)
        with self.lock:
            self.codes[code] = {"challenge": args["code_challenge"], "redirect_uri": args["redirect_uri"],
                                "who": args.get("as", "someone"), "scope": args.get("scope")}
        if args.get("deny"):
            query = {"error": "access_denied", "error_description": "The user said no", "state": args["state"]}
        else:
            query = {"code": code, "state": args["state"]}
        return Response(status=302, headers={"Location": args["redirect_uri"] + "?" + urlencode(query)})

    def _token(self, request):
        import base64
        import hashlib
        import time

        form = request.form
        with self.lock:
            self.token_requests.append(dict(form))
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return self._json({"error": "invalid_client"}, 401)
        if form.get("grant_type") == "authorization_code":
            with self.lock:
                found = self.codes.pop(form.get("code", ""), None)
            if found is None:
                return self._json({"error": "invalid_grant", "error_description": "Unknown or used code"}, 400)
            if form.get("redirect_uri") != found["redirect_uri"]:
                return self._json({"error": "invalid_grant", "error_description": "redirect_uri mismatch"}, 400)
            digest = base64.urlsafe_b64encode(hashlib.sha256(form.get("code_verifier", "").encode()).digest())
            if digest.rstrip(b"=").decode() != found["challenge"]:
                return self._json({"error": "invalid_grant", "error_description": "PKCE verification failed"}, 400)
            return self._issue(found["who"])
        if form.get("grant_type") == "refresh_token":
            time.sleep(self.refresh_delay)  # slow enough for concurrent refreshes to overlap
            with self.lock:
                who = self.refresh_tokens.pop(form.get("refresh_token", ""), None)
                if who is not None:
                    self.refreshes += 1
            if who is None:
                return self._json({"error": "invalid_grant", "error_description": "refresh token reused"}, 400)
            return self._issue(who)
        return self._json({"error": "unsupported_grant_type"}, 400)

    def _issue(self, who: str):
        with self.lock:
            self.issued += 1
            n = self.issued
            self.refresh_tokens[f"refresh-{who}-{n}"] = who
        return self._json({"access_token": f"access-{who}-{n}", "refresh_token": f"refresh-{who}-{n}",
                           "token_type": "Bearer", "expires_in": self.expires_in, "scope": "repo user"})

    def _me(self, request):
        auth = request.headers.get("Authorization")
        with self.lock:
            self.seen_auth.append(auth)
        return self._json({"auth": auth})


def follow(location: str, **extra) -> str:
    """GET a provider URL (adding ``extra`` query parameters) without following its redirect: the
    Location it answers with."""
    from urllib.parse import urlencode

    import httpx
    url = location + ("&" + urlencode(extra) if extra else "")
    reply = httpx.get(url, follow_redirects=False, timeout=10)
    assert reply.status_code == 302, reply.text
    return reply.headers["location"]


# Every route that TenantMiddleware does not guard as a tenant route (``access`` other than "tenant"),
# every sink and every static folder, reviewed one by one: template → (access, methods, who may reach it
# through the shipped Nginx, why). tests/api/test_public_routes.py fails for anything served that is not
# here as it is here: review it first. tests/ops/test_nginx.py sends each "monitoring host" row, spelled
# every way it knows, from another address and expects no answer from the app.
ANYONE, MONITORING = "anyone", "monitoring host"
REVIEWED_ROUTES = {
    "/": ("public", "GET", ANYONE, "one line naming the service and pointing at /docs"),
    "/organizations": ("organizations", "GET POST", ANYONE,
                       "admin token, or an organization's key for its own (api_key mode)"),
    "/organizations/{id}": ("organizations", "DELETE GET PATCH PUT", ANYONE, "as /organizations"),
    "/organizations/{id}/quotas": ("organizations", "GET PATCH PUT", ANYONE,
                                   "as /organizations/{id}; changing quotas is the admin token's only"),
    "/organizations/{id}/usage": ("organizations", "GET", ANYONE, "as /organizations/{id}, reading only"),
    "/auth/{tool_key}/callback": ("public", "GET", ANYONE, "the provider sends the browser back; the HMAC-signed "
                                                          "state names the organization and login, single use"),
    "/approvals/{token}": ("public", "GET POST", ANYONE, "the HMAC-signed link is the credential, single use"),
    "/hooks/{trigger_id}": ("public", "POST", ANYONE,
                            "the sender's HMAC signature with the trigger's secret is the credential"),
    "/health": ("public", "GET", ANYONE, "liveness for load balancers: no database call, nothing per tenant"),
    "/status": ("public", "GET", ANYONE, "readiness for load balancers: up or not, version, uptime"),
    "/status/detailed": ("operator", "GET", MONITORING, "counts across organizations: admin token in api_key mode"),
    "/detailed": ("operator", "GET", MONITORING, "alias of /status/detailed"),
    "/metrics": ("public", "GET", MONITORING, "Prometheus scrapes it; counts across organizations"),
    "/version": ("public", "GET", ANYONE, "name and versions, as /openapi.json says"),
    "/openapi.json": ("public", "GET", ANYONE, "the interface description"),
    "/docs": ("public", "GET", ANYONE, "the page that renders /openapi.json"),
    "/docs/static/docs-init.js": ("public", "GET", ANYONE, "that page's script"),
    "/console": ("public", "GET", ANYONE, "the console's shell; its pages open their own tenant unit of work"),
    "/console/orgs/{org_id}": ("public", "GET", ANYONE,
                               "console page: the path's organization (headers mode) or the key's"),
    "/console/orgs/{org_id}/flows": ("public", "GET", ANYONE, "console page, as above"),
    "/console/orgs/{org_id}/flows/{flow_id}": ("public", "GET", ANYONE, "console page, as above"),
    "/console/orgs/{org_id}/runs": ("public", "GET", ANYONE, "console page, as above"),
    "/console/orgs/{org_id}/runs/{run_id}": ("public", "GET", ANYONE, "console page, as above"),
    "/console/orgs/{org_id}/audit": ("public", "GET", ANYONE, "console page, as above (an API key needs the admin "
                                                              "scope, as GET /audit-events does)"),
    "sink /console(?!/static/)(/.*)?\\Z": ("public", "", ANYONE, "the console's 404 page"),
    "static /docs/static/": ("public", "", ANYONE, "files of the docs page"),
    "static /console/static/": ("public", "", ANYONE, "the console's script and stylesheet"),
}


def app_routes(app) -> dict[str, tuple[object, frozenset]]:
    """Every route a Falcon app serves: template → (resource, methods with a responder), plus its sinks
    (``sink <pattern>``) and static folders (``static <prefix>``), with no methods."""
    found = {}

    def walk(nodes):
        for node in nodes:
            if node.resource is not None:
                methods = frozenset(method for method, responder in node.method_map.items()
                                    if method != "OPTIONS" and "method_not_allowed" not in repr(responder))
                found[node.uri_template] = (node.resource, methods)
            walk(node.children)

    walk(app._router._roots)
    for matcher, sink, _ in app._sinks:
        found[f"sink {getattr(matcher, 'pattern', matcher)}"] = (sink, frozenset())
    for route, _, _ in app._static_routes:
        found[f"static {route._prefix}"] = (route, frozenset())
    return found


@contextlib.contextmanager
def json_log_lines(level: int = logging.INFO) -> Iterator[Callable[[], list[dict]]]:
    """Every log record at ``level`` and up, as the JSON line production writes it
    (tolstoy.logs.JsonFormatter): yields a function that returns the lines so far."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(level)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


HISTORY_MONTHS = 24


def month_start(today: dt.date, back: int) -> dt.date:
    """The first day of the month ``back`` months before ``today``'s."""
    index = today.year * 12 + today.month - 1 - back
    return dt.date(index // 12, index % 12 + 1, 1)


def two_years_of_partitions(db) -> str:
    """Make the run history's monthly partitions for the 23 months before this one, this one and three
    ahead (as two years of upkeep would have); returns this month's flow_runs partition."""
    with db.pool.connection() as conn:
        conn.execute("select tolstoy_ensure_partitions(%s, %s)",
                     (month_start(dt.date.today(), HISTORY_MONTHS - 1), HISTORY_MONTHS + 3))
        made = conn.execute("select count(*) as n from pg_inherits i join pg_class p on p.oid = i.inhparent "
                            "where p.relname = 'flow_runs'").fetchone()["n"]
        # Index builds and attach checks count as scans of the new partitions: written out when this
        # transaction ends, not up to a second later, so a pg_stat_reset() after this call clears them.
        conn.execute("select pg_stat_force_next_flush()")
    assert made >= HISTORY_MONTHS + 3
    return f"flow_runs_p{dt.date.today():%Y_%m}"


class LinesRun:
    """Counts the lines of Python that run in ``files`` (paths ending so) while it is entered, on this
    thread and on every thread started meanwhile: a measure of work that does not depend on the
    machine's speed, for asserting how work grows with input (a count, never a timing)."""

    def __init__(self, *files: str):
        self.files = files
        self.count = 0
        self._lock = threading.Lock()
        self._counts: list[list[int]] = []
        self._local = threading.local()

    def _tracer(self, frame, event, arg):
        if event != "call" or not frame.f_code.co_filename.endswith(self.files):
            return None
        counter = getattr(self._local, "counter", None)
        if counter is None:
            counter = self._local.counter = [0]
            with self._lock:
                self._counts.append(counter)

        def lines(frame, event, arg):
            if event == "line":
                counter[0] += 1
            return lines
        return lines

    def __enter__(self) -> LinesRun:
        threading.settrace(self._tracer)
        sys.settrace(self._tracer)
        return self

    def __exit__(self, *exc) -> None:
        sys.settrace(None)
        threading.settrace(None)  # threads still running keep tracing; their counts are read now
        self.count = sum(counter[0] for counter in self._counts)


# ---- quotas per organization (tests/api/test_quotas.py, tests/engine/test_quota_admission.py) ----


def execute_flow(client, org, user, flow, **headers):
    """POST /flows/{id}/execute as ``user`` of ``org`` (headers mode), answered as it is."""
    return client.simulate_post(f"/flows/{flow['id']}/execute", json={},
                                headers={"X-Org-ID": org["id"], "X-User-ID": user["id"], **headers})


def written(db, org) -> dict:
    """Everything a run leaves: its row, its steps, its log rows."""
    with db.pool.connection() as conn:
        return conn.execute(
            "select (select count(*) from flow_runs where org_id = %(o)s) as runs, "
            "(select count(*) from flow_run_steps where org_id = %(o)s) as steps, "
            "(select count(*) from execution_logs where org_id = %(o)s) as logs", {"o": org["id"]}).fetchone()


def set_quotas(client, org, headers=None, **values) -> dict:
    """PUT /organizations/{id}/quotas (the admin's: headers mode, or pass the admin token)."""
    result = client.simulate_put(f"/organizations/{org['id']}/quotas", json=values, headers=headers or {})
    assert result.status_code == 200, result.text
    return result.json


def usage(client, org, headers=None) -> dict:
    """GET /organizations/{id}/usage."""
    result = client.simulate_get(f"/organizations/{org['id']}/usage", headers=headers or {})
    assert result.status_code == 200, result.text
    return result.json


def assert_quota_refusal(result, quota: str, limit: int, retry_after: str) -> None:
    """A 429 over one of the organization's quotas: the error body naming it and its limit, and Retry-After."""
    assert result.status_code == 429, result.text
    body = result.json
    assert body["statusCode"] == 429 and body["error"] == "Too Many Requests", body
    assert body["quota"] == quota and body["limit"] == limit, body
    assert quota in body["message"] and f"({limit}" in body["message"], body
    assert result.headers["retry-after"] == retry_after
