"""LLM calls: manual ``call``/``call_end`` spans, managed ``execute`` and ``stream_execute``.

An LLM call is a scope on the wire (``category: "llm"``) but is never pushed on the stack; only
the ``llm.chunk`` marks of a streamed call point at it. Credential headers are never written
into events.
"""

from __future__ import annotations

from . import _llm_pipeline, _managed
from ._adapters import any_async, drive, settle_async, settle_sync
from ._backend import core as _core
from ._llm_pipeline import LLMRequest
from ._middleware import Snapshot
from ._types import ScopeType
from .tools import claim_end, end_claimed

__all__ = [
    "LLMRequest",
    "LlmStream",
    "call",
    "call_end",
    "conditional_execution",
    "execute",
    "request_intercepts",
    "stream_execute",
]


def call(name, request, *, handle=None, attributes=None, data=None, metadata=None,
         model_name=None, timestamp=None):
    """Open an LLM call (start ``data`` = ``{"headers", "content"}``); returns its ``LLMHandle``."""
    _llm_pipeline.check_request(request)
    return _core.start(name, ScopeType.Llm, handle, attributes, data, metadata,
                       _llm_pipeline.request_data(request), timestamp, _core.KIND_LLM,
                       _managed.profile(model_name=model_name), _core.LLMHandle)


def call_end(handle, response, *, data=None, metadata=None, timestamp=None) -> None:
    """Close an LLM call opened by ``call``; its end event has ``data`` = ``response``.

    ``data`` is accepted for NeMo Flow compatibility and validated; the handle's data was
    fixed at ``call``. Ending a call twice raises ``NotFoundError``. The end event's metadata
    carries ``otel.status_code: "OK"``, as NeMo Relay writes it.
    """
    _core.encode(data)
    claim_end(handle, _core.LLMHandle)
    end_claimed(handle, response, metadata, timestamp, _core.STATUS_OK)


async def execute(name, request, func, *, handle=None, attributes=None, data=None,
                  metadata=None, model_name=None, codec=None, response_codec=None):
    """Run ``func(request)`` (sync or async) as a managed LLM call, through the middleware.

    The end event's metadata carries ``llm.usage.*`` token counts and ``llm.finish_reason``
    when the response is an OpenAI- or Anthropic-style dict. ``codec`` decodes the request into
    the ``AnnotatedLLMRequest`` request intercepts get (recorded as the start's
    ``category_profile.annotated_request``); ``response_codec`` decodes the response into the
    end's ``category_profile.annotated_response``, for observability only.
    """
    return await _llm_pipeline.run_llm(name, request, func, handle, attributes, data, metadata,
                                       model_name, settle_async, True, False, codec,
                                       response_codec)


def execute_sync(name, request, func, *, handle=None, attributes=None, data=None,
                 metadata=None, model_name=None, lenient=False, codec=None,
                 response_codec=None):
    """``execute`` for synchronous code: the same pipeline, without an event loop."""
    return drive(_llm_pipeline.run_llm(name, request, func, handle, attributes, data,
                                       metadata, model_name, settle_sync, False, lenient, codec,
                                       response_codec))


def stream_execute(name, request, func, collector, finalizer, *, handle=None, attributes=None,
                   data=None, metadata=None, model_name=None, codec=None,
                   response_codec=None) -> LlmStream:
    """A streamed managed LLM call: an ``LlmStream`` of the chunks of ``func(request)``.

    Each chunk goes to ``collector(chunk)``, is recorded as an ``llm.chunk`` mark and is then
    yielded; ``finalizer()``'s return is the end event's data. The end event is written also
    when the consumer stops early, the task is cancelled or the stream raises; its
    category_profile holds ``time_to_first_chunk`` (seconds) once a chunk arrived. Guardrails
    and intercepts run when the stream is awaited or first iterated.
    """
    _llm_pipeline.check_request(request)
    parent = _core.current() if handle is None else handle
    call = _llm_pipeline.LLMStream(name, request, collector, finalizer, parent, attributes,
                                   data, metadata, model_name, Snapshot(_core.current()),
                                   settle_async, False, codec, response_codec)
    return LlmStream(_managed.stream(call, func, True, settle_async), call)


class LlmStream:
    """The chunks of a streamed LLM call: ``async for chunk in stream``.

    Awaiting it (``stream = await llm.stream_execute(...)``, as NeMo Flow code does) runs the
    guardrails and intercepts and starts the call, so a rejection raises at the ``await``; it
    resolves to the stream itself. ``aclose()`` ends the call early (its end event is written).
    """

    __slots__ = ("_agen", "_call", "_started", "_first", "_error", "_done")

    def __init__(self, agen, call):
        self._agen = agen
        self._call = call
        self._started = False
        self._first = []  # the chunk taken by the ``await``, not yet handed out
        self._error = None  # the stream's own failure at that step, raised on iteration
        self._done = False

    def __await__(self):
        return self._start().__await__()

    async def _start(self):
        if self._started:
            return self
        self._started = True
        try:
            self._first.append(await self._agen.__anext__())
        except StopAsyncIteration:
            self._done = True
        except Exception as exc:
            if self._call.frame is None:  # refused before the call started: raise here
                raise
            self._error = exc
        return self

    def __aiter__(self):
        return self

    async def __anext__(self):
        self._started = True
        if self._first:
            return self._first.pop()
        if self._error is not None:
            exc, self._error = self._error, None
            self._done = True
            raise exc
        if self._done:
            raise StopAsyncIteration
        return await self._agen.__anext__()

    async def aclose(self) -> None:
        """Stop the stream: the source is closed and the call's end event written."""
        self._first.clear()
        self._error = None
        self._done = True
        await self._agen.aclose()

    def __repr__(self):
        return f"<LlmStream {self._call.name!r}>"


def request_intercepts(name, request, annotated=None):
    """``request`` through the LLM request intercepts, with the ``traceparent`` and session
    headers a managed call made here would add.

    The result is the rewritten ``LLMRequest`` (as NeMo Flow returns it); it also unpacks as
    ``(request, annotated)``, ``annotated`` being what the last intercept returned with it
    (``annotated`` seeds the chain).
    """
    _llm_pipeline.check_request(request)
    out, annotated = drive(_llm_pipeline.request_intercepts(name, request, settle_sync,
                                                            annotated))
    return InterceptedRequest(out, annotated)


class InterceptedRequest(LLMRequest):
    """An ``LLMRequest`` after the request intercepts, with the annotation they returned."""

    __slots__ = ("_annotated",)

    def __init__(self, request, annotated):
        super().__init__(request.headers, request.content)
        self._annotated = annotated

    @property
    def request(self) -> LLMRequest:
        return LLMRequest(self.headers, self.content)

    @property
    def annotated(self):
        return self._annotated

    annotated_request = annotated

    def __iter__(self):
        return iter((self.request, self._annotated))


def conditional_execution(name, request=None):
    """Run the LLM conditional guardrails for a call made here: ``GuardrailRejectedError`` if
    one rejects (with the guardrail events of a rejected call), ``None`` otherwise.

    ``conditional_execution(request)`` (NeMo Flow's form) is accepted too. Returns an
    awaitable instead when one of the guardrails is ``async def``.
    """
    if request is None and isinstance(name, LLMRequest):
        name, request = "llm", name
    _llm_pipeline.check_request(request)
    parent = _core.current()
    snap = Snapshot(parent)
    family = "llm_conditional_execution"

    def check(settle):
        return _managed.check_conditions(snap, family, parent, name, (request,),
                                         {"kind": family}, settle)

    return check(settle_async) if any_async(snap.chain(family)) else drive(check(settle_sync))
