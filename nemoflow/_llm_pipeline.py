"""The LLM steps of the managed-call pipeline: requests, their headers, the prelude, the call
and the streamed call (the shared steps are in ``_managed``)."""

from __future__ import annotations

import copy
import time

from . import propagation
from ._adapters import block_on, drive, settle_async, settle_sync
from ._backend import core as _core
from ._managed import (
    call_and_end,
    check_conditions,
    event_payload,
    execute_and_end,
    json_payload,
    payload,
    recorded_value,
    sanitize,
    stream,
)
from ._middleware import Snapshot, internal_error, switch
from ._types import LLMAttributes, ScopeType
from .redaction import public_headers


def _plain(fn, v):
    # LLM sanitizers take the value alone
    return fn(v)


def now() -> float:
    return time.perf_counter()


class LLMRequest:
    """An LLM request: ``headers`` and ``content``, both dicts."""

    __slots__ = ("_headers", "_content")

    def __init__(self, headers, content):
        if not isinstance(headers, dict):
            raise TypeError(f"headers must be a dict, not {type(headers).__name__}")
        if not isinstance(content, dict):
            raise TypeError(f"content must be a dict, not {type(content).__name__}")
        self._headers = headers
        self._content = content

    @property
    def headers(self) -> dict:
        return self._headers

    @property
    def content(self) -> dict:
        return self._content

    def __deepcopy__(self, memo):
        return LLMRequest(copy.deepcopy(self._headers, memo), copy.deepcopy(self._content, memo))

    def __eq__(self, other):
        if not isinstance(other, LLMRequest):
            return NotImplemented
        return self._headers == other._headers and self._content == other._content

    __hash__ = None  # type: ignore[assignment]  # mutable: compared by value, not hashable

    def __repr__(self):
        return f"LLMRequest(headers={list(public_headers(self._headers))!r}, content=…)"


def request_data(request) -> dict:
    return {"headers": public_headers(request.headers), "content": request.content}


def check_request(request):
    if not isinstance(request, LLMRequest):
        raise TypeError(f"request must be an LLMRequest, not {type(request).__name__}")


def _sanitized_request(request):
    if not isinstance(request, LLMRequest):
        raise TypeError("an LLM request sanitizer returns an LLMRequest")
    return json_payload(request_data(request))


async def apply_request_intercepts(snap, name, request, settle, annotated=None):
    """``(request, annotated)`` after the LLM request intercepts of ``snap``."""
    for entry in snap.chain("llm_request"):
        try:
            out = await settle(entry.fn(name, request, annotated))
        except Exception as exc:
            raise internal_error(exc, "LLM request intercept callable failed") from exc
        try:
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                raise TypeError(f"an LLM request intercept returns (LLMRequest, annotated), "
                                f"not {type(out).__name__}")
            if not isinstance(out[0], LLMRequest):
                raise TypeError(f"result[0] is not an LLMRequest: {type(out[0]).__name__}")
        except TypeError as exc:
            raise internal_error(exc, "LLM request intercept result[0] extraction failed") \
                from exc
        request, annotated = out
        if entry.break_chain:
            break
    return request, annotated


async def request_intercepts(name, request, settle, annotated=None):
    """The LLM request intercepts alone, then the session and trace headers of the current
    position (as the request a managed call made here would carry them)."""
    top = _core.current()
    request, annotated = await apply_request_intercepts(Snapshot(top), name, request, settle,
                                                        annotated)
    request = with_session_headers(request, top)
    try:
        request = propagation.with_current_traceparent(request)
    except Exception as exc:
        _header_failure(exc)
    return request, annotated


async def llm_prelude(snap, name, request, parent, settle, lenient, annotated=None):
    """Guardrails, request intercepts and request sanitizers of an LLM call.

    ``annotated`` (what a request codec decoded) seeds the intercepts' annotation.
    Returns ``(request, annotated, event_request)``.
    """
    await check_conditions(snap, "llm_conditional_execution", parent, name, (request,),
                           {"kind": "llm_conditional_execution"}, settle)
    request, annotated = await apply_request_intercepts(snap, name, request, settle, annotated)
    request = with_session_headers(request, parent)
    chain = snap.chain("llm_sanitize_request")
    if chain:
        event_request = await sanitize(chain, request, _plain, settle, _sanitized_request)
    else:
        event_request = payload(request_data(request), lenient)
    return request, annotated, event_request


_warned_headers = False


def _header_failure(exc):
    global _warned_headers
    if not _warned_headers:
        _warned_headers = True
        _core._warn_quietly(f"nemoflow: could not add trace headers to an LLM request: {exc!r}")


def with_session_headers(request, parent):
    """The request with the reference's ``x-dynamo-*`` session headers (recorded in events)."""
    try:
        return propagation.session_headers(request, parent)
    except Exception as exc:
        _header_failure(exc)
        return request


def with_trace_headers(request, parent, frame):
    """The request the provider gets: ``traceparent`` (+ ``tracestate``) of the LLM span."""
    try:
        return propagation.trace_headers(request, parent, frame.uuid)
    except Exception as exc:
        _header_failure(exc)
        return request


def check_codecs(codec, response_codec) -> None:
    """``codec`` must decode requests, ``response_codec`` decode responses (None: not used)."""
    if codec is not None and not callable(getattr(codec, "decode", None)):
        raise TypeError(f"codec must be an LLM codec with decode(request), not "
                        f"{type(codec).__name__}")
    if response_codec is not None and not callable(getattr(response_codec, "decode_response",
                                                           None)):
        raise TypeError(f"response_codec must be an LLM codec with decode_response(response), "
                        f"not {type(response_codec).__name__}")


def decode_request(codec, request):
    """The annotated request a request codec makes of ``request`` (None without a codec)."""
    return None if codec is None else codec.decode(request)


def _json_form(annotated):
    to_dict = getattr(annotated, "to_dict", None)
    return to_dict() if callable(to_dict) else annotated


_warned_response_codec = False


def annotate_response(response_codec, response):
    """The JSON form of what ``response_codec`` decodes of ``response``, for the end event's
    category_profile (observability only: a codec that fails is reported once, never raised
    into the call, whose result is unchanged)."""
    global _warned_response_codec
    if response_codec is None:
        return None
    try:
        annotated = _json_form(response_codec.decode_response(response))
        _core.encode(annotated)
        return annotated
    except Exception as exc:  # the caller's response stands; the annotation is left out
        if not _warned_response_codec:
            _warned_response_codec = True
            _core._warn_quietly(f"nemoflow: response_codec {type(response_codec).__name__} "
                                f"raised {type(exc).__name__}: {exc}; the end event has no "
                                "annotated_response (reported once)")
        return None


def llm_profile_fields(model_name, annotated) -> dict:
    annotated = _json_form(annotated)
    if annotated is not None:
        try:
            _core.encode(annotated)
        except ValueError:
            annotated = None
    return {k: v for k, v in (("model_name", model_name), ("annotated_request", annotated))
            if v is not None}


def llm_profile(model_name, annotated):
    return _core.encode(llm_profile_fields(model_name, annotated))


def response_metadata(response):
    """Token usage and finish reason of an OpenAI- or Anthropic-style response dict."""
    if not isinstance(response, dict):
        return None
    meta = {}
    usage = response.get("usage")
    if isinstance(usage, dict):
        for key in ("prompt_tokens", "completion_tokens", "total_tokens", "input_tokens",
                    "output_tokens"):
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                meta[f"llm.usage.{key}"] = value
    reason = None
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
    if reason is None:
        reason = response.get("stop_reason")
    if isinstance(reason, str):
        meta["llm.finish_reason"] = reason
    return meta or None


def _response_annotation(response_codec):
    # The end event's category_profile: the annotated response of what the event records
    # (after the response sanitizers: an annotation never shows what they removed).
    if response_codec is None:
        return None

    def annotate(recorded):
        annotated = annotate_response(response_codec, recorded)
        return None if annotated is None else _core.encode({"annotated_response": annotated})
    return annotate


async def run_llm(name, request, func, parent, attributes, data, metadata, model_name, settle,
                  is_async, lenient, codec=None, response_codec=None):
    check_request(request)
    check_codecs(codec, response_codec)
    annotated = decode_request(codec, request)
    if parent is None:
        parent = _core.current()
    if not switch.llm:  # no LLM middleware anywhere: the pipeline's events, without it
        request = with_session_headers(request, parent)
        frame = _core.start(name, ScopeType.Llm, parent, attributes, data, metadata,
                            payload(request_data(request), lenient), None, _core.KIND_LLM,
                            llm_profile(model_name, annotated), _core.LLMHandle)
        request = with_trace_headers(request, parent, frame)
        return await call_and_end(frame, func, request, settle, response_metadata,
                                  annotate=_response_annotation(response_codec))
    snap = Snapshot(_core.current())
    request, annotated, event_request = await llm_prelude(snap, name, request, parent, settle,
                                                          lenient, annotated)
    frame = _core.start(name, ScopeType.Llm, parent, attributes, data, metadata, event_request,
                        None, _core.KIND_LLM, llm_profile(model_name, annotated),
                        _core.LLMHandle)
    request = with_trace_headers(request, parent, frame)
    return await execute_and_end(frame, snap, "llm_execution", "llm_sanitize_response", func,
                                 name, request, _plain, settle, is_async, response_metadata,
                                 annotate=_response_annotation(response_codec))


def guess_provider(chunk) -> str:
    """``"openai"``, ``"anthropic"`` or ``"unknown"``, from the shape of a streamed chunk."""
    def get(key):
        return chunk.get(key) if isinstance(chunk, dict) else getattr(chunk, key, None)
    obj = get("object")
    if (isinstance(obj, str) and obj.startswith("chat.completion")) or get("choices") is not None:
        return "openai"
    kind = get("type")
    if isinstance(kind, str) and (kind.startswith(("message_", "content_block_"))
                                  or kind in ("ping", "error")):
        return "anthropic"
    return "unknown"


class LLMStream:
    """A streamed LLM call (``llm.stream_execute``, an async generator under ``nf.trace.llm``):
    each chunk goes to ``collector``, gets an ``llm.chunk`` mark and is yielded; ``finalizer()``
    gives the end ``data``; the end's category_profile holds ``time_to_first_chunk``."""

    def __init__(self, name, request, collector, finalizer, parent, attributes, data, metadata,
                 model_name, snap, settle, lenient, codec=None, response_codec=None):
        check_codecs(codec, response_codec)
        self.codec, self.response_codec, self.annotated_response = codec, response_codec, None
        self.name, self.request, self.parent = name, request, parent
        self.collector, self.finalizer = collector, finalizer
        self.attributes, self.data, self.metadata = attributes, data, metadata
        self.model_name, self.snap, self.settle, self.lenient = model_name, snap, settle, lenient
        self.frame = None
        self.first = None
        self.index = 0

    async def open(self):
        request, annotated, event_request = await llm_prelude(
            self.snap, self.name, self.request, self.parent, self.settle, self.lenient,
            decode_request(self.codec, self.request))
        self.fields = llm_profile_fields(self.model_name, annotated)
        self.frame = _core.start(self.name, ScopeType.Llm, self.parent,
                                 _core_llm_attrs(self.attributes), self.data, self.metadata,
                                 event_request, None, _core.KIND_LLM, _core.encode(self.fields),
                                 _core.LLMHandle)
        self.started = now()
        return with_trace_headers(request, self.parent, self.frame)

    def layers(self):
        return [(entry.fn, ()) for entry in self.snap.chain("llm_stream_execution")]

    async def on_item(self, chunk):
        if self.first is None:
            self.first = now() - self.started
        await self.settle(self.collector(chunk))
        _core.event("llm.chunk", handle=self.frame,
                    data={"chunk_index": self.index, "provider": guess_provider(chunk)})
        self.index += 1

    async def result(self):
        output = await self.settle(self.finalizer())
        recorded = await event_payload(self.snap.chain("llm_sanitize_response"), output, _plain,
                                       self.settle)
        self.annotated_response = annotate_response(self.response_codec,
                                                    recorded_value(recorded))
        return recorded

    def result_now(self):
        # Nothing here suspends: a stream being closed may not be able to await (an async
        # finalizer or sanitizer runs on a private loop instead).
        out = self.finalizer()
        if hasattr(out, "__await__"):
            out = block_on(out)
        recorded = drive(event_payload(self.snap.chain("llm_sanitize_response"), out, _plain,
                                       settle_sync))
        self.annotated_response = annotate_response(self.response_codec,
                                                    recorded_value(recorded))
        return recorded

    def end_profile(self):
        # ``time_to_first_chunk`` (seconds) and the annotated response go on the end event's
        # category_profile.
        fields = {}
        if self.first is not None:
            fields = {**self.fields, "time_to_first_chunk": self.first}
        if self.annotated_response is not None:
            fields["annotated_response"] = self.annotated_response
        return _core.encode(fields) if fields else None


def stream_llm(name, request, func, collector, finalizer, parent, attributes, data, metadata,
               model_name, snap, lenient=False, codec=None, response_codec=None):
    """The async generator behind ``llm.stream_execute``."""
    call = LLMStream(name, request, collector, finalizer, parent, attributes, data, metadata,
                     model_name, snap, settle_async, lenient, codec, response_codec)
    return stream(call, func, True, settle_async)


def _core_llm_attrs(attributes):
    # The core checks the flag class: ToolAttributes | 2 stays ToolAttributes and is refused.
    return LLMAttributes.STREAMING if attributes is None else attributes | LLMAttributes.STREAMING
