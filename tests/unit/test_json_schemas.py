"""Every JSON Schema validator Tolstoy builds resolves references only inside the document
(tolstoy/jsonschemas.py): found by reading the source, then each one shown unable to fetch
anything, against a local server that records what reaches it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from audit_connections import WATCH

from tolstoy import engine, jsonschemas

TOLSTOY = Path(jsonschemas.__file__).resolve().parent
HOME = TOLSTOY / "jsonschemas.py"
# Libraries that build JSON Schema validators or resolve their references.
SCHEMA_LIBRARIES = {"jsonschema", "referencing", "jsonschema_rs", "fastjsonschema", "jsonschema_path",
                    "openapi_schema_validator", "openapi_spec_validator"}
# Ways to build a validator without naming a registry (jsonschema's default one fetches).
BUILDERS_WITHOUT_A_REGISTRY = {"validate", "check_schema", "validator_for", "create", "extend", "evolve"}


def sources() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(), str(path)) for path in sorted(TOLSTOY.rglob("*.py"))}


def root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def test_only_tolstoy_jsonschemas_touches_a_json_schema_library():
    found = []
    for path, tree in sources().items():
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                if name.partition(".")[0] in SCHEMA_LIBRARIES and path != HOME:
                    found.append(f"{path.relative_to(TOLSTOY.parent)}:{node.lineno} imports {name}")
    assert not found, "build validators with tolstoy.jsonschemas.validator():\n" + "\n".join(found)


def test_tolstoy_jsonschemas_builds_every_validator_on_the_refusing_registry():
    """One constructor call, with ``registry=REGISTRY``; the meta-schema's validator is made by it;
    no helper that builds one on jsonschema's default registry is called."""
    tree = ast.parse(HOME.read_text())
    constructors = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name) and node.func.id == "_VALIDATOR"]
    assert len(constructors) == 1
    assert {(k.arg, getattr(k.value, "id", None)) for k in constructors[0].keywords} >= {("registry", "REGISTRY")}
    # The one class made with extend (2020-12 with RE2 for patterns) is the one the constructor uses.
    [made_class] = [node for node in ast.walk(tree) if isinstance(node, ast.Assign)
                    and any(getattr(target, "id", None) == "_VALIDATOR" for target in node.targets)]
    assert isinstance(made_class.value, ast.Call) and made_class.value.func.attr == "extend"
    called = {node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call) and node is not made_class.value
              and isinstance(node.func, ast.Attribute) and root_name(node.func) in ("jsonschema", "_VALIDATOR")}
    assert not called & BUILDERS_WITHOUT_A_REGISTRY
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("jsonschema") for alias in node.names}
    assert not imported, "use jsonschema.<name>, so the checks above see it"
    assert isinstance(jsonschemas._META, jsonschemas._VALIDATOR)


def reaching(base: str) -> list[dict]:
    """Schemas that make jsonschema's default registry fetch from ``base`` (each one did before)."""
    return [
        {"$ref": f"{base}/a.json"},
        {"properties": {"a": {"$ref": f"{base}/b.json"}}},
        {"$dynamicRef": f"{base}/c.json"},
        {"$id": f"{base}/", "$ref": "d.json"},
        {"properties": {"a": {"$schema": "http://json-schema.org/draft-04/schema#", "$id": f"{base}/w.json",
                              "$ref": "#/definitions/x"}}},
        {"$ref": "#/foo", "foo": {"properties": {"b": {"$id": f"{base}/v.json", "$ref": "#/definitions/x"}}}},
    ]


def base_of(server) -> str:
    return server.url_for("").rstrip("/")


def test_the_default_registry_would_have_fetched_each_of_these(server):
    """The schemas below are real threats: jsonschema's own default (urllib) fetches every one (the
    local server records each request; it answers none of them usefully)."""
    import warnings

    import jsonschema

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # jsonschema's own warning about fetching
        for schema in reaching(base_of(server)):
            before = len(server.log)
            with pytest.raises(jsonschema.exceptions.RefResolutionError):
                list(jsonschema.Draft202012Validator(schema).iter_errors({"a": 1, "b": 1}))
            assert len(server.log) == before + 1, schema


def test_no_validator_tolstoy_builds_can_fetch(server):
    base = base_of(server)
    for schema in reaching(base):
        # The validator itself (as a schema written past the API would meet it at run time).
        with pytest.raises(jsonschemas.Unresolvable):
            list(jsonschemas.validator(schema).iter_errors({"a": 1, "b": 1}))
        # The save-time check and the engine's run-time check, with Tolstoy's frames on the stack
        # for the connection audit to judge.
        with WATCH.caught() as stray:
            assert jsonschemas.problem(schema)
            assert engine.input_errors(schema, {"a": 1, "b": 1})[0]["field"] == "inputs"
        assert stray == []
    # The meta-schema's validator resolves the meta-schema's own references from jsonschema's copy.
    assert jsonschemas.problem({"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}},
                                "$defs": {"a": {"type": "integer"}}}) is None
    assert server.log == []
    with pytest.raises(jsonschemas.Unresolvable):
        jsonschemas.REGISTRY.resolver().lookup(f"{base}/a.json")
    with pytest.raises(jsonschemas.Unresolvable):
        jsonschemas.REGISTRY.resolver().lookup("file:///etc/hostname")
    assert server.log == []
