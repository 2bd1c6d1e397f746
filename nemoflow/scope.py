"""Scopes on the current stack: ``push``/``pop``, marks, and the ``scope`` context manager.

The functions are the core's own, bound here without a wrapper: this is the hot path.
"""

from __future__ import annotations

from ._backend import core as _core
from ._metrics import metric

__all__ = ["event", "get_handle", "metric", "pop", "push", "scope"]

get_handle = _core.get_handle
push = _core.push
pop = _core.pop
event = _core.event
scope = _core.scope
