"""Registrations that live on one scope: visible to its descendants, dropped when it is popped."""

from __future__ import annotations

from ._backend import core as _core

__all__ = ["deregister_subscriber", "register_subscriber"]


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
