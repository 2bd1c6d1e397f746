"""LLM codecs and the normalization rules the exporters share (pure Python, no core)."""

from __future__ import annotations

import contextlib
import copy

import pytest
from codec_fixtures import (
    ANTHROPIC_EXPECTED,
    ANTHROPIC_NAME,
    ANTHROPIC_REQUEST,
    ANTHROPIC_RESPONSE,
    CHAT_EXPECTED,
    CHAT_NAME,
    CHAT_REQUEST,
    CHAT_RESPONSE,
    RESPONSES_EXPECTED,
    RESPONSES_NAME,
    RESPONSES_REQUEST,
    RESPONSES_RESPONSE,
)

import nemoflow as nf
from nemoflow.codecs import (
    AnnotatedLLMRequest,
    AnnotatedLLMResponse,
    AnthropicMessagesCodec,
    OpenAIChatCodec,
    OpenAIResponsesCodec,
    StreamAccumulator,
    accumulate_stream,
)
from nemoflow.codecs import normalize as N
from nemoflow.llm import LLMRequest

CASES = [
    pytest.param(OpenAIChatCodec, CHAT_NAME, CHAT_REQUEST, CHAT_RESPONSE, CHAT_EXPECTED,
                 "openai", id="openai_chat"),
    pytest.param(OpenAIResponsesCodec, RESPONSES_NAME, RESPONSES_REQUEST, RESPONSES_RESPONSE,
                 RESPONSES_EXPECTED, "openai", id="openai_responses"),
    pytest.param(AnthropicMessagesCodec, ANTHROPIC_NAME, ANTHROPIC_REQUEST, ANTHROPIC_RESPONSE,
                 ANTHROPIC_EXPECTED, "anthropic", id="anthropic_messages"),
]


def test_public_names_exported_from_the_package():
    for name in ("OpenAIChatCodec", "OpenAIResponsesCodec", "AnthropicMessagesCodec",
                 "AnnotatedLLMRequest", "AnnotatedLLMResponse"):
        assert name in nf.__all__
        assert getattr(nf, name) is getattr(nf.codecs, name)


# -- requests -----------------------------------------------------------------------------

def test_chat_request_decode():
    req = OpenAIChatCodec().decode(LLMRequest({"x-trace": "1"}, copy.deepcopy(CHAT_REQUEST)))
    assert req.model == "gpt-4o"
    assert req.params == {"temperature": 0.2, "max_tokens": 100, "top_p": 0.5, "stop": ["x"]}
    assert req.stream is True
    assert req.api_specific == {"api": "openai_chat", "frequency_penalty": 0.1, "n": 2,
                                "presence_penalty": 0.2, "seed": 3}
    assert req.messages[2] == {"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "http://i"}}],
        "name": "bob"}
    assert req.messages[3]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]
    assert req.messages[4] == {"role": "tool", "content": "42", "tool_call_id": "c1"}
    assert req.tools == [{"type": "function", "function": {
        "name": "f", "description": "F", "parameters": {"type": "object"}}}]
    assert req.system_prompt() == "be nice"
    assert req.last_user_message() == "hi"
    assert req.has_tool_calls()


def test_responses_request_decode():
    req = OpenAIResponsesCodec().decode({"headers": {}, "content": RESPONSES_REQUEST})
    assert req.instructions == "Be brief."
    assert req.params == {"temperature": 0.3, "max_tokens": 200, "top_p": 0.9}
    assert req.max_output_tokens == 200 and req.reasoning == {"effort": "low"}
    assert req.messages == [
        {"role": "user", "content": "What is the weather?"},
        {"role": "tool_call", "call_id": "call_9", "name": "get_weather",
         "arguments": {"city": "Paris"}},
        {"role": "tool_result", "call_id": "call_9", "output": "sunny"},
        {"role": "user", "content": [{"type": "text", "text": "thanks"},
                                     {"type": "image", "image": {"image_url": "https://x/y.png"}}]},
    ]
    assert req.tools == [{"type": "function", "function": {
        "name": "get_weather", "description": "d", "parameters": {"type": "object"}}}]
    assert N.reasoning_effort(req) == "low"


def test_anthropic_request_decode():
    req = AnthropicMessagesCodec().decode(ANTHROPIC_REQUEST)
    assert req.instructions == [{"text": "You are helpful.", "type": "text"}]
    assert req.system_prompt() == "You are helpful."
    assert req.params == {"temperature": 0.5, "max_tokens": 1024, "stop": ["END"]}
    assert req.api_specific == {"api": "anthropic_messages", "top_k": 40}
    assert req.messages[1]["content"][1] == {"id": "toolu_1", "input": {"city": "Paris"},
                                             "name": "get_weather", "type": "tool_use"}
    assert req.messages[3]["content"][0] == {"type": "image", "image": {"source": {
        "data": "AAA", "media_type": "image/png", "type": "base64"}}}
    assert req.last_user_message() == "and this?"


@pytest.mark.parametrize(("codec", "name", "request_", "response", "expected", "provider"),
                         CASES)
def test_decode_encode_round_trip(codec, name, request_, response, expected, provider):
    original = LLMRequest({"x-request-id": "r1"}, copy.deepcopy(request_))
    annotated = codec().decode(original)
    again = codec().encode(annotated, original)
    assert again.headers == {"x-request-id": "r1"}
    assert again.content == request_
    assert original.content == request_  # the original is not modified
    # the JSON form survives a trip through the event's category_profile
    assert AnnotatedLLMRequest.from_dict(annotated.to_dict()) == annotated
    assert codec().encode(AnnotatedLLMRequest.from_dict(annotated.to_dict()),
                          original).content == request_


def test_encode_applies_edits_and_keeps_unmodeled_fields():
    body = {"model": "gpt-4o", "max_completion_tokens": 5, "stop": "END", "logprobs": True,
            "vendor_flag": {"x": 1}, "messages": [{"role": "user", "content": "hi"}]}
    codec = OpenAIChatCodec()
    annotated = codec.decode(body)
    annotated.model = "gpt-4o-mini"
    annotated.params = {**annotated.params, "temperature": 0.7, "max_tokens": 9}
    annotated.messages = [*annotated.messages, {"role": "user", "content": "again"}]
    out = codec.encode(annotated, LLMRequest({}, body)).content
    assert out == {"model": "gpt-4o-mini", "max_completion_tokens": 9, "stop": "END",
                   "logprobs": True, "vendor_flag": {"x": 1}, "temperature": 0.7,
                   "messages": [{"role": "user", "content": "hi"},
                                {"role": "user", "content": "again"}]}
    # without an original, the body is built from the annotated request alone
    assert codec.encode(codec.decode(body)).content["messages"] == body["messages"]


def test_anthropic_encode_maps_tools_and_choice_back():
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "tool_choice": {"type": "any"},
            "tools": [{"name": "f", "input_schema": {"type": "object"},
                       "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "hi"}]}
    annotated = AnthropicMessagesCodec().decode(body)
    assert annotated.tool_choice == "required"
    assert annotated.tools == [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object"}}, "cache_control": {"type": "ephemeral"}}]
    assert AnthropicMessagesCodec().encode(annotated).content == body


def test_responses_encode_refuses_stop_sequences():
    annotated = OpenAIResponsesCodec().decode({"model": "m", "input": "hi"})
    annotated.params = {"stop": ["x"]}
    with pytest.raises(ValueError, match="stop sequences"):
        OpenAIResponsesCodec().encode(annotated)


def test_unmodeled_provider_items_are_kept_whole():
    req = OpenAIResponsesCodec().decode({"model": "m", "input": [
        {"type": "reasoning", "id": "rs_1", "summary": []}, {"role": "user", "content": "q"}]})
    assert req.messages[0] == {"role": "provider_native", "provider": "openai_responses",
                               "kind": "reasoning",
                               "value": {"id": "rs_1", "summary": [], "type": "reasoning"}}
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hm", "signature": "s"}, {"type": "text", "text": "a"}]}]}
    annotated = AnthropicMessagesCodec().decode(body)
    assert annotated.messages[0]["content"][0]["type"] == "provider_native"
    assert AnthropicMessagesCodec().encode(annotated).content == body


@pytest.mark.parametrize(("codec", "body", "message"), [
    (OpenAIChatCodec, {"model": "m"}, "missing messages"),
    (OpenAIChatCodec, {"messages": [{"role": "user"}]}, "missing content"),
    (OpenAIResponsesCodec, {"input": "x", "instructions": [1]}, "instructions must be"),
    (AnthropicMessagesCodec, {"model": "m"}, "missing messages"),
])
def test_malformed_requests_raise_value_error(codec, body, message):
    with pytest.raises(ValueError, match=message):
        codec().decode(body)


# -- responses ----------------------------------------------------------------------------

def test_chat_response_decode():
    resp = OpenAIChatCodec().decode_response(CHAT_RESPONSE)
    assert (resp.id, resp.model, resp.message) == ("chatcmpl-1", "gpt-4o-2024", "done")
    assert resp.tool_calls == [{"id": "call_1", "name": "get_weather",
                                "arguments": {"city": "Paris"}}]
    assert resp.finish_reason == "tool_use"
    assert resp.usage == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                          "cache_read_tokens": 3, "uncached_input_tokens": 7,
                          "cost": {"total": 0.25, "currency": "EUR",
                                   "source": "provider_reported"}}
    assert resp.extra == {"created": 1, "object": "chat.completion"}
    assert resp.response_text() == "done" and resp.has_tool_calls()


def test_responses_response_decode():
    resp = OpenAIResponsesCodec().decode_response(RESPONSES_RESPONSE)
    assert (resp.id, resp.message, resp.finish_reason) == ("resp_1", "Checking.", "complete")
    assert resp.tool_calls == [{"id": "call_9", "name": "get_weather",
                                "arguments": {"city": "Paris"}}]
    assert resp.usage["cache_read_tokens"] == 4
    assert resp.usage["cost"] == {"total": 0.01, "currency": "USD",
                                  "source": "provider_reported"}
    assert resp.api_specific["status"] == "completed"


def test_anthropic_response_decode():
    resp = AnthropicMessagesCodec().decode_response(ANTHROPIC_RESPONSE)
    assert resp.message == "Let me check."
    assert resp.tool_calls == [{"id": "toolu_2", "name": "get_weather",
                                "arguments": {"city": "Rome"}}]
    assert resp.finish_reason == "tool_use"
    assert resp.usage == {"prompt_tokens": 100, "completion_tokens": 30, "total_tokens": 130,
                          "cache_read_tokens": 50, "cache_write_tokens": 20,
                          "uncached_input_tokens": 100}
    assert AnnotatedLLMResponse.from_dict(resp.to_dict()) == resp


@pytest.mark.parametrize(("codec", "raw", "expected"), [
    (OpenAIChatCodec, {"choices": [{"finish_reason": "stop", "message": {}}]}, "complete"),
    (OpenAIChatCodec, {"choices": [{"finish_reason": "length", "message": {}}]}, "length"),
    (OpenAIChatCodec, {"choices": [{"finish_reason": "tool_calls", "message": {}}]}, "tool_use"),
    (OpenAIChatCodec, {"choices": [{"finish_reason": "content_filter", "message": {}}]},
     "content_filter"),
    (OpenAIChatCodec, {"choices": [{"finish_reason": "eos", "message": {}}]}, "eos"),
    (OpenAIResponsesCodec, {"status": "completed", "output": []}, "complete"),
    (OpenAIResponsesCodec, {"status": "incomplete", "output": [],
                            "incomplete_details": {"reason": "max_output_tokens"}}, "length"),
    (OpenAIResponsesCodec, {"status": "incomplete", "output": [],
                            "incomplete_details": {"reason": "content_filter"}},
     "content_filter"),
    (OpenAIResponsesCodec, {"status": "failed", "output": []}, "failed"),
    (AnthropicMessagesCodec, {"type": "message", "content": [], "stop_reason": "end_turn"},
     "complete"),
    (AnthropicMessagesCodec, {"type": "message", "content": [], "stop_reason": "max_tokens"},
     "length"),
    (AnthropicMessagesCodec, {"type": "message", "content": [], "stop_reason": "tool_use"},
     "tool_use"),
    (AnthropicMessagesCodec, {"type": "message", "content": [], "stop_reason": "refusal"},
     "refusal"),
])
def test_finish_reasons_normalize(codec, raw, expected):
    reason = codec().decode_response(raw).finish_reason
    assert reason == expected
    genai = {"complete": "stop", "tool_use": "tool_call"}.get(expected, expected)
    assert N.genai_finish_reason(reason) == genai
    assert N.openinference_finish_reason(reason) == expected


# -- streaming ----------------------------------------------------------------------------

CHAT_STREAM = [
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
     "model": "gpt-4o-2024", "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                "content": ""},
                                          "finish_reason": None}]},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
     "model": "gpt-4o-2024", "choices": [{"index": 0, "delta": {"content": "do"},
                                          "finish_reason": None}]},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
     "model": "gpt-4o-2024", "choices": [{"index": 0, "delta": {"content": "ne"},
                                          "finish_reason": None}]},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
     "model": "gpt-4o-2024", "choices": [{"index": 0, "delta": {"tool_calls": [
         {"index": 0, "id": "call_1", "type": "function",
          "function": {"name": "get_weather", "arguments": ""}}]}, "finish_reason": None}]},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
     "model": "gpt-4o-2024", "choices": [{"index": 0, "delta": {"tool_calls": [
         {"index": 0, "function": {"arguments": '{"city"'}}]}, "finish_reason": None}]},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
     "model": "gpt-4o-2024", "choices": [{"index": 0, "delta": {"tool_calls": [
         {"index": 0, "function": {"arguments": ':"Paris"}'}}]}, "finish_reason": None}]},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
     "model": "gpt-4o-2024", "choices": [{"index": 0, "delta": {},
                                          "finish_reason": "tool_calls"}]},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
     "model": "gpt-4o-2024", "choices": [], "usage": CHAT_RESPONSE["usage"]},
]

_FC_ITEM = {"type": "function_call", "id": "fc_1", "call_id": "call_9", "name": "get_weather",
            "arguments": ""}
RESPONSES_STREAM_DELTAS = [
    {"type": "response.created", "sequence_number": 0,
     "response": {"id": "resp_1", "object": "response", "status": "in_progress",
                  "model": "gpt-4.1", "output": []}},
    {"type": "response.output_item.added", "output_index": 0,
     "item": {"type": "message", "id": "msg_1", "role": "assistant", "content": []}},
    {"type": "response.content_part.added", "output_index": 0, "content_index": 0,
     "part": {"type": "output_text", "text": "", "annotations": []}},
    {"type": "response.output_text.delta", "output_index": 0, "content_index": 0,
     "delta": "Check"},
    {"type": "response.output_text.delta", "output_index": 0, "content_index": 0,
     "delta": "ing."},
    {"type": "response.output_item.added", "output_index": 1, "item": _FC_ITEM},
    {"type": "response.function_call_arguments.delta", "output_index": 1,
     "delta": '{"city":'},
    {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": '"Paris"}'},
]
RESPONSES_STREAM = [*RESPONSES_STREAM_DELTAS,
                    {"type": "response.completed", "response": RESPONSES_RESPONSE}]

ANTHROPIC_STREAM = [
    {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 100, "cache_read_input_tokens": 50,
                  "cache_creation_input_tokens": 20, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                                                          "text": "Let me"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                                                          "text": " check."}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta",
                                                          "partial_json": '{"city": '}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta",
                                                          "partial_json": '"Rome"}'}},
    {"type": "content_block_stop", "index": 1},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
     "usage": {"output_tokens": 30}},
    {"type": "message_stop"},
]


@pytest.mark.parametrize(("codec", "chunks", "response"), [
    pytest.param(OpenAIChatCodec, CHAT_STREAM, CHAT_RESPONSE, id="openai_chat"),
    pytest.param(OpenAIResponsesCodec, RESPONSES_STREAM, RESPONSES_RESPONSE,
                 id="openai_responses"),
    pytest.param(AnthropicMessagesCodec, ANTHROPIC_STREAM, ANTHROPIC_RESPONSE,
                 id="anthropic_messages"),
])
def test_stream_accumulates_to_the_non_streamed_response(codec, chunks, response):
    acc = accumulate_stream(copy.deepcopy(chunks))
    assert acc.api == codec.api
    assert acc.response() == codec().decode_response(response)
    assert codec().decode_response(acc.raw()) == codec().decode_response(response)
    # the api can also be given up front
    explicit = StreamAccumulator(codec.api)
    for chunk in copy.deepcopy(chunks):
        explicit.add(chunk)
    assert explicit.response() == acc.response()


def test_responses_stream_without_completed_event_folds_the_deltas():
    resp = accumulate_stream(copy.deepcopy(RESPONSES_STREAM_DELTAS)).response()
    assert resp.message == "Checking."
    assert resp.tool_calls == [{"id": "call_9", "name": "get_weather",
                                "arguments": {"city": "Paris"}}]
    assert resp.model == "gpt-4.1"


def test_unrecognized_stream_gives_no_response():
    acc = accumulate_stream([{"hello": 1}, "text"])
    assert acc.api is None and acc.response() is None and acc.raw() == {}


# -- detection ----------------------------------------------------------------------------

@pytest.mark.parametrize(("content", "hint", "api"), [
    (CHAT_REQUEST, "openai", "openai_chat"),
    (RESPONSES_REQUEST, None, "openai_responses"),
    ({"model": "m", "input": "hi"}, None, "openai_responses"),
    (ANTHROPIC_REQUEST, None, "anthropic_messages"),
    ({"model": "m", "max_tokens": 5, "messages": []}, "anthropic", "anthropic_messages"),
    ({"model": "m", "max_tokens": 5, "messages": []}, "anthropic.messages",
     "anthropic_messages"),
    ({"model": "m", "max_tokens": 5, "messages": []}, "my-llm", "openai_chat"),
    ({"contents": []}, None, "gemini"),
    ({"prompt": "x"}, None, None),
])
def test_request_detection(content, hint, api):
    assert N.detect_request_api({"headers": {}, "content": content}, hint) == api


def test_normalize_request_prefers_an_annotated_request_of_the_reference_shape():
    data = {"headers": {}, "content": CHAT_REQUEST}
    annotated = OpenAIResponsesCodec().decode({"model": "other", "input": "hi"}).to_dict()
    assert N.normalize_request(data, "openai", {"annotated_request": annotated}).model == "other"
    # an opaque annotation (the request intercept's own value) is ignored, not an error
    opaque = {"annotated_request": {"tenant": "a", "messages": "redacted"}}
    assert N.normalize_request(data, "openai", opaque).model == "gpt-4o"
    assert N.normalize_request({"headers": {}, "content": {"messages": "bad"}}) is None
    assert N.normalize_request(None) is None


@pytest.mark.parametrize(("data", "api"), [
    (CHAT_RESPONSE, "openai_chat"),
    (RESPONSES_RESPONSE, "openai_responses"),
    ({"id": "r", "output_text": "hi"}, "openai_responses"),
    (ANTHROPIC_RESPONSE, "anthropic_messages"),
    ({"choices": [], "output": []}, None),  # two shapes: ambiguous
    ({"type": "message", "content": [], "choices": []}, None),
    ({"answer": "42"}, None),
    ("text", None),
])
def test_response_detection_needs_exactly_one_shape(data, api):
    assert N.detect_response_api(data) == api
    resp = N.normalize_response(data)
    assert (resp is None) == (api is None)
    if resp is not None:
        assert resp.api == api


def test_normalize_response_prefers_an_annotated_response():
    annotated = AnthropicMessagesCodec().decode_response(ANTHROPIC_RESPONSE).to_dict()
    resp = N.normalize_response({"choices": []}, {"annotated_response": annotated})
    assert resp.api == "anthropic_messages" and resp.message == "Let me check."
    assert N.normalize_response({"answer": 1}, {"annotated_response": {"note": 1}}) is None


def test_model_name_lookup_order():
    resp = AnnotatedLLMResponse(model="served")
    req = AnnotatedLLMRequest([], model="requested")
    assert N.model_name(response=resp, end_data={"model": "end"}, request=req) == "served"
    assert N.model_name(end_data={"model": "end"}, end_profile={"model_name": "p"},
                        request=req) == "end"
    assert N.model_name(end_profile={"model_name": "p"}, request=req) == "p"
    assert N.model_name(start_profile={"model_name": "sp"}, request=req) == "sp"
    assert N.model_name(request=req, start_data={"model": "sd"}) == "requested"
    assert N.model_name(start_data={"model": "sd"}) == "sd"
    assert N.model_name(end_data={"model": ""}) is None


# -- usage --------------------------------------------------------------------------------

ALIASES = [
    ("prompt_tokens", {"prompt_tokens": 7}), ("prompt_tokens", {"input_tokens": 7}),
    ("prompt_tokens", {"inputTokens": 7}), ("prompt_tokens", {"input": 7}),
    ("completion_tokens", {"completion_tokens": 7}), ("completion_tokens", {"output_tokens": 7}),
    ("completion_tokens", {"completionTokens": 7}), ("completion_tokens", {"outputTokens": 7}),
    ("completion_tokens", {"output": 7}),
    ("total_tokens", {"total_tokens": 7}), ("total_tokens", {"totalTokens": 7}),
    ("total_tokens", {"total": 7}),
    ("cache_read_tokens", {"cached_tokens": 7}), ("cache_read_tokens", {"cachedTokens": 7}),
    ("cache_read_tokens", {"prompt_tokens_details": {"cached_tokens": 7}}),
    ("cache_read_tokens", {"input_tokens_details": {"cached_tokens": 7}}),
    ("cache_read_tokens", {"cache_read_tokens": 7}),
    ("cache_read_tokens", {"cache_read_input_tokens": 7}),
    ("cache_read_tokens", {"cacheReadTokens": 7}),
    ("cache_read_tokens", {"cacheReadInputTokens": 7}), ("cache_read_tokens", {"cacheRead": 7}),
    ("cache_write_tokens", {"cache_write_tokens": 7}),
    ("cache_write_tokens", {"cache_creation_input_tokens": 7}),
    ("cache_write_tokens", {"cacheWriteTokens": 7}),
    ("cache_write_tokens", {"cacheCreationInputTokens": 7}),
    ("cache_write_tokens", {"cacheWrite": 7}),
]


@pytest.mark.parametrize(("field", "raw"), ALIASES)
@pytest.mark.parametrize("where", ["usage", "token_usage"])
def test_every_usage_alias(field, raw, where):
    usage = N.merged_usage(None, {where: raw}, provider="openai")
    assert getattr(usage, field) == 7
    others = {"prompt_tokens", "completion_tokens", "total_tokens", "cache_read_tokens",
              "cache_write_tokens"} - {field}
    assert all(getattr(usage, f) is None for f in others)
    assert (set(raw) <= N.KNOWN_USAGE_KEYS) is (field != "total_tokens")


def test_atif_metrics_from_merged_usage():
    # what the reference's ATIF exporter records for these end payloads
    chat = {"id": "c", "model": "gpt-4o", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                  "prompt_tokens_details": {"cached_tokens": 3, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 1},
                  "cost": {"input": 0.1, "output": 0.2}, "weird": 7}}
    custom = {"answer": "z", "token_usage": {"input": 4, "output": 2, "total": 1, "cacheRead": 1,
                                             "cost_usd": 0.3}}
    for name, data, metrics, extra in (
            ("openai", chat, (10, 5, 3, 0.1 + 0.2),
             {"completion_tokens_details", "total_tokens", "weird"}),
            ("anthropic", ANTHROPIC_RESPONSE, (170, 30, 70, None), set()),
            ("custom", custom, (4, 2, 1, 0.3), {"total"})):
        resp = N.normalize_response(data)
        usage = N.merged_usage(resp, data, provider=name)
        found = N.cost(resp, data, policy="atif")
        assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens,
                found.total if found else None) == metrics
        raw = data.get("usage") or data.get("token_usage")
        assert {k for k in raw if k not in N.KNOWN_USAGE_KEYS} == extra


def test_usage_alias_order_and_sources():
    # first key present wins, in the table's order
    assert N.merged_usage(None, {"usage": {"input": 1, "prompt_tokens": 2}}).prompt_tokens == 2
    # usage before token_usage, per field
    merged = N.merged_usage(None, {"usage": {"prompt_tokens": 1},
                                   "token_usage": {"prompt_tokens": 9, "output_tokens": 4}})
    assert (merged.prompt_tokens, merged.completion_tokens) == (1, 4)
    # the normalized response first, raw fills its gaps
    resp = AnnotatedLLMResponse(usage={"prompt_tokens": 10})
    merged = N.merged_usage(resp, {"usage": {"prompt_tokens": 99, "completion_tokens": 3}})
    assert (merged.prompt_tokens, merged.completion_tokens) == (10, 3)
    # bools and negatives are not counts
    assert N.merged_usage(None, {"usage": {"prompt_tokens": True, "input_tokens": -1}}
                          ).prompt_tokens is None


def test_raw_total_smaller_than_its_parts_is_discarded():
    raw = {"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 3}}
    assert N.merged_usage(None, raw).total_tokens is None
    assert N.merged_usage(None, {"usage": {"total_tokens": 3}}).total_tokens == 3
    # a normalized total is kept as reported
    assert N.merged_usage(N.normalize_response({"choices": [], **raw}), None).total_tokens == 3


def test_anthropic_rule_from_the_response():
    resp = N.normalize_response(ANTHROPIC_RESPONSE)
    usage = N.merged_usage(resp, ANTHROPIC_RESPONSE, provider="my-gateway")
    assert usage.cache_inclusive
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (170, 30, 200)
    assert (usage.cache_read_tokens, usage.cache_write_tokens, usage.cached_tokens) == (
        50, 20, 70)


@pytest.mark.parametrize(("provider", "inclusive"), [
    ("anthropic", True), ("anthropic.messages", True), ("Claude-3-haiku", True),
    ("openai", False), ("my-anthropic", False), (None, False),
])
def test_anthropic_rule_from_the_provider_name(provider, inclusive):
    raw = {"usage": {"input_tokens": 100, "output_tokens": 30, "cache_read_input_tokens": 50,
                     "cache_creation_input_tokens": 20}}
    usage = N.merged_usage(None, raw, provider=provider)
    assert usage.cache_inclusive is inclusive
    assert usage.prompt_tokens == (170 if inclusive else 100)
    assert usage.total_tokens == (200 if inclusive else None)


def test_openai_cached_tokens_stay_inside_the_prompt():
    usage = N.merged_usage(N.normalize_response(CHAT_RESPONSE), CHAT_RESPONSE, provider="openai")
    assert (usage.prompt_tokens, usage.total_tokens, usage.cache_read_tokens) == (10, 15, 3)


# -- cost ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("usage", "any_", "usd", "atif"), [
    ({"cost_usd": 0.5}, (0.5, "USD"), 0.5, 0.5),
    ({"cost": {"total": 0.25, "currency": "EUR"}}, (0.25, "EUR"), None, None),
    ({"cost": {"total": 0.25, "currency": "usd"}}, (0.25, "usd"), 0.25, 0.25),
    ({"cost": {"input": 0.1, "output": 0.2, "currency": "USD"}}, (0.1 + 0.2, "USD"),
     0.1 + 0.2, 0.1 + 0.2),
    ({"cost": {"total": 0.4}}, (0.4, "USD"), 0.4, 0.4),
    # a currency-less cost object: ATIF counts it only with a total or a known source
    ({"cost": {"input": 0.1, "output": 0.2}}, (0.1 + 0.2, "USD"), 0.1 + 0.2, None),
    ({"cost": {"input": 0.1, "source": "provider_reported"}}, (0.1, "USD"), 0.1, 0.1),
    ({"cost": {"input": 0.1, "source": "model_pricing"}}, (0.1, "USD"), 0.1, 0.1),
    ({"cost": {"input": 0.1, "source": "guess"}}, (0.1, "USD"), 0.1, None),
    ({"prompt_tokens": 3}, None, None, None),
])
def test_cost_policies(usage, any_, usd, atif):
    data = {"usage": usage}
    found = N.cost(None, data, policy="any")
    assert ((found.total, found.currency) if found else None) == any_
    found = N.cost(None, data, policy="usd")
    assert (found.total if found else None) == usd
    found = N.cost(None, data, policy="atif")
    assert (found.total if found else None) == atif


def test_cost_from_the_normalized_response_first():
    resp = N.normalize_response(CHAT_RESPONSE)
    assert N.cost(resp, None) == N.Cost(0.25, "EUR")
    assert N.cost(resp, None, policy="usd") is None
    assert N.cost(resp, {"token_usage": {"cost_usd": 1.0}}, policy="usd") == N.Cost(1.0, "USD")
    with pytest.raises(ValueError, match="cost policy"):
        N.cost(resp, None, policy="eur")


# -- projections (expected values are the reference's output for the same payloads) ------

def _genai(name, request_, response, provider):
    req = N.normalize_request({"headers": {}, "content": request_}, name)
    resp = N.normalize_response(response)
    attrs = [("gen_ai.input.messages", N.json_text(N.genai_input_messages(req)))]
    instructions = N.genai_system_instructions(req)
    if instructions:
        attrs.insert(0, ("gen_ai.system_instructions", N.json_text(instructions)))
    attrs.append(("gen_ai.response.finish_reasons",
                  [N.genai_finish_reason(resp.finish_reason)]))
    attrs.append(("gen_ai.output.messages", N.json_text(N.genai_output_messages(resp))))
    usage = N.merged_usage(resp, None, provider=provider)
    for key, value in (("gen_ai.usage.input_tokens", usage.prompt_tokens),
                       ("gen_ai.usage.output_tokens", usage.completion_tokens),
                       ("gen_ai.usage.cache_read.input_tokens", usage.cache_read_tokens),
                       ("gen_ai.usage.cache_write.input_tokens", usage.cache_write_tokens)):
        if value is not None:
            attrs.append((key, str(value)))
    return attrs


def _openinference(name, request_, response):
    start = {"headers": {}, "content": request_}
    req = N.normalize_request(start, name)
    resp = N.normalize_response(response)
    usage = N.merged_usage(resp, response, provider=name)
    found = N.cost(resp, response, policy="usd")
    attrs = [*zip(("input.value", "input.mime_type"), N.llm_input_value(start)),
             *N.openinference_request_attributes(req),
             *zip(("output.value", "output.mime_type"), N.output_value(response)),
             *N.openinference_usage_attributes(usage, found.total if found else None),
             *N.openinference_response_attributes(resp)]
    return [(k, str(v) if isinstance(v, int) and not isinstance(v, bool) else v)
            for k, v in attrs]


@pytest.mark.parametrize(("codec", "name", "request_", "response", "expected", "provider"),
                         CASES)
def test_genai_messages_match_the_reference(codec, name, request_, response, expected,
                                            provider):
    assert _genai(name, request_, response, provider) == expected["gen_ai"]


@pytest.mark.parametrize(("codec", "name", "request_", "response", "expected", "provider"),
                         CASES)
def test_openinference_attributes_match_the_reference(codec, name, request_, response,
                                                      expected, provider):
    assert _openinference(name, request_, response) == expected["openinference"]


def test_genai_message_rules():
    req = AnthropicMessagesCodec().decode({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                      "content": "r1"}]}]})
    # a user message made only of tool results is a tool message
    assert N.genai_input_messages(req) == [{"role": "tool", "parts": [
        {"type": "tool_call_response", "id": "t1", "response": "r1"}]}]
    chat = OpenAIChatCodec().decode({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "not json"}}]}]})
    assert N.genai_input_messages(chat)[0]["parts"][0]["arguments"] == "not json"
    assert N.genai_system_instructions(chat) is None
    assert N.genai_output_messages(AnnotatedLLMResponse(id="x")) is None
    assert N.genai_output_messages(AnnotatedLLMResponse(message="hi")) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "hi"}],
         "finish_reason": "unknown"}]
    assert N.genai_tool_definitions(OpenAIChatCodec().decode(CHAT_REQUEST)) == [
        {"name": "f", "type": "function"}]
    assert N.genai_output_type(OpenAIChatCodec().decode(
        {"messages": [], "response_format": {"type": "json_object"}})) == "json"


def test_display_text():
    assert N.display_text({"choices": [{"message": {"content": None, "tool_calls": [
        {"function": {"name": "a"}}, {"function": {"name": "b"}}]}}]}) == "Requested tools: a, b"
    assert N.display_text({"summary": "  short  "}) == "short"
    assert N.display_text('{"text": "inner"}') == "inner"
    assert N.display_text([{"type": "thinking", "thinking": "x"}, {"type": "text", "text": "t"}]
                          ) == "t"
    assert N.display_text({"answer": 42}) is None
    assert N.output_value({"answer": 42}) == ('{"answer":42}', "application/json")
    assert N.llm_input_value({"headers": {"a": "b"}, "content": {"input": "x", "model": "m"}}) == (
        '{"content":{"input":"x","model":"m"}}', "application/json")
    assert N.llm_input_value(None) is None


# -- provider SDK objects -----------------------------------------------------------------

def test_openai_sdk_objects_decode_like_dicts():
    openai = pytest.importorskip("openai")
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    plain = copy.deepcopy(CHAT_RESPONSE)
    plain["usage"].pop("cost")  # not an SDK field
    typed = ChatCompletion.model_validate(plain)
    a, b = OpenAIChatCodec().decode_response(typed), OpenAIChatCodec().decode_response(plain)
    for field in ("id", "model", "message", "tool_calls", "finish_reason"):
        assert getattr(a, field) == getattr(b, field)
    assert a.usage["prompt_tokens"] == 10 and a.usage["cache_read_tokens"] == 3
    chunks = [ChatCompletionChunk.model_validate(c) for c in copy.deepcopy(CHAT_STREAM[:-1])]
    streamed = accumulate_stream(chunks).response()
    assert (streamed.message, streamed.tool_calls) == (b.message, b.tool_calls)

    from openai.types.responses import Response

    full = {**copy.deepcopy(RESPONSES_RESPONSE), "created_at": 1.0, "parallel_tool_calls": True,
            "tool_choice": "auto", "tools": []}
    full["usage"].pop("cost_usd")
    full["usage"]["output_tokens_details"] = {"reasoning_tokens": 0}
    full["usage"]["input_tokens_details"]["cache_write_tokens"] = 0
    full["output"][1]["status"] = "completed"
    full["output"][0]["status"] = "completed"
    typed = Response.model_validate(full)
    assert openai is not None
    a = OpenAIResponsesCodec().decode_response(typed)
    b = OpenAIResponsesCodec().decode_response(RESPONSES_RESPONSE)
    for field in ("id", "model", "message", "tool_calls", "finish_reason"):
        assert getattr(a, field) == getattr(b, field)


def test_anthropic_sdk_objects_decode_like_dicts():
    pytest.importorskip("anthropic")
    from anthropic.types import Message, RawMessageStreamEvent
    from pydantic import TypeAdapter

    typed = Message.model_validate(ANTHROPIC_RESPONSE)
    a = AnthropicMessagesCodec().decode_response(typed)
    b = AnthropicMessagesCodec().decode_response(ANTHROPIC_RESPONSE)
    for field in ("id", "model", "message", "tool_calls", "finish_reason", "usage"):
        assert getattr(a, field) == getattr(b, field)
    adapter = TypeAdapter(RawMessageStreamEvent)
    events = [adapter.validate_python(e) for e in ANTHROPIC_STREAM if e["type"] != "ping"]
    streamed = accumulate_stream(events).response()
    for field in ("id", "model", "message", "tool_calls", "finish_reason", "usage"):
        assert getattr(streamed, field) == getattr(b, field)


# -- the reference release, when installed ------------------------------------------------

@pytest.mark.parametrize(("codec", "name", "request_", "response", "expected", "provider"),
                         CASES)
def test_same_normalized_values_as_the_reference(codec, name, request_, response, expected,
                                                 provider):
    relay = pytest.importorskip("nemo_relay")
    from nemo_relay import codecs as relay_codecs

    theirs = getattr(relay_codecs, codec.__name__)()
    raw = relay.LLMRequest({}, copy.deepcopy(request_))
    ref_req, our_req = theirs.decode(raw), codec().decode(copy.deepcopy(request_))
    for field in ("messages", "instructions", "model", "params", "tools", "tool_choice",
                  "api_specific", "extra", "stream", "metadata", "reasoning"):
        assert getattr(ref_req, field) == getattr(our_req, field), field
    assert theirs.encode(ref_req, raw).content == codec().encode(our_req, request_).content
    ref_resp, our_resp = theirs.decode_response(response), codec().decode_response(response)
    for field in ("id", "model", "message", "tool_calls", "finish_reason", "usage",
                  "api_specific", "extra"):
        assert getattr(ref_resp, field) == getattr(our_resp, field), field


# -- odd input never raises ---------------------------------------------------------------

def _json_values():
    from hypothesis import strategies as st

    keys = st.sampled_from(["messages", "input", "instructions", "system", "content", "role",
                            "type", "text", "tool_calls", "function", "arguments", "name",
                            "choices", "message", "output", "usage", "token_usage",
                            "prompt_tokens", "input_tokens", "cost", "total", "currency",
                            "tool_use_id", "call_id", "stop_reason", "status", "model", "delta",
                            "index", "partial_json", "output_index"])
    leaves = st.none() | st.booleans() | st.integers(-3, 10**20) | st.floats(
        allow_nan=False) | st.text(max_size=5) | st.sampled_from(
        ["user", "assistant", "tool", "text", "message", "tool_use", "tool_result",
         "function_call", "function_call_output", "completed", "message_start",
         "content_block_delta", "response.output_text.delta", "{\"a\": 1}"])
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(keys, inner, max_size=5), max_leaves=25)


def test_odd_payloads_never_raise_from_the_normalization_functions():
    from hypothesis import given, settings

    @settings(max_examples=400, deadline=None)
    @given(_json_values(), _json_values(), _json_values())
    def check(start, end, chunk):
        for hint in ("openai", "anthropic"):
            req = N.normalize_request(start, hint, {"annotated_request": chunk})
            resp = N.normalize_response(end, {"annotated_response": chunk})
            N.normalize_request(start, hint)
            N.normalize_response(end)
            N.model_name(response=resp, end_data=end, request=req, start_data=start)
            usage = N.merged_usage(resp, end, provider=hint)
            for policy in ("any", "usd", "atif"):
                N.cost(resp, end, policy=policy)
            N.json_text(N.genai_input_messages(req))
            N.genai_system_instructions(req)
            N.genai_output_messages(resp)
            N.genai_tool_definitions(req)
            N.openinference_request_attributes(req)
            N.openinference_response_attributes(resp)
            N.openinference_usage_attributes(usage)
            N.llm_input_value(start)
            N.output_value(end)
        for api in (None, "openai_chat", "openai_responses", "anthropic_messages"):
            acc = StreamAccumulator(api)
            for item in (chunk, end, start, chunk):
                acc.add(item)
            acc.raw()
            acc.response()
        for codec in (OpenAIChatCodec(), OpenAIResponsesCodec(), AnthropicMessagesCodec()):
            with contextlib.suppress(ValueError, TypeError):
                codec.decode(start)
            with contextlib.suppress(ValueError, TypeError):
                codec.decode_response(end)

    check()


_ODD = [None, 1, "s", [], {}, ["x"], [None], [{"type": "text"}], [{"type": "tool_use"}],
        [{"type": "tool_result"}], {"a": 1}, [{"type": "provider_native", "value": "x"}], [1.5]]


@pytest.mark.parametrize("role", ["user", "assistant", "tool", "tool_call", "tool_result",
                                  "provider_native", "function", "system"])
def test_odd_annotated_values_never_raise(role):
    for field in ("content", "tool_calls", "name", "value", "kind", "output", "call_id",
                  "arguments", "tool_call_id"):
        for value in _ODD:
            annotated = {"messages": [{"role": role, field: value}],
                         "params": {"temperature": value},
                         "tools": [value] if isinstance(value, dict | str) else None}
            if field == "content":
                annotated["instructions"] = value
            req = N.normalize_request(None, None, {"annotated_request": annotated})
            assert req is not None
            N.json_text(N.genai_input_messages(req))
            N.genai_system_instructions(req)
            N.genai_tool_definitions(req)
            N.genai_output_type(req)
            N.openinference_request_attributes(req)
            N.reasoning_effort(req)
            req.system_prompt()
            req.last_user_message()
            req.has_tool_calls()
    for field in ("message", "tool_calls", "usage", "api_specific"):
        for value in [*_ODD, {"cost": "x"}, {"cost": {"total": "x"}}, {"prompt_tokens": 1.5}]:
            resp = N.normalize_response(None, {"annotated_response": {
                field: value, "finish_reason": "complete"}})
            if resp is None:
                continue
            N.genai_output_messages(resp)
            N.openinference_response_attributes(resp)
            N.openinference_usage_attributes(N.merged_usage(resp, {"usage": value}))
            N.cost(resp, {"usage": value})
            resp.response_text()


@pytest.mark.parametrize(("name", "start", "end", "expected", "full_cost"), [
    ("custom", {"prompt": "hello"},
     {"answer": "z", "token_usage": {"input": 4, "output": 2, "total": 1, "cacheRead": 1,
                                     "cost_usd": 0.3}},
     [("input.value", "hello"), ("input.mime_type", "text/plain"),
      ("output.value", '{"answer":"z","token_usage":{"cacheRead":1,"cost_usd":0.3,"input":4,'
                       '"output":2,"total":1}}'),
      ("output.mime_type", "application/json"), ("llm.token_count.prompt", 4),
      ("llm.token_count.completion", 2), ("llm.token_count.prompt_details.cache_read", 1),
      ("llm.cost.total", 0.3)], N.Cost(0.3, "USD")),
    ("claude-proxy", {"messages": [{"role": "user", "content": "hi"}]},
     {"text": "ok", "usage": {"input_tokens": 10, "output_tokens": 3,
                              "cache_read_input_tokens": 5, "total_tokens": 13,
                              "cost": {"total": 0.5, "currency": "EUR"}}},
     [("input.value", "user: hi"), ("input.mime_type", "text/plain"),
      ("llm.input_messages.0.message.role", "user"),
      ("llm.input_messages.0.message.content", "hi"),
      ("output.value", "ok"), ("output.mime_type", "text/plain"),
      ("llm.token_count.prompt", 15), ("llm.token_count.completion", 3),
      ("llm.token_count.total", 18), ("llm.token_count.prompt_details.cache_read", 5)],
     N.Cost(0.5, "EUR")),
])
def test_openinference_usage_from_raw_payloads(name, start, end, expected, full_cost):
    # the reference's openinference attributes for calls made without a codec
    data = {"headers": {}, "content": start}
    req = N.normalize_request(data, name)
    resp = N.normalize_response(end)
    assert resp is None
    found = N.cost(resp, end, policy="usd")
    attrs = [*zip(("input.value", "input.mime_type"), N.llm_input_value(data)),
             *N.openinference_request_attributes(req),
             *zip(("output.value", "output.mime_type"), N.output_value(end)),
             *N.openinference_usage_attributes(N.merged_usage(resp, end, provider=name),
                                               found.total if found else None)]
    assert attrs == expected
    assert N.cost(resp, end, policy="any") == full_cost
