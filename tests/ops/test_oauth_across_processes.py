"""Issue 19, row 11: the OAuth callback works whichever process takes it. Two real Gunicorn
servers (one worker each, so which process answers is certain) on one database as the
application role (row-level security applies): the tool's credential is stored, and so the
organization's data key made, and the login served by the first; the provider sends the
browser back to the second, whose key cache has never seen the organization. Before the fix
the callback decrypted the credential outside the organization's tenancy, where row-level
security hides the data key: 503 "no data key version 1" on a cold process only."""

from __future__ import annotations

import httpx
import pytest
from support import FakeOAuthProvider, app_processes, follow, free_port


@pytest.fixture
def two_processes(worker_env):
    """(first, second): base URLs of two app processes; redirect URIs name the second."""
    ports = [free_port(), free_port()]
    with app_processes({**worker_env, "TOLSTOY_PUBLIC_URL": f"http://127.0.0.1:{ports[1]}"}, ports) as bases:
        yield bases[0], bases[1]


def test_the_oauth_callback_works_on_a_process_that_never_saw_the_organization(two_processes, server):
    first, second = two_processes
    provider = FakeOAuthProvider(server)
    with httpx.Client(base_url=first, timeout=60) as one:
        org = one.post("/organizations", json={"name": "Two processes"}).json()
        h = {"X-Org-ID": org["id"]}
        user = one.post("/users", json={"email": "ada@two.example"}, headers=h).json()
        hu = {**h, "X-User-ID": user["id"]}
        tool = one.post("/tools", json={"name": "GitHub", "key": "github", "baseUrl": provider.url("/"),
                                        "authType": "oauth2"}, headers=h).json()
        stored = one.post(f"/tools/{tool['id']}/auth", json=provider.credential(), headers=h)
        assert stored.status_code == 201, stored.text  # the organization's data key is made here
        one.post("/actions", json={"toolId": tool["id"], "name": "Me", "key": "gh.me", "method": "GET",
                                   "endpoint": "/me"}, headers=h).raise_for_status()
        login = one.get("/auth/github/login", headers=hu)
        assert login.status_code == 302, login.text

    back = follow(login.headers["location"], **{"as": "ada"})
    assert back.startswith(f"{second}/auth/github/callback?")
    connected = httpx.get(back, timeout=60)  # the browser, at the second process: no tenant header
    assert connected.status_code == 200, connected.text
    assert connected.json()["success"] is True

    # The second process goes on to use what it decrypted; the first reads the connection it stored.
    with httpx.Client(timeout=60) as http:
        executed = http.post(f"{second}/actions/gh.me/execute", json={"inputs": {}}, headers=hu)
        assert executed.status_code == 200 and executed.json()["success"] is True, executed.text
        assert provider.seen_auth == ["Bearer access-ada-1"]
        listed = http.get(f"{first}/users/{user['id']}/connections", headers=hu)
        assert [c["toolKey"] for c in listed.json()] == ["github"], listed.text
