"""ATOF events → an ATIF-v1.7 trajectory: one pure function shared by the live exporter and
``nemoflow convert``, so both produce the same trajectory from the same events.

Objects are built as dicts in the schema's field order (what ``export_json`` writes); free-form
JSON inside them (arguments, payloads, step ``extra``) has its keys sorted, as the reference
writes it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson

from ..codecs import normalize as _norm

__all__ = ["ATIF_SCHEMA_VERSION", "agent_info", "dumps", "events_to_trajectory", "sort_keys",
           "timestamp_ns"]

ATIF_SCHEMA_VERSION = "ATIF-v1.7"
_FRAMEWORK = "nemo_relay"
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_U64 = 1 << 64


# -- JSON helpers ------------------------------------------------------------------------

def sort_keys(value: Any) -> Any:
    """A copy of ``value`` with the keys of every object sorted."""
    if isinstance(value, dict):
        return {k: sort_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [sort_keys(v) for v in value]
    return value


def dumps(value: Any, *, indent: bool = False) -> str:
    """Compact (or two-space indented) JSON keeping the dicts' own key order."""
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
    return orjson.dumps(value, option=option).decode()


def _text(value: Any) -> str:
    """The reference's ``serde_json::to_string``: compact, keys sorted."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return orjson.dumps(str(value)).decode()


def _u64(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value < _U64 else None


def _f64(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _get(value: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _str_at(value: Any, *path: str) -> str | None:
    found = _get(value, *path)
    return found if isinstance(found, str) else None


# -- timestamps --------------------------------------------------------------------------

def timestamp_ns(value: Any) -> int:
    """Nanoseconds since the epoch of an ATOF timestamp (RFC 3339, or integer epoch µs)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value * 1000
    text = str(value).strip().replace("Z", "+00:00").replace("z", "+00:00")
    frac = 0
    if "." in text:
        head, rest = text.split(".", 1)
        n = 0
        while n < len(rest) and rest[n].isdigit():
            n += 1
        frac = int(rest[:n].ljust(9, "0")[:9] or "0")
        text = head + rest[n:]
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + frac


def _rfc3339(ns: int) -> str:
    """UTC, ``+00:00``, with the shortest of 0, 3, 6 or 9 fractional digits that is exact."""
    secs, frac = divmod(ns, 1_000_000_000)
    dt = datetime.fromtimestamp(secs, timezone.utc)
    head = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if frac == 0:
        tail = ""
    elif frac % 1_000_000 == 0:
        tail = ".%03d" % (frac // 1_000_000)
    elif frac % 1000 == 0:
        tail = ".%06d" % (frac // 1000)
    else:
        tail = ".%09d" % frac
    return head + tail + "+00:00"


def _epoch_ms(ns: int) -> float:
    return (ns // 1_000_000) / 1000.0


# -- events ------------------------------------------------------------------------------

_UNSET = object()


class _Ev:
    """One ATOF event dict, with the lookups the conversion needs."""

    __slots__ = ("category", "data", "end", "index", "is_agent", "kind", "metadata", "name",
                 "owner", "parent", "profile", "raw", "start", "ts", "uuid")

    def __init__(self, raw: dict, index: int):
        self.raw = raw
        self.index = index
        self.kind = raw.get("kind")
        self.uuid = str(raw.get("uuid") or "")
        parent = raw.get("parent_uuid")
        self.parent = parent if isinstance(parent, str) and parent else None
        name = raw.get("name")
        self.name = name if isinstance(name, str) else ""
        self.data = raw.get("data")
        self.metadata = raw.get("metadata")
        profile = raw.get("category_profile")
        self.profile = profile if isinstance(profile, dict) else {}
        self.category = raw.get("category") if self.kind == "scope" else None
        sc = raw.get("scope_category") if self.kind == "scope" else None
        self.start = sc == "start"
        self.end = sc == "end"
        self.is_agent = self.category == "agent"
        self.ts = timestamp_ns(raw.get("timestamp"))
        self.owner: Any = _UNSET

    @property
    def tool_call_id(self) -> str | None:
        value = self.profile.get("tool_call_id")
        return value if isinstance(value, str) else None

    @property
    def model_name(self) -> str | None:
        value = self.profile.get("model_name")
        return value if isinstance(value, str) else None

    def is_(self, start: bool, category: str) -> bool:
        return self.kind == "scope" and self.category == category and (
            self.start if start else self.end)


def _event_extra(ev: _Ev) -> dict:
    extra: dict = {"event_uuid": ev.uuid, "event_name": ev.name}
    if ev.parent is not None:
        extra["parent_event_uuid"] = ev.parent
    if ev.metadata is not None:
        extra["metadata"] = ev.metadata
    return sort_keys(extra)


def _ancestry(ev: _Ev, names: dict) -> dict:
    out = {"function_id": ev.uuid, "function_name": ev.name}
    if ev.parent is not None:
        out["parent_id"] = ev.parent
        if ev.parent in names:
            out["parent_name"] = names[ev.parent]
    return out


def _invocation(start_ns: int | None, end_ns: int, invocation_id: str | None) -> dict:
    out: dict = {}
    if start_ns is not None:
        out["end_timestamp"] = _epoch_ms(end_ns)
    out["framework"] = _FRAMEWORK
    if invocation_id is not None:
        out["invocation_id"] = invocation_id
    if start_ns is not None:
        out["start_timestamp"] = _epoch_ms(start_ns)
    out["status"] = "completed"
    return out


# -- content -----------------------------------------------------------------------------

def _is_image_source(value: Any) -> bool:
    return (isinstance(value, dict) and value.get("media_type") in _IMAGE_TYPES
            and isinstance(value.get("path"), str))


def _is_content_parts(value: Any) -> bool:
    if not isinstance(value, list):
        return False
    for part in value:
        if not isinstance(part, dict):
            return False
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                return False
        elif kind == "image":
            if not _is_image_source(part.get("source")):
                return False
        else:
            return False
    return True


def _content_value(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if _is_content_parts(value):
        return sort_keys(value)
    return _text(value)


def _unwrap_request(data: Any) -> Any:
    if isinstance(data, dict) and "content" in data and "headers" in data:
        return data["content"]
    return data


def _joined(parts: list) -> str | None:
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else "\n".join(parts)


def _anthropic_message(output: dict, content: Any) -> Any:
    if output.get("type") != "message" or not isinstance(content, list):
        return None
    texts, tool_use = [], False
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if isinstance(text, str) and text.strip():
                texts.append(text)
        elif kind == "tool_use":
            tool_use = True
    if not texts:
        return "" if tool_use else None
    return _joined(texts)


def _choice_message_field(output: Any, field: str) -> Any:
    if not isinstance(output, dict):
        return None
    raw = output.get("raw_response", output)
    choices = _get(raw, "choices")
    if not isinstance(choices, list) or not choices:
        return None
    return _get(choices[0], "message", field)


def _responses_texts(items: list, block_type: str) -> list:
    texts = []
    for block in items:
        if isinstance(block, dict) and block.get("type") == block_type:
            text = block.get("text")
            if isinstance(text, str):
                texts.append(text)
    return texts


def _responses_output_message(output: dict) -> Any:
    if isinstance(output.get("output_text"), str):
        return output["output_text"]
    items = output.get("output")
    if not isinstance(items, list):
        return None
    texts: list = []
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message" and isinstance(item.get("content"), list):
            texts.extend(_responses_texts(item["content"], "output_text"))
        elif kind == "output_text" and isinstance(item.get("text"), str):
            texts.append(item["text"])
    return _joined(texts)


def _response_message(output: Any) -> Any:
    if isinstance(output, dict):
        content = output.get("content")
        if content is not None:
            message = _anthropic_message(output, content)
            return message if message is not None else _content_value(content)
        assistant = output.get("assistant_message")
        if isinstance(assistant, dict) and assistant.get("content") is not None:
            return _content_value(assistant["content"])
        content = _choice_message_field(output, "content")
        if content is not None:
            return _content_value(content)
        if output.get("answer") is not None:
            return _content_value(output["answer"])
        message = _responses_output_message(output)
        if message is not None:
            return message
        if _tool_call_array(output) is not None:
            return ""
    return _content_value(output)


def _responses_input_message(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        return None
    for item in reversed(value):
        if not isinstance(item, dict) or item.get("role") != "user" or "content" not in item:
            continue
        content = item["content"]
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = _responses_texts(content, "input_text") or _responses_texts(content, "text")
            if texts:
                return _joined(texts)
            if _is_content_parts(content):
                return sort_keys(content)
            return None
        return None
    return None


def _user_message(content: Any) -> Any:
    if isinstance(content, dict):
        messages = content.get("messages")
        if isinstance(messages, list):
            for message in reversed(messages):
                if not isinstance(message, dict):
                    continue
                role = message.get("role")
                if isinstance(role, str) and role != "user":
                    continue
                if "content" in message:
                    return _content_value(message["content"])
                break
        found = _responses_input_message(content.get("input"))
        if found is not None:
            return found
        if "prompt" in content:
            return _content_value(content["prompt"])
    return _content_value(content)


def _last_turn_item(items: list) -> dict | None:
    for item in reversed(items):
        if isinstance(item, dict) and item.get("role") not in ("system", "developer"):
            return item
    return None


def _only_tool_results(content: Any) -> bool:
    blocks = [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
    return bool(blocks) and all(b.get("type") == "tool_result" for b in blocks)


def _continues_turn(content: Any) -> bool:
    """Whether a request only carries a tool round trip back to the model: its last chat
    message (system and developer ones aside) is not a user message or holds only tool
    results, or its Responses input holds typed output items."""
    if not isinstance(content, dict):
        return False
    messages = content.get("messages")
    last = _last_turn_item(messages) if isinstance(messages, list) else None
    if last is not None:
        role = last.get("role")
        if isinstance(role, str) and role != "user":
            return True
        return _only_tool_results(last.get("content"))
    items = content.get("input")
    if not isinstance(items, list):
        return False
    # Responses input: a typed item other than a user / system message is model output or a
    # tool result fed back (function_call, function_call_output, reasoning, an assistant
    # message); plain role messages never continue a turn
    return any(isinstance(i, dict) and "type" in i and not (
        i["type"] == "message" and i.get("role") in ("user", "system", "developer"))
        for i in items)


# -- tool calls --------------------------------------------------------------------------

def _tool_call_array(output: Any) -> list | None:
    if not isinstance(output, dict):
        return None
    calls = output.get("tool_calls")
    if isinstance(calls, list):
        return calls
    calls = _get(output, "assistant_message", "tool_calls")
    if isinstance(calls, list):
        return calls
    calls = _choice_message_field(output, "tool_calls")
    return calls if isinstance(calls, list) else None


def _typed_items(items: Any, kind: str) -> list | None:
    if not isinstance(items, list):
        return None
    found = [i for i in items if isinstance(i, dict) and i.get("type") == kind]
    return found or None


def normalize_arguments(raw: Any, present: bool = True) -> dict:
    """Tool arguments as an object: parsed JSON text, ``{"value": …}``, ``{"raw": …}``."""
    if not present or raw is None:
        return {}
    if isinstance(raw, dict):
        return sort_keys(raw)
    if isinstance(raw, str):
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return {"raw": raw}
        return sort_keys(parsed) if isinstance(parsed, dict) else {"value": sort_keys(parsed)}
    return {"value": sort_keys(raw)}


_CALL_KEYS = frozenset({"id", "tool_call_id", "call_id", "type", "function", "name", "tool_name",
                        "function_name", "arguments", "args", "input"})


def _tool_call_extra(call: dict) -> dict | None:
    extra = {k: v for k, v in call.items() if k not in _CALL_KEYS}
    function = call.get("function")
    if isinstance(function, dict):
        inner = {k: v for k, v in function.items() if k not in ("name", "arguments")}
        if inner:
            extra["function"] = inner
    return sort_keys(extra) if extra else None


def _first_str(*sources: tuple) -> str:
    """The first key present (JSON null included), as the reference's ``or_else`` chain."""
    for obj, key in sources:
        if obj is not None and key in obj:
            value = obj[key]
            return value if isinstance(value, str) else ""
    return ""


def extract_tool_calls(output: Any) -> list | None:
    """The tool calls of an LLM response (chat, Responses, Anthropic), or None."""
    items = _tool_call_array(output)
    if not items:
        items = None
    if items is None and isinstance(output, dict):
        items = _typed_items(output.get("output"), "function_call")
        if items is None and output.get("type") == "message":
            items = _typed_items(output.get("content"), "tool_use")
    if items is None:
        return None
    calls = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            return None
        if item.get("type") == "function_call":
            ident = _first_str((item, "call_id"), (item, "id"), (item, "tool_call_id"))
        else:
            ident = _first_str((item, "id"), (item, "tool_call_id"), (item, "call_id"))
        function = item.get("function") if isinstance(item.get("function"), dict) else None
        name = _first_str((function, "name"), (item, "name"), (item, "tool_name"),
                          (item, "function_name"))
        if not ident and name:
            ident = f"{name}:{index + 1}"
        raw, present = None, False
        sources = ((function, "arguments"), (item, "arguments"), (item, "args"), (item, "input"))
        for obj, key in sources:
            if obj is not None and key in obj:
                raw, present = obj[key], True
                break
        arguments = normalize_arguments(raw, present)
        if not ident and not name:
            continue
        call = {"tool_call_id": ident, "function_name": name, "arguments": arguments}
        extra = _tool_call_extra(item)
        if extra is not None:
            call["extra"] = extra
        calls.append(call)
    return calls or None


# -- metrics -----------------------------------------------------------------------------

def extract_metrics(output: Any, provider: str | None = None, response: Any = None) -> dict | None:
    """Step metrics of an LLM end: the merged usage of ``codecs.normalize`` (cache read + write
    as ``cached_tokens``, USD cost only), token ids and logprobs from the raw ``token_usage``
    (else ``usage``), and every other raw usage key in ``extra``; None without counts."""
    if not isinstance(output, dict):
        return None
    if response is None:
        response = _norm.normalize_response(output)
    usage = _norm.merged_usage(response, output, provider=provider)
    cost = _norm.cost(response, output, policy="atif")
    prompt, completion, cached = usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens
    if prompt is None and completion is None and cached is None and cost is None:
        return None
    metrics: dict = {}
    if prompt is not None:
        metrics["prompt_tokens"] = prompt
    if completion is not None:
        metrics["completion_tokens"] = completion
    if cached is not None:
        metrics["cached_tokens"] = cached
    if cost is not None:
        metrics["cost_usd"] = float(cost.total)
    raw = output["token_usage"] if "token_usage" in output else output.get("usage")
    if isinstance(raw, dict):
        for key in ("prompt_token_ids", "completion_token_ids"):
            if isinstance(raw.get(key), list):
                metrics[key] = [v for v in map(_u64, raw[key]) if v is not None]
        if isinstance(raw.get("logprobs"), list):
            metrics["logprobs"] = [v for v in map(_f64, raw["logprobs"]) if v is not None]
        extra = {k: v for k, v in raw.items()
                 if k not in _norm.KNOWN_USAGE_KEYS
                 and k not in ("prompt_token_ids", "completion_token_ids", "logprobs")}
        if extra:
            metrics["extra"] = sort_keys(extra)
    return metrics


_METRIC_ORDER = ("prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd",
                 "prompt_token_ids", "completion_token_ids", "logprobs", "extra")


def _merge_metrics(target: dict | None, extra: dict | None) -> dict | None:
    if target is None:
        return None if extra is None else dict(extra)
    if extra is None:
        return target
    merged = dict(target)
    for key in _METRIC_ORDER:
        if key == "extra":
            continue
        if key not in merged and key in extra:
            merged[key] = extra[key]
    if "extra" in extra:
        if "extra" not in merged:
            merged["extra"] = extra["extra"]
        elif isinstance(merged["extra"], dict) and isinstance(extra["extra"], dict):
            combined = dict(extra["extra"])
            combined.update(merged["extra"])
            merged["extra"] = sort_keys(combined)
    return {k: merged[k] for k in _METRIC_ORDER if k in merged}


def _final_metrics(steps: list) -> dict:
    totals: dict = {}
    for step in steps:
        metrics = step.get("metrics")
        if not metrics:
            continue
        for src, dst in (("prompt_tokens", "total_prompt_tokens"),
                         ("completion_tokens", "total_completion_tokens"),
                         ("cached_tokens", "total_cached_tokens"),
                         ("cost_usd", "total_cost_usd")):
            if src in metrics:
                base = 0.0 if dst == "total_cost_usd" else 0
                totals[dst] = totals.get(dst, base) + metrics[src]
    out = {k: totals[k] for k in ("total_prompt_tokens", "total_completion_tokens",
                                  "total_cached_tokens", "total_cost_usd") if k in totals}
    out["total_steps"] = len(steps)
    return out


# -- LLM duplicate spans (hook + gateway views of one request) ---------------------------

def _fidelity(ev: _Ev) -> int:
    meta = ev.metadata
    if not isinstance(meta, dict):
        return 50
    if meta.get("projection") is True:
        return 10
    if meta.get("provider_payload_exact") is False:
        return 30
    if meta.get("provider_payload_exact") is True:
        return 100
    if "fidelity_source" in meta or "api_call_id" in meta:
        return 95
    if "hook_event_name" in meta:
        return 90
    return 50


def _meta_has(ev: _Ev, *keys: str) -> bool:
    return isinstance(ev.metadata, dict) and any(k in ev.metadata for k in keys)


_REQUEST_KEY_PATHS = (("api_call_id",), ("apiCallId",), ("request_id",), ("requestId",),
                      ("request", "id"), ("metadata", "request_id"), ("metadata", "requestId"),
                      ("extra", "api_call_id"), ("extra", "apiCallId"), ("extra", "request_id"),
                      ("extra", "requestId"), ("llm_correlation_request_id",))
_GENERATION_KEY_PATHS = (("generation_id",), ("generationId",), ("generation", "id"),
                         ("metadata", "generation_id"), ("metadata", "generationId"),
                         ("extra", "generation_id"), ("extra", "generationId"),
                         ("llm_correlation_generation_id",))


def _correlation_keys(value: Any, keys: set) -> None:
    for kind, paths in (("request", _REQUEST_KEY_PATHS), ("generation", _GENERATION_KEY_PATHS)):
        for path in paths:
            found = _str_at(value, *path)
            if found:
                keys.add(f"{kind}:{found}")


class _LlmSpan:
    __slots__ = ("end_metrics", "end_ts", "fidelity", "gateway", "hook", "keys", "model",
                 "non_exact", "parent", "request_sig", "response_sig", "start_ts", "uuid")

    def __init__(self, start: _Ev, end: _Ev):
        self.uuid = start.uuid
        self.parent = start.parent or end.parent
        self.start_ts, self.end_ts = start.ts, end.ts
        self.request_sig = _text(_user_message(_unwrap_request(start.data)))
        self.response_sig = _text({"message": _response_message(end.data),
                                   "tool_calls": extract_tool_calls(end.data)})
        self.keys: set = set()
        for ev in (start, end):
            if ev.metadata is not None:
                _correlation_keys(ev.metadata, self.keys)
            if ev.data is not None:
                _correlation_keys(ev.data, self.keys)
                _correlation_keys(_unwrap_request(ev.data), self.keys)
        self.model = start.model_name or end.model_name
        self.fidelity = max(_fidelity(start), _fidelity(end))
        self.end_metrics = extract_metrics(end.data, end.name)
        self.hook = _meta_has(start, "hook_event_name") or _meta_has(end, "hook_event_name")
        self.gateway = any(_meta_has(e, "gateway_path", "llm_correlation_source")
                           for e in (start, end))
        self.non_exact = any(isinstance(e.metadata, dict)
                             and e.metadata.get("provider_payload_exact") is False
                             for e in (start, end))


def _same_request(a: _LlmSpan, b: _LlmSpan) -> bool:
    if a.parent is None or a.parent != b.parent:
        return False
    if a.model is not None and b.model is not None and a.model != b.model:
        return False
    if not (a.start_ts <= b.end_ts and b.start_ts <= a.end_ts):
        return False
    if a.request_sig == b.request_sig and a.response_sig == b.response_sig:
        return True
    complementary = ((a.non_exact and a.hook and b.gateway)
                     or (b.non_exact and b.hook and a.gateway))
    return complementary and (a.request_sig == b.request_sig or bool(a.keys & b.keys))


def _lazy_span(spans: dict, pairs: list, i: int) -> _LlmSpan:
    if i not in spans:
        spans[i] = _LlmSpan(*pairs[i])
    return spans[i]


def _llm_dedupe(events: list) -> tuple[set, dict]:
    """LLM spans to skip (the lower-fidelity of two records of one request) and the counts
    they add to the record kept."""
    parts: dict = {}
    for ev in events:
        if ev.kind == "scope" and ev.category == "llm" and (ev.start or ev.end):
            slot = parts.setdefault(ev.uuid, [None, None])
            slot[0 if ev.start else 1] = ev
    by_parent: dict = {}
    for start, end in parts.values():
        if start is None or end is None or start.data is None or end.data is None:
            continue
        parent = start.parent or end.parent
        if parent is not None:  # two records of one request share their parent
            by_parent.setdefault(parent, []).append((start, end))
    suppressed: set = set()
    supplemental: dict = {}
    for pairs in by_parent.values():
        if len(pairs) < 2:
            continue
        pairs.sort(key=lambda p: p[0].ts)
        spans: dict = {}
        for i, (_, left_end) in enumerate(pairs):
            # sorted by start: a later span overlaps this one while it starts before its end
            for j in range(i + 1, len(pairs)):
                if pairs[j][0].ts > left_end.ts:
                    break
                left, right = _lazy_span(spans, pairs, i), _lazy_span(spans, pairs, j)
                if not _same_request(left, right) or left.fidelity == right.fidelity:
                    continue
                lost, kept = (right, left) if left.fidelity > right.fidelity else (left, right)
                suppressed.add(lost.uuid)
                if lost.end_metrics is not None:
                    supplemental[kept.uuid] = _merge_metrics(supplemental.get(kept.uuid),
                                                             lost.end_metrics)
    return suppressed, supplemental


# -- tool call correlation ---------------------------------------------------------------

def _match_key(name: str, arguments: Any) -> tuple | None:
    return (name, _text(arguments)) if name else None


def _tool_correlations(events: list) -> dict:
    """Tool scope uuid → tool call id: explicit ids, then (name, canonical arguments) matches
    against the LLM tool calls when both sides have the same count."""
    explicit: dict = {}
    executions: list = []
    calls: list = []
    for ev in events:
        if ev.is_(True, "tool"):
            key = None if ev.data is None else _match_key(ev.name, normalize_arguments(ev.data))
            if ev.tool_call_id is not None:
                explicit[ev.uuid] = ev.tool_call_id
            executions.append((ev.uuid, key))
        elif ev.is_(False, "tool"):
            if ev.tool_call_id is not None:
                explicit[ev.uuid] = ev.tool_call_id
        elif ev.is_(False, "llm") and ev.data is not None:
            calls.extend((call["tool_call_id"],
                          _match_key(call["function_name"], call["arguments"]))
                         for call in extract_tool_calls(ev.data) or ())
    consumed = set(explicit.values())
    by_key: dict = {}
    for uuid, key in executions:
        if uuid not in explicit and key is not None:
            by_key.setdefault(key, []).append(uuid)
    ids_by_key: dict = {}
    for call_id, key in calls:
        if call_id not in consumed and key is not None:
            ids_by_key.setdefault(key, []).append(call_id)
    out = dict(explicit)
    for key, uuids in by_key.items():
        ids = ids_by_key.get(key)
        if ids is not None and len(ids) == len(uuids):
            out.update(zip(uuids, ids))
    return out


class _Lookups:
    def __init__(self, events: list, correlation_events: list):
        self.names: dict = {}
        self.start_ts: dict = {}
        self.starts: dict = {}
        for ev in events:
            if ev.start:
                self.names[ev.uuid] = ev.name
                self.start_ts[ev.uuid] = ev.ts
                self.starts[ev.uuid] = ev
        self.tool_call_ids = _tool_correlations(correlation_events)
        self.suppressed, self.supplemental = _llm_dedupe(events)


# -- steps -------------------------------------------------------------------------------

def _step(source: str, message: Any, timestamp: str | None, **fields: Any) -> dict:
    step: dict = {"step_id": 0, "source": source, "message": message}
    if timestamp is not None:
        step["timestamp"] = timestamp
    for key in ("model_name", "reasoning_effort", "reasoning_content", "tool_calls",
                "observation", "metrics", "llm_call_count", "is_copied_context", "extra"):
        value = fields.get(key)
        if value is not None:
            step[key] = value
    return step


def _set_step_field(step: dict, key: str, value: Any) -> None:
    """Set a step field keeping the schema's field order."""
    order = ("step_id", "source", "message", "timestamp", "model_name", "reasoning_effort",
             "reasoning_content", "tool_calls", "observation", "metrics", "llm_call_count",
             "is_copied_context", "extra")
    step[key] = value
    items = sorted(step.items(), key=lambda kv: order.index(kv[0]))
    step.clear()
    step.update(items)


def _result(source_call_id: str | None, content: Any, refs: list | None, extra: Any) -> dict:
    out: dict = {}
    if source_call_id is not None:
        out["source_call_id"] = source_call_id
    if content is not None:
        out["content"] = content
    if refs is not None:
        out["subagent_trajectory_ref"] = refs
    if extra is not None:
        out["extra"] = extra
    return out


def _reorder_result(result: dict) -> None:
    order = ("source_call_id", "content", "subagent_trajectory_ref", "extra")
    items = [(k, result[k]) for k in order if k in result]
    result.clear()
    result.update(items)


def _merge_result(observation: dict, result: dict) -> None:
    call_id = result.get("source_call_id")
    if call_id is not None:
        for existing in observation["results"]:
            if existing.get("source_call_id") != call_id:
                continue
            if "content" not in existing and "content" in result:
                existing["content"] = result["content"]
            if "subagent_trajectory_ref" in result:
                existing.setdefault("subagent_trajectory_ref", []).extend(
                    result["subagent_trajectory_ref"])
            if "extra" in result:
                if "extra" not in existing:
                    existing["extra"] = result["extra"]
                elif isinstance(existing["extra"], dict) and isinstance(result["extra"], dict):
                    merged = dict(result["extra"])
                    merged.update(existing["extra"])
                    existing["extra"] = sort_keys(merged)
            _reorder_result(existing)
            return
    observation["results"].append(result)


def _observation_of(step: dict) -> dict:
    if "observation" not in step:
        _set_step_field(step, "observation", {"results": []})
    return step["observation"]


class _PendingAgent:
    def __init__(self):
        self.index: int | None = None
        self.ancestry: dict | None = None
        self.invocation: dict | None = None
        self.llm_request: Any = None
        self.llm_response: Any = None
        self.tool_meta: list = []  # (ancestry, invocation)
        self.order: list = []

    def finalize(self, steps: list) -> None:
        index, ancestry = self.index, self.ancestry
        self.index = self.ancestry = None
        if index is None or ancestry is None or index >= len(steps):
            return
        if self.order and self.tool_meta:
            order = self.order

            def rank(pair):
                ident = pair[1].get("invocation_id")
                return order.index(ident) if ident in order else 1 << 62

            self.tool_meta.sort(key=rank)
        extra: dict = {"ancestry": ancestry}
        if self.invocation is not None:
            extra["invocation"] = self.invocation
        if self.llm_request is not None:
            extra["llm_request"] = self.llm_request
        if self.llm_response is not None:
            extra["llm_response"] = self.llm_response
        if self.tool_meta:
            extra["tool_ancestry"] = [a for a, _ in self.tool_meta]
            extra["tool_invocations"] = [i for _, i in self.tool_meta]
        self.invocation = self.llm_request = self.llm_response = None
        self.tool_meta = []
        _set_step_field(steps[index], "extra", sort_keys(extra))

    def has_call(self, call_id: str) -> bool:
        return call_id in self.order

    def push_call(self, call_id: str) -> None:
        if call_id not in self.order:
            self.order.append(call_id)


class _Steps:
    """The step-building state machine over one agent's events."""

    def __init__(self):
        self.steps: list = []
        self.last_call_by_name: dict = {}
        self.scope_call_ids: dict = {}
        self.active_call: str | None = None
        self.pending: list = []
        self.pending_ts: str | None = None
        self.deferred: dict = {}  # call id → [(result, ts)]
        self.deferred_meta: dict = {}
        self.effort: Any = None
        self.continuation: Any = None
        self.agent = _PendingAgent()

    # dispatch
    def handle(self, ev: _Ev, lk: _Lookups) -> None:
        if ev.category == "llm" and ev.uuid in lk.suppressed:
            return
        if ev.kind != "scope":
            return
        if ev.category == "llm":
            (self.llm_start if ev.start else self.llm_end)(ev, lk)
        elif ev.category == "tool":
            (self.tool_start if ev.start else self.tool_end)(ev, lk)

    # observations
    def _current_step_has_call(self, call_id: str) -> bool:
        index = self.agent.index
        if index is None:
            return False
        return any(c["tool_call_id"] == call_id for c in self.steps[index].get("tool_calls", ()))

    def flush_observations(self) -> None:
        if not self.pending:
            return
        ts, self.pending_ts = self.pending_ts, None
        results, self.pending = self.pending, []
        attached, standalone = [], []
        for result in results:
            call_id = result.get("source_call_id")
            if call_id is None:
                standalone.append(result)
            elif self._current_step_has_call(call_id):
                attached.append(result)
            else:
                self.deferred.setdefault(call_id, []).append((result, ts))
        if attached and self.agent.index is not None:
            observation = _observation_of(self.steps[self.agent.index])
            for result in attached:
                _merge_result(observation, result)
        if standalone:
            for result in standalone:
                result.pop("source_call_id", None)
            self.steps.append(_step("system", "", ts, observation={"results": standalone}))

    def flush_deferred(self) -> None:
        if not self.deferred:
            return
        entries = [e for group in self.deferred.values() for e in group]
        self.deferred = {}
        entries.sort(key=lambda e: (e[1] is not None, e[1] or ""))
        ts = next((t for _, t in entries if t is not None), None)
        results = []
        for result, _ in entries:
            result.pop("source_call_id", None)
            results.append(result)
        if not results:
            return
        self.deferred_meta = {}
        self.steps.append(_step("system", "", ts, observation={"results": results}))

    def attach_deferred(self) -> None:
        index = self.agent.index
        if index is None:
            return
        for call in list(self.steps[index].get("tool_calls", ())):
            call_id = call["tool_call_id"]
            results = self.deferred.pop(call_id, None)
            if results:
                observation = _observation_of(self.steps[index])
                for result, _ in results:
                    _merge_result(observation, result)
            for meta in self.deferred_meta.pop(call_id, ()):
                self.agent.tool_meta.append(meta)

    # LLM
    def llm_start(self, ev: _Ev, lk: _Lookups) -> None:
        self.flush_observations()
        self.agent.finalize(self.steps)
        self.scope_call_ids = {}
        self.active_call = None
        if ev.data is None:
            return
        content = sort_keys(_unwrap_request(ev.data))
        effort = content.get("reasoning_effort") if isinstance(content, dict) else None
        self.effort = effort
        if _continues_turn(content):
            self.continuation = content
            return
        self.continuation = None
        extra = {"ancestry": _ancestry(ev, lk.names), "llm_request": content}
        self.steps.append(_step("user", _user_message(content), _rfc3339(ev.ts),
                                extra=sort_keys(extra)))

    def llm_end(self, ev: _Ev, lk: _Lookups) -> None:
        self.flush_observations()
        output = ev.data
        if output is None:
            return
        calls = extract_tool_calls(output)
        self.last_call_by_name = {}
        order = []
        for call in calls or ():
            if call["function_name"]:
                self.last_call_by_name[call["function_name"]] = call["tool_call_id"]
            order.append(call["tool_call_id"])
        effort, self.effort = self.effort, None
        reasoning = output.get("reasoning") if isinstance(output, dict) else None
        annotated = _norm.normalize_response(None, ev.profile)
        response = annotated or _norm.normalize_response(output)
        start = lk.starts.get(ev.uuid)
        request = None if start is None else _norm.normalize_request(start.data, start.name,
                                                                     start.profile)
        model = _norm.model_name(
            response=response, end_data=output, end_profile=ev.profile, request=request,
            start_data=None if start is None else _unwrap_request(start.data),
            start_profile=None if start is None else start.profile)
        message = _response_message(output)
        if annotated is not None and isinstance(annotated.message, str) and annotated.message:
            message = annotated.message
        metrics = _merge_metrics(extract_metrics(output, ev.name, response),
                                 lk.supplemental.get(ev.uuid))
        self.steps.append(_step(
            "agent", message, _rfc3339(ev.ts), model_name=model,
            reasoning_effort=sort_keys(effort),
            reasoning_content=reasoning if isinstance(reasoning, str) else None,
            tool_calls=calls, metrics=metrics, llm_call_count=1))
        agent = self.agent
        agent.index = len(self.steps) - 1
        agent.ancestry = _ancestry(ev, lk.names)
        agent.invocation = _invocation(lk.start_ts.get(ev.uuid), ev.ts, ev.uuid)
        agent.llm_request, self.continuation = self.continuation, None
        agent.llm_response = sort_keys(output)
        agent.tool_meta = []
        agent.order = order
        self.attach_deferred()

    # tools
    def _call_ids_by_name(self, name: str) -> list:
        index = self.agent.index
        if index is None:
            return []
        return [c["tool_call_id"] for c in self.steps[index].get("tool_calls", ())
                if c["function_name"] == name]

    def _unique_call_by_name(self, name: str) -> str | None:
        found = self._call_ids_by_name(name)
        return found[0] if len(found) == 1 else None

    def tool_start(self, ev: _Ev, lk: _Lookups) -> None:
        call_id = (ev.tool_call_id or self.scope_call_ids.get(ev.uuid)
                   or lk.tool_call_ids.get(ev.uuid) or self._unique_call_by_name(ev.name))
        if call_id is None:
            if len(self._call_ids_by_name(ev.name)) > 1 or self.agent.index is None:
                return
            call_id = ev.uuid
        self.scope_call_ids[ev.uuid] = call_id
        if self.agent.index is None:
            return
        if self.agent.has_call(call_id):
            self.active_call = call_id
            return
        step = self.steps[self.agent.index]
        if "tool_calls" not in step:
            _set_step_field(step, "tool_calls", [])
        calls = step["tool_calls"]
        if not any(c["tool_call_id"] == call_id for c in calls):
            calls.append({"tool_call_id": call_id, "function_name": ev.name,
                          "arguments": {} if ev.data is None else sort_keys(ev.data),
                          "extra": _event_extra(ev)})
            if ev.name:
                self.last_call_by_name[ev.name] = call_id
        self.agent.push_call(call_id)
        self.active_call = call_id

    def _resolve_call_id(self, ev: _Ev, lk: _Lookups) -> str | None:
        found = ev.tool_call_id or self.scope_call_ids.get(ev.uuid) or lk.tool_call_ids.get(
            ev.uuid)
        if found is not None:
            return found
        candidate = self._unique_call_by_name(ev.name)
        if candidate is None:
            return None
        if (self.agent.has_call(candidate) or candidate in self.last_call_by_name.values()
                or candidate in self.deferred or candidate in self.deferred_meta):
            return candidate
        return None

    def tool_end(self, ev: _Ev, lk: _Lookups) -> None:
        call_id = self._resolve_call_id(ev, lk)
        output = ev.data
        if output is not None:
            if self.pending_ts is None:
                self.pending_ts = _rfc3339(ev.ts)
            is_content = isinstance(output, str) or _is_content_parts(output)
            extra = _event_extra(ev)
            if not is_content:
                extra["tool_result"] = sort_keys(output)
                extra = sort_keys(extra)
            self.pending.append(_result(call_id, sort_keys(output) if is_content else None,
                                        None, extra))
        if self.active_call == call_id:
            self.active_call = None
        if call_id is None:
            return
        meta = (_ancestry(ev, lk.names), _invocation(lk.start_ts.get(ev.uuid), ev.ts, call_id))
        if self.agent.index is not None and self.agent.has_call(call_id):
            self.agent.tool_meta.append(meta)
        else:
            self.deferred_meta.setdefault(call_id, []).append(meta)

    # subagents
    def _ref(self, child: _Agent) -> dict:
        ref: dict = {"trajectory_id": child.uuid}
        if child.session_id is not None:
            ref["session_id"] = child.session_id
        ref["extra"] = {"name": child.name, "scope_uuid": child.uuid}
        return ref

    def subagent_start(self, child: _Agent, ev: _Ev) -> None:
        candidate = (_delegation_call_id(ev.metadata) or _delegation_call_id(ev.data)
                     or self.active_call)
        call_id = candidate if candidate is not None and self.agent.has_call(candidate) else None
        self.flush_observations()
        if call_id is not None and self._attach_ref(child, ev, call_id):
            return
        self.agent.finalize(self.steps)
        call_id = f"subagent:{child.uuid}"
        arguments: dict = {"name": child.name}
        if child.session_id is not None:
            arguments["session_id"] = child.session_id
        if ev.data is not None:
            arguments["payload"] = ev.data
        self.steps.append(_step(
            "agent", "", _rfc3339(ev.ts),
            tool_calls=[{"tool_call_id": call_id, "function_name": child.name,
                         "arguments": sort_keys(arguments), "extra": _event_extra(ev)}],
            observation={"results": [_result(call_id, None, [self._ref(child)],
                                             _event_extra(ev))]},
            llm_call_count=0))

    def _attach_ref(self, child: _Agent, ev: _Ev, call_id: str) -> bool:
        index = self.agent.index
        if index is None:
            return False
        step = self.steps[index]
        if not any(c["tool_call_id"] == call_id for c in step.get("tool_calls", ())):
            return False
        observation = _observation_of(step)
        for result in observation["results"]:
            if result.get("source_call_id") == call_id:
                result.setdefault("subagent_trajectory_ref", []).append(self._ref(child))
                _reorder_result(result)
                return True
        observation["results"].append(_result(call_id, None, [self._ref(child)],
                                              _event_extra(ev)))
        return True

    def finish(self) -> list:
        self.flush_observations()
        self.flush_deferred()
        self.agent.finalize(self.steps)
        steps = _drop_answered_call_steps(self.steps)
        _renumber(steps)
        return steps


def _delegation_call_id(value: Any) -> str | None:
    for prefix in ((), ("extra",)):
        for key in ("tool_call_id", "toolCallId", "source_call_id", "sourceCallId",
                    "delegation_tool_call_id", "delegationToolCallId", "parent_tool_call_id",
                    "parentToolCallId"):
            found = _str_at(value, *prefix, key)
            if found is not None:
                return found
    return None


def _call_keys(step: dict) -> list:
    return [(c["tool_call_id"], c["function_name"], _text(c["arguments"]))
            for c in step.get("tool_calls", ()) if c["tool_call_id"]]


def _drop_answered_call_steps(steps: list) -> list:
    """Drop agent steps holding only tool calls that a later agent step answers (the same
    request seen twice, once without its results)."""
    observed: set = set()
    keep = [True] * len(steps)
    for index in range(len(steps) - 1, -1, -1):
        step = steps[index]
        if step["source"] != "agent":
            observed.clear()
            continue
        keys = _call_keys(step)
        if (step["message"] == "" and "observation" not in step
                and "reasoning_content" not in step and "reasoning_effort" not in step
                and step.get("llm_call_count") == 1 and step.get("tool_calls")
                and keys and all(k in observed for k in keys)):
            keep[index] = False
        answered = {r.get("source_call_id") for r in step.get("observation", {}).get(
            "results", ()) if r.get("source_call_id") is not None}
        observed.update(k for k in keys if k[0] in answered)
    return [s for s, k in zip(steps, keep) if k]


def _renumber(steps: list) -> None:
    for number, step in enumerate(steps, 1):
        step["step_id"] = number


def _prune_subagent_refs(steps: list, child_ids: set) -> list:
    for step in steps:
        observation = step.get("observation")
        if observation is None:
            continue
        kept = []
        for result in observation["results"]:
            refs = result.get("subagent_trajectory_ref")
            if refs is not None:
                refs = [r for r in refs if r.get("trajectory_id") in child_ids]
                if refs:
                    result["subagent_trajectory_ref"] = refs
                else:
                    del result["subagent_trajectory_ref"]
            if ("content" in result or "subagent_trajectory_ref" in result
                    or (isinstance(result.get("extra"), dict)
                        and "tool_result" in result["extra"])):
                kept.append(result)
        observation["results"] = kept
        if not kept:
            del step["observation"]
    steps = [s for s in steps if not (
        s["message"] == "" and "observation" not in s and "extra" not in s
        and (s["source"] == "system"
             or (s["source"] == "agent" and s.get("llm_call_count") == 0)))]
    _renumber(steps)
    return steps


# -- agent tree --------------------------------------------------------------------------

def _role(ev: _Ev) -> Any:
    return ev.metadata.get("nemo_relay_scope_role") if isinstance(ev.metadata, dict) else None


class _Agent:
    __slots__ = ("children", "name", "parent", "referenced", "session_id", "ts", "uuid")

    def __init__(self, ev: _Ev, parent: str | None):
        self.uuid = ev.uuid
        self.name = ev.name
        sid = ev.metadata.get("session_id") if isinstance(ev.metadata, dict) else None
        self.session_id = sid if isinstance(sid, str) else None
        self.referenced = (_role(ev) == "subagent" or _delegation_call_id(ev.metadata) is not None
                           or _delegation_call_id(ev.data) is not None)
        self.parent = parent
        self.children: list = []
        self.ts = ev.ts


class _Tree:
    def __init__(self, events: list):
        self.parents: dict = {}
        roles: dict = {}
        for ev in events:
            if ev.start:
                if ev.parent is not None:
                    self.parents[ev.uuid] = ev.parent
                if ev.is_agent:
                    roles[ev.uuid] = _role(ev)
        self.agents: set = set()
        for ev in events:
            if ev.start and ev.is_agent and (
                    roles[ev.uuid] != "turn"
                    or self._nearest(ev.parent, lambda u: roles.get(u, "turn") != "turn",
                                     ev.uuid) is None):
                self.agents.add(ev.uuid)
        self.nodes: dict = {}
        for ev in events:
            if ev.start and ev.is_agent and ev.uuid in self.agents:
                self.nodes[ev.uuid] = _Agent(ev, self._nearest(ev.parent, self.agents.__contains__,
                                                               ev.uuid))
        self.roots = []
        for node in self.nodes.values():
            if node.parent is None:
                self.roots.append(node.uuid)
            elif node.parent in self.nodes:
                self.nodes[node.parent].children.append(node.uuid)
        self.roots.sort(key=lambda u: self.nodes[u].ts)
        for node in self.nodes.values():
            node.children.sort(key=lambda u: self.nodes[u].ts)

    def _nearest(self, current: str | None, accept, excluded: str | None) -> str | None:
        seen = set()
        while current is not None and current not in seen:
            seen.add(current)
            if current != excluded and accept(current):
                return current
            current = self.parents.get(current)
        return None

    def owner(self, ev: _Ev) -> str | None:
        """The agent whose trajectory ``ev`` belongs to (memoized on the event)."""
        if ev.owner is not _UNSET:
            return ev.owner
        if ev.kind == "scope" and ev.is_agent:
            found = ev.uuid if ev.uuid in self.agents else None
        else:
            found = self._nearest(ev.parent, self.agents.__contains__, None)
        ev.owner = found
        return found

    def choose_root(self, session_id: str) -> str | None:
        if session_id in self.nodes:
            return session_id
        return self.roots[0] if len(self.roots) == 1 else None

    def usable(self, events: list) -> bool:
        for ev in events:
            if ev.kind == "scope" and ev.is_agent:
                continue
            step_event = ev.kind == "scope" and (
                (ev.category == "llm" and (ev.start or ev.end))
                or (ev.category == "tool" and ev.end))
            if step_event and self.owner(ev) is None:
                return False
        return True


def _trajectory(session_id: str, trajectory_id: str, agent: dict, steps: list,
                subagents: list | None) -> dict:
    out: dict = {"schema_version": ATIF_SCHEMA_VERSION, "session_id": session_id,
                 "trajectory_id": trajectory_id, "agent": agent, "steps": steps,
                 "final_metrics": _final_metrics(steps)}
    if subagents:
        out["subagent_trajectories"] = subagents
    return out


def _agent_steps(events: list, tree: _Tree, agent_uuid: str) -> list:
    own = [ev for ev in events if tree.owner(ev) == agent_uuid]
    lookups = _Lookups(events, own)
    state = _Steps()
    for ev in events:
        if ev.start and ev.is_agent:
            child = tree.nodes.get(ev.uuid)
            if child is not None and child.parent == agent_uuid:
                state.subagent_start(child, ev)
                continue
        if tree.owner(ev) == agent_uuid:
            state.handle(ev, lookups)
    return state.finish()


def _agent_trajectory(tree: _Tree, uuid: str, session_id: str, agent: dict, events: list,
                      root: bool) -> dict:
    steps = _agent_steps(events, tree, uuid)
    children = []
    for child_uuid in tree.nodes[uuid].children:
        child = _agent_trajectory(tree, child_uuid, session_id, agent, events, False)
        if child["steps"] or not tree.nodes[child_uuid].referenced:
            children.append(child)
    steps = _prune_subagent_refs(steps, {c["trajectory_id"] for c in children})
    node = tree.nodes[uuid]
    return _trajectory(session_id if root else (node.session_id or session_id),
                       session_id if root else uuid, agent, steps, children)


def agent_info(name: str, version: str, model_name: str | None = None,
               tool_definitions: list | None = None, extra: Any = None) -> dict:
    """The trajectory's ``agent`` object."""
    out: dict = {"name": name, "version": version}
    if model_name is not None:
        out["model_name"] = model_name
    if tool_definitions is not None:
        out["tool_definitions"] = [sort_keys(t) for t in tool_definitions]
    if extra is not None:
        out["extra"] = sort_keys(extra)
    return out


def events_to_trajectory(events: list, session_id: str, agent: dict) -> dict:
    """The ATIF trajectory of ATOF event dicts (``event.to_dict()`` or JSONL lines).

    Marks are ignored. The result is in the schema's field order (``dumps`` gives
    ``export_json``'s text; ``sort_keys`` gives ``export()``'s dict).
    """
    evs = [_Ev(raw, i) for i, raw in enumerate(events)
           if isinstance(raw, dict) and raw.get("kind") == "scope"]
    evs.sort(key=lambda ev: ev.ts)
    tree = _Tree(evs)
    root = tree.choose_root(session_id)
    if root is not None and tree.usable(evs):
        return _agent_trajectory(tree, root, session_id, agent, evs, True)
    lookups = _Lookups(evs, evs)
    state = _Steps()
    for ev in evs:
        state.handle(ev, lookups)
    return _trajectory(session_id, session_id, agent, state.finish(), None)
