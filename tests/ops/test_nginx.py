"""The production stack on 127.0.0.1: Debian's Nginx with ops/nginx/tolstoy.conf
in front of Gunicorn with gunicorn.conf.py, on a PostgreSQL of its own that the
last test stops and starts again under the running app."""

from __future__ import annotations

import concurrent.futures
import gzip
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from support import ANYONE, MONITORING, REVIEWED_ROUTES, require_program

from tolstoy.db import embedded, migrate

# One stack (PostgreSQL, Gunicorn, Nginx) serves the whole module, whose tests run in order.
pytestmark = pytest.mark.xdist_group("nginx")

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "ops" / "nginx" / "tolstoy.conf"
DB_PASSWORD = "pw-never-logged"
CLIENT_TOKEN = "tok-never-logged-0123"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    process.kill()
    pytest.fail(f"{what} did not start: {log.read_text()}")


def render_site(port_nginx: int, port_app: int, logs: Path) -> str:
    """ops/nginx/tolstoy.conf with this run's ports and log folder; each replaced line must exist."""
    text = NGINX_CONF.read_text()
    for old, new in [
        ("server 127.0.0.1:3000 fail_timeout=0;", f"server 127.0.0.1:{port_app} fail_timeout=0;"),
        ("    listen 80;\n", f"    listen 127.0.0.1:{port_nginx};\n"),
        ("    listen [::]:80;\n", ""),
        ("/var/log/nginx/", f"{logs}/"),
    ]:
        assert old in text, f"ops/nginx/tolstoy.conf no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def main_conf(tmp: Path, site: Path) -> str:
    """The part Debian's /etc/nginx/nginx.conf provides, pointed at a temporary folder."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(f"    {kind}_temp_path {tmp}/{kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                          "uwsgi", "scgi"))
    return (f"{user}worker_processes 1;\ndaemon off;\npid {tmp}/nginx.pid;\n"
            f"error_log {tmp}/logs/main-error.log warn;\nevents {{ worker_connections 256; }}\n"
            f"http {{\n    default_type application/octet-stream;\n{temp}\n    include {site};\n}}\n")


class Stack:
    def __init__(self, tmp: Path, nginx_port: int, app: subprocess.Popen, pg_stop, pg_start):
        self.tmp = tmp
        self.port = nginx_port
        self.app = app
        self.pg_stop = pg_stop
        self.pg_start = pg_start

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.rglob("*.log")))

    def request(self, method, path, body=None, headers=None, *, raw: bytes | None = None, retry_429=True,
                source: str | None = None):
        """One HTTP request through Nginx, from 127.0.0.1 or the ``source`` address; a 429 is retried
        after Retry-After unless asked for."""
        for _ in range(10):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15,
                                              source_address=(source, 0) if source else None)
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            sent = dict(headers or {})
            if data is not None:
                sent.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            payload = response.read()
            conn.close()
            result = (response.status, {k.lower(): v for k, v in response.getheaders()}, payload)
            if response.status != 429 or not retry_429:
                return result
            time.sleep(float(response.getheader("Retry-After", "1")))
        return result


def decode(payload: bytes):
    return json.loads(payload) if payload else None


@pytest.fixture(scope="module")
def stack():
    nginx = require_program("nginx", "/usr/sbin/nginx")
    tmp = Path(tempfile.mkdtemp(prefix="tolstoy-nginx-"))
    (tmp / "logs").mkdir()
    # A PostgreSQL of its own: the last test stops and restarts it.
    server, url = embedded.start(tmp / "pg", cleanup="delete")
    migrate.upgrade(url, quiet=True)
    assert "postgres:@" in url  # trusted local connections: any password is accepted
    app_url = url.replace("postgres:@", f"postgres:{DB_PASSWORD}@", 1)
    pg_ctl = str(embedded.bin_dir() / "pg_ctl")
    pgdata = str(server.pgdata)
    as_user = {"user": server.system_user} if server.system_user else {}

    def pg_stop():
        subprocess.run([pg_ctl, "-D", pgdata, "-m", "fast", "-w", "stop"], check=True,
                       capture_output=True, **as_user)

    def pg_start():
        subprocess.run([pg_ctl, "-D", pgdata, "-w", "-o", '-h ""', "-o", f"-k {embedded.socket_dir(url)}",
                        "-l", f"{pgdata}/log", "start"], check=True, capture_output=True, **as_user)

    app_port, nginx_port = free_port(), free_port()
    env = {**os.environ, "DATABASE_URL": app_url, "PORT": str(app_port), "WEB_CONCURRENCY": "2",
           "TOLSTOY_ENV": "test", "TOLSTOY_POOL_TIMEOUT": "2",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics")}
    (tmp / "metrics").mkdir()
    with open(tmp / "logs" / "gunicorn.log", "w") as out:
        app = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "tolstoy.api.app:get_app()"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    wait_for_port(app_port, app, tmp / "logs" / "gunicorn.log", "gunicorn")

    site = tmp / "tolstoy.conf"
    site.write_text(render_site(nginx_port, app_port, tmp / "logs"))
    conf = tmp / "nginx.conf"
    conf.write_text(main_conf(tmp, site))
    check = subprocess.run([nginx, "-t", "-p", str(tmp), "-e", str(tmp / "logs" / "main-error.log"),
                            "-c", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    with open(tmp / "logs" / "nginx-stderr.log", "w") as out:
        proxy = subprocess.Popen([nginx, "-p", str(tmp), "-e", str(tmp / "logs" / "main-error.log"),
                                  "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    wait_for_port(nginx_port, proxy, tmp / "logs" / "nginx-stderr.log", "nginx")

    yield Stack(tmp, nginx_port, app, pg_stop, pg_start)

    proxy.terminate()
    app.terminate()
    proxy.wait(timeout=30)
    app.wait(timeout=30)
    try:
        pg_stop()
    except subprocess.CalledProcessError:
        pass  # already stopped
    server.cleanup()
    shutil.rmtree(tmp, ignore_errors=True)


def test_crud_through_nginx(stack):
    status, headers, org = stack.request("POST", "/organizations", {"name": "Through Nginx"})
    assert status == 201 and headers["location"] == f"/organizations/{decode(org)['id']}"
    org = decode(org)
    tenant = {"X-Org-ID": org["id"]}
    status, _, user = stack.request("POST", "/users", {"email": "ada@example.com", "name": "Ada"}, tenant)
    assert status == 201
    user = decode(user)
    status, headers, body = stack.request("GET", f"/users/{user['id']}", headers=tenant)
    assert status == 200 and decode(body)["email"] == "ada@example.com" and headers["etag"]
    status, _, body = stack.request("PATCH", f"/users/{user['id']}", {"name": "Ada L."}, tenant)
    assert status == 200 and decode(body)["name"] == "Ada L."
    status, _, body = stack.request("GET", "/users", headers=tenant)
    assert status == 200 and [u["id"] for u in decode(body)] == [user["id"]]
    assert stack.request("DELETE", f"/users/{user['id']}", headers=tenant)[0] == 204
    assert stack.request("GET", f"/users/{user['id']}", headers=tenant)[0] == 404
    assert stack.request("DELETE", f"/organizations/{org['id']}")[0] == 204


def test_request_id_passes_through_both_ways_and_into_the_logs(stack):
    status, headers, _ = stack.request("GET", "/version", headers={"X-Request-ID": "nginx-trace-42",
                                                                  "Authorization": f"Bearer {CLIENT_TOKEN}"})
    assert status == 200 and headers["x-request-id"] == "nginx-trace-42"
    # Without one, Nginx makes one up, and the app sees and echoes that id.
    status, headers, _ = stack.request("GET", "/version")
    generated = headers["x-request-id"]
    assert status == 200 and len(generated) == 32
    time.sleep(0.5)  # the log lines are written after the responses
    access = [json.loads(line) for line in (stack.tmp / "logs" / "gunicorn.log").read_text().splitlines()
              if line.startswith("{") and '"gunicorn.access"' in line]
    ids = {line.get("requestId") for line in access}
    assert {"nginx-trace-42", generated} <= ids
    line = next(line for line in access if line.get("requestId") == "nginx-trace-42")
    assert (line["route"], line["status"], line["method"]) == ("/version", 200, "GET")
    nginx_ids = {json.loads(line)["requestId"]
                 for line in (stack.tmp / "logs" / "tolstoy.access.log").read_text().splitlines()}
    assert {"nginx-trace-42", generated} <= nginx_ids


def test_oversize_body_is_a_json_413(stack):
    body = b'{"name": "' + b"x" * (1024 * 1024) + b'"}'
    status, headers, payload = stack.request("POST", "/organizations", raw=body)
    assert status == 413 and headers["content-type"] == "application/json"
    assert decode(payload)["statusCode"] == 413 and "x-request-id" in headers
    # Just under the limit reaches the app (and is a normal validation answer, not a 413).
    near = b'{"name": "' + b"x" * (1024 * 1024 - 20) + b'"}'
    assert stack.request("POST", "/organizations", raw=near)[0] == 400


def test_json_is_gzipped(stack):
    status, headers, payload = stack.request("GET", "/openapi.json", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("content-encoding") == "gzip"
    assert json.loads(gzip.decompress(payload))["openapi"].startswith("3.1")


def test_health_is_never_cached(stack):
    for path in ("/health", "/status"):
        status, headers, _ = stack.request("GET", path)
        assert status == 200 and headers["cache-control"] == "no-store", (path, headers)


def test_metrics_through_nginx_count_every_worker(stack):
    status, headers, payload = stack.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'tolstoy_http_requests_total{method="POST",route="/organizations",status="201"}' in payload.decode()


# Another client: still loopback (tests reach only 127.0.0.1), but not the 127.0.0.1 that
# ops/nginx/tolstoy.conf allows to reach the operator surfaces.
OUTSIDE = "127.0.0.2"
# What only the operator surfaces answer: Prometheus samples, detailed status's database facts.
OPERATOR_DATA = ("tolstoy_http_requests_total", "# HELP", "# TYPE", "approximateRowCounts", "migrationVersion",
                 "latencyMs", "maxRssKb")


def spellings(path: str) -> list[str]:
    """Ways to write ``path`` that Nginx normalizes to it or that the app (Gunicorn decodes %XX,
    Falcon drops leading and trailing slashes) may route to it; issue 19's, and their relatives."""
    body = path[1:]
    every = "".join(f"%{ord(c):02x}" if c != "/" else "/" for c in body)
    first, rest = body.split("/", 1) if "/" in body else (body, "")
    return [
        path, path + "/", path + "//", path + "?x", path + "?x=1&y=2", path + ";x", path + ";", path + "/;x",
        path + "/.", path + "/./", path + "/x/..", path + "%2F", path + "%2f", path + "%20", path + "%3F",
        path + ".", path + "x", path + "\\", path.upper(), path.title(), path.swapcase(),
        "/" + every, "/" + every.upper(), f"/%{ord(body[0]):02x}{body[1:]}", f"/%{ord(body[0]):02X}{body[1:]}",
        "//" + body, "///" + body, path.replace("/", "//"), "/." + path, "/./" + body, "/x/.." + path,
        "/x/../" + body, "/%2e" + path, "/%2E/" + body, "/x/%2e%2e" + path, "/x/%2E%2E/" + body,
        "/" + body.replace("/", "%2F"), "/" + body.replace("/", "%2f/"), "/" + body.replace("/", "/./"),
        "/" + body.replace("/", "/x/../"), "/%2F" + body, "/auth/../" + body, "/auth/%2e%2e/" + body,
        f"/{first}%2F{rest}" if rest else f"/{first}%2F", "http://localhost" + path, "http://127.0.0.1" + path,
    ]


def operator_paths() -> list[str]:
    """The reviewed routes only the monitoring host may reach, and /health/detailed (no such route,
    but a name someone may add)."""
    return sorted({t for t, (_, _, reach, _) in REVIEWED_ROUTES.items() if reach == MONITORING}
                  | {"/health/detailed"})


def test_operator_surfaces_are_not_reachable_from_outside_however_spelled(stack):
    paths = operator_paths()
    assert {"/metrics", "/status/detailed", "/detailed"} <= set(paths)
    leaked = []
    for path in paths:
        for spelling in spellings(path):
            for method in ("GET", "HEAD"):
                status, _, payload = stack.request(method, spelling, source=OUTSIDE)
                text = payload.decode(errors="replace")
                if status not in (400, 403, 404, 405) or any(marker in text for marker in OPERATOR_DATA):
                    leaked.append(f"{method} {spelling} → {status} {text[:80]!r}")
    assert not leaked, "\n".join(leaked)
    # The operator surfaces are denied by Nginx itself, with the app's error body.
    status, headers, payload = stack.request("GET", "/metrics/", source=OUTSIDE)
    assert status == 403 and headers["content-type"] == "application/json"
    assert decode(payload)["message"] == "Not available from this address."


def test_the_monitoring_host_still_reaches_them_and_everyone_the_public_routes(stack):
    for path in ("/metrics", "/status/detailed", "/detailed"):
        status, _, payload = stack.request("GET", path)
        assert status == 200 and any(marker in payload.decode() for marker in OPERATOR_DATA), path
    # Every reviewed route anyone may reach (without a path parameter) is not refused by Nginx.
    for template, (_, methods, reach, _) in REVIEWED_ROUTES.items():
        if reach == ANYONE and "GET" in methods.split() and "{" not in template:
            status, _, payload = stack.request("GET", template, source=OUTSIDE)
            assert status in (200, 302), (template, status, payload[:200])
    # Nor a tenant route that merely ends in "metrics".
    org = decode(stack.request("POST", "/organizations", {"name": "Metrics reader"})[2])
    status, _, payload = stack.request("GET", "/flows/00000000-0000-4000-8000-000000000000/metrics",
                                       headers={"X-Org-ID": org["id"]}, source=OUTSIDE)
    assert status == 404 and decode(payload)["message"].startswith("Flow"), payload


def test_rate_limit_answers_429_json_per_client(stack):
    def hit(_):
        return stack.request("GET", "/version", retry_429=False)

    limited = None
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(10):  # at most 400 requests: far past 20/s with a burst of 40
            for status, headers, payload in pool.map(hit, range(40)):
                if status == 429:
                    limited = (headers, decode(payload))
            if limited:
                break
    assert limited is not None, "no request was rate limited"
    headers, body = limited
    assert headers["content-type"] == "application/json" and headers["retry-after"] == "1"
    assert body["statusCode"] == 429 and body["error"] == "Too Many Requests"
    # Health checks are exempt even while this client is over its limit.
    assert stack.request("GET", "/health", retry_429=False)[0] == 200


def test_status_follows_the_database_without_restarting_the_app(stack):
    def status_now():
        status, _, payload = stack.request("GET", "/status")
        return status, decode(payload)

    assert status_now()[0] == 200
    stack.pg_stop()
    deadline = time.monotonic() + 30
    while (now := status_now())[0] != 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert now[0] == 503 and now[1]["status"] == "unhealthy"  # the app's own body, not Nginx's
    stack.pg_start()
    deadline = time.monotonic() + 60
    while (now := status_now())[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert now[0] == 200 and now[1]["status"] == "ok"
    assert stack.app.poll() is None  # the same Gunicorn served throughout
    status, _, _ = stack.request("POST", "/organizations", {"name": "After the outage"})
    assert status == 201


def test_no_secret_reached_any_log(stack):
    text = stack.logs()
    assert "gunicorn.access" in text  # the logs were there to read
    assert DB_PASSWORD not in text and CLIENT_TOKEN not in text


def _error_pages(text: str) -> list[tuple[set[int], int | None, int]]:
    """(codes caught, the =code they are answered with or None, the code their named location returns)
    for every ``error_page … @location`` of the site."""
    import re

    returns = {name: int(code) for name, code in re.findall(r"location @(\w+) \{[^}]*?return (\d{3}) ", text, re.S)}
    pages = []
    for codes, override, name in re.findall(r"error_page ((?:\d{3} )+)(?:=(\d{3}) )?@(\w+);", text):
        pages.append(({int(c) for c in codes.split()}, int(override) if override else None, returns[name]))
    return pages


def test_every_error_page_answers_the_status_its_body_says():
    """Without ``=code``, Nginx keeps the status it caught whatever the named location returns: the
    body said 503 (retry shortly) while the status said 502, which clients do not retry."""
    pages = _error_pages(NGINX_CONF.read_text())
    assert pages, "no error_page found"
    for codes, override, returned in pages:
        assert (override or returned) == returned and (override is not None or codes == {returned}), (
            f"error_page {sorted(codes)} answers {override or 'the caught code'} with a body of {returned}")


def test_a_dead_upstream_is_a_json_503_with_retry_after(tmp_path):
    """Gunicorn gone (or resetting a connection while it restarts): Nginx's own answer is 503."""
    nginx = require_program("nginx", "/usr/sbin/nginx")
    (tmp_path / "logs").mkdir()
    nginx_port, dead_port = free_port(), free_port()  # nothing listens on dead_port
    site = tmp_path / "tolstoy.conf"
    site.write_text(render_site(nginx_port, dead_port, tmp_path / "logs"))
    conf = tmp_path / "nginx.conf"
    conf.write_text(main_conf(tmp_path, site))
    with open(tmp_path / "logs" / "nginx-stderr.log", "w") as out:
        proxy = subprocess.Popen([nginx, "-p", str(tmp_path), "-e", str(tmp_path / "logs" / "main-error.log"),
                                  "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(nginx_port, proxy, tmp_path / "logs" / "nginx-stderr.log", "nginx")
        stack = Stack(tmp_path, nginx_port, None, None, None)
        for method, path in (("GET", "/flows"), ("POST", "/flows/x/execute")):
            status, headers, payload = stack.request(method, path, {} if method == "POST" else None)
            assert status == 503, (method, status, payload)
            assert headers["retry-after"] == "5" and decode(payload)["statusCode"] == 503
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
