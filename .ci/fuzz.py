"""Fuzz the live API against its own OpenAPI document with schemathesis, in both
auth modes, then its public doors that parse what anyone sends (``POST /hooks/{id}``
with every preset's signature headers, ``/auth/{toolKey}/login`` and ``…/callback``)
with Hypothesis-drawn header values and query parameters: other scripts' digits
("²" is isdigit() but not int()-able), huge numbers, control characters, sent as the
raw bytes a client would send. Bounded (fixed seeds, example caps, a time budget) so
CI stays well under five minutes; any failure (a 5xx) fails CI.

    .venv/bin/python .ci/fuzz.py

Starts a throw-away embedded PostgreSQL and real Gunicorn on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from hostile import HEADER_TEXT, QUERY_TEXT, SIGNATURE_VALUE  # noqa: E402
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tolstoy import signatures  # noqa: E402
from tolstoy.db import embedded, migrate  # noqa: E402

ADMIN = "fuzz-admin-" + "a" * 40
KEY_SECRET = "fuzz-keys-" + "k" * 40
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
# Requests per public door and mode (about 5 ms each on the live Gunicorn).
DOOR_EXAMPLES = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(port: int, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def serve(url: str, mode: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "PORT": str(port), "WEB_CONCURRENCY": "2",
           "TOLSTOY_ENV": "test", "TOLSTOY_AUTH_MODE": mode, "TOLSTOY_API_KEY_SECRET": KEY_SECRET,
           "TOLSTOY_ADMIN_TOKEN": ADMIN, "TOLSTOY_ENCRYPTION_KEY": "Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE=",
           "USE_AWS_SECRETS": "false",
           # Fuzzing sends far more than an organization's default requests a second: the 429s would hide
           # what the routes themselves answer (the quota has its own tests).
           "TOLSTOY_QUOTA_REQUESTS_PER_SECOND": "1000000", "TOLSTOY_QUOTA_REQUEST_BURST": "1000000"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "tolstoy.api.app:get_app()"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            call(port, "GET", "/health")
            return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"fuzz: gunicorn did not start in {mode} mode")


def fuzz(port: int, headers: dict, label: str, exclude: tuple[str, ...] = ()) -> int:
    command = [
        str(Path(sys.executable).parent / "schemathesis"), "run", f"http://127.0.0.1:{port}/openapi.json",
        "--checks", CHECKS, "--seed", "20261125", "--max-examples", "8", "--max-time", "60",
        # One worker: Hypothesis parses lambda sources with ast, which CPython 3.11 cannot do from
        # two threads at once ("AST constructor recursion depth mismatch", a tool error, not a finding).
        "--phases", "examples,coverage,fuzzing", "--workers", "1", "--suppress-health-check", "all",
    ]
    for operation in exclude:
        command += ["--exclude-name", operation]
    for name, value in headers.items():
        command += ["--header", f"{name}: {value}"]
    print(f"fuzz: {label}: {' '.join(command[1:4])} …", flush=True)
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, text=True, capture_output=True,
                            env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
    summary = [line for line in result.stdout.splitlines() if line.strip()][-25:]
    print("\n".join(summary))
    print(f"fuzz: {label}: exit {result.returncode} after {time.monotonic() - started:.0f} s", flush=True)
    if result.returncode != 0:
        failures = result.stdout.split("FAILURES")[-1] if "FAILURES" in result.stdout else result.stdout
        print(failures[:20000])
    return result.returncode


def wire(value: str) -> bytes:
    """A header value's bytes: Latin-1 when it has such a spelling (so "²" arrives as the one byte that
    Gunicorn reads back as "²"), else UTF-8 (which Gunicorn reads as Latin-1: "١" becomes "Ù¡")."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


def send(port: int, method: str, target: str, headers: dict, body: bytes = b"") -> tuple[int, dict, bytes]:
    """One request with headers as given (str or raw bytes): (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, wire(value) if isinstance(value, str) else value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def fuzz_doors(port: int, auth: dict, label: str) -> int:
    """Hypothesis over the public doors: 1 when any answer was a 5xx (the failing example is printed)."""
    started = time.monotonic()
    flow = call(port, "POST", "/flows", {"name": "Doors", "steps": [
        {"id": "hello", "type": "transform", "config": {"output": {"hi": 1}}}]}, auth)
    hooks = {preset: call(port, "POST", f"/flows/{flow['id']}/triggers",
                          {"type": "webhook", "verification": preset,
                           **({} if preset == "tolstoy" else {"secret": "s" * 32})}, auth)["url"]
             for preset in signatures.PRESETS}
    tool = call(port, "POST", "/tools", {"name": "Provider", "key": "provider", "authType": "oauth2",
                                         "baseUrl": "https://provider.example"}, auth)
    call(port, "POST", f"/tools/{tool['id']}/auth", {"type": "oauth2", "config": {
        "clientId": "c", "clientSecret": "s", "perUser": True, "tokenUrl": "https://provider.example/token",
        "authorizeUrl": "https://provider.example/authorize"}}, auth)
    # Real states (from real logins) are fuzzed with the provider's error parameters only: a code with a
    # real state would be exchanged with provider.example, and CI sends nothing off this host.
    states = []
    for _ in range(3):
        status, headers, _ = send(port, "GET", f"/auth/provider/login?userId={auth['X-User-ID']}", auth)
        if status == 302:
            states += parse_qs(urlsplit(headers["location"]).query)["state"]
    failures: list[str] = []
    door = settings(max_examples=DOOR_EXAMPLES, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), print_blob=False)

    def expect_no_5xx(what: str, status: int, payload: bytes) -> None:
        assert status < 500, f"{what} → {status} {payload[:300]!r}"

    presets = st.sampled_from(signatures.PRESETS)

    @door
    @given(sent=presets.flatmap(lambda preset: st.tuples(st.just(preset), st.dictionaries(
        st.sampled_from(signatures.PRESET_HEADERS[preset] + ("User-Agent",)), SIGNATURE_VALUE))))
    # The reproductions of issue 19 (a 500 before the fix), then what Hypothesis draws.
    @example(sent=("tolstoy", {"X-Tolstoy-Signature": "t=²,v1=00"}))
    @example(sent=("stripe", {"Stripe-Signature": "t=١٧٠٠٠٠٠٠٠٠,v1=00"}))
    @example(sent=("slack", {"X-Slack-Signature": "v0=00", "X-Slack-Request-Timestamp": "²"}))
    def hooks_door(sent):
        preset, headers = sent
        status, _, payload = send(port, "POST", hooks[preset], {"Content-Type": "application/json", **headers}, b"{}")
        expect_no_5xx(f"POST {preset} hook {headers!r}", status, payload)

    callback_state = st.one_of(QUERY_TEXT, st.sampled_from(states or ["none"]))

    @door
    @given(params=st.fixed_dictionaries({}, optional={"code": QUERY_TEXT, "state": callback_state,
                                                      "error": QUERY_TEXT, "error_description": QUERY_TEXT}),
           tool_key=st.sampled_from(["provider", "Provider", "²", "provider%0A", "a" * 70]),
           headers=st.dictionaries(st.sampled_from(["Host", "X-Forwarded-Proto", "X-Forwarded-For", "X-Org-ID"]),
                                   HEADER_TEXT))
    def callback_door(params, tool_key, headers):
        if "state" in params and params["state"] in states:
            params.pop("code", None)  # never a code with a real state: no exchange leaves this host
            params.setdefault("error", "access_denied")
        target = f"/auth/{quote(tool_key, safe='')}/callback?{urlencode(params)}"
        status, _, payload = send(port, "GET", target, headers)
        expect_no_5xx(f"GET {target} {headers!r}", status, payload)

    @door
    @given(user=QUERY_TEXT, headers=st.dictionaries(
        st.sampled_from(["Host", "X-User-ID", "X-Forwarded-Proto", "X-Forwarded-For", "X-Request-ID"]), HEADER_TEXT))
    def login_door(user, headers):
        target = f"/auth/provider/login?userId={quote(user, safe='')}"
        status, _, payload = send(port, "GET", target, {**auth, **headers})
        expect_no_5xx(f"GET {target} {headers!r}", status, payload)

    for name, door_test in (("hooks", hooks_door), ("auth callback", callback_door), ("auth login", login_door)):
        try:
            door_test()
        except Exception as exc:  # noqa: BLE001 - Hypothesis re-raises the failing example's error
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    print(f"fuzz: {label} doors: {3 * DOOR_EXAMPLES} examples ({len(states)} real OAuth states), "
          f"{len(failures)} failing door(s) "
          f"in {time.monotonic() - started:.0f} s", flush=True)
    for failure in failures:
        print(f"fuzz: {label}: {failure[:4000]}")
    return 1 if failures else 0


def new_tenant(port: int, mode: str) -> dict:
    """A new organization with a user: the headers (and, in api_key mode, the first key) that act for it."""
    if mode == "headers":
        org = call(port, "POST", "/organizations", {"name": "Fuzz"})
        auth = {"X-Org-ID": org["id"]}
    else:
        org = call(port, "POST", "/organizations", {"name": "Fuzz keys"}, {"Authorization": f"Bearer {ADMIN}"})
        auth = {"Authorization": f"Bearer {org['apiKey']}", "X-Org-ID": org["id"]}
    user = call(port, "POST", "/users", {"email": "fuzz@example.com"}, auth)
    return {**auth, "X-User-ID": user["id"]}


def main() -> int:
    server, superuser_url = embedded.start(tempfile.mkdtemp(prefix="tolstoy-fuzz-"), database="fuzz", cleanup="delete")
    owner_url = migrate.prepare_owner(superuser_url)  # migrated as production is: by a schema owner, no superuser
    migrate.upgrade(owner_url)
    app_url = migrate.as_role(owner_url)
    failures = 0

    process, port = serve(app_url, "headers")
    try:
        failures += fuzz(port, new_tenant(port, "headers"), "headers mode") != 0
        # Schemathesis may have deleted that user or revoked that key (an id a listing showed it):
        # the doors get an organization of their own.
        failures += fuzz_doors(port, new_tenant(port, "headers"), "headers mode")
    finally:
        process.terminate()
        process.wait(timeout=30)

    process, port = serve(app_url, "api_key")
    try:
        # Not DELETE /api-keys/{id}: it would revoke the key the run authenticates with (an id the
        # listing showed it) and leave every later operation a 401; headers mode fuzzes it.
        failures += fuzz(port, new_tenant(port, "api_key"), "api_key mode", exclude=("DELETE /api-keys/{id}",)) != 0
        failures += fuzz_doors(port, new_tenant(port, "api_key"), "api_key mode")
    finally:
        process.terminate()
        process.wait(timeout=30)
    server.cleanup()
    print(f"fuzz: {'FAILED' if failures else 'passed'} ({failures} failing run(s) of 4: schemathesis and the "
          "public doors, in each mode)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
