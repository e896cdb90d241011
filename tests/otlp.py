"""A real OTLP/HTTP trace receiver on 127.0.0.1 for tests: POST /v1/traces, protobuf bodies decoded with
opentelemetry-proto's ExportTraceServiceRequest into plain dicts (one per span)."""

from __future__ import annotations

import gzip
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tolstoy import tracing


def _value(any_value) -> object:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def _attributes(pairs) -> dict:
    return {pair.key: _value(pair.value) for pair in pairs}


class Receiver:
    """Spans received, as dicts: trace_id, span_id, parent_span_id (hex), name, kind, attributes, events
    ([{name, attributes}]), status ({code, message}), resource (attributes), start/end (ns), and ``raw``:
    the whole span as protobuf's JSON (what a secrets grep reads)."""

    def __init__(self):
        self.spans: list[dict] = []
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                receiver.take(body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append({
                        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex() or None, "name": span.name,
                        "kind": span.kind, "attributes": _attributes(span.attributes),
                        "events": [{"name": e.name, "attributes": _attributes(e.attributes)} for e in span.events],
                        "links": [{"trace_id": k.trace_id.hex(), "span_id": k.span_id.hex(),
                                   "attributes": _attributes(k.attributes)} for k in span.links],
                        "status": {"code": span.status.code, "message": span.status.message},
                        "resource": resource, "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
                        "scope": scope_spans.scope.name, "raw": MessageToDict(span),
                    })
        with self.lock:
            self.bodies.append(body)
            self.spans.extend(spans)

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "spans") -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; received {[s['name'] for s in self.spans]}")

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def exporting_env(receiver: Receiver) -> dict:
    """The standard variables that turn Tolstoy's traces on, exporting to ``receiver`` at once."""
    return {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_SERVICE_NAME": "tolstoy-test"}


def waterfall(spans: list[dict], title: str) -> str:
    """A trace as an HTML waterfall (the picture in docs/observability.md): a row per span, depth-first
    under its parent, with a bar from its start to its end and its main attributes."""
    import html

    by_parent: dict = {}
    ids = {s["span_id"] for s in spans}
    for span in spans:
        parent = span["parent_span_id"] if span["parent_span_id"] in ids else None
        by_parent.setdefault(parent, []).append(span)
    t0 = min(s["start"] for s in spans)
    t1 = max(s["end"] for s in spans)
    width = max(t1 - t0, 1)
    shown = ("tolstoy.step.kind", "tolstoy.step.attempt", "tolstoy.step.outcome", "tolstoy.call.retries",
             "http.response.status_code", "tolstoy.run.status", "process.pid")
    rows = []

    def walk(parent, depth):
        for span in sorted(by_parent.get(parent, []), key=lambda s: (s["start"], s["name"])):
            left = 100 * (span["start"] - t0) / width
            size = max(100 * (span["end"] - span["start"]) / width, 0.3)
            facts = {**{k: v for k, v in span["attributes"].items() if k in shown},
                     **({"pid": span["resource"]["process.pid"]} if span["name"].startswith("claim ") else {})}
            label = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in facts.items())
            kind = "call" if span["kind"] == 3 else "run" if span["name"].startswith("run ") else \
                "claim" if span["name"].startswith("claim ") else "step"
            sql = sum(1 for e in span["events"] if e["name"] == "sql")
            rows.append(
                f'<tr><td class="name" style="padding-left:{8 + 16 * depth}px">{html.escape(span["name"])}'
                f'<div class="facts">{html.escape(label)}{f" · {sql} SQL" if sql else ""}</div></td>'
                f'<td class="lane"><div class="bar {kind}" style="left:{left:.2f}%;width:{size:.2f}%"></div>'
                f'<span class="ms" style="left:{min(left + size, 88):.2f}%">'
                f'{(span["end"] - span["start"]) / 1e6:.1f} ms</span></td></tr>')
            walk(span["span_id"], depth + 1)

    walk(None, 0)
    return ("<!doctype html><meta charset=utf-8><style>"
            "body{font:13px system-ui,sans-serif;margin:16px;color:#1b1f24}h1{font-size:16px}"
            "table{border-collapse:collapse;width:1200px}td{border-bottom:1px solid #eceff3;padding:3px 6px}"
            ".name{width:420px;font-family:ui-monospace,monospace;white-space:nowrap}"
            ".facts{font:11px system-ui;color:#5b6573}.lane{position:relative}"
            ".bar{position:absolute;top:9px;height:12px;border-radius:3px}.run{background:#6b46c1}"
            ".claim{background:#a0aec0}.step{background:#3182ce}.call{background:#dd6b20}"
            ".ms{position:absolute;top:7px;font-size:11px;color:#5b6573;padding-left:4px}"
            f"</style><h1>{html.escape(title)}</h1><table>{''.join(rows)}</table>")


class InMemory:
    """Traces on in this process into memory (``in_memory``): ``finished`` spans, and ``started``: every
    span object the SDK made (its processors' on_start), exported or not."""

    def __init__(self):
        self.exporter = InMemorySpanExporter()
        self.started: list = []
        self.provider = TracerProvider()  # the SDK's defaults: parentbased_always_on
        started = self.started

        class Counting(SpanProcessor):
            def on_start(self, span, parent_context=None):
                started.append(span)

        self.processor = SimpleSpanProcessor(self.exporter)
        self.provider.add_span_processor(Counting())
        self.provider.add_span_processor(self.processor)

    @property
    def finished(self) -> list:
        return list(self.exporter.get_finished_spans())


def in_memory(monkeypatch) -> InMemory:
    """tolstoy.tracing set up on a provider of the test's own, as setup() would for a host's, until the test
    ends (monkeypatch puts it back): the process's global provider is left alone (it can be set once)."""
    found = InMemory()
    monkeypatch.setattr(tracing, "_provider", found.provider)
    monkeypatch.setattr(tracing, "_tracer", found.provider.get_tracer(tracing.SCOPE))
    monkeypatch.setattr(tracing, "_pid", os.getpid())
    monkeypatch.setattr(tracing, "_owned", False)  # a host's provider: the test process's heap is not frozen
    monkeypatch.setattr(tracing, "_direct", None)  # and its request spans are the SDK's
    monkeypatch.setattr(tracing, "ON", True)
    return found


def owned(monkeypatch) -> InMemory:
    """tolstoy.tracing set up as on its own provider (setup() with OTEL_TRACES_EXPORTER=otlp: request spans
    made directly, tracing.DirectSpans, handed to the exporting processor), exporting at once into memory
    instead of over OTLP; ``started`` counts the SDK's spans only, and a direct span is never one."""
    found = in_memory(monkeypatch)
    monkeypatch.setattr(tracing, "_frozen_pid", os.getpid())  # the test process's heap is not frozen
    tracing.own(found.provider, found.processor)  # _owned and _direct, put back by in_memory's monkeypatch
    assert tracing._direct is not None
    return found
