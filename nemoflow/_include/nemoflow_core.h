/* Small C helpers of the nemoflow core: clock, ids, RFC 3339 formatting, atomics.
 *
 * Everything here is pure C with no Python state, callable without the GIL, and correct on a
 * free-threaded build: per-thread state is thread-local, shared state is touched atomically.
 */
#ifndef NEMOFLOW_CORE_H
#define NEMOFLOW_CORE_H

#include <stdint.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#if defined(__linux__)
#include <sys/random.h>
#endif

/* ---- atomics ---------------------------------------------------------------------------- */
#define nf_load_u64(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define nf_store_u64(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define nf_load_relaxed(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define nf_store_relaxed(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define nf_add_relaxed(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)

/* ---- clock ------------------------------------------------------------------------------ */
static inline int64_t nf_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + (int64_t)ts.tv_nsec;
}

/* ---- random bits for ids -----------------------------------------------------------------
 * splitmix64 per thread, seeded from the OS. A forked child must not repeat its parent's
 * sequence: the at-fork handler bumps a generation counter and every thread reseeds lazily
 * when it sees a new generation. */
static uint64_t nf_fork_generation = 0;
static __thread uint64_t nf_rng_state = 0;
static __thread uint64_t nf_rng_generation = UINT64_MAX;

static void nf_after_fork_child(void) { nf_add_relaxed(&nf_fork_generation, 1); }

static int nf_install_fork_handler(void) {
    return pthread_atfork(NULL, NULL, nf_after_fork_child);
}

static uint64_t nf_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint64_t nf_seed(void) {
    uint64_t s = 0;
#if defined(__linux__)
    if (getrandom(&s, sizeof s, GRND_NONBLOCK) == (ssize_t)sizeof s) return s;
#endif
    /* No OS entropy: time, thread and a stack address are distinct enough for ids. */
    s = (uint64_t)nf_now_ns() ^ ((uint64_t)(uintptr_t)pthread_self() << 17) ^ (uint64_t)(uintptr_t)&s;
    return nf_mix64(s);
}

static inline uint64_t nf_rand64(void) {
    uint64_t gen = nf_load_relaxed(&nf_fork_generation);
    if (nf_rng_generation != gen) {
        nf_rng_state = nf_seed();
        nf_rng_generation = gen;
    }
    nf_rng_state += 0x9E3779B97F4A7C15ULL;
    return nf_mix64(nf_rng_state);
}

/* UUIDv7 (RFC 9562): 48-bit unix ms, version 7, 12 bits of sub-millisecond time (method 3,
 * so ids made by one thread sort by time), variant 10, 62 random bits. */
static inline void nf_uuid7(int64_t ns, uint64_t *hi, uint64_t *lo) {
    uint64_t ms = (uint64_t)(ns / 1000000);
    uint64_t sub = ((uint64_t)(ns % 1000000) << 12) / 1000000;
    *hi = ((ms & 0xFFFFFFFFFFFFULL) << 16) | 0x7000ULL | (sub & 0xFFFULL);
    *lo = 0x8000000000000000ULL | (nf_rand64() >> 2);
}

static const char nf_hex[] = "0123456789abcdef";

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

/* s[0:n] (UTF-8 or ASCII) as a JSON string at p, which has room for 6 * n + 2 bytes: bytes from
 * 0x80 up pass through as orjson writes them, control characters, '"' and '\\' are escaped.
 * Returns the end of what was written. */
static inline char *nf_put_json_chars(char *p, const char *s, size_t n) {
    *p++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') *p++ = (char)c;
        else p = nf_put_escape(p, c);
    }
    *p++ = '"';
    return p;
}

/* Two hex digits per byte value, built once. */
static char nf_hex_pairs[512];

static void nf_init_hex_pairs(void) {
    for (int i = 0; i < 256; i++) {
        nf_hex_pairs[2 * i] = nf_hex[i >> 4];
        nf_hex_pairs[2 * i + 1] = nf_hex[i & 0xF];
    }
}

/* 36 characters, no terminator. (nf_init_hex_pairs runs at module import.) */
static inline void nf_format_uuid(uint64_t hi, uint64_t lo, char *out) {
    char h[32];
    for (int i = 0; i < 8; i++) {
        memcpy(h + 2 * i, nf_hex_pairs + 2 * ((hi >> (56 - 8 * i)) & 0xFF), 2);
        memcpy(h + 16 + 2 * i, nf_hex_pairs + 2 * ((lo >> (56 - 8 * i)) & 0xFF), 2);
    }
    memcpy(out, h, 8);
    out[8] = '-';
    memcpy(out + 9, h + 8, 4);
    out[13] = '-';
    memcpy(out + 14, h + 12, 4);
    out[18] = '-';
    memcpy(out + 19, h + 16, 4);
    out[23] = '-';
    memcpy(out + 24, h + 20, 12);
}

/* Whether an encoded payload contains the token null (orjson's spelling of NaN/Infinity too). */
static inline int nf_has_null(const char *s, size_t n) {
    const char *end = s + n;
    while ((size_t)(end - s) >= 4) {
        const char *p = (const char *)memchr(s, 'n', (size_t)(end - s) - 3);
        if (p == NULL) return 0;
        if (p[1] == 'u' && p[2] == 'l' && p[3] == 'l') return 1;
        s = p + 1;
    }
    return 0;
}

/* ---- RFC 3339 ----------------------------------------------------------------------------
 * UTC with "+00:00" and 0, 3, 6 or 9 fractional digits, whichever is the shortest exact one.
 * nf_format_timestamp returns the length written (at most 35). */
static inline char *nf_put_digits(char *p, uint64_t v, int n) {
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (char)('0' + v % 10);
        v /= 10;
    }
    return p + n;
}

/* The "YYYY-MM-DDTHH:MM:SS" of the last second formatted by this thread: consecutive events
 * almost always share it. */
static __thread int64_t nf_ts_cached_secs = INT64_MIN;
static __thread char nf_ts_cached[19];

static inline void nf_format_civil(int64_t secs, char *out) {
    int64_t days = secs / 86400, rem = secs % 86400;
    if (rem < 0) { rem += 86400; days -= 1; }
    /* days -> civil date (H. Hinnant's algorithm) */
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    uint64_t doe = (uint64_t)(z - era * 146097);
    uint64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = (int64_t)yoe + era * 400;
    uint64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    uint64_t mp = (5 * doy + 2) / 153;
    uint64_t d = doy - (153 * mp + 2) / 5 + 1;
    uint64_t m = mp < 10 ? mp + 3 : mp - 9;
    y += (m <= 2);
    if (y < 0) y = 0;
    if (y > 9999) y = 9999;
    char *p = out;
    p = nf_put_digits(p, (uint64_t)y, 4); *p++ = '-';
    p = nf_put_digits(p, m, 2); *p++ = '-';
    p = nf_put_digits(p, d, 2); *p++ = 'T';
    p = nf_put_digits(p, (uint64_t)(rem / 3600), 2); *p++ = ':';
    p = nf_put_digits(p, (uint64_t)(rem % 3600 / 60), 2); *p++ = ':';
    nf_put_digits(p, (uint64_t)(rem % 60), 2);
}

static inline int nf_format_timestamp(int64_t ns, char *out) {
    int64_t secs = ns / 1000000000LL, frac = ns % 1000000000LL;
    if (frac < 0) { frac += 1000000000LL; secs -= 1; }
    if (secs != nf_ts_cached_secs) {
        nf_format_civil(secs, nf_ts_cached);
        nf_ts_cached_secs = secs;
    }
    memcpy(out, nf_ts_cached, 19);
    char *p = out + 19;
    if (frac != 0) {
        *p++ = '.';
        if (frac % 1000000 == 0) p = nf_put_digits(p, (uint64_t)(frac / 1000000), 3);
        else if (frac % 1000 == 0) p = nf_put_digits(p, (uint64_t)(frac / 1000), 6);
        else p = nf_put_digits(p, (uint64_t)frac, 9);
    }
    memcpy(p, "+00:00", 6);
    p += 6;
    return (int)(p - out);
}

#endif /* NEMOFLOW_CORE_H */
