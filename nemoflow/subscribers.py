"""Global subscribers: callbacks that see every event, in registration order."""

from __future__ import annotations

import asyncio
import threading

from ._backend import core as _core
from ._types import AlreadyExistsError

__all__ = ["deregister", "flush", "flush_async", "register"]

_lock = threading.Lock()
_by_name: dict = {}


def register(name: str, callback) -> None:
    """Call ``callback(event)`` on the emitting thread for every event, before the call returns.

    Calls to one subscriber are serialized (never concurrent), and an exception in it is
    counted in ``nemoflow.diagnostics()`` and reported once, never raised into traced code.
    """
    sub = _core.Subscriber(name, callback)
    with _lock:
        if name in _by_name:
            raise AlreadyExistsError(f"already exists: {name} subscriber already exists")
        _by_name[name] = sub
        _core.set_subscribers(tuple(_by_name.values()))


def deregister(name: str) -> bool:
    """Remove a subscriber; ``False`` if none is registered under ``name``."""
    with _lock:
        if _by_name.pop(name, None) is None:
            return False
        _core.set_subscribers(tuple(_by_name.values()))
        return True


def _clear() -> None:
    with _lock:
        _by_name.clear()
        _core.set_subscribers(())


def flush() -> None:
    """Return once every event emitted before the call reached every subscriber and exporter.

    Synchronous subscribers are called before the emitting call returns, so with only those
    attached this returns at once. Inside a running event loop's thread it raises
    ``RuntimeError``: blocking there would stall the loop, use ``await flush_async()``.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        "subscribers.flush() would block the running event loop; use await subscribers.flush_async()")


async def flush_async() -> None:
    """``flush()`` for coroutines: waits without blocking the event loop."""
    return None
