"""OpenAI Responses: requests, responses and stream events."""

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
)
from ._types import (
    FINISH_COMPLETE,
    FINISH_CONTENT_FILTER,
    FINISH_LENGTH,
    AnnotatedLLMRequest,
    AnnotatedLLMResponse,
    sorted_json,
)

__all__ = ["OpenAIResponsesCodec"]

API = "openai_responses"
_API_FIELDS = ("text", "prompt", "background", "conversation", "prompt_cache_key",
               "safety_identifier")
_TOP_FIELDS = ("stream", "metadata", "user", "store", "service_tier", "parallel_tool_calls",
               "reasoning", "include", "max_output_tokens", "max_tool_calls",
               "previous_response_id", "top_logprobs", "truncation")
_MODELED = {"input", "instructions", "model", "temperature", "top_p", "tools", "tool_choice",
            *_API_FIELDS, *_TOP_FIELDS}
_ROLES = ("user", "system", "developer", "assistant")
_PART_KINDS = {"input_image": "image", "input_file": "file", "input_audio": "audio"}
_PART_KINDS_BACK = {v: k for k, v in _PART_KINDS.items()}


def _decode_part(part: Any) -> Any:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        return sorted_json(part)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind in _PART_KINDS:
        name = _PART_KINDS[kind]
        return {"type": name, name: sorted_json({k: v for k, v in part.items() if k != "type"})}
    return native(API, kind, part)


def _encode_part(part: Any, role: Any) -> Any:
    if not isinstance(part, dict):
        return part
    kind = part.get("type")
    if kind == "text":
        return {"type": "output_text" if role == "assistant" else "input_text",
                "text": part.get("text", "")}
    if kind in _PART_KINDS_BACK:
        return {"type": _PART_KINDS_BACK[kind], **copy.deepcopy(part.get(kind) or {})}
    if kind == "provider_native":
        return copy.deepcopy(part.get("value"))
    return copy.deepcopy(part)


def _decode_item(item: Any) -> dict:
    if isinstance(item, dict):
        kind = item.get("type")
        role = item.get("role")
        if role in _ROLES and kind in (None, "message") and set(item) <= {
                "type", "role", "content"} and "content" in item:
            content = item["content"]
            if isinstance(content, list):
                content = [_decode_part(p) for p in content]
            return {"role": role, "content": content}
        if kind == "function_call" and set(item) <= {
                "type", "call_id", "name", "arguments", "id", "status"}:
            return {"role": "tool_call", "call_id": item.get("call_id", ""),
                    "name": item.get("name", ""),
                    "arguments": parse_arguments(item.get("arguments", "{}"))}
        if kind == "function_call_output" and set(item) <= {
                "type", "call_id", "output", "id", "status"}:
            return {"role": "tool_result", "call_id": item.get("call_id", ""),
                    "output": sorted_json(item.get("output"))}
        return native(API, kind if kind is not None else role, item, tag="role")
    return native(API, None, item, tag="role")


def _encode_item(message: dict) -> Any:
    role = message.get("role")
    if role == "provider_native":
        return copy.deepcopy(message.get("value"))
    if role == "tool_call":
        return {"type": "function_call", "call_id": message.get("call_id", ""),
                "name": message.get("name", ""),
                "arguments": arguments_text(message.get("arguments", {}))}
    if role == "tool_result":
        return {"type": "function_call_output", "call_id": message.get("call_id", ""),
                "output": copy.deepcopy(message.get("output"))}
    if role == "tool":  # a chat-style tool result: the closest Responses form
        return {"type": "function_call_output", "call_id": message.get("tool_call_id", ""),
                "output": copy.deepcopy(message.get("content"))}
    content = message.get("content")
    if isinstance(content, list):
        content = [_encode_part(p, role) for p in content]
    return {"role": role, "content": copy.deepcopy(content)}


def _decode_tool(tool: Any) -> Any:
    if isinstance(tool, dict) and tool.get("type") == "function":
        fn: dict[str, Any] = {"name": tool.get("name", "")}
        for key in ("description", "parameters"):
            if tool.get(key) is not None:
                fn[key] = sorted_json(tool[key])
        for key in sorted(tool):
            if key not in ("type", "name", "description", "parameters"):
                fn[key] = sorted_json(tool[key])
        return {"type": "function", "function": fn}
    return native(API, tool.get("type") if isinstance(tool, dict) else None, tool)


def _encode_tool(tool: Any) -> Any:
    if not isinstance(tool, dict):
        return tool
    if tool.get("type") == "provider_native":
        return copy.deepcopy(tool.get("value"))
    fn = tool.get("function")
    if isinstance(fn, dict):
        return {"type": "function", **copy.deepcopy(fn)}
    return copy.deepcopy(tool)


def _decode_tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(
            choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    return sorted_json(choice)


def _encode_tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(
            choice.get("function"), dict):
        return {"type": "function", "name": choice["function"].get("name", "")}
    return copy.deepcopy(choice)


def _output_text(content: Any) -> list[str]:
    if not isinstance(content, list):
        return []
    return [p["text"] for p in content if isinstance(p, dict)
            and p.get("type") in ("output_text", "text") and isinstance(p.get("text"), str)]


class OpenAIResponsesCodec:
    """Codec for OpenAI Responses requests and responses."""

    api = API

    def decode(self, request) -> AnnotatedLLMRequest:
        """Decode a Responses request into an ``AnnotatedLLMRequest``."""
        _headers, content = request_parts(request)
        raw_input = content.get("input")
        if isinstance(raw_input, str):
            messages = [{"role": "user", "content": raw_input}]
        elif isinstance(raw_input, list):
            messages = [_decode_item(i) for i in raw_input]
        elif raw_input is None:
            messages = []
        else:
            raise ValueError("OpenAI Responses input must be a string or a list")
        instructions = content.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise ValueError("OpenAI Responses instructions must be a string or null")
        params: dict[str, Any] = {}
        if content.get("temperature") is not None:
            params["temperature"] = content["temperature"]
        if content.get("max_output_tokens") is not None:
            params["max_tokens"] = content["max_output_tokens"]
        if content.get("top_p") is not None:
            params["top_p"] = content["top_p"]
        api_specific: dict[str, Any] = {"api": API}
        for key in _API_FIELDS:
            if content.get(key) is not None:
                api_specific[key] = sorted_json(content[key])
        tools = content.get("tools")
        choice = content.get("tool_choice")
        return AnnotatedLLMRequest(
            messages, instructions=instructions, model=content.get("model"),
            params=params or None,
            tools=[_decode_tool(t) for t in tools] if isinstance(tools, list) else None,
            tool_choice=_decode_tool_choice(choice) if choice is not None else None,
            api_specific=api_specific,
            extra={k: sorted_json(v) for k, v in content.items() if k not in _MODELED},
            **{k: sorted_json(content[k]) for k in _TOP_FIELDS if content.get(k) is not None})

    def encode(self, annotated: AnnotatedLLMRequest, original=None):
        """Merge ``annotated`` into ``original`` (or a new body); returns an ``LLMRequest``."""
        params = annotated.params or {}
        if params.get("stop"):
            raise ValueError("OpenAI Responses does not support stop sequences")
        headers, body = request_parts(original) if original is not None else ({}, {})
        content = copy.deepcopy(body)
        was_text = isinstance(content.get("input"), str)
        items = [_encode_item(m) for m in annotated.messages]
        if was_text and len(items) == 1 and items[0].get("role") == "user" and isinstance(
                items[0].get("content"), str):
            content["input"] = items[0]["content"]
        else:
            before = content.get("input")
            if isinstance(before, list) and len(before) == len(items):
                # keep the explicit ``"type": "message"`` an item was sent with
                for item, prev in zip(items, before):
                    if isinstance(prev, dict) and prev.get("type") == "message" and "role" in item:
                        item["type"] = "message"
            content["input"] = items
        set_or_pop(content, "instructions", annotated.instructions)
        set_or_pop(content, "model", annotated.model)
        set_or_pop(content, "temperature", params.get("temperature"))
        set_or_pop(content, "top_p", params.get("top_p"))
        max_tokens = params.get("max_tokens")
        if max_tokens is None:
            max_tokens = annotated.max_output_tokens
        set_or_pop(content, "max_output_tokens", max_tokens)
        set_or_pop(content, "tools", [_encode_tool(t) for t in annotated.tools]
                   if annotated.tools is not None else None)
        set_or_pop(content, "tool_choice", _encode_tool_choice(annotated.tool_choice)
                   if annotated.tool_choice is not None else None)
        return LLMRequest(headers, carry_over(content, annotated, _TOP_FIELDS,
                                              skip=("max_output_tokens",)))

    def decode_response(self, response) -> AnnotatedLLMResponse:
        """Decode a Responses API response (dict or SDK object)."""
        response = as_mapping(response)
        if not isinstance(response, dict):
            raise ValueError("OpenAI Responses response must be an object")
        output = response.get("output")
        texts: list[str] = []
        tool_calls = []
        if isinstance(output, list):
            for item in output:
                if not isinstance(item, dict):
                    continue
                if item.get("type") == "message":
                    texts.extend(_output_text(item.get("content")))
                elif item.get("type") == "function_call":
                    tool_calls.append({
                        "id": item.get("call_id") or item.get("id") or "",
                        "name": item.get("name") or "",
                        "arguments": parse_arguments(item.get("arguments") or "{}")})
        message = "\n".join(texts) if texts else None
        if message is None and isinstance(response.get("output_text"), str):
            message = response["output_text"]
        status = response.get("status")
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        finish: str | None
        if status == "completed":
            finish = FINISH_COMPLETE
        elif status == "incomplete" and reason == "max_output_tokens":
            finish = FINISH_LENGTH
        elif status == "incomplete" and reason == "content_filter":
            finish = FINISH_CONTENT_FILTER
        elif status == "incomplete" and isinstance(reason, str):
            finish = reason
        else:
            finish = status if isinstance(status, str) else None
        usage = obj(response.get("usage"))
        in_details = usage.get("input_tokens_details")
        cache_read = count(in_details.get("cached_tokens")) if isinstance(
            in_details, dict) else None
        prompt = count(usage.get("input_tokens"))
        api_specific: dict[str, Any] = {"api": API}
        if isinstance(output, list):
            api_specific["output_items"] = sorted_json(output)
        for key in ("status", "incomplete_details", "previous_response_id", "store",
                    "service_tier", "truncation", "reasoning"):
            if response.get(key) is not None:
                api_specific[key] = sorted_json(response[key])
        for key in ("input_tokens_details", "output_tokens_details"):
            if usage.get(key) is not None:
                api_specific[key] = sorted_json(usage[key])
        known = {"id", "model", "output", "usage", "status", "incomplete_details",
                 "previous_response_id", "store", "service_tier", "truncation", "reasoning"}
        return AnnotatedLLMResponse(
            id=response.get("id") if isinstance(response.get("id"), str) else None,
            model=response.get("model") if isinstance(response.get("model"), str) else None,
            message=message, tool_calls=tool_calls or None, finish_reason=finish,
            usage=build_usage(
                prompt, usage.get("output_tokens"), usage.get("total_tokens"), cache_read, None,
                prompt - cache_read if prompt is not None and cache_read is not None
                and prompt >= cache_read else None, provider_cost(usage)),
            api_specific=api_specific,
            extra={k: sorted_json(v) for k, v in response.items()
                   if k not in known and v is not None})
