"""Process exit, shared by both cores: the time limit, the report, multiprocessing children."""

from __future__ import annotations

import math
import os
import sys

DEFAULT_TIMEOUT = 5.0


def check_timeout(value) -> float:
    """``value`` as seconds, or ``ValueError``."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value < 0):
        raise ValueError(f"exit_timeout must be a finite number of seconds >= 0, not {value!r}")
    return float(value)


def timeout_from_env() -> float:
    """``NEMOFLOW_EXIT_TIMEOUT`` (seconds), or the default."""
    raw = os.environ.get("NEMOFLOW_EXIT_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        return check_timeout(float(raw))
    except ValueError:
        sys.stderr.write(f"nemoflow: ignoring NEMOFLOW_EXIT_TIMEOUT={raw!r} (not seconds >= 0); "
                         f"using {DEFAULT_TIMEOUT:g}\n")
        return DEFAULT_TIMEOUT


def report_abandoned(n: int, timeout: float) -> None:
    """One line on stderr: warnings at exit may never be shown."""
    try:
        sys.stderr.write(f"nemoflow: exit gave up on {n} events not delivered to every subscriber "
                         f"and exporter (exit_timeout={timeout:g} s, NEMOFLOW_EXIT_TIMEOUT)\n")
        sys.stderr.flush()
    except Exception:
        pass


# multiprocessing's fork and forkserver children end with os._exit, so atexit never runs there;
# what they do run is multiprocessing.util._exit_function, which calls the finalizers registered
# with util.Finalize. The child's bootstrap clears those first, then runs the after-fork hooks
# (util.register_after_fork): the finalizer is registered again from there.

class _ChildHook:
    __slots__ = ("fn", "watching", "pid", "__weakref__")

    def __init__(self, fn):
        self.fn = fn
        self.watching = False
        self.pid = 0

    def __call__(self):
        mp = sys.modules.get("multiprocessing")
        if mp is not None and mp.parent_process() is not None:  # the main process has atexit
            self.fn()


_hooks: dict = {}  # id(fn) -> _ChildHook (util.register_after_fork keeps only a weak reference)


def _finalize(hook) -> None:
    util = sys.modules.get("multiprocessing.util")
    if util is not None and hook.pid != os.getpid():
        hook.pid = os.getpid()
        util.Finalize(None, hook, exitpriority=10)


def _after_fork(hook) -> None:
    hook.pid = 0  # the bootstrap cleared the finalizers
    _finalize(hook)


def watch_children(fn) -> None:
    """Call ``fn()`` when this process, if it is a multiprocessing child, ends."""
    util = sys.modules.get("multiprocessing.util")
    if util is None:
        return
    hook = _hooks.get(id(fn))
    if hook is None or hook.fn is not fn:
        hook = _hooks[id(fn)] = _ChildHook(fn)
    if not hook.watching:
        hook.watching = True
        util.register_after_fork(hook, _after_fork)
    _finalize(hook)
