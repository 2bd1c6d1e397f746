"""One namespace for exporter registration names, whatever the exporter's kind: a name in
``nemoflow.diagnostics()["exporters"]`` names exactly one exporter."""

from __future__ import annotations

import threading
from typing import Any

from .._types import AlreadyExistsError

_lock = threading.Lock()
_registered: dict[str, Any] = {}  # name -> exporter


def claim(exporter, name: str) -> bool:
    """Register ``exporter`` under ``name``; True when it is the exporter's first name (the
    caller then attaches it to the pipeline). The exporter keeps its names in ``_names``."""
    if not isinstance(name, str):
        raise TypeError(f"name must be str, not {type(name).__name__}")
    if exporter._closed:
        raise RuntimeError(f"this {type(exporter).__name__} was shut down")
    with _lock:
        if name in _registered:
            raise AlreadyExistsError(f"already exists: {name} already exists")
        _registered[name] = exporter
        exporter._names.append(name)
        return len(exporter._names) == 1


def release(exporter, name: str) -> tuple:
    """Drop ``exporter``'s registration under ``name``: (found, was its last name)."""
    with _lock:
        if name not in _registered or _registered[name] is not exporter:
            return False, False
        del _registered[name]
        exporter._names.remove(name)
        return True, not exporter._names
