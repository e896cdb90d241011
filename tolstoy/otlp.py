"""Finished spans as an OTLP ``ExportTraceServiceRequest``, written straight in protobuf's wire format.

Why not the exporter's own encoder: it builds a protobuf message object for every span, attribute and
value, then serializes them; on GET /tools/{id} that was about 25 µs per span, as much as the rest of what
traces cost a request (docs/observability.md, Cost). Writing the bytes directly takes a fraction of it.
The output is the library's, byte for byte: same fields, same order, same defaults left out, same
grouping by resource and scope, same attributes skipped when a value cannot be encoded
(tests/unit/test_otlp.py compares the two over generated spans, and decodes ours with the library's
classes). Anything it does not know (a value of another type, a string that is not UTF-8) raises, and the
exporter (tracing._otlp_provider) encodes that batch the library's way.

Only the SDK's span objects' public reading side is used (name, context, parent, kind, times, attributes,
events, links, status, resource, instrumentation_scope, dropped_* counts); nothing here imports
OpenTelemetry.
"""

from __future__ import annotations

import logging
import struct
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger("tolstoy.tracing")

_DOUBLE = struct.Struct("<d")
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")
_INT64 = 1 << 64
# Span flags (opentelemetry.proto.trace.v1.SpanFlags): whether the parent's remoteness is known, and is.
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes((n,)) for n in range(0x80)]


def _field(key: bytes, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message), ``key`` its number with wire type 2."""
    size = len(payload)
    return key + (_SMALL[size] if size < 0x80 else _varint(size)) + payload


def _value(value: Any) -> bytes:
    """An AnyValue's fields, as the library's ``_encode_value`` chooses them (bool before int: a bool is one)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, int):
        if not -(1 << 63) <= value < 1 << 63:
            raise ValueError(f"{value} is out of int64's range")
        return b"\x18" + _varint(value % _INT64)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _value(v)) for v in value))
    if isinstance(value, Mapping):
        return _field(b"\x32", b"".join(_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"invalid type {type(value)} of an attribute's value")


def _key_value(key: str, value: Any) -> bytes:
    return (_field(b"\x0a", key.encode()) if key else b"") + _field(b"\x12", _value(value))


# KeyValues met before, by (the field they are in, key, type, value), for values of one piece (str, int,
# bool; strings up to 128 characters): most of a request's attributes (its route, status, organization)
# come again and again.
_PAIRS: dict[tuple, bytes] = {}
_PAIRS_MAX = 4096


def _attributes(key: bytes, attributes) -> bytes:
    """Each attribute as a KeyValue in the field ``key`` names; one whose value cannot be encoded is left out
    and logged, as the library does."""
    if not attributes:
        return b""
    out = []
    for name, value in attributes.items():
        kind = type(value)
        cacheable = (kind is str and len(value) <= 128) or kind is int or kind is bool
        if cacheable:
            found = _PAIRS.get((key, name, kind, value))
            if found is not None:
                out.append(found)
                continue
        try:
            encoded = _field(key, _key_value(name, value))
        except (ValueError, TypeError, OverflowError) as error:
            log.warning("could not encode the span attribute %s: %s", name, error)
            continue
        if cacheable:
            if len(_PAIRS) >= _PAIRS_MAX:
                _PAIRS.clear()
            _PAIRS[(key, name, kind, value)] = encoded
        out.append(encoded)
    return b"".join(out)


def _flags(key: bytes, context) -> bytes:
    """A span's (field 16) or a link's (field 6) flags, a fixed32: whether its parent (its target) is remote."""
    return key + (_REMOTE if context is not None and context.is_remote else _LOCAL)


_LOCAL, _REMOTE = _FIXED32.pack(_HAS_IS_REMOTE), _FIXED32.pack(_HAS_IS_REMOTE | _IS_REMOTE)


def _count(key: bytes, value: int) -> bytes:
    """A uint32 (a count) under its field's ``key`` (wire type 0); 0, the default, is left out."""
    return key + _varint(value) if value else b""


def _fixed64(key: bytes, value: int | None) -> bytes:
    return key + _FIXED64.pack(value) if value else b""


def _string(key: bytes, value: str | None) -> bytes:
    return _field(key, value.encode()) if value else b""


def _trace_state(state) -> str:
    return ",".join(f"{key}={value}" for key, value in state.items()) if state is not None else ""


def span(finished) -> bytes:
    """One span (opentelemetry.proto.trace.v1.Span), its fields in number order. The keys are written out:
    field number << 3 | wire type (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32)."""
    context, parent = finished.context, finished.parent
    out = [b"\x0a\x10", context.trace_id.to_bytes(16, "big"), b"\x12\x08", context.span_id.to_bytes(8, "big")]
    if context.trace_state:
        out.append(_string(b"\x1a", _trace_state(context.trace_state)))
    if parent:
        out += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
    out += (_string(b"\x2a", finished.name), b"\x30", _SMALL[finished.kind.value + 1],  # SPAN_KIND_INTERNAL is 1
            _fixed64(b"\x39", finished.start_time), _fixed64(b"\x41", finished.end_time),
            _attributes(b"\x4a", finished.attributes), _count(b"\x50", finished.dropped_attributes))
    for event in finished.events or ():
        out.append(_field(b"\x5a", _fixed64(b"\x09", event.timestamp) + _string(b"\x12", event.name)
                          + _attributes(b"\x1a", event.attributes) + _count(b"\x20", event.dropped_attributes)))
    out.append(_count(b"\x60", finished.dropped_events))
    for link in finished.links or ():
        out.append(_field(b"\x6a", b"\x0a\x10" + link.context.trace_id.to_bytes(16, "big")
                          + b"\x12\x08" + link.context.span_id.to_bytes(8, "big")
                          + _attributes(b"\x22", link.attributes) + _count(b"\x28", link.dropped_attributes)
                          + _flags(b"\x35", link.context)))
    out.append(_count(b"\x70", finished.dropped_links))
    status = finished.status
    if status is not None:
        out.append(_field(b"\x7a", _string(b"\x12", status.description) + _count(b"\x18", status.status_code.value)))
    out.append(_flags(b"\x85\x01", parent))
    return b"".join(out)


class Encoder:
    """Encodes batches of finished spans; keeps each resource's and scope's encoding (both are immutable
    once made, and one process has one or two), so a batch re-encodes only its spans."""

    def __init__(self):
        self._resources: dict[int, tuple[Any, bytes]] = {}
        self._scopes: dict[int, tuple[Any, bytes]] = {}

    def _cached(self, cache: dict, made, encode) -> bytes:
        found = cache.get(id(made))
        if found is None or found[0] is not made:  # the id of an object since freed may be reused
            found = (made, encode(made))
            if len(cache) > 64:
                cache.clear()
            cache[id(made)] = found
        return found[1]

    @staticmethod
    def _resource(resource) -> bytes:
        return _attributes(b"\x0a", resource.attributes)

    @staticmethod
    def _scope(scope) -> bytes:
        if scope is None:
            return b""
        return _string(b"\x0a", scope.name) + _string(b"\x12", scope.version) + _attributes(b"\x1a", scope.attributes)

    def encode(self, spans: Sequence) -> bytes:
        """The request's bytes: spans grouped by resource, then by instrumentation scope, each group in the
        order it first appears (as the library's encoder groups them)."""
        grouped: dict = defaultdict(lambda: defaultdict(list))
        for finished in spans:
            grouped[finished.resource][finished.instrumentation_scope or None].append(span(finished))
        out = []
        for resource, scopes in grouped.items():
            scope_spans = []
            for scope, encoded in scopes.items():
                scope_spans.append(_field(b"\x12", _field(b"\x0a", self._cached(self._scopes, scope, self._scope))
                                          + b"".join([_field(b"\x12", one) for one in encoded])
                                          + _string(b"\x1a", scope.schema_url if scope else None)))
            out.append(_field(b"\x0a", _field(b"\x0a", self._cached(self._resources, resource, self._resource))
                              + b"".join(scope_spans) + _string(b"\x1a", resource.schema_url)))
        return b"".join(out)
