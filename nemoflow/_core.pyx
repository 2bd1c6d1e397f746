# The compiled core of nemoflow. Same names and behaviour as ``_core_py.py`` (the pure-Python
# twin that the suite also runs and that a property test compares this module with); only the
# cost differs. Compiler directives live in setup.py (one place, debug build flag).
#
# Model: a scope is an immutable frame that points to its parent (``parent_uuid`` on the wire)
# and to the frame it was pushed over (restored on pop). The current frame of each thread and
# asyncio task lives in one ContextVar: a task starts under its creator's scope and its own
# pushes never touch another task's nesting.
#
# Free-threading notes: frames are immutable after construction except ``_closed``,
# ``_has_locals`` (changed under ``_registry_lock``) and ``_uuid_s`` (a benign idempotent cache).
# Global registries are tuples swapped under ``_registry_lock``. Subscriber locks are real
# locks, not the GIL.

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.mem cimport PyMem_RawFree, PyMem_RawMalloc, PyMem_RawRealloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.contextvars cimport (
    PyContextVar_Reset,
    PyContextVar_Set,
    get_value,
    get_value_no_default,
)
from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8, PyUnicode_FromObject
from libc.errno cimport EBADF
from libc.math cimport isfinite
from libc.string cimport memcpy
from cpython.exc cimport PyErr_CheckSignals

cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    void *PyUnicode_DATA(object o)
from libc.stdint cimport int64_t, uint64_t

import atexit
import contextvars
import datetime as _dt
import enum
import os
import sys
import threading
import time
import functools
import types
import warnings
import weakref

import orjson

from nemoflow import _exit

from nemoflow._types import (
    ATOF_VERSION,
    ATTRIBUTE_NAMES,
    CATEGORIES,
    AlreadyExistsError,
    InvalidArgumentError,
    LLMAttributes,
    NotFoundError,
    ScopeAttributes,
    ScopeType,
    ToolAttributes,
    attribute_names,
)

cdef extern from "pythread.h":
    ctypedef void *PyThread_type_lock
    PyThread_type_lock PyThread_allocate_lock()
    void PyThread_free_lock(PyThread_type_lock)
    int PyThread_acquire_lock(PyThread_type_lock, int) nogil
    int PyThread_acquire_lock_timed(PyThread_type_lock, long long, int) nogil
    void PyThread_release_lock(PyThread_type_lock) nogil
    unsigned long PyThread_get_thread_ident()
    int WAIT_LOCK
    int NOWAIT_LOCK

BACKEND = "cython"

KIND_SCOPE = 0
KIND_TOOL = 1
KIND_LLM = 2
STATUS_NONE = 0
STATUS_OK = 1
STATUS_ERROR = 2

cdef enum:
    _KIND_SCOPE = 0
    _STATUS_NONE = 0
    _STATUS_OK = 1
    _STATUS_ERROR = 2

cdef tuple _ATTR_CLASS = (ScopeAttributes, ToolAttributes, LLMAttributes)
cdef tuple _CATEGORIES = CATEGORIES
cdef object _ScopeType = ScopeType

nf_init_hex_pairs()
if nf_install_fork_handler() != 0:
    raise ImportError("nemoflow: could not install the fork handler")

# ---------------------------------------------------------------------------------------------
# JSON payloads: encoded once, at the call, to canonical bytes (sorted keys).

cdef object _dumps = orjson.dumps
cdef object _loads = orjson.loads
# Dataclasses and datetimes are not JSON values: route them to ``default`` so they are rejected
# (or stringified, in lenient mode) instead of being silently converted.
cdef object _JSON_OPTS = (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS
                          | orjson.OPT_PASSTHROUGH_DATETIME)
cdef object _SORT = orjson.OPT_SORT_KEYS


def _reject(obj):
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


def _stringify(obj):
    try:
        return _safe_text(str(obj))
    except Exception:
        return f"<unprintable {type(obj).__name__}>"


cdef str _safe_text(str text):
    # A lone surrogate (what os.listdir gives for a name that is not UTF-8) cannot be written
    # as UTF-8: keep the text, escape that character.
    if PyUnicode_IS_COMPACT_ASCII(text):
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


cdef object _Fragment = orjson.Fragment
cdef object _Enum = enum.Enum
cdef enum:
    _NON_FINITE = 1
    _FRAGMENT = 2


cdef inline int _leaf(object v, int want) noexcept:
    # -1: not a leaf (look inside); else what a leaf holds of ``want`` (0 for plain values).
    cdef type t = type(v)
    if t is str or t is int or t is bool or v is None:
        return 0
    if t is float:
        return 0 if isfinite(PyFloat_AS_DOUBLE(v)) else want & _NON_FINITE
    return -1


cdef int _scan(object obj, int want) except -1:
    # What orjson would write that is not the value given: NaN and +-Infinity (written as
    # null) and orjson.Fragment (its bytes written unchecked), anywhere orjson looks, an Enum's
    # value included. Returns the first of ``want`` found, or 0. Runs after orjson accepted
    # ``obj``, so its nesting is bounded by orjson's depth limit.
    cdef int found = _leaf(obj, want)
    cdef Py_ssize_t i
    if found >= 0:
        return found
    cdef Py_ssize_t pos = 0
    cdef PyObject *key
    cdef PyObject *value
    if isinstance(obj, dict):
        while PyDict_Next(obj, &pos, &key, &value):
            found = _leaf(<object>value, want)
            if found < 0:
                found = _scan(<object>value, want)
            if found:
                return found
        return 0
    # Items are read as orjson reads them, never through an overridden __iter__.
    if isinstance(obj, list):
        i = 0
        while i < PyList_GET_SIZE(obj):  # re-read: an Enum's value property may run code
            v = <object>PyList_GET_ITEM(obj, i)
            i += 1
            found = _leaf(v, want)
            if found < 0:
                found = _scan(v, want)
            if found:
                return found
        return 0
    if isinstance(obj, tuple):
        for i in range(PyTuple_GET_SIZE(obj)):
            v = <object>PyTuple_GET_ITEM(obj, i)
            found = _leaf(v, want)
            if found < 0:
                found = _scan(v, want)
            if found:
                return found
        return 0
    if isinstance(obj, float):
        return 0 if isfinite(<double>obj) else want & _NON_FINITE
    if type(obj) is _Fragment:
        return want & _FRAGMENT
    if isinstance(obj, _Enum):
        return _scan(obj.value, want)
    return 0


cdef object _scrub(object obj, int depth):
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
    if type(obj) is _Fragment:  # its text: dumps writes a Fragment's bytes as they are
        return _safe_text(_dumps(obj).decode("utf-8", "backslashreplace"))
    if isinstance(obj, _Enum):
        return _scrub(obj.value, depth + 1)
    return obj


cdef object _encode_lenient(object obj):
    # Never raises (an Exception): the value comes from the traced program.
    try:
        raw = _dumps(obj, default=_stringify, option=_JSON_OPTS)
        if not _scan(obj, _FRAGMENT):
            return raw
    except Exception:
        pass
    try:
        return _dumps(_scrub(obj, 0), default=_stringify, option=_JSON_OPTS)
    except Exception:
        pass
    try:
        return _dumps(_stringify(obj))
    except Exception:
        return b'"<unencodable value>"'


@cython.final
cdef class Encoded:
    """A payload already encoded to canonical JSON bytes (used by the Pythonic surface)."""

    def __init__(self, bytes raw):
        self.raw = raw


# Redaction (nemoflow/redaction.py): while it is on, every payload passes through it here,
# once, before it is encoded, so every consumer sees the same redacted value and nothing
# unredacted is stored. While it is off its whole cost is the `is not None` test in _encode.
cdef object _redactor = None
cdef long long _redaction_failures = 0
cdef str _REDACTION_FAILED = "[REDACTED:error]"


def set_redactor(redactor):
    """Pass every payload and error text through ``redactor`` from now on (None: off)."""
    global _redactor
    _redactor = redactor


cdef int _redaction_failed(exc) except -1:
    # Fail closed: the payload is replaced by a marker, never written unredacted.
    global _redaction_failures
    _redaction_failures += 1
    if _redaction_failures == 1:
        _warn_quietly(f"nemoflow: redaction raised {type(exc).__name__}: {exc}; the payload "
                      f"was replaced by {_REDACTION_FAILED!r} (further failures are only "
                      "counted in nemoflow.diagnostics())")
    return 0


cdef object _redact(object obj, bint lenient):
    try:
        return _redactor.apply(obj, lenient)
    except Exception as exc:
        _redaction_failed(exc)
        return _REDACTION_FAILED


cdef str _redact_text(str text):
    try:
        return _redactor.text(text)
    except Exception as exc:
        _redaction_failed(exc)
        return _REDACTION_FAILED


cdef object _encode(object obj, bint lenient):
    cdef bytes raw
    cdef int found
    if obj is None:
        return None
    if type(obj) is Encoded:
        return (<Encoded>obj).raw
    if _redactor is not None:
        obj = _redact(obj, lenient)
    if lenient:
        return _encode_lenient(obj)
    try:
        raw = _dumps(obj, default=_reject, option=_JSON_OPTS)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Failed to convert to JSON: {exc}") from None
    found = _scan(obj, _NON_FINITE | _FRAGMENT)
    if found == _NON_FINITE:
        raise ValueError("Failed to convert to JSON: NaN and Infinity are not JSON values")
    if found == _FRAGMENT:
        raise ValueError("Failed to convert to JSON: an orjson.Fragment would be written "
                         "unchecked; pass the decoded value")
    return raw


def encode(obj, lenient=False):
    """Canonical JSON bytes of ``obj``, or None for None; ValueError for non-JSON values.

    With ``lenient=True`` non-JSON values are written as their ``str()`` instead (used where the
    traced program, not the caller of an API, supplied the value).
    """
    return _encode(obj, lenient)


cdef inline object _decode(object raw):
    return None if raw is None else _loads(raw)


# ---------------------------------------------------------------------------------------------
# Clock, timestamps and ids.

def now_ns():
    """Nanoseconds since the epoch (CLOCK_REALTIME)."""
    return nf_now_ns()


cdef object _EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
cdef object _datetime = _dt.datetime


cdef int64_t _timestamp_ns(object ts) except? -1:
    if isinstance(ts, str):
        raise TypeError("timestamp must be a timezone-aware datetime, not str")
    if not isinstance(ts, _datetime):
        raise TypeError(f"timestamp must be a timezone-aware datetime, not {type(ts).__name__}")
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware (naive datetime given)")
    delta = ts - _EPOCH
    ns = (delta.days * 86400 + delta.seconds) * 1000000000 + delta.microseconds * 1000
    if not _MIN_NS <= ns <= _MAX_NS:
        raise ValueError(_RANGE_ERROR.format(ts))
    return <int64_t>ns


# Nanoseconds since the epoch are int64 on the wire and in records: 1677-09-21 to 2262-04-11.
cdef object _MIN_NS = -(1 << 63)
cdef object _MAX_NS = (1 << 63) - 1
cdef str _RANGE_ERROR = ("timestamp {} is outside the range nemoflow can write "
                         "(1677-09-21T00:12:43.145225+00:00 to 2262-04-11T23:47:16.854775+00:00)")


def timestamp_ns(ts):
    """Nanoseconds since the epoch of an explicit, timezone-aware ``datetime``."""
    return _timestamp_ns(ts)


cdef str _format_ts(int64_t ns):
    cdef char buf[40]
    cdef int n = nf_format_timestamp(ns, buf)
    return PyUnicode_DecodeASCII(buf, n, NULL)


def format_timestamp(int64_t ns):
    """RFC 3339 UTC with ``+00:00`` and 0, 3, 6 or 9 fractional digits as needed."""
    return _format_ts(ns)


cdef str _format_uuid(uint64_t hi, uint64_t lo):
    cdef char buf[36]
    nf_format_uuid(hi, lo, buf)
    return PyUnicode_DecodeASCII(buf, 36, NULL)


def uuid7():
    """A fresh UUIDv7 string (time-ordered, lowercase, hyphenated)."""
    cdef uint64_t hi, lo
    nf_uuid7(nf_now_ns(), &hi, &lo)
    return _format_uuid(hi, lo)


# ---------------------------------------------------------------------------------------------
# Frames (handles).

# Scope-local subscribers (whose callbacks may reference the frame) live in _scope_locals, not
# on the frame: frames stay acyclic and their teardown cheap.
@cython.trashcan(True)  # a long chain of frames must not recurse in dealloc
@cython.freelist(64)
cdef class ScopeHandle:
    """An open scope: read-only identity, parent link and the payloads given at push."""

    def __init__(self):
        raise TypeError("handles are created by nemoflow.scope.push / scope.scope")

    cdef str _uuid(self):
        if self._uuid_s is None:
            self._uuid_s = _format_uuid(self._hi, self._lo)
        return self._uuid_s

    @property
    def uuid(self):
        return self._uuid()

    @property
    def name(self):
        return self._name

    @property
    def scope_type(self):
        return self._scope_type

    @property
    def attributes(self):
        return _ATTR_CLASS[self._kind](self._attrs)

    @property
    def parent_uuid(self):
        return None if self._parent is None else self._parent._uuid()

    @property
    def data(self):
        return _decode(self._data)

    @property
    def metadata(self):
        return _decode(self._meta)

    def __repr__(self):
        return f"<{type(self).__name__} {self._name!r} {self._uuid()}>"


cdef ScopeHandle _new_frame(type cls, int kind, str name, object scope_type, int attrs,
                            ScopeHandle parent, ScopeHandle prev, object data, object meta,
                            object profile, int64_t start_ns):
    cdef ScopeHandle f
    if cls is ScopeHandle:
        f = ScopeHandle.__new__(ScopeHandle)  # direct tp_new, no Python-level call
    else:
        f = cls.__new__(cls)
    nf_uuid7(start_ns, &f._hi, &f._lo)
    f._name = name
    f._scope_type = scope_type
    f._attrs = attrs
    f._parent = parent
    f._prev = prev
    f._data = data
    f._meta = meta
    f._profile = profile
    f._start_ns = start_ns
    f._kind = kind
    f._category = <int>scope_type
    return f


cdef class ToolHandle(ScopeHandle):
    """An open tool call (a scope on the wire, never pushed on the stack)."""


cdef class LLMHandle(ScopeHandle):
    """An open LLM call (a scope on the wire, never pushed on the stack)."""


cdef object _AGENT = ScopeType.Agent


cdef ScopeHandle _new_root():
    return _new_frame(ScopeHandle, _KIND_SCOPE, "root", _AGENT, 0, None, None, None, None, None,
                      nf_now_ns())


def new_root():
    """A fresh implicit root: never emitted, cannot be popped, identifies one trace."""
    return _new_root()


def imported_frame(str uuid, str name, scope_type, prev):
    """A frame with a given uuid that is never emitted and cannot be popped.

    It stands for a scope of another process (a propagated root or parent). It has no logical
    parent, like an implicit root, so ``pop`` refuses it; ``prev`` (the frame below it on the
    stack) lets ``root_of`` reach the propagated root under a propagated parent.
    """
    if prev is not None and not isinstance(prev, ScopeHandle):
        raise TypeError(f"prev must be a ScopeHandle or None, not {type(prev).__name__}")
    _check_scope_type(scope_type)
    value = int(uuid.replace("-", ""), 16)
    cdef ScopeHandle f = _new_frame(ScopeHandle, _KIND_SCOPE, name, scope_type, 0, None,
                                    <ScopeHandle>prev, None, None, None, nf_now_ns())
    f._hi = <uint64_t>(value >> 64)
    f._lo = <uint64_t>(value & 0xFFFFFFFFFFFFFFFF)
    f._uuid_s = None
    return f


def is_closed(ScopeHandle frame):
    """Whether the scope of ``frame`` has ended."""
    return frame._closed


def stack(ScopeHandle frame):
    """The uuids of the open scopes on the stack ``frame`` is on, root first, ``frame`` last
    (the frames it was pushed over, as scope-local delivery walks them)."""
    cdef list out = []
    cdef ScopeHandle f = frame
    while f is not None:
        if not f._closed:
            out.append(f._uuid())
        f = f._prev
    out.reverse()
    return out


def open_frames(ScopeHandle frame):
    """The open frames of the stack ``frame`` is on, root first, ``frame`` last."""
    cdef list out = []
    cdef ScopeHandle f = frame
    while f is not None:
        if not f._closed:
            out.append(f)
        f = f._prev
    out.reverse()
    return out


def stack_anchor(ScopeHandle frame):
    """``(outermost, inner_agent, outer_agent)`` of the stack ``frame`` is on, root excluded:
    the open frame just above the root, and the two innermost open agent scopes (or None)."""
    cdef ScopeHandle f = frame
    cdef ScopeHandle above = None, inner = None, outer = None
    while f is not None and f._prev is not None:
        if not f._closed:
            if f._category == 0 and outer is None:  # ScopeType.Agent
                if inner is None:
                    inner = f
                else:
                    outer = f
            above = f
        f = f._prev
    return above, inner, outer


def root_of(ScopeHandle frame):
    """The implicit root of the trace ``frame`` belongs to."""
    while frame._parent is not None:
        frame = frame._parent
    if frame._prev is not None:  # an imported parent: the propagated root is below it
        frame = frame._prev
    return frame


# ---------------------------------------------------------------------------------------------
# Binding: the current frame of this thread / asyncio task.

cdef object _current = contextvars.ContextVar("nemoflow.current_scope")


cdef inline ScopeHandle _peek():
    return <ScopeHandle>get_value_no_default(_current, None)


cdef ScopeHandle _top():
    cdef ScopeHandle frame = _peek()
    if frame is None:
        frame = _new_root()
        PyContextVar_Set(_current, frame)
    return frame


def peek():
    """The frame bound in this context, or None when nothing was bound yet."""
    return _peek()


def current():
    """The frame bound in this context; binds a new implicit root on first use."""
    return _top()


def get_handle():
    """The top of the current stack (the implicit root when nothing is pushed)."""
    return _top()


def bind(frame):
    """Make ``frame`` current in this context; returns the token for ``unbind``."""
    if not isinstance(frame, ScopeHandle):
        raise TypeError(f"expected a ScopeHandle, got {type(frame).__name__}")
    _check_made(<ScopeHandle>frame)
    return PyContextVar_Set(_current, frame)


def unbind(token):
    """Undo the ``bind`` that returned ``token``."""
    PyContextVar_Reset(_current, token)


# ---------------------------------------------------------------------------------------------
# Events.

cdef object _merge_metadata(object start_raw, object end_raw, int status, object desc):
    if end_raw is None and status == _STATUS_NONE:
        return start_raw
    merged = _decode(start_raw)
    end = _decode(end_raw)
    if end is not None:
        if isinstance(merged, dict) and isinstance(end, dict):
            merged = {**merged, **end}
        else:
            merged = end
    if status != _STATUS_NONE:
        if merged is None:
            merged = {}
        if isinstance(merged, dict):
            merged = dict(merged)
            merged["otel.status_code"] = "OK" if status == _STATUS_OK else "ERROR"
            if status == _STATUS_ERROR:
                merged["otel.status_description"] = desc
    return _dumps(merged, option=_SORT)


cdef str _line(nf_record *r):
    # The one ATOF encoder (C), shared by to_json() and the exporters' lines.
    cdef nf_buf buf
    buf.data = NULL
    buf.len = 0
    buf.cap = 0
    try:
        if nf_encode(&buf, r) < 0:
            raise MemoryError()
        return PyUnicode_DecodeUTF8(buf.data, <Py_ssize_t>buf.len, NULL)
    finally:
        nf_buf_free(&buf)


cdef inline str _uuid_or_none(uint64_t hi, uint64_t lo):
    return None if hi == 0 and lo == 0 else _format_uuid(hi, lo)


@cython.freelist(128)
cdef class ScopeEvent:
    """The start or end of a scope, tool call or LLM call (ATOF ``kind: "scope"``)."""

    kind = "scope"
    atof_version = ATOF_VERSION
    data_schema = None

    @property
    def uuid(self):
        return _format_uuid(self._hi, self._lo)

    @property
    def parent_uuid(self):
        return _uuid_or_none(self._phi, self._plo)

    @property
    def timestamp(self):
        return _format_ts(self._ts)

    @property
    def timestamp_ns(self):
        return self._ts

    @property
    def name(self):
        return self._name

    @property
    def data(self):
        return _decode(self._data)

    cdef object _metadata_raw(self):
        if not self._is_end:
            return self._meta
        if self._meta_cache is None:
            self._meta_cache = (_merge_metadata(self._meta, self._end_meta, self._status,
                                                self._desc),)
        return self._meta_cache[0]

    @property
    def metadata(self):
        return _decode(self._metadata_raw())

    @property
    def scope_category(self):
        return "end" if self._is_end else "start"

    @property
    def attributes(self):
        return attribute_names(_ATTR_CLASS[self._kind], self._attrs)

    @property
    def category(self):
        return _CATEGORIES[self._category]

    @property
    def category_profile(self):
        return _decode(self._profile)

    @property
    def otel_parent(self):
        """The OpenTelemetry ``SpanContext`` current when this top-level scope started (start
        events, while an OpenTelemetry exporter asks for it), else None. Never in ATOF."""
        return self._otel

    def to_json(self):
        """The canonical ATOF line (without the newline), as the JSONL exporter writes it."""
        cdef nf_record r
        _record_of_scope_event(&r, self)
        merged = self._metadata_raw() if nf_needs_merge(&r) else None
        r.merged = NULL if merged is None else <void *>merged
        return _line(&r)

    def to_dict(self):
        """The event as a dict with every ATOF field (a fresh copy on every call)."""
        return _loads(self.to_json())

    def __repr__(self):
        return f"<ScopeEvent {self.scope_category} {self.name!r} {self.uuid}>"


cdef void _record_of_scope_event(nf_record *r, ScopeEvent ev) noexcept:
    # Borrowed pointers: for encoding while ev is alive.
    r.uuid_hi = ev._hi
    r.uuid_lo = ev._lo
    r.parent_hi = ev._phi
    r.parent_lo = ev._plo
    r.ts = ev._ts
    r.name = <void *>ev._name
    r.data = NULL if ev._data is None else <void *>ev._data
    r.meta = NULL if ev._meta is None else <void *>ev._meta
    r.extra = NULL if ev._end_meta is None else <void *>ev._end_meta
    r.text = NULL if ev._desc is None else <void *>ev._desc
    r.profile = NULL if ev._profile is None else <void *>ev._profile
    r.merged = NULL
    r.attrs = <unsigned int>ev._attrs
    r.type = NF_REC_END if ev._is_end else NF_REC_START
    r.kind = <unsigned char>ev._kind
    r.status = <unsigned char>ev._status
    r.category = <unsigned char>ev._category
    r.name_len = 0


cdef ScopeEvent _scope_event(ScopeHandle f, bint is_end, int64_t ts, object data,
                             object end_meta, int status, object desc):
    cdef ScopeEvent ev = ScopeEvent.__new__(ScopeEvent)
    ev._hi = f._hi
    ev._lo = f._lo
    if f._parent is not None:
        ev._phi = f._parent._hi
        ev._plo = f._parent._lo
    ev._name = f._name
    ev._attrs = f._attrs
    ev._kind = f._kind
    ev._category = f._category
    ev._meta = f._meta
    ev._profile = f._profile
    ev._is_end = is_end
    ev._ts = ts
    ev._data = data
    ev._end_meta = end_meta
    ev._status = status
    ev._desc = desc
    if not is_end:
        ev._otel = f._otel
    return ev


@cython.freelist(64)
cdef class MarkEvent:
    """A point-in-time event (ATOF ``kind: "mark"``)."""

    kind = "mark"
    atof_version = ATOF_VERSION

    @property
    def uuid(self):
        return _format_uuid(self._hi, self._lo)

    @property
    def parent_uuid(self):
        return _uuid_or_none(self._phi, self._plo)

    @property
    def timestamp(self):
        return _format_ts(self._ts)

    @property
    def timestamp_ns(self):
        return self._ts

    @property
    def name(self):
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

    def to_json(self):
        """The canonical ATOF line (without the newline), as the JSONL exporter writes it."""
        cdef nf_record r
        r.uuid_hi = self._hi
        r.uuid_lo = self._lo
        r.parent_hi = self._phi
        r.parent_lo = self._plo
        r.ts = self._ts
        r.name = <void *>self._name
        r.data = NULL if self._data is None else <void *>self._data
        r.meta = NULL if self._meta is None else <void *>self._meta
        r.extra = NULL if self._schema is None else <void *>self._schema
        r.text = NULL if self._category is None else <void *>self._category
        r.profile = NULL if self._profile is None else <void *>self._profile
        r.merged = NULL
        r.attrs = 0
        r.type = NF_REC_MARK
        r.kind = 0
        r.status = 0
        r.category = 0
        r.name_len = 0
        return _line(&r)

    def to_dict(self):
        """The event as a dict with every ATOF field (a fresh copy on every call)."""
        return _loads(self.to_json())

    def __repr__(self):
        return f"<MarkEvent {self._name!r} {self.uuid}>"


# ---------------------------------------------------------------------------------------------
# Subscribers. Registries are immutable tuples swapped under a lock; the emit path reads them
# without locking. Each subscriber has its own lock so it is never entered concurrently.

cdef object _registry_lock = threading.RLock()
cdef tuple _subscribers = ()     # global, in registration order
cdef Py_ssize_t _n_local = 0     # live scope-local registrations across all frames
cdef bint _enabled = False       # anything at all to deliver to?
cdef dict _stats = {}            # subscriber name -> _Stat
cdef _Stat _retired = _Stat()    # counts of subscribers whose own entry was folded away
cdef long long _n_retired = 0
cdef Py_ssize_t _STATS_KEPT = 1024
# id(frame) -> [weakref to the frame, tuple of scope-local Subscribers]. Weak: a scope that can
# no longer be popped (nothing references its frame) takes its registrations with it.
cdef dict _scope_locals = {}


def _locals_gone(key, ref=None):
    # weakref callback: the frame of an unpopped scope with scope-local subscribers is gone
    global _n_local
    with _registry_lock:
        entry = _scope_locals.pop(key, None)
        if entry is not None and entry[0] is ref:
            _n_local -= len(entry[1])
            _refresh_enabled()
        elif entry is not None:
            _scope_locals[key] = entry


@cython.final
cdef class _Stat:
    pass


cdef _Stat _stat_for(str name):
    # With _registry_lock held. Counters stay by name after a subscriber is gone (a name
    # registered again counts on); past _STATS_KEPT names, the oldest ones no subscriber uses
    # any more are folded into one "retired" entry, so subscribers registered under ever-new
    # names cannot grow this dict without bound.
    cdef _Stat st = _stats.get(name)
    if st is None:
        if len(_stats) >= _STATS_KEPT:
            _retire_stats()
        st = _Stat()
        _stats[name] = st
    return st


cdef int _retire_stats() except -1:
    global _n_retired
    cdef _Stat st
    for name, stat in list(_stats.items()):
        if len(_stats) < _STATS_KEPT // 2:
            break
        st = <_Stat>stat
        if st.live == 0 and not name.startswith("exporter:"):
            _retired.calls += st.calls
            _retired.errors += st.errors
            _n_retired += 1
            del _stats[name]
    return 0


@cython.final
cdef class Subscriber:
    """A registered callback with its own lock and error accounting."""

    def __cinit__(self):
        self._lock = PyThread_allocate_lock()
        if self._lock == NULL:
            raise MemoryError()

    def __init__(self, name, callback):
        if not isinstance(name, str):
            raise TypeError(f"subscriber name must be str, not {type(name).__name__}")
        if not callable(callback):
            raise TypeError("subscriber callback must be callable")
        self.name = name
        self.callback = callback
        with _registry_lock:
            self._stat = _stat_for(name)
            self._stat.live += 1

    def __dealloc__(self):
        if self._stat is not None:
            self._stat.live -= 1  # GIL held: no lock needed (see DESIGN's free-threading notes)
        if self._lock != NULL:
            PyThread_free_lock(self._lock)

    def _reinit_after_fork(self):
        # In a forked child only the forking thread exists: a lock another thread held at
        # fork() would never be released.
        self._lock = PyThread_allocate_lock()
        if self._lock == NULL:
            raise MemoryError()
        self._owner = 0
        self._depth = 0
        self._deferred = None

    cdef object deliver(self, object event):
        # None, or a BaseException that is not an Exception (KeyboardInterrupt, SystemExit)
        # raised by the callback on a traced thread: _deliver re-raises it once every other
        # subscriber had the event.
        cdef unsigned long me = PyThread_get_thread_ident()
        cdef object failure = None
        # Re-entrant: a subscriber that emits an event from its callback on the same thread
        # does not deadlock. ``_owner`` is only ever equal to ``me`` if this thread set it.
        if nf_load_relaxed(&self._owner) == me:
            self._depth += 1
        else:
            if not PyThread_acquire_lock(self._lock, NOWAIT_LOCK):
                if me == _delivery_ident:
                    if not _acquire_on_delivery(self._lock):
                        _defer(self, event)
                        return None
                else:
                    with nogil:
                        PyThread_acquire_lock(self._lock, WAIT_LOCK)
            nf_store_relaxed(&self._owner, me)
            self._depth = 1
        try:
            if self._deferred is not None and me == _delivery_ident:
                _drain_deferred(self)
            failure = self._call(event)
        finally:
            self._depth -= 1
            if self._depth == 0:
                nf_store_relaxed(&self._owner, 0)
                PyThread_release_lock(self._lock)
        return failure

    cdef object _call(self, object event):
        self._stat.calls += 1
        try:
            self.callback(event)
        except BaseException as exc:  # isolate: the emitter and other subscribers go on
            self._stat.errors += 1
            if not self._warned:
                self._warned = True
                _warn_quietly(
                    f"nemoflow: subscriber {self.name!r} raised {type(exc).__name__}: "
                    f"{_describe(exc)}; further errors are counted in "
                    "nemoflow.diagnostics()")
            if not isinstance(exc, Exception) and PyThread_get_thread_ident() != _delivery_ident:
                return exc
        return None


# Calls the delivery thread could not make because the subscriber's lock was held while
# another thread waited on the delivery thread (for ring room or a flush): waiting for that lock
# would close a cycle. They are made later, in order, from the delivery thread. Touched by the
# delivery thread only.
cdef list _deferred_subs = []
cdef Py_ssize_t _n_deferred = 0
cdef enum:
    _SLICE_US = 50000              # waits wake this often: signals, and cycles to give way to
cdef int64_t _SLICE_NS = 50000000


cdef bint _acquire_on_delivery(PyThread_type_lock lock) except -1:
    # The delivery thread waits for a subscriber's lock only while nobody waits on it.
    cdef int got = 0
    while True:
        if nf_pipe_someone_waits():
            return False
        with nogil:
            got = PyThread_acquire_lock_timed(lock, _SLICE_US, 0)
        if got == 1:
            return True


cdef int _defer(Subscriber sub, object event) except -1:
    global _n_deferred
    if sub._deferred is None:
        sub._deferred = []
        _deferred_subs.append(sub)
    sub._deferred.append(event)
    _n_deferred += 1
    return 0


cdef int _drain_deferred(Subscriber sub) except -1:
    # With the subscriber's lock held, on the delivery thread: the deferred calls come first.
    global _n_deferred
    pending = sub._deferred
    sub._deferred = None
    try:
        _deferred_subs.remove(sub)
    except ValueError:
        pass
    for ev in pending:
        _n_deferred -= 1
        sub._call(ev)
    return 0


cdef int _retry_deferred() except -1:
    cdef Subscriber sub
    cdef unsigned long me = PyThread_get_thread_ident()
    for s in list(_deferred_subs):
        sub = <Subscriber>s
        if sub._deferred is None:
            continue
        if not PyThread_acquire_lock(sub._lock, NOWAIT_LOCK):
            if not _acquire_on_delivery(sub._lock):
                continue
        nf_store_relaxed(&sub._owner, me)
        sub._depth = 1
        try:
            _drain_deferred(sub)
        finally:
            sub._depth = 0
            nf_store_relaxed(&sub._owner, 0)
            PyThread_release_lock(sub._lock)
    return 0


cdef int _forget_deferred() except -1:
    global _n_deferred, _deferred_subs
    for s in _deferred_subs:
        (<Subscriber>s)._deferred = None
    _deferred_subs = []
    _n_deferred = 0
    return 0


def _warn_quietly(text):
    # Under warnings.simplefilter("error") (pytest -W error) warn() raises: that must not
    # reach the traced code, which did nothing wrong. The text goes to stderr instead; the
    # failure itself is counted in diagnostics() either way.
    try:
        warnings.warn(text, RuntimeWarning, stacklevel=3)
    except Exception:
        try:
            sys.stderr.write(f"{text}\n")
        except Exception:
            pass


cdef list _all_subscribers():
    subs = list(_subscribers)
    subs.extend([c for c in _consumers if isinstance(c, Subscriber)])
    for entry in _scope_locals.values():
        subs.extend(entry[1])
    return subs


cdef inline void _refresh_enabled() noexcept:
    global _enabled
    _enabled = len(_subscribers) > 0 or _n_local > 0


def set_subscribers(subs):
    """Replace the global subscriber tuple (the registry module owns names and order)."""
    global _subscribers
    cdef tuple t = tuple(subs)
    for s in t:
        if not isinstance(s, Subscriber):
            raise TypeError("expected Subscriber objects")
    with _registry_lock:
        _subscribers = t
        _refresh_enabled()


cdef int _check_active(frame) except -1:
    if not isinstance(frame, ScopeHandle):
        raise TypeError(f"expected a ScopeHandle, got {type(frame).__name__}")
    _check_made(<ScopeHandle>frame)
    if (<ScopeHandle>frame)._closed:
        raise NotFoundError(f"not found: scope {(<ScopeHandle>frame)._uuid()} not found")
    return 0


def local_register(frame, name, callback):
    """Attach a scope-local subscriber to an open scope."""
    global _n_local
    _check_active(frame)
    cdef ScopeHandle f = <ScopeHandle>frame
    cdef Subscriber sub = Subscriber(name, callback)
    with _registry_lock:
        if f._closed:
            raise NotFoundError(f"not found: scope {f._uuid()} not found")
        key = id(f)
        entry = _scope_locals.get(key)
        if entry is None:
            entry = [weakref.ref(f, functools.partial(_locals_gone, key)), ()]
            _scope_locals[key] = entry
        for s in entry[1]:
            if (<Subscriber>s).name == name:
                raise AlreadyExistsError(f"already exists: {name} subscriber already exists")
        entry[1] = entry[1] + (sub,)
        f._has_locals = True
        _n_local += 1
        _refresh_enabled()


def local_deregister(frame, name):
    """Detach a scope-local subscriber; False when no such name is attached."""
    global _n_local
    _check_active(frame)
    cdef ScopeHandle f = <ScopeHandle>frame
    with _registry_lock:
        entry = _scope_locals.get(id(f))
        locals_ = () if entry is None else entry[1]
        kept = tuple([s for s in locals_ if (<Subscriber>s).name != name])
        if len(kept) == len(locals_):
            return False
        if kept:
            entry[1] = kept
        else:
            del _scope_locals[id(f)]
            f._has_locals = False
        _n_local -= 1
        _refresh_enabled()
        return True


cdef int _drop_locals(ScopeHandle frame) except -1:
    global _n_local
    with _registry_lock:
        entry = _scope_locals.pop(id(frame), None)
        frame._has_locals = False
        if entry is not None and entry[1]:
            _n_local -= len(<tuple>entry[1])
            _refresh_enabled()
    return 0


cdef int _deliver(object event, ScopeHandle top) except -1:
    cdef Subscriber sub
    cdef ScopeHandle f
    cdef list chain
    cdef Py_ssize_t i
    cdef object failure = None, first = None
    for s in _subscribers:
        failure = (<Subscriber>s).deliver(event)
        if failure is not None and first is None:
            first = failure
    if _n_local:
        chain = []
        f = top
        while f is not None:
            if f._has_locals:
                entry = _scope_locals.get(id(f))
                if entry is not None and entry[1]:
                    chain.append(entry[1])
            f = f._prev
        for i in range(len(chain) - 1, -1, -1):
            for s in <tuple>chain[i]:
                failure = (<Subscriber>s).deliver(event)
                if failure is not None and first is None:
                    first = failure
    if first is not None:
        raise first
    return 0


# ---------------------------------------------------------------------------------------------
# The pipeline: exporters and buffered subscribers are fed from per-thread rings of C records
# by one delivery thread, never on the traced thread. Nothing attached: nothing is recorded.

cdef bint _recording = False       # any sink or buffered consumer attached
# OpenTelemetry parent capture (the SDK bridge): while an OpenTelemetry exporter is attached
# and configure(otel_parent="auto"), a top-level scope or mark calls _otel_capture() once at
# its start; otherwise the hot path pays one global test. The context travels in the record's
# `merged` slot, which start and mark records do not otherwise use.
cdef object _otel_hook = None      # set by set_otel_capture
cdef str _otel_parent = "auto"
cdef object _otel_capture = None   # _otel_hook when _otel_parent is "auto"
cdef object _otel_cv = None        # OpenTelemetry's context ContextVar: empty means no span


cdef inline object _otel_parent_context():
    # The hook runs only when OpenTelemetry's current context holds something: an empty
    # context (no span attached) costs a ContextVar read, not a Python call.
    if _otel_cv is not None and not get_value(_otel_cv, None):
        return None
    return _otel_capture()
cdef bint _drop_when_full = False  # overflow="drop": count instead of waiting for room
cdef bint _need_thread = False     # the delivery thread must be (re)started before recording
cdef tuple _sinks = ()             # LineSink: lines encoded in C, written without the GIL
cdef tuple _consumers = ()         # buffered Subscribers and Python exporters (export(batch))
cdef object _delivery = None       # the delivery threading.Thread
cdef unsigned long _delivery_ident = 0
cdef long long _lost_no_memory = 0
cdef int64_t _TICK_NS = 20000000   # idle delivery interval: 20 ms
cdef int _n_consumers = 0        # len(_consumers), readable without the GIL
cdef double _exit_timeout = _exit.timeout_from_env()  # the whole of exit waits at most this
cdef object _exit_deadline = None  # time.monotonic() by which exit stops waiting, once exiting
cdef long long _abandoned_at_exit = 0
cdef long long _abandoned_at_detach = 0
cdef enum:
    _BATCH = 4096
    _PENDING_REFS = 65536

if nf_pipe_init() != 0:
    raise ImportError("nemoflow: could not initialise the event pipeline")


cdef inline void *_own(object o):
    if o is None:
        return NULL
    Py_INCREF(o)
    return <void *>o


cdef inline object _borrow(void *p):
    return None if p == NULL else <object>p


cdef inline void _set_name(nf_record *r, str name) noexcept:
    # Short ASCII names are copied into the record: no reference for the consumer to release.
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(name)
    if PyUnicode_IS_COMPACT_ASCII(name) and n <= NF_NAME_INLINE:
        memcpy(r.name_inline, PyUnicode_DATA(name), <size_t>n)
        r.name_len = <unsigned char>n
        r.name = NULL
    else:
        Py_INCREF(name)
        r.name = <void *>name
        r.name_len = 0


cdef nf_ring *_ring_with_room() except? NULL:
    # This thread's ring once it has room for one record; NULL when the record is dropped.
    global _lost_no_memory
    if _need_thread:
        _start_delivery()
    cdef nf_ring *ring = nf_ring_get()
    if ring == NULL:
        _lost_no_memory += 1
        return NULL
    if nf_ring_full(ring):
        # The delivery thread cannot wait for itself: its own ring grows instead, and past
        # that limit an event emitted by one of its consumers is dropped (and counted).
        if PyThread_get_thread_ident() == _delivery_ident:
            if nf_ring_grow(ring) == 0:
                return ring
            ring.dropped += 1
            return NULL
        if _drop_when_full:
            ring.dropped += 1
            return NULL
        _wait_for_room(ring)
    return ring


cdef int _wait_for_room(nf_ring *ring) except -1:
    # In slices, running signal handlers in between: Ctrl-C raises here promptly. The record
    # that was waiting is then lost, and counted as dropped.
    cdef int room = 0
    nf_ring_wait_begin(ring)
    try:
        while True:
            with nogil:
                room = nf_ring_wait_slice(ring, _SLICE_NS)
            if room:
                return 0
            try:
                PyErr_CheckSignals()
            except BaseException:
                ring.dropped += 1
                raise
    finally:
        nf_ring_wait_end()


cdef int _record_scope(int rtype, ScopeHandle frame, int64_t ts, object data, object extra,
                       int status, object text) except -1:
    cdef nf_ring *ring = _ring_with_room()
    if ring == NULL:
        return 0
    cdef nf_record r
    r.uuid_hi = frame._hi
    r.uuid_lo = frame._lo
    if frame._parent is not None:
        r.parent_hi = frame._parent._hi
        r.parent_lo = frame._parent._lo
    else:
        r.parent_hi = 0
        r.parent_lo = 0
    r.ts = ts
    _set_name(&r, frame._name)
    r.data = _own(data)
    r.meta = _own(frame._meta)
    r.extra = _own(extra)
    r.text = _own(text)
    r.profile = _own(frame._profile)
    r.merged = _own(frame._otel) if rtype == NF_REC_START else NULL
    r.attrs = <unsigned int>frame._attrs
    r.type = <unsigned char>rtype
    r.kind = <unsigned char>frame._kind
    r.status = <unsigned char>status
    r.category = <unsigned char>frame._category
    nf_ring_publish(ring, &r)
    return 0


cdef int _record_mark(uint64_t hi, uint64_t lo, ScopeHandle parent, str name, int64_t ts,
                      object data, object meta, object schema, object category,
                      object profile, object otel) except -1:
    cdef nf_ring *ring = _ring_with_room()
    if ring == NULL:
        return 0
    cdef nf_record r
    r.uuid_hi = hi
    r.uuid_lo = lo
    r.parent_hi = parent._hi
    r.parent_lo = parent._lo
    r.ts = ts
    _set_name(&r, name)
    r.data = _own(data)
    r.meta = _own(meta)
    r.extra = _own(schema)
    r.text = _own(category)
    r.profile = _own(profile)
    r.merged = _own(otel)
    r.attrs = 0
    r.type = NF_REC_MARK
    r.kind = 0
    r.status = 0
    r.category = 0
    nf_ring_publish(ring, &r)
    return 0


cdef str _record_name(nf_record *r):
    if r.name != NULL:
        return <str><object>r.name
    return PyUnicode_DecodeASCII(r.name_inline, r.name_len, NULL)


cdef object _event_from(nf_record *r):
    cdef ScopeEvent sev
    cdef MarkEvent mev
    if r.type == NF_REC_MARK:
        mev = MarkEvent.__new__(MarkEvent)
        mev._hi = r.uuid_hi
        mev._lo = r.uuid_lo
        mev._phi = r.parent_hi
        mev._plo = r.parent_lo
        mev._name = _record_name(r)
        mev._ts = r.ts
        mev._data = _borrow(r.data)
        mev._meta = _borrow(r.meta)
        mev._schema = _borrow(r.extra)
        mev._category = _borrow(r.text)
        mev._profile = _borrow(r.profile)
        mev._otel = _borrow(r.merged)
        return mev
    sev = ScopeEvent.__new__(ScopeEvent)
    sev._hi = r.uuid_hi
    sev._lo = r.uuid_lo
    sev._phi = r.parent_hi
    sev._plo = r.parent_lo
    sev._name = _record_name(r)
    sev._attrs = r.attrs
    sev._kind = r.kind
    sev._category = r.category
    sev._meta = _borrow(r.meta)
    sev._profile = _borrow(r.profile)
    sev._is_end = r.type == NF_REC_END
    sev._ts = r.ts
    sev._data = _borrow(r.data)
    sev._end_meta = _borrow(r.extra)
    sev._status = r.status
    sev._desc = _borrow(r.text)
    if r.type == NF_REC_START:
        sev._otel = _borrow(r.merged)
    return sev


@cython.final
cdef class LineSink:
    """A file descriptor the delivery thread writes ATOF lines to, without the GIL.

    ``reopen(rotate)`` (called with the GIL when ``max_bytes`` would be exceeded, or when the
    sink holds no file) returns a new descriptor after the sink closed its own; with ``rotate``
    the current file goes to the backups first. A sink whose file could not be (re)opened, or
    was closed, holds fd -1 and never writes or closes a descriptor it no longer owns: what
    reaches it is counted as lost. Write errors are counted, kept for ``raise_error()``, and
    never raised into traced code.
    """

    def __cinit__(self, str name, int fd, long long max_bytes=0, rotate=None,
                  long long bytes_in_file=0):
        self._k = nf_sink_new(fd)
        if self._k == NULL:
            raise MemoryError()

    def __init__(self, str name, int fd, long long max_bytes=0, rotate=None,
                 long long bytes_in_file=0):
        self.name = name
        self._k.max_bytes = max_bytes
        self._k.bytes_in_file = bytes_in_file
        self._rotate = rotate

    def __dealloc__(self):
        if self._k != NULL:
            nf_sink_release(self._k)

    @property
    def fd(self):
        return self._k.fd

    @property
    def events(self):
        return self._k.events

    @property
    def bytes(self):
        return self._k.bytes

    @property
    def errors(self):
        return self._k.errors

    def raise_error(self):
        """Raise the last write error (OSError) and forget it; nothing when there was none."""
        err, self._k.err = self._k.err, 0
        if err:
            raise OSError(err, f"nemoflow: writing {self.name} failed: {os.strerror(err)}")

    def stats(self):
        return {"events": self._k.events, "bytes": self._k.bytes, "errors": self._k.errors,
                "lost": self._k.lost, "lost_bytes": self._k.lost_bytes}

    def close(self):
        """Close the file for good: later batches are counted as lost."""
        self._rotate = None
        fd, self._k.fd = self._k.fd, -1
        self._k.open_err = EBADF
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def _set_fd(self, int fd, long long bytes_in_file):
        # Only while nothing is delivered (a forked child before its delivery thread starts).
        old, self._k.fd = self._k.fd, fd
        self._k.bytes_in_file = bytes_in_file
        self._k.open_err = 0
        self._k.torn = 0
        if old >= 0:
            try:
                os.close(old)
            except OSError:
                pass

    def _report(self, exc=None):
        # With the GIL, after a failed write or reopen: warn once.
        if exc is not None:
            self._k.err = getattr(exc, "errno", None) or 5
        self._k.failures_unreported = 0
        if not self._reported:
            self._reported = True
            _warn_quietly(f"nemoflow: exporter {self.name!r} could not write: "
                          f"{exc if exc is not None else os.strerror(self._k.err)}; further "
                          "errors are counted in nemoflow.diagnostics()")

    def _reopen_now(self, rotate=False):
        # The old descriptor is closed and forgotten first: if no new file can be opened the
        # sink holds -1, never a number the application may get from its next open().
        fd, self._k.fd = self._k.fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
        if self._rotate is None:
            self._k.open_err = EBADF
            return
        try:
            fd = self._rotate(rotate)
        except Exception as exc:
            self._k.open_err = getattr(exc, "errno", None) or 5
            self._report(exc)
            return
        try:
            self._k.bytes_in_file = os.fstat(fd).st_size
        except OSError:
            self._k.bytes_in_file = 0
        self._k.fd = fd
        self._k.open_err = 0
        self._k.torn = 0

    def _rotate_now(self):
        self._reopen_now(True)


cdef object _sink_objects = {}     # nf_sink address -> LineSink, for rotation and reports


cdef void _write_sinks(nf_sink **sinks, int n_sinks, const char *data, size_t length,
                       int64_t n_events) noexcept nogil:
    cdef int i, err, torn
    cdef size_t whole
    cdef int64_t lines
    cdef nf_sink *k
    for i in range(n_sinks):
        k = sinks[i]
        if k.max_bytes and k.bytes_in_file and k.bytes_in_file + <int64_t>length > k.max_bytes:
            with gil:
                _sink_call(k, "_rotate_now")
        elif k.fd < 0:
            with gil:
                _sink_call(k, "_reopen_now")
        whole = 0
        torn = 0
        if k.fd < 0:
            err = k.open_err if k.open_err else EBADF
        else:
            err = 0
            if k.torn:
                # a line cut earlier could not be taken back: end it, so this batch's first
                # line starts on a line of its own
                err = nf_write_lines(k.fd, "\n", 1, &whole, &torn)
                if not err:
                    k.torn = 0
                    k.bytes_in_file += 1
                whole = 0
            if not err:
                err = nf_write_lines(k.fd, data, length, &whole, &torn)
        lines = n_events if whole == length else nf_count_lines(data, whole)
        k.events += lines
        k.bytes += <int64_t>whole
        k.bytes_in_file += <int64_t>whole
        if not err:
            continue
        if torn:
            k.torn = 1
        if err == EBADF and k.fd >= 0:
            # closed behind our back: the number may already be someone else's file
            k.fd = -1
            k.open_err = EBADF
        k.errors += 1
        k.err = err
        k.lost += n_events - lines
        k.lost_bytes += <int64_t>(length - whole)
        if not k.failures_unreported:
            k.failures_unreported = 1
            with gil:
                _sink_call(k, "_report")


cdef void _sink_call(nf_sink *k, str method) noexcept:
    try:
        sink = _sink_objects.get(<size_t>k)
        if sink is not None:
            getattr(sink, method)()
    except BaseException:
        pass


cdef int _consume(object consumer, list events) except -1:
    cdef Subscriber sub
    if isinstance(consumer, Subscriber):
        sub = <Subscriber>consumer
        for ev in events:
            sub.deliver(ev)
        return 0
    try:
        consumer.export(list(events))  # its own list: one exporter cannot change another's
    except BaseException as exc:  # SystemExit too: the other consumers still get the batch
        consumer_failed(consumer, exc)
    return 0


def consumer_failed(consumer, exc):
    """Count (and report once) an exporter's failure; never raised into traced code."""
    name = getattr(consumer, "name", type(consumer).__name__)
    cdef _Stat st
    with _registry_lock:
        st = _stat_for(f"exporter:{name}")
    st.errors += 1
    if st.errors == 1:
        _warn_quietly(f"nemoflow: exporter {name!r} raised {type(exc).__name__}: {exc}; "
                      "further errors are counted in nemoflow.diagnostics()")


cdef int _python_phase(nf_record *batch, Py_ssize_t n) except -1:
    # With the GIL: events for the Python consumers (buffered subscribers, exporters).
    cdef tuple consumers = _consumers
    cdef Py_ssize_t i
    if not consumers:
        return 0
    events = [_event_from(&batch[i]) for i in range(n)]
    for consumer in consumers:
        _consume(consumer, events)
    return 0


cdef int _merge_phase(nf_record *batch, Py_ssize_t n) except -1:
    # With the GIL: end metadata that is a JSON merge, not just a status.
    cdef Py_ssize_t i
    cdef nf_record *r
    for i in range(n):
        r = &batch[i]
        if nf_needs_merge(r) and r.merged == NULL:
            r.merged = _own(_merge_metadata(_borrow(r.meta), _borrow(r.extra), r.status,
                                            _borrow(r.text)))
    return 0


cdef int _retry_phase(nf_record *batch, Py_ssize_t n) except -1:
    return _retry_deferred()


cdef int _release_refs(void **refs, Py_ssize_t n) except -1:
    cdef Py_ssize_t i
    for i in range(n):
        Py_XDECREF(<PyObject *>refs[i])
    return 0


def _delivery_main():
    """The delivery thread: drain every ring in batches, write sinks, feed consumers.

    Encoding and writing run without the GIL. The GIL is taken only when the batch needs
    Python: consumers to call, metadata to merge, references to release (batched), a file to
    rotate or a failure to report.
    """
    global _delivery_ident
    _delivery_ident = PyThread_get_thread_ident()
    cdef nf_record *batch = <nf_record *>PyMem_RawMalloc(_BATCH * sizeof(nf_record))
    cdef void **refs = <void **>PyMem_RawMalloc(_PENDING_REFS * sizeof(void *))
    cdef uint64_t *counts = NULL
    cdef nf_ring **rings = NULL
    cdef nf_sink *sinks[NF_MAX_SINKS]
    cdef int n_sinks = 0
    cdef size_t cap = 0
    cdef Py_ssize_t nrings = 0, total = 0, i, n_refs = 0
    cdef int stopping = 0, j, failed = 0, merges
    cdef void **ref
    cdef nf_buf buf
    buf.data = NULL
    buf.len = 0
    buf.cap = 0
    if batch == NULL or refs == NULL:
        raise MemoryError()
    try:
        with nogil:
            while True:
                nrings = nf_pipe_next(&rings, &cap, _TICK_NS, total > 0, &stopping)
                if nrings < 0:
                    failed = 1
                    break
                counts = <uint64_t *>PyMem_RawRealloc(counts, (nrings + 1) * sizeof(uint64_t))
                if counts == NULL:
                    failed = 1
                    break
                total = 0
                for i in range(nrings):
                    counts[i] = nf_ring_take(rings[i], batch + total, _BATCH - total)
                    total += <Py_ssize_t>counts[i]
                n_sinks = nf_pipe_sinks(sinks)
                if total and nf_pipe.waiting_producers:
                    # room was made: producers waiting for it may go on
                    pthread_mutex_lock(&nf_pipe.mutex)
                    pthread_cond_broadcast(&nf_pipe.progress)
                    pthread_mutex_unlock(&nf_pipe.mutex)
                if total:
                    if n_sinks:
                        merges = 0
                        for i in range(total):
                            merges += nf_needs_merge(&batch[i])
                        if merges:
                            with gil:
                                _guarded(_merge_phase, batch, total)
                        buf.len = 0
                        for i in range(total):
                            if nf_encode(&buf, &batch[i]) < 0 or nf_buf_reserve(&buf, 1) < 0:
                                failed = 1
                                break
                            buf.data[buf.len] = 10  # newline
                            buf.len += 1
                        if failed:
                            break
                        _write_sinks(sinks, n_sinks, buf.data, buf.len, total)
                    if _n_consumers:
                        with gil:
                            _guarded(_python_phase, batch, total)
                if _n_deferred:
                    with gil:
                        _guarded(_retry_phase, batch, 0)
                if total:
                    # Collect the batch's references; release them with the GIL in bulk.
                    for i in range(total):
                        for j in range(NF_RECORD_REFS):
                            ref = nf_record_ref(&batch[i], j)
                            if ref[0] != NULL:
                                if n_refs == _PENDING_REFS:
                                    with gil:
                                        _release_refs(refs, n_refs)
                                    n_refs = 0
                                refs[n_refs] = ref[0]
                                n_refs += 1
                if n_refs and (total < _BATCH or stopping):
                    with gil:
                        _release_refs(refs, n_refs)
                    n_refs = 0
                nf_pipe_finish(rings, counts, <size_t>nrings, sinks, n_sinks)
                # Stopping comes after a flush: what was emitted before it is delivered. What
                # threads still emit (daemon threads at exit) is counted, not waited for.
                if stopping:
                    break
        if failed:
            raise MemoryError("nemoflow: the delivery thread ran out of memory")
    finally:
        if n_refs:
            _release_refs(refs, n_refs)
        PyMem_RawFree(batch)
        PyMem_RawFree(refs)
        PyMem_RawFree(counts)
        PyMem_RawFree(rings)
        nf_buf_free(&buf)


ctypedef int (*_phase_fn)(nf_record *, Py_ssize_t) except -1


cdef void _guarded(_phase_fn phase, nf_record *batch, Py_ssize_t n) noexcept:
    # The delivery thread must survive whatever a batch does: count it and go on.
    try:
        phase(batch, n)
    except BaseException as exc:
        try:
            consumer_failed(_Pipeline, exc)
        except BaseException:
            pass


class _Pipeline:
    name = "pipeline"


cdef int _start_delivery() except -1:
    global _delivery, _need_thread
    with _registry_lock:
        if _delivery is not None and _delivery.is_alive() and not _need_thread:
            return 0
        nf_pipe_restart()
        thread = threading.Thread(target=_delivery_main, name="nemoflow-delivery", daemon=True)
        thread.start()
        _delivery = thread
        _need_thread = False
    return 0


cdef void _refresh_recording() noexcept:
    global _recording, _n_consumers
    _n_consumers = <int>len(_consumers)
    _recording = len(_sinks) > 0 or _n_consumers > 0


def attach(consumer):
    """Feed ``consumer`` from the pipeline: a LineSink, a buffered Subscriber, or an object
    with ``export(events)``. Starts the delivery thread on first use."""
    global _sinks, _consumers
    with _registry_lock:
        if isinstance(consumer, LineSink):
            if consumer not in _sinks:
                if nf_sink_attach((<LineSink>consumer)._k) != 0:
                    raise RuntimeError(f"nemoflow: at most {NF_MAX_SINKS} file exporters")
                _sink_objects[<size_t>(<LineSink>consumer)._k] = consumer
                _sinks = _sinks + (consumer,)
        elif consumer not in _consumers:
            _consumers = _consumers + (consumer,)
        _refresh_recording()
    _start_delivery()


def detach(consumer):
    """Stop feeding ``consumer``; what was emitted before is still delivered to it first (for
    at most the exit timeout: past it, what it did not get is counted and reported)."""
    global _sinks, _consumers
    deadline = time.monotonic() + _exit_timeout
    delivered = flush(_exit_timeout)
    with _registry_lock:
        if isinstance(consumer, LineSink) and consumer in _sinks:
            nf_sink_detach((<LineSink>consumer)._k)
            _sink_objects.pop(<size_t>(<LineSink>consumer)._k, None)
        _sinks = tuple([c for c in _sinks if c is not consumer])
        _consumers = tuple([c for c in _consumers if c is not consumer])
        _refresh_recording()
    if delivered:
        # a batch taken before the detach may still be on its way to the consumer
        delivered = flush(max(0.0, deadline - time.monotonic()))
    if not delivered:
        _gave_up_detaching(consumer)


cdef int _gave_up_detaching(consumer) except -1:
    global _abandoned_at_detach
    cdef long long n = <long long>nf_pipe_pending()
    _abandoned_at_detach += n
    if _exit_deadline is None:  # at exit, the exit report says it
        warnings.warn(f"nemoflow: {getattr(consumer, 'name', type(consumer).__name__)!r} was "
                      f"detached after waiting {_exit_timeout:g} s for the delivery thread; up to "
                      f"{n} events were not delivered to it", RuntimeWarning, stacklevel=3)
    return 0


def flush(timeout=None):
    """Block until every event emitted before the call has been delivered; False on timeout."""
    if _delivery is None or PyThread_get_thread_ident() == _delivery_ident:
        return True
    if _need_thread:
        _start_delivery()
    cdef double deadline = -1.0
    if timeout is not None:
        deadline = time.monotonic() + float(timeout)
    if _exit_deadline is not None and (deadline < 0 or deadline > _exit_deadline):
        deadline = _exit_deadline
    return _wait_flush(deadline)


cdef bint _wait_flush(double deadline) except -1:
    # deadline: time.monotonic(), or < 0 for none. Waits in slices and runs signal handlers in
    # between, so Ctrl-C raises here promptly.
    cdef nf_flush f
    cdef int done = 0
    cdef int64_t slice_ns
    cdef double left
    if nf_pipe_flush_begin(&f) < 0:
        raise MemoryError()
    try:
        while True:
            slice_ns = _SLICE_NS
            if deadline >= 0:
                left = deadline - time.monotonic()
                if left < 0.05:
                    slice_ns = <int64_t>(left * 1e9) if left > 0 else 0
            with nogil:
                done = nf_pipe_flush_wait(&f, slice_ns)
            if done:
                return True
            if deadline >= 0 and time.monotonic() >= deadline:
                return False
            PyErr_CheckSignals()
    finally:
        nf_pipe_flush_end(&f)


def shutdown(timeout=5.0):
    """Deliver everything, then stop the delivery thread (at interpreter exit)."""
    global _delivery
    thread = _delivery
    if thread is None:
        return True
    deadline = time.monotonic() + float(timeout)
    if _exit_deadline is not None and deadline > _exit_deadline:
        deadline = _exit_deadline
    flushed = flush(max(0.0, deadline - time.monotonic()))
    nf_pipe_stop()
    thread.join(max(0.0, deadline - time.monotonic()))
    with _registry_lock:
        _delivery = None
    return flushed and not thread.is_alive()


# 2**20 records of 128 bytes: 128 MiB per recording thread, allocated when its ring is made.
_MAX_RING = 1 << 20


def _exit_begin():
    """Start the exit clock (once): every wait from now on ends by the exit deadline."""
    global _exit_deadline
    if _exit_deadline is None:
        _exit_deadline = time.monotonic() + _exit_timeout
    return _exit_deadline


cdef int _report_abandoned() except -1:
    # Once exit stopped waiting: count what it leaves behind and say so on stderr.
    global _abandoned_at_exit
    cdef long long n = <long long>nf_pipe_pending() + _n_deferred
    if n > 0:
        _abandoned_at_exit += n
        _exit.report_abandoned(n, _exit_timeout)
    return 0


def _at_child_exit():
    # The end of a multiprocessing child, which leaves through os._exit: atexit will not run.
    _exit_begin()
    if _delivery is not None:
        flush()
        _report_abandoned()


def set_otel_capture(hook, context_var=None):
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


def configure(ring_size=None, overflow=None, exit_timeout=None, otel_parent=None):
    """Pipeline settings: ``ring_size`` (records per thread, a power of two from 16 to 2**20,
    for rings made from now on), ``overflow`` ("block", the lossless default, or "drop"),
    ``exit_timeout`` (seconds exit waits for delivery, in all) and ``otel_parent`` ("auto":
    a top-level scope joins the current OpenTelemetry span while an OpenTelemetry exporter is
    attached; "off")."""
    global _drop_when_full, _exit_timeout, _otel_parent, _otel_capture
    # Every value is checked before any is applied: a refused call changes nothing.
    if ring_size is not None and (
            not isinstance(ring_size, int) or isinstance(ring_size, bool) or ring_size < 16
            or ring_size > _MAX_RING or ring_size & (ring_size - 1)):
        raise ValueError(f"ring_size must be a power of two from 16 to {_MAX_RING}, "
                         f"not {ring_size!r}")
    if overflow is not None and overflow not in ("block", "drop"):
        raise ValueError('overflow must be "block" or "drop"')
    if otel_parent is not None and otel_parent not in ("auto", "off"):
        raise ValueError('otel_parent must be "auto" or "off"')
    if exit_timeout is not None:
        exit_timeout = _exit.check_timeout(exit_timeout)
        _exit_timeout = exit_timeout
    if otel_parent is not None:
        _otel_parent = otel_parent
        _otel_capture = _otel_hook if otel_parent == "auto" else None
    if ring_size is not None:
        pthread_mutex_lock(&nf_pipe.mutex)
        nf_pipe.capacity = <uint64_t>ring_size
        pthread_mutex_unlock(&nf_pipe.mutex)
    if overflow is not None:
        _drop_when_full = overflow == "drop"


def _after_fork_in_child():
    # The C fork handler already forgot the parent's rings; start a delivery thread of our own
    # before the next record (threads do not survive fork).
    global _need_thread, _delivery, _delivery_ident, _registry_lock, _exit_deadline
    _delivery = None
    _exit_deadline = None  # the child's exit has a clock of its own
    _delivery_ident = 0
    _need_thread = _recording
    _registry_lock = threading.RLock()  # another thread may have held it at fork
    for sub in _all_subscribers():
        (<Subscriber>sub)._reinit_after_fork()
    _forget_deferred()  # the parent's delivery thread makes those calls
    _exit.watch_children(_at_child_exit)


cdef struct _RingStat:
    unsigned long thread
    uint64_t capacity, pending, high_water, dropped, waits
    int closed


def _pipeline_stats():
    # Copied into C memory under the mutex, turned into Python objects after: allocating them
    # can run the garbage collector, whose finalizers may need the same mutex.
    cdef nf_ring *r
    cdef _RingStat *copy = NULL
    cdef size_t n = 0, cap = 0, i
    cdef uint64_t dropped, waits, high, freed, capacity
    while True:
        pthread_mutex_lock(&nf_pipe.mutex)
        n = 0
        r = nf_pipe.rings
        while r != NULL:
            n += 1
            r = r.next
        if n <= cap:
            break
        pthread_mutex_unlock(&nf_pipe.mutex)
        PyMem_RawFree(copy)
        cap = n + 16
        copy = <_RingStat *>PyMem_RawMalloc(cap * sizeof(_RingStat))
        if copy == NULL:
            raise MemoryError()
    i = 0
    r = nf_pipe.rings
    while r != NULL:
        copy[i].thread = r.thread_ident
        copy[i].capacity = r.mask + 1
        copy[i].pending = r.head - r.delivered
        copy[i].high_water = r.high_water
        copy[i].dropped = r.dropped
        copy[i].waits = r.waits
        copy[i].closed = r.closed
        i += 1
        r = r.next
    dropped = nf_pipe.dropped_freed
    waits = nf_pipe.waits_freed
    high = nf_pipe.high_water_freed
    freed = nf_pipe.rings_freed
    capacity = nf_pipe.capacity
    pthread_mutex_unlock(&nf_pipe.mutex)
    try:
        rings = [{"thread": copy[i].thread, "capacity": copy[i].capacity,
                  "pending": copy[i].pending, "high_water": copy[i].high_water,
                  "dropped": copy[i].dropped, "waits": copy[i].waits,
                  "closed": bool(copy[i].closed)} for i in range(n)]
    finally:
        PyMem_RawFree(copy)
    return {"recording": _recording, "overflow": "drop" if _drop_when_full else "block",
            "ring_size": capacity,
            "dropped": dropped + sum([x["dropped"] for x in rings]) + _lost_no_memory,
            "waits": waits + sum([x["waits"] for x in rings]), "rings": rings,
            "rings_freed": freed, "high_water_freed": high, "deferred": _n_deferred,
            "exit_timeout": _exit_timeout, "abandoned_at_detach": _abandoned_at_detach,
            "abandoned_at_exit": _abandoned_at_exit}



# ---------------------------------------------------------------------------------------------
# Scope lifecycle.

cdef inline str _check_name(name):
    # The plain str of a str subclass (a StrEnum member, say): that is what is recorded.
    if type(name) is not str:
        if not isinstance(name, str):
            raise TypeError(f"name must be str, not {type(name).__name__}")
        name = PyUnicode_FromObject(name)
    if not PyUnicode_IS_COMPACT_ASCII(name):
        _check_text(name)
    return <str>name


cdef int _check_text(str text) except -1:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("names and categories must be valid Unicode text (a lone surrogate "
                         "cannot be written as UTF-8)") from None
    return 0


cdef inline int _check_scope_type(scope_type) except -1:
    if type(scope_type) is not _ScopeType:
        raise TypeError(f"scope_type must be a ScopeType, not {type(scope_type).__name__}")
    return 0


cdef inline int _check_parent(handle) except -1:
    if handle is not None:
        if not isinstance(handle, ScopeHandle):
            raise TypeError(f"handle must be a ScopeHandle or None, not {type(handle).__name__}")
        _check_made(<ScopeHandle>handle)
    return 0


cdef inline int _check_made(ScopeHandle h) except -1:
    # Every frame the core makes has a uuid (v7: never all zero); one made by calling
    # ``ScopeHandle.__new__`` has none and would be written with a null uuid.
    if h._hi == 0 and h._lo == 0:
        raise TypeError("this handle was not created by nemoflow (handles come from "
                        "scope.push, scope.scope, tools.call and llm.call)")
    return 0


cdef int _attr_value(attributes, int kind=_KIND_SCOPE) except? -1:
    # Each kind takes its own flag class (or a plain int mask): another kind's flag would be
    # written under this kind's wire names.
    if attributes is None:
        return 0
    expected = _ATTR_CLASS[kind]
    if (not isinstance(attributes, int) or isinstance(attributes, bool)
            or (isinstance(attributes, _ATTR_CLASSES) and not isinstance(attributes, expected))):
        raise TypeError(f"attributes must be {expected.__name__}, "
                        f"not {type(attributes).__name__}")
    if attributes < 0 or attributes & ~(<int>_ATTR_MASKS[kind]):
        raise ValueError(f"attributes {int(attributes)} has bits {expected.__name__} does not "
                         f"define (valid: 0 to {_ATTR_MASKS[kind]})")
    return <int>attributes


cdef tuple _ATTR_CLASSES = (ScopeAttributes, ToolAttributes, LLMAttributes)
# The bits each kind defines; anything else would be dropped from the line without a word.
cdef tuple _ATTR_MASKS = tuple([sum([bit for bit, _ in ATTRIBUTE_NAMES[c]]) for c in _ATTR_CLASS])


cdef int _check_kind(kind) except -1:
    if type(kind) is not int or not (_KIND_SCOPE <= kind <= 2):
        raise ValueError(f"kind must be KIND_SCOPE, KIND_TOOL or KIND_LLM, not {kind!r}")
    return 0


# Opening and closing a scope change state (frame, binding, record) first and run user code
# (synchronous subscribers, and the warnings machinery behind them) last: whatever that code
# raises (KeyboardInterrupt, say) finds the stack as consistent as after a completed call.

cdef ScopeHandle _open(str name, object scope_type, ScopeHandle parent, int attrs,
                       object data_raw, object meta_raw, object input_raw, int64_t ts,
                       int kind, object profile, type cls):
    # The frame and its start record; the start event is delivered by _announce.
    cdef ScopeHandle top = _top()
    if parent is None:
        parent = top
    cdef ScopeHandle frame = _new_frame(cls, kind, name, scope_type, attrs, parent, top,
                                        data_raw, meta_raw, profile, ts)
    if _otel_capture is not None and parent._parent is None:
        frame._otel = _otel_parent_context()
    if _recording:
        _record_scope(NF_REC_START, frame, ts, input_raw, None, _STATUS_NONE, None)
    return frame


cdef inline int _announce(ScopeHandle frame, object input_raw) except -1:
    if _enabled:
        _deliver(_scope_event(frame, False, frame._start_ns, input_raw, None, _STATUS_NONE,
                              None), frame._prev)
    return 0


cdef inline int _unbind(object token, ScopeHandle frame) except -1:
    try:
        PyContextVar_Reset(_current, token)
    except ValueError:  # exited in another context than entered: restore by value
        PyContextVar_Set(_current, frame._prev)
    return 0


def start(name, scope_type, parent, attributes, data, metadata, input, timestamp,
          kind=_KIND_SCOPE, profile=None, type cls=ScopeHandle):
    """Open a scope (emit its start event) without binding it; returns the frame."""
    name = _check_name(name)
    _check_scope_type(scope_type)
    _check_parent(parent)
    _check_kind(kind)
    if profile is not None and type(profile) is not bytes:
        raise TypeError(f"profile must be encoded JSON bytes, not {type(profile).__name__}")
    cdef int attrs = _attr_value(attributes, kind)
    cdef int64_t ts = nf_now_ns() if timestamp is None else _timestamp_ns(timestamp)
    data_raw = _encode(data, False)
    meta_raw = _encode(metadata, False)
    input_raw = _encode(input, False)
    cdef ScopeHandle frame = _open(name, scope_type, parent, attrs, data_raw, meta_raw,
                                   input_raw, ts, kind, profile, cls)
    try:
        _announce(frame, input_raw)
    except BaseException as exc:
        # Interrupted in a subscriber (KeyboardInterrupt): the caller never gets the handle,
        # so the call is ended here rather than left open forever.
        _end(frame, None, None, _auto_end_ts(frame), _STATUS_ERROR, _describe(exc), None)
        raise
    return frame


cdef inline int64_t _auto_end_ts(ScopeHandle frame) noexcept:
    # max(now, start + 1 µs, latest child end): an automatically stamped end is strictly after
    # its start, and a scope never ends before a child it contains (a child shorter than 1 µs
    # would otherwise "end" after its parent and break nesting for every reader).
    cdef int64_t ts = nf_now_ns()
    cdef int64_t floor = frame._start_ns + 1000
    if frame._child_end > floor:
        floor = frame._child_end
    return ts if ts > floor else floor


cdef int _end(ScopeHandle frame, object out_raw, object meta_raw, int64_t ts, int status,
              object desc, ScopeHandle top) except -1:
    frame._closed = True
    # (A plain store: concurrent child ends may race here; the GIL serializes them today.)
    if frame._parent is not None and ts > frame._parent._child_end:
        frame._parent._child_end = ts
    if _recording:
        _record_scope(NF_REC_END, frame, ts, out_raw, meta_raw, status, desc)
    if _enabled:
        try:
            _deliver(_scope_event(frame, True, ts, out_raw, meta_raw, status, desc),
                     frame if top is None else top)
        finally:
            if frame._has_locals:
                _drop_locals(frame)
    elif frame._has_locals:
        _drop_locals(frame)
    return 0


def end(ScopeHandle frame, output, metadata, timestamp, int status=_STATUS_NONE, desc=None,
        ScopeHandle top=None, profile=None):
    """Close ``frame`` (emit its end event, drop its scope-local registrations).

    ``profile`` (encoded JSON bytes) replaces the category_profile for the end event (a streamed
    LLM call's ``time_to_first_chunk``); the start event keeps the one given at start.
    """
    _check_made(frame)
    if not (_STATUS_NONE <= status <= _STATUS_ERROR):
        raise ValueError(f"status must be STATUS_NONE, STATUS_OK or STATUS_ERROR, not {status}")
    cdef int64_t ts = _auto_end_ts(frame) if timestamp is None else _timestamp_ns(timestamp)
    out_raw = _encode(output, False)
    meta_raw = _encode(metadata, False)
    if profile is not None:
        if type(profile) is not bytes:
            raise TypeError(f"profile must be encoded JSON bytes, not {type(profile).__name__}")
        # Events and ring records copy the profile when they are made: the start keeps its own.
        frame._profile = profile
    _end(frame, out_raw, meta_raw, ts, status, desc, top)


def push(name, scope_type, *, handle=None, attributes=None, data=None, metadata=None,
         input=None, timestamp=None):
    """Open a scope on the current stack and make it current; returns its handle."""
    name = _check_name(name)
    _check_scope_type(scope_type)
    _check_parent(handle)
    cdef int attrs = _attr_value(attributes)
    cdef int64_t ts = nf_now_ns() if timestamp is None else _timestamp_ns(timestamp)
    data_raw = _encode(data, False)
    meta_raw = _encode(metadata, False)
    input_raw = _encode(input, False)
    cdef ScopeHandle frame = _open(name, scope_type, handle, attrs, data_raw, meta_raw,
                                   input_raw, ts, _KIND_SCOPE, None, ScopeHandle)
    PyContextVar_Set(_current, frame)
    _announce(frame, input_raw)
    return frame


cdef int _check_poppable(ScopeHandle h) except -1:
    if h._parent is None:
        raise InvalidArgumentError("invalid argument: root scope cannot be removed")
    if h._closed:  # popped already, possibly in another task that shared this position
        raise NotFoundError("not found: scope handle not found")
    cdef ScopeHandle top = _peek()
    if top is h:
        return 0
    cdef ScopeHandle f = top._prev if top is not None else None
    while f is not None:
        if f is h:
            raise InvalidArgumentError(
                "invalid argument: scope handle is not at the top of the stack")
        f = f._prev
    raise NotFoundError("not found: scope handle not found")


def pop(handle, *, output=None, metadata=None, timestamp=None):
    """Close the scope on top of the current stack (strict LIFO) and emit its end event."""
    if not isinstance(handle, ScopeHandle):
        raise TypeError(f"handle must be a ScopeHandle, not {type(handle).__name__}")
    cdef ScopeHandle h = <ScopeHandle>handle
    _check_made(h)
    out_raw = _encode(output, False)
    meta_raw = _encode(metadata, False)
    cdef int64_t ts = _auto_end_ts(h) if timestamp is None else _timestamp_ns(timestamp)
    # Check and close in one step, with no Python code in between (the GIL is not released):
    # two threads popping one handle cannot both emit its end. (A free-threaded build needs an
    # atomic exchange on _closed here.)
    _check_poppable(h)
    h._closed = True
    PyContextVar_Set(_current, h._prev)
    _end(h, out_raw, meta_raw, ts, _STATUS_NONE, None, None)


cdef object _check_schema(data_schema):
    if data_schema is None:
        return None
    if (not isinstance(data_schema, dict) or set(data_schema) != {"name", "version"}
            or not all(isinstance(v, str) for v in data_schema.values())):
        raise TypeError('data_schema must be {"name": str, "version": str} or None')
    return _encode(data_schema, False)


def event(name, *, handle=None, data=None, metadata=None, data_schema=None, timestamp=None,
          category=None, category_profile=None):
    """Emit a mark under ``handle`` (default: the current scope)."""
    name = _check_name(name)
    _check_parent(handle)
    if category is not None:
        if not isinstance(category, str):
            raise TypeError(f"category must be str or None, not {type(category).__name__}")
        category = _check_name(category)
    cdef int64_t ts = nf_now_ns() if timestamp is None else _timestamp_ns(timestamp)
    data_raw = _encode(data, False)
    meta_raw = _encode(metadata, False)
    schema_raw = _check_schema(data_schema)
    profile_raw = _encode(category_profile, False)
    cdef ScopeHandle top = _top()
    if not _enabled and not _recording:
        return
    cdef uint64_t hi, lo
    cdef MarkEvent ev
    cdef ScopeHandle parent = top if handle is None else <ScopeHandle>handle
    nf_uuid7(ts, &hi, &lo)
    otel = (_otel_parent_context() if (_otel_capture is not None and parent._parent is None)
            else None)
    if _recording:  # written before any subscriber runs (and can raise)
        _record_mark(hi, lo, parent, name, ts, data_raw, meta_raw, schema_raw, category,
                     profile_raw, otel)
    if _enabled:
        ev = MarkEvent.__new__(MarkEvent)
        ev._hi = hi
        ev._lo = lo
        ev._phi = parent._hi
        ev._plo = parent._lo
        ev._name = name
        ev._ts = ts
        ev._data = data_raw
        ev._meta = meta_raw
        ev._schema = schema_raw
        ev._category = category
        ev._profile = profile_raw
        ev._otel = otel
        _deliver(ev, top)


# ---------------------------------------------------------------------------------------------
# Context managers: ``scope.scope(...)`` and the span behind ``nf.trace``.

cdef str _describe(object exc):
    try:
        text = str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"
    if not text and type(exc).__name__ == "CancelledError":
        asyncio = sys.modules.get("asyncio")
        if asyncio is not None and isinstance(exc, asyncio.CancelledError):
            return "cancelled"
    if not PyUnicode_IS_COMPACT_ASCII(text):
        # a lone surrogate cannot be written as UTF-8: keep the text, escape that character
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if _redactor is not None:
        text = _redact_text(text)
    return text


def describe(exc):
    """The status description of an exception: ``str(exc)``, "cancelled" for a bare cancel."""
    return _describe(exc)


cdef object _lenient(object value):
    # A value from the traced program: never raises, whatever its str() does.
    try:
        return _encode(value, True)
    except Exception:
        return None


def enabled():
    """Whether anything consumes events now (when not, payload capture can be skipped)."""
    return _enabled or _recording


cdef list _abandoned(ScopeHandle frame):
    # Scopes pushed inside a block and still open when it exits would never get an end event:
    # they are ended (innermost first) with an ERROR status that says why.
    cdef ScopeHandle f = _peek()
    if f is frame or f is None:
        return None  # the usual case: nothing allocated
    cdef list open_ = []
    while f is not None and f is not frame:
        if not f._closed:
            open_.append(f)
        f = f._prev
    if f is None:  # the block's scope is not on this stack: nothing of ours to close
        return None
    return open_


# Not tracked by the cyclic GC: a ScopeContext holds str, bytes, the ScopeType member, frames
# and a ContextVar token, none of which can refer back to it, so it is never part of a cycle.
# (Span, which holds user objects, is tracked.)
@cython.no_gc
@cython.freelist(16)
cdef class ScopeContext:
    """``with scope.scope(...) as handle``: push on enter, pop on exit (also on exceptions)."""

    def __init__(self, name, scope_type, *, handle=None, attributes=None, data=None,
                 metadata=None, input=None, timestamp=None, end_timestamp=None):
        self._setup(name, scope_type, handle, attributes, data, metadata, input, timestamp,
                    end_timestamp, False)

    cdef int _setup(self, name, scope_type, handle, attributes, data, metadata, input,
                    timestamp, end_timestamp, bint lenient) except -1:
        # Validate and encode everything before anything is emitted.
        name = _check_name(name)
        _check_scope_type(scope_type)
        _check_parent(handle)
        self._name = name
        self._scope_type = scope_type
        self._parent = handle
        self._attrs = _attr_value(attributes)
        self._data = _encode(data, False)
        self._meta = _encode(metadata, False)
        self._input = _lenient(input) if lenient else _encode(input, False)
        self._has_start_ts = timestamp is not None
        if self._has_start_ts:
            self._start_ts = _timestamp_ns(timestamp)
        self._has_end_ts = end_timestamp is not None
        if self._has_end_ts:
            self._end_ts = _timestamp_ns(end_timestamp)
        return 0

    cdef ScopeHandle _enter(self):
        if self._active:
            raise RuntimeError("this scope block is already in use; create one per with-statement")
        cdef int64_t ts = self._start_ts if self._has_start_ts else nf_now_ns()
        cdef ScopeHandle frame = _open(self._name, self._scope_type, self._parent,
                                       self._attrs, self._data, self._meta, self._input, ts,
                                       _KIND_SCOPE, None, ScopeHandle)
        self._frame = frame
        self._token = PyContextVar_Set(_current, frame)
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

    cdef int _exit(self, exc, output) except -1:
        cdef ScopeHandle frame = self._frame
        cdef int64_t ts
        self._active = False
        cdef list abandoned = _abandoned(frame)
        token, self._token = self._token, None
        _unbind(token, frame)
        # Every end is written even if a subscriber interrupts one; the first error is raised.
        pending = None
        if abandoned is not None:
            for f in abandoned:
                try:
                    _end(f, None, None, _auto_end_ts(f), _STATUS_ERROR,
                         "abandoned: still open when its enclosing scope ended", None)
                except BaseException as e:
                    if pending is None:
                        pending = e
        if not frame._closed:
            ts = self._end_ts if self._has_end_ts else _auto_end_ts(frame)
            try:
                if exc is None:
                    _end(frame, _lenient(output) if (_enabled or _recording) else None, None,
                         ts, _STATUS_OK, None, None)
                else:
                    _end(frame, None, None, ts, _STATUS_ERROR, _describe(exc), None)
            except BaseException as e:
                if pending is None:
                    pending = e
        if pending is not None:
            raise pending
        return 0

    def __exit__(self, exc_type, exc, tb):
        self._exit(exc, None)
        return False


def scope(name, scope_type, *, handle=None, attributes=None, data=None, metadata=None,
          input=None, timestamp=None, end_timestamp=None):
    """``with scope.scope(...) as handle``: push on enter, pop on exit (also on exceptions).

    A function rather than the class itself: a fastcall function builds the context manager
    without the argument tuple and dict that calling a type costs.
    """
    cdef ScopeContext ctx = ScopeContext.__new__(ScopeContext)
    ctx._setup(name, scope_type, handle, attributes, data, metadata, input, timestamp,
               end_timestamp, False)
    return ctx


cdef class Span(ScopeContext):
    """``with nf.trace(...) as span``: a scope whose output can be set while it is open.

    Made by ``nf.trace(...)``, it is also a decorator: ``@nf.trace("name", ...)``.
    """

    def __init__(self, name, scope_type=ScopeType.Function, *, attributes=None, metadata=None,
                 input=None, handle=None):
        self._setup(name, scope_type, handle, attributes, None, metadata, input, None, None,
                    True)
        self._keep_output = True

    def set_output(self, value):
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


cdef class Tracer:
    """``nf.trace`` for one scope type: ``@tracer``, ``@tracer("name", ...)``, ``with tracer(...)``.

    ``decorate(fn, name, scope_type, attributes, metadata, keep_input, keep_output)`` is the
    Pythonic module's function that wraps a callable.
    """

    def __init__(self, scope_type, decorate):
        _check_scope_type(scope_type)
        self._scope_type = scope_type
        self._decorate = decorate

    @property
    def scope_type(self):
        return self._scope_type

    def __call__(self, target=None, *, name=None, input=True, output=True, metadata=None,
                 attributes=None):
        """Trace a function (``@trace``) or make a decorator / ``with`` block (``trace("x")``)."""
        cdef Span span
        if target is not None and not isinstance(target, str):
            if name is not None and not isinstance(name, str):
                raise TypeError(f"nf.trace name must be str, not {type(name).__name__}")
            if input is not None and not isinstance(input, bool):
                raise TypeError("nf.trace input= must be True or False when decorating a "
                                "function (an input value is for `with nf.trace(...)` blocks)")
            if not isinstance(output, bool):
                raise TypeError(
                    f"nf.trace output= must be True or False, not {type(output).__name__}")
            raw = _encode(metadata, False)
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
        span = Span.__new__(Span)
        span._setup(name if name is not None else "", self._scope_type, None, attributes, None,
                    metadata, None if isinstance(input, bool) else input, None, None, True)
        if name is None:
            span._name = None
        span._keep_output = output
        span._decor_input = input
        span._decorate = self._decorate
        return span

    def __repr__(self):
        return f"<nf.trace.{self._scope_type.name.lower()}>"


@cython.final
cdef class TracedFunction:
    """A traced sync function: one scope per call, input and output captured when consumed."""

    def __init__(self, fn, name, scope_type, int attributes, metadata, capture, bint keep_output):
        name = _check_name(name)
        _check_scope_type(scope_type)
        self._fn = fn
        self._name = name
        self._scope_type = scope_type
        self._attrs = attributes
        self._meta = _encode(metadata, False)
        self._capture = capture
        self._keep_output = keep_output

    def __call__(self, *args, **kwargs):
        cdef object inp = None
        if (_enabled or _recording) and self._capture is not None:
            try:
                inp = _encode(self._capture(args, kwargs), True)
            except Exception:  # capture must not break the traced call
                inp = None
        cdef ScopeHandle frame = _open(self._name, self._scope_type, None, self._attrs, None,
                                       self._meta, inp, nf_now_ns(), _KIND_SCOPE, None,
                                       ScopeHandle)
        token = PyContextVar_Set(_current, frame)
        try:
            _announce(frame, inp)
            result = self._fn(*args, **kwargs)
        except BaseException as exc:
            _unbind(token, frame)
            _end(frame, None, None, _auto_end_ts(frame), _STATUS_ERROR, _describe(exc), None)
            raise
        _unbind(token, frame)
        _end(frame, _lenient(result) if ((_enabled or _recording) and self._keep_output) else None, None,
             _auto_end_ts(frame), _STATUS_OK, None, None)
        return result

    def __get__(self, obj, objtype):
        if obj is None:
            return self
        return types.MethodType(self, obj)

    def __reduce__(self):
        return self.__qualname__  # pickled by reference, like the function it replaces

    def __repr__(self):
        return f"<traced function {getattr(self, '__qualname__', self._name)} at {id(self):#x}>"


# ---------------------------------------------------------------------------------------------

def diagnostics():
    """Counters of what the core delivered and what failed, per subscriber."""
    cdef _Stat st
    subs = {}
    with _registry_lock:
        for name, stat in _stats.items():
            st = <_Stat>stat
            if not name.startswith("exporter:"):
                subs[name] = {"calls": st.calls, "errors": st.errors}
        exporters = {}
        for c in _sinks + _consumers:
            if isinstance(c, Subscriber):
                continue
            name = getattr(c, "name", type(c).__name__)
            stats = dict(c.stats()) if hasattr(c, "stats") else {}
            st = _stats.get(f"exporter:{name}")
            if st is not None:
                stats["errors"] = stats.get("errors", 0) + st.errors
            exporters[name] = stats
        retired = {"subscribers": _n_retired, "calls": _retired.calls,
                   "errors": _retired.errors}
    return {"backend": BACKEND, "subscribers": subs, "retired_subscribers": retired,
            "exporters": exporters, "pipeline": _pipeline_stats(),
            "redaction": {"enabled": _redactor is not None, "failures": _redaction_failures}}


def _forget_registrations():
    """Forget subscribers, exporters, counters and registrations (tests, and at exit)."""
    global _subscribers, _n_local, _sinks, _consumers, _drop_when_full, _retired, _n_retired
    with _registry_lock:
        _subscribers = ()
        _n_local = 0
        _stats.clear()
        _retired = _Stat()
        _n_retired = 0
        for entry in _scope_locals.values():
            f = entry[0]()
            if f is not None:
                (<ScopeHandle>f)._has_locals = False
        _scope_locals.clear()
    flush(_exit_timeout)
    with _registry_lock:
        _forget_deferred()
        for sink in _sinks:
            nf_sink_detach((<LineSink>sink)._k)
        _sink_objects.clear()
        _sinks = ()
        _consumers = ()
        _drop_when_full = False
        _refresh_recording()
        _refresh_enabled()
    _forget_otel()


cdef int _forget_otel() except -1:
    global _otel_hook, _otel_capture, _otel_parent, _otel_cv
    _otel_hook = _otel_capture = _otel_cv = None
    _otel_parent = "auto"
    return 0


def _before_fork():
    # Deliver what is buffered before forking, so the child neither loses nor repeats it.
    if _recording and _delivery is not None:
        flush(5.0)


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
