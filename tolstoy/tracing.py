"""OpenTelemetry traces: the one module that uses OpenTelemetry (docs/observability.md, Traces).

Off by default. ``setup()`` turns it on for this process when either
- the host application already set a tracer provider (opentelemetry-instrument, a test's SDK provider,
  an APM's bridge): Tolstoy's spans go to it, and it is never replaced; or
- ``OTEL_TRACES_EXPORTER`` names ``otlp`` (and ``OTEL_SDK_DISABLED`` is not true): Tolstoy builds an
  SDK provider exporting over OTLP/HTTP, configured by the standard ``OTEL_*`` variables
  (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``..._TRACES_ENDPOINT``, ``..._HEADERS``, ``OTEL_SERVICE_NAME``,
  ``OTEL_TRACES_SAMPLER``, ...), read by the SDK itself.
Set up once per process (by pid: a Gunicorn worker builds its app after the fork, a forked child sets
up again). When off, every instrumented place costs one check of the module-level ``ON``, and no span
object is made.

One trace per run: the run's trace is its caller's (the traceparent kept in flow_runs.trace_parent),
else its own id (a UUID is 128 bits, like a trace id), and its run span's id is derived from its id,
so every process that works on the run (a worker minutes later, another after a SIGKILL and recovery)
puts its spans under the same run span; the run span itself is exported by whoever finishes the run,
from the run's created_at to the finish.

What spans carry is chosen here, never passed through: route templates, ids, kinds, statuses,
placeholder URLs (an action's endpoint template, or an origin alone), query names. Never bodies,
headers, credentials, outputs, variables or full URLs (tests/engine/test_run_traces.py and
tests/api/test_request_traces.py plant secrets and grep every exported span for them).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import gc
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .numerals import unsigned

log = logging.getLogger("tolstoy.tracing")
# The one check every instrumented place makes (tracing.ON): False until setup() turns it on.
ON = False
SCOPE = "tolstoy"
_tracer: trace.Tracer | None = None
_provider: Any = None
_pid: int | None = None
_frozen_pid: int | None = None
_owned = False  # the provider is the one setup() built (no host application's in this process)
_direct: Any = None  # DirectSpans for the provider setup() built, when its settings allow (RequestSpans)
_propagator = TraceContextTextMapPropagator()
# A W3C traceparent of version 00, neither id all zeros (flow_runs.trace_parent keeps the same).
TRACEPARENT = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")


class SqlTally:
    """The database round trips made while one of Tolstoy's spans is current, counted in plain Python and
    put on the span once, as attributes, when it ends (``attributes``). One per span and context: a thread
    given a copy of the context (contextvars.copy_context) shares its span's tally, as it shares the span.
    An event per round trip cost more than the request it described: an SDK event object with its attributes per round trip, and twice the
    protobuf encoding per span in the exporter's thread (docs/observability.md, Cost)."""

    __slots__ = ("round_trips", "seconds", "shapes")

    def __init__(self):
        self.round_trips = 0
        self.seconds = 0.0
        # By the names of the queries sent together in one round trip: [round trips, seconds].
        self.shapes: dict[tuple[str, ...], list] = {}

    def add(self, statements, seconds: float) -> None:
        self.round_trips += 1
        self.seconds += seconds
        shape = tuple(query.name for query, _ in statements)
        found = self.shapes.get(shape)
        if found is None:
            self.shapes[shape] = [1, seconds]
        else:
            found[0] += 1
            found[1] += seconds

    def attributes(self) -> dict[str, Any]:
        """``tolstoy.sql.round_trips`` and ``tolstoy.sql.ms`` (their total time), and ``tolstoy.sql.queries``:
        per kind of round trip (its queries' names joined by ``+``), how many and their time, e.g.
        ``session.enter_known+tools.get x1 0.412ms``. One string: lists cost the exporter more than the
        rest of the span."""
        return {"tolstoy.sql.round_trips": self.round_trips, "tolstoy.sql.ms": round(self.seconds * 1000, 3),
                "tolstoy.sql.queries": "; ".join(f"{'+'.join(shape)} x{count} {seconds * 1000:.3f}ms"
                                                 for shape, (count, seconds) in self.shapes.items())}


# The context of a request that sent no traceparent: none, so that its span starts a trace (as the
# propagator's answer to an empty header was), whatever span a host has current around the app.
_ROOT = otel_context.Context()
# The tally of the innermost of Tolstoy's recording spans in this context (None: none, or one not recording).
_tally: contextvars.ContextVar[SqlTally | None] = contextvars.ContextVar("tolstoy_sql_tally", default=None)


def requested(environ: Mapping[str, str]) -> bool:
    """Whether the standard variables ask for traces: OTEL_TRACES_EXPORTER lists ``otlp`` and the SDK is
    not disabled. Unset is off (the SDK's own default would be otlp: Tolstoy sends nothing unasked)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return "otlp" in {name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")}


def host_provider() -> Any:
    """The tracer provider the host application set, or None while it is the API's default (a proxy
    that makes no spans, or the no-op one)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider


def setup(environ: Mapping[str, str] | None = None) -> bool:
    """Turn traces on for this process if asked (see the module's doc); returns ``ON``. Called where a
    process starts serving (the app, a worker), and again harmlessly: once per pid."""
    global ON, _tracer, _provider, _pid, _owned, _direct
    if _pid == os.getpid():
        return ON
    environ = os.environ if environ is None else environ
    provider = host_provider()
    _owned, _direct = False, None
    if provider is None and requested(environ):
        provider, processor = _otlp_provider()
        trace.set_tracer_provider(provider)  # no host provider was set: the process's is this one
        own(provider, processor)
    _pid = os.getpid()
    _provider = provider
    _tracer = provider.get_tracer(SCOPE) if provider is not None else None
    ON = _tracer is not None
    return ON


def own(provider, processor) -> None:
    """Mark ``provider`` as the one Tolstoy built, whose only span processor is ``processor`` (setup(); a
    test's with an in-memory exporter): request spans may then be made directly (DirectSpans)."""
    global _owned, _direct
    _owned = True
    _direct = DirectSpans.for_provider(provider, processor)


def settle() -> None:
    """Once the app is built, with traces on: freeze what this process holds (``gc.freeze``), once per
    process. Finished spans wait in the exporter's queue across hundreds of requests, long enough to be
    promoted to the collector's oldest generation, and each full collection they bring about walks
    everything the process built at start (the app, its modules, its schemas: about 100,000 objects,
    over 100 ms a pass; bench.profile saw one every 5,000 GETs). Frozen, those are not walked again.
    With traces off a request leaves nothing behind, the collector does not run, and nothing is frozen;
    nor under a host application's provider: its process's heap is not Tolstoy's to freeze."""
    global _frozen_pid
    if ON and _owned and _frozen_pid != os.getpid():
        _frozen_pid = os.getpid()
        gc.freeze()


def reset() -> None:
    """Forget this process's set-up (tests that change the environment or the host provider)."""
    global ON, _tracer, _provider, _pid, _owned, _direct
    ON, _tracer, _provider, _pid, _owned, _direct = False, None, None, None, False, None


def _otlp_provider():
    # Imported only when asked for: a process with traces off never loads the SDK's exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    class HashedResource(Resource):
        """The SDK's Resource with its hash computed once: the OTLP encoder groups spans by resource, and
        Resource's own hash is a JSON dump of its attributes, made again for every span exported (a sixth
        of what encoding a request's span cost). A resource is never changed once made."""

        def __init__(self, attributes, schema_url=None):
            super().__init__(attributes, schema_url)
            self._hash = super().__hash__()

        def __hash__(self):
            return self._hash

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the name defaults to ours.
    created = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "tolstoy",
                               "process.pid": os.getpid()})
    # the sampler from OTEL_TRACES_SAMPLER, the span limits from OTEL_SPAN_*_LIMIT
    provider = TracerProvider(resource=HashedResource(created.attributes, created.schema_url))
    processor = BatchSpanProcessor(_exporter(OTLPSpanExporter))
    provider.add_span_processor(processor)
    return provider, processor


def _exporter(library):
    """The SDK's OTLP/HTTP exporter (its endpoint, headers, TLS, compression, timeout and retries from the
    OTEL_* variables), sending the bytes tolstoy.otlp writes instead of building protobuf objects per span
    (a third of their cost: docs/observability.md, Cost). It sends through the exporter's own HTTP client;
    where an SDK version has none (``_client``), and for a batch tolstoy.otlp cannot write, the library
    encodes and sends as it would (tests/unit/test_otlp.py pins that the installed SDK takes our path)."""
    from opentelemetry.sdk.trace.export import SpanExportResult

    from . import otlp

    class Exporter(library):
        def __init__(self):
            super().__init__()
            self.encoder = otlp.Encoder()

        def export(self, spans):
            client, metrics = getattr(self, "_client", None), getattr(self, "_metrics", None)
            if client is None or metrics is None or self._shutdown:
                return super().export(spans)
            try:
                data = self.encoder.encode(spans)
            except Exception:  # noqa: BLE001 - a name that is not UTF-8, say: the library's way decides
                return super().export(spans)
            if 0 < getattr(self, "_max_request_size", 0) < len(data):
                return super().export(spans)  # which drops the batch, and says why
            with metrics.export_operation(len(spans)) as result:
                sent = client.export(data)
                if not sent.success:  # as the library's export says it
                    result.error = sent.error
                    status = getattr(sent, "status_code", None)
                    result.error_attrs = {"http.response.status_code": status} if status is not None else None
                    return SpanExportResult.FAILURE
            return SpanExportResult.SUCCESS

    return Exporter()


def flush(timeout_millis: int = 5000) -> None:
    """Export what is buffered now (a worker stopping, a test)."""
    if ON and hasattr(_provider, "force_flush"):
        _provider.force_flush(timeout_millis)


# ---- context -----------------------------------------------------------------------------------


def extract(headers: Mapping[str, str]) -> otel_context.Context:
    """The context a ``traceparent`` (and ``tracestate``) header carries; the empty one without."""
    return _propagator.extract(headers)


def inject(headers: dict) -> None:
    """Add ``traceparent`` (and ``tracestate``) for the current span to outgoing ``headers``."""
    _propagator.inject(headers)


def caller(req) -> str | None:
    """The traceparent a run queued by this request keeps (flow_runs.trace_parent): the request's own span
    when traces are on (itself in the caller's trace, if the caller sent one), else what the caller sent,
    when well formed (a malformed one is ignored, as the W3C says)."""
    if ON:
        current = trace.get_current_span().get_span_context()
        if current.is_valid:
            return f"00-{current.trace_id:032x}-{current.span_id:016x}-{int(current.trace_flags):02x}"
    sent = req.get_header("traceparent")
    return sent if sent and TRACEPARENT.match(sent) else None


def run_ids(run_id: uuid.UUID | str, parent: str | None = None) -> tuple[int, int]:
    """(trace id, run span id) of a run: its caller's trace (``parent``, its flow_runs.trace_parent), or
    else its own id as the trace id; and 64 bits of a hash of its id (never 0)."""
    value = run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id))
    span_id = int.from_bytes(hashlib.sha256(b"tolstoy-run-span:" + value.bytes).digest()[:8], "big") or 1
    if parent and TRACEPARENT.match(parent):
        return int(parent[3:35], 16), span_id
    return value.int, span_id


def run_context(run_id, parent: str | None = None) -> otel_context.Context:
    """A context whose parent is the run's span (which may be exported later, by another process)."""
    trace_id, span_id = run_ids(run_id, parent)
    parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(parent))


def trace_id_of(run_id, parent: str | None = None) -> str:
    """A run's trace id as viewers show it (32 hex digits)."""
    return format(run_ids(run_id, parent)[0], "032x")


# ---- spans -------------------------------------------------------------------------------------


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, *, kind: SpanKind = SpanKind.INTERNAL,
         parent: otel_context.Context | None = None) -> Iterator[trace.Span]:
    """A span, current for the block (under ``parent`` if given). Call only when ``ON``."""
    with _tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes,
                                       record_exception=False, set_status_on_exception=False) as current, \
            _tallied(current):
        try:
            yield current
        except BaseException as exc:
            current.set_attribute("error.type", type(exc).__name__)  # its message may hold anything
            raise


@contextlib.contextmanager
def _tallied(current: trace.Span) -> Iterator[None]:
    """Count the SQL round trips made while ``current`` is the current span, and put them on it before it
    ends (a span the sampler left out records nothing, and counts nothing)."""
    tally = SqlTally() if current.is_recording() else None
    token = _tally.set(tally)
    try:
        yield
    finally:
        _tally.reset(token)
        if tally is not None and tally.round_trips:
            current.set_attributes(tally.attributes())


def fail(current: trace.Span, message: str) -> None:
    """Mark ``current`` as failed, with a message the caller vouches carries no secret."""
    current.set_status(Status(StatusCode.ERROR, message))


def event(name: str, attributes: Mapping[str, Any]) -> None:
    """An event on the current span (if one is recording)."""
    current = trace.get_current_span()
    if current.is_recording():
        current.add_event(name, attributes)


def end_run(run_id, *, flow_id, version, org_id, status: str, started: dt.datetime | str | None,
            parent: str | None = None) -> None:
    """Export the run's span, from ``started`` (its created_at) to now, with its derived id: whoever
    finishes the run, whichever processes worked on it. Only an SDK provider lets a span be made with a
    given id; under another host provider the run's steps are exported, and its span is not. Never
    raises: a trace is not worth a run."""
    try:
        _end_run(run_id, flow_id, version, org_id, status, started, parent)
    except Exception:  # noqa: BLE001 - e.g. an SDK whose internals moved: say so, and carry on
        log.warning("could not export the run's span", exc_info=True, extra={"execution_id": str(run_id)})


def _end_run(run_id, flow_id, version, org_id, status, started, parent) -> None:
    # The SDK makes spans through a tracer, whose id generator we cannot choose per span; _Span is the
    # class its tracer instantiates, given the context (ids) to use.
    from opentelemetry.sdk.trace import TracerProvider, _Span
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    if not isinstance(_provider, TracerProvider):
        return
    trace_id, span_id = run_ids(run_id, parent)
    if isinstance(started, str):
        started = dt.datetime.fromisoformat(started)
    start_ns = int(started.timestamp() * 1e9) if started is not None else None
    parent_context = None
    if parent:
        parent_context = trace.get_current_span(extract({"traceparent": parent})).get_span_context()
    flags = TraceFlags(TraceFlags.SAMPLED)
    ended = _Span(
        f"run {flow_id}", SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags),
        parent=parent_context if parent_context and parent_context.is_valid else None,
        resource=_provider.resource, span_processor=_provider._active_span_processor,
        kind=SpanKind.INTERNAL, instrumentation_scope=InstrumentationScope(SCOPE),
        attributes={"tolstoy.run.id": str(run_id), "tolstoy.flow.id": str(flow_id),
                    "tolstoy.flow.version": int(version or 0), "tolstoy.org.id": str(org_id),
                    "tolstoy.run.status": status})
    ended.start(start_time=start_ns)
    if status == "failed":
        ended.set_status(Status(StatusCode.ERROR, "run failed"))
    ended.end()


def url_template(url: str, endpoint: str | None = None) -> str:
    """What a span says of a URL: its origin (no user info, path or query: a rendered path or query may
    hold a value a template put there, a base URL a token), then the action's ``endpoint`` template
    with its ``{name}`` placeholders when there is one."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(invalid URL)"
    return f"{parts.scheme}://{host}{port}{endpoint or ''}"


@contextlib.contextmanager
def call_span(method: str, url: str, template: str | None, idempotency_key: str | None) -> Iterator[trace.Span]:
    """A CLIENT span for a tool call: the method, the placeholder URL, and how many times it was sent
    before (from the Idempotency-Key's attempt). A failure is named by its exception's type only (its
    message may quote a URL)."""
    attributes = {"http.request.method": method, "url.template": template or url_template(url)}
    attempt = unsigned((idempotency_key or "").rpartition(":")[2], 9)
    if attempt is not None:
        attributes["tolstoy.call.retries"] = max(attempt - 1, 0)
    with _tracer.start_as_current_span(f"{method} {attributes['url.template']}", kind=SpanKind.CLIENT,
                                       attributes=attributes, record_exception=False,
                                       set_status_on_exception=False) as current, _tallied(current):
        try:
            yield current
        except BaseException as exc:
            current.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            current.set_attribute("error.type", type(exc).__name__)
            raise


def reply_status(current: trace.Span, status: int) -> None:
    """The status a call was answered with (5xx: the span failed)."""
    current.set_attribute("http.response.status_code", status)
    if status >= 500:
        current.set_status(Status(StatusCode.ERROR))


def outcome(current: trace.Span, value: str) -> None:
    """A step's outcome (completed, skipped, failed, sleep, paused, unknown, cancelled); failed fails its span."""
    current.set_attribute("tolstoy.step.outcome", value)
    if value == "failed":
        current.set_status(Status(StatusCode.ERROR, "step failed"))


def delivery(current: trace.Span, value: str | None) -> None:
    """A webhook delivery's recorded outcome (delivered, retry, failed; None: not recorded)."""
    current.set_attribute("tolstoy.delivery.outcome", value or "unrecorded")
    if value != "delivered":
        current.set_status(Status(StatusCode.ERROR, value or "unrecorded"))


def sql(statements, seconds: float) -> None:
    """One database round trip: the names of its queries (sql/*.sql, tolstoy/db/queries.py) and how long it
    took, never the statements' text or parameters. Counted on the current span's tally when the span is
    one of Tolstoy's (SqlTally: attributes, when it ends); under a recording span someone else made (a host
    application's), an event per round trip, as that span's end is not ours to hook."""
    tally = _tally.get()
    if tally is not None:
        tally.add(statements, seconds)
        return
    current = trace.get_current_span()
    if current.is_recording():
        current.add_event("sql", {"db.query.names": [query.name for query, _ in statements],
                                  "db.duration_ms": round(seconds * 1000, 3)})


def link(traceparent: str, attributes: Mapping[str, Any] | None = None) -> None:
    """Link the current span (if one is recording) to the span a W3C ``traceparent`` names: what woke a run
    (a signal's sender) is in another trace, or another part of this one, and not its parent."""
    current = trace.get_current_span()
    if current.is_recording():
        other = trace.get_current_span(extract({"traceparent": traceparent})).get_span_context()
        if other.is_valid:
            current.add_link(other, attributes)


def note(name: str, value: Any) -> None:
    """An attribute on the current span (if one is recording)."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attribute(name, value)


class DirectSpans:
    """Request spans made as the finished span the exporter reads (the SDK's ``ReadableSpan``), handed to the
    span processor when the response goes, without the SDK's live ``Span`` in between: that object checks
    and copies every attribute under a lock, and cost a traced GET /tools/{id} more than the request's
    own tenancy and validation (docs/observability.md, Cost). Only for the provider Tolstoy built, whose
    one processor does nothing when a span starts (a host's processors may, and see the SDK's spans), and
    only while its span limits cannot cut a request's few attributes (``for_provider``). The sampler, the
    id generator and the resource are the provider's own, as the SDK's tracer would use them. While the
    request runs, its current span is a non-recording one with the request span's ids (what child spans
    and tracing.caller read): nothing adds attributes or events to a request's span but RequestSpans
    itself, and anything that tried (tracing.note, event, link) would be left out."""

    __slots__ = ("sampler", "ids", "resource", "processor", "scope")

    def __init__(self, provider, processor):
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.sampler, self.ids, self.resource = provider.sampler, provider.id_generator, provider.resource
        self.processor, self.scope = processor, InstrumentationScope(SCOPE)

    @classmethod
    def for_provider(cls, provider, processor) -> DirectSpans | None:
        from opentelemetry.sdk.trace import SpanLimits

        limits = SpanLimits()  # what OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT and the length limits ask for
        count = limits.max_span_attributes  # None: no limit; 0: none kept
        if limits.max_span_attribute_length is not None or (count is not None and count < 16):
            return None  # a limit that could cut a request's attributes: the SDK's spans apply it
        return cls(provider, processor)

    def start(self, name: str, parent: otel_context.Context,
              attributes: dict) -> tuple[SpanContext, DirectSpan | None]:
        """The new span's context (its ids, and whether it is sampled: what the request's work sees as its
        current span), and the span to finish when the response goes, None when the sampler left it out
        (asked as the SDK's tracer asks it)."""
        found = trace.get_current_span(parent).get_span_context()
        remote = found if found.is_valid else None
        trace_id = remote.trace_id if remote is not None else self.ids.generate_trace_id()
        decided = self.sampler.should_sample(parent, trace_id, name, SpanKind.SERVER, attributes)
        flags = TraceFlags(TraceFlags.SAMPLED if decided.decision.is_sampled() else TraceFlags.DEFAULT)
        context = SpanContext(trace_id, self.ids.generate_span_id(), is_remote=False, trace_flags=flags,
                              trace_state=decided.trace_state)
        if not decided.decision.is_recording():
            return context, None
        return context, DirectSpan(self, context, remote, time.time_ns(), decided.attributes)


class DirectSpan:
    """A request span DirectSpans started: what its finished span needs besides the response's attributes."""

    __slots__ = ("spans", "context", "parent", "started", "added")

    def __init__(self, spans: DirectSpans, context: SpanContext, parent: SpanContext | None, started: int, added):
        self.spans, self.context, self.parent, self.started, self.added = spans, context, parent, started, added

    def finish(self, name: str, attributes: dict, failed: bool) -> None:
        """Hand the finished span to the processor (with the attributes the sampler added, if any)."""
        from opentelemetry.sdk.trace import ReadableSpan

        spans = self.spans
        spans.processor.on_end(ReadableSpan(
            name, self.context, self.parent, spans.resource, {**self.added, **attributes} if self.added else attributes,
            kind=SpanKind.SERVER, status=Status(StatusCode.ERROR) if failed else _UNSET, start_time=self.started,
            end_time=time.time_ns(), instrumentation_scope=spans.scope))


class SdkSpan:
    """A request span the SDK's tracer made (under a host application's provider), finished the same way."""

    __slots__ = ("span",)

    def __init__(self, span: trace.Span):
        self.span = span

    def finish(self, name: str, attributes: dict, failed: bool) -> None:
        self.span.update_name(name)
        self.span.set_attributes(attributes)
        if failed:
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()


_UNSET = Status(StatusCode.UNSET)


class RequestSpans:
    """Falcon middleware (installed only when ``ON``): a SERVER span per request, joining the caller's
    trace when it sent ``traceparent``, named by the route template, with the status, the organization
    and the request's SQL round trips (SqlTally). First in the list, so its span holds every other
    middleware's work. Its attributes are set once, as the response goes. Under Tolstoy's own provider the
    span is made directly (DirectSpans); under a host's, it is the SDK's span, as the host's processors
    expect."""

    def process_request(self, req, resp) -> None:
        sent = req.get_header("traceparent")
        # No traceparent (most requests): a root span, without asking the propagator to parse nothing.
        parent = extract({"traceparent": sent, "tracestate": req.get_header("tracestate") or ""}) if sent else _ROOT
        direct = _direct
        if direct is not None:
            context, started = direct.start(f"HTTP {req.method}", parent, {"http.request.method": req.method})
            current = NonRecordingSpan(context)  # what this request's work sees as current: its ids
        else:
            current = _tracer.start_span(f"HTTP {req.method}", context=parent, kind=SpanKind.SERVER,
                                         attributes={"http.request.method": req.method})
            started = SdkSpan(current) if current.is_recording() else None  # not recording: nothing to end
        req.context.trace_span = started
        tally = SqlTally() if started is not None else None
        req.context.trace_token = (otel_context.attach(trace.set_span_in_context(current)), _tally.set(tally), tally)

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        token = getattr(req.context, "trace_token", None)
        if token is None:
            return
        attached, counting, tally = token
        try:
            if tally is not None:  # a request the sampler left out: nothing to name or count
                self._finish(req, resp, tally)
        finally:
            _tally.reset(counting)
            otel_context.detach(attached)

    @staticmethod
    def _finish(req, resp, tally: SqlTally) -> None:
        route = req.uri_template or "(unmatched)"
        attributes = {"http.request.method": req.method, "http.route": route,
                      "http.response.status_code": resp.status_code}
        org = getattr(req.context, "org_id", None)
        if org is not None:
            attributes["tolstoy.org.id"] = str(org)
        if tally.round_trips:
            attributes.update(tally.attributes())
        req.context.trace_span.finish(f"{req.method} {route}", attributes, resp.status_code >= 500)
