"""Live profiling: latency histograms per (scope type, name), kept by the delivery thread.

    nf.stats.enable()                # or NEMOFLOW_STATS=1, or the first nf.profile()
    run_agent()
    print(nf.stats())                # a table; the NumPy arrays are attributes of the result

    with nf.profile("batch") as prof:
        run_batch()
    print(prof.stats())              # only the scopes that ran inside the block

The statistics are a consumer on the event pipeline, like an exporter: the traced thread only
records its events as it does for any exporter, and the delivery thread updates the counters
and histograms a batch at a time with NumPy. Latencies go into log-spaced buckets (8 per
doubling, from 1 µs to about 12 days: 322 buckets), so percentiles are estimates within one
bucket (9 %); count, errors, total, min and max are exact.

``nf.profile(name)`` is a context manager and a decorator (functions and coroutine functions):
each entry opens a ``function`` scope named ``name`` and, until it exits, every scope started
below it (in this thread, or in threads and tasks it hands its scope to) is counted for the
profile as well. On exit it waits for the delivery of what the block emitted (``flush``), so
``prof.stats()`` is complete right after the block.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
from contextvars import ContextVar

from ._backend import core as _core
from ._types import ScopeType

__all__ = ["BUCKETS", "MAX_KEYS", "Profile", "ScopeStats", "profile", "stats"]

_PER_DOUBLING = 8
_DOUBLINGS = 40
#: Buckets of a histogram: below 1 µs, 8 per doubling from 1 µs, and above the last edge.
BUCKETS = 2 + _PER_DOUBLING * _DOUBLINGS
#: Distinct (scope type, name) pairs kept; further names are counted under ``("*", "(other)")``.
MAX_KEYS = 10_000
_OTHER = ("*", "(other)")
# Bounds on what is kept to attribute scopes to profiles when a child's start is delivered
# before its parent's (they ran on different threads): past them, such scopes are not counted.
_MAX_WAITING = 100_000


def _np():
    import numpy as np  # imported on first use: `import nemoflow` must stay cheap

    return np


def bucket_edges():
    """The lower edge of each bucket in nanoseconds, and ``inf`` after the last (BUCKETS + 1)."""
    np = _np()
    edges = np.empty(BUCKETS + 1, dtype=np.float64)
    edges[0] = 0.0
    edges[1:BUCKETS] = 1000.0 * 2.0 ** (np.arange(BUCKETS - 1) / _PER_DOUBLING)
    edges[BUCKETS] = np.inf
    return edges


class _Histograms:
    """Counters and histograms per key, grown as keys appear; guarded by the owner's lock."""

    def __init__(self):
        np = _np()
        self.index: dict = {}
        self.count = np.zeros(0, dtype=np.int64)
        self.errors = np.zeros(0, dtype=np.int64)
        self.total = np.zeros(0, dtype=np.int64)
        self.min = np.zeros(0, dtype=np.int64)
        self.max = np.zeros(0, dtype=np.int64)
        self.hist = np.zeros((0, BUCKETS), dtype=np.int64)

    def _grow(self, k: int) -> None:
        np = _np()
        n = self.count.size
        size = max(k, 2 * n, 8)
        for field, fill in (("count", 0), ("errors", 0), ("total", 0), ("max", 0),
                            ("min", np.iinfo(np.int64).max)):
            old = getattr(self, field)
            new = np.full(size, fill, dtype=np.int64)
            new[:n] = old
            setattr(self, field, new)
        hist = np.zeros((size, BUCKETS), dtype=np.int64)
        hist[:n] = self.hist
        self.hist = hist

    def add(self, keys: list, durations: list, errors: list) -> None:
        """Count one batch of finished scopes."""
        np = _np()
        index = self.index
        idx = np.empty(len(keys), dtype=np.intp)
        for i, key in enumerate(keys):
            j = index.get(key)
            if j is None:
                if len(index) >= MAX_KEYS and key != _OTHER:
                    j = index.get(_OTHER)
                    if j is None:
                        j = index[_OTHER] = len(index)
                else:
                    j = index[key] = len(index)
            idx[i] = j
        if len(index) > self.count.size:
            self._grow(len(index))
        d = np.asarray(durations, dtype=np.int64)
        k = self.count.size
        self.count += np.bincount(idx, minlength=k)
        self.errors += np.bincount(idx, weights=np.asarray(errors, dtype=np.float64),
                                   minlength=k).astype(np.int64)
        np.add.at(self.total, idx, d)
        np.minimum.at(self.min, idx, d)
        np.maximum.at(self.max, idx, d)
        with np.errstate(divide="ignore"):
            b = np.floor(np.log2(np.maximum(d, 1) / 1000.0) * _PER_DOUBLING).astype(np.int64) + 1
        b = np.clip(np.where(d < 1000, 0, b), 0, BUCKETS - 1)
        self.hist += np.bincount(idx * BUCKETS + b, minlength=k * BUCKETS).reshape(k, BUCKETS)

    def snapshot(self) -> ScopeStats:
        n = len(self.index)
        keys = list(self.index)
        return ScopeStats(keys, self.count[:n].copy(), self.errors[:n].copy(),
                          self.total[:n].copy(), self.min[:n].copy(), self.max[:n].copy(),
                          self.hist[:n].copy())


class ScopeStats:
    """Statistics per (scope type, name): NumPy arrays, one entry per key, in ``keys`` order.

    ``count``, ``errors`` (ends with ``otel.status_code`` ERROR), ``total_ns``, ``min_ns``,
    ``max_ns`` (int64) and ``hist`` (int64, one row of ``BUCKETS`` per key, bucket edges in
    ``bucket_edges_ns``); ``percentile(q)`` estimates latencies from the histograms.
    ``str()`` is a table (``rich`` renders it with borders: ``rich.print(stats)``).
    """

    def __init__(self, keys, count, errors, total, minimum, maximum, hist):
        np = _np()
        self.keys: list = keys
        self.category = np.array([k[0] for k in keys], dtype=object)
        self.name = np.array([k[1] for k in keys], dtype=object)
        self.count = count
        self.errors = errors
        self.total_ns = total
        self.min_ns = np.where(count > 0, minimum, 0)
        self.max_ns = maximum
        self.hist = hist
        self.bucket_edges_ns = bucket_edges()

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def mean_ns(self):
        """Mean latency per key (float64; NaN for a key with no finished scope)."""
        np = _np()
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.total_ns / self.count

    def percentile(self, q: float):
        """The ``q``-th percentile latency per key (float64 ns), estimated from the histogram:
        interpolated within its bucket (geometrically) and kept within [min, max]."""
        np = _np()
        out = np.full(len(self.keys), np.nan)
        edges = self.bucket_edges_ns
        for i, row in enumerate(self.hist):
            n = int(self.count[i])
            if n == 0:
                continue
            cum = np.cumsum(row)
            target = max(q / 100.0 * n, 1e-9)
            b = int(np.searchsorted(cum, target))
            before = cum[b - 1] if b > 0 else 0
            frac = (target - before) / row[b]
            lo = max(edges[b], float(self.min_ns[i]))
            hi = min(edges[b + 1], float(self.max_ns[i]))
            if hi <= lo:
                value = lo
            elif lo <= 0:
                value = lo + (hi - lo) * frac
            else:
                value = lo * (hi / lo) ** frac
            out[i] = min(max(value, float(self.min_ns[i])), float(self.max_ns[i]))
        return out

    def get(self, category: str, name: str) -> dict | None:
        """One key's row (as in ``rows()``), or None when it was never seen."""
        for row in self.rows():
            if (row["category"], row["name"]) == (category, name):
                return row
        return None

    def rows(self) -> list:
        """One dict per key, largest total first; times in milliseconds."""
        p50, p90, p99 = (self.percentile(q) for q in (50, 90, 99))
        rows = []
        for i, (category, name) in enumerate(self.keys):
            n = int(self.count[i])
            rows.append({
                "category": category, "name": name, "count": n, "errors": int(self.errors[i]),
                "total_ms": int(self.total_ns[i]) / 1e6,
                "mean_ms": int(self.total_ns[i]) / n / 1e6 if n else None,
                "p50_ms": float(p50[i]) / 1e6 if n else None,
                "p90_ms": float(p90[i]) / 1e6 if n else None,
                "p99_ms": float(p99[i]) / 1e6 if n else None,
                "max_ms": int(self.max_ns[i]) / 1e6,
            })
        rows.sort(key=lambda r: (-r["total_ms"], r["category"], r["name"]))
        return rows

    _COLUMNS = (("type", "category"), ("name", "name"), ("count", "count"),
                ("errors", "errors"), ("total ms", "total_ms"), ("mean ms", "mean_ms"),
                ("p50 ms", "p50_ms"), ("p90 ms", "p90_ms"), ("p99 ms", "p99_ms"),
                ("max ms", "max_ms"))

    def _cells(self):
        def cell(v):
            return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

        return [[cell(r[k]) for _, k in self._COLUMNS] for r in self.rows()]

    def __str__(self) -> str:
        headers = [h for h, _ in self._COLUMNS]
        cells = self._cells()
        widths = [max(len(c) for c in col) for col in zip(headers, *cells)]
        lines = []
        for i, row in enumerate([headers, *cells]):
            lines.append("  ".join(c.ljust(w) if j < 2 else c.rjust(w)
                                   for j, (c, w) in enumerate(zip(row, widths))).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __rich__(self):
        from rich.table import Table

        table = Table(title="nemoflow scope statistics", title_justify="left")
        for j, (header, _) in enumerate(self._COLUMNS):
            table.add_column(header, justify="left" if j < 2 else "right", overflow="fold")
        for cells in self._cells():
            table.add_row(*cells)
        return table

    def __repr__(self) -> str:
        return f"<ScopeStats {len(self.keys)} keys, {int(self.count.sum())} scopes>"


class _Region:
    __slots__ = ("hist", "uuids")

    def __init__(self, hist):
        self.hist = hist
        self.uuids: list = []


class _StatsConsumer:
    """The pipeline consumer: ``export(events)`` on the delivery thread."""

    name = "nemoflow.stats"

    def __init__(self):
        self._lock = threading.Lock()
        self._open: dict = {}  # uuid -> (start ns, key)
        self._global = _Histograms()
        self._regions: dict = {}  # region scope uuid -> _Region
        self._member: dict = {}  # uuid -> tuple of _Region it counts for
        self._waiting: dict = {}  # parent uuid not started yet -> {child uuid: record or None}
        self._orphans: dict = {}  # child uuid -> its parent uuid in ``_waiting``
        self._unmatched = 0
        self._batches = 0

    def export(self, events) -> None:
        """Count the scopes a batch ends (called by the delivery thread)."""
        keys: list = []
        durations: list = []
        errors: list = []
        regional: list = []
        with self._lock:
            self._batches += 1
            opened, member, regions = self._open, self._member, self._regions
            for ev in events:
                if ev.kind != "scope":
                    continue
                uuid = ev.uuid
                if ev.scope_category == "start":
                    opened[uuid] = (ev.timestamp_ns, (ev.category, ev.name))
                    if regions:
                        self._started(uuid, ev.parent_uuid)
                    continue
                start = opened.pop(uuid, None)
                if start is None:
                    self._unmatched += 1
                    continue
                meta = ev.metadata
                failed = isinstance(meta, dict) and meta.get("otel.status_code") == "ERROR"
                duration = max(ev.timestamp_ns - start[0], 0)
                keys.append(start[1])
                durations.append(duration)
                errors.append(failed)
                if regions:
                    inside = member.get(uuid)
                    if inside:
                        regional.extend((r, start[1], duration, failed) for r in inside)
                    else:
                        self._ended_waiting(uuid, (start[1], duration, failed))
            if keys:
                self._global.add(keys, durations, errors)
            for region in {r for r, *_ in regional}:
                mine = [(k, d, f) for r, k, d, f in regional if r is region]
                region.hist.add(*map(list, zip(*mine)))

    def _started(self, uuid, parent) -> None:
        inherited = self._member.get(parent)
        if inherited:
            self._join(uuid, inherited)
        elif parent not in self._open and len(self._orphans) < _MAX_WAITING:
            # The parent may have started on another thread and not be delivered yet.
            self._waiting.setdefault(parent, {})[uuid] = None
            self._orphans[uuid] = parent

    def _join(self, uuid, regions) -> None:
        stack = [uuid]
        while stack:
            u = stack.pop()
            had = self._member.get(u, ())
            new = tuple(r for r in regions if r not in had)
            if not new:
                continue
            self._member[u] = had + new
            for r in new:
                r.uuids.append(u)
            for child, record in self._waiting.pop(u, {}).items():
                self._orphans.pop(child, None)
                if record is None:
                    stack.append(child)
                else:
                    for r in new:
                        r.hist.add([record[0]], [record[1]], [record[2]])

    def _ended_waiting(self, uuid, record) -> None:
        parent = self._orphans.get(uuid)
        if parent is not None:
            self._waiting[parent][uuid] = record

    def begin_region(self, uuid, hist) -> _Region:
        region = _Region(hist)
        with self._lock:
            self._regions[uuid] = region
            self._join(uuid, (region,))
        return region

    def end_region(self, uuid) -> None:
        with self._lock:
            region = self._regions.pop(uuid, None)
            if region is None:
                return
            for u in region.uuids:
                left = tuple(r for r in self._member.get(u, ()) if r is not region)
                if left:
                    self._member[u] = left
                else:
                    self._member.pop(u, None)
            if not self._regions:
                self._waiting.clear()
                self._orphans.clear()
                self._member.clear()

    def snapshot(self) -> ScopeStats:
        with self._lock:
            return self._global.snapshot()

    def reset(self) -> None:
        with self._lock:
            self._global = _Histograms()
            self._unmatched = 0

    def stats(self) -> dict:
        """Counters shown in ``nemoflow.diagnostics()["exporters"]["nemoflow.stats"]``."""
        with self._lock:
            return {"batches": self._batches, "open_scopes": len(self._open),
                    "keys": len(self._global.index), "unmatched_ends": self._unmatched,
                    "profiles_active": len(self._regions)}


class _Stats:
    """``nf.stats()``: the statistics so far; ``nf.stats.enable()`` / ``disable()`` /
    ``reset()``."""

    def __init__(self):
        self._consumer: _StatsConsumer | None = None
        self._lock = threading.Lock()
        self._enabled = False

    def _get(self) -> _StatsConsumer:
        with self._lock:
            if self._consumer is None:
                _np()  # NumPy is imported here, not by the delivery thread
                self._consumer = _StatsConsumer()
            return self._consumer

    def enable(self) -> None:
        """Start counting every scope delivered from now on (safe to call again)."""
        _core.attach(self._get())
        self._enabled = True

    def disable(self) -> None:
        """Stop counting; what was emitted before is counted first, then kept."""
        consumer = self._consumer
        self._enabled = False
        if consumer is not None:
            _core.detach(consumer)
            with consumer._lock:  # nothing more is delivered: ends of these would be missed
                consumer._open.clear()

    @property
    def enabled(self) -> bool:
        """Whether ``enable()`` (or ``NEMOFLOW_STATS=1``, or a profile) turned counting on."""
        return self._enabled

    def reset(self) -> None:
        """Forget the statistics gathered so far (counting goes on if enabled)."""
        if self._consumer is not None:
            self._consumer.reset()

    def __call__(self, *, flush: bool = True, timeout: float | None = 10.0) -> ScopeStats:
        """The statistics of every scope delivered so far (after a ``flush`` by default)."""
        consumer = self._get()
        if flush and self._enabled:
            _core.flush(timeout)
        return consumer.snapshot()

    def __repr__(self) -> str:
        return f"<nemoflow.stats enabled={self._enabled}>"


stats = _Stats()


class Profile:
    """Statistics of the scopes run inside a block or a function: ``nf.profile(name)``."""

    def __init__(self, name: str = "profile", *, timeout: float | None = 10.0):
        if not isinstance(name, str):
            raise TypeError(f"name must be str, not {type(name).__name__}")
        self.name = name
        self._timeout = timeout
        self._hist: _Histograms | None = None
        # The regions open in this thread or task, innermost last (contexts are per task).
        self._active: ContextVar = ContextVar(f"nemoflow.profile.{id(self)}", default=())

    def stats(self) -> ScopeStats:
        """The statistics of every scope started inside the regions entered so far."""
        consumer = stats._get()
        with consumer._lock:
            if self._hist is None:
                self._hist = _Histograms()
            return self._hist.snapshot()

    def _enter(self):
        consumer = stats._get()
        stats.enable()  # attach first: the region's own start must be recorded
        with consumer._lock:
            if self._hist is None:
                self._hist = _Histograms()
        ctx = _core.scope(self.name, ScopeType.Function)
        handle = ctx.__enter__()
        consumer.begin_region(handle.uuid, self._hist)
        return ctx, handle.uuid

    def _exit(self, entered, exc_info) -> None:
        ctx, uuid = entered
        try:
            ctx.__exit__(*exc_info)
        finally:
            _core.flush(self._timeout)
            stats._get().end_region(uuid)

    def __enter__(self) -> Profile:
        entered = self._enter()
        self._active.set((*self._active.get(), entered))
        return self

    def __exit__(self, *exc_info):
        *rest, entered = self._active.get()
        self._active.set(tuple(rest))
        self._exit(entered, exc_info)
        return False

    async def __aenter__(self) -> Profile:
        return self.__enter__()

    async def __aexit__(self, *exc_info):
        return self.__exit__(*exc_info)

    def __call__(self, fn):
        """Decorate ``fn``: every call is a region of this profile; ``fn.profile`` is it."""
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args, **kwargs):
                entered = self._enter()
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    self._exit(entered, (type(exc), exc, exc.__traceback__))
                    raise
                self._exit(entered, (None, None, None))
                return result

            run_async.profile = self
            return run_async

        @functools.wraps(fn)
        def run(*args, **kwargs):
            entered = self._enter()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._exit(entered, (type(exc), exc, exc.__traceback__))
                raise
            self._exit(entered, (None, None, None))
            return result

        run.profile = self
        return run

    def __repr__(self) -> str:
        return f"<nemoflow.profile {self.name!r}>"


def profile(name=None, *, timeout: float | None = 10.0):
    """A ``Profile``: ``with nf.profile("name") as p:`` then ``p.stats()``; or a decorator
    (``@nf.profile`` or ``@nf.profile("name")``), the profile as ``fn.profile``."""
    if callable(name):
        return Profile(getattr(name, "__qualname__", "profile"), timeout=timeout)(name)
    return Profile("profile" if name is None else name, timeout=timeout)


def _enable_from_env() -> None:
    if os.environ.get("NEMOFLOW_STATS", "").strip().lower() not in ("", "0", "false", "no"):
        stats.enable()


def _after_fork_in_child():
    consumer = stats._consumer
    if consumer is not None:  # the delivery thread may have held the lock at the fork
        consumer._lock = threading.Lock()
    stats._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
