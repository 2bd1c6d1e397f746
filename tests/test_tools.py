"""Tool calls: manual spans, managed ``tools.execute`` and its middleware pipeline."""

from __future__ import annotations

import asyncio
import inspect

import pytest

OK = {"otel.status_code": "OK"}


def shape(events):
    return [(e.name, e.scope_category if e.kind == "scope" else "mark") for e in events]


def run(coro):
    return asyncio.run(coro)


# --------------------------------------------------------------------------------------------
# Manual spans.

def test_call_and_call_end_write_a_tool_scope_not_pushed_on_the_stack(nf, events):
    root = nf._core.current()
    with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
        h = nf.tools.call("search", {"q": "x"}, tool_call_id="call-1", data={"d": 1},
                          metadata={"m": 1}, attributes=nf.ToolAttributes.REMOTE)
        assert isinstance(h, nf.ToolHandle)
        assert nf.scope.get_handle() is agent  # not pushed
        nf.mark("inside")
        nf.tools.call_end(h, {"hits": 1}, metadata={"e": 2})
    start, mark, end = events[1:4]
    assert shape(events) == [("agent", "start"), ("search", "start"), ("inside", "mark"),
                             ("search", "end"), ("agent", "end")]
    assert start.category == end.category == "tool"
    assert start.data == {"q": "x"} and end.data == {"hits": 1}
    assert start.category_profile == end.category_profile == {"tool_call_id": "call-1"}
    assert start.attributes == ["remote"]
    assert start.parent_uuid == agent.uuid and mark.parent_uuid == agent.uuid
    assert start.metadata == {"m": 1} and end.metadata == {"m": 1, "e": 2}
    assert h.data == {"d": 1} and h.parent_uuid == agent.uuid
    assert agent.parent_uuid == root.uuid


def test_call_without_tool_call_id_has_an_empty_profile(nf, events):
    h = nf.tools.call("t", None)
    nf.tools.call_end(h, None)
    assert [e.category_profile for e in events] == [{}, {}]


def test_call_end_twice_raises_not_found_and_emits_once(nf, events):
    h = nf.tools.call("t", {})
    nf.tools.call_end(h, 1)
    with pytest.raises(nf.NotFoundError, match="^not found: scope handle not found$"):
        nf.tools.call_end(h, 2)
    assert shape(events) == [("t", "start"), ("t", "end")]


def test_call_end_rejects_other_handles_and_non_json(nf, events):
    with nf.scope.scope("s", nf.ScopeType.Agent) as s:
        with pytest.raises(TypeError, match="ToolHandle"):
            nf.tools.call_end(s, 1)
    with pytest.raises(ValueError, match="Failed to convert to JSON"):
        nf.tools.call("t", {"x": object()})
    h = nf.tools.call("t", {})
    with pytest.raises(ValueError, match="Failed to convert to JSON"):
        nf.tools.call_end(h, 1, data=object())
    with pytest.raises(TypeError):
        nf.tools.call("t", {}, attributes=nf.LLMAttributes.STATEFUL)


# --------------------------------------------------------------------------------------------
# Managed execution.

def test_execute_sync_and_async_functions(nf, events):
    async def main():
        a = await nf.tools.execute("add", {"a": 1, "b": 2}, lambda x: x["a"] + x["b"],
                                   tool_call_id="c1")

        async def mul(x):
            await asyncio.sleep(0)
            return x["a"] * x["b"]

        b = await nf.tools.execute("mul", {"a": 3, "b": 4}, mul)
        return a, b

    assert run(main()) == (3, 12)
    assert shape(events) == [("add", "start"), ("add", "end"), ("mul", "start"), ("mul", "end")]
    assert events[0].data == {"a": 1, "b": 2} and events[1].data == 3
    assert events[1].metadata == OK
    assert events[0].category_profile == {"tool_call_id": "c1"}
    assert events[3].data == 12


def test_execute_func_error_reraises_original_after_error_end(nf, events):
    class Boom(ValueError):
        pass

    err = Boom("bad input")

    def fail(args):
        raise err

    with pytest.raises(Boom) as info:
        run(nf.tools.execute("t", {"x": 1}, fail, metadata={"k": "v"}))
    assert info.value is err
    assert shape(events) == [("t", "start"), ("t", "end")]
    assert events[1].metadata == {"k": "v", "otel.status_code": "ERROR",
                                  "otel.status_description": "bad input",
                                  "error.type": "Boom", "exception.type": "Boom"}
    assert events[1].data is None


def test_work_inside_a_managed_tool_is_parented_to_the_enclosing_scope(nf, events):
    def tool(args):
        nf.mark("in-tool")
        return "ok"

    async def main():
        with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
            await nf.tools.execute("t", {}, tool)
        return agent

    agent = run(main())
    mark = next(e for e in events if e.name == "in-tool")
    start = next(e for e in events if e.name == "t")
    assert mark.parent_uuid == agent.uuid == start.parent_uuid


def test_execute_under_explicit_handle(nf, events):
    with nf.scope.scope("a", nf.ScopeType.Agent) as a:
        pass
    other = nf.scope.push("b", nf.ScopeType.Agent)
    run(nf.tools.execute("t", {}, lambda _: 1, handle=other))
    nf.scope.pop(other)
    assert [e.parent_uuid for e in events if e.name == "t"] == [other.uuid] * 2
    assert a.uuid != other.uuid


# --------------------------------------------------------------------------------------------
# ``@nf.trace.tool``.

def test_trace_tool_sync_bare_and_named(nf, events):
    @nf.trace.tool
    def search(query, limit=3):
        nf.mark("inside")
        return {"hits": [query] * limit}

    @nf.trace.tool("lookup", metadata={"team": "x"}, attributes=nf.ToolAttributes.REMOTE)
    def find(key):
        return key.upper()

    with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
        assert search("x", limit=2) == {"hits": ["x", "x"]}
        assert find("k") == "K"
    body = events[1:-1]
    assert shape(body) == [(search.__qualname__, "start"), ("inside", "mark"),
                           (search.__qualname__, "end"), ("lookup", "start"), ("lookup", "end")]
    assert body[0].category == "tool" and body[0].data == {"query": "x", "limit": 2}
    assert body[1].parent_uuid == agent.uuid  # not pushed: work inside is under the agent
    assert body[2].data == {"hits": ["x", "x"]} and body[2].metadata == OK
    assert body[0].category_profile == {}
    assert body[3].attributes == ["remote"] and body[4].metadata == {"team": "x", **OK}
    assert search.__name__ == "search"


def test_trace_tool_goes_through_middleware_and_rewrites_real_arguments(nf, events):
    @nf.trace.tool
    def add(a, b):
        return a + b

    nf.intercepts.register_tool_request("double", 0, False,
                                        lambda n, args: {**args, "b": args["b"] * 2})
    nf.guardrails.register_tool_sanitize_response("hide", 0, lambda n, r: "hidden")
    nf.guardrails.register_tool_conditional_execution(
        "no-negatives", 0, lambda n, args: "negative" if args["a"] < 0 else None)
    assert add(1, 2) == 5
    assert events[2].data == {"a": 1, "b": 4} and events[3].data == "hidden"
    with pytest.raises(nf.GuardrailRejectedError, match="^guardrail rejected: negative$"):
        add(-1, 2)


def test_trace_tool_async_method_and_error(nf, events):
    class Box:
        @nf.trace.tool("box.get")
        async def get(self, key):
            await asyncio.sleep(0)
            if key == "bad":
                raise KeyError(key)
            return {"key": key}

    box = Box()
    assert run(box.get("a")) == {"key": "a"}
    with pytest.raises(KeyError):
        run(box.get("bad"))
    assert shape(events) == [("box.get", "start"), ("box.get", "end")] * 2
    assert events[0].data == {"key": "a"}  # the receiver is not an argument
    assert events[3].metadata["exception.type"] == "KeyError"


def test_trace_tool_sync_with_async_middleware_inside_a_running_loop(nf, events):
    @nf.trace.tool
    def echo(x):
        return x

    async def rewrite(name, args):
        await asyncio.sleep(0)
        return {"x": args["x"] + 1}

    nf.intercepts.register_tool_request("r", 0, False, rewrite)
    assert echo(1) == 2  # no loop running here

    async def main():
        return echo(10)  # a loop is running in this thread

    assert run(main()) == 11


def test_trace_tool_rejects_classes_and_llm_options(nf):
    with pytest.raises(TypeError):
        nf.trace.tool(int)
    with pytest.raises(TypeError):
        nf.trace.tool(model="m")


def test_cancelled_managed_tool_writes_an_error_end(nf, events):
    async def slow(args):
        await asyncio.sleep(30)

    async def main():
        task = asyncio.create_task(nf.tools.execute("slow", {}, slow))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert shape(events) == [("slow", "start"), ("slow", "end")]
    assert events[1].metadata == {"otel.status_code": "ERROR",
                                  "otel.status_description": "cancelled",
                                  "error.type": "CancelledError",
                                  "exception.type": "CancelledError"}



def test_trace_tool_without_middleware_writes_what_the_pipeline_writes(nf, events):
    @nf.trace.tool("t", metadata={"m": 1}, attributes=nf.ToolAttributes.REMOTE)
    def tool(x, fail=False):
        if fail:
            raise ValueError("no")
        return {"x": x, "obj": object}  # not JSON: written leniently

    def fields(evs):
        return [(e.name, e.scope_category, e.data, e.metadata, e.category_profile, e.attributes)
                for e in evs]

    def calls():
        tool(1)
        with pytest.raises(ValueError):
            tool(2, fail=True)

    calls()  # no middleware: the direct path
    plain = fields(events)
    events.clear()
    nf.intercepts.register_tool_execution("noop", 0, lambda n, a, nxt: nxt(a))
    calls()  # through the pipeline
    assert fields(events) == plain
    assert plain[1][2]["obj"].startswith("<class")
    assert plain[3][3]["exception.type"] == "ValueError"


def test_trace_tool_argument_kinds_survive_a_rewrite(nf, events):
    @nf.trace.tool("f")
    def f(a, /, b, *rest, c=3, **extra):
        return [a, b, list(rest), c, extra]

    class K:
        @nf.trace.tool("k.s")
        @staticmethod
        def s(x):
            return x * 2

        @nf.trace.tool("k.c")
        @classmethod
        def c(cls, x):
            return cls.__name__ + x

    assert f(1, 2, 9, 8, c=4, z=5) == [1, 2, [9, 8], 4, {"z": 5}]
    assert events[0].data == {"a": 1, "b": 2, "rest": [9, 8], "c": 4, "extra": {"z": 5}}
    assert K.s(2) == 4 and K.c("!") == "K!"
    assert events[4].data == {"x": "!"}
    nf.intercepts.register_tool_request("bump", 0, False,
                                        lambda n, a: {**a, "b": 20} if n == "f" else a)
    assert f(1, 2, 9, c=4) == [1, 20, [9], 4, {}]


def _f(a, b=2, c=3):
    return a


def _g(self, x, y=1):
    return x


def _h(*, k):
    return k


def _i(a, /, b):
    return a


@pytest.mark.parametrize("fn", [_f, _g, _h, _i])
def test_decorator_argument_mapping_equals_signature_bind(fn):
    # The decorator maps common calls without Signature.bind; every call must map (or be
    # refused with TypeError) exactly as bind does it.
    from nemoflow.trace import _Arguments

    arguments, sig = _Arguments(fn), inspect.signature(fn)
    keywords = [{}, {"a": 1}, {"b": 5}, {"c": 6, "b": 7}, {"x": 1}, {"y": 2}, {"self": 0},
                {"k": 1}, {"z": 1}]
    for n in range(5):
        args = tuple(range(10, 10 + n))
        for kwargs in keywords:
            try:
                want = dict(sig.bind(*args, **kwargs).arguments)
                want = (want, want.pop("self", None))
            except TypeError:
                want = TypeError
            try:
                got = arguments.split(args, kwargs)
            except TypeError:
                got = TypeError
            assert got == want, (args, kwargs)
