"""Managed tool and LLM calls: one pipeline of guardrails, intercepts and events for both.

Order of one call: conditional guardrails → request intercepts (rewrite the real request) →
request sanitizers (event copy only) + start event → execution intercepts (lowest priority
outermost) → the function → response sanitizers (event copy only) + end event → the result.

The pipeline is written once, as coroutines. A synchronous call (``@nf.trace.tool`` on a plain
function) runs the same coroutine with a ``settle`` that never suspends (an async callback is
run to completion on a private loop), so it completes in one step without an event loop
(``_adapters``). The steps shared by tools and LLM calls, the tool steps and the stream driver
are here; the LLM steps are in ``_llm_pipeline``.
"""

from __future__ import annotations

import copy
import functools
import sys
from typing import Any, Generic, TypeVar

import orjson

from ._adapters import LoopRunner, drive, settle_sync  # noqa: F401  (LoopRunner: its old home)
from ._backend import core as _core
from ._middleware import Snapshot, internal_error, switch
from ._types import GuardrailRejectedError, InternalError, ScopeType
from .propagation import active_call as _active_call

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


_T = TypeVar("_T")


class ToolExecutionResult(Generic[_T]):
    """What a tool callback may return instead of a plain value: ``result`` is what the call
    returns and its end event records; ``annotation`` (JSON, optional) is recorded beside it,
    as ``tool_result_annotation`` in the end event's category_profile."""

    __slots__ = ("_result", "_annotation")

    def __init__(self, result: _T, annotation: Any = None) -> None:
        self._result = result
        self._annotation = annotation

    @property
    def result(self) -> _T:
        return self._result

    @property
    def annotation(self) -> Any:
        return self._annotation

    def __repr__(self):
        return f"ToolExecutionResult(result={self._result!r}, annotation={self._annotation!r})"


def tool_outcome(result, tool_call_id=None):
    """``(value, end_profile)``: what a tool's end event records of ``result``, and its
    category_profile when ``result`` is a ``ToolExecutionResult`` with an annotation."""
    if not isinstance(result, ToolExecutionResult):
        return result, None
    if result.annotation is None:
        return result.result, None
    try:
        return result.result, profile(tool_call_id=tool_call_id,
                                      tool_result_annotation=result.annotation)
    except Exception:  # an annotation that is not JSON is left out, never raised
        return result.result, None


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


def recorded_value(event_result):
    """The JSON value an event records, from what ``event_payload`` returned."""
    if type(event_result) is _core.Encoded:
        return orjson.loads(event_result.raw)
    return event_result


async def execute_and_end(frame, snap, family, response_family, func, name, arg, call_response,
                          settle, is_async, end_metadata=None, outcome=None, annotate=None):
    """The shared tail of a managed call: execution intercepts around ``func(arg)``, then the
    end event (ERROR with the exception's type, or OK with the sanitized result). ``annotate``
    makes the end's category_profile from the value the event records (after sanitizers)."""
    call, _ = execution_chain(snap.chain(family), func, (name,), settle, is_async)
    token = _active_call.set(frame)
    try:
        result = await call(arg)
    except BaseException as exc:
        end_with_error(frame, exc)
        raise
    finally:
        _reset_active(token)
    value, end_profile = (result, None) if outcome is None else outcome(result)
    event_result = await event_payload(snap.chain(response_family), value, call_response,
                                       settle)
    if annotate is not None:
        end_profile = annotate(recorded_value(event_result))
    meta = result_metadata(end_metadata, result)
    _core.end(frame, event_result, meta, None, _OK, None, None, end_profile)
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


async def call_and_end(frame, func, arg, settle, end_metadata=None, outcome=None,
                       annotate=None):
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
    value, end_profile = (result, None) if outcome is None else outcome(result)
    recorded = payload(value, True)
    if annotate is not None:
        end_profile = annotate(recorded_value(recorded))
    _core.end(frame, recorded, meta, None, _OK, None, None, end_profile)
    return result


async def run_tool(name, args, func, parent, attributes, data, metadata, tool_call_id, settle,
                   is_async, lenient):
    if parent is None:
        parent = _core.current()
    if not switch.tool:  # no tool middleware anywhere: the pipeline's events, without it
        frame = _core.start(name, ScopeType.Tool, parent, attributes, data, metadata,
                            payload(args, lenient), None, _core.KIND_TOOL,
                            profile(tool_call_id=tool_call_id), _core.ToolHandle)
        return await call_and_end(frame, func, args, settle, None,
                                  functools.partial(tool_outcome, tool_call_id=tool_call_id))
    snap = Snapshot(_core.current())
    frame, args = await tool_prelude(snap, name, args, parent, attributes, data, metadata,
                                     tool_call_id, settle, lenient)
    return await execute_and_end(frame, snap, "tool_execution", "tool_sanitize_response", func,
                                 name, args, _with_name(name), settle, is_async, None,
                                 functools.partial(tool_outcome, tool_call_id=tool_call_id))


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


# The LLM steps moved to _llm_pipeline; their names stay reachable here.
_LLM_NAMES = frozenset({
    "LLMRequest", "LLMStream", "apply_request_intercepts", "check_request", "guess_provider",
    "llm_prelude", "llm_profile", "llm_profile_fields", "now", "request_data",
    "request_intercepts", "response_metadata", "run_llm", "stream_llm", "with_session_headers",
    "with_trace_headers",
})


def __getattr__(name):
    if name in _LLM_NAMES:
        from . import _llm_pipeline
        return getattr(_llm_pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
