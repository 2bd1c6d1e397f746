# Configuration, diagnostics, exit and fork.
# Included by _core.pyx, in the order listed there; declarations live in _core.pxd.


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
        pthread_mutex_lock(&nf_pipe.mutex)
        nf_pipe.capacity = <uint64_t>ring_size
        pthread_mutex_unlock(&nf_pipe.mutex)
    if arena_size is not None:
        pthread_mutex_lock(&nf_pipe.mutex)
        nf_pipe.arena_cap = <uint64_t>arena_size
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


def _pipeline_stats():
    # Copied into C memory under the mutex, turned into Python objects after: allocating them
    # can run the garbage collector, whose finalizers may need the same mutex.
    cdef nf_ring *r
    cdef _RingStat *copy = NULL
    cdef size_t n = 0, cap = 0, i
    cdef uint64_t dropped, waits, high, freed, capacity, arena_cap, oversize, arena_high
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
        nf_free(copy)
        cap = n + 16
        copy = <_RingStat *>nf_malloc(cap * sizeof(_RingStat))
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
        copy[i].arena_cap = r.arena_cap
        copy[i].arena_high = r.arena_high
        copy[i].oversize = r.oversize
        i += 1
        r = r.next
    dropped = nf_pipe.dropped_freed
    waits = nf_pipe.waits_freed
    high = nf_pipe.high_water_freed
    freed = nf_pipe.rings_freed
    capacity = nf_pipe.capacity
    arena_cap = nf_pipe.arena_cap
    oversize = nf_pipe.oversize_freed
    arena_high = nf_pipe.arena_high_freed
    pthread_mutex_unlock(&nf_pipe.mutex)
    try:
        rings = [{"thread": copy[i].thread, "capacity": copy[i].capacity,
                  "pending": copy[i].pending, "high_water": copy[i].high_water,
                  "dropped": copy[i].dropped, "waits": copy[i].waits,
                  "closed": bool(copy[i].closed), "arena_size": copy[i].arena_cap,
                  "arena_high": copy[i].arena_high, "oversize": copy[i].oversize}
                 for i in range(n)]
    finally:
        nf_free(copy)
    return _common.pipeline_stats(
        recording=_recording, drop=_drop_when_full, ring_size=capacity, arena_size=arena_cap,
        rings=rings, freed=freed, dropped_freed=dropped, waits_freed=waits, high_freed=high,
        oversize_freed=oversize, arena_high_freed=arena_high, lost_no_memory=_lost_no_memory,
        deferred=_n_deferred, exit_timeout=_exit_timeout,
        abandoned_at_detach=_abandoned_at_detach, abandoned_at_exit=_abandoned_at_exit)


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
