"""The normalized request and response shapes the codecs produce.

Both classes keep plain JSON values (dicts, lists, strings, numbers). ``to_dict()`` gives the
JSON form NeMo Flow writes into ``category_profile.annotated_request`` /
``annotated_response``, and ``from_dict()`` reads it back. Dicts the codecs build themselves
(text parts, tool definitions, generation params) keep their keys in the reference's field
order; values copied from a provider payload keep sorted keys, so that compact JSON of any part
of a normalized value is the same text the reference writes.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = [
    "FINISH_COMPLETE",
    "FINISH_CONTENT_FILTER",
    "FINISH_LENGTH",
    "FINISH_TOOL_USE",
    "REQUEST_FIELDS",
    "AnnotatedLLMRequest",
    "AnnotatedLLMResponse",
]

FINISH_COMPLETE = "complete"
FINISH_LENGTH = "length"
FINISH_TOOL_USE = "tool_use"
FINISH_CONTENT_FILTER = "content_filter"

# Top-level request fields with a typed slot, in the reference's order; anything else a codec
# does not model goes to ``api_specific`` (known provider fields) or ``extra`` (the rest).
REQUEST_FIELDS = (
    "stream", "metadata", "user", "store", "service_tier", "parallel_tool_calls", "reasoning",
    "include", "max_output_tokens", "max_tool_calls", "previous_response_id", "top_logprobs",
    "truncation",
)
_REQUEST_CORE = ("messages", "model", "params", "tools", "tool_choice", "instructions",
                 "api_specific")
_RESPONSE_CORE = ("id", "model", "message", "tool_calls", "finish_reason", "usage",
                  "api_specific")
_PARAM_ORDER = ("temperature", "max_tokens", "top_p", "stop")


def sorted_json(value: Any) -> Any:
    """A deep copy of a JSON value with every object's keys sorted (how raw payloads are kept)."""
    if isinstance(value, dict):
        return {k: sorted_json(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [sorted_json(v) for v in value]
    return value


def ordered_params(params: dict | None) -> dict | None:
    """Generation params in the reference's field order (temperature, max_tokens, top_p, stop)."""
    if not params:
        return None if params is None else {}
    out = {k: params[k] for k in _PARAM_ORDER if params.get(k) is not None}
    for k in ("temperature", "top_p"):  # floats on the wire: 1 is written 1.0
        if isinstance(out.get(k), int) and not isinstance(out[k], bool):
            out[k] = float(out[k])
    for k, v in params.items():
        if k not in out and v is not None:
            out[k] = v
    return out


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(
                    part.get("text"), str):
                return part["text"]
    return None


class AnnotatedLLMRequest:
    """A provider-neutral view of an LLM request: messages, model, params, tools, extras."""

    __slots__ = ("messages", "instructions", "model", "params", "tools", "tool_choice",
                 "api_specific", "extra", *REQUEST_FIELDS)

    stream: bool | None
    metadata: Any
    user: str | None
    store: bool | None
    service_tier: str | None
    parallel_tool_calls: bool | None
    reasoning: Any
    include: list | None
    max_output_tokens: int | None
    max_tool_calls: int | None
    previous_response_id: str | None
    top_logprobs: int | None
    truncation: Any

    def __init__(self, messages, *, instructions=None, model=None, params=None, tools=None,
                 tool_choice=None, api_specific=None, extra=None, **fields):
        unknown = set(fields) - set(REQUEST_FIELDS)
        if unknown:
            raise TypeError(f"unexpected field(s): {', '.join(sorted(unknown))}")
        self.messages = list(messages)
        self.instructions = instructions
        self.model = model
        self.params = ordered_params(dict(params)) if params is not None else None
        self.tools = list(tools) if tools is not None else None
        self.tool_choice = tool_choice
        self.api_specific = dict(api_specific) if api_specific is not None else None
        self.extra = dict(extra) if extra else {}
        for name in REQUEST_FIELDS:
            setattr(self, name, fields.get(name))

    @property
    def api(self) -> str | None:
        """The codec that produced this request (``openai_chat``, ``openai_responses``, ...)."""
        api = (self.api_specific or {}).get("api")
        return api if isinstance(api, str) else None

    def system_prompt(self) -> str | None:
        """The text of the instructions or of the first system message, if any."""
        text = _content_text(self.instructions)
        if text is not None:
            return text
        for m in self.messages:
            if isinstance(m, dict) and m.get("role") == "system":
                return _content_text(m.get("content"))
        return None

    def last_user_message(self) -> str | None:
        """The text of the last user message, if any."""
        for m in reversed(self.messages):
            if isinstance(m, dict) and m.get("role") == "user":
                text = _content_text(m.get("content"))
                if text is not None:
                    return text
        return None

    def has_tool_calls(self) -> bool:
        """Whether any message of the conversation holds a tool call."""
        for m in self.messages:
            if not isinstance(m, dict):
                continue
            if m.get("role") == "tool_call" or m.get("tool_calls"):
                return True
            content = m.get("content")
            if isinstance(content, list) and any(
                    isinstance(p, dict) and p.get("type") == "tool_use" for p in content):
                return True
        return False

    def to_dict(self) -> dict:
        """The JSON form (``category_profile.annotated_request``)."""
        out: dict[str, Any] = {"messages": self.messages}
        if self.model is not None:
            out["model"] = self.model
        if self.params is not None:
            out["params"] = self.params
        if self.tools is not None:
            out["tools"] = self.tools
        if self.tool_choice is not None:
            out["tool_choice"] = self.tool_choice
        if self.instructions is not None:
            out["instructions"] = self.instructions
        if self.api_specific is not None:
            out["api_specific"] = self.api_specific
        for name in REQUEST_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> AnnotatedLLMRequest:
        """Rebuild from ``to_dict()``'s form; raises ``ValueError`` when it has another shape."""
        if not is_request_shape(data):
            raise ValueError("not an annotated LLM request")
        known = set(_REQUEST_CORE) | set(REQUEST_FIELDS)
        return cls(data["messages"], instructions=data.get("instructions"),
                   model=data.get("model"), params=data.get("params"), tools=data.get("tools"),
                   tool_choice=data.get("tool_choice"), api_specific=data.get("api_specific"),
                   extra={k: v for k, v in data.items() if k not in known},
                   **{k: data.get(k) for k in REQUEST_FIELDS})

    def __eq__(self, other):
        if not isinstance(other, AnnotatedLLMRequest):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable: compared by value

    def __repr__(self):
        return f"AnnotatedLLMRequest({orjson.dumps(self.to_dict()).decode()})"


class AnnotatedLLMResponse:
    """A provider-neutral view of an LLM response: text, tool calls, finish reason, usage."""

    __slots__ = ("id", "model", "message", "tool_calls", "finish_reason", "usage",
                 "api_specific", "extra", "optimization_summary")

    def __init__(self, id=None, model=None, message=None, tool_calls=None, finish_reason=None,
                 usage=None, api_specific=None, extra=None, optimization_summary=None):
        self.id = id
        self.model = model
        self.message = message
        self.tool_calls = list(tool_calls) if tool_calls is not None else None
        self.finish_reason = finish_reason
        self.usage = dict(usage) if usage is not None else None
        self.api_specific = dict(api_specific) if api_specific is not None else None
        self.extra = dict(extra) if extra else {}
        self.optimization_summary = optimization_summary

    @property
    def api(self) -> str | None:
        """The codec that produced this response (``openai_chat``, ``anthropic_messages``, ...)."""
        api = (self.api_specific or {}).get("api")
        return api if isinstance(api, str) else None

    def response_text(self) -> str | None:
        """The text of the assistant message, if any."""
        if isinstance(self.message, str):
            return self.message
        if isinstance(self.message, list):
            texts = [p["text"] for p in self.message
                     if isinstance(p, dict) and p.get("type") == "text"
                     and isinstance(p.get("text"), str)]
            return "\n".join(texts) if texts else None
        return None

    def has_tool_calls(self) -> bool:
        """Whether the response requests at least one tool call."""
        return bool(self.tool_calls)

    def to_dict(self) -> dict:
        """The JSON form (``category_profile.annotated_response``)."""
        out: dict[str, Any] = {}
        for name in _RESPONSE_CORE:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.optimization_summary is not None:
            out["optimization_summary"] = self.optimization_summary
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> AnnotatedLLMResponse:
        """Rebuild from ``to_dict()``'s form; raises ``ValueError`` when it has another shape."""
        if not is_response_shape(data):
            raise ValueError("not an annotated LLM response")
        known = (*_RESPONSE_CORE, "optimization_summary")
        return cls(**{k: data.get(k) for k in known},
                   extra={k: v for k, v in data.items() if k not in known})

    def __eq__(self, other):
        if not isinstance(other, AnnotatedLLMResponse):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable: compared by value

    def __repr__(self):
        return f"AnnotatedLLMResponse({orjson.dumps(self.to_dict()).decode()})"


def _opt(data: dict, key: str, types) -> bool:
    return data.get(key) is None or isinstance(data[key], types)


def is_request_shape(data: Any) -> bool:
    """Whether ``data`` has the annotated-request JSON shape (messages with roles, typed fields)."""
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        return False
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in data["messages"]):
        return False
    return (_opt(data, "model", str) and _opt(data, "params", dict)
            and _opt(data, "tools", list) and _opt(data, "tool_choice", str | dict)
            and _opt(data, "api_specific", dict))


_USAGE_INT_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens", "cache_read_tokens",
                   "cache_write_tokens", "uncached_input_tokens")


def is_response_shape(data: Any) -> bool:
    """Whether ``data`` has the annotated-response JSON shape."""
    if not isinstance(data, dict) or not any(
            data.get(k) is not None for k in ("message", "tool_calls", "finish_reason", "usage",
                                              "api_specific")):
        return False
    if not (_opt(data, "id", str) and _opt(data, "model", str)
            and _opt(data, "finish_reason", str) and _opt(data, "message", str | list)
            and _opt(data, "tool_calls", list) and _opt(data, "usage", dict)
            and _opt(data, "api_specific", dict)):
        return False
    for call in data.get("tool_calls") or ():
        if not (isinstance(call, dict) and isinstance(call.get("name"), str) and "id" in call):
            return False
    usage = data.get("usage") or {}
    for key in _USAGE_INT_KEYS:
        value = usage.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            return False
    api = (data.get("api_specific") or {}).get("api", "")
    return isinstance(api, str)
