"""Middleware registries shared by tool and LLM calls: guardrails and intercepts.

Each family (``tool_sanitize_request``, ``llm_execution`` …) has one global registry and, per
open scope, one scope-local registry. Registries are immutable tuples swapped under a lock, so a
managed call takes a snapshot without locking and later (de)registrations never change a call
already running.

Which scope-local registrations a call sees: those of the open scopes on the caller's current
stack, root→top (``_core.stack``, the same walk scope-local subscribers are delivered along).
A popped scope is on no stack, so its middleware is gone for every later call.
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import Any

from ._adapters import block_on, drive, settle_async, settle_sync  # noqa: F401  (their old home)
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
        return tuple(sorted((*self.entries, entry), key=lambda e: (e.priority, e.name)))

    def without(self, name):
        return tuple(e for e in self.entries if e.name != name)


_lock = threading.RLock()  # re-entered by a weakref callback run by GC under it
_globals = {family: () for family in FAMILIES}


TOOL_FAMILIES = tuple(f for f in FAMILIES if f.startswith("tool_"))

LLM_FAMILIES = tuple(f for f in FAMILIES if f.startswith("llm_"))


class _Switch:
    """``tool`` / ``llm``: False while no tool / LLM middleware is registered anywhere, so that
    a managed call can skip the pipeline. Recomputed under _lock by every change to the
    registries; a stale scope-local entry (kept until its frame goes) only keeps calls on the
    full pipeline."""

    __slots__ = ("llm", "tool")

    def __init__(self):
        self.tool = self.llm = False


switch = _Switch()


def _recompute() -> None:
    switch.tool = bool(_locals) or any(_globals[f] for f in TOOL_FAMILIES)
    switch.llm = bool(_locals) or any(_globals[f] for f in LLM_FAMILIES)


def register(family, name, priority, fn, break_chain=False) -> None:
    entry = _check_entry(name, priority, fn, break_chain)
    with _lock:
        _globals[family] = Registry(_globals[family]).with_entry(entry)
        _recompute()


def deregister(family, name) -> bool:
    with _lock:
        before = _globals[family]
        after = Registry(before).without(name)
        if len(after) == len(before):
            return False
        _globals[family] = after
        _recompute()
        return True


def _words(family) -> str:
    return family.replace("_", " ").replace("llm", "LLM")


def global_pair(module, family, doc, with_break_chain=False):
    """``register_<family>`` and ``deregister_<family>`` on the global registry of ``family``,
    as functions of ``module``; ``doc`` says what the callback is."""
    if with_break_chain:
        def reg(name: str, priority: int, break_chain: bool, fn) -> None:
            register(family, name, priority, fn, break_chain)
    else:
        def reg(name: str, priority: int, fn) -> None:  # type: ignore[misc]
            register(family, name, priority, fn)

    def dereg(name: str) -> bool:
        return deregister(family, name)

    return _named(module, reg, dereg, family, doc,
                  f"Remove a {_words(family)} callback; ``False`` if none has that name.")


def local_pair(module, family, with_break_chain=False):
    """``register_<family>`` and ``deregister_<family>`` on one scope (``scope_local``)."""
    if with_break_chain:
        def reg(scope_handle, name: str, priority: int, break_chain: bool, fn) -> None:
            local_register(scope_handle, family, name, priority, fn, break_chain)
    else:
        def reg(scope_handle, name: str, priority: int, fn) -> None:  # type: ignore[misc]
            local_register(scope_handle, family, name, priority, fn)

    def dereg(scope_handle, name: str) -> bool:
        return local_deregister(scope_handle, family, name)

    return _named(module, reg, dereg, family,
                  f"Add a {_words(family)} callback on ``scope_handle`` (``NotFoundError`` if "
                  f"the scope is closed).",
                  f"Remove a scope-local {_words(family)} callback; ``False`` if none has that "
                  f"name.")


def _named(module, reg, dereg, family, reg_doc, dereg_doc):
    reg.__module__ = dereg.__module__ = module
    reg.__name__ = reg.__qualname__ = f"register_{family}"
    dereg.__name__ = dereg.__qualname__ = f"deregister_{family}"
    reg.__doc__, dereg.__doc__ = reg_doc, dereg_doc
    return reg, dereg


# --------------------------------------------------------------------------------------------
# Scope-local registrations.

class _Local:
    """The scope-local middleware of one scope."""

    __slots__ = ("uuid", "ref", "families")

    def __init__(self, uuid, ref):
        self.uuid = uuid
        self.ref = ref
        self.families = {}


# scope uuid -> _Local; replaced as a whole under _lock, read without it
_locals: dict[str, Any] = {}


def _forget_local(uuid, _ref=None):
    global _locals
    with _lock:
        if uuid in _locals:
            _locals = {k: v for k, v in _locals.items() if k != uuid}
            _recompute()


def _still_open(local) -> bool:
    frame = local.ref()
    return frame is not None and not _core.is_closed(frame)


def _check_open(frame):
    if _core.is_closed(frame):
        raise NotFoundError(f"not found: scope {frame.uuid} not found")


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
            # A closed scope is never on a stack, so its middleware is not seen by any call
            # from the moment it is popped; its entry goes with its frame, or here, so that
            # handles kept after their scope ended do not keep their middleware alive.
            local = _Local(uuid, weakref.ref(frame, functools.partial(_forget_local, uuid)))
            _locals = {k: v for k, v in _locals.items() if _still_open(v)}
            _locals[uuid] = local
        local.families[family] = Registry(local.families.get(family, ())).with_entry(entry)
        _recompute()


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
        _locals = {}
        _recompute()


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
        # The open scopes of the caller's stack, root→top: outer scopes before inner ones.
        visible = [locals_[uuid] for uuid in _core.stack(top) if uuid in locals_]
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

def internal_error(exc, context=None) -> InternalError:
    """``InternalError`` for a middleware callback's failure ``exc``; ``context`` (NeMo Flow's
    wording, e.g. ``"LLM request intercept callable failed"``) goes before the exception."""
    what = f"{type(exc).__name__}: {_core.describe(exc)}"
    err = InternalError(f"internal error: {context}: {what}" if context else
                        f"internal error: {what}")
    err.__cause__ = exc
    return err
