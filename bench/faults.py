"""The fault schedule of the soak (bench/soak.py): what happens to which host, and when.

Each fault is a function of the cluster (bench/cluster.py) that breaks something,
waits, and repairs it; the schedule spreads them over the first 80 % of the
workload and runs them one after the other, each once the cluster is whole
again (a leader, a synchronous standby, both API hosts answering). Every fault
is recorded with its start, its end and, for the faults that touch the
database path, the *window* during which the API may answer 503 (with
Retry-After): from the fault until the first write through the API that works
again. The window is measured, not assumed: bench/invariants.py finds that
first write among the soak's probes.
"""

from __future__ import annotations

import sys
import time

from bench import cluster
from bench.cluster import BY_NAME, DB_HOSTS, Settings


def say(message: str) -> None:
    print(f"faults: {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


class Faults:
    def __init__(self, settings: Settings, schedule: list[str], seconds: float):
        self.settings = settings
        self.schedule = schedule
        self.seconds = seconds
        self.events: list[dict] = []

    # ---- waiting for the cluster to be whole -----------------------------------------------

    def whole(self, timeout: float = 240) -> float:
        started = time.monotonic()
        cluster.wait_until("a leader and a synchronous standby", cluster.healthy_replication, timeout, 1)
        for host in cluster.HOSTS:
            if "api" in host.services:
                cluster.wait_until(f"{host.name} /health", lambda h=host: cluster.http(
                    f"http://{h.address}:3000/health")[0] == 200, timeout, 1)
        return time.monotonic() - started

    def _restart(self, host, how: str = "stop") -> None:
        if how == "kill":
            cluster.kill_host(host)
        else:
            cluster.stop_host(host)
        cluster.start_host(host, self.settings)

    def _new_primary(self, old, event: dict, timeout: float = 180) -> None:
        """Wait for another node to be the primary; record which, and how long after the fault."""
        found = cluster.wait_until("a new primary", lambda: (p := cluster.primary()) and p != old and p, timeout, 0.5)
        event["newPrimary"], event["failoverSeconds"] = found.name, time.time() - event["start"]

    # ---- the faults --------------------------------------------------------------------------

    def kill_worker(self, event: dict) -> None:
        """SIGKILL every process of a worker host; it comes back 5 s later (its runs wait out their lease)."""
        host = BY_NAME["wk1"]
        event["host"] = host.name
        cluster.kill_host(host)
        time.sleep(5)
        cluster.start_host(host, self.settings)

    def kill_primary(self, event: dict) -> None:
        """The primary's host dies (SIGKILL to etcd, Patroni, PostgreSQL): Patroni promotes the
        synchronous standby once the leader key expires (ttl); the old node rejoins as a standby."""
        self._lose_primary(event, cluster.kill_host)

    def stop_primary(self, event: dict) -> None:
        """A clean stop of the primary's host (SIGTERM): Patroni hands the leader key over at once."""
        self._lose_primary(event, cluster.stop_host)

    def _lose_primary(self, event: dict, how) -> None:
        old = cluster.wait_until("a primary", cluster.primary, 120, 0.5)
        event["host"] = old.name
        event["window"] = "failover"
        event["at"] = time.time()  # the primary's loss itself, after finding which node it is
        how(old)
        self._new_primary(old, event)
        cluster.start_host(old, self.settings)

    def switchover(self, event: dict) -> None:
        """A planned switchover (patronictl, as for maintenance): the primary is demoted and comes back
        within seconds as a standby, reachable, while HAProxy still routes to it until its next checks,
        so sessions opened then reach a server that takes no writes (SQLSTATE 25006)."""
        old = cluster.wait_until("a primary", cluster.primary, 120, 0.5)
        # In synchronous mode only the synchronous standby may take over (it holds every commit).
        members = (cluster.patroni_cluster() or {}).get("members", [])
        candidate = next(cluster.BY_NAME[m["name"]] for m in members if m.get("role") == "sync_standby")
        event["host"] = old.name
        event["window"] = "failover"
        cluster.run("ip", "netns", "exec", old.netns, "patronictl", "-c", str(cluster.STATE / old.name / "patroni.yml"),
                    "switchover", "--leader", old.name, "--candidate", candidate.name, "--force")
        self._new_primary(old, event)

    def restart_pgbouncer(self, event: dict) -> None:
        """PgBouncer restarts (SIGTERM: it drops every client and server connection)."""
        event["host"] = "lb"
        event["window"] = "pooler restart"
        pid = cluster.service_pid(cluster.LB, "pgbouncer")
        if pid is not None:
            cluster.signal_pids([pid], 15)
            cluster.wait_until("PgBouncer gone", lambda: cluster.service_pid(cluster.LB, "pgbouncer") is None, 30, 0.2)
        time.sleep(1)
        cluster.start(cluster.LB, "pgbouncer", self.settings)

    def cut_worker(self, event: dict) -> None:
        """A worker host loses the database (packets dropped) for twice its lease plus 5 s, then comes back."""
        host = BY_NAME["wk2"]
        event["host"] = host.name
        seconds = 2 * self.settings.lease_seconds + 5
        event["cutSeconds"] = seconds
        cluster.cut(host)
        try:
            time.sleep(seconds)
        finally:
            cluster.heal(host)

    def restart_api(self, event: dict) -> None:
        """An API host restarts (Gunicorn's graceful stop, then a start): Nginx uses the other one."""
        host = BY_NAME["api1"]
        event["host"] = host.name
        # Requests queued for the stopping Gunicorn are reset; Nginx answers them 503 + Retry-After.
        event["window"] = "API restart"
        self._restart(host)

    def rolling_restart(self, event: dict) -> None:
        """Every host, one at a time, as a deploy does: application hosts, the load balancer host,
        the standbys, the primary last (a switchover); each back to whole before the next."""
        event["window"] = "deploy"
        order = [h for h in cluster.HOSTS if h.services in (("api",), ("worker",))] + [cluster.LB]
        leader = cluster.wait_until("a primary", cluster.primary, 120, 0.5)
        order += [h for h in DB_HOSTS if h != leader] + [leader]
        event["hosts"] = [h.name for h in order]
        for host in order:
            say(f"  rolling: {host.name}")
            self._restart(host)
            self.whole()

    # ---- the schedule ----------------------------------------------------------------------------

    def run(self) -> None:
        """Run every fault of the schedule, spread over 80 % of the workload; returns when done."""
        started = time.time()
        spacing = 0.8 * self.seconds / max(len(self.schedule), 1)
        for index, name in enumerate(self.schedule):
            due = started + 10 + index * spacing
            if time.time() < due:
                time.sleep(due - time.time())
            event = {"fault": name, "start": time.time()}
            say(f"{name}")
            try:
                getattr(self, name)(event)
                event["end"] = time.time()
                event["wholeAfter"] = round(self.whole(), 1)
            except Exception as exc:  # noqa: BLE001 - recorded; the checker fails the soak on it
                event["error"] = f"{type(exc).__name__}: {exc}"
                event["end"] = time.time()
                say(f"{name} failed: {event['error']}")
            self.events.append(event)
            say(f"{name} done in {event['end'] - event['start']:.1f} s"
                + (f" (new primary {event['newPrimary']} after {event['failoverSeconds']:.1f} s)"
                   if "newPrimary" in event else ""))


FAULT_SETS = {
    "full": ["kill_worker", "kill_primary", "restart_pgbouncer", "cut_worker", "restart_api", "stop_primary",
             "switchover", "rolling_restart"],
    "short": ["kill_worker", "kill_primary", "restart_pgbouncer", "restart_api"],
}
