"""Outbound HTTP for the engine and action execution (httpx), guarded against
server-side request forgery, oversized answers and calls that never end.

Every connection goes through ``GuardedBackend``, httpcore's network backend
for this client: it resolves the hostname once, refuses the connection when any
address is not public (``address_allowed``: ``DENIED_NETWORKS``, checked for the
address and for any IPv4 address it embeds), and connects to the very address
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
import logging
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import certifi
import httpcore
import httpx
from httpcore._backends.sync import SyncBackend

from .. import jsonsafe
from ..numerals import unsigned
from ..redaction import mask_headers

log = logging.getLogger("tolstoy.outbound")

MAX_RESPONSE_BYTES = 10 * 1024 * 1024
MAX_REDIRECTS = 5


class OutboundError(Exception):
    """A request could not be made or completed; ``retryable`` tells transient failures apart."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class TimedOut(OutboundError):
    """The request did not complete within its timeout."""


class ForbiddenTarget(OutboundError):
    """The target resolves to an address requests may not reach (loopback, private, metadata…)."""


def refusal(host: str) -> str:
    """What a tenant is told when a connection is refused: the host as it was given and the rule,
    never the address it resolved to, nor whether it resolved at all (a name of the operator's
    internal network resolves, to a private address; a made-up one does not: telling them apart
    would let a tenant list the internal names one guess at a time)."""
    return (f"Refusing to connect to {host}: it is not a public address (or does not resolve). "
            "The operator may allow its network with TOLSTOY_ALLOW_NETWORKS.")


class CallCancelled(OutboundError):
    """The run was cancelled (or its lease lost) while the call was in flight."""


def parse_networks(cidrs: Iterable[str]) -> tuple:
    """``TOLSTOY_ALLOW_NETWORKS`` (already validated by config) as ip_network objects."""
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


# Where requests may not go: every block of the IANA IPv4 and IPv6 Special-Purpose Address
# Registries (RFC 6890 and later) whose "Globally Reachable" is False, plus multicast, the
# deprecated site-local and IPv4-compatible IPv6 forms and the deprecated 6to4 relay anycast.
# The IPv6 forms that carry an IPv4 address (IPv4-mapped, NAT64 64:ff9b::/96, 6to4, Teredo)
# are not listed: they are judged by the IPv4 addresses they carry (``embedded_ipv4``). The
# NAT64 local-use prefix and IPv4-compatible addresses are listed and unwrapped, so they pass
# only through TOLSTOY_ALLOW_NETWORKS.
DENIED_NETWORKS = tuple(ipaddress.ip_network(cidr) for cidr in (
    # IANA IPv4 Special-Purpose Address Registry
    "0.0.0.0/8",           # "this network"
    "10.0.0.0/8",          # private-use
    "100.64.0.0/10",       # shared address space (carrier-grade NAT)
    "127.0.0.0/8",         # loopback
    "169.254.0.0/16",      # link-local (cloud metadata services live here)
    "172.16.0.0/12",       # private-use
    "192.0.0.0/24",        # IETF protocol assignments (its PCP and TURN anycast /32s too)
    "192.0.2.0/24",        # documentation TEST-NET-1
    "192.88.99.0/24",      # 6to4 relay anycast (deprecated, RFC 7526)
    "192.168.0.0/16",      # private-use
    "198.18.0.0/15",       # benchmarking
    "198.51.100.0/24",     # documentation TEST-NET-2
    "203.0.113.0/24",      # documentation TEST-NET-3
    "224.0.0.0/4",         # multicast (IANA IPv4 Multicast Address Space Registry)
    "240.0.0.0/4",         # reserved
    "255.255.255.255/32",  # limited broadcast
    # IANA IPv6 Special-Purpose Address Registry
    "::/128",              # unspecified
    "::1/128",             # loopback
    "::/96",               # IPv4-compatible (deprecated, RFC 4291; not in the registry)
    "64:ff9b:1::/48",      # NAT64 local-use prefix (RFC 8215): an operator's own translator
    "100::/64",            # discard-only
    "100:0:0:1::/64",      # dummy prefix (RFC 9780)
    "2001:2::/48",         # benchmarking
    "2001:10::/28",        # ORCHID (deprecated)
    "2001:db8::/32",       # documentation
    "3fff::/20",           # documentation (RFC 9637)
    "5f00::/16",           # SRv6 segment identifiers (RFC 9602)
    "fc00::/7",            # unique-local
    "fe80::/10",           # link-local
    "fec0::/10",           # site-local (deprecated, RFC 3879; not in the registry)
    "ff00::/8",            # multicast (IANA IPv6 Multicast Address Space Registry)
))

_IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_6TO4 = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")


def embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses a connection to this IPv6 address ends up at, by its form; () for
    any other address. IPv4-mapped and IPv4-compatible (RFC 4291) and NAT64 (RFC 6052, and
    RFC 8215's local-use prefix taken as a /96) carry it in the last 32 bits; 6to4 (RFC 3056)
    in bits 16-48; Teredo (RFC 4380) carries its server in bits 32-64 and its client,
    inverted, in the last 32 bits: both are returned."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return ()
    bits = int(ip)
    last32 = ipaddress.IPv4Address(bits & 0xFFFFFFFF)
    if ip in _IPV4_MAPPED or ip in _IPV4_COMPATIBLE or any(ip in prefix for prefix in _NAT64):
        return (last32,)
    if ip in _6TO4:
        return (ipaddress.IPv4Address((bits >> 80) & 0xFFFFFFFF),)
    if ip in _TEREDO:
        return (ipaddress.IPv4Address((bits >> 64) & 0xFFFFFFFF), ipaddress.IPv4Address(~bits & 0xFFFFFFFF))
    return ()


def address_allowed(address: str, allow: Iterable) -> bool:
    """Whether requests may connect to ``address``.

    An address inside an allowed network (``TOLSTOY_ALLOW_NETWORKS``) is allowed, and so is an
    IPv6 address whose embedded IPv4 addresses all are. Otherwise the address and every IPv4
    address it embeds must lie outside DENIED_NETWORKS: ``64:ff9b::a9fe:a9fe`` (NAT64) and
    ``2002:a9fe:a9fe::1`` (6to4) are refused as 169.254.169.254 is."""
    allow = tuple(allow)
    ip = ipaddress.ip_address(address)
    embedded = embedded_ipv4(ip)
    if _inside(ip, allow) or (embedded and all(_inside(inner, allow) for inner in embedded)):
        return True
    return not any(_inside(each, DENIED_NETWORKS) for each in (ip, *embedded))


def _inside(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: Iterable) -> bool:
    return any(ip in network for network in networks)


@functools.cache
def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """The context outbound TLS verifies certificates with: Mozilla's CA bundle (certifi, as
    httpx uses by default), or only the CAs in ``ca_file`` when given. Loaded once per process
    and file: each load costs tens of milliseconds."""
    return ssl.create_default_context(cafile=ca_file or certifi.where())


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


# Writes held back and sent together: httpcore writes a request's head and its body apart, and each write on
# loopback or a LAN is a segment the peer's stack (on loopback, this process's system time) handles alone.
COALESCE_BYTES = 64 * 1024


class _LimitedStream(httpcore.NetworkStream):
    """A socket stream whose reads and writes obey the call's deadline and cancel event, and whose writes
    go out together: a request's head and body (httpcore writes them apart) leave in one ``sendall`` when
    the response is first read, or as soon as COALESCE_BYTES are waiting (a large body streams)."""

    def __init__(self, inner: httpcore.NetworkStream):
        self.inner = inner
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.write_timeout: float | None = None

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self.pending:
            self._flush()
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
        if not buffer:
            return
        self.pending.append(buffer)
        self.pending_bytes += len(buffer)
        self.write_timeout = timeout
        if self.pending_bytes >= COALESCE_BYTES:
            self._flush()

    def _flush(self) -> None:
        data = b"".join(self.pending)
        self.pending, self.pending_bytes = [], 0
        self.inner.write(data, _wait_budget(self.write_timeout, httpcore.WriteTimeout, poll=False))

    def close(self) -> None:
        self.pending, self.pending_bytes = [], 0
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
            if exc.errno == socket.EAI_AGAIN:  # the resolver failed for now: a retry may do
                raise httpcore.ConnectError(f"Cannot resolve {host} now: {exc.strerror}") from None
            # No such name: refused as a private one is, in the same words (see refusal).
            log.warning("refused a connection to %s: it does not resolve (%s)", host, exc.strerror)
            raise ForbiddenTarget(refusal(host)) from None
        addresses = [info[4][0] for info in infos]
        refused = [a for a in addresses if not address_allowed(a, self.allow)]
        if refused:
            # The tenant learns the rule, not what its name resolved to (that would map the
            # operator's internal network); the operator reads the address in the log.
            carried = embedded_ipv4(ipaddress.ip_address(refused[0]))
            log.warning("refused a connection to %s: it resolved to %s%s, not a public address", host, refused[0],
                        f" (which reaches {', '.join(map(str, carried))})" if carried else "")
            raise ForbiddenTarget(refusal(host))
        stream = super().connect_tcp(addresses[0], port, budget, local_address, socket_options)
        return _LimitedStream(stream)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport on httpcore's pool, with every connection made by GuardedBackend."""

    def __init__(self, allow: tuple = (), ssl_context: ssl.SSLContext | None = None):
        ssl_context = ssl_context or tls_context()
        super().__init__(verify=ssl_context)
        self._pool = httpcore.ConnectionPool(ssl_context=ssl_context, max_connections=100,
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
    """The one HTTP client the engine uses. ``allow_networks``: CIDRs reachable although not
    public; ``ca_file``: trust only the CAs in this PEM file instead of certifi's bundle."""

    def __init__(self, allow_networks: Iterable[str] = (), ca_file: str | None = None):
        self.client = httpx.Client(
            transport=GuardedTransport(allow=parse_networks(allow_networks), ssl_context=tls_context(ca_file)),
            # Redirects are followed by request(), which decides what a new origin may see.
            follow_redirects=False,
            # Only the codings read_capped decodes under its cap (httpx would add br and zstd when
            # their packages happen to be installed, and decode those whole).
            headers={"User-Agent": "Tolstoy/1", "Accept-Encoding": ACCEPT_ENCODING},
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
        secrets: dict[str, str] | None = None,
        cancel: threading.Event | None = None,
        cross_origin_redirects: bool = True,
        follow_redirects: bool = True,
    ) -> Reply:
        """Send one request, following up to MAX_REDIRECTS redirects (each hop re-checked by the
        backend; credentials dropped when a hop leaves the origin). The whole call, redirects and
        body included, ends within ``timeout_ms``; network trouble and timeouts raise
        OutboundError(retryable=True). ``secrets`` maps placeholders in header values to what
        goes on the wire in their place; a header holding one is dropped like ``secret_headers``.
        ``cross_origin_redirects=False`` for a request whose body is a credential (an OAuth2 token
        request): a redirect to another origin is an OutboundError, never followed, since a 307 or
        308 would send the same body there. ``follow_redirects=False``: no redirect is followed at
        all; a 3xx is the reply (with its ``Location`` header), as for any other status."""
        started = time.perf_counter()
        with limits(time.monotonic() + timeout_ms / 1000, cancel):
            return self._request(method, url, headers, params, json_body, content, data, timeout_ms,
                                 secret_headers, secrets or {}, started, cross_origin_redirects, follow_redirects)

    def _request(self, method, url, headers, params, json_body, content, data, timeout_ms, secret_headers,
                 secrets, started, cross_origin_redirects, follow_redirects) -> Reply:
        headers = dict(headers or {})
        body: dict = {}
        if json_body is not None:
            body["json"] = json_body
        elif content is not None:
            body["content"] = content
        elif data is not None:
            body["data"] = data
        secret = {name.lower() for name in secret_headers} | {"authorization", "cookie", "proxy-authorization"}
        secret |= {name.lower() for name, value in headers.items() if any(p in str(value) for p in secrets)}
        try:
            for _ in range(MAX_REDIRECTS + 1):
                with self.client.stream(method, url, headers=fill_placeholders(headers, secrets), params=params,
                                        timeout=timeout_ms / 1000, **body) as response:
                    location = response.headers.get("location")
                    if response.is_redirect and location and follow_redirects:
                        target = response.url.join(location)
                        if origin_of(target) != origin_of(response.url):
                            if not cross_origin_redirects:
                                raise OutboundError(
                                    f"{origin_of(response.url)} answered {response.status_code} with a redirect to "
                                    f"another origin ({origin_of(target)}): not followed, since the request carries "
                                    "credentials in its body")
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
            raise TimedOut(f"Timed out after {timeout_ms} ms", retryable=True) from None
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


def origin_of(url: str | httpx.URL) -> str:
    """``scheme://host[:port]`` of a URL as a request to it goes: the host lower-case and in its
    ASCII (IDNA) form, the scheme's default port left out; two URLs may share credentials only when
    their origins are equal. ValueError for something that is not a URL."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(str(exc)) from None
    host = parsed.raw_host.decode("ascii").lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parsed.scheme}://{host}" + (f":{parsed.port}" if parsed.port is not None else "")


def fill_placeholders(headers: dict, secrets: dict[str, str]) -> dict:
    """Headers as sent: each placeholder replaced by its value (a new dict; ``headers`` keeps them)."""
    if not secrets:
        return headers
    filled = {}
    for name, value in headers.items():
        for stand_in, secret in secrets.items():
            if isinstance(value, str) and stand_in in value:
                value = value.replace(stand_in, secret)
        filled[name] = value
    return filled


def read_capped(response: httpx.Response, limit: int = MAX_RESPONSE_BYTES) -> bytes:
    """The response body, decoded from its Content-Encoding, refused past ``limit`` bytes while it
    streams in: what is read is decoded chunk by chunk into at most ``limit`` + 1 bytes per coding,
    so a small compressed answer (a gzip bomb, gzip inside gzip) is refused after producing that
    much, never expanded whole first, as httpx's own decoders would."""
    codings = [c.strip().lower() for c in response.headers.get_list("content-encoding", split_commas=True)]
    codings = [c for c in codings if c in _INFLATERS]
    length = unsigned(response.headers.get("content-length"), 19)
    if not codings and length is not None and length > limit:  # refused before a byte is read
        raise OutboundError(f"Response body is larger than {limit} bytes")
    if len(codings) > MAX_CODINGS:
        raise OutboundError(f"Response has {len(codings)} content codings; at most {MAX_CODINGS} are read")
    # Applied in reverse order of application (RFC 9110, section 8.4).
    inflaters = [_Inflater(coding, limit) for coding in reversed(codings)]
    raw = bytearray()
    for chunk in response.iter_raw():
        for inflater in inflaters:
            chunk = inflater.feed(chunk)
        raw += chunk
        if len(raw) > limit:
            raise OutboundError(f"Response body is larger than {limit} bytes")
    return bytes(raw)


MAX_CODINGS = 3
_INFLATERS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
ACCEPT_ENCODING = "gzip, deflate"  # what every request offers: exactly the codings of _INFLATERS


class _Inflater:
    """One content coding, undone with a bound on what it may produce in all."""

    def __init__(self, coding: str, limit: int):
        self.coding = coding
        self.limit = limit
        self.produced = 0
        self.inflater = zlib.decompressobj(_INFLATERS[coding])
        self.first = True

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        while data and not self.inflater.eof:
            try:
                piece = self.inflater.decompress(data, self.limit + 1 - self.produced)
            except zlib.error as exc:
                if self.first and self.coding == "deflate":  # raw deflate, without zlib's header
                    self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                    self.first = False
                    continue
                raise OutboundError(f"Cannot decode the {self.coding} response body: {exc}") from None
            self.first = False
            self.produced += len(piece)
            out += piece
            if self.produced > self.limit:
                raise OutboundError(f"Response body is larger than {self.limit} bytes")
            data = self.inflater.unconsumed_tail
        return bytes(out)


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
