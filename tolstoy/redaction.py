"""The one rule for hiding secrets, and the one mask string.

Where a secret is found (a secret-named field or header, a known credential
value, a password in a URL or an ``Authorization`` value in free text) it is
replaced by ``MASK``. ``hint`` shows the last four characters of a long
credential value, so a person can tell two credentials apart.

Known secret values (``Secrets``: a run's credentials, a login's token) are
recognised as they are and in their common encodings: reversed, any slice of
``WINDOW`` or more characters, base64 (standard and URL-safe, padded or not, at
each of the three byte alignments a value can have inside encoded data),
URL-encoded (``%XX`` in either case, ``+`` for a space) and hex. A value
shorter than ``WINDOW`` is matched whole only (in those encodings too), and
values shorter than ``SHORTEST`` not at all: they are too common. Values a run
derived from a secret (``Derived``) are matched whole, as they are: their
slices are mostly the run's own text. Every pattern is filed under its first
``WINDOW`` characters, so checking a text is one pass over its slices whatever
the number of secrets, and adding a secret costs only its own patterns; a large
text is scanned by an Aho-Corasick automaton (in C) of the same patterns,
built when one is needed and kept until the secrets change (``Secrets``).

Positions of a JSON value that a masked copy hides are a ``Hidden`` tree:
``None`` (nothing), ``True`` (all of it) or a dict of the keys (or list
indexes) under which something is hidden, each with its own tree. The engine
uses it to know, after a resume, which parts of an earlier step's output were
secret (``hidden``), and to hide the values a template derived from a secret
(``hide``).
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import ahocorasick

MASK = "***"
SENSITIVE_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key",
    "x-auth-token", "x-amz-security-token",
})
SENSITIVE_KEYS = frozenset({
    "password", "token", "secret", "apikey", "api_key", "accesstoken", "access_token",
    "refreshtoken", "refresh_token", "clientsecret", "client_secret", "headervalue", "authorization",
})
# A known secret is matched wherever this many of its characters (or of one of its encodings) appear
# together; a shorter value is matched whole only.
WINDOW = 8
# Hex spends two characters per byte: a slice of WINDOW characters is 2 * WINDOW hex digits.
HEX_WINDOW = 2 * WINDOW
# Shorter known values are not masked at all: they are too common ("true", "1", "ok").
SHORTEST = 4
# Of each form of a secret, the slices of the first this many characters are indexed, and a whole
# form is matched by as many: a huge value under a secret-named field (a tool answering a megabyte
# "token") costs bounded memory, and only its first 4 KiB are recognised where they reappear.
MAX_WHOLE = 4096
# How many secrets one index (a run's) knows with their slices and encodings; later ones are matched
# whole, as they are. A typical run knows a handful; this bounds what a foreach whose every item
# logs in can cost (about 300 patterns, some 30 KB, per 32-character secret).
MAX_ENCODED = 1000

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
_PERCENT = re.compile(r"%[0-9A-F]{2}")

Hidden = None | bool | dict


class Derived(str):
    """A value derived from a secret (a rendered template that read one, such as ``Bearer <token>``
    or the token reversed): ``Secrets`` matches it whole and as it is, since its slices and
    encodings are mostly text that is no secret (``Bearer …``)."""


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


def _url_forms(secret: str) -> set[str]:
    """``secret`` URL-encoded as encoders do it: every reserved character or only some (``/`` kept),
    ``+`` for a space, upper- or lower-case hex digits."""
    forms = {quote(secret, safe=""), quote(secret), quote_plus(secret)}
    return forms | {_PERCENT.sub(lambda m: m.group().lower(), form) for form in forms}


def patterns(secret: str, derived: bool = False) -> set[str]:
    """The strings whose presence in a text shows ``secret`` (see the module's docstring)."""
    if derived:
        return {secret[:MAX_WHOLE]}
    raw = secret.encode()
    whole = {secret, secret[::-1], raw.hex(), raw.hex().upper(), *_url_forms(secret)}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        encoded = encode(raw).decode()
        whole |= {encoded, encoded.rstrip("=")}
    if len(secret) < WINDOW:
        return whole
    # Base64 turns each 3 bytes into 4 characters: inside encoded data the secret starts at one of three
    # offsets modulo 3; from the first byte on a group boundary, its complete groups are the same whatever
    # comes before or after it. Each alignment's groups are slices of the text we look for.
    sliced = {secret, secret[::-1], *_url_forms(secret)}
    for skip in range(3):
        part = raw[skip:]
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            sliced.add(encode(part[:len(part) // 3 * 3]).decode())
            # Where the secret ends the encoded data, its last group is padded: matched whole.
            ending = encode(part).decode()
            whole |= {ending, ending.rstrip("=")}
    found = {text[:MAX_WHOLE] for text in whole}
    for text in sliced:
        found.update(_slices(text, WINDOW))
    for text in (raw.hex(), raw.hex().upper()):
        found.update(_slices(text, HEX_WINDOW))
    return found


def _slices(text: str, length: int) -> list[str]:
    """Every ``length``-character slice of the first MAX_WHOLE characters of ``text``."""
    text = text[:MAX_WHOLE]
    return [text[i:i + length] for i in range(len(text) - length + 1)]


class Secrets:
    """Known secret values, each recognised with its common encodings wherever it appears (``mask``).

    Every pattern of WINDOW characters or more is filed under its first WINDOW characters (and a
    longer one under its length too), so a text is checked by taking its WINDOW-character slices (in
    C, as a set) and asking whether any is a known one: no secret found costs one pass over the text
    whatever the number of secrets, one found costs a look-up per length of the patterns that start
    as it does (not per pattern: a thousand sk_live_… keys of a foreach's items have a few lengths),
    and adding a secret costs its own patterns only, each added in place (a foreach whose items each
    log in adds thousands). Past MAX_ENCODED secrets, further ones are matched whole only, which
    bounds the memory a run can spend on them. Safe to share between threads: adding happens under a
    lock, and each change is one step a scan sees done or not yet (scans copy the small tables they
    iterate), so a scan sees the secrets as they were or as they are."""

    def __init__(self, values: Iterable[Any] = ()):
        self._lock = threading.Lock()
        self._version = 0  # rises with every change, so a built automaton knows it is stale
        self._count = 0  # patterns indexed
        self._built: tuple[int, Any] | None = None  # (version, automaton) for large texts
        self._known: dict[str, bool] = {}  # value -> matched whole only (a Derived value)
        self._encoded = 0  # how many are indexed with their slices and encodings
        self._grams: set[str] = set()  # the first WINDOW characters of every pattern at least that long
        self._windows: set[str] = set()  # the patterns exactly WINDOW long (slices of encodings)
        # First WINDOW characters -> {length: the longer patterns that start so and are that long}.
        self._longer: dict[str, dict[int, set[str]]] = {}
        self._short: dict[int, set[str]] = {}  # length (< WINDOW) -> whole patterns that long
        self.add(values)

    def __bool__(self) -> bool:
        return bool(self._known)

    def __contains__(self, value: str) -> bool:
        return value in self._known

    def add(self, values: Iterable[Any], derived: bool = False) -> None:
        """Know these values too (strings, or numbers a secret-named field held); ``derived`` (or a
        ``Derived`` value) matches them whole only. Values shorter than SHORTEST are left out."""
        if isinstance(values, (str, bytes)):
            raise TypeError("Secrets.add takes an iterable of values, not one string")
        fresh: dict[str, bool] = {}
        for value in values:
            if value is None or isinstance(value, bool):
                continue
            whole = derived or isinstance(value, Derived)
            text = str(value)
            if len(text) < SHORTEST or (whole and len(text) < WINDOW):
                continue
            known = self._known.get(text, fresh.get(text))
            if known is None or (known and not whole):  # new, or now known as a secret of its own
                fresh[text] = whole
        if not fresh:
            return
        with self._lock:
            for text, whole in fresh.items():
                if self._known.get(text) is False or (whole and text in self._known):
                    continue  # another thread indexed it meanwhile
                whole = whole or self._encoded >= MAX_ENCODED
                self._encoded += not whole
                self._known[text] = whole
                self._index(patterns(text, whole))

    def _index(self, found: set[str]) -> None:
        self._version += 1
        self._count += len(found)
        for pattern in found:
            if len(pattern) < WINDOW:
                self._short.setdefault(len(pattern), set()).add(pattern)
                continue
            head = pattern[:WINDOW]
            self._grams.add(head)
            if len(pattern) == WINDOW:
                self._windows.add(pattern)
            else:
                self._longer.setdefault(head, {}).setdefault(len(pattern), set()).add(pattern)

    def mask(self, text: str) -> str:
        """``text`` with every stretch that shows a known secret replaced by MASK (one MASK for
        stretches that touch or overlap)."""
        if not self._known or len(text) < SHORTEST:
            return text
        spans = self._spans(text)
        if not spans:
            return text
        spans.sort()
        parts = []
        done = 0
        start, stop = spans[0]
        for begin, end in spans[1:]:
            if begin <= stop:
                stop = max(stop, end)
                continue
            parts += [text[done:start], MASK]
            done, (start, stop) = stop, (begin, end)
        parts += [text[done:start], MASK, text[stop:]]
        return "".join(parts)

    def _automaton(self, size: int):
        """An automaton of every pattern, for a text of ``size`` characters: the one built before if no
        secret came since; None when building one would cost more than checking the text slice by
        slice (many secrets just added, a text not that large)."""
        built = self._built
        if built is not None and built[0] == self._version:
            return built[1]
        if self._count > _BUILD_PER_CHARACTER * size:
            return None
        with self._lock:
            automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
            patterns_ = [*self._windows,
                         *(p for lengths in self._longer.values() for found in lengths.values() for p in found),
                         *(p for found in self._short.values() for p in found)]
            for pattern in patterns_:
                automaton.add_word(pattern, len(pattern))
            automaton.make_automaton()
            self._built = (self._version, automaton)
        return automaton

    def _spans(self, text: str) -> list[tuple[int, int]]:
        if len(text) >= _LARGE:
            automaton = self._automaton(len(text))
            if automaton is not None:
                return [(end + 1 - length, end + 1) for end, length in automaton.iter(text)]
        spans: list[tuple[int, int]] = []
        grams, windows, longer = self._grams, self._windows, self._longer
        for first in range(0, len(text) - WINDOW + 1, _BLOCK):
            last = min(first + _BLOCK, len(text) - WINDOW + 1)
            if {text[i:i + WINDOW] for i in range(first, last)}.isdisjoint(grams):
                continue  # the common case: nothing known starts in this block
            for i in range(first, last):
                head = text[i:i + WINDOW]
                if head in grams:
                    if head in windows:
                        spans.append((i, i + WINDOW))
                    lengths = longer.get(head)
                    if lengths:
                        spans.extend((i, i + length) for length, found in list(lengths.items())
                                     if text[i:i + length] in found)
        for length, whole in list(self._short.items()):
            for first in range(0, len(text) - length + 1, _BLOCK):
                last = min(first + _BLOCK, len(text) - length + 1)
                if {text[i:i + length] for i in range(first, last)}.isdisjoint(whole):
                    continue
                spans.extend((i, i + length) for i in range(first, last) if text[i:i + length] in whole)
        return spans


# Texts are checked this many starting positions at a time (bounds the slices held at once).
_BLOCK = 65536
# A text this long is scanned by an automaton (about ten times faster than slice by slice in Python),
# built if need be when that costs less than this many patterns per character of the text.
_LARGE = 4096
_BUILD_PER_CHARACTER = 4


_NONE = Secrets()


def known(secrets: Secrets | Iterable[Any] | None) -> Secrets:
    """``secrets`` as a Secrets (a list of values is indexed once)."""
    if isinstance(secrets, Secrets):
        return secrets
    return Secrets(secrets) if secrets else _NONE


def mask_json(value: Any, secrets: Secrets | Iterable[Any] = ()) -> Any:
    """A JSON value as it may leave the service: secret-named fields masked whole, known secrets
    (and their encodings) masked wherever they appear in a string, keys included. The one function
    every output goes through on its way to an answer, a stored row, an event or a log line."""
    index = known(secrets)

    def walk(item: Any) -> Any:
        if isinstance(item, dict):
            return {(index.mask(key) if isinstance(key, str) else key):
                    MASK if isinstance(key, str) and is_sensitive_key(key) else walk(child)
                    for key, child in item.items()}
        if isinstance(item, (list, tuple)):
            return [walk(child) for child in item]
        if isinstance(item, str):
            return index.mask(item)
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
        elif secret and isinstance(item, (str, int)) and not isinstance(item, bool) and len(str(item)) >= SHORTEST:
            found.append(str(item))
    return found


def redact(text: str, secrets: Secrets | None = None) -> str:
    """Mask credentials in free text: ``postgresql://u:***@h``, ``password=***``, ``Bearer ***``,
    and the known ``secrets`` (in their encodings too)."""
    if secrets:
        text = secrets.mask(text)
    if not _SUSPECT.search(text):
        return text
    text = _URL_PASSWORD.sub(rf"\1{MASK}@", text)
    text = _KEY_VALUE.sub(rf"\1\2{MASK}", text)
    return _AUTH_SCHEME.sub(rf"\1 {MASK}", text)


def redact_strings(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with ``redact`` applied to each string in it (no known secrets): one scan of them all
    when none is suspect, the usual case for the ids, paths and addresses of an access line, instead of
    one scan per string. The strings are joined with NUL, which no pattern spans."""
    if not _SUSPECT.search("\x00".join([value for value in values.values() if isinstance(value, str)])):
        return values
    return {key: redact(value) if isinstance(value, str) else value for key, value in values.items()}


# ---- work on values derived from a secret -------------------------------------------------------
#
# A value derived from a secret is known whole (``Derived``), but what fails while it is used
# quotes pieces of it, transformed on the way ("Cannot resolve acc-7hq….example": a URL's host, in
# lower case): no pattern recognises those. So while a step works on a rendered config that read a
# secret, what it says is withheld rather than masked: its error keeps only what Tolstoy itself
# knows to be free of the config (engine/errors.py, ``StepFailed.as_error``), and a log line keeps
# its text but not the values put in it (logs.JsonFormatter).

_derived_work: contextvars.ContextVar[bool] = contextvars.ContextVar("tolstoy_derived_work", default=False)


@contextlib.contextmanager
def deriving(on: bool = True) -> Iterator[None]:
    """Mark the block (when ``on``) as work on values derived from a secret."""
    token = _derived_work.set(on or _derived_work.get())
    try:
        yield
    finally:
        _derived_work.reset(token)


def in_derived_work() -> bool:
    """Whether the code running now works on values derived from a secret (``deriving``)."""
    return _derived_work.get()


# ---- what a masked copy hides -------------------------------------------------------------------

def hidden(real: Any, shown: Any) -> Hidden:
    """Where ``shown`` (a masked copy of ``real``) hides something."""
    if shown == real and type(shown) is type(real):
        return None
    if isinstance(real, dict) and isinstance(shown, dict) and real.keys() == shown.keys():
        tree = {key: sub for key, child in real.items() if (sub := hidden(child, shown[key])) is not None}
        return tree or None
    if isinstance(real, list) and isinstance(shown, list) and len(real) == len(shown):
        tree = {i: sub for i, (child, seen) in enumerate(zip(real, shown, strict=True))
                if (sub := hidden(child, seen)) is not None}
        return tree or None
    return True


def hide(value: Any, tree: Hidden) -> Any:
    """``value`` with MASK in place of each part ``tree`` says is hidden."""
    if tree is None:
        return value
    if tree is True or not isinstance(value, (dict, list)):
        return MASK
    if isinstance(value, dict):
        return {key: hide(child, tree.get(key)) for key, child in value.items()}
    return [hide(child, tree.get(i)) for i, child in enumerate(value)]


def hidden_strings(real: Any, tree: Hidden, shown: Any = None) -> list[str]:
    """The strings of ``real`` that ``tree`` hides: whole, or, where ``shown`` kept some of a string
    around its masks (``Bearer ***``), the stretches it masked."""
    if tree is None:
        return []
    if tree is True:
        if isinstance(real, str):
            return _masked_stretches(real, shown) if isinstance(shown, str) else [real]
        return []
    if isinstance(real, dict):
        return [text for key, sub in tree.items() if key in real
                for text in hidden_strings(real[key], sub, shown.get(key) if isinstance(shown, dict) else None)]
    if isinstance(real, list):
        return [text for i, sub in tree.items() if isinstance(i, int) and i < len(real)
                for text in hidden_strings(real[i], sub, shown[i] if isinstance(shown, list) and i < len(shown)
                                           else None)]
    return []


def _masked_stretches(real: str, shown: str) -> list[str]:
    """What each MASK of ``shown`` stands for in ``real`` (``real`` whole when they do not line up)."""
    literal = shown.split(MASK)
    if len(literal) == 1 or not (real.startswith(literal[0]) and real.endswith(literal[-1])):
        return [real]
    found = []
    position = len(literal[0])
    end = len(real) - len(literal[-1])
    for part in literal[1:-1]:
        at = real.find(part, position, end) if part else position
        if at < 0:
            return [real]
        found.append(real[position:at])
        position = at + len(part)
    found.append(real[position:end])
    return [text for text in found if text]
