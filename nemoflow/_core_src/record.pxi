# A record built on the traced thread and published into its per-thread ring.
# Included by _core.pyx, in the order listed there; declarations live in _core.pxd.

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

if nf_pipe_init() != 0:
    raise ImportError("nemoflow: could not initialise the event pipeline")


cdef inline void *_own(object o) noexcept:
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
