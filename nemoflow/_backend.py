"""Chooses the core: the compiled ``_core`` unless ``NEMOFLOW_NO_EXTENSIONS=1`` asks for the twin.

``BACKEND`` is ``"cython"`` or ``"python"``. When the compiled core is missing the twin is used,
unless ``NEMOFLOW_REQUIRE_EXTENSIONS=1`` is set, which turns that into an ImportError.
"""

from __future__ import annotations

import os


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


if _flag("NEMOFLOW_NO_EXTENSIONS"):
    from . import _core_py as core
else:
    try:
        from . import _core as core
    except ImportError:
        if _flag("NEMOFLOW_REQUIRE_EXTENSIONS"):
            raise
        from . import _core_py as core

BACKEND: str = core.BACKEND
