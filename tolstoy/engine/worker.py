"""``tolstoy worker``: claims flow runs from PostgreSQL and runs them on a thread pool.

Idle workers wake on NOTIFY tolstoy_runs (sent when a run is queued) and also
poll, so a run whose delay ends is picked up on time. While a run is in hand,
a heartbeat renews its lease; a worker that dies stops renewing, and after
``lease_seconds`` any other worker claims the run and resumes it.
SIGTERM/SIGINT: stop claiming, let each run finish its current step, hand the
runs back to the queue, exit.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from ..db.database import Database
from ..db.queries import SQL
from .runner import Engine

log = logging.getLogger("tolstoy.worker")


class Worker:
    """A claim loop with ``concurrency`` runs in flight at most."""

    def __init__(self, db: Database, engine_factory, *, concurrency: int = 4, poll_seconds: float = 1.0,
                 lease_seconds: float = 30.0, worker_id: str | None = None):
        self.db = db
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stopping = threading.Event()
        self.drained = threading.Event()
        self.wake = threading.Event()
        self.engine: Engine = engine_factory(self.id, self.stopping)
        self._active = 0
        self._lock = threading.Lock()

    def _done(self, future) -> None:
        with self._lock:
            self._active -= 1
        exc = future.exception()
        if exc is not None:
            log.error("run crashed: %r", exc, exc_info=exc)
        self.wake.set()

    def _heartbeat(self) -> None:
        # Beats until every run in hand has been handed back, not merely until the stop
        # signal: a step finishing after SIGTERM must keep its lease while it runs.
        while not self.drained.wait(self.lease_seconds / 3):
            try:
                self.db.scalar(SQL.runs.renew_leases, worker=self.id, lease_seconds=self.lease_seconds)
            except Exception:  # noqa: BLE001 - a missed beat is retried; the lease is 3 beats long
                log.exception("lease renewal failed")

    def _seconds_until_next_run(self) -> float:
        next_wake = self.db.scalar(SQL.runs.next_wake)
        if next_wake is None:
            return self.poll_seconds
        delta = (next_wake - dt.datetime.now(dt.UTC)).total_seconds()
        return min(max(delta, 0.01), self.poll_seconds)

    def claim(self, pool: ThreadPoolExecutor) -> int:
        """Claim as many runs as there are free slots; returns how many were claimed."""
        with self._lock:
            free = self.concurrency - self._active
        if free <= 0:
            return 0
        rows = self.db.all(SQL.runs.claim, worker=self.id, limit=free, lease_seconds=self.lease_seconds)
        for row in rows:
            with self._lock:
                self._active += 1
            pool.submit(self.engine.run, row).add_done_callback(self._done)
        return len(rows)

    def run(self, stop_after_idle: bool = False) -> None:
        """Work until stop() (or, with stop_after_idle, until no run is due or in flight)."""
        listener = threading.Thread(target=self.db.listen, name="tolstoy-listen",
                                    args=(self.wake.set, self.stopping), daemon=True)
        heartbeat = threading.Thread(target=self._heartbeat, name="tolstoy-heartbeat", daemon=True)
        listener.start()
        heartbeat.start()
        log.info("worker started", extra={"worker": self.id, "concurrency": self.concurrency})
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="tolstoy-run") as pool:
            while not self.stopping.is_set():
                self.wake.clear()
                try:
                    claimed = self.claim(pool)
                    wait = 0 if claimed else self._seconds_until_next_run()
                except Exception:  # noqa: BLE001 - database hiccup: back off, keep serving
                    log.exception("claim failed")
                    claimed, wait = 0, self.poll_seconds
                if stop_after_idle and not claimed and self._active == 0 and self.db.scalar(SQL.runs.next_wake) is None:
                    break
                if wait:
                    self.wake.wait(wait)
            # Leaving the with-block waits for in-flight runs to reach their step boundary.
        self.stopping.set()
        self.drained.set()
        heartbeat.join(timeout=self.lease_seconds)
        listener.join(timeout=2)
        log.info("worker stopped", extra={"worker": self.id})

    def stop(self, *_: object) -> None:
        """Stop claiming; runs in flight finish their current step, then go back to the queue."""
        self.stopping.set()
        self.wake.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the worker gracefully."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
