"""Pure-Python twin of the compiled core: same names, same behaviour, no compiler needed.

It is the reference the compiled core is tested against (the same suite runs on both, and a
property test compares their event streams) and the fallback when ``_core`` could not be built
or ``NEMOFLOW_NO_EXTENSIONS=1`` is set.

Model, shared with ``_core.pyx``: a scope is an immutable frame that points to its parent (the
``parent_uuid`` on the wire) and to the frame it was pushed over (restored on pop). The current
frame of each thread and asyncio task lives in one ``ContextVar``, so a task that starts under a
scope sees it as parent and its own pushes never touch another task's nesting.

The sections below ("Section payload", "Section record", ...) are those of the compiled core,
one include file each (``_core_src/<section>.pxi``), in the same order.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import contextvars
import datetime as _dt
import enum
import errno
import functools
import math
import os
import random
import sys
import threading
import time
import types
import uuid as _uuid
import warnings
import weakref
from typing import Any

import orjson

from . import _common, _exit
from ._types import (
    ATOF_VERSION,
    ATTRIBUTE_NAMES,
    CATEGORIES,
    SEVERITY_KEY,
    AlreadyExistsError,
    InvalidArgumentError,
    LLMAttributes,
    LogSeverity,
    NotFoundError,
    ScopeAttributes,
    ScopeType,
    ToolAttributes,
    attribute_names,
)

# =============================================================================================
# Section constants: module constants.
# =============================================================================================

BACKEND = "python"
_NAME_INLINE = _common.NAME_INLINE  # names the compiled core keeps inside the record

# =============================================================================================
# Section payload: payloads on the traced thread: JSON encoding, redaction, validation.
# =============================================================================================

# --------------------------------------------------------------------------------------------
# JSON payloads: encoded once, at the call, to canonical bytes (sorted keys).

# Dataclasses and datetimes are not JSON values: route them to ``default`` so they are rejected
# (or stringified, in lenient mode) instead of being silently converted.
_JSON_OPTS = (
    orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
)


def _reject(obj):
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


def _stringify(obj):
    try:
        return _safe_text(str(obj))
    except Exception:
        return f"<unprintable {type(obj).__name__}>"


def _safe_text(text):
    # A lone surrogate (what os.listdir gives for a name that is not UTF-8) cannot be written
    # as UTF-8: keep the text, escape that character.
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


_NON_FINITE, _FRAGMENT = 1, 2
_SIMPLE = frozenset((str, int, bool, type(None)))


def _scan(obj, want):
    # What orjson would write that is not the value given: NaN and +-Infinity (written as
    # null) and orjson.Fragment (its bytes written unchecked), anywhere orjson looks, an Enum's
    # value included. Returns the first of ``want`` found, or 0. Runs after orjson accepted
    # ``obj``, so its nesting is bounded by orjson's depth limit.
    t = type(obj)
    if t in _SIMPLE:
        return 0
    if t is dict:
        obj = obj.values()
    elif t is not list and t is not tuple:
        # items are read as orjson reads them, never through an overridden __iter__
        if isinstance(obj, dict):
            obj = dict.values(obj)
        elif isinstance(obj, list):
            obj = list.__iter__(obj)
        elif isinstance(obj, tuple):
            obj = tuple.__iter__(obj)
        else:
            if isinstance(obj, float):
                return 0 if math.isfinite(obj) else want & _NON_FINITE
            if t is orjson.Fragment:
                return want & _FRAGMENT
            if isinstance(obj, enum.Enum):
                return _scan(obj.value, want)
            return 0
    for v in obj:
        if type(v) not in _SIMPLE:
            found = _scan(v, want)
            if found:
                return found
    return 0


def _scrub(obj, depth=0):
    # A copy of a traced program's value that orjson can write faithfully: text with lone
    # surrogates escaped, Fragments as their text, Enum members as their values.
    if depth > 300:
        return _stringify(obj)
    if isinstance(obj, str):
        return _safe_text(obj)
    if isinstance(obj, dict):
        return {(_safe_text(k) if isinstance(k, str) else k): _scrub(v, depth + 1)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_scrub(v, depth + 1) for v in obj]
    if type(obj) is orjson.Fragment:  # its text: dumps writes a Fragment's bytes as they are
        return _safe_text(orjson.dumps(obj).decode("utf-8", "backslashreplace"))
    if isinstance(obj, enum.Enum):
        return _scrub(obj.value, depth + 1)
    return obj


def _encode_lenient(obj):
    # Never raises (an Exception): the value comes from the traced program.
    try:
        raw = orjson.dumps(obj, default=_stringify, option=_JSON_OPTS)
        if not _scan(obj, _FRAGMENT):
            return raw
    except Exception:
        pass
    try:
        return orjson.dumps(_scrub(obj), default=_stringify, option=_JSON_OPTS)
    except Exception:
        pass
    try:
        return orjson.dumps(_stringify(obj))
    except Exception:
        return b'"<unencodable value>"'


class Encoded:
    """A payload already encoded to canonical JSON bytes (used by the Pythonic surface)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes):
        self.raw = raw


# Redaction (nemoflow/redaction.py): while it is on, every payload passes through it here,
# once, before it is encoded, so every consumer sees the same redacted value and nothing
# unredacted is stored. While it is off its whole cost is the `is not None` test in encode.
_redactor = None
_redaction_failures = 0
_REDACTION_FAILED = "[REDACTED:error]"


def set_redactor(redactor) -> None:
    """Pass every payload and error text through ``redactor`` from now on (None: off)."""
    global _redactor
    _redactor = redactor


def _redaction_failed(exc) -> None:
    # Fail closed: the payload is replaced by a marker, never written unredacted.
    global _redaction_failures
    _redaction_failures += 1
    if _redaction_failures == 1:
        _warn_quietly(f"nemoflow: redaction raised {type(exc).__name__}: {exc}; the payload "
                      f"was replaced by {_REDACTION_FAILED!r} (further failures are only "
                      "counted in nemoflow.diagnostics())")


def _redact(obj, lenient):
    try:
        return _redactor.apply(obj, lenient)
    except Exception as exc:
        _redaction_failed(exc)
        return _REDACTION_FAILED


def _redact_text(text):
    try:
        return _redactor.text(text)
    except Exception as exc:
        _redaction_failed(exc)
        return _REDACTION_FAILED


def encode(obj, lenient=False):
    """Canonical JSON bytes of ``obj``, or None for None; ValueError for non-JSON values.

    With ``lenient=True`` non-JSON values are written as their ``str()`` instead (used where the
    traced program, not the caller of an API, supplied the value).
    """
    if obj is None:
        return None
    if type(obj) is Encoded:
        return obj.raw
    if _redactor is not None:
        obj = _redact(obj, lenient)
    if lenient:
        return _encode_lenient(obj)
    try:
        raw = orjson.dumps(obj, default=_reject, option=_JSON_OPTS)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Failed to convert to JSON: {exc}") from None
    found = _scan(obj, _NON_FINITE | _FRAGMENT)
    if found == _NON_FINITE:
        raise ValueError("Failed to convert to JSON: NaN and Infinity are not JSON values")
    if found == _FRAGMENT:
        raise ValueError("Failed to convert to JSON: an orjson.Fragment would be written "
                         "unchecked; pass the decoded value")
    return raw


def _decode(raw):
    return None if raw is None else orjson.loads(raw)


# =============================================================================================
# Section frames: frames (handles), ids and timestamps, the binding of the current frame.
# =============================================================================================

# --------------------------------------------------------------------------------------------
# Clock, timestamps and ids.

now_ns = time.time_ns

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def timestamp_ns(ts) -> int:
    """Nanoseconds since the epoch of an explicit, timezone-aware ``datetime``."""
    if isinstance(ts, str):
        raise TypeError("timestamp must be a timezone-aware datetime.datetime, not str")
    if not isinstance(ts, _dt.datetime):
        raise TypeError(f"timestamp must be a timezone-aware datetime.datetime, "
                        f"not {type(ts).__name__}")
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError("timestamp must be a timezone-aware datetime.datetime (naive "
                         "datetime given)")
    delta = ts - _EPOCH
    ns = (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    if not _MIN_NS <= ns <= _MAX_NS:
        raise ValueError(_RANGE_ERROR.format(ts))
    return ns


# Nanoseconds since the epoch are int64 on the wire and in records: 1677-09-21 to 2262-04-11.
_MIN_NS, _MAX_NS = -(1 << 63), (1 << 63) - 1
_RANGE_ERROR = ("timestamp {} is outside the range nemoflow can write "
                "(1677-09-21T00:12:43.145225+00:00 to 2262-04-11T23:47:16.854775+00:00)")


def format_timestamp(ns: int) -> str:
    """RFC 3339 UTC with ``+00:00`` and 0, 3, 6 or 9 fractional digits as needed."""
    secs, frac = divmod(ns, 1_000_000_000)
    t = time.gmtime(secs)
    base = "%04d-%02d-%02dT%02d:%02d:%02d" % (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour,
                                              t.tm_min, t.tm_sec)
    if frac == 0:
        return base + "+00:00"
    if frac % 1_000_000 == 0:
        return "%s.%03d+00:00" % (base, frac // 1_000_000)
    if frac % 1000 == 0:
        return "%s.%06d+00:00" % (base, frac // 1000)
    return "%s.%09d+00:00" % (base, frac)


_rand = random.getrandbits  # the random module reseeds itself in a forked child


def _uuid7_str(ns: int) -> str:
    ms = ns // 1_000_000
    sub_ms = ((ns % 1_000_000) << 12) // 1_000_000  # 12 bits of sub-millisecond order
    hi = ((ms & 0xFFFFFFFFFFFF) << 16) | 0x7000 | sub_ms
    lo = 0x8000000000000000 | _rand(62)
    h = "%016x%016x" % (hi, lo)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7() -> str:
    """A fresh UUIDv7 string (time-ordered, lowercase, hyphenated)."""
    return _uuid7_str(now_ns())


# --------------------------------------------------------------------------------------------
# Frames (handles).

KIND_SCOPE, KIND_TOOL, KIND_LLM = 0, 1, 2
_ATTR_CLASS = (ScopeAttributes, ToolAttributes, LLMAttributes)

STATUS_NONE, STATUS_OK, STATUS_ERROR = 0, 1, 2


class ScopeHandle:
    """An open scope: read-only identity, parent link and the payloads given at push."""

    __slots__ = ("_uuid", "_name", "_scope_type", "_attrs", "_parent", "_prev", "_data",
                 "_meta", "_profile", "_start_ns", "_closed", "_locals", "_kind", "_child_end",
                 "_otel", "__weakref__")
    _uuid: str
    _name: str
    _scope_type: Any
    _attrs: int
    _parent: Any
    _prev: Any
    _data: Any
    _meta: Any
    _profile: Any
    _start_ns: int
    _closed: bool
    _locals: Any
    _kind: int
    _child_end: int
    _otel: Any

    def __init__(self):
        raise TypeError("handles are created by nemoflow.scope.push / scope.scope")

    @property
    def uuid(self) -> str:
        return self._uuid

    @property
    def name(self) -> str:
        return self._name

    @property
    def scope_type(self):
        return self._scope_type

    @property
    def attributes(self):
        return _ATTR_CLASS[self._kind](self._attrs)

    @property
    def parent_uuid(self):
        return None if self._parent is None else self._parent._uuid

    @property
    def data(self):
        return _decode(self._data)

    @property
    def metadata(self):
        return _decode(self._meta)

    def __repr__(self):
        return f"<{type(self).__name__} {self._name!r} {self._uuid}>"


class ToolHandle(ScopeHandle):
    """An open tool call (a scope on the wire, never pushed on the stack)."""

    __slots__ = ()


class LLMHandle(ScopeHandle):
    """An open LLM call (a scope on the wire, never pushed on the stack)."""

    __slots__ = ()


def _new_frame(cls, kind, name, scope_type, attrs, parent, prev, data, meta, profile, start_ns):
    f = object.__new__(cls)
    f._uuid = _uuid7_str(start_ns)
    f._name = name
    f._scope_type = scope_type
    f._attrs = attrs
    f._parent = parent
    f._prev = prev
    f._data = data
    f._meta = meta
    f._profile = profile
    f._start_ns = start_ns
    f._closed = False
    f._locals = None
    f._kind = kind
    f._child_end = 0
    f._otel = None
    return f


def new_root() -> ScopeHandle:
    """A fresh implicit root: never emitted, cannot be popped, identifies one trace."""
    return _new_frame(ScopeHandle, KIND_SCOPE, "root", ScopeType.Agent, 0, None, None, None,
                      None, None, now_ns())


def imported_frame(uuid: str, name: str, scope_type, prev) -> ScopeHandle:
    """A frame with a given uuid that is never emitted and cannot be popped.

    It stands for a scope of another process (a propagated root or parent). It has no logical
    parent, like an implicit root, so ``pop`` refuses it; ``prev`` (the frame below it on the
    stack) lets ``root_of`` reach the propagated root under a propagated parent.
    """
    if prev is not None and not isinstance(prev, ScopeHandle):
        raise TypeError(f"prev must be a ScopeHandle or None, not {type(prev).__name__}")
    if type(scope_type) is not ScopeType:
        raise TypeError(f"scope_type must be a ScopeType, not {type(scope_type).__name__}")
    f = _new_frame(ScopeHandle, KIND_SCOPE, name, scope_type, 0, None, prev, None, None, None,
                   now_ns())
    f._uuid = str(_uuid.UUID(uuid))
    return f


def is_closed(frame) -> bool:
    """Whether the scope of ``frame`` has ended (``TypeError`` for a handle nemoflow did not
    make)."""
    _check_made(frame)
    return frame._closed


def stack(frame) -> list:
    """The uuids of the open scopes on the stack ``frame`` is on, root first, ``frame`` last
    (the frames it was pushed over, as scope-local delivery walks them)."""
    out = []
    f = frame
    while f is not None:
        if not f._closed:
            out.append(f._uuid)
        f = f._prev
    out.reverse()
    return out


def open_frames(frame) -> list:
    """The open frames of the stack ``frame`` is on, root first, ``frame`` last."""
    out = []
    f = frame
    while f is not None:
        if not f._closed:
            out.append(f)
        f = f._prev
    out.reverse()
    return out


def stack_anchor(frame) -> tuple:
    """``(outermost, inner_agent, outer_agent)`` of the stack ``frame`` is on, root excluded:
    the open frame just above the root, and the two innermost open agent scopes (or None)."""
    above = inner = outer = None
    f = frame
    while f is not None and f._prev is not None:
        if not f._closed:
            if f._scope_type is ScopeType.Agent and outer is None:
                if inner is None:
                    inner = f
                else:
                    outer = f
            above = f
        f = f._prev
    return above, inner, outer


def root_of(frame) -> ScopeHandle:
    """The implicit root of the trace ``frame`` belongs to."""
    while frame._parent is not None:
        frame = frame._parent
    if frame._prev is not None:  # an imported parent: the propagated root is below it
        frame = frame._prev
    return frame


# --------------------------------------------------------------------------------------------
# Binding: the current frame of this thread / asyncio task.

_current: contextvars.ContextVar[Any] = contextvars.ContextVar("nemoflow.current_scope")


def peek():
    """The frame bound in this context, or None when nothing was bound yet."""
    return _current.get(None)


def current() -> ScopeHandle:
    """The frame bound in this context; binds a new implicit root on first use."""
    frame = _current.get(None)
    if frame is None:
        frame = new_root()
        _current.set(frame)
    return frame


def bind(frame):
    """Make ``frame`` current in this context; returns the token for ``unbind``."""
    if not isinstance(frame, ScopeHandle):
        raise TypeError(f"expected a ScopeHandle, got {type(frame).__name__}")
    _check_made(frame)
    return _current.set(frame)


def unbind(token) -> None:
    """Undo the ``bind`` that returned ``token``."""
    _current.reset(token)


get_handle = current


# =============================================================================================
# Section events: event objects: what subscribers and exporters receive.
# =============================================================================================

# --------------------------------------------------------------------------------------------
# Events.

_merge_metadata = _common.merge_metadata


def _json_str(s: str) -> bytes:
    return orjson.dumps(s)


def _or_null(raw) -> bytes:
    return b"null" if raw is None else raw


class ScopeEvent:
    """The start or end of a scope, tool call or LLM call (ATOF ``kind: "scope"``)."""

    __slots__ = ("_frame", "_is_end", "_ts", "_data", "_end_meta", "_status", "_desc",
                 "_meta_cache", "_profile")
    _frame: ScopeHandle
    _is_end: bool
    _ts: int
    _data: Any
    _profile: Any

    kind = "scope"
    atof_version = ATOF_VERSION
    data_schema = None

    @property
    def uuid(self) -> str:
        return self._frame._uuid

    @property
    def parent_uuid(self):
        return self._frame.parent_uuid

    @property
    def timestamp(self) -> str:
        return format_timestamp(self._ts)

    @property
    def timestamp_ns(self) -> int:
        return self._ts

    @property
    def name(self) -> str:
        return self._frame._name

    @property
    def data(self):
        return _decode(self._data)

    def _metadata_raw(self):
        if self._meta_cache is not None:  # merged (an end), or given to with_fields
            return self._meta_cache[0]
        if not self._is_end:
            return self._frame._meta
        if self._meta_cache is None:
            self._meta_cache = (_merge_metadata(self._frame._meta, self._end_meta, self._status,
                                                self._desc),)
        return self._meta_cache[0]

    @property
    def metadata(self):
        if (self._is_end and self._meta_cache is None and self._frame._meta is None
                and self._end_meta is None):
            # Only the status, if any: made directly rather than encoded and decoded.
            if self._status == STATUS_NONE:
                return None
            if self._status == STATUS_OK:
                return {"otel.status_code": "OK"}
            return {"otel.status_code": "ERROR", "otel.status_description": self._desc}
        return _decode(self._metadata_raw())

    @property
    def scope_category(self) -> str:
        return "end" if self._is_end else "start"

    @property
    def attributes(self) -> list:
        f = self._frame
        return attribute_names(_ATTR_CLASS[f._kind], f._attrs)

    @property
    def category(self) -> str:
        return CATEGORIES[self._frame._scope_type]

    @property
    def category_profile(self):
        return _decode(self._profile)

    @property
    def otel_parent(self):
        """The OpenTelemetry ``SpanContext`` current when this top-level scope started (start
        events, while an OpenTelemetry exporter asks for it), else None. Never in ATOF."""
        return None if self._is_end else self._frame._otel

    def to_json(self) -> str:
        """The canonical ATOF line (without the newline), as the JSONL exporter writes it."""
        f = self._frame
        attrs = orjson.dumps(attribute_names(_ATTR_CLASS[f._kind], f._attrs))
        parent = b"null" if f._parent is None else b'"' + f._parent._uuid.encode() + b'"'
        return b"".join((
            b'{"atof_version":"0.1","attributes":', attrs,
            b',"category":"', CATEGORIES[f._scope_type].encode(),
            b'","category_profile":', _or_null(self._profile),
            b',"data":', _or_null(self._data),
            b',"data_schema":null,"kind":"scope","metadata":', _or_null(self._metadata_raw()),
            b',"name":', _json_str(f._name),
            b',"parent_uuid":', parent,
            b',"scope_category":"', b"end" if self._is_end else b"start",
            b'","timestamp":"', format_timestamp(self._ts).encode(),
            b'","uuid":"', f._uuid.encode(), b'"}',
        )).decode()

    def to_dict(self) -> dict:
        """The event as a dict with every ATOF field (a fresh copy on every call)."""
        return orjson.loads(self.to_json())

    def __repr__(self):
        return f"<ScopeEvent {self.scope_category} {self.name!r} {self.uuid}>"


class MarkEvent:
    """A point-in-time event (ATOF ``kind: "mark"``)."""

    __slots__ = ("_uuid", "_parent", "_name", "_ts", "_data", "_meta", "_schema", "_category",
                 "_profile", "_otel")
    _uuid: str
    _parent: Any
    _name: str
    _ts: int
    _data: Any
    _meta: Any
    _schema: Any
    _category: Any
    _profile: Any
    _otel: Any

    kind = "mark"
    atof_version = ATOF_VERSION

    @property
    def uuid(self) -> str:
        return self._uuid

    @property
    def parent_uuid(self):
        return None if self._parent is None else self._parent._uuid

    @property
    def timestamp(self) -> str:
        return format_timestamp(self._ts)

    @property
    def timestamp_ns(self) -> int:
        return self._ts

    @property
    def name(self) -> str:
        return self._name

    @property
    def data(self):
        return _decode(self._data)

    @property
    def metadata(self):
        return _decode(self._meta)

    @property
    def data_schema(self):
        return _decode(self._schema)

    @property
    def category(self):
        return self._category

    @property
    def category_profile(self):
        return _decode(self._profile)

    @property
    def otel_parent(self):
        """The OpenTelemetry ``SpanContext`` current when this top-level mark was emitted
        (while an OpenTelemetry exporter asks for it), else None. Never in ATOF."""
        return self._otel

    def to_json(self) -> str:
        """The canonical ATOF line (without the newline), as the JSONL exporter writes it."""
        parent = b"null" if self._parent is None else b'"' + self._parent._uuid.encode() + b'"'
        category = b"null" if self._category is None else _json_str(self._category)
        return b"".join((
            b'{"atof_version":"0.1","category":', category,
            b',"category_profile":', _or_null(self._profile),
            b',"data":', _or_null(self._data),
            b',"data_schema":', _or_null(self._schema),
            b',"kind":"mark","metadata":', _or_null(self._meta),
            b',"name":', _json_str(self._name),
            b',"parent_uuid":', parent,
            b',"timestamp":"', format_timestamp(self._ts).encode(),
            b'","uuid":"', self._uuid.encode(), b'"}',
        )).decode()

    def to_dict(self) -> dict:
        """The event as a dict with every ATOF field (a fresh copy on every call)."""
        return orjson.loads(self.to_json())

    def __repr__(self):
        return f"<MarkEvent {self._name!r} {self._uuid}>"

    @property
    def severity(self):
        """The ``LogSeverity`` given to ``event(..., severity=)``, or None."""
        return _severity_of(_decode(self._meta))


def _severity_of(metadata):
    if isinstance(metadata, dict):
        wire = metadata.get(SEVERITY_KEY)
        if isinstance(wire, str):
            return LogSeverity._value2member_map_.get(wire)
    return None


# Event middleware (nemoflow/_middleware.py): while a sanitizer or metadata injector is
# registered, every scope start, scope end and mark passes through ``_event_hook(event, top)``
# before it is recorded or delivered; it returns None (unchanged) or the copy to emit instead,
# made by ``with_fields``. While none is registered its whole cost is an ``is not None`` test.
_event_hook = None


def set_event_hook(hook) -> None:
    """Pass every event through ``hook(event, top)`` from now on (None: off)."""
    global _event_hook
    _event_hook = hook


def with_fields(ev, data, metadata, category_profile):
    """A copy of the event ``ev`` with the given data, metadata and category_profile (encoded
    JSON bytes or None); an end event's metadata is then written as given."""
    for raw in (data, metadata, category_profile):
        if raw is not None and type(raw) is not bytes:
            raise TypeError(f"fields are encoded JSON bytes or None, not {type(raw).__name__}")
    if isinstance(ev, MarkEvent):
        m = object.__new__(MarkEvent)
        for slot in MarkEvent.__slots__:
            setattr(m, slot, getattr(ev, slot))
        m._data, m._meta, m._profile = data, metadata, category_profile
        return m
    if not isinstance(ev, ScopeEvent):
        raise TypeError(f"expected a ScopeEvent or MarkEvent, got {type(ev).__name__}")
    c = _scope_event(ev._frame, ev._is_end, ev._ts, data, None, STATUS_NONE, None)
    c._profile = category_profile
    c._meta_cache = (metadata,)
    return c


# =============================================================================================
# Section subscribers: synchronous delivery on the traced thread.
# =============================================================================================

# --------------------------------------------------------------------------------------------
# Subscribers. Registries are immutable tuples swapped under a lock; the emit path reads them
# without locking. Each subscriber has its own lock so it is never entered concurrently.

_registry_lock = threading.RLock()
_subscribers = ()  # global, in registration order
_n_local = 0  # live scope-local subscriber registrations, across all frames
_enabled = False  # anything at all to deliver to?
# subscriber name -> [calls, errors, live Subscriber objects]; see _stat_for
_stats: dict[str, list] = {}
_retired = [0, 0, 0]  # calls, errors, subscribers folded away
_STATS_KEPT = 1024


def _stat_for(name):
    # With _registry_lock held. Counters stay by name after a subscriber is gone (a name
    # registered again counts on); past _STATS_KEPT names, the oldest ones no subscriber uses
    # any more are folded into one "retired" entry, so subscribers registered under ever-new
    # names cannot grow this dict without bound.
    st = _stats.get(name)
    if st is None:
        if len(_stats) >= _STATS_KEPT:
            for key, old in list(_stats.items()):
                if len(_stats) < _STATS_KEPT // 2:
                    break
                if old[2] == 0 and not key.startswith("exporter:"):
                    _retired[0] += old[0]
                    _retired[1] += old[1]
                    _retired[2] += 1
                    del _stats[key]
        st = _stats[name] = [0, 0, 0]
    return st


class Subscriber:
    """A registered callback with its own lock and error accounting."""

    __slots__ = ("name", "callback", "_lock", "_stat", "_warned", "_deferred")

    def __init__(self, name, callback):
        if not isinstance(name, str):
            raise TypeError(f"subscriber name must be str, not {type(name).__name__}")
        if not callable(callback):
            raise TypeError("subscriber callback must be callable")
        self.name = name
        self.callback = callback
        self._lock = threading.RLock()
        with _registry_lock:
            self._stat = _stat_for(name)
            self._stat[2] += 1
        self._warned = False
        self._deferred = None  # the delivery thread's calls that gave way (see deliver)

    def __del__(self):
        stat = getattr(self, "_stat", None)  # absent when __init__ refused its arguments
        if stat is not None:
            stat[2] -= 1

    def deliver(self, event):
        """None, or a BaseException that is not an Exception (KeyboardInterrupt, SystemExit)
        raised by the callback on a traced thread: _deliver re-raises it once every other
        subscriber had the event."""
        lock = self._lock
        if not lock.acquire(False):
            if threading.get_ident() == _delivery_ident:
                if not _acquire_on_delivery(lock):
                    _defer(self, event)
                    return None
            else:
                lock.acquire()
        try:
            if self._deferred is not None and threading.get_ident() == _delivery_ident:
                _drain_deferred(self)
            self._stat[0] += 1
            try:
                self.callback(event)
            except BaseException as exc:  # isolate: the emitter and other subscribers go on
                return self._failed(exc)
            return None
        finally:
            lock.release()

    def _call(self, event):
        self._stat[0] += 1
        try:
            self.callback(event)
        except BaseException as exc:
            return self._failed(exc)
        return None

    def _failed(self, exc):
        self._stat[1] += 1
        if not self._warned:
            self._warned = True
            _warn_quietly(
                f"nemoflow: subscriber {self.name!r} raised {type(exc).__name__}: "
                f"{describe(exc)}; further errors are counted in nemoflow.diagnostics()")
        if not isinstance(exc, Exception) and threading.get_ident() != _delivery_ident:
            return exc
        return None


# Calls the delivery thread could not make because the subscriber's lock was held while
# another thread waited on the delivery thread (for ring room or a flush): waiting for that lock
# would close a cycle. They are made later, in order, from the delivery thread. Touched by the
# delivery thread only.
_deferred_subs: list = []
_n_deferred = 0
_SLICE = 0.05  # waits wake this often: signals, and cycles to give way to
_OWN_RING_GROWTH = 8  # the delivery thread's own ring grows up to this times ring_size


def _someone_waits():
    return _pipe["waiting"] > 0 or _pipe["flush_requests"] > 0 or _pipe["stopping"]


def _acquire_on_delivery(lock):
    # The delivery thread waits for a subscriber's lock only while nobody waits on it.
    while True:
        if _someone_waits():
            return False
        if lock.acquire(timeout=_SLICE):
            return True


def _defer(sub, event):
    global _n_deferred
    if sub._deferred is None:
        sub._deferred = []
        _deferred_subs.append(sub)
    sub._deferred.append(event)
    _n_deferred += 1


def _drain_deferred(sub):
    # With the subscriber's lock held, on the delivery thread: the deferred calls come first.
    global _n_deferred
    pending, sub._deferred = sub._deferred, None
    if sub in _deferred_subs:
        _deferred_subs.remove(sub)
    for ev in pending:
        _n_deferred -= 1
        sub._call(ev)


def _retry_deferred():
    for sub in list(_deferred_subs):  # noqa: PERF101 - draining removes from the list
        if sub._deferred is None:
            continue
        if not sub._lock.acquire(False) and not _acquire_on_delivery(sub._lock):
            continue
        try:
            _drain_deferred(sub)
        finally:
            sub._lock.release()


def _forget_deferred():
    global _n_deferred, _deferred_subs
    for sub in _deferred_subs:
        sub._deferred = None
    _deferred_subs = []
    _n_deferred = 0


def _warn_quietly(text):
    # Under warnings.simplefilter("error") (pytest -W error) warn() raises: that must not
    # reach the traced code, which did nothing wrong. The text goes to stderr instead; the
    # failure itself is counted in diagnostics() either way.
    try:
        warnings.warn(text, RuntimeWarning, stacklevel=3)
    except Exception:
        with contextlib.suppress(Exception):
            sys.stderr.write(f"{text}\n")


def _all_subscribers():
    subs = list(_subscribers)
    subs.extend(c for c in _consumers if isinstance(c, Subscriber))
    for entry in _scope_locals.values():
        subs.extend(entry[1])
    return subs


def _refresh_enabled():
    global _enabled
    _enabled = bool(_subscribers) or _n_local > 0


def set_subscribers(subs: tuple) -> None:
    """Replace the global subscriber tuple (the registry module owns names and order)."""
    global _subscribers
    with _registry_lock:
        _subscribers = tuple(subs)
        _refresh_enabled()


def _check_active(frame):
    if not isinstance(frame, ScopeHandle):
        raise TypeError(f"expected a ScopeHandle, got {type(frame).__name__}")
    _check_made(frame)
    if frame._closed:
        raise NotFoundError(f"not found: scope {frame._uuid} not found")


# id(frame) -> [weakref to the frame, tuple of scope-local Subscribers]. Weak: a scope that can
# no longer be popped (nothing references its frame) takes its registrations with it.
_scope_locals: dict[int, list] = {}


def _locals_gone(key, ref=None):
    global _n_local
    with _registry_lock:
        entry = _scope_locals.pop(key, None)
        if entry is not None and entry[0] is ref:
            _n_local -= len(entry[1])
            _refresh_enabled()
        elif entry is not None:
            _scope_locals[key] = entry


def local_register(frame, name, callback) -> None:
    """Attach a scope-local subscriber to an open scope."""
    global _n_local
    _check_active(frame)
    sub = Subscriber(name, callback)
    with _registry_lock:
        if frame._closed:
            raise NotFoundError(f"not found: scope {frame._uuid} not found")
        key = id(frame)
        entry = _scope_locals.get(key)
        if entry is None:
            entry = [weakref.ref(frame, functools.partial(_locals_gone, key)), ()]
            _scope_locals[key] = entry
        if any(s.name == name for s in entry[1]):
            raise AlreadyExistsError(f"already exists: {name} subscriber already exists")
        entry[1] = entry[1] + (sub,)
        frame._locals = True
        _n_local += 1
        _refresh_enabled()


def local_deregister(frame, name) -> bool:
    """Detach a scope-local subscriber; False when no such name is attached."""
    global _n_local
    _check_active(frame)
    with _registry_lock:
        entry = _scope_locals.get(id(frame))
        if entry is None:
            return False
        locals_ = entry[1]
        kept = tuple(s for s in locals_ if s.name != name)
        if len(kept) == len(locals_):
            return False
        if kept:
            entry[1] = kept
        else:
            del _scope_locals[id(frame)]
            frame._locals = None
        _n_local -= 1
        _refresh_enabled()
        return True


def _drop_locals(frame):
    global _n_local
    with _registry_lock:
        entry = _scope_locals.pop(id(frame), None)
        frame._locals = None
        if entry is not None and entry[1]:
            _n_local -= len(entry[1])
            _refresh_enabled()


def _deliver(event, top):
    first = None
    for sub in _subscribers:
        failure = sub.deliver(event)
        if failure is not None and first is None:
            first = failure
    if _n_local:
        chain = []
        f = top
        while f is not None:
            if f._locals:
                entry = _scope_locals.get(id(f))
                if entry is not None and entry[1]:
                    chain.append(entry[1])
            f = f._prev
        for locals_ in reversed(chain):
            for sub in locals_:
                failure = sub.deliver(event)
                if failure is not None and first is None:
                    first = failure
    if first is not None:
        raise first


# =============================================================================================
# Section record: a record built on the traced thread, put in its per-thread ring.
# =============================================================================================

# --------------------------------------------------------------------------------------------
# The pipeline: exporters and buffered subscribers are fed from per-thread rings by one
# delivery thread, never on the traced thread. Nothing attached: nothing is recorded. (The
# compiled core keeps C records in its rings; the twin keeps the event objects.)

_recording = False
_drop_when_full = False
# OpenTelemetry parent capture (the SDK bridge): while an OpenTelemetry exporter is attached
# and configure(otel_parent="auto"), a top-level scope or mark calls _otel_capture() once at
# its start; otherwise the hot path pays one global test.
_otel_hook = None  # set by set_otel_capture
_otel_parent = "auto"
_otel_capture = None  # _otel_hook when _otel_parent is "auto"
_otel_cv = None  # OpenTelemetry's context ContextVar: empty means no span


def _otel_parent_context():
    # The hook runs only when OpenTelemetry's current context holds something.
    if _otel_cv is not None and not _otel_cv.get(None):
        return None
    return _otel_capture()
_sinks: tuple = ()
_consumers: tuple = ()
_delivery = None
_delivery_ident = 0
_pid = os.getpid()
_TICK = 0.02
_BATCH = 4096
_exit_timeout = _exit.timeout_from_env()  # the whole of exit waits at most this
_exit_deadline = None  # time.monotonic() by which exit stops waiting, once exiting
_abandoned_at_exit = 0
_abandoned_at_detach = 0

# Re-entrant: the garbage collector may run a finalizer that emits (a traced generator
# collected unfinished) on a thread that holds it.
_pipe_lock = threading.RLock()
_work = threading.Condition(_pipe_lock)
_progress = threading.Condition(_pipe_lock)
_pipe = {"rings": [], "capacity": 8192, "next_id": 1, "flush_requests": 0, "wake": False,
         "waiting": 0, "stopping": False, "freed": 0, "dropped_freed": 0, "high_freed": 0,
         "waits_freed": 0, "arena_size": _common.DEFAULT_ARENA, "oversize_freed": 0,
         "arena_high_freed": 0}
_tls = threading.local()


class _Ring:
    # The compiled core's payload arena is modelled by its budget: bytes of payloads not yet
    # delivered (arena_in, counted by the producer, minus arena_out, by the consumer: each
    # counter has one writer, so no lock), at most arena_size, and one oversize payload at a
    # time (heap_in - heap_out).
    __slots__ = ("items", "capacity", "head", "tail", "delivered", "high_water", "dropped",
                 "waits", "closed", "thread_ident", "id", "pid", "wake_sent", "arena_size",
                 "arena_in", "arena_out", "arena_high", "heap_in", "heap_out", "oversize")

    def __init__(self, capacity, ring_id, arena_size):
        self.items = collections.deque()
        self.arena_size = arena_size
        self.arena_in = self.arena_out = self.arena_high = 0
        self.heap_in = self.heap_out = self.oversize = 0
        self.capacity = capacity
        self.head = self.tail = self.delivered = 0
        self.high_water = self.dropped = self.waits = 0
        self.closed = False
        self.wake_sent = False
        self.thread_ident = threading.get_ident()
        self.id = ring_id
        self.pid = _pid


class _RingOwner:
    """Lives in the thread's locals: when the thread ends it is dropped and closes the ring."""

    __slots__ = ("ring",)

    def __init__(self, ring):
        self.ring = ring

    def __del__(self):
        self.ring.closed = True


def _ring():
    owner = getattr(_tls, "owner", None)
    if owner is not None and owner.ring.pid == _pid:
        return owner.ring
    with _pipe_lock:
        ring = _Ring(_pipe["capacity"], _pipe["next_id"], _pipe["arena_size"])
        _pipe["next_id"] += 1
        _pipe["rings"].append(ring)
    _tls.owner = _RingOwner(ring)
    return ring


def _text_size(text):
    return 0 if text is None else len(text.encode("utf-8", "surrogatepass"))


def _payload_size(ev):
    # The bytes the compiled core copies into its arena for this event.
    if type(ev) is ScopeEvent:
        f = ev._frame
        raws, texts, name = (ev._data, f._meta, ev._end_meta, f._profile), (ev._desc,), f._name
    else:
        raws, texts, name = (ev._data, ev._meta, ev._schema, ev._profile), (ev._category,), ev._name
    n = sum(0 if r is None else len(r) for r in raws) + sum(_text_size(t) for t in texts)
    if not (name.isascii() and len(name) <= _NAME_INLINE):
        n += _text_size(name)
    return n


def _has_room(ring, size):
    if ring.head - ring.tail >= ring.capacity:
        return False
    if size > ring.arena_size:
        return ring.heap_in == ring.heap_out
    return ring.arena_in - ring.arena_out + size <= ring.arena_size


def _record(ev):
    if (_delivery is None or _delivery.pid != _pid) and _exit_deadline is None:
        _start_delivery()  # not once exit began: what daemon threads emit then is not waited for
    ring = _ring()
    size = _payload_size(ev)
    if not _has_room(ring, size):
        # The delivery thread cannot wait for itself: its own ring grows instead (its payloads
        # go outside the arena), and past that limit an event emitted by one of its consumers
        # is dropped (and counted).
        if threading.get_ident() == _delivery_ident:
            if ring.head - ring.tail >= ring.capacity:
                if ring.capacity < _pipe["capacity"] * _OWN_RING_GROWTH:
                    ring.capacity *= 2
                else:
                    ring.dropped += 1
                    return
        elif _drop_when_full:
            ring.dropped += 1
            return
        else:
            _wait_for_room(ring, size)
    if size > ring.arena_size or (threading.get_ident() == _delivery_ident
                                  and ring.arena_in - ring.arena_out + size > ring.arena_size):
        ring.heap_in += 1
        ring.oversize += size > ring.arena_size
        ring.items.append((ev, -1))
    else:
        ring.arena_in += size
        ring.items.append((ev, size))
    ring.head += 1
    used = ring.head - ring.tail
    if used > ring.high_water:
        ring.high_water = used
    # Past a quarter full, ask for an early drain, once until the consumer takes from the ring.
    if (used > ring.capacity // 4 or ring.arena_in - ring.arena_out > ring.arena_size // 4) \
            and not ring.wake_sent:
        ring.wake_sent = True
        with _pipe_lock:
            _pipe["wake"] = True
            _work.notify()


def _wait_for_room(ring, size):
    with _pipe_lock:
        ring.waits += 1
        _pipe["waiting"] += 1
        try:
            while not _has_room(ring, size):
                _pipe["wake"] = True
                _work.notify()
                _progress.wait(_SLICE)  # in slices: Ctrl-C raises here promptly
        except BaseException:
            ring.dropped += 1  # the record that was waiting is lost
            raise
        finally:
            _pipe["waiting"] -= 1


# =============================================================================================
# Section delivery: the delivery thread: batches from the rings to sinks and consumers.
# =============================================================================================

def consumer_failed(consumer, exc):
    """Count (and report once) an exporter's failure; never raised into traced code."""
    name = getattr(consumer, "name", type(consumer).__name__)
    with _registry_lock:
        st = _stat_for(f"exporter:{name}")
    st[1] += 1
    if st[1] == 1:
        _warn_quietly(f"nemoflow: exporter {name!r} raised {type(exc).__name__}: {exc}; "
                      "further errors are counted in nemoflow.diagnostics()")


def _deliver_batch(batch):
    sinks, consumers = _sinks, _consumers
    if sinks:
        data = b"".join([ev.to_json().encode() + b"\n" for ev in batch])
        for sink in sinks:
            sink._write(data, len(batch))
    for consumer in consumers:
        if isinstance(consumer, Subscriber):
            for ev in batch:
                consumer.deliver(ev)
        else:
            try:
                consumer.export(list(batch))
            except BaseException as exc:  # SystemExit too: the other consumers still get it
                consumer_failed(consumer, exc)


class _PipelineName:
    name = "pipeline"


def _delivery_main():
    global _delivery_ident
    _delivery_ident = threading.get_ident()
    batch = ()
    while True:
        with _pipe_lock:
            # Sleep only when the last pass found nothing: under load the thread keeps draining.
            if not (batch or _pipe["flush_requests"] or _pipe["wake"] or _pipe["stopping"]):
                _work.wait(_TICK)
            _pipe["wake"] = False
            stopping = _pipe["stopping"]
            rings = list(_pipe["rings"])
        batch, counts, sizes = [], [], []
        for ring in rings:
            n = min(ring.head - ring.tail, _BATCH - len(batch))
            taken = [ring.items.popleft() for _ in range(n)]
            batch.extend([ev for ev, _ in taken])
            sizes.append([size for _, size in taken])
            ring.tail += n
            ring.wake_sent = False
            counts.append(n)
        if _pipe["waiting"]:
            with _pipe_lock:
                _progress.notify_all()
        if batch:
            try:
                _deliver_batch(batch)
            except BaseException as exc:  # the thread must survive whatever a batch does
                consumer_failed(_PipelineName, exc)
        if _n_deferred:
            try:
                _retry_deferred()
            except BaseException as exc:
                consumer_failed(_PipelineName, exc)
        with _pipe_lock:
            for ring, n, taken in zip(rings, counts, sizes):
                ring.delivered += n
                arena = sum([size for size in taken if size > 0])
                ring.arena_high = max(ring.arena_high, arena)
                ring.arena_out += arena
                ring.heap_out += sum([1 for size in taken if size < 0])
            live = _pipe["rings"]
            for ring in [r for r in live if r.closed and r.delivered == r.head]:
                live.remove(ring)  # in place: a ring added meanwhile (re-entrant) stays
                _pipe["freed"] += 1
                _pipe["dropped_freed"] += ring.dropped
                _pipe["waits_freed"] += ring.waits
                _pipe["high_freed"] = max(_pipe["high_freed"], ring.high_water)
                _pipe["oversize_freed"] += ring.oversize
                _pipe["arena_high_freed"] = max(_pipe["arena_high_freed"], ring.arena_high)
            _progress.notify_all()
        # Stopping comes after a flush: what was emitted before it is delivered. What threads
        # still emit (daemon threads at exit) is counted, not waited for.
        if stopping:
            return


def _start_delivery():
    global _delivery
    with _registry_lock:
        if _delivery is not None and _delivery.pid == _pid and _delivery.is_alive():
            return
        with _pipe_lock:
            _pipe["stopping"] = False
        thread = threading.Thread(target=_delivery_main, name="nemoflow-delivery", daemon=True)
        thread.pid = _pid
        thread.start()
        _delivery = thread


def _refresh_recording():
    global _recording
    _recording = bool(_sinks) or bool(_consumers)


def attach(consumer):
    """Feed ``consumer`` from the pipeline: a LineSink, a buffered Subscriber, or an object
    with ``export(events)``. Starts the delivery thread on first use."""
    global _sinks, _consumers
    with _registry_lock:
        if isinstance(consumer, LineSink):
            if consumer not in _sinks:
                _sinks = (*_sinks, consumer)
        elif consumer not in _consumers:
            _consumers = (*_consumers, consumer)
        _refresh_recording()
    _start_delivery()


def detach(consumer):
    """Stop feeding ``consumer``; what was emitted before is still delivered to it first (for
    at most the exit timeout: past it, what it did not get is counted and reported)."""
    global _sinks, _consumers
    deadline = time.monotonic() + _exit_timeout
    delivered = flush(_exit_timeout)
    with _registry_lock:
        _sinks = tuple(c for c in _sinks if c is not consumer)
        _consumers = tuple(c for c in _consumers if c is not consumer)
        _refresh_recording()
    if delivered:
        # a batch taken before the detach may still be on its way to the consumer
        delivered = flush(max(0.0, deadline - time.monotonic()))
    if not delivered:
        _gave_up_detaching(consumer)


def _gave_up_detaching(consumer):
    global _abandoned_at_detach
    n = _pending()
    _abandoned_at_detach += n
    if _exit_deadline is None:  # at exit, the exit report says it
        _warn_quietly(f"nemoflow: {getattr(consumer, 'name', type(consumer).__name__)!r} was "
                      f"detached after waiting {_exit_timeout:g} s for the delivery thread; up to "
                      f"{n} events were not delivered to it")


def _pending():
    with _pipe_lock:
        rings = list(_pipe["rings"])
    return sum(r.head - r.delivered for r in rings)


def flush(timeout=None):
    """Block until every event emitted before the call has been delivered; False on timeout."""
    if _delivery is None or threading.get_ident() == _delivery_ident:
        return True
    if _delivery.pid != _pid:
        _start_delivery()
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    if _exit_deadline is not None and (deadline is None or deadline > _exit_deadline):
        deadline = _exit_deadline
    with _pipe_lock:
        targets = [(ring, ring.head) for ring in _pipe["rings"]]
        _pipe["flush_requests"] += 1
        _work.notify()
        try:
            while True:
                live = _pipe["rings"]
                if all(ring not in live or ring.delivered >= head for ring, head in targets):
                    return True
                left = _SLICE if deadline is None else min(deadline - time.monotonic(), _SLICE)
                if left <= 0:
                    return False
                _progress.wait(left)  # in slices: Ctrl-C raises here promptly
        finally:
            _pipe["flush_requests"] -= 1


def shutdown(timeout=5.0):
    """Deliver everything, then stop the delivery thread (at interpreter exit)."""
    global _delivery
    thread = _delivery
    if thread is None or thread.pid != _pid:
        return True
    deadline = time.monotonic() + float(timeout)
    if _exit_deadline is not None and deadline > _exit_deadline:
        deadline = _exit_deadline
    flushed = flush(max(0.0, deadline - time.monotonic()))
    with _pipe_lock:
        _pipe["stopping"] = True
        _work.notify()
    thread.join(max(0.0, deadline - time.monotonic()))
    with _registry_lock:
        _delivery = None
    return flushed and not thread.is_alive()


# =============================================================================================
# Section sinks: line sinks: encoded lines appended to files.
# =============================================================================================

class LineSink:
    """A file descriptor the delivery thread writes ATOF lines to.

    ``reopen(rotate)`` (called when ``max_bytes`` would be exceeded, or when the sink holds no
    file) returns a new descriptor after the sink closed its own; with ``rotate`` the current
    file goes to the backups first. A sink whose file could not be (re)opened, or was closed,
    holds fd -1 and never writes or closes a descriptor it no longer owns: what reaches it is
    counted as lost. Write errors are counted, kept for ``raise_error()``, and never raised
    into traced code.
    """

    def __init__(self, name, fd, max_bytes=0, rotate=None, bytes_in_file=0):
        if not isinstance(name, str):
            raise TypeError("name must be str")
        self.name = name
        self._fd = int(fd)
        self.max_bytes = int(max_bytes)
        self._rotate = rotate
        self.bytes_in_file = int(bytes_in_file)
        self.events = self.bytes = self.errors = self.lost = self.lost_bytes = 0
        self._errno = 0
        self._open_errno = 0
        self._torn = False
        self._reported = False

    @property
    def fd(self):
        return self._fd

    def raise_error(self):
        """Raise the last write error (OSError) and forget it; nothing when there was none."""
        err, self._errno = self._errno, 0
        if err:
            raise OSError(err, f"nemoflow: writing {self.name} failed: {os.strerror(err)}")

    def stats(self):
        return {"events": self.events, "bytes": self.bytes, "errors": self.errors,
                "lost": self.lost, "lost_bytes": self.lost_bytes}

    def close(self):
        """Close the file for good: later batches are counted as lost."""
        self._rotate = None
        fd, self._fd = self._fd, -1
        self._open_errno = errno.EBADF
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _set_fd(self, fd, bytes_in_file):
        # Only while nothing is delivered (a forked child before its delivery thread starts).
        old, self._fd = self._fd, fd
        self.bytes_in_file = bytes_in_file
        self._open_errno = 0
        self._torn = False
        if old >= 0:
            with contextlib.suppress(OSError):
                os.close(old)

    def _reopen_now(self, rotate=False):
        # The old descriptor is closed and forgotten first: if no new file can be opened the
        # sink holds -1, never a number the application may get from its next open().
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._rotate is None:
            self._open_errno = errno.EBADF
            return
        try:
            fd = self._rotate(rotate)
        except Exception as exc:
            self._open_errno = getattr(exc, "errno", None) or errno.EIO
            self._report(exc)
            return
        try:
            self.bytes_in_file = os.fstat(fd).st_size
        except OSError:
            self.bytes_in_file = 0
        self._fd = fd
        self._open_errno = 0
        self._torn = False

    def _write(self, data, n_events):
        size = len(data)
        if self.max_bytes and self.bytes_in_file and self.bytes_in_file + size > self.max_bytes:
            self._reopen_now(True)
        elif self._fd < 0:
            self._reopen_now(False)
        whole, torn, err = 0, False, 0
        if self._fd < 0:
            err = self._open_errno or errno.EBADF
        else:
            if self._torn:
                # a line cut earlier could not be taken back: end it, so this batch's first
                # line starts on a line of its own
                _, _, err = _write_lines(self._fd, b"\n")
                if not err:
                    self._torn = False
                    self.bytes_in_file += 1
            if not err:
                whole, torn, err = _write_lines(self._fd, data)
        lines = n_events if whole == len(data) else data.count(b"\n", 0, whole)
        self.events += lines
        self.bytes += whole
        self.bytes_in_file += whole
        if not err:
            return
        if torn:
            self._torn = True
        if err == errno.EBADF and self._fd >= 0:
            # closed behind our back: the number may already be someone else's file
            self._fd = -1
            self._open_errno = errno.EBADF
        self.errors += 1
        self._errno = err
        self.lost += n_events - lines
        self.lost_bytes += len(data) - whole
        self._report(None)

    def _report(self, exc):
        if exc is not None:
            self._errno = getattr(exc, "errno", None) or errno.EIO
        if not self._reported:
            self._reported = True
            _warn_quietly(f"nemoflow: exporter {self.name!r} could not write: "
                          f"{exc if exc is not None else os.strerror(self._errno)}; further "
                          "errors are counted in nemoflow.diagnostics()")


def _write_lines(fd, data):
    # Never leaves a cut line in the file: when a write fails part way (a full disk, a file
    # size limit), the bytes of the line it cut are truncated away. Returns the length of the
    # whole lines written, whether a cut line could not be taken back, and the errno or 0.
    view = memoryview(data)
    done = 0
    try:
        while done < len(data):
            n = os.write(fd, view[done:])
            if n == 0:
                raise OSError(errno.EIO, "write returned 0")
            done += n
    except OSError as exc:
        err = exc.errno or errno.EIO
    else:
        return done, False, 0
    keep = data.rfind(b"\n", 0, done) + 1
    torn = False
    if keep < done:
        # O_APPEND leaves the offset at the end of what this write added; truncate only if
        # nothing was appended after it (by another process sharing the file)
        try:
            end = os.lseek(fd, 0, os.SEEK_CUR)
            if os.fstat(fd).st_size != end:
                raise OSError(errno.EAGAIN, "the file grew")
            os.ftruncate(fd, end - (done - keep))
        except OSError:
            torn = True
    return keep, torn, err


# =============================================================================================
# Section api: Python-facing scope lifecycle: start/end, push/pop, marks.
# =============================================================================================

# --------------------------------------------------------------------------------------------
# Scope lifecycle.

def _check_name(name):
    # The plain str of a str subclass (a StrEnum member, say): that is what is recorded.
    if type(name) is not str:
        if not isinstance(name, str):
            raise TypeError(f"name must be str, not {type(name).__name__}")
        name = str.__str__(name)
    _check_text(name)
    return name


def _check_text(text):
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("names and categories must be valid Unicode text (a lone "
                             "surrogate cannot be written as UTF-8)") from None


def _check_parent(handle):
    if handle is not None:
        if not isinstance(handle, ScopeHandle):
            raise TypeError(f"handle must be a ScopeHandle or None, not {type(handle).__name__}")
        _check_made(handle)


def _check_made(handle):
    # Every frame the core makes has a uuid; one made by calling ``ScopeHandle.__new__`` has
    # none and would be written with a null uuid.
    if not hasattr(handle, "_uuid"):
        raise TypeError("this handle was not created by nemoflow (handles come from "
                        "scope.push, scope.scope, tools.call and llm.call)")


def _attr_value(attributes, kind=KIND_SCOPE) -> int:
    # Each kind takes its own flag class (or a plain int mask): another kind's flag would be
    # written under this kind's wire names.
    if attributes is None:
        return 0
    expected = _ATTR_CLASS[kind]
    if (not isinstance(attributes, int) or isinstance(attributes, bool)
            or (isinstance(attributes, _ATTR_CLASS) and not isinstance(attributes, expected))):
        raise TypeError(f"attributes must be {expected.__name__}, "
                        f"not {type(attributes).__name__}")
    if attributes < 0 or attributes & ~_ATTR_MASKS[kind]:
        raise ValueError(f"attributes {int(attributes)} has bits {expected.__name__} does not "
                         f"define (valid: 0 to {_ATTR_MASKS[kind]})")
    return int(attributes)


# The bits each kind defines; anything else would be dropped from the line without a word.
_ATTR_MASKS = tuple(sum(bit for bit, _ in ATTRIBUTE_NAMES[c]) for c in _ATTR_CLASS)


def _check_kind(kind):
    if type(kind) is not int or not KIND_SCOPE <= kind <= KIND_LLM:
        raise ValueError(f"kind must be KIND_SCOPE, KIND_TOOL or KIND_LLM, not {kind!r}")


def start(name, scope_type, parent, attributes, data, metadata, input, timestamp,
          kind=KIND_SCOPE, profile=None, cls=ScopeHandle):
    """Open a scope (emit its start event) without binding it; returns the frame."""
    frame, input_raw = _open_checked(name, scope_type, parent, attributes, data, metadata,
                                     input, timestamp, kind, profile, cls)
    try:
        _announce(frame, input_raw)
    except BaseException as exc:
        # Interrupted in a subscriber (KeyboardInterrupt): the caller never gets the handle,
        # so the call is ended here rather than left open forever.
        _end_encoded(frame, None, None, _auto_end(frame), STATUS_ERROR, describe(exc), None)
        raise
    return frame


def _open_checked(name, scope_type, parent, attributes, data, metadata, input, timestamp,
                  kind=KIND_SCOPE, profile=None, cls=ScopeHandle):
    name = _check_name(name)
    if type(scope_type) is not ScopeType:
        raise TypeError(f"scope_type must be a ScopeType, not {type(scope_type).__name__}")
    _check_parent(parent)
    _check_kind(kind)
    if profile is not None and type(profile) is not bytes:
        raise TypeError(f"profile must be encoded JSON bytes, not {type(profile).__name__}")
    attrs = _attr_value(attributes, kind)
    ts = now_ns() if timestamp is None else timestamp_ns(timestamp)
    data_raw, meta_raw, input_raw = encode(data), encode(metadata), encode(input)
    return _open(name, scope_type, parent, attrs, data_raw, meta_raw, input_raw, ts, kind,
                 profile, cls), input_raw


# Opening and closing a scope change state (frame, binding, record) first and run user code
# (synchronous subscribers, and the warnings machinery behind them) last: whatever that code
# raises (KeyboardInterrupt, say) finds the stack as consistent as after a completed call.

def _open(name, scope_type, parent, attrs, data_raw, meta_raw, input_raw, ts, kind, profile,
          cls):
    # The frame and its start record; the start event is delivered by _announce.
    top = current()
    if parent is None:
        parent = top
    frame = _new_frame(cls, kind, name, scope_type, attrs, parent, top, data_raw, meta_raw,
                       profile, ts)
    if _otel_capture is not None and parent._parent is None:
        frame._otel = _otel_parent_context()
    if _recording and _event_hook is None:  # (with event middleware: in _announce)
        _record(_scope_event(frame, False, ts, input_raw, None, STATUS_NONE, None))
    return frame


def _announce(frame, input_raw):
    if _event_hook is not None:
        _announce_through_hook(frame, input_raw)
    elif _enabled:
        _deliver(_scope_event(frame, False, frame._start_ns, input_raw, None, STATUS_NONE,
                              None), frame._prev)


def _announce_through_hook(frame, input_raw):
    if not (_enabled or _recording):
        return
    ev = _scope_event(frame, False, frame._start_ns, input_raw, None, STATUS_NONE, None)
    copy, interrupted = _through_hook(ev, frame._prev)
    if copy is not None:
        ev = copy
    if _recording:
        _record(ev)
    if _enabled:
        _deliver(ev, frame._prev)
    if interrupted is not None:
        raise interrupted


def _through_hook(ev, top):
    # (the copy to emit or None, the BaseException that interrupted the hook or None). An
    # interrupted hook leaves the event written with its fields cleared (fail closed), and the
    # exception raised once the operation is complete.
    try:
        return _event_hook(ev, top), None
    except BaseException as exc:
        return with_fields(ev, None, None, None), exc


def _unbind(token, frame):
    try:
        _current.reset(token)
    except ValueError:  # exited in another context than entered: restore by value
        _current.set(frame._prev)


def end(frame, output, metadata, timestamp, status=STATUS_NONE, desc=None, top=None,
        profile=None):
    """Close ``frame`` (emit its end event, drop its scope-local registrations).

    ``profile`` (encoded JSON bytes) replaces the category_profile for the end event (a streamed
    LLM call's ``time_to_first_chunk``); the start event keeps the one given at start.
    """
    if not isinstance(frame, ScopeHandle):
        raise TypeError(f"expected a ScopeHandle, got {type(frame).__name__}")
    _check_made(frame)
    if type(status) is not int or not STATUS_NONE <= status <= STATUS_ERROR:
        raise ValueError(f"status must be STATUS_NONE, STATUS_OK or STATUS_ERROR, not {status}")
    if profile is not None and type(profile) is not bytes:
        raise TypeError(f"profile must be encoded JSON bytes, not {type(profile).__name__}")
    if timestamp is None:
        # max(now, start + 1 µs): an automatically stamped end is strictly after its start.
        ts = _auto_end(frame)
    else:
        ts = timestamp_ns(timestamp)
    out_raw = encode(output)
    meta_raw = encode(metadata)
    if profile is not None:
        frame._profile = profile
    _end_encoded(frame, out_raw, meta_raw, ts, status, desc, top)


def _scope_event(frame, is_end, ts, data, end_meta, status, desc):
    ev = object.__new__(ScopeEvent)
    ev._frame = frame
    ev._is_end = is_end
    ev._ts = ts
    ev._data = data
    ev._end_meta = end_meta
    ev._status = status
    ev._desc = desc
    ev._meta_cache = None
    ev._profile = frame._profile
    return ev


def _auto_end(frame):
    # max(now, start + 1 µs, latest child end): an automatically stamped end is strictly after
    # its start, and a scope never ends before a child it contains.
    return max(now_ns(), frame._start_ns + 1000, frame._child_end)


def _end_encoded(frame, out_raw, meta_raw, ts, status, desc, top):
    frame._closed = True
    parent = frame._parent
    if parent is not None and ts > parent._child_end:
        parent._child_end = ts
    if _event_hook is not None and (_enabled or _recording):
        _end_through_hook(frame, out_raw, meta_raw, ts, status, desc, top)
        return
    if _recording:
        _record(_scope_event(frame, True, ts, out_raw, meta_raw, status, desc))
    if _enabled:
        try:
            _deliver(_scope_event(frame, True, ts, out_raw, meta_raw, status, desc),
                     frame if top is None else top)
        finally:
            if frame._locals:
                _drop_locals(frame)
    elif frame._locals:
        _drop_locals(frame)


def _end_through_hook(frame, out_raw, meta_raw, ts, status, desc, top):
    if top is None:
        top = frame
    try:
        ev = _scope_event(frame, True, ts, out_raw, meta_raw, status, desc)
        copy, interrupted = _through_hook(ev, top)
        if copy is not None:
            ev = copy
        if _recording:
            _record(ev)
        if _enabled:
            _deliver(ev, top)
    finally:
        if frame._locals:
            _drop_locals(frame)
    if interrupted is not None:
        raise interrupted


def push(name, scope_type, *, handle=None, attributes=None, data=None, metadata=None,
         input=None, timestamp=None):
    """Open a scope on the current stack and make it current; returns its handle."""
    frame, input_raw = _open_checked(name, scope_type, handle, attributes, data, metadata,
                                     input, timestamp)
    _current.set(frame)
    _announce(frame, input_raw)
    return frame


def _check_poppable(handle):
    if handle._parent is None:
        raise InvalidArgumentError("invalid argument: root scope cannot be removed")
    if handle._closed:  # popped already, possibly in another task that shared this position
        raise NotFoundError("not found: scope handle not found")
    top = _current.get(None)
    if top is handle:
        return
    f = top._prev if top is not None else None
    while f is not None:
        if f is handle:
            raise InvalidArgumentError(
                "invalid argument: scope handle is not at the top of the stack")
        f = f._prev
    raise NotFoundError("not found: scope handle not found")


def pop(handle, *, output=None, metadata=None, timestamp=None):
    """Close the scope on top of the current stack (strict LIFO) and emit its end event."""
    if not isinstance(handle, ScopeHandle):
        raise TypeError(f"handle must be a ScopeHandle, not {type(handle).__name__}")
    _check_made(handle)
    out_raw = encode(output)
    meta_raw = encode(metadata)
    if timestamp is None:
        ts = _auto_end(handle)
    else:
        ts = timestamp_ns(timestamp)
    with _pop_lock:  # check and close in one step: one handle is never ended twice
        _check_poppable(handle)
        handle._closed = True
    _current.set(handle._prev)
    _end_encoded(handle, out_raw, meta_raw, ts, STATUS_NONE, None, None)


_pop_lock = threading.Lock()


def _check_schema(data_schema):
    if data_schema is None:
        return None
    if (not isinstance(data_schema, dict) or set(data_schema) != {"name", "version"}
            or not all(isinstance(v, str) for v in data_schema.values())):
        raise TypeError('data_schema must be {"name": str, "version": str} or None')
    return encode(data_schema)


def _with_severity(metadata, severity):
    if type(severity) is not LogSeverity:
        raise TypeError(f"severity must be a LogSeverity or None, not {type(severity).__name__}")
    if metadata is None:
        return {SEVERITY_KEY: severity.value}
    if not isinstance(metadata, dict):
        raise InvalidArgumentError("invalid argument: mark metadata must be a JSON object when "
                                   "severity is provided")
    return {**metadata, SEVERITY_KEY: severity.value}


def event(name, *, handle=None, data=None, metadata=None, data_schema=None, timestamp=None,
          category=None, category_profile=None, severity=None):
    """Emit a mark under ``handle`` (default: the current scope)."""
    name = _check_name(name)
    _check_parent(handle)
    if severity is not None:
        metadata = _with_severity(metadata, severity)
    if category is not None:
        if not isinstance(category, str):
            raise TypeError(f"category must be str or None, not {type(category).__name__}")
        category = _check_name(category)
    ts = now_ns() if timestamp is None else timestamp_ns(timestamp)
    data_raw = encode(data)
    meta_raw = encode(metadata)
    schema_raw = _check_schema(data_schema)
    profile_raw = encode(category_profile)
    top = current()
    if not _enabled and not _recording:
        return
    ev = object.__new__(MarkEvent)
    ev._uuid = _uuid7_str(ts)
    ev._parent = top if handle is None else handle
    ev._name = name
    ev._ts = ts
    ev._data = data_raw
    ev._meta = meta_raw
    ev._schema = schema_raw
    ev._category = category
    ev._profile = profile_raw
    ev._otel = _otel_parent_context() if (_otel_capture is not None
                                          and ev._parent._parent is None) else None
    interrupted = None
    if _event_hook is not None:
        copy, interrupted = _through_hook(ev, top)
        if copy is not None:
            ev = copy
    if _recording:  # written before any subscriber runs (and can raise)
        _record(ev)
    if _enabled:
        _deliver(ev, top)
    if interrupted is not None:
        raise interrupted


# =============================================================================================
# Section spans: Python-facing context managers and decorators.
# =============================================================================================

# --------------------------------------------------------------------------------------------
# Context managers: ``scope.scope(...)`` and the span behind ``nf.trace``.

def describe(exc) -> str:
    """The status description of an exception: ``str(exc)``, "cancelled" for a bare cancel."""
    text = _common.exception_text(exc)
    if _redactor is not None:
        text = _redact_text(text)
    return text


def _lenient(value):
    # A value from the traced program: never raises, whatever its str() does.
    try:
        return encode(value, True)
    except Exception:
        return None


def enabled() -> bool:
    """Whether anything consumes events now (when not, payload capture can be skipped)."""
    return _enabled or _recording


def _abandoned(frame):
    # Scopes pushed inside a block and still open when it exits would never get an end event:
    # they are ended (innermost first) with an ERROR status that says why.
    f = _current.get(None)
    if f is frame or f is None:
        return ()
    open_ = []
    while f is not None and f is not frame:
        if not f._closed:
            open_.append(f)
        f = f._prev
    if f is None:  # the block's scope is not on this stack: nothing of ours to close
        return ()
    return open_


class ScopeContext:
    """``with scope.scope(...) as handle``: push on enter, pop on exit (also on exceptions)."""

    __slots__ = ("_name", "_scope_type", "_parent", "_attrs", "_data", "_meta", "_input",
                 "_start_ts", "_end_ts", "_frame", "_token", "_active")

    def __init__(self, name, scope_type, *, handle=None, attributes=None, data=None,
                 metadata=None, input=None, timestamp=None, end_timestamp=None):
        self._setup(name, scope_type, handle, attributes, data, metadata, input, timestamp,
                    end_timestamp, False)

    def _setup(self, name, scope_type, handle, attributes, data, metadata, input, timestamp,
               end_timestamp, lenient):
        # Validate and encode everything before anything is emitted.
        name = _check_name(name)
        if type(scope_type) is not ScopeType:
            raise TypeError(f"scope_type must be a ScopeType, not {type(scope_type).__name__}")
        _check_parent(handle)
        self._name = name
        self._scope_type = scope_type
        self._parent = handle
        self._attrs = _attr_value(attributes)
        self._data = encode(data)
        self._meta = encode(metadata)
        self._input = _lenient(input) if lenient else encode(input)
        self._start_ts = None if timestamp is None else timestamp_ns(timestamp)
        self._end_ts = None if end_timestamp is None else timestamp_ns(end_timestamp)
        self._frame = None
        self._token = None
        self._active = False

    def _enter(self):
        if self._active:
            raise RuntimeError("this scope block is already in use; create one per with-statement")
        ts = now_ns() if self._start_ts is None else self._start_ts
        frame = _open(self._name, self._scope_type, self._parent, self._attrs, self._data,
                      self._meta, self._input, ts, KIND_SCOPE, None, ScopeHandle)
        self._frame = frame
        self._token = _current.set(frame)
        self._active = True
        try:
            _announce(frame, self._input)
        except BaseException as exc:
            # __exit__ will not run for a failed __enter__: end the scope here
            self._exit(exc, None)
            raise
        return frame

    def __enter__(self):
        return self._enter()

    def _exit(self, exc, output):
        frame = self._frame
        self._active = False
        abandoned = _abandoned(frame)
        token, self._token = self._token, None
        _unbind(token, frame)
        # Every end is written even if a subscriber interrupts one; the first error is raised.
        pending = None
        for f in abandoned:
            try:
                _end_encoded(f, None, None, _auto_end(f), STATUS_ERROR,
                             "abandoned: still open when its enclosing scope ended", None)
            except BaseException as e:
                if pending is None:
                    pending = e
        if not frame._closed:
            ts = self._end_ts if self._end_ts is not None else _auto_end(frame)
            try:
                if exc is None:
                    out = _lenient(output) if (_enabled or _recording) else None
                    _end_encoded(frame, out, None, ts, STATUS_OK, None, None)
                else:
                    _end_encoded(frame, None, None, ts, STATUS_ERROR, describe(exc), None)
            except BaseException as e:
                if pending is None:
                    pending = e
        if pending is not None:
            raise pending

    def __exit__(self, exc_type, exc, tb):
        self._exit(exc, None)
        return False


def scope(name, scope_type, *, handle=None, attributes=None, data=None, metadata=None,
          input=None, timestamp=None, end_timestamp=None):
    """``with scope.scope(...) as handle``: push on enter, pop on exit (also on exceptions)."""
    return ScopeContext(name, scope_type, handle=handle, attributes=attributes, data=data,
                        metadata=metadata, input=input, timestamp=timestamp,
                        end_timestamp=end_timestamp)


class Span(ScopeContext):
    """``with nf.trace(...) as span``: a scope whose output can be set while it is open.

    Made by ``nf.trace(...)``, it is also a decorator: ``@nf.trace("name", ...)``.
    """

    __slots__ = ("output", "_keep_output", "_decor_input", "_decorate")

    def __init__(self, name, scope_type=ScopeType.Function, *, attributes=None, metadata=None,
                 input=None, handle=None):
        self._setup(name, scope_type, handle, attributes, None, metadata, input, None, None,
                    True)
        self.output = None
        self._keep_output = True
        self._decor_input = None
        self._decorate = None

    def set_output(self, value) -> None:
        """Set what the end event records as this span's output."""
        self.output = value

    @property
    def handle(self):
        """The open scope's handle (None before enter)."""
        return self._frame

    def __enter__(self):
        if self._name is None:
            raise TypeError("nf.trace needs a name when used as a context manager")
        self._enter()
        return self

    def __exit__(self, exc_type, exc, tb):
        self._exit(exc, self.output if self._keep_output else None)
        return False

    def __call__(self, fn):
        """Decorate ``fn`` with this span's name and options."""
        if self._decorate is None:
            raise TypeError("this span is not a decorator; use nf.trace(...)")
        if self._decor_input is not None and not isinstance(self._decor_input, bool):
            raise TypeError("nf.trace input= must be True or False when decorating a function "
                            "(an input value is for `with nf.trace(...)` blocks)")
        meta = None if self._meta is None else Encoded(self._meta)
        return self._decorate(fn, self._name, self._scope_type, self._attrs, meta,
                              bool(self._decor_input), self._keep_output)

    def __repr__(self):
        return f"<nf.trace {self._name!r} {self._scope_type.name}>"


class Tracer:
    """``nf.trace`` for one scope type: ``@tracer``, ``@tracer("name", ...)``, ``with tracer(...)``.

    ``decorate(fn, name, scope_type, attributes, metadata, keep_input, keep_output)`` is the
    Pythonic module's function that wraps a callable.
    """

    __slots__ = ("_scope_type", "_decorate")

    def __init__(self, scope_type, decorate):
        if type(scope_type) is not ScopeType:
            raise TypeError(f"scope_type must be a ScopeType, not {type(scope_type).__name__}")
        self._scope_type = scope_type
        self._decorate = decorate

    @property
    def scope_type(self):
        return self._scope_type

    def __call__(self, target=None, *, name=None, input=True, output=True, metadata=None,
                 attributes=None):
        """Trace a function (``@trace``) or make a decorator / ``with`` block (``trace("x")``)."""
        if target is not None and not isinstance(target, str):
            if name is not None and not isinstance(name, str):
                raise TypeError(f"nf.trace name must be str, not {type(name).__name__}")
            if input is not None and not isinstance(input, bool):
                raise TypeError("nf.trace input= must be True or False when decorating a "
                                "function (an input value is for `with nf.trace(...)` blocks)")
            if not isinstance(output, bool):
                raise TypeError(
                    f"nf.trace output= must be True or False, not {type(output).__name__}")
            raw = encode(metadata)
            return self._decorate(target, name, self._scope_type, _attr_value(attributes),
                                  None if raw is None else Encoded(raw), bool(input), output)
        if target is not None:
            if name is not None:
                raise TypeError("nf.trace got the name twice (positionally and as name=)")
            name = target
        if name is not None and not isinstance(name, str):
            raise TypeError(f"nf.trace name must be str, not {type(name).__name__}")
        if not isinstance(output, bool):
            raise TypeError(f"nf.trace output= must be True or False, not {type(output).__name__}")
        span = object.__new__(Span)
        span._setup(name if name is not None else "", self._scope_type, None, attributes, None,
                    metadata, None if isinstance(input, bool) else input, None, None, True)
        if name is None:
            span._name = None
        span.output = None
        span._keep_output = output
        span._decor_input = input
        span._decorate = self._decorate
        return span

    def __repr__(self):
        return f"<nf.trace.{self._scope_type.name.lower()}>"


class InputCapture:
    """Records a call's arguments by parameter name: ``(args, kwargs) -> Encoded or None``."""

    __slots__ = ("_names", "_skip", "_receiver")

    def __init__(self, names, skip_receiver=False, receiver=None):
        if type(names) is not tuple:
            raise TypeError(f"names must be a tuple, not {type(names).__name__}")
        self._names = names
        self._skip = 1 if skip_receiver else 0
        self._receiver = receiver

    def _raw(self, args, kwargs):
        # The encoded arguments, or None when they cannot be encoded; never raises Exception.
        if self._skip:
            args = args[1:]
        if not args and not kwargs:
            return b"{}"
        names = self._names
        values = dict(zip(names, args))
        if len(args) > len(names):
            values["*args"] = list(args[len(names):])
        if kwargs:
            values.update(kwargs)
            if self._skip:
                values.pop(self._receiver, None)
        return _lenient(values)

    def __call__(self, args, kwargs):
        raw = self._raw(tuple(args), dict(kwargs) if kwargs else None)
        return None if raw is None else Encoded(raw)


class TracedFunction:
    """A traced sync function: one scope per call, input and output captured when consumed."""

    __slots__ = ("_fn", "_name", "_scope_type", "_attrs", "_meta", "_capture", "_keep_output",
                 "__dict__", "__weakref__")

    def __init__(self, fn, name, scope_type, attributes, metadata, capture, keep_output):
        name = _check_name(name)
        if type(scope_type) is not ScopeType:
            raise TypeError(f"scope_type must be a ScopeType, not {type(scope_type).__name__}")
        self._fn = fn
        self._name = name
        self._scope_type = scope_type
        self._attrs = int(attributes)
        self._meta = encode(metadata)
        self._capture = capture
        self._keep_output = bool(keep_output)

    def __call__(self, *args, **kwargs):
        inp = None
        if (_enabled or _recording) and self._capture is not None:
            if type(self._capture) is InputCapture:
                inp = self._capture._raw(args, kwargs)
            else:
                try:
                    inp = encode(self._capture(args, kwargs), True)
                except Exception:  # capture must not break the traced call
                    inp = None
        frame = _open(self._name, self._scope_type, None, self._attrs, None, self._meta, inp,
                      now_ns(), KIND_SCOPE, None, ScopeHandle)
        token = _current.set(frame)
        try:
            _announce(frame, inp)
            result = self._fn(*args, **kwargs)
        except BaseException as exc:
            _unbind(token, frame)
            _end_encoded(frame, None, None, _auto_end(frame), STATUS_ERROR,
                         describe(exc), None)
            raise
        _unbind(token, frame)
        keep = (_enabled or _recording) and self._keep_output
        _end_encoded(frame, _lenient(result) if keep else None, None, _auto_end(frame),
                     STATUS_OK, None, None)
        return result

    def __get__(self, obj, objtype=None):
        return self if obj is None else types.MethodType(self, obj)

    def __reduce__(self):
        return self.__qualname__  # pickled by reference, like the function it replaces

    def __repr__(self):
        return f"<traced function {getattr(self, '__qualname__', self._name)} at {id(self):#x}>"


# =============================================================================================
# Section lifecycle: configuration, diagnostics, exit and fork.
# =============================================================================================

# The compiled core's limit (2**20 records of 128 bytes: 128 MiB per recording thread).


def _exit_begin():
    """Start the exit clock (once): every wait from now on ends by the exit deadline."""
    global _exit_deadline
    if _exit_deadline is None:
        _exit_deadline = time.monotonic() + _exit_timeout
    return _exit_deadline


def _report_abandoned():
    # Once exit stopped waiting: count what it leaves behind and say so on stderr.
    global _abandoned_at_exit
    n = _pending() + _n_deferred
    if n > 0:
        _abandoned_at_exit += n
        _exit.report_abandoned(n, _exit_timeout)


def _at_child_exit():
    # The end of a multiprocessing child, which leaves through os._exit: atexit will not run.
    _exit_begin()
    if _delivery is not None and _delivery.pid == _pid:
        flush()
        _report_abandoned()


def set_otel_capture(hook, context_var=None) -> None:
    """Install (or with None remove) the callable a top-level scope or mark calls at its start
    for the OpenTelemetry parent context; used while ``otel_parent`` is "auto". With
    ``context_var`` (OpenTelemetry's context ContextVar), it is called only while that
    context is not empty."""
    global _otel_hook, _otel_capture, _otel_cv
    if hook is not None and not callable(hook):
        raise TypeError("hook must be callable or None")
    if context_var is not None and not isinstance(context_var, contextvars.ContextVar):
        raise TypeError("context_var must be a contextvars.ContextVar or None")
    _otel_cv = context_var
    _otel_hook = hook
    _otel_capture = hook if _otel_parent == "auto" else None


def configure(ring_size=None, overflow=None, exit_timeout=None, otel_parent=None,
              arena_size=None):
    """Pipeline settings: ``ring_size`` (records per thread, a power of two from 16 to 2**20,
    for rings made from now on), ``arena_size`` (payload bytes per thread, 4 KiB to 1 GiB, for
    rings made from now on), ``overflow`` ("block", the lossless default, or "drop"),
    ``exit_timeout`` (seconds exit waits for delivery, in all) and ``otel_parent`` ("auto":
    a top-level scope joins the current OpenTelemetry span while an OpenTelemetry exporter is
    attached; "off")."""
    global _drop_when_full, _exit_timeout, _otel_parent, _otel_capture
    # Every value is checked before any is applied: a refused call changes nothing.
    exit_timeout = _common.check_configure(ring_size, overflow, exit_timeout, otel_parent,
                                           arena_size)
    if exit_timeout is not None:
        _exit_timeout = exit_timeout
    if otel_parent is not None:
        _otel_parent = otel_parent
        _otel_capture = _otel_hook if otel_parent == "auto" else None
    if ring_size is not None:
        with _pipe_lock:
            _pipe["capacity"] = ring_size
    if arena_size is not None:
        with _pipe_lock:
            _pipe["arena_size"] = arena_size
    if overflow is not None:
        _drop_when_full = overflow == "drop"


def _before_fork():
    # Deliver what is buffered before forking, so the child neither loses nor repeats it.
    if _recording and _delivery is not None:
        flush(5.0)


def _after_fork_in_child():
    # Only the forking thread exists in the child: new locks, no rings of the parent's (the
    # parent delivers what they held), a delivery thread of our own before the next record.
    global _pid, _pipe_lock, _work, _progress, _delivery, _delivery_ident, _registry_lock
    global _exit_deadline
    _pid = os.getpid()
    _pipe_lock = threading.RLock()
    _work = threading.Condition(_pipe_lock)
    _progress = threading.Condition(_pipe_lock)
    _pipe.update(rings=[], flush_requests=0, wake=False, waiting=0, stopping=False)
    _delivery = None
    _delivery_ident = 0
    _exit_deadline = None  # the child's exit has a clock of its own
    _registry_lock = threading.RLock()
    for sub in _all_subscribers():
        sub._lock = threading.RLock()
    _forget_deferred()  # the parent's delivery thread makes those calls
    _exit.watch_children(_at_child_exit)


def _pipeline_stats():
    # Only references are taken under the lock; the dicts are built after it.
    with _pipe_lock:
        live = list(_pipe["rings"])
        p = dict(_pipe)
    rings = [{"thread": r.thread_ident, "capacity": r.capacity, "pending": r.head - r.delivered,
              "high_water": r.high_water, "dropped": r.dropped, "waits": r.waits,
              "closed": r.closed, "arena_size": r.arena_size, "arena_high": r.arena_high,
              "oversize": r.oversize} for r in live]
    return _common.pipeline_stats(
        recording=_recording, drop=_drop_when_full, ring_size=p["capacity"],
        arena_size=p["arena_size"], rings=rings, freed=p["freed"],
        dropped_freed=p["dropped_freed"], waits_freed=p["waits_freed"],
        high_freed=p["high_freed"], oversize_freed=p["oversize_freed"],
        arena_high_freed=p["arena_high_freed"], lost_no_memory=0, deferred=_n_deferred,
        exit_timeout=_exit_timeout, abandoned_at_detach=_abandoned_at_detach,
        abandoned_at_exit=_abandoned_at_exit)


def diagnostics() -> dict:
    """Counters of what the core delivered and what failed, per subscriber."""
    with _registry_lock:
        subs = {name: {"calls": s[0], "errors": s[1]} for name, s in _stats.items()
                if not name.startswith("exporter:")}
        exporters: dict[str, dict] = {}
        for c in _sinks + _consumers:
            if isinstance(c, Subscriber):
                continue
            name = getattr(c, "name", type(c).__name__)
            stats = dict(c.stats()) if hasattr(c, "stats") else {}
            st = _stats.get(f"exporter:{name}")
            if st is not None:
                stats["errors"] = stats.get("errors", 0) + st[1]
            exporters[name] = stats
        retired = {"subscribers": _retired[2], "calls": _retired[0], "errors": _retired[1]}
    return {"backend": BACKEND, "subscribers": subs, "retired_subscribers": retired,
            "exporters": exporters, "pipeline": _pipeline_stats(),
            "redaction": {"enabled": _redactor is not None, "failures": _redaction_failures}}


def _forget_registrations() -> None:
    """Forget subscribers, exporters, counters and registrations (tests, and at exit)."""
    global _subscribers, _n_local, _sinks, _consumers, _drop_when_full
    with _registry_lock:
        _subscribers = ()
        _n_local = 0
        _stats.clear()
        _retired[:] = [0, 0, 0]
        for entry in _scope_locals.values():
            f = entry[0]()
            if f is not None:
                f._locals = None
        _scope_locals.clear()
        _refresh_enabled()
    flush(_exit_timeout)
    with _registry_lock:
        _forget_deferred()
        _sinks = ()
        _consumers = ()
        _drop_when_full = False
        _refresh_recording()
    global _otel_hook, _otel_capture, _otel_parent, _otel_cv
    _otel_hook = _otel_capture = _otel_cv = None
    _otel_parent = "auto"


def _at_exit():
    # Deliver what is buffered, then let go of every callback and exporter: registries held
    # by this module are not cleared by interpreter teardown, and a callback's globals (an open
    # file of __main__, say) must be finalized normally. atexit handlers registered after
    # nemoflow was imported run before this one, so what they emit is still delivered.
    # All of it is bounded by the exit timeout, counted from the first exit hook of nemoflow
    # (exporters' hooks run before this one); what it gives up on is reported on stderr.
    _exit_begin()
    if _delivery is not None:
        shutdown(_exit_timeout)
        _report_abandoned()
    _forget_registrations()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
_exit.watch_children(_at_child_exit)
