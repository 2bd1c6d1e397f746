"""OpenAI: Chat Completions and Responses, sync and async clients, streamed or not.

``nemoflow.instrument("openai")`` wraps ``create`` of ``chat.completions`` and ``responses``;
each call is a managed LLM call named ``openai.chat.completions`` / ``openai.responses``.
"""

from __future__ import annotations

from . import _wrap

_patcher = _wrap.Patcher()


def available() -> bool:
    try:
        import openai  # noqa: F401
    except ImportError:
        return False
    return True


def _methods():
    from openai.resources.chat.completions import AsyncCompletions, Completions
    from openai.resources.responses import AsyncResponses, Responses
    from openai.types.chat import ChatCompletion
    from openai.types.responses import Response
    return [(Completions, AsyncCompletions, "openai.chat.completions", "openai_chat",
             ChatCompletion),
            (Responses, AsyncResponses, "openai.responses", "openai_responses", Response)]


def instrument() -> None:
    import openai
    skip = tuple(t for t in (getattr(openai, "NotGiven", None), getattr(openai, "Omit", None))
                 if t is not None)
    for sync_cls, async_cls, name, api, cls in _methods():
        _patcher.wrap(sync_cls, "create", lambda o, n=name, a=api, c=cls: _sync(o, n, a, c, skip))
        _patcher.wrap(async_cls, "create",
                      lambda o, n=name, a=api, c=cls: _async(o, n, a, c, skip))


def uninstrument() -> None:
    _patcher.restore()


def _sync(original, name, api, cls, skip):
    def create(self, *args, **kwargs):
        if not _wrap.traced(kwargs, args):
            return original(self, *args, **kwargs)
        call = _wrap.Call(kwargs, skip)
        if kwargs.get("stream") is True:
            return _wrap.stream_sync(lambda kw: original(self, **kw), call, name, api)
        return _wrap.call_sync(original, self, call, name, cls)
    return create


def _async(original, name, api, cls, skip):
    async def create(self, *args, **kwargs):
        if not _wrap.traced(kwargs, args):
            return await original(self, *args, **kwargs)
        call = _wrap.Call(kwargs, skip)
        if kwargs.get("stream") is True:
            return await _wrap.stream_async(lambda kw: original(self, **kw), call, name, api)
        return await _wrap.call_async(original, self, call, name, cls)
    return create
