"""Tool calls: manual ``call``/``call_end`` spans and managed ``execute`` with middleware.

A tool call is a scope on the wire (``category: "tool"``) but is never pushed on the stack:
work done inside the tool stays parented to the enclosing scope.
"""

from __future__ import annotations

import threading
import weakref

from . import _managed
from ._adapters import any_async, drive, settle_async, settle_sync
from ._backend import core as _core
from ._managed import ToolExecutionResult
from ._middleware import Snapshot
from ._types import NotFoundError, ScopeType

__all__ = ["ToolExecutionResult", "call", "call_end", "conditional_execution", "execute",
           "request_intercepts"]

_any_async = any_async  # its old name here

_end_lock = threading.Lock()
_ended: weakref.WeakSet = weakref.WeakSet()
# The tool_call_id of an open call, for the category_profile of an annotated end.
_call_ids: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def claim_end(handle, cls) -> None:
    """Raise unless ``handle`` is an open call of type ``cls``; then nobody else may end it."""
    if not isinstance(handle, cls):
        raise TypeError(f"handle must be a {cls.__name__}, not {type(handle).__name__}")
    with _end_lock:
        if handle in _ended:
            raise NotFoundError("not found: scope handle not found")
        if _core.is_closed(handle):
            raise NotFoundError("not found: scope handle not found")
        _ended.add(handle)


def call(name, args, *, handle=None, attributes=None, data=None, metadata=None,
         tool_call_id=None, timestamp=None):
    """Open a tool call (its start event has ``data`` = ``args``); returns its ``ToolHandle``."""
    frame = _core.start(name, ScopeType.Tool, handle, attributes, data, metadata, args,
                        timestamp, _core.KIND_TOOL, _managed.profile(tool_call_id=tool_call_id),
                        _core.ToolHandle)
    if tool_call_id is not None:
        _call_ids[frame] = tool_call_id
    return frame


def call_end(handle, result, *, data=None, metadata=None, timestamp=None) -> None:
    """Close a tool call opened by ``call``; its end event has ``data`` = ``result``.

    ``result`` may be a ``ToolExecutionResult``: its ``result`` is recorded and its
    ``annotation`` goes on the end's category_profile. ``data`` is accepted for NeMo Flow
    compatibility and validated; the handle's data was fixed at ``call``. Ending a call twice
    raises ``NotFoundError``.
    """
    _core.encode(data)
    end_profile = None
    if isinstance(result, _managed.ToolExecutionResult):
        result, end_profile = _managed.tool_outcome(result, _call_ids.get(handle))
    claim_end(handle, _core.ToolHandle)
    end_claimed(handle, result, metadata, timestamp, end_profile=end_profile)


def end_claimed(handle, result, metadata, timestamp, status=_core.STATUS_NONE,
                end_profile=None) -> None:
    """End a call claimed by ``claim_end``; if an argument is refused (nothing was emitted), the
    claim is given back so that the call can still be ended."""
    try:
        _core.end(handle, result, metadata, timestamp, status, None, None, end_profile)
    except (TypeError, ValueError):
        with _end_lock:
            _ended.discard(handle)
        raise


async def execute(name, args, func, *, handle=None, attributes=None, data=None, metadata=None,
                  tool_call_id=None):
    """Run ``func(args)`` (sync or async) as a managed tool call, through the middleware.

    ``func`` returns the result, or a ``ToolExecutionResult`` (returned as it is; its
    ``result`` is what the end event records, its ``annotation`` goes beside it).
    """
    return await _managed.run_tool(name, args, func, handle, attributes, data, metadata,
                                   tool_call_id, settle_async, True, False)


def execute_sync(name, args, func, *, handle=None, attributes=None, data=None, metadata=None,
                 tool_call_id=None, lenient=False):
    """``execute`` for synchronous code: the same pipeline, without an event loop."""
    return drive(_managed.run_tool(name, args, func, handle, attributes, data, metadata,
                                   tool_call_id, settle_sync, False, lenient))


def request_intercepts(name, args):
    """``args`` as the request intercepts would rewrite them for a call made here.

    Returns the value, or an awaitable of it when one of the intercepts is ``async def``.
    """
    chain = Snapshot(_core.current()).chain("tool_request")

    async def apply(settle):
        nonlocal args
        for entry in chain:
            args = await _managed.apply_tool_request(entry, name, args, settle)
            if entry.break_chain:
                break
        return args

    return apply(settle_async) if any_async(chain) else drive(apply(settle_sync))


def conditional_execution(name, args):
    """Run the conditional guardrails for a call made here: ``GuardrailRejectedError`` if one
    rejects (with the guardrail events of a rejected call), ``None`` otherwise.

    Returns an awaitable instead when one of the guardrails is ``async def``.
    """
    parent = _core.current()
    snap = Snapshot(parent)
    family = "tool_conditional_execution"

    def check(settle):
        return _managed.check_conditions(snap, family, parent, name, (name, args),
                                         {"kind": family, "target_name": name}, settle)

    return check(settle_async) if any_async(snap.chain(family)) else drive(check(settle_sync))
