"""``/console``: the run console, server-rendered HTML for one organization at a time (flows,
runs, a run's timeline), served by the same app and the same SQL layer as the API.

Who the console acts for is decided as the API decides it (tolstoy/api/tenancy.py):
- ``headers`` mode: the organization is in the path, ``/console/orgs/{orgId}/…``, exactly as
  trusted as the ``X-Org-ID`` header (a gateway in front authenticates people), so every page
  reads without JavaScript.
- ``api_key`` mode: a page requested without ``Authorization`` is an empty shell; its script
  takes the key from ``sessionStorage`` and requests the same URL with
  ``Authorization: Bearer <key>``, then shows the page's ``<main>``. The key never travels in
  a cookie or a URL, so a page or an action cannot be forged from another site (CSRF).

Every page is one unit of work (one transaction, the tenant set inside it, row-level security
on every query); another organization's flow or run is the console's 404 page. Actions
(execute, cancel, retry, resolve, move to a version: its dry run's diff first) are the API's own endpoints, called from the page's script,
so they run the same code and show the API's error messages. See docs/console.md."""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import falcon
import jinja2

from .. import tracing
from ..config import Config
from ..db.database import NOBODY, Database, Tenant
from ..db.queries import SQL
from ..engine import RUN_STEP_KEY
from ..errors import DatabaseUnavailable, KeyRejected, TenantRejected
from ..numerals import unsigned
from ..times import utcnow
from . import audit
from .audit import AUDIT_TARGET_TYPES
from .paging import encode_cursor, time_id_cursor, time_id_key
from .quotas import RequestBuckets
from .runs import FINISHED_RUN_STATUSES as FINISHED
from .runs import MAX_RERUNS_SHOWN
from .tenancy import KeyOrganizations, bearer_token, key_hash

log = logging.getLogger("tolstoy.console")
HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates" / "console"
STATIC = HERE / "static" / "console"

PAGE = 50  # rows per page of flows and runs
STATUS_WINDOW = 500  # runs read per flow (and merged) when the runs page filters by status
RECENT_CAP = 1000  # runs of the last 24 h counted per flow on the flows page
MAX_STEPS = 300  # step checkpoints drawn on a run's timeline
MAX_LOGS = 500  # execution log rows shown on a run's page
# Console routes (URI template, responder suffix); any other path under /console is its 404 page.
ROUTES = (
    ("/console", None),
    ("/console/orgs/{org_id}", "org"),
    ("/console/orgs/{org_id}/flows", "flows"),
    ("/console/orgs/{org_id}/flows/{flow_id}", "flow"),
    ("/console/orgs/{org_id}/runs", "runs"),
    ("/console/orgs/{org_id}/runs/{run_id}", "run"),
    ("/console/orgs/{org_id}/audit", "audit"),
)
SINK = r"/console(?!/static/)(/.*)?\Z"  # Falcon tries sinks before static routes
ACTIVE = ("queued", "running", "waiting")
# A run with a step in one of these (a wait step, a delay, a back-off; an unknown outcome) is parked.
PARKED_STEP_STATUSES = ("waiting", "outcome_unknown")
MAX_VERSIONS = 100  # versions offered to move a parked run to (the newest)
STATUSES = ("queued", "running", "waiting", "completed", "failed", "cancelled")


class Page(Exception):
    """An answer other than the page asked for: the console's error page (404, 400, 401…)."""

    def __init__(self, status: int, title: str, message: str):
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


def not_found(what: str = "Page") -> Page:
    return Page(404, "Not found", f"{what} not found. It may belong to another organization, or never existed.")


def parse_id(raw: str, what: str) -> uuid.UUID:
    """A path id; anything but a UUID is the 404 page (as the API answers 404)."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise not_found(what) from None


# ---- presentation helpers (used by the templates) ---------------------------------------------

def fmt_time(value) -> str:
    if value is None:
        return "—"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(value) -> str:
    return "" if value is None else value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def fmt_ms(ms) -> str:
    if ms is None:
        return "—"
    ms = float(ms)
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes, seconds = divmod(int(ms // 1000), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def duration(start, end) -> str:
    if start is None or end is None:
        return "—"
    return fmt_ms((end - start).total_seconds() * 1000)


def pretty(value) -> str:
    """JSON as people read it (values as stored: the API's masking already applied)."""
    if value is None:
        return "null"
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


STATUS_MARK = {"queued": "◷", "running": "▶", "waiting": "⏸", "completed": "✓", "failed": "✕",
               "cancelled": "⊘", "skipped": "↷", "outcome_unknown": "?", "started": "▶", "pending": "…"}


def status_mark(status: str | None) -> str:
    return STATUS_MARK.get(status or "", "•")


# ---- the timeline -------------------------------------------------------------------------------

KIND_LABEL = {"queued": "queued", "run": "running", "wait": "delay", "backoff": "back-off before a retry",
              "unknown": "outcome unknown (waiting for a person)"}


def _segments_from_logs(events: list[dict]) -> list[dict]:
    """Segments of one step from its execution log rows (oldest first)."""
    segments: list[dict] = []
    open_seg: dict | None = None

    def close(at, outcome):
        nonlocal open_seg
        if open_seg is not None:
            open_seg["end"] = at
            open_seg["outcome"] = outcome
            segments.append(open_seg)
            open_seg = None

    for event in events:
        at, status = event["created_at"], event["status"]
        inputs = event.get("inputs") or {}
        error = event.get("error") if isinstance(event.get("error"), dict) else {}
        if status == "started":
            close(at, None)
            attempt = inputs.get("attempt") if isinstance(inputs.get("attempt"), int) else None
            open_seg = {"kind": "wait" if event.get("step_type") == "delay" else "run", "start": at,
                        "attempt": attempt or (error or {}).get("attempt") or 1}
        elif status == "failed" and error.get("retryInMs") is not None:
            attempt = error.get("attempt") or (open_seg or {}).get("attempt") or 1
            if open_seg is None:
                open_seg = {"kind": "run", "start": at, "attempt": attempt}
            close(at, "failed")
            open_seg = {"kind": "backoff", "start": at, "attempt": attempt,
                        "planned_end": at + dt.timedelta(milliseconds=int(error["retryInMs"]))}
        elif status == "pending":  # the call's outcome is unknown: the run waits for a person
            if open_seg is not None and open_seg["kind"] == "run":
                close(at, "unknown")
            elif open_seg is not None:
                close(at, None)
            open_seg = {"kind": "unknown", "start": at, "attempt": inputs.get("attempt") or 1}
        elif status in ("completed", "failed", "skipped", "cancelled"):
            if open_seg is None:
                open_seg = {"kind": "run", "start": at, "attempt": 1}
            close(at, status)
    if open_seg is not None:
        open_seg["end"] = None  # still going
        open_seg["outcome"] = None
        segments.append(open_seg)
    return segments


def build_timeline(run: dict, steps: list[dict], logs: list[dict], now: dt.datetime) -> dict:
    """Lanes (one per step, plus the run's own) of segments, an axis, and the critical path."""
    plan = [s for s in (run.get("plan_steps") or []) if isinstance(s, dict)]
    types = {s.get("id"): s.get("type") for s in plan}
    by_step: dict[str, list[dict]] = {}
    for row in logs:
        # The engine's rows only: a client may write logs under a run's id (marked on the page), never its timing.
        if row["source"] == "engine" and row["step_key"] != RUN_STEP_KEY:
            by_step.setdefault(row["step_key"], []).append({**row, "step_type": types.get(row["step_key"])})
    lanes = []
    for step in steps:
        sid = step["step_id"]
        segments = _segments_from_logs(by_step.get(sid, []))
        if not segments:  # no log rows (purged, or past the cap): the checkpoint's own times
            kind = "wait" if types.get(sid) == "delay" else "unknown" if step["status"] == "outcome_unknown" else "run"
            segments = [{"kind": kind, "start": step["started_at"], "end": step["finished_at"],
                         "attempt": step["attempt"], "outcome": step["status"]}]
        last = segments[-1]
        if last["end"] is None:
            if step["finished_at"] is not None:
                last["end"] = step["finished_at"]
            elif last["kind"] == "backoff" or (last["kind"] == "wait" and step.get("wake_at")):
                last["end"] = max(step.get("wake_at") or last.get("planned_end") or now, last["start"])
                last["planned"] = True
            elif run["status"] in ("completed", "failed", "cancelled"):
                last["end"] = run["finished_at"] or now
            else:
                last["end"] = now
                last["ongoing"] = True
        lanes.append({"id": sid, "status": step["status"], "attempt": step["attempt"], "segments": segments,
                      "start": segments[0]["start"], "end": max(s["end"] for s in segments)})
    start = run["created_at"]
    first_start = min((lane["start"] for lane in lanes), default=run["started_at"] or now)
    queued = {"kind": "queued", "start": start, "end": max(first_start, start), "attempt": 1, "outcome": None}
    end_candidates = [lane["end"] for lane in lanes] + [run["finished_at"] or (now if run["status"] in ACTIVE else start)]
    end = max([*end_candidates, queued["end"]])
    critical = critical_path(plan, lanes)
    for lane in lanes:
        lane["critical"] = lane["id"] in critical
    return {"start": start, "end": end, "queued": queued, "lanes": lanes, "critical": critical}


def critical_path(plan: list[dict], lanes: list[dict]) -> list[str]:
    """The chain of steps that decided when the run ended: from the step that finished last, back
    through what each one waited for before it started: the dependency, or (steps run one after
    another in dependency order) any other step, that finished last before it started."""
    ends = {lane["id"]: lane["end"] for lane in lanes}
    starts = {lane["id"]: lane["start"] for lane in lanes}
    order = {step.get("id"): index for index, step in enumerate(plan)}
    deps: dict[str, set] = {}
    previous = None
    for step in plan:
        sid = step.get("id")
        given = step.get("dependsOn")
        deps[sid] = set(given) if isinstance(given, list) else ({previous} if previous else set())
        previous = sid
    known = [sid for sid in order if sid in ends]
    if not known:
        return []
    slack = dt.timedelta(milliseconds=1)
    path: list[str] = []
    current: str | None = max(known, key=lambda sid: (ends[sid], order[sid]))
    while current is not None and current not in path:
        path.append(current)
        before = [sid for sid in known if sid != current and sid not in path and order[sid] < order[current]
                  and ends[sid] <= starts[current] + slack]
        # The latest to finish; on a tie (one checkpoint), a declared dependency, then the nearest step.
        current = max(before, key=lambda sid: (ends[sid], sid in deps.get(current, ()), order[sid]),
                      default=None)
    return list(reversed(path))


def draw_timeline(timeline: dict) -> dict:
    """Coordinates for the SVG (viewBox units): bars, attempt marks and axis ticks."""
    width, label_w, pad, lane_h, top = 960, 170, 16, 30, 34
    span = max((timeline["end"] - timeline["start"]).total_seconds(), 0.001)
    usable = width - label_w - pad

    def x(at) -> float:
        return round(label_w + (at - timeline["start"]).total_seconds() / span * usable, 2)

    def bars(segments, y, lane_id):
        out = []
        for seg in segments:
            x0, x1 = x(seg["start"]), x(seg["end"])
            w = max(x1 - x0, 3)
            label = f"{lane_id}: {KIND_LABEL[seg['kind']]}"
            if seg["kind"] == "run" and seg.get("attempt"):
                label += f", attempt {seg['attempt']}"
            if seg.get("outcome") and seg["kind"] == "run":
                label += f", {seg['outcome']}"
            ms = (seg["end"] - seg["start"]).total_seconds() * 1000
            label += f", {fmt_ms(ms)}" + (" so far" if seg.get("ongoing") else " planned" if seg.get("planned") else "")
            out.append({"x": x0, "y": y + 6, "w": round(w, 2), "h": lane_h - 12, "kind": seg["kind"],
                        "outcome": seg.get("outcome") or "", "label": label,
                        "attempt": seg.get("attempt") if seg["kind"] == "run" else None,
                        "mark": seg["kind"] == "run" and (seg.get("attempt") or 1) > 1})
        return out

    rows = [{"id": "run (queued)", "y": top, "bars": bars([timeline["queued"]], top, "run"), "critical": False,
             "status": ""}]
    for index, lane in enumerate(timeline["lanes"], start=1):
        y = top + index * lane_h
        rows.append({"id": lane["id"], "y": y, "bars": bars(lane["segments"], y, lane["id"]),
                     "critical": lane["critical"], "status": lane["status"]})
    ticks = []
    for i in range(6):
        ms = span * 1000 * i / 5
        ticks.append({"x": round(label_w + usable * i / 5, 2), "label": fmt_ms(ms) if i else "0"})
    height = top + len(rows) * lane_h + 8
    return {"width": width, "height": height, "label_w": label_w, "lane_h": lane_h, "top": top, "rows": rows,
            "ticks": ticks, "span": fmt_ms(span * 1000)}


# ---- versions diff ------------------------------------------------------------------------------

def diff_rows(old: list, new: list) -> list[dict]:
    """Side-by-side rows of two step lists, as pretty JSON lines: same, changed, removed, added."""
    left = pretty(old).splitlines()
    right = pretty(new).splitlines()
    rows = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=left, b=right, autojunk=False).get_opcodes():
        if tag == "equal":
            rows += [{"kind": "same", "left": left[i], "right": right[j]} for i, j in zip(range(i1, i2), range(j1, j2),
                                                                                          strict=True)]
            continue
        olds, news = left[i1:i2], right[j1:j2]
        for k in range(max(len(olds), len(news))):
            rows.append({"kind": "changed" if tag == "replace" else "removed" if tag == "delete" else "added",
                         "left": olds[k] if k < len(olds) else None, "right": news[k] if k < len(news) else None})
    return rows


# ---- the resources ------------------------------------------------------------------------------

def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(time=fmt_time, iso=iso, ms=fmt_ms, pretty=pretty, mark=status_mark)
    env.globals.update(duration=duration, statuses=STATUSES)
    return env


class Console:
    """Every console page: one object, one responder per page (routes in create_app)."""

    access = "public"  # TenantMiddleware steps aside: the console opens its own unit of work (below)

    def __init__(self, db: Database, config: Config, keys: KeyOrganizations, admin_db: Database | None = None,
                 buckets: RequestBuckets | None = None):
        self.db = db
        self.admin_db = admin_db  # the admin login's pool: the organization picker lists every organization
        self.mode = config.auth_mode
        self.trace_url = config.trace_url  # a trace viewer's URL with {traceId} (TOLSTOY_TRACE_URL), or None
        self.key_secret = config.api_key_secret
        self.keys = keys  # the API's own (TenantMiddleware's)
        # The API's own too: an organization's console pages are its requests, as its API calls are.
        self.buckets = buckets or RequestBuckets.from_config(config)
        self.env = _environment()

    # ---- rendering ---------------------------------------------------------------------------

    def render(self, req: falcon.Request, resp: falcon.Response, template: str, status: int = 200, **context) -> None:
        context.setdefault("org_id", None)
        context.setdefault("section", None)
        context.setdefault("live", None)
        context.setdefault("shell", False)
        context.setdefault("users", [])
        resp.status = falcon.code_to_http_status(status)
        resp.content_type = falcon.MEDIA_HTML
        resp.set_header("Cache-Control", "no-store")
        resp.set_header("Vary", "Authorization")
        resp.text = self.env.get_template(template).render(mode=self.mode, path=req.path, **context)

    def error_page(self, req: falcon.Request, resp: falcon.Response, page: Page, org_id=None) -> None:
        self.render(req, resp, "error.html", status=page.status, title=page.title, message=page.message,
                    org_id=org_id, error_status=page.status)

    def page(self, req, resp, org: str | None, build, scope: str = "read") -> None:
        """Run ``build(org_id) -> (template, context)`` in the organization's unit of work and render
        it; errors become the console's error pages. ``scope``: what an API key needs for the page."""
        org_id = None
        try:
            if org is None:
                template, context = build(None)
                self.render(req, resp, template, **context)
                return
            org_id = parse_id(org, "Organization")
            tenant = self.tenant(req, org_id, scope)
            if tenant is None:  # api_key mode, no key sent: the shell fetches the page with it
                self.render(req, resp, "shell.html", title="Loading…", org_id=org_id, shell=True)
                return
            req.context.org_id = org_id
            wait, rate, burst = self.buckets.take(org_id)
            if wait:
                refusal = self.buckets.refusal(wait, rate, burst)
                resp.set_headers(refusal.headers)
                raise Page(429, "Too many requests", refusal.description)
            with self.unit(tenant):
                template, context = build(org_id)
            self.render(req, resp, template, org_id=org_id, **context)
        except Page as page:
            self.error_page(req, resp, page, org_id)
        except TenantRejected:
            self.error_page(req, resp, not_found("Organization"))
        except KeyRejected:
            self.error_page(req, resp, Page(401, "Sign in again",
                                            "The API key is not valid, has expired or has been revoked."), org_id)
        except DatabaseUnavailable:
            self.error_page(req, resp, Page(503, "Database unavailable",
                                            "The database is not answering; try again shortly."), org_id)
        except (falcon.HTTPError, falcon.HTTPStatus):
            raise
        except Exception:
            log.exception("console page failed: %s", req.path)
            self.error_page(req, resp, Page(500, "Something went wrong", "Unexpected server error."), org_id)

    @contextlib.contextmanager
    def unit(self, tenant: Tenant, db: Database | None = None) -> Iterator[None]:
        """One unit of work (one transaction, one snapshot) for the page, as the API's middleware
        opens one per request; the tenant is checked by its first statement."""
        unit = (db or self.db).unit(tenant, repeatable=True)
        token = self.db.activate(unit)
        try:
            yield
        finally:
            self.db.deactivate(token)
            unit.close(commit=False)

    def tenant(self, req: falcon.Request, org_id: uuid.UUID, scope: str = "read") -> Tenant | None:
        """Who this page reads as: the path's organization (headers mode) or the API key's, which
        must be the path's (another organization's is a 404: nothing says it exists)."""
        if self.mode != "api_key":
            return Tenant(org_id=org_id)
        token = bearer_token(req)
        if token is None:
            return None
        hashed = key_hash(self.key_secret, token)
        key_org, scopes, _ = self.keys.grant_of(hashed)  # KeyRejected → the sign-in page
        if key_org != org_id:
            raise not_found("Organization")
        if scope not in scopes:
            raise Page(403, "Missing scope", f"This API key lacks the {scope!r} scope this page needs.")
        return Tenant(org_id=org_id, key_hash=hashed)

    def common(self, org_id) -> dict:
        """What every organization page shows in its header: the acting-user picker."""
        users = self.db.all(SQL.users.list, org_id=org_id, email=None, after_created_at=None, after_id=None, limit=100)
        return {"users": users}

    # ---- pages -------------------------------------------------------------------------------

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """``/console``: the organization picker (headers mode) or the sign-in form (api_key mode)."""
        if self.mode == "api_key":
            self.render(req, resp, "signin.html", title="Sign in")
            return
        chosen = req.get_param("org")
        if chosen:
            try:
                org_id = uuid.UUID(chosen.strip())
            except ValueError:
                self.render(req, resp, "orgs.html", status=400, title="Organizations", orgs=[], next_url=None,
                            problem="Organization ID: not a UUID.", chosen=chosen)
                return
            raise falcon.HTTPSeeOther(f"/console/orgs/{org_id}/flows")

        def build(_):
            cursor = cursor_params(req)
            if self.admin_db is None:
                raise Page(503, "Organizations unavailable",
                           "Listing organizations needs ADMIN_DATABASE_URL on this server; open one by its ID.")
            with self.unit(NOBODY, self.admin_db):
                rows = self.db.all(SQL.organizations.list, limit=PAGE + 1, **cursor)
            return "orgs.html", {"title": "Organizations", "orgs": rows[:PAGE], "problem": None, "chosen": "",
                                 "next_url": next_url(req, rows, PAGE)}
        self.page(req, resp, None, build)

    def on_get_org(self, req: falcon.Request, resp: falcon.Response, org_id: str) -> None:
        """``/console/orgs/{orgId}``: its flows."""
        raise falcon.HTTPSeeOther(f"/console/orgs/{org_id}/flows")

    def on_get_flows(self, req: falcon.Request, resp: falcon.Response, org_id: str) -> None:
        """The organization's flows with their last run, runs in the last 24 h and success rate."""
        def build(org):
            cursor = cursor_params(req)
            rows = self.db.all(SQL.console.flows, org_id=org, recent_cap=RECENT_CAP, limit=PAGE + 1, **cursor)
            flows = rows[:PAGE]
            for flow in flows:
                flow["success_rate"] = (round(100 * flow["completed_24h"] / flow["finished_24h"])
                                        if flow["finished_24h"] else None)
                flow["capped"] = flow["runs_24h"] >= RECENT_CAP
            return "flows.html", {"title": "Flows", "section": "flows", "flows": flows,
                                  "next_url": next_url(req, rows, PAGE), "recent_cap": RECENT_CAP,
                                  **self.common(org)}
        self.page(req, resp, org_id, build)

    def on_get_flow(self, req: falcon.Request, resp: falcon.Response, org_id: str, flow_id: str) -> None:
        """One flow: its current steps, its versions (any one beside the current, as a diff), its triggers."""
        def build(org):
            fid = parse_id(flow_id, "Flow")
            flow = self.db.one(SQL.flows.get, org_id=org, id=fid)
            if flow is None:
                raise not_found("Flow")
            versions = self.db.all(SQL.flows.list_versions, org_id=org, flow_id=fid, before_version=None, limit=100)
            raw = req.get_param("compare")
            compare = None
            if raw is not None:
                number = unsigned(raw, 10)
                if number is None:
                    raise Page(400, "Bad request", "compare: a version number.")
                compare = next((v for v in versions if v["version"] == number), None)
                if compare is None:
                    raise not_found("Flow version")
            elif len(versions) > 1:
                compare = versions[1]
            diff = diff_rows(compare["steps"], flow["steps"]) if compare else None
            triggers = self.db.all(SQL.triggers.list, org_id=org, flow_id=fid, after_created_at=None, after_id=None,
                                   limit=50)
            recent = runs_page(self.db, org, {"flow_id": fid}, None, 10)
            return "flow.html", {"title": flow["name"] or "Flow", "section": "flows", "flow": flow,
                                 "versions": versions, "compare": compare, "diff": diff, "triggers": triggers,
                                 "runs": recent["runs"], "steps_json": pretty(flow["steps"]), **self.common(org)}
        self.page(req, resp, org_id, build)

    def on_get_runs(self, req: falcon.Request, resp: falcon.Response, org_id: str) -> None:
        """The organization's runs, newest first, filtered by flow, status and time range."""
        def build(org):
            filters, form = run_filters(req)
            cursor = cursor_params(req)
            found = runs_page(self.db, org, filters, cursor, PAGE)
            flows = self.db.all(SQL.console.flow_names, org_id=org, limit=200)
            params = {k: v for k, v in form.items() if v}
            newest = f"{req.path}?{urlencode(params)}" if params else req.path
            nxt = None
            if found["next"] is not None:
                nxt = f"{req.path}?{urlencode({**params, 'cursor': encode_cursor(found['next'])})}"
            active = any(r["status"] in ACTIVE for r in found["runs"])
            live = "active" if active else ("idle" if not req.get_param("cursor") else None)
            return "runs.html", {"title": "Runs", "section": "runs", "runs": found["runs"], "flows": flows,
                                 "form": form, "next_url": nxt, "newest_url": newest, "exhausted_window": found["exhausted_window"],
                                 "scanned": found["scanned"], "live": live, "filtered": any(form.values()),
                                 **self.common(org)}
        self.page(req, resp, org_id, build)

    def on_get_run(self, req: falcon.Request, resp: falcon.Response, org_id: str, run_id: str) -> None:
        """One run: its timeline, steps (inputs, outputs, errors as the API shows them), log rows and actions."""
        def build(org):
            rid = parse_id(run_id, "Run")
            run = self.db.one(SQL.console.run, org_id=org, id=rid)
            if run is None:
                raise not_found("Run")
            steps = self.db.all(SQL.console.run_steps, org_id=org, run_id=rid, run_created_at=run["created_at"],
                                limit=MAX_STEPS + 1)
            logs = self.db.all(SQL.console.run_logs, org_id=org, execution_id=str(rid), limit=MAX_LOGS + 1)
            # The one clock, as the wake times and lease ends the timeline sets it against.
            timeline = build_timeline(run, steps[:MAX_STEPS], logs[:MAX_LOGS], utcnow())
            api = f"/flows/{run['flow_id']}/executions/{rid}"
            reruns = self.db.all(SQL.runs.reruns, org_id=org, id=rid, limit=MAX_RERUNS_SHOWN)
            # A parked run may move to another version of its flow (the API decides; this only offers it).
            parked = [s for s in steps if s["status"] in PARKED_STEP_STATUSES]
            movable = run["status"] in ("queued", "waiting") and bool(parked)
            versions = self.db.all(SQL.flows.list_versions, org_id=org, flow_id=run["flow_id"], before_version=None,
                                   limit=MAX_VERSIONS) if movable else []
            # Its trace (its caller's, or its own id: tracing.run_ids), and where a viewer shows it.
            trace_id = tracing.trace_id_of(rid, run["trace_parent"])
            trace_link = self.trace_url.replace("{traceId}", trace_id) if self.trace_url else None
            return "run.html", {"title": f"Run {str(rid)[:8]}", "section": "runs", "run": run,
                                "trace_id": trace_id, "trace_link": trace_link,
                                "reruns": [r["id"] for r in reruns], "finished": run["status"] in FINISHED,
                                "steps": steps[:MAX_STEPS], "more_steps": len(steps) > MAX_STEPS,
                                "logs": logs[:MAX_LOGS], "more_logs": len(logs) > MAX_LOGS,
                                "svg": draw_timeline(timeline), "timeline": timeline, "api": api,
                                "live": "active" if run["status"] in ACTIVE else None,
                                "waiting_steps": [s for s in steps if s["status"] == "outcome_unknown"],
                                "movable": movable, "versions": [v["version"] for v in versions],
                                **self.common(org)}
        self.page(req, resp, org_id, build)

    def on_get_audit(self, req: falcon.Request, resp: falcon.Response, org_id: str) -> None:
        """The organization's audit trail, newest first, optionally of one kind of record or one record:
        GET /audit-events as a page (the same query; the admin scope, as the API asks)."""
        def build(org):
            target_type = (req.get_param("type") or "").strip()
            if target_type and target_type not in AUDIT_TARGET_TYPES:
                raise Page(400, "Bad request", f"type: one of {', '.join(AUDIT_TARGET_TYPES)}.")
            target_id, target_raw = _uuid_param(req, "target", "a record id")
            rows = self.db.all(SQL.audit_events.list, org_id=org, target_type=target_type or None, target_id=target_id,
                               actor_user_id=None, actor_key_prefix=None, actor_admin=None, limit=PAGE + 1,
                               **cursor_params(req))
            events = [audit.represent(row) for row in rows[:PAGE]]
            for event, row in zip(events, rows, strict=False):
                event["created_at"] = row["created_at"]
            return "audit.html", {"title": "Audit trail", "section": "audit", "events": events,
                                  "form": {"type": target_type, "target": target_raw}, "types": AUDIT_TARGET_TYPES,
                                  "next_url": next_url(req, rows, PAGE), **self.common(org)}
        self.page(req, resp, org_id, build, scope="admin")


class NotFoundSink:
    """Any other path under /console: the console's 404 page."""

    def __init__(self, console: Console):
        self.console = console

    def __call__(self, req: falcon.Request, resp: falcon.Response, **params) -> None:
        self.console.error_page(req, resp, not_found())


# ---- query-string handling ----------------------------------------------------------------------

def cursor_params(req: falcon.Request) -> dict:
    """The keyset position of ``?cursor=`` (the console's 400 page for a bad one)."""
    try:
        return time_id_cursor({"cursor": req.get_param("cursor")})
    except falcon.HTTPError:
        raise Page(400, "Bad request", "cursor: not a valid cursor.") from None


def next_url(req: falcon.Request, rows: list[dict], limit: int) -> str | None:
    if len(rows) <= limit:
        return None
    last = rows[limit - 1]
    params = {k: v for k, v in req.params.items() if k != "cursor"}
    params["cursor"] = encode_cursor(time_id_key(last))
    return f"{req.path}?{urlencode(params)}"


def _when(req: falcon.Request, name: str) -> tuple[dt.datetime | None, str]:
    raw = (req.get_param(name) or "").strip()
    if not raw:
        return None, ""
    try:
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise Page(400, "Bad request", f"{name}: a date and time such as 2026-12-01T09:30 (UTC).") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value, raw


def _uuid_param(req: falcon.Request, name: str, what: str) -> tuple[uuid.UUID | None, str]:
    """An optional id in the query string (None when empty) and its text as sent; the 400 page when
    it is not a UUID."""
    raw = (req.get_param(name) or "").strip()
    if not raw:
        return None, raw
    try:
        return uuid.UUID(raw), raw
    except ValueError:
        raise Page(400, "Bad request", f"{name}: not {what}.") from None


def run_filters(req: falcon.Request) -> tuple[dict, dict]:
    """The runs page's filters (for the query) and the form's values (to show them again)."""
    flow_id, flow_raw = _uuid_param(req, "flow", "a flow id")
    status = (req.get_param("status") or "").strip()
    if status and status not in STATUSES:
        raise Page(400, "Bad request", f"status: one of {', '.join(STATUSES)}.")
    since, since_raw = _when(req, "since")
    until, until_raw = _when(req, "until")
    filters = {"flow_id": flow_id, "status": status or None, "since": since, "until": until}
    form = {"flow": flow_raw, "status": status, "since": since_raw, "until": until_raw}
    return filters, form


def runs_page(db: Database, org_id, filters: dict, cursor: dict | None, limit: int) -> dict:
    """One page of runs: the rows, the keyset position of the next page (None at the end), and
    whether a status filter's window was read to its end without filling the page."""
    cursor = cursor or {"after_created_at": None, "after_id": None}
    status = filters.get("status")
    scan = max(limit + 1, STATUS_WINDOW) if status else limit + 1
    rows = db.all(SQL.console.runs, org_id=org_id, flow_id=filters.get("flow_id"), status=status,
                  since=filters.get("since"), until=filters.get("until"), scan=scan, limit=limit + 1, **cursor)
    runs = [r for r in rows if r["id"] is not None]
    scanned = rows[0]["scanned"] if rows else 0
    nxt = None
    exhausted = False
    if len(runs) > limit:
        runs = runs[:limit]
        nxt = time_id_key(runs[-1])
    elif scanned >= scan and rows[0]["edge_id"] is not None:
        # The window was full and held too few matches: go on from its oldest row.
        nxt = [rows[0]["edge_created_at"].isoformat(), str(rows[0]["edge_id"])]
        exhausted = True
    for run in runs:
        run["duration"] = duration(run["started_at"], run["finished_at"])
    return {"runs": runs, "next": nxt, "exhausted_window": exhausted, "scanned": scanned}
