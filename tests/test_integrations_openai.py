"""``nemoflow.instrument("openai")``: the real ``openai`` client against a local HTTP server."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

openai = pytest.importorskip("openai")

from fake_llm_server import (  # noqa: E402
    TOOL_ARGS,
    USAGE_CHAT,
    FakeLLMServer,
    chat_completion,
    request_data,
    response_object,
)

OK = {"otel.status_code": "OK"}
MESSAGES = [{"role": "user", "content": "hi"}]
SECRET = "sk-secret-key"


@pytest.fixture(scope="module")
def server():
    with FakeLLMServer() as s:
        yield s


@pytest.fixture
def inst(nf):
    assert nf.instrument("openai") == ["openai"]
    yield nf
    nf.uninstrument()


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=SECRET, max_retries=0) as c:
        yield c


def aclient(server):
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=SECRET, max_retries=0)


def llm_events(events, name="openai.chat.completions"):
    return [e for e in events if e.name in (name, "llm.chunk")]


def chat_usage_meta(reason="stop"):
    return {**OK, "llm.usage.prompt_tokens": 5, "llm.usage.completion_tokens": 2,
            "llm.usage.total_tokens": 7, "llm.finish_reason": reason}


def no_secret(events):
    for e in events:
        text = e.to_json()
        assert SECRET not in text and "Bearer" not in text


# --------------------------------------------------------------------------------------------
# instrument / uninstrument

def test_instrument_is_idempotent_thread_safe_and_undone(nf, events, client):
    from openai.resources.chat.completions import AsyncCompletions, Completions
    from openai.resources.responses import Responses

    original = Completions.__dict__["create"]
    threads = [threading.Thread(target=nf.instrument, args=("openai",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    wrapper = Completions.__dict__["create"]
    assert wrapper is not original and wrapper.__wrapped__ is original  # wrapped once
    assert wrapper.__name__ == "create" and wrapper.__doc__ == original.__doc__
    assert nf.instrument("openai") == ["openai"] == nf.integrations.instrumented()
    assert Completions.__dict__["create"] is wrapper
    assert AsyncCompletions.__dict__["create"].__wrapped__ is not None
    assert Responses.__dict__["create"].__wrapped__ is not None
    client.chat.completions.create(model="m", messages=MESSAGES)
    assert len(llm_events(events)) == 2
    assert nf.uninstrument("openai") == []
    assert Completions.__dict__["create"] is original
    assert not hasattr(Responses.__dict__["create"], "__nemoflow_wrapped__")
    assert nf.uninstrument("openai") == []
    events.clear()
    client.chat.completions.create(model="m", messages=MESSAGES)
    assert events == []
    assert "openai" in nf.instrument()  # no name: every installed SDK
    assert nf.uninstrument() == [] and Completions.__dict__["create"] is original


def test_missing_library_is_a_noop_with_a_warning(nf, monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # import openai -> ImportError
    nf.integrations._warned.discard("openai")
    with pytest.warns(RuntimeWarning, match=r"the 'openai' package is not installed"):
        assert nf.instrument("openai") == []
    with pytest.raises(ValueError, match="cannot instrument 'mistral'"):
        nf.instrument("mistral")


# --------------------------------------------------------------------------------------------
# Chat Completions

def test_chat_completion(inst, events, server, client):
    nf = inst
    with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
        out = client.chat.completions.create(
            model="gpt-test", messages=MESSAGES, temperature=0.5,
            extra_headers={"x-tag": "a", "Authorization": "Bearer other"})
    assert isinstance(out, openai.types.chat.ChatCompletion)
    assert out.choices[0].message.content == "Hello!"
    start, end = llm_events(events)
    assert (start.scope_category, end.scope_category) == ("start", "end")
    assert start.category == "llm" and start.parent_uuid == agent.uuid
    assert request_data(start.data) == {"headers": {"x-tag": "a"},
                          "content": {"model": "gpt-test", "messages": MESSAGES,
                                      "temperature": 0.5}}
    assert end.data == chat_completion("gpt-test")  # the JSON the server sent
    assert end.metadata == chat_usage_meta()
    assert start.category_profile == end.category_profile == {"model_name": "gpt-test"}
    assert start.attributes == []
    assert server.requests[-1]["headers"]["x-tag"] == "a"
    no_secret(events)


def test_chat_tool_call(inst, events, client):
    out = client.chat.completions.create(
        model="tool", messages=MESSAGES,
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}])
    assert out.choices[0].message.tool_calls[0].function.arguments == TOOL_ARGS
    start, end = llm_events(events)
    assert start.data["content"]["tools"][0]["function"]["name"] == "get_weather"
    assert end.data == chat_completion("tool")
    assert end.metadata == chat_usage_meta("tool_calls")


def test_middleware_applies_to_sdk_calls(inst, events, server, client):
    """Request intercepts rewrite what is sent (headers included); sanitizers the events."""
    nf = inst

    def add_header(name, request, annotated):
        headers = {**request.headers, "x-intercepted": name}
        return nf.LLMRequest(headers, {**request.content, "temperature": 0}), annotated

    nf.intercepts.register_llm_request("hdr", 0, False, add_header)
    nf.guardrails.register_llm_sanitize_response("drop", 0, lambda r: {"redacted": True})
    out = client.chat.completions.create(model="m", messages=MESSAGES)
    assert out.choices[0].message.content == "Hello!"
    sent = server.requests[-1]
    assert sent["headers"]["x-intercepted"] == "openai.chat.completions"
    assert sent["body"]["temperature"] == 0
    start, end = llm_events(events)
    assert request_data(start.data)["headers"] == {
        "x-intercepted": "openai.chat.completions"}
    assert end.data == {"redacted": True}


def test_execution_intercept_may_answer_without_calling(inst, events, server, client):
    nf = inst
    cached = chat_completion("cached")
    nf.intercepts.register_llm_execution("cache", 0, lambda name, req, nxt: cached)
    before = len(server.requests)
    out = client.chat.completions.create(model="m", messages=MESSAGES)
    assert isinstance(out, openai.types.chat.ChatCompletion) and out.model == "cached"
    assert len(server.requests) == before
    assert llm_events(events)[-1].data == cached


def test_guardrail_rejection_sends_nothing(inst, events, server, client):
    nf = inst
    nf.guardrails.register_llm_conditional_execution("no", 0, lambda req: "blocked")
    before = len(server.requests)
    with pytest.raises(nf.GuardrailRejectedError, match="guardrail rejected: blocked"):
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert len(server.requests) == before


def test_chat_stream_with_usage(inst, events, server, client):
    nf = inst
    with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
        stream = client.chat.completions.create(
            model="gpt-test", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True})
        chunks = list(stream)
    assert [c.choices[0].delta.content for c in chunks[:2]] == ["Hel", "lo!"]
    assert chunks[-1].usage.total_tokens == 7
    assert stream.response.status_code == 200  # the SDK stream's own attributes
    body = llm_events(events)
    assert [e.name for e in body] == ["openai.chat.completions"] + ["llm.chunk"] * 4 + [
        "openai.chat.completions"]
    start, marks, end = body[0], body[1:-1], body[-1]
    assert start.parent_uuid == agent.uuid and start.attributes == ["streaming"]
    assert start.data["content"] == {"model": "gpt-test", "messages": MESSAGES,
                                     "stream": True, "stream_options": {"include_usage": True}}
    assert [m.data for m in marks] == [{"chunk_index": i, "provider": "openai"}
                                       for i in range(4)]
    assert all(m.parent_uuid == start.uuid for m in marks)
    expected = chat_completion("gpt-test")
    assert end.data == expected and end.data["usage"] == USAGE_CHAT
    assert end.metadata == OK
    profile = end.category_profile
    assert profile["model_name"] == "gpt-test" and 0 < profile["time_to_first_chunk"] < 5
    assert server.requests[-1]["body"]["stream_options"] == {"include_usage": True}


def test_chat_stream_without_usage_is_sent_as_written(inst, events, server, client):
    with client.chat.completions.create(model="tool", messages=MESSAGES, stream=True) as s:
        chunks = list(s)
    assert len(chunks) == 4
    assert "stream_options" not in server.requests[-1]["body"]
    end = llm_events(events)[-1]
    expected = chat_completion("tool")
    del expected["usage"]
    assert end.data == expected
    assert end.data["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == \
        TOOL_ARGS


def test_http_errors_end_the_call_with_the_error_type(inst, events, server, client):
    for model, exc, cls in (("error-500", openai.InternalServerError, "InternalServerError"),
                            ("error-429", openai.RateLimitError, "RateLimitError")):
        events.clear()
        before = len(server.requests)
        with pytest.raises(exc):
            client.chat.completions.create(model=model, messages=MESSAGES)
        assert len(server.requests) == before + 1  # retries off: one request
        _, end = llm_events(events)
        assert end.data is None
        assert end.metadata["otel.status_code"] == "ERROR"
        assert end.metadata["error.type"] == end.metadata["exception.type"] == cls
    events.clear()
    with pytest.raises(openai.RateLimitError):  # raised by create, as without nemoflow
        client.chat.completions.create(model="error-429", messages=MESSAGES, stream=True)
    _start, end = llm_events(events)
    assert end.metadata["error.type"] == "RateLimitError"


def test_stream_closed_early_ends_ok_with_what_arrived(inst, events, server, client):
    server.httpd.release.clear()
    try:
        stream = client.chat.completions.create(model="slow", messages=MESSAGES, stream=True)
        first = next(stream)
        assert first.choices[0].delta.content == "Hel"
        stream.close()
    finally:
        server.httpd.release.set()
    _start, mark, end = llm_events(events)
    assert mark.data == {"chunk_index": 0, "provider": "openai"}
    assert end.metadata == OK
    assert end.data["choices"][0]["message"]["content"] == "Hel"
    assert "time_to_first_chunk" in end.category_profile


def test_async_stream_task_cancelled(inst, events, server):
    got = []

    async def consume(client):
        stream = await client.chat.completions.create(model="slow", messages=MESSAGES,
                                                      stream=True)
        async for chunk in stream:
            got.append(chunk)

    async def main():
        async with aclient(server) as client:
            task = asyncio.create_task(consume(client))
            while not got:
                await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)

    server.httpd.release.clear()
    try:
        asyncio.run(main())
    finally:
        server.httpd.release.set()
    _start, _mark, end = llm_events(events)
    assert end.metadata["otel.status_code"] == "ERROR"
    assert end.metadata["otel.status_description"] == "cancelled"


def test_async_chat_and_stream(inst, events, server):
    async def main():
        async with aclient(server) as client:
            out = await client.chat.completions.create(model="a", messages=MESSAGES)
            stream = await client.chat.completions.create(
                model="b", messages=MESSAGES, stream=True,
                stream_options={"include_usage": True})
            async with stream:
                chunks = [c async for c in stream]
            return out, chunks

    out, chunks = asyncio.run(main())
    assert out.choices[0].message.content == "Hello!" and len(chunks) == 4
    body = llm_events(events)
    assert [e.scope_category if e.kind == "scope" else "mark" for e in body] == [
        "start", "end", "start", "mark", "mark", "mark", "mark", "end"]
    assert body[1].data == chat_completion("a") and body[1].metadata == chat_usage_meta()
    assert body[-1].data == chat_completion("b")


# --------------------------------------------------------------------------------------------
# Responses

def test_responses_create_and_stream(inst, events, client):
    out = client.responses.create(model="r", input="hi", instructions="be brief")
    assert out.output_text == "Hello!"
    start, end = llm_events(events, "openai.responses")
    assert request_data(start.data) == {
        "headers": {}, "content": {"model": "r", "input": "hi", "instructions": "be brief"}}
    assert end.data == response_object("r")
    assert end.metadata == {**OK, "llm.usage.input_tokens": 5, "llm.usage.output_tokens": 2,
                            "llm.usage.total_tokens": 7}
    events.clear()
    kinds = [e.type for e in client.responses.create(model="r", input="hi", stream=True)]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    body = llm_events(events, "openai.responses")
    assert len(body) == 2 + len(kinds)
    assert body[-1].data == response_object("r")
    assert "time_to_first_chunk" in body[-1].category_profile


# --------------------------------------------------------------------------------------------
# Concurrency

def test_concurrent_calls_in_threads(inst, events, client):
    nf = inst
    scopes = {}

    def worker(i):
        with nf.scope.scope(f"worker-{i}", nf.ScopeType.Agent) as h:
            scopes[i] = h.uuid
            if i % 2:
                list(client.chat.completions.create(model=f"m{i}", messages=MESSAGES,
                                                    stream=True))
            else:
                client.chat.completions.create(model=f"m{i}", messages=MESSAGES)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    starts = [e for e in llm_events(events) if e.kind == "scope" and e.scope_category == "start"]
    assert len(starts) == 8
    for s in starts:
        i = int(s.data["content"]["model"][1:])
        assert s.parent_uuid == scopes[i]
        end = next(e for e in events if e.uuid == s.uuid and e.scope_category == "end")
        assert end.data["model"] == f"m{i}" and end.metadata["otel.status_code"] == "OK"
        marks = [e for e in events if e.kind == "mark" and e.parent_uuid == s.uuid]
        assert len(marks) == (3 if i % 2 else 0)


def test_concurrent_calls_in_tasks(inst, events, server):
    nf = inst
    scopes = {}

    async def worker(client, i):
        with nf.scope.scope(f"task-{i}", nf.ScopeType.Agent) as h:
            scopes[i] = h.uuid
            if i % 2:
                stream = await client.chat.completions.create(model=f"m{i}", messages=MESSAGES,
                                                              stream=True)
                return [c async for c in stream]
            return await client.chat.completions.create(model=f"m{i}", messages=MESSAGES)

    async def main():
        async with aclient(server) as client:
            return await asyncio.gather(*(worker(client, i) for i in range(8)))

    asyncio.run(main())
    starts = [e for e in llm_events(events) if e.kind == "scope" and e.scope_category == "start"]
    assert len(starts) == 8
    for s in starts:
        i = int(s.data["content"]["model"][1:])
        assert s.parent_uuid == scopes[i]
        marks = [e for e in events if e.kind == "mark" and e.parent_uuid == s.uuid]
        assert len(marks) == (3 if i % 2 else 0)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_stream_intercepts_see_the_sdk_chunks(inst, events, server, client, kind):
    """LLM stream intercepts (async iterators) wrap the SDK's chunks, for a sync client too."""
    nf = inst
    seen = []

    async def relay(request, nxt):
        async for chunk in nxt(request):
            seen.append(chunk.choices[0].delta.content if chunk.choices else None)
            yield chunk

    async def consume():
        async with aclient(server) as c:
            stream = await c.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            return [chunk async for chunk in stream]

    nf.intercepts.register_llm_stream_execution("relay", 0, relay)
    if kind == "sync":
        chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    else:
        chunks = asyncio.run(consume())
    assert len(chunks) == 3 and seen == ["Hel", "lo!", None]
    assert llm_events(events)[-1].data == {k: v for k, v in chat_completion("m").items()
                                           if k != "usage"}


def test_stream_intercept_may_serve_without_the_sdk(inst, events, server, client):
    from fake_llm_server import chat_chunks

    nf = inst

    async def cached(request, nxt):
        for chunk in chat_chunks("cached", False):
            yield chunk

    nf.intercepts.register_llm_stream_execution("cache", 0, cached)
    before = len(server.requests)
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    assert list(stream) == chat_chunks("cached", False)
    with pytest.raises(AttributeError):
        stream.response  # noqa: B018  (no SDK stream behind it)
    assert len(server.requests) == before
    end = llm_events(events)[-1]
    assert end.data["model"] == "cached" and end.metadata == OK


def test_trace_headers_reach_the_provider(inst, events, server, client):
    """The managed pipeline's trace headers (where the package propagates trace context) are
    sent with the SDK's request: the LLM span's own id in ``traceparent``."""
    nf = inst
    if not hasattr(nf, "propagation"):
        pytest.skip("this build does not propagate trace context")
    with nf.scope.scope("agent", nf.ScopeType.Agent):
        client.chat.completions.create(model="m", messages=MESSAGES)
    start = llm_events(events)[0]
    traceparent = server.requests[-1]["headers"]["traceparent"]
    assert traceparent.split("-")[2] == start.uuid.replace("-", "")[16:]
