"""Gunicorn's logger, writing JSON: its own messages, and one access line per
request with the request's id, route template and organization.

The Gunicorn master loads this module (``logger_class`` in gunicorn.conf.py),
so it imports neither Falcon nor the application: the app leaves what only it
knows in the WSGI environ (``ENV_ROUTE``, ``ENV_ORG``) for the access line.
"""

from __future__ import annotations

import functools
import ipaddress

from gunicorn.glogging import Logger as _GunicornBaseLogger

from ..jsonsafe import dumps
from ..logs import JsonFormatter
from ..numerals import unsigned
from ..redaction import redact_strings
from ..times import now_iso

# WSGI environ keys the app fills in for the access log line.
ENV_ROUTE = "tolstoy.route"
ENV_ORG = "tolstoy.org_id"


@functools.lru_cache(maxsize=1024)
def _is_trusted(address: str | None, trusted: tuple[str, ...]) -> bool:
    """A unix-socket peer (no address) is the local proxy; otherwise the address must lie in a
    trusted network. Cached: the same proxies and clients come back request after request."""
    if not address or "*" in trusted:
        return True
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(item, strict=False) for item in trusted)


def client_address(remote_addr: str | None, forwarded_for: str | None, trusted) -> str | None:
    """The client's address: X-Forwarded-For is believed only when the peer is a trusted proxy.

    Walks X-Forwarded-For from the right (the entries our proxies appended) and
    returns the first address that is not itself a trusted proxy.
    """
    trusted = tuple(trusted)
    if not forwarded_for or not _is_trusted(remote_addr, trusted):
        return remote_addr or None
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else (remote_addr or None)


class GunicornLogger(_GunicornBaseLogger):
    """Gunicorn's logger writing JSON: its own messages, and one access line per request with its id."""

    def setup(self, cfg) -> None:
        """Gunicorn's handlers, with the JSON formatter on each."""
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                # Only the handlers Gunicorn made (it marks them): one another party attached to its loggers
                # (a logconfig's, a test runner's capture) keeps the formatter it was given.
                if getattr(handler, "_gunicorn", False):
                    handler.setFormatter(JsonFormatter())
        # Read once per configuration, not per request (Gunicorn builds a new logger when it reloads).
        self.trusted = tuple(cfg.forwarded_allow_ips)

    def access(self, resp, req, environ, request_time) -> None:
        """The request line: ids, route, status, size, duration, client; never headers or the query string."""
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        request_id = None
        for name, value in resp.headers:
            if name.lower() == "x-request-id":
                request_id = value
        fields = {
            "requestId": request_id,
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "route": environ.get(ENV_ROUTE),
            "status": unsigned(str(status), 3) or status,
            "bytes": getattr(resp, "sent", None),
            "durationMs": round(request_time.total_seconds() * 1000, 2),
            "client": client_address(environ.get("REMOTE_ADDR"), environ.get("HTTP_X_FORWARDED_FOR"), self.trusted),
            "orgId": environ.get(ENV_ORG),
            "userAgent": environ.get("HTTP_USER_AGENT"),
        }
        message = f"{fields['method']} {fields['path']} {fields['status']}"
        try:
            streams = [getattr(handler, "stream", None) for handler in self.access_log.handlers]
            if not all(streams):  # syslog and the like: the logging module's way
                self.access_log.info("%s", message, extra={"fields": fields})
                return
            # One line a request is the hottest log path: written straight to the handlers' streams
            # in the JsonFormatter's shape, without building a LogRecord (a third of its cost), its
            # strings masked by one scan of them all (redact_strings) rather than one each.
            entry = {"time": now_iso(), "level": "info", "logger": self.access_log.name,
                     **redact_strings({"message": message, **fields})}
            line = dumps(entry).decode() + "\n"
            for handler, stream in zip(self.access_log.handlers, streams, strict=True):
                with handler.lock:
                    stream.write(line)
                    stream.flush()
        except Exception:  # a log line must never fail a request
            self.error("cannot write the access log line")
