"""Running the managed-call pipeline from synchronous and asynchronous code.

The pipeline is written once, as coroutines; ``settle_async`` / ``settle_sync`` decide how a
callback's result is waited for, ``drive`` runs a coroutine that never suspends, and
``block_on`` / ``LoopRunner`` run an awaitable from synchronous code on a private event loop (in
a helper thread when the calling thread already runs one).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading


async def settle_async(value):
    if inspect.isawaitable(value):
        return await value
    return value


async def settle_sync(value):
    # Never suspends: the pipeline coroutine of a synchronous call completes in one step.
    if inspect.isawaitable(value):
        return block_on(value)
    return value


def drive(coro):
    """Run a coroutine that never suspends (a synchronous call's pipeline) to its result."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("nemoflow: a synchronous managed call suspended")


def any_async(entries) -> bool:
    """Whether one of the middleware ``entries`` is an ``async def`` callback."""
    return any(inspect.iscoroutinefunction(e.fn) for e in entries)


async def _awaited(awaitable):
    return await awaitable


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _in_helper_thread(run, name):
    """``run()`` in a new thread, in a copy of the caller's context; its result or error."""
    box = {}
    ctx = contextvars.copy_context()

    def target():
        try:
            box["value"] = ctx.run(run)
        except BaseException as exc:  # delivered to the caller below
            box["error"] = exc

    t = threading.Thread(target=target, name=name)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def block_on(awaitable):
    """Run an awaitable to completion from synchronous code."""
    if not _loop_running():
        return asyncio.run(_awaited(awaitable))
    # This thread runs an event loop already: run it on a private loop in a helper thread.
    return _in_helper_thread(lambda: asyncio.run(_awaited(awaitable)), "nemoflow-middleware")


class LoopRunner:
    """Runs the steps of one synchronous stream on a private event loop, for async stream
    intercepts. From a thread that already runs a loop, each step runs in a helper thread."""

    def __init__(self):
        self.loop = None

    def __call__(self, awaitable):
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        loop = self.loop
        if not _loop_running():
            return loop.run_until_complete(_awaited(awaitable))
        return _in_helper_thread(lambda: loop.run_until_complete(_awaited(awaitable)),
                                 "nemoflow-stream")

    def close(self):
        if self.loop is None:
            return
        try:
            self(self.loop.shutdown_asyncgens())
        finally:
            loop, self.loop = self.loop, None
            loop.close()
