"""No lock across the network: an OAuth2 refresh takes a short lease on the token's row, calls the
provider with no transaction open and no pooled connection held, and stores what it got with a
compare-and-set. Every test runs for both kinds of token: an organization's (``oauth_tokens``, the
refresh token in the credential) and a user's own (``user_connections``). Each "process" below is a
SharedTokens of its own, on a pool of its own (of one connection where that matters) with its own
cache, against a local provider whose refresh requests the test holds at the door and lets through
one by one. Real PostgreSQL, as the application's role."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import FakeOAuthProvider
from test_user_connections import connect
from werkzeug import Response

from tolstoy import engine
from tolstoy.config import Config
from tolstoy.db.database import Database
from tolstoy.db.queries import SQL
from tolstoy.engine import tool_auth
from tolstoy.engine.outbound import CallCancelled, OutboundError, origin_of
from tolstoy.engine.tool_auth import TokenCache
from tolstoy.engine.vault import Reader

ROOT = Path(__file__).resolve().parents[2]
KINDS = ["organization", "user"]


@dataclass
class Ticket:
    """A refresh request held at the provider's door: what it sent, and its fate."""

    form: dict
    answer: bool = True
    event: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        """Let the provider answer it (spending the refresh token it carries)."""
        self.event.set()

    def drop(self) -> None:
        """End it unanswered: the provider never saw the refresh token (a 503, nothing spent)."""
        self.answer = False
        self.event.set()


class GatedProvider(FakeOAuthProvider):
    """FakeOAuthProvider (refresh tokens that work once and rotate) whose refresh requests can be
    held: while ``held``, each one that arrives waits for its Ticket (``arrivals``, in order)."""

    def __init__(self, server):
        super().__init__(server)
        self.refresh_delay = 0
        self.held = False
        self.arrivals: queue.Queue[Ticket] = queue.Queue()
        self.tickets: list[Ticket] = []
        self.refresh_requests: list[str] = []  # the refresh token of every refresh request that arrived

    def _token(self, request):
        if request.form.get("grant_type") == "refresh_token":
            with self.lock:
                self.refresh_requests.append(request.form.get("refresh_token"))
            if self.held:
                ticket = Ticket(dict(request.form))
                self.tickets.append(ticket)
                self.arrivals.put(ticket)
                ticket.event.wait(30)
                if not ticket.answer:
                    return Response('{"error": "temporarily_unavailable"}', status=503,
                                    content_type="application/json")
        return super()._token(request)

    def next_arrival(self, timeout: float = 15) -> Ticket:
        return self.arrivals.get(timeout=timeout)

    def close(self) -> None:
        for ticket in self.tickets:
            if not ticket.event.is_set():
                ticket.drop()


@pytest.fixture
def provider(server):
    gated = GatedProvider(server)
    yield gated
    gated.close()


def rows(db: Database, sql: str, *params) -> list[dict]:
    """Rows as the test database's owner sees them."""
    with db.pool.connection() as conn:
        return conn.execute(sql, params or None).fetchall()


class Grant:
    """An OAuth2 grant of one kind, as the processes of a test use it."""

    def __init__(self, kind: str, api, org: dict, provider: GatedProvider, config: Config, app_url: str, db):
        self.kind = kind
        self.org_id = org["id"]
        self.provider = provider
        self.config = config
        self.app_url = app_url
        self.db = db  # the owner's, to look at rows
        self.dbs: list[Database] = []
        self.tool = api.tool(org, name="GitHub", key="github", baseUrl=provider.url("/"), authType="oauth2")
        if kind == "organization":
            provider.refresh_tokens["refresh-org-0"] = "org"
            api.create(f"/tools/{self.tool['id']}/auth", org, {"type": "oauth2", "config": {
                "clientId": provider.client_id, "clientSecret": provider.client_secret,
                "tokenUrl": provider.url("/token"), "refreshToken": "refresh-org-0"}})
            self.who = "org"
        else:
            api.create(f"/tools/{self.tool['id']}/auth", org, provider.credential())
            self.user = api.user(org, name="Ada")
            connect(api, org, self.user, "ada")
            self.who = "ada"
        self.looker = self.process()
        with self.looker.db.tenant(self.org_id):
            self.credential, self.credential_config = self.looker.credential(self.org_id, self.tool["id"],
                                                                             Reader("worker", "step"))
        self.expire()

    def process(self, max_size: int = 2) -> engine.ToolClient:
        """A process of its own: a pool (of ``max_size`` connections), a token cache, a data key cache."""
        database = Database(self.app_url, min_size=1, max_size=max_size, timeout=2)
        database.open(wait=True)
        self.dbs.append(database)
        return engine.tools(self.config, database)

    def get(self, tools: engine.ToolClient, timeout_ms: int = 15_000, cancel: threading.Event | None = None) -> str:
        """The access token, as a call about to be sent asks for it."""
        with tools.db.tenant(self.org_id):
            if self.kind == "organization":
                return tools.tokens.token(self.org_id, self.credential, self.credential_config, timeout_ms, cancel)
            return tools.tokens.user_token(self.org_id, self.user["id"], self.tool, self.credential_config,
                                           timeout_ms, cancel, origin=origin_of(self.tool["baseUrl"]))

    def expire(self) -> None:
        """The stored access token runs out (an organization's has none before its first refresh)."""
        table = "oauth_tokens" if self.kind == "organization" else "user_connections"
        rows(self.db, f"update {table} set expires_at = now() - interval '1 minute' "  # noqa: S608
                      "where expires_at is not null returning 1")

    def stored(self) -> dict:
        """The grant as stored now, decrypted: refreshToken (and a user's accessToken)."""
        if self.kind == "organization":
            [row] = rows(self.db, "select secret from tool_credentials where id = %s", self.credential["id"])
            sealed = row["secret"]
        else:
            [row] = rows(self.db, "select tokens from user_connections where user_id = %s", self.user["id"])
            sealed = row["tokens"]
        with self.looker.db.tenant(self.org_id):
            return self.looker.vault.decrypt(self.org_id, sealed)

    def replace(self, api, org) -> None:
        """A person stores the grant anew while a refresh is in flight: the organization's credential
        is replaced (a new refresh token), or the user connects the tool again."""
        if self.kind == "organization":
            self.provider.refresh_tokens["refresh-new-0"] = "new"
            api.create(f"/tools/{self.tool['id']}/auth", org, {"type": "oauth2", "config": {
                "clientId": self.provider.client_id, "clientSecret": self.provider.client_secret,
                "tokenUrl": self.provider.url("/token"), "refreshToken": "refresh-new-0"}})
            [row] = rows(self.db, "select id, updated_at from tool_credentials where tool_id = %s", self.tool["id"])
            self.credential = {**self.credential, **row}
        else:
            connect(api, org, self.user, "ada")

    def lockable(self) -> None:
        """Every row a refresh reads or writes can be locked at once by another transaction."""
        with self.db.pool.connection() as conn, conn.transaction():
            if self.kind == "organization":
                conn.execute("select 1 from tool_credentials where id = %s for update nowait", (self.credential["id"],))
                conn.execute("select 1 from oauth_tokens where credential_id = %s for update nowait",
                             (self.credential["id"],))
            else:
                conn.execute("select 1 from user_connections where user_id = %s for update nowait", (self.user["id"],))

    def close(self) -> None:
        self.provider.close()  # a test that failed half way leaves no call waiting at the provider
        for database in self.dbs:
            database.close()


@pytest.fixture(params=KINDS)
def grant(request, api, org, provider, config, app_url, db):
    made = Grant(request.param, api, org, provider, config, app_url, db)
    yield made
    made.close()


class Caller(threading.Thread):
    """A call in a thread of its own that asks for the token: its answer, or what it raised."""

    def __init__(self, grant: Grant, tools: engine.ToolClient, **options):
        super().__init__(daemon=True)
        self.grant, self.tools, self.options = grant, tools, options
        self.token: str | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.token = self.grant.get(self.tools, **self.options)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def result(self, timeout: float = 20) -> str:
        self.join(timeout)
        assert not self.is_alive(), "the call never ended"
        if self.error is not None:
            raise self.error
        return self.token


def wait_until(predicate, timeout: float = 10, what: str = "it"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


# ---- (a) nothing is held while the provider answers -------------------------------------------------

def test_no_connection_transaction_or_row_lock_is_held_while_the_provider_answers(grant, provider):
    provider.held = True
    one = grant.process(max_size=1)
    caller = Caller(grant, one)
    ticket = provider.next_arrival()  # the refresh is at the provider, which does not answer yet

    # The process's only pooled connection serves other work meanwhile.
    with one.db.pool.connection(timeout=2) as conn:
        assert conn.execute("select 1 as one").fetchone() == {"one": 1}
    # No transaction of this database is left open, and nobody waits for a row of the grant.
    open_ones = rows(grant.db, "select pid, state, query from pg_stat_activity where datname = current_database() "
                               "and state like 'idle in transaction%'")
    assert open_ones == []
    grant.lockable()

    ticket.release()
    assert caller.result() == f"access-{grant.who}-{provider.issued}"
    assert provider.refresh_requests == [f"refresh-{grant.who}-{0 if grant.kind == 'organization' else 1}"]


def test_a_token_request_is_refused_inside_a_unit_of_work(grant, provider):
    """The rule that keeps it so: asking for a token that may need a refresh while the thread holds a
    transaction open is a programming error, refused before anything is taken or sent."""
    tools = grant.process()
    with tools.db.tenant(grant.org_id), tools.db.transaction():
        tools.db.one(SQL.tools.get, org_id=grant.org_id, id=grant.tool["id"])
        with pytest.raises(RuntimeError, match="inside a unit of work"):
            grant.get(tools)
    assert provider.refresh_requests == []
    for table in ("oauth_tokens", "user_connections"):
        assert rows(grant.db, f"select refreshing_by from {table} where refreshing_by is not null") == []  # noqa: S608


# ---- (b) concurrent callers: one refresh, and the ones that wait hold nothing ------------------------

def test_concurrent_processes_refresh_once_and_the_waiting_one_holds_no_connection(grant, provider):
    provider.held = True
    first, second = grant.process(max_size=1), grant.process(max_size=1)
    leader = Caller(grant, first)
    ticket = provider.next_arrival()
    before = second.db.counts.snapshot()["statements"]
    follower = Caller(grant, second)
    # The follower found the lease taken (its check and its try at the lease: four statements) and
    # waits for the leader's token; its process's only connection is free for other work.
    wait_until(lambda: second.db.counts.snapshot()["statements"] - before >= 4, what="the follower to look")
    for tools in (first, second):
        with tools.db.pool.connection(timeout=2) as conn:
            conn.execute("select 1")
    assert follower.is_alive() and provider.refresh_requests[1:] == []

    ticket.release()
    token = leader.result()
    assert follower.result() == token == f"access-{grant.who}-{provider.issued}"
    assert len(provider.refresh_requests) == 1 and provider.refreshes == 1


def test_a_waiting_caller_honours_its_cancel_and_its_deadline(grant, provider):
    provider.held = True
    leader = Caller(grant, grant.process())
    ticket = provider.next_arrival()
    cancel = threading.Event()
    cancelled = Caller(grant, grant.process(), cancel=cancel)
    late = Caller(grant, grant.process(), timeout_ms=300)
    with pytest.raises(OutboundError, match="Timed out after 300 ms waiting for another process's refresh"):
        late.result()
    cancel.set()
    with pytest.raises(CallCancelled):
        cancelled.result(timeout=5)
    ticket.release()
    assert leader.result() == f"access-{grant.who}-{provider.issued}"
    assert len(provider.refresh_requests) == 1


# ---- (c) a refresher that dies leaves a lease that expires --------------------------------------------

DYING_REFRESHER = """
import os, sys
from tolstoy import engine
from tolstoy.config import Config
from tolstoy.db.database import Database
from tolstoy.db.queries import SQL
from tolstoy.engine import tool_auth
from tolstoy.engine.outbound import origin_of
from tolstoy.engine.vault import Reader

kind, org_id, tool_id, user_id = sys.argv[1:5]
tool_auth.LEASE_MARGIN_SECONDS = 2.0  # so the test waits seconds, not the 10 s of production
config = Config.from_env(os.environ)
db = Database(os.environ["DATABASE_URL"], min_size=1, max_size=1)
db.open(wait=True)
tools = engine.tools(config, db)
with db.tenant(org_id):
    credential, secret = tools.credential(org_id, tool_id, Reader("worker", "step"))
    tool = db.one(SQL.tools.get, commit=True, org_id=org_id, id=tool_id)
    if kind == "organization":
        tools.tokens.token(org_id, credential, secret, 3000)
    else:
        tools.tokens.user_token(org_id, user_id, tool, secret, 3000, origin=origin_of(tool["base_url"]))
"""


def test_a_refresher_killed_mid_request_leaves_a_lease_that_expires(grant, provider, worker_env):
    provider.held = True
    dying = subprocess.Popen(
        [sys.executable, "-c", DYING_REFRESHER, grant.kind, grant.org_id, grant.tool["id"],
         grant.user["id"] if grant.kind == "user" else ""],
        cwd=ROOT, env={**os.environ, **worker_env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ticket = provider.next_arrival(timeout=30)
    except queue.Empty:
        dying.kill()
        pytest.fail(dying.communicate()[1].decode()[-3000:])
    dying.send_signal(signal.SIGKILL)  # mid-request: the provider never answered it
    dying.wait(10)
    ticket.drop()
    provider.held = False

    # Its lease (3 s of request + 2 s) is live: a call with less time than that waits and sends nothing.
    with pytest.raises(OutboundError, match="waiting for another process's refresh"):
        Caller(grant, grant.process(), timeout_ms=300).result()
    assert provider.refresh_requests == [ticket.form["refresh_token"]]
    # The next call waits for it to expire, then refreshes with the refresh token it held.
    assert Caller(grant, grant.process(), timeout_ms=15_000).result() == f"access-{grant.who}-{provider.issued}"
    assert provider.refresh_requests == [ticket.form["refresh_token"]] * 2 and provider.refreshes == 1
    assert grant.stored()["refreshToken"] == f"refresh-{grant.who}-{provider.issued}"


# ---- (d) the rotated refresh token is kept, however refreshes interleave ------------------------------

def kept(grant: Grant, provider: GatedProvider) -> None:
    """The refresh token stored now is the one the provider issued last, and the provider accepts it
    (it refuses one used before): the next refresh works."""
    assert grant.stored()["refreshToken"] == f"refresh-{grant.who}-{provider.issued}"
    then_the_next_refresh_works(grant, provider)


def then_the_next_refresh_works(grant: Grant, provider: GatedProvider) -> None:
    grant.expire()
    refreshed = provider.refreshes
    assert grant.get(grant.process()) == f"access-{grant.who}-{provider.issued}"
    assert provider.refreshes == refreshed + 1


def test_a_refresh_that_outlived_its_lease_still_keeps_the_rotated_token(grant, provider):
    """Its lease ran out while the provider answered (it never should: the request's timeout is
    shorter), and nobody took it: the refresh token it got is still stored."""
    provider.held = True
    caller = Caller(grant, grant.process())
    ticket = provider.next_arrival()
    rows(grant.db, "update oauth_tokens set refresh_lease_until = now() - interval '1 second' "
                   "where refreshing_by is not null returning 1")
    rows(grant.db, "update user_connections set refresh_lease_until = now() - interval '1 second' "
                   "where refreshing_by is not null returning 1")
    provider.held = False
    ticket.release()
    assert caller.result() == f"access-{grant.who}-{provider.issued}"
    kept(grant, provider)


@pytest.mark.parametrize("answered_first", ["first", "second"])
def test_two_refreshes_of_one_refresh_token_keep_the_one_the_provider_accepted(grant, provider, answered_first):
    """A lease ran out and a second refresh took it while the first was still at the provider, so
    both sent the same refresh token. The provider accepts one and refuses the other (reuse):
    whichever it accepted, its rotated refresh token is what stays stored, and both calls get its
    access token."""
    provider.held = True
    first = Caller(grant, grant.process())
    first_ticket = provider.next_arrival()
    for table in ("oauth_tokens", "user_connections"):
        rows(grant.db, f"update {table} set refresh_lease_until = now() - interval '1 second' "  # noqa: S608
                       "where refreshing_by is not null returning 1")
    second = Caller(grant, grant.process())
    second_ticket = provider.next_arrival()
    assert first_ticket.form["refresh_token"] == second_ticket.form["refresh_token"]

    one, other = (first, second) if answered_first == "first" else (second, first)
    (first_ticket if one is first else second_ticket).release()
    token = one.result()
    provider.held = False
    (second_ticket if one is first else first_ticket).release()
    assert other.result() == token == f"access-{grant.who}-{provider.issued}"
    assert provider.refreshes == 1
    kept(grant, provider)


def test_a_grant_stored_anew_during_a_refresh_wins_over_it(grant, provider, api, org):
    """A person replaces the organization's credential (or the user connects again) while a refresh
    is at the provider: what the refresh got is not written over it, and the call gets a token of
    the grant as it is now."""
    provider.held = True
    caller = Caller(grant, grant.process())
    ticket = provider.next_arrival()
    grant.replace(api, org)
    now = grant.stored()
    provider.held = False
    ticket.release()
    token = caller.result()
    if grant.kind == "organization":  # the new credential had no token yet: it was refreshed in turn
        assert provider.refresh_requests == ["refresh-org-0", "refresh-new-0"]
        assert token == f"access-new-{provider.issued}"
        grant.who = "new"
        kept(grant, provider)
    else:  # the user's new connection was fresh: it is what the call got, and what stays
        assert token == now["accessToken"] and grant.stored() == now
        then_the_next_refresh_works(grant, provider)


def test_a_grant_reencrypted_during_a_refresh_still_takes_the_rotated_token(grant, provider, config):
    """`tolstoy secrets rotate --reencrypt` moves the credential (the connection) to a new data key
    while a refresh is at the provider: the ciphertext changed, the grant did not, so the refresh
    stores its rotated refresh token over it."""
    provider.held = True
    caller = Caller(grant, grant.process())
    ticket = provider.next_arrival()
    counts = engine.reencrypt(grant.db, engine.vault_from_config(config, grant.db), settle_seconds=0)
    assert counts["credentials" if grant.kind == "organization" else "connections"] == 1
    provider.held = False
    ticket.release()
    assert caller.result() == f"access-{grant.who}-{provider.issued}"
    kept(grant, provider)


# ---- (e) what a refresh costs ---------------------------------------------------------------------------

def test_a_refresh_is_three_statements_of_its_own_each_committed_at_once(grant, provider):
    """Reading the stored token, taking the lease and storing (rotated refresh token included) are
    one statement each, with the tenant set in the same round trip and committed at once: three
    round trips, three transactions, none open while the provider answers."""
    tools = grant.process()
    grant.get(tools)  # the process's data key is cached, as in a running worker
    grant.expire()
    tools.tokens.cache = TokenCache()
    before = tools.db.counts.snapshot()
    assert grant.get(tools) == f"access-{grant.who}-{provider.issued}"
    after = tools.db.counts.snapshot()
    assert {k: after[k] - before[k] for k in after} == {"statements": 6, "round_trips": 3, "transactions": 3}


def test_the_lease_outlasts_the_token_request(grant, provider):
    """A lease lasts the request's timeout plus the margin: a live refresher's request always ends
    while its lease holds, so no second refresher sends its refresh token meanwhile."""
    provider.held = True
    caller = Caller(grant, grant.process(), timeout_ms=60_000)
    ticket = provider.next_arrival()
    table = "oauth_tokens" if grant.kind == "organization" else "user_connections"
    [row] = rows(grant.db, f"select extract(epoch from refresh_lease_until - now()) as left "  # noqa: S608
                           f"from {table} where refreshing_by is not null")
    expected = tool_auth.REFRESH_TIMEOUT_MS / 1000 + tool_auth.LEASE_MARGIN_SECONDS
    assert expected - 5 < float(row["left"]) <= expected
    ticket.release()
    assert caller.result() == f"access-{grant.who}-{provider.issued}"
    assert rows(grant.db, f"select refreshing_by from {table}") == [{"refreshing_by": None}]  # noqa: S608


def test_a_refused_refresh_gives_its_lease_up(grant, provider):
    """A provider that refuses: the lease is released at once, so the next call tries again without
    waiting for it to expire (and fails the same way, naming the provider's error)."""
    provider.refresh_tokens.clear()  # every refresh token is refused
    for _ in range(2):
        with pytest.raises(OutboundError, match="invalid_grant"):
            grant.get(grant.process(), timeout_ms=5000)
    assert len(provider.refresh_requests) == 2
    table = "oauth_tokens" if grant.kind == "organization" else "user_connections"
    assert rows(grant.db, f"select refreshing_by from {table}") == [{"refreshing_by": None}]  # noqa: S608


@pytest.mark.parametrize("grant", ["organization"], indirect=True)  # a user's connection always has tokens
def test_rows_that_hold_only_a_lease_are_not_reencrypted(grant, provider, config):
    """An organization's first refresh makes a token row before it has a token; re-encryption leaves
    such a row alone (there is nothing to decrypt)."""
    provider.held = True
    caller = Caller(grant, grant.process())
    ticket = provider.next_arrival()
    assert rows(grant.db, "select access_token from oauth_tokens") == [{"access_token": None}]
    counts = engine.reencrypt(grant.db, engine.vault_from_config(config, grant.db), settle_seconds=0)
    assert counts["tokens"] == 0
    ticket.release()
    assert caller.result() == f"access-org-{provider.issued}"
