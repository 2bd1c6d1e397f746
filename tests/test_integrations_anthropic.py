"""``nemoflow.instrument("anthropic")``: the real ``anthropic`` client against a local server."""

from __future__ import annotations

import asyncio
import threading

import pytest

anthropic = pytest.importorskip("anthropic")

from fake_llm_server import (  # noqa: E402
    USAGE_ANTHROPIC,
    FakeLLMServer,
    anthropic_message,
    request_data,
)

OK = {"otel.status_code": "OK"}
MESSAGES = [{"role": "user", "content": "hi"}]
SECRET = "sk-ant-secret"
NAME = "anthropic.messages"


@pytest.fixture(scope="module")
def server():
    with FakeLLMServer() as s:
        yield s


@pytest.fixture
def inst(nf):
    assert nf.instrument("anthropic") == ["anthropic"]
    yield nf
    nf.uninstrument()


@pytest.fixture
def client(server):
    with anthropic.Anthropic(base_url=server.url, api_key=SECRET, max_retries=0) as c:
        yield c


def aclient(server):
    return anthropic.AsyncAnthropic(base_url=server.url, api_key=SECRET, max_retries=0)


def llm_events(events):
    return [e for e in events if e.name in (NAME, "llm.chunk")]


def usage_meta(reason="end_turn"):
    return {**OK, "llm.usage.input_tokens": 5, "llm.usage.output_tokens": 2,
            "llm.finish_reason": reason}


def streamed(model):
    """The end data of a streamed call: the message the events fold into."""
    return anthropic_message(model)


def check_stream(events, model, parent=None):
    body = llm_events(events)
    start, marks, end = body[0], body[1:-1], body[-1]
    assert [m.data for m in marks] == [{"chunk_index": i, "provider": "anthropic"}
                                       for i in range(len(marks))]
    assert len(marks) == 7 and all(m.parent_uuid == start.uuid for m in marks)
    assert start.attributes == ["streaming"]
    if parent is not None:
        assert start.parent_uuid == parent
    assert end.data == streamed(model) and end.data["usage"] == USAGE_ANTHROPIC
    assert end.metadata == OK
    assert 0 < end.category_profile["time_to_first_chunk"] < 5
    return start, end


def test_instrument_and_uninstrument(nf, events, client):
    from anthropic.resources.messages import AsyncMessages, Messages

    originals = [C.__dict__[m] for C in (Messages, AsyncMessages) for m in ("create", "stream")]
    assert nf.instrument("anthropic") == nf.instrument("anthropic") == ["anthropic"]
    wrapped = [C.__dict__[m] for C in (Messages, AsyncMessages) for m in ("create", "stream")]
    assert [w.__wrapped__ for w in wrapped] == originals
    assert nf.uninstrument() == []
    assert [C.__dict__[m] for C in (Messages, AsyncMessages)
            for m in ("create", "stream")] == originals
    client.messages.create(model="m", max_tokens=8, messages=MESSAGES)
    assert events == []


def test_messages_create(inst, events, server, client):
    nf = inst
    with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
        out = client.messages.create(model="claude-test", max_tokens=8, messages=MESSAGES,
                                     system="be brief", extra_headers={"x-api-key": "other"})
    assert isinstance(out, anthropic.types.Message) and out.content[0].text == "Hello!"
    start, end = llm_events(events)
    assert start.parent_uuid == agent.uuid and start.category == "llm"
    assert request_data(start.data) == {
        "headers": {}, "content": {"model": "claude-test", "max_tokens": 8,
                                   "messages": MESSAGES, "system": "be brief"}}
    assert end.data == anthropic_message("claude-test")
    assert end.metadata == usage_meta()
    assert start.category_profile == {"model_name": "claude-test"}
    for e in events:
        assert SECRET not in e.to_json() and "other" not in e.to_json()
    assert server.requests[-1]["headers"]["x-api-key"] == "other"


def test_messages_tool_use(inst, events, client):
    out = client.messages.create(
        model="tool", max_tokens=8, messages=MESSAGES,
        tools=[{"name": "get_weather", "input_schema": {"type": "object"}}])
    assert out.content[0].input == {"city": "Paris"}
    start, end = llm_events(events)
    assert start.data["content"]["tools"][0]["name"] == "get_weather"
    assert end.data == anthropic_message("tool") and end.metadata == usage_meta("tool_use")


def test_create_stream_true(inst, events, client):
    nf = inst
    with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
        kinds = [e.type for e in client.messages.create(
            model="tool", max_tokens=8, messages=MESSAGES, stream=True)]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    start, _ = check_stream(events, "tool", agent.uuid)
    assert start.data["content"]["stream"] is True


def test_stream_helper(inst, events, server, client):
    nf = inst
    with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
        with client.messages.stream(model="s", max_tokens=8, messages=MESSAGES) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert text == "Hello!" and final.usage.output_tokens == 2
    start, _ = check_stream(events, "s", agent.uuid)
    assert request_data(start.data) == {
        "headers": {}, "content": {"model": "s", "max_tokens": 8, "messages": MESSAGES}}
    assert server.requests[-1]["headers"]["x-stainless-helper-method"] == "stream"


def test_stream_helper_left_early_ends_ok(inst, events, server, client):
    server.httpd.release.clear()
    try:
        with client.messages.stream(model="slow", max_tokens=8, messages=MESSAGES) as stream:
            first = next(iter(stream))
            assert first.type == "message_start"
    finally:
        server.httpd.release.set()
    _start, _mark, end = llm_events(events)
    assert end.metadata == OK
    assert end.data["content"] == [] and end.data["id"] == "msg_1"


def test_http_error(inst, events, server, client):
    before = len(server.requests)
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="error-429", max_tokens=8, messages=MESSAGES)
    assert len(server.requests) == before + 1
    _start, end = llm_events(events)
    assert end.data is None and end.metadata["otel.status_code"] == "ERROR"
    assert end.metadata["error.type"] == "RateLimitError"
    events.clear()
    with pytest.raises(anthropic.InternalServerError):
        with client.messages.stream(model="error-500", max_tokens=8, messages=MESSAGES):
            pass
    assert llm_events(events)[-1].metadata["error.type"] == "InternalServerError"


def test_async_create_stream_and_helper(inst, events, server):
    async def main():
        async with aclient(server) as client:
            out = await client.messages.create(model="a", max_tokens=8, messages=MESSAGES)
            stream = await client.messages.create(model="b", max_tokens=8, messages=MESSAGES,
                                                  stream=True)
            kinds = [e.type async for e in stream]
            async with client.messages.stream(model="c", max_tokens=8,
                                              messages=MESSAGES) as s:
                text = await s.get_final_text()
            return out, kinds, text

    out, kinds, text = asyncio.run(main())
    assert out.content[0].text == "Hello!" and len(kinds) == 7 and text == "Hello!"
    ends = [e for e in llm_events(events) if e.kind == "scope" and e.scope_category == "end"]
    assert [e.data for e in ends] == [anthropic_message(m) for m in "abc"]
    assert ends[0].metadata == usage_meta() and ends[1].metadata == ends[2].metadata == OK


def test_async_stream_task_cancelled(inst, events, server):
    got = []

    async def consume(client):
        async with client.messages.stream(model="slow", max_tokens=8,
                                          messages=MESSAGES) as stream:
            async for event in stream:
                got.append(event)

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


def test_concurrent_threads_and_tasks(inst, events, server, client):
    nf = inst
    scopes = {}

    def worker(i):
        with nf.scope.scope(f"w{i}", nf.ScopeType.Agent) as h:
            scopes[f"t{i}"] = h.uuid
            out = client.messages.create(model=f"t{i}", max_tokens=8, messages=MESSAGES,
                                         stream=bool(i % 2))
            if i % 2:
                list(out)

    async def task(c, i):
        with nf.scope.scope(f"a{i}", nf.ScopeType.Agent) as h:
            scopes[f"a{i}"] = h.uuid
            async with c.messages.stream(model=f"a{i}", max_tokens=8, messages=MESSAGES) as s:
                await s.get_final_message()

    async def tasks():
        async with aclient(server) as c:
            await asyncio.gather(*(task(c, i) for i in range(4)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join(10)
    starts = [e for e in llm_events(events) if e.kind == "scope" and e.scope_category == "start"]
    assert len(starts) == 8
    for s in starts:
        model = s.data["content"]["model"]
        assert s.parent_uuid == scopes[model]
        if model.startswith("a"):
            marks = [e for e in events if e.kind == "mark" and e.parent_uuid == s.uuid]
            assert len(marks) == 7
