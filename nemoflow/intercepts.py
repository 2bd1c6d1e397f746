"""Intercepts on managed tool and LLM calls: rewrite requests, wrap execution.

Request intercepts run in priority order (ties by name) and each gets what the previous one
returned; ``break_chain=True`` stops the chain after that intercept. Execution intercepts nest,
the lowest priority outermost; each gets ``next``, which it may call any number of times (in
an async managed call ``next(...)`` returns an awaitable, in a synchronous one the value).
Callbacks may be sync or async; a failing one raises ``InternalError`` to the caller.
"""

from __future__ import annotations

from ._middleware import global_pair as _pair
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


register_tool_request, deregister_tool_request = _pair(
    __name__, "tool_request",
    "``fn(tool_name, args) -> Json``: the arguments the tool is really called with.", True)
register_tool_execution, deregister_tool_execution = _pair(
    __name__, "tool_execution",
    "``fn(tool_name, args, next)``: wraps the tool; ``next(args)`` runs the rest.")
register_llm_request, deregister_llm_request = _pair(
    __name__, "llm_request",
    "``fn(name, request, annotated) -> (LLMRequest, annotated)``: the request really sent.",
    True)
register_llm_execution, deregister_llm_execution = _pair(
    __name__, "llm_execution",
    "``fn(name, request, next)``: wraps the LLM call; ``next(request)`` runs the rest.")
register_llm_stream_execution, deregister_llm_stream_execution = _pair(
    __name__, "llm_stream_execution",
    "``fn(request, next) -> AsyncIterator``: wraps a streamed call's chunk iterator.")
