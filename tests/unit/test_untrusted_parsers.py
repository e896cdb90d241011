"""Parsers of untrusted input never fail with anything but a clear refusal (docs/security.md,
"Parsers of untrusted input"): the signature headers of every webhook preset, OAuth callback
states, approval tokens, cursors and the numbers inside them. Hypothesis feeds each one text a
client or a remote server can send: other scripts' digits ("²" is isdigit() but not int()-able),
numbers too long for int(), signs, blanks, control characters, NUL, and the Latin-1 spelling of
UTF-8 bytes that Gunicorn hands the app for a non-ASCII header."""

from __future__ import annotations

import ast
import json
import re
import uuid
from pathlib import Path

import falcon
import pytest
from hostile import AS_GUNICORN_READS, HEADER_TEXT, JSON_VALUES, ODD_DIGITS, QUERY_TEXT, SIGNATURE_VALUE
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tolstoy import signatures
from tolstoy.api import connections, paging, signals
from tolstoy.engine.webhooks import retry_after_ms
from tolstoy.jsonsafe import UNSTORABLE
from tolstoy.numerals import unsigned

ROOT = Path(__file__).resolve().parents[2]
PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

def refusal(call, *statuses: int):
    """Run ``call``; an HTTP error must be one of ``statuses`` (a refusal), anything else fails."""
    try:
        return call()
    except falcon.HTTPError as exc:
        assert exc.status_code in statuses, (exc.status_code, exc.description)
        return None


def test_unsigned_reads_ascii_digits_only():
    assert unsigned("0", 3) == 0 and unsigned("042", 3) == 42 and unsigned("1700000000", 12) == 1_700_000_000
    for text in [*ODD_DIGITS, *AS_GUNICORN_READS, "", " 1", "1 ", "-1", "+1", "1_0", "1\n", "1234", None, 12]:
        assert unsigned(text, 3) is None, text


@pytest.mark.parametrize("preset, headers", [
    ("tolstoy", {"X-Tolstoy-Signature": "t=²,v1=00"}),
    ("stripe", {"Stripe-Signature": "t=²,v1=00"}),
    ("slack", {"X-Slack-Signature": "v0=00", "X-Slack-Request-Timestamp": "²"}),
    ("tolstoy", {"X-Tolstoy-Signature": "t=" + "9" * 5000 + ",v1=00"}),
    ("slack", {"X-Slack-Signature": "v0=00", "X-Slack-Request-Timestamp": "١٧٠٠٠٠٠٠٠٠"}),
])
def test_a_non_ascii_or_huge_timestamp_is_an_invalid_signature(preset, headers):
    verdict = signatures.verify(preset, "whsec_x", headers.get, b"{}", 1_700_000_000)
    assert verdict.verdict == "invalid" and "unix seconds" in verdict.reason


@pytest.mark.parametrize("preset", signatures.PRESETS)
@PROPERTY
@given(data=st.data())
def test_every_presets_headers_give_a_verdict_and_storable_kept_headers(preset, data):
    names = [*signatures.PRESET_HEADERS[preset], *signatures.COMMON_HEADERS]
    headers = data.draw(st.dictionaries(st.sampled_from(names), SIGNATURE_VALUE, max_size=len(names)))
    body = data.draw(st.sampled_from([b"{}", b'{"id": "\xc2\xb2"}', b"\x00", b""]))
    verdict = signatures.verify(preset, "whsec_" + "s" * 32, headers.get, body, 1_700_000_000)
    assert verdict.verdict in ("invalid", "stale", "valid") and (verdict.ok or verdict.reason)
    kept = signatures.kept_headers(preset, headers.get)
    assert not any(UNSTORABLE.search(value) for value in kept.values()), kept
    json.dumps(kept)
    found = signatures.delivery_id(preset, headers.get, data.draw(JSON_VALUES))
    assert found is None or (isinstance(found, str) and len(found) <= 200 and not UNSTORABLE.search(found))


@PROPERTY
@given(seconds=HEADER_TEXT)
@example(seconds="²")
def test_a_valid_signature_over_any_timestamp_text_is_a_verdict(seconds):
    # Signed with the right secret: only the timestamp's spelling can make it fail.
    secret, body = "whsec_" + "s" * 32, b"{}"
    header = f"t={seconds},v1={signatures.hmac_hex(secret, seconds.encode() + b'.' + body)}"
    verdict = signatures.verify("tolstoy", secret, {"X-Tolstoy-Signature": header}.get, body, 1_700_000_000)
    assert verdict.verdict in ("invalid", "stale", "valid")
    slack = {"X-Slack-Signature": "v0=" + signatures.hmac_hex(secret, b"v0:" + seconds.strip().encode() + b":" + body),
             "X-Slack-Request-Timestamp": seconds}
    assert signatures.verify("slack", secret, slack.get, body, 1_700_000_000).verdict in ("invalid", "stale", "valid")


@PROPERTY
@given(values=JSON_VALUES, raw=QUERY_TEXT)
@example(values=["2026-01-01T00:00:00+00:00", 123], raw="")
@example(values=[["x"], {"a": 1}], raw="")
@example(values=[12], raw="²")
def test_cursors_are_read_or_refused_with_a_400(values, raw):
    for cursor in (paging.encode_cursor(values), raw):
        if not cursor:
            continue
        for read in (paging.time_id_cursor, paging.version_cursor):
            refusal(lambda read=read, cursor=cursor: read({"cursor": cursor}), 400)


KEY = b"k" * 32
GOOD_STATE = connections.sign_state(KEY, uuid.UUID(int=7), "n" * 32, "github")


@PROPERTY
@given(state=st.one_of(QUERY_TEXT, st.builds(lambda tail: GOOD_STATE + tail, QUERY_TEXT)),
       tool_key=st.one_of(st.just("github"), QUERY_TEXT))
@example(state=GOOD_STATE + "\n", tool_key="github")
@example(state=GOOD_STATE, tool_key="github\n")
def test_oauth_states_and_tool_keys_are_read_exactly_or_refused(state, tool_key):
    found = refusal(lambda: connections.read_state(KEY, state, tool_key), 400)
    assert found is None or (state == GOOD_STATE and tool_key == "github")
    accepted = refusal(lambda: connections.check_tool_key(tool_key) or True, 404)
    assert not accepted or re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", tool_key), repr(tool_key)


@PROPERTY
@given(token=st.one_of(QUERY_TEXT, st.builds(lambda a, b: f"{a}.{b}", QUERY_TEXT, QUERY_TEXT),
                       st.builds(lambda claims: signals.sign_link(KEY, claims), st.dictionaries(
                           st.sampled_from(["o", "f", "r", "s", "a", "e", "l"]), JSON_VALUES))))
def test_approval_tokens_are_read_or_refused_with_401_or_410(token):
    refusal(lambda: signals.read_link(KEY, token, 1_700_000_000), 401, 410)


@PROPERTY
@given(value=st.one_of(HEADER_TEXT, st.none()))
@example(value="²")
@example(value="9" * 5000)
def test_a_remote_retry_after_is_a_bounded_delay_or_nothing(value):
    delay = retry_after_ms(value, now=1_700_000_000)
    assert delay is None or (isinstance(delay, int) and delay >= 0)


def test_no_module_parses_numbers_with_isdigit():
    """str.isdigit/isdecimal/isnumeric accept other scripts' digits; tolstoy.numerals.unsigned does not."""
    found = []
    for path in sorted((ROOT / "tolstoy").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("isdigit", "isdecimal", "isnumeric"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}()")
    assert not found, "use tolstoy.numerals.unsigned instead: " + ", ".join(found)
