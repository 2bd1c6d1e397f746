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

import contextvars
import functools
import inspect
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
    "mark_sanitize",
    "scope_sanitize_start",
    "scope_sanitize_end",
    "event_metadata_injector",
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

EVENT_FAMILIES = ("mark_sanitize", "scope_sanitize_start", "scope_sanitize_end",
                  "event_metadata_injector")

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
    # The core passes events through the event middleware only while some is registered.
    events = (any(_globals[f] for f in EVENT_FAMILIES)
              or any(local.families.get(f) for local in _locals.values()
                     for f in EVENT_FAMILIES))
    _core.set_event_hook(_event_hook if events else None)


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
        _recompute()
        return True


def _clear() -> None:
    """Forget every registration, global and scope-local, and the failure counters (tests)."""
    global _locals
    with _failures_lock:
        for key in _failures:
            _failures[key] = 0
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


# --------------------------------------------------------------------------------------------
# Event middleware: metadata injectors and mark / scope-start / scope-end sanitizers. They see
# every event (not only managed calls) through the core's event hook, and change only the copy
# that is recorded and delivered.

_FIELDS = ("data", "category_profile", "metadata")
_in_event_hook: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "nemoflow_event_middleware", default=False)
_failures = {"event_sanitizer_failures": 0, "event_metadata_injector_failures": 0}
_failures_lock = threading.RLock()  # re-entered by diagnostics() from a GC callback


def event_failures() -> dict:
    """The failures of event sanitizers and metadata injectors so far (``nf.diagnostics()``)."""
    with _failures_lock:
        return dict(_failures)


def _failed(counter, what, name, event, exc) -> None:
    with _failures_lock:
        _failures[counter] += 1
        first = _failures[counter] == 1
    if first:
        _core._warn_quietly(
            f"nemoflow: {what} {name!r} failed on event {event.name!r} "
            f"({type(exc).__name__}: {_core.describe(exc)}); further failures are counted in "
            f"nemoflow.diagnostics()")


def _event_chains(family, top, ev):
    """(injectors, sanitizers) of ``family`` for an event delivered along ``top``'s stack."""
    injectors = _globals["event_metadata_injector"]
    sanitizers = _globals[family]
    locals_ = _locals
    if locals_ and top is not None:
        uuids = _core.stack(top)
        if ev.kind == "scope" and ev.scope_category == "end" and ev.uuid not in uuids:
            uuids.append(ev.uuid)  # a scope's own middleware sees its end event
        visible = [locals_[u].families for u in uuids if u in locals_]
        if visible:
            injectors = _merged(injectors, visible, "event_metadata_injector")
            sanitizers = _merged(sanitizers, visible, family)
    return injectors, sanitizers


def _merged(entries, visible, family):
    merged = list(entries)
    for families in visible:
        merged.extend(families.get(family, ()))
    merged.sort(key=lambda e: e.priority)  # stable: globals, then root→top
    return merged


def _settled(value):
    return block_on(value) if inspect.isawaitable(value) else value


def _event_hook(ev, top):
    if _in_event_hook.get():  # an event emitted by event middleware itself passes as it is
        return None
    if ev.kind == "mark":
        family = "mark_sanitize"
    else:
        family = "scope_sanitize_end" if ev.scope_category == "end" else "scope_sanitize_start"
    injectors, sanitizers = _event_chains(family, top, ev)
    if not injectors and not sanitizers:
        return None
    token = _in_event_hook.set(True)
    try:
        return _apply(ev, injectors, sanitizers)
    finally:
        _in_event_hook.reset(token)


_SCALARS = (str, int, float, bool)


def _check_injected(out) -> dict:
    if not isinstance(out, dict):
        raise TypeError(f"a metadata injector returns a dict, not {type(out).__name__}")
    for key, value in out.items():
        if not isinstance(key, str):
            raise TypeError("metadata injector keys must be str")
        if isinstance(value, _SCALARS):
            continue
        if (isinstance(value, list) and value and isinstance(value[0], _SCALARS)
                and all(type(v) is type(value[0]) for v in value)):
            continue
        raise ValueError(f"attribute `{key}` must be a primitive or homogeneous primitive list")
    return out


def _apply(ev, injectors, sanitizers):
    """The copy of ``ev`` the middleware makes, or None to emit ``ev`` as it is."""
    data, profile, metadata = ev.data, ev.category_profile, ev.metadata
    view = ev
    if injectors:
        additions: dict = {}
        for entry in injectors:
            try:
                out = _check_injected(_settled(entry.fn(ev)))
            except Exception as exc:  # left out; the event is still written
                _failed("event_metadata_injector_failures", "event metadata injector",
                        entry.name, ev, exc)
                continue
            for key, value in out.items():
                additions.setdefault(key, value)  # the first injector of a key wins
        if additions:
            if metadata is None or isinstance(metadata, dict):
                # Additive only: keys the event already has keep their values.
                injected = {**additions, **(metadata or {})}
                try:
                    view = _core.with_fields(ev, _encoded(data), _core.encode(injected),
                                             _encoded(profile))
                    metadata = injected
                except ValueError as exc:  # a float that JSON cannot hold
                    _failed("event_metadata_injector_failures", "event metadata injector",
                            injectors[0].name, ev, exc)
            else:
                _failed("event_metadata_injector_failures", "event metadata injector",
                        injectors[0].name, ev, TypeError("the event's metadata is not an "
                                                         "object; injected keys left out"))
    if not sanitizers:
        return None if view is ev else view
    fields = {"data": data, "category_profile": profile, "metadata": metadata}
    entry = sanitizers[0]
    try:
        for entry in sanitizers:
            out = _settled(entry.fn(view, dict(fields)))
            if not isinstance(out, dict):
                raise TypeError(f"an event sanitizer returns a dict of {', '.join(_FIELDS)}, "
                                f"not {type(out).__name__}")
            fields = {k: out.get(k) for k in _FIELDS}
        if fields["category_profile"] is not None and not isinstance(
                fields["category_profile"], dict):
            raise TypeError("category_profile must be a dict or None")
        raws = [_encoded(fields[k]) for k in _FIELDS]
    except Exception as exc:  # fail closed: none of the three fields is written
        _failed("event_sanitizer_failures", "event sanitizer", entry.name, ev, exc)
        return _core.with_fields(ev, None, None, None)
    return _core.with_fields(ev, raws[0], raws[2], raws[1])


def _encoded(value):
    return None if value is None else _core.encode(value)
