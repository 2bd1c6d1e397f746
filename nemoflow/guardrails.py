"""Guardrails on managed tool and LLM calls: sanitizers and conditional execution.

``register_X(name, priority, fn)`` / ``deregister_X(name) -> bool``. Lower priority runs first,
ties by name. Sanitizers change only what is written into events (a failing one makes that
payload ``null``); a conditional guardrail returning a string rejects the call with
``GuardrailRejectedError``. Callbacks may be sync or async.
"""

from __future__ import annotations

from ._middleware import deregister as _deregister
from ._middleware import register as _register
from .types import (  # noqa: F401  (NeMo Flow code imports them from here)
    LlmConditionalExecutionGuardrail,
    LlmSanitizeRequestGuardrail,
    LlmSanitizeResponseGuardrail,
    ToolConditionalExecutionGuardrail,
    ToolSanitizeGuardrail,
)

__all__ = [
    "deregister_llm_conditional_execution",
    "deregister_llm_sanitize_request",
    "deregister_llm_sanitize_response",
    "deregister_tool_conditional_execution",
    "deregister_tool_sanitize_request",
    "deregister_tool_sanitize_response",
    "register_llm_conditional_execution",
    "register_llm_sanitize_request",
    "register_llm_sanitize_response",
    "register_tool_conditional_execution",
    "register_tool_sanitize_request",
    "register_tool_sanitize_response",
]


def register_tool_sanitize_request(name, priority, fn) -> None:
    """``fn(tool_name, args) -> Json``: the tool arguments as written into the start event."""
    _register("tool_sanitize_request", name, priority, fn)


def deregister_tool_sanitize_request(name) -> bool:
    """Remove a tool request sanitizer; ``False`` if none has that name."""
    return _deregister("tool_sanitize_request", name)


def register_tool_sanitize_response(name, priority, fn) -> None:
    """``fn(tool_name, result) -> Json``: the tool result as written into the end event."""
    _register("tool_sanitize_response", name, priority, fn)


def deregister_tool_sanitize_response(name) -> bool:
    """Remove a tool response sanitizer; ``False`` if none has that name."""
    return _deregister("tool_sanitize_response", name)


def register_tool_conditional_execution(name, priority, fn) -> None:
    """``fn(tool_name, args) -> str | None``: a string rejects the call with that reason."""
    _register("tool_conditional_execution", name, priority, fn)


def deregister_tool_conditional_execution(name) -> bool:
    """Remove a tool conditional guardrail; ``False`` if none has that name."""
    return _deregister("tool_conditional_execution", name)


def register_llm_sanitize_request(name, priority, fn) -> None:
    """``fn(request) -> LLMRequest``: the request as written into the start event."""
    _register("llm_sanitize_request", name, priority, fn)


def deregister_llm_sanitize_request(name) -> bool:
    """Remove an LLM request sanitizer; ``False`` if none has that name."""
    return _deregister("llm_sanitize_request", name)


def register_llm_sanitize_response(name, priority, fn) -> None:
    """``fn(response) -> Json``: the response as written into the end event."""
    _register("llm_sanitize_response", name, priority, fn)


def deregister_llm_sanitize_response(name) -> bool:
    """Remove an LLM response sanitizer; ``False`` if none has that name."""
    return _deregister("llm_sanitize_response", name)


def register_llm_conditional_execution(name, priority, fn) -> None:
    """``fn(request) -> str | None``: a string rejects the call with that reason."""
    _register("llm_conditional_execution", name, priority, fn)


def deregister_llm_conditional_execution(name) -> bool:
    """Remove an LLM conditional guardrail; ``False`` if none has that name."""
    return _deregister("llm_conditional_execution", name)
