"""Anthropic: Messages, sync and async clients: ``create`` (streamed or not) and the
``messages.stream()`` helper. Each call is a managed LLM call named ``anthropic.messages``."""

from __future__ import annotations

from . import _wrap

_patcher = _wrap.Patcher()
_NAME, _API = "anthropic.messages", "anthropic_messages"


def available() -> bool:
    try:
        import anthropic  # noqa: F401
    except ImportError:
        return False
    return True


def instrument() -> None:
    import anthropic
    from anthropic.resources.messages import AsyncMessages, Messages
    from anthropic.types import Message

    skip = tuple(t for t in (getattr(anthropic, "NotGiven", None),
                             getattr(anthropic, "Omit", None)) if t is not None)
    _patcher.wrap(Messages, "create", lambda o: _sync(o, Message, skip))
    _patcher.wrap(AsyncMessages, "create", lambda o: _async(o, Message, skip))
    _patcher.wrap(Messages, "stream", lambda o: _sync_helper(o, skip))
    _patcher.wrap(AsyncMessages, "stream", lambda o: _async_helper(o, skip))


def uninstrument() -> None:
    _patcher.restore()


def _sync(original, cls, skip):
    def create(self, *args, **kwargs):
        if not _wrap.traced(kwargs, args):
            return original(self, *args, **kwargs)
        call = _wrap.Call(kwargs, skip)
        if kwargs.get("stream") is True:
            return _wrap.stream_sync(lambda kw: original(self, **kw), call, _NAME, _API)
        return _wrap.call_sync(original, self, call, _NAME, cls)
    return create


def _async(original, cls, skip):
    async def create(self, *args, **kwargs):
        if not _wrap.traced(kwargs, args):
            return await original(self, *args, **kwargs)
        call = _wrap.Call(kwargs, skip)
        if kwargs.get("stream") is True:
            return await _wrap.stream_async(lambda kw: original(self, **kw), call, _NAME, _API)
        return await _wrap.call_async(original, self, call, _NAME, cls)
    return create


# ``messages.stream()`` returns a manager whose ``__enter__`` sends the request: the traced
# manager sends it through the pipeline (with the request as the intercepts left it) and hands
# the SDK's MessageStream the traced raw event stream, which it folds as usual.

def _sync_helper(original, skip):
    def stream(self, *args, **kwargs):
        if not _wrap.traced(kwargs, args):
            return original(self, *args, **kwargs)
        return _Manager(original, self, _wrap.Call(kwargs, skip))
    return stream


def _async_helper(original, skip):
    def stream(self, *args, **kwargs):
        if not _wrap.traced(kwargs, args):
            return original(self, *args, **kwargs)
        return _AsyncManager(original, self, _wrap.Call(kwargs, skip))
    return stream


def _raw_request(manager, cls_name):
    # The SDK manager keeps the request it will send as a private attribute; its stream is
    # what the traced call iterates.
    return getattr(manager, f"_{cls_name}__api_request")


class _Manager:
    def __init__(self, original, resource, call):
        self._original, self._resource, self._call = original, resource, call
        self._traced = self._manager = None

    def __enter__(self):
        def open_stream(kw):
            self._manager = self._original(self._resource, **kw)
            return _raw_request(self._manager, "MessageStreamManager")()

        from anthropic.lib.streaming import MessageStream
        self._traced = _wrap.stream_sync(open_stream, self._call, _NAME, _API)
        self._stream = MessageStream(self._traced, output_format=_output_format(self._manager))
        return self._stream

    def __exit__(self, *exc):
        try:
            self._stream.close()
        finally:
            self._traced.close()


class _AsyncManager:
    def __init__(self, original, resource, call):
        self._original, self._resource, self._call = original, resource, call
        self._traced = self._manager = None

    async def __aenter__(self):
        async def open_stream(kw):
            self._manager = self._original(self._resource, **kw)
            return await _raw_request(self._manager, "AsyncMessageStreamManager")

        from anthropic.lib.streaming import AsyncMessageStream
        self._traced = await _wrap.stream_async(open_stream, self._call, _NAME, _API)
        self._stream = AsyncMessageStream(self._traced,
                                          output_format=_output_format(self._manager,
                                                                       "AsyncMessageStreamManager"))
        return self._stream

    async def __aexit__(self, *exc):
        try:
            await self._stream.close()
        finally:
            await self._traced.close()


def _output_format(manager, cls_name="MessageStreamManager"):
    import anthropic
    return getattr(manager, f"_{cls_name}__output_format", anthropic.NOT_GIVEN)
