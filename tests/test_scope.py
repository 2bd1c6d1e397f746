"""push / pop / event / scope(): what lands in the events, field by field and in order."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import uuid as uuidlib

import pytest

TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?\+00:00$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

SCOPE_KEYS = {"atof_version", "attributes", "category", "category_profile", "data",
              "data_schema", "kind", "metadata", "name", "parent_uuid", "scope_category",
              "timestamp", "uuid"}
MARK_KEYS = SCOPE_KEYS - {"attributes", "scope_category"}


def canonical(line: str) -> str:
    return json.dumps(json.loads(line), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def summary(events):
    return [(e.kind, e.name, getattr(e, "scope_category", None)) for e in events]


# ---------------------------------------------------------------------------------------------
# Event shape and order


def test_push_pop_emits_start_then_end_with_all_fields(nf, events):
    root = nf.capture().root_uuid
    h = nf.scope.push("planner", nf.ScopeType.Agent, input={"q": "hi"}, metadata={"m": 1})
    nf.scope.pop(h, output={"a": 2})
    start, end = events
    for e in (start, end):
        assert e.kind == "scope"
        assert e.atof_version == "0.1"
        assert e.uuid == h.uuid
        assert e.parent_uuid == root
        assert e.name == "planner"
        assert e.category == "agent"
        assert e.attributes == []
        assert e.category_profile is None
        assert e.data_schema is None
    assert (start.scope_category, end.scope_category) == ("start", "end")
    assert start.data == {"q": "hi"}
    assert end.data == {"a": 2}
    assert start.metadata == {"m": 1}
    assert end.metadata == {"m": 1}


def test_nested_order_and_parent_links(nf, events):
    outer = nf.scope.push("outer", nf.ScopeType.Agent)
    nf.scope.event("m1", data={"step": 1})
    inner = nf.scope.push("inner", nf.ScopeType.Tool)
    nf.scope.event("m2")
    nf.scope.pop(inner)
    nf.scope.pop(outer)
    assert summary(events) == [
        ("scope", "outer", "start"), ("mark", "m1", None), ("scope", "inner", "start"),
        ("mark", "m2", None), ("scope", "inner", "end"), ("scope", "outer", "end")]
    assert inner.parent_uuid == outer.uuid
    assert events[1].parent_uuid == outer.uuid
    assert events[2].parent_uuid == outer.uuid
    assert events[3].parent_uuid == inner.uuid
    assert events[4].uuid == inner.uuid
    assert events[5].uuid == outer.uuid
    assert events[1].uuid not in (outer.uuid, inner.uuid)


@pytest.mark.parametrize("member", list(range(11)))
def test_category_is_lowercase_scope_type_name(nf, events, member):
    scope_type = nf.ScopeType(member)
    h = nf.scope.push("x", scope_type)
    nf.scope.pop(h)
    assert [e.category for e in events] == [scope_type.name.lower()] * 2
    assert h.scope_type is scope_type


def test_category_vocabulary(nf):
    assert [t.name.lower() for t in nf.ScopeType] == [
        "agent", "function", "tool", "llm", "retriever", "embedder", "reranker", "guardrail",
        "evaluator", "custom", "unknown"]


@pytest.mark.parametrize("flags, names", [
    (None, []),
    ("PARALLEL", ["parallel"]),
    ("RELOCATABLE", ["relocatable"]),
    ("BOTH", ["parallel", "relocatable"]),
])
def test_attributes_are_sorted_names(nf, events, flags, names):
    SA = nf.ScopeAttributes
    value = {None: None, "PARALLEL": SA.PARALLEL, "RELOCATABLE": SA.RELOCATABLE,
             "BOTH": SA.RELOCATABLE | SA.PARALLEL}[flags]
    h = nf.scope.push("x", nf.ScopeType.Function, attributes=value)
    nf.scope.pop(h)
    assert [e.attributes for e in events] == [names, names]
    assert json.loads(events[0].to_json())["attributes"] == names
    assert int(h.attributes) == (0 if value is None else int(value))
    assert isinstance(h.attributes, nf.ScopeAttributes)


def test_handle_data_stays_on_handle(nf, events):
    h = nf.scope.push("x", nf.ScopeType.Function, data={"private": True})
    assert h.data == {"private": True}
    nf.scope.pop(h)
    assert [e.data for e in events] == [None, None]
    assert all("private" not in e.to_json() for e in events)


def test_handle_fields(nf):
    outer = nf.scope.push("outer", nf.ScopeType.Agent)
    h = nf.scope.push("h", nf.ScopeType.Retriever, metadata={"k": "v"},
                      attributes=nf.ScopeAttributes.PARALLEL)
    assert isinstance(h, nf.ScopeHandle)
    assert h.name == "h"
    assert h.scope_type == nf.ScopeType.Retriever
    assert h.parent_uuid == outer.uuid
    assert h.metadata == {"k": "v"}
    assert h.data is None
    assert h.attributes.is_parallel and not h.attributes.is_relocatable
    nf.scope.pop(h)
    nf.scope.pop(outer)


@pytest.mark.parametrize("field", ["uuid", "name", "scope_type", "parent_uuid", "data",
                                   "metadata", "attributes"])
def test_handle_is_read_only(nf, field):
    h = nf.scope.push("x", nf.ScopeType.Function)
    with pytest.raises(AttributeError):
        setattr(h, field, None)
    nf.scope.pop(h)


def test_end_metadata_merges_over_start(nf, events):
    h = nf.scope.push("x", nf.ScopeType.Function, metadata={"a": 1, "b": 1})
    nf.scope.pop(h, metadata={"b": 2, "c": 3})
    assert events[0].metadata == {"a": 1, "b": 1}
    assert events[1].metadata == {"a": 1, "b": 2, "c": 3}


def test_end_metadata_only_on_end(nf, events):
    h = nf.scope.push("x", nf.ScopeType.Function)
    nf.scope.pop(h, metadata={"c": 3})
    assert events[0].metadata is None
    assert events[1].metadata == {"c": 3}


def test_mark_fields(nf, events):
    outer = nf.scope.push("outer", nf.ScopeType.Agent)
    nf.scope.event("checkpoint", data={"step": 1}, metadata={"m": True},
                   data_schema={"name": "step", "version": "1"})
    nf.scope.pop(outer)
    mark = events[1]
    assert mark.kind == "mark"
    assert mark.atof_version == "0.1"
    assert mark.name == "checkpoint"
    assert mark.parent_uuid == outer.uuid
    assert mark.data == {"step": 1}
    assert mark.metadata == {"m": True}
    assert mark.data_schema == {"name": "step", "version": "1"}
    assert mark.category is None
    assert mark.category_profile is None
    assert UUID_RE.match(mark.uuid)
    assert isinstance(mark, nf.MarkEvent)
    assert isinstance(events[0], nf.ScopeEvent)


def test_mark_defaults_are_null(nf, events):
    nf.scope.event("m")
    d = events[0].to_dict()
    assert set(d) == MARK_KEYS
    for key in ("data", "metadata", "data_schema", "category", "category_profile"):
        assert d[key] is None


def test_mark_does_not_change_the_stack(nf, events):
    before = nf.scope.get_handle().uuid
    nf.scope.event("m")
    assert nf.scope.get_handle().uuid == before


def test_mark_with_explicit_handle(nf, events):
    a = nf.scope.push("a", nf.ScopeType.Agent)
    b = nf.scope.push("b", nf.ScopeType.Function)
    nf.scope.event("m", handle=a)
    nf.scope.pop(b)
    nf.scope.pop(a)
    assert events[2].name == "m"
    assert events[2].parent_uuid == a.uuid


def test_get_handle_is_top_of_stack(nf):
    root = nf.scope.get_handle()
    assert root.uuid == nf.capture().root_uuid
    assert root.parent_uuid is None
    assert root.name == "root"
    a = nf.scope.push("a", nf.ScopeType.Agent)
    assert nf.scope.get_handle().uuid == a.uuid
    b = nf.scope.push("b", nf.ScopeType.Agent)
    assert nf.scope.get_handle().uuid == b.uuid
    nf.scope.pop(b)
    assert nf.scope.get_handle().uuid == a.uuid
    nf.scope.pop(a)
    assert nf.scope.get_handle().uuid == root.uuid


# ---------------------------------------------------------------------------------------------
# The implicit root and explicit parents


def test_top_level_scope_parent_is_implicit_root(nf, events):
    root_uuid = nf.get_scope_stack().root_uuid
    assert root_uuid == nf.capture().root_uuid
    h = nf.scope.push("top", nf.ScopeType.Agent)
    nf.scope.event("m")
    nf.scope.pop(h)
    nf.scope.event("top-mark")
    assert h.parent_uuid == root_uuid
    assert events[0].parent_uuid == root_uuid
    assert events[-1].parent_uuid == root_uuid
    assert UUID_RE.match(root_uuid)


def test_root_is_never_emitted(nf, events):
    root_uuid = nf.capture().root_uuid
    with nf.scope.scope("a", nf.ScopeType.Agent):
        nf.scope.event("m")
    assert summary(events) == [("scope", "a", "start"), ("mark", "m", None),
                               ("scope", "a", "end")]
    assert all(e.uuid != root_uuid for e in events)
    assert all(e.name != "root" for e in events)


def test_two_created_stacks_have_different_roots(nf, events):
    parents = []
    for _ in range(2):
        stack = nf.create_scope_stack()
        with nf.use_scope_stack(stack):
            h = nf.scope.push("request", nf.ScopeType.Agent)
            nf.scope.pop(h)
        parents.append(h.parent_uuid)
        assert h.parent_uuid == stack.root_uuid
    assert parents[0] != parents[1]
    assert nf.capture().root_uuid not in parents
    assert [e.parent_uuid for e in events] == [parents[0]] * 2 + [parents[1]] * 2


def test_explicit_parent_via_handle(nf, events):
    a = nf.scope.push("a", nf.ScopeType.Agent)
    b = nf.scope.push("b", nf.ScopeType.Function)
    c = nf.scope.push("c", nf.ScopeType.Tool, handle=a)
    assert c.parent_uuid == a.uuid
    assert nf.scope.get_handle().uuid == c.uuid
    nf.scope.pop(c)
    assert nf.scope.get_handle().uuid == b.uuid
    nf.scope.pop(b)
    nf.scope.pop(a)
    starts = {e.name: e for e in events if e.kind == "scope" and e.scope_category == "start"}
    assert starts["c"].parent_uuid == a.uuid
    assert starts["b"].parent_uuid == a.uuid


def test_scope_context_explicit_parent(nf, events):
    a = nf.scope.push("a", nf.ScopeType.Agent)
    b = nf.scope.push("b", nf.ScopeType.Agent)
    with nf.scope.scope("c", nf.ScopeType.Function, handle=a) as c:
        assert c.parent_uuid == a.uuid
        assert nf.scope.get_handle().uuid == c.uuid
    assert nf.scope.get_handle().uuid == b.uuid
    nf.scope.pop(b)
    nf.scope.pop(a)


# ---------------------------------------------------------------------------------------------
# scope() context manager


def test_scope_context_success(nf, events):
    before = nf.scope.get_handle().uuid
    with nf.scope.scope("s", nf.ScopeType.Llm, input={"x": 1}, metadata={"m": 1},
                        data={"d": 1}, attributes=nf.ScopeAttributes.RELOCATABLE) as h:
        assert isinstance(h, nf.ScopeHandle)
        assert nf.scope.get_handle().uuid == h.uuid
        assert h.data == {"d": 1}
    assert nf.scope.get_handle().uuid == before
    start, end = events
    assert start.uuid == end.uuid == h.uuid
    assert start.data == {"x": 1}
    assert end.data is None
    assert start.metadata == {"m": 1}
    assert end.metadata == {"m": 1, "otel.status_code": "OK"}
    assert start.attributes == end.attributes == ["relocatable"]
    assert start.category == "llm"


def test_scope_context_success_without_metadata(nf, events):
    with nf.scope.scope("s", nf.ScopeType.Function):
        pass
    assert events[0].metadata is None
    assert events[1].metadata == {"otel.status_code": "OK"}


def test_scope_context_exception_sets_error_status_and_propagates(nf, events):
    before = nf.scope.get_handle().uuid
    with pytest.raises(KeyError) as info:
        with nf.scope.scope("s", nf.ScopeType.Function, metadata={"m": 1}):
            raise KeyError("missing thing")
    assert nf.scope.get_handle().uuid == before
    assert summary(events) == [("scope", "s", "start"), ("scope", "s", "end")]
    assert events[1].metadata == {"m": 1, "otel.status_code": "ERROR",
                                  "otel.status_description": str(info.value)}


def test_scope_context_exception_description_is_str_of_exception(nf, events):
    with pytest.raises(ValueError):
        with nf.scope.scope("s", nf.ScopeType.Function):
            raise ValueError("bad input 42")
    assert events[1].metadata == {"otel.status_code": "ERROR",
                                  "otel.status_description": "bad input 42"}


def test_scope_context_nested_exception_closes_all(nf, events):
    with pytest.raises(RuntimeError):
        with nf.scope.scope("outer", nf.ScopeType.Agent):
            with nf.scope.scope("inner", nf.ScopeType.Function):
                raise RuntimeError("deep")
    assert summary(events) == [("scope", "outer", "start"), ("scope", "inner", "start"),
                               ("scope", "inner", "end"), ("scope", "outer", "end")]
    assert events[2].metadata["otel.status_code"] == "ERROR"
    assert events[3].metadata["otel.status_description"] == "deep"


@pytest.mark.parametrize("msg, expected", [(None, "cancelled"), ("why", "why")])
def test_cancelled_task_scope_ends_with_error(nf, events, msg, expected):
    async def main():
        entered = asyncio.Event()

        async def body():
            with nf.scope.scope("work", nf.ScopeType.Function):
                entered.set()
                await asyncio.sleep(30)

        task = asyncio.create_task(body())
        await entered.wait()
        if msg is None:
            task.cancel()
        else:
            task.cancel(msg)
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert summary(events) == [("scope", "work", "start"), ("scope", "work", "end")]
    assert events[1].metadata == {"otel.status_code": "ERROR",
                                  "otel.status_description": expected}


# ---------------------------------------------------------------------------------------------
# Timestamps


@pytest.mark.parametrize("ns, expected", [
    (0, "1970-01-01T00:00:00+00:00"),
    (1_000_000, "1970-01-01T00:00:00.001+00:00"),
    (1_000, "1970-01-01T00:00:00.000001+00:00"),
    (1, "1970-01-01T00:00:00.000000001+00:00"),
    (123_000_000, "1970-01-01T00:00:00.123+00:00"),
    (123_456_000, "1970-01-01T00:00:00.123456+00:00"),
    (1_795_462_016_685_439_872, "2026-11-23T19:26:56.685439872+00:00"),
    (1_795_462_016_000_000_000, "2026-11-23T19:26:56+00:00"),
    (1_795_462_016_100_000_000, "2026-11-23T19:26:56.100+00:00"),
    (1_795_462_016_000_100_000, "2026-11-23T19:26:56.000100+00:00"),
])
def test_format_timestamp(nf, ns, expected):
    assert nf._core.format_timestamp(ns) == expected


def test_event_timestamps_are_rfc3339_utc(nf, events):
    with nf.scope.scope("s", nf.ScopeType.Function):
        nf.scope.event("m")
    for e in events:
        assert TS_RE.match(e.timestamp), e.timestamp
        assert isinstance(e.timestamp_ns, int)
        assert e.timestamp == nf._core.format_timestamp(e.timestamp_ns)
        assert json.loads(e.to_json())["timestamp"] == e.timestamp


def test_automatic_end_is_strictly_after_start(nf, events):
    for _ in range(300):
        h = nf.scope.push("x", nf.ScopeType.Function)
        nf.scope.pop(h)
    for start, end in zip(events[::2], events[1::2]):
        assert start.uuid == end.uuid
        assert end.timestamp_ns > start.timestamp_ns
    for _ in range(100):
        with nf.scope.scope("y", nf.ScopeType.Function):
            pass
    for start, end in zip(events[600::2], events[601::2]):
        assert end.timestamp_ns > start.timestamp_ns


def test_automatic_end_after_explicit_future_start(nf, events):
    future = dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)
    h = nf.scope.push("x", nf.ScopeType.Function, timestamp=future)
    nf.scope.pop(h)
    assert events[0].timestamp == "2100-01-01T00:00:00+00:00"
    assert events[1].timestamp_ns > events[0].timestamp_ns


def test_explicit_timestamps_written_verbatim_in_utc(nf, events):
    plus2 = dt.timezone(dt.timedelta(hours=2))
    t_start = dt.datetime(2026, 11, 23, 21, 26, 56, 685439, tzinfo=plus2)
    t_mark = dt.datetime(2026, 11, 23, 19, 26, 57, 500000, tzinfo=dt.timezone.utc)
    t_end = dt.datetime(2026, 11, 23, 14, 27, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    h = nf.scope.push("x", nf.ScopeType.Function, timestamp=t_start)
    nf.scope.event("m", timestamp=t_mark)
    nf.scope.pop(h, timestamp=t_end)
    assert [e.timestamp for e in events] == [
        "2026-11-23T19:26:56.685439+00:00",
        "2026-11-23T19:26:57.500+00:00",
        "2026-11-23T19:27:00+00:00",
    ]
    assert events[0].timestamp_ns == 1_795_462_016_685_439_000


def test_scope_context_explicit_timestamps(nf, events):
    t0 = dt.datetime(2026, 1, 1, 0, 0, 0, tzinfo=dt.timezone.utc)
    t1 = dt.datetime(2026, 1, 1, 0, 0, 1, 1000, tzinfo=dt.timezone.utc)
    with nf.scope.scope("s", nf.ScopeType.Function, timestamp=t0, end_timestamp=t1):
        pass
    assert [e.timestamp for e in events] == ["2026-01-01T00:00:00+00:00",
                                             "2026-01-01T00:00:01.001+00:00"]


BAD_TIMESTAMPS = [
    ("2026-01-01T00:00:00+00:00", TypeError),
    (dt.datetime(2026, 1, 1), ValueError),
]


@pytest.mark.parametrize("ts, exc", BAD_TIMESTAMPS)
def test_bad_push_timestamp_emits_nothing(nf, events, ts, exc):
    before = nf.scope.get_handle().uuid
    with pytest.raises(exc):
        nf.scope.push("x", nf.ScopeType.Function, timestamp=ts)
    assert events == []
    assert nf.scope.get_handle().uuid == before


@pytest.mark.parametrize("ts, exc", BAD_TIMESTAMPS)
def test_bad_pop_timestamp_emits_nothing_and_keeps_scope_open(nf, events, ts, exc):
    h = nf.scope.push("x", nf.ScopeType.Function)
    with pytest.raises(exc):
        nf.scope.pop(h, timestamp=ts)
    assert summary(events) == [("scope", "x", "start")]
    assert nf.scope.get_handle().uuid == h.uuid
    nf.scope.pop(h)
    assert summary(events)[-1] == ("scope", "x", "end")


@pytest.mark.parametrize("ts, exc", BAD_TIMESTAMPS)
def test_bad_mark_timestamp_emits_nothing(nf, events, ts, exc):
    with pytest.raises(exc):
        nf.scope.event("m", timestamp=ts)
    assert events == []


@pytest.mark.parametrize("ts, exc", BAD_TIMESTAMPS)
@pytest.mark.parametrize("which", ["timestamp", "end_timestamp"])
def test_bad_scope_context_timestamp_emits_nothing(nf, events, ts, exc, which):
    before = nf.scope.get_handle().uuid
    with pytest.raises(exc):
        with nf.scope.scope("s", nf.ScopeType.Function, **{which: ts}):
            pass
    assert events == []
    assert nf.scope.get_handle().uuid == before


# ---------------------------------------------------------------------------------------------
# UUIDs


def test_uuids_are_uuid7_lowercase_hyphenated(nf, events):
    with nf.scope.scope("s", nf.ScopeType.Function) as h:
        nf.scope.event("m")
    for value in [h.uuid, h.parent_uuid] + [e.uuid for e in events]:
        assert UUID_RE.match(value), value
        parsed = uuidlib.UUID(value)
        assert parsed.version == 7
        assert parsed.variant == uuidlib.RFC_4122
        assert str(parsed) == value


def test_uuids_unique_over_10k(nf, events):
    for _ in range(5_000):
        h = nf.scope.push("x", nf.ScopeType.Function)
        nf.scope.pop(h)
        nf.scope.event("m")
    uuids = {e.uuid for e in events}
    assert len(events) == 15_000
    assert len(uuids) == 10_000
    assert all(uuidlib.UUID(u).version == 7 for u in list(uuids)[:500])


# ---------------------------------------------------------------------------------------------
# Payload snapshots and JSON encoding


def test_input_is_snapshotted_at_push(nf, events):
    payload = {"items": [1, 2], "nested": {"k": "v"}}
    meta = {"m": [1]}
    h = nf.scope.push("x", nf.ScopeType.Function, input=payload, metadata=meta,
                      data={"d": [1]})
    payload["items"].append(3)
    payload["nested"]["k"] = "changed"
    meta["m"].append(2)
    assert events[0].data == {"items": [1, 2], "nested": {"k": "v"}}
    assert events[0].metadata == {"m": [1]}
    assert h.metadata == {"m": [1]}
    assert h.data == {"d": [1]}
    nf.scope.pop(h)
    assert events[1].metadata == {"m": [1]}


def test_output_and_mark_data_are_snapshotted(nf, events):
    out = {"r": [1]}
    data = {"x": [1]}
    h = nf.scope.push("x", nf.ScopeType.Function)
    nf.scope.event("m", data=data)
    nf.scope.pop(h, output=out)
    out["r"].append(2)
    data["x"].append(2)
    assert events[1].data == {"x": [1]}
    assert events[2].data == {"r": [1]}


def test_event_data_returns_independent_copies(nf, events):
    nf.scope.event("m", data={"x": [1]})
    first = events[0].data
    first["x"].append(99)
    assert events[0].data == {"x": [1]}
    d = events[0].to_dict()
    d["name"] = "changed"
    assert events[0].to_dict()["name"] == "m"


def test_to_json_is_canonical_for_scopes(nf, events):
    h = nf.scope.push("naïve ✓", nf.ScopeType.Agent,
                      input={"b": {"z": 1, "a": [{"y": 1, "x": 2}]}, "a": "é"},
                      metadata={"zz": None, "aa": 1.5},
                      attributes=nf.ScopeAttributes.PARALLEL)
    nf.scope.pop(h, output=[{"k2": 1, "k1": 2}], metadata={"ab": True})
    for e in events:
        line = e.to_json()
        assert "\n" not in line
        assert line == canonical(line)
        d = json.loads(line)
        assert set(d) == SCOPE_KEYS
        assert d == e.to_dict()
        assert d["category_profile"] is None
        assert d["data_schema"] is None
        assert d["name"] == "naïve ✓"
    assert list(json.loads(events[0].to_json())["data"]) == ["a", "b"]
    assert events[0].to_json().index('"a":"é"') < events[0].to_json().index('"b":')
    assert '"metadata":{"aa":1.5,"zz":null}' in events[0].to_json()
    assert '"metadata":{"aa":1.5,"ab":true,"zz":null}' in events[1].to_json()
    assert '"data":[{"k1":2,"k2":1}]' in events[1].to_json()


def test_to_json_explicit_nulls(nf, events):
    h = nf.scope.push("x", nf.ScopeType.Function)
    nf.scope.pop(h)
    line = events[0].to_json()
    for key in ("category_profile", "data", "data_schema", "metadata"):
        assert f'"{key}":null' in line
    assert '"attributes":[]' in line
    assert '"atof_version":"0.1"' in line


def test_mark_to_json_has_no_scope_only_keys(nf, events):
    nf.scope.event("m", data={"b": 1, "a": 2}, data_schema={"version": "2", "name": "s"})
    line = events[0].to_json()
    assert line == canonical(line)
    d = json.loads(line)
    assert set(d) == MARK_KEYS
    assert "scope_category" not in line and "attributes" not in line
    assert d == events[0].to_dict()
    assert d["kind"] == "mark"
    assert d["category"] is None
    assert '"data_schema":{"name":"s","version":"2"}' in line


def test_tuples_encode_as_arrays(nf, events):
    h = nf.scope.push("x", nf.ScopeType.Function, input=(1, 2, ("a", "b")))
    nf.scope.event("m", data={"t": (1,)})
    nf.scope.pop(h, output=())
    assert events[0].data == [1, 2, ["a", "b"]]
    assert events[1].data == {"t": [1]}
    assert events[2].data == []
    assert '"data":[1,2,["a","b"]]' in events[0].to_json()


def test_json_scalars_round_trip(nf, events):
    for value in ["s", 0, -5, 2.5, True, False, [], {}, {"n": None}]:
        nf.scope.event("m", data=value)
    assert [e.data for e in events] == ["s", 0, -5, 2.5, True, False, [], {}, {"n": None}]


NON_JSON = [
    pytest.param(object(), id="object"),
    pytest.param({1: 2}, id="int-key"),
    pytest.param(float("nan"), id="nan"),
    pytest.param(float("inf"), id="inf"),
    pytest.param({"x": [float("-inf")]}, id="nested-inf"),
    pytest.param(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), id="datetime"),
    pytest.param({1, 2}, id="set"),
    pytest.param({"a": {"b": object()}}, id="nested-object"),
]


def _json_error(info):
    assert str(info.value).startswith("Failed to convert to JSON:"), str(info.value)


@pytest.mark.parametrize("payload", NON_JSON)
@pytest.mark.parametrize("field", ["input", "metadata", "data"])
def test_non_json_push_payload_rejected(nf, events, payload, field):
    before = nf.scope.get_handle().uuid
    with pytest.raises(ValueError) as info:
        nf.scope.push("x", nf.ScopeType.Function, **{field: payload})
    _json_error(info)
    assert events == []
    assert nf.scope.get_handle().uuid == before


@pytest.mark.parametrize("payload", NON_JSON)
@pytest.mark.parametrize("field", ["output", "metadata"])
def test_non_json_pop_payload_rejected(nf, events, payload, field):
    h = nf.scope.push("x", nf.ScopeType.Function)
    with pytest.raises(ValueError) as info:
        nf.scope.pop(h, **{field: payload})
    _json_error(info)
    assert len(events) == 1
    assert nf.scope.get_handle().uuid == h.uuid
    nf.scope.pop(h)
    assert [e.scope_category for e in events] == ["start", "end"]


@pytest.mark.parametrize("payload", NON_JSON)
@pytest.mark.parametrize("field", ["data", "metadata"])
def test_non_json_mark_payload_rejected(nf, events, payload, field):
    with pytest.raises(ValueError) as info:
        nf.scope.event("m", **{field: payload})
    _json_error(info)
    assert events == []


@pytest.mark.parametrize("payload", NON_JSON)
@pytest.mark.parametrize("field", ["input", "metadata", "data"])
def test_non_json_scope_context_payload_rejected(nf, events, payload, field):
    before = nf.scope.get_handle().uuid
    ran = []
    with pytest.raises(ValueError) as info:
        with nf.scope.scope("s", nf.ScopeType.Function, **{field: payload}):
            ran.append(True)
    _json_error(info)
    assert ran == []
    assert events == []
    assert nf.scope.get_handle().uuid == before


# ---------------------------------------------------------------------------------------------
# Argument types


@pytest.mark.parametrize("name", [None, 1, b"bytes"])
def test_name_must_be_str(nf, events, name):
    with pytest.raises(TypeError):
        nf.scope.push(name, nf.ScopeType.Function)
    with pytest.raises(TypeError):
        nf.scope.event(name)
    with pytest.raises(TypeError):
        nf.scope.scope(name, nf.ScopeType.Function).__enter__()
    assert events == []
    assert nf.scope.get_handle().parent_uuid is None


@pytest.mark.parametrize("scope_type", ["agent", 0, None, "Agent"])
def test_scope_type_must_be_scope_type(nf, events, scope_type):
    with pytest.raises(TypeError):
        nf.scope.push("x", scope_type)
    with pytest.raises(TypeError):
        with nf.scope.scope("x", scope_type):
            pass
    assert events == []
    assert nf.scope.get_handle().parent_uuid is None


def test_pop_requires_a_handle(nf, events):
    with pytest.raises(TypeError):
        nf.scope.pop("not a handle")
    with pytest.raises(TypeError):
        nf.scope.pop(None)
    assert events == []


def test_explicit_end_timestamp_before_start_is_written_verbatim(nf, events):
    t_start = dt.datetime(2026, 1, 1, 0, 0, 10, tzinfo=dt.timezone.utc)
    t_end = dt.datetime(2026, 1, 1, 0, 0, 5, tzinfo=dt.timezone.utc)
    h = nf.scope.push("x", nf.ScopeType.Function, timestamp=t_start)
    nf.scope.pop(h, timestamp=t_end)
    assert [e.timestamp for e in events] == ["2026-01-01T00:00:10+00:00",
                                             "2026-01-01T00:00:05+00:00"]


def test_status_metadata_is_sorted_into_end_line(nf, events):
    with nf.scope.scope("s", nf.ScopeType.Function, metadata={"z": 1, "a": 2}):
        pass
    line = events[1].to_json()
    assert line == canonical(line)
    assert '"metadata":{"a":2,"otel.status_code":"OK","z":1}' in line


@pytest.mark.parametrize("schema", [{"name": "a"}, {"name": 1, "version": "1"}, "a/1",
                                    {"name": "a", "version": "1", "extra": "x"}])
def test_bad_data_schema_emits_nothing(nf, events, schema):
    with pytest.raises((TypeError, ValueError)):
        nf.scope.event("m", data_schema=schema)
    assert events == []


def test_payloads_validated_with_nothing_attached(nf):
    # no subscriber at all: the call must still reject what it could never record
    before = nf.scope.get_handle().uuid
    with pytest.raises(ValueError, match="^Failed to convert to JSON:"):
        nf.scope.push("x", nf.ScopeType.Function, input={"k": object()})
    with pytest.raises(ValueError, match="^Failed to convert to JSON:"):
        nf.scope.event("m", data=float("nan"))
    with pytest.raises(TypeError):
        nf.scope.push("x", nf.ScopeType.Function, timestamp="2026-01-01T00:00:00+00:00")
    with pytest.raises(ValueError):
        nf.scope.event("m", timestamp=dt.datetime(2026, 1, 1))
    with pytest.raises(TypeError):
        nf.scope.push(1, nf.ScopeType.Function)
    assert nf.scope.get_handle().uuid == before
    h = nf.scope.push("x", nf.ScopeType.Function)
    with pytest.raises(ValueError, match="^Failed to convert to JSON:"):
        nf.scope.pop(h, output={1, 2})
    assert nf.scope.get_handle().uuid == h.uuid
    nf.scope.pop(h)


def test_int64_bounds_are_accepted(nf, events):
    nf.scope.event("m", data=[2 ** 63 - 1, -(2 ** 63)])
    assert events[0].data == [2 ** 63 - 1, -(2 ** 63)]


def test_int_beyond_64_bits_is_rejected_like_the_reference(nf, events):
    # Deliberate: NeMo Flow's runtime (serde_json numbers) rejects these too, and most JSON
    # readers would silently lose precision on them. Nothing is emitted.
    with pytest.raises(ValueError, match="^Failed to convert to JSON: Integer exceeds 64-bit"):
        nf.scope.event("m", data={"id": 2 ** 64})
    nf.scope.event("m", data={"id": 2 ** 64 - 1, "neg": -(2 ** 63)})
    assert [e.data for e in events] == [{"id": 2 ** 64 - 1, "neg": -(2 ** 63)}]


def test_exception_with_unprintable_str_still_propagates(nf, events):
    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no str for you")

    with pytest.raises(Unprintable):
        with nf.scope.scope("s", nf.ScopeType.Function):
            raise Unprintable()
    assert [e.scope_category for e in events] == ["start", "end"]
    assert events[1].metadata["otel.status_code"] == "ERROR"
    assert isinstance(events[1].metadata["otel.status_description"], str)


def test_scope_context_popped_inside_body_ends_once(nf, events):
    before = nf.scope.get_handle().uuid
    with nf.scope.scope("s", nf.ScopeType.Function) as h:
        nf.scope.pop(h, output={"early": True})
    assert [e.scope_category for e in events] == ["start", "end"]
    assert events[1].data == {"early": True}
    assert nf.scope.get_handle().uuid == before


def test_automatic_ends_nest_even_for_sub_microsecond_scopes(nf, events):
    # An automatic end is at least start + 1 µs; a parent's is also at least its children's.
    for _ in range(200):
        with nf.scope.scope("parent", nf.ScopeType.Function):
            with nf.scope.scope("child", nf.ScopeType.Function):
                with nf.scope.scope("grandchild", nf.ScopeType.Function):
                    pass
    by_uuid = {}
    for e in events:
        by_uuid.setdefault(e.uuid, {})[e.scope_category] = e
    for pair in by_uuid.values():
        start, end = pair["start"], pair["end"]
        assert end.timestamp_ns > start.timestamp_ns
        parent = by_uuid.get(start.parent_uuid)
        if parent is not None:
            assert parent["start"].timestamp_ns <= start.timestamp_ns
            assert end.timestamp_ns <= parent["end"].timestamp_ns


def test_scopes_left_open_inside_a_block_are_ended_with_an_error(nf, events):
    with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
        nf.scope.push("a", nf.ScopeType.Function)
        b = nf.scope.push("b", nf.ScopeType.Function)  # neither is popped
    assert [(e.name, e.scope_category) for e in events] == [
        ("outer", "start"), ("a", "start"), ("b", "start"),
        ("b", "end"), ("a", "end"), ("outer", "end")]
    for e in events[3:5]:
        assert e.metadata == {"otel.status_code": "ERROR", "otel.status_description":
                              "abandoned: still open when its enclosing scope ended"}
    assert events[5].metadata == {"otel.status_code": "OK"}
    assert nf.scope.get_handle().uuid == outer.parent_uuid  # the stack is back where it was
    with pytest.raises(nf.NotFoundError):
        nf.scope.pop(b)
