"""Helpers shared by the codecs: request access, argument parsing, usage and cost."""

from __future__ import annotations

import copy
from typing import Any

import orjson

from ._types import sorted_json

__all__ = ["as_mapping", "build_usage", "obj", "parse_arguments", "provider_cost",
           "request_parts", "set_or_pop"]


def obj(value: Any) -> dict:
    """``value`` when it is a dict, else an empty dict."""
    return value if isinstance(value, dict) else {}


def request_parts(request: Any) -> tuple[dict, dict]:
    """``(headers, content)`` of an ``LLMRequest``, a ``{headers, content}`` dict or a bare body."""
    headers = getattr(request, "headers", None)
    content = getattr(request, "content", None)
    if isinstance(content, dict):
        return dict(headers or {}), content
    if isinstance(request, dict):
        if isinstance(request.get("content"), dict) and isinstance(
                request.get("headers", {}), dict) and set(request) <= {"headers", "content"}:
            return dict(request.get("headers") or {}), request["content"]
        return {}, request
    raise TypeError(f"expected an LLMRequest or a dict, not {type(request).__name__}")


def as_mapping(value: Any) -> Any:
    """A provider SDK object (``model_dump()``) or a dict, as plain JSON values."""
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, dict):
        try:
            return dump(mode="json", exclude_none=False)
        except TypeError:
            return dump()
    return value


def parse_arguments(arguments: Any) -> Any:
    """Tool-call arguments as JSON: a string that parses is parsed, any other string is kept."""
    if isinstance(arguments, str):
        try:
            return sorted_json(orjson.loads(arguments))
        except orjson.JSONDecodeError:
            return arguments
    return sorted_json(arguments)


def arguments_text(arguments: Any) -> str:
    """Tool-call arguments as the JSON string OpenAI expects."""
    if isinstance(arguments, str):
        return arguments
    return orjson.dumps(arguments).decode()


def carry_over(content: dict, annotated: Any, top_fields: tuple, skip: tuple = ()) -> dict:
    """Write back what the annotated request kept but does not model: API-specific fields,
    the codec's pass-through top-level fields (``skip`` excepted) and unknown extras."""
    for k, v in (annotated.api_specific or {}).items():
        if k != "api":
            content[k] = copy.deepcopy(v)
    for k in top_fields:
        if k not in skip and getattr(annotated, k) is not None:
            content[k] = copy.deepcopy(getattr(annotated, k))
    for k, v in annotated.extra.items():
        content[k] = copy.deepcopy(v)
    return content


def set_or_pop(content: dict, key: str, value: Any) -> None:
    if value is None:
        content.pop(key, None)
    else:
        content[key] = copy.deepcopy(value)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def provider_cost(usage: dict) -> dict | None:
    """The cost a provider reported in ``usage`` (``cost_usd`` or a ``cost`` object), normalized.

    ``cost_usd`` wins and is USD; a ``cost`` object's ``total`` falls back to the sum of its
    ``input``/``output``/``cache_read``/``cache_write`` components; no currency means USD.
    """
    total_usd = _num(usage.get("cost_usd"))
    raw = usage.get("cost")
    raw = raw if isinstance(raw, dict) else {}
    parts = {k: _num(raw.get(k)) for k in ("input", "output", "cache_read", "cache_write")}
    present = [v for v in parts.values() if v is not None]
    total = total_usd
    if total is None:
        total = _num(raw.get("total"))
    if total is None and present:
        total = sum(present)
    if total is None and not present:
        return None
    currency = raw.get("currency") if isinstance(raw.get("currency"), str) else None
    if total_usd is not None or currency is None:
        currency = "USD"
    out: dict[str, Any] = {}
    if total is not None:
        out["total"] = total
    out["currency"] = currency
    out.update({k: v for k, v in parts.items() if v is not None})
    out["source"] = "provider_reported"
    for k in ("pricing_provider", "pricing_model", "pricing_as_of", "pricing_source"):
        if isinstance(raw.get(k), str):
            out[k] = raw[k]
    return out


def build_usage(prompt=None, completion=None, total=None, cache_read=None, cache_write=None,
                uncached=None, cost=None) -> dict | None:
    """A normalized usage dict, or None when the provider reported nothing."""
    fields = (("prompt_tokens", _count(prompt)), ("completion_tokens", _count(completion)),
              ("total_tokens", _count(total)), ("cache_read_tokens", _count(cache_read)),
              ("cache_write_tokens", _count(cache_write)),
              ("uncached_input_tokens", _count(uncached)))
    out: dict[str, Any] = {k: v for k, v in fields if v is not None}
    if cost is not None:
        out["cost"] = cost
    return out or None


def count(value: Any) -> int | None:
    """A token count (a non-negative int, bools excluded), else None."""
    return _count(value)


def text_of_parts(parts: list) -> str | None:
    """The text parts of a content list joined by newlines, or None when there are none."""
    texts = [p["text"] for p in parts
             if isinstance(p, dict) and p.get("type") in ("text", "output_text")
             and isinstance(p.get("text"), str)]
    return "\n".join(texts) if texts else None


def native(provider: str, kind: Any, value: Any, tag: str = "type") -> dict:
    """A value the codec does not model, kept whole under its provider and kind."""
    return {tag: "provider_native", "provider": provider, "kind": kind,
            "value": sorted_json(value)}
