"""Drop-in tracing for the libraries agents are built on.

``nemoflow.instrument("openai", "anthropic")`` wraps the SDKs' resource methods so every call is
a managed LLM call (guardrails, intercepts, sanitizers and events apply);
``nemoflow.uninstrument(...)`` puts the original methods back. LangChain and LangGraph are
traced by a callback handler instead: see ``nemoflow.integrations.langchain``.
"""

from __future__ import annotations

import importlib
import threading
import warnings

__all__ = ["instrument", "instrumented", "uninstrument"]

_MODULES = {"openai": "nemoflow.integrations.openai",
            "anthropic": "nemoflow.integrations.anthropic"}
_lock = threading.Lock()
_active: dict = {}
_warned: set = set()


def _names(libraries):
    names = libraries or tuple(_MODULES)
    for name in names:
        if name not in _MODULES:
            raise ValueError(f"nemoflow cannot instrument {name!r}; it knows "
                             f"{', '.join(sorted(_MODULES))}")
    return names


def instrument(*libraries: str) -> list:
    """Trace every call of the named SDKs (all installed ones when none is named); returns the
    names now instrumented. Instrumenting twice changes nothing."""
    names = _names(libraries)
    with _lock:
        for name in names:
            if name in _active:
                continue
            module = importlib.import_module(_MODULES[name])
            if not module.available():
                if libraries and name not in _warned:  # asked for by name: say why not
                    _warned.add(name)
                    warnings.warn(f"nemoflow.instrument({name!r}): the {name!r} package is not "
                                  f"installed; nothing to instrument (pip install "
                                  f"'nemoflow[{name}]')", RuntimeWarning, stacklevel=2)
                continue
            module.instrument()
            _active[name] = module
        return sorted(_active)


def uninstrument(*libraries: str) -> list:
    """Put back the original methods of the named SDKs (all when none is named); returns the
    names still instrumented."""
    names = _names(libraries)
    with _lock:
        for name in names:
            module = _active.pop(name, None)
            if module is not None:
                module.uninstrument()
        return sorted(_active)


def instrumented() -> list:
    """The names of the SDKs instrumented now."""
    with _lock:
        return sorted(_active)
