"""Outbound HTTP for the engine and action execution (httpx), guarded against
server-side request forgery, oversized answers and calls that never end.

Every connection goes through ``GuardedBackend``, httpcore's network backend
for this client: it resolves the hostname once, refuses the connection when any
address is not public (``address_allowed``), and connects to the very address
it checked. The URL keeps the hostname, so httpcore pools connections per
hostname and TLS verifies the certificate (and sends SNI) for that name.

Each call runs under ``limits(deadline, cancel)``: every read and write on the
socket waits at most until the deadline, and returns at once when the cancel
event is set, so a tool that trickles a byte every few seconds, or a cancelled
run, cannot hold a call past its step's time.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import certifi
import httpcore
import httpx
from httpcore._backends.sync import SyncBackend

from .. import jsonsafe
from ..redaction import mask_headers

MAX_RESPONSE_BYTES = 10 * 1024 * 1024
MAX_REDIRECTS = 5


class OutboundError(Exception):
    """A request could not be made or completed; ``retryable`` tells transient failures apart."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class ForbiddenTarget(OutboundError):
    """The target resolves to an address requests may not reach (loopback, private, metadata…)."""


class CallCancelled(OutboundError):
    """The run was cancelled (or its lease lost) while the call was in flight."""


def parse_networks(cidrs: Iterable[str]) -> tuple:
    """``TOLSTOY_ALLOW_NETWORKS`` (already validated by config) as ip_network objects."""
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def address_allowed(address: str, allow: Iterable) -> bool:
    """Public unicast addresses are allowed; anything else only inside an allowed network."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if any(ip in network for network in allow):
        return True
    return ip.is_global and not ip.is_multicast


@functools.cache
def tls_context() -> ssl.SSLContext:
    """Mozilla's CA bundle (certifi, as httpx uses by default), loaded once per process:
    each load costs tens of milliseconds."""
    return ssl.create_default_context(cafile=certifi.where())


# ---- deadline and cancel, per call -------------------------------------------------

@dataclass(frozen=True)
class _Limits:
    deadline: float  # time.monotonic()
    cancel: threading.Event | None


_limits: contextvars.ContextVar[_Limits | None] = contextvars.ContextVar("tolstoy_call_limits", default=None)
# How often a blocked read or write looks at the cancel event.
CANCEL_CHECK_SECONDS = 0.25


@contextlib.contextmanager
def limits(deadline: float, cancel: threading.Event | None = None) -> Iterator[None]:
    """Socket operations in this block end by ``deadline`` (monotonic) or when ``cancel`` is set."""
    token = _limits.set(_Limits(deadline, cancel))
    try:
        yield
    finally:
        _limits.reset(token)


def _wait_budget(timeout: float | None, kind: type[Exception], poll: bool = True) -> float:
    """The socket timeout for the next operation: the phase's own, bounded by the deadline (and,
    with ``poll``, short enough to look at the cancel event again soon)."""
    current = _limits.get()
    if current is None:
        return timeout
    if current.cancel is not None and current.cancel.is_set():
        raise CallCancelled("The call was cancelled")
    left = current.deadline - time.monotonic()
    if left <= 0:
        raise kind("The step's deadline passed")
    budget = left if timeout is None else min(timeout, left)
    return min(budget, CANCEL_CHECK_SECONDS) if poll and current.cancel is not None else budget


class _LimitedStream(httpcore.NetworkStream):
    """A socket stream whose reads and writes obey the call's deadline and cancel event."""

    def __init__(self, inner: httpcore.NetworkStream):
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        while True:
            budget = _wait_budget(timeout, httpcore.ReadTimeout)
            try:
                return self.inner.read(max_bytes, budget)
            except httpcore.ReadTimeout:
                if timeout is not None and budget >= timeout:
                    raise  # the phase's own timeout, not just a look at the cancel event
                if timeout is not None:
                    timeout -= budget

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, _wait_budget(timeout, httpcore.WriteTimeout, poll=False))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        budget = _wait_budget(timeout, httpcore.ConnectTimeout, poll=False)
        return _LimitedStream(self.inner.start_tls(ssl_context, server_hostname, budget))

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class GuardedBackend(SyncBackend):
    """Resolves each hostname once, refuses addresses requests may not reach, and connects to
    the address it checked (so DNS cannot change between the check and the connection)."""

    def __init__(self, allow: tuple = ()):
        self.allow = allow

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable | None = None) -> httpcore.NetworkStream:
        budget = _wait_budget(timeout, httpcore.ConnectTimeout, poll=False)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"Cannot resolve {host}: {exc.strerror}") from None
        addresses = [info[4][0] for info in infos]
        refused = [a for a in addresses if not address_allowed(a, self.allow)]
        if refused:
            raise ForbiddenTarget(
                f"Refusing to connect to {host} ({refused[0]}): not a public address. "
                "Add its network to TOLSTOY_ALLOW_NETWORKS to allow it."
            )
        stream = super().connect_tcp(addresses[0], port, budget, local_address, socket_options)
        return _LimitedStream(stream)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport on httpcore's pool, with every connection made by GuardedBackend."""

    def __init__(self, allow: tuple = ()):
        super().__init__(verify=tls_context())
        self._pool = httpcore.ConnectionPool(ssl_context=tls_context(), max_connections=100,
                                             max_keepalive_connections=20, keepalive_expiry=5.0,
                                             network_backend=GuardedBackend(allow))


@dataclass
class Reply:
    """What a step or an action call got back."""

    status: int
    headers: dict
    body: Any
    duration_ms: int

    def as_output(self) -> dict:
        """The step output templates see: ``{status, headers, body}`` (secret headers masked)."""
        return {"status": self.status, "headers": mask_headers(self.headers), "body": self.body}


class Outbound:
    """The one HTTP client the engine uses."""

    def __init__(self, allow_networks: Iterable[str] = ()):
        self.client = httpx.Client(
            transport=GuardedTransport(allow=parse_networks(allow_networks)),
            # Redirects are followed by request(), which decides what a new origin may see.
            follow_redirects=False,
            headers={"User-Agent": "Tolstoy/1"},
        )

    def close(self) -> None:
        """Close pooled connections."""
        self.client.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict | None = None,
        params: dict | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        data: dict | None = None,
        timeout_ms: int = 30000,
        secret_headers: Iterable[str] = (),
        cancel: threading.Event | None = None,
    ) -> Reply:
        """Send one request, following up to MAX_REDIRECTS redirects (each hop re-checked by the
        backend; credentials dropped when a hop leaves the origin). The whole call, redirects and
        body included, ends within ``timeout_ms``; network trouble and timeouts raise
        OutboundError(retryable=True)."""
        started = time.perf_counter()
        with limits(time.monotonic() + timeout_ms / 1000, cancel):
            return self._request(method, url, headers, params, json_body, content, data, timeout_ms,
                                 secret_headers, started)

    def _request(self, method, url, headers, params, json_body, content, data, timeout_ms, secret_headers,
                 started) -> Reply:
        headers = dict(headers or {})
        body: dict = {}
        if json_body is not None:
            body["json"] = json_body
        elif content is not None:
            body["content"] = content
        elif data is not None:
            body["data"] = data
        secret = {name.lower() for name in secret_headers} | {"authorization", "cookie", "proxy-authorization"}
        try:
            for _ in range(MAX_REDIRECTS + 1):
                with self.client.stream(method, url, headers=headers, params=params,
                                        timeout=timeout_ms / 1000, **body) as response:
                    location = response.headers.get("location")
                    if response.is_redirect and location:
                        target = response.url.join(location)
                        if (target.scheme, target.host, target.port) != \
                                (response.url.scheme, response.url.host, response.url.port):
                            headers = {k: v for k, v in headers.items() if k.lower() not in secret}
                        if response.status_code == 303 or (response.status_code in (301, 302)
                                                           and method not in ("GET", "HEAD")):
                            method, body = "GET", {}
                        url, params = str(target), None
                        continue
                    return Reply(
                        status=response.status_code,
                        headers=dict(response.headers),
                        body=decode_body(read_capped(response), response.headers.get("content-type", "")),
                        duration_ms=int((time.perf_counter() - started) * 1000),
                    )
            raise OutboundError(f"More than {MAX_REDIRECTS} redirects")
        except OutboundError:
            raise
        except httpx.TimeoutException:
            raise OutboundError(f"Timed out after {timeout_ms} ms", retryable=True) from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise OutboundError(f"Invalid URL {url!r}: {exc}") from None
        except httpx.TransportError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, OutboundError):  # raised inside the backend (refused, cancelled)
                raise cause from None
            raise OutboundError(f"Network error: {exc}", retryable=True) from None
        except (TypeError, ValueError, UnicodeError) as exc:
            # e.g. a header value that is not text, or not ASCII: the request cannot be built.
            raise OutboundError(f"Cannot build the request: {exc}") from None


def read_capped(response: httpx.Response) -> bytes:
    """The response body, refused past MAX_RESPONSE_BYTES."""
    raw = bytearray()
    for chunk in response.iter_bytes():
        raw += chunk
        if len(raw) > MAX_RESPONSE_BYTES:
            raise OutboundError(f"Response body is larger than {MAX_RESPONSE_BYTES} bytes")
    return bytes(raw)


def decode_body(raw: bytes, content_type: str) -> Any:
    """JSON bodies become JSON values; anything else is text (bytes as replacement characters).

    What PostgreSQL's jsonb cannot hold must not reach it (the reply is logged): NUL and
    unpaired surrogates become U+FFFD; NaN, Infinity, out-of-range numbers and JSON too
    deep to parse keep the body as text."""
    text = jsonsafe.storable_text(raw)
    if "json" in content_type.lower() and text.strip():
        try:
            return jsonsafe.storable(jsonsafe.loads(text))
        except (ValueError, RecursionError):
            return text
    return text


def retryable_status(status: int) -> bool:
    """429 and 5xx may succeed on a later attempt; other 4xx will not."""
    return status == 429 or status >= 500
