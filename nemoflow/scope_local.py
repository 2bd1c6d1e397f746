"""Registrations that live on one scope: visible to its descendants, dropped when it is popped."""

from __future__ import annotations

import functools

from . import _middleware
from ._backend import core as _core

__all__ = [
    "deregister_event_metadata_injector",
    "deregister_llm_conditional_execution",
    "deregister_llm_execution",
    "deregister_llm_request",
    "deregister_llm_sanitize_request",
    "deregister_llm_sanitize_response",
    "deregister_llm_stream_execution",
    "deregister_mark_sanitize",
    "deregister_scope_sanitize_end",
    "deregister_scope_sanitize_start",
    "deregister_subscriber",
    "deregister_tool_conditional_execution",
    "deregister_tool_execution",
    "deregister_tool_request",
    "deregister_tool_sanitize_request",
    "deregister_tool_sanitize_response",
    "register_event_metadata_injector",
    "register_llm_conditional_execution",
    "register_llm_execution",
    "register_llm_request",
    "register_llm_sanitize_request",
    "register_llm_sanitize_response",
    "register_llm_stream_execution",
    "register_mark_sanitize",
    "register_scope_sanitize_end",
    "register_scope_sanitize_start",
    "register_subscriber",
    "register_tool_conditional_execution",
    "register_tool_execution",
    "register_tool_request",
    "register_tool_sanitize_request",
    "register_tool_sanitize_response",
]


def register_subscriber(scope_handle, name: str, callback) -> None:
    """Call ``callback(event)`` for every event emitted while ``scope_handle`` is on the stack.

    The scope's own end event is included, its start event is not. Raises
    ``NotFoundError`` if the scope is no longer open and ``AlreadyExistsError`` if the name is
    taken on that scope.
    """
    _core.local_register(scope_handle, name, callback)


def deregister_subscriber(scope_handle, name: str) -> bool:
    """Remove a scope-local subscriber; ``False`` if the scope has none by that name."""
    return _core.local_deregister(scope_handle, name)


# Guardrails and intercepts on one scope: the same callbacks as ``nemoflow.guardrails`` and
# ``nemoflow.intercepts``, seen by managed calls made while the scope is on the stack, ordered
# after the global ones of equal priority (outer scopes before inner), dropped on pop.

_families = functools.partial(_middleware.local_pair, __name__)


register_tool_sanitize_request, deregister_tool_sanitize_request = _families(
    "tool_sanitize_request", False)
register_tool_sanitize_response, deregister_tool_sanitize_response = _families(
    "tool_sanitize_response", False)
register_tool_conditional_execution, deregister_tool_conditional_execution = _families(
    "tool_conditional_execution", False)
register_llm_sanitize_request, deregister_llm_sanitize_request = _families(
    "llm_sanitize_request", False)
register_llm_sanitize_response, deregister_llm_sanitize_response = _families(
    "llm_sanitize_response", False)
register_llm_conditional_execution, deregister_llm_conditional_execution = _families(
    "llm_conditional_execution", False)
register_tool_request, deregister_tool_request = _families("tool_request", True)
register_tool_execution, deregister_tool_execution = _families("tool_execution", False)
register_llm_request, deregister_llm_request = _families("llm_request", True)
register_llm_execution, deregister_llm_execution = _families("llm_execution", False)
register_llm_stream_execution, deregister_llm_stream_execution = _families(
    "llm_stream_execution", False)
register_mark_sanitize, deregister_mark_sanitize = _families("mark_sanitize", False)
register_scope_sanitize_start, deregister_scope_sanitize_start = _families(
    "scope_sanitize_start", False)
register_scope_sanitize_end, deregister_scope_sanitize_end = _families(
    "scope_sanitize_end", False)
register_event_metadata_injector, deregister_event_metadata_injector = _families(
    "event_metadata_injector", False)
