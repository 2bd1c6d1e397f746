"""The span model handed from a projection to the OTLP encoders: plain slotted objects, no
OpenTelemetry import, cheap to build on the delivery thread."""

from __future__ import annotations

__all__ = ["FLAGS_LOCAL", "FLAGS_REMOTE", "KIND_CLIENT", "KIND_CONSUMER", "KIND_INTERNAL",
           "KIND_PRODUCER", "KIND_SERVER", "STATUS_ERROR", "STATUS_OK", "STATUS_UNSET",
           "InstrumentationScope", "Resource", "Span", "SpanEvent", "check_span"]

# SpanKind and StatusCode, as the integers OTLP carries.
KIND_INTERNAL = 1
KIND_SERVER = 2
KIND_CLIENT = 3
KIND_PRODUCER = 4
KIND_CONSUMER = 5
STATUS_UNSET = 0
STATUS_OK = 1
STATUS_ERROR = 2

# OTLP span flags: sampled | has-is-remote, plus is-remote under a remote parent.
FLAGS_LOCAL = 0x101
FLAGS_REMOTE = 0x301

_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_PRIMITIVES = (str, bool, int, float)


class SpanEvent:
    """A timed event on a span (an ``exception`` event, a mark)."""

    __slots__ = ("name", "time_ns", "attributes")

    def __init__(self, name: str, time_ns: int, attributes: list | None = None):
        self.name = name
        self.time_ns = time_ns
        self.attributes = [] if attributes is None else attributes

    def __eq__(self, other):
        if not isinstance(other, SpanEvent):
            return NotImplemented
        return (self.name, self.time_ns, self.attributes) == (
            other.name, other.time_ns, other.attributes)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self):
        return f"SpanEvent({self.name!r}, {self.time_ns}, {self.attributes!r})"


class Span:
    """One finished span.

    ``trace_id`` is 16 bytes, ``span_id`` 8 bytes, ``parent_span_id`` 8 bytes or None for a
    trace root. ``attributes`` is an ordered list of ``(key, value)`` pairs whose values are
    ``str``, ``bool``, ``int`` (within int64), ``float`` or a list of those; order and
    duplicates are kept as given. ``events`` is a list of ``SpanEvent``.
    """

    __slots__ = ("trace_id", "span_id", "parent_span_id", "flags", "trace_state", "name", "kind",
                 "start_ns", "end_ns", "attributes", "events", "status_code", "status_message")

    def __init__(self, trace_id: bytes, span_id: bytes, name: str, start_ns: int, end_ns: int,
                 *, parent_span_id: bytes | None = None, flags: int = FLAGS_LOCAL,
                 trace_state: str = "", kind: int = KIND_INTERNAL,
                 attributes: list | None = None, events: list | None = None,
                 status_code: int = STATUS_UNSET, status_message: str = ""):
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.flags = flags
        self.trace_state = trace_state
        self.name = name
        self.kind = kind
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.attributes = [] if attributes is None else attributes
        self.events = [] if events is None else events
        self.status_code = status_code
        self.status_message = status_message

    def _key(self):
        return tuple(getattr(self, f) for f in Span.__slots__)

    def __eq__(self, other):
        if not isinstance(other, Span):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self):
        parent = self.parent_span_id.hex() if self.parent_span_id is not None else None
        return (f"<Span {self.name!r} trace={self.trace_id.hex()} span={self.span_id.hex()} "
                f"parent={parent} kind={self.kind} status={self.status_code}>")


class Resource:
    """The resource of every span an exporter sends: an ordered list of ``(key, value)``."""

    __slots__ = ("attributes",)

    def __init__(self, attributes: list | None = None):
        self.attributes = [] if attributes is None else list(attributes)
        for pair in self.attributes:
            _check_attribute(pair, "resource attribute")

    @classmethod
    def for_service(cls, service_name: str = "unknown_service", *,
                    service_namespace: str | None = None, service_version: str | None = None,
                    resource_attributes: dict | None = None) -> Resource:
        """``service.name``, then ``service.namespace`` / ``service.version`` when set, then
        ``resource_attributes`` in order (a key given twice keeps its first place, last value)."""
        attrs: dict = {"service.name": service_name}
        if service_namespace is not None:
            attrs["service.namespace"] = service_namespace
        if service_version is not None:
            attrs["service.version"] = service_version
        if resource_attributes:
            attrs.update(resource_attributes)
        return cls(list(attrs.items()))

    def __eq__(self, other):
        if not isinstance(other, Resource):
            return NotImplemented
        return self.attributes == other.attributes

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self):
        return f"Resource({self.attributes!r})"


class InstrumentationScope:
    """The instrumentation scope of every span an exporter sends (a name, no version)."""

    __slots__ = ("name", "version")

    def __init__(self, name: str = "opentelemetry", version: str = ""):
        if not isinstance(name, str) or not isinstance(version, str):
            raise TypeError("instrumentation scope name and version must be str")
        self.name = name
        self.version = version

    def __eq__(self, other):
        if not isinstance(other, InstrumentationScope):
            return NotImplemented
        return (self.name, self.version) == (other.name, other.version)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self):
        return f"InstrumentationScope({self.name!r})"


def _check_value(value, where):
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, _PRIMITIVES):
                raise TypeError(f"{where}: array items must be str, bool, int or float, "
                                f"not {type(item).__name__}")
            if type(item) is int and not _I64_MIN <= item <= _I64_MAX:
                raise ValueError(f"{where}: int {item} does not fit in int64")
        return
    if not isinstance(value, _PRIMITIVES):
        raise TypeError(f"{where}: value must be str, bool, int, float or a list of those, "
                        f"not {type(value).__name__}")
    if type(value) is int and not _I64_MIN <= value <= _I64_MAX:
        raise ValueError(f"{where}: int {value} does not fit in int64")


def _check_attribute(pair, where):
    if not isinstance(pair, tuple) or len(pair) != 2 or not isinstance(pair[0], str):
        raise TypeError(f"{where} must be a (str, value) pair, not {pair!r}")
    _check_value(pair[1], f"{where} {pair[0]!r}")


def _check_id(value, size, what):
    if type(value) is not bytes or len(value) != size:
        raise ValueError(f"span {what} must be {size} bytes, not {value!r}")


_FAST = (str, bool, float)
# OTLP field widths: fixed32 flags, enums, fixed64 times.
_INT_FIELDS = (("flags", 1 << 32), ("kind", 1 << 31), ("start_ns", 1 << 64),
               ("end_ns", 1 << 64), ("status_code", 1 << 31))


def _check_attributes(pairs, where):
    for pair in pairs:
        # The common case (a (str, str|bool|float|small int) tuple) costs a few type tests.
        if type(pair) is tuple and len(pair) == 2 and type(pair[0]) is str:
            value = pair[1]
            kind = type(value)
            if kind in _FAST or (kind is int and _I64_MIN <= value <= _I64_MAX):
                continue
        _check_attribute(pair, where)


def check_span(span) -> None:
    """Raise TypeError or ValueError if ``span`` cannot be encoded as an OTLP span."""
    if type(span) is not Span and not isinstance(span, Span):
        raise TypeError(f"expected a Span, got {type(span).__name__}")
    _check_id(span.trace_id, 16, "trace_id")
    _check_id(span.span_id, 8, "span_id")
    if span.parent_span_id is not None:
        _check_id(span.parent_span_id, 8, "parent_span_id")
    if not isinstance(span.name, str) or not isinstance(span.trace_state, str):
        raise TypeError("span name and trace_state must be str")
    for field, limit in _INT_FIELDS:
        value = getattr(span, field)
        if type(value) is not int or not 0 <= value < limit:
            raise TypeError(f"span {field} must be an int in [0, {limit}), not {value!r}")
    if not isinstance(span.status_message, str):
        raise TypeError("span status_message must be str")
    _check_attributes(span.attributes, "span attribute")
    for event in span.events:
        if not isinstance(event, SpanEvent) or not isinstance(event.name, str) or (
                type(event.time_ns) is not int) or not 0 <= event.time_ns < 1 << 64:
            raise TypeError(f"span events must be SpanEvent objects, not {event!r}")
        _check_attributes(event.attributes, "event attribute")
