"""Global and scope-local subscribers: order, isolation, serialization, lifetime, flush."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import warnings

import pytest


def names(events):
    return [(e.name, getattr(e, "scope_category", None)) for e in events]


# ---------------------------------------------------------------------------------------------
# global subscribers


def test_delivery_in_registration_order(nf):
    log = []
    for name in ("c", "a", "b"):
        nf.subscribers.register(name, lambda e, name=name: log.append((name, e.name)))
    nf.scope.event("m1")
    nf.scope.event("m2")
    assert log == [("c", "m1"), ("a", "m1"), ("b", "m1"), ("c", "m2"), ("a", "m2"), ("b", "m2")]


def test_delivery_on_emitting_thread_before_call_returns(nf):
    seen = []
    nf.subscribers.register("s", lambda e: seen.append((e.name, threading.get_ident())))
    h = nf.scope.push("x", nf.ScopeType.Function)
    assert seen == [("x", threading.get_ident())]
    nf.scope.event("m")
    assert len(seen) == 2

    def worker():
        nf.scope.event("from-thread")
        return threading.get_ident(), len(seen)

    box = []
    t = threading.Thread(target=lambda: box.append(worker()))
    t.start()
    t.join()
    ident, count_at_return = box[0]
    assert count_at_return == 3
    assert seen[-1] == ("from-thread", ident)
    nf.scope.pop(h)


def test_deregister_returns_true_then_false(nf):
    seen = []
    nf.subscribers.register("s", seen.append)
    nf.scope.event("before")
    assert nf.subscribers.deregister("s") is True
    assert nf.subscribers.deregister("s") is False
    assert nf.subscribers.deregister("never-registered") is False
    nf.scope.event("after")
    assert [e.name for e in seen] == ["before"]


def test_deregister_keeps_others_and_order(nf):
    log = []
    for name in ("a", "b", "c"):
        nf.subscribers.register(name, lambda e, name=name: log.append(name))
    assert nf.subscribers.deregister("b") is True
    nf.scope.event("m")
    assert log == ["a", "c"]
    nf.subscribers.register("b", lambda e: log.append("b2"))
    nf.scope.event("m")
    assert log == ["a", "c", "a", "c", "b2"]


def test_name_can_be_reused_after_deregister(nf):
    nf.subscribers.register("s", lambda e: None)
    nf.subscribers.deregister("s")
    seen = []
    nf.subscribers.register("s", seen.append)
    nf.scope.event("m")
    assert len(seen) == 1


@pytest.mark.parametrize("callback", [None, 42, "not callable"])
def test_register_requires_callable(nf, callback):
    with pytest.raises(TypeError):
        nf.subscribers.register("s", callback)
    nf.subscribers.register("s", lambda e: None)  # nothing half-registered


def test_raising_subscriber_is_isolated(nf):
    before, after = [], []
    nf.subscribers.register("before", before.append)

    def bad(event):
        raise ValueError(f"cannot handle {event.name}")

    nf.subscribers.register("bad", bad)
    nf.subscribers.register("after", after.append)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = nf.scope.push("x", nf.ScopeType.Function)
        nf.scope.event("m")
        nf.scope.pop(h)
        with nf.scope.scope("y", nf.ScopeType.Function):
            pass
    assert names(before) == names(after) == [
        ("x", "start"), ("m", None), ("x", "end"), ("y", "start"), ("y", "end")]
    diag = nf.diagnostics()["subscribers"]
    assert diag["bad"]["errors"] == 5
    assert diag["bad"]["calls"] == 5
    assert diag["before"]["errors"] == 0
    assert diag["after"]["calls"] == 5
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1
    assert "bad" in str(runtime[0].message)


def test_raising_subscriber_warns_once(nf):
    def bad(event):
        raise KeyError("nope")

    nf.subscribers.register("bad", bad)
    with pytest.warns(RuntimeWarning, match="bad"):
        nf.scope.event("first")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        nf.scope.event("second")
        nf.scope.event("third")
    assert nf.diagnostics()["subscribers"]["bad"]["errors"] == 3


def test_diagnostics_counts_calls(nf):
    nf.subscribers.register("s", lambda e: None)
    for _ in range(7):
        nf.scope.event("m")
    d = nf.diagnostics()
    assert d["subscribers"]["s"] == {"calls": 7, "errors": 0}
    assert d["backend"] == nf.BACKEND


def test_nothing_attached_delivers_nothing(nf):
    assert nf.diagnostics()["subscribers"] == {}
    h = nf.scope.push("x", nf.ScopeType.Function)
    nf.scope.event("m")
    nf.scope.pop(h)
    assert nf.diagnostics()["subscribers"] == {}


def test_deregistered_subscriber_is_no_longer_called(nf):
    seen = []
    nf.subscribers.register("s", seen.append)
    nf.scope.event("m")
    nf.subscribers.deregister("s")
    for _ in range(10):
        with nf.scope.scope("x", nf.ScopeType.Function):
            nf.scope.event("m")
    assert len(seen) == 1
    assert nf.diagnostics()["subscribers"]["s"]["calls"] == 1


def test_subscriber_never_entered_concurrently(nf):
    n_threads, n_marks = 8, 5000
    state = [0]
    inside = [False]
    overlaps = [0]

    def racy(event):
        if inside[0]:
            overlaps[0] += 1
        inside[0] = True
        n = state[0]
        # invite a thread switch in the middle of the read-modify-write: a call is a switch
        # point, and every 32nd time the GIL is released outright
        if n % 32 == 0:
            time.sleep(0)
        else:
            sys.getswitchinterval()
        state[0] = n + 1
        inside[0] = False

    nf.subscribers.register("racy", racy)
    barrier = threading.Barrier(n_threads)

    def worker():
        barrier.wait()
        for _ in range(n_marks):
            nf.scope.event("m")

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker) for _ in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert overlaps[0] == 0
    assert state[0] == n_threads * n_marks
    assert nf.diagnostics()["subscribers"]["racy"]["calls"] == n_threads * n_marks


def test_subscriber_may_emit_from_its_callback(nf):
    seen = []

    def echo(event):
        seen.append(event.name)
        if event.name == "ping":
            nf.scope.event("pong")

    nf.subscribers.register("echo", echo)
    nf.scope.event("ping")
    assert seen == ["ping", "pong"]


def test_buffered_subscriber_gets_events_on_delivery_thread_after_flush(nf):
    seen = []
    nf.subscribers.register("buf", lambda e: seen.append((e.name, getattr(
        e, "scope_category", None), threading.get_ident())), buffered=True)
    h = nf.scope.push("x", nf.ScopeType.Function)
    nf.scope.event("m")
    nf.scope.pop(h)
    nf.subscribers.flush()
    assert [(n, c) for n, c, _ in seen] == [("x", "start"), ("m", None), ("x", "end")]
    assert {ident for _, _, ident in seen} != {threading.get_ident()}


def test_buffered_subscriber_emission_order_per_thread(nf):
    seen = []
    nf.subscribers.register("buf", lambda e: seen.append(e.name), buffered=True)

    def worker(t):
        for i in range(200):
            nf.scope.event(f"{t}:{i}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    nf.subscribers.flush()
    assert len(seen) == 800
    for t in range(4):
        assert [n for n in seen if n.startswith(f"{t}:")] == [f"{t}:{i}" for i in range(200)]


def test_buffered_subscriber_flush_async(nf):
    seen = []
    nf.subscribers.register("buf", seen.append, buffered=True)

    async def main():
        nf.scope.event("m")
        await nf.subscribers.flush_async()
        return [e.name for e in seen]

    assert asyncio.run(main()) == ["m"]


def test_buffered_and_sync_subscribers_see_the_same_stream(nf, events):
    buffered = []
    nf.subscribers.register("buf", buffered.append, buffered=True)
    with nf.scope.scope("s", nf.ScopeType.Agent):
        nf.scope.event("m", data={"k": 1})
    nf.subscribers.flush()
    assert [e.to_json() for e in buffered] == [e.to_json() for e in events]


def test_raising_buffered_subscriber_is_isolated(nf, events):
    def bad(event):
        raise ValueError("buffered boom")

    nf.subscribers.register("bad-buf", bad, buffered=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nf.scope.event("m1")
        nf.scope.event("m2")
        nf.subscribers.flush()
    assert [e.name for e in events] == ["m1", "m2"]
    assert nf.diagnostics()["subscribers"]["bad-buf"]["errors"] == 2


def test_buffered_must_be_bool(nf):
    with pytest.raises(TypeError):
        nf.subscribers.register("buf", lambda e: None, buffered="yes")


# ---------------------------------------------------------------------------------------------
# flush


def test_flush_returns(nf, events):
    nf.scope.event("m")
    assert nf.subscribers.flush() is None
    assert len(events) == 1


def test_flush_inside_running_loop_raises(nf):
    async def main():
        with pytest.raises(RuntimeError, match="flush_async"):
            nf.subscribers.flush()
        await nf.subscribers.flush_async()

    asyncio.run(main())


def test_flush_from_executor_thread_of_running_loop_returns(nf, events):
    async def main():
        nf.scope.event("m")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, nf.subscribers.flush)

    assert asyncio.run(main()) is None
    assert len(events) == 1


def test_flush_async(nf, events):
    async def main():
        nf.scope.event("m")
        await nf.subscribers.flush_async()
        return len(events)

    assert asyncio.run(main()) == 1


# ---------------------------------------------------------------------------------------------
# scope-local subscribers


def test_scope_local_sees_events_while_scope_is_on_stack(nf):
    seen = []
    s = nf.scope.push("s", nf.ScopeType.Agent)
    nf.scope_local.register_subscriber(s, "local", seen.append)
    nf.scope.event("m1")
    with nf.scope.scope("child", nf.ScopeType.Function):
        nf.scope.event("m2")
        grand = nf.scope.push("grandchild", nf.ScopeType.Tool)
        nf.scope.pop(grand)
    nf.scope.pop(s, output={"done": True})
    assert names(seen) == [
        ("m1", None), ("child", "start"), ("m2", None), ("grandchild", "start"),
        ("grandchild", "end"), ("child", "end"), ("s", "end")]
    assert seen[-1].data == {"done": True}


def test_scope_local_does_not_see_its_own_start(nf):
    seen = []
    with nf.scope.scope("s", nf.ScopeType.Agent) as s:
        nf.scope_local.register_subscriber(s, "local", seen.append)
    assert names(seen) == [("s", "end")]


def test_scope_local_dropped_on_pop(nf):
    seen = []
    s = nf.scope.push("s", nf.ScopeType.Agent)
    nf.scope_local.register_subscriber(s, "local", seen.append)
    nf.scope.pop(s)
    sibling = nf.scope.push("sibling", nf.ScopeType.Agent)
    nf.scope.event("m")
    nf.scope.pop(sibling)
    with nf.scope.scope("later", nf.ScopeType.Agent):
        nf.scope.event("m2")
    nf.scope.event("top-level")
    assert names(seen) == [("s", "end")]
    assert nf.diagnostics()["subscribers"]["local"]["calls"] == 1


def test_scope_local_dropped_on_scope_context_exit_with_error(nf):
    seen = []
    with pytest.raises(ValueError):
        with nf.scope.scope("s", nf.ScopeType.Agent) as s:
            nf.scope_local.register_subscriber(s, "local", seen.append)
            raise ValueError("x")
    nf.scope.event("after")
    assert names(seen) == [("s", "end")]


def test_scope_local_not_in_sibling_scope(nf):
    seen = []
    parent = nf.scope.push("parent", nf.ScopeType.Agent)
    a = nf.scope.push("a", nf.ScopeType.Function)
    nf.scope_local.register_subscriber(a, "local-a", seen.append)
    nf.scope.pop(a)
    b = nf.scope.push("b", nf.ScopeType.Function)
    nf.scope.event("in-b")
    nf.scope.pop(b)
    nf.scope.pop(parent)
    assert names(seen) == [("a", "end")]


def test_scope_local_not_in_other_threads(nf):
    seen = []
    s = nf.scope.push("s", nf.ScopeType.Agent)
    nf.scope_local.register_subscriber(s, "local", seen.append)

    def worker():
        h = nf.scope.push("in-thread", nf.ScopeType.Function)
        nf.scope.pop(h)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    nf.scope.event("here")
    nf.scope.pop(s)
    assert names(seen) == [("here", None), ("s", "end")]


def test_scope_local_sees_bound_worker_thread(nf):
    seen = []
    with nf.scope.scope("s", nf.ScopeType.Agent) as s:
        nf.scope_local.register_subscriber(
            s, "local", lambda e: seen.append((e.name, threading.get_ident())))

        def job():
            with nf.scope.scope("in-worker", nf.ScopeType.Function):
                pass
            return threading.get_ident()

        box = []
        wrapped = nf.wrap(job)
        t = threading.Thread(target=lambda: box.append(wrapped()))
        t.start()
        t.join()
    assert seen == [("in-worker", box[0]), ("in-worker", box[0]), ("s", threading.get_ident())]


def test_scope_local_in_child_tasks(nf):
    seen = []

    async def main():
        with nf.scope.scope("s", nf.ScopeType.Agent) as s:
            nf.scope_local.register_subscriber(s, "local", seen.append)

            async def child(i):
                await asyncio.sleep(0)
                nf.scope.event(f"task-{i}")

            await asyncio.gather(*(child(i) for i in range(3)))

    asyncio.run(main())
    assert sorted(e.name for e in seen if e.kind == "mark") == ["task-0", "task-1", "task-2"]
    assert names(seen)[-1] == ("s", "end")


def test_scope_locals_delivered_after_globals_outer_first(nf):
    log = []
    nf.subscribers.register("g1", lambda e: log.append(("g1", e.name)))
    outer = nf.scope.push("outer", nf.ScopeType.Agent)
    inner = nf.scope.push("inner", nf.ScopeType.Function)
    # register inner first, to show the order is by scope, not by registration
    nf.scope_local.register_subscriber(inner, "inner-local", lambda e: log.append(("in", e.name)))
    nf.scope_local.register_subscriber(outer, "outer-local", lambda e: log.append(("out", e.name)))
    nf.scope_local.register_subscriber(outer, "outer-local-2",
                                       lambda e: log.append(("out2", e.name)))
    nf.subscribers.register("g2", lambda e: log.append(("g2", e.name)))
    log.clear()
    nf.scope.event("m")
    assert log == [("g1", "m"), ("g2", "m"), ("out", "m"), ("out2", "m"), ("in", "m")]
    log.clear()
    nf.scope.pop(inner)
    assert log == [("g1", "inner"), ("g2", "inner"), ("out", "inner"), ("out2", "inner"),
                   ("in", "inner")]
    log.clear()
    nf.scope.event("m")
    assert log == [("g1", "m"), ("g2", "m"), ("out", "m"), ("out2", "m")]
    nf.scope.pop(outer)


def test_scope_local_deregister(nf):
    seen = []
    s = nf.scope.push("s", nf.ScopeType.Agent)
    nf.scope_local.register_subscriber(s, "local", seen.append)
    nf.scope.event("m1")
    assert nf.scope_local.deregister_subscriber(s, "local") is True
    assert nf.scope_local.deregister_subscriber(s, "local") is False
    assert nf.scope_local.deregister_subscriber(s, "other") is False
    nf.scope.event("m2")
    nf.scope.pop(s)
    assert [e.name for e in seen] == ["m1"]


def test_scope_local_same_name_on_different_scopes(nf):
    log = []
    outer = nf.scope.push("outer", nf.ScopeType.Agent)
    inner = nf.scope.push("inner", nf.ScopeType.Function)
    nf.scope_local.register_subscriber(outer, "same", lambda e: log.append("outer"))
    nf.scope_local.register_subscriber(inner, "same", lambda e: log.append("inner"))
    nf.scope.event("m")
    assert log == ["outer", "inner"]
    assert nf.scope_local.deregister_subscriber(inner, "same") is True
    nf.scope.event("m")
    assert log == ["outer", "inner", "outer"]
    nf.scope.pop(inner)
    nf.scope.pop(outer)


def test_scope_local_duplicate_name_already_exists(nf):
    s = nf.scope.push("s", nf.ScopeType.Agent)
    seen = []
    nf.scope_local.register_subscriber(s, "local", seen.append)
    with pytest.raises(nf.AlreadyExistsError):
        nf.scope_local.register_subscriber(s, "local", lambda e: None)
    nf.scope.event("m")
    nf.scope.pop(s)
    assert [e.name for e in seen] == ["m", "s"]


def test_raising_scope_local_is_isolated(nf, events):
    s = nf.scope.push("s", nf.ScopeType.Agent)
    other = []

    def bad(event):
        raise RuntimeError("local boom")

    nf.scope_local.register_subscriber(s, "bad-local", bad)
    nf.scope_local.register_subscriber(s, "good-local", other.append)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nf.scope.event("m")
        nf.scope.pop(s)
    assert [e.name for e in other] == ["m", "s"]
    assert names(events) == [("s", "start"), ("m", None), ("s", "end")]
    assert nf.diagnostics()["subscribers"]["bad-local"]["errors"] == 2


def test_counters_of_subscribers_under_ever_new_names_stay_bounded(nf):
    # A subscriber per request under a unique name must not grow diagnostics() without bound;
    # what such subscribers counted is kept, folded into one "retired" entry.
    def bad(event):
        raise RuntimeError("every call fails")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(3000):
            nf.subscribers.register(f"request-{i}", bad if i % 2 else (lambda e: None))
            nf.scope.event("m")
            nf.subscribers.deregister(f"request-{i}")
    nf.subscribers.register("live", lambda e: None)
    diag = nf.diagnostics()
    assert len(diag["subscribers"]) <= 1024
    assert "live" in diag["subscribers"] and "request-2999" in diag["subscribers"]
    retired = diag["retired_subscribers"]
    kept = [v for k, v in diag["subscribers"].items() if k.startswith("request-")]
    assert retired["subscribers"] + len(kept) == 3000
    assert retired["calls"] + sum(v["calls"] for v in kept) == 3000
    assert retired["errors"] + sum(v["errors"] for v in kept) == 1500  # no error uncounted
