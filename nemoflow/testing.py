"""Helpers for testing traced code: record what a block of code emits.

    from nemoflow.testing import record

    def test_search_is_traced():
        with record() as rec:
            search("q")
        assert [e.name for e in rec.events] == ["search", "search"]
        assert rec.to_numpy()["status"].tolist() == ["OK"]
"""

from __future__ import annotations

import contextlib
import itertools

from .exporters.memory import InMemoryRecorder

__all__ = ["record"]

_ids = itertools.count(1)


@contextlib.contextmanager
def record(name: str | None = None):
    """Record every event emitted (on any thread) during the ``with`` block; yields the
    ``InMemoryRecorder``, which holds all of them once the block has exited."""
    recorder = InMemoryRecorder()
    recorder.register(name if name is not None else f"nemoflow.testing.record-{next(_ids)}")
    try:
        yield recorder
    finally:
        recorder.shutdown()  # deregistering flushes: the events emitted in the block are in
