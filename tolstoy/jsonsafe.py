"""JSON that PostgreSQL can store: what the API accepts and what the engine
keeps from a tool's answer pass through the same rules.

jsonb refuses NaN and Infinity, text refuses NUL, and UTF-8 cannot encode an
unpaired surrogate; serialising, hashing and JSON Schema checks recurse, so
nesting is bounded too.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

MAX_JSON_DEPTH = 64
# PostgreSQL text and jsonb cannot hold NUL; UTF-8 cannot encode a lone surrogate ("\ud800").
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
UNSTORABLE_MESSAGE = "Must not contain NUL characters or unpaired surrogates."


def reject_constant(name: str) -> None:
    """NaN and Infinity are not JSON (and jsonb refuses them)."""
    raise ValueError(f"{name} is not valid JSON")


def finite_float(text: str) -> float:
    """A JSON number as a float; one beyond a double's range (1e400) cannot be stored."""
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def loads(text: str | bytes) -> Any:
    """Parse JSON strictly: ValueError for NaN, Infinity and out-of-range numbers."""
    return json.loads(text, parse_constant=reject_constant, parse_float=finite_float)


def dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    """Compact JSON bytes, fast (orjson); integers beyond 64 bits, which orjson refuses,
    go through the standard library."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    except TypeError:
        return json.dumps(value, default=str, sort_keys=sort_keys, separators=(",", ":"),
                          ensure_ascii=False).encode()


def depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (so deep input cannot overflow the stack)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:
                children = item.values() if isinstance(item, dict) else item
                stack.extend((child, level + 1) for child in children)
    return deepest


def unstorable_strings(value: Any, path: str = "") -> list[dict]:
    """Field errors for strings (values or keys) PostgreSQL cannot store: NUL, lone surrogates."""
    problems = []
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if UNSTORABLE.search(item):
                problems.append({"field": where or "body", "message": UNSTORABLE_MESSAGE})
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and UNSTORABLE.search(key):
                    problems.append({"field": where or "body", "message": UNSTORABLE_MESSAGE})
                    continue
                stack.append((child, f"{where}.{key}" if where else str(key)))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{index}]") for index, child in enumerate(item))
    return sorted(problems, key=lambda p: p["field"])


def storable(value: Any) -> Any:
    """A parsed JSON value with NUL and unpaired surrogates in strings and keys replaced by U+FFFD."""
    if isinstance(value, str):
        return UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, list):
        return [storable(item) for item in value]
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    return value


def storable_text(raw: bytes) -> str:
    """Bytes from elsewhere as storable text (invalid UTF-8 and NUL become U+FFFD)."""
    return UNSTORABLE.sub("\ufffd", raw.decode("utf-8", errors="replace"))
