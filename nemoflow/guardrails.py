"""Guardrails on managed tool and LLM calls: sanitizers and conditional execution.

``register_X(name, priority, fn)`` / ``deregister_X(name) -> bool``. Lower priority runs first,
ties by name. Sanitizers change only what is written into events (a failing one makes that
payload ``null``); a conditional guardrail returning a string rejects the call with
``GuardrailRejectedError``. Callbacks may be sync or async.

Mark and scope-start / scope-end sanitizers apply to every event, not only to managed calls:
``fn(event, fields) -> fields``, ``fields`` being ``data``, ``category_profile`` and
``metadata``; a failing one makes all three ``null`` (counted in ``nf.diagnostics()``).
"""

from __future__ import annotations

from ._middleware import global_pair as _pair
from .types import (  # noqa: F401  (NeMo Flow code imports them from here)
    EventSanitizeGuardrail,
    LlmConditionalExecutionGuardrail,
    LlmSanitizeRequestGuardrail,
    LlmSanitizeResponseGuardrail,
    ToolConditionalExecutionGuardrail,
    ToolSanitizeGuardrail,
)

__all__ = [
    "EventSanitizeGuardrail",
    "deregister_llm_conditional_execution",
    "deregister_llm_sanitize_request",
    "deregister_llm_sanitize_response",
    "deregister_mark_sanitize",
    "deregister_scope_sanitize_end",
    "deregister_scope_sanitize_start",
    "deregister_tool_conditional_execution",
    "deregister_tool_sanitize_request",
    "deregister_tool_sanitize_response",
    "register_llm_conditional_execution",
    "register_llm_sanitize_request",
    "register_llm_sanitize_response",
    "register_mark_sanitize",
    "register_scope_sanitize_end",
    "register_scope_sanitize_start",
    "register_tool_conditional_execution",
    "register_tool_sanitize_request",
    "register_tool_sanitize_response",
]

register_tool_sanitize_request, deregister_tool_sanitize_request = _pair(
    __name__, "tool_sanitize_request",
    "``fn(tool_name, args) -> Json``: the tool arguments as written into the start event.")
register_tool_sanitize_response, deregister_tool_sanitize_response = _pair(
    __name__, "tool_sanitize_response",
    "``fn(tool_name, result) -> Json``: the tool result as written into the end event.")
register_tool_conditional_execution, deregister_tool_conditional_execution = _pair(
    __name__, "tool_conditional_execution",
    "``fn(tool_name, args) -> str | None``: a string rejects the call with that reason.")
register_llm_sanitize_request, deregister_llm_sanitize_request = _pair(
    __name__, "llm_sanitize_request",
    "``fn(request) -> LLMRequest``: the request as written into the start event.")
register_llm_sanitize_response, deregister_llm_sanitize_response = _pair(
    __name__, "llm_sanitize_response",
    "``fn(response) -> Json``: the response as written into the end event.")
register_llm_conditional_execution, deregister_llm_conditional_execution = _pair(
    __name__, "llm_conditional_execution",
    "``fn(request) -> str | None``: a string rejects the call with that reason.")

_EVENT_DOC = ("``fn(event, fields) -> fields`` (``data``, ``category_profile``, "
              "``metadata``): what every {} records.")
register_mark_sanitize, deregister_mark_sanitize = _pair(
    __name__, "mark_sanitize", _EVENT_DOC.format("mark"))
register_scope_sanitize_start, deregister_scope_sanitize_start = _pair(
    __name__, "scope_sanitize_start", _EVENT_DOC.format("scope start event"))
register_scope_sanitize_end, deregister_scope_sanitize_end = _pair(
    __name__, "scope_sanitize_end", _EVENT_DOC.format("scope end event"))
