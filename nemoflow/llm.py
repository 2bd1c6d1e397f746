"""LLM calls: manual ``call``/``call_end`` spans, managed ``execute`` and ``stream_execute``.

An LLM call is a scope on the wire (``category: "llm"``) but is never pushed on the stack; only
the ``llm.chunk`` marks of a streamed call point at it. Credential headers are never written
into events.
"""

from __future__ import annotations

from . import _managed
from ._backend import core as _core
from ._managed import LLMRequest
from ._middleware import Snapshot, drive, settle_async, settle_sync
from ._types import ScopeType
from .tools import claim_end, end_claimed

__all__ = ["LLMRequest", "call", "call_end", "execute", "request_intercepts", "stream_execute"]


def call(name, request, *, handle=None, attributes=None, data=None, metadata=None,
         model_name=None, timestamp=None):
    """Open an LLM call (start ``data`` = ``{"headers", "content"}``); returns its ``LLMHandle``."""
    _managed.check_request(request)
    return _core.start(name, ScopeType.Llm, handle, attributes, data, metadata,
                       _managed.request_data(request), timestamp, _core.KIND_LLM,
                       _managed.profile(model_name=model_name), _core.LLMHandle)


def call_end(handle, response, *, data=None, metadata=None, timestamp=None) -> None:
    """Close an LLM call opened by ``call``; its end event has ``data`` = ``response``.

    ``data`` is accepted for NeMo Flow compatibility and validated; the handle's data was
    fixed at ``call``. Ending a call twice raises ``NotFoundError``.
    """
    _core.encode(data)
    claim_end(handle, _core.LLMHandle)
    end_claimed(handle, response, metadata, timestamp)


async def execute(name, request, func, *, handle=None, attributes=None, data=None,
                  metadata=None, model_name=None):
    """Run ``func(request)`` (sync or async) as a managed LLM call, through the middleware.

    The end event's metadata carries ``llm.usage.*`` token counts and ``llm.finish_reason``
    when the response is an OpenAI- or Anthropic-style dict.
    """
    return await _managed.run_llm(name, request, func, handle, attributes, data, metadata,
                                  model_name, settle_async, True, False)


def execute_sync(name, request, func, *, handle=None, attributes=None, data=None,
                 metadata=None, model_name=None, lenient=False):
    """``execute`` for synchronous code: the same pipeline, without an event loop."""
    return drive(_managed.run_llm(name, request, func, handle, attributes, data, metadata,
                                  model_name, settle_sync, False, lenient))


def stream_execute(name, request, func, collector, finalizer, *, handle=None, attributes=None,
                   data=None, metadata=None, model_name=None):
    """A streamed managed LLM call: an async iterator of the chunks of ``func(request)``.

    Each chunk goes to ``collector(chunk)``, is recorded as an ``llm.chunk`` mark and is then
    yielded; ``finalizer()``'s return is the end event's data. The end event is written also
    when the consumer stops early, the task is cancelled or the stream raises; its
    category_profile holds ``time_to_first_chunk`` (seconds) once a chunk arrived. Guardrails
    and intercepts run on first iteration.
    """
    _managed.check_request(request)
    parent = _core.current() if handle is None else handle
    return _managed.stream_llm(name, request, func, collector, finalizer, parent, attributes,
                               data, metadata, model_name, Snapshot(_core.current()))


def request_intercepts(name, request):
    """``(request, annotated)``: ``request`` through the LLM request intercepts, with the
    ``traceparent`` and session headers a managed call made here would add."""
    _managed.check_request(request)
    return drive(_managed.request_intercepts(name, request, settle_sync))
