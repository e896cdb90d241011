"""Calls to tools: an action and its inputs become an HTTP request (base URL,
endpoint, headers, credential, query string or JSON body), which is sent
through the guarded client. Flow steps and ``POST /actions/{id}/execute`` use
the same code."""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .. import jsonschemas, logs, tracing
from ..db.database import Database
from ..db.queries import SQL
from ..db.stores import write_action_log
from ..errors import DatabaseUnavailable, VaultError
from ..redaction import Derived, Secrets, mask_json
from .errors import ActAsUserRefused, InvalidInputs, StepFailed
from .outbound import Outbound, OutboundError, Reply, TimedOut, retryable_status
from .templates import TemplateFailure, render_tracked
from .tool_auth import CallAuth, SharedTokens, auth_headers, secret_headers_for, secret_values
from .vault import Reader, Vault

log = logging.getLogger("tolstoy.engine")
# The methods an action may call its endpoint with (an http_request step may also send HEAD and OPTIONS).
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# A synchronous call must answer well inside Gunicorn's worker timeout (gunicorn.conf.py).
SYNC_TIMEOUT_MS = 10_000  # POST /actions/{id}/execute, end to end, unless the action or the server says otherwise


@dataclass
class ToolCall:
    """A request to a tool, built from an action and its inputs."""

    method: str
    url: str
    headers: dict
    params: dict | None
    body: Any
    secrets: list = field(default_factory=list)  # clear values to mask where a tool echoes them
    auth: CallAuth | None = None  # what replaces the headers' placeholders at send time
    # What a trace says the call went to: the tool's origin and the action's endpoint with its {name}
    # placeholders (tracing.url_template); None: the origin alone (an http_request step's rendered URL).
    template: str | None = None


def fill_endpoint(endpoint: str, inputs: dict) -> tuple[str, dict]:
    """Put ``{name}`` path parameters from inputs into the endpoint; returns (path, unused inputs)."""
    rest = dict(inputs)
    path = endpoint
    for name in list(rest):
        token = "{" + name + "}"
        if token in path:
            path = path.replace(token, quote(str(rest.pop(name)), safe=""))
    if "{" in path and "}" in path:
        missing = path[path.index("{") + 1:path.index("}")]
        raise StepFailed(f"Input {missing!r} is needed to build the endpoint {endpoint}")
    return path, rest


def input_errors(schema: dict, inputs: dict) -> list[dict]:
    """Field errors of inputs against an action's JSON Schema, named ``inputs.<path>``. A schema
    stored before its references were checked at save (or written past the API) is checked again
    here: one whose references leave the document or point at no schema is the action's fault,
    named ``inputs``, and nothing is fetched whatever it says (tolstoy/jsonschemas.py)."""
    wrong = jsonschemas.reference_problem(schema)
    if wrong:
        return [{"field": "inputs", "message": f"The action's inputSchema cannot be used: {wrong}"}]
    problems = []
    try:
        found = sorted(jsonschemas.validator(schema).iter_errors(inputs), key=lambda e: list(e.path))
    except jsonschemas.Unresolvable as exc:
        return [{"field": "inputs", "message": f"The action's inputSchema cannot resolve {exc.ref!r}."}]
    except RecursionError:  # a loop reference_problem did not foresee: the action's fault, not a 500
        return [{"field": "inputs", "message": "The action's inputSchema cannot be used: it never stops referring "
                                               "to itself."}]
    for error in found:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path)
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else ""
            path += f".{missing}"
        problems.append({"field": f"inputs{path}", "message": error.message})
    return problems


def checked(reply: Reply) -> dict:
    """A step's output, or StepFailed for a non-2xx answer (retryable for 429 and 5xx)."""
    if reply.status >= 400:
        raise StepFailed(f"Upstream answered {reply.status}", retryable=retryable_status(reply.status),
                         details={"status": reply.status, "body": reply.body})
    return reply.as_output()


def _query_value(value: Any) -> Any:
    return value if isinstance(value, (str, int, float)) else str(value)


class ToolClient:
    """The HTTP client for tools: builds and sends calls to an organization's tools with their
    credentials (through the guarded outbound client), and seals what runs keep secret."""

    def __init__(self, db: Database, http: Outbound, vault: Vault | None):
        self.db = db
        self.http = http
        self.vault = vault
        self.tokens = SharedTokens(db, vault, http)

    def credential(self, org_id, tool_id, reader: Reader) -> tuple[dict | None, dict | None]:
        """The tool's default credential and its decrypted config (None, None without one); the
        statement that reads it records the read in ``secret_reads`` as ``reader``'s."""
        if self.vault is None:
            raise StepFailed("TOLSTOY_ENCRYPTION_KEY is not set, so tool credentials cannot be read")
        row = self.db.one(SQL.tool_credentials.read_default, commit=True, org_id=org_id, tool_id=tool_id,
                          actor=reader.actor, user_id=reader.user_id, run_id=reader.run_id, purpose=reader.purpose)
        if row is None:
            return None, None
        try:
            config = self.vault.decrypt(org_id, row["secret"])
        except VaultError as exc:
            raise StepFailed(str(exc)) from None
        self._renew(org_id, row, config)
        return row, config

    def _renew(self, org_id, row: dict, config: dict) -> None:
        """Rewrite a credential made with an older data key (or before envelope encryption) with the
        newest one, so old key versions fall out of use without a pass over every row."""
        try:
            if self.vault.stale(org_id, row["secret"]):
                self.db.rowcount(SQL.tool_credentials.rewrite_secret, commit=True, org_id=org_id, id=row["id"],
                                 secret=self.vault.encrypt(org_id, config), previous=row["secret"])
        except (VaultError, DatabaseUnavailable) as exc:
            # The call goes on with the credential it has; the next use tries again.
            log.warning("could not re-encrypt credential %s with the newest data key: %s", row["id"], exc)

    def seal(self, org_id, value: Any) -> bytes:
        """A step output that holds secrets, encrypted for the run's checkpoint."""
        if self.vault is None:
            raise StepFailed("TOLSTOY_ENCRYPTION_KEY is not set, so an output holding secrets cannot be kept")
        try:
            return self.vault.seal(org_id, value)
        except VaultError as exc:
            raise StepFailed(str(exc)) from None

    def unseal(self, org_id, sealed: str | bytes) -> Any:
        """A sealed step output (base64 as the claim hands it over, or bytes) as it was."""
        if self.vault is None:
            raise StepFailed("TOLSTOY_ENCRYPTION_KEY is not set, so a sealed output cannot be read")
        raw = base64.b64decode(sealed) if isinstance(sealed, str) else sealed
        try:
            return self.vault.unseal(org_id, raw)
        except VaultError as exc:
            raise StepFailed(str(exc)) from None

    def build_call(self, org_id, action: dict, tool: dict, inputs: dict, context: dict | None = None, *,
                   reader: Reader, acts_as_user: bool = False) -> ToolCall:
        """Validate inputs, then build the request: base URL + endpoint, auth (the credential read as
        ``reader``'s), query or JSON body. A per-user credential is used only with ``acts_as_user``
        (whoever started the run or call may act as ``reader.user_id``), else ActAsUserRefused."""
        if action.get("input_schema"):
            problems = input_errors(action["input_schema"], inputs)
            if problems:
                raise InvalidInputs(problems)
        path, rest = fill_endpoint(action["endpoint"], inputs)
        headers = {"Accept": "application/json"}
        secrets: list = []
        if action.get("headers"):
            try:
                rendered, tree = render_tracked(action["headers"], context) if context else (action["headers"], None)
            except TemplateFailure as exc:
                raise StepFailed(f"Template error in the action's headers: {exc}") from None
            headers.update({name: str(value) for name, value in rendered.items()})
            # A header a template derived from a secret is one too (matched whole where it shows).
            secrets += [Derived(str(rendered[name])) for name in (tree or {})]
        auth = None
        if tool["auth_type"] != "none":
            credential, config = self.credential(org_id, tool["id"], reader)
            if credential is None:
                raise StepFailed(f"Tool {tool['name']!r} uses {tool['auth_type']} but has no credential")
            if credential["type"] == "oauth2" and config.get("perUser"):
                # Each user's own connection: the run's user (or the caller of a synchronous execute).
                if reader.user_id is None:
                    raise StepFailed(f"Tool {tool['name']!r} calls as the user who connected it, but this run "
                                     "has no user (it was not started with X-User-ID)",
                                     details={"name": "NotConnected", "toolId": str(tool["id"])})
                if not acts_as_user:
                    raise ActAsUserRefused(reader.user_id, tool)
                auth = CallAuth(org_id, credential, config, reader.user_id, tool)
            else:
                auth = CallAuth(org_id, credential, config)
            # Placeholders only: the values go in when the request is sent (send()).
            headers.update(auth_headers(credential, config))
            secrets = secret_values(credential["type"], config)
        url = tool["base_url"].rstrip("/") + path
        template = tracing.url_template(tool["base_url"], action["endpoint"])
        if action["method"] in ("GET", "DELETE"):
            return ToolCall(action["method"], url, headers, {k: _query_value(v) for k, v in rest.items()} or None,
                            None, secrets, auth, template)
        return ToolCall(action["method"], url, headers, None, rest, secrets, auth, template)

    def send(self, call: ToolCall, timeout_ms: int, idempotency_key: str | None,
             cancel: threading.Event | None = None) -> Reply:
        """Make the call, ending it at ``timeout_ms`` or when ``cancel`` is set (an OAuth2 token
        fetched for it included); OutboundError becomes StepFailed. The credential's values
        replace the placeholders only here, on their way to the wire, and only when the call goes
        to the origin the credential was stored for (else StepFailed, nothing sent)."""
        if tracing.ON:
            with tracing.call_span(call.method, call.url, call.template, idempotency_key) as current:
                reply = self._send(call, timeout_ms, idempotency_key, cancel)
                tracing.reply_status(current, reply.status)
                return reply
        return self._send(call, timeout_ms, idempotency_key, cancel)

    def _send(self, call: ToolCall, timeout_ms: int, idempotency_key: str | None,
              cancel: threading.Event | None) -> Reply:
        headers = dict(call.headers)
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        if tracing.ON:  # the tool's own traces may join ours (the header is not signed, nor secret)
            tracing.inject(headers)
        started = time.monotonic()
        try:
            values = secret_headers_for(call.auth, self.tokens, timeout_ms, cancel, url=call.url) if call.auth else {}
            # What the headers carry is secret too (Basic's base64 pair, a fetched OAuth2 token).
            call.secrets += [value for value in values.values() if value]
            left = timeout_ms - int((time.monotonic() - started) * 1000)
            if left <= 0:
                raise OutboundError(f"Timed out after {timeout_ms} ms", retryable=True)
            log.debug("calling %s %s with headers %s", call.method, call.url, headers)
            return self.http.request(call.method, call.url, headers=headers, params=call.params,
                                     json_body=call.body, timeout_ms=left, secrets=values, cancel=cancel)
        except TimedOut:
            # The step's timeout, not what was left of it when the request went out (the credential's
            # headers took some of it).
            raise StepFailed(f"Timed out after {timeout_ms} ms", retryable=True) from None
        except OutboundError as exc:
            raise StepFailed(str(exc), retryable=exc.retryable) from None

    def call_action(self, org_id, user_id, action: dict, inputs: dict, timeout_ms: int = SYNC_TIMEOUT_MS, *,
                    acts_as_user: bool = False) -> dict:
        """Call an action now (``POST /actions/{id}/execute``) and log the call as an execution log.

        InvalidInputs when the inputs do not match the action's inputSchema, ActAsUserRefused when
        the tool is per-user and the caller may not act as ``user_id`` (nothing is sent or logged
        either way); an upstream error or a failed call is ``success: false``. What the tool
        answered is redacted, not withheld: the answer, the log row and the log lines show it with
        the credential's values masked (in their encodings too).
        """
        secrets = Secrets()  # the credential's values, as they become known
        with logs.masking(secrets):
            return self._call_action(org_id, user_id, action, inputs, timeout_ms, secrets, acts_as_user)

    def _call_action(self, org_id, user_id, action: dict, inputs: dict, timeout_ms: int, secrets: Secrets,
                     acts_as_user: bool) -> dict:
        execution_id = str(uuid.uuid4())
        started = time.perf_counter()
        call = None
        try:
            # Its own short unit of work: no connection is held while the tool answers.
            tool = self.db.one(SQL.tools.get, commit=True, org_id=org_id, id=action["tool_id"])
            call = self.build_call(org_id, action, tool, inputs, reader=Reader("api", "execute", user_id),
                                   acts_as_user=acts_as_user)
            secrets.add(call.secrets)
            reply = self.send(call, timeout_ms, f"{execution_id}:{action['key']}:1")
            success, status_code, body, error = reply.status < 400, reply.status, reply.body, None
            if not success:
                error = {"name": "UpstreamError", "message": f"Upstream answered {reply.status}"}
        except (InvalidInputs, ActAsUserRefused):
            raise
        except StepFailed as exc:
            success, status_code, body, error = False, exc.details.get("status"), {"error": str(exc)}, exc.as_error()
        if call is not None:
            secrets.add(call.secrets)  # what only sending learned (an OAuth2 token, Basic's pair)
        duration = int((time.perf_counter() - started) * 1000)
        outputs = mask_json({"statusCode": status_code, "data": body}, secrets)
        # The log row and the action.executed / action.failed webhook event: one statement.
        write_action_log(
            self.db, org_id=org_id, user_id=user_id, execution_id=execution_id, action=action, success=success,
            inputs=mask_json(inputs, secrets), outputs=outputs,
            error=mask_json(error, secrets), duration_ms=duration, status_code=status_code,
        )
        return {"success": success, "executionId": execution_id, "durationMs": duration,
                "statusCode": status_code, "data": outputs["data"]}
