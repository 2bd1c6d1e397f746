"""Where the current scope lives: asyncio tasks, threads, executors, callbacks, fork and exit.

The headline is the first test: many concurrent tasks started under one scope each nest their
own scopes under it. NeMo Flow shares one mutable stack between them and fails exactly there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import os
import pathlib
import subprocess
import sys
import threading
import traceback

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def run_in_thread(fn, *args):
    """Run ``fn`` in a plain new thread; return its result or re-raise its exception here."""
    box = {}

    def target():
        try:
            box["result"] = fn(*args)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("result")


def starts(events):
    return {e.name: e for e in events if e.kind == "scope" and e.scope_category == "start"}


# ---------------------------------------------------------------------------------------------
# asyncio


N_TASKS = 150


def test_concurrent_tasks_nest_under_their_own_scopes(nf, events):
    async def worker(i, outer_uuid):
        with nf.scope.scope(f"task-{i}", nf.ScopeType.Agent) as task_scope:
            assert task_scope.parent_uuid == outer_uuid
            await asyncio.sleep(0)
            step = nf.scope.push(f"step-{i}", nf.ScopeType.Function)
            assert step.parent_uuid == task_scope.uuid
            await asyncio.sleep(0)
            with nf.scope.scope(f"leaf-{i}", nf.ScopeType.Tool) as leaf:
                assert leaf.parent_uuid == step.uuid
                await asyncio.sleep(0)
                nf.scope.event(f"mark-{i}")
                await asyncio.sleep(0)
                assert nf.scope.get_handle().uuid == leaf.uuid
            await asyncio.sleep(0)
            assert nf.scope.get_handle().uuid == step.uuid
            nf.scope.pop(step)
            await asyncio.sleep(0)
            sibling = nf.scope.push(f"sibling-{i}", nf.ScopeType.Function)
            await asyncio.sleep(0)
            nf.scope.pop(sibling)
            assert nf.scope.get_handle().uuid == task_scope.uuid
        return task_scope.uuid

    async def main():
        with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
            results = await asyncio.gather(*(worker(i, outer.uuid) for i in range(N_TASKS)),
                                           return_exceptions=True)
            assert nf.scope.get_handle().uuid == outer.uuid
        return outer, results

    outer, results = asyncio.run(main())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []

    by_name = starts(events)
    for i in range(N_TASKS):
        assert by_name[f"task-{i}"].parent_uuid == outer.uuid
        assert by_name[f"task-{i}"].uuid == results[i]
        assert by_name[f"step-{i}"].parent_uuid == results[i]
        assert by_name[f"leaf-{i}"].parent_uuid == by_name[f"step-{i}"].uuid
        assert by_name[f"sibling-{i}"].parent_uuid == results[i]
    marks = {e.name: e for e in events if e.kind == "mark"}
    for i in range(N_TASKS):
        assert marks[f"mark-{i}"].parent_uuid == by_name[f"leaf-{i}"].uuid

    # every scope that started also ended, exactly once, and the outer scope ended last
    scope_events = [e for e in events if e.kind == "scope"]
    started = [e.uuid for e in scope_events if e.scope_category == "start"]
    ended = [e.uuid for e in scope_events if e.scope_category == "end"]
    assert sorted(started) == sorted(ended)
    assert len(set(started)) == len(started) == 1 + 4 * N_TASKS
    assert (events[-1].name, events[-1].scope_category) == ("outer", "end")
    assert events[-1].metadata == {"otel.status_code": "OK"}
    assert all(e.metadata == {"otel.status_code": "OK"}
               for e in scope_events if e.scope_category == "end" and e.name != "outer"
               and not e.name.startswith(("step-", "sibling-")))


def test_task_pushes_do_not_leak_into_parent(nf, events):
    async def main():
        outer = nf.scope.push("outer", nf.ScopeType.Agent)

        async def child():
            nf.scope.push("left-open-in-child", nf.ScopeType.Function)

        await asyncio.create_task(child())
        assert nf.scope.get_handle().uuid == outer.uuid
        nf.scope.pop(outer)

    asyncio.run(main())


def test_fork_asyncio_context_tasks_parent_to_caller_scope(nf, events):
    if sys.version_info < (3, 11):
        pytest.skip("asyncio.create_task(context=...) needs Python 3.11")

    async def main():
        with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
            ctx = nf.fork_asyncio_context()
            assert isinstance(ctx, contextvars.Context)

            async def child():
                h = nf.scope.push("in-forked", nf.ScopeType.Function)
                await asyncio.sleep(0)
                return h, nf.capture().root_uuid

            h, child_root = await asyncio.create_task(child(), context=ctx)
            assert h.parent_uuid == outer.uuid
            assert child_root == nf.capture().root_uuid
            assert nf.scope.get_handle().uuid == outer.uuid

    asyncio.run(main())


def test_fork_asyncio_context_in_fresh_thread_shares_root(nf):
    def fresh():
        assert not nf.scope_stack_active()
        ctx = nf.fork_asyncio_context()
        assert nf.scope_stack_active()
        return ctx.run(lambda: nf.capture().root_uuid), nf.capture().root_uuid

    in_ctx, here = run_in_thread(fresh)
    assert in_ctx == here


def test_call_soon_with_wrap_uses_captured_scope(nf, events):
    async def main():
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        seen = {}

        def callback():
            h = nf.scope.push("in-callback", nf.ScopeType.Function)
            nf.scope.pop(h)
            seen["parent"] = h.parent_uuid
            done.set()

        with nf.scope.scope("a", nf.ScopeType.Agent) as a:
            wrapped = nf.wrap(callback)
            with nf.scope.scope("b", nf.ScopeType.Agent) as b:
                loop.call_soon(wrapped)
                await done.wait()
        return a, b, seen

    a, b, seen = asyncio.run(main())
    assert seen["parent"] == a.uuid != b.uuid
    assert starts(events)["in-callback"].parent_uuid == a.uuid


def test_run_in_executor_with_wrap(nf, events):
    async def main():
        loop = asyncio.get_running_loop()

        def job(x):
            h = nf.scope.push(f"job-{x}", nf.ScopeType.Function)
            nf.scope.pop(h)
            return h.parent_uuid, threading.get_ident()

        with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
            results = await asyncio.gather(
                *(loop.run_in_executor(None, nf.wrap(job), i) for i in range(8)))
        return outer, results

    outer, results = asyncio.run(main())
    assert [parent for parent, _ in results] == [outer.uuid] * 8
    assert any(ident != threading.get_ident() for _, ident in results)
    for i in range(8):
        assert starts(events)[f"job-{i}"].parent_uuid == outer.uuid


# ---------------------------------------------------------------------------------------------
# threads


def test_plain_thread_starts_with_its_own_root(nf, events):
    main_root = nf.capture().root_uuid
    with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
        def worker():
            h = nf.scope.push("in-thread", nf.ScopeType.Function)
            nf.scope.pop(h)
            return h.parent_uuid, nf.capture().root_uuid

        parent, thread_root = run_in_thread(worker)
    assert parent == thread_root
    assert parent not in (outer.uuid, main_root)
    assert starts(events)["in-thread"].parent_uuid == thread_root


def test_two_plain_threads_get_different_roots(nf):
    roots = [run_in_thread(lambda: nf.capture().root_uuid) for _ in range(2)]
    assert roots[0] != roots[1]


def test_propagate_scope_to_thread(nf, events):
    with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
        stack = nf.propagate_scope_to_thread()

        def worker():
            nf.set_thread_scope_stack(stack)
            with nf.scope.scope("w", nf.ScopeType.Function) as w:
                inner = nf.scope.push("w-inner", nf.ScopeType.Function)
                nf.scope.pop(inner)
            return w.parent_uuid, inner.parent_uuid, w.uuid, nf.capture().root_uuid

        w_parent, inner_parent, w_uuid, root = run_in_thread(worker)
    assert w_parent == outer.uuid
    assert inner_parent == w_uuid
    assert root == nf.capture().root_uuid
    assert starts(events)["w"].parent_uuid == outer.uuid


def test_bind_capture_in_thread(nf, events):
    with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
        binding = nf.capture()
        assert isinstance(binding, nf.Binding)

        def worker():
            with nf.bind(binding):
                h = nf.scope.push("w", nf.ScopeType.Function)
                nf.scope.pop(h)
            return h.parent_uuid, nf.scope_stack_active()

        parent, active_after = run_in_thread(worker)
    assert parent == outer.uuid
    assert active_after is False  # bind restored the thread's (empty) binding


def test_wrap_in_thread(nf, events):
    with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
        def job():
            h = nf.scope.push("w", nf.ScopeType.Function)
            nf.scope.pop(h)
            return h.parent_uuid

        wrapped = nf.wrap(job)
    assert run_in_thread(wrapped) == outer.uuid
    assert starts(events)["w"].parent_uuid == outer.uuid


def test_wrap_passes_arguments_and_return_value(nf):
    def add(a, b=0):
        """adds"""
        return a + b

    wrapped = nf.wrap(add)
    assert wrapped(1, b=2) == 3
    assert wrapped.__name__ == "add"
    assert wrapped.__doc__ == "adds"


def test_wrap_async_function_runs_body_under_captured_scope(nf, events):
    async def job():
        h = nf.scope.push("async-job", nf.ScopeType.Function)
        await asyncio.sleep(0)
        nf.scope.pop(h)
        return h.parent_uuid

    with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
        wrapped = nf.wrap(job)
    assert run_in_thread(lambda: asyncio.run(wrapped())) == outer.uuid


def test_thread_pool_submit_wrap_and_restore(nf, events):
    with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
        def job(i):
            h = nf.scope.push(f"job-{i}", nf.ScopeType.Function)
            nf.scope.pop(h)
            return h.parent_uuid

        def probe():
            return nf.scope_stack_active()

        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            parents = [pool.submit(nf.wrap(job), i).result() for i in range(5)]
            # the worker thread's own binding is restored after each wrapped job
            active = pool.submit(probe).result()
    assert parents == [outer.uuid] * 5
    assert active is False


def test_wrapped_function_raising_restores_binding(nf):
    with nf.scope.scope("outer", nf.ScopeType.Agent):
        wrapped = nf.wrap(lambda: 1 / 0)

    def worker():
        with pytest.raises(ZeroDivisionError):
            wrapped()
        return nf.scope_stack_active()

    assert run_in_thread(worker) is False


def test_scope_stack_active_and_propagate_in_fresh_thread(nf):
    def worker():
        states = [nf.scope_stack_active()]
        with pytest.raises(RuntimeError):
            nf.propagate_scope_to_thread()
        states.append(nf.scope_stack_active())  # a failed propagate creates nothing
        nf.get_scope_stack()
        states.append(nf.scope_stack_active())
        return states

    assert run_in_thread(worker) == [False, False, True]
    assert nf.scope_stack_active() is True


def test_scope_stack_active_after_push_in_fresh_thread(nf):
    def worker():
        h = nf.scope.push("x", nf.ScopeType.Function)
        active = nf.scope_stack_active()
        nf.scope.pop(h)
        return active, nf.propagate_scope_to_thread().root_uuid == nf.capture().root_uuid

    assert run_in_thread(worker) == (True, True)


def test_create_scope_stack_is_new_and_unbound(nf, events):
    before = nf.scope.get_handle().uuid
    stack = nf.create_scope_stack()
    assert isinstance(stack, nf.ScopeStack)
    assert stack.root_uuid != nf.capture().root_uuid
    assert stack.handle.parent_uuid is None
    assert nf.scope.get_handle().uuid == before  # creating does not bind
    with nf.use_scope_stack(stack):
        assert nf.capture().root_uuid == stack.root_uuid
        h = nf.scope.push("x", nf.ScopeType.Agent)
        nf.scope.pop(h)
    assert h.parent_uuid == stack.root_uuid


def test_use_scope_stack_restores_previous_binding(nf, events):
    with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
        other = nf.create_scope_stack()
        with nf.use_scope_stack(other):
            assert nf.scope.get_handle().uuid == other.root_uuid
        assert nf.scope.get_handle().uuid == outer.uuid
        with pytest.raises(ValueError, match="boom"):
            with nf.use_scope_stack(other):
                nf.scope.event("in-other")
                raise ValueError("boom")
        assert nf.scope.get_handle().uuid == outer.uuid
        nf.scope.event("back")
    marks = {e.name: e for e in events if e.kind == "mark"}
    assert marks["in-other"].parent_uuid == other.root_uuid
    assert marks["back"].parent_uuid == outer.uuid


def test_bind_restores_previous_binding(nf, events):
    outer = nf.scope.push("outer", nf.ScopeType.Agent)
    binding = nf.capture()
    nf.scope.pop(outer)
    before = nf.scope.get_handle().uuid
    with nf.bind(binding):
        assert nf.scope.get_handle().uuid == outer.uuid
    assert nf.scope.get_handle().uuid == before
    with pytest.raises(KeyError):
        with nf.bind(binding):
            raise KeyError("x")
    assert nf.scope.get_handle().uuid == before
    # the same binding can be bound again, and nested
    with nf.bind(binding):
        with nf.bind(binding):
            pass
        assert nf.scope.get_handle().uuid == outer.uuid
    assert nf.scope.get_handle().uuid == before


def test_bind_rejects_non_binding(nf):
    with pytest.raises(TypeError):
        nf.bind(object())


def test_many_threads_push_pop_concurrently(nf, events):
    n_threads, n_pairs = 8, 2000
    barrier = threading.Barrier(n_threads)

    with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
        def worker(t):
            barrier.wait()
            bad = 0
            with nf.scope.scope(f"thread-{t}", nf.ScopeType.Agent) as mine:
                if mine.parent_uuid != outer.uuid:
                    bad += 1
                for _ in range(n_pairs):
                    h = nf.scope.push("op", nf.ScopeType.Function)
                    if h.parent_uuid != mine.uuid or nf.scope.get_handle() is not h:
                        bad += 1
                    nf.scope.pop(h)
                if nf.scope.get_handle().uuid != mine.uuid:
                    bad += 1
            return mine.uuid, bad

        with concurrent.futures.ThreadPoolExecutor(max_workers=n_threads) as pool:
            results = list(pool.map(nf.wrap(worker), range(n_threads)))

    assert [bad for _, bad in results] == [0] * n_threads
    thread_uuids = {u for u, _ in results}
    ops = [e for e in events if e.name == "op"]
    assert len(ops) == 2 * n_threads * n_pairs
    assert {e.parent_uuid for e in ops} == thread_uuids
    per_parent = {}
    for e in ops:
        per_parent[e.parent_uuid] = per_parent.get(e.parent_uuid, 0) + 1
    assert sorted(per_parent.values()) == [2 * n_pairs] * n_threads


# ---------------------------------------------------------------------------------------------
# generators


def test_scope_inside_generator_between_yields(nf, events):
    def gen():
        for i in range(3):
            with nf.scope.scope(f"g-{i}", nf.ScopeType.Function) as h:
                nf.scope.event(f"m-{i}")
            yield h
            p = nf.scope.push(f"p-{i}", nf.ScopeType.Tool)
            nf.scope.pop(p, output=i)

    with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
        handles = list(gen())
        assert nf.scope.get_handle().uuid == outer.uuid
    by_name = starts(events)
    for i in range(3):
        assert by_name[f"g-{i}"].parent_uuid == outer.uuid
        assert by_name[f"p-{i}"].parent_uuid == outer.uuid
        assert handles[i].uuid == by_name[f"g-{i}"].uuid
    marks = [e for e in events if e.kind == "mark"]
    assert [m.parent_uuid for m in marks] == [h.uuid for h in handles]
    assert [e.scope_category for e in events if e.kind == "scope"].count("end") == 7


def test_async_generator_scope_between_yields(nf, events):
    async def agen():
        for i in range(3):
            with nf.scope.scope(f"ag-{i}", nf.ScopeType.Function) as h:
                await asyncio.sleep(0)
            yield h

    async def main():
        with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
            got = [h async for h in agen()]
        return outer, got

    outer, got = asyncio.run(main())
    assert [h.parent_uuid for h in got] == [outer.uuid] * 3
    assert len(events) == 8


# ---------------------------------------------------------------------------------------------
# processes


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_traces_on_its_own(nf, events):
    r, w = os.pipe()
    with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = 1
            try:
                os.close(r)
                seen = []
                nf.subscribers.register("child", seen.append)
                h = nf.scope.push("child-scope", nf.ScopeType.Function)
                uuids = []
                for _ in range(200):
                    nf.scope.event("child-mark")
                    uuids.append(seen[-1].uuid)
                nf.scope.pop(h)
                report = {"parent": h.parent_uuid, "uuid": h.uuid, "marks": uuids,
                          "mark_parents": sorted({e.parent_uuid for e in seen
                                                  if e.kind == "mark"}),
                          "end_seen": seen[-1].scope_category == "end"}
                os.write(w, json.dumps(report).encode())
                code = 0
            except BaseException:
                os.write(w, json.dumps({"error": traceback.format_exc()}).encode())
            finally:
                os._exit(code)
        os.close(w)
        parent_uuids = []
        for _ in range(200):
            nf.scope.event("parent-mark")
            parent_uuids.append(events[-1].uuid)
        chunks = []
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(r)
        _, status = os.waitpid(pid, 0)
    report = json.loads(b"".join(chunks) or b"{}")
    assert "error" not in report, report.get("error")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert report["parent"] == outer.uuid
    assert report["mark_parents"] == [report["uuid"]]
    assert report["end_seen"] is True
    child_ids = set(report["marks"]) | {report["uuid"]}
    assert len(child_ids) == 201
    parent_ids = set(parent_uuids) | {e.uuid for e in events}
    assert not child_ids & parent_ids
    # the parent's stream was not touched by the child
    assert not any(e.name.startswith("child") for e in events)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_buffered_subscriber_and_flush(nf, events):
    parent_seen = []
    nf.subscribers.register("parent-buf", parent_seen.append, buffered=True)
    nf.scope.event("before-fork")
    nf.subscribers.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the delivery thread must work here too (a hang is killed by alarm)
        code = 1
        try:
            import signal
            signal.alarm(20)
            os.close(r)
            child_seen = []
            nf.subscribers.register("child-buf", child_seen.append, buffered=True)
            for i in range(50):
                nf.scope.event(f"child-{i}")
            nf.subscribers.flush()
            report = {"child": [e.name for e in child_seen],
                      "parent_buf": [e.name for e in parent_seen]}
            os.write(w, json.dumps(report).encode())
            code = 0
        except BaseException:
            os.write(w, json.dumps({"error": traceback.format_exc()}).encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    report = json.loads(b"".join(chunks) or b"{}")
    assert "error" not in report, report.get("error")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert report["child"] == [f"child-{i}" for i in range(50)]
    # the child's copy of the parent's subscriber got the child's events, nothing twice
    assert report["parent_buf"] == ["before-fork"] + [f"child-{i}" for i in range(50)]
    nf.scope.event("after-fork")
    nf.subscribers.flush()
    assert [e.name for e in parent_seen] == ["before-fork", "after-fork"]


def _backend_env(nf):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    if nf.BACKEND == "python":
        env["NEMOFLOW_NO_EXTENSIONS"] = "1"
    else:
        env.pop("NEMOFLOW_NO_EXTENSIONS", None)
    return env


EXIT_SCRIPT = r"""
import asyncio, threading
import nemoflow as nf
print(nf.BACKEND)
seen = []
nf.subscribers.register("left-registered", seen.append)
outer = nf.scope.push("left-open", nf.ScopeType.Agent)
nf.scope_local.register_subscriber(outer, "local", lambda e: None)
nf.scope.event("m", data={"x": 1})

def worker():
    nf.scope.push("thread-left-open", nf.ScopeType.Function)
    nf.scope.event("thread-mark")

t = threading.Thread(target=worker)
t.start()
t.join()

async def main():
    nf.scope.push("task-left-open", nf.ScopeType.Function)

asyncio.run(main())
assert len(seen) == 5, seen
print("ok")
"""


BUFFERED_EXIT_SCRIPT = r"""
import sys
import nemoflow as nf
out = open(sys.argv[1], "w")

def deliver(event):
    out.write(event.name + "\n")
    out.flush()

nf.subscribers.register("buf", deliver, buffered=True)
h = nf.scope.push("left-open", nf.ScopeType.Agent)
for i in range(100):
    nf.scope.event("m%d" % i)
print("ok")
"""


def test_interpreter_exit_delivers_pending_buffered_events(nf, tmp_path):
    out = tmp_path / "delivered.txt"
    proc = subprocess.run([sys.executable, "-c", BUFFERED_EXIT_SCRIPT, str(out)],
                          env=_backend_env(nf), capture_output=True, text=True, timeout=60,
                          cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok"]
    assert "Traceback" not in proc.stderr
    assert out.read_text().split() == ["left-open"] + ["m%d" % i for i in range(100)]


def test_interpreter_exit_with_open_scopes_and_subscribers(nf):
    proc = subprocess.run([sys.executable, "-c", EXIT_SCRIPT], env=_backend_env(nf),
                          capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [nf.BACKEND, "ok"]
    assert "Traceback" not in proc.stderr
    assert "Exception ignored" not in proc.stderr
    assert proc.stderr.strip() == ""


FINALIZE_SCRIPT = r"""
import sys
import nemoflow as nf
out = open(sys.argv[1], "w")  # written to, never flushed or closed: exit must finalize it
out.write("written-before-exit\n")
nf.subscribers.register("sync", lambda e: out.write(e.name + "\n"))
nf.scope.event("m")
"""


def test_interpreter_exit_finalizes_objects_held_by_subscribers(nf, tmp_path):
    out = tmp_path / "out.txt"
    proc = subprocess.run([sys.executable, "-c", FINALIZE_SCRIPT, str(out)],
                          env=_backend_env(nf), capture_output=True, text=True, timeout=60,
                          cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().split() == ["written-before-exit", "m"]
