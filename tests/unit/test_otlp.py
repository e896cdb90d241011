"""tolstoy/otlp.py writes what the OpenTelemetry exporter's own encoder writes, byte for byte, over spans
generated with every shape the SDK makes (attributes of each type, events, links, statuses, parents local
and remote, trace states, several resources and scopes); and Tolstoy's OTLP exporter sends those bytes
with the installed SDK (its fast path is taken, not silently lost to an SDK upgrade)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from otlp import Receiver

from tolstoy import otlp, tracing

ints = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
scalars = st.one_of(st.text(max_size=20), st.booleans(), ints, st.floats(allow_nan=False), st.binary(max_size=8))
values = st.one_of(scalars, st.none(), st.lists(scalars, max_size=3), st.tuples(st.booleans(), ints),
                   st.dictionaries(st.text(max_size=5), scalars, max_size=2))
attributes = st.one_of(st.none(), st.dictionaries(st.text(max_size=12), values, max_size=6))
ids = st.integers(min_value=1, max_value=(1 << 64) - 1)
trace_ids = st.integers(min_value=1, max_value=(1 << 128) - 1)
states = st.one_of(st.just(TraceState()), st.just(TraceState([("vendor", "a1"), ("other", "b-2")])))
contexts = st.builds(lambda t, s, remote, state: SpanContext(t, s, remote, TraceFlags(TraceFlags.SAMPLED), state),
                     trace_ids, ids, st.booleans(), states)
times = st.one_of(st.none(), st.integers(min_value=0, max_value=(1 << 64) - 1))
events = st.lists(st.builds(lambda name, attrs, at: Event(name, attrs, at), st.text(max_size=10), attributes,
                            st.integers(min_value=0, max_value=(1 << 64) - 1)), max_size=2)
links = st.lists(st.builds(Link, contexts, attributes), max_size=2)
statuses = st.one_of(st.just(Status(StatusCode.UNSET)), st.just(Status(StatusCode.OK)),
                     st.builds(lambda text: Status(StatusCode.ERROR, text), st.one_of(st.none(), st.text(max_size=10))))
RESOURCES = [Resource.create({"service.name": "a"}), Resource({"service.name": "b", "n": 1}, "https://schema/1"),
             Resource({})]
SCOPES = [InstrumentationScope("tolstoy"), InstrumentationScope("host", "1.2", "https://schema/2", {"k": "v"}), None]


@st.composite
def spans(draw) -> ReadableSpan:
    return ReadableSpan(
        draw(st.text(max_size=16)), draw(contexts), draw(st.one_of(st.none(), contexts)),
        draw(st.sampled_from(RESOURCES)), draw(attributes), draw(events), draw(links),
        kind=draw(st.sampled_from(list(SpanKind))), status=draw(statuses), start_time=draw(times),
        end_time=draw(times), instrumentation_scope=draw(st.sampled_from(SCOPES)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(spans(), min_size=1, max_size=5))
def test_the_bytes_are_the_libraries_for_every_shape_of_span(batch):
    ours = otlp.Encoder().encode(batch)
    assert ours == encode_spans(batch).SerializePartialToString()
    ExportTraceServiceRequest().ParseFromString(ours)


def test_a_value_the_library_cannot_encode_is_left_out_as_it_leaves_it_out():
    context = SpanContext(1, 2, False, TraceFlags(TraceFlags.SAMPLED))
    span = ReadableSpan("s", context, attributes={"big": 1 << 70, "kept": "yes", "odd": object()},
                        resource=RESOURCES[0], instrumentation_scope=SCOPES[0])
    ours = otlp.Encoder().encode([span])
    assert ours == encode_spans([span]).SerializePartialToString()
    decoded = ExportTraceServiceRequest.FromString(ours)
    assert [a.key for a in decoded.resource_spans[0].scope_spans[0].spans[0].attributes] == ["kept"]


def test_tolstoys_exporter_sends_its_own_encoding_with_the_installed_sdk(monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
                 "OTEL_EXPORTER_OTLP_COMPRESSION"):
        monkeypatch.delenv(name, raising=False)
    with Receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        provider, processor = tracing._otlp_provider()
        try:
            sent(monkeypatch, receiver, provider, processor)
        finally:
            provider.shutdown()


def sent(monkeypatch, receiver, provider, processor) -> None:
    exporter = processor._batch_processor._exporter
    encoded = []
    original = exporter.encoder.encode
    monkeypatch.setattr(exporter.encoder, "encode", lambda spans: encoded.append(original(spans)) or encoded[-1])
    with provider.get_tracer("t").start_as_current_span("one", attributes={"a": 1}):
        pass
    provider.force_flush()
    receiver.wait_for(lambda got: len(got) == 1)
    assert encoded and receiver.bodies == encoded  # sent as tolstoy.otlp wrote it
    assert receiver.spans[0]["attributes"] == {"a": 1}
    assert receiver.spans[0]["resource"]["process.pid"] == os.getpid()
    # A batch it cannot write (a span name that is not UTF-8) is the library's to encode, or to refuse.
    monkeypatch.setattr(exporter.encoder, "encode", lambda spans: (_ for _ in ()).throw(UnicodeEncodeError(
        "utf-8", "\ud800", 0, 1, "surrogates not allowed")))
    with provider.get_tracer("t").start_as_current_span("two"):
        pass
    provider.force_flush()
    receiver.wait_for(lambda got: [s["name"] for s in got] == ["one", "two"])
