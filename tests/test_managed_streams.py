"""Streamed managed calls: ``@nf.trace.tool`` on generator and async-generator functions, and
``@nf.trace.llm`` on sync generators (the pipeline runs at the first step; the result is what
was yielded)."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

OK = {"otel.status_code": "OK"}


def shape(events):
    return [(e.name, e.scope_category if e.kind == "scope" else "mark") for e in events]


def run(coro):
    return asyncio.run(coro)


def error(cls, description):
    return {"otel.status_code": "ERROR", "otel.status_description": description,
            "error.type": cls, "exception.type": cls}


def tool_events(events, name):
    return [e for e in events if e.name == name and e.kind == "scope"]


def counter(nf, name="count", log=None):
    """A traced sync generator tool yielding 0..n-1; ``log`` records its cleanup."""
    @nf.trace.tool(name)
    def count(n):
        try:
            yield from range(n)
        finally:
            if log is not None:
                log.append("closed")
    return count


def acounter(nf, name="acount", log=None):
    @nf.trace.tool(name)
    async def acount(n):
        try:
            for i in range(n):
                await asyncio.sleep(0)
                yield i
        finally:
            if log is not None:
                log.append("closed")
    return acount


# --------------------------------------------------------------------------------------------
# Sync and async generator tools.

def test_sync_generator_tool_events_parent_and_result(nf, events):
    @nf.trace.tool(metadata={"team": "x"}, attributes=nf.ToolAttributes.REMOTE)
    def count(n, step=1):
        for i in range(0, n * step, step):
            nf.mark("item", data={"i": i})
            yield i

    name = count.__qualname__
    with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
        gen = count(3, step=2)
        assert shape(events) == [("agent", "start")]  # nothing before the first step
        assert list(gen) == [0, 2, 4]
    body = events[1:-1]
    assert shape(body) == [(name, "start")] + [("item", "mark")] * 3 + [(name, "end")]
    start, end = body[0], body[-1]
    assert start.category == end.category == "tool"
    assert start.data == {"n": 3, "step": 2}
    assert start.attributes == ["remote"]
    assert start.category_profile == end.category_profile == {}
    assert start.parent_uuid == agent.uuid and end.uuid == start.uuid
    # the tool scope is not pushed: work inside the body is under the caller's scope
    assert [m.parent_uuid for m in body[1:4]] == [agent.uuid] * 3
    assert [m.data for m in body[1:4]] == [{"i": 0}, {"i": 2}, {"i": 4}]
    assert end.data == [0, 2, 4]
    assert end.metadata == {"team": "x", **OK}


def test_async_generator_tool_events_parent_and_result(nf, events):
    @nf.trace.tool("acount")
    async def acount(n):
        for i in range(n):
            await asyncio.sleep(0)
            nf.mark("item", data={"i": i})
            yield {"i": i}

    async def main():
        with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
            gen = acount(2)
            before = shape(events)
            got = [x async for x in gen]
        return agent, before, got

    agent, before, got = run(main())
    assert before == [("agent", "start")]
    assert got == [{"i": 0}, {"i": 1}]
    body = events[1:-1]
    assert shape(body) == [("acount", "start"), ("item", "mark"), ("item", "mark"),
                           ("acount", "end")]
    assert body[0].data == {"n": 2} and body[0].category == "tool"
    assert body[0].parent_uuid == agent.uuid == body[1].parent_uuid
    assert body[-1].data == [{"i": 0}, {"i": 1}]
    assert body[-1].metadata == OK


def test_parent_is_the_scope_current_when_the_generator_is_created(nf, events):
    count = counter(nf)
    with nf.scope.scope("a", nf.ScopeType.Agent) as a:
        gen = count(2)
        with nf.scope.scope("b", nf.ScopeType.Agent) as b:
            assert list(gen) == [0, 1]
    start, end = tool_events(events, "count")
    assert start.parent_uuid == a.uuid != b.uuid
    assert end.data == [0, 1]


def test_generator_tools_as_methods_static_and_class_methods(nf, events):
    class Store:
        prefix = "s"

        def __init__(self):
            self.data = ["r0", "r1", "r2"]

        @nf.trace.tool("store.rows")
        def rows(self, limit):
            yield from self.data[:limit]

        @nf.trace.tool("store.arows")
        async def arows(self, limit):
            for row in self.data[:limit]:
                yield row

        @nf.trace.tool("store.static")
        @staticmethod
        def static(n):
            yield from range(n)

        @nf.trace.tool("store.cls")
        @classmethod
        def cls_rows(cls, n):
            for i in range(n):
                yield f"{cls.prefix}{i}"

    store = Store()
    assert list(store.rows(2)) == ["r0", "r1"]
    assert list(Store.static(2)) == [0, 1]
    assert list(store.static(1)) == [0]
    assert list(Store.cls_rows(2)) == ["s0", "s1"]

    async def main():
        return [r async for r in store.arows(3)]

    assert run(main()) == ["r0", "r1", "r2"]
    assert shape(events) == [("store.rows", "start"), ("store.rows", "end"),
                             ("store.static", "start"), ("store.static", "end"),
                             ("store.static", "start"), ("store.static", "end"),
                             ("store.cls", "start"), ("store.cls", "end"),
                             ("store.arows", "start"), ("store.arows", "end")]
    # the receiver is not an argument of the call
    assert [e.data for e in events] == [{"limit": 2}, ["r0", "r1"], {"n": 2}, [0, 1],
                                        {"n": 1}, [0], {"n": 2}, ["s0", "s1"],
                                        {"limit": 3}, ["r0", "r1", "r2"]]


def test_a_generator_never_advanced_emits_nothing_and_runs_no_middleware(nf, events):
    calls = []
    nf.guardrails.register_tool_conditional_execution(
        "g", 0, lambda n, a: calls.append(("guardrail", n)))
    nf.intercepts.register_tool_request("r", 0, False,
                                        lambda n, a: calls.append(("request", n)) or a)
    nf.guardrails.register_llm_conditional_execution(
        "lg", 0, lambda req: calls.append(("llm-guardrail",)))
    ran = []

    @nf.trace.tool("t")
    def tool(n):
        ran.append(n)
        yield n

    @nf.trace.tool("at")
    async def atool(n):
        ran.append(n)
        yield n

    @nf.trace.llm(model="m")
    def chat(prompt):
        ran.append(prompt)
        yield prompt

    gen, agen, cgen = tool(1), atool(2), chat("x")
    closed = tool(3)
    closed.close()  # closed before it started
    del gen, agen, cgen, closed
    gc.collect()
    assert events == [] and calls == [] and ran == []


def test_middleware_is_the_one_registered_when_the_generator_is_created(nf, events):
    count = counter(nf)
    nf.guardrails.register_tool_sanitize_response("early", 0, lambda n, items: "early")
    gen = count(2)
    nf.guardrails.deregister_tool_sanitize_response("early")
    nf.guardrails.register_tool_sanitize_request("late", 0, lambda n, a: "late")
    assert list(gen) == [0, 1]
    assert [e.data for e in events] == [{"n": 2}, "early"]


def test_a_sync_stream_outlives_the_event_loop_it_was_started_in(nf, events):
    # A synchronous stream belongs to its consumer: a loop that happened to run in the thread
    # while it was advanced does not close it when that loop shuts down.
    count = counter(nf)
    chat = llm_stream(nf)
    kept = []

    async def main():
        gen, cgen = count(4), chat("a b c")
        kept.extend([gen, cgen])
        return next(gen), next(cgen)

    assert run(main()) == (0, "a ")
    assert [(e.name, e.scope_category) for e in events if e.kind == "scope"] == [
        ("count", "start"), ("chat", "start")]
    gen, cgen = kept
    assert list(gen) == [1, 2, 3]
    assert list(cgen) == ["b ", "c "]
    ends = [e for e in events if e.kind == "scope" and e.scope_category == "end"]
    assert [(e.name, e.data, e.metadata) for e in ends] == [("count", [0, 1, 2, 3], OK),
                                                            ("chat", "a b c ", OK)]


# --------------------------------------------------------------------------------------------
# Early exit, errors, throw().

def test_sync_generator_early_exit_by_break_close_and_gc(nf, events):
    log = []
    count = counter(nf, log=log)

    gen = count(10)
    for x in gen:
        if x == 2:
            break
    assert shape(events) == [("count", "start")]  # still open: the consumer may go on
    gen.close()
    assert log == ["closed"]
    assert shape(events) == [("count", "start"), ("count", "end")]
    assert events[1].data == [0, 1, 2] and events[1].metadata == OK
    assert list(gen) == []  # a closed stream stays closed

    events.clear()
    gen = count(10)
    assert next(gen) == 0
    del gen  # abandoned: garbage collection closes it
    gc.collect()
    assert log == ["closed"] * 2
    assert shape(events) == [("count", "start"), ("count", "end")]
    assert events[1].data == [0] and events[1].metadata == OK

    events.clear()
    for _ in count(10):  # break without keeping the generator
        break
    gc.collect()
    assert log == ["closed"] * 3
    assert [e.data for e in events] == [{"n": 10}, [0]]
    assert events[1].metadata == OK


def test_async_generator_early_exit_by_aclose_and_gc(nf, events):
    log = []
    acount = acounter(nf, log=log)

    async def aclosed():
        gen = acount(10)
        async for x in gen:
            if x == 1:
                break
        assert shape(events) == [("acount", "start")]
        await gen.aclose()

    async def take_one():
        gen = acount(10)
        async for _ in gen:
            break  # no aclose()

    async def abandoned():
        await take_one()
        gc.collect()  # the loop's finalizer hook closes the generator in a task of its own
        for _ in range(5):
            await asyncio.sleep(0)

    run(aclosed())
    assert log == ["closed"]
    assert shape(events) == [("acount", "start"), ("acount", "end")]
    assert events[1].data == [0, 1] and events[1].metadata == OK
    events.clear()
    run(abandoned())
    assert log == ["closed"] * 2
    assert shape(events) == [("acount", "start"), ("acount", "end")]
    assert events[1].data == [0] and events[1].metadata == OK
    events.clear()
    run(take_one())  # abandoned as the loop shuts down: the loop cancels the closing task
    assert log == ["closed"] * 3
    assert shape(events) == [("acount", "start"), ("acount", "end")]
    assert events[1].metadata == error("CancelledError", "cancelled")


def test_error_in_the_generator_body_ends_with_error_and_reaches_the_caller(nf, events):
    err = ValueError("bad row")

    @nf.trace.tool("rows", metadata={"m": 1})
    def rows(n):
        yield from range(n)
        raise err

    @nf.trace.tool("arows")
    async def arows(n):
        for i in range(n):
            yield i
        raise LookupError("missing")

    got = []
    with pytest.raises(ValueError) as info:
        for x in rows(2):
            got.append(x)
    assert info.value is err and got == [0, 1]
    assert shape(events) == [("rows", "start"), ("rows", "end")]
    assert events[1].data is None
    assert events[1].metadata == {"m": 1, **error("ValueError", "bad row")}

    events.clear()

    async def main():
        out = []
        with pytest.raises(LookupError, match="^missing$"):
            async for x in arows(1):
                out.append(x)
        return out

    assert run(main()) == [0]
    assert shape(events) == [("arows", "start"), ("arows", "end")]
    assert events[1].data is None
    assert events[1].metadata == error("LookupError", "missing")


def test_throw_is_forwarded_into_the_stream(nf, events):
    log = []
    count = counter(nf, log=log)
    gen = count(5)
    assert next(gen) == 0
    err = RuntimeError("consumer gave up")
    with pytest.raises(RuntimeError) as info:
        gen.throw(err)
    assert info.value is err
    assert shape(events) == [("count", "start"), ("count", "end")]
    assert events[1].data is None
    assert events[1].metadata == error("RuntimeError", "consumer gave up")
    assert log == ["closed"]  # the tool's own generator is closed with the stream
    with pytest.raises(StopIteration):
        next(gen)

    events.clear()
    acount = acounter(nf, log=log)

    async def main():
        agen = acount(5)
        assert await agen.__anext__() == 0
        with pytest.raises(KeyError):
            await agen.athrow(KeyError("k"))
        return list(log)

    assert run(main()) == ["closed"] * 2
    assert shape(events) == [("acount", "start"), ("acount", "end")]
    assert events[1].metadata == error("KeyError", "'k'")


# --------------------------------------------------------------------------------------------
# Middleware.

def test_guardrail_rejection_at_the_first_step(nf, events):
    nf.guardrails.register_tool_conditional_execution("allow", 0, lambda n, a: None)
    seen = []

    def deny(name, args):
        seen.append((name, args))
        return "blocked" if args["n"] > 1 else None

    nf.guardrails.register_tool_conditional_execution("deny", 1, deny)
    ran = []

    @nf.trace.tool("rm")
    def rm(n):
        ran.append(n)
        yield n

    @nf.trace.tool("arm")
    async def arm(n):
        ran.append(n)
        yield n

    with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
        gen = rm(2)
        assert seen == [] and shape(events) == [("agent", "start")]
        with pytest.raises(nf.GuardrailRejectedError, match="^guardrail rejected: blocked$"):
            next(gen)
        with pytest.raises(StopIteration):
            next(gen)
    assert ran == [] and seen == [("rm", {"n": 2})]
    body = events[1:-1]
    assert shape(body) == [("allow", "start"), ("allow", "end"), ("deny", "start"),
                           ("deny", "end"), ("rm", "mark")]
    assert all(e.category == "guardrail" for e in body[:4])
    assert body[0].data == {"kind": "tool_conditional_execution", "target_name": "rm"}
    assert body[1].data == {"allowed": True, "rejected": False}
    assert body[3].data == {"allowed": False, "rejected": True, "rejection_reason": "blocked"}
    assert body[4].data == {"rejected": True, "rejection_reason": "blocked"}
    assert all(e.parent_uuid == agent.uuid for e in body)
    assert not any(e.category == "tool" for e in events)

    events.clear()

    async def main():
        agen = arm(5)
        with pytest.raises(nf.GuardrailRejectedError, match="^guardrail rejected: blocked$"):
            await agen.__anext__()
        return [x async for x in arm(1)]  # allowed

    assert run(main()) == [1]
    assert ran == [1]
    assert shape(events) == [("allow", "start"), ("allow", "end"), ("deny", "start"),
                             ("deny", "end"), ("arm", "mark"),
                             ("allow", "start"), ("allow", "end"), ("deny", "start"),
                             ("deny", "end"), ("arm", "start"), ("arm", "end")]


def test_request_intercept_rewrites_the_generators_arguments(nf, events):
    nf.intercepts.register_tool_request("double", 0, False,
                                        lambda n, a: {**a, "n": a["n"] * 2})
    nf.intercepts.register_tool_request("tag", 1, False, lambda n, a: {**a, "tag": n})

    @nf.trace.tool("gen")
    def gen(n, tag=None):
        for i in range(n):
            yield f"{tag}:{i}"

    @nf.trace.tool("agen")
    async def agen(n, tag=None):
        for i in range(n):
            yield f"{tag}:{i}"

    async def main():
        return [x async for x in agen(1)]

    assert list(gen(1)) == ["gen:0", "gen:1"]
    assert run(main()) == ["agen:0", "agen:1"]
    assert [e.data for e in events] == [{"n": 2, "tag": "gen"}, ["gen:0", "gen:1"],
                                        {"n": 2, "tag": "agen"}, ["agen:0", "agen:1"]]


def test_sync_generator_tool_with_async_middleware_inside_a_running_loop(nf, events):
    async def bump(name, args):
        await asyncio.sleep(0)
        return {"n": args["n"] + 1}

    async def total(name, items):
        await asyncio.sleep(0)
        return sum(items)

    nf.intercepts.register_tool_request("bump", 0, False, bump)
    nf.guardrails.register_tool_sanitize_response("total", 0, total)
    count = counter(nf)

    async def main():
        return list(count(3))  # a loop is running in this thread

    assert list(count(1)) == [0, 1]  # no loop running
    assert run(main()) == [0, 1, 2, 3]
    assert [e.data for e in events] == [{"n": 2}, 1, {"n": 4}, 6]


def test_request_and_response_sanitizers_change_the_event_copy_only(nf, events):
    seen = []

    def redact(name, args):
        args["secret"] = "***"  # a deep copy: the function still gets the real value
        return args

    def summarize(name, items):
        seen.append((name, list(items)))
        items.append("added")  # a deep copy too
        return {"tool": name, "items": items}

    nf.guardrails.register_tool_sanitize_request("redact", 0, redact)
    nf.guardrails.register_tool_sanitize_response("summarize", 0, summarize)

    @nf.trace.tool("leak")
    def leak(n, secret):
        for i in range(n):
            yield f"{secret}{i}"

    assert list(leak(2, "pw")) == ["pw0", "pw1"]
    assert [e.data for e in events] == [
        {"n": 2, "secret": "***"}, {"tool": "leak", "items": ["pw0", "pw1", "added"]}]
    assert seen == [("leak", ["pw0", "pw1"])]

    events.clear()
    gen = leak(5, "pw")  # an early exit goes through the response sanitizers too
    assert next(gen) == "pw0"
    gen.close()
    assert [e.data for e in events] == [{"n": 5, "secret": "***"},
                                        {"tool": "leak", "items": ["pw0", "added"]}]
    assert events[1].metadata == OK


def test_async_sanitizers_on_an_async_generator_tool_also_on_early_exit(nf, events):
    async def count_items(name, items):
        await asyncio.sleep(0)
        return {"count": len(items)}

    nf.guardrails.register_tool_sanitize_response("count", 0, count_items)
    acount = acounter(nf)

    async def main():
        full = [x async for x in acount(3)]
        gen = acount(3)
        await gen.__anext__()
        await gen.aclose()  # ended without suspending: the sanitizer runs on a private loop
        return full

    assert run(main()) == [0, 1, 2]
    assert [e.data for e in events] == [{"n": 3}, {"count": 3}, {"n": 3}, {"count": 1}]
    assert [e.metadata for e in events if e.scope_category == "end"] == [OK, OK]


def test_sanitizers_fail_closed_to_null(nf, events):
    def broken(name, value):
        raise RuntimeError("sanitizer bug")

    nf.guardrails.register_tool_sanitize_request("bad-req", 0, broken)
    nf.guardrails.register_tool_sanitize_response("bad-resp", 0, broken)
    count = counter(nf)
    acount = acounter(nf)

    async def main():
        return [x async for x in acount(2)]

    assert list(count(2)) == [0, 1]
    assert run(main()) == [0, 1]
    gen = count(3)
    next(gen)
    gen.close()
    assert shape(events) == [("count", "start"), ("count", "end"), ("acount", "start"),
                             ("acount", "end"), ("count", "start"), ("count", "end")]
    assert [e.data for e in events] == [None] * 6
    assert [e.metadata for e in events if e.scope_category == "end"] == [OK] * 3


def test_execution_intercepts_wrap_the_stream_lowest_priority_outermost(nf, events):
    order = []

    def outer(name, args, nxt):
        order.append(("outer", name, args))
        return nxt({**args, "n": args["n"] + 1})  # the function gets other arguments

    def inner(name, args, nxt):
        order.append(("inner", name, args))
        return (x * 10 for x in nxt(args))

    nf.intercepts.register_tool_execution("inner", 2, inner)
    nf.intercepts.register_tool_execution("outer", 1, outer)
    count = counter(nf)
    gen = count(2)
    assert order == []
    assert list(gen) == [0, 10, 20]
    assert order == [("outer", "count", {"n": 2}), ("inner", "count", {"n": 3})]
    assert [e.data for e in events] == [{"n": 2}, [0, 10, 20]]  # the items the caller got
    assert events[1].metadata == OK


def test_execution_intercepts_on_an_async_generator_tool(nf, events):
    def tag(name, args, nxt):
        async def wrapped():
            async for x in nxt(args):
                await asyncio.sleep(0)
                yield {"item": x}
        return wrapped()

    async def as_list(name, args, nxt):  # an async intercept may return a sync iterable
        return [x async for x in nxt(args)] + ["tail"]

    nf.intercepts.register_tool_execution("tag", 1, tag)
    nf.intercepts.register_tool_execution("as-list", 0, as_list)
    acount = acounter(nf)

    async def main():
        return [x async for x in acount(2)]

    assert run(main()) == [{"item": 0}, {"item": 1}, "tail"]
    assert [e.data for e in events] == [{"n": 2}, [{"item": 0}, {"item": 1}, "tail"]]


def test_an_async_def_intercept_inside_another_intercept_hands_on_a_stream(nf, events):
    # The inner intercept is `async def` (its stream comes out of an awaitable); the outer one
    # iterates next(args) all the same, in async and in sync streams.
    async def inner(name, args, nxt):
        await asyncio.sleep(0)
        items = nxt(args)
        if hasattr(items, "__aiter__"):
            return [f"<{x}>" async for x in items]
        return [f"<{x}>" for x in items]

    def outer_sync(name, args, nxt):
        return [f"o{x}" for x in nxt(args)]

    nf.intercepts.register_tool_execution("inner", 1, inner)
    nf.intercepts.register_tool_execution("outer", 0, outer_sync)
    count = counter(nf)
    assert list(count(2)) == ["o<0>", "o<1>"]

    nf.intercepts.deregister_tool_execution("outer")

    def outer_async(name, args, nxt):
        async def wrapped():
            async for x in nxt(args):
                yield f"o{x}"
        return wrapped()

    nf.intercepts.register_tool_execution("outer", 0, outer_async)
    acount = acounter(nf)

    async def main():
        return [x async for x in acount(2)]

    assert run(main()) == ["o<0>", "o<1>"]
    assert [e.data for e in tool_events(events, "count") + tool_events(events, "acount")] == [
        {"n": 2}, ["o<0>", "o<1>"], {"n": 2}, ["o<0>", "o<1>"]]


def test_execution_intercept_replaces_the_stream(nf, events):
    ran = []

    @nf.trace.tool("search")
    def search(q):
        ran.append(q)
        yield "live"

    @nf.trace.tool("asearch")
    async def asearch(q):
        ran.append(q)
        yield "live"

    def cached(name, args, nxt):
        return [f"cached:{name}:{args['q']}", "more"]  # any iterable

    nf.intercepts.register_tool_execution("cache", 0, cached)

    async def main():
        return [x async for x in asearch("b")]

    assert list(search("a")) == ["cached:search:a", "more"]
    assert run(main()) == ["cached:asearch:b", "more"]
    assert ran == []
    assert [e.data for e in events] == [{"q": "a"}, ["cached:search:a", "more"],
                                        {"q": "b"}, ["cached:asearch:b", "more"]]


def test_execution_intercept_failures_are_internal_errors_tool_errors_pass_through(nf,
                                                                                   events):
    count = counter(nf)

    def raises_at_call(name, args, nxt):
        raise RuntimeError("intercept bug")

    nf.intercepts.register_tool_execution("bad", 0, raises_at_call)
    gen = count(2)
    with pytest.raises(nf.InternalError, match="^internal error: RuntimeError: intercept bug$"):
        next(gen)
    assert shape(events) == [("count", "start"), ("count", "end")]
    assert events[1].metadata == error("InternalError",
                                       "internal error: RuntimeError: intercept bug")
    assert events[1].data is None

    events.clear()
    nf.intercepts.deregister_tool_execution("bad")

    def raises_midway(name, args, nxt):
        def wrapped():
            for x in nxt(args):
                yield x
                raise ConnectionError("intercept lost it")
        return wrapped()

    nf.intercepts.register_tool_execution("midway", 0, raises_midway)
    got = []
    with pytest.raises(nf.InternalError,
                       match="^internal error: ConnectionError: intercept lost it$") as info:
        for x in count(3):
            got.append(x)
    assert got == [0]
    assert isinstance(info.value.__cause__, ConnectionError)
    assert shape(events) == [("count", "start"), ("count", "end")]
    assert events[1].metadata["error.type"] == "InternalError"

    events.clear()
    nf.intercepts.deregister_tool_execution("midway")
    nf.intercepts.register_tool_execution("not-a-stream", 0, lambda n, a, nxt: 42)
    with pytest.raises(nf.InternalError, match="^internal error: TypeError: "):
        list(count(1))
    nf.intercepts.deregister_tool_execution("not-a-stream")

    # an error the tool itself raises travels through the intercepts unchanged
    err = ValueError("tool failed")

    @nf.trace.tool("failing")
    def failing(n):
        yield n
        raise err

    nf.intercepts.register_tool_execution("passthrough", 0,
                                          lambda n, a, nxt: (x for x in nxt(a)))
    events.clear()
    with pytest.raises(ValueError) as info:
        list(failing(1))
    assert info.value is err
    assert events[1].metadata == error("ValueError", "tool failed")


def test_an_outer_intercept_sees_an_inner_intercepts_failure_as_internal_error(nf, events):
    seen = []

    def outer(name, args, nxt):
        try:
            return nxt(args)
        except Exception as exc:
            seen.append(type(exc).__name__)
            raise

    def inner(name, args, nxt):
        raise RuntimeError("inner bug")

    nf.intercepts.register_tool_execution("outer", 0, outer)
    nf.intercepts.register_tool_execution("inner", 1, inner)
    count = counter(nf)
    with pytest.raises(nf.InternalError, match="^internal error: RuntimeError: inner bug$"):
        list(count(1))
    assert seen == ["InternalError"]
    assert events[1].metadata == error("InternalError", "internal error: RuntimeError: inner bug")


def test_async_execution_intercept_failure_is_internal_error(nf, events):
    def bad(name, args, nxt):
        async def wrapped():
            async for x in nxt(args):
                yield x
            raise RuntimeError("late")
        return wrapped()

    nf.intercepts.register_tool_execution("bad", 0, bad)
    acount = acounter(nf)

    async def main():
        got = []
        with pytest.raises(nf.InternalError, match="^internal error: RuntimeError: late$"):
            async for x in acount(2):
                got.append(x)
        return got

    assert run(main()) == [0, 1]
    assert shape(events) == [("acount", "start"), ("acount", "end")]
    assert events[1].metadata == error("InternalError", "internal error: RuntimeError: late")


# --------------------------------------------------------------------------------------------
# ``@nf.trace.llm`` on sync generators.

def llm_stream(nf, log=None, threads=None):
    @nf.trace.llm("chat", model="local")
    def chat(prompt):
        try:
            for word in prompt.split():
                if threads is not None:
                    threads.append(threading.current_thread().name)
                yield word + " "
        finally:
            if log is not None:
                log.append("closed")
    return chat


def check_streamed_call(events, parent_uuid, chunks, text):
    assert shape(events) == [("chat", "start")] + [("llm.chunk", "mark")] * chunks \
        + [("chat", "end")]
    start, marks, end = events[0], events[1:-1], events[-1]
    assert start.category == "llm" and start.attributes == ["streaming"]
    assert start.parent_uuid == parent_uuid
    assert start.category_profile == {"model_name": "local"}
    assert [m.data for m in marks] == [{"chunk_index": i, "provider": "unknown"}
                                       for i in range(chunks)]
    assert all(m.parent_uuid == start.uuid for m in marks)
    assert end.uuid == start.uuid
    assert end.data == text and end.metadata == OK
    assert set(end.category_profile) == {"model_name", "time_to_first_chunk"}
    assert end.category_profile["model_name"] == "local"
    assert 0 <= end.category_profile["time_to_first_chunk"] < 5


def test_sync_llm_generator_is_a_streamed_call(nf, events):
    threads = []
    chat = llm_stream(nf, threads=threads)
    with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
        gen = chat("a b c")
        assert shape(events) == [("agent", "start")]
        assert list(gen) == ["a ", "b ", "c "]
    # the reference's session header (the innermost agent scope) is part of the request
    assert events[1].data == {"headers": {"x-dynamo-session-id": "agent"},
                              "content": {"prompt": "a b c"}}
    check_streamed_call(events[1:-1], agent.uuid, 3, "a b c ")
    assert threads == [threading.current_thread().name] * 3  # no loop, no helper thread


def test_sync_llm_generator_inside_a_running_loop_without_intercepts(nf, events):
    threads = []
    chat = llm_stream(nf, threads=threads)

    async def main():
        with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
            return agent, list(chat("x y"))

    agent, got = run(main())
    assert got == ["x ", "y "]
    check_streamed_call(events[1:-1], agent.uuid, 2, "x y ")
    assert threads == [threading.current_thread().name] * 2


def test_sync_llm_generator_early_exit_and_error(nf, events):
    log = []
    chat = llm_stream(nf, log=log)
    root = nf._core.current()
    gen = chat("a b c")
    assert next(gen) == "a "
    gen.close()
    assert log == ["closed"]
    check_streamed_call(events, root.uuid, 1, "a ")

    events.clear()
    gen = chat("d e f")
    next(gen)
    next(gen)
    del gen
    gc.collect()
    assert log == ["closed"] * 2
    check_streamed_call(events, root.uuid, 2, "d e ")

    events.clear()

    @nf.trace.llm("chat", model="local")
    def broken(prompt):
        yield prompt
        raise ConnectionResetError("reset")

    with pytest.raises(ConnectionResetError, match="^reset$"):
        list(broken("p"))
    assert shape(events) == [("chat", "start"), ("llm.chunk", "mark"), ("chat", "end")]
    assert events[-1].data is None
    assert events[-1].metadata == error("ConnectionResetError", "reset")
    assert set(events[-1].category_profile) == {"model_name", "time_to_first_chunk"}


def test_sync_llm_generator_guardrail_rejection_at_the_first_step(nf, events):
    nf.guardrails.register_llm_conditional_execution(
        "no-pw", 0, lambda req: "secret" if "pw" in req.content["prompt"] else None)
    chat = llm_stream(nf)
    gen = chat("my pw")
    assert events == []
    with pytest.raises(nf.GuardrailRejectedError, match="^guardrail rejected: secret$"):
        next(gen)
    assert shape(events) == [("no-pw", "start"), ("no-pw", "end"), ("chat", "mark")]
    assert events[2].data == {"rejected": True, "rejection_reason": "secret"}


def upper_intercept(loops):
    async def upper(request, nxt):
        loops.append((asyncio.get_running_loop(), threading.current_thread().name))
        async for chunk in nxt(request):
            await asyncio.sleep(0)
            yield chunk.upper()
    return upper


def test_sync_llm_generator_with_async_stream_intercept_and_no_loop(nf, events):
    loops, threads = [], []
    nf.intercepts.register_llm_stream_execution("upper", 0, upper_intercept(loops))
    chat = llm_stream(nf, threads=threads)
    with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
        assert list(chat("a b")) == ["A ", "B "]
    # the end data is the chunks the intercepts yielded
    check_streamed_call(events[1:-1], agent.uuid, 2, "A B ")
    here = threading.current_thread().name
    assert len(loops) == 1 and loops[0][1] == here  # a private loop in this thread
    assert threads == [here] * 2
    assert loops[0][0].is_closed()  # and closed when the stream ends
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_sync_llm_generator_with_async_stream_intercept_inside_a_running_loop(nf, events):
    loops, threads = [], []
    nf.intercepts.register_llm_stream_execution("upper", 0, upper_intercept(loops))
    log = []
    chat = llm_stream(nf, log=log, threads=threads)

    async def main():
        outer = asyncio.get_running_loop()
        with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
            nf.mark("before")
            got = list(chat("a b c"))
            early = chat("x y")
            first = next(early)
            early.close()
            nf.mark("after")
        return outer, agent, got, first

    outer, agent, got, first = run(main())
    assert got == ["A ", "B ", "C "] and first == "X "
    assert log == ["closed"] * 2
    assert len(loops) == 2 and loops[0][0] is not loops[1][0]  # one private loop per stream
    assert outer not in [loop for loop, _ in loops]
    assert {name for _, name in loops} == {"nemoflow-stream"}  # a helper thread
    assert set(threads) == {"nemoflow-stream"}
    assert all(loop.is_closed() for loop, _ in loops)
    body = events[2:-2]  # between the "before" and "after" marks
    assert shape(events[:2]) == [("agent", "start"), ("before", "mark")]
    assert shape(events[-2:]) == [("after", "mark"), ("agent", "end")]
    check_streamed_call(body[:5], agent.uuid, 3, "A B C ")
    check_streamed_call(body[5:], agent.uuid, 1, "X ")

    # work in the body, run in the helper thread, is under the caller's scope
    @nf.trace.llm("marked")
    def marked(prompt):
        nf.mark("body", data={"thread": threading.current_thread().name})
        yield prompt

    async def in_loop():
        with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
            return agent, list(marked("p"))

    events.clear()
    agent, got = run(in_loop())
    assert got == ["P"]
    assert shape(events) == [("agent", "start"), ("marked", "start"), ("body", "mark"),
                             ("llm.chunk", "mark"), ("marked", "end"), ("agent", "end")]
    assert events[2].data == {"thread": "nemoflow-stream"}
    assert events[2].parent_uuid == agent.uuid == events[1].parent_uuid


# --------------------------------------------------------------------------------------------
# Concurrency: scope-local middleware stays with its own scope and its own stream.

def test_threads_each_streaming_under_their_own_scope_do_not_leak(nf, events):
    n_threads, n_items = 8, 4
    barrier = threading.Barrier(n_threads, timeout=30)
    errors, results, scopes = [], {}, {}

    @nf.trace.tool("count")
    def count(n, tag=None):
        for i in range(n):
            if tag is not None:  # tagged by a worker's middleware
                barrier.wait()  # every worker's stream is open at the same time
            yield f"{tag}:{i}"

    def worker(i):
        try:
            with nf.scope.scope(f"w{i}", nf.ScopeType.Agent) as h:
                scopes[i] = h.uuid
                nf.scope_local.register_tool_request(h, "tag", 0, False,
                                                     lambda n, a, i=i: {**a, "tag": i})
                nf.scope_local.register_tool_sanitize_response(
                    h, "own", 0, lambda n, items, i=i: {"thread": i, "items": items})
                nf.scope_local.register_tool_execution(
                    h, "wrap", 0, lambda n, a, nxt, i=i: (f"t{i}/{x}" for x in nxt(a)))
                results[i] = list(count(n_items))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ends = {e.uuid: e for e in events if e.name == "count" and e.scope_category == "end"}
    starts = [e for e in events if e.name == "count" and e.scope_category == "start"]
    assert len(starts) == len(ends) == n_threads
    for i in range(n_threads):
        expected = [f"t{i}/{i}:{k}" for k in range(n_items)]
        assert results[i] == expected
        start = [e for e in starts if e.parent_uuid == scopes[i]]
        assert len(start) == 1 and start[0].data == {"n": n_items, "tag": i}
        assert ends[start[0].uuid].data == {"thread": i, "items": expected}
    # a stream started outside these scopes sees none of their middleware
    events.clear()
    assert list(count(1)) == ["None:0"]
    assert [e.data for e in events] == [{"n": 1}, ["None:0"]]


def test_tasks_each_streaming_under_their_own_scope_do_not_leak(nf, events):
    n_tasks, n_items = 20, 3

    @nf.trace.tool("acount")
    async def acount(n, tag=None):
        for i in range(n):
            await asyncio.sleep(0)  # the tasks' streams interleave
            yield f"{tag}:{i}"

    async def worker(i):
        with nf.scope.scope(f"w{i}", nf.ScopeType.Agent) as h:
            nf.scope_local.register_tool_request(h, "tag", 0, False,
                                                 lambda n, a, i=i: {**a, "tag": i})

            async def own(name, items, i=i):
                await asyncio.sleep(0)
                return {"task": i, "items": items}

            nf.scope_local.register_tool_sanitize_response(h, "own", 0, own)
            gen = acount(n_items)
            got = []
            async for x in gen:
                got.append(x)
                await asyncio.sleep(0)
            return h.uuid, got

    async def main():
        return await asyncio.gather(*(worker(i) for i in range(n_tasks)))

    results = run(main())
    ends = {e.uuid: e for e in events if e.name == "acount" and e.scope_category == "end"}
    starts = [e for e in events if e.name == "acount" and e.scope_category == "start"]
    assert len(starts) == len(ends) == n_tasks
    for i, (scope_uuid, got) in enumerate(results):
        expected = [f"{i}:{k}" for k in range(n_items)]
        assert got == expected
        start = [e for e in starts if e.parent_uuid == scope_uuid]
        assert len(start) == 1 and start[0].data == {"n": n_items, "tag": i}
        assert ends[start[0].uuid].data == {"task": i, "items": expected}
