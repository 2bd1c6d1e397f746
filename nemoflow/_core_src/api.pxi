# Python-facing scope lifecycle: start/end, push/pop, marks.
# Included by _core.pyx, in the order listed there; declarations live in _core.pxd.

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
    if _recording and _event_hook is None:  # (with event middleware: in _announce)
        _record_scope(NF_REC_START, frame, ts, input_raw, None, _STATUS_NONE, None)
    return frame


cdef inline int _announce(ScopeHandle frame, object input_raw) except -1:
    if _event_hook is not None:
        return _announce_through_hook(frame, input_raw)
    if _enabled:
        _deliver(_scope_event(frame, False, frame._start_ns, input_raw, None, _STATUS_NONE,
                              None), frame._prev)
    return 0


cdef int _announce_through_hook(ScopeHandle frame, object input_raw) except -1:
    if not (_enabled or _recording):
        return 0
    cdef ScopeEvent ev = _scope_event(frame, False, frame._start_ns, input_raw, None,
                                      _STATUS_NONE, None)
    copy, interrupted = _through_hook(ev, frame._prev)
    if copy is not None:
        ev = <ScopeEvent?>copy
    if _recording:
        _record_scope_as(NF_REC_START, frame, ev)
    if _enabled:
        _deliver(ev, frame._prev)
    if interrupted is not None:
        raise interrupted
    return 0


cdef tuple _through_hook(object ev, ScopeHandle top):
    # (the copy to emit or None, the BaseException that interrupted the hook or None). An
    # interrupted hook leaves the event written with its fields cleared (fail closed), and the
    # exception raised once the operation is complete.
    try:
        return _event_hook(ev, top), None
    except BaseException as exc:
        return with_fields(ev, None, None, None), exc


cdef int _record_scope_as(int rtype, ScopeHandle frame, ScopeEvent ev) except -1:
    # The record of ``ev`` (a with_fields copy): a stand-in frame lends the scope's identity
    # and ev's fields, so the real frame, which other threads may read, is never changed.
    cdef ScopeHandle f = ScopeHandle.__new__(ScopeHandle)
    f._hi, f._lo, f._parent, f._name = frame._hi, frame._lo, frame._parent, frame._name
    f._attrs, f._kind, f._category, f._otel = frame._attrs, frame._kind, frame._category, frame._otel
    f._meta, f._profile = ev._meta, ev._profile
    _record_scope(rtype, f, ev._ts, ev._data, ev._end_meta, ev._status, ev._desc)
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
    if _event_hook is not None and (_enabled or _recording):
        return _end_through_hook(frame, out_raw, meta_raw, ts, status, desc, top)
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


cdef int _end_through_hook(ScopeHandle frame, object out_raw, object meta_raw, int64_t ts,
                           int status, object desc, ScopeHandle top) except -1:
    if top is None:
        top = frame
    cdef ScopeEvent ev
    try:
        ev = _scope_event(frame, True, ts, out_raw, meta_raw, status, desc)
        copy, interrupted = _through_hook(ev, top)
        if copy is not None:
            ev = <ScopeEvent?>copy
        if _recording:
            _record_scope_as(NF_REC_END, frame, ev)
        if _enabled:
            _deliver(ev, top)
    finally:
        if frame._has_locals:
            _drop_locals(frame)
    if interrupted is not None:
        raise interrupted
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


cdef object _with_severity(object metadata, object severity):
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
    if category is not None:
        if not isinstance(category, str):
            raise TypeError(f"category must be str or None, not {type(category).__name__}")
        category = _check_name(category)
    cdef int64_t ts = nf_now_ns() if timestamp is None else _timestamp_ns(timestamp)
    data_raw = _encode(data, False)
    # (not assigned to ``metadata``: an argument that is reassigned costs a reference pair)
    meta_raw = _encode(metadata if severity is None else _with_severity(metadata, severity),
                       False)
    schema_raw = _check_schema(data_schema)
    profile_raw = _encode(category_profile, False)
    cdef ScopeHandle top = _top()
    if not _enabled and not _recording:
        return
    cdef uint64_t hi, lo
    cdef MarkEvent ev
    cdef ScopeHandle parent = top if handle is None else <ScopeHandle>handle
    if _event_hook is not None:
        # (a Python-level call: the C compiler keeps the hooked path out of this function)
        return _mark_through_hook(parent, name, ts, data_raw, meta_raw, schema_raw, category,
                                  profile_raw, top)
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


def _mark_through_hook(ScopeHandle parent, str name, int64_t ts, data_raw, meta_raw, schema_raw,
                       category, profile_raw, ScopeHandle top):
    """The rest of ``event`` while event middleware is registered."""
    cdef uint64_t hi, lo
    nf_uuid7(ts, &hi, &lo)
    otel = (_otel_parent_context() if (_otel_capture is not None and parent._parent is None)
            else None)
    cdef MarkEvent ev = MarkEvent.__new__(MarkEvent)
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
    copy, interrupted = _through_hook(ev, top)
    if copy is not None:
        ev = <MarkEvent?>copy
    if _recording:
        _record_mark(hi, lo, parent, name, ts, ev._data, ev._meta, schema_raw, category,
                     ev._profile, otel)
    if _enabled:
        _deliver(ev, top)
    if interrupted is not None:
        raise interrupted
