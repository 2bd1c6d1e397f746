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
from ._types import ScopeType

__all__ = ["mark", "trace"]


#: ``nf.mark(name, *, data=None, metadata=None, data_schema=None, handle=None, timestamp=None)``:
#: a point-in-time event under the current scope (or ``handle``); the core's own function.
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


# --------------------------------------------------------------------------------------------
# ``nf.trace.tool`` and ``nf.trace.llm``: managed calls. The decorated function runs inside the
# same pipeline as ``tools.execute`` / ``llm.execute``, so guardrails and intercepts apply.
# Its arguments, by parameter name, are the tool ``args`` (an LLM function gets them as the
# ``content`` of an ``LLMRequest`` with no headers); what the request intercepts return is what
# the function is really called with.

class _Arguments:
    """Maps a call to a dict of arguments by parameter name, and such a dict back to a call."""

    __slots__ = ("_fn", "_sig", "_receiver", "_fields", "_names", "_needed", "_required",
                 "_arity")

    def __init__(self, fn):
        self._fn = fn
        try:
            self._sig = inspect.signature(fn)
        except (TypeError, ValueError):  # no introspectable signature: positional and keywords
            self._sig = None
        params = list(self._sig.parameters.values()) if self._sig is not None else []
        # An unbound method's receiver is not an input of the call.
        self._receiver = (params[0].name if params and params[0].name in ("self", "cls")
                          else None)
        # The common case, a function whose parameters are all positional-or-keyword, maps by
        # zip (plus the keywords); anything else goes through Signature.bind.
        self._fields = None
        self._required = self._arity = 0
        if self._sig is not None and all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params):
            fields = params[1 if self._receiver else 0:]
            self._fields = tuple(p.name for p in fields)
            self._names = frozenset(self._fields)
            self._needed = frozenset(p.name for p in fields if p.default is p.empty)
            self._arity = len(params)
            self._required = sum(1 for p in params if p.default is p.empty)

    def split(self, args, kwargs):
        """``(arguments by name, receiver)``; a call the signature refuses raises TypeError."""
        if self._fields is not None and len(args) <= self._arity:
            if not kwargs:
                if self._required <= len(args):
                    if self._receiver:
                        return dict(zip(self._fields, args[1:])), args[0]
                    return dict(zip(self._fields, args)), None
            elif args or not self._receiver:
                receiver = args[0] if self._receiver else None
                values = dict(zip(self._fields, args[1:] if self._receiver else args))
                keys = kwargs.keys()
                if keys <= self._names and keys.isdisjoint(values):
                    values.update(kwargs)
                    if self._needed <= values.keys():
                        return values, receiver
        return self._bind(args, kwargs)

    def _bind(self, args, kwargs):
        if self._sig is None:
            return {"*args": list(args), **kwargs}, None
        arguments = dict(self._sig.bind(*args, **kwargs).arguments)
        receiver = arguments.pop(self._receiver) if self._receiver else None
        return arguments, receiver

    def caller(self, receiver):
        fn, sig, name = self._fn, self._sig, self._receiver

        def call(arguments):
            if not isinstance(arguments, dict):
                raise TypeError(f"{getattr(fn, '__qualname__', fn)!s} takes its arguments as a "
                                f"dict by parameter name, not {type(arguments).__name__}")
            if sig is None:
                arguments = dict(arguments)
                return fn(*arguments.pop("*args", ()), **arguments)
            full = {name: receiver, **arguments} if name else arguments
            bound = inspect.BoundArguments(sig, full)
            return fn(*bound.args, **bound.kwargs)

        return call


def _managed_tool(fn, name, attributes, metadata):
    from . import _managed, _middleware

    arguments = _Arguments(fn)
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        is_async = inspect.isasyncgenfunction(fn)
        settle = _middleware.settle_async if is_async else _middleware.settle_sync

        # The call's parent and middleware are those of where the generator is created; the
        # pipeline runs at its first step.
        @functools.wraps(fn)
        def tool(*args, **kwargs):
            values, receiver = arguments.split(args, kwargs)
            parent = _core.current()
            call = _managed.ToolStream(name, values, parent, attributes, metadata,
                                       _middleware.Snapshot(parent), settle)
            items = _managed.stream(call, arguments.caller(receiver), is_async, settle)
            return items if is_async else _managed.sync_stream(items, _middleware.drive)
    elif inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def tool(*args, **kwargs):
            values, receiver = arguments.split(args, kwargs)
            return await _managed.run_tool(
                name, values, arguments.caller(receiver), None, attributes, None, metadata,
                None, _middleware.settle_async, True, True)
    else:
        start, end, encode, encoded = _core.start, _core.end, _core.encode, _core.Encoded
        tool_type, kind, handle_cls = ScopeType.Tool, _core.KIND_TOOL, _core.ToolHandle
        ok, error = _core.STATUS_OK, _core.STATUS_ERROR
        switch = _middleware.switch

        @functools.wraps(fn)
        def tool(*args, **kwargs):
            values, receiver = arguments.split(args, kwargs)
            if switch.tool:
                return _middleware.drive(_managed.run_tool(
                    name, values, arguments.caller(receiver), None, attributes, None, metadata,
                    None, _middleware.settle_sync, False, True))
            # No tool middleware anywhere: the events of the pipeline, without it.
            frame = start(name, tool_type, None, attributes, None, metadata,
                          encoded(encode(values, True)), None, kind, b"{}", handle_cls)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                end(frame, None, _managed.error_metadata(exc), None, error, describe(exc))
                raise
            end(frame, None if result is None else encoded(encode(result, True)), None, None, ok)
            return result
    return tool


def _managed_llm(fn, name, attributes, metadata, model):
    from . import _managed, _middleware

    arguments = _Arguments(fn)

    def request_of(args, kwargs):
        values, receiver = arguments.split(args, kwargs)
        call = arguments.caller(receiver)
        return _managed.LLMRequest({}, values), (lambda request: call(request.content))

    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        is_async = inspect.isasyncgenfunction(fn)

        # A streamed call: the text chunks joined are the end data. The call's parent and
        # middleware are those of where the generator is created; the pipeline runs at its
        # first step. A sync generator's steps run without an event loop, unless async stream
        # intercepts are registered: those need one, so the stream gets a private loop.
        @functools.wraps(fn)
        def llm(*args, **kwargs):
            request, func = request_of(args, kwargs)
            texts = []

            def collect(chunk):
                if isinstance(chunk, str):
                    texts.append(chunk)

            parent = _core.current()
            snap = _middleware.Snapshot(parent)
            looped = is_async or bool(snap.chain("llm_stream_execution"))
            settle = _middleware.settle_async if looped else _middleware.settle_sync
            call = _managed.LLMStream(name, request, collect,
                                      lambda: "".join(texts) if texts else None, parent,
                                      attributes, None, metadata, model, snap, settle, True)
            chunks = _managed.stream(call, func, True, settle)
            if is_async:
                return chunks
            return _managed.sync_stream(
                chunks, _managed.LoopRunner() if looped else _middleware.drive)
    elif inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def llm(*args, **kwargs):
            request, func = request_of(args, kwargs)
            return await _managed.run_llm(name, request, func, None, attributes, None, metadata,
                                          model, _middleware.settle_async, True, True)
    else:
        @functools.wraps(fn)
        def llm(*args, **kwargs):
            request, func = request_of(args, kwargs)
            return _middleware.drive(_managed.run_llm(
                name, request, func, None, attributes, None, metadata, model,
                _middleware.settle_sync, False, True))
    return llm


class _ManagedTracer:
    """``nf.trace.tool`` / ``nf.trace.llm``: decorators for managed tool and LLM calls."""

    __slots__ = ("_kind",)

    def __init__(self, kind):
        self._kind = kind

    def __call__(self, target=None, *, name=None, model=None, metadata=None, attributes=None,
                 input=None):
        if isinstance(target, str):
            if name is not None:
                raise TypeError("give the name once, positionally or as name=")
            name, target = target, None
        if name is not None and not isinstance(name, str):
            raise TypeError(f"nf.trace.{self._kind} name must be str, not {type(name).__name__}")
        if model is not None and self._kind != "llm":
            raise TypeError("model= is for nf.trace.llm")
        _core.encode(metadata)  # a non-JSON metadata fails at decoration, not at each call
        if target is None:
            return _ManagedSpan(self, name, model, metadata, attributes, input)
        if input is not None:
            raise TypeError(f"nf.trace.{self._kind} input= is for `with` blocks; a decorated "
                            "function's arguments are its input")
        return self._decorate(target, name, model, metadata, attributes)

    def _decorate(self, fn, name, model, metadata, attributes):
        if isinstance(fn, (staticmethod, classmethod)):
            return type(fn)(self._decorate(fn.__func__, name, model, metadata, attributes))
        if isinstance(fn, type) or not callable(fn):
            raise TypeError(f"nf.trace.{self._kind} decorates functions, not "
                            f"{type(fn).__name__}")
        if name is None:
            name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
            if not isinstance(name, str):
                name = type(fn).__qualname__
        if self._kind == "tool":
            return _managed_tool(fn, name, attributes, metadata)
        return _managed_llm(fn, name, attributes, metadata, model)

    def __repr__(self):
        return f"<nf.trace.{self._kind}>"


class _ManagedSpan:
    """``nf.trace.tool("name")`` / ``nf.trace.llm("name")``: a decorator, or a ``with`` block.

    A ``with`` block is a tool or LLM scope around the code inside it (current there, so what
    it traces nests under it); ``span.output`` is its end data. There is no call to guard or
    rewrite, so guardrails and intercepts apply to decorated functions only.
    """

    __slots__ = ("_tracer", "_name", "_model", "_meta", "_attrs", "_input", "_frame", "_token",
                 "output")

    def __init__(self, tracer, name, model, metadata, attributes, input):
        self._tracer = tracer
        self._name = name
        self._model = model
        self._meta = metadata
        self._attrs = attributes
        self._input = input
        self._frame = self._token = None
        self.output = None

    def __call__(self, fn):
        """Decorate ``fn`` as a managed call with this name and options."""
        if self._input is not None:
            raise TypeError(f"nf.trace.{self._tracer._kind} input= is for `with` blocks; a "
                            "decorated function's arguments are its input")
        return self._tracer._decorate(fn, self._name, self._model, self._meta, self._attrs)

    def set_output(self, value) -> None:
        """Set what the end event records as this call's output."""
        self.output = value

    @property
    def handle(self):
        """The open scope's handle (None outside the block)."""
        return self._frame

    def __enter__(self):
        from . import _managed

        kind = self._tracer._kind
        if self._name is None:
            raise TypeError(f"nf.trace.{kind} needs a name when used as a context manager")
        if self._frame is not None:
            raise RuntimeError("this scope block is already in use; create one per "
                               "with-statement")
        inp = None if self._input is None else _core.Encoded(_core.encode(self._input, True))
        if kind == "tool":
            frame = _core.start(self._name, ScopeType.Tool, None, self._attrs, None, self._meta,
                                inp, None, _core.KIND_TOOL, b"{}", _core.ToolHandle)
        else:
            frame = _core.start(self._name, ScopeType.Llm, None, self._attrs, None, self._meta,
                                inp, None, _core.KIND_LLM,
                                _managed.llm_profile(self._model, None), _core.LLMHandle)
        self._frame = frame
        self._token = _core.bind(frame)
        return self

    def __exit__(self, exc_type, exc, tb):
        from . import _managed

        frame, token = self._frame, self._token
        self._frame = self._token = None
        _core.unbind(token)
        if exc is None:
            out = self.output
            meta = (_managed.result_metadata(_managed.response_metadata, out)
                    if self._tracer._kind == "llm" else None)
            _core.end(frame, None if out is None else _core.Encoded(_core.encode(out, True)),
                      meta, None, _core.STATUS_OK)
        else:
            _core.end(frame, None, _managed.error_metadata(exc), None, _core.STATUS_ERROR,
                      describe(exc))
        return False

    def __repr__(self):
        return f"<nf.trace.{self._tracer._kind} {self._name!r}>"


_Trace.tool = _ManagedTracer("tool")  # type: ignore[attr-defined]
_Trace.llm = _ManagedTracer("llm")  # type: ignore[attr-defined]

trace = _Trace(ScopeType.Function, _decorate)
