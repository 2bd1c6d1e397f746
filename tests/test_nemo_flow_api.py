"""NeMo Flow programs, as written for its ``nemo_flow`` package, run through nemoflow.

Each test binds the backend under test to the name ``nemo_flow`` and uses it the way NeMo
Flow's documentation does: streams, standalone middleware chains, type aliases, error messages.
"""

from __future__ import annotations

import asyncio

import pytest


def run(coro):
    return asyncio.run(coro)


def request(nemo_flow):
    return nemo_flow.LLMRequest({}, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})


def shape(events):
    return [(e.name, e.scope_category if e.kind == "scope" else "mark") for e in events]


async def chunks(req):
    yield {"token": "hel"}
    yield {"token": "lo"}


# --------------------------------------------------------------------------------------------
# llm.stream_execute returns an LlmStream: awaitable and async-iterable.

def test_awaited_stream_resolves_to_itself_and_iterates(nf, events):
    nemo_flow = nf
    collected = []

    async def main():
        stream = await nemo_flow.llm.stream_execute(
            "provider", request(nemo_flow), chunks, collected.append,
            lambda: {"text": "".join(c["token"] for c in collected)})
        assert isinstance(stream, nemo_flow.llm.LlmStream)
        assert await stream is stream
        return [chunk async for chunk in stream]

    assert run(main()) == [{"token": "hel"}, {"token": "lo"}]
    assert shape(events) == [("provider", "start"), ("llm.chunk", "mark"),
                             ("llm.chunk", "mark"), ("provider", "end")]
    assert events[-1].data == {"text": "hello"}


def test_stream_iterated_without_await(nf, events):
    nemo_flow = nf

    async def main():
        return [c async for c in nemo_flow.llm.stream_execute(
            "provider", request(nemo_flow), chunks, lambda c: None, lambda: None)]

    assert run(main()) == [{"token": "hel"}, {"token": "lo"}]
    assert shape(events)[-1] == ("provider", "end")


def test_stream_aclose_ends_the_call(nf, events):
    nemo_flow = nf

    async def main():
        stream = await nemo_flow.llm.stream_execute(
            "provider", request(nemo_flow), chunks, lambda c: None, lambda: "partial")
        first = await stream.__anext__()
        await stream.aclose()
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
        return first

    assert run(main()) == {"token": "hel"}
    assert shape(events) == [("provider", "start"), ("llm.chunk", "mark"), ("provider", "end")]
    assert events[-1].data == "partial"


def test_awaited_stream_raises_a_rejection_at_the_await(nf, events):
    nemo_flow = nf
    nemo_flow.guardrails.register_llm_conditional_execution("deny", 0, lambda r: "no")

    async def main():
        with pytest.raises(nemo_flow.GuardrailRejectedError, match="no"):
            await nemo_flow.llm.stream_execute("provider", request(nemo_flow), chunks,
                                               lambda c: None, lambda: None)

    run(main())
    assert not any(e.name == "provider" and e.kind == "scope" for e in events)


def test_awaited_stream_raises_the_sources_error_on_iteration(nf, events):
    nemo_flow = nf

    async def broken(req):
        raise ConnectionError("lost")
        yield  # pragma: no cover

    async def main():
        stream = await nemo_flow.llm.stream_execute("provider", request(nemo_flow), broken,
                                                    lambda c: None, lambda: None)
        with pytest.raises(ConnectionError, match="lost"):
            async for _ in stream:
                pass

    run(main())
    assert events[-1].name == "provider" and events[-1].metadata["error.type"] == \
        "ConnectionError"


# --------------------------------------------------------------------------------------------
# Standalone LLM chains.

def test_llm_request_intercepts_returns_the_request_and_unpacks(nf):
    nemo_flow = nf

    def add_header(name, req, annotated):
        req.headers["X-Trace"] = name
        return req, {"seen": annotated}

    nemo_flow.intercepts.register_llm_request("trace", 10, False, add_header)
    out = nemo_flow.llm.request_intercepts("demo", request(nemo_flow))
    assert isinstance(out, nemo_flow.LLMRequest)
    assert out.headers["X-Trace"] == "demo"  # NeMo Flow 0.2: the request itself
    req, annotated = nemo_flow.llm.request_intercepts("demo", request(nemo_flow), "a")
    assert req.headers["X-Trace"] == "demo" and annotated == {"seen": "a"}


def test_llm_conditional_execution_both_forms(nf, events):
    nemo_flow = nf
    assert nemo_flow.llm.conditional_execution(request(nemo_flow)) is None
    nemo_flow.guardrails.register_llm_conditional_execution(
        "deny", 0, lambda r: "blocked" if r.content["model"] == "m" else None)
    with pytest.raises(RuntimeError, match="blocked"):
        nemo_flow.llm.conditional_execution(request(nemo_flow))
    with pytest.raises(nemo_flow.GuardrailRejectedError, match="^guardrail rejected: blocked$"):
        nemo_flow.llm.conditional_execution("chat", request(nemo_flow))
    assert ("chat", "mark") in shape(events)


def test_llm_conditional_execution_async_guardrail_is_awaitable(nf):
    nemo_flow = nf

    async def deny(r):
        return "later"

    nemo_flow.guardrails.register_llm_conditional_execution("deny", 0, deny)
    with pytest.raises(nemo_flow.GuardrailRejectedError, match="later"):
        run(nemo_flow.llm.conditional_execution("chat", request(nemo_flow)))


# --------------------------------------------------------------------------------------------
# Names: type aliases, ScopeStack, utils.

ALIASES = ("JsonPrimitive", "JsonValue", "JsonObject", "Json", "UnsupportedBehavior",
           "ToolSanitizeGuardrail", "ToolConditionalExecutionGuardrail",
           "LlmSanitizeRequestGuardrail", "LlmSanitizeResponseGuardrail",
           "LlmConditionalExecutionGuardrail", "ToolRequestIntercept", "ToolExecutionIntercept",
           "LlmRequestIntercept", "LlmExecutionIntercept", "LlmStreamExecutionIntercept")


def test_type_aliases_importable_where_nemo_flow_has_them(nf):
    nemo_flow = nf
    for name in ALIASES:
        assert name in nemo_flow.__all__ and getattr(nemo_flow, name) is not None
    for name in ALIASES[5:10]:
        assert getattr(nemo_flow.guardrails, name) is getattr(nemo_flow, name)
    for name in ALIASES[10:]:
        assert getattr(nemo_flow.intercepts, name) is getattr(nemo_flow, name)
        assert name in nemo_flow.intercepts.__all__
    exec("from nemoflow import Json, JsonObject, LlmRequestIntercept, ToolSanitizeGuardrail\n"
         "from nemoflow.guardrails import ToolConditionalExecutionGuardrail\n"
         "from nemoflow.intercepts import LlmStreamExecutionIntercept\n"
         "from nemoflow.llm import LlmStream\n"
         "from nemoflow.codecs import LlmCodec, LlmResponseCodec\n", {})
    assert isinstance(nemo_flow.codecs.OpenAIChatCodec(), nemo_flow.codecs.LlmCodec)
    assert isinstance(nemo_flow.codecs.AnthropicMessagesCodec(),
                      nemo_flow.codecs.LlmResponseCodec)


def test_a_cast_to_an_alias_runs_as_in_nemo_flow(nf):
    from typing import cast

    nemo_flow = nf
    nemo_flow.guardrails.register_tool_conditional_execution(
        "bad", 1, cast(nemo_flow.guardrails.ToolConditionalExecutionGuardrail,
                       lambda name, args: 123))
    with pytest.raises(RuntimeError, match="expected str or None"):
        nemo_flow.tools.conditional_execution("bad_type_tool", {})


def test_scope_stack_repr_and_identity_within_a_context(nf):
    nemo_flow = nf
    stack = nemo_flow.get_scope_stack()
    assert repr(stack) == "<ScopeStack>"
    assert isinstance(stack, nemo_flow.ScopeStack)
    assert nemo_flow.get_scope_stack() is stack
    assert nemo_flow.scope_stack_active()

    async def in_task():
        return nemo_flow.get_scope_stack()

    assert run(in_task()).handle is stack.handle  # a task starts at its creator's position


def test_scope_stack_set_in_a_worker_thread(nf, events):
    import threading

    nemo_flow = nf
    with nemo_flow.scope.scope("parent", nemo_flow.ScopeType.Agent) as parent:
        stack = nemo_flow.propagate_scope_to_thread()

        def worker():
            nemo_flow.set_thread_scope_stack(stack)
            nemo_flow.scope.event("worker-ran", data={"source": "thread"})

        t = threading.Thread(target=worker)
        t.start()
        t.join(5)
    mark = next(e for e in events if e.name == "worker-ran")
    assert mark.parent_uuid == parent.uuid


def test_utils_run_sync_inside_and_outside_a_loop(nf, events):
    nemo_flow = nf

    async def work():
        nemo_flow.scope.event("ran")
        return 7

    with nemo_flow.scope.scope("outer", nemo_flow.ScopeType.Agent) as outer:
        assert nemo_flow.utils.run_sync(work()) == 7

        async def in_loop():
            return nemo_flow.utils.run_sync(work())

        assert run(in_loop()) == 7
    assert [e.parent_uuid for e in events if e.name == "ran"] == [outer.uuid, outer.uuid]


# --------------------------------------------------------------------------------------------
# Error messages, as NeMo Flow words them (the error classes stay nemoflow's own).

def boom(*args):
    raise KeyError("nope")


def test_a_raising_request_intercept_or_guardrail_says_callable_failed(nf):
    nemo_flow = nf
    nemo_flow.intercepts.register_tool_request("bad", 0, False, boom)
    with pytest.raises(RuntimeError, match="callable failed") as info:
        nemo_flow.tools.request_intercepts("search", {})
    assert isinstance(info.value, nemo_flow.InternalError)
    assert str(info.value) == \
        "internal error: Python tool callable failed for 'search': KeyError: 'nope'"
    assert isinstance(info.value.__cause__, KeyError)

    nemo_flow.guardrails.register_tool_conditional_execution("bad", 0, boom)
    with pytest.raises(nemo_flow.InternalError, match="callable failed"):
        nemo_flow.tools.conditional_execution("search", {})

    req = request(nemo_flow)
    nemo_flow.intercepts.register_llm_request("bad", 0, False, boom)
    with pytest.raises(nemo_flow.InternalError,
                       match="^internal error: LLM request intercept callable failed: "
                             "KeyError: 'nope'$"):
        nemo_flow.llm.request_intercepts("m", req)

    nemo_flow.guardrails.register_llm_conditional_execution("bad", 0, boom)
    with pytest.raises(nemo_flow.InternalError,
                       match="^internal error: LLM conditional guardrail callable failed: "):
        run(nemo_flow.llm.execute("m", req, lambda r: {}))


def test_a_conditional_guardrail_returning_a_non_string_says_expected_str_or_none(nf):
    nemo_flow = nf
    nemo_flow.guardrails.register_llm_conditional_execution("weird", 0, lambda r: 5)
    with pytest.raises(nemo_flow.InternalError, match=r"\(expected str or None\)"):
        nemo_flow.llm.conditional_execution(request(nemo_flow))
    with pytest.raises(RuntimeError, match="expected str or None"):
        run(nemo_flow.llm.execute("m", request(nemo_flow), lambda r: {}))


@pytest.mark.parametrize("result", [
    lambda r, a: r,  # the request alone, not the pair
    lambda r, a: ({"messages": []}, a),  # not an LLMRequest
    lambda r, a: None,
])
def test_a_request_intercept_result_without_a_request_says_extraction_failed(nf, events, result):
    nemo_flow = nf
    nemo_flow.intercepts.register_llm_request("bad", 0, False,
                                              lambda name, r, a: result(r, a))
    with pytest.raises(nemo_flow.InternalError,
                       match=r"^internal error: LLM request intercept result\[0\] extraction "
                             r"failed: TypeError: "):
        run(nemo_flow.llm.execute("m", request(nemo_flow), lambda r: {}))
    with pytest.raises(RuntimeError, match=r"result\[0\] extraction failed"):
        nemo_flow.llm.request_intercepts("m", request(nemo_flow))
    assert not any(e.name == "m" for e in events)


def test_a_naive_timestamp_says_timezone_aware(nf):
    import datetime

    nemo_flow = nf
    with pytest.raises(ValueError, match="timezone-aware"):
        nemo_flow.tools.call("t", {}, timestamp=datetime.datetime(2024, 1, 1))


def test_star_import_leaves_the_standard_types_module_alone(nf):
    namespace = {}
    exec("import types\nfrom nemoflow import *\n", namespace)
    assert namespace["types"].__name__ == "types"
    assert "Json" in namespace and "LlmStream" in namespace
