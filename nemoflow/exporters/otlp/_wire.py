"""OTLP protobuf written directly: the bytes ``opentelemetry-proto`` serializes for the same
``ExportTraceServiceRequest`` (fields in field-number order, proto3 defaults left out, the
span's ``status`` always present), without building a message object per span.

Each span is encoded once, on the delivery thread, to the bytes of its ``ScopeSpans.spans``
field; a batch is those bytes joined under a resource and scope encoded once. Queued spans are
then ``bytes``, which the garbage collector does not track.
"""

from __future__ import annotations

import struct

from ._model import InstrumentationScope, Resource

__all__ = ["WireEncoder"]

_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_U64 = (1 << 64) - 1
_SMALL = [bytes((n,)) for n in range(128)]  # one-byte varints
_fixed64 = struct.Struct("<Q").pack
_double = struct.Struct("<d").pack
_fixed32 = struct.Struct("<I").pack
_times = struct.Struct("<BQBQ").pack  # start (field 7) and end (field 8), both fixed64
_CACHE_LIMIT = 4096  # encoded names and keys kept
_KINDS = {k: b"\x30" + bytes((k,)) for k in range(1, 6)}
_STATUS = {0: b"\x7a\x00", 1: b"\x7a\x02\x18\x01", 2: b"\x7a\x02\x18\x02"}  # no message
_FLAGS = {f: b"\x85\x01" + f.to_bytes(4, "little") for f in (0x101, 0x301)}


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: ``tag``, the length, ``payload``."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 0x80 else _varint(n)) + payload


def _text(tag: bytes, value: str) -> bytes:
    return _field(tag, value.encode("utf-8"))


def _enum(tag: bytes, value: int) -> bytes:
    return tag + _varint(value & _U64)  # negative values: ten bytes, two's complement


def _int64(value: int) -> bytes:
    if not _I64_MIN <= value <= _I64_MAX:
        raise ValueError(f"Value out of range: {value}")
    return b"\x18" + _varint(value & _U64)


def _any(value) -> bytes:
    """An ``AnyValue`` message (a oneof: written even when it holds a default value)."""
    kind = type(value)
    if kind is str:
        return _text(b"\x0a", value)
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int:
        return _int64(value)
    if kind is float:
        return b"\x21" + _double(value)
    if isinstance(value, (list, tuple)):
        return _field(b"\x2a", b"".join([_field(b"\x0a", _any(item)) for item in value]))
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return _int64(int(value))
    if isinstance(value, str):
        return _text(b"\x0a", str(value))
    if isinstance(value, float):
        return b"\x21" + _double(float(value))
    raise TypeError(f"cannot encode an attribute value of type {kind.__name__}")


class WireEncoder:
    """Encodes spans under one resource and scope as OTLP protobuf, span by span."""

    content_type = "application/x-protobuf"

    def __init__(self, resource: Resource, scope: InstrumentationScope):
        self._keys: dict = {}
        self._names: dict = {}
        res = b"".join([self._attribute(b"\x0a", k, v) for k, v in resource.attributes])
        sc = b""
        if scope.name:
            sc += _text(b"\x0a", scope.name)
        if scope.version:
            sc += _text(b"\x12", scope.version)
        self._resource = _field(b"\x0a", res)  # ResourceSpans.resource, always present
        self._scope = _field(b"\x0a", sc)  # ScopeSpans.scope, always present

    def _key(self, key: str) -> bytes:
        keys = self._keys
        out = keys.get(key)
        if out is None:
            if not isinstance(key, str):
                raise TypeError(f"attribute keys must be str, not {type(key).__name__}")
            out = _text(b"\x0a", key) if key else b""
            if len(keys) >= _CACHE_LIMIT:
                keys.clear()
            keys[key] = out
        return out

    def _attribute(self, tag: bytes, key: str, value) -> bytes:
        """A ``KeyValue`` field."""
        k = self._keys.get(key)
        if k is None:
            k = self._key(key)
        if type(value) is str:
            text = value.encode("utf-8")
            n = len(text)
            if n < 0x7E:  # AnyValue and its length fit in one byte each
                size = len(k) + n + 4
                if size < 0x80:
                    return b"".join((tag, _SMALL[size], k, b"\x12", _SMALL[n + 2], b"\x0a",
                                     _SMALL[n], text))
                return b"".join((tag, _varint(size), k, b"\x12", _SMALL[n + 2], b"\x0a",
                                 _SMALL[n], text))
        return _field(tag, k + _field(b"\x12", _any(value)))

    def encode_span(self, s) -> bytes:
        """One span, as the bytes of a ``ScopeSpans.spans`` field."""
        names = self._names
        name = names.get(s.name)
        if name is None:
            name = _text(b"\x2a", s.name) if s.name else b""
            if len(names) >= _CACHE_LIMIT:
                names.clear()
            names[s.name] = name
        trace_id, span_id = s.trace_id, s.span_id
        if len(trace_id) == 16 and len(span_id) == 8:
            parts = [b"\x0a\x10", trace_id, b"\x12\x08", span_id]
        else:
            parts = [_field(b"\x0a", trace_id) if trace_id else b"",
                     _field(b"\x12", span_id) if span_id else b""]
        if s.trace_state:
            parts.append(_text(b"\x1a", s.trace_state))
        parent = s.parent_span_id
        if parent:
            if len(parent) == 8:
                parts.append(b"\x22\x08")
                parts.append(parent)
            else:
                parts.append(_field(b"\x22", parent))
        parts.append(name)
        kind = s.kind
        if kind:
            parts.append(_KINDS.get(kind) or _enum(b"\x30", kind))
        start, end = s.start_ns, s.end_ns
        if start and end:
            parts.append(_times(0x39, start, 0x41, end))
        elif start:
            parts.append(b"\x39" + _fixed64(start))
        elif end:
            parts.append(b"\x41" + _fixed64(end))
        if s.attributes:
            attribute = self._attribute
            for key, value in s.attributes:
                parts.append(attribute(b"\x4a", key, value))
        if s.events:
            attribute = self._attribute
            for e in s.events:
                event = [b"\x09" + _fixed64(e.time_ns)] if e.time_ns else []
                if e.name:
                    event.append(_text(b"\x12", e.name))
                for key, value in e.attributes:
                    event.append(attribute(b"\x1a", key, value))
                parts.append(_field(b"\x5a", b"".join(event)))
        code, message = s.status_code, s.status_message
        if message:
            status = _text(b"\x12", message)
            if code:
                status += _enum(b"\x18", code)
            parts.append(_field(b"\x7a", status))
        else:
            parts.append(_STATUS.get(code) or _field(b"\x7a", _enum(b"\x18", code)))
        flags = s.flags
        if flags:
            parts.append(_FLAGS.get(flags) or b"\x85\x01" + _fixed32(flags))
        body = b"".join(parts)
        n = len(body)
        return b"".join((b"\x12", _SMALL[n] if n < 0x80 else _varint(n), body))

    def join(self, encoded) -> bytes:
        """The request holding spans already encoded by ``encode_span``."""
        scope_spans = _field(b"\x12", self._scope + b"".join(encoded))
        return _field(b"\x0a", self._resource + scope_spans)

    def encode(self, spans) -> bytes:
        """The serialized request for ``spans``."""
        return self.join([self.encode_span(s) for s in spans])
