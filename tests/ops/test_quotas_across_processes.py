"""Issue 21, quotas per organization: the queuedRuns quota holds across API processes. Two real
Gunicorn servers (one worker each) on one database as the application role: an organization one
place short of its quota sends two executes at once, one to each process, round after round;
exactly one gets the place (202) and the other is a 429 naming the quota, with nothing of its run
written. Another organization executing through the same processes at the same moment is never
refused. The admission is decided in the database (tolstoy_admit_run locks the organization's
usage row), so no process-local state can let both in: without that lock both requests count the
same runs and both pass."""

from __future__ import annotations

import threading

import httpx
import pytest
from support import app_processes, free_port

ROUNDS = 12


@pytest.fixture
def two_processes(worker_env):
    """Base URLs of two app processes on this test's database."""
    with app_processes(worker_env, [free_port(), free_port()]) as bases:
        yield bases


def tenant(http: httpx.Client, base: str, name: str) -> dict:
    """An organization with a user and a one-step flow: the headers to execute it and its path."""
    org = http.post(f"{base}/organizations", json={"name": name}).json()
    headers = {"X-Org-ID": org["id"]}
    user = http.post(f"{base}/users", json={"email": f"ada@{name.lower()}.example"}, headers=headers).json()
    flow = http.post(f"{base}/flows", json={"steps": [{"id": "a", "type": "transform", "config": {"output": 1}}]},
                     headers=headers).json()
    return {"org": org, "headers": {**headers, "X-User-ID": user["id"]}, "flow": flow,
            "execute": f"/flows/{flow['id']}/execute"}


def race(executes: dict[str, tuple[str, dict]]) -> dict[str, httpx.Response]:
    """Send the executes all at once (each on a connection of its own, released together); their answers."""
    start = threading.Barrier(len(executes))
    answers: dict[str, httpx.Response] = {}

    def execute(key: str, base: str, who: dict) -> None:
        with httpx.Client(timeout=60) as own:
            start.wait()
            answers[key] = own.post(f"{base}{who['execute']}", json={}, headers=who["headers"])

    racers = [threading.Thread(target=execute, args=(key, base, who)) for key, (base, who) in executes.items()]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(30)
    return answers


def test_two_processes_racing_for_the_last_place_never_both_get_it(two_processes):
    first, second = two_processes
    with httpx.Client(timeout=60) as http:
        full, free = tenant(http, first, "Full"), tenant(http, first, "Free")
        quotas = http.put(f"{first}/organizations/{full['org']['id']}/quotas", json={"queuedRuns": 3})
        assert quotas.status_code == 200, quotas.text
        # No worker runs here: queued runs stay queued. Two of the three places are taken.
        for _ in range(2):
            assert http.post(f"{second}{full['execute']}", json={}, headers=full["headers"]).status_code == 202

        def runs_of_full() -> int:
            listed = http.get(f"{first}/flows/{full['flow']['id']}/executions", params={"limit": 200},
                              headers=full["headers"])
            return len(listed.json())

        for round_ in range(ROUNDS):
            answers = race({"one": (first, full), "two": (second, full), "other": (second, free)})
            statuses = sorted(answers[key].status_code for key in ("one", "two"))
            assert statuses == [202, 429], (round_, {k: (v.status_code, v.text) for k, v in answers.items()})
            refused = next(answers[key] for key in ("one", "two") if answers[key].status_code == 429)
            body = refused.json()
            assert body["quota"] == "queuedRuns" and body["limit"] == 3, body
            assert refused.headers["retry-after"] == "30"
            assert answers["other"].status_code == 202, answers["other"].text  # the other tenant: unaffected
            # Exactly the runs admitted exist; the admitted one is cancelled to free the place again.
            assert runs_of_full() == 3 + round_
            admitted = next(answers[key] for key in ("one", "two") if answers[key].status_code == 202).json()
            cancelled = http.post(f"{first}/flows/{full['flow']['id']}/executions/{admitted['executionId']}/cancel",
                                  headers=full["headers"])
            assert cancelled.status_code == 202, cancelled.text

        usage = http.get(f"{second}/organizations/{full['org']['id']}/usage").json()
        assert usage["queuedRuns"] == {"used": 2, "limit": 3}, usage
        other = http.get(f"{second}/organizations/{free['org']['id']}/usage").json()
        assert other["queuedRuns"] == {"used": ROUNDS, "limit": 10_000}, other
