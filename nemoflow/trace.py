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
from asyncio import CancelledError

from ._backend import core as _core
from ._types import ScopeAttributes, ScopeType

__all__ = ["mark", "trace"]


def mark(name: str, *, data=None, metadata=None, data_schema=None, handle=None, timestamp=None):
    """Record a point-in-time event under the current scope (or ``handle``)."""
    _core.event(name, handle=handle, data=data, metadata=metadata, data_schema=data_schema,
                timestamp=timestamp)


# --------------------------------------------------------------------------------------------
# Payloads supplied by the traced program are encoded leniently: a value that is not JSON is
# recorded as its str() and never raises into the program.

_EMPTY_INPUT = _core.Encoded(b"{}")


def _lenient(value):
    try:
        raw = _core.encode(value, True)
    except Exception:  # observability must not break the traced call
        return None
    return None if raw is None else _core.Encoded(raw)


def _describe(exc) -> str:
    try:
        text = str(exc)
    except Exception:
        text = f"<unprintable {type(exc).__name__}>"
    if not text and isinstance(exc, CancelledError):
        text = "cancelled"
    return text


def _input_capture(fn):
    """A function ``(args, kwargs) -> Encoded`` recording the arguments by parameter name."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: everything positional
        params = ()
    positional = [p.name for p in params
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    # An unbound method's receiver is not an input of the call.
    skip = 1 if positional and positional[0] in ("self", "cls") else 0
    receiver = positional[0] if skip else None
    names = tuple(positional[skip:])
    n_named = len(names)

    def capture(args, kwargs):
        if skip:
            args = args[1:]
        if not args and not kwargs:
            return _EMPTY_INPUT
        values = dict(zip(names, args))
        if len(args) > n_named:
            values["*args"] = list(args[n_named:])
        if kwargs:
            values.update(kwargs)
            if skip:
                values.pop(receiver, None)
        return _lenient(values)

    return capture


# --------------------------------------------------------------------------------------------
# Wrappers, one per kind of callable. Each binds the scope only while the traced code runs.

def _wrap_function(fn, name, scope_type, attrs, meta, capture, keep_output):
    start, end, bind, unbind = _core.start, _core.end, _core.bind, _core.unbind
    ok, error = _core.STATUS_OK, _core.STATUS_ERROR

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        frame = start(name, scope_type, None, attrs, None, meta,
                      None if capture is None else capture(args, kwargs), None)
        token = bind(frame)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            end(frame, None, None, None, error, _describe(exc))
            raise
        else:
            end(frame, _lenient(result) if keep_output else None, None, None, ok, None)
        finally:
            unbind(token)
        return result

    return traced


def _wrap_coroutine_function(fn, name, scope_type, attrs, meta, capture, keep_output):
    start, end, bind, unbind = _core.start, _core.end, _core.bind, _core.unbind
    ok, error = _core.STATUS_OK, _core.STATUS_ERROR

    # The body runs in the awaiting task's context, so the binding is seen only by this call
    # and what it awaits; sibling tasks keep their own current scope.
    @functools.wraps(fn)
    async def traced(*args, **kwargs):
        frame = start(name, scope_type, None, attrs, None, meta,
                      None if capture is None else capture(args, kwargs), None)
        token = bind(frame)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            end(frame, None, None, None, error, _describe(exc))
            raise
        else:
            end(frame, _lenient(result) if keep_output else None, None, None, ok, None)
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
            end(frame, None, None, None, error, _describe(exc))
            raise
        end(frame, _lenient(result) if keep_output else None, None, None, ok, None)
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
            end(frame, None, None, None, error, _describe(exc))
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
                           None if capture is None else capture(args, kwargs))

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
# ``nf.trace(...)`` with options: a decorator or a ``with`` block.

class _TraceSpec:
    """What ``nf.trace("name", ...)`` returns: decorate a function with it, or enter it."""

    __slots__ = ("_name", "_scope_type", "_input", "_output", "_meta", "_attributes", "_span")

    def __init__(self, name, scope_type, input, output, metadata, attributes):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"nf.trace name must be str, not {type(name).__name__}")
        if not isinstance(output, bool):
            raise TypeError(f"nf.trace output= must be True or False, not {type(output).__name__}")
        if attributes is not None and not (
                type(attributes) is int or isinstance(attributes, ScopeAttributes)):
            raise TypeError(
                f"attributes must be ScopeAttributes, not {type(attributes).__name__}")
        self._name = name
        self._scope_type = scope_type
        self._input = input
        self._output = output
        # Metadata comes from the caller, not the traced program: non-JSON is a ValueError now.
        raw = _core.encode(metadata)
        self._meta = None if raw is None else _core.Encoded(raw)
        self._attributes = attributes
        self._span = None

    def __call__(self, fn):
        if self._input is not None and not isinstance(self._input, bool):
            raise TypeError("nf.trace input= must be True or False when decorating a function "
                            "(an input value is for `with nf.trace(...)` blocks)")
        return _decorate(fn, self._name, self._scope_type, self._attributes, self._meta,
                         bool(self._input), self._output)

    def __enter__(self):
        if self._name is None:
            raise TypeError("nf.trace needs a name when used as a context manager")
        if self._span is not None:
            raise RuntimeError("this nf.trace(...) block is already in use; "
                               "create one per with-statement")
        payload = None if isinstance(self._input, bool) else self._input
        span = _core.Span(self._name, self._scope_type, attributes=self._attributes,
                          metadata=self._meta, input=payload)
        span.__enter__()
        self._span = span
        return span

    def __exit__(self, exc_type, exc, tb):
        span, self._span = self._span, None
        if not self._output:
            span.output = None
        return span.__exit__(exc_type, exc, tb)

    def __repr__(self):
        return f"<nf.trace {self._name!r} {self._scope_type.name}>"


class Tracer:
    """``nf.trace`` for one scope type: ``@tracer``, ``@tracer("name", ...)``, ``with tracer(...)``."""

    __slots__ = ("_scope_type",)

    def __init__(self, scope_type: ScopeType):
        self._scope_type = scope_type

    def __call__(self, target=None, /, *, name=None, input=True, output=True, metadata=None,
                 attributes=None):
        """Trace a function (``@trace``) or make a decorator / ``with`` block (``trace("x")``)."""
        if target is None or isinstance(target, str):
            if target is not None and name is not None:
                raise TypeError("nf.trace got the name twice (positionally and as name=)")
            return _TraceSpec(target if name is None else name, self._scope_type, input, output,
                              metadata, attributes)
        spec = _TraceSpec(name, self._scope_type, input, output, metadata, attributes)
        return spec(target)

    def __repr__(self):
        return f"<nf.trace.{self._scope_type.name.lower()}>"


class _Trace(Tracer):
    """``nf.trace``: function scopes, with one ``Tracer`` per scope type as attributes."""

    __slots__ = ()

    agent = Tracer(ScopeType.Agent)
    function = Tracer(ScopeType.Function)
    retriever = Tracer(ScopeType.Retriever)
    embedder = Tracer(ScopeType.Embedder)
    reranker = Tracer(ScopeType.Reranker)
    guardrail = Tracer(ScopeType.Guardrail)
    evaluator = Tracer(ScopeType.Evaluator)
    custom = Tracer(ScopeType.Custom)
    unknown = Tracer(ScopeType.Unknown)

    def __getattr__(self, attr):
        if attr in ("tool", "llm"):
            raise AttributeError(
                f"nf.trace.{attr} is reserved for managed {attr} calls, which are not available "
                f"yet; use nf.trace.function or nemoflow.{'tools' if attr == 'tool' else 'llm'}")
        raise AttributeError(f"nf.trace has no attribute {attr!r}")

    def __repr__(self):
        return "<nf.trace>"


trace = _Trace(ScopeType.Function)
