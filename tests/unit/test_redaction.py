"""The one redaction rule (tolstoy.redaction): a known secret is recognised as it is and in its
common encodings, at any offset; short values are matched whole only; ordinary text is left alone;
and knowing many secrets stays cheap (groups merge like a binary counter's carries)."""

from __future__ import annotations

import base64
import binascii
import json
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import LinesRun

from tolstoy import logs
from tolstoy.redaction import (
    MASK,
    MAX_ENCODED,
    MAX_WHOLE,
    SHORTEST,
    WINDOW,
    Derived,
    Secrets,
    hidden,
    hidden_strings,
    hide,
    mask_json,
    patterns,
    redact,
    redact_strings,
)

SECRET = "sk-live/4f9c+2d=71 e0a8b3c6Zq"  # reserved URL characters and a space: every encoding differs


def b64_variants(data: bytes) -> list[str]:
    standard = base64.b64encode(data).decode()
    urlsafe = base64.urlsafe_b64encode(data).decode()
    return [standard, standard.rstrip("="), urlsafe, urlsafe.rstrip("=")]


ENCODINGS = {
    "as is": lambda s: s,
    "reversed": lambda s: s[::-1],
    "percent": lambda s: quote(s, safe=""),
    "percent, / kept": lambda s: quote(s),
    "percent, lower-case": lambda s: quote(s, safe="").replace("%2F", "%2f").replace("%2B", "%2b"),
    "form (+ for space)": lambda s: quote_plus(s),
    "hex": lambda s: s.encode().hex(),
    "HEX": lambda s: s.encode().hex().upper(),
    **{f"base64 variant {i}": (lambda s, i=i: b64_variants(s.encode())[i]) for i in range(4)},
}


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_secret_is_masked_in_each_encoding_wherever_it_stands(encoding):
    shown = ENCODINGS[encoding](SECRET)
    masked = Secrets([SECRET]).mask(f"before {shown} after")
    assert masked == f"before {MASK} after"


@pytest.mark.parametrize("prefix", ["", "x", "xy", "Bearer ", "user:"])
def test_base64_of_data_holding_the_secret_is_masked_at_each_alignment(prefix):
    for encoded in b64_variants(f"{prefix}{SECRET} and more".encode()):
        masked = Secrets([SECRET]).mask(encoded)
        assert MASK in masked
        # What remains is at most the groups the secret shares with its neighbours (two bytes a side).
        assert len(masked) - len(MASK) <= len(encoded) - (len(SECRET) - 4) * 4 // 3, (encoded, masked)


@pytest.mark.parametrize("start,stop", [(0, WINDOW), (3, 3 + WINDOW), (5, 20), (len(SECRET) - WINDOW, None)])
def test_any_slice_of_window_characters_is_masked_in_each_encoding(start, stop):
    piece = SECRET[start:stop]
    index = Secrets([SECRET])
    for name, encode in ENCODINGS.items():
        if name.startswith("base64"):  # inside base64, a slice is aligned with the secret's own groups
            continue
        assert MASK in index.mask(f"<{encode(piece)}>"), name
    for skip in range(3):  # base64 of the slice at each alignment: most of it is masked
        for encoded in b64_variants(("ab"[:skip] + SECRET[start:stop]).encode()):
            assert MASK in index.mask(encoded), (skip, encoded)


def test_a_slice_shorter_than_the_window_is_not_masked():
    index = Secrets([SECRET])
    for piece in (SECRET[:WINDOW - 1], SECRET[4:4 + WINDOW - 1], SECRET[::-1][:WINDOW - 1]):
        assert index.mask(f"[{piece}]") == f"[{piece}]"


def test_a_short_secret_is_matched_whole_only_and_a_tiny_one_not_at_all():
    index = Secrets(["abc12", "ab"])
    assert index.mask("id abc12 !") == f"id {MASK} !"
    assert index.mask("21cba") == MASK  # whole, reversed
    assert index.mask(base64.b64encode(b"abc12").decode()) == MASK  # whole, encoded
    assert index.mask("abc1 bc12 ab") == "abc1 bc12 ab"  # no slices of a short secret, and "ab" is too short
    assert "ab" not in index and len("ab") < SHORTEST


def test_ordinary_text_is_left_alone():
    index = Secrets(["correct-horse-battery-staple", "s3cr3t-t0ken-9f8e7d6c5b4a"])
    text = json.dumps({"id": 1, "ok": True, "name": "Ada Lovelace", "tags": ["a", "b"], "url": "https://example.com/x",
                       "note": "the horse is correct", "n": None, "hex": "deadbeef", "b64": "aGVsbG8gd29ybGQ="})
    assert index.mask(text) == text
    assert mask_json({"true": "true", "count": 3, "list": [None, 1.5]}, index) == \
        {"true": "true", "count": 3, "list": [None, 1.5]}


def test_a_derived_value_is_matched_whole_and_as_it_is():
    index = Secrets([Derived("Bearer upper-CASE-TOKEN-1")])
    assert index.mask("got Bearer upper-CASE-TOKEN-1.") == f"got {MASK}."
    # Its slices are mostly text that is no secret: they stay.
    assert index.mask("Bearer upper-CASE") == "Bearer upper-CASE"
    assert index.mask(base64.b64encode(b"Bearer upper-CASE-TOKEN-1").decode()) != MASK
    index.add(["short"], derived=True)  # a derived value shorter than the window is too common
    assert index.mask("short") == "short"


def test_overlapping_and_adjacent_matches_become_one_mask():
    index = Secrets(["abcdefghijkl", "ijklmnopqrst"])
    assert index.mask("0abcdefghijklmnopqrst1") == f"0{MASK}1"
    assert index.mask("abcdefghijklabcdefghijkl") == MASK


def test_mask_json_masks_values_keys_and_secret_named_fields():
    index = Secrets([SECRET])
    shown = mask_json({"a": [f"x{SECRET}y", {"password": "anything"}], SECRET: 1, "n": 7}, index)
    assert shown == {"a": [f"x{MASK}y", {"password": MASK}], MASK: 1, "n": 7}
    assert mask_json({"k": SECRET[::-1]}, [SECRET]) == {"k": MASK}  # a list of values works too


def test_free_text_redaction_knows_the_secrets_too():
    index = Secrets([SECRET])
    line = f"calling with {quote(SECRET)} and password=hunter2 and Bearer abcdef"
    assert redact(line, index) == f"calling with {MASK} and password={MASK} and Bearer {MASK}"


def test_the_json_log_formatter_masks_the_secrets_of_the_run_in_progress():
    import logging

    index = Secrets([SECRET])
    formatter = logs.JsonFormatter()
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "seen %s", (SECRET[::-1],), None)
    record.fields = {"nested": {"value": base64.b64encode(SECRET.encode()).decode(), "token": "x"}}
    with logs.masking(index):
        line = json.loads(formatter.format(record))
    assert line["message"] == f"seen {MASK}" and line["nested"] == {"value": MASK, "token": MASK}
    assert SECRET[::-1] in formatter.format(record)  # outside a run, the run's secrets are not known


def test_many_secrets_cost_their_own_patterns_and_a_text_is_checked_once():
    """A foreach whose every item logs in adds a secret per item: each costs its own patterns (no
    rebuild of what is known), and past MAX_ENCODED they are matched whole only."""
    index = Secrets()
    for n in range(MAX_ENCODED + 50):
        index.add([f"secret-number-{n:06d}"])
    assert len(index._windows) < (MAX_ENCODED + 50) * 400
    assert index.mask(f"x secret-number-{7:06d} y") == f"x {MASK} y"
    assert index.mask(f"x {'secret-number-000007'[::-1]} y") == f"x {MASK} y"  # encoded: among the first
    late = "zq9x81-late-comer-77"
    index.add([late])
    assert index.mask(f"x {late} y") == f"x {MASK} y" and index.mask(late[::-1]) == late[::-1]  # whole only
    before = len(index._grams)
    index.add([f"secret-number-{n:06d}" for n in range(100)])  # known already: nothing added
    assert len(index._grams) == before


def items_masked(count: int) -> int:
    """The lines run to learn and mask ``count`` items' secrets, as a foreach does item by item: a key
    sharing its first characters with every other item's (sk_live_…), a short password, and the output
    that echoes them."""
    index = Secrets()
    with LinesRun("tolstoy/redaction.py") as counted:
        for n in range(count):
            key, password = f"sk_live_Zq{n:05d}", f"p{n:05d}"  # lengths alike, work alike
            index.add([key, password])
            shown = mask_json({"token": key, "echo": f"paid with {key} ({password})", "n": n}, index)
            assert shown["echo"] == f"paid with {MASK} ({MASK})"
    return counted.count


def test_masking_costs_the_same_per_secret_however_many_are_known():
    """Linear in the number of secrets: the eight hundredth secret costs what the first did to learn
    and to find (counted in lines run, not timed), whatever prefix or length they share (fewer than
    MAX_ENCODED: each is indexed with its encodings)."""
    small, large = items_masked(100), items_masked(400)
    assert 2 * 400 < MAX_ENCODED
    assert large <= 4.1 * small, (small, large)


def test_patterns_grow_linearly_with_the_secret():
    short, long = SECRET, "".join(f"{n:x}" for n in range(300))  # few repeated windows in either
    assert len(patterns(short)) < 40 * len(short) and len(patterns(long)) < 40 * len(long)
    assert len(patterns(long)) > 10 * len(patterns(short[:len(short) // 2]))
    assert patterns("only-whole-please", derived=True) == {"only-whole-please"}


def test_a_huge_secret_costs_bounded_patterns_and_its_first_part_is_recognised():
    huge = "".join(f"{n:08x}" for n in range(125_000))  # a megabyte under a secret-named field
    assert len(patterns(huge)) < 16 * MAX_WHOLE
    index = Secrets([huge])
    assert index.mask(f"<{huge[1000:2000]}>") == f"<{MASK}>"
    assert index.mask(f"<{huge[::-1][1000:2000]}>") == f"<{MASK}>"
    assert len(patterns(huge, derived=True).pop()) == MAX_WHOLE


def test_adding_a_single_string_is_refused():
    with pytest.raises(TypeError):
        Secrets().add("a-secret-value")


def test_hidden_trees_say_where_a_masked_copy_hides():
    real = {"a": 1, "b": {"token": "t-123456", "user": "ada"}, "c": ["x", "Bearer k-1234567890"], "d": [1, 2]}
    shown = {"a": 1, "b": {"token": MASK, "user": "ada"}, "c": ["x", f"Bearer {MASK}"], "d": MASK}
    tree = hidden(real, shown)
    assert tree == {"b": {"token": True}, "c": {1: True}, "d": True}
    assert hidden(real, real) is None
    assert hide(real, tree) == {"a": 1, "b": {"token": MASK, "user": "ada"}, "c": ["x", MASK], "d": MASK}
    assert sorted(hidden_strings(real, tree, shown)) == ["k-1234567890", "t-123456"]
    assert hidden_strings(real, tree) == ["t-123456", "Bearer k-1234567890"]
    assert hidden("a b c", f"a {MASK} c") is True and hidden_strings("a bbb c", True, f"a {MASK} c") == ["bbb"]


def test_hex_windows_are_whole_bytes_of_the_secret():
    raw = SECRET.encode()
    assert MASK in Secrets([SECRET]).mask(binascii.hexlify(raw[2:2 + WINDOW]).decode())
    assert Secrets([SECRET]).mask(binascii.hexlify(raw[2:2 + WINDOW - 1]).decode()) == \
        binascii.hexlify(raw[2:2 + WINDOW - 1]).decode()


def test_a_large_text_is_masked_by_the_automaton_exactly_as_slice_by_slice(monkeypatch):
    import tolstoy.redaction as redaction

    filler = "".join(f"row {n}, " for n in range(1500))
    text = filler + "".join(f"{encode(SECRET)} | {encode(SECRET[5:20])} | " for encode in ENCODINGS.values()) + filler
    index = Secrets([SECRET, "ab12", Derived("Bearer derived-value-1")])
    assert len(text) > redaction._LARGE
    by_automaton = index.mask(text + "Bearer derived-value-1 ab12")
    assert index._built is not None  # built for the large text, kept until a secret is added
    monkeypatch.setattr(redaction, "_LARGE", 10 ** 9)
    assert index.mask(text + "Bearer derived-value-1 ab12") == by_automaton
    assert SECRET[5:20] not in by_automaton and by_automaton.endswith(f"{MASK} {MASK}")
    assert by_automaton.count(MASK) >= 2 * len(ENCODINGS)


SUSPECT_PIECES = ["Bearer abcdefgh", "password=hunter2", "postgresql://u:pw@db/x", "token", "basic", "=", ":",
                  "/tools/6f1c5bb6", "127.0.0.1", "Basic dXNlcjpwYXNz"]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6),
                       st.none() | st.integers() | st.lists(st.sampled_from(SUSPECT_PIECES) | st.text(max_size=8),
                                                             max_size=4).map("".join),
                       max_size=6))
def test_redacting_strings_together_masks_what_redacting_each_masks(values):
    """redact_strings (one scan of an access line's strings, then a mask of each only if any is suspect)
    writes what redact writes for each string."""
    assert redact_strings(values) == {key: redact(value) if isinstance(value, str) else value
                                      for key, value in values.items()}
