"""The Pythonic surface: ``nf.trace`` as decorator and context manager, and ``nf.mark``.

``nf.trace`` and its per-type variants (``nf.trace.agent``, ``nf.trace.retriever`` …) work on
sync functions, ``async def``, generators and async generators, and as ``with`` blocks. Everything
a decorated call needs (name, encoded metadata, parameter names) is worked out once, when the
function is decorated; a call is then one start, one end and the call itself.
"""

from __future__ import annotations

import functools
import inspect
import sys
import types

from ._backend import core as _core
from ._managed_trace import (  # noqa: F401  (_Arguments and the rest: their old home)
    _Arguments,
    _managed_llm,
    _managed_tool,
    _ManagedTracer,
)
from ._types import ScopeType

__all__ = ["mark", "trace"]


#: ``nf.mark(name, *, data=None, metadata=None, data_schema=None, handle=None, timestamp=None,
#: severity=None)``: a point-in-time event under the current scope (or ``handle``); the core's
#: own function.
mark = _core.event


# --------------------------------------------------------------------------------------------
# Payloads supplied by the traced program are encoded leniently: a value that is not JSON is
# recorded as its str() and never raises into the program.

describe = _core.describe
enabled = _core.enabled


def _lenient(value):
    try:
        raw = _core.encode(value, True)
    except Exception:  # observability must not break the traced call
        return None
    return None if raw is None else _core.Encoded(raw)


def _input_capture(fn):
    """An ``InputCapture`` recording the arguments of ``fn`` by parameter name."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: everything positional
        params = ()
    positional = [p.name for p in params
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    # An unbound method's receiver is not an input of the call.
    skip = bool(positional) and positional[0] in ("self", "cls")
    return _core.InputCapture(tuple(positional[1:] if skip else positional), skip,
                              positional[0] if skip else None)


# --------------------------------------------------------------------------------------------
# Wrappers, one per kind of callable. Each binds the scope only while the traced code runs.

def _wrap_function(fn, name, scope_type, attrs, meta, capture, keep_output):
    # The hot path lives in the core: one start, bind, the call, one end, unbind.
    traced = _core.TracedFunction(fn, name, scope_type, attrs, meta, capture, keep_output)
    functools.update_wrapper(traced, fn)
    return traced


def _wrap_coroutine_function(fn, name, scope_type, attrs, meta, capture, keep_output):
    start, end, bind, unbind = _core.start, _core.end, _core.bind, _core.unbind
    ok, error = _core.STATUS_OK, _core.STATUS_ERROR

    # The body runs in the awaiting task's context, so the binding is seen only by this call
    # and what it awaits; sibling tasks keep their own current scope.
    @functools.wraps(fn)
    async def traced(*args, **kwargs):
        frame = start(name, scope_type, None, attrs, None, meta,
                      None if capture is None or not enabled() else capture(args, kwargs), None)
        token = bind(frame)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            end(frame, None, None, None, error, describe(exc))
            raise
        else:
            end(frame, _lenient(result) if keep_output and enabled() else None, None, None, ok,
                None)
        finally:
            unbind(token)
        return result

    return traced


def _generator_driver(name, scope_type, attrs, meta, keep_output):
    start, end, bind, unbind = _core.start, _core.end, _core.bind, _core.unbind
    ok, error = _core.STATUS_OK, _core.STATUS_ERROR

    # The scope is bound around each step of the inner generator and unbound before the item
    # reaches the caller, so between items the caller sees its own scope as current.
    def drive(inner, parent, inp):
        frame = start(name, scope_type, parent, attrs, None, meta, inp, None)
        advance, arg = inner.send, None
        try:
            while True:
                token = bind(frame)
                try:
                    item = advance(arg)
                except StopIteration as stop:
                    result = stop.value
                    break
                finally:
                    unbind(token)
                try:
                    arg = yield item
                except GeneratorExit:  # close() or garbage collection
                    token = bind(frame)
                    try:
                        inner.close()
                    finally:
                        unbind(token)
                    raise
                except BaseException as exc:  # throw(): deliver it where the inner one waits
                    advance, arg = inner.throw, exc
                else:
                    advance = inner.send
        except GeneratorExit:
            end(frame, None, None, None, ok, None)
            raise
        except BaseException as exc:
            end(frame, None, None, None, error, describe(exc))
            raise
        end(frame, _lenient(result) if keep_output and enabled() else None, None, None, ok, None)
        return result

    return drive


def _first_step(inner):
    # The first asend() is where the event loop's asyncgen hooks register a generator for
    # shutdown_asyncgens(). Only the traced wrapper is registered: the loop closing the inner
    # generator on its own, concurrently with the wrapper closing it, fails with "aclose():
    # asynchronous generator is already running". The finalizer hook is kept for the inner.
    firstiter, finalizer = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=None, finalizer=finalizer)
    try:
        return inner.asend(None)
    finally:
        sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=finalizer)


def _async_generator_driver(name, scope_type, attrs, meta):
    start, end, bind, unbind = _core.start, _core.end, _core.bind, _core.unbind
    ok, error = _core.STATUS_OK, _core.STATUS_ERROR

    async def drive(inner, parent, inp):
        frame = start(name, scope_type, parent, attrs, None, meta, inp, None)
        try:
            step = _first_step(inner)
            while True:
                token = bind(frame)
                try:
                    item = await step
                except StopAsyncIteration:
                    break
                finally:
                    unbind(token)
                try:
                    arg = yield item
                except GeneratorExit:  # aclose(), an abandoned loop, or garbage collection
                    token = bind(frame)
                    try:
                        await inner.aclose()
                    finally:
                        unbind(token)
                    raise
                except BaseException as exc:
                    step = inner.athrow(exc)
                else:
                    step = inner.asend(arg)
        except GeneratorExit:
            end(frame, None, None, None, ok, None)
            raise
        except BaseException as exc:
            end(frame, None, None, None, error, describe(exc))
            raise
        end(frame, None, None, None, ok, None)

    return drive


_current = _core.current


class _TracedGeneratorFunction:
    """A traced (async) generator function.

    The parent scope is the one current when the generator object is created, so something must
    run at creation: a ``def`` with ``yield`` cannot do that. This callable runs at creation and
    returns the driving generator; it carries the original's ``__code__``, ``__defaults__`` and
    ``__kwdefaults__`` so that ``inspect.isgeneratorfunction`` / ``isasyncgenfunction`` (which
    accept function-like objects, as they do for Cython functions) still answer True.
    """

    __slots__ = ("__dict__", "_fn", "_drive", "_capture")

    def __init__(self, fn, drive, capture):
        functools.update_wrapper(self, fn)
        target = fn
        while True:
            if isinstance(target, types.MethodType):
                target = target.__func__
            elif isinstance(target, functools.partial):
                target = target.func
            else:
                break
        for attr in ("__code__", "__defaults__", "__kwdefaults__"):
            if hasattr(target, attr):
                setattr(self, attr, getattr(target, attr))
        self._fn = fn
        self._drive = drive
        self._capture = capture

    def __call__(self, *args, **kwargs):
        inner = self._fn(*args, **kwargs)
        capture = self._capture
        return self._drive(inner, _current(),
                           None if capture is None or not enabled() else capture(args, kwargs))

    def __get__(self, obj, objtype=None):
        return self if obj is None else types.MethodType(self, obj)

    def __reduce__(self):
        return self.__qualname__  # pickled by reference, like the function it replaces

    def __repr__(self):
        return f"<traced function {self.__qualname__} at {id(self):#x}>"


def _decorate(fn, name, scope_type, attrs, meta, keep_input, keep_output):
    if isinstance(fn, (staticmethod, classmethod)):
        return type(fn)(_decorate(fn.__func__, name, scope_type, attrs, meta, keep_input,
                                  keep_output))
    if isinstance(fn, type):
        raise TypeError(f"nf.trace decorates functions, not classes ({fn.__qualname__})")
    if not callable(fn):
        raise TypeError(f"nf.trace takes a name (str) or a function, not {type(fn).__name__}")
    if name is None:
        name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
        if not isinstance(name, str):
            name = type(fn).__qualname__
    capture = _input_capture(fn) if keep_input else None
    if inspect.isasyncgenfunction(fn):
        return _TracedGeneratorFunction(
            fn, _async_generator_driver(name, scope_type, attrs, meta), capture)
    if inspect.isgeneratorfunction(fn):
        return _TracedGeneratorFunction(
            fn, _generator_driver(name, scope_type, attrs, meta, keep_output), capture)
    if inspect.iscoroutinefunction(fn):
        return _wrap_coroutine_function(fn, name, scope_type, attrs, meta, capture, keep_output)
    return _wrap_function(fn, name, scope_type, attrs, meta, capture, keep_output)


# --------------------------------------------------------------------------------------------
# ``nf.trace(...)``: the core's Tracer makes the span (a ``with`` block, or a decorator through
# ``_decorate``), so a ``with nf.trace("x")`` block costs what ``scope.scope`` does.

class _Trace(_core.Tracer):
    """``nf.trace``: function scopes, with one tracer per scope type as attributes."""

    __slots__ = ()

    agent = _core.Tracer(ScopeType.Agent, _decorate)
    function = _core.Tracer(ScopeType.Function, _decorate)
    retriever = _core.Tracer(ScopeType.Retriever, _decorate)
    embedder = _core.Tracer(ScopeType.Embedder, _decorate)
    reranker = _core.Tracer(ScopeType.Reranker, _decorate)
    guardrail = _core.Tracer(ScopeType.Guardrail, _decorate)
    evaluator = _core.Tracer(ScopeType.Evaluator, _decorate)
    custom = _core.Tracer(ScopeType.Custom, _decorate)
    unknown = _core.Tracer(ScopeType.Unknown, _decorate)

    def __getattr__(self, attr):
        raise AttributeError(f"nf.trace has no attribute {attr!r}")

    def __repr__(self):
        return "<nf.trace>"


# ``nf.trace.tool`` and ``nf.trace.llm``: managed calls (``_managed_trace``).


_Trace.tool = _ManagedTracer("tool")  # type: ignore[attr-defined]
_Trace.llm = _ManagedTracer("llm")  # type: ignore[attr-defined]

trace = _Trace(ScopeType.Function, _decorate)
