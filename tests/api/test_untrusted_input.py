"""The public doors of the API never answer a 5xx to what an unauthenticated client sends
(docs/security.md, "Parsers of untrusted input"): the signature headers of every webhook
preset on ``POST /hooks/{id}``, the OAuth callback's parameters, approval tokens, and the
cursor of every list the OpenAPI document names. Hypothesis draws the values (the same
strategies as tests/unit/test_untrusted_parsers.py), on a real PostgreSQL; .ci/fuzz.py
sends such values to a live Gunicorn in both auth modes."""

from __future__ import annotations

import time
import uuid

import pytest
from hostile import HEADER_TEXT, JSON_VALUES, QUERY_TEXT, SIGNATURE_VALUE
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_triggers import signed, webhook

from tolstoy import signatures
from tolstoy.api import connections, paging, signals

HTTP = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def preset_hook(api, org, flow, preset: str) -> dict:
    return webhook(api, org, flow, verification=preset, **({} if preset == "tolstoy" else {"secret": "s" * 32}))


def post(client, hook: dict, headers: dict, body: bytes = b"{}"):
    return client.simulate_post(hook["url"], body=body, headers={"Content-Type": "application/json", **headers})


@pytest.mark.parametrize("preset, headers", [
    ("tolstoy", {"X-Tolstoy-Signature": "t=²,v1=00"}),
    ("stripe", {"Stripe-Signature": "t=²,v1=00"}),
    ("slack", {"X-Slack-Signature": "v0=00", "X-Slack-Request-Timestamp": "²"}),
    ("slack", {"X-Slack-Signature": "v0=00", "X-Slack-Request-Timestamp": "9" * 5000}),
    ("tolstoy", {"X-Tolstoy-Signature": "t=1,v1=00", "User-Agent": "nul\x00byte"}),
])
def test_a_non_ascii_digit_or_a_stray_byte_in_a_signature_header_is_a_401(api, org, client, db, preset, headers):
    hook = preset_hook(api, org, api.flow(org), preset)
    result = post(client, hook, headers)
    assert result.status_code == 401, result.text
    assert result.json["statusCode"] == 401 and result.json["message"]
    with db.pool.connection() as conn:  # the refusal is in the inbox, as every refusal is
        kept = conn.execute("select verdict, headers from flow_trigger_deliveries where trigger_id = %s",
                            (hook["id"],)).fetchall()
    assert [row["verdict"] for row in kept] == ["invalid"]


@pytest.mark.parametrize("preset", signatures.PRESETS)
def test_no_header_value_of_any_preset_makes_a_hook_fail(api, org, client, preset):
    hook = preset_hook(api, org, api.flow(org), preset)
    names = [*signatures.PRESET_HEADERS[preset], *signatures.COMMON_HEADERS]

    @HTTP
    @given(headers=st.dictionaries(st.sampled_from(names), SIGNATURE_VALUE, max_size=len(names)))
    @example(headers={name: "t=²,v1=00" for name in names if name != "Content-Type"})
    @example(headers={name: "v0=00" if "Signature" in name else "²" for name in names if name != "Content-Type"})
    def check(headers):
        result = post(client, hook, headers)
        assert result.status_code in (400, 401, 415), (headers, result.status_code, result.text)

    check()
    # A well-signed call still works after all that.
    if preset == "tolstoy":
        assert post(client, hook, signed(hook["secret"], b'{"n": 1}'), b'{"n": 1}').status_code == 202


def test_no_callback_parameter_makes_the_oauth_callback_fail(api, org, client, config):
    key = connections.state_key(config)
    known = api.org("Another")["id"]
    states = st.one_of(
        QUERY_TEXT,
        # Well signed, for an organization that exists or not, a nonce never issued, this tool or another.
        st.builds(lambda org_id, nonce, tool: connections.sign_state(key, org_id, nonce, tool),
                  st.sampled_from([uuid.UUID(known), uuid.UUID(int=0), uuid.uuid4()]),
                  st.from_regex(r"[A-Za-z0-9_-]{32}", fullmatch=True), st.sampled_from(["github", "other"])),
    )

    @HTTP
    @given(params=st.fixed_dictionaries({}, optional={"code": QUERY_TEXT, "state": states, "error": QUERY_TEXT,
                                                      "error_description": QUERY_TEXT}),
           tool_key=st.sampled_from(["github", "GitHub", "a" * 65, "²", "github%0A"]))
    @example(params={"state": connections.sign_state(key, uuid.UUID(known), "n" * 32, "github") + "\n",
                     "code": "c"}, tool_key="github")
    def check(params, tool_key):
        result = client.simulate_get(f"/auth/{tool_key}/callback", params=params)
        assert result.status_code in (400, 404), (params, result.status_code, result.text)

    check()


def test_no_approval_token_makes_an_approval_link_fail(api, org, client, config):
    key = signals.link_key(config)
    tokens = st.one_of(
        QUERY_TEXT.filter(lambda t: t and "/" not in t and "?" not in t and "#" not in t),
        st.builds(lambda claims: signals.sign_link(key, claims),
                  st.dictionaries(st.sampled_from(["o", "f", "r", "s", "a", "e", "l"]), JSON_VALUES)),
        # Well formed and signed, naming nothing that exists (or expired).
        st.builds(lambda expires: signals.sign_link(key, {
            "o": org["id"], "f": str(uuid.uuid4()), "r": str(uuid.uuid4()), "s": "go", "a": None,
            "e": expires, "l": str(uuid.uuid4())}), st.sampled_from([0, int(time.time()) + 600, 2**62])),
    )

    @HTTP
    @given(token=tokens, decision=st.one_of(st.sampled_from(["approve", "reject"]), QUERY_TEXT))
    def check(token, decision):
        for result in (client.simulate_get(f"/approvals/{token}"),
                       client.simulate_post(f"/approvals/{token}", json={"decision": decision})):
            assert result.status_code in (400, 401, 404, 410), (token, result.status_code, result.text)

    check()


def test_no_cursor_makes_a_list_fail(api, org, user, client):
    """Every GET the OpenAPI document gives a cursor, with its path filled in with real records."""
    flow = api.flow(org)
    hook = webhook(api, org, flow)
    outbound = api.create("/webhooks", org, {"name": "Out", "url": "https://hooks.example.com/x",
                                             "eventTypes": ["flow.completed"]})
    ids = {"/flows/{id}": flow["id"], "/users/{id}": user["id"], "/webhooks/{id}": outbound["id"],
           "{triggerId}": hook["id"]}
    document = client.simulate_get("/openapi.json").json
    paths = []
    for path, operations in document["paths"].items():
        parameters = operations.get("get", {}).get("parameters", [])
        if {"$ref": "#/components/parameters/Cursor"} in parameters:
            for template, value in ids.items():
                path = path.replace(template, template.replace("{id}", value).replace("{triggerId}", value))
            assert "{" not in path, f"fill in the path parameters of {path} for this test"
            paths.append(path)
    assert len(paths) >= 10, paths
    cursors = st.one_of(QUERY_TEXT, st.builds(paging.encode_cursor, JSON_VALUES))

    @HTTP
    @given(cursor=cursors.filter(bool))
    @example(cursor=paging.encode_cursor(["2026-01-01T00:00:00+00:00", 123]))
    def check(cursor):
        for path in paths:
            headers = {**api.headers(org, user)}
            result = client.simulate_get(path, params={"cursor": cursor}, headers=headers)
            assert result.status_code in (200, 400), (path, cursor, result.status_code, result.text)

    check()


def test_headers_as_gunicorn_reads_them_reach_no_parser_as_a_500(api, org, client):
    """Latin-1 readings of UTF-8 digits and huge numbers in the tenant headers and a list's limit."""
    @HTTP
    @given(value=HEADER_TEXT)
    def check(value):
        for headers, params in (({"X-Org-ID": value}, {}), ({"X-Org-ID": org["id"], "X-User-ID": value}, {}),
                                ({"X-Org-ID": org["id"]}, {"limit": value or "x"})):
            result = client.simulate_get("/users", headers=headers, params=params)
            assert result.status_code in (200, 400), (headers, params, result.status_code, result.text)

    check()
