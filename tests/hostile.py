"""Hypothesis strategies for what a hostile or careless client (or remote server) sends: the values
the parsers of untrusted input are fuzzed with, in tests/unit/test_untrusted_parsers.py,
tests/api/test_untrusted_input.py and .ci/fuzz.py alike."""

from __future__ import annotations

from hypothesis import strategies as st

# Digits that str.isdigit() accepts and int() refuses or reads (superscripts, Arabic-Indic, fullwidth,
# mathematical), as the app gets them: Latin-1 characters directly, others as their UTF-8 bytes read
# as Latin-1 (what Gunicorn does with a header), and as themselves (what a query string decodes to).
ODD_DIGITS = ["²", "³", "¹", "١٢٣", "٣", "１２", "𝟙𝟚", "߁", "൧"]
AS_GUNICORN_READS = [d.encode().decode("latin-1") for d in ODD_DIGITS]
NUMBERS = ["0", "1", "1700000000", "0" * 13, "9" * 12, "9" * 5000, "-1", "+1", " 1", "1 ", "1_000", "0x10",
           "1e3", "nan", "", " "]
TRICKY = st.sampled_from(ODD_DIGITS + AS_GUNICORN_READS + NUMBERS + ["\x00", "\t", "\x7f", "\u2028", "=", ",", "v1="])
# Header values: what fits on the wire (no CR or LF), and a few thousand characters at most.
HEADER_TEXT = st.one_of(
    TRICKY,
    st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=80),
    st.from_regex(r"[0-9²³¹٠-٩ \-+]{1,20}", fullmatch=True),
    st.builds(lambda n: "9" * n, st.integers(10, 6000)),
    st.builds("".join, st.lists(TRICKY, max_size=6)),
)
SIGNATURE_VALUE = st.one_of(
    HEADER_TEXT,
    st.builds(lambda t, v: f"t={t},v1={v}", HEADER_TEXT, HEADER_TEXT),
    st.builds(lambda t, v, w: f"t={t},v1={v},v0={w},v1={v}", HEADER_TEXT, HEADER_TEXT, HEADER_TEXT),
    st.builds(lambda v: f"v0={v}", HEADER_TEXT),
    st.builds(lambda v: f"sha256={v}", HEADER_TEXT),
)
QUERY_TEXT = st.one_of(TRICKY, st.text(max_size=120), st.builds("".join, st.lists(TRICKY, max_size=6)))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | QUERY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
