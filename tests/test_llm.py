"""LLM calls: manual spans, managed ``llm.execute`` and streamed ``llm.stream_execute``."""

from __future__ import annotations

import asyncio

import pytest

OK = {"otel.status_code": "OK"}
SECRET_HEADERS = {"Authorization": "Bearer sk", "proxy-authorization": "p", "Cookie": "c",
                  "X-Api-Key": "k", "api-key": "k", "anthropic-api-key": "k",
                  "x-goog-api-key": "k"}


def shape(events):
    return [(e.name, e.scope_category if e.kind == "scope" else "mark") for e in events]


def run(coro):
    return asyncio.run(coro)


def request(nf, **content):
    return nf.LLMRequest({"content-type": "json", **SECRET_HEADERS},
                         {"messages": [{"role": "user", "content": "hi"}], **content})


def test_llm_request_checks_types(nf):
    r = nf.LLMRequest({"a": "b"}, {"c": 1})
    assert r.headers == {"a": "b"} and r.content == {"c": 1}
    with pytest.raises(TypeError):
        nf.LLMRequest([], {})
    with pytest.raises(TypeError):
        nf.LLMRequest({}, "text")
    with pytest.raises(TypeError, match="LLMRequest"):
        nf.llm.call("m", {"headers": {}})


def test_call_and_call_end_drop_credential_headers(nf, events):
    with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
        h = nf.llm.call("chat", request(nf), model_name="gpt-x",
                        attributes=nf.LLMAttributes.STATEFUL)
        assert isinstance(h, nf.LLMHandle)
        assert nf.scope.get_handle() is agent
        nf.llm.call_end(h, {"text": "hello"})
    start, end = events[1], events[2]
    assert start.data == {"headers": {"content-type": "json"},
                          "content": {"messages": [{"role": "user", "content": "hi"}]}}
    assert end.data == {"text": "hello"}
    assert start.category == "llm" and start.attributes == ["stateful"]
    assert start.category_profile == end.category_profile == {"model_name": "gpt-x"}
    assert start.parent_uuid == agent.uuid
    for e in events:
        assert "sk" not in e.to_json() and "Cookie" not in e.to_json()
    with pytest.raises(nf.NotFoundError, match="^not found: scope handle not found$"):
        nf.llm.call_end(h, None)
    t = nf.tools.call("t", {})
    with pytest.raises(TypeError, match="LLMHandle"):
        nf.llm.call_end(t, None)


def test_manual_llm_end_is_ok_as_in_the_reference(nf, events):
    """NeMo Relay writes ``otel.status_code: "OK"`` on a manual LLM call's end event, merged
    over the metadata given; a manual tool call's end carries no status."""
    h = nf.llm.call("chat", request(nf), metadata={"a": 1})
    nf.llm.call_end(h, {"text": "hello"}, metadata={"b": 2})
    h = nf.llm.call("chat", request(nf))
    nf.llm.call_end(h, None)
    h = nf.llm.call("chat", request(nf))
    nf.llm.call_end(h, None, metadata={"otel.status_code": "ERROR"})
    t = nf.tools.call("tool", {})
    nf.tools.call_end(t, None)
    ends = [e for e in events if e.kind == "scope" and e.scope_category == "end"]
    assert [e.metadata for e in ends] == [{"a": 1, "b": 2, **OK}, OK, OK, None]
    assert '"otel.status_code":"OK"' in ends[1].to_json()


def test_execute_with_usage_and_finish_reason(nf, events):
    async def chat(req):
        return {"choices": [{"finish_reason": "stop", "message": {"content": "x"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}

    out = run(nf.llm.execute("chat", request(nf), chat, model_name="m"))
    assert out["usage"]["total_tokens"] == 8
    assert shape(events) == [("chat", "start"), ("chat", "end")]
    assert events[1].metadata == {**OK, "llm.usage.prompt_tokens": 3,
                                  "llm.usage.completion_tokens": 5,
                                  "llm.usage.total_tokens": 8, "llm.finish_reason": "stop"}
    assert events[0].data["headers"] == {"content-type": "json"}

    run(nf.llm.execute("claude", request(nf), lambda r: {
        "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 2}}))
    assert events[3].metadata == {**OK, "llm.usage.input_tokens": 1,
                                  "llm.usage.output_tokens": 2, "llm.finish_reason": "end_turn"}


def test_request_intercepts_get_and_return_request_and_annotation(nf, events):
    seen = []

    def first(name, req, annotated):
        return nf.LLMRequest(req.headers, {**req.content, "temperature": 0}), {"step": 1}

    async def second(name, req, annotated):
        seen.append(annotated)
        return req, {"step": 2}

    nf.intercepts.register_llm_request("first", 0, False, first)
    nf.intercepts.register_llm_request("second", 1, False, second)
    got = []
    run(nf.llm.execute("chat", request(nf), lambda r: got.append(r.content) or "ok",
                       model_name="m"))
    assert seen == [{"step": 1}]
    assert got[0]["temperature"] == 0
    assert events[0].data["content"]["temperature"] == 0
    assert events[0].category_profile == {"model_name": "m",
                                          "annotated_request": {"step": 2}}


def test_request_intercept_wrong_return_type_is_internal_error(nf, events):
    nf.intercepts.register_llm_request("bad", 0, False, lambda n, r, a: r)
    with pytest.raises(nf.InternalError, match=r"^internal error: LLM request intercept "
                       r"result\[0\] extraction failed: TypeError: "):
        run(nf.llm.execute("chat", request(nf), lambda r: "ok"))
    assert events == []


def test_sanitizers_and_fail_closed(nf, events):
    def redact(req):
        req.content["messages"] = "[redacted]"
        return req

    nf.guardrails.register_llm_sanitize_request("redact", 0, redact)
    nf.guardrails.register_llm_sanitize_response("short", 0, lambda resp: resp[:2])
    req = request(nf)
    assert run(nf.llm.execute("chat", req, lambda r: r.content["messages"][0]["content"] * 3)) \
        == "hihihi"
    assert req.content["messages"] == [{"role": "user", "content": "hi"}]
    assert events[0].data == {"headers": {"content-type": "json"},
                              "content": {"messages": "[redacted]"}}
    assert events[1].data == "hi"
    events.clear()
    nf.guardrails.deregister_llm_sanitize_request("redact")
    nf.guardrails.register_llm_sanitize_request("wrong", 0, lambda req: {"not": "a request"})
    run(nf.llm.execute("chat", req, lambda r: "ok"))
    assert events[0].data is None


def test_llm_guardrail_rejection_sequence(nf, events):
    nf.guardrails.register_llm_conditional_execution(
        "no-secrets", 0, lambda req: "contains secret" if "pw" in str(req.content) else None)
    with pytest.raises(nf.GuardrailRejectedError, match="^guardrail rejected: contains secret$"):
        run(nf.llm.execute("chat", request(nf, extra="pw"), lambda r: "never"))
    assert shape(events) == [("no-secrets", "start"), ("no-secrets", "end"), ("chat", "mark")]
    assert events[0].data == {"kind": "llm_conditional_execution"}
    assert events[1].data == {"allowed": False, "rejected": True,
                              "rejection_reason": "contains secret"}
    assert events[2].data == {"rejected": True, "rejection_reason": "contains secret"}


def test_execution_intercept_and_error(nf, events):
    async def retry(name, req, nxt):
        try:
            return await nxt(req)
        except TimeoutError:
            return await nxt(req)

    attempts = []

    def flaky(req):
        attempts.append(1)
        if len(attempts) == 1:
            raise TimeoutError("slow")
        return "ok"

    nf.intercepts.register_llm_execution("retry", 0, retry)
    assert run(nf.llm.execute("chat", request(nf), flaky)) == "ok"
    assert events[1].metadata == OK
    nf.intercepts.deregister_llm_execution("retry")
    with pytest.raises(ConnectionError, match="^down$"):
        run(nf.llm.execute("chat", request(nf), lambda r: (_ for _ in ()).throw(
            ConnectionError("down"))))
    assert events[3].metadata["exception.type"] == "ConnectionError"
    assert events[3].metadata["otel.status_description"] == "down"


# --------------------------------------------------------------------------------------------
# Streaming.

def openai_chunks(n):
    async def gen(req):
        for i in range(n):
            await asyncio.sleep(0)
            yield {"object": "chat.completion.chunk", "choices": [{"delta": {"content": str(i)}}]}
    return gen


def collect():
    parts = []

    def collector(chunk):
        parts.append(chunk["choices"][0]["delta"]["content"])

    return parts, collector, lambda: {"text": "".join(parts)}


def test_stream_execute_writes_chunks_and_final_output(nf, events):
    parts, collector, finalizer = collect()

    async def main():
        with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
            got = [c async for c in nf.llm.stream_execute(
                "chat", request(nf), openai_chunks(3), collector, finalizer, model_name="m")]
        return agent, got

    agent, got = run(main())
    assert len(got) == 3 and parts == ["0", "1", "2"]
    body = events[1:-1]
    assert shape(body) == [("chat", "start"), ("llm.chunk", "mark"), ("llm.chunk", "mark"),
                           ("llm.chunk", "mark"), ("chat", "end")]
    start, end = body[0], body[-1]
    assert start.attributes == ["streaming"]
    assert start.parent_uuid == agent.uuid
    assert [m.data for m in body[1:4]] == [{"chunk_index": i, "provider": "openai"}
                                           for i in range(3)]
    assert all(m.parent_uuid == start.uuid for m in body[1:4])
    assert end.data == {"text": "012"}
    assert end.metadata == OK
    assert start.category_profile == {"model_name": "m"}
    profile = end.category_profile
    assert set(profile) == {"model_name", "time_to_first_chunk"}
    assert profile["model_name"] == "m" and 0 <= profile["time_to_first_chunk"] < 5
    assert '"time_to_first_chunk":' in end.to_json() and "time_to" not in start.to_json()


def test_stream_provider_guess(nf):
    guess = nf._managed.guess_provider
    assert guess({"type": "content_block_delta", "delta": {}}) == "anthropic"
    assert guess({"choices": []}) == "openai"
    assert guess("text") == "unknown"
    assert guess({"type": "other"}) == "unknown"


def test_stream_early_exit_writes_end(nf, events):
    parts, collector, finalizer = collect()

    async def main():
        stream = nf.llm.stream_execute("chat", request(nf), openai_chunks(10), collector,
                                       finalizer)
        async for _ in stream:
            if len(parts) == 2:
                break
        await stream.aclose()

    run(main())
    assert shape(events) == [("chat", "start"), ("llm.chunk", "mark"), ("llm.chunk", "mark"),
                             ("chat", "end")]
    assert events[-1].data == {"text": "01"}
    assert events[-1].metadata["otel.status_code"] == "OK"
    events.clear()
    parts.clear()

    async def shorten(resp):
        return {"chars": len(resp["text"])}

    nf.guardrails.register_llm_sanitize_response("shorten", 0, shorten)
    run(main())  # an early exit still goes through the response sanitizers
    assert events[-1].data == {"chars": 2}


def test_stream_error_writes_error_end_and_reraises(nf, events):
    async def broken(req):
        yield {"choices": []}
        raise ConnectionResetError("reset")

    async def main():
        async for _ in nf.llm.stream_execute("chat", request(nf), broken, lambda c: None,
                                             lambda: None):
            pass

    with pytest.raises(ConnectionResetError, match="^reset$"):
        run(main())
    assert shape(events) == [("chat", "start"), ("llm.chunk", "mark"), ("chat", "end")]
    meta = events[-1].metadata
    assert meta["otel.status_code"] == "ERROR" and meta["exception.type"] == "ConnectionResetError"
    assert meta["otel.status_description"] == "reset"


def test_stream_cancelled_task_writes_error_end(nf, events):
    started = None

    async def slow(req):
        yield {"choices": []}
        started.set()
        await asyncio.sleep(30)
        yield {"choices": []}

    async def consume():
        async for _ in nf.llm.stream_execute("chat", request(nf), slow, lambda c: None,
                                             lambda: None):
            pass

    async def main():
        nonlocal started
        started = asyncio.Event()
        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert shape(events) == [("chat", "start"), ("llm.chunk", "mark"), ("chat", "end")]
    assert events[-1].metadata["otel.status_code"] == "ERROR"
    assert events[-1].metadata["otel.status_description"] == "cancelled"


def test_stream_execution_intercepts_nest_and_guardrails_reject(nf, events):
    order = []

    def outer(req, nxt):
        async def gen():
            order.append("outer")
            async for c in nxt(req):
                yield c
        return gen()

    def inner(req, nxt):
        async def gen():
            order.append("inner")
            async for c in nxt(req):
                yield {**c, "tagged": True}
        return gen()

    nf.intercepts.register_llm_stream_execution("inner", 2, inner)
    nf.intercepts.register_llm_stream_execution("outer", 1, outer)
    seen = []

    async def main():
        return [c async for c in nf.llm.stream_execute(
            "chat", request(nf), openai_chunks(2), seen.append, lambda: len(seen))]

    got = run(main())
    assert order == ["outer", "inner"]
    assert all(c["tagged"] for c in got) and len(seen) == 2
    assert events[-1].data == 2
    events.clear()
    nf.guardrails.register_llm_conditional_execution("deny", 0, lambda r: "stop")
    with pytest.raises(nf.GuardrailRejectedError, match="^guardrail rejected: stop$"):
        run(main())
    assert shape(events) == [("deny", "start"), ("deny", "end"), ("chat", "mark")]


def test_concurrent_streams_in_tasks_keep_their_chunks_apart(nf, events):
    async def one(i):
        with nf.scope.scope(f"a{i}", nf.ScopeType.Agent) as h:
            nf.scope_local.register_llm_sanitize_response(h, "tag", 0, lambda r, i=i: {"i": i})
            return [c async for c in nf.llm.stream_execute(
                f"chat{i}", request(nf), openai_chunks(3), lambda c: None, lambda: i)]

    async def main():
        return await asyncio.gather(*(one(i) for i in range(10)))

    run(main())
    for i in range(10):
        start = next(e for e in events if e.name == f"chat{i}" and e.scope_category == "start")
        marks = [e for e in events if e.kind == "mark" and e.parent_uuid == start.uuid]
        assert [m.data["chunk_index"] for m in marks] == [0, 1, 2]
        end = next(e for e in events if e.name == f"chat{i}" and e.scope_category == "end")
        assert end.data == {"i": i}  # the finalizer's output, through this task's sanitizer


# --------------------------------------------------------------------------------------------
# ``@nf.trace.llm``.

def test_trace_llm_async_with_model_usage_and_middleware(nf, events):
    @nf.trace.llm(model="gpt-4o")
    async def chat(messages, temperature=0.5):
        return {"choices": [{"finish_reason": "length", "message": {"content": "x"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
                "t": temperature}

    nf.intercepts.register_llm_request(
        "cold", 0, False,
        lambda n, req, ann: (nf.LLMRequest(req.headers, {**req.content, "temperature": 0}),
                             ann))
    out = run(chat([{"role": "user", "content": "hi"}]))
    assert out["t"] == 0
    start, end = events
    assert start.name == chat.__qualname__ and start.category == "llm"
    assert start.category_profile == {"model_name": "gpt-4o"}
    assert start.data == {"headers": {}, "content": {
        "messages": [{"role": "user", "content": "hi"}], "temperature": 0}}
    assert end.metadata == {**OK, "llm.usage.prompt_tokens": 1,
                            "llm.usage.completion_tokens": 2, "llm.usage.total_tokens": 3,
                            "llm.finish_reason": "length"}


def test_trace_llm_sync_named_and_rejected(nf, events):
    @nf.trace.llm("complete")
    def complete(prompt):
        return prompt[::-1]

    assert complete("abc") == "cba"
    assert shape(events) == [("complete", "start"), ("complete", "end")]
    assert events[1].data == "cba"
    nf.guardrails.register_llm_conditional_execution(
        "len", 0, lambda req: "too long" if len(req.content["prompt"]) > 5 else None)
    with pytest.raises(nf.GuardrailRejectedError, match="too long"):
        complete("abcdefgh")


def test_trace_llm_async_generator_is_a_streamed_call(nf, events):
    @nf.trace.llm(model="local")
    async def stream(prompt):
        for word in prompt.split():
            await asyncio.sleep(0)
            yield word + " "

    async def main():
        out = [c async for c in stream("a b c")]
        early = stream("x y z")
        async for _ in early:
            break
        await early.aclose()
        return out

    assert run(main()) == ["a ", "b ", "c "]
    name = stream.__qualname__
    assert shape(events) == [(name, "start")] + [("llm.chunk", "mark")] * 3 + [(name, "end")] \
        + [(name, "start"), ("llm.chunk", "mark"), (name, "end")]
    assert events[0].attributes == ["streaming"]
    assert events[4].data == "a b c " and events[-1].data == "x "
    assert events[1].data == {"chunk_index": 0, "provider": "unknown"}


def test_end_profile_reaches_exporters_and_leaves_the_start_event_alone(nf, events):
    rec = nf.exporters.InMemoryRecorder()  # fed through the rings, not synchronously
    rec.register("rec")
    h = nf.llm.call("m", nf.LLMRequest({}, {}), model_name="x")
    nf._core.end(h, None, None, None, nf._core.STATUS_NONE, None, None,
                 nf._core.encode({"model_name": "x", "time_to_first_chunk": 0.5}))
    rec.shutdown()
    for evs in (events, rec.events):
        start, end = evs
        assert start.category_profile == {"model_name": "x"}
        assert end.category_profile == {"model_name": "x", "time_to_first_chunk": 0.5}
        assert '"category_profile":{"model_name":"x"}' in start.to_json()
    with pytest.raises(TypeError, match="profile must be encoded JSON bytes"):
        nf._core.end(nf.llm.call("m", nf.LLMRequest({}, {})), None, None, None,
                     nf._core.STATUS_NONE, None, None, {"not": "bytes"})


def test_stream_failing_finalizer_still_writes_an_error_end(nf, events):
    def finalizer():
        raise RuntimeError("no summary")

    async def main():
        return [c async for c in nf.llm.stream_execute(
            "chat", request(nf), openai_chunks(1), lambda c: None, finalizer)]

    with pytest.raises(RuntimeError, match="^no summary$"):
        run(main())
    assert shape(events) == [("chat", "start"), ("llm.chunk", "mark"), ("chat", "end")]
    assert events[-1].metadata["exception.type"] == "RuntimeError"
    assert "time_to_first_chunk" in events[-1].category_profile


def test_stream_abandoned_without_aclose_still_writes_its_end(nf, events):
    import gc

    async def abandon():
        stream = nf.llm.stream_execute("chat", request(nf), openai_chunks(5), lambda c: None,
                                       lambda: "partial")
        async for _ in stream:
            break  # no aclose()

    async def main():
        await abandon()
        gc.collect()  # the loop's finalizer hook closes the generator in a task of its own
        for _ in range(5):
            await asyncio.sleep(0)

    run(main())
    assert shape(events) == [("chat", "start"), ("llm.chunk", "mark"), ("chat", "end")]
    assert events[-1].data == "partial" and events[-1].metadata == OK
    events.clear()
    run(abandon())  # abandoned as the loop shuts down: the loop cancels the closing task
    assert shape(events) == [("chat", "start"), ("llm.chunk", "mark"), ("chat", "end")]
    assert events[-1].metadata["otel.status_description"] == "cancelled"
