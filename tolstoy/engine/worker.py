"""``tolstoy worker``: claims flow runs from PostgreSQL and runs them on a thread pool.

A worker claims only as many runs as it has free threads. An idle worker asks
the database nothing until a run is queued (NOTIFY on the direct connection),
until the next delayed run or expiring lease falls due (the claim says when),
or until ``poll_seconds`` pass. While it holds runs, a heartbeat renews the
leases of exactly those runs, presenting each run's token; a run whose lease
could not be renewed (another worker may own it now) is stopped, and a cancel
asked for through the API reaches its run within one heartbeat. Once an hour
(``maintenance_seconds``), on a thread of its own, a worker keeps the run
history: monthly partitions created ahead, those past retention dropped; then
it prunes what is past retention (finished webhook deliveries, the trigger
inbox, signals of dropped runs) and fails steps parked on an unknown outcome
past their timeout, in batches of ``prune_batch`` rows, each its own
transaction, until it has caught up or spent ``prune_budget_seconds``. A pass
that ran out of budget is followed by the next one after a pause as long as it
took, not after an hour: pruning keeps pace with what comes in.

Schedule triggers fire from the same loop: the claim of runs also says when the
next schedule of any organization falls due, and only then does a worker lock
the due schedules (SKIP LOCKED), advance each one's next time and queue its run
in one transaction, so each due time fires once however many workers run. The
clock that decides what is due is the database's, or ``clock`` (tests).

Claims are fair across organizations (tolstoy_claim_runs_v2): organizations
with due runs take turns, weighed by the worker time they hold and used lately,
so one organization's backlog never holds another's runs back.

SIGTERM/SIGINT: stop claiming, let each run reach its next step boundary and
hand it back to the queue; after ``drain_seconds`` cut off the runs still in
hand (their calls end, they write nothing more: their leases expire and another
worker resumes them) and exit, whatever those runs were doing.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .. import metrics, schedules, tracing
from ..db import database as dbmod
from ..db.database import Database
from ..db.queries import SQL
from ..errors import DatabaseUnavailable
from ..times import seconds_between
from .calls import ToolClient
from .runner import Engine, Run
from .webhooks import Deliverer, DeliveryLoop

log = logging.getLogger("tolstoy.worker")

# A claim asks for this many runs at most: it loads each in a subtransaction of its own, and a
# transaction with more than 64 of them makes every other one's snapshots slower while it lasts.
CLAIM_BATCH = 32
# After the drain timeout, how long the runs cut off get to notice before the worker leaves them.
CUT_OFF_SECONDS = 5.0


def _stamp(value: dt.datetime | None) -> str | None:
    # Full precision: the fire compares the due time it is given with the stored one.
    return None if value is None else value.isoformat()


def _firing(row: dict) -> dict:
    """What to do with one claimed schedule: its due time, the next one, and the time fired (or None)."""
    try:
        firing = schedules.plan(row["cron"], row["timezone"], row["catch_up"], row["next_run_at"], row["now"])
    except schedules.ScheduleError as exc:
        # Stored schedules were checked when created; a zone gone from tzdata stops the schedule, loudly.
        log.error("schedule cannot be computed; it stops", extra={"trigger_id": str(row["id"]), "error": str(exc)})
        firing = schedules.Firing(None, None)
    return {"org_id": str(row["org_id"]), "id": str(row["id"]), "due": _stamp(row["next_run_at"]),
            "next_run_at": _stamp(firing.next_run_at), "scheduled_at": _stamp(firing.scheduled_at)}


class Worker:
    """A claim loop with ``concurrency`` runs in flight at most."""

    def __init__(self, db: Database, engine_factory, *, concurrency: int = 4, poll_seconds: float = 10.0,
                 lease_seconds: float = 30.0, max_recoveries: int = 3, max_handbacks: int = 20,
                 drain_seconds: float = 60.0, fair_share_half_life_seconds: float = 300.0,
                 retention_days: int | None = None,
                 maintenance_seconds: float = 3600.0, worker_id: str | None = None,
                 clock: Callable[[], dt.datetime] | None = None, schedules_per_claim: int = 100,
                 deliverer: Callable[[str, ToolClient], Deliverer] | None = None, prune_batch: int = 10_000,
                 prune_budget_seconds: float = 60.0, unknown_outcome_timeout_days: int = 30,
                 audit_retention_days: int | None = None):
        self.db = db
        self.clock = clock  # None: the database's clock decides what is due
        self.schedules_per_claim = schedules_per_claim
        # When the next schedule falls due, on time.monotonic()'s scale (None: none is known).
        self._schedule_deadline: float | None = None
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        self.max_recoveries = max_recoveries
        self.retention_days = retention_days
        self.audit_retention_days = audit_retention_days
        self.maintenance_seconds = maintenance_seconds
        self.prune_batch = prune_batch
        self.prune_budget_seconds = prune_budget_seconds
        self.unknown_outcome_timeout_days = unknown_outcome_timeout_days
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stopping = threading.Event()
        self.drained = threading.Event()
        self.wake = threading.Event()
        self.drain_seconds = drain_seconds
        self.fair_share_half_life_seconds = fair_share_half_life_seconds
        self.abandoned = 0  # run threads still going when run() returned (cut off, not stopping)
        self.engine: Engine = engine_factory(self.id, self.stopping)
        self.engine.lease_seconds = lease_seconds
        self.engine.max_recoveries = max_recoveries
        self.engine.max_handbacks = max_handbacks
        self.engine.fair_share_half_life_seconds = fair_share_half_life_seconds
        self._held: dict = {}  # run id -> Run being executed by a thread of this worker
        self._lock = threading.Lock()
        self._next_maintenance = 0.0
        # Outbound event webhooks: a thread of their own, woken when the run claim says one is due.
        self.deliverer = deliverer(self.id, self.engine.tools) if deliverer is not None else None
        self.deliveries = DeliveryLoop(self.deliverer, self.stopping) if self.deliverer is not None else None

    # ---- runs in hand -----------------------------------------------------------

    def _execute(self, claimed: dict, run: Run) -> None:
        try:
            self.engine.run(claimed, run)
        except Exception:  # noqa: BLE001 - a future would swallow it: the run's lease runs out, say why
            log.exception("run thread failed; the run is left to its lease", extra={"execution_id": str(run.id)})
        finally:
            with self._lock:
                self._held.pop(run.id, None)
            self.wake.set()

    def claim(self, pool: ThreadPoolExecutor) -> tuple[int, float | None, bool]:
        """Claim as many runs as there are free threads (and fire the schedules that are due); returns
        (claimed, seconds until the next run falls due, by the database's clock, or None when nothing
        is queued, whether it took as many runs as it asked for). Fewer than asked: nothing else was
        due (a run queued since wakes the loop by NOTIFY, one due later is what next_due says), so the
        loop does not ask again at once."""
        with self._lock:
            free = self.concurrency - len(self._held)
        if free <= 0:
            self.fire_when_due()
            return 0, None, False
        asked = time.monotonic()  # the lease cannot have started before this
        limit = min(free, CLAIM_BATCH)
        # Each run comes as a row of its own: a run whose payload cannot be built is struck, not the claim.
        rows = self.db.all(SQL.runs.claim, worker=self.id, limit=limit,
                           lease_seconds=self.lease_seconds, max_recoveries=self.max_recoveries,
                           half_life_seconds=self.fair_share_half_life_seconds)
        answer = next(row["meta"] for row in rows if row["meta"] is not None)
        runs = [row["run"] for row in rows if row["run"] is not None]
        for claimed in runs:
            claimed["now"] = answer["now"]  # the database's clock at the claim (foreach items' wake times)
            run = Run(claimed)
            run.leased_at = asked
            if claimed.get("claims") == 1:  # a first claim starts the run; later ones resume it
                metrics.count_run("running")
            if claimed.get("slot_waited_seconds") is not None:  # it waited for a concurrency slot
                metrics.observe_slot_wait(claimed["slot_waited_seconds"])
            with self._lock:
                self._held[run.id] = run
            pool.submit(self._execute, claimed, run)
        self._note_schedule(answer.get("next_schedule"), answer["now"])
        if self.deliveries is not None and answer.get("next_delivery") is not None:
            self.deliveries.due_in(seconds_between(answer["next_delivery"], answer["now"]))
        self.fire_when_due()
        due = answer.get("next_due")
        return len(runs), (None if due is None else seconds_between(due, answer["now"])), len(runs) == limit

    # ---- schedule triggers ------------------------------------------------------

    def _note_schedule(self, next_schedule, db_now) -> None:
        """Remember when the next schedule falls due (by the injected clock, else the database's)."""
        if next_schedule is None:
            self._schedule_deadline = None
            return
        now = self.clock() if self.clock is not None else db_now
        self._schedule_deadline = time.monotonic() + seconds_between(next_schedule, now)

    def schedule_due_in(self) -> float | None:
        """Seconds until the next known schedule falls due (None: none)."""
        if self._schedule_deadline is None:
            return None
        return self._schedule_deadline - time.monotonic()

    def fire_when_due(self) -> None:
        """Fire the due schedules if the last answer said one is due; never raises."""
        due_in = self.schedule_due_in()
        if due_in is None or due_in > 0:
            return
        try:
            self.fire_schedules()
        except Exception:  # noqa: BLE001 - a schedule is fired by the next attempt (or another worker)
            log.exception("firing schedules failed")
            self._schedule_deadline = time.monotonic() + 1.0

    def fire_schedules(self) -> list[dict]:
        """Lock the due schedules of any organization (SKIP LOCKED: another worker takes the others),
        advance each to its next time and queue its run, all in one transaction; returns the runs queued."""
        as_of = self.clock() if self.clock is not None else None
        with self.db.transaction():
            rows = self.db.all(SQL.triggers.claim_schedules, worker=self.id, limit=self.schedules_per_claim,
                               as_of=as_of)
            fires = [_firing(row) for row in rows]
            fired = self.db.scalar(SQL.triggers.fire_schedules, as_of=as_of, fires=dbmod.json(fires)) if fires else []
            after = self.db.one(SQL.triggers.next_schedule, commit=True)
        for each in fired:
            metrics.count_run("queued")
            log.info("schedule fired", extra={"trigger_id": each["trigger_id"], "execution_id": each["execution_id"],
                                             "scheduled_at": each["scheduled_at"]})
        now = as_of if as_of is not None else after["now"]
        next_schedule = after["next_schedule"]
        if next_schedule is not None and not rows:
            # The due ones are locked by other workers firing them: look again shortly rather than spin.
            next_schedule = max(next_schedule, now + dt.timedelta(seconds=0.05))
        self._note_schedule(next_schedule, now)
        return fired

    def heartbeat_once(self) -> None:
        """Renew the leases of the runs in hand; stop those that are lost, deliver cancels."""
        with self._lock:
            # Not those cut off (a lost lease, the drain timeout): their leases are left to run out.
            held = [run for run in self._held.values() if not run.lost.is_set()]
        if not held:
            return
        asked = time.monotonic()
        rows = self.db.all(SQL.runs.renew_leases, worker=self.id, orgs=[r.org_id for r in held],
                           runs=[r.id for r in held], tokens=[r.token for r in held],
                           lease_seconds=self.lease_seconds)
        renewed = {str(row["run_id"]): row["cancel"] for row in rows}
        for run in held:
            cancel = renewed.get(str(run.id))
            if cancel is None:
                log.warning("lease not renewed; stopping the run", extra={"execution_id": str(run.id)})
                run.lost.set()
                run.cancel.set()  # ends a call in flight
            else:
                run.leased_at = asked
                if cancel:
                    run.cancel.set()

    def stop_expired(self) -> None:
        """Stop the runs whose lease may have run out because renewals kept failing (the database is
        unreachable): another worker may own them by now, so their calls in flight end here."""
        now = time.monotonic()
        with self._lock:
            held = list(self._held.values())
        for run in held:
            if now - run.leased_at >= self.lease_seconds and not run.lost.is_set():
                log.warning("lease not renewed for a whole lease; stopping the run",
                            extra={"execution_id": str(run.id)})
                run.lost.set()
                run.cancel.set()

    def _heartbeat(self) -> None:
        # Beats until every run in hand has been handed back, not merely until the stop
        # signal: a step finishing after SIGTERM must keep its lease while it runs.
        while not self.drained.wait(self.lease_seconds / 3):
            try:
                self.heartbeat_once()
            except Exception:  # noqa: BLE001 - a missed beat is retried; the lease is 3 beats long
                log.exception("lease renewal failed")

    def _watch_leases(self) -> None:
        # Apart from the heartbeat, which may sit waiting for a connection longer than a lease.
        while not self.drained.wait(self.lease_seconds / 6):
            self.stop_expired()

    def maintain(self, today=None) -> dict | None:
        """One upkeep pass: partitions ahead, those past retention dropped (one worker at a time), then
        prune() ({pruned}). The next pass is due after ``maintenance_seconds``, or, when pruning ran out
        of its budget, after a pause as long as this pass took."""
        started = time.monotonic()
        self._next_maintenance = started + self.maintenance_seconds
        result = self.db.scalar(SQL.runs.maintain_history, today=today, retention_days=self.retention_days,
                                months_ahead=3)
        if result and result.get("dropped"):
            log.info("history pruned", extra={"dropped": result["dropped"], "kept": result.get("kept")})
        pruned = self.prune()
        if pruned["behind"]:
            self._next_maintenance = time.monotonic() + max(time.monotonic() - started, 1.0)
        return {**(result or {}), "pruned": pruned}

    def prune(self) -> dict:
        """Housekeeping past retention, in batches of ``prune_batch`` rows of each kind (one transaction
        each, so no lock is held long), until a batch finds less than a full batch of every kind (caught
        up) or ``prune_budget_seconds`` are spent (``behind``: the next pass comes soon). One worker at a
        time: another one's batch in progress ends this pass."""
        totals = dict.fromkeys(("deliveries", "inbox", "signals", "unknown_outcomes", "audit"), 0)
        started = time.monotonic()
        behind = False
        batches = 0
        while True:
            done = self.db.scalar(SQL.runs.prune, batch=self.prune_batch, retention_days=self.retention_days,
                                  delivery_retention_days=(
                                      self.deliverer.retention_days if self.deliverer is not None else None),
                                  unknown_outcome_days=self.unknown_outcome_timeout_days,
                                  audit_retention_days=self.audit_retention_days)
            if done is None:  # another worker is pruning
                break
            batches += 1
            for kind in totals:
                totals[kind] += done[kind]
            if max(done[kind] for kind in totals) < self.prune_batch:
                break
            if time.monotonic() - started >= self.prune_budget_seconds or self.stopping.is_set():
                behind = True
                break
        if any(totals.values()) or behind:
            log.info("housekeeping pruned", extra={**totals, "batches": batches, "behind": behind,
                                                   "seconds": round(time.monotonic() - started, 3)})
        return {**totals, "behind": behind}

    def _upkeep(self) -> None:
        # A thread of its own: a pass that takes its whole pruning budget must not hold up claims.
        while not self.stopping.wait(max(self._next_maintenance - time.monotonic(), 0)):
            try:
                self.maintain()
            except DatabaseUnavailable:
                self._next_maintenance = time.monotonic() + 60  # try again soon
            except Exception:  # noqa: BLE001 - history upkeep must never stop the worker
                self._next_maintenance = time.monotonic() + self.maintenance_seconds
                log.exception("history maintenance failed")

    # ---- the loop ---------------------------------------------------------------

    def run(self, stop_after_idle: bool = False) -> None:
        """Work until stop() (or, with stop_after_idle, until nothing is due or in flight)."""
        listener = threading.Thread(target=self.db.listen, name="tolstoy-listen",
                                    args=(self.wake.set, self.stopping), daemon=True)
        heartbeat = threading.Thread(target=self._heartbeat, name="tolstoy-heartbeat", daemon=True)
        watch = threading.Thread(target=self._watch_leases, name="tolstoy-lease-watch", daemon=True)
        upkeep = threading.Thread(target=self._upkeep, name="tolstoy-upkeep", daemon=True)
        delivery = None
        if self.deliveries is not None:
            delivery = threading.Thread(target=self.deliveries.run, name="tolstoy-webhooks", daemon=True)
            delivery.start()
        listener.start()
        heartbeat.start()
        watch.start()
        upkeep.start()
        tracing.setup()  # this process's traces, if asked for (OTEL_TRACES_EXPORTER, or the host's provider)
        log.info("worker started", extra={"worker": self.id, "concurrency": self.concurrency})
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="tolstoy-run")
        try:
            while not self.stopping.is_set():
                self.wake.clear()
                try:
                    claimed, due_in, full = self.claim(pool)
                except Exception:  # noqa: BLE001 - database hiccup: back off, keep serving
                    log.exception("claim failed")
                    claimed, due_in, full = 0, self.poll_seconds, False
                with self._lock:
                    busy = len(self._held)
                if stop_after_idle and not claimed and busy == 0 and due_in is None:
                    break
                if claimed and busy < self.concurrency and full:
                    continue  # it took all it asked for: there may be more due right now
                wait = self.poll_seconds if due_in is None else min(max(due_in, 0.01), self.poll_seconds)
                schedule_in = self.schedule_due_in()
                if schedule_in is not None:
                    wait = min(wait, max(schedule_in, 0.01))
                self.wake.wait(wait)
        finally:
            self.stopping.set()
            self._drain(pool)
        self.drained.set()
        if delivery is not None:
            self.deliveries.stop()
            delivery.join(timeout=self.deliverer.timeout_ms / 1000 + 5)
        heartbeat.join(timeout=self.lease_seconds)
        listener.join(timeout=2)
        upkeep.join(timeout=5)  # a batch in progress commits (or the process exit rolls it back)
        tracing.flush()
        log.info("worker stopped", extra={"worker": self.id})

    def _busy(self) -> list[Run]:
        with self._lock:
            return list(self._held.values())

    def _drain(self, pool: ThreadPoolExecutor) -> None:
        """Stopping: the runs in hand reach their next step boundary and go back to the queue (Stop);
        those that have not within ``drain_seconds`` (a slow tool, a long render) are cut off: their
        calls end and they write nothing more, so their leases run out and another worker resumes
        them (their calls' outcomes unknown, as after a crash). A thread that does not stop even then
        (a render that checks nothing) is left behind: ``abandoned`` says how many, and the process
        should exit without waiting for them (``tolstoy worker`` does)."""
        deadline = time.monotonic() + self.drain_seconds
        while self._busy() and time.monotonic() < deadline:
            self.wake.wait(min(0.2, max(deadline - time.monotonic(), 0.01)))
            self.wake.clear()
        held = self._busy()
        if held:
            log.warning("drain timeout: %d run(s) still in hand after %.0f s (TOLSTOY_WORKER_DRAIN_SECONDS) are "
                        "cut off; their leases run out and another worker resumes them", len(held),
                        self.drain_seconds, extra={"worker": self.id})
            for run in held:
                run.lost.set()
                run.cancel.set()  # ends a call in flight
            cut_off = time.monotonic() + CUT_OFF_SECONDS
            while self._busy() and time.monotonic() < cut_off:
                self.wake.wait(0.1)
                self.wake.clear()
        self.abandoned = len(self._busy())
        pool.shutdown(wait=not self.abandoned, cancel_futures=True)

    def stop(self, *_: object) -> None:
        """Stop claiming; runs in flight go back to the queue at their next step boundary (within
        ``drain_seconds``, else they are cut off)."""
        self.stopping.set()
        self.wake.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the worker gracefully."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
