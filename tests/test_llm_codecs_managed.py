"""``codec=`` / ``response_codec=`` on managed LLM calls, as NeMo Flow programs write them.

``codec`` decodes the request into the ``AnnotatedLLMRequest`` request intercepts receive and
the start records as ``category_profile.annotated_request``; ``response_codec`` decodes the
response into the end's ``category_profile.annotated_response`` (observability only: the
caller's result is unchanged, and an annotation never shows what a response sanitizer removed).
"""

from __future__ import annotations

import asyncio
import warnings

import orjson
import pytest

REQUEST = {"messages": [{"role": "user", "content": "hi"}], "model": "m1"}
RESPONSE = {"id": "r1", "model": "m1",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "hello"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
# What NeMo Relay 0.10.4 writes for this call with OpenAIChatCodec as both codecs.
REFERENCE_START = {"annotated_request": {"api_specific": {"api": "openai_chat"},
                                         "messages": [{"content": "hi", "role": "user"}],
                                         "model": "m1"}}
REFERENCE_END = {"annotated_response": {"api_specific": {"api": "openai_chat"},
                                        "finish_reason": "complete", "id": "r1",
                                        "message": "hello", "model": "m1",
                                        "usage": {"completion_tokens": 2, "prompt_tokens": 3,
                                                  "total_tokens": 5}}}


def _profiles(events, name="prov"):
    start = next(e for e in events if e.name == name and e.scope_category == "start")
    end = next(e for e in events if e.name == name and e.scope_category == "end")
    return start.category_profile, end.category_profile


def test_codecs_record_the_references_annotations(nf, events):
    nemo_flow = nf
    codec = nemo_flow.codecs.OpenAIChatCodec()

    async def impl(request):
        return RESPONSE

    request = nemo_flow.LLMRequest({}, REQUEST)
    result = asyncio.run(nemo_flow.llm.execute("prov", request, impl, codec=codec,
                                               response_codec=codec))
    assert result == RESPONSE                          # the caller's value is unchanged
    start, end = _profiles(events)
    assert start == REFERENCE_START
    assert end == REFERENCE_END
    for ev in events:
        assert orjson.loads(ev.to_json())["category_profile"] == ev.category_profile


def test_request_intercepts_get_the_annotated_request(nf, events):
    nemo_flow = nf
    seen = []

    def intercept(name, request, annotated):
        seen.append(annotated)
        return request, annotated
    nemo_flow.intercepts.register_llm_request("see", 1, False, intercept)
    try:
        request = nemo_flow.LLMRequest({}, REQUEST)
        nemo_flow.llm.execute_sync("prov", request, lambda r: RESPONSE,
                                   codec=nemo_flow.codecs.OpenAIChatCodec())
        nemo_flow.llm.execute_sync("prov2", request, lambda r: RESPONSE)
    finally:
        nemo_flow.intercepts.deregister_llm_request("see")
    assert isinstance(seen[0], nemo_flow.AnnotatedLLMRequest)
    assert seen[0].to_dict() == REFERENCE_START["annotated_request"]
    assert seen[1] is None                             # no codec, no annotation
    assert _profiles(events)[0] == REFERENCE_START


def test_response_annotation_follows_the_response_sanitizers(nf, events):
    nemo_flow = nf

    def redact(response):
        out = dict(response)
        out["choices"] = [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": "[removed]"}}]
        return out
    nemo_flow.guardrails.register_llm_sanitize_response("redact", 1, redact)
    try:
        nemo_flow.llm.execute_sync("prov", nemo_flow.LLMRequest({}, REQUEST),
                                   lambda r: RESPONSE,
                                   response_codec=nemo_flow.codecs.OpenAIChatCodec())
    finally:
        nemo_flow.guardrails.deregister_llm_sanitize_response("redact")
    end = _profiles(events)[1]
    assert end["annotated_response"]["message"] == "[removed]"
    assert "hello" not in orjson.dumps(end).decode()


def test_streamed_call_records_the_annotated_response(nf, events):
    nemo_flow = nf
    chunks = []

    async def impl(request):
        for part in ("hel", "lo"):
            yield {"object": "chat.completion.chunk", "choices": [{"delta": {"content": part}}]}

    async def main():
        stream = await nemo_flow.llm.stream_execute(
            "prov", nemo_flow.LLMRequest({}, REQUEST), impl, chunks.append,
            lambda: RESPONSE, codec=nemo_flow.codecs.OpenAIChatCodec(),
            response_codec=nemo_flow.codecs.OpenAIChatCodec())
        return [c async for c in stream]
    assert len(asyncio.run(main())) == 2
    start, end = _profiles(events)
    assert start["annotated_request"] == REFERENCE_START["annotated_request"]
    assert end["annotated_response"] == REFERENCE_END["annotated_response"]
    assert end["time_to_first_chunk"] >= 0


def test_wrong_codecs_are_refused_before_anything_is_emitted(nf, events):
    nemo_flow = nf
    request = nemo_flow.LLMRequest({}, REQUEST)
    with pytest.raises(TypeError, match="codec must be an LLM codec"):
        nemo_flow.llm.execute_sync("prov", request, lambda r: RESPONSE, codec=object())
    with pytest.raises(TypeError, match="response_codec must be an LLM codec"):
        nemo_flow.llm.execute_sync("prov", request, lambda r: RESPONSE, response_codec="x")
    assert events == []


def test_a_failing_response_codec_never_breaks_the_call(nf, events):
    nemo_flow = nf

    class Broken:
        def decode_response(self, response):
            raise ValueError("cannot read this response")

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        result = nemo_flow.llm.execute_sync("prov", nemo_flow.LLMRequest({}, REQUEST),
                                            lambda r: RESPONSE, response_codec=Broken())
    assert result == RESPONSE
    end = _profiles(events)[1]
    assert end is None or "annotated_response" not in end
