"""A provider with a rate limit, on 127.0.0.1: it lets each token (its Authorization header) make
``limit`` requests per second (fixed one-second windows) and answers 429 beyond. What it says of
its limit is one of the forms the engine learns from (tolstoy/engine/ratelimits.py):

- ``plain``: nothing, except ``Retry-After`` on a 429 (Slack's form);
- ``github``: ``X-RateLimit-Limit``/``-Remaining``/``-Reset`` (epoch seconds) on every answer, and
  no Retry-After on a 429;
- ``ietf``: ``RateLimit-Policy: "default";q=<limit>;w=1`` and ``RateLimit: "default";r=…;t=…`` on
  every answer, and Retry-After on a 429.

It counts what it answered (per token), for the tests (tests/engine/test_rate_budgets.py) and the
bench (``python -m bench rate``)."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, defaultdict

from werkzeug.serving import make_server

STYLES = ("plain", "github", "ietf")


class RateStub:
    """The provider; ``start()`` serves it on an ephemeral port of 127.0.0.1 (``url``)."""

    def __init__(self, limit: int = 10, style: str = "ietf"):
        assert style in STYLES
        self.limit = limit
        self.style = style
        self.lock = threading.Lock()
        self.windows: Counter = Counter()  # (token, second) -> requests admitted
        self.accepted: dict[str, list[float]] = defaultdict(list)
        self.throttled = 0
        self.server = None
        self.thread = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def start(self) -> RateStub:
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def most_in_a_second(self) -> int:
        """The most requests any token had admitted within one window."""
        with self.lock:
            return max(self.windows.values(), default=0)

    def app(self, environ, start_response):
        token = environ.get("HTTP_AUTHORIZATION", "")
        now = time.time()
        second = int(now)
        with self.lock:
            used = self.windows[(token, second)]
            allowed = used < self.limit
            if allowed:
                self.windows[(token, second)] = used + 1
                self.accepted[token].append(now)
                used += 1
            else:
                self.throttled += 1
        remaining = max(self.limit - used, 0)
        headers = [("Content-Type", "application/json")]
        if self.style == "github":
            headers += [("X-RateLimit-Limit", str(self.limit)), ("X-RateLimit-Remaining", str(remaining)),
                        ("X-RateLimit-Reset", str(second + 1))]
        elif self.style == "ietf":
            headers += [("RateLimit-Policy", f'"default";q={self.limit};w=1'),
                        ("RateLimit", f'"default";r={remaining};t={max(math.ceil(second + 1 - now), 1)}')]
        if allowed:
            body = b'{"ok": true}'
            start_response("200 OK", headers + [("Content-Length", str(len(body)))])
            return [body]
        if self.style != "github":
            headers.append(("Retry-After", "1"))
        body = b'{"error": "rate limited"}'
        start_response("429 Too Many Requests", headers + [("Content-Length", str(len(body)))])
        return [body]
