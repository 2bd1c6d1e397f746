"""What the exporters read from an LLM call: normalized request/response, model, usage, cost.

Everything here is a pure function of event fields (start/end ``data``, ``category_profile``,
the event name), so the OTLP projections and the ATIF exporter agree by construction:

- ``normalize_request`` / ``normalize_response``: the annotated value when the profile carries
  one of the right shape, else a decode of the raw payload (provider auto-detected).
- ``model_name``, ``merged_usage``, ``cost``: the lookup orders and alias tables.
- ``genai_*``: the OpenTelemetry GenAI message JSON; ``openinference_*`` and ``*_display``: the
  OpenInference flattened messages and display text.

No function raises on odd input: a payload that does not fit gives ``None`` or nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ._common import count, obj, provider_cost
from ._types import (
    FINISH_COMPLETE,
    FINISH_CONTENT_FILTER,
    FINISH_LENGTH,
    FINISH_TOOL_USE,
    AnnotatedLLMRequest,
    AnnotatedLLMResponse,
    is_request_shape,
    is_response_shape,
    ordered_params,
)
from .anthropic import AnthropicMessagesCodec
from .openai_chat import OpenAIChatCodec
from .openai_responses import OpenAIResponsesCodec

__all__ = [
    "KNOWN_USAGE_KEYS",
    "Cost",
    "Usage",
    "codec_for",
    "cost",
    "detect_request_api",
    "detect_response_api",
    "display_text",
    "genai_finish_reason",
    "genai_input_messages",
    "genai_output_messages",
    "genai_output_type",
    "genai_system_instructions",
    "genai_tool_definitions",
    "is_anthropic",
    "json_text",
    "llm_input_value",
    "merged_usage",
    "model_name",
    "normalize_request",
    "normalize_response",
    "openinference_finish_reason",
    "openinference_request_attributes",
    "openinference_response_attributes",
    "openinference_usage_attributes",
    "output_value",
    "reasoning_effort",
]

_CODECS = {"openai_chat": OpenAIChatCodec(), "openai_responses": OpenAIResponsesCodec(),
           "anthropic_messages": AnthropicMessagesCodec()}
_ROLES = ("system", "developer", "user", "assistant", "tool")


def codec_for(api: str):
    """The codec instance for an API name (``openai_chat``, ``openai_responses``,
    ``anthropic_messages``), or None."""
    return _CODECS.get(api)


def json_text(value: Any, *, sort_keys: bool = True) -> str:
    """Compact JSON text; ``sort_keys=False`` keeps the dicts' own key order."""
    option = orjson.OPT_SORT_KEYS if sort_keys else 0
    try:
        return orjson.dumps(value, option=option | orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return orjson.dumps(str(value)).decode()


# -- normalization ------------------------------------------------------------------------

def _content_of(data: Any) -> Any:
    if isinstance(data, dict) and isinstance(data.get("content"), dict):
        return data["content"]
    return data


def detect_request_api(data: Any, name_hint: str | None = None) -> str | None:
    """Which request shape ``data`` (``{headers, content}`` or a bare body) has, or None.

    Returns ``openai_responses``, ``anthropic_messages``, ``oci_genai``, ``openai_chat`` or
    ``gemini``, first match in that order.
    """
    content = _content_of(data)
    if not isinstance(content, dict):
        return None
    hint = (name_hint or "").strip().lower()
    if "input" in content or "instructions" in content:
        return "openai_responses"
    if "system" in content or (hint in ("anthropic", "anthropic.messages")
                               and "messages" in content):
        return "anthropic_messages"
    if "chatRequest" in content:
        return "oci_genai"
    if "messages" in content:
        return "openai_chat"
    if "contents" in content:
        return "gemini"
    return None


def normalize_request(data: Any, name_hint: str | None = None,
                      category_profile: Any = None) -> AnnotatedLLMRequest | None:
    """The normalized request of an LLM start event, or None.

    ``category_profile.annotated_request`` wins when it has the annotated-request shape (any
    other annotation is opaque and ignored); else ``data`` is decoded by the detected codec.
    """
    if isinstance(category_profile, dict):
        annotated = category_profile.get("annotated_request")
        if isinstance(annotated, AnnotatedLLMRequest):
            return annotated
        if isinstance(annotated, dict) and is_request_shape(annotated):
            return AnnotatedLLMRequest.from_dict(annotated)
    codec = codec_for(detect_request_api(data, name_hint) or "")
    if codec is None:
        return None
    try:
        return codec.decode(_content_of(data))
    except (ValueError, TypeError, AttributeError, KeyError):
        return None


def detect_response_api(data: Any) -> str | None:
    """The response shape of ``data`` when exactly one shape matches, else None."""
    if not isinstance(data, dict):
        return None
    found = []
    if isinstance(data.get("output"), list) or isinstance(data.get("output_text"), str):
        found.append("openai_responses")
    if data.get("type") == "message" and isinstance(data.get("content"), list):
        found.append("anthropic_messages")
    if "chatResponse" in data:
        found.append("oci_genai")
    if isinstance(data.get("choices"), list):
        found.append("openai_chat")
    if isinstance(data.get("candidates"), list):
        found.append("gemini")
    return found[0] if len(found) == 1 else None


def normalize_response(data: Any, category_profile: Any = None) -> AnnotatedLLMResponse | None:
    """The normalized response of an LLM end event, or None.

    ``category_profile.annotated_response`` wins when it has the annotated-response shape;
    else the end ``data`` is decoded when exactly one provider shape matches it.
    """
    if isinstance(category_profile, dict):
        annotated = category_profile.get("annotated_response")
        if isinstance(annotated, AnnotatedLLMResponse):
            return annotated
        if isinstance(annotated, dict) and is_response_shape(annotated):
            return AnnotatedLLMResponse.from_dict(annotated)
    codec = codec_for(detect_response_api(data) or "")
    if codec is None:
        return None
    try:
        return codec.decode_response(data)
    except (ValueError, TypeError, AttributeError, KeyError):
        return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def model_name(*, response: AnnotatedLLMResponse | None = None, end_data: Any = None,
               end_profile: Any = None, request: AnnotatedLLMRequest | None = None,
               start_data: Any = None, start_profile: Any = None) -> str | None:
    """The call's model: response model → end ``data.model`` → profile ``model_name`` →
    request model → start ``data.model`` (the start's own lookup, for an end that has none)."""
    candidates = (
        response.model if response is not None else None,
        end_data.get("model") if isinstance(end_data, dict) else None,
        end_profile.get("model_name") if isinstance(end_profile, dict) else None,
        start_profile.get("model_name") if isinstance(start_profile, dict) else None,
        request.model if request is not None else None,
        start_data.get("model") if isinstance(start_data, dict) else None,
    )
    for value in candidates:
        if _str(value):
            return value
    return None


def reasoning_effort(request: AnnotatedLLMRequest | None) -> str | None:
    """The requested reasoning effort (Responses ``reasoning.effort``, chat
    ``reasoning_effort``), or None."""
    if request is None:
        return None
    if isinstance(request.reasoning, dict) and _str(request.reasoning.get("effort")):
        return request.reasoning["effort"]
    return _str((request.api_specific or {}).get("reasoning_effort"))


# -- usage and cost -----------------------------------------------------------------------

_ALIASES = {
    "prompt": ("prompt_tokens", "input_tokens", "inputTokens", "input"),
    "completion": ("completion_tokens", "output_tokens", "completionTokens", "outputTokens",
                   "output"),
    "total": ("total_tokens", "totalTokens", "total"),
    "cache_read": ("cached_tokens", "cachedTokens", "prompt_tokens_details.cached_tokens",
                   "input_tokens_details.cached_tokens", "cache_read_tokens",
                   "cache_read_input_tokens", "cacheReadTokens", "cacheReadInputTokens",
                   "cacheRead"),
    "cache_write": ("cache_write_tokens", "cache_creation_input_tokens", "cacheWriteTokens",
                    "cacheCreationInputTokens", "cacheWrite"),
}
#: Raw usage keys ATIF maps to its own metrics (prompt, completion, cache, cost); every other
#: key, the total's included, goes to ATIF's ``metrics.extra``.
KNOWN_USAGE_KEYS = frozenset(
    {key.split(".")[0] for field, keys in _ALIASES.items() if field != "total" for key in keys}
    | {"cost", "cost_usd"})
_NORMALIZED_KEYS = {"prompt": "prompt_tokens", "completion": "completion_tokens",
                    "total": "total_tokens", "cache_read": "cache_read_tokens",
                    "cache_write": "cache_write_tokens"}


@dataclass(frozen=True)
class Cost:
    """A call's cost: ``total`` in ``currency`` (ISO 4217, ``USD`` when the payload has none)."""

    total: float
    currency: str


@dataclass(frozen=True)
class Usage:
    """Token counts of one LLM call after merging (None = unknown).

    ``prompt_tokens`` already includes cache reads and writes when the Anthropic rule applied
    (``cache_inclusive``), and ``total_tokens`` is then prompt + completion.
    """

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    cache_inclusive: bool = False

    @property
    def cached_tokens(self) -> int | None:
        """Cache read + cache write (ATIF's ``cached_tokens``), None when both are unknown."""
        if self.cache_read_tokens is None and self.cache_write_tokens is None:
            return None
        return (self.cache_read_tokens or 0) + (self.cache_write_tokens or 0)

    def is_empty(self) -> bool:
        """Whether no count is known."""
        return all(v is None for v in (self.prompt_tokens, self.completion_tokens,
                                       self.total_tokens, self.cache_read_tokens,
                                       self.cache_write_tokens))


def _lookup(usage: dict, key: str) -> int | None:
    if "." in key:
        outer, inner = key.split(".", 1)
        nested = usage.get(outer)
        return count(nested.get(inner)) if isinstance(nested, dict) else None
    return count(usage.get(key))


def _raw_usages(end_data: Any) -> list[dict]:
    if not isinstance(end_data, dict):
        return []
    return [u for u in (end_data.get("usage"), end_data.get("token_usage"))
            if isinstance(u, dict)]


def is_anthropic(response: AnnotatedLLMResponse | None = None,
                 provider: str | None = None) -> bool:
    """Whether the Anthropic cache-inclusive prompt rule applies.

    True when the normalized response is Anthropic Messages, or ``provider`` (gen_ai: the
    provider name; openinference and ATIF: the event name) starts with ``anthropic`` or
    ``claude``, ignoring case.
    """
    if response is not None and response.api == "anthropic_messages":
        return True
    name = (provider or "").strip().lower()
    return name.startswith(("anthropic", "claude"))


def merged_usage(response: AnnotatedLLMResponse | None, end_data: Any = None, *,
                 provider: str | None = None) -> Usage:
    """Token counts: the normalized response's usage first, gaps filled from the raw end
    ``data.usage`` then ``data.token_usage`` (first alias present); pass ``end_data=None`` for
    normalized usage only (gen_ai). The Anthropic rule (``is_anthropic``) is applied last."""
    normalized = (response.usage or {}) if response is not None else {}
    raws = _raw_usages(end_data)
    values: dict[str, int | None] = {}
    raw_total = False
    for field, aliases in _ALIASES.items():
        value = count(normalized.get(_NORMALIZED_KEYS[field]))
        if value is None:
            value = next((v for raw in raws for v in (_lookup(raw, k) for k in aliases)
                          if v is not None), None)
            raw_total = raw_total or (field == "total" and value is not None)
        values[field] = value
    prompt, completion, total = values["prompt"], values["completion"], values["total"]
    if raw_total and total is not None and 0 < (prompt or 0) + (completion or 0) > total:
        total = None
    cache_read, cache_write = values["cache_read"], values["cache_write"]
    inclusive = is_anthropic(response, provider)
    if inclusive and prompt is not None:
        prompt += (cache_read or 0) + (cache_write or 0)
        if completion is not None:
            total = prompt + completion
    return Usage(prompt, completion, total, cache_read, cache_write, inclusive)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _atif_counts(raw: dict) -> bool:
    if _num(raw.get("cost_usd")) is not None:
        return True
    obj = raw.get("cost")
    if not isinstance(obj, dict):
        return False
    if isinstance(obj.get("currency"), str):
        return True
    return _num(obj.get("total")) is not None or obj.get("source") in (
        "provider_reported", "model_pricing")


def cost(response: AnnotatedLLMResponse | None, end_data: Any = None, *,
         policy: str = "any") -> Cost | None:
    """The call's cost under a currency ``policy``, or None.

    ``"any"`` (full): any currency. ``"usd"`` (openinference): only a USD total. ``"atif"``: USD
    only, and a raw ``cost`` object without a currency counts only with a ``total`` or a
    ``source`` of ``provider_reported`` / ``model_pricing``. The normalized response's cost is
    read first, then the raw end ``data.usage`` and ``data.token_usage``.
    """
    if policy not in ("any", "usd", "atif"):
        raise ValueError(f"cost policy must be 'any', 'usd' or 'atif', not {policy!r}")
    candidates: list[dict] = []
    normalized = (response.usage or {}).get("cost") if response is not None else None
    if isinstance(normalized, dict):
        candidates.append(normalized)
    for raw in _raw_usages(end_data):
        if policy == "atif" and not _atif_counts(raw):
            continue
        found = provider_cost(raw)
        if found is not None:
            candidates.append(found)
    for found in candidates:
        total = _num(found.get("total"))
        if total is None:
            parts = [_num(found.get(k)) for k in ("input", "output", "cache_read",
                                                   "cache_write")]
            present = [p for p in parts if p is not None]
            total = sum(present) if present else None
        if total is None:
            continue
        currency = found.get("currency")
        if not isinstance(currency, str):
            currency = "USD"
        if policy != "any" and currency.upper() != "USD":
            continue
        return Cost(total, currency)
    return None


# -- finish reasons -----------------------------------------------------------------------

_GENAI_FINISH = {FINISH_COMPLETE: "stop", FINISH_LENGTH: "length",
                 FINISH_TOOL_USE: "tool_call", FINISH_CONTENT_FILTER: "content_filter"}


def genai_finish_reason(reason: str | None) -> str | None:
    """A normalized finish reason in the gen_ai vocabulary
    (``stop|length|tool_call|content_filter|<raw>``)."""
    if reason is None:
        return None
    return _GENAI_FINISH.get(reason, reason)


def openinference_finish_reason(reason: str | None) -> str | None:
    """A normalized finish reason in the OpenInference vocabulary
    (``complete|length|tool_use|content_filter|<raw>``)."""
    return reason


# -- gen_ai message JSON ------------------------------------------------------------------

def _genai_part(part: Any) -> dict:
    if isinstance(part, str):
        return {"type": "text", "content": part}
    if not isinstance(part, dict):
        return {"type": "unknown", "value": part}
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "content": part.get("text", "")}
    if kind == "tool_use":
        return {"type": "tool_call", "id": part.get("id", ""), "name": part.get("name", ""),
                "arguments": part.get("input", {})}
    if kind == "tool_result":
        return {"type": "tool_call_response", "id": part.get("tool_use_id", ""),
                "response": part.get("content")}
    if kind == "provider_native":
        value = part.get("value")
        out = dict(value) if isinstance(value, dict) else {"value": value}
        out["type"] = part.get("kind")
        return out
    return dict(part)


def _genai_parts(content: Any) -> list[dict]:
    if content is None:
        return []
    if isinstance(content, list):
        return [_genai_part(p) for p in content]
    return [_genai_part(content)]


def _parsed(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return arguments
    return arguments


def genai_input_messages(request: AnnotatedLLMRequest | None) -> list[dict] | None:
    """``gen_ai.input.messages`` as a list (``json_text`` it): ``{role, parts, name?}``."""
    if request is None:
        return None
    out = []
    for m in request.messages:
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        if role == "provider_native":
            kind = m.get("kind")
            out.append({"role": kind if kind in _ROLES else "provider_native",
                        "parts": [_genai_part({"type": "provider_native", "kind": kind,
                                               "value": m.get("value")})]})
            continue
        if role == "tool_call":
            out.append({"role": "assistant", "parts": [{
                "type": "tool_call", "id": m.get("call_id", ""), "name": m.get("name", ""),
                "arguments": _parsed(m.get("arguments"))}]})
            continue
        if role == "tool_result":
            out.append({"role": "tool", "parts": [{
                "type": "tool_call_response", "id": m.get("call_id", ""),
                "response": m.get("output")}]})
            continue
        if role == "tool":
            out.append({"role": "tool", "parts": [{
                "type": "tool_call_response", "id": m.get("tool_call_id", ""),
                "response": m.get("content")}]})
            continue
        if role == "function":  # the legacy chat function result
            legacy: dict[str, Any] = {"role": "tool", "parts": [{"type": "tool_call_response",
                                                  "response": m.get("content")}]}
            if isinstance(m.get("name"), str):
                legacy["name"] = m["name"]
            out.append(legacy)
            continue
        parts = _genai_parts(m.get("content"))
        calls = m.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            call = obj(call)
            fn = obj(call.get("function"))
            parts.append({"type": "tool_call", "id": call.get("id", ""),
                          "name": fn.get("name", ""), "arguments": _parsed(fn.get("arguments"))})
        if role == "user" and parts and all(p.get("type") == "tool_call_response"
                                            for p in parts):
            role = "tool"
        message: dict[str, Any] = {"role": role, "parts": parts}
        if isinstance(m.get("name"), str):
            message["name"] = m["name"]
        out.append(message)
    return out


def genai_system_instructions(request: AnnotatedLLMRequest | None) -> list[dict] | None:
    """``gen_ai.system_instructions`` as a list of parts, or None without instructions."""
    if request is None or request.instructions is None:
        return None
    return _genai_parts(request.instructions)


def genai_output_messages(response: AnnotatedLLMResponse | None) -> list[dict] | None:
    """``gen_ai.output.messages``: ``[{role: "assistant", parts, finish_reason}]``, or None
    when the response has no text and no tool call."""
    if response is None:
        return None
    parts = _genai_parts(response.message)
    for call in response.tool_calls or ():
        parts.append({"type": "tool_call", "id": call.get("id", ""),
                      "name": call.get("name", ""), "arguments": call.get("arguments")})
    if not parts:
        return None
    return [{"role": "assistant", "parts": parts,
             "finish_reason": genai_finish_reason(response.finish_reason) or "unknown"}]


def genai_tool_definitions(request: AnnotatedLLMRequest | None) -> list[dict] | None:
    """``gen_ai.tool.definitions``: ``[{name, type}]`` per declared tool, or None."""
    if request is None or not request.tools:
        return None
    out = []
    for tool in request.tools:
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "provider_native":
            value = obj(tool.get("value"))
            name = value.get("name")
            out.append({"name": name if isinstance(name, str) else tool.get("kind"),
                        "type": tool.get("kind")})
            continue
        fn = obj(tool.get("function"))
        out.append({"name": fn.get("name", ""), "type": tool.get("type", "function")})
    return out or None


def genai_output_type(request: AnnotatedLLMRequest | None) -> str | None:
    """``gen_ai.output.type`` from a requested response format (``json``/``text``), or None."""
    if request is None:
        return None
    api = request.api_specific or {}
    fmt = api.get("response_format")
    if fmt is None and isinstance(api.get("text"), dict):
        fmt = api["text"].get("format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("json_object", "json_schema"):
        return "json"
    return "text" if kind == "text" else None


# -- OpenInference ------------------------------------------------------------------------

def _text_from_string(text: str) -> str | None:
    trimmed = text.strip()
    if not trimmed:
        return None
    try:
        parsed = orjson.loads(trimmed)
    except orjson.JSONDecodeError:
        return trimmed
    return display_text(parsed) or trimmed


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return _text_from_string(content)
    if isinstance(content, list):
        text = "\n".join(p["text"] for p in content
                         if isinstance(p, dict) and p.get("type") == "text"
                         and isinstance(p.get("text"), str)).strip()
        return text or None
    return None


def _value_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if value is None:
        return None
    return json_text(value, sort_keys=False)


def openinference_request_attributes(request: AnnotatedLLMRequest | None) -> list[tuple]:
    """``llm.invocation_parameters``, ``llm.input_messages.{i}.message.*`` and
    ``llm.tools.{i}.tool.json_schema`` of a normalized request, in order."""
    if request is None:
        return []
    attrs: list[tuple] = []
    params = ordered_params(request.params)
    if params:
        attrs.append(("llm.invocation_parameters", json_text(params, sort_keys=False)))
    index = 0

    def push(role: str, content: str | None = None, tool_call_id: str | None = None) -> None:
        nonlocal index
        prefix = f"llm.input_messages.{index}.message"
        attrs.append((f"{prefix}.role", role))
        if content is not None:
            attrs.append((f"{prefix}.content", content))
        if tool_call_id is not None:
            attrs.append((f"{prefix}.tool_call_id", tool_call_id))
        index += 1

    if request.instructions is not None:
        push("system", _content_text(request.instructions))
    for m in request.messages:
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        content = m.get("content")
        if role == "provider_native":
            kind = m.get("kind")
            value = obj(m.get("value"))
            push(kind if isinstance(kind, str) and kind in _ROLES else "provider_native",
                 _content_text(value.get("content")))
        elif role == "tool_call":
            push("assistant")
        elif role == "tool_result":
            push("tool", _value_text(m.get("output")), m.get("call_id", ""))
        elif role == "tool":
            push("tool", _value_text(content), m.get("tool_call_id", ""))
        elif role == "user" and isinstance(content, list) and content and all(
                isinstance(p, dict) and p.get("type") == "tool_result" for p in content):
            for p in content:
                push("tool", _value_text(p.get("content")), p.get("tool_use_id", ""))
        else:
            push(str(role), _content_text(content))
    for i, tool in enumerate(request.tools or ()):
        attrs.append((f"llm.tools.{i}.tool.json_schema", json_text(tool, sort_keys=False)))
    return attrs


def openinference_usage_attributes(usage: Usage, cost_total: float | None = None) -> list[tuple]:
    """``llm.token_count.*`` (and ``llm.cost.total``) from merged usage, in order."""
    attrs: list[tuple] = []
    for key, value in (("llm.token_count.prompt", usage.prompt_tokens),
                       ("llm.token_count.completion", usage.completion_tokens),
                       ("llm.token_count.total", usage.total_tokens),
                       ("llm.token_count.prompt_details.cache_read", usage.cache_read_tokens),
                       ("llm.token_count.prompt_details.cache_write", usage.cache_write_tokens)):
        if value is not None:
            attrs.append((key, value))
    if cost_total is not None:
        attrs.append(("llm.cost.total", cost_total))
    return attrs


def openinference_response_attributes(response: AnnotatedLLMResponse | None) -> list[tuple]:
    """``llm.finish_reason`` and ``llm.output_messages.0.message.*`` of a normalized
    response, in order."""
    if response is None:
        return []
    attrs: list[tuple] = []
    reason = openinference_finish_reason(response.finish_reason)
    if reason is not None:
        attrs.append(("llm.finish_reason", reason))
    prefix = "llm.output_messages.0.message"
    if response.message is not None or response.tool_calls:
        attrs.append((f"{prefix}.role", "assistant"))
    text = _content_text(response.message)
    if text is not None:
        attrs.append((f"{prefix}.content", text))
    for k, call in enumerate(response.tool_calls or ()):
        call_prefix = f"{prefix}.tool_calls.{k}.tool_call"
        if isinstance(call.get("id"), str):
            attrs.append((f"{call_prefix}.id", call["id"]))
        if isinstance(call.get("name"), str):
            attrs.append((f"{call_prefix}.function.name", call["name"]))
        attrs.append((f"{call_prefix}.function.arguments",
                      json_text(call.get("arguments"), sort_keys=False)))
    return attrs


# -- display text (input.value / output.value) -------------------------------------------

def _tool_name(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    for key in ("name", "toolName"):
        if isinstance(value.get(key), str):
            return value[key]
    fn = value.get("function")
    if isinstance(fn, dict) and isinstance(fn.get("name"), str):
        return fn["name"]
    for key in ("tool_name", "function_name"):
        if isinstance(value.get(key), str):
            return value[key]
    return None


def _tool_calls_text(value: Any) -> str | None:
    if not isinstance(value, list):
        return None
    names = [n for n in (_tool_name(c) for c in value) if n is not None]
    return f"Requested tools: {', '.join(names)}" if names else None


def _block_text(item: Any) -> str | None:
    if isinstance(item, str):
        return item
    if not isinstance(item, dict) or item.get("stripped") is True:
        return None
    if item.get("type") in ("thinking", "reasoning", "toolResult", "tool_result"):
        return None
    return item.get("text") if isinstance(item.get("text"), str) else None


def _blocks_text(items: list) -> str | None:
    entries = [t for t in (_block_text(i) for i in items) if t is not None]
    names = [n for n in (_tool_name(i) for i in items) if n is not None]
    if names:
        entries.append(f"Requested tools: {', '.join(names)}")
    text = "\n".join(e for e in entries if e.strip()).strip()
    return text or None


def _responses_output_text(value: Any) -> str | None:
    if not isinstance(value, list):
        return None
    entries, names = [], []
    for item in value:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message" and isinstance(item.get("content"), list):
            text = "\n\n".join(p["text"] for p in item["content"]
                               if isinstance(p, dict)
                               and p.get("type") in ("output_text", "text")
                               and isinstance(p.get("text"), str)).strip()
            if text:
                entries.append(text)
        elif item.get("type") == "function_call" and isinstance(item.get("name"), str):
            names.append(item["name"])
    if names:
        entries.append(f"Requested tools: {', '.join(names)}")
    text = "\n".join(entries).strip()
    return text or None


def _choices_text(value: Any) -> str | None:
    if not isinstance(value, list):
        return None
    for choice in value:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        content = display_text(message.get("content"))
        calls = _tool_calls_text(message.get("tool_calls"))
        if content is not None and calls is not None:
            return f"{content}\n{calls}"
        if content is not None or calls is not None:
            return content or calls
    return None


def display_text(value: Any) -> str | None:
    """Human-readable text of a payload (``output.value``), or None when it has none."""
    if isinstance(value, str):
        return _text_from_string(value)
    if isinstance(value, dict):
        for key in ("content", "summary", "message", "text", "prompt"):
            if key in value:
                text = display_text(value[key])
                if text is not None:
                    return text
        return (_responses_output_text(value.get("output"))
                or _choices_text(value.get("choices"))
                or _tool_calls_text(value.get("tool_calls")))
    if isinstance(value, list):
        return _blocks_text(value)
    return None


def _message_display(message: Any) -> str | None:
    if not isinstance(message, dict):
        return None
    role = message.get("role") if isinstance(message.get("role"), str) else "message"
    if role == "tool":
        return "tool: Tool result omitted"
    text = display_text(message.get("content")) if "content" in message else None
    if text is None:
        text = _tool_calls_text(message.get("tool_calls"))
    return f"{role}: {text}" if text is not None else None


def llm_input_value(data: Any) -> tuple[str, str] | None:
    """``(input.value, input.mime_type)`` of an LLM start ``data``: the messages as
    ``"role: text"`` blocks (``text/plain``), else JSON of ``data`` without ``headers``."""
    if data is None:
        return None
    content = data.get("content", data) if isinstance(data, dict) else data
    text = None
    if isinstance(content, dict) and isinstance(content.get("messages"), list):
        text = "\n\n".join(t for t in (_message_display(m) for m in content["messages"])
                           if t is not None).strip() or None
    if text is None:
        text = display_text(content)
    if text is not None:
        return text, "text/plain"
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "headers"}
    return json_text(data), "application/json"


def output_value(data: Any) -> tuple[str, str] | None:
    """``(output.value, output.mime_type)`` of an end ``data``: display text (``text/plain``),
    else compact JSON (``application/json``)."""
    if data is None:
        return None
    text = display_text(data)
    if text is not None:
        return text, "text/plain"
    return json_text(data), "application/json"
