"""The outbound guard: which addresses requests may reach (every IPv6 form that carries an
IPv4 address is judged by that address), and TLS that always verifies the hostname of the URL.

No database: these run against ``address_allowed`` and real local sockets only."""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme
from support import serving

from tolstoy.engine.outbound import (
    DENIED_NETWORKS,
    ForbiddenTarget,
    Outbound,
    OutboundError,
    address_allowed,
    embedded_ipv4,
    parse_networks,
)

PRIVATE_IPV4 = ("169.254.169.254", "10.0.0.1", "127.0.0.1")
TEREDO_SERVER = "65.54.227.120"  # public (RFC 4380's example server)


def _v6(prefix: str, value: int) -> str:
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Address(prefix)) | value))


def _forms(v4: str) -> dict[str, str]:
    """Every IPv6 form that reaches the IPv4 address ``v4``."""
    bits = int(ipaddress.IPv4Address(v4))
    server = int(ipaddress.IPv4Address(TEREDO_SERVER))
    return {
        "ipv4-mapped": f"::ffff:{v4}",
        "ipv4-compatible": _v6("::", bits),
        "nat64": _v6("64:ff9b::", bits),
        "nat64-local-use": _v6("64:ff9b:1::", bits),
        "6to4": _v6("2002::", (bits << 80) | 1),
        "teredo-client": _v6("2001::", (server << 64) | (~bits & 0xFFFFFFFF)),
        "teredo-server": _v6("2001::", (bits << 64) | (~server & 0xFFFFFFFF)),
    }


WRAPPED_PRIVATE = [(f"{form} of {v4}", address) for v4 in PRIVATE_IPV4 for form, address in _forms(v4).items()]


@pytest.mark.parametrize(("form", "address"), WRAPPED_PRIVATE, ids=[form for form, _ in WRAPPED_PRIVATE])
def test_every_ipv6_form_of_a_private_ipv4_is_refused(form, address):
    assert not address_allowed(address, ())


@pytest.mark.parametrize("address", [
    # The three from the issue: Python 3.11's is_global says True for each.
    "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "fec0::1",
    # IPv4 special-purpose registry, not globally reachable
    "0.0.0.0", "0.1.2.3", "10.1.2.3", "100.64.0.1", "100.127.255.254", "127.0.0.1", "169.254.169.254",
    "172.16.0.1", "172.31.255.255", "192.0.0.1", "192.0.0.170", "192.0.2.1", "192.88.99.1", "192.168.1.1",
    "198.18.0.1", "198.19.255.255", "198.51.100.7", "203.0.113.9", "224.0.0.1", "239.255.255.250",
    "240.0.0.1", "255.255.255.255",
    # IPv6 special-purpose registry, not globally reachable
    "::", "::1", "100::1", "100:0:0:1::1", "2001:2::1", "2001:10::1", "2001:db8::1", "2001:db8:ffff::1",
    "3fff::1", "3fff:fff::1", "5f00::1", "fc00::1", "fd12:3456::1", "fe80::1", "fe80::1%1", "febf::1",
    "fec0::1", "feff::1", "ff02::1", "ff05::1:3", "64:ff9b:1::808:808",
])
def test_special_purpose_addresses_are_refused(address):
    assert not address_allowed(address, ())


@pytest.mark.parametrize("address", [
    "8.8.8.8", "1.1.1.1", "93.184.215.14", "192.31.196.1", "192.175.48.1",
    "2606:4700:4700::1111", "2001:4860:4860::8888", "2a00:1450:4001:80b::200e",
    # Forms that carry a public IPv4 address reach that address.
    "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:0808:0808::1", "2002:0101:0101:1::1",
    _forms("8.8.8.8")["teredo-client"],
])
def test_public_addresses_are_allowed(address):
    assert address_allowed(address, ())


@pytest.mark.parametrize("network", DENIED_NETWORKS, ids=str)
def test_every_denied_network_is_refused_at_both_ends(network):
    for address in (network.network_address, network.broadcast_address):
        assert not address_allowed(str(address), ()), address


@pytest.mark.parametrize(("address", "embedded"), [
    ("::ffff:10.0.0.1", ["10.0.0.1"]),
    ("::a00:1", ["10.0.0.1"]),
    ("64:ff9b::a9fe:a9fe", ["169.254.169.254"]),
    ("64:ff9b:1::7f00:1", ["127.0.0.1"]),
    ("2002:a9fe:a9fe:1234::1", ["169.254.169.254"]),
    # RFC 4380's example: server 65.54.227.120, client 192.0.2.45 (stored inverted).
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", ["65.54.227.120", "192.0.2.45"]),
    ("2606:4700:4700::1111", []),
    ("10.0.0.1", []),
])
def test_embedded_ipv4_unwraps_each_form(address, embedded):
    assert [str(inner) for inner in embedded_ipv4(ipaddress.ip_address(address))] == embedded


@pytest.mark.parametrize(("address", "allow", "allowed"), [
    ("10.0.0.1", ["10.0.0.0/8"], True),
    ("2002:0a00:0001::1", ["10.0.0.0/8"], True),    # unwrapped address inside
    ("64:ff9b::a00:1", ["10.0.0.0/8"], True),
    ("::ffff:127.0.0.1", ["127.0.0.1/32"], True),
    ("fd00::5", ["fd00::/8"], True),                # literal address inside
    ("64:ff9b:1::808:808", ["64:ff9b:1::/48"], True),
    ("64:ff9b::a9fe:a9fe", ["10.0.0.0/8"], False),   # allowing one private network allows no other
    ("2002:a9fe:a9fe::1", ["10.0.0.0/8", "2001::/32"], False),
    ("fec0::1", ["fc00::/7"], False),
    # Teredo: both carried addresses must be allowed or public.
    (_v6("2001::", (int(ipaddress.IPv4Address("10.0.0.9")) << 64) | (~int(ipaddress.IPv4Address("169.254.169.254"))
                                                                      & 0xFFFFFFFF)), ["10.0.0.0/8"], False),
    (_v6("2001::", (int(ipaddress.IPv4Address("10.0.0.9")) << 64) | (~int(ipaddress.IPv4Address("10.0.0.8"))
                                                                      & 0xFFFFFFFF)), ["10.0.0.0/8"], True),
])
def test_allowed_networks_win_for_the_literal_or_the_unwrapped_address(address, allow, allowed):
    assert address_allowed(address, parse_networks(allow)) is allowed


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.settimeout(0.2)
    yield sock
    sock.close()


@pytest.mark.parametrize("host", ["[64:ff9b::7f00:1]", "[::ffff:127.0.0.1]", "[2002:7f00:1::1]", "[fec0::1]", "[::1]"])
def test_a_url_with_a_wrapped_loopback_address_is_refused_before_connecting(listener, host):
    port = listener.getsockname()[1]
    client = Outbound(())
    try:
        with pytest.raises(ForbiddenTarget, match="not a public address"):
            client.request("GET", f"http://{host}:{port}/latest/meta-data/", timeout_ms=2000)
    finally:
        client.close()
    with pytest.raises(TimeoutError):
        listener.accept()  # nobody connected


def test_the_refusal_tells_the_rule_and_the_log_the_address_a_wrapped_address_reaches(caplog):
    caplog.set_level("WARNING", logger="tolstoy.outbound")
    client = Outbound(())
    try:
        with pytest.raises(ForbiddenTarget) as refused:
            client.request("GET", "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/", timeout_ms=2000)
    finally:
        client.close()
    assert str(refused.value) == ("Refusing to connect to 64:ff9b::a9fe:a9fe: it is not a public address (or does "
                                  "not resolve). "
                                  "The operator may allow its network with TOLSTOY_ALLOW_NETWORKS.")
    assert "64:ff9b::a9fe:a9fe (which reaches 169.254.169.254)" in caplog.text


# ---- TLS: the certificate is verified for the URL's hostname, never for a pooled neighbour ----

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the client pools its connections

    def do_GET(self):
        body = json.dumps({"connection": self.client_address[1]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def tls_server(tmp_path) -> Iterator[dict]:
    """A TLS HTTP server on localhost's address (127.0.0.1) whose certificate (from a test CA) holds only the names
    ``localhost`` and ``a.example``; records the SNI name of every handshake."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "a.example").configure_cert(context)
    server_names: list = []
    context.sni_callback = lambda _sock, name, _ctx: server_names.append(name)
    # Listen where "localhost" resolves first (127.0.0.1 here): the client connects to that address.
    family, *_, (host, *_) = socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)[0]
    server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True})
    server = server_class((host, 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"port": server.server_address[1], "ip": host, "ca_file": str(ca_file), "server_names": server_names}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_connection_verified_for_localhost_is_not_reused_for_127_0_0_1(tls_server):
    port = tls_server["port"]
    client = Outbound(("127.0.0.1/32", "::1/128"), ca_file=tls_server["ca_file"])
    try:
        first = client.request("GET", f"https://localhost:{port}/", timeout_ms=5000)
        again = client.request("GET", f"https://localhost:{port}/", timeout_ms=5000)
        assert first.status == again.status == 200
        assert again.body["connection"] == first.body["connection"]  # pooled and reused for the same name
        # Same IP and port, a name the certificate does not hold: a new handshake, which fails.
        literal = f"[{tls_server['ip']}]" if ":" in tls_server["ip"] else tls_server["ip"]
        with pytest.raises(OutboundError, match="CERTIFICATE_VERIFY_FAILED") as refused:
            client.request("GET", f"https://{literal}:{port}/", timeout_ms=5000)
        assert not isinstance(refused.value, ForbiddenTarget)
        assert tls_server["ip"] in str(refused.value)  # "certificate is not valid for '127.0.0.1'"
    finally:
        client.close()


def test_two_hostnames_on_one_address_each_get_their_own_verified_connection(tls_server, monkeypatch):
    """Two tools behind one load balancer: b.example must not ride on a.example's connection."""
    port = tls_server["port"]
    resolve = socket.getaddrinfo

    def fake_dns(host, *args, **kwargs):
        return resolve(tls_server["ip"] if host in ("a.example", "b.example") else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_dns)
    client = Outbound(("127.0.0.1/32", "::1/128"), ca_file=tls_server["ca_file"])
    try:
        assert client.request("GET", f"https://a.example:{port}/", timeout_ms=5000).status == 200
        with pytest.raises(OutboundError, match="CERTIFICATE_VERIFY_FAILED"):
            client.request("GET", f"https://b.example:{port}/", timeout_ms=5000)
    finally:
        client.close()
    assert tls_server["server_names"] == ["a.example", "b.example"]  # SNI named each host


def test_certificates_are_verified_against_the_default_bundle(tls_server):
    client = Outbound(("127.0.0.1/32", "::1/128"))  # the test CA is not trusted
    try:
        with pytest.raises(OutboundError, match="CERTIFICATE_VERIFY_FAILED"):
            client.request("GET", f"https://localhost:{tls_server['port']}/", timeout_ms=5000)
    finally:
        client.close()


# ---- answers are read with a cap on what they decode to ---------------------------------------

def _gzip(data: bytes) -> bytes:
    import gzip
    return gzip.compress(data, compresslevel=9)


def _gzip_zeros(size: int) -> bytes:
    """``size`` zero bytes, gzipped a megabyte at a time (the test never holds them whole)."""
    import zlib
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zeros = bytes(1 << 20)
    packed = [packer.compress(zeros) for _ in range(size >> 20)]
    return b"".join(packed) + packer.flush()


@pytest.fixture
def encoded_server() -> Iterator[dict]:
    """A local HTTP server answering each path with the (body, Content-Encoding) ``answers`` holds."""
    answers: dict[str, tuple[bytes, str]] = {}
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            seen.append(dict(self.headers))
            if self.path == "/declared":  # says 50 MB are coming, sends a little, then nothing
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(50 << 20))
                self.end_headers()
                self.wfile.write(b"[")
                self.wfile.flush()
                time.sleep(8)
                return
            body, coding = answers[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if coding:
                self.send_header("Content-Encoding", coding)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with serving(Handler) as server:
        yield {"url": f"http://127.0.0.1:{server.server_address[1]}", "answers": answers, "seen": seen}


@pytest.mark.parametrize("coding, body", [
    ("gzip", lambda: _gzip_zeros(300 << 20)),  # 300 MB in 300 kB
    ("gzip, gzip", lambda: _gzip(_gzip_zeros(2000 << 20))),  # 2 GB in a few kB
])
def test_a_compressed_answer_is_refused_once_it_decodes_past_the_cap_not_after(encoded_server, coding, body):
    import tracemalloc

    encoded_server["answers"]["/bomb"] = (body(), coding)
    client = Outbound(("127.0.0.1/32",))
    tracemalloc.start()
    try:
        with pytest.raises(OutboundError, match="larger than 10485760 bytes"):
            client.request("GET", encoded_server["url"] + "/bomb", timeout_ms=20_000)
        used = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        client.close()
    assert used < 3 * 10_485_760, used  # the cap and a chunk or two, never the decoded whole


@pytest.mark.parametrize("coding, encode", [
    ("gzip", _gzip),
    ("deflate", lambda data: __import__("zlib").compress(data)),
    ("deflate", lambda data: __import__("zlib").compress(data)[2:-4]),  # raw deflate, as some servers send it
    ("gzip, gzip", lambda data: _gzip(_gzip(data))),
    ("identity", lambda data: data),
])
def test_compressed_answers_within_the_cap_are_decoded(encoded_server, coding, encode):
    body = json.dumps({"items": list(range(10_000))}).encode()
    encoded_server["answers"]["/ok"] = (encode(body), coding)
    client = Outbound(("127.0.0.1/32",))
    try:
        reply = client.request("GET", encoded_server["url"] + "/ok", timeout_ms=20_000)
    finally:
        client.close()
    assert reply.body == {"items": list(range(10_000))}


def test_an_answer_declaring_more_than_the_cap_is_refused_before_it_is_read(encoded_server):
    client = Outbound(("127.0.0.1/32",))
    try:  # read, the body would end in a timeout: the server sends one byte of its 50 MB
        with pytest.raises(OutboundError, match="larger than 10485760 bytes"):
            client.request("GET", encoded_server["url"] + "/declared", timeout_ms=5000)
    finally:
        client.close()


def test_requests_offer_only_the_codings_decoded_under_the_cap(encoded_server):
    encoded_server["answers"]["/ok"] = (b"{}", "")
    client = Outbound(("127.0.0.1/32",))
    try:
        client.request("GET", encoded_server["url"] + "/ok", timeout_ms=5000)
    finally:
        client.close()
    offered = {c.strip() for c in encoded_server["seen"][-1]["Accept-Encoding"].split(",")}
    assert offered == {"gzip", "deflate"}
