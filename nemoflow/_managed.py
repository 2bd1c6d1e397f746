"""Managed tool and LLM calls: one pipeline of guardrails, intercepts and events for both.

Order of one call: conditional guardrails → request intercepts (rewrite the real request) →
request sanitizers (event copy only) + start event → execution intercepts (lowest priority
outermost) → the function → response sanitizers (event copy only) + end event → the result.

The pipeline is written once, as coroutines. A synchronous call (``@nf.trace.tool`` on a plain
function) runs the same coroutine with a ``settle`` that never suspends (an async callback is
run to completion on a private loop), so it completes in one step without an event loop.
"""

from __future__ import annotations

import copy
import time

from ._backend import core as _core
from ._middleware import Snapshot, block_on, drive, internal_error, settle_sync
from ._types import GuardrailRejectedError, InternalError, LLMAttributes, ScopeType

_OK, _ERROR = _core.STATUS_OK, _core.STATUS_ERROR


def error_metadata(exc) -> dict:
    cls = type(exc).__name__
    return {"error.type": cls, "exception.type": cls}


def profile(**fields) -> bytes:
    return _core.encode({k: v for k, v in fields.items() if v is not None})


def payload(value, lenient):
    """``value`` encoded for an event: strict for API arguments, lenient for traced code."""
    if value is None:
        return None
    return _core.Encoded(_core.encode(value, lenient)) if lenient else value


async def check_conditions(snap, family, parent, call_name, args, start_data, settle):
    """Run the conditional guardrails; each is a guardrail scope; a rejection raises."""
    for entry in snap.chain(family):
        g = _core.start(entry.name, ScopeType.Guardrail, parent, None, None, None, start_data,
                        None)
        try:
            verdict = await settle(entry.fn(*args))
            if verdict is not None and not isinstance(verdict, str):
                raise TypeError(f"a conditional guardrail returns str or None, not "
                                f"{type(verdict).__name__}")
        except BaseException as exc:
            _core.end(g, None, None, None, _ERROR, _core.describe(exc))
            if isinstance(exc, Exception):
                raise internal_error(exc) from exc
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
    try:
        result = await call(arg)
    except BaseException as exc:
        await end_with_error(frame, exc)
        raise
    event_result = await event_payload(snap.chain(response_family), result, call_response,
                                       settle)
    meta = end_metadata(result) if end_metadata is not None else None
    _core.end(frame, event_result, meta, None, _OK)
    return result


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


async def end_with_error(frame, exc):
    _core.end(frame, None, error_metadata(exc), None, _ERROR, _core.describe(exc))


# --------------------------------------------------------------------------------------------
# Tools.

async def run_tool(name, args, func, parent, attributes, data, metadata, tool_call_id, settle,
                   is_async, lenient):
    if parent is None:
        parent = _core.current()
    snap = Snapshot(_core.current())
    await check_conditions(snap, "tool_conditional_execution", parent, name, (name, args),
                           {"kind": "tool_conditional_execution", "target_name": name}, settle)
    for entry in snap.chain("tool_request"):
        try:
            args = await settle(entry.fn(name, args))
            if not lenient:
                _core.encode(args)
        except Exception as exc:
            raise internal_error(exc) from exc
        if entry.break_chain:
            break
    with_name = lambda fn, v: fn(name, v)  # noqa: E731 - tool sanitizers take the tool name
    event_args = await event_payload(snap.chain("tool_sanitize_request"), args, with_name,
                                     settle, lenient)
    frame = _core.start(name, ScopeType.Tool, parent, attributes, data, metadata, event_args,
                        None, _core.KIND_TOOL, profile(tool_call_id=tool_call_id),
                        _core.ToolHandle)
    return await execute_and_end(frame, snap, "tool_execution", "tool_sanitize_response", func,
                                 name, args, with_name, settle, is_async)


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

    __hash__ = None

    def __repr__(self):
        return f"LLMRequest(headers={list(public_headers(self._headers))!r}, content=…)"


CREDENTIAL_HEADERS = frozenset((
    "authorization", "proxy-authorization", "cookie", "x-api-key", "api-key",
    "anthropic-api-key", "x-goog-api-key",
))


def public_headers(headers: dict) -> dict:
    """``headers`` without credentials (matched case-insensitively)."""
    return {k: v for k, v in headers.items()
            if not (isinstance(k, str) and k.lower() in CREDENTIAL_HEADERS)}


def request_data(request) -> dict:
    return {"headers": public_headers(request.headers), "content": request.content}


def check_request(request):
    if not isinstance(request, LLMRequest):
        raise TypeError(f"request must be an LLMRequest, not {type(request).__name__}")


def _sanitized_request(request):
    if not isinstance(request, LLMRequest):
        raise TypeError("an LLM request sanitizer returns an LLMRequest")
    return json_payload(request_data(request))


async def llm_prelude(snap, name, request, parent, settle, lenient):
    """Guardrails, request intercepts and request sanitizers of an LLM call.

    Returns ``(request, annotated, event_request)``.
    """
    await check_conditions(snap, "llm_conditional_execution", parent, name, (request,),
                           {"kind": "llm_conditional_execution"}, settle)
    annotated = None
    for entry in snap.chain("llm_request"):
        try:
            out = await settle(entry.fn(name, request, annotated))
            if (not isinstance(out, tuple) or len(out) != 2
                    or not isinstance(out[0], LLMRequest)):
                raise TypeError(f"an LLM request intercept returns (LLMRequest, annotated), "
                                f"not {type(out).__name__}")
            request, annotated = out
        except Exception as exc:
            raise internal_error(exc) from exc
        if entry.break_chain:
            break
    chain = snap.chain("llm_sanitize_request")
    if chain:
        event_request = await sanitize(chain, request, _plain, settle, _sanitized_request)
    else:
        event_request = payload(request_data(request), lenient)
    return request, annotated, event_request


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
    snap = Snapshot(_core.current())
    request, annotated, event_request = await llm_prelude(snap, name, request, parent, settle,
                                                          lenient)
    frame = _core.start(name, ScopeType.Llm, parent, attributes, data, metadata, event_request,
                        None, _core.KIND_LLM, llm_profile(model_name, annotated),
                        _core.LLMHandle)
    return await execute_and_end(frame, snap, "llm_execution", "llm_sanitize_response", func,
                                 name, request, _plain, settle, is_async, response_metadata)


def guess_provider(chunk) -> str:
    """``"openai"``, ``"anthropic"`` or ``"unknown"``, from the shape of a streamed chunk."""
    if isinstance(chunk, dict):
        get = chunk.get
    else:
        def get(key):
            return getattr(chunk, key, None)
    obj = get("object")
    if (isinstance(obj, str) and obj.startswith("chat.completion")) or get("choices") is not None:
        return "openai"
    kind = get("type")
    if isinstance(kind, str) and (kind.startswith(("message_", "content_block_"))
                                  or kind in ("ping", "error")):
        return "anthropic"
    return "unknown"


async def _aiter_of(value, settle):
    value = await settle(value)
    if not hasattr(value, "__aiter__"):
        raise TypeError(f"a stream function returns an async iterator, not "
                        f"{type(value).__name__}")
    return value.__aiter__()


async def stream_llm(name, request, func, collector, finalizer, parent, attributes, data,
                     metadata, model_name, snap):
    """The async generator behind ``llm.stream_execute``."""
    request, annotated, event_request = await llm_prelude(snap, name, request, parent,
                                                          _settle_async, False)
    attrs = _core_llm_attrs(attributes)
    fields = llm_profile_fields(model_name, annotated)
    frame = _core.start(name, ScopeType.Llm, parent, attrs, data, metadata, event_request, None,
                        _core.KIND_LLM, _core.encode(fields), _core.LLMHandle)

    def end_profile():
        # ``time_to_first_chunk`` (seconds) goes on the end event's category_profile.
        return None if first is None else _core.encode({**fields, "time_to_first_chunk": first})
    started = now()
    first = None
    origin = []

    async def innermost(req):
        try:
            inner = await _aiter_of(func(req), _settle_async)
        except BaseException as exc:
            origin.append(exc)
            raise
        while True:
            try:
                chunk = await inner.__anext__()
            except StopAsyncIteration:
                return
            except BaseException as exc:
                origin.append(exc)
                raise
            yield chunk

    def layer(entry, nxt):
        def run(req):
            try:
                return entry.fn(req, nxt)
            except Exception as exc:
                raise internal_error(exc) from exc
        return run

    call = innermost
    for entry in reversed(snap.chain("llm_stream_execution")):
        call = layer(entry, call)
    index = 0
    chunks = None
    try:
        try:
            chunks = await _aiter_of(call(request), _settle_async)
        except Exception as exc:
            if any(exc is o for o in origin) or isinstance(exc, InternalError):
                raise
            raise internal_error(exc) from exc
        while True:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except Exception as exc:
                if any(exc is o for o in origin) or isinstance(exc, InternalError):
                    raise
                raise internal_error(exc) from exc
            if first is None:
                first = now() - started
            await _settle_async(collector(chunk))
            _core.event("llm.chunk", handle=frame,
                        data={"chunk_index": index, "provider": guess_provider(chunk)})
            index += 1
            yield chunk
    except GeneratorExit:  # the consumer stopped early (aclose, break, garbage collection)
        _core.end(frame, _final(finalizer, snap.chain("llm_sanitize_response")), None, None,
                  _OK, None, None, end_profile())
        await _close(chunks)
        raise
    except BaseException as exc:
        _core.end(frame, None, error_metadata(exc), None, _ERROR, _core.describe(exc), None,
                  end_profile())
        raise
    try:
        output = await _settle_async(finalizer())
    except BaseException as exc:
        _core.end(frame, None, error_metadata(exc), None, _ERROR, _core.describe(exc), None,
                  end_profile())
        raise
    event_output = await event_payload(snap.chain("llm_sanitize_response"), output, _plain,
                                       _settle_async)
    _core.end(frame, event_output, None, None, _OK, None, None, end_profile())


async def _close(it):
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # the stream is being abandoned; its own cleanup errors stay there
            pass


def _final(finalizer, chain):
    # The end data of a stream the consumer left early. Nothing here suspends: a stream being
    # closed may not be able to await (async callbacks run on a private loop instead).
    try:
        out = finalizer()
        if hasattr(out, "__await__"):
            out = block_on(out)
        return drive(event_payload(chain, out, _plain, settle_sync))
    except Exception:  # fail closed
        return None


def _core_llm_attrs(attributes):
    # The core checks the flag class: ToolAttributes | 2 stays ToolAttributes and is refused.
    return LLMAttributes.STREAMING if attributes is None else attributes | LLMAttributes.STREAMING


async def _settle_async(value):
    if hasattr(value, "__await__"):
        return await value
    return value
