"""Outbound webhooks without a database: the retry back-off, Retry-After, the envelope's bytes
and the save-time check of target URLs."""

from __future__ import annotations

import email.utils
import json
import random

from tolstoy.engine.webhooks import backoff_ms, envelope, retry_after_ms, target_problem


def test_backoff_doubles_is_capped_and_jittered_down_by_at_most_a_quarter():
    rng = random.Random(7)
    for attempt, full in ((1, 10_000), (2, 20_000), (3, 40_000), (9, 2_560_000), (10, 3_600_000), (60, 3_600_000)):
        for _ in range(50):
            wait = backoff_ms(attempt, 10_000, 3_600_000, rng)
            assert 0.75 * full <= wait <= full, (attempt, wait)


def test_retry_after_in_seconds_or_as_a_date():
    assert retry_after_ms("0") == 0 and retry_after_ms(" 120 ") == 120_000
    when = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after_ms(when, now=1_000_000) == 30_000
    assert retry_after_ms(email.utils.formatdate(999_000, usegmt=True), now=1_000_000) == 0
    assert retry_after_ms(None) is None and retry_after_ms("soon") is None and retry_after_ms("-5") is None


def test_the_envelope_is_the_same_bytes_every_time():
    delivery = {"event_id": "e1", "event_type": "flow.completed", "created_at": "2026-12-01T00:00:00.000Z",
                "org_id": "o1", "data": {"b": 1, "a": [1, "ü"]}}
    body = envelope(delivery)
    assert body == envelope(dict(delivery))
    assert json.loads(body) == {"id": "e1", "type": "flow.completed", "createdAt": "2026-12-01T00:00:00.000Z",
                                "organizationId": "o1", "data": {"b": 1, "a": [1, "ü"]}}


def test_target_urls_that_are_certainly_private_are_refused_at_save_time():
    for url in ("http://127.0.0.1/x", "http://localhost:8080/", "http://a.localhost/", "http://[::1]/",
                "http://169.254.169.254/latest", "http://0x7f000001/", "http://2130706433/", "http://10.1/",
                "http://[::ffff:10.0.0.1]/", "http://[64:ff9b::a9fe:a9fe]/"):
        assert target_problem(url), url
    for url in ("https://hooks.example.com/x", "https://8.8.8.8/", "http://deadbeef.example/"):
        assert target_problem(url) is None, url
    assert target_problem("http://127.0.0.1:9/x", ["127.0.0.1/32"]) is None
    assert target_problem("ftp://example.com/") and target_problem("http://[::1") and target_problem("http://a:99999/")
    assert target_problem("https://user:pw@example.com/")
