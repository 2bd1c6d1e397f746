/* The event pipeline of the nemoflow core: per-thread rings of fixed-size records, the shared
 * state the delivery thread waits on, and the ATOF line encoder.
 *
 * A ring has one producer (its thread, which writes records with the GIL held but takes no
 * lock) and one consumer (the delivery thread, which copies records out without the GIL).
 * head and tail are the only shared words; they are published with release/acquire atomics,
 * so nothing here relies on the GIL for its correctness.
 *
 * A record's payloads (JSON bytes, texts, long names) are copied by the producer into memory
 * the core owns: its ring's byte arena (a second single-producer ring, of bytes), or for a
 * payload larger than the whole arena a heap block of its own. The consumer reads and frees
 * them without the GIL. The only Python object a record can hold is the OpenTelemetry parent
 * context of a top-level scope (only while the OpenTelemetry bridge asks for it), released by
 * the consumer with the GIL.
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

/* A record's payload fields, in the order they are laid out in its blob. */
enum { NF_F_NAME = 0, NF_F_DATA, NF_F_META, NF_F_EXTRA, NF_F_TEXT, NF_F_PROFILE, NF_N_FIELDS };

/* 128 bytes. A record holds no frame: everything the line needs is copied in. Short ASCII
 * names are copied inline; every other field present is copied into the record's blob, one
 * after another in NF_F_* order (UTF-8 for texts and names, canonical JSON for payloads):
 *   NF_F_NAME    the name, when not inline
 *   NF_F_DATA    data (JSON)
 *   NF_F_META    start metadata, or a mark's metadata (JSON)
 *   NF_F_EXTRA   end metadata, or a mark's data_schema (JSON)
 *   NF_F_TEXT    the status description, or a mark's category (UTF-8)
 *   NF_F_PROFILE category_profile (JSON) */
typedef struct {
    uint64_t uuid_hi, uuid_lo;     /* the scope's (or mark's) id */
    uint64_t parent_hi, parent_lo; /* 0, 0: no parent (null) */
    int64_t ts;
    const char *blob;              /* the fields' bytes, or NULL when none is present */
    uint64_t arena_end;            /* the ring's arena position once this record is consumed */
    PyObject *otel;                /* start or mark record: the OpenTelemetry parent context
                                    * captured for a top-level scope or mark, or NULL */
    uint32_t len[NF_N_FIELDS];     /* bytes of each field present */
    uint32_t attrs;
    uint8_t type, kind, status, category;
    uint8_t present;               /* bit f: field f is present (else null) */
    uint8_t heap;                  /* blob is a heap block of its own, freed by the consumer */
    uint8_t name_len;
    char name_inline[NF_NAME_INLINE]; /* ASCII, not terminated */
} nf_record;

#define NF_FIELD_MAX 0xFFFFFFFFu   /* the largest field a record can carry */

/* Field f of r (NULL when absent; *len its size). */
static inline const char *nf_field(const nf_record *r, int f, size_t *len) {
    if (!(r->present & (1u << f))) {
        *len = 0;
        return NULL;
    }
    const char *p = r->blob;
    for (int i = 0; i < f; i++)
        if (r->present & (1u << i)) p += r->len[i];
    *len = r->len[f];
    return p;
}

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
    char *arena;                   /* payload bytes, allocated on the first payload */
    uint64_t arena_cap;            /* its size in bytes (the budget) */
    /* the producer's line */
    uint64_t head __attribute__((aligned(64)));  /* next slot to write (atomic) */
    uint64_t tail_seen;            /* the producer's last read of tail */
    uint64_t dropped;              /* records dropped under overflow="drop" */
    uint64_t waits;                /* times the producer waited for room */
    uint64_t a_head;               /* arena position after the last payload written */
    uint64_t a_off;                /* its offset in the arena */
    uint64_t a_tail_seen;          /* the producer's last read of a_tail */
    uint64_t a_pos, a_pos_off;     /* where the payload being written starts */
    uint64_t oversize;             /* payloads larger than the arena (heap blocks) */
    /* the consumer's line */
    uint64_t tail __attribute__((aligned(64)));  /* next slot to read (atomic) */
    uint64_t delivered;            /* records fully delivered (guarded by nf_pipe.mutex) */
    uint64_t high_water;           /* most records found waiting at once, seen by the consumer */
    uint64_t a_tail;               /* arena bytes before this position are free (atomic) */
    uint64_t arena_high;           /* most payload bytes found waiting at once */
    int heap_out;                  /* heap blocks not yet freed by the consumer (atomic) */
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
    uint64_t arena_cap;            /* payload bytes per new ring */
    int flush_requests;            /* pending flushes: deliver now, do not sleep */
    int wake;                      /* a producer asked for an early drain */
    int waiting_producers;
    int stopping;                  /* the delivery thread drains everything, then exits */
    uint64_t rings_freed;
    uint64_t dropped_freed;        /* drops counted by rings that were freed since */
    uint64_t high_water_freed;
    uint64_t waits_freed;          /* producer waits counted by rings that were freed since */
    uint64_t oversize_freed;       /* oversize payloads counted by rings that were freed since */
    uint64_t arena_high_freed;
    nf_sink *sinks[NF_MAX_SINKS];  /* attached sinks, each holding one ref */
    int n_sinks;
} nf_pipeline;

static nf_pipeline nf_pipe = {.mutex = PTHREAD_MUTEX_INITIALIZER,
                              .work = PTHREAD_COND_INITIALIZER,
                              .progress = PTHREAD_COND_INITIALIZER,
                              .next_id = 1, .capacity = 8192, .arena_cap = 4u << 20};

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
    ring->arena_cap = nf_pipe.arena_cap;
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

/* Ask the delivery thread for an early drain instead of waiting for its next tick; once, until
 * the consumer takes from this ring. */
static void nf_ring_wake(nf_ring *ring) {
    if (__atomic_load_n(&ring->wake_sent, __ATOMIC_RELAXED)) return;
    __atomic_store_n(&ring->wake_sent, 1, __ATOMIC_RELAXED);
    pthread_mutex_lock(&nf_pipe.mutex);
    nf_pipe.wake = 1;
    pthread_cond_signal(&nf_pipe.work);
    pthread_mutex_unlock(&nf_pipe.mutex);
}

/* Publish one record; the caller checked there is room. */
static inline void nf_ring_publish(nf_ring *ring, const nf_record *rec) {
    uint64_t h = ring->head;
    ring->slots[h & ring->mask] = *rec;
    __atomic_store_n(&ring->head, h + 1, __ATOMIC_RELEASE);
    if (h + 1 - ring->tail_seen <= (ring->mask + 1) / 4) return;
    /* Maybe past a quarter full: look at the consumer's tail, and if so ask for a drain. */
    ring->tail_seen = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
    if (h + 1 - ring->tail_seen > (ring->mask + 1) / 4) nf_ring_wake(ring);
}

/* ---- the payload arena ------------------------------------------------------------------- *
 * Positions count bytes since the ring was made, padding included; the producer writes at
 * a_off, the consumer frees up to a_tail (the arena_end of the last record it finished). Live
 * bytes are a_head - a_tail, laid out from a_tail's offset up to a_off, wrapping once. A
 * payload never wraps: when it does not fit before the end of the arena, the rest of the arena
 * is skipped (counted as used until the consumer passes it). When the arena is empty the
 * producer starts over at offset 0, so any payload up to the arena's size fits eventually. */

/* Where need bytes would go: 1 and *pos, *off; 0 when they do not fit before the consumer
 * frees more. */
static inline int nf_arena_place(const nf_ring *ring, size_t need, uint64_t tail, uint64_t *pos,
                                 uint64_t *off) {
    uint64_t p = ring->a_head, o = ring->a_off;
    if (tail == p) {
        o = 0;
    } else if (o + need > ring->arena_cap) {
        p += ring->arena_cap - o;
        o = 0;
    }
    if (p + need - tail > ring->arena_cap) return 0;
    *pos = p;
    *off = o;
    return 1;
}

/* Whether a record with need payload bytes can be published now: a free slot, and room for its
 * payloads (an oversize payload waits until the previous one was freed: one at a time). */
static int nf_ring_payload_room(nf_ring *ring, size_t need) {
    if (nf_ring_full(ring)) return 0;
    if (need > ring->arena_cap) return __atomic_load_n(&ring->heap_out, __ATOMIC_ACQUIRE) == 0;
    uint64_t pos, off;
    if (nf_arena_place(ring, need, ring->a_tail_seen, &pos, &off)) return 1;
    ring->a_tail_seen = __atomic_load_n(&ring->a_tail, __ATOMIC_ACQUIRE);
    return nf_arena_place(ring, need, ring->a_tail_seen, &pos, &off);
}

static inline int nf_ring_room(nf_ring *ring, size_t need) {
    return need == 0 ? !nf_ring_full(ring) : nf_ring_payload_room(ring, need);
}

/* Memory for r's need payload bytes: in the arena when they fit, else a heap block (a payload
 * larger than the arena, or the delivery thread's own ring, which cannot wait for room). The
 * caller writes at most need bytes there, then calls nf_payload_end. NULL: out of memory. */
static char *nf_payload_begin(nf_ring *ring, size_t need, nf_record *r) {
    uint64_t pos, off;
    r->heap = 0;
    if (need <= ring->arena_cap) {
        if (ring->arena == NULL) ring->arena = (char *)nf_malloc((size_t)ring->arena_cap);
        if (ring->arena != NULL) {
            if (!nf_arena_place(ring, need, ring->a_tail_seen, &pos, &off)) {
                ring->a_tail_seen = __atomic_load_n(&ring->a_tail, __ATOMIC_ACQUIRE);
                if (!nf_arena_place(ring, need, ring->a_tail_seen, &pos, &off)) goto heap;
            }
            ring->a_pos = pos;
            ring->a_pos_off = off;
            return ring->arena + off;
        }
    } else {
        ring->oversize++;
    }
heap:;
    char *block = (char *)nf_malloc(need ? need : 1);
    if (block == NULL) return NULL;
    r->heap = 1;
    __atomic_add_fetch(&ring->heap_out, 1, __ATOMIC_ACQ_REL);
    return block;
}

/* used bytes of r's blob were written (at most what nf_payload_begin was asked for). */
static inline void nf_payload_end(nf_ring *ring, nf_record *r, size_t used) {
    if (!r->heap) {
        ring->a_head = ring->a_pos + used;
        ring->a_off = ring->a_pos_off + used;
        if (ring->a_head - ring->a_tail_seen > ring->arena_cap / 4) {
            ring->a_tail_seen = __atomic_load_n(&ring->a_tail, __ATOMIC_ACQUIRE);
            if (ring->a_head - ring->a_tail_seen > ring->arena_cap / 4) nf_ring_wake(ring);
        }
    }
    r->arena_end = ring->a_head;
}

/* The arena position a record without payloads carries (the producer's). */
static inline uint64_t nf_ring_arena_end(const nf_ring *ring) { return ring->a_head; }

/* The consumer is done with records taken from ring up to (and including) last. */
static void nf_ring_release(nf_ring *ring, const nf_record *last) {
    uint64_t pending = last->arena_end - ring->a_tail;
    if (pending > ring->arena_high) ring->arena_high = pending;
    __atomic_store_n(&ring->a_tail, last->arena_end, __ATOMIC_RELEASE);
}

/* Free a record's heap block (the consumer, after it is done with the record). */
static inline void nf_record_free_heap(nf_ring *ring, nf_record *r) {
    if (!r->heap) return;
    nf_free((void *)r->blob);
    r->blob = NULL;
    r->heap = 0;
    __atomic_sub_fetch(&ring->heap_out, 1, __ATOMIC_ACQ_REL);
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

/* 1 once the ring has room for a record with need payload bytes, 0 when slice_ns elapsed
 * first. */
static int nf_ring_wait_slice(nf_ring *ring, size_t need, int64_t slice_ns) {
    struct timespec deadline;
    int room;
    pthread_mutex_lock(&nf_pipe.mutex);
    room = nf_ring_room(ring, need);
    if (!room) {
        nf_pipe.wake = 1;
        pthread_cond_signal(&nf_pipe.work);
        nf_deadline(&deadline, slice_ns);
        pthread_cond_timedwait(&nf_pipe.progress, &nf_pipe.mutex, &deadline);
        room = nf_ring_room(ring, need);
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
            nf_pipe.oversize_freed += r->oversize;
            if (r->high_water > nf_pipe.high_water_freed) nf_pipe.high_water_freed = r->high_water;
            if (r->arena_high > nf_pipe.arena_high_freed) nf_pipe.arena_high_freed = r->arena_high;
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
        nf_free(r->arena);
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

/* ---- payloads copied in by the producer (with the GIL: they read Python objects) ---------- */

/* The most bytes the UTF-8 of str s can take. */
static inline size_t nf_utf8_bound(PyObject *s) {
    size_t n = (size_t)PyUnicode_GET_LENGTH(s);
    if (PyUnicode_IS_COMPACT_ASCII(s)) return n;
    switch (PyUnicode_KIND(s)) {
        case PyUnicode_1BYTE_KIND: return 2 * n;
        case PyUnicode_2BYTE_KIND: return 3 * n;
        default: return 4 * n;
    }
}

/* The UTF-8 of str s written at p (nf_utf8_bound(s) bytes of room); the bytes written. */
static size_t nf_put_str_utf8(char *p, PyObject *s) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (PyUnicode_IS_COMPACT_ASCII(s)) {
        memcpy(p, PyUnicode_DATA(s), (size_t)n);
        return (size_t)n;
    }
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    char *q = p;
    for (Py_ssize_t i = 0; i < n; i++) q += nf_utf8_put(q, PyUnicode_READ(kind, data, i));
    return (size_t)(q - p);
}

/* A JSON string from UTF-8 (or ASCII) bytes: bytes from 0x80 up pass through as orjson writes
 * them, control characters, '"' and '\\' are escaped. */
static int nf_put_json_utf8(nf_buf *b, const char *s, size_t n) {
    if (nf_buf_reserve(b, n * 6 + 2) < 0) return -1;
    b->len = (size_t)(nf_put_json_chars(b->data + b->len, s, n) - b->data);
    return 0;
}

static int nf_put_bytes(nf_buf *b, const char *p, size_t n) {
    if (p == NULL) {
        if (nf_buf_reserve(b, 4) < 0) return -1;
        NF_LIT(b, "null");
        return 0;
    }
    if (nf_buf_reserve(b, n) < 0) return -1;
    NF_PUT(b, p, n);
    return 0;
}

/* A JSON field of r as it is (null when absent). */
static int nf_put_raw(nf_buf *b, const nf_record *r, int f) {
    size_t n;
    const char *p = nf_field(r, f, &n);
    return nf_put_bytes(b, p, n);
}

/* A text field of r as a JSON string (null when absent). */
static int nf_put_text(nf_buf *b, const nf_record *r, int f) {
    size_t n;
    const char *p = nf_field(r, f, &n);
    if (p == NULL) return nf_put_bytes(b, NULL, 0);
    return nf_put_json_utf8(b, p, n);
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

/* ---- end metadata: the start metadata, the end metadata and the status, merged ----------- *
 * The same result as nemoflow's merge rule on decoded values (see _merge_metadata), written
 * from the canonical JSON both sides were encoded to: keys in both objects are sorted and
 * unique, so the merge is one pass over the members of each, the end's value winning, then
 * the status members'. */

/* One top-level member at a time of a canonical JSON object. */
typedef struct {
    const char *p, *end;           /* the rest of the object */
    const char *key, *val;         /* the current member: key (without quotes), value */
    size_t key_len, val_len;
    int valid;
} nf_members;

/* The end of the JSON value starting at p (canonical: no whitespace), or NULL if malformed. */
static const char *nf_skip_value(const char *p, const char *end) {
    int depth = 0;
    while (p < end) {
        char c = *p;
        if (c == '"') {
            p++;
            while (p < end && *p != '"') p += (*p == '\\') ? 2 : 1;
            if (p >= end) return NULL;
            p++;
        } else if (c == '{' || c == '[') {
            depth++;
            p++;
        } else if (c == '}' || c == ']') {
            if (depth == 0) return p;
            depth--;
            p++;
        } else if (c == ',' && depth == 0) {
            return p;
        } else {
            p++;
        }
        if (depth == 0 && (p >= end || *p == ',' || *p == '}' || *p == ']')) return p;
    }
    return depth == 0 ? p : NULL;
}

static void nf_members_next(nf_members *m) {
    m->valid = 0;
    const char *p = m->p;
    if (p >= m->end || *p == '}') return;
    if (*p == ',') p++;
    if (p >= m->end || *p != '"') return;
    const char *k = ++p;
    while (p < m->end && *p != '"') p += (*p == '\\') ? 2 : 1;
    if (p >= m->end) return;
    m->key = k;
    m->key_len = (size_t)(p - k);
    p++;
    if (p >= m->end || *p != ':') return;
    p++;
    const char *v = p;
    p = nf_skip_value(p, m->end);
    if (p == NULL || p == v) return;
    m->val = v;
    m->val_len = (size_t)(p - v);
    m->p = p;
    m->valid = 1;
}

static void nf_members_begin(nf_members *m, const char *obj, size_t n) {
    m->p = obj + 1;
    m->end = obj + n;
    nf_members_next(m);
}

/* The next byte of an escaped JSON key, unescaped (orjson escapes only to one byte: control
 * characters, '"' and '\\'; other \\u escapes compare by their code point's UTF-8). */
static int nf_key_byte(const char **p, const char *end, unsigned char *pending, int *n_pending) {
    if (*n_pending) {
        int c = pending[0];
        pending[0] = pending[1];
        pending[1] = pending[2];
        (*n_pending)--;
        return c;
    }
    if (*p >= end) return -1;
    unsigned char c = (unsigned char)*(*p)++;
    if (c != '\\' || *p >= end) return c;
    c = (unsigned char)*(*p)++;
    switch (c) {
        case 'b': return '\b';
        case 'f': return '\f';
        case 'n': return '\n';
        case 'r': return '\r';
        case 't': return '\t';
        case 'u': {
            unsigned v = 0;
            for (int i = 0; i < 4 && *p < end; i++) {
                char h = *(*p)++;
                v = v * 16 + (unsigned)(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
            }
            char u[4];
            size_t n = nf_utf8_put(u, v);
            for (size_t i = 1; i < n; i++) pending[i - 1] = (unsigned char)u[i];
            *n_pending = (int)n - 1;
            return (unsigned char)u[0];
        }
        default: return c;
    }
}

/* Compare two escaped keys by their text (UTF-8 byte order is code point order: the order
 * orjson sorts keys in). */
static int nf_key_cmp(const char *a, size_t an, const char *b, size_t bn) {
    const char *ae = a + an, *be = b + bn;
    unsigned char pa[3], pb[3];
    int na = 0, nb = 0;
    for (;;) {
        int ca = nf_key_byte(&a, ae, pa, &na), cb = nf_key_byte(&b, be, pb, &nb);
        if (ca != cb) return ca < cb ? -1 : 1;
        if (ca < 0) return 0;
    }
}

static inline int nf_is_object(const char *p, size_t n) { return p != NULL && n >= 2 && *p == '{'; }
static inline int nf_is_null(const char *p, size_t n) {
    return p == NULL || (n == 4 && memcmp(p, "null", 4) == 0);
}

static int nf_put_member(nf_buf *b, int *first, const char *key, size_t key_len,
                         const char *val, size_t val_len) {
    if (nf_buf_reserve(b, key_len + val_len + 4) < 0) return -1;
    if (!*first) b->data[b->len++] = ',';
    *first = 0;
    b->data[b->len++] = '"';
    NF_PUT(b, key, key_len);
    b->data[b->len++] = '"';
    b->data[b->len++] = ':';
    NF_PUT(b, val, val_len);
    return 0;
}

/* The value of status member i (0: otel.status_code, 1: otel.status_description). */
static int nf_put_status_value(nf_buf *b, const nf_record *r, int i) {
    if (nf_buf_reserve(b, 8) < 0) return -1;
    if (i == 0) {
        if (r->status == NF_STATUS_OK) NF_LIT(b, "\"OK\"");
        else NF_LIT(b, "\"ERROR\"");
        return 0;
    }
    return nf_put_text(b, r, NF_F_TEXT);
}

/* The metadata of an end record. */
static int nf_put_end_metadata(nf_buf *b, const nf_record *r) {
    size_t sn, en;
    const char *start = nf_field(r, NF_F_META, &sn);
    const char *end = nf_field(r, NF_F_EXTRA, &en);
    if (start == NULL && end == NULL) {
        /* the common case: a status only, or nothing */
        if (r->status == NF_STATUS_NONE) return nf_put_bytes(b, NULL, 0);
        if (nf_buf_reserve(b, 64) < 0) return -1;
        if (r->status == NF_STATUS_OK) {
            NF_LIT(b, "{\"otel.status_code\":\"OK\"}");
            return 0;
        }
        NF_LIT(b, "{\"otel.status_code\":\"ERROR\",\"otel.status_description\":");
        if (nf_put_text(b, r, NF_F_TEXT) < 0 || nf_buf_reserve(b, 1) < 0) return -1;
        b->data[b->len++] = '}';
        return 0;
    }
    /* merged = end if end is not null, unless both are objects: then their union */
    const char *one = start;
    size_t one_n = sn;
    int both = 0;
    if (!nf_is_null(end, en)) {
        if (nf_is_object(start, sn) && nf_is_object(end, en)) both = 1;
        else { one = end; one_n = en; }
    }
    if (r->status == NF_STATUS_NONE && !both) return nf_put_bytes(b, one, one_n);
    if (!both && !nf_is_null(one, one_n) && !nf_is_object(one, one_n))
        return nf_put_bytes(b, one, one_n);  /* the status goes only into an object */

    /* the status members, in key order */
    static const char *const skeys[2] = {"otel.status_code", "otel.status_description"};
    static const size_t skey_n[2] = {16, 23};
    int n_status = r->status == NF_STATUS_NONE ? 0 : (r->status == NF_STATUS_ERROR ? 2 : 1);
    nf_members ms, me;
    ms.valid = me.valid = 0;
    if (both) {
        nf_members_begin(&ms, start, sn);
        nf_members_begin(&me, end, en);
    } else if (nf_is_object(one, one_n)) {
        nf_members_begin(&ms, one, one_n);
    }
    int first = 1, si = 0;
    if (nf_buf_reserve(b, 1) < 0) return -1;
    b->data[b->len++] = '{';
    while (ms.valid || me.valid || si < n_status) {
        /* the smallest key of the three heads; on a tie the status, then the end, wins */
        const char *key = NULL;
        size_t key_n = 0;
        int from = -1;  /* 0 start, 1 end, 2 status */
        if (ms.valid) { key = ms.key; key_n = ms.key_len; from = 0; }
        if (me.valid && (from < 0 || nf_key_cmp(me.key, me.key_len, key, key_n) <= 0)) {
            key = me.key; key_n = me.key_len; from = 1;
        }
        if (si < n_status &&
            (from < 0 || nf_key_cmp(skeys[si], skey_n[si], key, key_n) <= 0)) {
            key = skeys[si]; key_n = skey_n[si]; from = 2;
        }
        if (from == 2) {
            if (nf_put_member(b, &first, key, key_n, "", 0) < 0 ||
                nf_put_status_value(b, r, si) < 0)
                return -1;
        } else if (from == 1) {
            if (nf_put_member(b, &first, key, key_n, me.val, me.val_len) < 0) return -1;
        } else if (nf_put_member(b, &first, key, key_n, ms.val, ms.val_len) < 0) {
            return -1;
        }
        /* advance every head with this key: the others were overridden */
        if (ms.valid && (from == 0 || nf_key_cmp(ms.key, ms.key_len, key, key_n) == 0))
            nf_members_next(&ms);
        if (me.valid && (from == 1 || nf_key_cmp(me.key, me.key_len, key, key_n) == 0))
            nf_members_next(&me);
        if (from == 2) si++;
    }
    if (nf_buf_reserve(b, 1) < 0) return -1;
    b->data[b->len++] = '}';
    return 0;
}

static int nf_put_metadata(nf_buf *b, const nf_record *r) {
    if (r->type != NF_REC_END) return nf_put_raw(b, r, NF_F_META);
    return nf_put_end_metadata(b, r);
}

/* Append the canonical ATOF line of r (without the newline). Returns 0, or -1 when out of
 * memory. */
static int nf_encode(nf_buf *b, const nf_record *r) {
    char ts[40];
    int ts_len = nf_format_timestamp(r->ts, ts);
    if (nf_buf_reserve(b, 160) < 0) return -1;
    if (r->type == NF_REC_MARK) {
        NF_LIT(b, "{\"atof_version\":\"0.1\",\"category\":");
        if (nf_put_text(b, r, NF_F_TEXT) < 0) return -1;
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
    if (nf_put_raw(b, r, NF_F_PROFILE) < 0) return -1;
    if (nf_buf_reserve(b, 16) < 0) return -1;
    NF_LIT(b, ",\"data\":");
    if (nf_put_raw(b, r, NF_F_DATA) < 0) return -1;
    if (nf_buf_reserve(b, 48) < 0) return -1;
    if (r->type == NF_REC_MARK) {
        NF_LIT(b, ",\"data_schema\":");
        if (nf_put_raw(b, r, NF_F_EXTRA) < 0) return -1;
        if (nf_buf_reserve(b, 32) < 0) return -1;
        NF_LIT(b, ",\"kind\":\"mark\",\"metadata\":");
    } else {
        NF_LIT(b, ",\"data_schema\":null,\"kind\":\"scope\",\"metadata\":");
    }
    if (nf_put_metadata(b, r) < 0) return -1;
    if (nf_buf_reserve(b, 16) < 0) return -1;
    NF_LIT(b, ",\"name\":");
    if (r->present & (1u << NF_F_NAME)) {
        if (nf_put_text(b, r, NF_F_NAME) < 0) return -1;
    } else if (nf_put_json_utf8(b, r->name_inline, r->name_len) < 0) {
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
