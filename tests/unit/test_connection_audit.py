"""The connection audit of the test suite (tests/audit_connections.py) itself: its rule on the
stacks it judges, that it refuses and reports row 1 of issue 19 as the code before the fix
made it (jsonschema fetching a ``$ref`` for tolstoy/api/schemas.py), and that a test which
opens a stray connection fails even when the code swallows the error."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading

import pytest
from audit_connections import TESTS, WATCH, StrayConnection, stray_module

from tolstoy.engine.outbound import Outbound


def judged_in(*modules: str) -> str | None:
    """``stray_module`` of a connection made at the bottom of a chain of calls, outermost first, each
    in a function whose module is ``modules[i]`` (as if the code lived there), called from this test."""
    inner = None
    for module in reversed(modules):
        namespace = {"__name__": module, "inner": inner, "judge": stray_module, "sys": sys}
        body = "return judge(sys._getframe(0))" if inner is None else "return inner()"
        exec(compile(f"def call():\n    {body}\n", f"<{module}>", "exec"), namespace)
        inner = namespace["call"]
    return inner()


@pytest.mark.parametrize(("stack", "owner"), [
    # Row 1 as it was: jsonschema's urllib retrieval, called by the API's schema field.
    (["tolstoy.api.schemas", "jsonschema.validators", "referencing._core", "urllib.request", "socket"],
     "tolstoy.api.schemas"),
    # A second HTTP client anywhere in Tolstoy.
    (["tolstoy.engine.runner", "tolstoy.engine.calls", "httpx._client", "httpcore._sync"], "tolstoy.engine.calls"),
    # The guarded client is the door, whatever library it drives.
    (["tolstoy.engine.calls", "tolstoy.engine.outbound", "httpcore._backends.sync", "socket"], None),
    # The database driver's Python code resolves host names.
    (["tolstoy.db.database", "psycopg_pool.pool", "psycopg.conninfo"], None),
    # boto3 for the operator's AWS endpoints, from the two modules that call it…
    (["tolstoy.config", "tolstoy.aws_secrets", "boto3.client", "botocore.httpsession", "urllib3.connection"], None),
    (["tolstoy.engine.keys", "botocore.client", "urllib3.connection"], None),
    # …but not from anywhere else.
    (["tolstoy.engine.webhooks", "botocore.client", "urllib3.connection"], "tolstoy.engine.webhooks"),
    # No Tolstoy frame at all: a server's or a library's own thread.
    (["werkzeug.serving", "socketserver"], None),
])
def test_the_innermost_owner_decides(stack, owner):
    assert judged_in(*stack) == owner


def test_test_code_owns_what_it_opens_even_when_tolstoy_called_it():
    """A test's own callback (a fake, a clock) that Tolstoy calls is the test's: the innermost owner."""
    namespace = {"__name__": "tolstoy.engine.runner", "stray_module": stray_module, "sys": sys}
    exec(compile("def run(callback):\n    return callback()\n", "<tolstoy.engine.runner>", "exec"), namespace)
    assert namespace["run"](lambda: stray_module(sys._getframe(0))) is None
    assert __file__.startswith(TESTS)


OLD_SCHEMA_FIELD = """
import jsonschema

def deserialize(value):
    # tolstoy/api/schemas.py InputSchemaField._deserialize before the fix, as it read.
    jsonschema.Draft202012Validator.check_schema(value)
    jsonschema.Draft202012Validator(value).is_valid({})
"""


def test_the_hook_refuses_and_reports_row_1_as_the_code_before_the_fix_made_it():
    """Import rules would not have seen it: the module imports jsonschema only; the hook sees the
    connection. The connection is refused before it is made: the listener has no one waiting."""
    import warnings

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    namespace = {"__name__": "tolstoy.api.schemas"}
    exec(compile(OLD_SCHEMA_FIELD, "tolstoy/api/schemas.py", "exec"), namespace)
    try:
        with WATCH.caught() as stray, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            with pytest.raises(Exception) as raised:  # noqa: B017 - jsonschema wraps the refusal its own way
                namespace["deserialize"]({"$ref": f"http://127.0.0.1:{listener.getsockname()[1]}/openapi.json"})
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    chain, error = [], raised.value
    while error is not None:
        chain.append(type(error))
        error = error.__cause__ or error.__context__
    assert StrayConnection in chain, chain  # refused where urllib connected, then wrapped by jsonschema
    assert [(v.module, v.event) for v in stray] == [("tolstoy.api.schemas", "socket.getaddrinfo")]
    assert "jsonschema" in stray[0].stack and "urllib" in stray[0].stack


def test_the_outbound_client_and_the_tests_own_connections_pass(server):
    from werkzeug import Response

    server.expect_request("/ok").respond_with_response(Response("{}", content_type="application/json"))
    outbound = Outbound(["127.0.0.1/32"])
    with WATCH.caught() as stray:
        assert outbound.request("GET", server.url_for("/ok")).status == 200
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
        seen = []
        thread = threading.Thread(target=lambda: seen.append(outbound.request("GET", server.url_for("/ok")).status))
        thread.start()
        thread.join(10)
        assert seen == [200]
    outbound.close()
    assert stray == []


INNER_TEST = '''
import socket

import pytest

STRAY = """
import socket

def call_home(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return "swallowed"  # code that hides the error does not hide the connection
"""


def test_stray(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    namespace = {"__name__": "tolstoy.engine.stray"}
    exec(compile(STRAY, "tolstoy/engine/stray.py", "exec"), namespace)
    assert namespace["call_home"](listener.getsockname()[1]) == "swallowed"
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()


def test_clean():
    assert socket.gethostname()
'''


def test_a_test_that_opens_a_stray_connection_fails_at_teardown(tmp_path):
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TEST))
    # Only this plugin: no entry-point plugins (schemathesis, hypothesis…) to load.
    path = os.pathsep.join([TESTS.rstrip(os.sep), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONPATH": path}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "audit_connections", "-p", "no:cacheprovider",
               str(tmp_path / "test_inner.py")]
    finished = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    output = finished.stdout + finished.stderr
    assert finished.returncode == 1, output
    assert "2 passed, 1 error" in output, output
    assert "ERROR at teardown of test_stray" in output, output
    assert "tolstoy.engine.stray made socket.getaddrinfo('127.0.0.1'" in output, output
