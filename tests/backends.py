"""Loading the nemoflow package on a chosen backend, for the tests and the benchmarks.

The package is re-imported per backend (``NEMOFLOW_NO_EXTENSIONS`` decides which core
``_backend`` picks). ``nemoflow._types`` and both cores stay loaded across re-imports so that
the enum, flag and error classes are the same objects whichever package instance made them.
"""

from __future__ import annotations

import importlib
import os
import sys

_KEEP = {"nemoflow._types", "nemoflow._core", "nemoflow._core_py"}
_NO_EXT = os.environ.get("NEMOFLOW_NO_EXTENSIONS", "").strip().lower() not in (
    "", "0", "false", "no")


def load_backend(backend: str):
    """A freshly imported ``nemoflow`` package running on ``backend`` ("cython" or "python")."""
    for name in list(sys.modules):
        if (name == "nemoflow" or name.startswith("nemoflow.")) and name not in _KEEP:
            del sys.modules[name]
    saved = os.environ.get("NEMOFLOW_NO_EXTENSIONS")
    if backend == "python":
        os.environ["NEMOFLOW_NO_EXTENSIONS"] = "1"
    else:
        os.environ.pop("NEMOFLOW_NO_EXTENSIONS", None)
    try:
        module = importlib.import_module("nemoflow")
    finally:
        if saved is None:
            os.environ.pop("NEMOFLOW_NO_EXTENSIONS", None)
        else:
            os.environ["NEMOFLOW_NO_EXTENSIONS"] = saved
    assert backend == module.BACKEND, (module.BACKEND, backend)
    return module


def compiled_available() -> bool:
    try:
        importlib.import_module("nemoflow._core")
    except ImportError:
        return False
    return True


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def backend_env(nf, **extra) -> dict:
    """The environment for a subprocess that runs ``nf``'s backend from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("NEMOFLOW_NO_EXTENSIONS", None)
    env.pop("NEMOFLOW_EXIT_TIMEOUT", None)
    if nf.BACKEND == "python":
        env["NEMOFLOW_NO_EXTENSIONS"] = "1"
    env.update(extra)
    return env
