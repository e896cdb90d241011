"""A call's request leaves in one write: httpcore writes a request's head and its body apart, and each
write is a segment the peer's network stack handles alone (on loopback, in the sender's system time:
half of a worker's CPU per run went to sending the call to the stub tool). tolstoy/engine/outbound.py's
stream holds writes until the response is read, or until COALESCE_BYTES wait."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
from httpcore._backends.sync import SyncStream
from support import serving

from tolstoy.engine import outbound
from tolstoy.engine.outbound import Outbound


@pytest.fixture
def echo() -> Iterator[str]:
    """A local HTTP server answering each POST with the length and digest of the body it read."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            answer = json.dumps({"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    with serving(Handler) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/echo"


@pytest.fixture
def writes(monkeypatch) -> list[int]:
    """The size of every write that reaches a socket."""
    sizes: list[int] = []
    write = SyncStream.write

    def counted(self, buffer, timeout=None):
        sizes.append(len(buffer))
        return write(self, buffer, timeout)

    monkeypatch.setattr(SyncStream, "write", counted)
    return sizes


def test_a_request_with_a_body_leaves_in_one_write(echo, writes):
    client = Outbound(("127.0.0.1/32",))
    try:
        for n in range(3):  # a new connection, then the pooled one
            body = {"n": n, "text": "x" * 500}
            reply = client.request("POST", echo, json_body=body, timeout_ms=5000)
            sent = json.dumps(body, separators=(",", ":")).encode()
            assert reply.body == {"length": len(sent), "sha256": hashlib.sha256(sent).hexdigest()}
    finally:
        client.close()
    assert len(writes) == 3, writes


def test_a_large_body_is_sent_whole_in_writes_no_larger_than_needed(echo, writes):
    payload = bytes(range(256)) * 1024  # 256 KiB
    client = Outbound(("127.0.0.1/32",))
    try:
        reply = client.request("POST", echo, content=payload, headers={"Content-Type": "application/octet-stream"},
                               timeout_ms=5000)
        assert reply.body == {"length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
        chunks = [payload[i:i + 100_000] for i in range(0, len(payload), 100_000)]
        reply = client.request("POST", echo, content=iter(chunks), timeout_ms=5000,
                               headers={"Content-Length": str(len(payload))})
        assert reply.body == {"length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    finally:
        client.close()
    # Held back only up to COALESCE_BYTES: a streamed body goes out as it comes, not all at the end.
    assert len(writes) >= 1 + len(chunks), writes
    assert sum(writes) > 2 * len(payload)
    assert all(size < len(payload) + outbound.COALESCE_BYTES for size in writes)
