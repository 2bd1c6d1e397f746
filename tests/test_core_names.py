"""Both cores expose the same public names: module level and the shared classes' members."""

from __future__ import annotations

import importlib
import types

import pytest
from backends import compiled_available

# Deliberate differences, by name. Everything else must match exactly.
MODULE_ONLY_IN_TWIN = {
    "annotations",  # ``from __future__ import annotations`` (the compiled core needs none)
    "Any",          # typing, for the twin's annotations
}
MODULE_ONLY_IN_COMPILED: set[str] = set()
MEMBERS_ONLY_IN_TWIN = {
    # a cdef method in the compiled core: called from C, not visible to Python
    "Subscriber": {"deliver"},
}
MEMBERS_ONLY_IN_COMPILED = {
    # properties reading the C counters; the twin sets them as plain instance attributes
    "LineSink": {"bytes", "errors", "events", "name"},
}
# Same name, different value on purpose.
VALUES_DIFFER = {"BACKEND"}  # "cython" / "python"


def _cores():
    if not compiled_available():
        pytest.skip("compiled core nemoflow._core is not built")
    return importlib.import_module("nemoflow._core"), importlib.import_module("nemoflow._core_py")


def _public(module) -> set[str]:
    return {name for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)}


def _members(cls) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def _shared_classes(compiled, twin) -> list[str]:
    return sorted(name for name in _public(compiled) & _public(twin)
                  if isinstance(getattr(compiled, name), type)
                  and getattr(compiled, name).__module__ == compiled.__name__)


def test_module_level_names_match():
    compiled, twin = _cores()
    assert _public(compiled) - _public(twin) == MODULE_ONLY_IN_COMPILED
    assert _public(twin) - _public(compiled) == MODULE_ONLY_IN_TWIN


def test_shared_classes_have_the_same_members():
    compiled, twin = _cores()
    shared = _shared_classes(compiled, twin)
    assert {"ScopeHandle", "ScopeEvent", "MarkEvent", "Span", "Subscriber"} <= set(shared)
    for name in shared:
        c, t = _members(getattr(compiled, name)), _members(getattr(twin, name))
        assert c - t == MEMBERS_ONLY_IN_COMPILED.get(name, set()), name
        assert t - c == MEMBERS_ONLY_IN_TWIN.get(name, set()), name


def test_constants_match():
    compiled, twin = _cores()
    for name in sorted(_public(compiled) & _public(twin)):
        value = getattr(compiled, name)
        if isinstance(value, (int, str)) and name not in VALUES_DIFFER:
            assert value == getattr(twin, name), name
    assert (compiled.BACKEND, twin.BACKEND) == ("cython", "python")
