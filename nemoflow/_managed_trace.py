"""``nf.trace.tool`` and ``nf.trace.llm``: decorators for managed tool and LLM calls.

The decorated function runs inside the same pipeline as ``tools.execute`` / ``llm.execute``, so
guardrails and intercepts apply.
"""

from __future__ import annotations

import functools
import inspect

from ._backend import core as _core
from ._types import ScopeType

describe = _core.describe


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
    from . import _adapters, _managed, _middleware

    arguments = _Arguments(fn)
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        is_async = inspect.isasyncgenfunction(fn)
        settle = _adapters.settle_async if is_async else _adapters.settle_sync

        # The call's parent and middleware are those of where the generator is created; the
        # pipeline runs at its first step.
        @functools.wraps(fn)
        def tool(*args, **kwargs):
            values, receiver = arguments.split(args, kwargs)
            parent = _core.current()
            call = _managed.ToolStream(name, values, parent, attributes, metadata,
                                       _middleware.Snapshot(parent), settle)
            items = _managed.stream(call, arguments.caller(receiver), is_async, settle)
            return items if is_async else _managed.sync_stream(items, _adapters.drive)
    elif inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def tool(*args, **kwargs):
            values, receiver = arguments.split(args, kwargs)
            return await _managed.run_tool(
                name, values, arguments.caller(receiver), None, attributes, None, metadata,
                None, _adapters.settle_async, True, True)
    else:
        start, end, encode, encoded = _core.start, _core.end, _core.encode, _core.Encoded
        tool_type, kind, handle_cls = ScopeType.Tool, _core.KIND_TOOL, _core.ToolHandle
        ok, error = _core.STATUS_OK, _core.STATUS_ERROR
        switch = _middleware.switch
        tool_result_cls = _managed.ToolExecutionResult

        @functools.wraps(fn)
        def tool(*args, **kwargs):
            values, receiver = arguments.split(args, kwargs)
            if switch.tool:
                return _adapters.drive(_managed.run_tool(
                    name, values, arguments.caller(receiver), None, attributes, None, metadata,
                    None, _adapters.settle_sync, False, True))
            # No tool middleware anywhere: the events of the pipeline, without it.
            frame = start(name, tool_type, None, attributes, None, metadata,
                          encoded(encode(values, True)), None, kind, b"{}", handle_cls)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                end(frame, None, _managed.error_metadata(exc), None, error, describe(exc))
                raise
            if isinstance(result, tool_result_cls):
                value, end_profile = _managed.tool_outcome(result)
                end(frame, None if value is None else encoded(encode(value, True)), None, None,
                    ok, None, None, end_profile)
                return result
            end(frame, None if result is None else encoded(encode(result, True)), None, None, ok)
            return result
    return tool


def _managed_llm(fn, name, attributes, metadata, model):
    from . import _adapters, _llm_pipeline, _managed, _middleware

    arguments = _Arguments(fn)

    def request_of(args, kwargs):
        values, receiver = arguments.split(args, kwargs)
        call = arguments.caller(receiver)
        return _llm_pipeline.LLMRequest({}, values), (lambda request: call(request.content))

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
            settle = _adapters.settle_async if looped else _adapters.settle_sync
            call = _llm_pipeline.LLMStream(name, request, collect,
                                      lambda: "".join(texts) if texts else None, parent,
                                      attributes, None, metadata, model, snap, settle, True)
            chunks = _managed.stream(call, func, True, settle)
            if is_async:
                return chunks
            return _managed.sync_stream(
                chunks, _adapters.LoopRunner() if looped else _adapters.drive)
    elif inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def llm(*args, **kwargs):
            request, func = request_of(args, kwargs)
            return await _llm_pipeline.run_llm(name, request, func, None, attributes, None,
                                               metadata, model, _adapters.settle_async, True,
                                               True)
    else:
        @functools.wraps(fn)
        def llm(*args, **kwargs):
            request, func = request_of(args, kwargs)
            return _adapters.drive(_llm_pipeline.run_llm(
                name, request, func, None, attributes, None, metadata, model,
                _adapters.settle_sync, False, True))
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
