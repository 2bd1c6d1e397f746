# Frames (handles), ids and timestamps, and the binding of the current frame.
# Included by _core.pyx, in the order listed there; declarations live in _core.pxd.

# ---------------------------------------------------------------------------------------------
# Clock, timestamps and ids.

def now_ns():
    """Nanoseconds since the epoch (CLOCK_REALTIME)."""
    return nf_now_ns()


cdef object _EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
cdef object _datetime = _dt.datetime


cdef int64_t _timestamp_ns(object ts) except? -1:
    if isinstance(ts, str):
        raise TypeError("timestamp must be a timezone-aware datetime.datetime, not str")
    if not isinstance(ts, _datetime):
        raise TypeError(f"timestamp must be a timezone-aware datetime.datetime, "
                        f"not {type(ts).__name__}")
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError("timestamp must be a timezone-aware datetime.datetime (naive "
                         "datetime given)")
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
    """Whether the scope of ``frame`` has ended (``TypeError`` for a handle nemoflow did not
    make)."""
    _check_made(frame)
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
