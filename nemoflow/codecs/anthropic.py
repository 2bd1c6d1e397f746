"""Anthropic Messages: requests, responses and stream events."""

from __future__ import annotations

import copy
from typing import Any

from .._managed import LLMRequest
from ._common import (
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
    FINISH_LENGTH,
    FINISH_TOOL_USE,
    AnnotatedLLMRequest,
    AnnotatedLLMResponse,
    sorted_json,
)

__all__ = ["AnthropicMessagesCodec"]

API = "anthropic_messages"
_API_FIELDS = ("top_k", "thinking", "container", "mcp_servers", "context_management")
_TOP_FIELDS = ("stream", "metadata", "service_tier")
_MODELED = {"messages", "system", "model", "temperature", "max_tokens", "top_p",
            "stop_sequences", "tools", "tool_choice", *_API_FIELDS, *_TOP_FIELDS}
_PART_KINDS = {"image": "image", "document": "file"}
_PART_KINDS_BACK = {v: k for k, v in _PART_KINDS.items()}
_FINISH = {"end_turn": FINISH_COMPLETE, "max_tokens": FINISH_LENGTH,
           "tool_use": FINISH_TOOL_USE}
_CHOICE = {"auto": "auto", "any": "required", "none": "none"}
_CHOICE_BACK = {v: k for k, v in _CHOICE.items()}


def _decode_block(block: Any) -> Any:
    if isinstance(block, str):
        return {"type": "text", "text": block}
    if not isinstance(block, dict):
        return sorted_json(block)
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        out = {"type": "text", "text": block["text"]}
        out.update(sorted_json({k: v for k, v in block.items() if k not in ("type", "text")}))
        return out
    if kind in _PART_KINDS:
        name = _PART_KINDS[kind]
        return {"type": name, name: sorted_json({k: v for k, v in block.items() if k != "type"})}
    if kind in ("tool_use", "tool_result"):
        return sorted_json(block)
    return native(API, kind, block)


def _encode_block(block: Any) -> Any:
    if not isinstance(block, dict):
        return block
    kind = block.get("type")
    if kind in _PART_KINDS_BACK:
        return {"type": _PART_KINDS_BACK[kind], **copy.deepcopy(block.get(kind) or {})}
    if kind == "provider_native":
        return copy.deepcopy(block.get("value"))
    return copy.deepcopy(block)


def _decode_message(message: Any) -> dict:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ValueError("Anthropic message must be an object with a role")
    content = message.get("content")
    if content is None:
        raise ValueError("Anthropic message is missing content")
    if isinstance(content, list):
        content = [_decode_block(b) for b in content]
    return {"role": message["role"], "content": content}


def _encode_message(message: dict) -> Any:
    role = message.get("role")
    if role == "provider_native":
        return copy.deepcopy(message.get("value"))
    if role == "tool_call":
        return {"role": "assistant", "content": [{
            "type": "tool_use", "id": message.get("call_id", ""),
            "name": message.get("name", ""),
            "input": parse_arguments(message.get("arguments", {}))}]}
    if role in ("tool_result", "tool"):
        call_id = message.get("call_id", message.get("tool_call_id", ""))
        output = message.get("output", message.get("content"))
        return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id,
                                             "content": copy.deepcopy(output)}]}
    content = message.get("content")
    if isinstance(content, list):
        content = [_encode_block(b) for b in content]
    return {"role": role, "content": copy.deepcopy(content)}


def _decode_tool(tool: Any) -> Any:
    if isinstance(tool, dict) and tool.get("type") in (None, "custom") and isinstance(
            tool.get("name"), str):
        fn: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description") is not None:
            fn["description"] = tool["description"]
        if tool.get("input_schema") is not None:
            fn["parameters"] = sorted_json(tool["input_schema"])
        out: dict[str, Any] = {"type": "function", "function": fn}
        out.update(sorted_json({k: v for k, v in tool.items()
                                if k not in ("type", "name", "description", "input_schema")}))
        return out
    return native(API, tool.get("type") if isinstance(tool, dict) else None, tool)


def _encode_tool(tool: Any) -> Any:
    if not isinstance(tool, dict):
        return tool
    if tool.get("type") == "provider_native":
        return copy.deepcopy(tool.get("value"))
    fn = tool.get("function")
    if not isinstance(fn, dict):
        return copy.deepcopy(tool)
    out: dict[str, Any] = {"name": fn.get("name", "")}
    if fn.get("description") is not None:
        out["description"] = fn["description"]
    out["input_schema"] = copy.deepcopy(fn.get("parameters") or {"type": "object"})
    out.update(copy.deepcopy({k: v for k, v in tool.items() if k not in ("type", "function")}))
    return out


def _decode_tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind in _CHOICE and set(choice) == {"type"}:
            return _CHOICE[kind]
        if kind == "tool" and isinstance(choice.get("name"), str) and set(choice) == {
                "type", "name"}:
            return {"type": "function", "function": {"name": choice["name"]}}
    return sorted_json(choice)


def _encode_tool_choice(choice: Any) -> Any:
    if isinstance(choice, str) and choice in _CHOICE_BACK:
        return {"type": _CHOICE_BACK[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(
            choice.get("function"), dict):
        return {"type": "tool", "name": choice["function"].get("name", "")}
    return copy.deepcopy(choice)


class AnthropicMessagesCodec:
    """Codec for Anthropic Messages requests and responses."""

    api = API

    def decode(self, request) -> AnnotatedLLMRequest:
        """Decode a Messages request into an ``AnnotatedLLMRequest``."""
        _headers, content = request_parts(request)
        messages = content.get("messages")
        if not isinstance(messages, list):
            raise ValueError("Anthropic request is missing messages")
        params: dict[str, Any] = {}
        for src, dst in (("temperature", "temperature"), ("max_tokens", "max_tokens"),
                         ("top_p", "top_p"), ("stop_sequences", "stop")):
            if content.get(src) is not None:
                params[dst] = content[src]
        api_specific: dict[str, Any] = {"api": API}
        for key in _API_FIELDS:
            if content.get(key) is not None:
                api_specific[key] = sorted_json(content[key])
        tools = content.get("tools")
        choice = content.get("tool_choice")
        system = content.get("system")
        return AnnotatedLLMRequest(
            [_decode_message(m) for m in messages],
            instructions=sorted_json(system) if system is not None else None,
            model=content.get("model"), params=params or None,
            tools=[_decode_tool(t) for t in tools] if isinstance(tools, list) else None,
            tool_choice=_decode_tool_choice(choice) if choice is not None else None,
            api_specific=api_specific,
            extra={k: sorted_json(v) for k, v in content.items() if k not in _MODELED},
            **{k: sorted_json(content[k]) for k in _TOP_FIELDS if content.get(k) is not None})

    def encode(self, annotated: AnnotatedLLMRequest, original=None):
        """Merge ``annotated`` into ``original`` (or a new body); returns an ``LLMRequest``."""
        headers, body = request_parts(original) if original is not None else ({}, {})
        content = copy.deepcopy(body)
        content["messages"] = [_encode_message(m) for m in annotated.messages]
        set_or_pop(content, "system", annotated.instructions)
        set_or_pop(content, "model", annotated.model)
        params = annotated.params or {}
        set_or_pop(content, "temperature", params.get("temperature"))
        set_or_pop(content, "max_tokens", params.get("max_tokens"))
        set_or_pop(content, "top_p", params.get("top_p"))
        set_or_pop(content, "stop_sequences", params.get("stop"))
        set_or_pop(content, "tools", [_encode_tool(t) for t in annotated.tools]
                   if annotated.tools is not None else None)
        set_or_pop(content, "tool_choice", _encode_tool_choice(annotated.tool_choice)
                   if annotated.tool_choice is not None else None)
        return LLMRequest(headers, carry_over(content, annotated, _TOP_FIELDS))

    def decode_response(self, response) -> AnnotatedLLMResponse:
        """Decode a Messages API response (dict or SDK object)."""
        response = as_mapping(response)
        if not isinstance(response, dict):
            raise ValueError("Anthropic response must be an object")
        blocks = response.get("content")
        texts: list[str] = []
        tool_calls = []
        if isinstance(blocks, list):
            for block in blocks:
                if not isinstance(block, dict):
                    continue
                if block.get("type") == "text" and isinstance(block.get("text"), str):
                    texts.append(block["text"])
                elif block.get("type") == "tool_use":
                    tool_calls.append({"id": block.get("id") or "",
                                       "name": block.get("name") or "",
                                       "arguments": sorted_json(block.get("input", {}))})
        reason = response.get("stop_reason")
        usage = obj(response.get("usage"))
        prompt = count(usage.get("input_tokens"))
        completion = count(usage.get("output_tokens"))
        api_specific: dict[str, Any] = {"api": API}
        for src, dst in (("type", "object_type"), ("role", "role"),
                         ("stop_reason", "stop_reason"), ("stop_sequence", "stop_sequence"),
                         ("service_tier", "service_tier"), ("container", "container")):
            if response.get(src) is not None:
                api_specific[dst] = sorted_json(response[src])
        if isinstance(blocks, list):
            api_specific["content_blocks"] = sorted_json(blocks)
        known = {"id", "model", "content", "usage", "type", "role", "stop_reason",
                 "stop_sequence", "service_tier", "container"}
        return AnnotatedLLMResponse(
            id=response.get("id") if isinstance(response.get("id"), str) else None,
            model=response.get("model") if isinstance(response.get("model"), str) else None,
            message="\n".join(texts) if texts else None, tool_calls=tool_calls or None,
            finish_reason=_FINISH.get(reason, reason) if isinstance(reason, str) else None,
            usage=build_usage(
                prompt, completion,
                prompt + completion if prompt is not None and completion is not None else None,
                usage.get("cache_read_input_tokens"), usage.get("cache_creation_input_tokens"),
                prompt, provider_cost(usage)),
            api_specific=api_specific,
            extra={k: sorted_json(v) for k, v in response.items()
                   if k not in known and v is not None})
