"""A soak with faults against the cluster of bench/cluster.py, then a Jepsen-style check.

    ops/cluster/up && .venv/bin/python -m bench.soak --minutes 10; ops/cluster/down

The driver runs in the cluster's client namespace. It serves two recorders
there: a tool server that records every request, its body and its
``Idempotency-Key`` (and, like a tool that honours keys, applies each key
once), and an event-webhook receiver that records every delivery. Through
Nginx it makes one organization with flows that call the tool server (action
steps, a delay, a foreach, a wait answered by a signal, a subflow), a signed
webhook trigger, a per-second schedule and an event webhook; then, for the
given minutes, executes flows, signals them, sends signed webhook requests,
reads and writes, while a fault schedule runs (bench/faults.py). After the
workload it waits for every run to finish and checks, from the recorders and
the database (bench/invariants.py), that nothing was lost or done twice.

Results: a table on stdout, ``bench/results/soak-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import json
import os
import random
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from bench import cluster
from bench.faults import FAULT_SETS, Faults

RESULTS = Path(__file__).resolve().parent / "results"
TOOL_PORT = 8081
RECEIVER_PORT = 8082


# ---- recorders ------------------------------------------------------------------------

class Recorder:
    """Every request a server got, in arrival order, under a lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.applied: dict[str, dict] = {}  # Idempotency-Key -> the answer it got first

    def serve(self, port: int, answer) -> ThreadingHTTPServer:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - the standard library's name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                payload = answer(recorder, self, body)
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a worker killed mid-call resets its connection: expected here, not worth a traceback

        server = Server((cluster.CLIENT.address, port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True, name=f"recorder-{port}").start()
        return server


def tool_answer(recorder: Recorder, handler, body: bytes) -> dict:
    """The tool: record the request; a key seen before gets its first answer again (one effect per key).
    It takes 0.1 to 0.8 s to answer, so faults often find a call in flight."""
    time.sleep(random.uniform(0.1, 0.8))
    key = handler.headers.get("Idempotency-Key")
    with recorder.lock:
        entry = {"t": time.time(), "path": handler.path, "key": key, "body": body.decode(errors="replace")}
        recorder.requests.append(entry)
        if key in recorder.applied:
            entry["replayed"] = True
            return recorder.applied[key]
        result = {"effect": len(recorder.applied) + 1, "key": key}
        if key is not None:
            recorder.applied[key] = result
        return result


def receiver_answer(recorder: Recorder, handler, body: bytes) -> dict:
    try:
        event = json.loads(body)
    except ValueError:
        event = {}
    with recorder.lock:
        recorder.requests.append({"t": time.time(), "delivery": handler.headers.get("X-Webhook-Delivery"),
                                  "event": event.get("id"), "type": event.get("type"),
                                  "execution": (event.get("data") or {}).get("executionId")})
    return {"ok": True}


# ---- the API client ---------------------------------------------------------------------

class Client:
    """Requests through Nginx; every answer recorded (time, route, status, Retry-After)."""

    def __init__(self, base: str):
        self.http = httpx.Client(base_url=base, timeout=httpx.Timeout(45.0, connect=5.0))
        self.lock = threading.Lock()
        self.answers: list[dict] = []
        self.headers: dict = {}

    def send(self, method: str, path: str, route: str, *, json_body=None, headers=None, content=None,
             retry_for: float = 0.0) -> httpx.Response | None:
        """One request, retried on 429/503/network errors for up to ``retry_for`` seconds (only for
        requests that are safe to repeat: reads, and writes with an Idempotency-Key)."""
        deadline = time.monotonic() + retry_for
        while True:
            started = time.time()
            try:
                answer = self.http.request(method, path, json=json_body, content=content,
                                           headers={**self.headers, **(headers or {})})
                status, retry_after = answer.status_code, answer.headers.get("Retry-After")
            except httpx.HTTPError as exc:
                answer, status, retry_after = None, 0, None
                error = type(exc).__name__
            else:
                error = None
            with self.lock:
                self.answers.append({"t": started, "done": time.time(), "method": method, "route": route,
                                     "status": status, "retryAfter": retry_after, "error": error})
            if status in (0, 429, 502, 503, 504) and time.monotonic() < deadline:
                wait = 1.0
                if retry_after and retry_after.isdigit():
                    wait = min(float(retry_after), 5.0)
                time.sleep(wait)
                continue
            return answer


# ---- the tenant's setup ---------------------------------------------------------------------

def setup(client: Client, settings: cluster.Settings) -> dict:
    """One organization, its user, tool, action, flows, triggers and event webhook."""
    def ok(answer, what):
        if answer is None or answer.status_code >= 300:
            raise SystemExit(f"soak: setting up {what} failed: "
                             f"{None if answer is None else (answer.status_code, answer.text[:300])}")
        return answer.json()

    org = ok(client.send("POST", "/organizations", "/organizations", json_body={"name": f"Soak {uuid.uuid4().hex[:6]}"},
                         headers={"Authorization": f"Bearer {settings.admin_token}"}, retry_for=30), "organization")
    client.headers = {"Authorization": f"Bearer {org['apiKey']}"}
    user = ok(client.send("POST", "/users", "/users", json_body={"email": "soak@example.com", "name": "Soak"}), "user")
    tool = ok(client.send("POST", "/tools", "/tools", json_body={
        "name": "Recorder", "baseUrl": f"http://{cluster.CLIENT.address}:{TOOL_PORT}", "authType": "none"}), "tool")
    action = ok(client.send("POST", "/actions", "/actions", json_body={
        "toolId": tool["id"], "name": "Record", "key": "recorder.effect", "method": "POST",
        "endpoint": "/effect"}), "action")

    def act(step_id: str, inputs: dict) -> dict:
        # The recorder honours keys, so a call whose outcome is unknown is simply sent again.
        return {"id": step_id, "type": "action", "onUnknownOutcome": "retry",
                "config": {"actionKey": action["key"], "inputs": inputs}}

    child = ok(client.send("POST", "/flows", "/flows", json_body={
        "name": "Soak child", "key": "soak-child", "steps": [act("c1", {"step": "c1", "n": "{{ variables.n }}"})]}),
        "child flow")
    main = ok(client.send("POST", "/flows", "/flows", json_body={"name": "Soak main", "steps": [
        act("s1", {"step": "s1", "n": "{{ variables.n }}"}),
        {"id": "pause", "type": "delay", "config": {"ms": 500}},
        {"id": "items", "type": "foreach", "config": {
            "items": [1, 2, 3], "concurrency": 2,
            "step": {"type": "action", "onUnknownOutcome": "retry",
                     "config": {"actionKey": action["key"], "inputs": {"step": "items", "item": "{{ item }}",
                                                                       "n": "{{ variables.n }}"}}}}},
        {"id": "gate", "type": "wait", "config": {"signal": "go", "timeoutMs": 3_600_000}},
        {"id": "sub", "type": "subflow", "config": {"flowKey": "soak-child", "variables": {"n": "{{ variables.n }}"}}},
        act("s2", {"step": "s2", "n": "{{ variables.n }}", "signal": "{{ steps.gate.token }}"}),
    ]}), "main flow")
    hooked = ok(client.send("POST", "/flows", "/flows", json_body={"name": "Soak hook", "steps": [
        act("h1", {"step": "h1", "order": "{{ variables.order }}"})]}), "hook flow")
    hook = ok(client.send("POST", f"/flows/{hooked['id']}/triggers", "/flows/{id}/triggers",
                          json_body={"type": "webhook"}), "webhook trigger")
    webhook = ok(client.send("POST", "/webhooks", "/webhooks", json_body={
        "name": "Soak receiver", "url": f"http://{cluster.CLIENT.address}:{RECEIVER_PORT}/events",
        "eventTypes": ["flow.started", "flow.completed", "flow.failed", "flow.cancelled"]}), "event webhook")
    # The per-second schedule belongs to a second organization, so the first one's event webhook (whose
    # deliveries go one at a time, in order) carries the runs the soak starts, not 2 events a second more.
    clock = ok(client.send("POST", "/organizations", "/organizations", json_body={"name": "Soak clock"},
                           headers={"Authorization": f"Bearer {settings.admin_token}"}, retry_for=30), "organization")
    clock_auth = {"Authorization": f"Bearer {clock['apiKey']}"}
    ticking = ok(client.send("POST", "/flows", "/flows", headers=clock_auth, json_body={"name": "Soak cron", "steps": [
        {"id": "t", "type": "transform", "config": {"output": {"at": "{{ variables.trigger.scheduledAt }}"}}}]}),
        "cron flow")
    schedule = ok(client.send("POST", f"/flows/{ticking['id']}/triggers", "/flows/{id}/triggers", headers=clock_auth,
                              json_body={"type": "schedule", "cron": "* * * * * *", "timezone": "UTC"}), "schedule")
    return {"org": org["id"], "user": user["id"], "tool": tool["id"], "action": action["id"],
            "flows": {"main": main["id"], "child": child["id"], "hook": hooked["id"], "cron": ticking["id"]},
            "hook": hook["id"], "hookSecret": hook["secret"], "webhook": webhook["id"],
            "cronOrg": clock["id"], "cronAuth": clock_auth, "schedule": schedule["id"]}


# ---- the workload -------------------------------------------------------------------------------

class Workload:
    def __init__(self, client: Client, tenant: dict, stop: threading.Event, execute_every: float):
        self.client = client
        self.tenant = tenant
        self.stop = stop
        self.execute_every = execute_every
        self.lock = threading.Lock()
        self.executes: list[dict] = []  # {n, key, executionId | None, status}
        self.signals: list[dict] = []
        self.hooks: list[dict] = []
        self.probes: list[dict] = []   # the writes that measure when the service takes writes again
        self.senders: list[threading.Thread] = []  # one per signal, retrying until it is stored

    def executor(self) -> None:
        main = self.tenant["flows"]["main"]
        n = 0
        while not self.stop.is_set():
            n += 1
            key = f"soak-execute-{n}"
            answer = self.client.send("POST", f"/flows/{main}/execute", "/flows/{id}/execute",
                                      json_body={"variables": {"n": n}},
                                      headers={"X-User-ID": self.tenant["user"], "Idempotency-Key": key},
                                      retry_for=120)
            run = answer.json().get("executionId") if answer is not None and answer.status_code == 202 else None
            with self.lock:
                self.executes.append({"n": n, "key": key, "executionId": run,
                                      "status": None if answer is None else answer.status_code})
            if run is not None:
                sender = threading.Thread(target=self.signal, args=(main, run, n), daemon=True)
                sender.start()
                with self.lock:
                    self.senders.append(sender)
            self.stop.wait(self.execute_every)

    def signal(self, flow: str, run: str, n: int) -> None:
        """Answer the run's wait step (sent at once: a signal before the wait is kept for it)."""
        time.sleep(random.uniform(0, 2))
        answer = self.client.send("POST", f"/flows/{flow}/executions/{run}/signals/go",
                                  "/flows/{id}/executions/{id}/signals/{signal}",
                                  json_body={"payload": {"token": f"go-{n}"}},
                                  headers={"Idempotency-Key": f"soak-signal-{n}"}, retry_for=300)
        with self.lock:
            self.signals.append({"executionId": run, "n": n, "status": None if answer is None else answer.status_code,
                                 "signalId": answer.json().get("signalId") if answer is not None
                                 and answer.status_code == 202 else None})

    def hooker(self) -> None:
        """Signed requests to the webhook trigger; a retry is signed again and keeps its delivery id."""
        n = 0
        while not self.stop.is_set():
            n += 1
            delivery = f"soak-hook-{n}"
            body = json.dumps({"order": n}).encode()
            deadline = time.monotonic() + 120
            while True:
                t = str(int(time.time()))
                signature = hmac.new(self.tenant["hookSecret"].encode(), t.encode() + b"." + body,
                                     hashlib.sha256).hexdigest()
                answer = self.client.send("POST", f"/hooks/{self.tenant['hook']}", "/hooks/{id}", content=body,
                                          headers={"Content-Type": "application/json",
                                                   "X-Tolstoy-Signature": f"t={t},v1={signature}",
                                                   "X-Tolstoy-Delivery": delivery})
                if (answer is None or answer.status_code in (429, 502, 503, 504)) and time.monotonic() < deadline:
                    time.sleep(1)
                    continue
                break
            run = (answer.json().get("executionId") if answer is not None and answer.status_code in (200, 202)
                   else None)
            with self.lock:
                self.hooks.append({"n": n, "delivery": delivery, "executionId": run,
                                   "status": None if answer is None else answer.status_code})
            self.stop.wait(3.0)

    def reader(self) -> None:
        """Reads and small writes that any tenant makes."""
        flows = self.tenant["flows"]
        n = 0
        while not self.stop.is_set():
            n += 1
            choice = n % 4
            if choice == 0:
                self.client.send("GET", "/flows?limit=10", "/flows", retry_for=60)
            elif choice == 1:
                self.client.send("GET", f"/flows/{flows['main']}/executions?limit=5", "/flows/{id}/executions",
                                 retry_for=60)
            elif choice == 2:
                self.client.send("GET", f"/tools/{self.tenant['tool']}", "/tools/{id}", retry_for=60)
            else:
                self.client.send("PATCH", f"/users/{self.tenant['user']}", "/users/{id}",
                                 json_body={"name": f"Soak {n}"}, retry_for=60)
            self.stop.wait(0.7)

    def prober(self) -> None:
        """A write every half second, not retried: when writes fail and when they work again."""
        while not self.stop.is_set():
            started = time.time()
            answer = self.client.send("PATCH", f"/tools/{self.tenant['tool']}", "/tools/{id}",
                                      json_body={"name": "Recorder"})
            with self.lock:
                self.probes.append({"t": started, "done": time.time(),
                                    "ok": answer is not None and answer.status_code == 200})
            self.stop.wait(0.5)

    def threads(self) -> list[threading.Thread]:
        return [threading.Thread(target=target, daemon=True, name=target.__name__)
                for target in (self.executor, self.hooker, self.reader, self.prober)]


# ---- draining -------------------------------------------------------------------------------------

def drain(db_url: str, tenant: dict, timeout: float) -> float:
    """Wait until no run of either organization is queued or running (waits are answered by now) and
    the event webhook's outbox is empty."""
    import psycopg

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with psycopg.connect(db_url, connect_timeout=5) as conn:
                busy = conn.execute(
                    "select (select count(*) from flow_runs where org_id in (%s, %s) and status in ('queued', 'running'))"
                    " + (select count(*) from webhook_deliveries where org_id = %s and state in ('pending', 'sending'))",
                    (tenant["org"], tenant["cronOrg"], tenant["org"])).fetchone()[0]
        except psycopg.Error:
            busy = -1
        if busy == 0:
            return time.monotonic() - started
        time.sleep(2)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the workload runs (default 10)")
    parser.add_argument("--faults", choices=sorted(FAULT_SETS), default="full",
                        help="the fault schedule: full (every fault, then a rolling restart) or short (CI)")
    parser.add_argument("--execute-every", type=float, default=2.0, help="seconds between executes")
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="seconds to wait for runs to finish")
    args = parser.parse_args(argv)
    if not cluster.namespaces():
        raise SystemExit("soak: no cluster (run ops/cluster/up first)")
    settings = cluster.Settings.load()
    # Everything from here on (threads, sockets, child processes) lives in the client host's namespace.
    cluster.enter(cluster.CLIENT)
    from bench import invariants

    tools, receiver = Recorder(), Recorder()
    servers = [tools.serve(TOOL_PORT, tool_answer), receiver.serve(RECEIVER_PORT, receiver_answer)]
    client = Client(cluster.API_URL)
    tenant = setup(client, settings)
    print(f"soak: organization {tenant['org']}; {args.minutes:g} min of workload, faults: {args.faults}",
          file=sys.stderr, flush=True)
    stop = threading.Event()
    workload = Workload(client, tenant, stop, args.execute_every)
    faults = Faults(settings, FAULT_SETS[args.faults], args.minutes * 60)
    started = time.time()
    threads = workload.threads()
    for thread in threads:
        thread.start()
    faults.run()  # returns when the schedule is done and the cluster is whole again
    remaining = started + args.minutes * 60 - time.time()
    if remaining > 0:
        stop.wait(remaining)
    stop.set()
    for thread in threads:
        thread.join(timeout=180)
    ended = time.time()
    # No new cron runs from here on: the schedule is switched off, then every run must finish.
    client.send("PATCH", f"/flows/{tenant['flows']['cron']}/triggers/{tenant['schedule']}", "/flows/{id}/triggers/{id}",
                json_body={"enabled": False}, headers=tenant["cronAuth"], retry_for=120)
    for sender in list(workload.senders):  # signals still being retried
        sender.join(timeout=max(1.0, ended + 300 - time.time()))
    db_url = settings.url("postgres", cluster.PRIMARY_PORT)
    drained = drain(db_url, tenant, args.drain_timeout)
    report = invariants.check(db_url=db_url, tenant=tenant, workload=workload, client=client, tools=tools,
                              receiver=receiver, faults=faults, started=started, ended=ended, drained=drained,
                              settings=settings, minutes=args.minutes, fault_set=args.faults)
    for server in servers:
        server.shutdown()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"soak-{dt.datetime.now(dt.UTC).strftime('%Y-%m-%dT%H%M')}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(invariants.table(report))
    print(f"soak: results in {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
