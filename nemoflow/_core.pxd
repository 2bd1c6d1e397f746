# Declarations of the compiled core: C helpers, cdef classes and their fields.

from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint64_t


cdef extern from "nemoflow_core.h" nogil:
    int64_t nf_now_ns() noexcept
    int nf_install_fork_handler() noexcept
    void nf_init_hex_pairs() noexcept
    void nf_uuid7(int64_t ns, uint64_t *hi, uint64_t *lo) noexcept
    void nf_format_uuid(uint64_t hi, uint64_t lo, char *out) noexcept
    int nf_format_timestamp(int64_t ns, char *out) noexcept
    int nf_has_null(const char *s, size_t n) noexcept
    unsigned long nf_load_relaxed(unsigned long *p) noexcept
    void nf_store_relaxed(unsigned long *p, unsigned long v) noexcept


cdef extern from "nemoflow_ring.h" nogil:
    void *nf_malloc(size_t n)
    void *nf_realloc(void *p, size_t n)
    void nf_free(void *p)
    enum:
        NF_REC_START
        NF_REC_END
        NF_REC_MARK

    ctypedef struct PyObject_ "PyObject"

    enum:
        NF_NAME_INLINE
        NF_MAX_SINKS
        NF_F_NAME
        NF_F_DATA
        NF_F_META
        NF_F_EXTRA
        NF_F_TEXT
        NF_F_PROFILE
        NF_N_FIELDS
    unsigned int NF_FIELD_MAX

    ctypedef struct nf_record:
        uint64_t uuid_hi, uuid_lo, parent_hi, parent_lo
        int64_t ts
        const char *blob
        uint64_t arena_end
        void *otel
        unsigned int len[6]
        unsigned int attrs
        unsigned char type, kind, status, category
        unsigned char present, heap, name_len
        char name_inline[23]
    const char *nf_field(const nf_record *r, int f, size_t *len) noexcept

    ctypedef struct nf_sink:
        int fd
        int err
        int refs
        int failures_unreported
        int64_t events, bytes, errors, bytes_in_file, max_bytes
        int64_t lost, lost_bytes
        int torn, open_err
    nf_sink *nf_sink_new(int fd) noexcept
    void nf_sink_release(nf_sink *k) noexcept
    int nf_sink_attach(nf_sink *k) noexcept
    void nf_sink_detach(nf_sink *k) noexcept

    ctypedef struct nf_ring:
        uint64_t mask, head, tail, delivered, high_water, dropped, waits, id
        uint64_t arena_cap, a_tail, arena_high, oversize
        int closed, heap_out
        unsigned long thread_ident
        nf_ring *next

    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass

    ctypedef struct nf_pipeline:
        pthread_mutex_t mutex
        pthread_cond_t work
        pthread_cond_t progress
        nf_ring *rings
        uint64_t capacity
        uint64_t arena_cap
        int flush_requests
        int wake
        int waiting_producers
        int stopping
        uint64_t rings_freed
        uint64_t dropped_freed
        uint64_t high_water_freed
        uint64_t waits_freed
        uint64_t oversize_freed
        uint64_t arena_high_freed

    nf_pipeline nf_pipe
    int nf_pipe_init() noexcept
    Py_ssize_t nf_pipe_next(nf_ring ***rings, size_t *cap, int64_t tick_ns, int busy,
                            int *stopping) noexcept
    int nf_pipe_sinks(nf_sink **sinks) noexcept
    void nf_pipe_finish(nf_ring **rings, const uint64_t *counts, size_t n, nf_sink **sinks,
                        int n_sinks) noexcept
    void nf_pipe_stop() noexcept
    void nf_pipe_restart() noexcept
    ctypedef struct nf_flush:
        pass
    int nf_pipe_flush_begin(nf_flush *f) noexcept
    int nf_pipe_flush_wait(nf_flush *f, int64_t slice_ns) noexcept
    void nf_pipe_flush_end(nf_flush *f) noexcept
    uint64_t nf_pipe_pending() noexcept
    int nf_pipe_someone_waits() noexcept
    nf_ring *nf_ring_get() noexcept
    int nf_ring_full(nf_ring *ring) noexcept
    int nf_ring_room(nf_ring *ring, size_t need) noexcept
    int nf_ring_grow(nf_ring *ring) noexcept
    void nf_ring_publish(nf_ring *ring, const nf_record *rec) noexcept
    char *nf_payload_begin(nf_ring *ring, size_t need, nf_record *r) noexcept
    void nf_payload_end(nf_ring *ring, nf_record *r, size_t used) noexcept
    uint64_t nf_ring_arena_end(const nf_ring *ring) noexcept
    void nf_ring_release(nf_ring *ring, const nf_record *last) noexcept
    void nf_record_free_heap(nf_ring *ring, nf_record *r) noexcept
    void nf_ring_wait_begin(nf_ring *ring) noexcept
    int nf_ring_wait_slice(nf_ring *ring, size_t need, int64_t slice_ns) noexcept
    void nf_ring_wait_end() noexcept
    uint64_t nf_ring_take(nf_ring *ring, nf_record *out, uint64_t max) noexcept

    ctypedef struct nf_buf:
        char *data
        size_t len, cap
    void nf_buf_free(nf_buf *b) noexcept
    int nf_buf_reserve(nf_buf *b, size_t extra) noexcept
    int nf_encode(nf_buf *b, const nf_record *r) noexcept
    size_t nf_utf8_bound(object s) noexcept
    size_t nf_put_str_utf8(char *p, object s) noexcept
    int nf_write_lines(int fd, const char *data, size_t len, size_t *whole, int *torn) noexcept
    int64_t nf_count_lines(const char *data, size_t len) noexcept

    int pthread_mutex_lock(pthread_mutex_t *m) noexcept
    int pthread_mutex_unlock(pthread_mutex_t *m) noexcept
    int pthread_cond_signal(pthread_cond_t *c) noexcept
    int pthread_cond_broadcast(pthread_cond_t *c) noexcept
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m) noexcept


cdef extern from "nemoflow_json.h":
    enum:
        NF_JSON_MAX
    Py_ssize_t nf_json_fast(object v, char *out) noexcept
    Py_ssize_t nf_json_fast_object(object keys, PyObject **values, char *out) noexcept


cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    void *PyUnicode_DATA(object o)


cdef extern from "pythread.h":
    ctypedef void *PyThread_type_lock
    PyThread_type_lock PyThread_allocate_lock()
    void PyThread_free_lock(PyThread_type_lock)
    int PyThread_acquire_lock(PyThread_type_lock, int) nogil
    int PyThread_acquire_lock_timed(PyThread_type_lock, long long, int) nogil
    void PyThread_release_lock(PyThread_type_lock) nogil
    unsigned long PyThread_get_thread_ident()
    int WAIT_LOCK
    int NOWAIT_LOCK


# Constants of the core (compile-time).
cdef enum:
    _KIND_SCOPE = 0
    _STATUS_NONE = 0
    _STATUS_OK = 1
    _STATUS_ERROR = 2

cdef enum:
    _NON_FINITE = 1                # what _scan looks for inside a payload
    _FRAGMENT = 2

cdef enum:
    _SLICE_US = 50000              # waits wake this often: signals, and cycles to give way to

cdef enum:
    _BATCH = 4096                  # records the delivery thread takes per round


# One phase of the delivery thread's work on a batch (see _guarded).
ctypedef int (*_phase_fn)(nf_record *, Py_ssize_t) except -1


# A ring's counters, copied under the pipeline mutex (see _pipeline_stats).
cdef struct _RingStat:
    unsigned long thread
    uint64_t capacity, pending, high_water, dropped, waits
    uint64_t arena_cap, arena_high, oversize
    int closed


cdef class Encoded:
    cdef readonly bytes raw


cdef class ScopeHandle:
    cdef uint64_t _hi
    cdef uint64_t _lo
    cdef object _uuid_s          # formatted lazily: most uuids are never read as text
    cdef str _name
    cdef object _scope_type
    cdef int _attrs
    cdef int _kind
    cdef ScopeHandle _parent     # logical parent (parent_uuid); None only for a root
    cdef ScopeHandle _prev       # the frame this one was pushed over (restored on pop)
    cdef object _data            # encoded JSON bytes or None
    cdef object _meta
    cdef object _profile
    cdef int64_t _start_ns
    cdef int _category           # ScopeType value, for the C encoder
    cdef int64_t _child_end      # latest end of a child: an automatic end is not earlier
    cdef bint _closed
    cdef bint _has_locals        # scope-local subscribers in _scope_locals[self]
    cdef object _otel            # OpenTelemetry parent SpanContext of a top-level scope, or None
    cdef object __weakref__

    cdef str _uuid(self)


cdef class ToolHandle(ScopeHandle):
    pass


cdef class LLMHandle(ScopeHandle):
    pass


cdef class ScopeEvent:
    # Self-contained (no frame): built on the emitting thread for synchronous subscribers, or
    # from a ring record on the delivery thread.
    cdef uint64_t _hi, _lo, _phi, _plo
    cdef str _name
    cdef int _attrs, _kind, _category
    cdef object _meta            # the scope's start metadata (bytes or None)
    cdef object _profile
    cdef bint _is_end
    cdef int64_t _ts
    cdef object _data
    cdef object _end_meta
    cdef int _status
    cdef object _desc
    cdef object _meta_cache
    cdef object _otel            # start events: the OpenTelemetry parent context, or None

    cdef object _metadata_raw(self)


cdef class MarkEvent:
    cdef uint64_t _hi, _lo, _phi, _plo
    cdef str _name
    cdef int64_t _ts
    cdef object _data
    cdef object _meta
    cdef object _schema
    cdef object _category
    cdef object _profile
    cdef object _otel            # the OpenTelemetry parent context of a top-level mark, or None


cdef class LineSink:
    cdef public str name
    cdef nf_sink *_k                         # shared with the delivery thread
    cdef object _rotate                      # () -> new fd, called with the GIL
    cdef bint _reported


cdef class _Stat:
    cdef public long long calls
    cdef public long long errors
    cdef long long live          # Subscriber objects counting into it (see _stat_for)


cdef class Subscriber:
    cdef readonly str name
    cdef readonly object callback
    cdef void *_lock             # PyThread_type_lock; re-entrant through _owner/_depth
    cdef unsigned long _owner
    cdef int _depth
    cdef _Stat _stat
    cdef bint _warned
    cdef list _deferred          # the delivery thread's calls that gave way (see deliver)

    cdef object deliver(self, object event)
    cdef object _call(self, object event)


cdef class ScopeContext:
    cdef str _name
    cdef object _scope_type
    cdef ScopeHandle _parent
    cdef int _attrs
    cdef object _data
    cdef object _meta
    cdef object _input
    cdef int64_t _start_ts
    cdef bint _has_start_ts
    cdef int64_t _end_ts
    cdef bint _has_end_ts
    cdef ScopeHandle _frame
    cdef object _token
    cdef bint _active

    cdef int _setup(self, name, scope_type, handle, attributes, data, metadata, input,
                    timestamp, end_timestamp, bint lenient) except -1
    cdef ScopeHandle _enter(self)
    cdef int _exit(self, exc, output) except -1


cdef class Span(ScopeContext):
    cdef public object output
    cdef bint _keep_output
    cdef object _decor_input     # input= as given to nf.trace(...): bool, or a payload
    cdef object _decorate        # set when made by a Tracer: the span is also a decorator


cdef class Tracer:
    cdef object _scope_type
    cdef object _decorate


cdef class InputCapture:
    cdef tuple _names
    cdef Py_ssize_t _skip
    cdef object _receiver
    cdef tuple _sorted           # the names in key order, when all are ASCII (else None)
    cdef Py_ssize_t _order[32]   # _order[i]: the position of _sorted[i] among the arguments
    cdef object _raw(self, tuple args, dict kwargs)


cdef class TracedFunction:
    cdef object _fn
    cdef str _name
    cdef object _scope_type
    cdef int _attrs
    cdef object _meta
    cdef object _capture         # (args, kwargs) -> payload, or None when input is not kept
    cdef bint _keep_output
    cdef dict __dict__           # functools.wraps copies the function's attributes here
    cdef object __weakref__
