"""An action's ``inputSchema`` resolves references only inside the document (issue 19, row 1:
SSRF through JSON Schema ``$ref``).

jsonschema's default registry fetched any ``$ref`` it could not find in the document with
urllib, past the outbound guard and with no timeout: at save (the API) and at every call (the
worker). Now a reference that leaves the document is a 400 naming ``inputSchema`` when the
action is saved, a pointer to something that is not a schema is a 400 (not a 500), and a
schema stored before (or written past the API) fails the call's inputs, naming ``inputs``.
A local server proves no request arrives; a silent peer (a socket that never answers) proves
nothing waits on one."""

from __future__ import annotations

import socket
import threading
import time
import uuid

import pytest
from contract import assert_error

DRAFT4 = "http://json-schema.org/draft-04/schema#"


def remote_schemas(base: str, port: int) -> dict[str, dict]:
    """Schemas whose references would leave the document, each pointing at ``base``."""
    return {
        "http": {"$ref": f"{base}/openapi.json"},
        "decimal IPv4": {"$ref": f"http://2130706433:{port}/openapi.json"},
        "network-path": {"$ref": f"//127.0.0.1:{port}/openapi.json"},
        "relative": {"$ref": "openapi.json"},
        "nested, not reached by {}": {"type": "object", "properties": {"a": {"$ref": f"{base}/a.json"}}},
        "$dynamicRef": {"$dynamicRef": f"{base}/dynamic.json"},
        "$recursiveRef": {"$recursiveRef": f"{base}/recursive.json"},
        "$id makes a relative ref absolute": {"$id": f"{base}/", "$ref": "openapi.json"},
        "$id makes a # ref absolute": {"type": "object", "properties": {
            "a": {"$id": f"{base}/w.json", "$ref": "#/definitions/x"}}},
        "$id hidden under an unknown keyword": {"$ref": "#/foo", "foo": {"properties": {
            "b": {"$id": f"{base}/v.json", "$ref": "#/definitions/x"}}}},
        "a nested $schema reads ids another way": {"properties": {"a": {"$schema": DRAFT4, "properties": {
            "b": {"id": f"{base}/z.json", "$ref": "#/definitions/x"}}}}},
    }


def save(api, org, tool, schema):
    return api.post("/actions", org, {"toolId": tool["id"], "name": "Get", "key": f"k.{uuid.uuid4().hex[:8]}",
                                      "method": "GET", "endpoint": "/things", "inputSchema": schema})


@pytest.fixture
def tool(api, org, server):
    return api.tool(org, baseUrl=server.url_for("/"))


def test_a_reference_leaving_the_document_is_a_400_naming_input_schema_and_nothing_is_fetched(api, org, tool,
                                                                                              server):
    base = server.url_for("").rstrip("/")
    refused = []
    for name, schema in remote_schemas(base, server.port).items():
        result = save(api, org, tool, schema)
        if result.status_code != 400 or result.json["errors"][0]["field"] != "inputSchema":
            refused.append(f"{name}: {result.status_code} {result.text}")
    assert not refused, "\n".join(refused)
    assert server.log == []  # not one request reached the local server
    # Updates are checked the same way.
    action = api.create("/actions", org, {"toolId": tool["id"], "name": "Get", "key": "ok", "method": "GET",
                                          "endpoint": "/things", "inputSchema": {"type": "object"}})
    for method in ("simulate_put", "simulate_patch"):
        result = getattr(api.client, method)(f"/actions/{action['id']}", headers=api.headers(org),
                                              json={"inputSchema": {"$ref": f"{base}/openapi.json"}})
        assert_error(result, 400, "inputSchema")
    assert server.log == []


def test_a_file_reference_is_refused_the_same_whether_the_file_exists_or_not(api, org, tool):
    existing = assert_error(save(api, org, tool, {"$ref": "file:///etc/hostname"}), 400, "inputSchema")
    missing = assert_error(save(api, org, tool, {"$ref": "file:///etc/no-such-file"}), 400, "inputSchema")
    said = [body["errors"][0]["message"] for body in (existing, missing)]
    assert said[0].replace("/etc/hostname", "X") == said[1].replace("/etc/no-such-file", "X")
    assert "leaves the document" in said[0]


def test_a_silent_peer_holds_nothing(api, org, tool):
    """A peer that accepts TCP connections and never answers held an API worker (urllib without a
    timeout). The save answers without ever connecting to it: nothing waits in its accept queue."""
    peer = socket.socket()
    peer.bind(("127.0.0.1", 0))
    peer.listen(8)
    port = peer.getsockname()[1]
    answers = []
    saving = threading.Thread(target=lambda: answers.append(
        save(api, org, tool, {"$ref": f"http://127.0.0.1:{port}/schema.json"})), daemon=True)
    try:
        saving.start()
        saving.join(10)  # a bound for a broken build (it would wait forever), not a measure
        answered = not saving.is_alive()
        peer.setblocking(False)
        with pytest.raises(BlockingIOError):  # no connection ever reached the peer
            peer.accept()[0].close()
    finally:
        peer.close()  # resets a connection a broken build left waiting
        saving.join(10)
    assert answered, "saving the action waited on a peer that never answers"
    assert_error(answers[0], 400, "inputSchema")


@pytest.mark.parametrize(("schema", "said"), [
    ({"$ref": "#/info/title", "info": {"title": "Petstore"}}, "points at a string, not a schema"),
    ({"$ref": "#/info/version", "info": {"version": 3}}, "points at a number, not a schema"),
    ({"$ref": "#/nowhere"}, "points at nothing"),
    ({"$ref": "#/a/b", "a": 1}, "points at nothing"),
    ({"$ref": "#/a/q", "a": "text"}, "points at nothing"),
    ({"$ref": "#/allOf/x", "allOf": [{"type": "string"}]}, "points at nothing"),
    ({"$ref": "#no-such-anchor"}, "points at nothing"),
    ({"properties": {"a": {"$dynamicRef": "#/x"}}, "x": [1, 2]}, "points at an array, not a schema"),
])
def test_a_pointer_to_something_that_is_not_a_schema_is_a_400(api, org, tool, schema, said):
    body = assert_error(save(api, org, tool, schema), 400, "inputSchema")
    assert said in body["errors"][0]["message"], body


LOOPS = [
    {"allOf": [{"$ref": "#"}]},
    {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"anyOf": [{"$ref": "#/$defs/a"}]}}},
    {"if": {"$dynamicRef": "#/$defs/x"}, "$defs": {"x": {"not": {"$ref": "#"}}}},
    {"dependentSchemas": {"a": {"$ref": "#"}}},
]


@pytest.mark.parametrize("schema", LOOPS)
def test_a_reference_loop_that_reads_no_input_is_a_400_and_an_old_row_with_one_no_500(api, org, user, tool, db,
                                                                                    schema):
    """Validation would recurse until Python gives up (a 500): a 400 at save, and at run time."""
    body = assert_error(save(api, org, tool, schema), 400, "inputSchema")
    assert "never end" in body["errors"][0]["message"], body
    action = api.create("/actions", org, {"toolId": tool["id"], "name": "Get", "key": "loop", "method": "GET",
                                          "endpoint": "/things", "inputSchema": {"type": "object"}})
    stored_behind_the_api(db, org, action, schema)
    call = api.client.simulate_post(f"/actions/{action['id']}/execute", headers=api.headers(org, user),
                                    json={"inputs": {"a": 1}})
    assert_error(call, 400, "inputs")


def test_a_recursive_schema_that_reads_the_input_is_fine(api, org, tool):
    tree = {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#"}}}}
    assert save(api, org, tool, tree).status_code == 201


def test_references_inside_the_document_still_work(api, org, tool, server):
    from werkzeug import Response

    server.expect_request("/things").respond_with_response(Response("{}", content_type="application/json"))
    schema = {
        "$id": "https://schemas.example.com/thing.json",  # a root $id: '#' still means this document
        "type": "object",
        "properties": {
            "n": {"$ref": "#/$defs/positive"},
            "tag": {"$ref": "#tag"},
            "child": {"$ref": "#"},
            "kind": {"$dynamicRef": "#kind"},
        },
        "required": ["n"],
        "$defs": {"positive": {"type": "integer", "minimum": 1}, "tag": {"$anchor": "tag", "type": "string"},
                  "kind": {"$dynamicAnchor": "kind", "enum": ["a", "b"]}},
    }
    action = api.create("/actions", org, {"toolId": tool["id"], "name": "Get", "key": "refs", "method": "GET",
                                          "endpoint": "/things", "inputSchema": schema})
    user = api.user(org)
    call = api.client.simulate_post(f"/actions/{action['id']}/execute", headers=api.headers(org, user),
                                    json={"inputs": {"n": 0, "tag": 5, "child": {"n": 2, "kind": "c"}}})
    body = assert_error(call, 400)
    assert {e["field"] for e in body["errors"]} == {"inputs.n", "inputs.tag", "inputs.child.kind"}, body
    ok = api.client.simulate_post(f"/actions/{action['id']}/execute", headers=api.headers(org, user),
                                  json={"inputs": {"n": 1, "child": {"n": 2, "kind": "a"}}})
    assert ok.status_code == 200 and ok.json["success"] is True, ok.text


def finished_run(api, org, user, flow, timeout: float = 20.0) -> dict:
    """Start a run of ``flow`` and wait for its end."""
    started = api.post(f"/flows/{flow['id']}/execute", org, {"variables": {}}, user)
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + timeout
    while True:
        run = api.client.simulate_get(f"/flows/{flow['id']}/executions/{started.json['executionId']}",
                                      headers=api.headers(org)).json
        if run["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def stored_behind_the_api(db, org, action, schema) -> None:
    """An action row as it was stored before references were checked (or written past the API)."""
    from psycopg.types.json import Jsonb

    with db.pool.connection() as conn, conn.transaction():
        conn.execute("select set_config('app.org_id', %s, true)", (org["id"],))
        conn.execute("update actions set input_schema = %s where id = %s", (Jsonb(schema), action["id"]))


@pytest.mark.parametrize("kind", ["remote", "decimal", "file", "title", "$id"])
def test_an_old_row_fails_its_inputs_at_run_time_and_fetches_nothing(api, org, user, tool, server, db, worker,
                                                                     kind):
    base = server.url_for("").rstrip("/")
    schema = {"remote": {"$ref": f"{base}/openapi.json"},
              "decimal": {"properties": {"a": {"$ref": f"http://2130706433:{server.port}/a.json"}}},
              "file": {"$ref": "file:///etc/hostname"},
              "title": {"$ref": "#/info/title", "info": {"title": "Petstore"}},
              "$id": remote_schemas(base, server.port)["$id makes a # ref absolute"]}[kind]
    action = api.create("/actions", org, {"toolId": tool["id"], "name": "Get", "key": "old", "method": "GET",
                                          "endpoint": "/things", "inputSchema": {"type": "object"}})
    stored_behind_the_api(db, org, action, schema)

    call = api.client.simulate_post(f"/actions/{action['id']}/execute", headers=api.headers(org, user),
                                    json={"inputs": {"a": 1}})
    body = assert_error(call, 400, "inputs")
    assert "inputSchema cannot be used" in body["errors"][0]["message"], body

    flow = api.flow(org, [{"id": "call", "type": "action", "config": {"actionId": action["id"], "inputs": {"a": 1}}}])
    run = finished_run(api, org, user, flow)
    assert run["status"] == "failed", run
    assert "inputSchema cannot be used" in str(run["error"]), run
    assert server.log == []
