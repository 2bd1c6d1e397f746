"""What callers pass in and what ends up in a line: careless or hostile arguments either raise
a typed error with nothing emitted, or are written as valid JSON; user code run by the core
(subscribers, the warnings machinery) never leaves the scope stack inconsistent."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import json
import math
import warnings

import numpy as np
import orjson
import pytest

UTC = dt.timezone.utc


def lines(nf, exporter):
    nf.subscribers.flush(5)
    exporter.force_flush()
    with open(exporter.path, encoding="utf-8", newline="") as f:
        text = f.read()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.split("\n")[:-1]]


def raising(exc_type, when=lambda ev: True):
    def callback(ev):
        if when(ev):
            raise exc_type("boom")
    return callback


def is_end(ev):
    return getattr(ev, "scope_category", None) == "end"


def is_start(ev):
    return getattr(ev, "scope_category", None) == "start"


# --- 7: user code run by the core ------------------------------------------------------------

def test_escalated_warning_never_raises_into_traced_code(nf, jsonl, capsys):
    nf.subscribers.register("bad", raising(ValueError))
    root = nf.scope.get_handle()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = nf.scope.push("a", nf.ScopeType.Function)
        nf.mark("m")
        nf.scope.pop(h)
        with nf.scope.scope("b", nf.ScopeType.Function):
            pass

        @nf.trace("f")
        def f(x):
            return x

        assert f(1) == 1

        @nf.trace.tool("t")
        def t(x):
            return x

        assert t(2) == 2
        assert nf.tools.execute_sync("t2", {"a": 1}, lambda a: 3) == 3
    assert nf.scope.get_handle() is root
    assert nf.diagnostics()["subscribers"]["bad"]["errors"] == 11
    # reported once, where it cannot raise
    assert capsys.readouterr().err.count("nemoflow: subscriber 'bad' raised ValueError: boom") == 1
    names = [(ev["name"], ev["scope_category"] if ev["kind"] == "scope" else "mark")
             for ev in lines(nf, jsonl)]
    assert names == [("a", "start"), ("m", "mark"), ("a", "end"), ("b", "start"), ("b", "end"),
                     ("f", "start"), ("f", "end"), ("t", "start"), ("t", "end"),
                     ("t2", "start"), ("t2", "end")]


def test_interrupt_from_subscriber_during_pop_after_the_pop_completed(nf, jsonl):
    root = nf.scope.get_handle()
    h = nf.scope.push("a", nf.ScopeType.Function)
    nf.subscribers.register("ctrl-c", raising(KeyboardInterrupt, is_end))
    with pytest.raises(KeyboardInterrupt):
        nf.scope.pop(h)
    assert nf.scope.get_handle() is root
    with pytest.raises(nf.NotFoundError):
        nf.scope.pop(h)
    nf.subscribers.deregister("ctrl-c")
    assert [ev["scope_category"] for ev in lines(nf, jsonl)] == ["start", "end"]


def test_interrupt_from_subscriber_during_a_mark_after_it_was_written(nf, jsonl):
    nf.subscribers.register("ctrl-c", raising(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        nf.mark("m")
    nf.subscribers.deregister("ctrl-c")
    assert [ev["name"] for ev in lines(nf, jsonl)] == ["m"]


def test_interrupt_from_subscriber_during_push_leaves_the_scope_current(nf, jsonl):
    # as if the signal arrived just after push returned: the scope is open and current
    nf.subscribers.register("ctrl-c", raising(KeyboardInterrupt, is_start))
    with pytest.raises(KeyboardInterrupt):
        nf.scope.push("a", nf.ScopeType.Function)
    nf.subscribers.deregister("ctrl-c")
    h = nf.scope.get_handle()
    assert h.name == "a"
    nf.scope.pop(h)
    assert [ev["scope_category"] for ev in lines(nf, jsonl)] == ["start", "end"]


def test_interrupt_from_subscriber_in_scope_block_restores_the_binding(nf, jsonl):
    root = nf.scope.get_handle()
    nf.subscribers.register("ctrl-c", raising(KeyboardInterrupt, is_start))
    with pytest.raises(KeyboardInterrupt):
        with nf.scope.scope("enter", nf.ScopeType.Function):
            pytest.fail("the block must not run")
    assert nf.scope.get_handle() is root
    nf.subscribers.deregister("ctrl-c")
    nf.subscribers.register("ctrl-c", raising(KeyboardInterrupt, is_end))
    with pytest.raises(KeyboardInterrupt):
        with nf.scope.scope("exit", nf.ScopeType.Function):
            nf.scope.push("inner", nf.ScopeType.Function)  # abandoned: ended by the block
    assert nf.scope.get_handle() is root
    with pytest.raises(KeyboardInterrupt):
        with nf.trace("span"):
            pass
    assert nf.scope.get_handle() is root
    nf.subscribers.deregister("ctrl-c")
    got = [(ev["name"], ev["scope_category"]) for ev in lines(nf, jsonl)]
    assert got == [("enter", "start"), ("enter", "end"), ("exit", "start"), ("inner", "start"),
                   ("inner", "end"), ("exit", "end"), ("span", "start"), ("span", "end")]


def test_interrupt_from_subscriber_in_traced_function(nf, jsonl):
    root = nf.scope.get_handle()
    ran = []

    @nf.trace
    def f():
        ran.append(1)

    nf.subscribers.register("ctrl-c", raising(KeyboardInterrupt, is_start))
    with pytest.raises(KeyboardInterrupt):
        f()
    assert ran == [] and nf.scope.get_handle() is root
    nf.subscribers.deregister("ctrl-c")
    nf.subscribers.register("ctrl-c", raising(KeyboardInterrupt, is_end))
    with pytest.raises(KeyboardInterrupt):
        f()
    assert ran == [1] and nf.scope.get_handle() is root
    nf.subscribers.deregister("ctrl-c")
    events = lines(nf, jsonl)
    assert [ev["scope_category"] for ev in events] == ["start", "end", "start", "end"]
    assert events[1]["metadata"]["otel.status_code"] == "ERROR"


def test_interrupt_from_subscriber_at_a_tool_call_start_ends_the_call(nf, jsonl):
    nf.subscribers.register("ctrl-c", raising(KeyboardInterrupt, is_start))
    with pytest.raises(KeyboardInterrupt):
        nf.tools.call("t", {"a": 1})
    nf.subscribers.deregister("ctrl-c")
    events = lines(nf, jsonl)
    assert [ev["scope_category"] for ev in events] == ["start", "end"]
    assert events[1]["metadata"]["otel.status_code"] == "ERROR"


# --- 8: timestamps ----------------------------------------------------------------------------

@pytest.mark.parametrize("when", [dt.datetime(2262, 4, 12, tzinfo=UTC),
                                  dt.datetime(3000, 6, 1, tzinfo=UTC),
                                  dt.datetime(1677, 9, 21, tzinfo=UTC),
                                  dt.datetime(1, 1, 1, tzinfo=UTC),
                                  dt.datetime.max.replace(tzinfo=UTC)])
def test_timestamps_outside_the_representable_range_are_refused(nf, jsonl, events, when):
    h = nf.scope.push("a", nf.ScopeType.Function)
    for call in (lambda: nf.scope.push("b", nf.ScopeType.Function, timestamp=when),
                 lambda: nf.mark("m", timestamp=when),
                 lambda: nf.scope.scope("c", nf.ScopeType.Function, timestamp=when),
                 lambda: nf.scope.scope("c", nf.ScopeType.Function, end_timestamp=when),
                 lambda: nf.tools.call("t", None, timestamp=when),
                 lambda: nf.scope.pop(h, timestamp=when)):
        with pytest.raises(ValueError, match="1677-09-21.*2262-04-11"):
            call()
    assert nf.scope.get_handle() is h
    nf.scope.pop(h)
    assert len(events) == 2 and len(lines(nf, jsonl)) == 2


@pytest.mark.parametrize("when", [dt.datetime(2262, 4, 11, 23, 47, 16, 854775, tzinfo=UTC),
                                  dt.datetime(1677, 9, 21, 0, 12, 43, 145225, tzinfo=UTC),
                                  dt.datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC)])
def test_timestamps_at_the_ends_of_the_range_are_written_as_given(nf, jsonl, when):
    nf.mark("m", timestamp=when)
    (line,) = lines(nf, jsonl)
    assert dt.datetime.fromisoformat(line["timestamp"]) == when


# --- 9: lenient managed calls ------------------------------------------------------------------

BAD = "name-\udcff.txt"  # what os.listdir returns for a file name that is not UTF-8


def test_managed_tool_and_llm_accept_lone_surrogates(nf, jsonl):
    @nf.trace.tool
    def listing(path):
        return [BAD]

    @nf.trace.tool
    async def alisting(path):
        return BAD

    @nf.trace.tool
    def glisting(path):
        yield BAD

    @nf.trace.tool
    async def aglisting(path):
        yield BAD

    @nf.trace.llm
    def ask(prompt):
        return {"text": BAD, "choices": [{"finish_reason": BAD}]}

    @nf.trace.llm
    async def aask(prompt):
        return BAD

    @nf.trace.llm
    def sask(prompt):
        yield BAD

    @nf.trace.llm
    async def asask(prompt):
        yield BAD

    async def drain(agen):
        return [x async for x in agen]

    assert listing(BAD) == [BAD]
    assert asyncio.run(alisting(BAD)) == BAD
    assert list(glisting(BAD)) == [BAD]
    assert asyncio.run(drain(aglisting(BAD))) == [BAD]
    assert ask(BAD)["text"] == BAD
    assert asyncio.run(aask(BAD)) == BAD
    assert list(sask(BAD)) == [BAD]
    assert asyncio.run(drain(asask(BAD))) == [BAD]
    scopes = [ev for ev in lines(nf, jsonl) if ev["kind"] == "scope"]
    assert len(scopes) == 16
    for ev in scopes:
        assert ev["metadata"] is None or ev["metadata"].get("otel.status_code") != "ERROR"
        assert "\\udcff" in json.dumps(ev["data"]) or "udcff" in json.dumps(ev["data"])


# --- 10: payloads that orjson would write as something else -----------------------------------

@dataclasses.dataclass
class Point:
    x: float


class Weird(enum.Enum):
    NAN = math.nan
    NESTED = (1.0, {"x": math.inf})
    FRAGMENT = orjson.Fragment(b"1,2")


@pytest.mark.parametrize("payload", [
    orjson.Fragment(b'{"a":1}\n{"b":2}'),
    orjson.Fragment(b"{"),
    {"k": [orjson.Fragment(b"1")]},
    Weird.NAN, [Weird.NESTED], {"e": Weird.FRAGMENT},
    {"x": (1, -math.inf)},
    # what orjson's options leave to ``default``, which refuses it: never a silent null
    Point(math.nan), np.float64(math.nan), np.array([math.nan]), {math.nan: 1}, {1.5: 1},
], ids=repr)
def test_payloads_orjson_cannot_write_faithfully_are_refused(nf, jsonl, events, payload):
    with pytest.raises(ValueError, match="Failed to convert to JSON"):
        nf.scope.push("a", nf.ScopeType.Function, data=payload)
    with pytest.raises(ValueError):
        nf.mark("m", data=payload)
    with pytest.raises(ValueError):
        nf.tools.call("t", payload)
    assert events == [] and lines(nf, jsonl) == []


def test_lenient_payloads_stringify_fragments(nf, jsonl):
    @nf.trace
    def f(x):
        return [orjson.Fragment(b"1\n2"), Weird.FRAGMENT]

    @nf.trace.tool
    def t(x):
        return orjson.Fragment(b"}")

    f(orjson.Fragment(b"{"))
    t(orjson.Fragment(b"]"))
    events = lines(nf, jsonl)
    assert len(events) == 4
    assert events[1]["data"] == ["1\n2", "1,2"]
    assert events[3]["data"] == "}"


# --- 14: the two cores agree ------------------------------------------------------------------

class Name(str):
    pass


def test_str_subclasses_as_names_and_categories(nf, jsonl, events):
    names = [Name("sub"), enum.StrEnum("N", {"A": "strenum"}).A]
    for name in names:
        h = nf.scope.push(name, nf.ScopeType.Function)
        nf.mark(name, category=name)
        nf.scope.pop(h)
        with nf.scope.scope(name, nf.ScopeType.Function):
            pass
    assert all(type(ev.name) is str for ev in events)
    assert [ev["name"] for ev in lines(nf, jsonl)] == ["sub"] * 5 + ["strenum"] * 5
    assert {type(ev.category) for ev in events if ev.kind == "mark"} == {str}


@pytest.mark.parametrize("attrs", [1 << 31, 1 << 64, -1, 1 << 2])
def test_attribute_values_out_of_range_are_refused(nf, jsonl, events, attrs):
    with pytest.raises(ValueError, match="attributes"):
        nf.scope.push("a", nf.ScopeType.Function, attributes=attrs)
    with pytest.raises(ValueError, match="attributes"):
        nf.tools.call("t", None, attributes=attrs)
    assert events == [] and lines(nf, jsonl) == []


@pytest.mark.parametrize("size", [2**40, 2**21, 8, 0, -16, 100, True, 16.0])
def test_ring_size_is_validated_up_front(nf, size):
    before = nf.diagnostics()["pipeline"]["ring_size"]
    with pytest.raises((ValueError, TypeError), match="ring_size"):
        nf.configure(ring_size=size)
    assert nf.diagnostics()["pipeline"]["ring_size"] == before


def test_ring_size_limits_are_accepted(nf):
    before = nf.diagnostics()["pipeline"]["ring_size"]
    try:
        for size in (16, 2**20):
            nf.configure(ring_size=size)
            assert nf.diagnostics()["pipeline"]["ring_size"] == size
    finally:
        nf.configure(ring_size=before)


@pytest.mark.parametrize("kind", [3, 200, -1, 255, 1 << 40])
def test_core_start_refuses_unknown_kinds(nf, events, kind):
    with pytest.raises((ValueError, OverflowError), match="kind"):
        nf._core.start("x", nf.ScopeType.Tool, None, None, None, None, None, None, kind)
    assert events == []


@pytest.mark.parametrize("cls", ["ScopeHandle", "ToolHandle", "LLMHandle"])
def test_forged_handles_are_refused(nf, jsonl, events, cls):
    forged = getattr(nf._core, cls).__new__(getattr(nf._core, cls))
    calls = [lambda: nf.scope.pop(forged), lambda: nf._core.end(forged, None, None, None),
             lambda: nf.scope.push("a", nf.ScopeType.Function, handle=forged),
             lambda: nf.mark("m", handle=forged),
             lambda: nf.tools.call("t", None, handle=forged),
             lambda: nf.scope.scope("a", nf.ScopeType.Function, handle=forged)]
    if cls == "ToolHandle":
        calls.append(lambda: nf.tools.call_end(forged, None))
    if cls == "LLMHandle":
        calls.append(lambda: nf.llm.call_end(forged, None))
    for call in calls:
        with pytest.raises(TypeError, match="not created by nemoflow"):
            call()
    assert events == [] and lines(nf, jsonl) == []


# --- 15: deep traces in the command line tool ---------------------------------------------------

def test_cli_handles_very_deep_traces(nf, jsonl, capsys):
    from nemoflow import cli

    depth = 5000
    handles = [nf.scope.push(f"s{i}", nf.ScopeType.Function) for i in range(depth)]
    nf.mark("bottom")
    for h in reversed(handles):
        nf.scope.pop(h)
    lines(nf, jsonl)
    assert cli.main(["summary", jsonl.path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{2 * depth + 1} events: {depth} scopes, 1 marks")
    assert out[1].startswith("  s0 [function]")
    assert out[depth].startswith("  " * depth + f"s{depth - 1} [function]")
    assert out[depth + 1] == "  " * (depth + 1) + "• bottom"
    assert cli.main(["validate", jsonl.path]) == 0


def test_a_refused_call_end_leaves_the_call_open(nf, jsonl, events):
    tool = nf.tools.call("t", None)
    llm = nf.llm.call("l", nf.llm.LLMRequest({}, {}))
    with pytest.raises(ValueError):
        nf.tools.call_end(tool, math.nan)
    with pytest.raises(ValueError):
        nf.llm.call_end(llm, None, timestamp=dt.datetime(3000, 1, 1, tzinfo=UTC))
    assert len(events) == 2
    nf.tools.call_end(tool, 1)
    nf.llm.call_end(llm, 2)
    with pytest.raises(nf.NotFoundError):
        nf.tools.call_end(tool, 1)
    assert [ev["data"] for ev in lines(nf, jsonl)][2:] == [1, 2]


class Sneaky(list):
    def __iter__(self):
        raise RuntimeError("not through __iter__")


def test_container_subclasses_are_read_as_orjson_reads_them(nf, jsonl):
    nf.mark("m", data={"a": Sneaky([1, 2])})
    with pytest.raises(ValueError, match="NaN"):
        nf.mark("m", data=Sneaky([math.nan]))
    assert [ev["data"] for ev in lines(nf, jsonl)] == [{"a": [1, 2]}]
