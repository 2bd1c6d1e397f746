"""One suite, two backends: every test that takes ``nf`` runs on the compiled core and the twin."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from backends import _NO_EXT, compiled_available, load_backend


@pytest.fixture(scope="session", params=["cython", "python"])
def nf_session(request):
    backend = request.param
    if backend == "cython":
        if _NO_EXT:
            pytest.skip("NEMOFLOW_NO_EXTENSIONS=1: compiled core deselected")
        if not compiled_available():
            if os.environ.get("CI"):
                pytest.fail("compiled core nemoflow._core is not built (CI requires it)")
            pytest.skip("compiled core nemoflow._core is not built")
    return load_backend(backend)


def _reset(nf) -> None:
    nf.subscribers._clear()
    nf._middleware._clear()
    nf._core._forget_registrations()


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
def jsonl(nf, tmp_path):
    """An AtofExporter registered for the test; yields it, shuts it down after."""
    config = nf.AtofExporterConfig(output_directory=str(tmp_path), filename="trace.jsonl",
                                   mode=nf.AtofExporterMode.Overwrite)
    exporter = nf.AtofExporter(config)
    exporter.register("test-jsonl")
    yield exporter
    exporter.shutdown()


@pytest.fixture
def events(nf):
    """Every event emitted during the test, in delivery order (a global sync subscriber)."""
    recorded = []
    nf.subscribers.register("test-recorder", recorded.append)
    return recorded
