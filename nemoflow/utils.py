"""Helpers NeMo Flow code imports from ``nemo_flow.utils``."""

from __future__ import annotations

from ._adapters import block_on

__all__ = ["run_sync"]


def run_sync(coro):
    """Run ``coro`` to completion from synchronous code, on a private loop if one is running.

    The coroutine runs in a copy of the caller's context, so its scopes nest under the caller's.
    """
    return block_on(coro)
