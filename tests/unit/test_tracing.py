"""SQL round trips in traces (tolstoy/tracing.py, SqlTally): counted on the innermost of Tolstoy's spans and
put on it once, as attributes, when it ends, never an event per round trip (what made traces on cost a GET
28 % more CPU: docs/observability.md, Cost); under a span Tolstoy did not make (a host application's), an
event per round trip still; under a span the sampler left out, nothing. And with traces on, a process's start-up heap is frozen out
of the collector's passes once the app is built (tracing.settle)."""

from __future__ import annotations

import gc
import os

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from otlp import in_memory

from tolstoy import tracing
from tolstoy.db.queries import SQL

ENTER, GET, CHECKPOINT = SQL.session.enter_known, SQL.tools.get, SQL.runs.checkpoint_call


def test_round_trips_are_tallied_on_the_innermost_span_as_attributes_without_events(monkeypatch):
    traced = in_memory(monkeypatch)
    with tracing.span("claim f"):
        tracing.sql([(CHECKPOINT, {})], 0.004)
        with tracing.span("step s"):
            tracing.sql([(ENTER, {}), (GET, {})], 0.001)
            tracing.sql([(ENTER, {}), (GET, {})], 0.002)
            tracing.sql([(CHECKPOINT, {})], 0.0005)
        with tracing.call_span("GET", "https://api.example.com/x?token=t", None, None):
            pass  # no round trip: no attribute
    spans = {s.name: s for s in traced.finished}
    assert len(traced.started) == 3 == len(spans)
    assert all(not s.events for s in spans.values())
    step = spans["step s"].attributes
    assert step["tolstoy.sql.round_trips"] == 3 and step["tolstoy.sql.ms"] == 3.5
    assert step["tolstoy.sql.queries"] == ("session.enter_known+tools.get x2 3.000ms; "
                                           "runs.checkpoint_call x1 0.500ms")
    claim = spans["claim f"].attributes
    assert (claim["tolstoy.sql.round_trips"], claim["tolstoy.sql.queries"]) == (1, "runs.checkpoint_call x1 4.000ms")
    assert not any(name.startswith("tolstoy.sql.") for name in spans["GET https://api.example.com"].attributes)
    # Outside every span: nothing is kept, and nothing is left over for the next span.
    tracing.sql([(GET, {})], 0.001)
    with tracing.span("later"):
        pass
    assert "tolstoy.sql.round_trips" not in {s.name: s for s in traced.finished}["later"].attributes


def test_a_failing_block_still_gets_its_round_trips(monkeypatch):
    traced = in_memory(monkeypatch)
    with pytest.raises(RuntimeError), tracing.span("step s"):
        tracing.sql([(GET, {})], 0.001)
        raise RuntimeError("boom")
    [span] = traced.finished
    assert span.attributes["error.type"] == "RuntimeError" and span.attributes["tolstoy.sql.round_trips"] == 1


def test_under_a_host_span_each_round_trip_is_an_event(monkeypatch):
    traced = in_memory(monkeypatch)
    with traced.provider.get_tracer("host").start_as_current_span("host work"):
        tracing.sql([(ENTER, {}), (GET, {})], 0.00125)
    [span] = traced.finished
    assert [(e.name, dict(e.attributes)) for e in span.events] == [
        ("sql", {"db.query.names": ("session.enter_known", "tools.get"), "db.duration_ms": 1.25})]


def test_a_span_the_sampler_left_out_counts_nothing(monkeypatch):
    traced = in_memory(monkeypatch)
    unsampled = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, is_remote=True,
                            trace_flags=TraceFlags(TraceFlags.DEFAULT))
    with tracing.span("step s", parent=trace.set_span_in_context(NonRecordingSpan(unsampled))) as current:
        assert not current.is_recording()
        tracing.sql([(GET, {})], 0.001)
        assert tracing._tally.get() is None
    assert traced.finished == [] and traced.started == []


def test_with_traces_on_the_heap_built_at_start_is_frozen_once_per_process(monkeypatch):
    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(os.getpid()))
    monkeypatch.setattr(tracing, "_frozen_pid", None)
    monkeypatch.setattr(tracing, "ON", False)
    tracing.settle()
    assert frozen == []  # traces off: the collector never runs on a request's account, nothing to spare it
    in_memory(monkeypatch)
    tracing.settle()
    assert frozen == []  # a host application's provider: its process's heap is not Tolstoy's to freeze
    monkeypatch.setattr(tracing, "_owned", True)  # the provider setup() built from OTEL_TRACES_EXPORTER
    tracing.settle()
    tracing.settle()  # an app built again in the same process: the heap is frozen already
    assert frozen == [os.getpid()]
    monkeypatch.setattr(tracing, "_frozen_pid", -1)  # a forked child (a Gunicorn worker) freezes its own
    tracing.settle()
    assert frozen == [os.getpid()] * 2
