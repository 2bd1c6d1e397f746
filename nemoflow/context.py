"""Carrying the current scope across threads, executors, callbacks and asyncio tasks.

Every thread and asyncio task has its own current scope (a ``ContextVar``): tasks start under
their creator's scope and never share a mutable stack. These helpers move a position in the trace
tree explicitly where the context does not follow by itself (threads, executors, callbacks).
"""

from __future__ import annotations

import contextvars
import functools
import inspect

from ._backend import core as _core

__all__ = [
    "Binding",
    "ScopeStack",
    "bind",
    "capture",
    "create_scope_stack",
    "fork_asyncio_context",
    "get_scope_stack",
    "propagate_scope_to_thread",
    "scope_stack_active",
    "set_thread_scope_stack",
    "use_scope_stack",
    "wrap",
]


class Binding:
    """A captured position in a trace tree (a scope and, through it, its root)."""

    __slots__ = ("_frame", "_token")

    def __init__(self, frame):
        self._frame = frame

    @property
    def handle(self):
        """The scope that becomes current where this binding is bound."""
        return self._frame

    @property
    def root_uuid(self) -> str:
        """The uuid of the implicit root: the id of the trace."""
        return _core.root_of(self._frame).uuid

    def __enter__(self):
        self._token = _core.bind(self._frame)
        return self._frame

    def __exit__(self, *exc):
        _core.unbind(self._token)
        return False

    def __repr__(self):
        return f"<{type(self).__name__} at {self._frame!r}>"


class ScopeStack(Binding):
    """A trace tree position as NeMo Flow's helpers pass it between threads."""

    __slots__ = ()

    def __repr__(self):
        return "<ScopeStack>"


# The ScopeStack get_scope_stack() last returned in this context: the same object is returned
# again while the context's position is unchanged.
_last_stack: contextvars.ContextVar = contextvars.ContextVar("nemoflow_scope_stack")


def capture() -> Binding:
    """The current scope, to bind later in another thread, callback or executor job."""
    return Binding(_core.current())


def bind(binding: Binding):
    """``with bind(b):`` makes ``b`` current here and restores the previous one on exit."""
    if not isinstance(binding, Binding):
        raise TypeError(f"expected a Binding from nemoflow.capture(), got {type(binding).__name__}")
    return type(binding)(binding._frame)


def wrap(fn):
    """``fn`` bound to the caller's current scope, wherever and whenever it is called.

    For an ``async def`` function the binding covers the coroutine's whole body, not only the
    creation of the coroutine object.
    """
    frame = _core.current()

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def bound_coroutine(*args, **kwargs):
            token = _core.bind(frame)
            try:
                return await fn(*args, **kwargs)
            finally:
                _core.unbind(token)

        return bound_coroutine

    @functools.wraps(fn)
    def bound(*args, **kwargs):
        token = _core.bind(frame)
        try:
            return fn(*args, **kwargs)
        finally:
            _core.unbind(token)

    return bound


def get_scope_stack() -> ScopeStack:
    """The current context's stack; creates (and binds) a fresh trace root on first use."""
    frame = _core.current()
    stack = _last_stack.get(None)
    if stack is None or stack._frame is not frame:
        stack = ScopeStack(frame)
        _last_stack.set(stack)
    return stack


def create_scope_stack() -> ScopeStack:
    """A new isolated trace with its own root, not bound anywhere yet."""
    return ScopeStack(_core.new_root())


def scope_stack_active() -> bool:
    """Whether this context already has a stack (without creating one)."""
    return _core.peek() is not None


def set_thread_scope_stack(stack: ScopeStack) -> None:
    """Bind ``stack`` as this thread's (context's) current position, until changed again."""
    if not isinstance(stack, Binding):
        raise TypeError(f"expected a ScopeStack, got {type(stack).__name__}")
    _core.bind(stack._frame)


def propagate_scope_to_thread() -> ScopeStack:
    """The current stack, for ``set_thread_scope_stack`` in a worker thread.

    Raises ``RuntimeError`` when this context has no stack yet.
    """
    frame = _core.peek()
    if frame is None:
        raise RuntimeError(
            "no active scope stack in current context; call nemoflow.get_scope_stack() "
            "or nemoflow.scope.push() first")
    return ScopeStack(frame)


def use_scope_stack(stack: ScopeStack):
    """``with use_scope_stack(s):`` binds ``s`` and restores the previous binding on exit."""
    if not isinstance(stack, Binding):
        raise TypeError(f"expected a ScopeStack, got {type(stack).__name__}")
    return ScopeStack(stack._frame)


def fork_asyncio_context() -> contextvars.Context:
    """A copy of this context for ``asyncio.create_task(..., context=...)``.

    Tasks already get isolated nesting under nemoflow; this exists for NeMo Flow code. The
    current stack is created first so parent and child share one trace root.
    """
    _core.current()
    return contextvars.copy_context()
