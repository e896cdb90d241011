"""The one rule for hiding secrets, and the one mask string.

Where a secret is found (a secret-named field or header, a known credential
value, a password in a URL or an ``Authorization`` value in free text) it is
replaced by ``MASK``. ``hint`` shows the last four characters of a long
credential value, so a person can tell two credentials apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "***"
SENSITIVE_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key",
    "x-auth-token", "x-amz-security-token",
})
SENSITIVE_KEYS = frozenset({
    "password", "token", "secret", "apikey", "api_key", "accesstoken", "access_token",
    "refreshtoken", "refresh_token", "clientsecret", "client_secret", "headervalue", "authorization",
})

# Free text (log lines): URL passwords, key=value secrets, credentials after an auth scheme.
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@", re.IGNORECASE)
_KEY_VALUE = re.compile(
    r"""\b(password|passwd|secret|token|api[_-]?key|client_secret)(["']?\s*[=:]\s*["']?)[^\s"',&}]+""",
    re.IGNORECASE,
)
_AUTH_SCHEME = re.compile(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=:-]{4,}", re.IGNORECASE)
# Text none of the three can match (no "=", ":" or auth scheme) is returned as it is: one scan
# instead of three substitutions for the ids, paths and addresses most log fields are.
_SUSPECT = re.compile(r"[=:]|bearer|basic|token", re.IGNORECASE)


def is_sensitive_key(key: str) -> bool:
    """A field or header name whose value is a secret whatever it holds."""
    lowered = key.lower()
    return lowered.replace("-", "_") in SENSITIVE_KEYS or lowered in SENSITIVE_HEADERS


def hint(value: Any) -> str:
    """Enough of a secret to recognise it, never enough to use it."""
    text = str(value)
    return MASK + text[-4:] if len(text) >= 12 else MASK


def mask_headers(headers: dict, extra: Iterable[str] = ()) -> dict:
    """Header values that carry secrets replaced by the mask."""
    secret = SENSITIVE_HEADERS | {name.lower() for name in extra}
    return {key: MASK if key.lower() in secret else value for key, value in headers.items()}


def mask_json(value: Any, secrets: Iterable[str] = ()) -> Any:
    """A JSON value with secret-named fields and known secret strings masked."""
    known = [s for s in secrets if s and len(s) >= 4]

    def walk(item: Any) -> Any:
        if isinstance(item, dict):
            return {key: MASK if is_sensitive_key(key) else walk(child) for key, child in item.items()}
        if isinstance(item, list):
            return [walk(child) for child in item]
        if isinstance(item, str):
            for secret in known:
                item = item.replace(secret, MASK)
        return item

    return walk(value)


def secret_strings(value: Any) -> list[str]:
    """The strings a JSON value keeps under secret-named fields (a token a login step returned):
    wherever they appear later, in inputs, outputs or errors, they are masked too."""
    found: list[str] = []
    stack = [(value, False)]
    while stack:
        item, secret = stack.pop()
        if isinstance(item, dict):
            stack.extend((child, secret or is_sensitive_key(key)) for key, child in item.items())
        elif isinstance(item, list):
            stack.extend((child, secret) for child in item)
        elif secret and isinstance(item, (str, int)) and not isinstance(item, bool) and len(str(item)) >= 4:
            found.append(str(item))
    return found


def redact(text: str) -> str:
    """Mask credentials in free text: ``postgresql://u:***@h``, ``password=***``, ``Bearer ***``."""
    if not _SUSPECT.search(text):
        return text
    text = _URL_PASSWORD.sub(rf"\1{MASK}@", text)
    text = _KEY_VALUE.sub(rf"\1\2{MASK}", text)
    return _AUTH_SCHEME.sub(rf"\1 {MASK}", text)
