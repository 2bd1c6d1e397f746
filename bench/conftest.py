"""Benchmarks run against both backends in one process, like the test suite."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from backends import load_backend


def backend_or_skip(backend: str):
    if backend == "cython":
        try:
            import nemoflow._core  # noqa: F401
        except ImportError:
            if os.environ.get("CI"):
                pytest.fail("compiled core nemoflow._core is not built")
            pytest.skip("compiled core nemoflow._core is not built")
    return load_backend(backend)


@pytest.fixture(scope="module", params=["cython", "python"])
def nf(request):
    module = backend_or_skip(request.param)
    module.subscribers._clear()
    yield module
    module.subscribers._clear()


@pytest.fixture(params=["none", "subscriber"])
def attached(request, nf):
    """Run a benchmark with nothing attached, then with one no-op synchronous subscriber."""
    if request.param == "subscriber":
        nf.subscribers.register("bench-noop", lambda event: None)
    yield request.param
    nf.subscribers._clear()
