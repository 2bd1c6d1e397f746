"""One suite, two backends: every test that takes ``nf`` runs on the compiled core and the twin.

The package is re-imported per backend (``NEMOFLOW_NO_EXTENSIONS`` decides which core
``_backend`` picks). ``nemoflow._types`` and both cores stay loaded across re-imports so that
the enum, flag and error classes are the same objects whichever package instance made them.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest

_KEEP = {"nemoflow._types", "nemoflow._core", "nemoflow._core_py"}
_NO_EXT = os.environ.get("NEMOFLOW_NO_EXTENSIONS", "") not in ("", "0")


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
    assert module.BACKEND == backend, (module.BACKEND, backend)
    return module


def _compiled_available() -> bool:
    try:
        importlib.import_module("nemoflow._core")
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session", params=["cython", "python"])
def nf_session(request):
    backend = request.param
    if backend == "cython":
        if _NO_EXT:
            pytest.skip("NEMOFLOW_NO_EXTENSIONS=1: compiled core deselected")
        if not _compiled_available():
            if os.environ.get("CI"):
                pytest.fail("compiled core nemoflow._core is not built (CI requires it)")
            pytest.skip("compiled core nemoflow._core is not built")
    return load_backend(backend)


def _reset(nf) -> None:
    nf.subscribers._clear()
    nf._core._reset_for_tests()


@pytest.fixture
def nf(nf_session):
    """The ``nemoflow`` package on one backend, with no subscribers and a fresh binding."""
    _reset(nf_session)
    token = nf_session._core.bind(nf_session._core.new_root())
    try:
        yield nf_session
    finally:
        nf_session._core.unbind(token)
        _reset(nf_session)


@pytest.fixture
def events(nf):
    """Every event emitted during the test, in delivery order (a global sync subscriber)."""
    recorded = []
    nf.subscribers.register("test-recorder", recorded.append)
    return recorded
