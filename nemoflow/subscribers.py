"""Global subscribers: callbacks that see every event, in registration order."""

from __future__ import annotations

import asyncio
import threading

from ._backend import core as _core
from ._types import AlreadyExistsError

__all__ = ["deregister", "flush", "flush_async", "register"]

_lock = threading.Lock()
_by_name: dict = {}  # name -> (Subscriber, buffered)


def register(name: str, callback, *, buffered: bool = False) -> None:
    """Call ``callback(event)`` for every event.

    By default on the emitting thread, before the emitting call returns. With
    ``buffered=True`` from the pipeline's delivery thread instead, in emission order per
    thread: the traced thread then pays only for recording the event. Either way calls to one
    subscriber are serialized (never concurrent), and an exception in it is counted in
    ``nemoflow.diagnostics()`` and reported once, never raised into traced code.
    """
    if not isinstance(buffered, bool):
        raise TypeError(f"buffered must be True or False, not {type(buffered).__name__}")
    sub = _core.Subscriber(name, callback)
    with _lock:
        if name in _by_name:
            raise AlreadyExistsError(f"already exists: {name} subscriber already exists")
        _by_name[name] = (sub, buffered)
        if buffered:
            _core.attach(sub)
        else:
            _core.set_subscribers(tuple(s for s, b in _by_name.values() if not b))


def deregister(name: str) -> bool:
    """Remove a subscriber; ``False`` if none is registered under ``name``.

    A buffered subscriber still receives what was emitted before the call (waiting at most
    the exit timeout, ``nemoflow.configure(exit_timeout=...)``; past it, what it did not get
    is counted and a warning says so).
    """
    with _lock:
        entry = _by_name.pop(name, None)
        if entry is None:
            return False
        sub, buffered = entry
        if not buffered:
            _core.set_subscribers(tuple(s for s, b in _by_name.values() if not b))
    if buffered:
        _core.detach(sub)
    return True


def _clear() -> None:
    with _lock:
        entries = list(_by_name.values())
        _by_name.clear()
        _core.set_subscribers(())
    for sub, buffered in entries:
        if buffered:
            _core.detach(sub)


def _flush(timeout):
    if not _core.flush(timeout):
        raise TimeoutError(f"nemoflow: events not delivered within {timeout} s")


def flush(timeout: float | None = None) -> None:
    """Return once every event emitted before the call reached every subscriber and exporter.

    Inside a running event loop's thread it raises ``RuntimeError``: blocking there would
    stall the loop, use ``await flush_async()``. Raises ``TimeoutError`` if ``timeout``
    (seconds) runs out first.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _flush(timeout)
    raise RuntimeError("subscribers.flush() would block the running event loop; "
                       "use await subscribers.flush_async()")


async def flush_async(timeout: float | None = None) -> None:
    """``flush()`` for coroutines: waits in a worker thread without blocking the event loop."""
    await asyncio.to_thread(_flush, timeout)
