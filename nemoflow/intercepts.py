"""Intercepts on managed tool and LLM calls: rewrite requests, wrap execution.

Request intercepts run in priority order (ties by name) and each gets what the previous one
returned; ``break_chain=True`` stops the chain after that intercept. Execution intercepts nest,
the lowest priority outermost; each gets ``next``, which it may call any number of times (in
an async managed call ``next(...)`` returns an awaitable, in a synchronous one the value).
Callbacks may be sync or async; a failing one raises ``InternalError`` to the caller.
"""

from __future__ import annotations

from ._middleware import deregister as _deregister
from ._middleware import register as _register
from .types import (
    LlmExecutionIntercept,
    LlmRequestIntercept,
    LlmStreamExecutionIntercept,
    ToolExecutionIntercept,
    ToolRequestIntercept,
)

__all__ = [
    "LlmExecutionIntercept",
    "LlmRequestIntercept",
    "LlmStreamExecutionIntercept",
    "ToolExecutionIntercept",
    "ToolRequestIntercept",
    "deregister_llm_execution",
    "deregister_llm_request",
    "deregister_llm_stream_execution",
    "deregister_tool_execution",
    "deregister_tool_request",
    "register_llm_execution",
    "register_llm_request",
    "register_llm_stream_execution",
    "register_tool_execution",
    "register_tool_request",
]


def register_tool_request(name, priority, break_chain, fn) -> None:
    """``fn(tool_name, args) -> Json``: the arguments the tool is really called with."""
    _register("tool_request", name, priority, fn, break_chain)


def deregister_tool_request(name) -> bool:
    """Remove a tool request intercept; ``False`` if none has that name."""
    return _deregister("tool_request", name)


def register_tool_execution(name, priority, fn) -> None:
    """``fn(tool_name, args, next)``: wraps the tool; ``next(args)`` runs the rest."""
    _register("tool_execution", name, priority, fn)


def deregister_tool_execution(name) -> bool:
    """Remove a tool execution intercept; ``False`` if none has that name."""
    return _deregister("tool_execution", name)


def register_llm_request(name, priority, break_chain, fn) -> None:
    """``fn(name, request, annotated) -> (LLMRequest, annotated)``: the request really sent."""
    _register("llm_request", name, priority, fn, break_chain)


def deregister_llm_request(name) -> bool:
    """Remove an LLM request intercept; ``False`` if none has that name."""
    return _deregister("llm_request", name)


def register_llm_execution(name, priority, fn) -> None:
    """``fn(name, request, next)``: wraps the LLM call; ``next(request)`` runs the rest."""
    _register("llm_execution", name, priority, fn)


def deregister_llm_execution(name) -> bool:
    """Remove an LLM execution intercept; ``False`` if none has that name."""
    return _deregister("llm_execution", name)


def register_llm_stream_execution(name, priority, fn) -> None:
    """``fn(request, next) -> AsyncIterator``: wraps a streamed call's chunk iterator."""
    _register("llm_stream_execution", name, priority, fn)


def deregister_llm_stream_execution(name) -> bool:
    """Remove an LLM stream execution intercept; ``False`` if none has that name."""
    return _deregister("llm_stream_execution", name)
