"""Managed tool and LLM calls: one pipeline of guardrails, intercepts and events for both.

Order of one call: conditional guardrails → request intercepts (rewrite the real request) →
request sanitizers (event copy only) + start event → execution intercepts (lowest priority
outermost) → the function → response sanitizers (event copy only) + end event → the result.

The pipeline is written once, as coroutines. A synchronous call (``@nf.trace.tool`` on a plain
function) runs the same coroutine with a ``settle`` that never suspends (an async callback is
run to completion on a private loop), so it completes in one step without an event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import functools
import sys
import threading
import time

from . import propagation
from ._backend import core as _core
from ._middleware import (
    Snapshot,
    block_on,
    drive,
    internal_error,
    settle_async,
    settle_sync,
    switch,
)
from ._types import GuardrailRejectedError, InternalError, LLMAttributes, ScopeType
from .propagation import active_call as _active_call
from .redaction import public_headers

_OK, _ERROR = _core.STATUS_OK, _core.STATUS_ERROR


def error_metadata(exc):
    """The end metadata of a call that raised ``exc`` (encoded: a class name is never refused)."""
    cls = type(exc).__name__
    return _core.Encoded(_core.encode({"error.type": cls, "exception.type": cls}, True))


def result_metadata(end_metadata, result):
    """The end metadata ``end_metadata`` finds in a call's result; never raises, since the
    result comes from the traced program."""
    if end_metadata is None:
        return None
    try:
        return payload(end_metadata(result), True)
    except Exception:
        return None


def profile(**fields) -> bytes:
    return _core.encode({k: v for k, v in fields.items() if v is not None})


def payload(value, lenient):
    """``value`` encoded for an event: strict for API arguments, lenient for traced code."""
    if value is None:
        return None
    return _core.Encoded(_core.encode(value, lenient)) if lenient else value


async def check_conditions(snap, family, parent, call_name, args, start_data, settle):
    """Run the conditional guardrails; each is a guardrail scope; a rejection raises."""
    if family == "tool_conditional_execution":
        failed = f"Python tool conditional callable failed for '{call_name}'"
        wrong = (f"tool conditional guardrail for '{call_name}' returned unexpected type "
                 f"(expected str or None)")
    else:
        failed = "LLM conditional guardrail callable failed"
        wrong = "LLM conditional guardrail returned unexpected type (expected str or None)"
    for entry in snap.chain(family):
        g = _core.start(entry.name, ScopeType.Guardrail, parent, None, None, None, start_data,
                        None)
        context = failed
        try:
            verdict = await settle(entry.fn(*args))
            if verdict is not None and not isinstance(verdict, str):
                context = wrong
                raise TypeError(f"a conditional guardrail returns str or None, not "
                                f"{type(verdict).__name__}")
        except BaseException as exc:
            _core.end(g, None, None, None, _ERROR, _core.describe(exc))
            if isinstance(exc, Exception):
                raise internal_error(exc, context) from exc
            raise
        if verdict is None:
            _core.end(g, {"allowed": True, "rejected": False}, None, None)
            continue
        _core.end(g, {"allowed": False, "rejected": True, "rejection_reason": verdict}, None,
                  None)
        _core.event(call_name, handle=parent,
                    data={"rejected": True, "rejection_reason": verdict})
        raise GuardrailRejectedError(f"guardrail rejected: {verdict}")


async def sanitize(chain, value, call, settle, finish):
    """The event copy of ``value`` after the sanitizers; None (a null payload, never the
    original) if any of them fails.

    Each sanitizer gets a deep copy, so none can change the caller's value in place.
    """
    try:
        v = copy.deepcopy(value)
        for entry in chain:
            v = await settle(call(entry.fn, v))
        return finish(v)
    except Exception:  # fail closed
        return None


async def event_payload(chain, value, call, settle, lenient=True):
    """What the event records of ``value``: the sanitizers' result, or ``value`` itself."""
    if chain:
        return await sanitize(chain, value, call, settle, json_payload)
    return payload(value, lenient)


async def execute_and_end(frame, snap, family, response_family, func, name, arg, call_response,
                          settle, is_async, end_metadata=None):
    """The shared tail of a managed call: execution intercepts around ``func(arg)``, then the
    end event (ERROR with the exception's type, or OK with the sanitized result)."""
    call, _ = execution_chain(snap.chain(family), func, (name,), settle, is_async)
    token = _active_call.set(frame)
    try:
        result = await call(arg)
    except BaseException as exc:
        end_with_error(frame, exc)
        raise
    finally:
        _reset_active(token)
    event_result = await event_payload(snap.chain(response_family), result, call_response,
                                       settle)
    meta = result_metadata(end_metadata, result)
    _core.end(frame, event_result, meta, None, _OK)
    return result


def _reset_active(token):
    try:
        _active_call.reset(token)
    except ValueError:  # resumed in another context than it started in
        _active_call.set(None)


def json_payload(v):
    return _core.Encoded(_core.encode(v)) if v is not None else None


def execution_chain(entries, func, prefix, settle, is_async):
    """``call(args)``: the execution intercepts around ``func``, lowest priority outermost.

    Returns ``(call, origin)``: ``origin`` collects the exceptions ``func`` itself raised, so an
    exception that travels through the intercepts unchanged reaches the caller as it is, while an
    intercept's own failure becomes ``InternalError``.
    """
    origin = []

    async def innermost(a):
        try:
            return await settle(func(a))
        except BaseException as exc:
            origin.append(exc)
            raise

    call = innermost
    for entry in reversed(entries):
        call = _layer(entry, call, prefix, settle, is_async, origin)
    return call, origin


def _layer(entry, inner, prefix, settle, is_async, origin):
    fn = entry.fn
    nxt = inner if is_async else (lambda a: drive(inner(a)))

    async def layer(a):
        try:
            return await settle(fn(*prefix, a, nxt))
        except Exception as exc:
            if any(exc is o for o in origin) or isinstance(exc, (InternalError,
                                                                 GuardrailRejectedError)):
                raise
            raise internal_error(exc) from exc

    return layer


def _plain(fn, v):
    # LLM sanitizers take the value alone
    return fn(v)


def end_with_error(frame, exc, end_profile=None):
    _core.end(frame, None, error_metadata(exc), None, _ERROR, _core.describe(exc), None,
              end_profile)


# --------------------------------------------------------------------------------------------
# Tools.

async def tool_prelude(snap, name, args, parent, attributes, data, metadata, tool_call_id,
                       settle, lenient):
    """Guardrails, request intercepts, request sanitizers and the start event of a tool call.

    Returns ``(frame, args)``: the open tool call and the arguments the function gets.
    """
    await check_conditions(snap, "tool_conditional_execution", parent, name, (name, args),
                           {"kind": "tool_conditional_execution", "target_name": name}, settle)
    for entry in snap.chain("tool_request"):
        args = await apply_tool_request(entry, name, args, settle)
        if not lenient:
            try:
                _core.encode(args)
            except Exception as exc:
                raise internal_error(exc, f"tool callback py_to_json failed for '{name}'") \
                    from exc
        if entry.break_chain:
            break
    event_args = await event_payload(snap.chain("tool_sanitize_request"), args, _with_name(name),
                                     settle, lenient)
    frame = _core.start(name, ScopeType.Tool, parent, attributes, data, metadata, event_args,
                        None, _core.KIND_TOOL, profile(tool_call_id=tool_call_id),
                        _core.ToolHandle)
    return frame, args


async def apply_tool_request(entry, name, args, settle):
    """One tool request intercept: its result, or ``InternalError`` if it raises."""
    try:
        return await settle(entry.fn(name, args))
    except Exception as exc:
        raise internal_error(exc, f"Python tool callable failed for '{name}'") from exc


def _with_name(name):
    return lambda fn, v: fn(name, v)  # tool sanitizers take the tool name


async def call_and_end(frame, func, arg, settle, end_metadata=None):
    """A call no middleware applies to: ``func(arg)``, then its end event."""
    token = _active_call.set(frame)
    try:
        result = await settle(func(arg))
    except BaseException as exc:
        end_with_error(frame, exc)
        raise
    finally:
        _reset_active(token)
    meta = result_metadata(end_metadata, result)
    _core.end(frame, payload(result, True), meta, None, _OK)
    return result


async def run_tool(name, args, func, parent, attributes, data, metadata, tool_call_id, settle,
                   is_async, lenient):
    if parent is None:
        parent = _core.current()
    if not switch.tool:  # no tool middleware anywhere: the pipeline's events, without it
        frame = _core.start(name, ScopeType.Tool, parent, attributes, data, metadata,
                            payload(args, lenient), None, _core.KIND_TOOL,
                            profile(tool_call_id=tool_call_id), _core.ToolHandle)
        return await call_and_end(frame, func, args, settle)
    snap = Snapshot(_core.current())
    frame, args = await tool_prelude(snap, name, args, parent, attributes, data, metadata,
                                     tool_call_id, settle, lenient)
    return await execute_and_end(frame, snap, "tool_execution", "tool_sanitize_response", func,
                                 name, args, _with_name(name), settle, is_async)


class ToolStream:
    """A generator function under ``@nf.trace.tool``: a tool call whose result is a stream.

    The call's result (end ``data``, through the response sanitizers) is the list of the items
    yielded so far, also when the consumer stops early. Execution intercepts get ``next(args)``
    returning the stream of items and return a stream (an iterable; or an async iterable for an
    async generator function).
    """

    def __init__(self, name, args, parent, attributes, metadata, snap, settle):
        self.name, self.args, self.parent = name, args, parent
        self.attributes, self.metadata, self.snap, self.settle = attributes, metadata, snap, settle
        self.items = []
        self.frame = None

    async def open(self):
        """The prelude; returns the arguments the function gets."""
        self.frame, args = await tool_prelude(self.snap, self.name, self.args, self.parent,
                                              self.attributes, None, self.metadata, None,
                                              self.settle, True)
        return args

    def layers(self):
        return [(entry.fn, (self.name,)) for entry in self.snap.chain("tool_execution")]

    async def on_item(self, item):
        self.items.append(item)

    async def result(self):
        return await event_payload(self.snap.chain("tool_sanitize_response"), self.items,
                                   _with_name(self.name), self.settle)

    def result_now(self):
        return drive(event_payload(self.snap.chain("tool_sanitize_response"), self.items,
                                   _with_name(self.name), settle_sync))

    def end_profile(self):
        return None


# --------------------------------------------------------------------------------------------
# LLM calls.

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


async def llm_prelude(snap, name, request, parent, settle, lenient):
    """Guardrails, request intercepts and request sanitizers of an LLM call.

    Returns ``(request, annotated, event_request)``.
    """
    await check_conditions(snap, "llm_conditional_execution", parent, name, (request,),
                           {"kind": "llm_conditional_execution"}, settle)
    request, annotated = await apply_request_intercepts(snap, name, request, settle)
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


def llm_profile_fields(model_name, annotated) -> dict:
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


async def run_llm(name, request, func, parent, attributes, data, metadata, model_name, settle,
                  is_async, lenient):
    check_request(request)
    if parent is None:
        parent = _core.current()
    if not switch.llm:  # no LLM middleware anywhere: the pipeline's events, without it
        request = with_session_headers(request, parent)
        frame = _core.start(name, ScopeType.Llm, parent, attributes, data, metadata,
                            payload(request_data(request), lenient), None, _core.KIND_LLM,
                            llm_profile(model_name, None), _core.LLMHandle)
        request = with_trace_headers(request, parent, frame)
        return await call_and_end(frame, func, request, settle, response_metadata)
    snap = Snapshot(_core.current())
    request, annotated, event_request = await llm_prelude(snap, name, request, parent, settle,
                                                          lenient)
    frame = _core.start(name, ScopeType.Llm, parent, attributes, data, metadata, event_request,
                        None, _core.KIND_LLM, llm_profile(model_name, annotated),
                        _core.LLMHandle)
    request = with_trace_headers(request, parent, frame)
    return await execute_and_end(frame, snap, "llm_execution", "llm_sanitize_response", func,
                                 name, request, _plain, settle, is_async, response_metadata)


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
                 model_name, snap, settle, lenient):
        self.name, self.request, self.parent = name, request, parent
        self.collector, self.finalizer = collector, finalizer
        self.attributes, self.data, self.metadata = attributes, data, metadata
        self.model_name, self.snap, self.settle, self.lenient = model_name, snap, settle, lenient
        self.frame = None
        self.first = None
        self.index = 0

    async def open(self):
        request, annotated, event_request = await llm_prelude(
            self.snap, self.name, self.request, self.parent, self.settle, self.lenient)
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
        return await event_payload(self.snap.chain("llm_sanitize_response"), output, _plain,
                                   self.settle)

    def result_now(self):
        # Nothing here suspends: a stream being closed may not be able to await (an async
        # finalizer or sanitizer runs on a private loop instead).
        out = self.finalizer()
        if hasattr(out, "__await__"):
            out = block_on(out)
        return drive(event_payload(self.snap.chain("llm_sanitize_response"), out, _plain,
                                   settle_sync))

    def end_profile(self):
        # ``time_to_first_chunk`` (seconds) goes on the end event's category_profile.
        if self.first is None:
            return None
        return _core.encode({**self.fields, "time_to_first_chunk": self.first})


def stream_llm(name, request, func, collector, finalizer, parent, attributes, data, metadata,
               model_name, snap, lenient=False):
    """The async generator behind ``llm.stream_execute``."""
    call = LLMStream(name, request, collector, finalizer, parent, attributes, data, metadata,
                     model_name, snap, settle_async, lenient)
    return stream(call, func, True, settle_async)


# --------------------------------------------------------------------------------------------
# Streams: one driver for streamed tool and LLM calls, async or sync.

_END = object()


def _foreign(exc, origin) -> bool:
    """True when ``exc`` is a middleware failure: not raised by the function itself, and not
    already one of the pipeline's own errors."""
    return not (any(exc is o for o in origin)
                or isinstance(exc, (InternalError, GuardrailRejectedError)))


def _iterator(stream, as_async):
    """``(iterator, is_async)`` of what a stream function or intercept returned."""
    if as_async and hasattr(stream, "__aiter__"):
        return stream.__aiter__(), True
    if hasattr(stream, "__iter__") and not isinstance(stream, (str, bytes, dict)):
        return iter(stream), False
    kind = "an iterator or async iterator" if as_async else "an iterator"
    raise TypeError(f"a stream function returns {kind}, not {type(stream).__name__}")


async def _pull(it, is_async):
    """The next item of a sync or an async iterator; ``_END`` after the last."""
    if not is_async:
        return next(it, _END)
    try:
        return await it.__anext__()
    except StopAsyncIteration:
        return _END


def _source(func, arg, origin, as_async, settle):
    """The function's own stream; what it raises is recorded in ``origin``."""
    if as_async:
        async def items():
            it = None
            try:
                try:
                    it, is_async = _iterator(await settle(func(arg)), True)
                    while (item := await _pull(it, is_async)) is not _END:
                        yield item
                except BaseException as exc:
                    if not isinstance(exc, GeneratorExit):
                        origin.append(exc)
                    raise
            finally:
                await close_stream(it)
        return items()

    def items():
        it = None
        try:
            try:
                it, _ = _iterator(drive(settle(func(arg))), False)
                while (item := next(it, _END)) is not _END:
                    yield item
            except BaseException as exc:
                if not isinstance(exc, GeneratorExit):
                    origin.append(exc)
                raise
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
    return items()


def _stream_layer(fn, prefix, inner, as_async, settle):
    """One execution intercept of a stream: ``fn(*prefix, args, next)``.

    What it returns is handed on as a stream: an ``async def`` intercept's awaitable is awaited
    first (in a sync stream, run to completion), so an outer intercept can always iterate
    ``next(args)``.
    """
    def run(a):
        try:
            out = fn(*prefix, a, inner)
        except Exception as exc:
            if not isinstance(exc, (InternalError, GuardrailRejectedError)):
                raise internal_error(exc) from exc
            raise
        if hasattr(out, "__await__") and not hasattr(out, "__aiter__"):
            return _awaited_stream(out, settle) if as_async else drive(settle(out))
        return out
    return run


async def _awaited_stream(awaitable, settle):
    it, is_async = _iterator(await settle(awaitable), True)
    try:
        while (item := await _pull(it, is_async)) is not _END:
            yield item
    finally:
        await close_stream(it)


async def stream(call, func, as_async, settle):
    """Run the streamed call ``call`` (a ToolStream or LLMStream) over ``func``'s items.

    The prelude runs at the first step; every item goes through ``call.on_item`` and is
    yielded; the end event is written however the stream ends: exhausted (OK, ``call.result``),
    left early (OK, ``call.result_now``), or raising or cancelled (ERROR).
    """
    arg = await call.open()
    origin = []

    def innermost(a):
        return _source(func, a, origin, as_async, settle)

    chain = innermost
    for fn, prefix in reversed(call.layers()):
        chain = _stream_layer(fn, prefix, chain, as_async, settle)
    it = None
    frame = call.frame
    try:
        # The source runs as the active call (what a context captured inside it points at)
        # only while it makes an item: between items the consumer's code runs.
        token = _active_call.set(frame)
        try:
            it, is_async = _iterator(await settle(chain(arg)), as_async)
        except Exception as exc:
            if _foreign(exc, origin):
                raise internal_error(exc) from exc
            raise
        finally:
            _reset_active(token)
        while True:
            token = _active_call.set(frame)
            try:
                item = await _pull(it, is_async)
            except Exception as exc:
                if _foreign(exc, origin):
                    raise internal_error(exc) from exc
                raise
            finally:
                _reset_active(token)
            if item is _END:
                break
            await call.on_item(item)
            yield item
    except GeneratorExit:  # the consumer stopped early (close, break, garbage collection)
        try:
            output = call.result_now()
        except Exception:  # fail closed
            output = None
        try:  # (a subscriber interrupting the end event must not leave the source open)
            _core.end(frame, output, None, None, _OK, None, None, call.end_profile())
        finally:
            await close_stream(it)
        raise
    except BaseException as exc:
        # An exception thrown in at ``yield item`` (``throw``/``athrow``) leaves the source
        # suspended; close it now rather than when the cycle through the traceback is collected.
        try:
            end_with_error(frame, exc, call.end_profile())
        finally:
            await close_stream(it)
        raise
    try:
        output = await call.result()
    except BaseException as exc:
        end_with_error(frame, exc, call.end_profile())
        raise
    _core.end(frame, output, None, None, _OK, None, None, call.end_profile())


async def close_stream(it):
    """Close an abandoned stream; its own cleanup errors stay there."""
    try:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()
            return
        close = getattr(it, "close", None)
        if close is not None:
            close()
    except Exception:
        pass


def sync_stream(agen, run):
    """A generator over the async generator ``agen``, each step run to completion by ``run``
    (``drive`` when nothing in it suspends, else a private event loop).

    Steps are taken with no asyncgen hooks in this thread: ``agen``, and the async generators
    its steps start, belong to this generator, not to an event loop that happens to run here
    (whose shutdown would close them under the consumer).
    """
    def take(step):
        hooks = sys.get_asyncgen_hooks()
        sys.set_asyncgen_hooks(firstiter=None, finalizer=None)
        try:
            return run(step())
        finally:
            sys.set_asyncgen_hooks(*hooks)

    step = agen.__anext__
    done = False
    try:
        while True:
            try:
                item = take(step)
            except StopAsyncIteration:
                done = True
                return
            except BaseException:
                done = True
                raise
            try:
                yield item
            except GeneratorExit:
                raise
            except BaseException as exc:  # generator.throw(): delivered where the stream waits
                step = functools.partial(agen.athrow, exc)
                continue
            step = agen.__anext__
    finally:
        try:
            if not done:
                take(agen.aclose)
        finally:
            close = getattr(run, "close", None)
            if close is not None:
                close()


class LoopRunner:
    """Runs the steps of one synchronous stream on a private event loop, for async stream
    intercepts. From a thread that already runs a loop, each step runs in a helper thread."""

    def __init__(self):
        self.loop = None

    def __call__(self, awaitable):
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self.loop.run_until_complete(_awaited(awaitable))
        box = {}
        ctx = contextvars.copy_context()

        def target():
            try:
                box["value"] = ctx.run(self.loop.run_until_complete, _awaited(awaitable))
            except BaseException as exc:  # delivered to the caller below
                box["error"] = exc

        t = threading.Thread(target=target, name="nemoflow-stream")
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def close(self):
        if self.loop is None:
            return
        try:
            self(self.loop.shutdown_asyncgens())
        finally:
            loop, self.loop = self.loop, None
            loop.close()


async def _awaited(awaitable):
    return await awaitable


def _core_llm_attrs(attributes):
    # The core checks the flag class: ToolAttributes | 2 stays ToolAttributes and is refused.
    return LLMAttributes.STREAMING if attributes is None else attributes | LLMAttributes.STREAMING
