"""What a provider's headers teach a credential's rate budget (tolstoy/engine/ratelimits.py): each
form it reads, and a fuzz over every header it reads: hostile values never raise and never teach a
wait, a limit or a window beyond the documented bounds."""

from __future__ import annotations

import email.utils

from hypothesis import given, settings
from hypothesis import strategies as st

from tolstoy.engine import ratelimits
from tolstoy.engine.ratelimits import (
    DEFAULT_429_PAUSE_SECONDS,
    MAX_REQUESTS,
    MAX_WAIT_SECONDS,
    MAX_WINDOW_SECONDS,
    lesson,
)

NOW = 1_800_000_000.0


def test_a_plain_success_teaches_nothing():
    assert lesson(200, {"content-type": "application/json"}, NOW) is None
    assert lesson(503, {}, NOW) is None  # a 503 without Retry-After is an outage, not a limit


def test_retry_after_in_seconds_and_as_an_http_date():
    assert lesson(429, {"retry-after": "7"}, NOW) == {"throttled": True, "pause_seconds": 7.0}
    date = email.utils.formatdate(NOW + 30, usegmt=True)
    assert lesson(429, {"Retry-After": date}, NOW)["pause_seconds"] == 30.0
    # A 503 with Retry-After pauses too, but is no 429.
    assert lesson(503, {"retry-after": "2"}, NOW) == {"throttled": False, "pause_seconds": 2.0}
    # A date in the past, or 0: the shortest pause a 429 gets.
    assert lesson(429, {"retry-after": "0"}, NOW)["pause_seconds"] == DEFAULT_429_PAUSE_SECONDS
    assert lesson(429, {"retry-after": email.utils.formatdate(NOW - 60, usegmt=True)}, NOW)["pause_seconds"] == 1.0


def test_a_429_that_says_nothing_pauses_briefly():
    assert lesson(429, {}, NOW) == {"throttled": True, "pause_seconds": DEFAULT_429_PAUSE_SECONDS}


def test_githubs_form_reset_in_epoch_seconds():
    learned = lesson(200, {"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "4999",
                           "x-ratelimit-reset": str(int(NOW) + 3000)}, NOW)
    assert learned == {"throttled": False, "requests": 5000, "remaining": 4999, "reset_seconds": 3000.0}
    # Exhausted, 429 without Retry-After: paused until the reset.
    learned = lesson(429, {"x-ratelimit-limit": "10", "x-ratelimit-remaining": "0",
                           "x-ratelimit-reset": str(int(NOW) + 5)}, NOW)
    assert learned["pause_seconds"] == 5.0 and learned["remaining"] == 0
    # A reset that is small is seconds from now (some providers send it so).
    assert lesson(200, {"x-ratelimit-remaining": "3", "x-ratelimit-reset": "12"}, NOW)["reset_seconds"] == 12.0


def test_slacks_form_retry_after_on_429():
    assert lesson(429, {"retry-after": "30"}, NOW)["pause_seconds"] == 30.0


def test_the_ietf_fields():
    learned = lesson(200, {"ratelimit-policy": '"default";q=100;w=60', "ratelimit": '"default";r=50;t=30'}, NOW)
    assert learned == {"throttled": False, "requests": 100, "per_seconds": 60.0, "remaining": 50,
                       "reset_seconds": 30.0}
    # Several policies: the one RateLimit names.
    learned = lesson(200, {"ratelimit-policy": '"burst";q=10;w=1, "day";q=1000;w=86400',
                           "ratelimit": '"day";r=900;t=3600'}, NOW)
    assert (learned["requests"], learned["per_seconds"], learned["remaining"]) == (1000, 86400.0, 900)
    # The older draft's three fields.
    learned = lesson(200, {"ratelimit-limit": "20", "ratelimit-remaining": "4", "ratelimit-reset": "9"}, NOW)
    assert (learned["requests"], learned["remaining"], learned["reset_seconds"]) == (20, 4, 9.0)


def test_absurd_values_are_clamped_or_ignored():
    learned = lesson(429, {"retry-after": "99999999999"}, NOW)
    assert learned["pause_seconds"] == MAX_WAIT_SECONDS
    learned = lesson(200, {"ratelimit-policy": '"p";q=999999999999;w=99999999', "ratelimit": '"p";r=5;t=999999'}, NOW)
    assert learned["requests"] == MAX_REQUESTS and learned["per_seconds"] == MAX_WINDOW_SECONDS
    assert learned["reset_seconds"] == MAX_WAIT_SECONDS
    assert lesson(200, {"x-ratelimit-limit": "-5", "x-ratelimit-remaining": "1e9", "x-ratelimit-reset": "nan"},
                  NOW) is None
    assert lesson(200, {"ratelimit-policy": '"p";q=0;w=60'}, NOW) is None  # a quota of 0 teaches nothing
    assert lesson(429, {"retry-after": "x" * 5000}, NOW)["pause_seconds"] == DEFAULT_429_PAUSE_SECONDS


HEADER_NAMES = ("retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "ratelimit",
                "ratelimit-policy", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "Retry-After")
VALUES = st.one_of(
    st.text(max_size=200),
    st.integers(-10 ** 30, 10 ** 30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.builds(lambda name, q, w, r, t: f'"{name}";q={q};w={w}, "{name}";r={r};t={t}',
              st.text(max_size=20), st.integers(-10 ** 20, 10 ** 20), st.text(max_size=10),
              st.integers(-10 ** 20, 10 ** 20), st.floats().map(repr)),
    st.datetimes(timezones=st.none()).map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT")),
    st.sampled_from(["Mon, 99 Foo 0000 99:99:99 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", ";;;", '"', "q=", "\x00",
                     '"a";q=1;w=1;q=2', ",,,,", '"default";r=-1;t=-1']),
    st.none(), st.integers(), st.lists(st.text(max_size=5), max_size=3),
)


@settings(max_examples=400, deadline=None)
@given(status=st.sampled_from([200, 201, 429, 500, 503]),
       headers=st.dictionaries(st.sampled_from(HEADER_NAMES), VALUES, max_size=6),
       now=st.floats(0, 4_000_000_000))
def test_fuzz_hostile_headers_never_raise_nor_teach_absurd_bounds(status, headers, now):
    learned = ratelimits.lesson(status, headers, now)
    if learned is None:
        return
    assert set(learned) <= {"throttled", "pause_seconds", "requests", "per_seconds", "remaining", "reset_seconds"}
    assert learned["throttled"] is (status == 429)
    for name in ("pause_seconds", "reset_seconds"):
        if name in learned:
            assert 0 <= learned[name] <= MAX_WAIT_SECONDS
    if "pause_seconds" in learned and status == 429:
        assert learned["pause_seconds"] >= DEFAULT_429_PAUSE_SECONDS
    if "requests" in learned:
        assert isinstance(learned["requests"], int) and 1 <= learned["requests"] <= MAX_REQUESTS
    if "per_seconds" in learned:
        assert 1 <= learned["per_seconds"] <= MAX_WINDOW_SECONDS
    if "remaining" in learned:
        assert isinstance(learned["remaining"], int) and 0 <= learned["remaining"] <= MAX_REQUESTS


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_structured_lists_never_raise(value):
    for name, params in ratelimits.structured_list(value):
        assert isinstance(name, str) and isinstance(params, dict)
