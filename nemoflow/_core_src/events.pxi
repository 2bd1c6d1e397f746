# Event objects: what subscribers and exporters receive.
# Included by _core.pyx, in the order listed there; declarations live in _core.pxd.

# ---------------------------------------------------------------------------------------------
# Events.

cdef object _merge_metadata = _common.merge_metadata  # what the C merge writes, decoded
cdef object _exception_text = _common.exception_text


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


cdef str _line_of(nf_record *r, str name, object data, object meta, object extra, object text,
                  object profile):
    # The line of an event built in Python: its fields copied into a blob of its own.
    cdef object long_name = None if _inline_name(name) else name
    cdef size_t need = <size_t>_fields_need(long_name, data, meta, extra, text, profile)
    cdef char *blob = <char *>nf_malloc(need + 1)
    if blob == NULL:
        raise MemoryError()
    r.name_len = 0
    if long_name is None:
        _set_inline_name(r, name)
    r.heap = 0
    try:
        _put_fields(r, blob, long_name, data, meta, extra, text, profile)
        r.blob = blob
        return _line(r)
    finally:
        nf_free(blob)


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
        if self._is_end and self._meta is None and self._end_meta is None:
            # Only the status, if any: made directly rather than encoded and decoded.
            if self._status == _STATUS_NONE:
                return None
            if self._status == _STATUS_OK:
                return {"otel.status_code": "OK"}
            return {"otel.status_code": "ERROR", "otel.status_description": self._desc}
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
        r.uuid_hi = self._hi
        r.uuid_lo = self._lo
        r.parent_hi = self._phi
        r.parent_lo = self._plo
        r.ts = self._ts
        r.otel = NULL
        r.attrs = <unsigned int>self._attrs
        r.type = NF_REC_END if self._is_end else NF_REC_START
        r.kind = <unsigned char>self._kind
        r.status = <unsigned char>self._status
        r.category = <unsigned char>self._category
        return _line_of(&r, self._name, self._data, self._meta, self._end_meta, self._desc,
                        self._profile)

    def to_dict(self):
        """The event as a dict with every ATOF field (a fresh copy on every call)."""
        return _loads(self.to_json())

    def __repr__(self):
        return f"<ScopeEvent {self.scope_category} {self.name!r} {self.uuid}>"


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
        r.otel = NULL
        r.attrs = 0
        r.type = NF_REC_MARK
        r.kind = 0
        r.status = 0
        r.category = 0
        return _line_of(&r, self._name, self._data, self._meta, self._schema, self._category,
                        self._profile)

    def to_dict(self):
        """The event as a dict with every ATOF field (a fresh copy on every call)."""
        return _loads(self.to_json())

    def __repr__(self):
        return f"<MarkEvent {self._name!r} {self.uuid}>"

    @property
    def severity(self):
        """The ``LogSeverity`` given to ``event(..., severity=)``, or None."""
        return _severity_of(_decode(self._meta))


# ---------------------------------------------------------------------------------------------
# Event middleware (nemoflow/_middleware.py): while a sanitizer or metadata injector is
# registered, every scope start, scope end and mark passes through ``_event_hook(event, top)``
# before it is recorded or delivered; it returns None (unchanged) or the copy to emit instead,
# made by ``with_fields``. While none is registered its whole cost is an ``is not None`` test.
cdef object _event_hook = None


cdef object _severity_of(object metadata):
    if isinstance(metadata, dict):
        wire = metadata.get(SEVERITY_KEY)
        if isinstance(wire, str):
            return LogSeverity._value2member_map_.get(wire)
    return None


def set_event_hook(hook):
    """Pass every event through ``hook(event, top)`` from now on (None: off)."""
    global _event_hook
    _event_hook = hook


def with_fields(ev, data, metadata, category_profile):
    """A copy of the event ``ev`` with the given data, metadata and category_profile (encoded
    JSON bytes or None); an end event's metadata is then written as given."""
    for raw in (data, metadata, category_profile):
        if raw is not None and type(raw) is not bytes:
            raise TypeError(f"fields are encoded JSON bytes or None, not {type(raw).__name__}")
    cdef MarkEvent m, msrc
    cdef ScopeEvent s, src
    if isinstance(ev, MarkEvent):
        msrc = <MarkEvent>ev
        m = MarkEvent.__new__(MarkEvent)
        m._hi, m._lo, m._phi, m._plo = msrc._hi, msrc._lo, msrc._phi, msrc._plo
        m._name, m._ts, m._schema, m._category = msrc._name, msrc._ts, msrc._schema, msrc._category
        m._otel = msrc._otel
        m._data, m._meta, m._profile = data, metadata, category_profile
        return m
    if not isinstance(ev, ScopeEvent):
        raise TypeError(f"expected a ScopeEvent or MarkEvent, got {type(ev).__name__}")
    src = <ScopeEvent>ev
    s = ScopeEvent.__new__(ScopeEvent)
    s._hi, s._lo, s._phi, s._plo = src._hi, src._lo, src._phi, src._plo
    s._name, s._attrs, s._kind, s._category = src._name, src._attrs, src._kind, src._category
    s._is_end, s._ts, s._otel = src._is_end, src._ts, src._otel
    s._data, s._profile, s._status, s._desc = data, category_profile, _STATUS_NONE, None
    if src._is_end:
        s._meta, s._end_meta = None, metadata
    else:
        s._meta, s._end_meta = metadata, None
    return s
