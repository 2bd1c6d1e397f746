"""Middleware registries shared by tool and LLM calls: guardrails and intercepts.

Each family (``tool_sanitize_request``, ``llm_execution`` …) has one global registry and, per
open scope, one scope-local registry. Registries are immutable tuples swapped under a lock, so a
managed call takes a snapshot without locking and later (de)registrations never change a call
already running.

Which scope-local registrations a call sees: those of the scopes on the caller's current stack
(root→top). The core does not expose the stack itself, so each scope that holds scope-local
middleware gets an internal scope-local subscriber: the core calls it for every event emitted
while that scope is on the emitting context's stack, which is exactly the set of scopes started
above it. It records the uuids of those scopes while they are open and drops the scope's
registrations when it sees the scope's own end event. A call then sees a scope's middleware when
the current top is that scope or one started above it. (Scopes already pushed above a scope when
its first scope-local middleware was registered are not known to it; register on the top scope.)
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
import weakref

from ._backend import core as _core
from ._types import AlreadyExistsError, InternalError, NotFoundError

FAMILIES = (
    "tool_sanitize_request",
    "tool_sanitize_response",
    "tool_conditional_execution",
    "llm_sanitize_request",
    "llm_sanitize_response",
    "llm_conditional_execution",
    "tool_request",
    "tool_execution",
    "llm_request",
    "llm_execution",
    "llm_stream_execution",
)

_LOCAL_SUBSCRIBER = "nemoflow.scope-local-middleware"


class Entry:
    """One registration: a name, a priority, the callback and (request intercepts) break_chain."""

    __slots__ = ("name", "priority", "fn", "break_chain")

    def __init__(self, name, priority, fn, break_chain=False):
        self.name = name
        self.priority = priority
        self.fn = fn
        self.break_chain = break_chain

    def __repr__(self):
        return f"<Entry {self.name!r} priority={self.priority}>"


def _check_entry(name, priority, fn, break_chain):
    if not isinstance(name, str):
        raise TypeError(f"name must be str, not {type(name).__name__}")
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise TypeError(f"priority must be int, not {type(priority).__name__}")
    if not callable(fn):
        raise TypeError(f"callback must be callable, not {type(fn).__name__}")
    if not isinstance(break_chain, bool):
        raise TypeError(f"break_chain must be True or False, not {type(break_chain).__name__}")
    return Entry(name, priority, fn, break_chain)


class Registry:
    """The entries of one family in one place (global or one scope), sorted (priority, name)."""

    __slots__ = ("entries",)

    def __init__(self, entries=()):
        self.entries = entries

    def with_entry(self, entry):
        if any(e.name == entry.name for e in self.entries):
            raise AlreadyExistsError(f"already exists: {entry.name} already exists")
        return tuple(sorted(self.entries + (entry,), key=lambda e: (e.priority, e.name)))

    def without(self, name):
        return tuple(e for e in self.entries if e.name != name)


_lock = threading.RLock()  # re-entered by a weakref callback run by GC under it
_globals = {family: () for family in FAMILIES}


TOOL_FAMILIES = tuple(f for f in FAMILIES if f.startswith("tool_"))


def tool_idle() -> bool:
    """True when no tool middleware is registered anywhere (a call can skip the pipeline)."""
    if _locals:
        return False
    g = _globals
    return not any(g[f] for f in TOOL_FAMILIES)


def register(family, name, priority, fn, break_chain=False) -> None:
    entry = _check_entry(name, priority, fn, break_chain)
    with _lock:
        _globals[family] = Registry(_globals[family]).with_entry(entry)


def deregister(family, name) -> bool:
    with _lock:
        before = _globals[family]
        after = Registry(before).without(name)
        if len(after) == len(before):
            return False
        _globals[family] = after
        return True


# --------------------------------------------------------------------------------------------
# Scope-local registrations.

class _Local:
    """The scope-local middleware of one open scope."""

    __slots__ = ("uuid", "ref", "families", "above")

    def __init__(self, uuid, ref):
        self.uuid = uuid
        self.ref = ref
        self.families = {}
        # uuids of open scopes started while this one was on the stack. Mutated only by the
        # scope-local subscriber (never entered concurrently), read by managed calls; set
        # membership and add/discard are atomic on CPython, also on free-threaded builds.
        self.above = set()


_locals = {}  # scope uuid -> _Local; replaced as a whole under _lock, read without it


def _forget_local(uuid):
    global _locals
    with _lock:
        if uuid in _locals:
            _locals = {k: v for k, v in _locals.items() if k != uuid}


def _watcher(local):
    uuid = local.uuid
    above = local.above
    scope_event = _core.ScopeEvent

    def on_event(ev):
        if type(ev) is not scope_event:
            return
        ev_uuid = ev.uuid
        if ev.scope_category == "start":
            above.add(ev_uuid)
        elif ev_uuid == uuid:
            _forget_local(uuid)
        else:
            above.discard(ev_uuid)

    return on_event


def _check_open(frame):
    # local_deregister of a name never registered: NotFoundError("not found: scope <uuid> not
    # found") when the scope is closed, False otherwise; nothing changes.
    _core.local_deregister(frame, "\x00probe")


def local_register(frame, family, name, priority, fn, break_chain=False) -> None:
    global _locals
    if not isinstance(frame, _core.ScopeHandle):
        raise TypeError(f"expected a ScopeHandle, got {type(frame).__name__}")
    entry = _check_entry(name, priority, fn, break_chain)
    _check_open(frame)
    uuid = frame.uuid
    with _lock:
        local = _locals.get(uuid)
        if local is None or local.ref() is not frame:
            local = _Local(uuid, weakref.ref(frame, lambda _r, u=uuid: _forget_local(u)))
            # Raises NotFoundError for a scope closed meanwhile; then nothing is registered.
            _core.local_register(frame, _LOCAL_SUBSCRIBER, _watcher(local))
            _locals = {**_locals, uuid: local}
        local.families[family] = Registry(local.families.get(family, ())).with_entry(entry)


def local_deregister(frame, family, name) -> bool:
    if not isinstance(frame, _core.ScopeHandle):
        raise TypeError(f"expected a ScopeHandle, got {type(frame).__name__}")
    _check_open(frame)
    with _lock:
        local = _locals.get(frame.uuid)
        if local is None:
            return False
        before = local.families.get(family, ())
        after = Registry(before).without(name)
        if len(after) == len(before):
            return False
        local.families[family] = after
        return True


def _clear() -> None:
    """Forget every registration, global and scope-local (tests)."""
    global _locals
    with _lock:
        for family in FAMILIES:
            _globals[family] = ()
        locals_ = list(_locals.values())
        _locals = {}
    for local in locals_:
        frame = local.ref()
        if frame is not None:
            try:
                _core.local_deregister(frame, _LOCAL_SUBSCRIBER)
            except NotFoundError:
                pass


# --------------------------------------------------------------------------------------------
# Snapshots.

class Snapshot:
    """The middleware a call sees, taken once when the call starts."""

    __slots__ = ("globals", "locals")

    def __init__(self, top):
        self.globals = _globals.copy()
        locals_ = _locals
        if not locals_:
            self.locals = ()
            return
        top_uuid = top.uuid
        visible = [local for local in locals_.values()
                   if local.uuid == top_uuid or top_uuid in local.above]
        # Already root→top: a scope is visible through an outer one only if it started after
        # the outer one got its first registration, so the outer one was inserted first.
        self.locals = tuple(dict(local.families) for local in visible)

    def chain(self, family):
        """Entries in call order: priority first; equal priority: global, then root→top."""
        entries = self.globals[family]
        if self.locals:
            merged = list(entries)
            for families in self.locals:
                merged.extend(families.get(family, ()))
            merged.sort(key=lambda e: e.priority)  # stable
            return tuple(merged)
        return entries


def snapshot(parent=None) -> Snapshot:
    return Snapshot(_core.current() if parent is None else parent)


# --------------------------------------------------------------------------------------------
# Calling callbacks.

def internal_error(exc) -> InternalError:
    err = InternalError(f"internal error: {type(exc).__name__}: {_core.describe(exc)}")
    err.__cause__ = exc
    return err


def block_on(awaitable):
    """Run an awaitable to completion from synchronous code."""
    async def run():
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run())
    # This thread runs an event loop already: run it on a private loop in a helper thread.
    box = {}
    ctx = contextvars.copy_context()

    def target():
        try:
            box["value"] = ctx.run(asyncio.run, run())
        except BaseException as exc:  # delivered to the caller below
            box["error"] = exc

    t = threading.Thread(target=target, name="nemoflow-middleware")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def settle_async(value):
    if inspect.isawaitable(value):
        return await value
    return value


async def settle_sync(value):
    # Never suspends: the pipeline coroutine of a synchronous call completes in one step.
    if inspect.isawaitable(value):
        return block_on(value)
    return value


def drive(coro):
    """Run a coroutine that never suspends (a synchronous call's pipeline) to its result."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("nemoflow: a synchronous managed call suspended")
