/* The event pipeline of the nemoflow core: per-thread rings of fixed-size records, the shared
 * state the delivery thread waits on, and the ATOF line encoder.
 *
 * A ring has one producer (its thread, which writes records with the GIL held but takes no
 * lock) and one consumer (the delivery thread, which copies records out without the GIL).
 * head and tail are the only shared words; they are published with release/acquire atomics,
 * so nothing here relies on the GIL for its correctness.
 *
 * Every non-NULL PyObject pointer in a record is a strong reference owned by the record (taken
 * by the producer, released by the consumer with the GIL): objects read without the GIL are
 * immutable (str, bytes) and kept alive by that reference.
 */
#ifndef NEMOFLOW_RING_H
#define NEMOFLOW_RING_H

#include <Python.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "nemoflow_core.h"

/* Memory the pipeline allocates, frees or grows without the GIL (rings, batches, the encoder's
 * buffer) comes from libc, not PyMem_Raw*: with tracemalloc running, the raw allocator's hooks
 * take the GIL and walk the calling thread's Python frames, which crashed the delivery thread
 * mid-batch and could also deadlock a thread that allocates while holding the pipeline mutex. */
#define nf_malloc(n) malloc(n)
#define nf_calloc(n, size) calloc((n), (size))
#define nf_realloc(p, n) realloc((p), (n))
#define nf_free(p) free(p)

enum { NF_REC_START = 0, NF_REC_END = 1, NF_REC_MARK = 2 };
enum { NF_STATUS_NONE = 0, NF_STATUS_OK = 1, NF_STATUS_ERROR = 2 };

#define NF_NAME_INLINE 23

/* 128 bytes. A record holds no frame: everything the line needs is copied in, and short ASCII
 * names are copied inline, so a scope without payloads holds no Python reference at all and
 * the delivery thread can write it without ever taking the GIL. */
typedef struct {
    uint64_t uuid_hi, uuid_lo;     /* the scope's (or mark's) id */
    uint64_t parent_hi, parent_lo; /* 0, 0: no parent (null) */
    int64_t ts;
    PyObject *name;                /* str, or NULL when the name is in name_inline */
    PyObject *data;                /* bytes or NULL */
    PyObject *meta;                /* bytes or NULL: start metadata, or a mark's */
    PyObject *extra;               /* bytes or NULL: end metadata, or a mark's data_schema */
    PyObject *text;                /* str or NULL: status description, or a mark's category */
    PyObject *profile;             /* bytes or NULL: category_profile */
    PyObject *merged;              /* bytes or NULL: end metadata merged by the consumer; on a
                                    * start or mark record, the OpenTelemetry parent context
                                    * captured for a top-level scope or mark, or NULL */
    uint32_t attrs;
    uint8_t type, kind, status, category;
    char name_inline[NF_NAME_INLINE]; /* ASCII, not terminated */
    uint8_t name_len;
} nf_record;

#define NF_RECORD_REFS 7
static inline void **nf_record_ref(nf_record *r, int i) { return (void **)(&r->name + i); }

/* The producer's and the consumer's fields live on separate cache lines: each side writes
 * only its own line, and the producer reads the consumer's tail only when its cached copy says
 * the ring may be a quarter full. */
typedef struct nf_ring {
    /* read-mostly */
    nf_record *slots;
    uint64_t mask;                 /* capacity - 1 (capacity is a power of two) */
    uint64_t id;                   /* unique for the process: flush targets name rings by it */
    unsigned long thread_ident;
    struct nf_ring *next;          /* in nf_pipe.rings (guarded by nf_pipe.mutex) */
    /* the producer's line */
    uint64_t head __attribute__((aligned(64)));  /* next slot to write (atomic) */
    uint64_t tail_seen;            /* the producer's last read of tail */
    uint64_t dropped;              /* records dropped under overflow="drop" */
    uint64_t waits;                /* times the producer waited for room */
    /* the consumer's line */
    uint64_t tail __attribute__((aligned(64)));  /* next slot to read (atomic) */
    uint64_t delivered;            /* records fully delivered (guarded by nf_pipe.mutex) */
    uint64_t high_water;           /* most records found waiting at once, seen by the consumer */
    int wake_sent;                 /* an early drain was asked for (atomic, set by producer) */
    int closed;                    /* its thread exited (atomic) */
} nf_ring;

/* A file the delivery thread writes lines to. Shared by its Python owner (LineSink) and the
 * delivery thread's per-batch snapshot: refs is guarded by nf_pipe.mutex, the counters are
 * written by the delivery thread only and read with relaxed atomics. */
typedef struct {
    int fd;
    int err;                       /* last write errno, until raise_error() takes it */
    int refs;
    int failures_unreported;       /* a warning is owed (emitted with the GIL) */
    int64_t events, bytes, errors, bytes_in_file, max_bytes;
    int64_t lost, lost_bytes;      /* events and bytes that could not be written */
    int torn;                      /* the file may end in a cut line: start with a newline */
    int open_err;                  /* why fd is -1 (no file could be opened, or closed) */
} nf_sink;

#define NF_MAX_SINKS 64

typedef struct {
    pthread_mutex_t mutex;
    pthread_cond_t work;           /* the delivery thread waits for work here */
    pthread_cond_t progress;       /* flushers and full producers wait here */
    nf_ring *rings;
    uint64_t next_id;
    uint64_t capacity;             /* records per new ring */
    int flush_requests;            /* pending flushes: deliver now, do not sleep */
    int wake;                      /* a producer asked for an early drain */
    int waiting_producers;
    int stopping;                  /* the delivery thread drains everything, then exits */
    uint64_t rings_freed;
    uint64_t dropped_freed;        /* drops counted by rings that were freed since */
    uint64_t high_water_freed;
    uint64_t waits_freed;          /* producer waits counted by rings that were freed since */
    nf_sink *sinks[NF_MAX_SINKS];  /* attached sinks, each holding one ref */
    int n_sinks;
} nf_pipeline;

static nf_pipeline nf_pipe = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
                              PTHREAD_COND_INITIALIZER, NULL, 1, 8192, 0, 0, 0, 0, 0, 0, 0,
                              0, {NULL}, 0};

static nf_sink *nf_sink_new(int fd) {
    nf_sink *k = (nf_sink *)nf_calloc(1, sizeof(nf_sink));
    if (k != NULL) {
        k->fd = fd;
        k->refs = 1;
    }
    return k;
}

static void nf_sink_release_locked(nf_sink *k) {
    if (--k->refs == 0) nf_free(k);
}

static void nf_sink_release(nf_sink *k) {
    pthread_mutex_lock(&nf_pipe.mutex);
    nf_sink_release_locked(k);
    pthread_mutex_unlock(&nf_pipe.mutex);
}

/* 0, or -1 when NF_MAX_SINKS are attached already. */
static int nf_sink_attach(nf_sink *k) {
    int rc = -1;
    pthread_mutex_lock(&nf_pipe.mutex);
    for (int i = 0; i < nf_pipe.n_sinks; i++)
        if (nf_pipe.sinks[i] == k) rc = 0;
    if (rc != 0 && nf_pipe.n_sinks < NF_MAX_SINKS) {
        k->refs++;
        nf_pipe.sinks[nf_pipe.n_sinks++] = k;
        rc = 0;
    }
    pthread_mutex_unlock(&nf_pipe.mutex);
    return rc;
}

static void nf_sink_detach(nf_sink *k) {
    pthread_mutex_lock(&nf_pipe.mutex);
    for (int i = 0; i < nf_pipe.n_sinks; i++) {
        if (nf_pipe.sinks[i] == k) {
            nf_pipe.sinks[i] = nf_pipe.sinks[--nf_pipe.n_sinks];
            nf_sink_release_locked(k);
            break;
        }
    }
    pthread_mutex_unlock(&nf_pipe.mutex);
}
static __thread nf_ring *nf_tls_ring = NULL;
static pthread_key_t nf_ring_key;

/* A thread that exits leaves its ring to the delivery thread, which frees it once drained. */
static void nf_ring_thread_exit(void *p) {
    nf_ring *ring = (nf_ring *)p;
    if (ring != NULL) __atomic_store_n(&ring->closed, 1, __ATOMIC_RELEASE);
}

static void nf_pipe_prepare_fork(void) { pthread_mutex_lock(&nf_pipe.mutex); }
static void nf_pipe_parent_fork(void) { pthread_mutex_unlock(&nf_pipe.mutex); }
static void nf_pipe_child_fork(void) {
    /* Only the forking thread exists in the child: re-create the primitives (their state is
     * undefined after fork) and forget every ring. The parent delivers what they held; the
     * child starts clean. Their memory is leaked on purpose: records in them hold references
     * that are the parent's to release. */
    pthread_mutex_init(&nf_pipe.mutex, NULL);
    pthread_cond_init(&nf_pipe.work, NULL);
    pthread_cond_init(&nf_pipe.progress, NULL);
    nf_pipe.rings = NULL;
    nf_pipe.flush_requests = 0;
    nf_pipe.wake = 0;
    nf_pipe.waiting_producers = 0;
    nf_pipe.stopping = 0;
    nf_tls_ring = NULL;
    pthread_setspecific(nf_ring_key, NULL);
    /* attached sinks stay attached (the child writes the same files): their counts of refs
     * held by the parent's delivery thread, which does not exist here, are not ours to fix */
}

static int nf_pipe_init(void) {
    if (pthread_key_create(&nf_ring_key, nf_ring_thread_exit) != 0) return -1;
    return pthread_atfork(nf_pipe_prepare_fork, nf_pipe_parent_fork, nf_pipe_child_fork);
}

/* This thread's ring, created and registered on first use; NULL when out of memory. */
static nf_ring *nf_ring_get(void) {
    nf_ring *ring = nf_tls_ring;
    if (ring != NULL) return ring;
    void *mem = NULL;
    if (posix_memalign(&mem, 64, sizeof(nf_ring)) != 0) return NULL;
    ring = (nf_ring *)memset(mem, 0, sizeof(nf_ring));
    pthread_mutex_lock(&nf_pipe.mutex);
    uint64_t cap = nf_pipe.capacity;
    pthread_mutex_unlock(&nf_pipe.mutex);
    ring->slots = (nf_record *)nf_calloc((size_t)cap, sizeof(nf_record));
    if (ring->slots == NULL) {
        free(ring);
        return NULL;
    }
    ring->mask = cap - 1;
    ring->thread_ident = (unsigned long)pthread_self();
    pthread_mutex_lock(&nf_pipe.mutex);
    ring->id = nf_pipe.next_id++;
    ring->next = nf_pipe.rings;
    nf_pipe.rings = ring;
    pthread_mutex_unlock(&nf_pipe.mutex);
    pthread_setspecific(nf_ring_key, ring);
    nf_tls_ring = ring;
    return ring;
}

/* Whether the ring has no room for one more record (the producer's check). */
static inline int nf_ring_full(nf_ring *ring) {
    if (ring->head - ring->tail_seen <= ring->mask) return 0;
    ring->tail_seen = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
    return ring->head - ring->tail_seen > ring->mask;
}

static inline uint64_t nf_ring_used(nf_ring *ring) {
    return ring->head - __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
}

/* Publish one record; the caller checked there is room. */
static inline void nf_ring_publish(nf_ring *ring, const nf_record *rec) {
    uint64_t h = ring->head;
    ring->slots[h & ring->mask] = *rec;
    __atomic_store_n(&ring->head, h + 1, __ATOMIC_RELEASE);
    if (h + 1 - ring->tail_seen <= (ring->mask + 1) / 4) return;
    /* Maybe past a quarter full: look at the consumer's tail, and if so ask for an early drain
     * instead of waiting for the next tick; once, until the consumer takes from this ring. */
    ring->tail_seen = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
    uint64_t used = h + 1 - ring->tail_seen;
    if (used > (ring->mask + 1) / 4 && !__atomic_load_n(&ring->wake_sent, __ATOMIC_RELAXED)) {
        __atomic_store_n(&ring->wake_sent, 1, __ATOMIC_RELAXED);
        pthread_mutex_lock(&nf_pipe.mutex);
        nf_pipe.wake = 1;
        pthread_cond_signal(&nf_pipe.work);
        pthread_mutex_unlock(&nf_pipe.mutex);
    }
}

static void nf_deadline(struct timespec *ts, int64_t ns_from_now) {
    clock_gettime(CLOCK_REALTIME, ts);
    int64_t ns = ts->tv_nsec + ns_from_now % 1000000000LL;
    ts->tv_sec += (time_t)(ns_from_now / 1000000000LL + ns / 1000000000LL);
    ts->tv_nsec = (long)(ns % 1000000000LL);
}

/* Waiting for room, in slices (the caller released the GIL): between two slices it takes the
 * GIL back to run signal handlers, so Ctrl-C is not held up by a full ring. */
static void nf_ring_wait_begin(nf_ring *ring) {
    pthread_mutex_lock(&nf_pipe.mutex);
    ring->waits++;
    nf_pipe.waiting_producers++;
    pthread_mutex_unlock(&nf_pipe.mutex);
}

/* 1 once the ring has room, 0 when slice_ns elapsed first. */
static int nf_ring_wait_slice(nf_ring *ring, int64_t slice_ns) {
    struct timespec deadline;
    int room;
    pthread_mutex_lock(&nf_pipe.mutex);
    room = !nf_ring_full(ring);
    if (!room) {
        nf_pipe.wake = 1;
        pthread_cond_signal(&nf_pipe.work);
        nf_deadline(&deadline, slice_ns);
        pthread_cond_timedwait(&nf_pipe.progress, &nf_pipe.mutex, &deadline);
        room = !nf_ring_full(ring);
    }
    pthread_mutex_unlock(&nf_pipe.mutex);
    return room;
}

static void nf_ring_wait_end(void) {
    pthread_mutex_lock(&nf_pipe.mutex);
    nf_pipe.waiting_producers--;
    pthread_mutex_unlock(&nf_pipe.mutex);
}

/* Whether a thread waits on the delivery thread (for room or a flush) or exit asked it to stop:
 * the delivery thread then gives way rather than wait for a subscriber's lock, which one of
 * those threads may hold. A relaxed read: at worst one more slice. */
static inline int nf_pipe_someone_waits(void) {
    return __atomic_load_n(&nf_pipe.waiting_producers, __ATOMIC_RELAXED) > 0 ||
           __atomic_load_n(&nf_pipe.flush_requests, __ATOMIC_RELAXED) > 0 ||
           __atomic_load_n(&nf_pipe.stopping, __ATOMIC_RELAXED);
}

/* The delivery thread's own ring, full while the delivery thread itself emits (from a buffered
 * callback): it cannot wait for itself, so the ring grows, up to NF_OWN_RING_GROWTH times the
 * configured size. Only the delivery thread reads or writes its slots, and not now. 0, or -1
 * when it may not grow (or is out of memory). */
#define NF_OWN_RING_GROWTH 8
static int nf_ring_grow(nf_ring *ring) {
    uint64_t cap = ring->mask + 1;
    if (cap >= __atomic_load_n(&nf_pipe.capacity, __ATOMIC_RELAXED) * NF_OWN_RING_GROWTH)
        return -1;
    nf_record *slots = (nf_record *)nf_calloc((size_t)(2 * cap), sizeof(nf_record));
    if (slots == NULL) return -1;
    for (uint64_t i = ring->tail; i != ring->head; i++)
        slots[i & (2 * cap - 1)] = ring->slots[i & ring->mask];
    nf_record *old = ring->slots;
    pthread_mutex_lock(&nf_pipe.mutex);
    ring->slots = slots;
    ring->mask = 2 * cap - 1;
    pthread_mutex_unlock(&nf_pipe.mutex);
    nf_free(old);
    return 0;
}

/* Copy up to max records out of ring into out; the slots are free again on return. */
static uint64_t nf_ring_take(nf_ring *ring, nf_record *out, uint64_t max) {
    uint64_t t = ring->tail;
    uint64_t h = __atomic_load_n(&ring->head, __ATOMIC_ACQUIRE);
    uint64_t n = h - t;
    if (n > ring->high_water) ring->high_water = n;
    if (n > max) n = max;
    for (uint64_t i = 0; i < n; i++) out[i] = ring->slots[(t + i) & ring->mask];
    __atomic_store_n(&ring->tail, t + n, __ATOMIC_RELEASE);
    __atomic_store_n(&ring->wake_sent, 0, __ATOMIC_RELAXED);
    return n;
}

/* ---- the delivery thread's side ------------------------------------------------------------ */

/* Unless busy, wait until there is work (a flush, a producer past its threshold, or tick_ns
 * elapsed), then
 * copy the ring list into *rings (grown as needed). Returns the number of rings, or -1 when
 * out of memory. *stopping tells whether shutdown was asked for. */
static Py_ssize_t nf_pipe_next(nf_ring ***rings, size_t *cap, int64_t tick_ns, int busy,
                               int *stopping) {
    pthread_mutex_lock(&nf_pipe.mutex);
    /* Sleep only when the last pass found nothing: under load the thread keeps draining. */
    if (!busy && !nf_pipe.flush_requests && !nf_pipe.wake && !nf_pipe.stopping) {
        struct timespec deadline;
        nf_deadline(&deadline, tick_ns);
        pthread_cond_timedwait(&nf_pipe.work, &nf_pipe.mutex, &deadline);
    }
    nf_pipe.wake = 0;
    *stopping = nf_pipe.stopping;
    size_t n = 0;
    for (nf_ring *r = nf_pipe.rings; r != NULL; r = r->next) n++;
    while (n > *cap) {
        /* grown with the mutex released: nothing that may take the GIL runs under it */
        pthread_mutex_unlock(&nf_pipe.mutex);
        nf_ring **grown = (nf_ring **)nf_realloc(*rings, (n + 16) * sizeof(nf_ring *));
        if (grown == NULL) return -1;
        *rings = grown;
        *cap = n + 16;
        pthread_mutex_lock(&nf_pipe.mutex);
        n = 0;
        for (nf_ring *r = nf_pipe.rings; r != NULL; r = r->next) n++;
    }
    n = 0;
    for (nf_ring *r = nf_pipe.rings; r != NULL; r = r->next) (*rings)[n++] = r;
    pthread_mutex_unlock(&nf_pipe.mutex);
    return (Py_ssize_t)n;
}

/* The batch's sinks, taken after its records: a record published after a sink was attached is
 * always taken after that, so it reaches the sink. Each entry holds a ref until
 * nf_pipe_finish. */
static int nf_pipe_sinks(nf_sink **sinks) {
    pthread_mutex_lock(&nf_pipe.mutex);
    int n = nf_pipe.n_sinks;
    for (int i = 0; i < n; i++) {
        sinks[i] = nf_pipe.sinks[i];
        sinks[i]->refs++;
    }
    pthread_mutex_unlock(&nf_pipe.mutex);
    return n;
}

/* Count what was delivered, free the rings of exited threads once drained, wake waiters. */
static void nf_pipe_finish(nf_ring **rings, const uint64_t *counts, size_t n, nf_sink **sinks,
                           int n_sinks) {
    nf_ring *gone = NULL;
    pthread_mutex_lock(&nf_pipe.mutex);
    for (int i = 0; i < n_sinks; i++) nf_sink_release_locked(sinks[i]);
    for (size_t i = 0; i < n; i++) rings[i]->delivered += counts[i];
    nf_ring **link = &nf_pipe.rings;
    while (*link != NULL) {
        nf_ring *r = *link;
        if (__atomic_load_n(&r->closed, __ATOMIC_ACQUIRE) && r->delivered == r->head) {
            *link = r->next;
            nf_pipe.rings_freed++;
            nf_pipe.dropped_freed += r->dropped;
            nf_pipe.waits_freed += r->waits;
            if (r->high_water > nf_pipe.high_water_freed) nf_pipe.high_water_freed = r->high_water;
            r->next = gone;
            gone = r;
        } else {
            link = &r->next;
        }
    }
    pthread_cond_broadcast(&nf_pipe.progress);
    pthread_mutex_unlock(&nf_pipe.mutex);
    while (gone != NULL) {
        nf_ring *r = gone;
        gone = r->next;
        nf_free(r->slots);
        free(r);
    }
}

/* Ask the delivery thread to stop after its next pass (the caller flushed first). */
static void nf_pipe_stop(void) {
    pthread_mutex_lock(&nf_pipe.mutex);
    nf_pipe.stopping = 1;
    pthread_cond_signal(&nf_pipe.work);
    pthread_mutex_unlock(&nf_pipe.mutex);
}

static void nf_pipe_restart(void) {
    pthread_mutex_lock(&nf_pipe.mutex);
    nf_pipe.stopping = 0;
    pthread_mutex_unlock(&nf_pipe.mutex);
}

/* Records not completely delivered yet, in every ring (what exit gives up on). */
static uint64_t nf_pipe_pending(void) {
    uint64_t n = 0;
    pthread_mutex_lock(&nf_pipe.mutex);
    for (nf_ring *r = nf_pipe.rings; r != NULL; r = r->next)
        n += __atomic_load_n(&r->head, __ATOMIC_ACQUIRE) - r->delivered;
    pthread_mutex_unlock(&nf_pipe.mutex);
    return n;
}

/* The flush barrier: every record published before nf_pipe_flush_begin is delivered. The
 * caller waits in slices (nf_pipe_flush_wait) so that it can run signal handlers in between,
 * and always ends with nf_pipe_flush_end. */
typedef struct {
    uint64_t *targets;             /* ring id, head at the start: pairs */
    size_t n;
} nf_flush;

/* 0, or -1 when out of memory. */
static int nf_pipe_flush_begin(nf_flush *f) {
    size_t cap = 0;
    f->targets = NULL;
    f->n = 0;
    pthread_mutex_lock(&nf_pipe.mutex);
    for (;;) {
        size_t n = 0;
        for (nf_ring *r = nf_pipe.rings; r != NULL; r = r->next) n++;
        if (n <= cap) break;
        /* allocated with the mutex released: nothing that may take the GIL runs under it */
        pthread_mutex_unlock(&nf_pipe.mutex);
        nf_free(f->targets);
        cap = n + 16;
        f->targets = (uint64_t *)nf_malloc(2 * cap * sizeof(uint64_t));
        if (f->targets == NULL) return -1;
        pthread_mutex_lock(&nf_pipe.mutex);
    }
    for (nf_ring *r = nf_pipe.rings; r != NULL; r = r->next) {
        f->targets[2 * f->n] = r->id;
        f->targets[2 * f->n + 1] = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
        f->n++;
    }
    nf_pipe.flush_requests++;
    pthread_cond_signal(&nf_pipe.work);
    pthread_mutex_unlock(&nf_pipe.mutex);
    return 0;
}

static int nf_flush_done_locked(const nf_flush *f) {
    for (size_t i = 0; i < f->n; i++) {
        for (nf_ring *r = nf_pipe.rings; r != NULL; r = r->next) {
            if (r->id == f->targets[2 * i]) {
                if (r->delivered < f->targets[2 * i + 1]) return 0;
                break;
            }
        }  /* a ring no longer listed was drained and freed */
    }
    return 1;
}

/* 1 once the flush is complete, 0 when slice_ns elapsed first. */
static int nf_pipe_flush_wait(nf_flush *f, int64_t slice_ns) {
    struct timespec deadline;
    pthread_mutex_lock(&nf_pipe.mutex);
    int done = nf_flush_done_locked(f);
    if (!done) {
        nf_deadline(&deadline, slice_ns);
        pthread_cond_timedwait(&nf_pipe.progress, &nf_pipe.mutex, &deadline);
        done = nf_flush_done_locked(f);
    }
    pthread_mutex_unlock(&nf_pipe.mutex);
    return done;
}

static void nf_pipe_flush_end(nf_flush *f) {
    pthread_mutex_lock(&nf_pipe.mutex);
    nf_pipe.flush_requests--;
    pthread_mutex_unlock(&nf_pipe.mutex);
    nf_free(f->targets);
    f->targets = NULL;
}

/* ---- line buffer ------------------------------------------------------------------------ */

typedef struct {
    char *data;
    size_t len, cap;
} nf_buf;

static int nf_buf_reserve(nf_buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 65536;
    while (cap < b->len + extra) cap *= 2;
    char *d = (char *)nf_realloc(b->data, cap);
    if (d == NULL) return -1;
    b->data = d;
    b->cap = cap;
    return 0;
}

static void nf_buf_free(nf_buf *b) {
    nf_free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

#define NF_PUT(b, s, n) (memcpy((b)->data + (b)->len, (s), (n)), (b)->len += (n))
#define NF_LIT(b, s) NF_PUT(b, s, sizeof(s) - 1)

/* ---- JSON strings, escaped exactly as orjson does (so lines are byte-identical) ---------- */

static inline size_t nf_utf8_put(char *p, Py_UCS4 c) {
    if (c < 0x80) { p[0] = (char)c; return 1; }
    if (c < 0x800) { p[0] = (char)(0xC0 | (c >> 6)); p[1] = (char)(0x80 | (c & 0x3F)); return 2; }
    if (c < 0x10000) {
        p[0] = (char)(0xE0 | (c >> 12)); p[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        p[2] = (char)(0x80 | (c & 0x3F)); return 3;
    }
    p[0] = (char)(0xF0 | (c >> 18)); p[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    p[2] = (char)(0x80 | ((c >> 6) & 0x3F)); p[3] = (char)(0x80 | (c & 0x3F)); return 4;
}

/* The escape of a control character, '"' or '\\' (at most 6 bytes), as orjson writes it. */
static inline char *nf_put_escape(char *p, unsigned c) {
    *p++ = '\\';
    switch (c) {
        case '"': *p++ = '"'; break;
        case '\\': *p++ = '\\'; break;
        case '\b': *p++ = 'b'; break;
        case '\t': *p++ = 't'; break;
        case '\n': *p++ = 'n'; break;
        case '\f': *p++ = 'f'; break;
        case '\r': *p++ = 'r'; break;
        default:
            *p++ = 'u'; *p++ = '0'; *p++ = '0';
            *p++ = nf_hex[(c >> 4) & 0xF]; *p++ = nf_hex[c & 0xF];
    }
    return p;
}

/* Reads the str's own (immutable) buffer: safe without the GIL while a reference is held. */
static int nf_put_json_str(nf_buf *b, PyObject *s) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    if (nf_buf_reserve(b, (size_t)n * 6 + 2) < 0) return -1; /* worst case: \u00XX each */
    char *p = b->data + b->len;
    *p++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c >= 0x20 && c != '"' && c != '\\') p += nf_utf8_put(p, c);
        else p = nf_put_escape(p, (unsigned)c);
    }
    *p++ = '"';
    b->len = (size_t)(p - b->data);
    return 0;
}

static int nf_put_json_ascii(nf_buf *b, const char *s, size_t n) {
    if (nf_buf_reserve(b, n * 6 + 2) < 0) return -1;
    char *p = b->data + b->len;
    *p++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') *p++ = (char)c;
        else p = nf_put_escape(p, c);
    }
    *p++ = '"';
    b->len = (size_t)(p - b->data);
    return 0;
}

static int nf_put_raw(nf_buf *b, PyObject *bytes_or_null) {
    if (bytes_or_null == NULL) {
        if (nf_buf_reserve(b, 4) < 0) return -1;
        NF_LIT(b, "null");
        return 0;
    }
    size_t n = (size_t)PyBytes_GET_SIZE(bytes_or_null);
    if (nf_buf_reserve(b, n) < 0) return -1;
    NF_PUT(b, PyBytes_AS_STRING(bytes_or_null), n);
    return 0;
}

static int nf_put_uuid(nf_buf *b, uint64_t hi, uint64_t lo) {
    if (nf_buf_reserve(b, 38) < 0) return -1;
    if (hi == 0 && lo == 0) {
        NF_LIT(b, "null");
        return 0;
    }
    b->data[b->len++] = '"';
    nf_format_uuid(hi, lo, b->data + b->len);
    b->len += 36;
    b->data[b->len++] = '"';
    return 0;
}

/* ---- the ATOF line ----------------------------------------------------------------------- */

static const char *const nf_categories[] = {
    "agent", "function", "tool", "llm", "retriever", "embedder", "reranker", "guardrail",
    "evaluator", "custom", "unknown"};
#define NF_N_CATEGORIES 11

/* Attribute wire names by kind (scope, tool, llm) and bit, already in sorted order. */
static const char *const nf_attr_names[3][2] = {
    {"parallel", "relocatable"}, {"remote", NULL}, {"stateful", "streaming"}};

/* Whether an end record's metadata needs a JSON merge (Python) rather than the C fast path:
 * start or end metadata present. Status-only metadata is written here. */
static inline int nf_needs_merge(const nf_record *r) {
    return r->type == NF_REC_END && (r->meta != NULL || r->extra != NULL);
}

static int nf_put_metadata(nf_buf *b, const nf_record *r) {
    if (r->type != NF_REC_END) return nf_put_raw(b, r->meta);
    if (r->merged != NULL) return nf_put_raw(b, r->merged);
    if (r->status == NF_STATUS_NONE) return nf_put_raw(b, NULL);
    if (nf_buf_reserve(b, 64) < 0) return -1;
    if (r->status == NF_STATUS_OK) {
        NF_LIT(b, "{\"otel.status_code\":\"OK\"}");
        return 0;
    }
    NF_LIT(b, "{\"otel.status_code\":\"ERROR\",\"otel.status_description\":");
    if (r->text == NULL) {
        if (nf_buf_reserve(b, 5) < 0) return -1;
        NF_LIT(b, "null}");
        return 0;
    }
    if (nf_put_json_str(b, r->text) < 0) return -1;
    if (nf_buf_reserve(b, 1) < 0) return -1;
    b->data[b->len++] = '}';
    return 0;
}

/* Append the canonical ATOF line of r (without the newline). End records whose metadata needs
 * a merge must carry it in r->merged. Returns 0, or -1 when out of memory. */
static int nf_encode(nf_buf *b, const nf_record *r) {
    char ts[40];
    int ts_len = nf_format_timestamp(r->ts, ts);
    if (nf_buf_reserve(b, 160) < 0) return -1;
    if (r->type == NF_REC_MARK) {
        NF_LIT(b, "{\"atof_version\":\"0.1\",\"category\":");
        if (r->text == NULL) { NF_LIT(b, "null"); }
        else if (nf_put_json_str(b, r->text) < 0) return -1;
    } else {
        NF_LIT(b, "{\"atof_version\":\"0.1\",\"attributes\":[");
        int first = 1;
        for (int bit = 0; bit < 2; bit++) {
            const char *name = nf_attr_names[r->kind][bit];
            if (name == NULL || !(r->attrs & (1u << bit))) continue;
            if (nf_buf_reserve(b, 16) < 0) return -1;
            if (!first) b->data[b->len++] = ',';
            b->data[b->len++] = '"';
            NF_PUT(b, name, strlen(name));
            b->data[b->len++] = '"';
            first = 0;
        }
        if (nf_buf_reserve(b, 32) < 0) return -1;
        NF_LIT(b, "],\"category\":\"");
        const char *cat = r->category < NF_N_CATEGORIES ? nf_categories[r->category] : "unknown";
        NF_PUT(b, cat, strlen(cat));
        b->data[b->len++] = '"';
    }
    if (nf_buf_reserve(b, 24) < 0) return -1;
    NF_LIT(b, ",\"category_profile\":");
    if (nf_put_raw(b, r->profile) < 0) return -1;
    if (nf_buf_reserve(b, 16) < 0) return -1;
    NF_LIT(b, ",\"data\":");
    if (nf_put_raw(b, r->data) < 0) return -1;
    if (nf_buf_reserve(b, 48) < 0) return -1;
    if (r->type == NF_REC_MARK) {
        NF_LIT(b, ",\"data_schema\":");
        if (nf_put_raw(b, r->extra) < 0) return -1;
        if (nf_buf_reserve(b, 32) < 0) return -1;
        NF_LIT(b, ",\"kind\":\"mark\",\"metadata\":");
    } else {
        NF_LIT(b, ",\"data_schema\":null,\"kind\":\"scope\",\"metadata\":");
    }
    if (nf_put_metadata(b, r) < 0) return -1;
    if (nf_buf_reserve(b, 16) < 0) return -1;
    NF_LIT(b, ",\"name\":");
    if (r->name != NULL) {
        if (nf_put_json_str(b, r->name) < 0) return -1;
    } else if (nf_put_json_ascii(b, r->name_inline, r->name_len) < 0) {
        return -1;
    }
    if (nf_buf_reserve(b, 140) < 0) return -1;
    NF_LIT(b, ",\"parent_uuid\":");
    nf_put_uuid(b, r->parent_hi, r->parent_lo);
    if (r->type == NF_REC_START) NF_LIT(b, ",\"scope_category\":\"start\"");
    else if (r->type == NF_REC_END) NF_LIT(b, ",\"scope_category\":\"end\"");
    NF_LIT(b, ",\"timestamp\":\"");
    NF_PUT(b, ts, (size_t)ts_len);
    NF_LIT(b, "\",\"uuid\":");
    nf_put_uuid(b, r->uuid_hi, r->uuid_lo);
    b->data[b->len++] = '}';
    return 0;
}

/* Writes lines to fd so that the file never keeps a cut line: when a write fails part way (a
 * full disk, a file size limit), the bytes of the line it cut are truncated away. Returns 0 or
 * the errno; *whole is the length of the lines that reached the file whole. *torn is set when a
 * cut line could not be taken back (the file changed under us, or cannot be truncated). */
static int nf_write_lines(int fd, const char *data, size_t len, size_t *whole, int *torn) {
    size_t done = 0;
    int err = 0;
    *torn = 0;
    while (done < len) {
        ssize_t n = write(fd, data + done, len - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            err = errno ? errno : EIO;
            break;
        }
        if (n == 0) {
            err = EIO;
            break;
        }
        done += (size_t)n;
    }
    size_t keep = done;
    if (err) {
        while (keep > 0 && data[keep - 1] != '\n') keep--;
        if (keep < done) {
            /* O_APPEND leaves the offset at the end of what this write added; truncate only if
             * nothing was appended after it (by another process sharing the file) */
            struct stat st;
            off_t end = lseek(fd, 0, SEEK_CUR);
            if (end < 0 || fstat(fd, &st) != 0 || st.st_size != end ||
                ftruncate(fd, end - (off_t)(done - keep)) != 0)
                *torn = 1;
        }
    }
    *whole = keep;
    return err;
}

/* The number of lines in data[0:len]. */
static int64_t nf_count_lines(const char *data, size_t len) {
    int64_t n = 0;
    const char *end = data + len, *p = data;
    while (p < end && (p = (const char *)memchr(p, '\n', (size_t)(end - p))) != NULL) {
        n++;
        p++;
    }
    return n;
}

#endif /* NEMOFLOW_RING_H */
