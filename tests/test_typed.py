"""NeMo Flow programs using ``nemo_flow.typed``, run through nemoflow on both cores.

The typed wrappers encode the caller's values with a codec before the managed call, so events,
guardrails and intercepts see JSON, and decode what comes back for the caller and the callback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import textwrap

import pydantic
import pytest


def run(coro):
    return asyncio.run(coro)


@dataclasses.dataclass
class SearchArgs:
    query: str
    limit: int | None = None


@dataclasses.dataclass
class SearchResult:
    answer: str


class Answer(pydantic.BaseModel):
    text: str
    score: float = 1.0


class Chunk(pydantic.BaseModel):
    token: str


def scopes(events, name):
    return [e for e in events if e.kind == "scope" and e.name == name]


def request(nemo_flow):
    return nemo_flow.LLMRequest({}, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})


# --------------------------------------------------------------------------------------------
# tool_execute


def test_tool_execute_with_dataclasses_sync_callback(nf, events):
    nemo_flow = nf
    seen = []

    def search(args: SearchArgs) -> SearchResult:
        seen.append(args)
        return SearchResult(answer=args.query.upper())

    async def main():
        return await nemo_flow.typed.tool_execute(
            "search", SearchArgs("hello"), search,
            args_codec=nemo_flow.typed.DataclassCodec(SearchArgs),
            result_codec=nemo_flow.typed.DataclassCodec(SearchResult),
            data={"path": "typed"}, metadata={"request_id": "req-1"})

    assert run(main()) == SearchResult("HELLO")
    assert seen == [SearchArgs("hello")]
    start, end = scopes(events, "search")
    assert start.data == {"query": "hello"}  # None fields are left out, as NeMo Flow does
    assert end.data == {"answer": "HELLO"}
    assert start.metadata == {"request_id": "req-1"}


def test_tool_execute_with_pydantic_models_async_callback(nf, events):
    nemo_flow = nf

    class Args(pydantic.BaseModel):
        query: str

    async def search(args):
        await asyncio.sleep(0)
        return Answer(text=f"re: {args.query}", score=0.5)

    async def main():
        return await nemo_flow.typed.tool_execute(
            "search", Args(query="q"), search, nemo_flow.typed.PydanticCodec(Args),
            nemo_flow.typed.PydanticCodec(Answer))

    result = run(main())
    assert isinstance(result, Answer) and result == Answer(text="re: q", score=0.5)
    start, end = scopes(events, "search")
    assert (start.data, end.data) == ({"query": "q"}, {"text": "re: q", "score": 0.5})


def test_middleware_sees_json_and_the_callback_gets_the_rewritten_value_typed(nf, events):
    nemo_flow = nf
    sanitized = []
    nemo_flow.intercepts.register_tool_request(
        "rewrite", 1, False, lambda name, args: {**args, "query": args["query"] + "!"})
    nemo_flow.guardrails.register_tool_sanitize_response(
        "see", 1, lambda name, result: sanitized.append(result) or result)

    async def main():
        return await nemo_flow.typed.tool_execute(
            "search", SearchArgs("hi", limit=3), lambda a: SearchResult(f"{a.query}/{a.limit}"),
            nemo_flow.typed.DataclassCodec(SearchArgs),
            nemo_flow.typed.DataclassCodec(SearchResult))

    assert run(main()) == SearchResult("hi!/3")
    assert sanitized == [{"answer": "hi!/3"}]
    assert scopes(events, "search")[0].data == {"query": "hi!", "limit": 3}


def test_a_failing_tool_reaches_the_caller_unchanged(nf, events):
    nemo_flow = nf

    def boom(args):
        raise KeyError("nope")

    async def main():
        await nemo_flow.typed.tool_execute("t", {"a": 1}, boom, nemo_flow.typed.JsonPassthrough(),
                                           nemo_flow.typed.JsonPassthrough())

    with pytest.raises(KeyError, match="nope"):
        run(main())
    assert scopes(events, "t")[-1].metadata["error.type"] == "KeyError"


# --------------------------------------------------------------------------------------------
# llm_execute


@pytest.mark.parametrize("is_async", [False, True])
def test_llm_execute_decodes_the_response(nf, events, is_async):
    nemo_flow = nf

    def provider(req):
        return Answer(text=req.content["messages"][0]["content"] + "!")

    async def aprovider(req):
        return provider(req)

    async def main():
        return await nemo_flow.typed.llm_execute(
            "provider", request(nemo_flow), aprovider if is_async else provider,
            nemo_flow.typed.PydanticCodec(Answer), model_name="demo-model",
            metadata={"request_id": "r"})

    assert run(main()) == Answer(text="hi!")
    start, end = scopes(events, "provider")
    assert start.data["content"]["messages"] == [{"role": "user", "content": "hi"}]
    assert start.category_profile["model_name"] == "demo-model"
    assert end.data == {"text": "hi!", "score": 1.0}


def test_llm_execute_codec_arguments(nf, events):
    nemo_flow = nf

    async def main():
        return await nemo_flow.typed.llm_execute(
            "p", request(nemo_flow), lambda r: {"ok": True}, nemo_flow.typed.JsonPassthrough(),
            codec=nemo_flow.codecs.OpenAIChatCodec())

    assert run(main()) == {"ok": True}
    start = next(e for e in events if e.name == "p" and e.scope_category == "start")
    assert "annotated_request" in start.category_profile
    # codec=None (the default) is always accepted
    assert run(nemo_flow.typed.llm_execute("p", request(nemo_flow), lambda r: 1,
                                           nemo_flow.typed.JsonPassthrough(), codec=None)) == 1


# --------------------------------------------------------------------------------------------
# llm_stream_execute


async def token_stream(req):
    for token in ("hel", "lo"):
        yield Chunk(token=token)


def test_llm_stream_execute_awaited(nf, events):
    nemo_flow = nf
    collected = []

    async def main():
        stream = await nemo_flow.typed.llm_stream_execute(
            "provider", request(nemo_flow), token_stream, collected.append,
            lambda: SearchResult("".join(c.token for c in collected)),
            chunk_json_codec=nemo_flow.typed.PydanticCodec(Chunk),
            response_json_codec=nemo_flow.typed.DataclassCodec(SearchResult),
            data={"path": "typed-stream"})
        assert isinstance(stream, nemo_flow.llm.LlmStream)
        return [chunk async for chunk in stream]

    # the stream yields the JSON chunks; the collector got them typed
    assert run(main()) == [{"token": "hel"}, {"token": "lo"}]
    assert collected == [Chunk(token="hel"), Chunk(token="lo")]
    assert [e.name for e in events] == ["provider", "llm.chunk", "llm.chunk", "provider"]
    assert events[-1].data == {"answer": "hello"}


def test_llm_stream_execute_iterated_directly(nf, events):
    nemo_flow = nf
    collected = []

    async def main():
        return [c async for c in nemo_flow.typed.llm_stream_execute(
            "provider", request(nemo_flow), token_stream, collected.append,
            lambda: Answer(text=str(len(collected))), nemo_flow.typed.PydanticCodec(Chunk),
            nemo_flow.typed.PydanticCodec(Answer))]

    assert run(main()) == [{"token": "hel"}, {"token": "lo"}]
    assert events[-1].data == {"text": "2", "score": 1.0}


def test_llm_stream_execute_rejection_raises_at_the_await(nf, events):
    nemo_flow = nf
    nemo_flow.guardrails.register_llm_conditional_execution("no", 1, lambda req: "blocked")

    async def main():
        await nemo_flow.typed.llm_stream_execute(
            "provider", request(nemo_flow), token_stream, lambda c: None, lambda: None,
            nemo_flow.typed.PydanticCodec(Chunk), nemo_flow.typed.JsonPassthrough())

    with pytest.raises(nemo_flow.GuardrailRejectedError, match="blocked"):
        run(main())
    assert scopes(events, "provider") == []


# --------------------------------------------------------------------------------------------
# codecs


def test_best_effort_codec_round_trips(nf):
    codec = nf.typed.BestEffortAnyCodec()

    @dataclasses.dataclass
    class Local:  # defined in a function: decoded through the runtime type registry
        x: int

    for value in (Answer(text="a"), SearchArgs("q", 2), Local(3), {"a": [1, 2]}, "s", None,
                  {1, 2}):
        encoded = codec.to_json(value)
        nf._core.encode(encoded)  # JSON the core accepts
        assert codec.from_json(encoded) == value
    assert codec.to_json(SearchArgs("q"))["__nv_dataclass__"].endswith("SearchArgs")
    assert codec.to_json(Answer(text="a"))["data"] == {"text": "a", "score": 1.0}
    assert codec.to_json({1, 2})["__nv_pickle__"] == "builtins.set"
    unpicklable = codec.to_json(lambda: None)
    assert "__nv_fallback_str__" in unpicklable
    assert codec.from_json(unpicklable) == unpicklable["data"]
    assert codec.from_json({"__nv_pickle__": "x", "data": "not base64!"}) == {
        "__nv_pickle__": "x", "data": "not base64!"}


def test_json_passthrough_and_dataclass_codec_errors(nf):
    typed = nf.typed
    assert typed.JsonPassthrough().to_json({"a": 1}) == {"a": 1}
    with pytest.raises(TypeError, match="DataclassCodec needs a dataclass"):
        typed.DataclassCodec(dict)
    with pytest.raises(TypeError, match=r"DataclassCodec\(SearchArgs\) cannot encode a dict"):
        typed.DataclassCodec(SearchArgs).to_json({"query": "q"})
    with pytest.raises(TypeError, match="needs a pydantic v2 model class"):
        typed.PydanticCodec(SearchArgs)


def test_typed_imports_without_pydantic():
    code = textwrap.dedent("""
        import sys
        sys.modules["pydantic"] = None  # as if it were not installed
        import nemoflow as nemo_flow
        from nemoflow.typed import PydanticCodec, tool_execute, DataclassCodec
        assert "pydantic" not in [m for m in sys.modules if sys.modules[m] is not None]
        class Model:
            pass
        try:
            PydanticCodec(Model)
        except TypeError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "NEMOFLOW_NO_EXTENSIONS": "1"})
    assert out.returncode == 0, out.stderr
    assert "pydantic is not installed (pip install 'nemoflow[pydantic]')" in out.stdout
