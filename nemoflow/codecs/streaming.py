"""Fold streamed chunks into the response a non-streamed call returns.

``StreamAccumulator`` rebuilds the provider's own non-streamed response body from its stream
(OpenAI Chat deltas, OpenAI Responses events, Anthropic Messages events), so ``raw()`` can be
recorded as the end event's data and ``response()`` decodes exactly like the non-streamed call.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

from ._common import as_mapping
from ._types import AnnotatedLLMResponse
from .normalize import codec_for

__all__ = ["StreamAccumulator", "accumulate_stream"]


def _detect(chunk: dict) -> str | None:
    kind = chunk.get("type")
    if isinstance(kind, str):
        if kind.startswith("response."):
            return "openai_responses"
        if kind.startswith(("message_", "content_block_")) or kind == "ping":
            return "anthropic_messages"
    if chunk.get("object") == "chat.completion.chunk" or isinstance(chunk.get("choices"), list):
        return "openai_chat"
    return None


class StreamAccumulator:
    """Collects the chunks of one streamed call; ``raw()`` / ``response()`` give the result."""

    def __init__(self, api: str | None = None):
        self.api = api
        self.chunks = 0
        # chat
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict] = {}
        self._usage: Any = None
        # responses
        self._final: dict | None = None
        self._items: dict[int, dict] = {}
        # anthropic
        self._message: dict[str, Any] = {}
        self._blocks: dict[int, dict] = {}
        self._partial_json: dict[int, str] = {}

    def add(self, chunk) -> None:
        """Fold one chunk (a dict or a provider SDK event object) into the result."""
        chunk = as_mapping(chunk)
        if not isinstance(chunk, dict):
            return
        if self.api is None:
            self.api = _detect(chunk)
        self.chunks += 1
        if self.api == "openai_chat":
            self._add_chat(chunk)
        elif self.api == "openai_responses":
            self._add_responses(chunk)
        elif self.api == "anthropic_messages":
            self._add_anthropic(chunk)

    # -- OpenAI Chat ----------------------------------------------------------------------
    def _add_chat(self, chunk: dict) -> None:
        for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if chunk.get(key) is not None:
                self._head[key] = chunk[key]
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            acc = self._choices.setdefault(index, {"index": index, "role": None, "content": None,
                                                   "refusal": None, "tool_calls": {},
                                                   "finish_reason": None, "logprobs": None})
            delta = choice.get("delta") or {}
            if delta.get("role"):
                acc["role"] = delta["role"]
            for key in ("content", "refusal"):
                if isinstance(delta.get(key), str):
                    acc[key] = (acc[key] or "") + delta[key]
            for call in delta.get("tool_calls") or ():
                slot = acc["tool_calls"].setdefault(call.get("index", 0), {
                    "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                if call.get("id"):
                    slot["id"] = call["id"]
                if call.get("type"):
                    slot["type"] = call["type"]
                fn = call.get("function") or {}
                if fn.get("name"):
                    slot["function"]["name"] += fn["name"]
                if fn.get("arguments"):
                    slot["function"]["arguments"] += fn["arguments"]
            if choice.get("finish_reason") is not None:
                acc["finish_reason"] = choice["finish_reason"]
            if choice.get("logprobs") is not None:
                acc["logprobs"] = choice["logprobs"]

    def _raw_chat(self) -> dict:
        out: dict[str, Any] = {}
        if "id" in self._head:
            out["id"] = self._head["id"]
        out["object"] = "chat.completion"
        for key in ("created", "model", "system_fingerprint", "service_tier"):
            if key in self._head:
                out[key] = self._head[key]
        choices = []
        for index in sorted(self._choices):
            acc = self._choices[index]
            message: dict[str, Any] = {"role": acc["role"] or "assistant",
                                       "content": acc["content"]}
            if acc["refusal"] is not None:
                message["refusal"] = acc["refusal"]
            if acc["tool_calls"]:
                message["tool_calls"] = [acc["tool_calls"][i] for i in sorted(acc["tool_calls"])]
            choice: dict[str, Any] = {"index": index, "message": message,
                                      "finish_reason": acc["finish_reason"]}
            if acc["logprobs"] is not None:
                choice["logprobs"] = acc["logprobs"]
            choices.append(choice)
        out["choices"] = choices
        if self._usage is not None:
            out["usage"] = self._usage
        return out

    # -- OpenAI Responses -----------------------------------------------------------------
    def _add_responses(self, event: dict) -> None:
        kind = event.get("type")
        if kind in ("response.completed", "response.incomplete", "response.failed",
                    "response.created", "response.in_progress"):
            if isinstance(event.get("response"), dict):
                self._final = event["response"]
            return
        index = event.get("output_index", 0)
        if kind in ("response.output_item.added", "response.output_item.done"):
            if isinstance(event.get("item"), dict):
                self._items[index] = copy.deepcopy(event["item"])
            return
        item = self._items.get(index)
        if item is None:
            return
        if kind == "response.content_part.added" and isinstance(event.get("part"), dict):
            parts = item.setdefault("content", [])
            at = event.get("content_index", len(parts))
            while len(parts) <= at:
                parts.append(None)
            parts[at] = copy.deepcopy(event["part"])
        elif kind == "response.output_text.delta":
            parts = item.setdefault("content", [])
            at = event.get("content_index", 0)
            while len(parts) <= at:
                parts.append({"type": "output_text", "text": "", "annotations": []})
            if parts[at] is None:
                parts[at] = {"type": "output_text", "text": "", "annotations": []}
            parts[at]["text"] = parts[at].get("text", "") + (event.get("delta") or "")
        elif kind == "response.function_call_arguments.delta":
            item["arguments"] = item.get("arguments", "") + (event.get("delta") or "")
        elif kind == "response.function_call_arguments.done" and isinstance(
                event.get("arguments"), str):
            item["arguments"] = event["arguments"]

    def _raw_responses(self) -> dict:
        out = copy.deepcopy(self._final) if self._final is not None else {}
        if self._items and not out.get("output"):
            out["output"] = [self._items[i] for i in sorted(self._items)]
        return out

    # -- Anthropic Messages ---------------------------------------------------------------
    def _add_anthropic(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            self._message = copy.deepcopy(event["message"])
        elif kind == "content_block_start" and isinstance(event.get("content_block"), dict):
            self._blocks[event.get("index", 0)] = copy.deepcopy(event["content_block"])
        elif kind == "content_block_delta":
            index = event.get("index", 0)
            block = self._blocks.setdefault(index, {"type": "text", "text": ""})
            delta = event.get("delta") or {}
            dkind = delta.get("type")
            if dkind == "text_delta":
                block["text"] = block.get("text", "") + (delta.get("text") or "")
            elif dkind == "input_json_delta":
                self._partial_json[index] = self._partial_json.get(index, "") + (
                    delta.get("partial_json") or "")
            elif dkind == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + (delta.get("thinking") or "")
            elif dkind == "signature_delta":
                block["signature"] = block.get("signature", "") + (delta.get("signature") or "")
            elif dkind == "citations_delta" and delta.get("citation") is not None:
                block.setdefault("citations", []).append(delta["citation"])
        elif kind == "message_delta":
            for key, value in (event.get("delta") or {}).items():
                self._message[key] = value
            usage = event.get("usage")
            if isinstance(usage, dict):
                merged = self._message.setdefault("usage", {})
                for key, value in usage.items():
                    if value is not None:
                        merged[key] = value

    def _raw_anthropic(self) -> dict:
        out = copy.deepcopy(self._message)
        blocks = []
        for index in sorted(self._blocks):
            block = copy.deepcopy(self._blocks[index])
            if index in self._partial_json:
                text = self._partial_json[index]
                try:
                    block["input"] = orjson.loads(text) if text.strip() else {}
                except orjson.JSONDecodeError:
                    block["input"] = text
            blocks.append(block)
        out["content"] = blocks
        return out

    # -- results --------------------------------------------------------------------------
    def raw(self) -> dict:
        """The provider's non-streamed response body equivalent to the chunks seen so far."""
        if self.api == "openai_chat":
            return self._raw_chat()
        if self.api == "openai_responses":
            return self._raw_responses()
        if self.api == "anthropic_messages":
            return self._raw_anthropic()
        return {}

    def response(self) -> AnnotatedLLMResponse | None:
        """The decoded ``AnnotatedLLMResponse``, or None when no chunk was recognized."""
        codec = codec_for(self.api) if self.api else None
        return codec.decode_response(self.raw()) if codec is not None else None


def accumulate_stream(chunks, api: str | None = None) -> StreamAccumulator:
    """Fold an iterable of chunks; returns the filled ``StreamAccumulator``."""
    acc = StreamAccumulator(api)
    for chunk in chunks:
        acc.add(chunk)
    return acc
