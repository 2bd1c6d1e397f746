/* The payload fast path: canonical JSON for the small values traced calls mostly carry,
 * written in C on the traced thread (with the GIL) without a call into orjson.
 *
 * It handles str (ASCII), int (64-bit), bool, None, and dicts with ASCII str keys, lists and
 * tuples of those, nested up to NF_JSON_DEPTH, within NF_JSON_MAX bytes. Anything else (a
 * float, a non-ASCII or subclassed str, a big int, an object orjson converts) returns -1 and
 * the caller uses orjson: the bytes are always exactly what orjson writes with
 * OPT_SORT_KEYS, which the test suite checks value by value.
 */
#ifndef NEMOFLOW_JSON_H
#define NEMOFLOW_JSON_H

#include <Python.h>
#include <stdlib.h>
#include <string.h>

#include "nemoflow_core.h"

#define NF_JSON_MAX 4096           /* bytes: larger payloads go to orjson */
#define NF_JSON_DEPTH 3
#define NF_JSON_KEYS 32            /* keys per object on the fast path */

typedef struct {
    char *p, *end;
} nf_jbuf;

static int nf_j_value(nf_jbuf *b, PyObject *v, int depth);

static inline int nf_j_lit(nf_jbuf *b, const char *s, size_t n) {
    if ((size_t)(b->end - b->p) < n) return -1;
    memcpy(b->p, s, n);
    b->p += n;
    return 0;
}

/* An ASCII str as a JSON string, escaped as orjson escapes. */
static int nf_j_ascii(nf_jbuf *b, const char *s, Py_ssize_t n) {
    if (b->end - b->p < 6 * n + 2) return -1;
    b->p = nf_put_json_chars(b->p, s, (size_t)n);
    return 0;
}

static int nf_j_int(nf_jbuf *b, PyObject *v) {
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow) return -1;       /* orjson writes up to 2**64 - 1, or refuses: its call */
    if (x == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    if (b->end - b->p < 21) return -1;
    char digits[20];
    int n = 0;
    unsigned long long u = x < 0 ? 0ULL - (unsigned long long)x : (unsigned long long)x;
    do {
        digits[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (x < 0) *b->p++ = '-';
    while (n) *b->p++ = digits[--n];
    return 0;
}

typedef struct {
    const char *key;
    Py_ssize_t len;
    PyObject *value;
} nf_jmember;

static int nf_j_dict(nf_jbuf *b, PyObject *d, int depth) {
    Py_ssize_t n = PyDict_GET_SIZE(d);
    if (n > NF_JSON_KEYS) return -1;
    nf_jmember m[NF_JSON_KEYS];
    Py_ssize_t pos = 0, i = 0;
    PyObject *k, *v;
    while (PyDict_Next(d, &pos, &k, &v)) {
        if (!PyUnicode_CheckExact(k) || !PyUnicode_IS_COMPACT_ASCII(k)) return -1;
        /* sorted as orjson sorts: by the key's UTF-8 bytes (insertion sort: few keys) */
        const char *s = (const char *)PyUnicode_DATA(k);
        Py_ssize_t len = PyUnicode_GET_LENGTH(k), j = i;
        while (j > 0) {
            Py_ssize_t l = m[j - 1].len < len ? m[j - 1].len : len;
            int c = memcmp(m[j - 1].key, s, (size_t)l);
            if (c < 0 || (c == 0 && m[j - 1].len <= len)) break;
            m[j] = m[j - 1];
            j--;
        }
        m[j].key = s;
        m[j].len = len;
        m[j].value = v;
        i++;
    }
    if (i != n) return -1;
    if (nf_j_lit(b, "{", 1) < 0) return -1;
    for (i = 0; i < n; i++) {
        if (i && nf_j_lit(b, ",", 1) < 0) return -1;
        if (nf_j_ascii(b, m[i].key, m[i].len) < 0 || nf_j_lit(b, ":", 1) < 0) return -1;
        if (nf_j_value(b, m[i].value, depth + 1) < 0) return -1;
    }
    return nf_j_lit(b, "}", 1);
}

static int nf_j_items(nf_jbuf *b, PyObject *const *items, Py_ssize_t n, int depth) {
    if (nf_j_lit(b, "[", 1) < 0) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i && nf_j_lit(b, ",", 1) < 0) return -1;
        if (nf_j_value(b, items[i], depth + 1) < 0) return -1;
    }
    return nf_j_lit(b, "]", 1);
}

static int nf_j_value(nf_jbuf *b, PyObject *v, int depth) {
    PyTypeObject *t = Py_TYPE(v);
    if (t == &PyUnicode_Type) {
        if (!PyUnicode_IS_COMPACT_ASCII(v)) return -1;
        return nf_j_ascii(b, (const char *)PyUnicode_DATA(v), PyUnicode_GET_LENGTH(v));
    }
    if (t == &PyLong_Type) return nf_j_int(b, v);
    if (v == Py_None) return nf_j_lit(b, "null", 4);
    if (v == Py_True) return nf_j_lit(b, "true", 4);
    if (v == Py_False) return nf_j_lit(b, "false", 5);
    if (depth >= NF_JSON_DEPTH) return -1;
    if (t == &PyDict_Type) return nf_j_dict(b, v, depth);
    /* items re-read on each step: the list cannot change here (no Python code runs) */
    if (t == &PyList_Type)
        return nf_j_items(b, ((PyListObject *)v)->ob_item, PyList_GET_SIZE(v), depth);
    if (t == &PyTuple_Type)
        return nf_j_items(b, ((PyTupleObject *)v)->ob_item, PyTuple_GET_SIZE(v), depth);
    return -1;
}

/* The canonical JSON of v in out (NF_JSON_MAX bytes): its length, or -1 when v is not for the
 * fast path. Runs no Python code. */
static Py_ssize_t nf_json_fast(PyObject *v, char *out) {
    nf_jbuf b = {out, out + NF_JSON_MAX};
    if (nf_j_value(&b, v, 0) < 0) return -1;
    return (Py_ssize_t)(b.p - out);
}

/* The canonical JSON object with keys (a tuple of ASCII str, sorted and unique) and
 * values[i] for keys[i], in out (NF_JSON_MAX bytes): its length, or -1 when a value is not for
 * the fast path. A traced call's arguments, without a dict built for them. */
static Py_ssize_t nf_json_fast_object(PyObject *keys, PyObject *const *values, char *out) {
    nf_jbuf b = {out, out + NF_JSON_MAX};
    Py_ssize_t n = PyTuple_GET_SIZE(keys);
    if (nf_j_lit(&b, "{", 1) < 0) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = PyTuple_GET_ITEM(keys, i);
        if (i && nf_j_lit(&b, ",", 1) < 0) return -1;
        if (nf_j_ascii(&b, (const char *)PyUnicode_DATA(k), PyUnicode_GET_LENGTH(k)) < 0 ||
            nf_j_lit(&b, ":", 1) < 0 || nf_j_value(&b, values[i], 1) < 0)
            return -1;
    }
    if (nf_j_lit(&b, "}", 1) < 0) return -1;
    return (Py_ssize_t)(b.p - out);
}

#endif /* NEMOFLOW_JSON_H */
