"""Tool calls: manual spans, managed ``tools.execute`` and its middleware pipeline."""

from __future__ import annotations

import asyncio

import pytest

OK = {"otel.status_code": "OK"}


@pytest.fixture(autouse=True)
def _middleware(nf):
    nf._middleware._clear()
    yield
    nf._middleware._clear()


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
    mark = [e for e in events if e.name == "in-tool"][0]
    start = [e for e in events if e.name == "t"][0]
    assert mark.parent_uuid == agent.uuid == start.parent_uuid


def test_execute_under_explicit_handle(nf, events):
    with nf.scope.scope("a", nf.ScopeType.Agent) as a:
        pass
    other = nf.scope.push("b", nf.ScopeType.Agent)
    run(nf.tools.execute("t", {}, lambda _: 1, handle=other))
    nf.scope.pop(other)
    assert [e.parent_uuid for e in events if e.name == "t"] == [other.uuid] * 2
    assert a.uuid != other.uuid
