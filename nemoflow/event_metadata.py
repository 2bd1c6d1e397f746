"""Event metadata injectors: keys added to the metadata of every event.

``register_injector(name, priority, fn)`` with ``fn(event) -> {key: value}``, each value a
str, int, float, bool or a non-empty list of one of those. Additive only: a key the event
already has keeps its value, and of two injectors giving one key the first (lower priority)
wins. Injectors run before the event sanitizers, which see the injected keys. A failing or
invalid injector is left out (counted in ``nf.diagnostics()``); the event is still written.
"""

from __future__ import annotations

from ._middleware import global_pair as _pair
from .types import EventMetadataInjectorCallback  # noqa: F401  (NeMo Flow code imports it here)

__all__ = ["deregister_injector", "register_injector"]

register_injector, deregister_injector = _pair(
    __name__, "event_metadata_injector",
    "``fn(event) -> {key: value}``: keys added to the metadata of every event from now on.")
register_injector.__name__ = register_injector.__qualname__ = "register_injector"
deregister_injector.__name__ = deregister_injector.__qualname__ = "deregister_injector"
