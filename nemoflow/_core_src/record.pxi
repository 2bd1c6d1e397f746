# A record built on the traced thread and published into its per-thread ring.
# Included by _core.pyx, in the order listed there; declarations live in _core.pxd.

# ---------------------------------------------------------------------------------------------
# The pipeline: exporters and buffered subscribers are fed from per-thread rings of C records
# by one delivery thread, never on the traced thread. Nothing attached: nothing is recorded.

cdef bint _recording = False       # any sink or buffered consumer attached
# OpenTelemetry parent capture (the SDK bridge): while an OpenTelemetry exporter is attached
# and configure(otel_parent="auto"), a top-level scope or mark calls _otel_capture() once at
# its start; otherwise the hot path pays one global test. The context travels in the record's
# `otel` slot, the only Python object a record can hold.
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


# ---------------------------------------------------------------------------------------------
# Payloads are copied into memory the core owns (the ring's arena, see nemoflow_ring.h), so the
# delivery thread never needs the GIL to write or free them. A record's fields, in NF_F_*
# order: the name (unless short ASCII: inline), data, metadata, end metadata or data_schema,
# status description or category, category_profile.

cdef inline bint _inline_name(str name) noexcept:
    return PyUnicode_IS_COMPACT_ASCII(name) and PyUnicode_GET_LENGTH(name) <= NF_NAME_INLINE


cdef inline Py_ssize_t _field_need(object v) except -1:
    # The most bytes field value v (bytes, str or None) takes in a blob.
    cdef size_t n
    if v is None:
        return 0
    if type(v) is bytes:
        n = <size_t>PyBytes_GET_SIZE(v)
    elif isinstance(v, str):
        n = nf_utf8_bound(v)
    else:
        raise TypeError(f"nemoflow: a record field must be bytes or str, not {type(v).__name__}")
    if n > NF_FIELD_MAX:
        raise ValueError("nemoflow: a payload or text larger than 4 GiB cannot be recorded")
    return <Py_ssize_t>n


cdef inline Py_ssize_t _fields_need(object name, object data, object meta, object extra,
                                    object text, object profile) except -1:
    # -1 only with an exception set: the check after each call is a compare, no lookup.
    return (_field_need(name) + _field_need(data) + _field_need(meta) + _field_need(extra)
            + _field_need(text) + _field_need(profile))


cdef inline size_t _put_field(nf_record *r, char *p, int f, object v) noexcept:
    # Field f at p; the bytes written.
    cdef size_t n
    if v is None:
        r.len[f] = 0
        return 0
    if type(v) is bytes:
        n = <size_t>PyBytes_GET_SIZE(v)
        memcpy(p, PyBytes_AS_STRING(v), n)
    else:
        n = nf_put_str_utf8(p, v)
    r.present |= <unsigned char>(1 << f)
    r.len[f] = <unsigned int>n
    return n


cdef size_t _put_fields(nf_record *r, char *p, object name, object data, object meta,
                        object extra, object text, object profile) noexcept:
    # Every field at p, one after another; the bytes written. name is None when inline.
    cdef size_t n = 0
    r.present = 0
    n += _put_field(r, p + n, NF_F_NAME, name)
    n += _put_field(r, p + n, NF_F_DATA, data)
    n += _put_field(r, p + n, NF_F_META, meta)
    n += _put_field(r, p + n, NF_F_EXTRA, extra)
    n += _put_field(r, p + n, NF_F_TEXT, text)
    n += _put_field(r, p + n, NF_F_PROFILE, profile)
    return n


cdef inline void _set_inline_name(nf_record *r, str name) noexcept:
    memcpy(r.name_inline, PyUnicode_DATA(name), <size_t>PyUnicode_GET_LENGTH(name))
    r.name_len = <unsigned char>PyUnicode_GET_LENGTH(name)


cdef inline bint _no_fields(object name, object data, object meta, object extra, object text,
                            object profile) noexcept:
    return (name is None and data is None and meta is None and extra is None and text is None
            and profile is None)


cdef int _publish(nf_ring *ring, nf_record *r, bint bare, size_t need, object name, object data,
                  object meta, object extra, object text, object profile) except -1:
    # Copy the record's payloads into the core's memory, then publish it.
    cdef char *blob
    cdef size_t used
    if bare:
        r.blob = NULL
        r.present = 0
        r.heap = 0
        memset(r.len, 0, sizeof(r.len))
        r.arena_end = nf_ring_arena_end(ring)
    else:
        blob = nf_payload_begin(ring, need, r)
        if blob == NULL:
            _lost(ring, r)
            return 0
        used = _put_fields(r, blob, name, data, meta, extra, text, profile)
        r.blob = blob
        nf_payload_end(ring, r, used)
    nf_ring_publish(ring, r)
    return 0


cdef void _lost(nf_ring *ring, nf_record *r) noexcept:
    global _lost_no_memory
    _lost_no_memory += 1
    Py_XDECREF(<PyObject *>r.otel)


cdef nf_ring *_ring_with_room(size_t need) except? NULL:
    # This thread's ring once it has room for one record with need payload bytes; NULL when
    # the record is dropped.
    global _lost_no_memory
    if _need_thread:
        _start_delivery()
    cdef nf_ring *ring = nf_ring_get()
    if ring == NULL:
        _lost_no_memory += 1
        return NULL
    if not nf_ring_room(ring, need):
        # The delivery thread cannot wait for itself: its own ring grows instead (and its
        # payloads go to heap blocks), and past that limit an event emitted by one of its
        # consumers is dropped (and counted).
        if PyThread_get_thread_ident() == _delivery_ident:
            if not nf_ring_full(ring) or nf_ring_grow(ring) == 0:
                return ring
            ring.dropped += 1
            return NULL
        if _drop_when_full:
            ring.dropped += 1
            return NULL
        _wait_for_room(ring, need)
    return ring


cdef int _wait_for_room(nf_ring *ring, size_t need) except -1:
    # In slices, running signal handlers in between: Ctrl-C raises here promptly. The record
    # that was waiting is then lost, and counted as dropped.
    cdef int room = 0
    nf_ring_wait_begin(ring)
    try:
        while True:
            with nogil:
                room = nf_ring_wait_slice(ring, need, _SLICE_NS)
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
    cdef str name = frame._name
    cdef object long_name = None if _inline_name(name) else name
    cdef bint bare = _no_fields(long_name, data, frame._meta, extra, text, frame._profile)
    cdef size_t need = 0 if bare else <size_t>_fields_need(long_name, data, frame._meta, extra,
                                                           text, frame._profile)
    cdef nf_ring *ring = _ring_with_room(need)
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
    r.name_len = 0
    if long_name is None:
        _set_inline_name(&r, name)
    r.otel = <PyObject *>_own(frame._otel) if rtype == NF_REC_START else NULL
    r.attrs = <unsigned int>frame._attrs
    r.type = <unsigned char>rtype
    r.kind = <unsigned char>frame._kind
    r.status = <unsigned char>status
    r.category = <unsigned char>frame._category
    return _publish(ring, &r, bare, need, long_name, data, frame._meta, extra, text,
                    frame._profile)


cdef int _record_mark(uint64_t hi, uint64_t lo, ScopeHandle parent, str name, int64_t ts,
                      object data, object meta, object schema, object category,
                      object profile, object otel) except -1:
    cdef object long_name = None if _inline_name(name) else name
    cdef bint bare = _no_fields(long_name, data, meta, schema, category, profile)
    cdef size_t need = 0 if bare else <size_t>_fields_need(long_name, data, meta, schema,
                                                           category, profile)
    cdef nf_ring *ring = _ring_with_room(need)
    if ring == NULL:
        return 0
    cdef nf_record r
    r.uuid_hi = hi
    r.uuid_lo = lo
    r.parent_hi = parent._hi
    r.parent_lo = parent._lo
    r.ts = ts
    r.name_len = 0
    if long_name is None:
        _set_inline_name(&r, name)
    r.otel = <PyObject *>_own(otel)
    r.attrs = 0
    r.type = NF_REC_MARK
    r.kind = 0
    r.status = 0
    r.category = 0
    return _publish(ring, &r, bare, need, long_name, data, meta, schema, category, profile)


cdef object _field_bytes(nf_record *r, int f):
    cdef size_t n
    cdef const char *p = nf_field(r, f, &n)
    return None if p == NULL else PyBytes_FromStringAndSize(p, <Py_ssize_t>n)


cdef object _field_text(nf_record *r, int f):
    cdef size_t n
    cdef const char *p = nf_field(r, f, &n)
    return None if p == NULL else PyUnicode_DecodeUTF8(p, <Py_ssize_t>n, "surrogatepass")


cdef str _record_name(nf_record *r):
    if r.present & (1 << NF_F_NAME):
        return <str>_field_text(r, NF_F_NAME)
    return PyUnicode_DecodeASCII(r.name_inline, r.name_len, NULL)


cdef object _event_from(nf_record *r):
    # A Python event of its own (copies): the record's memory is freed after the batch.
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
        mev._data = _field_bytes(r, NF_F_DATA)
        mev._meta = _field_bytes(r, NF_F_META)
        mev._schema = _field_bytes(r, NF_F_EXTRA)
        mev._category = _field_text(r, NF_F_TEXT)
        mev._profile = _field_bytes(r, NF_F_PROFILE)
        mev._otel = _borrow(r.otel)
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
    sev._meta = _field_bytes(r, NF_F_META)
    sev._profile = _field_bytes(r, NF_F_PROFILE)
    sev._is_end = r.type == NF_REC_END
    sev._ts = r.ts
    sev._data = _field_bytes(r, NF_F_DATA)
    sev._end_meta = _field_bytes(r, NF_F_EXTRA)
    sev._status = r.status
    sev._desc = _field_text(r, NF_F_TEXT)
    if r.type == NF_REC_START:
        sev._otel = _borrow(r.otel)
    return sev
