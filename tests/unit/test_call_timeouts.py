"""A call that times out fails its step naming the step's timeout. The request itself gets only what
is left of it once the credential's headers are ready (an OAuth2 token fetched, say), and its own
error named that remainder: a step of timeoutMs 200 failed with "Timed out after 199 ms" on a loaded
machine."""

from __future__ import annotations

import types

import pytest

from tolstoy.engine import calls
from tolstoy.engine.calls import ToolCall, ToolClient
from tolstoy.engine.errors import StepFailed
from tolstoy.engine.outbound import TimedOut


class LateRequest:
    """An outbound client whose request times out, after the step's budget was partly spent."""

    def __init__(self):
        self.given_ms = None

    def request(self, method, url, *, timeout_ms, **_):
        self.given_ms = timeout_ms
        raise TimedOut(f"Timed out after {timeout_ms} ms", retryable=True)


def test_a_call_that_times_out_names_the_steps_timeout(monkeypatch):
    readings = iter([0.0, 0.05])  # 50 ms go by before the request leaves
    monkeypatch.setattr(calls, "time", types.SimpleNamespace(monotonic=lambda: next(readings)))
    http = LateRequest()
    client = ToolClient(db=None, http=http, vault=None)
    with pytest.raises(StepFailed) as failed:
        client.send(ToolCall("GET", "https://tool.example.com/slow", {}, None, None), 200, None)
    assert http.given_ms == 150  # the request had what was left
    assert str(failed.value) == "Timed out after 200 ms" and failed.value.retryable
