"""One exit for outputs: whatever leaves the service as a step's or an execute's output (API answers,
execution logs, the console, event webhooks, stored rows, log lines) passes through the same
redaction, which also recognises a known secret's common encodings; and a value a template derived
from a secret is sealed and shown masked whatever string functions made it (taint by rendered value).

The class-wide check is ``test_every_exit_of_a_run_hides_secrets_and_their_encodings``: it reads
every exit it knows of, and every text or JSON column of every table, so an output stored or shown
by a new path that skips the redaction is caught."""

from __future__ import annotations

import base64
import json
import logging
import time
from urllib.parse import quote, quote_plus

import pytest
from support import json_log_lines
from test_engine import execute, step, wait_for
from test_webhook_delivery import Receiver, hook
from test_worker_processes import wait_until
from werkzeug import Response

# Characters URL-encoding changes, so its form differs from the clear one.
BEARER = "org-bearer-SECRET/4f9c+2d=71e0a8b3c6"
ACCESS = "acc-7Hq2LmZ9xW4pRt8vKd3N"


def forms(secret: str) -> dict[str, str]:
    """Recognisable pieces of a secret's encodings (a 12-character middle piece of each long form),
    built here independently of the code under test."""

    def middle(text: str) -> str:
        half = len(text) // 2
        return text[half - 6:half + 6]

    raw = secret.encode()
    found = {"clear": secret, "reversed": middle(secret[::-1]), "slice": secret[3:15],
             "url": middle(quote(secret, safe="")), "plus": middle(quote_plus(secret)),
             "hex": middle(raw.hex()), "HEX": middle(raw.hex().upper())}
    for prefix in ("", "B", "Be", "Bearer "):  # each alignment of the secret inside base64
        data = prefix.encode() + raw
        found[f"base64[{prefix}]"] = middle(base64.b64encode(data).decode())
        found[f"base64url[{prefix}]"] = middle(base64.urlsafe_b64encode(data).decode().rstrip("="))
    return found


def leaks(text: str, *secrets: str) -> list[str]:
    """The encodings of ``secrets`` that ``text`` shows."""
    return [f"{secret[:6]}…:{name}" for secret in secrets for name, piece in forms(secret).items() if piece in text]


def echo_everything(value: str) -> dict:
    """What a careless tool sends back: the value it was given, in several encodings."""
    return {"whoami": value, "reversed": value[::-1], "base64": base64.b64encode(value.encode()).decode(),
            "base64url": base64.urlsafe_b64encode(value.encode()).decode().rstrip("="),
            "url": quote(value, safe=""), "plus": quote_plus(value), "hex": value.encode().hex(),
            "slice": value[9:30], "nested": {"list": [f"seen {value} here"]}}


def echo_tool(api, org, httpserver, path: str = "/whoami") -> dict:
    """A bearer tool whose endpoint echoes its Authorization header back in every encoding."""
    httpserver.expect_request(path).respond_with_handler(lambda request: Response(
        json.dumps(echo_everything(request.headers.get("Authorization") or "")), content_type="application/json"))
    tool = api.tool(org, baseUrl=httpserver.url_for("/"), authType="bearer")
    api.create(f"/tools/{tool['id']}/auth", org, {"type": "bearer", "config": {"token": BEARER}})
    return tool


def test_execute_answers_what_the_tool_echoed_with_the_credential_masked_in_every_encoding(api, org, user,
                                                                                           httpserver):
    """Row 3: POST /actions/{id}/execute answered the tool's echo of its bearer token in clear."""
    tool = echo_tool(api, org, httpserver)
    action = api.action(org, tool, key="whoami", endpoint="/whoami")
    answer = api.client.simulate_post(f"/actions/{action['id']}/execute", json={"inputs": {}},
                                      headers=api.headers(org, user))
    assert answer.status_code == 200 and answer.json["success"] is True, answer.text
    assert leaks(answer.text, BEARER) == []
    assert answer.json["data"]["whoami"] == "Bearer ***"
    assert answer.json["data"]["nested"] == {"list": ["seen Bearer *** here"]}
    logged = api.client.simulate_get("/execution-logs", params={"executionId": answer.json["executionId"]},
                                     headers=api.headers(org))
    assert logged.status_code == 200 and len(logged.json) == 1
    assert leaks(logged.text, BEARER) == []


DERIVED = {
    "rev": "{{ steps.login.body.access_token | reverse }}",
    "tail": "{{ steps.login.body.access_token[1:] }}",
    "spaced": "{{ steps.login.body.access_token | join(' ') }}",
    "chars": "{{ steps.login.body.access_token | list }}",
    "upper": "{{ steps.login.body.access_token | upper }}",
    "sentence": "token: {{ steps.login.body.access_token[:12] ~ '!' }}",
    "codes": "{% for c in steps.login.body.access_token %}{{ c | int(base=36) }}.{% endfor %}",
    "user": "{{ steps.login.body.user }}",
}


def derived_forms() -> list[str]:
    """What DERIVED renders, in clear (none of it may be shown)."""
    return [ACCESS[::-1], ACCESS[1:], " ".join(ACCESS), ACCESS.upper(), f"token: {ACCESS[:12]}!",
            json.dumps(list(ACCESS)), str(list(ACCESS))]


def login_flow(api, org, httpserver, received: list) -> dict:
    httpserver.expect_request("/login").respond_with_json({"access_token": ACCESS, "user": "ada"})

    def use(request):
        received.append(request.get_json())
        return Response(json.dumps({"got": request.get_json()}), content_type="application/json")

    httpserver.expect_request("/use", method="POST").respond_with_handler(use)
    return api.flow(org, steps=[
        step("login", "http_request", {"method": "GET", "url": httpserver.url_for("/login")}),
        step("derive", "transform", {"output": DERIVED}),
        # A delay parks the run: the steps after it run in a new claim, which rebuilds what is hidden.
        step("nap", "delay", {"ms": 30}),
        step("use", "http_request", {"method": "POST", "url": httpserver.url_for("/use"),
                                     "body": {"rev": "{{ steps.derive.rev }}", "upper": "{{ steps.derive.upper }}",
                                              "spaced": "{{ steps.derive.spaced }}", "user": "{{ steps.derive.user }}",
                                              "again": "{{ steps.derive.tail | reverse }}"}}),
    ])


def test_values_derived_from_a_secret_are_sealed_and_masked_whatever_the_template_did(api, org, user, worker,
                                                                                      httpserver, db):
    """Row 9: masking by exact substring let ``reverse``, ``[1:]`` or ``join(" ")`` store the secret."""
    received: list = []
    flow = login_flow(api, org, httpserver, received)
    started = execute(api, org, user, flow)
    run = wait_for(api, org, flow, started["executionId"])
    assert run["status"] == "completed", run
    # Later steps see the real values, after a resume too.
    assert received == [{"rev": ACCESS[::-1], "upper": ACCESS.upper(), "spaced": " ".join(ACCESS), "user": "ada",
                         "again": ACCESS[1:][::-1]}]
    # What is shown: each value a template derived from the token is masked whole; the rest is not.
    assert run["outputs"]["derive"] == {**{key: "***" for key in DERIVED}, "user": "ada"}
    assert run["outputs"]["use"]["body"] == {"got": {"rev": "***", "upper": "***", "spaced": "***", "user": "ada",
                                                     "again": "***"}}
    use = next(s for s in run["steps"] if s["stepId"] == "use")
    assert use["inputs"]["body"] == {"rev": "***", "upper": "***", "spaced": "***", "user": "ada", "again": "***"}
    logs_ = api.client.simulate_get("/execution-logs", params={"executionId": started["executionId"]},
                                    headers=api.headers(org))
    shown = json.dumps(run) + logs_.text
    assert leaks(shown, ACCESS) == []
    assert [value for value in derived_forms() if value in shown] == []
    # Stored sealed: the real values only in the encrypted column.
    with db.pool.connection() as conn:
        rows = conn.execute("select step_id, sealed is not null as sealed from flow_run_steps where run_id = %s",
                            (started["executionId"],)).fetchall()
    assert {r["step_id"]: r["sealed"] for r in rows} == {"login": True, "derive": True, "nap": False, "use": True}


def column_texts(db) -> dict[str, str]:
    """Every text, varchar, json and jsonb column of every table (partitions through their parent), as
    text: where a value stored for display would be, whatever new table or column holds it."""
    with db.pool.connection() as conn:
        columns = conn.execute(
            "select c.relname as table_name, a.attname as column_name from pg_attribute a "
            "join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = 'public' and c.relkind in ('r', 'p') and not c.relispartition "
            "and a.attnum > 0 and not a.attisdropped "
            "and a.atttypid in ('text'::regtype, 'varchar'::regtype, 'json'::regtype, 'jsonb'::regtype)").fetchall()
        assert len(columns) > 20, columns
        found = {}
        for column in columns:
            rows = conn.execute('select string_agg("{column_name}"::text, chr(10)) as t from "{table_name}"'
                                .format(**column)).fetchone()
            found[f"{column['table_name']}.{column['column_name']}"] = rows["t"] or ""
    return found


@pytest.fixture
def json_log():
    """The service's log lines as production writes them (tolstoy.logs.JsonFormatter), DEBUG and up."""
    with json_log_lines(logging.DEBUG) as lines:
        yield lines


def test_every_exit_of_a_run_hides_secrets_and_their_encodings(api, org, user, worker, httpserver, server, db,
                                                               json_log):
    """The class-wide check: a run whose tool echoes its credential in several encodings, and whose
    transforms derive values from a login's token; no exit shows either, in any form."""
    receiver = Receiver(server)
    webhook = hook(api, org, receiver.url, ["flow.completed", "step.completed", "step.failed"])
    tool = echo_tool(api, org, httpserver)
    api.action(org, tool, key="whoami", endpoint="/whoami")
    fails = api.action(org, tool, key="fails", endpoint="/fails")
    httpserver.expect_request("/fails").respond_with_handler(lambda request: Response(
        json.dumps({"error": "bad credential", **echo_everything(request.headers.get("Authorization"))}),
        status=401, content_type="application/json"))
    received: list = []
    flow = login_flow(api, org, httpserver, received)
    steps = api.client.simulate_get(f"/flows/{flow['id']}", headers=api.headers(org)).json["steps"]
    flow = api.client.simulate_put(f"/flows/{flow['id']}", headers=api.headers(org), json={"name": "Exits", "steps": [
        *steps,
        step("whoami", "action", {"actionKey": "whoami", "inputs": {}}),
        step("copy", "transform", {"output": {"seen": "{{ steps.whoami.body.whoami }}",
                                              "all": "{{ steps.whoami.body }}"}}),
        step("fails", "action", {"actionKey": "fails", "inputs": {}}, critical=False),
    ]}).json
    started = execute(api, org, user, flow)
    run = wait_for(api, org, flow, started["executionId"])
    assert run["status"] == "completed", run
    assert received and received[0]["rev"] == ACCESS[::-1]
    direct = api.client.simulate_post(f"/actions/{fails['id']}/execute", json={"inputs": {}},
                                      headers=api.headers(org, user))
    assert direct.status_code == 200 and direct.json["success"] is False
    wait_until(lambda: len([e for e in receiver.events() if e["type"] == "flow.completed"]) == 1, 15, "flow.completed")
    wait_until(lambda: len([e for e in receiver.events() if e["type"] == "step.completed"]) >= 6, 15, "step events")
    time.sleep(0.3)  # the webhook delivery thread records its last attempt

    base = f"/flows/{flow['id']}/executions"
    exits = {
        "execute answer": direct.text,
        "execution": api.client.simulate_get(f"{base}/{started['executionId']}", headers=api.headers(org)).text,
        "executions": api.client.simulate_get(base, headers=api.headers(org)).text,
        "execution logs": api.client.simulate_get("/execution-logs", headers=api.headers(org)).text,
        "console run": api.client.simulate_get(f"/console/orgs/{org['id']}/runs/{started['executionId']}").text,
        "console runs": api.client.simulate_get(f"/console/orgs/{org['id']}/runs").text,
        "webhook bodies": b"\n".join(body for _, body in receiver.got).decode(),
        "webhook deliveries": api.client.simulate_get(f"/webhooks/{webhook['id']}/deliveries",
                                                      headers=api.headers(org)).text,
        "log lines": json.dumps(json_log()),
        **{f"column {name}": text for name, text in column_texts(db).items()},
    }
    # The exits are read at all: each shows the run, and the masks.
    assert "***" in exits["execution"] and "***" in exits["console run"] and "***" in exits["webhook bodies"]
    assert "Bearer ***" in exits["execute answer"] and started["executionId"] in exits["log lines"]
    found = {name: leaks(text, BEARER, ACCESS) + [v for v in derived_forms() if v in text]
             for name, text in exits.items()}
    assert {name: found for name, found in found.items() if found} == {}


def test_a_derived_secret_neither_enters_a_childs_variables_nor_leaves_through_its_outputs(api, org, user, worker,
                                                                                           db):
    """A child run's variables are stored in clear: a value derived from a secret is refused there as
    the secret itself is. What a child hid stays hidden in its parent's step output, which the
    parent cannot recognise by itself (it never knew the child's token); later steps still see it."""
    login = step("login", "transform", {"output": {"access_token": ACCESS}})
    child = api.flow(org, steps=[login, step("derive", "transform",
                                             {"output": "{{ steps.login.access_token | reverse }}"})])
    refused = api.flow(org, steps=[login, step("call", "subflow", {
        "flowId": child["id"], "variables": {"token": "{{ steps.login.access_token | reverse }}"}})])
    run = wait_for(api, org, refused, execute(api, org, user, refused)["executionId"])
    assert run["status"] == "failed" and run["error"]["name"] == "SecretInVariables", run
    with db.pool.connection() as conn:
        assert conn.execute("select count(*) as n from flow_runs where parent_run_id = %s",
                            (run["executionId"],)).fetchone()["n"] == 0
    parent = api.flow(org, steps=[step("call", "subflow", {"flowId": child["id"]}),
                                  step("use", "transform", {"output": {
                                      "length": "{{ steps.call.derive | length }}",
                                      "again": "{{ steps.call.derive | reverse }}"}})])
    run = wait_for(api, org, parent, execute(api, org, user, parent)["executionId"])
    assert run["status"] == "completed", run
    assert run["outputs"]["call"] == {"login": {"access_token": "***"}, "derive": "***"}
    assert run["outputs"]["use"] == {"length": "***", "again": "***"}
    with db.pool.connection() as conn:
        rows = conn.execute("select step_id, sealed from flow_run_steps where run_id = %s",
                            (run["executionId"],)).fetchall()
    assert all(row["sealed"] is not None for row in rows)
    assert leaks(json.dumps(run), ACCESS) == []


# ---- errors of a step whose config read a secret -----------------------------------------------

# What the templates below make of the login's token: lower case, which no encoding the redaction
# knows turns back into the token, inside a longer rendered value (a URL), so that the whole value
# (known as derived) is not what an error quotes.
LOWER = "{{ steps.login.body.access_token | lower }}"
LOWERED = ACCESS.lower()


def failure_kinds(base: str) -> dict[str, dict]:
    """Each way a step whose rendered config read a secret can fail, as a step (the login's token
    lower-cased in its URL, a header or its executeIf): names ending ``.nowhere.test`` do not
    resolve and ``.private.test`` resolve to a private address (``fake_dns``)."""
    retry = {"retryPolicy": {"maxRetries": 1, "delayMs": 10, "backoffStrategy": "fixed"}}
    call = {"method": "GET"}
    return {
        "dns": step("use", "http_request", {**call, "url": f"http://{LOWER}.nowhere.test/x"}, **retry),
        "refused": step("use", "http_request", {**call, "url": f"http://{LOWER}.private.test/x"}),
        "http error": step("use", "http_request", {**call, "url": f"{base}/fails?k={LOWER}"}, **retry),
        "timeout": step("use", "http_request", {**call, "url": f"{base}/slow?k={LOWER}"}, timeoutMs=300, **retry),
        "invalid url": step("use", "http_request", {**call, "url": f"{LOWER}://x/"}),
        "template error": step("use", "http_request", {**call, "url": "{{ {}[steps.login.body.access_token | lower] }}"}),
        "executeIf error": step("use", "http_request", {"method": "GET", "url": f"{base}/fails"},
                                executeIf="{{ {}[steps.login.body.access_token | lower] }}"),
        "header not sendable": step("use", "http_request", {**call, "url": f"{base}/fails",
                                                            "headers": {"X-Token": LOWER + "\u00e9\n"}}),
    }


@pytest.fixture
def fake_dns(monkeypatch):
    """``*.nowhere.test`` does not resolve, ``*.private.test`` is 10.1.2.3: no query leaves the host."""
    import socket

    resolve = socket.getaddrinfo

    def fake(host, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".nowhere.test"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if isinstance(host, str) and host.endswith(".private.test"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", args[0] if args else 80))]
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


@pytest.mark.parametrize("kind", list(failure_kinds("http://x")))
def test_every_error_of_a_step_whose_config_read_a_secret_is_withheld_in_every_exit(api, org, user, worker, server,
                                                                                   db, json_log, fake_dns, kind):
    """Row 9's class, for errors (attacker pass): an error message quotes what a template made of a
    secret ("Cannot resolve acc-7hq….nowhere.test"), transformed past anything the redaction
    recognises. An error of a step whose rendered config (or executeIf) read a secret is withheld
    in every exit, whatever failed; its name and the tool's answer (status, body) stay."""
    import threading

    receiver = Receiver(server)
    hook(api, org, receiver.url, ["flow.failed", "step.failed"])
    server.expect_request("/login").respond_with_json({"access_token": ACCESS})
    server.expect_request("/fails").respond_with_json({"error": "no such thing"}, status=404)
    release = threading.Event()
    server.expect_request("/slow").respond_with_handler(lambda request: (release.wait(3), Response("{}"))[1])
    base = server.url_for("").rstrip("/")
    flow = api.flow(org, steps=[step("login", "http_request", {"method": "GET", "url": f"{base}/login"}),
                                failure_kinds(base)[kind]])
    started = execute(api, org, user, flow)
    try:
        run = wait_for(api, org, flow, started["executionId"], timeout=20)
    finally:
        release.set()
    assert run["status"] == "failed", run
    wait_until(lambda: any(e["type"] == "flow.failed" for e in receiver.events()), 15, "flow.failed")
    exits = {
        "execution": json.dumps(run),
        "execution logs": api.client.simulate_get("/execution-logs", params={"executionId": started["executionId"]},
                                                  headers=api.headers(org)).text,
        "console run": api.client.simulate_get(f"/console/orgs/{org['id']}/runs/{started['executionId']}").text,
        "webhook bodies": b"\n".join(body for _, body in receiver.got).decode(),
        # The service's lines; the local tool's server (werkzeug) logs the requests it was sent.
        "log lines": json.dumps([line for line in json_log() if line["logger"] != "werkzeug"]),
        **{f"column {name}": text for name, text in column_texts(db).items()},
    }
    found = {name: leaks(text, ACCESS) + [LOWERED[i:i + 8] for i in range(len(LOWERED) - 7) if LOWERED[i:i + 8] in text]
             for name, text in exits.items()}
    assert {name: found for name, found in found.items() if found} == {}
    # Withheld, not lost: the error says so and keeps its kind, and the tool's answer to the call.
    use = next(s for s in run["steps"] if s["stepId"] == "use")
    assert use["status"] == "failed" and "withheld" in use["error"]["message"].lower(), use
    assert run["error"]["stepId"] == "use" and run["error"]["message"] == use["error"]["message"], run
    if kind == "http error":
        assert use["error"]["status"] == 404 and use["error"]["body"] == {"error": "no such thing"}, use
    assert "withheld" in exits["console run"].lower() and "withheld" in exits["webhook bodies"].lower()
