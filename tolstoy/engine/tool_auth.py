"""Tool credentials on the wire: which fields are secret, how a credential
becomes request headers, and OAuth2 access tokens (shared by every process
through the database, cached until shortly before they expire), including each
user's own tokens for a ``perUser`` credential (``user_connections``) and the
authorization-code exchange that makes them."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..db.database import Database
from ..db.queries import SQL
from ..errors import DatabaseUnavailable, VaultError
from ..redaction import MASK, hint
from .errors import StepFailed
from .outbound import CallCancelled, Outbound, OutboundError, origin_of

log = logging.getLogger("tolstoy.engine")

# Fields whose values are secret, per credential type; everything else is shown.
SECRET_FIELDS = {
    "apiKey": ("headerValue",),
    "bearer": ("token",),
    "basic": ("password",),
    "oauth2": ("clientSecret", "accessToken", "refreshToken"),
}


def masked(credential_type: str, config: dict) -> dict:
    """A credential config with its secret fields masked."""
    secret = SECRET_FIELDS.get(credential_type, ())
    return {key: hint(value) if key in secret and value else value for key, value in config.items()}


def secret_values(credential_type: str, config: dict) -> list[str]:
    """The clear secrets of a config, so logs can scrub them."""
    return [str(config[f]) for f in SECRET_FIELDS.get(credential_type, ()) if config.get(f)]


class TokenCache:
    """OAuth2 access tokens per credential, kept in this process until shortly before expiry."""

    def __init__(self):
        self._tokens: dict[tuple, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple) -> str | None:
        """A cached token that is still valid."""
        with self._lock:
            found = self._tokens.get(key)
        if found and found[1] > time.monotonic():
            return found[0]
        return None

    def put(self, key: tuple, token: str, expires_in: float) -> None:
        """Remember a token; refresh 30 s before the server says it expires."""
        with self._lock:
            self._tokens[key] = (token, time.monotonic() + max(expires_in - 30, 0))


# A refresh holds no lock and no connection while the provider answers. It takes a short lease on
# the token's row (one statement, committed at once), calls the token endpoint outside any
# transaction, and stores the result with a compare-and-set: only if the credential (a user's
# connection) still holds the refresh token it sent. The lease lasts the token request's timeout
# (REFRESH_TIMEOUT_MS at most, less when the call has less left) plus LEASE_MARGIN_SECONDS for
# what comes before and after (decrypting, checking out a connection to store), so a live refresher
# always ends its request while its lease holds, and one that died holds the others up 30 s at most.
REFRESH_TIMEOUT_MS = 20_000
LEASE_MARGIN_SECONDS = 10.0
# Callers that find another's live lease hold nothing while they wait: they look again after 50 ms,
# then twice as long each time up to 1 s, until their own call's deadline (or its cancel).
POLL_FIRST_SECONDS = 0.05
POLL_MAX_SECONDS = 1.0
# A compare-and-set that finds the same grant re-encrypted with another data key stores again over
# the new ciphertext, this many times at most (re-encryption racing it again and again is not
# progress to wait for: the lease is then given up and the refreshed token dropped).
STORE_TRIES = 3


@dataclass(frozen=True)
class _Lease:
    """One refresh's lease: its id in the database, how long the database holds it, and when (on this
    process's monotonic clock) the token request must have ended. It is measured from before the
    statement that takes it, so the request always ends before the database lets the lease go."""

    id: uuid.UUID
    seconds: float
    request_ends: float

    @classmethod
    def within(cls, deadline: float, timeout_ms: int) -> _Lease:
        now = time.monotonic()
        left_ms = int((deadline - now) * 1000)
        if left_ms <= 0:
            raise OutboundError(f"Timed out after {timeout_ms} ms", retryable=True)
        request_ms = min(left_ms, REFRESH_TIMEOUT_MS)
        return cls(uuid.uuid4(), request_ms / 1000 + LEASE_MARGIN_SECONDS, now + request_ms / 1000)

    def request_ms(self, timeout_ms: int) -> int:
        """What is left for the token request (OutboundError when nothing is)."""
        left_ms = int((self.request_ends - time.monotonic()) * 1000)
        if left_ms <= 0:
            raise OutboundError(f"Timed out after {timeout_ms} ms", retryable=True)
        return left_ms


class _Waits:
    """Bounded back-off while another process holds the lease: OutboundError once the call's deadline
    passes, CallCancelled when its cancel is set."""

    def __init__(self, deadline: float, timeout_ms: int, cancel: threading.Event | None):
        self.deadline = deadline
        self.timeout_ms = timeout_ms
        self.cancel = cancel
        self.delay = POLL_FIRST_SECONDS

    def pause(self) -> None:
        pause = min(self.delay, max(self.deadline - time.monotonic(), 0.0))
        if self.cancel is not None:
            if self.cancel.wait(pause):
                raise CallCancelled("The call was cancelled")
        else:
            time.sleep(pause)
        if time.monotonic() >= self.deadline:
            raise OutboundError(f"Timed out after {self.timeout_ms} ms waiting for another process's refresh of "
                                "the OAuth2 token", retryable=True)
        self.delay = min(self.delay * 2, POLL_MAX_SECONDS)


def _outside_transactions() -> None:
    """Refuse to ask for a token (which may mean a token request) while this thread holds a
    transaction, and so a pooled connection and maybe row locks, open: the provider's answer may take
    the request's whole timeout, and the token's statements commit as they go."""
    unit = Database.current()
    if unit is not None and unit.active:
        raise RuntimeError("an OAuth2 token must not be asked for inside a unit of work: commit it first")


class SharedTokens:
    """OAuth2 access tokens every process shares: this process's cache, then the database's
    (oauth_tokens), then a refresh under a short lease on the token's row, so that one process
    refreshes while the others wait (holding nothing) and reuse its token, and a refresh token the
    provider rotates is kept instead of being sent again (providers with reuse detection revoke the
    grant for that). Per-user tokens (user_connections) are refreshed the same way."""

    def __init__(self, db: Database, vault, http: Outbound):
        self.db = db
        self.vault = vault
        self.http = http
        self.cache = TokenCache()

    def token(self, org_id, credential: dict, timeout_ms: int = 30000, cancel: threading.Event | None = None) -> str:
        """A valid access token for this oauth2 credential; a refresh (or the wait for another
        process's) ends within ``timeout_ms`` or when ``cancel`` is set (it is part of the call that
        needs the token)."""
        key = (str(credential["id"]), str(credential["updated_at"]))
        cached = self.cache.get(key)
        if cached:
            return cached
        _outside_transactions()
        stored = self.db.one(SQL.oauth_tokens.current, commit=True, org_id=org_id, credential_id=credential["id"])
        if stored is None:
            stored = self._refresh(org_id, credential["id"], timeout_ms, cancel)
        token = self.vault.decrypt(org_id, stored["access_token"], what="oauth2 access token")
        left = (stored["expires_at"] - dt.datetime.now(dt.UTC)).total_seconds()
        self.cache.put(key, token, left)
        return token

    def _refresh(self, org_id, credential_id, timeout_ms: int, cancel) -> dict:
        """The credential's token as a refresh (this process's, or another's it waited for) stored it."""
        deadline = time.monotonic() + timeout_ms / 1000
        waits = _Waits(deadline, timeout_ms, cancel)
        while True:
            lease = _Lease.within(deadline, timeout_ms)
            row = self.db.one(SQL.oauth_tokens.take_lease, commit=True, org_id=org_id, credential_id=credential_id,
                              lease=lease.id, lease_seconds=lease.seconds)
            if row is None:
                raise StepFailed("The oauth2 credential was deleted while its token was being refreshed")
            if row["access_token"] is not None:  # another process stored a fresh one
                return row
            if row["lease"] is None:  # another process is refreshing: its token will be stored
                waits.pause()
                continue
            stored = self._refresh_leased(org_id, credential_id, lease, row["secret"], timeout_ms, cancel)
            if stored is not None:
                return stored
            # The credential changed while the provider answered (a person replaced it, or a refresh
            # that took over an expired lease stored a newer refresh token): start again from it.

    def _refresh_leased(self, org_id, credential_id, lease: _Lease, secret: bytes, timeout_ms: int,
                        cancel) -> dict | None:
        """Holding the lease: ask the provider (no transaction open), then store with a compare-and-set
        against ``secret``, the credential as the lease found it. None when the credential changed."""
        release = {"org_id": org_id, "credential_id": credential_id, "lease": lease.id}
        try:
            config = self.vault.decrypt(org_id, secret)
            body = fetch_token(config, self.http, lease.request_ms(timeout_ms), cancel)
        except BaseException as exc:
            self._give_up(SQL.oauth_tokens.release_lease, release)
            if isinstance(exc, TokenRequestFailed):
                # Refused: maybe the refresh token we sent was spent by a refresh that outlived its
                # lease and stored a newer one; its token is as good as ours.
                stored = self.db.one(SQL.oauth_tokens.current, commit=True, org_id=org_id,
                                     credential_id=credential_id)
                if stored is not None:
                    return stored
            raise
        access_token = self.vault.encrypt(org_id, body["access_token"])
        lifetime = expires_in(body) or 3600.0  # the same reading as a user's tokens get
        rotated = body.get("refresh_token")
        for _ in range(STORE_TRIES):
            stored = self.db.one(
                SQL.oauth_tokens.store, commit=True, org_id=org_id, credential_id=credential_id, lease=lease.id,
                previous=secret, access_token=access_token, expires_in=lifetime,
                secret=(self.vault.encrypt(org_id, {**config, "refreshToken": rotated})
                        if rotated and rotated != config.get("refreshToken") else None))
            if stored is not None:
                return stored
            now = self.db.one(SQL.oauth_tokens.credential_secret, commit=True, org_id=org_id,
                              credential_id=credential_id)
            if now is None or self.vault.decrypt(org_id, now["secret"]) != config:
                # Replaced, or a newer refresh token stored: it wins over what this refresh got.
                break
            secret = now["secret"]  # the same config re-encrypted (a newer data key): store over it
        self._give_up(SQL.oauth_tokens.release_lease, release)
        return None

    def _give_up(self, query, params: dict) -> None:
        """Release a lease this refresh will not store under; if the database is unreachable, the lease
        expires by itself."""
        try:
            self.db.rowcount(query, commit=True, **params)
        except DatabaseUnavailable as exc:
            log.warning("could not release an OAuth2 refresh lease (it expires by itself): %s", exc)

    # ---- per-user connections (user_connections) -------------------------------------------------

    def user_token(self, org_id, user_id, tool: dict, config: dict, timeout_ms: int = 30000,
                   cancel: threading.Event | None = None, *, origin: str) -> str:
        """The access token ``user_id`` connected for this tool (a ``perUser`` oauth2 credential),
        refreshed under a short lease on the connection when it expires (one process refreshes, the
        others wait holding nothing and reuse its token; a rotated refresh token is kept). Never
        cached in the process: a disconnected user's token stops being used at once. StepFailed
        naming the user and the tool when the user has not connected it, or connected it when the
        tool was at another origin than the call's (``origin``)."""
        _outside_transactions()
        stored = self.db.one(SQL.user_connections.current, commit=True, org_id=org_id, user_id=user_id,
                             tool_id=tool["id"])
        if stored is None or stored["id"] is None:
            raise not_connected(user_id, stored, tool)
        same_origin(user_id, stored, tool, origin)
        try:
            if not stored["fresh"]:
                stored = self._refresh_user(org_id, user_id, tool, config, timeout_ms, cancel)
                same_origin(user_id, stored, tool, origin)  # connected again meanwhile, maybe elsewhere
            return self.vault.decrypt(org_id, stored["tokens"], what="user's oauth2 tokens")["accessToken"]
        except VaultError as exc:
            raise StepFailed(str(exc)) from None

    def _refresh_user(self, org_id, user_id, tool: dict, config: dict, timeout_ms: int, cancel) -> dict:
        """The user's connection as a refresh (this process's, or another's it waited for) stored it."""
        deadline = time.monotonic() + timeout_ms / 1000
        waits = _Waits(deadline, timeout_ms, cancel)
        which = {"org_id": org_id, "user_id": user_id, "tool_id": tool["id"]}
        while True:
            lease = _Lease.within(deadline, timeout_ms)
            row = self.db.one(SQL.user_connections.take_lease, commit=True, **which, lease=lease.id,
                              lease_seconds=lease.seconds)
            if row is None:  # disconnected (or connected again after the statement began)
                row = self.db.one(SQL.user_connections.current, commit=True, **which)
                if row is None or row["id"] is None:
                    raise not_connected(user_id, row, tool)
                row = {**row, "lease": None}
            if row["fresh"]:
                return row
            if row["lease"] is None:  # another process is refreshing: its tokens will be stored
                waits.pause()
                continue
            stored = self._refresh_user_leased(org_id, user_id, tool, config, lease, row, timeout_ms, cancel)
            if stored is not None:
                return stored
            # The user's tokens changed while the provider answered (they connected again, or a
            # refresh that took over an expired lease stored newer ones): start again from them.

    def _refresh_user_leased(self, org_id, user_id, tool: dict, config: dict, lease: _Lease, row: dict,
                             timeout_ms: int, cancel) -> dict | None:
        """Holding the lease on the connection ``row``: ask the provider (no transaction open), then
        store with a compare-and-set against the tokens the lease found. None when they changed."""
        which = {"org_id": org_id, "user_id": user_id, "tool_id": tool["id"]}
        release = {"org_id": org_id, "id": row["id"], "lease": lease.id}
        try:
            tokens = self.vault.decrypt(org_id, row["tokens"], what="user's oauth2 tokens")
            if not tokens.get("refreshToken"):
                raise StepFailed(f"The access token user {user_id} connected for the tool {tool['name']!r} expired "
                                 "and the provider gave no refresh token: the user must connect the tool again",
                                 details={"name": "ConnectionExpired"})
            body = fetch_token({**config, "refreshToken": tokens["refreshToken"]}, self.http,
                               lease.request_ms(timeout_ms), cancel)
        except BaseException as exc:
            self._give_up(SQL.user_connections.release_lease, release)
            if isinstance(exc, TokenRequestFailed):
                # Refused: maybe a refresh that outlived its lease spent this refresh token and stored
                # newer ones; they are as good as ours.
                now = self.db.one(SQL.user_connections.current, commit=True, **which)
                if now is not None and now["id"] is not None and now["fresh"]:
                    return now
            raise
        sealed = self.vault.encrypt(org_id, {"accessToken": body["access_token"],
                                             "refreshToken": body.get("refresh_token") or tokens["refreshToken"]})
        previous = row["tokens"]
        for _ in range(STORE_TRIES):
            stored = self.db.one(SQL.user_connections.refreshed, commit=True, org_id=org_id, id=row["id"],
                                 lease=lease.id, previous=previous, tokens=sealed, expires_in=expires_in(body))
            if stored is not None:
                return stored
            now = self.db.one(SQL.user_connections.current, commit=True, **which)
            if (now is None or now["id"] != row["id"]
                    or self.vault.decrypt(org_id, now["tokens"], what="user's oauth2 tokens") != tokens):
                # Disconnected, connected again, or newer tokens stored: they win over what this got.
                break
            previous = now["tokens"]  # the same tokens re-encrypted (a newer data key): store over them
        self._give_up(SQL.user_connections.release_lease, release)
        return None


def same_origin(user_id, stored: dict, tool: dict, origin: str) -> None:
    """StepFailed unless the user connected the tool at the origin this call goes to."""
    if origin_of(stored["origin_url"]) != origin:
        raise StepFailed(f"User {user_id} connected the tool {tool['name']!r} when it was at "
                         f"{origin_of(stored['origin_url'])}; this call goes to {origin}, so their token is not "
                         "sent: the user must connect the tool again", details={"name": "CredentialOriginMismatch"})


def not_connected(user_id, stored: dict | None, tool: dict) -> StepFailed:
    """The step error of a run whose user has not connected a per-user tool: names both."""
    who = f"{stored['email']} ({user_id})" if stored and stored.get("email") else str(user_id)
    how = f" (GET /auth/{tool['key']}/login?userId={user_id})" if tool.get("key") else ""
    return StepFailed(f"User {who} has not connected the tool {tool['name']!r}{how}",
                      details={"name": "NotConnected", "userId": str(user_id), "toolId": str(tool["id"])})


MAX_LIFETIME_SECONDS = 10 * 365 * 24 * 3600.0


def expires_in(body: dict) -> float | None:
    """Seconds a token endpoint's access token lives (None when it does not say, or says something that
    is no number); a number or a numeric string (some providers send one), within 0 s to 10 years."""
    value = body.get("expires_in")
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_LIFETIME_SECONDS)


class TokenRequestFailed(OutboundError):
    """A token endpoint refused (or answered without an access token): its ``error`` and
    ``error_description`` (RFC 6749 section 5.2), when it gave them."""

    def __init__(self, message: str, status: int, error: str | None, description: str | None):
        super().__init__(message, retryable=status >= 500)
        self.status = status
        self.error = error
        self.description = description


_SECRET_FORM_FIELDS = ("client_secret", "refresh_token", "code", "code_verifier")


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def token_request(token_url: str, form: dict, http: Outbound, timeout_ms: int,
                  cancel: threading.Event | None = None) -> dict:
    """POST a form to a token endpoint (through the outbound guard); its JSON answer, or
    TokenRequestFailed naming the provider's error. The form holds the client secret and a refresh
    token or code: a redirect to another origin is an OutboundError, not followed (a 307 would send
    the form there). Never inside a transaction: the provider may take the whole timeout to answer."""
    _outside_transactions()
    reply = http.request("POST", token_url, data=form, headers={"Accept": "application/json"},
                         timeout_ms=timeout_ms, cancel=cancel, cross_origin_redirects=False)
    body = reply.body if isinstance(reply.body, dict) else {}
    if reply.status >= 400 or not isinstance(body.get("access_token"), str) or not body["access_token"]:
        # The provider's words go into step errors and the callback's answer: without anything
        # secret it was sent (client secret, refresh token, code, PKCE verifier) should it repeat it.
        sent = [str(form[name]) for name in _SECRET_FORM_FIELDS if form.get(name)]
        error = _scrub(body.get("error"), sent) if isinstance(body.get("error"), str) else None
        description = (_scrub(body.get("error_description"), sent)
                       if isinstance(body.get("error_description"), str) else None)
        said = ": " + ": ".join(str(x)[:300] for x in (error, description) if x) if error or description else ""
        raise TokenRequestFailed(f"oauth2 token request to {token_url} failed with status {reply.status}{said}",
                                 reply.status, error, description)
    return body


def fetch_token(config: dict, http: Outbound, timeout_ms: int = 30000,
                cancel: threading.Event | None = None) -> dict:
    """The token endpoint's answer: with the refresh token when there is one, else with the client
    credentials; OutboundError when it gives no access token."""
    form = {"client_id": config["clientId"], "client_secret": config["clientSecret"]}
    if config.get("refreshToken"):
        form.update(grant_type="refresh_token", refresh_token=config["refreshToken"])
    else:
        form["grant_type"] = "client_credentials"
    if config.get("scopes"):
        form["scope"] = scope_of(config)
    return token_request(config["tokenUrl"], form, http, timeout_ms, cancel)


def scope_of(config: dict) -> str:
    """The ``scope`` parameter of an oauth2 credential's scopes."""
    scopes = config.get("scopes") or []
    return " ".join(scopes) if isinstance(scopes, list) else str(scopes)


def exchange_code(config: dict, code: str, verifier: str, redirect_uri: str, http: Outbound,
                  timeout_ms: int = 10000) -> dict:
    """The authorization-code grant with PKCE (RFC 7636): the token endpoint's answer for a code a
    user's consent produced; TokenRequestFailed when the provider refuses it (a wrong verifier too)."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "client_id": config["clientId"], "client_secret": config["clientSecret"], "code_verifier": verifier}
    return token_request(config["tokenUrl"], form, http, timeout_ms)


def placeholder(credential: dict, field: str) -> str:
    """The stand-in for one secret of a credential, e.g. ``{{secret:default.token}}``: what a
    request carries until it is sent, so nothing built, logged or stored holds the value."""
    return "{{secret:" + f"{credential['name']}.{field}" + "}}"


def auth_headers(credential: dict | None, config: dict | None) -> dict:
    """Headers that authenticate a request with this credential, with placeholders where the secrets
    go (none without a credential); ``secret_headers_for`` gives the values at send time."""
    if credential is None or config is None:
        return {}
    kind = credential["type"]
    if kind == "apiKey":
        return {config["headerName"]: placeholder(credential, "headerValue")}
    if kind == "bearer":
        return {"Authorization": "Bearer " + placeholder(credential, "token")}
    if kind == "basic":
        return {"Authorization": "Basic " + placeholder(credential, "basic")}
    if kind == "oauth2":
        return {"Authorization": "Bearer " + placeholder(credential, "accessToken")}
    return {}


@dataclass(frozen=True)
class CallAuth:
    """What a call's placeholders are filled from at send time: the organization's credential and
    its decrypted config; for a per-user oauth2 credential, also the acting user and the tool."""

    org_id: Any
    credential: dict
    config: dict
    user_id: Any = None
    tool: dict | None = None


def bound_origin(auth: CallAuth, url: str) -> str:
    """The origin of ``url`` when the credential was stored for it (the tool's base URL then), else
    StepFailed: a credential goes only where it was stored for, whatever moved the tool or built the
    URL since."""
    stored_for = origin_of(auth.credential["origin_url"])
    try:
        going_to = origin_of(url)
    except ValueError:  # not a URL: the request could not be sent anyway
        going_to = url
    if going_to != stored_for:
        raise StepFailed(f"The credential {auth.credential['name']!r} was stored for {stored_for}; this call goes to "
                         f"{going_to}, so it is not sent: store the credential again for the tool's base URL",
                         details={"name": "CredentialOriginMismatch"})
    return going_to


def secret_headers_for(auth: CallAuth, tokens: SharedTokens, timeout_ms: int,
                       cancel: threading.Event | None = None, *, url: str) -> dict[str, str]:
    """The values behind ``auth_headers``' placeholders for a call to ``url`` (StepFailed when the
    credential was stored for another origin, see ``bound_origin``); an OAuth2 token fetched now
    (within the call's ``timeout_ms``) if no process holds a valid one."""
    origin = bound_origin(auth, url)
    org_id, credential, config = auth.org_id, auth.credential, auth.config
    kind = credential["type"]
    if kind == "apiKey":
        return {placeholder(credential, "headerValue"): config["headerValue"]}
    if kind == "bearer":
        return {placeholder(credential, "token"): config["token"]}
    if kind == "basic":
        pair = f"{config['username']}:{config['password']}".encode()
        return {placeholder(credential, "basic"): base64.b64encode(pair).decode()}
    if kind == "oauth2" and config.get("perUser"):
        # build_call named the run's (or caller's) user and the tool.
        token = tokens.user_token(org_id, auth.user_id, auth.tool, config, timeout_ms, cancel, origin=origin)
        return {placeholder(credential, "accessToken"): token}
    if kind == "oauth2":
        return {placeholder(credential, "accessToken"): tokens.token(org_id, credential, timeout_ms, cancel)}
    return {}
