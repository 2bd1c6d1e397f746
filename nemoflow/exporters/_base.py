"""The shape every exporter has: registration under names in the shared namespace (attached to
the pipeline while it holds at least one), ``export(events)`` on the delivery thread,
``force_flush``, ``shutdown``, and failures counted in ``nemoflow.diagnostics()``."""

from __future__ import annotations

import threading

from .._backend import core as _core
from .._types import NemoFlowError
from ._names import claim, release

__all__ = ["ExportError", "Exporter"]


class ExportError(NemoFlowError):
    """Raised by ``force_flush()`` while an export failure is unresolved."""


class Exporter:
    """Base class: subclasses implement ``export(events)`` and may extend ``stats()``,
    ``_flush(timeout)``, ``_begin_close(timeout)`` (before deregistering) and
    ``_close(timeout)`` (after). An exporter whose lines the core writes itself (a file sink)
    returns that sink from ``_consumer(name)`` instead of itself."""

    default_name = "exporter"

    def __init__(self):
        self._names: list = []
        self._closed = False
        self._errors = 0
        self._reported: set = set()
        self._report_lock = threading.Lock()

    @property
    def name(self) -> str:
        """The first name this exporter is registered under (what diagnostics show)."""
        names = self._names
        return names[0] if names else self.default_name

    def register(self, name: str) -> None:
        """Start receiving events, under ``name`` (``AlreadyExistsError`` if it is taken)."""
        if claim(self, name):
            _core.attach(self._consumer(name))

    def deregister(self, name: str) -> bool:
        """Stop receiving under ``name``; what was emitted before is still delivered first."""
        found, last = release(self, name)
        if last:
            _core.detach(self._consumer(None))
            self._last_deregistered()
        return found

    def _consumer(self, name: str | None):
        # What the pipeline feeds; ``name`` is the first name on registration, None on removal.
        return self

    def _last_deregistered(self) -> None:
        pass

    def export(self, events) -> None:
        """Take a batch of events from the pipeline (called by the delivery thread)."""
        raise NotImplementedError

    def force_flush(self, timeout: float | None = None) -> None:
        """Deliver everything emitted so far and finish what this exporter does with it."""
        if self._names:
            _core.flush(timeout)
        self._flush(timeout)

    def shutdown(self, timeout: float | None = None) -> None:
        """Deregister every name, finish within ``timeout`` and stop. Safe to call twice."""
        if self._closed:
            return
        self._begin_close(timeout)
        for name in list(self._names):
            self.deregister(name)
        try:
            self._close(timeout)
        finally:
            self._closed = True

    def stats(self) -> dict:
        """Counters shown in ``nemoflow.diagnostics()["exporters"][name]``."""
        return {"errors": self._errors}

    def _flush(self, timeout: float | None) -> None:
        pass

    def _begin_close(self, timeout: float | None) -> None:
        pass

    def _close(self, timeout: float | None) -> None:
        pass

    def _report(self, kind: str, message: str, count: bool = True) -> None:
        """Count a failure and warn about the first of each ``kind``; never raises."""
        with self._report_lock:
            if count:
                self._errors += 1
            first = kind not in self._reported
            self._reported.add(kind)
        if first:
            _core._warn_quietly(f"nemoflow: exporter {self.name!r}: {message}; further "
                                "occurrences are counted in nemoflow.diagnostics()")
