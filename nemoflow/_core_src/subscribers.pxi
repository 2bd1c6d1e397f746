# Subscribers: synchronous delivery on the traced thread.
# Included by _core.pyx, in the order listed there; declarations live in _core.pxd.

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
