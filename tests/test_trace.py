"""``nf.trace`` and ``nf.mark``: decorators and ``with`` blocks on every kind of callable."""

from __future__ import annotations

import asyncio
import gc
import inspect
import itertools
import pickle
import sys
import threading
import traceback
import types

import pytest

OK = {"otel.status_code": "OK"}

SCOPE_TYPES = ["agent", "function", "retriever", "embedder", "reranker", "guardrail",
               "evaluator", "custom", "unknown"]


def error(text):
    return {"otel.status_code": "ERROR", "otel.status_description": text}


def shape(events):
    """(name, start/end or "mark") per event, the sequence a user reads in a trace."""
    return [(e.name, e.scope_category if e.kind == "scope" else "mark") for e in events]


def ends(events, name):
    return [e for e in events if e.kind == "scope" and e.scope_category == "end"
            and e.name == name]


# --------------------------------------------------------------------------------------------
# Sync functions.

def test_bare_decorator_records_arguments_result_and_status(nf, events):
    root = nf._core.current()

    @nf.trace
    def step(x, y=2):
        """Adds."""
        return x + y

    assert step(1, y=3) == 4
    start, end = events
    assert shape(events) == [(step.__qualname__, "start"), (step.__qualname__, "end")]
    assert step.__qualname__.endswith("<locals>.step")
    assert start.category == end.category == "function"
    assert start.data == {"x": 1, "y": 3}
    assert end.data == 4
    assert start.metadata is None
    assert end.metadata == OK
    assert start.uuid == end.uuid
    assert start.parent_uuid == end.parent_uuid == root.uuid
    assert start.attributes == []
    assert nf._core.current() is root
    assert step.__name__ == "step" and step.__doc__ == "Adds."
    assert inspect.signature(step) == inspect.signature(step.__wrapped__)


def test_named_forms_metadata_and_attributes(nf, events):
    @nf.trace("fetch")
    def a():
        return None

    @nf.trace(name="store", metadata={"team": "x"}, attributes=nf.ScopeAttributes.PARALLEL)
    def b():
        return "done"

    a()
    b()
    assert shape(events) == [("fetch", "start"), ("fetch", "end"),
                             ("store", "start"), ("store", "end")]
    assert events[0].data == {}  # no arguments: an empty object
    assert events[1].data is None  # returned None
    assert events[2].metadata == {"team": "x"}
    assert events[3].metadata == {"team": "x", **OK}
    assert events[3].data == "done"
    assert events[2].attributes == events[3].attributes == ["parallel"]


def test_exception_is_the_original_and_recorded_as_error(nf, events):
    boom = ValueError("boom")

    @nf.trace
    def fail():
        raise boom

    with pytest.raises(ValueError) as info:
        fail()
    assert info.value is boom
    # The traceback still reaches the line that raised inside the original function.
    assert traceback.extract_tb(info.value.__traceback__)[-1].name == "fail"
    assert shape(events) == [(fail.__qualname__, "start"), (fail.__qualname__, "end")]
    assert events[1].metadata == error("boom")
    assert events[1].data is None


def test_base_exceptions_are_errors_too(nf, events):
    @nf.trace("quit")
    def quit_():
        raise KeyboardInterrupt

    class Mute(Exception):
        def __str__(self):
            raise RuntimeError("no text")

    @nf.trace("mute")
    def mute():
        raise Mute

    with pytest.raises(KeyboardInterrupt):
        quit_()
    with pytest.raises(Mute):
        mute()
    assert events[1].metadata == error("")
    assert events[3].metadata == error("<unprintable Mute>")


def test_nested_calls_link_parents_and_restore_the_caller(nf, events):
    @nf.trace("inner")
    def inner():
        return nf._core.current().uuid

    @nf.trace("outer")
    def outer():
        return inner()

    before = nf._core.current()
    inner_current = outer()
    assert nf._core.current() is before
    assert shape(events) == [("outer", "start"), ("inner", "start"),
                             ("inner", "end"), ("outer", "end")]
    assert events[1].parent_uuid == events[0].uuid
    assert inner_current == events[1].uuid


def test_mark_under_a_traced_function(nf, events):
    @nf.trace("work")
    def work():
        nf.mark("checkpoint", data={"step": 3})

    work()
    assert shape(events) == [("work", "start"), ("checkpoint", "mark"), ("work", "end")]
    assert events[1].parent_uuid == events[0].uuid
    assert events[1].data == {"step": 3}


def test_input_and_output_switched_off(nf, events):
    @nf.trace(input=False, output=False)
    def secret(password):
        return "token"

    @nf.trace("quiet", input=None)
    def quiet(x):
        return x

    assert secret("hunter2") == "token"
    assert quiet(5) == 5
    assert [e.data for e in events] == [None, None, None, 5]
    assert events[1].metadata == OK


def test_varargs_and_kwargs_are_captured_by_name(nf, events):
    @nf.trace
    def f(a, /, b, *rest, k=1, **extra):
        return None

    f(1, 2, 3, 4, k=5, z=6)
    f(1, b=2)
    assert events[0].data == {"a": 1, "b": 2, "*args": [3, 4], "k": 5, "z": 6}
    assert events[2].data == {"a": 1, "b": 2}


def test_non_json_arguments_and_results_are_strings_never_errors(nf, events):
    class Thing:
        def __str__(self):
            return "a thing"

    class Unprintable:
        def __str__(self):
            raise RuntimeError("no")

    thing = Thing()

    @nf.trace
    def f(obj, values, bad, ok):
        return thing

    assert f(thing, {1}, Unprintable(), [1, "x"]) is thing
    assert events[0].data == {"obj": "a thing", "values": "{1}",
                              "bad": "<unprintable Unprintable>", "ok": [1, "x"]}
    assert events[1].data == "a thing"
    assert events[1].metadata == OK


def test_methods_skip_self_and_cls(nf, events):
    class Store:
        @nf.trace
        def put(self, key, value=None):
            return key

        @classmethod
        @nf.trace
        def make(cls, size):
            return size

        @nf.trace
        @classmethod
        def make2(cls, size):
            return size

        @nf.trace
        @staticmethod
        def check(item):
            return item

    store = Store()
    assert store.put("k", value=[1]) == "k"
    assert Store.put(store, "j") == "j"
    assert Store.make(3) == 3
    assert Store.make2(4) == 4
    assert store.check(5) == 5
    starts = [e for e in events if e.scope_category == "start"]
    assert [e.name for e in starts] == [Store.put.__qualname__] * 2 + [
        Store.make.__qualname__, Store.make2.__qualname__, Store.check.__qualname__]
    assert starts[0].name.endswith("Store.put")
    assert [e.data for e in starts] == [{"key": "k", "value": [1]}, {"key": "j"}, {"size": 3},
                                        {"size": 4}, {"item": 5}]


def test_decorated_functions_are_reentrant_and_thread_safe(nf, events):
    @nf.trace("leaf")
    def leaf(i):
        return i * 2

    @nf.trace("countdown")
    def countdown(n):
        return leaf(n) if n == 0 else countdown(n - 1)

    assert countdown(3) == 0
    assert [e.name for e in events].count("countdown") == 8
    starts = [e for e in events if e.scope_category == "start"]
    for parent, child in itertools.pairwise(starts):
        assert child.parent_uuid == parent.uuid

    events.clear()
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(leaf(i))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [i * 2 for i in range(8)]
    assert len(ends(events, "leaf")) == 8
    assert all(e.metadata == OK for e in ends(events, "leaf"))


# --------------------------------------------------------------------------------------------
# ``with nf.trace(...)``.

def test_with_block_yields_a_core_span(nf, events):
    root = nf._core.current()
    with nf.trace("load", input={"path": "/tmp/x"}) as span:
        assert isinstance(span, nf._core.Span)
        assert nf._core.current() is span.handle
        span.output = [1, 2]
    assert nf._core.current() is root
    assert shape(events) == [("load", "start"), ("load", "end")]
    assert events[0].data == {"path": "/tmp/x"}
    assert events[0].uuid == span.handle.uuid
    assert events[0].parent_uuid == root.uuid
    assert events[1].data == [1, 2]
    assert events[1].metadata == OK

    with nf.trace("again") as span:
        span.set_output({"n": 1})
    assert events[3].data == {"n": 1}
    assert events[2].data is None


def test_with_block_error_metadata_and_switches(nf, events):
    with pytest.raises(KeyError):
        with nf.trace.retriever("search", metadata={"k": 1}) as span:
            span.output = "partial"
            raise KeyError("missing")
    assert events[0].category == "retriever"
    assert events[1].metadata == {"k": 1, **error("'missing'")}

    with nf.trace("hidden", input={"a": 1}, output=False) as span:
        span.output = "ignored"
    assert events[3].data is None

    with nf.trace("odd", input={"obj": object}) as span:
        span.output = {1, 2}
    assert events[4].data == {"obj": str(object)}
    assert events[5].data == "{1, 2}"


def test_with_spec_is_reusable_but_not_concurrently(nf, events):
    spec = nf.trace("step")
    with spec:
        with pytest.raises(RuntimeError, match="already in use"):
            with spec:
                pass
    with spec:
        pass
    assert shape(events) == [("step", "start"), ("step", "end")] * 2

    @spec
    def decorated():
        return 1

    decorated()
    assert events[-1].name == "step"


# --------------------------------------------------------------------------------------------
# One factory per scope type.

@pytest.mark.parametrize("kind", SCOPE_TYPES)
def test_every_scope_type_factory(nf, events, kind):
    factory = getattr(nf.trace, kind)

    @factory
    def bare():
        return 1

    @factory("named")
    def named():
        return 2

    bare()
    named()
    with factory("block") as span:
        assert isinstance(span, nf._core.Span)
    assert [e.name for e in events] == [bare.__qualname__] * 2 + ["named"] * 2 + ["block"] * 2
    assert {e.category for e in events} == {kind}


def test_tool_and_llm_are_managed_tracers_on_nf_trace_only(nf):
    for attr in ("tool", "llm"):
        assert repr(getattr(nf.trace, attr)) == f"<nf.trace.{attr}>"
        assert not hasattr(nf.trace.agent, attr)
    with pytest.raises(AttributeError):
        nf.trace.nothing  # noqa: B018


def test_bad_input_raises_type_error_before_anything_is_emitted(nf, events):
    def f():
        return None

    with pytest.raises(TypeError):
        nf.trace(123)
    with pytest.raises(TypeError):
        nf.trace(name=5)
    with pytest.raises(TypeError):
        nf.trace("x", name="y")
    with pytest.raises(TypeError):
        nf.trace("x", bogus=1)
    with pytest.raises(TypeError):
        nf.trace.agent(f, bogus=1)
    with pytest.raises(TypeError):
        nf.trace("x", output="yes")
    with pytest.raises(TypeError):
        nf.trace("x", attributes="parallel")
    with pytest.raises(TypeError):
        nf.trace("x", input={"a": 1})(f)  # a payload is for with-blocks, not decorators
    with pytest.raises(TypeError):
        nf.trace(type("C", (), {}))
    with pytest.raises(TypeError):
        with nf.trace():  # a with-block needs a name
            pass
    with pytest.raises(ValueError, match="Failed to convert to JSON"):
        nf.trace("x", metadata={"obj": object()})
    assert events == []


# --------------------------------------------------------------------------------------------
# async def.

def test_async_function(nf, events):
    @nf.trace.agent("planner")
    async def plan(goal):
        await asyncio.sleep(0)
        return {"goal": goal, "scope": nf._core.current().uuid}

    assert inspect.iscoroutinefunction(plan)
    before = nf._core.current()
    result = asyncio.run(plan("ship"))
    assert nf._core.current() is before
    assert shape(events) == [("planner", "start"), ("planner", "end")]
    assert events[0].category == "agent"
    assert events[0].data == {"goal": "ship"}
    assert events[0].parent_uuid == before.uuid
    assert result["scope"] == events[0].uuid
    assert events[1].data == result
    assert events[1].metadata == OK


def test_async_function_error_and_cancellation(nf, events):
    @nf.trace("fails")
    async def fails():
        await asyncio.sleep(0)
        raise RuntimeError("nope")

    @nf.trace("waits")
    async def waits():
        await asyncio.sleep(10)

    async def main():
        with pytest.raises(RuntimeError, match="nope"):
            await fails()
        task = asyncio.ensure_future(waits())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        task = asyncio.ensure_future(waits())
        await asyncio.sleep(0)
        task.cancel("shutting down")
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert ends(events, "fails")[0].metadata == error("nope")
    assert [e.metadata for e in ends(events, "waits")] == [error("cancelled"),
                                                          error("shutting down")]


def test_concurrent_tasks_keep_their_own_scopes(nf, events):
    seen = {}

    @nf.trace("leaf")
    def leaf(i):
        seen[i] = nf._core.current().uuid

    @nf.trace.agent("worker")
    async def worker(i):
        for _ in range(3):
            await asyncio.sleep(0)
            leaf(i)
        return i

    @nf.trace.agent("supervisor")
    async def supervisor():
        return await asyncio.gather(*(worker(i) for i in range(10)))

    assert asyncio.run(supervisor()) == list(range(10))
    sup = next(e for e in events if e.name == "supervisor")
    workers = {e.uuid: e for e in events if e.name == "worker" and e.scope_category == "start"}
    assert len(workers) == 10
    assert all(w.parent_uuid == sup.uuid for w in workers.values())
    by_input = {w.data["i"]: w.uuid for w in workers.values()}
    leaves = [e for e in events if e.name == "leaf" and e.scope_category == "start"]
    assert len(leaves) == 30
    for leaf_start in leaves:
        assert leaf_start.parent_uuid == by_input[leaf_start.data["i"]]
    assert len(ends(events, "worker")) == 10
    assert len(ends(events, "supervisor")) == 1


# --------------------------------------------------------------------------------------------
# Generators.

def test_generator_exhaustion_records_the_return_value(nf, events):
    inside = []

    @nf.trace("numbers")
    def numbers(n):
        for i in range(n):
            inside.append(nf._core.current().uuid)
            yield i
        return "finished"

    assert inspect.isgeneratorfunction(numbers)
    assert not inspect.iscoroutinefunction(numbers)
    assert inspect.signature(numbers) == inspect.signature(numbers.__wrapped__)
    assert numbers.__name__ == "numbers"
    caller = nf._core.current()
    gen = numbers(3)
    assert inspect.isgenerator(gen)
    assert events == []  # nothing runs until the generator is advanced
    items = []
    for item in gen:
        assert nf._core.current() is caller  # between items the caller's scope is current
        items.append(item)
    assert items == [0, 1, 2]
    assert shape(events) == [("numbers", "start"), ("numbers", "end")]
    assert inside == [events[0].uuid] * 3
    assert events[0].data == {"n": 3}
    assert events[0].parent_uuid == caller.uuid
    assert events[1].data == "finished"
    assert events[1].metadata == OK


def test_generator_parent_is_the_scope_at_creation(nf, events):
    @nf.trace("gen")
    def gen():
        yield nf._core.current().parent_uuid

    with nf.trace("creator") as creator:
        g = gen()
    with nf.trace("consumer"):
        parent_seen = next(g)
    g.close()
    starts = {e.name: e for e in events if e.scope_category == "start"}
    assert starts["gen"].parent_uuid == creator.handle.uuid
    assert parent_seen == creator.handle.uuid
    assert len(ends(events, "gen")) == 1


def test_generator_close_ends_once_and_runs_cleanup_in_scope(nf, events):
    cleanup = []

    @nf.trace("stream")
    def stream():
        try:
            yield 1
            yield 2
        finally:
            cleanup.append(nf._core.current().uuid)
            nf.mark("cleanup")

    gen = stream()
    assert next(gen) == 1
    gen.close()
    gen.close()
    assert shape(events) == [("stream", "start"), ("cleanup", "mark"), ("stream", "end")]
    assert cleanup == [events[0].uuid]
    assert events[1].parent_uuid == events[0].uuid
    assert events[2].metadata == OK
    assert events[2].data is None


def test_generator_exception_ends_once_with_error(nf, events):
    @nf.trace("flaky")
    def flaky():
        yield 1
        raise ValueError("broken stream")

    gen = flaky()
    assert next(gen) == 1
    with pytest.raises(ValueError, match="broken stream") as info:
        next(gen)
    assert traceback.extract_tb(info.value.__traceback__)[-1].name == "flaky"
    with pytest.raises(StopIteration):
        next(gen)
    assert shape(events) == [("flaky", "start"), ("flaky", "end")]
    assert events[1].metadata == error("broken stream")


def test_generator_garbage_collection_ends_once(nf, events):
    @nf.trace("abandoned")
    def abandoned():
        yield 1
        yield 2

    gen = abandoned()
    assert next(gen) == 1
    del gen
    gc.collect()
    assert shape(events) == [("abandoned", "start"), ("abandoned", "end")]
    assert events[1].metadata == OK


def test_generator_in_a_reference_cycle_is_collected(nf, events):
    @nf.trace("cyclic")
    def cyclic(box):
        yield 1
        yield 2

    box = []
    gen = cyclic(box)
    box.append(gen)  # box -> gen -> (argument) box
    next(gen)
    del gen, box
    gc.collect()
    assert shape(events) == [("cyclic", "start"), ("cyclic", "end")]
    assert events[1].metadata == OK


def test_never_started_generator_emits_nothing(nf, events):
    @nf.trace("idle")
    def idle():
        yield 1

    idle().close()
    gen = idle()
    del gen
    gc.collect()
    assert events == []


def test_generator_send_and_throw_are_forwarded(nf, events):
    @nf.trace("echo")
    def echo():
        received = []
        value = yield "ready"
        while value is not None:
            received.append(value)
            try:
                value = yield f"got {value}"
            except KeyError:
                value = yield "recovered"
        return received

    gen = echo()
    assert next(gen) == "ready"
    assert gen.send("a") == "got a"
    assert gen.throw(KeyError("k")) == "recovered"
    assert gen.send("b") == "got b"
    with pytest.raises(StopIteration) as stop:
        gen.send(None)
    assert stop.value.value == ["a", "b"]
    assert events[-1].data == ["a", "b"]
    assert events[-1].metadata == OK

    gen = echo()
    next(gen)
    exc = OSError("disk")
    with pytest.raises(OSError) as info:
        gen.throw(exc)
    assert info.value is exc
    assert ends(events, "echo")[-1].metadata == error("disk")
    assert len(ends(events, "echo")) == 2


def test_generator_yield_from_gets_the_return_value(nf, events):
    @nf.trace("inner", output=False)
    def inner():
        yield 1
        return "result"

    @nf.trace("outer")
    def outer():
        result = yield from inner()
        return result

    assert list(outer()) == [1]
    assert shape(events) == [("outer", "start"), ("inner", "start"),
                             ("inner", "end"), ("outer", "end")]
    assert events[1].parent_uuid == events[0].uuid
    assert events[2].data is None  # output=False
    assert events[3].data == "result"


def test_generator_methods_and_input_off(nf, events):
    class Reader:
        @nf.trace(input=False)
        def rows(self, n):
            yield from range(n)

        @nf.trace("lines")
        def lines(self, n):
            yield from range(n)

    reader = Reader()
    assert list(reader.rows(2)) == [0, 1]
    assert list(reader.lines(2)) == [0, 1]
    assert inspect.isgeneratorfunction(reader.rows)
    assert inspect.isgeneratorfunction(Reader.lines)
    starts = [e for e in events if e.scope_category == "start"]
    assert starts[0].name.endswith("Reader.rows")
    assert starts[0].data is None
    assert starts[1].data == {"n": 2}


def test_generator_resumed_from_another_thread(nf, events):
    @nf.trace("portable")
    def portable():
        yield nf._core.current().uuid
        yield nf._core.current().uuid

    gen = portable()
    first = next(gen)
    box = []
    thread = threading.Thread(target=lambda: box.append((next(gen), nf._core.current())))
    thread.start()
    thread.join()
    second, thread_current = box[0]
    assert first == second == events[0].uuid
    assert thread_current.uuid != first
    gen.close()
    assert len(ends(events, "portable")) == 1


def test_traced_generator_function_pickles_by_reference(nf, monkeypatch):
    module = types.ModuleType("nemoflow_trace_probe")
    monkeypatch.setitem(sys.modules, module.__name__, module)

    def numbers():
        yield 1

    numbers.__module__ = module.__name__
    numbers.__qualname__ = "numbers"
    module.numbers = nf.trace(numbers)
    assert pickle.loads(pickle.dumps(module.numbers)) is module.numbers
    assert "numbers" in repr(module.numbers)


# --------------------------------------------------------------------------------------------
# Async generators.

def test_async_generator_full_iteration(nf, events):
    inside = []

    @nf.trace.retriever("docs")
    async def docs(query):
        for i in range(3):
            await asyncio.sleep(0)
            inside.append(nf._core.current().uuid)
            nf.mark("hit", data={"i": i})
            yield f"{query}-{i}"

    assert inspect.isasyncgenfunction(docs)
    caller = nf._core.current()

    async def main():
        items = []
        async for item in docs("q"):
            assert nf._core.current() is caller
            items.append(item)
        return items

    assert asyncio.run(main()) == ["q-0", "q-1", "q-2"]
    assert shape(events) == [("docs", "start")] + [("hit", "mark")] * 3 + [("docs", "end")]
    assert inside == [events[0].uuid] * 3
    assert all(e.parent_uuid == events[0].uuid for e in events[1:4])
    assert events[0].category == "retriever"
    assert events[0].data == {"query": "q"}
    assert events[0].parent_uuid == caller.uuid
    assert events[-1].metadata == OK


def test_async_generator_aclose_and_asend_athrow(nf, events):
    cleanup = []

    @nf.trace("agen")
    async def agen():
        try:
            value = yield "ready"
            while True:
                try:
                    value = yield f"got {value}"
                except KeyError:
                    value = yield "recovered"
        finally:
            await asyncio.sleep(0)
            cleanup.append(nf._core.current().uuid)

    async def main():
        gen = agen()
        assert await gen.asend(None) == "ready"
        assert await gen.asend("a") == "got a"
        assert await gen.athrow(KeyError("k")) == "recovered"
        await gen.aclose()
        await gen.aclose()

    asyncio.run(main())
    assert shape(events) == [("agen", "start"), ("agen", "end")]
    assert cleanup == [events[0].uuid]
    assert events[1].metadata == OK


def test_async_generator_early_break_ends_once(nf, events):
    @nf.trace("endless")
    async def endless():
        i = 0
        while True:
            yield i
            i += 1

    async def main():
        async for i in endless():
            if i == 2:
                break
        # asyncio's async-generator finalizer schedules aclose() for the abandoned generator
        for _ in range(5):
            await asyncio.sleep(0)
        return len(ends(events, "endless"))

    assert asyncio.run(main()) == 1
    assert shape(events) == [("endless", "start"), ("endless", "end")]
    assert events[1].metadata == OK


def test_async_generator_error_and_cancellation(nf, events):
    @nf.trace("broken")
    async def broken():
        yield 1
        raise ValueError("bad item")

    @nf.trace("slow")
    async def slow():
        yield 1
        await asyncio.sleep(10)
        yield 2

    async def consume(gen):
        return [item async for item in gen]

    async def main():
        with pytest.raises(ValueError, match="bad item"):
            await consume(broken())
        task = asyncio.ensure_future(consume(slow()))
        for _ in range(3):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert [e.metadata for e in ends(events, "broken")] == [error("bad item")]
    assert [e.metadata for e in ends(events, "slow")] == [error("cancelled")]


def test_async_generator_left_open_is_closed_once_at_loop_shutdown(nf, events):
    loop_errors = []

    @nf.trace("pending")
    async def pending():
        try:
            for i in range(10):
                yield i
        finally:
            await asyncio.sleep(0)  # cleanup that awaits, run by shutdown_asyncgens()
            nf.mark("cleanup")

    kept = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: loop_errors.append(context))
        gen = pending()
        kept.append(gen)  # still referenced when asyncio.run() shuts the loop down
        async for i in gen:
            if i == 1:
                break

    asyncio.run(main())
    assert loop_errors == []
    assert shape(events) == [("pending", "start"), ("cleanup", "mark"), ("pending", "end")]
    assert events[1].parent_uuid == events[0].uuid
    assert events[2].metadata == OK
