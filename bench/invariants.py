"""The soak's checker: what must hold after faults, from the recorders and the database.

Jepsen-style: the workload recorded what the clients were told (acknowledged
executes, signals, webhook requests, every HTTP answer), the recorders what the
tool and the event receiver got; after the runs drained, the database says
what the service did. Every invariant is a row of the table, with the count
of violations (0 is the only passing value) and the examples that break it.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict

FINAL = {"completed", "failed", "cancelled"}
ACTION_STEPS = {"s1", "s2", "c1", "h1"}  # and the foreach items, items[i]


def _rows(db_url: str, tenant: dict) -> dict:
    import psycopg
    from psycopg.rows import dict_row

    org = tenant["org"]
    with psycopg.connect(db_url, row_factory=dict_row, connect_timeout=10) as conn:
        return {
            "runs": conn.execute(
                "select id::text, flow_id::text, status::text, root_run_id::text, parent_run_id::text, claims, "
                "recoveries, lease_expires_at, lease_expires_at < now() as lease_over, variables, error, "
                "created_at, finished_at from flow_runs where org_id = %s", (org,)).fetchall(),
            "steps": conn.execute(
                "select run_id::text, step_id, status, attempt, finished_at from flow_run_steps where org_id = %s",
                (org,)).fetchall(),
            "signals": conn.execute(
                "select run_id::text, signal, idempotency_key, step_id, consumed_at from flow_run_signals "
                "where org_id = %s", (org,)).fetchall(),
            "cron": conn.execute(
                "select variables from flow_runs where org_id = %s and flow_id = %s",
                (tenant["cronOrg"], tenant["flows"]["cron"])).fetchall(),
            "deliveries": conn.execute(
                "select id::text, seq, state, event_type, attempts from webhook_deliveries "
                "where org_id = %s and webhook_id = %s order by seq", (org, tenant["webhook"])).fetchall(),
        }


def _windows(faults, probes: list[dict]) -> list[dict]:
    """Per fault on the database path: from the fault until the last probe write that failed or took
    over 2 s (of those started up to a minute after the fault's repair) came back. The probes write
    every half second through the API and are never retried, so this is how long writes were
    unavailable or stalled, as a client saw it."""
    windows = []
    starts = [e["start"] for e in faults.events]
    for event in faults.events:
        if not event.get("window"):
            continue
        start, end = event["start"], event.get("end", event["start"])
        # Up to a minute after the repair, but never into the next fault's own window.
        limit = min([end + 60] + [s for s in starts if s > start])
        inside = [p for p in probes if start <= p["t"] <= limit]
        bad = [p for p in inside if not p["ok"] or p["done"] - p["t"] > 2.0]
        stop = max((p["done"] for p in bad), default=start)
        # The window: the fault itself, and after it until the last stalled write came back.
        windows.append({"fault": event["fault"], "kind": event["window"], "start": start, "end": max(stop, end),
                        "writesStalledSeconds": round(stop - min(p["t"] for p in bad), 1) if bad else 0.0,
                        "failedProbes": sum(1 for p in inside if not p["ok"]),
                        "slowProbes": sum(1 for p in inside if p["ok"] and p["done"] - p["t"] > 2.0)})
    return windows


def _in_window(t: float, windows: list[dict], slack: float = 2.0) -> bool:
    return any(w["start"] - slack <= t <= w["end"] + slack for w in windows)


def check(*, db_url, tenant, workload, client, tools, receiver, faults, started, ended, drained, settings,
          minutes, fault_set) -> dict:
    rows = _rows(db_url, tenant)
    runs = {r["id"]: r for r in rows["runs"]}
    steps = {(s["run_id"], s["step_id"]): s for s in rows["steps"]}
    rows_out: list[dict] = []

    def invariant(name: str, violations: list, detail: str = "") -> None:
        rows_out.append({"invariant": name, "violations": len(violations), "examples": violations[:5],
                         "detail": detail})

    # 1. Every acknowledged execute (and webhook request) reached a final state or a visible wait.
    acknowledged = [e["executionId"] for e in workload.executes if e["executionId"]]
    acknowledged += [h["executionId"] for h in workload.hooks if h["executionId"]]
    statuses = Counter(runs[r]["status"] if r in runs else "missing" for r in acknowledged)
    lost = [r for r in acknowledged if r not in runs or runs[r]["status"] not in FINAL | {"waiting"}]
    invariant("acknowledged runs lost (missing, or not final nor waiting)", lost,
              ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    failed = [f"{r}: {runs[r]['error']}" for r in acknowledged if r in runs and runs[r]["status"] == "failed"]
    invariant("acknowledged runs failed (the tool never fails)", failed)
    # 2. None left running past its lease (after the drain, none running at all).
    stuck = [r["id"] for r in runs.values() if r["status"] == "running"]
    invariant("runs left running after the drain", stuck,
              f"{sum(1 for r in runs.values() if r['recoveries'] > 0)} run(s) taken over after a lost lease")
    unacked = [e for e in workload.executes if not e["executionId"]]
    # 3. The tool's view: no completed step sent again, at most one effect per key.
    by_key: dict[str, list[dict]] = defaultdict(list)
    for request in tools.requests:
        by_key[request["key"]].append(request)
    sent_again, conflicting, unknown_keys = [], [], []
    for key, requests in by_key.items():
        if key is None:
            unknown_keys.append("request without Idempotency-Key")
            continue
        root, _, rest = key.partition(":")
        step_id, _, attempt = rest.rpartition(":")
        # The key names the chain's root run; a retry chain is one run here (no retries are made).
        step = steps.get((root, step_id))
        if len({r["body"] for r in requests}) > 1:
            conflicting.append(key)
        if step is None:
            unknown_keys.append(key)
            continue
        if step["status"] == "completed" and step["finished_at"] is not None:
            done = step["finished_at"].timestamp()
            later = [r for r in requests if r["t"] > done + 0.5]
            if later:
                sent_again.append(f"{key} sent {len(later)}x after it completed")
    resent = sum(len(r) - 1 for r in by_key.values())
    invariant("completed steps sent again", sent_again,
              f"{len(tools.requests)} request(s), {len(by_key)} key(s); {resent} resend(s) of a step whose "
              "outcome was unknown, absorbed by its key")
    invariant("keys with two different requests (two effects)", conflicting)
    invariant("requests no step of the run explains", unknown_keys)
    missing_effects = []
    for (run_id, step_id), step in steps.items():
        base = step_id.split("[")[0]
        if step["status"] != "completed" or (base not in ACTION_STEPS and base != "items") or step_id == "items":
            continue
        root = runs[run_id]["root_run_id"] if run_id in runs else run_id
        if f"{root}:{step_id}:{step['attempt']}" not in by_key:
            missing_effects.append(f"{root}:{step_id}:{step['attempt']}")
    invariant("completed action steps the tool never received", missing_effects)
    # 4. Every signal taken once.
    signals_by_run = defaultdict(list)
    for signal in rows["signals"]:
        signals_by_run[signal["run_id"]].append(signal)
    signal_problems = []
    mains = [e["executionId"] for e in workload.executes if e["executionId"]]
    for run_id in mains:
        taken = signals_by_run.get(run_id, [])
        if len(taken) != 1:
            signal_problems.append(f"{run_id}: {len(taken)} signal(s)")
        elif runs.get(run_id, {}).get("status") == "completed" and taken[0]["consumed_at"] is None:
            signal_problems.append(f"{run_id}: completed without taking its signal")
    invariant("signals not taken exactly once", signal_problems,
              f"{sum(len(v) for v in signals_by_run.values())} signal(s) for {len(mains)} run(s)")
    # 5. Every cron slot fired once.
    slots = [r["variables"].get("trigger", {}).get("scheduledAt") for r in rows["cron"]]
    twice = [slot for slot, n in Counter(slots).items() if n > 1]
    invariant("cron slots fired twice", twice, f"{len(slots)} slot(s) fired; {_coalesced(slots)} later slot(s) "
              "folded into one firing after a late or missed second (catchUp: one)")
    # 6. Every event delivered at least once and in order.
    deliveries = rows["deliveries"]
    undelivered = [f"{d['id']} {d['state']}" for d in deliveries if d["state"] != "delivered"]
    seq_of = {d["id"]: d["seq"] for d in deliveries}
    first_seen: list[tuple[int, str]] = []  # (seq, executionId) in the order the receiver first got them
    seen = set()
    for request in receiver.requests:
        if request["delivery"] in seq_of and request["delivery"] not in seen:
            seen.add(request["delivery"])
            first_seen.append((seq_of[request["delivery"]], request["execution"]))
    never = [d["id"] for d in deliveries if d["id"] not in seen]
    # The order promised (docs/api.md, "Ordering"): a run's events in the order they happened. Events of
    # two runs whose transactions overlapped are ordered by commit, which the sequence need not follow.
    last_of: dict[str, int] = {}
    out_of_order, across = [], 0
    for index, (seq, execution) in enumerate(first_seen):
        if execution in last_of and seq < last_of[execution]:
            out_of_order.append(f"{execution}: seq {seq} after {last_of[execution]}")
        last_of[execution] = max(seq, last_of.get(execution, seq))
        if index and seq < first_seen[index - 1][0]:
            across += 1
    invariant("events not delivered (outbox state, or never received)", undelivered + never,
              f"{len(deliveries)} event(s), {len(receiver.requests)} delivery request(s)")
    invariant("a run's events received out of order", out_of_order,
              f"{across} pair(s) of different runs' events received in commit rather than sequence order")
    # 7. HTTP: no 500; a 503 only with Retry-After, inside a measured window.
    windows = _windows(faults, workload.probes)
    answers = client.answers
    codes = Counter(a["status"] for a in answers)
    server_errors = [f"{a['method']} {a['route']} {a['status']}" for a in answers
                     if a["status"] >= 500 and a["status"] != 503]
    invariant("5xx other than 503", server_errors, ", ".join(f"{k}: {v}" for k, v in sorted(codes.items())))
    bad_503 = [f"{a['method']} {a['route']} at +{a['t'] - started:.0f} s" for a in answers if a["status"] == 503
               and (not a["retryAfter"] or not _in_window(a["t"], windows))]
    invariant("503 without Retry-After, or outside a measured window (failover, pooler or API restart, deploy)",
              bad_503,
              f"{codes.get(503, 0)} 503(s) in {len(windows)} window(s)")
    dropped = [f"{a['method']} {a['route']} {a['error']} at +{a['t'] - started:.0f} s" for a in answers
               if a["status"] == 0 and not _in_window(a["t"], windows)]
    invariant("requests with no answer outside a window", dropped)
    fault_errors = [f"{e['fault']}: {e['error']}" for e in faults.events if "error" in e]
    invariant("faults that could not be injected or repaired", fault_errors)
    # 7b. What every settled database keeps, whatever the workload (bench/db_invariants.sql, also the
    # restore drill's check): read across organizations, as the superuser.
    from bench import db_invariants

    broken = db_invariants.check(db_url)
    for rule in db_invariants.QUERIES:
        invariant(f"database: {rule.replace('_', ' ')}", [str(dict(r)) for r in broken.get(rule, [])])
    # 8. Recovery: from the primary's death (or stop) to the first step completed afterwards.
    finished = sorted(s["finished_at"].timestamp() for s in rows["steps"]
                      if s["status"] == "completed" and s["finished_at"] is not None)
    recoveries = []
    for event in faults.events:
        if event["fault"] in ("kill_primary", "stop_primary"):
            lost_at = event.get("at", event["start"])
            after = [t for t in finished if t > lost_at]
            if after:
                recoveries.append({"fault": event["fault"], "seconds": round(after[0] - lost_at, 1),
                                   "failoverSeconds": round(event.get("failoverSeconds", 0), 1)})
    seconds = [r["seconds"] for r in recoveries]
    report = {
        "date": __import__("datetime").datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "minutes": minutes, "faultSet": fault_set,
        "settings": {"ttl": settings.ttl, "loopWait": settings.loop_wait, "retryTimeout": settings.retry_timeout,
                     "leaseSeconds": settings.lease_seconds, "webConcurrency": settings.web_concurrency,
                     "workerConcurrency": settings.worker_concurrency},
        "faults": [{k: (round(v - started, 1) if k in ("start", "end", "at") else v) for k, v in e.items()}
                   for e in faults.events],
        "windows": [{**w, "start": round(w["start"] - started, 1), "end": round(w["end"] - started, 1)}
                    for w in windows],
        "counts": {"executesAcknowledged": len(mains), "executesUnacknowledged": len(unacked),
                   "webhookRuns": sum(1 for h in workload.hooks if h["executionId"]),
                   "runs": len(runs), "runStatuses": dict(Counter(r["status"] for r in runs.values())),
                   "toolRequests": len(tools.requests), "effects": len(by_key), "resends": resent,
                   "events": len(deliveries), "eventRequests": len(receiver.requests),
                   "cronSlots": len(slots), "httpAnswers": len(answers), "httpStatuses": dict(codes),
                   "drainSeconds": round(drained, 1), "workloadSeconds": round(ended - started, 1)},
        "recovery": {"afterPrimaryLoss": recoveries,
                     "p50Seconds": statistics.median(seconds) if seconds else None,
                     "maxSeconds": max(seconds) if seconds else None},
        "invariants": rows_out,
    }
    report["ok"] = all(r["violations"] == 0 for r in rows_out) and not lost
    return report


def _coalesced(slots: list) -> int:
    """Seconds between consecutive fired slots beyond the first: slots folded into a later firing."""
    import datetime as dt

    times = sorted(dt.datetime.fromisoformat(s) for s in slots if s)
    return sum(max(0, round((b - a).total_seconds()) - 1) for a, b in zip(times, times[1:], strict=False))


def table(report: dict) -> str:
    """The invariant table (Markdown), then the counts and recovery times."""
    lines = ["| invariant | violations | detail |", "|---|---:|---|"]
    for row in report["invariants"]:
        detail = row["detail"]
        if row["violations"]:
            detail = (detail + "; " if detail else "") + "e.g. " + "; ".join(map(str, row["examples"][:3]))
        lines.append(f"| {row['invariant']} | {row['violations']} | {detail} |")
    counts = report["counts"]
    recovery = report["recovery"]
    lines.append("")
    lines.append(f"faults: {', '.join(e['fault'] + ('@' + e['host'] if e.get('host') else '') for e in report['faults'])}")
    lines.append(f"runs: {counts['runs']} ({counts['runStatuses']}); executes acknowledged {counts['executesAcknowledged']}, "
                 f"unacknowledged {counts['executesUnacknowledged']}; tool requests {counts['toolRequests']}, "
                 f"effects {counts['effects']}, resends {counts['resends']}; events {counts['events']}; "
                 f"cron slots {counts['cronSlots']}; HTTP {counts['httpStatuses']}")
    for window in report["windows"]:
        lines.append(f"window {window['fault']}: +{window['start']} s to +{window['end']} s, writes stalled or failed "
                     f"for {window['writesStalledSeconds']} s ({window['failedProbes']} probe(s) failed, "
                     f"{window['slowProbes']} slow)")
    lines.append(f"primary lost -> first completed step: p50 {recovery['p50Seconds']} s, max {recovery['maxSeconds']} s "
                 f"({recovery['afterPrimaryLoss']})")
    # What broke goes last, with its examples: CI keeps only the tail of what the soak printed.
    lines.extend(f"broken: {row['invariant']}: {row['violations']}, e.g. {'; '.join(map(str, row['examples'][:3]))}"
                 for row in report["invariants"] if row["violations"])
    lines.append("PASS" if report["ok"] else "FAIL")
    return "\n".join(lines)
