"""The Pythonic surface: ``nf.trace`` as decorator and context manager, and ``nf.mark``."""

from __future__ import annotations

from ._backend import core as _core
from ._types import ScopeType


def mark(name: str, *, data=None, metadata=None, data_schema=None, handle=None, timestamp=None):
    """Record a point-in-time event under the current scope (or ``handle``)."""
    _core.event(name, handle=handle, data=data, metadata=metadata, data_schema=data_schema,
                timestamp=timestamp)


def trace(name, scope_type=ScopeType.Function, **kw):
    """Temporary: a span context manager (decorator support lands with trace.py proper)."""
    return _core.Span(name, scope_type, **kw)
