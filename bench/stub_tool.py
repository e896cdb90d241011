"""The tool the benchmark's flows call: answers every request at once with a small JSON body."""

from __future__ import annotations

BODY = b'{"ok": true, "items": [1, 2, 3]}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    """Any method, any path: 200 and the same small JSON document."""
    start_response("200 OK", HEADERS)
    return [BODY]
