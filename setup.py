"""Builds the compiled core ``nemoflow._core``; everything else is plain Python.

NEMOFLOW_NO_EXTENSIONS=1      build nothing (the pure-Python twin is used)
NEMOFLOW_REQUIRE_EXTENSIONS=1 a failed compile fails the install instead of falling back
NEMOFLOW_DEBUG_BUILD=1        bounds/wraparound checks on, for debugging the core
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


NO_EXT = _flag("NEMOFLOW_NO_EXTENSIONS")
REQUIRE = _flag("NEMOFLOW_REQUIRE_EXTENSIONS")
DEBUG = _flag("NEMOFLOW_DEBUG_BUILD")

# One place for the core's directives; the debug build switches the checks back on.
DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "cdivision": not DEBUG,
    "initializedcheck": DEBUG,
    "embedsignature": True,
    # Not declared free-threading compatible yet: the emit path reads the subscriber and
    # consumer tuples without a lock or atomic load, which the GIL makes safe today.
}


class OptionalBuildExt(build_ext):
    """Falls back to the pure-Python twin when the compiler fails, unless told not to."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any toolchain failure
            self._fallback(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._fallback(exc)

    def _fallback(self, exc):
        if REQUIRE:
            raise
        print(f"nemoflow: compiled core not built ({exc}); using the pure-Python twin",
              file=sys.stderr)


def extensions():
    if NO_EXT:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE:
            raise
        print("nemoflow: Cython not available; using the pure-Python twin", file=sys.stderr)
        return []
    ext = Extension(
        "nemoflow._core",
        ["nemoflow/_core.pyx"],
        include_dirs=["nemoflow/_include"],
        extra_compile_args=["-O2"] if not DEBUG else ["-O0", "-g"],
    )
    try:
        return cythonize([ext], compiler_directives=DIRECTIVES, quiet=True)
    except Exception as exc:  # noqa: BLE001 - a Cython compile error
        if REQUIRE:
            raise
        print(f"nemoflow: compiled core not generated ({exc}); using the pure-Python twin",
              file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
