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
from cpython.contextvars cimport PyContextVar_Reset, PyContextVar_Set, get_value_no_default
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdint cimport int64_t, uint64_t

import contextvars
import datetime as _dt
import math
import sys
import threading
import types
import warnings

import orjson

from nemoflow._types import (
    ATOF_VERSION,
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
        return str(obj)
    except Exception:
        return f"<unprintable {type(obj).__name__}>"


cdef bint _has_non_finite(obj) except -1:
    # orjson writes NaN and +-Infinity as null; JSON has no such values, so they are rejected.
    if isinstance(obj, float):
        return not math.isfinite(obj)
    if isinstance(obj, dict):
        for v in (<dict>obj).values():
            if _has_non_finite(v):
                return True
        return False
    if isinstance(obj, (list, tuple)):
        for v in obj:
            if _has_non_finite(v):
                return True
    return False


@cython.final
cdef class Encoded:
    """A payload already encoded to canonical JSON bytes (used by the Pythonic surface)."""

    def __init__(self, bytes raw):
        self.raw = raw


cdef object _encode(object obj, bint lenient):
    cdef bytes raw
    if obj is None:
        return None
    if type(obj) is Encoded:
        return (<Encoded>obj).raw
    if lenient:
        try:
            return _dumps(obj, default=_stringify, option=_JSON_OPTS)
        except (TypeError, ValueError):
            return _dumps(_stringify(obj))
    try:
        raw = _dumps(obj, default=_reject, option=_JSON_OPTS)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Failed to convert to JSON: {exc}") from None
    if nf_has_null(PyBytes_AS_STRING(raw), <size_t>PyBytes_GET_SIZE(raw)) and _has_non_finite(obj):
        raise ValueError("Failed to convert to JSON: NaN and Infinity are not JSON values")
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
    return (<int64_t>delta.days * 86400 + <int64_t>delta.seconds) * 1000000000 \
        + <int64_t>delta.microseconds * 1000


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
    return f


cdef object _AGENT = ScopeType.Agent


cdef ScopeHandle _new_root():
    return _new_frame(ScopeHandle, _KIND_SCOPE, "root", _AGENT, 0, None, None, None, None, None,
                      nf_now_ns())


def new_root():
    """A fresh implicit root: never emitted, cannot be popped, identifies one trace."""
    return _new_root()


def is_root(ScopeHandle frame):
    return frame._parent is None


def root_of(ScopeHandle frame):
    """The implicit root of the trace ``frame`` belongs to."""
    while frame._parent is not None:
        frame = frame._parent
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


cdef inline bytes _or_null(object raw):
    return b"null" if raw is None else <bytes>raw


cdef bytes _quoted_uuid(ScopeHandle f):
    if f is None:
        return b"null"
    return b'"' + f._uuid().encode() + b'"'


@cython.freelist(128)
cdef class ScopeEvent:
    """The start or end of a scope, tool call or LLM call (ATOF ``kind: "scope"``)."""

    kind = "scope"
    atof_version = ATOF_VERSION
    data_schema = None

    @property
    def uuid(self):
        return self._frame._uuid()

    @property
    def parent_uuid(self):
        return None if self._frame._parent is None else self._frame._parent._uuid()

    @property
    def timestamp(self):
        return _format_ts(self._ts)

    @property
    def timestamp_ns(self):
        return self._ts

    @property
    def name(self):
        return self._frame._name

    @property
    def data(self):
        return _decode(self._data)

    cdef object _metadata_raw(self):
        if not self._is_end:
            return self._frame._meta
        if self._meta_cache is None:
            self._meta_cache = (_merge_metadata(self._frame._meta, self._end_meta, self._status,
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
        return attribute_names(_ATTR_CLASS[self._frame._kind], self._frame._attrs)

    @property
    def category(self):
        return _CATEGORIES[self._frame._scope_type]

    @property
    def category_profile(self):
        return _decode(self._frame._profile)

    def to_json(self):
        """The canonical ATOF line (without the newline), as the JSONL exporter writes it."""
        cdef ScopeHandle f = self._frame
        return b"".join((
            b'{"atof_version":"0.1","attributes":',
            _dumps(attribute_names(_ATTR_CLASS[f._kind], f._attrs)),
            b',"category":"', (<str>_CATEGORIES[f._scope_type]).encode(),
            b'","category_profile":', _or_null(f._profile),
            b',"data":', _or_null(self._data),
            b',"data_schema":null,"kind":"scope","metadata":', _or_null(self._metadata_raw()),
            b',"name":', _dumps(f._name),
            b',"parent_uuid":', _quoted_uuid(f._parent),
            b',"scope_category":"', b"end" if self._is_end else b"start",
            b'","timestamp":"', _format_ts(self._ts).encode(),
            b'","uuid":"', f._uuid().encode(), b'"}',
        )).decode()

    def to_dict(self):
        """The event as a dict with every ATOF field (a fresh copy on every call)."""
        return _loads(self.to_json())

    def __repr__(self):
        return f"<ScopeEvent {self.scope_category} {self.name!r} {self.uuid}>"


@cython.freelist(64)
cdef class MarkEvent:
    """A point-in-time event (ATOF ``kind: "mark"``)."""

    kind = "mark"
    atof_version = ATOF_VERSION

    @property
    def uuid(self):
        return self._uuid_s

    @property
    def parent_uuid(self):
        return None if self._parent is None else self._parent._uuid()

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

    def to_json(self):
        """The canonical ATOF line (without the newline), as the JSONL exporter writes it."""
        return b"".join((
            b'{"atof_version":"0.1","category":',
            b"null" if self._category is None else _dumps(self._category),
            b',"category_profile":', _or_null(self._profile),
            b',"data":', _or_null(self._data),
            b',"data_schema":', _or_null(self._schema),
            b',"kind":"mark","metadata":', _or_null(self._meta),
            b',"name":', _dumps(self._name),
            b',"parent_uuid":', _quoted_uuid(self._parent),
            b',"timestamp":"', _format_ts(self._ts).encode(),
            b'","uuid":"', self._uuid_s.encode(), b'"}',
        )).decode()

    def to_dict(self):
        """The event as a dict with every ATOF field (a fresh copy on every call)."""
        return _loads(self.to_json())

    def __repr__(self):
        return f"<MarkEvent {self._name!r} {self._uuid_s}>"


# ---------------------------------------------------------------------------------------------
# Subscribers. Registries are immutable tuples swapped under a lock; the emit path reads them
# without locking. Each subscriber has its own lock so it is never entered concurrently.

cdef object _registry_lock = threading.Lock()
cdef tuple _subscribers = ()     # global, in registration order
cdef Py_ssize_t _n_local = 0     # live scope-local registrations across all frames
cdef bint _enabled = False       # anything at all to deliver to?
cdef dict _stats = {}            # subscriber name -> _Stat
cdef dict _scope_locals = {}     # frame -> tuple of scope-local Subscribers


@cython.final
cdef class _Stat:
    pass


cdef _Stat _stat_for(str name):
    cdef _Stat st = _stats.get(name)
    if st is None:
        st = _Stat()
        _stats[name] = st
    return st


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

    def __dealloc__(self):
        if self._lock != NULL:
            PyThread_free_lock(self._lock)

    cdef int deliver(self, object event) except -1:
        cdef unsigned long me = PyThread_get_thread_ident()
        # Re-entrant: a subscriber that emits an event from its callback on the same thread
        # does not deadlock. ``_owner`` is only ever equal to ``me`` if this thread set it.
        if nf_load_relaxed(&self._owner) == me:
            self._depth += 1
        else:
            if not PyThread_acquire_lock(self._lock, NOWAIT_LOCK):
                with nogil:
                    PyThread_acquire_lock(self._lock, WAIT_LOCK)
            nf_store_relaxed(&self._owner, me)
            self._depth = 1
        try:
            self._stat.calls += 1
            try:
                self.callback(event)
            except Exception as exc:  # isolate: the emitter and other subscribers go on
                self._stat.errors += 1
                if not self._warned:
                    self._warned = True
                    warnings.warn(
                        f"nemoflow: subscriber {self.name!r} raised {type(exc).__name__}: "
                        f"{exc}; further errors are counted in nemoflow.diagnostics()",
                        RuntimeWarning, stacklevel=2)
        finally:
            self._depth -= 1
            if self._depth == 0:
                nf_store_relaxed(&self._owner, 0)
                PyThread_release_lock(self._lock)
        return 0


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
        locals_ = _scope_locals.get(f, ())
        for s in locals_:
            if (<Subscriber>s).name == name:
                raise AlreadyExistsError(f"already exists: {name} subscriber already exists")
        _scope_locals[f] = locals_ + (sub,)
        f._has_locals = True
        _n_local += 1
        _refresh_enabled()


def local_deregister(frame, name):
    """Detach a scope-local subscriber; False when no such name is attached."""
    global _n_local
    _check_active(frame)
    cdef ScopeHandle f = <ScopeHandle>frame
    with _registry_lock:
        locals_ = _scope_locals.get(f, ())
        kept = tuple([s for s in locals_ if (<Subscriber>s).name != name])
        if len(kept) == len(locals_):
            return False
        if kept:
            _scope_locals[f] = kept
        else:
            del _scope_locals[f]
            f._has_locals = False
        _n_local -= 1
        _refresh_enabled()
        return True


cdef int _drop_locals(ScopeHandle frame) except -1:
    global _n_local
    with _registry_lock:
        locals_ = _scope_locals.pop(frame, None)
        frame._has_locals = False
        if locals_:
            _n_local -= len(<tuple>locals_)
            _refresh_enabled()
    return 0


cdef int _deliver(object event, ScopeHandle top) except -1:
    cdef Subscriber sub
    cdef ScopeHandle f
    cdef list chain
    cdef Py_ssize_t i
    for s in _subscribers:
        (<Subscriber>s).deliver(event)
    if _n_local:
        chain = []
        f = top
        while f is not None:
            if f._has_locals:
                locals_ = _scope_locals.get(f)
                if locals_:
                    chain.append(locals_)
            f = f._prev
        for i in range(len(chain) - 1, -1, -1):
            for s in <tuple>chain[i]:
                (<Subscriber>s).deliver(event)
    return 0


# ---------------------------------------------------------------------------------------------
# Scope lifecycle.

cdef inline int _check_name(name) except -1:
    if type(name) is not str and not isinstance(name, str):
        raise TypeError(f"name must be str, not {type(name).__name__}")
    return 0


cdef inline int _check_scope_type(scope_type) except -1:
    if type(scope_type) is not _ScopeType:
        raise TypeError(f"scope_type must be a ScopeType, not {type(scope_type).__name__}")
    return 0


cdef inline int _check_parent(handle) except -1:
    if handle is not None and not isinstance(handle, ScopeHandle):
        raise TypeError(f"handle must be a ScopeHandle or None, not {type(handle).__name__}")
    return 0


cdef int _attr_value(attributes) except? -1:
    if attributes is None:
        return 0
    if not isinstance(attributes, int) or isinstance(attributes, bool):
        raise TypeError(f"attributes must be an attribute flag, not {type(attributes).__name__}")
    return <int>attributes


cdef ScopeHandle _start(str name, object scope_type, ScopeHandle parent, int attrs,
                        object data_raw, object meta_raw, object input_raw, int64_t ts,
                        int kind, object profile, type cls):
    cdef ScopeHandle top = _top()
    cdef ScopeEvent ev
    if parent is None:
        parent = top
    cdef ScopeHandle frame = _new_frame(cls, kind, name, scope_type, attrs, parent, top,
                                        data_raw, meta_raw, profile, ts)
    if _enabled:
        ev = ScopeEvent.__new__(ScopeEvent)
        ev._frame = frame
        ev._ts = ts
        ev._data = input_raw
        _deliver(ev, top)
    return frame


def start(name, scope_type, parent, attributes, data, metadata, input, timestamp,
          int kind=_KIND_SCOPE, profile=None, type cls=ScopeHandle):
    """Open a scope (emit its start event) without binding it; returns the frame."""
    _check_name(name)
    _check_scope_type(scope_type)
    _check_parent(parent)
    cdef int attrs = _attr_value(attributes)
    cdef int64_t ts = nf_now_ns() if timestamp is None else _timestamp_ns(timestamp)
    data_raw = _encode(data, False)
    meta_raw = _encode(metadata, False)
    input_raw = _encode(input, False)
    return _start(name, scope_type, parent, attrs, data_raw, meta_raw, input_raw, ts, kind,
                  profile, cls)


cdef inline int64_t _auto_end_ts(ScopeHandle frame) noexcept:
    # max(now, start + 1 µs): an automatically stamped end is strictly after its start.
    cdef int64_t ts = nf_now_ns()
    cdef int64_t floor = frame._start_ns + 1000
    return ts if ts > floor else floor


cdef int _end(ScopeHandle frame, object out_raw, object meta_raw, int64_t ts, int status,
              object desc, ScopeHandle top) except -1:
    cdef ScopeEvent ev
    frame._closed = True
    if _enabled:
        ev = ScopeEvent.__new__(ScopeEvent)
        ev._frame = frame
        ev._is_end = True
        ev._ts = ts
        ev._data = out_raw
        ev._end_meta = meta_raw
        ev._status = status
        ev._desc = desc
        _deliver(ev, frame if top is None else top)
    if frame._has_locals:
        _drop_locals(frame)
    return 0


def end(ScopeHandle frame, output, metadata, timestamp, int status=_STATUS_NONE, desc=None,
        ScopeHandle top=None):
    """Close ``frame`` (emit its end event, drop its scope-local registrations)."""
    cdef int64_t ts = _auto_end_ts(frame) if timestamp is None else _timestamp_ns(timestamp)
    out_raw = _encode(output, False)
    meta_raw = _encode(metadata, False)
    _end(frame, out_raw, meta_raw, ts, status, desc, top)


def push(name, scope_type, *, handle=None, attributes=None, data=None, metadata=None,
         input=None, timestamp=None):
    """Open a scope on the current stack and make it current; returns its handle."""
    _check_name(name)
    _check_scope_type(scope_type)
    _check_parent(handle)
    cdef int attrs = _attr_value(attributes)
    cdef int64_t ts = nf_now_ns() if timestamp is None else _timestamp_ns(timestamp)
    data_raw = _encode(data, False)
    meta_raw = _encode(metadata, False)
    input_raw = _encode(input, False)
    cdef ScopeHandle frame = _start(name, scope_type, handle, attrs, data_raw, meta_raw,
                                    input_raw, ts, _KIND_SCOPE, None, ScopeHandle)
    PyContextVar_Set(_current, frame)
    return frame


cdef int _check_poppable(handle) except -1:
    if not isinstance(handle, ScopeHandle):
        raise TypeError(f"handle must be a ScopeHandle, not {type(handle).__name__}")
    cdef ScopeHandle h = <ScopeHandle>handle
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
    _check_poppable(handle)
    cdef ScopeHandle h = <ScopeHandle>handle
    cdef int64_t ts = _auto_end_ts(h) if timestamp is None else _timestamp_ns(timestamp)
    out_raw = _encode(output, False)
    meta_raw = _encode(metadata, False)
    _end(h, out_raw, meta_raw, ts, _STATUS_NONE, None, None)
    PyContextVar_Set(_current, h._prev)


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
    _check_name(name)
    _check_parent(handle)
    if category is not None and not isinstance(category, str):
        raise TypeError(f"category must be str or None, not {type(category).__name__}")
    cdef int64_t ts = nf_now_ns() if timestamp is None else _timestamp_ns(timestamp)
    data_raw = _encode(data, False)
    meta_raw = _encode(metadata, False)
    schema_raw = _check_schema(data_schema)
    profile_raw = _encode(category_profile, False)
    cdef ScopeHandle top = _top()
    if not _enabled:
        return
    cdef uint64_t hi, lo
    cdef MarkEvent ev = MarkEvent.__new__(MarkEvent)
    nf_uuid7(ts, &hi, &lo)
    ev._uuid_s = _format_uuid(hi, lo)
    ev._parent = top if handle is None else <ScopeHandle>handle
    ev._name = name
    ev._ts = ts
    ev._data = data_raw
    ev._meta = meta_raw
    ev._schema = schema_raw
    ev._category = category
    ev._profile = profile_raw
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
    return _enabled


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
        _check_name(name)
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
        cdef ScopeHandle frame = _start(self._name, self._scope_type, self._parent,
                                        self._attrs, self._data, self._meta, self._input, ts,
                                        _KIND_SCOPE, None, ScopeHandle)
        self._frame = frame
        self._token = PyContextVar_Set(_current, frame)
        self._active = True
        return frame

    def __enter__(self):
        return self._enter()

    cdef int _exit(self, exc, output) except -1:
        cdef ScopeHandle frame = self._frame
        cdef int64_t ts
        self._active = False
        try:
            if not frame._closed:
                ts = self._end_ts if self._has_end_ts else _auto_end_ts(frame)
                if exc is None:
                    _end(frame, _lenient(output) if _enabled else None, None, ts, _STATUS_OK,
                         None, None)
                else:
                    _end(frame, None, None, ts, _STATUS_ERROR, _describe(exc), None)
        finally:
            try:
                PyContextVar_Reset(_current, self._token)
            except ValueError:  # exited in another context than entered: restore by value
                PyContextVar_Set(_current, frame._prev)
            self._token = None
        return 0

    def __exit__(self, exc_type, exc, tb):
        self._exit(exc, None)
        return False


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
        _check_name(name)
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
        if _enabled and self._capture is not None:
            try:
                inp = _encode(self._capture(args, kwargs), True)
            except Exception:  # capture must not break the traced call
                inp = None
        cdef ScopeHandle frame = _start(self._name, self._scope_type, None, self._attrs, None,
                                        self._meta, inp, nf_now_ns(), _KIND_SCOPE, None,
                                        ScopeHandle)
        token = PyContextVar_Set(_current, frame)
        try:
            result = self._fn(*args, **kwargs)
        except BaseException as exc:
            _end(frame, None, None, _auto_end_ts(frame), _STATUS_ERROR, _describe(exc), None)
            raise
        else:
            _end(frame, _lenient(result) if (_enabled and self._keep_output) else None, None,
                 _auto_end_ts(frame), _STATUS_OK, None, None)
        finally:
            try:
                PyContextVar_Reset(_current, token)
            except ValueError:  # the function switched contexts under us: restore by value
                PyContextVar_Set(_current, frame._prev)
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
            subs[name] = {"calls": st.calls, "errors": st.errors}
    return {"backend": BACKEND, "subscribers": subs}


def _reset_for_tests():
    """Forget subscribers, counters and registrations (test isolation only)."""
    global _subscribers, _n_local
    with _registry_lock:
        _subscribers = ()
        _n_local = 0
        _stats.clear()
        for f in _scope_locals:
            (<ScopeHandle>f)._has_locals = False
        _scope_locals.clear()
        _refresh_enabled()
