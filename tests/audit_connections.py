"""One door to the network, checked while every test runs: a pytest plugin (registered by
conftest.py) that installs an audit hook (``sys.addaudithook``, PEP 578) on the socket events
that reach another host, and fails any test during which Tolstoy's own code opened a
connection anywhere but through one of the named doors.

Import rules cannot see this: the SSRF of issue 19 row 1 ran inside jsonschema (its default
urllib retrieval of a ``$ref``) called from tolstoy/api/actions.py, which imports no network
module at all. The hook sees the connection itself, whoever makes it.

**The rule.** At each event the hook walks the Python stack from the innermost frame
outwards. The first frame that is one of these decides:

- a frame of the test suite (a file under ``tests/``): the test opened it, directly or through
  a library it called (test clients, ``httpx.get`` in a helper, local servers): allowed;
- a frame of a library in ``DRIVERS`` (the database driver): allowed;
- a frame of Tolstoy (a module ``tolstoy`` or ``tolstoy.*``): allowed when it is a door
  (``DOORS``: the guarded outbound client), or when a library named in ``LIBRARY_CALLERS``
  lies between it and the socket and the module is one of that library's named callers
  (boto3/botocore called by tolstoy/aws_secrets.py and the KMS keyring: the operator's own
  AWS endpoints); otherwise it is a **stray connection**.

A stack with none of these (a server's thread, a library's own thread) is not Tolstoy's
connection. Libraries Tolstoy calls (httpx, urllib, jsonschema…) decide nothing: a
connection made by jsonschema for tolstoy/api/actions.py is judged as actions.py's. The
database driver connects from C (libpq never reaches Python's socket module); psycopg's own
Python code resolves host names, hence its entry.

**What happens.** A stray connection is refused inside the hook (``StrayConnection``, an
OSError, is raised where the socket call was made, so no byte leaves) and recorded; the test
fails at teardown naming the event, the module and the stack, even when the code that
called caught the error. Recorded outside a test (a module fixture), it fails the next
test of the process. Only this process is watched: services a test starts as subprocesses
(Gunicorn, Nginx) are not.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__)) + os.sep

# The events that resolve a name or send to another host (CPython's audit events table).
EVENTS = frozenset({
    "socket.connect",  # connect() and connect_ex()
    "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo",
    "socket.sendto", "socket.sendmsg",
})

# Tolstoy modules that may open connections themselves: the one door for every request a
# tenant can point somewhere (it checks each address it connects to).
DOORS = frozenset({"tolstoy.engine.outbound"})

# Libraries whose connections are allowed whoever calls them: the database driver.
DRIVERS = frozenset({"psycopg", "psycopg_pool"})

# Libraries allowed only for the named Tolstoy modules calling them.
LIBRARY_CALLERS: dict[str, frozenset] = {
    # The operator's AWS endpoints: Secrets Manager and KMS (never a tenant's URL).
    "boto3": frozenset({"tolstoy.aws_secrets", "tolstoy.engine.keys"}),
    "botocore": frozenset({"tolstoy.aws_secrets", "tolstoy.engine.keys"}),
    # The OTLP exporter, sending Tolstoy's spans to the operator's collector (OTEL_EXPORTER_OTLP_*, never a
    # tenant's URL) from tolstoy.tracing's exporter (its own encoding, the SDK's HTTP client).
    "opentelemetry": frozenset({"tolstoy.tracing"}),
}


class StrayConnection(ConnectionRefusedError):
    """Raised by the audit hook where Tolstoy's code tried to reach the network past its doors."""


@dataclass(frozen=True)
class Violation:
    """One refused connection: the event, what it named, the Tolstoy module that made it, and where."""

    event: str
    target: str
    module: str
    thread: str
    stack: str

    def __str__(self) -> str:
        return (f"{self.module} made {self.event}({self.target}) in thread {self.thread!r}, past the "
                f"outbound client (tolstoy/engine/outbound.py):\n{self.stack}")


def _module(frame) -> str:
    return frame.f_globals.get("__name__") or ""


def stray_module(frame) -> str | None:
    """The Tolstoy module that owns a connection made with ``frame`` innermost, when the rule above
    refuses it; None when it is allowed."""
    library = None  # the innermost library of LIBRARY_CALLERS seen so far
    while frame is not None:
        if frame.f_code.co_filename.startswith(TESTS):
            return None
        module = _module(frame)
        top = module.partition(".")[0]
        if top in DRIVERS:
            return None
        if top == "tolstoy":
            if module in DOORS or (library is not None and module in LIBRARY_CALLERS[library]):
                return None
            return module
        if library is None and top in LIBRARY_CALLERS:
            library = top
        frame = frame.f_back
    return None


def _target(event: str, args: tuple) -> str:
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        return repr(args[1]) if len(args) > 1 else ""
    return ", ".join(repr(a) for a in args[:2])


class Watch:
    """Where violations go: the innermost ``caught()`` block's list, else the pending list the
    per-test check takes."""

    def __init__(self):
        self.pending: list[Violation] = []
        self.sinks: list[list[Violation]] = []
        self.lock = threading.Lock()

    def hook(self, event: str, args: tuple) -> None:
        if event not in EVENTS:
            return
        frame = sys._getframe(1)
        module = stray_module(frame)
        if module is None:
            return
        found = Violation(event, _target(event, args), module, threading.current_thread().name,
                          "".join(traceback.format_stack(frame, limit=25)))
        with self.lock:
            (self.sinks[-1] if self.sinks else self.pending).append(found)
        raise StrayConnection(f"Refused by the test suite's connection audit: {module} made {event} "
                              f"({found.target}) past the outbound client")

    def take(self) -> list[Violation]:
        with self.lock:
            found, self.pending = self.pending, []
        return found

    @contextlib.contextmanager
    def caught(self) -> Iterator[list[Violation]]:
        """Collect the violations of a block instead of failing the test (for tests of this plugin)."""
        found: list[Violation] = []
        with self.lock:
            self.sinks.append(found)
        try:
            yield found
        finally:
            with self.lock:
                self.sinks.remove(found)


WATCH = Watch()
_installed = False


def install() -> None:
    """Add the hook once per process (an audit hook can never be removed)."""
    global _installed
    if not _installed:
        sys.addaudithook(WATCH.hook)
        _installed = True


def pytest_configure(config) -> None:
    install()


def _report(found: list[Violation]) -> str:
    return (f"{len(found)} connection(s) opened from Tolstoy's code past its doors (tests/audit_connections.py):\n\n"
            + "\n\n".join(map(str, found)))


@pytest.fixture(autouse=True)
def _no_stray_connections():
    """Fails the test (at teardown, after every other fixture of it) when a violation was recorded."""
    yield
    found = WATCH.take()
    if found:
        pytest.fail(_report(found), pytrace=False)


def pytest_sessionfinish(session) -> None:
    found = WATCH.take()
    if found:
        sys.stderr.write(_report(found) + "\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
