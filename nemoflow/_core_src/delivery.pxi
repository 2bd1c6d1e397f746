# The delivery thread: batches taken from the rings, encoded, written, handed to consumers.
# Included by _core.pyx, in the order listed there; declarations live in _core.pxd.

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


cdef int _retry_phase(nf_record *batch, Py_ssize_t n) except -1:
    return _retry_deferred()


cdef int _release_otel(nf_record *batch, Py_ssize_t n) except -1:
    # The only Python objects records hold: OpenTelemetry parent contexts (bridge only).
    cdef Py_ssize_t i
    for i in range(n):
        if batch[i].otel != NULL:
            Py_XDECREF(<PyObject *>batch[i].otel)
            batch[i].otel = NULL
    return 0


cdef int _release_batch(nf_ring **rings, uint64_t *counts, Py_ssize_t nrings,
                        nf_record *batch) noexcept nogil:
    # Done with the batch: its payloads' memory goes back to the producers. Returns whether
    # a record holds an OpenTelemetry context (released by the caller, with the GIL).
    cdef int otel = 0
    cdef Py_ssize_t i, k, at = 0
    for i in range(nrings):
        if counts[i] == 0:
            continue
        for k in range(at, at + <Py_ssize_t>counts[i]):
            nf_record_free_heap(rings[i], &batch[k])
            otel |= batch[k].otel != NULL
        nf_ring_release(rings[i], &batch[at + <Py_ssize_t>counts[i] - 1])
        at += <Py_ssize_t>counts[i]
    return otel


def _delivery_main():
    """The delivery thread: drain every ring in batches, write sinks, feed consumers.

    Encoding, writing and freeing payloads run without the GIL: records hold no Python object
    (but an OpenTelemetry parent context, with the bridge on). The GIL is taken only to call
    Python consumers (once per batch), to release those contexts, to retry a deferred call,
    or to rotate a file or report a failure.
    """
    global _delivery_ident
    _delivery_ident = PyThread_get_thread_ident()
    cdef nf_record *batch = <nf_record *>nf_malloc(_BATCH * sizeof(nf_record))
    cdef uint64_t *counts = NULL
    cdef nf_ring **rings = NULL
    cdef nf_sink *sinks[NF_MAX_SINKS]
    cdef int n_sinks = 0
    cdef size_t cap = 0
    cdef Py_ssize_t nrings = 0, total = 0, i
    cdef int stopping = 0, failed = 0
    cdef nf_buf buf
    buf.data = NULL
    buf.len = 0
    buf.cap = 0
    if batch == NULL:
        raise MemoryError()
    try:
        with nogil:
            while True:
                nrings = nf_pipe_next(&rings, &cap, _TICK_NS, total > 0, &stopping)
                if nrings < 0:
                    failed = 1
                    break
                counts = <uint64_t *>nf_realloc(counts, (nrings + 1) * sizeof(uint64_t))
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
                        buf.len = 0
                        for i in range(total):
                            if nf_encode(&buf, &batch[i]) < 0 or nf_buf_reserve(&buf, 1) < 0:
                                failed = 1
                                break
                            buf.data[buf.len] = 10  # newline
                            buf.len += 1
                        if failed:
                            _release_batch(rings, counts, nrings, batch)
                            break
                        _write_sinks(sinks, n_sinks, buf.data, buf.len, total)
                    if _n_consumers:
                        with gil:
                            _guarded(_python_phase, batch, total)
                if _n_deferred:
                    with gil:
                        _guarded(_retry_phase, batch, 0)
                if total and _release_batch(rings, counts, nrings, batch):
                    with gil:
                        _release_otel(batch, total)
                nf_pipe_finish(rings, counts, <size_t>nrings, sinks, n_sinks)
                # Stopping comes after a flush: what was emitted before it is delivered. What
                # threads still emit (daemon threads at exit) is counted, not waited for.
                if stopping:
                    break
        if failed:
            raise MemoryError("nemoflow: the delivery thread ran out of memory")
    finally:
        nf_free(batch)
        nf_free(counts)
        nf_free(rings)
        nf_buf_free(&buf)


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
        _warn_quietly(f"nemoflow: {getattr(consumer, 'name', type(consumer).__name__)!r} was "
                      f"detached after waiting {_exit_timeout:g} s for the delivery thread; up to "
                      f"{n} events were not delivered to it")
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
