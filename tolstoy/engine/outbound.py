"""Outbound HTTP for the engine and action execution (httpx), guarded against
server-side request forgery and oversized answers."""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import certifi
import httpx

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


class GuardedTransport(httpx.HTTPTransport):
    """Resolves each request's host once, refuses forbidden addresses, and connects to the
    checked address (so DNS cannot change between the check and the connection)."""

    def __init__(self, allow: tuple = (), **kwargs):
        super().__init__(**kwargs)
        self.allow = allow

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise OutboundError(f"Cannot resolve {host}: {exc.strerror}", retryable=True) from None
        addresses = [info[4][0] for info in infos]
        refused = [a for a in addresses if not address_allowed(a, self.allow)]
        if refused:
            raise ForbiddenTarget(
                f"Refusing to connect to {host} ({refused[0]}): not a public address. "
                "Add its network to TOLSTOY_ALLOW_NETWORKS to allow it."
            )
        if request.url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": host}
        original = request.url
        request.url = request.url.copy_with(host=addresses[0])
        try:
            return super().handle_request(request)
        finally:
            # The response keeps this request: redirects must resolve against the real name.
            request.url = original


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
            transport=GuardedTransport(allow=parse_networks(allow_networks), verify=tls_context()),
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
    ) -> Reply:
        """Send one request, following up to MAX_REDIRECTS redirects (each hop re-checked by the
        transport; credentials dropped when a hop leaves the origin). Network trouble and
        timeouts raise OutboundError(retryable=True)."""
        started = time.perf_counter()
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
        except httpx.TimeoutException:
            raise OutboundError(f"Timed out after {timeout_ms} ms", retryable=True) from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise OutboundError(f"Invalid URL {url!r}: {exc}") from None
        except httpx.TransportError as exc:
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
