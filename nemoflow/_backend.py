"""Chooses the core: the compiled ``_core`` unless ``NEMOFLOW_NO_EXTENSIONS=1`` asks for the twin.

``BACKEND`` is ``"cython"`` or ``"python"``. When the compiled core is missing the twin is used
with a warning that says why, unless ``NEMOFLOW_REQUIRE_EXTENSIONS=1`` is set, which turns that
into an ImportError. A source checkout on ``sys.path`` (Python run from the repository root)
shadows the installed package; its compiled core is then loaded from the installed copy when
that copy was built from the same core sources.
"""

from __future__ import annotations

import os
import sys


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


_HERE = os.path.dirname(os.path.abspath(__file__))
# What the compiled core is built from: an installed copy built from the same files can serve
# a source folder that has no build of its own.
_CORE_SOURCES = ("_core.pyx", "_core.pxd", "_core_src", "_include")


def _read_tree(root: str) -> dict | None:
    out = {}
    for name in _CORE_SOURCES:
        path = os.path.join(root, name)
        try:
            if os.path.isdir(path):
                for entry in sorted(os.listdir(path)):
                    with open(os.path.join(path, entry), "rb") as f:
                        out[f"{name}/{entry}"] = f.read()
            else:
                with open(path, "rb") as f:
                    out[name] = f.read()
        except OSError:
            return None
    return out


def _installed_core():
    """``(path, same_sources)`` of a compiled core in another copy of this package on
    ``sys.path``, or None."""
    import importlib.machinery

    for entry in sys.path:
        root = os.path.join(os.path.abspath(entry or os.curdir), "nemoflow")
        if root == _HERE:
            continue
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(root, "_core" + suffix)
            if os.path.isfile(path):
                theirs = _read_tree(root)
                return path, theirs is not None and theirs == _read_tree(_HERE)
    return None


def _load(path: str):
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.ExtensionFileLoader(f"{__package__}._core", path)
    spec = importlib.util.spec_from_file_location(f"{__package__}._core", path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def _fallback(exc: ImportError, require: bool):
    """The compiled core of an installed copy, or the twin with a warning saying why."""
    import importlib.machinery

    built = any(os.path.isfile(os.path.join(_HERE, "_core" + suffix))
                for suffix in importlib.machinery.EXTENSION_SUFFIXES)
    found = None if built else _installed_core()
    why = None
    if found is not None and found[1]:
        try:
            return _load(found[0])
        except ImportError as again:
            exc = again
            why = f"the installed compiled core {found[0]} could not be loaded ({again})"
    if require:
        raise exc
    if why is not None:
        pass
    elif found is not None:
        why = (f"this source folder ({_HERE}) has no compiled core and shadows an "
               f"installed copy whose compiled core ({found[0]}) was built from other core "
               "sources")
    elif not built:
        why = (f"the compiled core is not built in {_HERE} (no C compiler or Cython at "
               "install time? 'pip install -v .' shows the build)")
    else:
        why = f"the compiled core could not be loaded ({exc})"
    import warnings

    warnings.warn(f"nemoflow: using the pure-Python core, several times slower: {why}. "
                  "'pip install -e .' builds it here; NEMOFLOW_NO_EXTENSIONS=1 "
                  "chooses the pure-Python core without this warning.", RuntimeWarning,
                  stacklevel=2)
    from . import _core_py

    return _core_py


if _flag("NEMOFLOW_NO_EXTENSIONS"):
    from . import _core_py as core
else:
    try:
        from . import _core as core
    except ImportError as _exc:
        core = _fallback(_exc, _flag("NEMOFLOW_REQUIRE_EXTENSIONS"))

BACKEND: str = core.BACKEND
