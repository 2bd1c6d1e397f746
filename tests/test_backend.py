"""Which core is loaded: the compiled one by default, the twin on request, and CI insists."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
_NO_EXT = os.environ.get("NEMOFLOW_NO_EXTENSIONS", "") not in ("", "0")

# Imports nemoflow as an application would and prints the backend it got.
PRINT_BACKEND = "import nemoflow; print(nemoflow.BACKEND)"
# The same, as if the compiled core had not been built (its import fails).
PRINT_BACKEND_WITHOUT_CORE = (
    "import sys; sys.modules['nemoflow._core'] = None; " + PRINT_BACKEND)


def run_python(code, **env_changes):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, cwd=str(REPO))


def test_backend_name(nf):
    assert nf.BACKEND in ("cython", "python")
    assert nf._core.BACKEND == nf.BACKEND
    assert nf.diagnostics()["backend"] == nf.BACKEND


def test_cython_backend_is_the_extension_module(nf):
    core_file = pathlib.Path(nf._core.__file__).name
    is_extension = any(core_file.endswith(s) for s in importlib.machinery.EXTENSION_SUFFIXES)
    assert is_extension == (nf.BACKEND == "cython"), core_file


def test_compiled_core_is_loaded_by_default():
    """Fails in CI when a default ``import nemoflow`` does not get the compiled core."""
    proc = run_python(PRINT_BACKEND, NEMOFLOW_NO_EXTENSIONS=None)
    must_be_compiled = bool(os.environ.get("CI")) and not _NO_EXT
    if must_be_compiled:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "cython", (
            "CI requires the compiled core, but `import nemoflow` loaded the "
            f"{proc.stdout.strip() or 'nothing'} backend\n{proc.stderr}")
        return
    assert proc.returncode == 0, proc.stderr
    if proc.stdout.strip() == "python":
        pytest.skip("compiled core nemoflow._core is not built")
    assert proc.stdout.strip() == "cython"


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_no_extensions_env_forces_twin(value):
    proc = run_python(PRINT_BACKEND, NEMOFLOW_NO_EXTENSIONS=value)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "python"


@pytest.mark.parametrize("value", ["0", "", "false", "no"])
def test_no_extensions_env_false_values_do_not_force_twin(value):
    default = run_python(PRINT_BACKEND, NEMOFLOW_NO_EXTENSIONS=None)
    proc = run_python(PRINT_BACKEND, NEMOFLOW_NO_EXTENSIONS=value)
    assert proc.returncode == default.returncode == 0, proc.stderr
    assert proc.stdout.strip() == default.stdout.strip()


def test_missing_compiled_core_falls_back_to_twin():
    proc = run_python(PRINT_BACKEND_WITHOUT_CORE, NEMOFLOW_NO_EXTENSIONS=None,
                      NEMOFLOW_REQUIRE_EXTENSIONS=None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "python"


def test_missing_compiled_core_with_require_extensions_fails_import():
    proc = run_python(PRINT_BACKEND_WITHOUT_CORE, NEMOFLOW_NO_EXTENSIONS=None,
                      NEMOFLOW_REQUIRE_EXTENSIONS="1")
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr or "ModuleNotFoundError" in proc.stderr
    assert proc.stdout.strip() == ""


def test_no_extensions_wins_over_require_extensions():
    proc = run_python(PRINT_BACKEND_WITHOUT_CORE, NEMOFLOW_NO_EXTENSIONS="1",
                      NEMOFLOW_REQUIRE_EXTENSIONS="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "python"


def test_both_backends_share_types(nf):
    types = sys.modules["nemoflow._types"]
    assert nf.ScopeType is types.ScopeType
    assert nf.NotFoundError is types.NotFoundError
    h = nf.scope.push("x", nf.ScopeType.Tool)
    nf.scope.pop(h)
    assert type(h.scope_type) is types.ScopeType


# --- a source folder without a build of its own, in front of an installed copy ---------------

def _copy_package(dest, with_core):
    import shutil

    skip = shutil.ignore_patterns("__pycache__", "*.c", *(() if with_core else ("*.so", "*.pyd")))
    shutil.copytree(REPO / "nemoflow", dest / "nemoflow", ignore=skip)


def _from_checkout(tmp_path, code):
    """Run ``code`` in a checkout (no build) whose parent directory is first on sys.path, with
    an installed copy (with its build) on PYTHONPATH behind it, as Python run from the
    repository root after ``pip install .`` sees them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEMOFLOW_")}
    env["PYTHONPATH"] = str(tmp_path / "site")
    # Only the two copies: not the editable install of the repository these tests run from.
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
            "if '__editable__' not in getattr(f, '__module__', '')]; " + code)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, cwd=str(tmp_path / "checkout"))


@pytest.fixture
def shadowed(tmp_path):
    if _NO_EXT or not compiled_core_built():
        pytest.skip("compiled core nemoflow._core is not built")
    _copy_package(tmp_path / "checkout", with_core=False)
    _copy_package(tmp_path / "site", with_core=True)
    return tmp_path


def compiled_core_built():
    return any((REPO / "nemoflow").glob("_core.*.so")) or any(
        (REPO / "nemoflow").glob("_core.*.pyd"))


def test_a_checkout_without_a_build_loads_the_installed_compiled_core(shadowed):
    proc = _from_checkout(shadowed, "import nemoflow, nemoflow._core as c; "
                                    "print(nemoflow.BACKEND, nemoflow.__file__, c.__file__)")
    assert proc.returncode == 0, proc.stderr
    backend, package, core = proc.stdout.split()
    assert backend == "cython"
    assert package.startswith(str(shadowed / "checkout"))
    assert core.startswith(str(shadowed / "site"))
    assert proc.stderr == ""


def test_a_fallback_to_the_twin_says_why(shadowed):
    pyx = shadowed / "site" / "nemoflow" / "_core.pyx"
    pyx.write_text(pyx.read_text() + "\n# built from other sources\n")
    proc = _from_checkout(shadowed, PRINT_BACKEND)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "python"
    assert "RuntimeWarning: nemoflow: using the pure-Python core" in proc.stderr
    assert "was built from other core sources" in proc.stderr
    proc = _from_checkout(shadowed, "import warnings; warnings.simplefilter('error'); "
                                    + PRINT_BACKEND)
    assert proc.returncode != 0  # a warning filter can make it an error, as usual


def test_no_build_anywhere_warns_and_says_how_to_build(tmp_path):
    _copy_package(tmp_path / "checkout", with_core=False)
    (tmp_path / "site").mkdir()
    proc = _from_checkout(tmp_path, PRINT_BACKEND)
    assert proc.stdout.strip() == "python"
    assert "the compiled core is not built in" in proc.stderr
    assert "'pip install -e .' builds it here" in proc.stderr
    env_proc = subprocess.run([sys.executable, "-c", PRINT_BACKEND], capture_output=True,
                              text=True, timeout=60, cwd=str(tmp_path / "checkout"),
                              env={**os.environ, "NEMOFLOW_NO_EXTENSIONS": "1"})
    assert env_proc.stdout.strip() == "python" and env_proc.stderr == ""


def _build_with_a_broken_compiler(tmp_path, **env_changes):
    # A copy of the sources (timestamps kept, so an up-to-date _core.c is not regenerated),
    # built in place with a compiler that always fails.
    import shutil
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "nemoflow", tmp_path / "nemoflow",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "build"))
    env = dict(os.environ, CC="/bin/false", **env_changes)
    env.pop("NEMOFLOW_NO_EXTENSIONS", None)
    if "NEMOFLOW_REQUIRE_EXTENSIONS" not in env_changes:
        env.pop("NEMOFLOW_REQUIRE_EXTENSIONS", None)
    return subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


cython_available = importlib.util.find_spec("Cython") is not None


@pytest.mark.skipif(not cython_available, reason="needs Cython in this environment")
def test_cython_core_that_cannot_be_built_fails_the_install_saying_how_to_go_on(tmp_path):
    # pip hides what a successful build prints: a silent fallback to the twin would go
    # unnoticed, so by default the install fails, and pip shows this message.
    proc = _build_with_a_broken_compiler(tmp_path)
    assert proc.returncode != 0
    assert "the compiled core could not be compiled" in proc.stderr
    assert "NEMOFLOW_NO_EXTENSIONS=1" in proc.stderr
    assert "NEMOFLOW_REQUIRE_EXTENSIONS=0" in proc.stderr


@pytest.mark.skipif(not cython_available, reason="needs Cython in this environment")
def test_cython_core_build_falls_back_when_asked(tmp_path):
    proc = _build_with_a_broken_compiler(tmp_path, NEMOFLOW_REQUIRE_EXTENSIONS="0")
    assert proc.returncode == 0, proc.stderr
    assert "using the pure-Python twin" in proc.stderr
    assert not list((tmp_path / "nemoflow").glob("_core*.so"))
