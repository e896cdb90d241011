"""The data the benchmark loads: one organization with a thousand tools (three
actions each), flows to edit, and two organizations whose execution logs number
ten thousand and a million, for list latency."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import psycopg

TOOLS = 1000
FLOWS = 64
SMALL_LOGS = 10_000
LARGE_LOGS = 1_000_000


@dataclass
class Data:
    """Ids the load scripts pick from."""

    org: str = ""
    user: str = ""
    tools: list[str] = field(default_factory=list)
    flows: list[str] = field(default_factory=list)
    small_org: str = ""
    large_org: str = ""
    large_cursor: str = ""

    def lua(self, path: Path, org: str | None = None, cursor: str = "") -> Path:
        """A Lua file setting the globals the scripts of bench/lua read."""
        quoted = lambda items: "{" + ", ".join(f'"{i}"' for i in items) + "}"  # noqa: E731
        path.write_text(f'org = "{org or self.org}"\ntools = {quoted(self.tools)}\nflows = {quoted(self.flows)}\n'
                        f'cursor = "{cursor}"\n')
        return path


def load(owner_url: str, *, large_logs: int = LARGE_LOGS) -> Data:
    """Insert the benchmark's rows as the database owner (row-level security does not apply)."""
    data = Data()
    with psycopg.connect(owner_url, autocommit=True) as conn:
        data.org = str(conn.execute("insert into organizations (name) values ('bench') returning id").fetchone()[0])
        data.user = str(conn.execute("insert into users (org_id, email) values (%s, 'bench@example.com') returning id",
                                 (data.org,)).fetchone()[0])
        data.tools = [str(r[0]) for r in conn.execute(
            "insert into tools (org_id, name, base_url, auth_type) "
            "select %s, 'tool-' || n, 'https://tool-' || n || '.example.com', 'bearer' "
            "from generate_series(1, %s) as n returning id", (data.org, TOOLS)).fetchall()]
        conn.execute(
            "insert into actions (org_id, tool_id, name, key, method, endpoint, headers, input_schema) "
            "select t.org_id, t.id, 'Action ' || a, t.name || '.action-' || a, 'GET', '/things/{id}', "
            "'{\"Accept\": \"application/json\"}', "
            "'{\"type\": \"object\", \"properties\": {\"id\": {\"type\": \"integer\"}}}' "
            "from tools t cross join generate_series(1, 3) as a where t.org_id = %s", (data.org,))
        data.flows = [str(r[0]) for r in conn.execute(
            "insert into flows (org_id, name, steps) select %s, 'flow-' || n, "
            "'[{\"id\": \"a\", \"type\": \"transform\", \"config\": {\"output\": 1}}]' "
            "from generate_series(1, %s) as n returning id", (data.org, FLOWS)).fetchall()]
        data.small_org = _org_with_logs(conn, "logs-10k", SMALL_LOGS)
        data.large_org = _org_with_logs(conn, "logs-1m", large_logs)
        conn.execute("vacuum analyze")
    return data


def _org_with_logs(conn: psycopg.Connection, name: str, count: int) -> str:
    org = str(conn.execute("insert into organizations (name) values (%s) returning id", (name,)).fetchone()[0])
    user = conn.execute("insert into users (org_id, email) values (%s, 'logs@example.com') returning id",
                        (org,)).fetchone()[0]
    flow = conn.execute("insert into flows (org_id, name, steps) values (%s, 'logged', "
                        "'[{\"id\": \"a\", \"type\": \"transform\", \"config\": {\"output\": 1}}]') returning id",
                        (org,)).fetchone()[0]
    # One row per second of history, newest last, in batches so the WAL stays small.
    batch = 200_000
    for start in range(0, count, batch):
        conn.execute(
            "insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, "
            "outputs, created_at, updated_at) "
            "select %s, %s, %s, 'run-' || (n / 4), 'step-' || (n %% 4), 'completed', '{\"n\": 1}', '{\"ok\": true}', "
            "now() - make_interval(secs => %s::integer - n), now() - make_interval(secs => %s::integer - n) "
            "from generate_series(%s::integer, %s::integer) as n",
            (org, flow, user, count, count, start + 1, min(start + batch, count)))
    return org
