"""Builds the compiled core ``nemoflow._core``; everything else is plain Python.

A core that cannot be built fails the install, with the reason and the ways out, so that pip
shows it (pip hides what a successful build prints: a silent fallback would go unnoticed until
the program runs several times slower).

NEMOFLOW_NO_EXTENSIONS=1      build nothing: the pure-Python twin is used
NEMOFLOW_REQUIRE_EXTENSIONS=0 a failed build falls back to the twin instead of failing
                              (``import nemoflow`` then warns, saying why)
NEMOFLOW_DEBUG_BUILD=1        bounds/wraparound checks on, for debugging the core
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


NO_EXT = _flag("NEMOFLOW_NO_EXTENSIONS")
# required unless explicitly turned off
REQUIRE = os.environ.get("NEMOFLOW_REQUIRE_EXTENSIONS", "1").strip().lower() not in (
    "0", "false", "no")
HOW_OUT = ("install a C compiler and the Python headers (Debian/Ubuntu: apt install gcc "
           "python3-dev) and try again; or install the pure-Python core, several times slower: "
           "NEMOFLOW_NO_EXTENSIONS=1 pip install ...; or let a failed build fall back to it: "
           "NEMOFLOW_REQUIRE_EXTENSIONS=0 pip install ...")


class CoreNotBuilt(RuntimeError):
    """The compiled core could not be built (and no fallback was asked for)."""


def _refuse(what, exc):
    raise CoreNotBuilt(f"nemoflow: the compiled core could not be {what} ({exc}). "
                       f"To go on: {HOW_OUT}") from exc


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
    """Fails with the reason when the compiler fails, or falls back to the pure-Python twin
    when told to (NEMOFLOW_REQUIRE_EXTENSIONS=0)."""

    def run(self):
        try:
            super().run()
        except Exception as exc:
            self._fallback(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._fallback(exc)

    def _fallback(self, exc):
        if isinstance(exc, CoreNotBuilt):
            raise exc
        if REQUIRE:
            _refuse("compiled", exc)
        print(f"nemoflow: compiled core not built ({exc}); using the pure-Python twin",
              file=sys.stderr)


def extensions():
    if NO_EXT:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        if REQUIRE:
            _refuse("generated: Cython is not installed", exc)
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
    except Exception as exc:
        if REQUIRE:
            _refuse("generated", exc)
        print(f"nemoflow: compiled core not generated ({exc}); using the pure-Python twin",
              file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
