"""Traces of requests (tolstoy/tracing.py): off by default with no span made; a tracer provider the host
set is used and never replaced; under Gunicorn each worker process exports its own spans over OTLP/HTTP
(to a receiver on 127.0.0.1 that decodes the protobuf), joining the caller's trace from its
``traceparent``, named by route template, with status and organization, and none of what the request
carried (credentials, query, body)."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from falcon import testing
from opentelemetry.trace import SpanKind, StatusCode
from otlp import Receiver, exporting_env, in_memory, owned
from test_metrics import free_port, get

from tolstoy import tracing
from tolstoy.api.app import create_app

ROOT = Path(__file__).resolve().parents[2]
PLANTED = "planted-secret-3d9f1c"
# GET /tools/{id}'s one round trip, as its span tells it (tracing.SqlTally): the tenant (enter_known once it
# was verified), the quota when there is one, then the tool.
ONE_GET = re.compile(r"^session\.enter(_known)?\+([a-z_]+\.[a-z_]+\+)*tools\.get x1 \d+\.\d{3}ms$")


def test_traces_are_off_by_default_and_no_span_is_made(monkeypatch, api, org, user, worker, server, client):
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    tracing.reset()
    assert tracing.setup() is False and not tracing.ON
    # No tracer at all: any span the code tried to make would raise, failing the request or the run.
    assert tracing._tracer is None
    server.expect_request("/x").respond_with_json({"ok": True})
    flow = api.flow(org, steps=[{"id": "call", "type": "http_request",
                                 "config": {"method": "GET", "url": server.url_for("/x")}}])
    started = client.simulate_post(f"/flows/{flow['id']}/execute", json={}, headers=api.headers(org, user))
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        run = client.simulate_get(f"/flows/{flow['id']}/executions/{started.json['executionId']}",
                                  headers=api.headers(org)).json
        if run["status"] in ("completed", "failed"):
            break
        time.sleep(0.05)
    assert run["status"] == "completed", run
    # Nor is a trace context sent.
    assert all("traceparent" not in request.headers for request, _ in server.log)


HOST = textwrap.dedent("""
    import json, os
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    host = TracerProvider()
    host.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(host)
    from tolstoy import tracing

    on = tracing.setup()
    with tracing.span("step x", {"tolstoy.step.id": "x"}):
        pass
    tracing.end_run("0193a3c4-1d2e-7000-8000-000000000001", flow_id="f", version=1, org_id="o",
                    status="completed", started=None)
    print(json.dumps({"on": on, "kept": trace.get_tracer_provider() is host,
                      "spans": [s.name for s in exporter.get_finished_spans()]}))
""")


def test_a_host_tracer_provider_is_used_and_never_replaced():
    # Asked for OTLP too: the host's provider still wins (nothing is sent to the unreachable endpoint).
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-c", HOST], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"on": True, "kept": True, "spans": ["step x", "run f"]}


@pytest.mark.parametrize("environ, on", [
    ({}, False),
    ({"OTEL_TRACES_EXPORTER": "none"}, False),
    ({"OTEL_TRACES_EXPORTER": "console,otlp"}, True),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
])
def test_the_standard_variables_turn_traces_on(environ, on):
    assert tracing.requested(environ) is on


def request(port: int, method: str, path: str, headers: dict, body: bytes | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status


@pytest.fixture
def traced_gunicorn(database_url, tmp_path):
    port = free_port()
    with Receiver() as receiver:
        env = {**os.environ, "DATABASE_URL": database_url, "PORT": str(port), "WEB_CONCURRENCY": "2",
               "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), **exporting_env(receiver)}
        with open(tmp_path / "out.log", "w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "tolstoy.api.app:get_app()"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if get(port, "/health")[0] == 200:
                        break
                except OSError:
                    time.sleep(0.1)
            else:
                pytest.fail("gunicorn did not start: " + (tmp_path / "out.log").read_text())
            yield port, receiver
        finally:
            process.terminate()
            process.wait(timeout=30)


def test_each_gunicorn_worker_exports_request_spans_in_the_callers_trace(traced_gunicorn, api, org):
    port, receiver = traced_gunicorn
    tool = api.tool(org)
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {"X-Org-ID": org["id"], "traceparent": f"00-{caller_trace}-{caller_span}-01",
               "Authorization": f"Bearer {PLANTED}-auth", "X-Api-Key": f"{PLANTED}-key"}
    # Until both workers answered (the second may still be loading the app on a busy machine).
    deadline = time.monotonic() + 60
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        while time.monotonic() < deadline:
            statuses = list(pool.map(lambda _: request(port, "GET", f"/tools/{tool['id']}?q={PLANTED}-query", headers),
                                     range(8)))
            assert set(statuses) == {200}
            spans = receiver.spans
            if len({s["resource"]["process.pid"] for s in spans if s["name"] == "GET /tools/{id}"}) == 2:
                break
    assert request(port, "POST", "/tools", {**headers, "Content-Type": "application/json"},
                   json.dumps({"name": f"{PLANTED}-body", "baseUrl": "https://example.com"}).encode()) in (201, 400)
    spans = receiver.wait_for(lambda got: any(s["name"] == "POST /tools" for s in got), what="the POST's span")
    gets = [s for s in spans if s["name"] == "GET /tools/{id}"]
    assert len({s["resource"]["process.pid"] for s in gets}) == 2, "each worker sets up its own exporter"
    for span in gets:
        assert span["trace_id"] == caller_trace and span["parent_span_id"] == caller_span
        assert span["kind"] == 2  # SERVER
        assert span["attributes"]["http.route"] == "/tools/{id}"
        assert span["attributes"]["http.response.status_code"] == 200
        assert span["attributes"]["tolstoy.org.id"] == org["id"]
        assert span["resource"]["service.name"] == "tolstoy-test"
        # Its queries, by name and without parameters, counted on the span itself (not an event each).
        assert span["attributes"]["tolstoy.sql.round_trips"] == 1 and span["events"] == []
        assert ONE_GET.match(span["attributes"]["tolstoy.sql.queries"]), span["attributes"]["tolstoy.sql.queries"]
    exported = json.dumps([s["raw"] for s in spans]) + "".join(b.decode("latin-1") for b in receiver.bodies)
    assert PLANTED not in exported and org["id"] in exported


# What a traced GET /tools/{id} may make and export: one span, these attributes, no event. The export of
# each attribute and event is most of what traces cost a request (docs/observability.md, Cost): counted
# here, so a new one is a decision, not a drift.
GET_ATTRIBUTES = {"http.request.method", "http.route", "http.response.status_code", "tolstoy.org.id",
                  "tolstoy.sql.round_trips", "tolstoy.sql.ms", "tolstoy.sql.queries"}


# Under a host's provider, the SDK's spans; under Tolstoy's own, spans made directly (tracing.DirectSpans).
PROVIDERS = {"host": in_memory, "own": owned}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_traced_get_makes_one_span_with_its_round_trips_counted_and_no_event(monkeypatch, config, app_db, api,
                                                                                 org, provider):
    tool = api.tool(org)
    traced = PROVIDERS[provider](monkeypatch)
    client = testing.TestClient(create_app(config, app_db))  # built with traces on: RequestSpans first
    before = app_db.counts.snapshot()
    for _ in range(20):
        assert client.simulate_get(f"/tools/{tool['id']}", headers=api.headers(org)).status_code == 200
    round_trips = app_db.counts.snapshot()["round_trips"] - before["round_trips"]
    spans = traced.finished
    assert len(spans) == 20 and len(traced.started) == (20 if provider == "host" else 0)
    for span in spans:
        assert span.name == "GET /tools/{id}" and span.events == () and set(span.attributes) == GET_ATTRIBUTES
        assert span.kind == SpanKind.SERVER and span.parent is None and span.status.status_code == StatusCode.UNSET
        assert span.attributes["http.response.status_code"] == 200 and span.attributes["tolstoy.org.id"] == org["id"]
        assert 0 < span.start_time <= span.end_time and span.resource is traced.provider.resource
        assert ONE_GET.match(span.attributes["tolstoy.sql.queries"]), span.attributes["tolstoy.sql.queries"]
    assert sum(span.attributes["tolstoy.sql.round_trips"] for span in spans) == round_trips == 20


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_request_whose_caller_did_not_sample_it_makes_no_span(monkeypatch, config, app_db, api, org, provider):
    tool = api.tool(org)
    traced = PROVIDERS[provider](monkeypatch)
    client = testing.TestClient(create_app(config, app_db))
    unsampled = {**api.headers(org), "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}
    for _ in range(5):
        assert client.simulate_get(f"/tools/{tool['id']}", headers=unsampled).status_code == 200
    assert traced.started == [] and traced.finished == []
    # Nor does its tally outlive it: the next, sampled, request counts its own round trip only.
    assert client.simulate_get(f"/tools/{tool['id']}", headers=api.headers(org)).status_code == 200
    [span] = traced.finished
    assert span.attributes["tolstoy.sql.round_trips"] == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_request_without_traceparent_starts_its_own_trace_whatever_span_is_current(monkeypatch, config, app_db,
                                                                                       api, org, provider):
    tool = api.tool(org)
    traced = PROVIDERS[provider](monkeypatch)
    client = testing.TestClient(create_app(config, app_db))
    with traced.provider.get_tracer("host").start_as_current_span("host work") as host:
        assert client.simulate_get(f"/tools/{tool['id']}", headers=api.headers(org)).status_code == 200
    [request] = [s for s in traced.finished if s.name == "GET /tools/{id}"]
    assert request.parent is None and request.context.trace_id != host.get_span_context().trace_id


def test_under_tolstoys_provider_a_request_joins_its_callers_trace_and_a_run_it_queues_keeps_its_span(
        monkeypatch, config, app_db, api, org, user, db):
    traced = owned(monkeypatch)
    client = testing.TestClient(create_app(config, app_db))
    flow = api.flow(org)
    sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    started = client.simulate_post(f"/flows/{flow['id']}/execute", json={},
                                   headers={**api.headers(org, user), "traceparent": sent})
    assert started.status_code == 202, started.text
    [span] = [s for s in traced.finished if s.name.startswith("POST ")]
    assert span.name == "POST /flows/{id}/execute"
    assert span.context.trace_id == 0x4bf92f3577b34da6a3ce929d0e0e4736 and span.context.trace_flags.sampled
    assert span.parent.span_id == 0x00f067aa0ba902b7 and span.parent.is_remote
    # The run is queued under the request's own span (tracing.caller), in the caller's trace.
    with db.pool.connection() as conn:
        kept = conn.execute("select trace_parent from flow_runs where id = %s",
                            (started.json["executionId"],)).fetchone()["trace_parent"]
    assert kept == f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"


def test_under_tolstoys_provider_a_failed_request_fails_its_span_and_the_sampler_is_asked(monkeypatch, config,
                                                                                          app_db, api, org):
    tool = api.tool(org)
    traced = owned(monkeypatch)
    client = testing.TestClient(create_app(config, app_db))
    with monkeypatch.context() as broken:
        broken.setattr(app_db, "unit", lambda *args, **kwargs: 1 / 0)
        assert client.simulate_get(f"/tools/{tool['id']}", headers=api.headers(org)).status_code == 500
    [span] = traced.finished
    assert span.status.status_code == StatusCode.ERROR and span.attributes["http.response.status_code"] == 500
    # OTEL_TRACES_SAMPLER is the provider's sampler, asked for each request: always_off makes nothing.
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    quiet = owned(monkeypatch)
    client = testing.TestClient(create_app(config, app_db))
    assert client.simulate_get(f"/tools/{tool['id']}", headers=api.headers(org)).status_code == 200
    assert quiet.finished == []


def test_a_span_limit_that_could_cut_a_requests_attributes_leaves_request_spans_to_the_sdk(monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider

    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "16")
    assert tracing.DirectSpans.for_provider(TracerProvider(), None) is None
    monkeypatch.delenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT")
    assert tracing.DirectSpans.for_provider(TracerProvider(), None) is not None
    for limit in ("0", "8"):  # 0 keeps no attribute at all
        monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", limit)
        assert tracing.DirectSpans.for_provider(TracerProvider(), None) is None, limit
