# Payloads on the traced thread: JSON encoding, redaction, validation of values.
# Included by _core.pyx, in the order listed there; declarations live in _core.pxd.

# ---------------------------------------------------------------------------------------------
# JSON payloads: encoded once, at the call, to canonical bytes (sorted keys).

cdef object _dumps = orjson.dumps
cdef object _loads = orjson.loads
# Dataclasses and datetimes are not JSON values: route them to ``default`` so they are rejected
# (or stringified, in lenient mode) instead of being silently converted.
cdef object _JSON_OPTS = (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS
                          | orjson.OPT_PASSTHROUGH_DATETIME)
cdef object _SORT = orjson.OPT_SORT_KEYS


def _reject(obj):
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


def _stringify(obj):
    try:
        return _safe_text(str(obj))
    except Exception:
        return f"<unprintable {type(obj).__name__}>"


cdef str _safe_text(str text):
    # A lone surrogate (what os.listdir gives for a name that is not UTF-8) cannot be written
    # as UTF-8: keep the text, escape that character.
    if PyUnicode_IS_COMPACT_ASCII(text):
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


cdef object _Fragment = orjson.Fragment
cdef object _Enum = enum.Enum


cdef inline int _leaf(object v, int want) noexcept:
    # -1: not a leaf (look inside); else what a leaf holds of ``want`` (0 for plain values).
    cdef type t = type(v)
    if t is str or t is int or t is bool or v is None:
        return 0
    if t is float:
        return 0 if isfinite(PyFloat_AS_DOUBLE(v)) else want & _NON_FINITE
    return -1


cdef int _scan(object obj, int want) except -1:
    # What orjson would write that is not the value given: NaN and +-Infinity (written as
    # null) and orjson.Fragment (its bytes written unchecked), anywhere orjson looks, an Enum's
    # value included. Returns the first of ``want`` found, or 0. Runs after orjson accepted
    # ``obj``, so its nesting is bounded by orjson's depth limit.
    cdef int found = _leaf(obj, want)
    cdef Py_ssize_t i
    if found >= 0:
        return found
    cdef Py_ssize_t pos = 0
    cdef PyObject *key
    cdef PyObject *value
    if isinstance(obj, dict):
        while PyDict_Next(obj, &pos, &key, &value):
            found = _leaf(<object>value, want)
            if found < 0:
                found = _scan(<object>value, want)
            if found:
                return found
        return 0
    # Items are read as orjson reads them, never through an overridden __iter__.
    if isinstance(obj, list):
        i = 0
        while i < PyList_GET_SIZE(obj):  # re-read: an Enum's value property may run code
            v = <object>PyList_GET_ITEM(obj, i)
            i += 1
            found = _leaf(v, want)
            if found < 0:
                found = _scan(v, want)
            if found:
                return found
        return 0
    if isinstance(obj, tuple):
        for i in range(PyTuple_GET_SIZE(obj)):
            v = <object>PyTuple_GET_ITEM(obj, i)
            found = _leaf(v, want)
            if found < 0:
                found = _scan(v, want)
            if found:
                return found
        return 0
    if isinstance(obj, float):
        return 0 if isfinite(<double>obj) else want & _NON_FINITE
    if type(obj) is _Fragment:
        return want & _FRAGMENT
    if isinstance(obj, _Enum):
        return _scan(obj.value, want)
    return 0


cdef object _scrub(object obj, int depth):
    # A copy of a traced program's value that orjson can write faithfully: text with lone
    # surrogates escaped, Fragments as their text, Enum members as their values.
    if depth > 300:
        return _stringify(obj)
    if isinstance(obj, str):
        return _safe_text(obj)
    if isinstance(obj, dict):
        return {(_safe_text(k) if isinstance(k, str) else k): _scrub(v, depth + 1)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_scrub(v, depth + 1) for v in obj]
    if type(obj) is _Fragment:  # its text: dumps writes a Fragment's bytes as they are
        return _safe_text(_dumps(obj).decode("utf-8", "backslashreplace"))
    if isinstance(obj, _Enum):
        return _scrub(obj.value, depth + 1)
    return obj


cdef object _encode_lenient(object obj):
    # Never raises (an Exception): the value comes from the traced program.
    try:
        raw = _dumps(obj, default=_stringify, option=_JSON_OPTS)
        if not _scan(obj, _FRAGMENT):
            return raw
    except Exception:
        pass
    try:
        return _dumps(_scrub(obj, 0), default=_stringify, option=_JSON_OPTS)
    except Exception:
        pass
    try:
        return _dumps(_stringify(obj))
    except Exception:
        return b'"<unencodable value>"'


@cython.final
cdef class Encoded:
    """A payload already encoded to canonical JSON bytes (used by the Pythonic surface)."""

    def __init__(self, bytes raw):
        self.raw = raw


# Redaction (nemoflow/redaction.py): while it is on, every payload passes through it here,
# once, before it is encoded, so every consumer sees the same redacted value and nothing
# unredacted is stored. While it is off its whole cost is the `is not None` test in _encode.
cdef object _redactor = None
cdef long long _redaction_failures = 0
cdef str _REDACTION_FAILED = "[REDACTED:error]"


def set_redactor(redactor):
    """Pass every payload and error text through ``redactor`` from now on (None: off)."""
    global _redactor
    _redactor = redactor


cdef int _redaction_failed(exc) except -1:
    # Fail closed: the payload is replaced by a marker, never written unredacted.
    global _redaction_failures
    _redaction_failures += 1
    if _redaction_failures == 1:
        _warn_quietly(f"nemoflow: redaction raised {type(exc).__name__}: {exc}; the payload "
                      f"was replaced by {_REDACTION_FAILED!r} (further failures are only "
                      "counted in nemoflow.diagnostics())")
    return 0


cdef object _redact(object obj, bint lenient):
    try:
        return _redactor.apply(obj, lenient)
    except Exception as exc:
        _redaction_failed(exc)
        return _REDACTION_FAILED


cdef str _redact_text(str text):
    try:
        return _redactor.text(text)
    except Exception as exc:
        _redaction_failed(exc)
        return _REDACTION_FAILED


cdef object _encode(object obj, bint lenient):
    cdef bytes raw
    cdef int found
    cdef char fast[NF_JSON_MAX]
    cdef Py_ssize_t n
    if obj is None:
        return None
    if type(obj) is Encoded:
        return (<Encoded>obj).raw
    if _redactor is not None:
        obj = _redact(obj, lenient)
    # Small plain values (most arguments and results): written here, without orjson; the
    # bytes are the same (nemoflow_json.h).
    n = nf_json_fast(obj, fast)
    if n >= 0:
        return PyBytes_FromStringAndSize(fast, n)
    if lenient:
        return _encode_lenient(obj)
    try:
        raw = _dumps(obj, default=_reject, option=_JSON_OPTS)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Failed to convert to JSON: {exc}") from None
    found = _scan(obj, _NON_FINITE | _FRAGMENT)
    if found == _NON_FINITE:
        raise ValueError("Failed to convert to JSON: NaN and Infinity are not JSON values")
    if found == _FRAGMENT:
        raise ValueError("Failed to convert to JSON: an orjson.Fragment would be written "
                         "unchecked; pass the decoded value")
    return raw


def encode(obj, lenient=False):
    """Canonical JSON bytes of ``obj``, or None for None; ValueError for non-JSON values.

    With ``lenient=True`` non-JSON values are written as their ``str()`` instead (used where the
    traced program, not the caller of an API, supplied the value).
    """
    return _encode(obj, lenient)


cdef inline object _decode(object raw):
    return None if raw is None else _loads(raw)
