"""Benchmark peer A: the three tool routes in bare Falcon (sync WSGI) + psycopg 3.

What a small Falcon service looks like without Tolstoy's layers: no middleware,
no marshmallow, no tenancy checks, no paging cursors. The tenant is whatever the
``X-Org-ID`` header says. Each request borrows a connection from a
psycopg_pool ``ConnectionPool`` with ``with pool.connection() as conn:`` (which
commits on exit) and runs one statement through a ``dict_row`` cursor.

Run it with gunicorn.conf.py beside this file (see README.md). Environment:
``DATABASE_URL`` (a libpq URL; TCP or ``?host=/socket/dir`` both work).
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import uuid

import falcon
import falcon.media
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

# The same statement Tolstoy runs for GET /tools/{id}: the tool and its actions,
# newest first, aggregated to JSON by PostgreSQL in one round trip.
TOOL_WITH_ACTIONS = """
select t.id, t.org_id, t.name, t.base_url, t.auth_type, t.created_at, t.updated_at,
       coalesce((select jsonb_agg(a order by a.created_at desc, a.id desc)
                 from (select id, org_id, tool_id, name, key, method, endpoint, headers, input_schema,
                              execute_if, version, created_at, updated_at
                       from actions where org_id = t.org_id and tool_id = t.id) as a), '[]') as actions
from tools t
where t.org_id = %(org_id)s and t.id = %(id)s
"""

LIST_TOOLS = """
select id, org_id, name, base_url, auth_type, created_at, updated_at
from tools
where org_id = %(org_id)s
order by created_at desc, id desc
limit %(limit)s
"""

INSERT_TOOL = """
insert into tools (org_id, name, base_url, auth_type)
values (%(org_id)s, %(name)s, %(base_url)s, %(auth_type)s)
returning id, org_id, name, base_url, auth_type, created_at, updated_at
"""


@functools.cache
def get_pool() -> ConnectionPool:
    """This worker's pool, opened on first use (after Gunicorn forked the worker).

    A sync worker serves one request at a time, so two connections are plenty.
    """
    return ConnectionPool(os.environ["DATABASE_URL"], min_size=1, max_size=2, open=True)


def tool_json(row: dict) -> dict:
    """A ``tools`` row as the API spells it (camelCase keys)."""
    return {
        "id": row["id"],
        "orgId": row["org_id"],
        "name": row["name"],
        "baseUrl": row["base_url"],
        "authType": row["auth_type"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
    }


def action_json(a: dict) -> dict:
    """One element of the ``actions`` JSON array (already plain JSON values) in camelCase."""
    return {
        "id": a["id"],
        "orgId": a["org_id"],
        "toolId": a["tool_id"],
        "name": a["name"],
        "key": a["key"],
        "method": a["method"],
        "endpoint": a["endpoint"],
        "headers": a["headers"],
        "inputSchema": a["input_schema"],
        "executeIf": a["execute_if"],
        "version": a["version"],
        "createdAt": a["created_at"],
        "updatedAt": a["updated_at"],
    }


class ToolResource:
    """``GET /tools/{id}``: one tool with its actions."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, tool_id: uuid.UUID) -> None:
        with get_pool().connection() as conn:
            row = conn.cursor(row_factory=dict_row).execute(
                TOOL_WITH_ACTIONS, {"org_id": req.get_header("X-Org-ID"), "id": tool_id}
            ).fetchone()
        if row is None:
            raise falcon.HTTPNotFound(description="Tool not found.")
        body = tool_json(row)
        body["actions"] = [action_json(a) for a in row["actions"]]
        resp.media = body


class ToolsResource:
    """``GET /tools?limit=N`` (newest first) and ``POST /tools``."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = req.get_param_as_int("limit", default=50, min_value=1, max_value=200)
        with get_pool().connection() as conn:
            rows = conn.cursor(row_factory=dict_row).execute(
                LIST_TOOLS, {"org_id": req.get_header("X-Org-ID"), "limit": limit}
            ).fetchall()
        resp.media = [tool_json(r) for r in rows]

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = req.get_media()
        params = {
            "org_id": req.get_header("X-Org-ID"),
            "name": body["name"],
            "base_url": body["baseUrl"],
            "auth_type": body["authType"],
        }
        try:
            with get_pool().connection() as conn:
                row = conn.cursor(row_factory=dict_row).execute(INSERT_TOOL, params).fetchone()
        except psycopg.errors.UniqueViolation:
            raise falcon.HTTPConflict(description="A tool with this name already exists.") from None
        resp.status = falcon.HTTP_201
        resp.media = tool_json(row)


def _json_default(value: object) -> str:
    """datetimes as ISO 8601; UUIDs (and anything else) as str."""
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return str(value)


def create_app() -> falcon.App:
    """The WSGI app: two resources and a stdlib-json media handler that knows datetimes/UUIDs."""
    app = falcon.App()
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = falcon.media.JSONHandler(
        dumps=functools.partial(json.dumps, ensure_ascii=False, default=_json_default)
    )
    app.add_route("/tools", ToolsResource())
    app.add_route("/tools/{tool_id:uuid}", ToolResource())
    return app


app = create_app()
