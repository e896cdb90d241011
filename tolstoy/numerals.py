"""Numbers read from untrusted text (headers, query strings, path segments, a remote
server's answer): ASCII digits only, bounded in length, or nothing.

``str.isdigit()`` is true for ``"²"``, which ``int()`` then refuses with a ValueError (a
500 where a 400 or 401 belongs), and for ``"١٢"``, which ``int()`` reads as 12; a
string of 5,000 digits is more than ``int()`` converts. None of them is a timestamp,
a delay or a version a client meant, so every such parse goes through ``unsigned``
(tests/unit/test_untrusted_parsers.py refuses ``isdigit``, ``isdecimal`` and
``isnumeric`` anywhere in the package).
"""

from __future__ import annotations

import re

_ASCII_DIGITS = re.compile(r"[0-9]+")


def unsigned(text: str | None, max_digits: int) -> int | None:
    """The whole number ``text`` spells in 1 to ``max_digits`` ASCII digits (nothing else: no sign,
    space, underscore or other script's digit), else None."""
    if not isinstance(text, str) or not 0 < len(text) <= max_digits or not _ASCII_DIGITS.fullmatch(text):
        return None
    return int(text)
