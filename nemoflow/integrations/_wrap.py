"""What every provider integration shares: patching resource methods, and running their calls
through the managed LLM pipeline (guardrails, intercepts, sanitizers, events).

The wrapped method is called with the request as the intercepts left it: ``content`` is the
keyword arguments of the JSON body, ``headers`` go out as ``extra_headers``. The caller gets the
SDK's own typed response or stream; the events record its JSON shape.
"""

from __future__ import annotations

import functools

from .. import _adapters, _llm_pipeline, _managed, _middleware
from .._backend import core as _core
from ..codecs.streaming import StreamAccumulator

#: Keyword arguments of an SDK method that are transport options, not part of the JSON body.
TRANSPORT = ("extra_headers", "extra_query", "extra_body", "timeout")
_RAW_HEADER = "x-stainless-raw-response"


class Patcher:
    """Replaces methods on classes and puts the originals back."""

    def __init__(self):
        self.saved = []

    def wrap(self, owner, attr, make):
        original = owner.__dict__.get(attr)
        if original is None:  # an SDK version without this method
            return
        wrapper = functools.wraps(original)(make(original))
        wrapper.__nemoflow_wrapped__ = True
        setattr(owner, attr, wrapper)
        self.saved.append((owner, attr, original, wrapper))

    def restore(self):
        while self.saved:
            owner, attr, original, wrapper = self.saved.pop()
            if owner.__dict__.get(attr) is wrapper:
                setattr(owner, attr, original)


class Call:
    """One SDK call split into the recorded request and the rest of its arguments."""

    __slots__ = ("request", "transport", "model")

    def __init__(self, kwargs, skip):
        content = {}
        transport = {}
        for key, value in kwargs.items():
            if key in TRANSPORT:
                transport[key] = value
            elif not isinstance(value, skip):  # NOT_GIVEN / omit: the argument is absent
                content[key] = value
        headers = transport.pop("extra_headers", None)
        headers = dict(headers) if isinstance(headers, dict) else {}
        self.request = _llm_pipeline.LLMRequest(headers, content)
        self.transport = transport
        model = content.get("model")
        self.model = model if isinstance(model, str) else None


def traced(kwargs, args) -> bool:
    """False for calls left alone: positional arguments, raw-response wrappers, tracing off."""
    if args or not _core.enabled():
        return False
    headers = kwargs.get("extra_headers")
    if isinstance(headers, dict):
        for key in headers:
            if isinstance(key, str) and key.lower() == _RAW_HEADER:
                return False
    return True


def arguments(call, request):
    """The keyword arguments the SDK method gets for ``request`` (rewritten by intercepts)."""
    kw = dict(request.content)
    kw.update(call.transport)
    if request.headers:
        kw["extra_headers"] = dict(request.headers)
    return kw


def dump(response):
    """The JSON shape of a typed SDK response: the fields the server sent."""
    try:
        return response.model_dump(mode="json", exclude_unset=True)
    except Exception:  # not a pydantic model: recorded leniently as it is
        return response


def typed(result, box, cls):
    """What the caller gets: the SDK's object when the pipeline returned what it produced, else
    the result an intercept returned, converted to the SDK's type when it is a dict."""
    if box and result is box[1]:
        return box[0]
    if isinstance(result, dict) and cls is not None:
        try:
            return cls.model_validate(result)
        except Exception:
            return result
    return result


# --------------------------------------------------------------------------------------------
# Non-streamed calls.

def call_sync(original, self, call, name, cls):
    box = []

    def func(request):
        response = original(self, **arguments(call, request))
        box[:] = (response, dump(response))
        return box[1]

    result = _adapters.drive(_llm_pipeline.run_llm(
        name, call.request, func, None, None, None, None, call.model, _adapters.settle_sync,
        False, True))
    return typed(result, box, cls)


async def call_async(original, self, call, name, cls):
    box = []

    async def func(request):
        response = await original(self, **arguments(call, request))
        box[:] = (response, dump(response))
        return box[1]

    result = await _llm_pipeline.run_llm(
        name, call.request, func, None, None, None, None, call.model, _adapters.settle_async,
        True, True)
    return typed(result, box, cls)


# --------------------------------------------------------------------------------------------
# Streamed calls. The pipeline runs, and the HTTP request is sent, when the stream is created,
# as the SDK does: an HTTP error is raised by ``create``, not by the first iteration. Creating
# the stream therefore takes its first chunk, which the stream then yields first.

_NOTHING = object()


def _llm_stream(call, name, api, parent, snap, settle):
    acc = StreamAccumulator(api)
    return _llm_pipeline.LLMStream(name, call.request, lambda chunk: acc.add(dump(chunk)), acc.raw,
                              parent, None, None, None, call.model, snap, settle, True)


def stream_sync(open_stream, call, name, api):
    """A traced synchronous SDK stream; ``open_stream(kwargs)`` returns the SDK's stream."""
    holder = {}
    parent = _core.current()
    snap = _middleware.Snapshot(parent)
    # async stream intercepts need an event loop: the stream then gets a private one
    looped = bool(snap.chain("llm_stream_execution"))
    settle = _adapters.settle_async if looped else _adapters.settle_sync
    llm_call = _llm_stream(call, name, api, parent, snap, settle)

    def source(request):
        sdk = holder["sdk"] = open_stream(arguments(call, request))

        def items():
            try:
                yield from sdk
            finally:
                sdk.close()
        return items()

    gen = _managed.sync_stream(_managed.stream(llm_call, source, True, settle),
                               _adapters.LoopRunner() if looped else _adapters.drive)
    try:
        first = next(gen)
    except StopIteration:
        first = _NOTHING
    return SyncStream(gen, first, holder)


async def stream_async(open_stream, call, name, api):
    """A traced asynchronous SDK stream; ``await open_stream(kwargs)`` is the SDK's stream."""
    holder = {}
    parent = _core.current()
    llm_call = _llm_stream(call, name, api, parent, _middleware.Snapshot(parent),
                           _adapters.settle_async)

    async def source(request):
        sdk = holder["sdk"] = await open_stream(arguments(call, request))

        async def items():
            try:
                async for item in sdk:
                    yield item
            finally:
                await sdk.close()
        return items()

    gen = _managed.stream(llm_call, source, True, _adapters.settle_async)
    try:
        first = await gen.__anext__()
    except StopAsyncIteration:
        first = _NOTHING
    return AsyncStream(gen, first, holder)


class SyncStream:
    """The SDK's stream, traced: iterate it, close it or use it as a context manager; other
    attributes (``response``, …) are the SDK stream's."""

    def __init__(self, gen, first, holder):
        self._gen, self._first, self._holder = gen, first, holder

    def __iter__(self):
        return self

    def __next__(self):
        first = self._first
        if first is not _NOTHING:
            self._first = _NOTHING
            return first
        return next(self._gen)

    def close(self):
        self._first = _NOTHING
        self._gen.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getattr__(self, name):
        return _sdk_attribute(self, name)


class AsyncStream:
    """The SDK's async stream, traced: ``async for``, ``await close()``, ``async with``."""

    def __init__(self, gen, first, holder):
        self._gen, self._first, self._holder = gen, first, holder

    def __aiter__(self):
        return self

    async def __anext__(self):
        first = self._first
        if first is not _NOTHING:
            self._first = _NOTHING
            return first
        return await self._gen.__anext__()

    async def close(self):
        self._first = _NOTHING
        await self._gen.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def __getattr__(self, name):
        return _sdk_attribute(self, name)


def _sdk_attribute(stream, name):
    # Only public attributes pass through; a stream an intercept produced has no SDK stream.
    sdk = stream.__dict__.get("_holder", {}).get("sdk")
    if sdk is None or name.startswith("_"):
        raise AttributeError(name)
    return getattr(sdk, name)
