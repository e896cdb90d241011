"""``/openapi.json`` changes only on purpose: the served document is the reviewed one kept in
tests/api/openapi.json, so moving code between modules (or a route declared in a new place)
cannot change what clients see unnoticed. A deliberate change rewrites the file
(``.venv/bin/python -m tests.api.test_openapi_document``) in the same commit, where the diff is
reviewed."""

from __future__ import annotations

import json
from pathlib import Path

SNAPSHOT = Path(__file__).with_name("openapi.json")


def differences(served, expected, where: str = "") -> list[str]:
    """Where two JSON documents differ, as JSON pointers (at most a screenful)."""
    if isinstance(served, dict) and isinstance(expected, dict):
        found = []
        for key in sorted(set(served) | set(expected)):
            here = f"{where}/{key}"
            if key not in served:
                found.append(f"{here}: missing")
            elif key not in expected:
                found.append(f"{here}: new")
            else:
                found += differences(served[key], expected[key], here)
        return found
    if isinstance(served, list) and isinstance(expected, list) and len(served) == len(expected):
        return [d for index, (a, b) in enumerate(zip(served, expected, strict=True))
                for d in differences(a, b, f"{where}/{index}")]
    return [] if served == expected else [f"{where}: {json.dumps(expected)[:80]} → {json.dumps(served)[:80]}"]


def test_the_served_document_is_the_reviewed_one(client):
    served = client.simulate_get("/openapi.json").json
    expected = json.loads(SNAPSHOT.read_text())
    expected["info"]["version"] = served["info"]["version"]  # a release changes it, not a code change
    found = differences(served, expected)
    assert not found, ("/openapi.json differs from tests/api/openapi.json (regenerate it if the change is "
                       "meant):\n" + "\n".join(found[:40]))


if __name__ == "__main__":
    from tolstoy.api.app import build_routes
    from tolstoy.config import Config

    # Building the routes opens no connection: the document's resource holds it, built once.
    routes = build_routes(None, Config.from_env({"TOLSTOY_ENV": "test"}))
    served = next(resource for template, resource, _ in routes if template == "/openapi.json")
    # Keys sorted: the file does not change when a route or a schema is declared in another place.
    SNAPSHOT.write_text(json.dumps(json.loads(served.body), indent=1, ensure_ascii=False, sort_keys=True) + "\n")
