"""API keys: making them, hashing them, and recognising the bearer of one.

A key is ``tsk_`` + 43 random URL-safe characters. Only HMAC-SHA256(server
secret, key) is stored: a stolen table yields no usable key, and checking a key
is one hash plus one indexed lookup, whether the key is valid or not.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import falcon

KEY_PREFIX = "tsk_"
SHOWN_PREFIX = 12  # "tsk_" and 8 characters: enough to tell keys apart in a list


def new_key() -> str:
    """A fresh random API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(secret: str, key: str) -> bytes:
    """The keyed hash stored for (and looked up by) a key."""
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).digest()


def prefix_of(key: str) -> str:
    """The part of a key that may be shown again."""
    return key[:SHOWN_PREFIX]


def bearer_token(req: falcon.Request) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, else None."""
    header = req.get_header("Authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def same_secret(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison (False when either is missing)."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def unauthorized(message: str) -> falcon.HTTPUnauthorized:
    """401 with ``WWW-Authenticate: Bearer``."""
    return falcon.HTTPUnauthorized(description=message, challenges=["Bearer"])
