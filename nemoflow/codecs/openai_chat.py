"""OpenAI Chat Completions: requests, responses and streamed chunks."""

from __future__ import annotations

import copy
from typing import Any

from .._managed import LLMRequest
from ._common import (
    arguments_text,
    as_mapping,
    build_usage,
    carry_over,
    count,
    native,
    obj,
    parse_arguments,
    provider_cost,
    request_parts,
    set_or_pop,
    text_of_parts,
)
from ._types import (
    FINISH_COMPLETE,
    FINISH_CONTENT_FILTER,
    FINISH_LENGTH,
    FINISH_TOOL_USE,
    AnnotatedLLMRequest,
    AnnotatedLLMResponse,
    sorted_json,
)

__all__ = ["OpenAIChatCodec"]

API = "openai_chat"
_API_FIELDS = ("frequency_penalty", "presence_penalty", "n", "seed", "response_format",
               "reasoning_effort", "logit_bias", "logprobs", "modalities", "audio", "prediction",
               "stream_options", "web_search_options", "verbosity", "prompt_cache_key",
               "safety_identifier")
_TOP_FIELDS = ("stream", "metadata", "user", "store", "service_tier", "parallel_tool_calls",
               "top_logprobs")
_MODELED = {"messages", "model", "temperature", "max_tokens", "max_completion_tokens", "top_p",
            "stop", "tools", "tool_choice", *_API_FIELDS, *_TOP_FIELDS}
_MESSAGE_KEYS = {
    "system": {"role", "content", "name"},
    "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls"},
    "tool": {"role", "content", "tool_call_id"},
    "function": {"role", "content", "name"},
}
_PART_KINDS = {"image_url": "image_url", "input_audio": "audio", "file": "file"}
_PART_KINDS_BACK = {v: k for k, v in _PART_KINDS.items()}
_FINISH = {"stop": FINISH_COMPLETE, "length": FINISH_LENGTH, "tool_calls": FINISH_TOOL_USE,
           "function_call": FINISH_TOOL_USE, "content_filter": FINISH_CONTENT_FILTER}


def _decode_part(part: Any) -> Any:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        return sorted_json(part)
    kind = part.get("type")
    if kind == "text" and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind in _PART_KINDS and set(part) == {"type", kind}:
        name = _PART_KINDS[kind]
        return {"type": name, name: sorted_json(part[kind])}
    return native(API, kind, part)


def _encode_part(part: Any) -> Any:
    if not isinstance(part, dict):
        return part
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "text": part.get("text", "")}
    if kind in _PART_KINDS_BACK:
        raw = _PART_KINDS_BACK[kind]
        return {"type": raw, raw: copy.deepcopy(part.get(kind))}
    if kind == "provider_native":
        return copy.deepcopy(part.get("value"))
    return copy.deepcopy(part)


def _decode_content(content: Any) -> Any:
    if isinstance(content, list):
        return [_decode_part(p) for p in content]
    return content


def _encode_content(content: Any) -> Any:
    if isinstance(content, list):
        return [_encode_part(p) for p in content]
    return content


def _decode_message(message: Any) -> dict:
    if not isinstance(message, dict):
        raise ValueError("OpenAI Chat message must be an object")
    role = message.get("role")
    keys = _MESSAGE_KEYS.get(role) if isinstance(role, str) else None
    if keys is None or not set(message) <= keys:
        return native(API, role, message, tag="role")
    out: dict[str, Any] = {"role": role}
    content = message.get("content")
    if content is None and role != "assistant":
        raise ValueError("OpenAI Chat message is missing content")
    if content is not None:
        out["content"] = _decode_content(content)
    if isinstance(message.get("name"), str):
        out["name"] = message["name"]
    if role == "assistant" and message.get("tool_calls"):
        calls = []
        for call in message["tool_calls"]:
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("arguments"), str):
                raise ValueError("OpenAI Chat function tool call is missing arguments")
            calls.append({"id": call.get("id", ""), "type": call.get("type", "function"),
                          "function": {"name": fn.get("name", ""),
                                       "arguments": fn["arguments"]}})
        out["tool_calls"] = calls
    if role == "tool":
        out["tool_call_id"] = message.get("tool_call_id", "")
    return out


def _encode_message(message: dict) -> Any:
    role = message.get("role")
    if role == "provider_native":
        return copy.deepcopy(message.get("value"))
    if role == "tool_call":  # a Responses-style call: the closest chat form
        return {"role": "assistant", "tool_calls": [{
            "id": message.get("call_id", ""), "type": "function",
            "function": {"name": message.get("name", ""),
                         "arguments": arguments_text(message.get("arguments", {}))}}]}
    if role == "tool_result":
        return {"role": "tool", "tool_call_id": message.get("call_id", ""),
                "content": copy.deepcopy(message.get("output"))}
    out: dict[str, Any] = {"role": role}
    if "content" in message:
        out["content"] = _encode_content(message["content"])
    for key in ("name", "tool_call_id"):
        if key in message:
            out[key] = message[key]
    if message.get("tool_calls"):
        out["tool_calls"] = copy.deepcopy(message["tool_calls"])
    return out


def _decode_tool(tool: Any) -> Any:
    if isinstance(tool, dict) and tool.get("type", "function") == "function" and isinstance(
            tool.get("function"), dict) and set(tool) <= {"type", "function"}:
        fn = tool["function"]
        out_fn: dict[str, Any] = {"name": fn.get("name", "")}
        for key in ("description", "parameters"):
            if fn.get(key) is not None:
                out_fn[key] = sorted_json(fn[key])
        for key in sorted(fn):
            if key not in ("name", "description", "parameters"):
                out_fn[key] = sorted_json(fn[key])
        return {"type": "function", "function": out_fn}
    return native(API, tool.get("type") if isinstance(tool, dict) else None, tool)


def _encode_tool(tool: Any) -> Any:
    if isinstance(tool, dict) and tool.get("type") == "provider_native":
        return copy.deepcopy(tool.get("value"))
    return copy.deepcopy(tool)


class OpenAIChatCodec:
    """Codec for OpenAI Chat Completions requests and responses."""

    api = API

    def decode(self, request) -> AnnotatedLLMRequest:
        """Decode a Chat Completions request into an ``AnnotatedLLMRequest``."""
        _headers, content = request_parts(request)
        messages = content.get("messages")
        if not isinstance(messages, list):
            raise ValueError("OpenAI Chat request is missing messages")
        params: dict[str, Any] = {}
        if content.get("temperature") is not None:
            params["temperature"] = content["temperature"]
        max_tokens = content.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = content.get("max_tokens")
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        if content.get("top_p") is not None:
            params["top_p"] = content["top_p"]
        stop = content.get("stop")
        if stop is not None:
            params["stop"] = [stop] if isinstance(stop, str) else list(stop)
        api_specific: dict[str, Any] = {"api": API}
        for key in _API_FIELDS:
            if content.get(key) is not None:
                api_specific[key] = sorted_json(content[key])
        tools = content.get("tools")
        tool_choice = content.get("tool_choice")
        return AnnotatedLLMRequest(
            [_decode_message(m) for m in messages],
            model=content.get("model"), params=params or None,
            tools=[_decode_tool(t) for t in tools] if isinstance(tools, list) else None,
            tool_choice=sorted_json(tool_choice) if tool_choice is not None else None,
            api_specific=api_specific,
            extra={k: sorted_json(v) for k, v in content.items() if k not in _MODELED},
            **{k: sorted_json(content[k]) for k in _TOP_FIELDS if content.get(k) is not None})

    def encode(self, annotated: AnnotatedLLMRequest, original=None):
        """Merge ``annotated`` into ``original`` (or a new body); returns an ``LLMRequest``."""
        headers, body = request_parts(original) if original is not None else ({}, {})
        content = copy.deepcopy(body)
        content["messages"] = [_encode_message(m) for m in annotated.messages]
        set_or_pop(content, "model", annotated.model)
        params = annotated.params or {}
        set_or_pop(content, "temperature", params.get("temperature"))
        set_or_pop(content, "top_p", params.get("top_p"))
        key = "max_completion_tokens" if "max_completion_tokens" in content else "max_tokens"
        set_or_pop(content, key, params.get("max_tokens"))
        stop = params.get("stop")
        if not (isinstance(content.get("stop"), str) and stop == [content["stop"]]):
            set_or_pop(content, "stop", stop)
        set_or_pop(content, "tools", [_encode_tool(t) for t in annotated.tools]
                   if annotated.tools is not None else None)
        set_or_pop(content, "tool_choice", annotated.tool_choice)
        return LLMRequest(headers, carry_over(content, annotated, _TOP_FIELDS))

    def decode_response(self, response) -> AnnotatedLLMResponse:
        """Decode a Chat Completions response (dict or SDK object)."""
        response = as_mapping(response)
        if not isinstance(response, dict):
            raise ValueError("OpenAI Chat response must be an object")
        choices = response.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else {}
        choice = obj(choice)
        message = obj(choice.get("message"))
        content = message.get("content")
        if isinstance(content, list):
            content = text_of_parts(content)
        tool_calls = []
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                tool_calls.append({"id": call.get("id") or "", "name": fn.get("name") or "",
                                   "arguments": parse_arguments(fn.get("arguments") or "{}")})
        raw_reason = choice.get("finish_reason")
        usage = obj(response.get("usage"))
        details = usage.get("prompt_tokens_details")
        cache_read = count(details.get("cached_tokens")) if isinstance(details, dict) else None
        prompt = count(usage.get("prompt_tokens"))
        api_specific: dict[str, Any] = {"api": API}
        if choice.get("logprobs") is not None:
            api_specific["logprobs"] = sorted_json(choice["logprobs"])
        for key in ("system_fingerprint", "service_tier"):
            if isinstance(response.get(key), str):
                api_specific[key] = response[key]
        known = {"id", "model", "choices", "usage", "system_fingerprint", "service_tier"}
        return AnnotatedLLMResponse(
            id=response.get("id") if isinstance(response.get("id"), str) else None,
            model=response.get("model") if isinstance(response.get("model"), str) else None,
            message=content if isinstance(content, str) else None,
            tool_calls=tool_calls or None,
            finish_reason=_FINISH.get(raw_reason, raw_reason)
            if isinstance(raw_reason, str) else None,
            usage=build_usage(
                prompt, usage.get("completion_tokens"), usage.get("total_tokens"), cache_read,
                None, prompt - cache_read if prompt is not None and cache_read is not None
                and prompt >= cache_read else None, provider_cost(usage)),
            api_specific=api_specific,
            extra={k: sorted_json(v) for k, v in response.items() if k not in known})
