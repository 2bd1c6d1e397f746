# Python-facing context managers and decorators: scope(), Span, Tracer, TracedFunction.
# Included by _core.pyx, in the order listed there; declarations live in _core.pxd.

# ---------------------------------------------------------------------------------------------
# Context managers: ``scope.scope(...)`` and the span behind ``nf.trace``.

cdef str _describe(object exc):
    cdef str text = _exception_text(exc)
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
cdef class InputCapture:
    """Records a call's arguments by parameter name: ``(args, kwargs) -> Encoded or None``."""

    def __init__(self, tuple names, bint skip_receiver=False, receiver=None):
        cdef Py_ssize_t i
        self._names = names
        self._skip = 1 if skip_receiver else 0
        self._receiver = receiver
        self._sorted = None
        if 0 < len(names) <= 32 and len(set(names)) == len(names) and all(
                type(k) is str and PyUnicode_IS_COMPACT_ASCII(k) for k in names):
            order = sorted(range(len(names)), key=names.__getitem__)
            self._sorted = tuple([names[i] for i in order])
            for i in range(len(order)):
                self._order[i] = order[i]

    cdef object _raw(self, tuple args, dict kwargs):
        # The encoded arguments, or None when they cannot be encoded; never raises Exception.
        cdef Py_ssize_t n = PyTuple_GET_SIZE(args) - self._skip
        cdef Py_ssize_t named = PyTuple_GET_SIZE(self._names), i, m
        cdef PyObject *values_in_order[32]
        cdef char out[NF_JSON_MAX]
        if n <= 0 and not kwargs:
            return b"{}"
        if n == named and not kwargs and self._sorted is not None and _redactor is None:
            # Every parameter given positionally: written straight from the arguments.
            for i in range(named):
                values_in_order[i] = PyTuple_GET_ITEM(args, self._skip + self._order[i])
            m = nf_json_fast_object(self._sorted, values_in_order, out)
            if m >= 0:
                return PyBytes_FromStringAndSize(out, m)
        values = {}
        for i in range(n if n < named else named):
            values[<object>PyTuple_GET_ITEM(self._names, i)] = \
                <object>PyTuple_GET_ITEM(args, self._skip + i)
        if n > named:
            values["*args"] = list(args[self._skip + named:])
        if kwargs:
            values.update(kwargs)
            if self._skip:
                values.pop(self._receiver, None)
        return _lenient(values)

    def __call__(self, args, kwargs):
        raw = self._raw(tuple(args), dict(kwargs) if kwargs else None)
        return None if raw is None else Encoded(raw)


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
            if type(self._capture) is InputCapture:
                inp = (<InputCapture>self._capture)._raw(args, kwargs)
            else:
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
