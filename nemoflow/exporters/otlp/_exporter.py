"""``OtlpExporter``: events in (delivery thread), spans out (its own export thread).

The delivery thread hands each event to a projection, which returns the spans it finished;
they go into a bounded queue. An export thread takes them out in batches, encodes them and
sends them through the transport. Neither the traced threads nor, except when the queue is
full in ``overflow="block"`` mode, the delivery thread ever waits for an export.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import os
import threading
import time
import warnings
import weakref

from ..._backend import core as _core
from .._base import Exporter, ExportError
from . import _sdk
from ._model import InstrumentationScope, Resource, check_span
from ._transport import ExportFailure
from .projections import PROJECTIONS

# The built-in projections make valid spans by construction (a property test holds them to
# it); the spans of any other projection, subclasses included, are checked before queueing.
_TRUSTED = frozenset(PROJECTIONS.values())

__all__ = ["OtlpExporter"]

_live: weakref.WeakSet = weakref.WeakSet()  # exporters to shut down at exit / reset after fork

_ENV_DEFAULTS = {
    "max_queue_size": ("OTEL_BSP_MAX_QUEUE_SIZE", 2048),
    "max_export_batch_size": ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
    "scheduled_delay_millis": ("OTEL_BSP_SCHEDULE_DELAY", 5000),
}


def _env_default(option: str) -> int:
    var, default = _ENV_DEFAULTS[option]
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0 or (value == 0 and option != "scheduled_delay_millis"):
        warnings.warn(f"nemoflow: ignoring {var}={raw!r} (not a valid count); using {default}",
                      RuntimeWarning)
        return default
    return value


def _option(option: str, value, minimum: int) -> int:
    if value is None:
        return _env_default(option)
    if type(value) is not int or value < minimum:
        raise ValueError(f"{option} must be an int >= {minimum}, not {value!r}")
    return value


def _pipeline_overflow() -> str:
    try:
        return _core._pipeline_stats()["overflow"]
    except Exception:
        return "block"


class OtlpExporter(Exporter):
    """Projects events to spans and exports them over an OTLP transport.

    ``projection.on_event(event)`` is called on the delivery thread for every event and returns
    an iterable of finished ``Span`` objects (or None). If the projection has ``stats()``, its
    counters are shown with the exporter's; if it has ``shutdown()``, that is called once at
    shutdown and the spans it returns are exported too.
    """

    default_name = "otlp"

    def __init__(self, transport, projection, *, resource: Resource | None = None,
                 scope: InstrumentationScope | None = None, max_queue_size: int | None = None,
                 max_export_batch_size: int | None = None,
                 scheduled_delay_millis: int | None = None, timeout_millis: int = 3000,
                 overflow: str | None = None):
        super().__init__()
        if not callable(getattr(projection, "on_event", None)):
            raise TypeError("projection must have an on_event(event) method")
        if not callable(getattr(transport, "send", None)) or not callable(
                getattr(transport, "make_encoder", None)):
            raise TypeError("transport must have send() and make_encoder() methods")
        resource = Resource.for_service() if resource is None else resource
        scope = InstrumentationScope() if scope is None else scope
        if not isinstance(resource, Resource):
            raise TypeError(f"resource must be a Resource, not {type(resource).__name__}")
        if not isinstance(scope, InstrumentationScope):
            raise TypeError(f"scope must be an InstrumentationScope, not {type(scope).__name__}")
        if overflow not in (None, "block", "drop"):
            raise ValueError('overflow must be "block" or "drop" (None: the pipeline\'s)')
        self.max_queue_size = _option("max_queue_size", max_queue_size, 1)
        self.max_export_batch_size = _option("max_export_batch_size", max_export_batch_size, 1)
        self.scheduled_delay_millis = _option("scheduled_delay_millis", scheduled_delay_millis,
                                              0)
        if self.max_export_batch_size > self.max_queue_size:
            raise ValueError("max_export_batch_size must be <= max_queue_size "
                             f"({self.max_export_batch_size} > {self.max_queue_size})")
        if type(timeout_millis) is not int or timeout_millis <= 0:
            raise ValueError(f"timeout_millis must be an int > 0, not {timeout_millis!r}")
        self.timeout_millis = timeout_millis
        self.overflow = overflow
        self.resource = resource
        self.scope = scope
        self._transport = transport
        self._projection = projection
        self._encoder = transport.make_encoder(resource, scope)
        # An encoder that encodes span by span (``encode_span``, ``join``) gets each span
        # encoded on the delivery thread: the queue then holds bytes, which the garbage
        # collector does not track, rather than span objects with their lists.
        encode_span = getattr(self._encoder, "encode_span", None)
        self._encode_span = encode_span if callable(encode_span) and callable(
            getattr(self._encoder, "join", None)) else None
        self._check = type(projection) not in _TRUSTED
        self._delay = self.scheduled_delay_millis / 1000.0
        self._timeout = timeout_millis / 1000.0
        self._new_state()
        _live.add(self)

    def _new_state(self):
        # ``_lock`` guards the queue and the counters; the export thread waits on ``_work``,
        # a delivery thread blocked on a full queue on ``_room``, flushers on ``_settle``.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._settle = threading.Condition(self._lock)
        self._queue: collections.deque = collections.deque()
        self._oldest = 0.0  # when the oldest span still queued was queued (monotonic)
        self._enqueued = 0  # spans ever queued
        self._taken = 0  # spans taken off the queue for export
        self._settled = 0  # queued spans exported, failed or abandoned
        self._flush_target = 0  # export without waiting until this many spans are taken
        self._failure: str | None = None  # the failure force_flush reports, until a success
        self._stopping = False  # the export thread ends once the queue is empty
        self._stop_deadline: float | None = None  # set by shutdown: nothing waits past it
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._exported = self._dropped = self._failed = self._abandoned = self._waits = 0
        self._batches = 0
        self._last_error: str | None = None

    # --- registration: while attached, top-level scopes join the current OpenTelemetry span --

    def register(self, name: str) -> None:
        """Start receiving events, under ``name`` (``AlreadyExistsError`` if it is taken)."""
        super().register(name)
        _sdk.attached(self)

    def deregister(self, name: str) -> bool:
        """Stop receiving under ``name``; what was emitted before is still delivered first."""
        found = super().deregister(name)
        if not self._names:
            _sdk.detached(self)
        return found

    # --- the delivery thread's side ---------------------------------------------------------

    def export(self, events) -> None:
        """Project a batch of events and queue the finished spans (the delivery thread)."""
        if self._closed:
            return
        on_event = self._projection.on_event
        encode = None if self._check else self._encode_span
        failure = None
        items: list = []
        append = items.append
        chunk = self.max_export_batch_size
        for ev in events:
            try:
                out = on_event(ev)
            except Exception as exc:  # one bad event must not cost the rest of the batch
                if failure is None:
                    failure = exc
                continue
            if not out:
                continue
            if encode is not None:
                for span in out:
                    try:
                        append(encode(span))
                    except Exception as exc:
                        self._invalid(exc)
            else:
                self._prepare(out, items)
            if len(items) >= chunk:  # a full batch goes out before the next is made
                self._enqueue(items)
                items = []
                append = items.append
        if items:
            self._enqueue(items)
        if failure is not None:
            raise failure  # the core counts it and reports it once

    def _prepare(self, spans, items: list) -> None:
        """Append to ``items`` what the queue holds for ``spans``: each span checked (when its
        projection is not a built-in one) and, when the encoder can, encoded at once, so that
        no span object outlives this call."""
        check, encode = self._check, self._encode_span
        for span in spans:
            if check and not self._valid(span):
                continue
            if encode is None:
                items.append(span)
                continue
            try:
                items.append(encode(span))
            except Exception as exc:
                self._invalid(exc)

    def _put_all(self, spans) -> None:
        items: list = []
        self._prepare(spans, items)
        if items:
            self._enqueue(items)

    def _valid(self, span) -> bool:
        try:
            check_span(span)
        except (TypeError, ValueError) as exc:
            self._invalid(exc)
            return False
        return True

    def _invalid(self, exc) -> None:
        with self._lock:
            self._failed += 1
            self._last_error = f"invalid span: {exc}"
        self._report("invalid", f"a projection produced an invalid span ({exc})")

    def _enqueue(self, items: list) -> None:
        """Queue ``items`` in order, as room allows; when the queue is full, wait or drop
        (the rest of ``items``) by the overflow policy."""
        i, n = 0, len(items)
        mode = self.overflow
        waited = dropped = False
        while i < n:
            with self._lock:
                stop = self._stop_deadline
                if stop is not None and (time.monotonic() >= stop or (
                        self._stopping and self._thread is None)):
                    self._abandoned += n - i  # shutdown's time is up
                    return
                if self._thread is None:
                    self._start()
                room = self.max_queue_size - len(self._queue)
                if room > 0:
                    chunk = items if (i == 0 and n <= room) else items[i:i + room]
                    self._append(chunk)
                    i += len(chunk)
                    waited = False
                    continue
                if mode == "block":
                    if not waited:
                        self._waits += 1
                        waited = True
                    wait = 0.5 if stop is None else min(0.5, stop - time.monotonic())
                    self._room.wait(max(wait, 0.0))
                    continue
                if mode == "drop":
                    self._dropped += n - i
                    dropped = True
                    break
            mode = _pipeline_overflow()  # the pipeline's policy, looked up without the lock
        if dropped:
            self._report("dropped", "its span queue was full and spans were dropped "
                         "(overflow=\"drop\")", count=False)

    def _append(self, chunk):
        # With the lock held.
        queue = self._queue
        before = len(queue)
        queue.extend(chunk)
        self._enqueued += len(chunk)
        if before == 0:
            self._oldest = time.monotonic()
            self._work.notify()
        elif before < self.max_export_batch_size <= len(queue):
            self._work.notify()

    # --- the export thread ------------------------------------------------------------------

    def _start(self):
        # With the lock held.
        thread = threading.Thread(target=self._run, name=f"nemoflow-otlp-{self.name}",
                                  daemon=True)
        self._thread = thread
        thread.start()

    def _next_batch(self):
        """Wait for a batch to export (with the lock held); None when the thread must stop."""
        queue = self._queue
        while True:
            n = len(queue)
            now = time.monotonic()
            stop = self._stop_deadline
            if stop is not None and now >= stop:
                self._abandon()
                if self._stopping:
                    return None
                self._work.wait()
                continue
            if self._stopping:
                if n == 0:
                    return None
                break
            if n and (n >= self.max_export_batch_size or self._flush_target > self._taken
                      or now - self._oldest >= self._delay):
                break
            self._work.wait(self._oldest + self._delay - now if n else None)
        take = min(n, self.max_export_batch_size)
        batch = [queue.popleft() for _ in range(take)]
        self._taken += take
        if queue:
            self._oldest = now
        self._room.notify_all()
        return batch

    def _abandon(self):
        # With the lock held: what is still queued when shutdown's time is up.
        n = len(self._queue)
        if n:
            self._abandoned += n
            self._settled += n
            self._taken += n
            self._queue.clear()
        self._room.notify_all()
        self._settle.notify_all()

    def _run(self):
        while True:
            with self._lock:
                batch = self._next_batch()
                if batch is None:
                    return
                deadline = time.monotonic() + self._timeout
                if self._stop_deadline is not None:
                    deadline = min(deadline, self._stop_deadline)
            error = None
            try:
                if self._encode_span is not None:
                    body = self._encoder.join(batch)
                else:
                    body = self._encoder.encode(batch)
                self._transport.send(body, deadline, self._cancel)
            except ExportFailure as exc:
                error = str(exc)
            except Exception as exc:  # the export thread must survive whatever a batch does
                error = f"{type(exc).__name__}: {exc}"
            n = len(batch)
            with self._lock:
                if error is None:
                    self._exported += n
                    self._batches += 1
                    self._failure = None
                else:
                    self._failed += n
                    self._last_error = self._failure = error
                self._settled += n
                self._settle.notify_all()
            if error is not None:
                self._report("failed", f"could not export {n} spans: {error}")

    # --- user threads -----------------------------------------------------------------------

    def force_flush(self, timeout: float | None = None) -> None:
        """Export every span of the events emitted so far; raises ``ExportError`` while an
        export failure is unresolved (no batch has been exported since) or on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._names and not _core.flush(timeout):
            raise ExportError(f"exporter {self.name!r}: force_flush timed out")
        with self._lock:
            target = self._enqueued
            if target > self._flush_target:
                self._flush_target = target
                self._work.notify()
            while self._settled < target:
                thread = self._thread
                if thread is None or not thread.is_alive():
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise ExportError(f"exporter {self.name!r}: force_flush timed out with "
                                      f"{target - self._settled} spans not exported yet")
                self._settle.wait(left)
            failure = self._failure
        if failure is not None:
            raise ExportError(f"exporter {self.name!r}: OTLP export failed: {failure}")

    def _begin_close(self, timeout: float | None) -> None:
        # Before deregistering, which waits for the pipeline to deliver: from here on nothing
        # (a delivery thread blocked on a full queue, a retry) waits past the deadline.
        timeout = self._timeout if timeout is None else max(0.0, float(timeout))
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._stop_deadline is None or deadline < self._stop_deadline:
                self._stop_deadline = deadline
            self._room.notify_all()

    def _close(self, timeout: float | None) -> None:
        finish = getattr(self._projection, "shutdown", None)
        if callable(finish):
            try:
                spans = list(finish() or ())
                if spans:
                    self._put_all(spans)
            except Exception as exc:
                self._report("projection", f"its projection failed at shutdown: {exc}")
        with self._lock:
            self._stopping = True
            deadline = self._stop_deadline
            assert deadline is not None
            self._work.notify_all()
            self._room.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self._cancel.set()  # ends a retry wait; a request in flight has its own limit
                thread.join(0.05)
        with self._lock:
            self._abandon()
            abandoned = self._abandoned
            alive = thread is not None and thread.is_alive()
        if abandoned:
            self._report("abandoned", f"{abandoned} spans were abandoned: shutdown's timeout "
                         "ran out before they were exported", count=False)
        if not alive:
            with contextlib.suppress(Exception):
                self._transport.close()
        _live.discard(self)

    def stats(self) -> dict:
        """Spans exported, dropped, failed and abandoned, the queue, waits, the last error."""
        with self._lock:
            out = {"spans_exported": self._exported, "spans_dropped": self._dropped,
                   "spans_failed": self._failed, "spans_abandoned": self._abandoned,
                   "queue_size": len(self._queue), "queue_capacity": self.max_queue_size,
                   "waits": self._waits, "batches_exported": self._batches,
                   "last_error": self._last_error, "errors": self._errors,
                   "otel_parent_failures": _sdk.capture_failures()}
        more = getattr(self._projection, "stats", None)
        if callable(more):
            with contextlib.suppress(Exception):
                out.update(more())
        return out

    def _reinit_after_fork(self):
        # Only the forking thread survives: new locks, no export thread, zero counters and
        # none of the parent's queued spans (the parent exports those).
        self._new_state()
        if self._closed:
            self._stopping = True
            self._stop_deadline = 0.0
        with contextlib.suppress(Exception):
            self._transport.reset_after_fork()

    def __repr__(self):
        return f"<OtlpExporter {self.name!r} via {self._transport!r}>"


def _shutdown_all_at_exit():
    # Registered after the core's exit handler, so it runs first: the pipeline still delivers
    # while the exporters finish. Every deadline is set first, so exit waits for the longest
    # timeout, not their sum.
    exporters = list(_live)
    for exporter in exporters:
        with contextlib.suppress(Exception):
            exporter._begin_close(None)
    for exporter in exporters:
        with contextlib.suppress(Exception):
            exporter.shutdown()


def _after_fork_in_child():
    for exporter in list(_live):
        exporter._reinit_after_fork()


atexit.register(_shutdown_all_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
