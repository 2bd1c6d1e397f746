"""Fold streamed chunks into the response a non-streamed call returns.

``StreamAccumulator`` rebuilds the provider's own non-streamed response body from its stream
(OpenAI Chat deltas, OpenAI Responses events, Anthropic Messages events), so ``raw()`` can be
recorded as the end event's data and ``response()`` decodes exactly like the non-streamed call.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

from ._common import as_mapping, obj
from ._types import AnnotatedLLMResponse
from .normalize import codec_for

__all__ = ["StreamAccumulator", "accumulate_stream"]


_TEXT_DELTAS = {"text_delta": "text", "thinking_delta": "thinking",
                "signature_delta": "signature"}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _index(value: Any, default: int = 0) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 16:
        return value
    return default


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


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
        for choice in _list(chunk.get("choices")):
            if not isinstance(choice, dict):
                continue
            index = _index(choice.get("index"))
            acc = self._choices.setdefault(index, {"index": index, "role": None, "content": None,
                                                   "refusal": None, "tool_calls": {},
                                                   "finish_reason": None, "logprobs": None})
            delta = obj(choice.get("delta"))
            if delta.get("role"):
                acc["role"] = delta["role"]
            for key in ("content", "refusal"):
                if isinstance(delta.get(key), str):
                    acc[key] = (acc[key] or "") + delta[key]
            for call in _list(delta.get("tool_calls")):
                call = obj(call)
                slot = acc["tool_calls"].setdefault(_index(call.get("index")), {
                    "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                if isinstance(call.get("id"), str) and call["id"]:
                    slot["id"] = call["id"]
                if isinstance(call.get("type"), str) and call["type"]:
                    slot["type"] = call["type"]
                fn = obj(call.get("function"))
                if isinstance(fn.get("name"), str):
                    slot["function"]["name"] += fn["name"]
                if isinstance(fn.get("arguments"), str):
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
        index = _index(event.get("output_index"))
        if kind in ("response.output_item.added", "response.output_item.done"):
            if isinstance(event.get("item"), dict):
                self._items[index] = copy.deepcopy(event["item"])
            return
        item = self._items.get(index)
        if item is None:
            return
        if kind in ("response.content_part.added", "response.output_text.delta") and not (
                isinstance(item.get("content", []), list)):
            return
        if kind == "response.content_part.added" and isinstance(event.get("part"), dict):
            parts = item.setdefault("content", [])
            at = _index(event.get("content_index"), len(parts))
            while len(parts) <= at:
                parts.append(None)
            parts[at] = copy.deepcopy(event["part"])
        elif kind == "response.output_text.delta":
            parts = item.setdefault("content", [])
            at = _index(event.get("content_index"))
            while len(parts) <= at:
                parts.append({"type": "output_text", "text": "", "annotations": []})
            if not isinstance(parts[at], dict) or not isinstance(parts[at].get("text", ""), str):
                parts[at] = {"type": "output_text", "text": "", "annotations": []}
            parts[at]["text"] = parts[at].get("text", "") + _str(event.get("delta"))
        elif kind == "response.function_call_arguments.delta":
            before = item.get("arguments")
            item["arguments"] = (before if isinstance(before, str) else "") + _str(
                event.get("delta"))
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
            self._blocks[_index(event.get("index"))] = copy.deepcopy(event["content_block"])
        elif kind == "content_block_delta":
            index = _index(event.get("index"))
            block = self._blocks.setdefault(index, {"type": "text", "text": ""})
            delta = obj(event.get("delta"))
            dkind = delta.get("type")
            if dkind == "input_json_delta":
                self._partial_json[index] = self._partial_json.get(index, "") + _str(
                    delta.get("partial_json"))
            elif dkind in _TEXT_DELTAS:
                key = _TEXT_DELTAS[dkind]
                before = block.get(key)
                block[key] = (before if isinstance(before, str) else "") + _str(delta.get(key))
            elif dkind == "citations_delta" and delta.get("citation") is not None:
                citations = block.get("citations")
                block["citations"] = [*(citations if isinstance(citations, list) else []),
                                      delta["citation"]]
        elif kind == "message_delta":
            self._message.update(obj(event.get("delta")))
            usage = event.get("usage")
            if isinstance(usage, dict):
                merged = obj(self._message.get("usage"))
                merged.update({k: v for k, v in usage.items() if v is not None})
                self._message["usage"] = merged

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
