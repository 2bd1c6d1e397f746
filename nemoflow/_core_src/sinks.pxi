# Line sinks: lines the C encoder wrote, appended to files without the GIL.
# Included by _core.pyx, in the order listed there; declarations live in _core.pxd.

@cython.final
cdef class LineSink:
    """A file descriptor the delivery thread writes ATOF lines to, without the GIL.

    ``reopen(rotate)`` (called with the GIL when ``max_bytes`` would be exceeded, or when the
    sink holds no file) returns a new descriptor after the sink closed its own; with ``rotate``
    the current file goes to the backups first. A sink whose file could not be (re)opened, or
    was closed, holds fd -1 and never writes or closes a descriptor it no longer owns: what
    reaches it is counted as lost. Write errors are counted, kept for ``raise_error()``, and
    never raised into traced code.
    """

    def __cinit__(self, str name, int fd, long long max_bytes=0, rotate=None,
                  long long bytes_in_file=0):
        self._k = nf_sink_new(fd)
        if self._k == NULL:
            raise MemoryError()

    def __init__(self, str name, int fd, long long max_bytes=0, rotate=None,
                 long long bytes_in_file=0):
        self.name = name
        self._k.max_bytes = max_bytes
        self._k.bytes_in_file = bytes_in_file
        self._rotate = rotate

    def __dealloc__(self):
        if self._k != NULL:
            nf_sink_release(self._k)

    @property
    def fd(self):
        return self._k.fd

    @property
    def events(self):
        return self._k.events

    @property
    def bytes(self):
        return self._k.bytes

    @property
    def errors(self):
        return self._k.errors

    def raise_error(self):
        """Raise the last write error (OSError) and forget it; nothing when there was none."""
        err, self._k.err = self._k.err, 0
        if err:
            raise OSError(err, f"nemoflow: writing {self.name} failed: {os.strerror(err)}")

    def stats(self):
        return {"events": self._k.events, "bytes": self._k.bytes, "errors": self._k.errors,
                "lost": self._k.lost, "lost_bytes": self._k.lost_bytes}

    def close(self):
        """Close the file for good: later batches are counted as lost."""
        self._rotate = None
        fd, self._k.fd = self._k.fd, -1
        self._k.open_err = EBADF
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def _set_fd(self, int fd, long long bytes_in_file):
        # Only while nothing is delivered (a forked child before its delivery thread starts).
        old, self._k.fd = self._k.fd, fd
        self._k.bytes_in_file = bytes_in_file
        self._k.open_err = 0
        self._k.torn = 0
        if old >= 0:
            try:
                os.close(old)
            except OSError:
                pass

    def _report(self, exc=None):
        # With the GIL, after a failed write or reopen: warn once.
        if exc is not None:
            self._k.err = getattr(exc, "errno", None) or 5
        self._k.failures_unreported = 0
        if not self._reported:
            self._reported = True
            _warn_quietly(f"nemoflow: exporter {self.name!r} could not write: "
                          f"{exc if exc is not None else os.strerror(self._k.err)}; further "
                          "errors are counted in nemoflow.diagnostics()")

    def _reopen_now(self, rotate=False):
        # The old descriptor is closed and forgotten first: if no new file can be opened the
        # sink holds -1, never a number the application may get from its next open().
        fd, self._k.fd = self._k.fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
        if self._rotate is None:
            self._k.open_err = EBADF
            return
        try:
            fd = self._rotate(rotate)
        except Exception as exc:
            self._k.open_err = getattr(exc, "errno", None) or 5
            self._report(exc)
            return
        try:
            self._k.bytes_in_file = os.fstat(fd).st_size
        except OSError:
            self._k.bytes_in_file = 0
        self._k.fd = fd
        self._k.open_err = 0
        self._k.torn = 0

    def _rotate_now(self):
        self._reopen_now(True)


cdef object _sink_objects = {}     # nf_sink address -> LineSink, for rotation and reports


cdef void _write_sinks(nf_sink **sinks, int n_sinks, const char *data, size_t length,
                       int64_t n_events) noexcept nogil:
    cdef int i, err, torn
    cdef size_t whole
    cdef int64_t lines
    cdef nf_sink *k
    for i in range(n_sinks):
        k = sinks[i]
        if k.max_bytes and k.bytes_in_file and k.bytes_in_file + <int64_t>length > k.max_bytes:
            with gil:
                _sink_call(k, "_rotate_now")
        elif k.fd < 0:
            with gil:
                _sink_call(k, "_reopen_now")
        whole = 0
        torn = 0
        if k.fd < 0:
            err = k.open_err if k.open_err else EBADF
        else:
            err = 0
            if k.torn:
                # a line cut earlier could not be taken back: end it, so this batch's first
                # line starts on a line of its own
                err = nf_write_lines(k.fd, "\n", 1, &whole, &torn)
                if not err:
                    k.torn = 0
                    k.bytes_in_file += 1
                whole = 0
            if not err:
                err = nf_write_lines(k.fd, data, length, &whole, &torn)
        lines = n_events if whole == length else nf_count_lines(data, whole)
        k.events += lines
        k.bytes += <int64_t>whole
        k.bytes_in_file += <int64_t>whole
        if not err:
            continue
        if torn:
            k.torn = 1
        if err == EBADF and k.fd >= 0:
            # closed behind our back: the number may already be someone else's file
            k.fd = -1
            k.open_err = EBADF
        k.errors += 1
        k.err = err
        k.lost += n_events - lines
        k.lost_bytes += <int64_t>(length - whole)
        if not k.failures_unreported:
            k.failures_unreported = 1
            with gil:
                _sink_call(k, "_report")


cdef void _sink_call(nf_sink *k, str method) noexcept:
    try:
        sink = _sink_objects.get(<size_t>k)
        if sink is not None:
            getattr(sink, method)()
    except BaseException:
        pass
