"""A trivial HTTP stub for step 2 of the workflow: every GET answers 200 ``{"ok": true}``.

Usage: ``python -m bench.peers.dbos_flows.stub PORT`` (listens on 127.0.0.1; keep-alive
supported). Any equivalent stub will do: the harness may bring its own.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b'{"ok": true}'


class Handler(BaseHTTPRequestHandler):
    """200 with a tiny JSON body; no logging."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
