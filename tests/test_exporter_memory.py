"""The in-memory recorder: events as delivered, the NumPy table (joined scopes, marks, open
scopes, depth, status), thread safety, and ``nemoflow.testing.record()``."""

from __future__ import annotations

import importlib
import sys
import threading

import numpy as np
import orjson
import pytest


@pytest.fixture
def memory(nf):
    """The memory exporter module of the package loaded on this test's backend."""
    return sys.modules["nemoflow.exporters.memory"]


@pytest.fixture
def testing(nf):
    return importlib.import_module("nemoflow.testing")


@pytest.fixture
def recorder(nf, memory):
    rec = memory.InMemoryRecorder()
    rec.register("test-memory")
    yield rec
    rec.shutdown()


def rows_by_name(table):
    return {row["name"]: row for row in table}


def test_events_are_the_delivered_event_objects(nf, recorder, events):
    with nf.trace("a"):
        nf.mark("m")
    assert recorder.events == []  # delivered by the pipeline, not on the emitting thread
    recorder.force_flush()
    got = recorder.events
    assert [e.to_json() for e in got] == [e.to_json() for e in events]
    assert isinstance(got[0], nf.ScopeEvent) and isinstance(got[1], nf.MarkEvent)
    got.clear()  # a copy
    assert len(recorder.events) == 3


def test_end_metadata_that_is_only_a_status_reads_as_the_line(nf, recorder, events):
    """An end event with no start or end metadata has the status alone (or nothing) as its
    metadata: the same dict as its ATOF line's, on delivered and synchronous events."""
    core = nf._core
    with nf.scope.scope("ok", nf.ScopeType.Function):
        pass
    with pytest.raises(ValueError), nf.scope.scope("failed", nf.ScopeType.Function):
        raise ValueError("boom")
    nf.scope.pop(nf.scope.push("bare", nf.ScopeType.Function))
    core.end(nf.scope.push("no-desc", nf.ScopeType.Function), None, None, None,
             core.STATUS_ERROR, None)
    with nf.scope.scope("given", nf.ScopeType.Function, metadata={"a": 1}):
        pass
    recorder.force_flush()
    for got in (recorder.events, events):
        ends = {e.name: e for e in got if e.scope_category == "end"}
        for e in ends.values():
            assert e.metadata == orjson.loads(e.to_json())["metadata"]
            assert e.metadata is not e.metadata or e.metadata is None  # a fresh dict each time
        assert ends["ok"].metadata == {"otel.status_code": "OK"}
        assert ends["failed"].metadata == {"otel.status_code": "ERROR",
                                           "otel.status_description": "boom"}
        assert list(ends["failed"].metadata) == ["otel.status_code", "otel.status_description"]
        assert ends["bare"].metadata is None
        assert ends["no-desc"].metadata == {"otel.status_code": "ERROR",
                                            "otel.status_description": None}
        assert ends["given"].metadata == {"a": 1, "otel.status_code": "OK"}


def test_to_numpy_dtype(nf, recorder):
    table = recorder.to_numpy()
    assert table.shape == (0,)
    assert table.dtype.names == ("uuid", "parent_uuid", "name", "kind", "category", "start_ns",
                                 "end_ns", "duration_ns", "status", "depth")
    assert table.dtype["uuid"] == np.dtype("U36")
    assert table.dtype["parent_uuid"] == np.dtype("U36")
    assert table.dtype["name"] == np.dtype(object)
    assert table.dtype["kind"] == np.dtype("U5")
    assert table.dtype["category"] == np.dtype("U16")
    for field in ("start_ns", "end_ns", "duration_ns"):
        assert table.dtype[field] == np.dtype(np.int64)
    assert table.dtype["status"] == np.dtype("U5")
    assert table.dtype["depth"] == np.dtype(np.int32)


def test_to_numpy_nested_scopes_marks_and_status(nf, recorder, events):
    with nf.trace.agent("outer"):
        with nf.trace("middle"):
            with nf.trace.retriever("inner"):
                nf.mark("deep", data={"x": 1})
        with pytest.raises(ValueError):
            with nf.trace("failing"):
                raise ValueError("boom")
        nf.scope.event("checkpoint", category="custom")
    plain = nf.scope.push("plain", nf.ScopeType.Tool)
    nf.scope.pop(plain)  # no status: a plain pop
    recorder.force_flush()
    table = recorder.to_numpy()
    assert len(table) == 7

    start = {e.uuid: e for e in events if getattr(e, "scope_category", None) == "start"}
    end = {e.uuid: e for e in events if getattr(e, "scope_category", None) == "end"}
    marks = {e.uuid: e for e in events if e.kind == "mark"}
    # rows in the order their first event was delivered
    assert [r["name"] for r in table] == ["outer", "middle", "inner", "deep", "failing",
                                          "checkpoint", "plain"]
    for row in table:
        u = str(row["uuid"])
        if row["kind"] == "scope":
            assert row["start_ns"] == start[u].timestamp_ns
            assert row["end_ns"] == end[u].timestamp_ns
            assert row["duration_ns"] == row["end_ns"] - row["start_ns"] > 0
            assert row["parent_uuid"] == start[u].parent_uuid
        else:
            assert row["kind"] == "mark"
            assert row["start_ns"] == row["end_ns"] == marks[u].timestamp_ns
            assert row["duration_ns"] == 0
            assert row["parent_uuid"] == marks[u].parent_uuid
            assert row["status"] == ""

    r = rows_by_name(table)
    assert (r["outer"]["category"], r["inner"]["category"], r["plain"]["category"]) == (
        "agent", "retriever", "tool")
    assert r["deep"]["category"] == "" and r["checkpoint"]["category"] == "custom"
    assert [r[n]["depth"] for n in ("outer", "middle", "inner", "deep", "failing",
                                    "checkpoint", "plain")] == [0, 1, 2, 3, 1, 1, 0]
    assert r["middle"]["parent_uuid"] == r["outer"]["uuid"]
    assert r["deep"]["parent_uuid"] == r["inner"]["uuid"]
    assert r["outer"]["status"] == r["inner"]["status"] == "OK"
    assert r["failing"]["status"] == "ERROR"
    assert r["plain"]["status"] == ""
    # the parent of a top-level scope is the implicit root: never emitted, so not a row
    assert r["outer"]["parent_uuid"] == r["plain"]["parent_uuid"] != ""
    assert r["outer"]["parent_uuid"] not in set(table["uuid"])


def test_to_numpy_open_scopes(nf, recorder):
    outer = nf.scope.push("open-outer", nf.ScopeType.Agent)
    with nf.trace("closed"):
        pass
    inner = nf.scope.push("open-inner", nf.ScopeType.Function)
    recorder.force_flush()
    r = rows_by_name(recorder.to_numpy())
    for name in ("open-outer", "open-inner"):
        assert r[name]["end_ns"] == -1 and r[name]["duration_ns"] == -1
        assert r[name]["status"] == "" and r[name]["start_ns"] > 0
    assert r["open-inner"]["depth"] == 1 and r["closed"]["depth"] == 1
    assert r["closed"]["duration_ns"] > 0
    nf.scope.pop(inner)
    nf.scope.pop(outer)
    recorder.force_flush()
    r = rows_by_name(recorder.to_numpy())
    assert r["open-outer"]["duration_ns"] == r["open-outer"]["end_ns"] - r["open-outer"][
        "start_ns"] > 0


def test_scope_started_before_registration(nf, memory):
    before = nf.scope.push("before", nf.ScopeType.Agent)
    rec = memory.InMemoryRecorder()
    rec.register("late")
    try:
        with nf.trace("child"):
            pass
        nf.scope.pop(before)
        rec.force_flush()
        r = rows_by_name(rec.to_numpy())
    finally:
        rec.shutdown()
    assert r["before"]["start_ns"] == -1 and r["before"]["duration_ns"] == -1
    assert r["before"]["end_ns"] > 0 and r["before"]["status"] == ""
    assert r["child"]["depth"] == 1 and r["child"]["parent_uuid"] == before.uuid


def test_analysis_by_name(nf, recorder):
    for _ in range(20):
        with nf.trace("fast"):
            pass
    for i in range(5):
        with nf.trace("slow", input={"i": i}):
            nf.mark("tick")
    recorder.force_flush()
    t = recorder.to_numpy()
    done = t[(t["kind"] == "scope") & (t["duration_ns"] >= 0)]  # finished scopes
    counts = {str(name): int(np.count_nonzero(done["name"] == name))
              for name in np.unique(done["name"])}
    assert counts == {"fast": 20, "slow": 5}
    p95 = np.percentile(done["duration_ns"][done["name"] == "slow"], 95)
    assert p95 > 0
    assert np.count_nonzero(t["kind"] == "mark") == 5


def test_thread_safety_four_threads(nf, recorder):
    n = 300
    go = threading.Barrier(5)
    stop = threading.Event()
    seen_while_running = []

    def worker(i):
        go.wait()
        for k in range(n):
            with nf.trace(f"w{i}"):
                nf.mark(f"m{i}", data={"k": k})

    def reader():
        go.wait()
        while not stop.is_set():
            seen_while_running.append(len(recorder.events))
            recorder.to_numpy()
            recorder.stats()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    observer = threading.Thread(target=reader)
    for t in [*threads, observer]:
        t.start()
    for t in threads:
        t.join()
    recorder.force_flush()
    stop.set()
    observer.join()

    got = recorder.events
    assert len(got) == 4 * n * 3
    assert recorder.stats() == {"events": 4 * n * 3, "held": 4 * n * 3}
    assert seen_while_running == sorted(seen_while_running)  # only ever grows
    for i in range(4):  # emission order per thread
        mine = [e for e in got if e.name in (f"w{i}", f"m{i}")]
        assert [e.data["k"] for e in mine if e.kind == "mark"] == list(range(n))
        assert [(e.name, getattr(e, "scope_category", None)) for e in mine[:3]] == [
            (f"w{i}", "start"), (f"m{i}", None), (f"w{i}", "end")]
    table = recorder.to_numpy()
    assert np.count_nonzero(table["kind"] == "scope") == 4 * n
    assert np.all(table["duration_ns"][table["kind"] == "scope"] > 0)
    assert np.all(table["depth"][table["kind"] == "mark"] == 1)


def test_clear_stats_register_deregister(nf, memory, recorder):
    with nf.trace("a"):
        pass
    recorder.force_flush()
    assert recorder.stats() == {"events": 2, "held": 2}
    assert nf.diagnostics()["exporters"]["test-memory"]["events"] == 2
    recorder.clear()
    assert recorder.events == [] and len(recorder.to_numpy()) == 0
    assert recorder.stats() == {"events": 2, "held": 0}
    with pytest.raises(nf.AlreadyExistsError):
        recorder.register("test-memory")
    other = memory.InMemoryRecorder()
    with pytest.raises(nf.AlreadyExistsError):
        other.register("test-memory")
    with pytest.raises(TypeError):
        other.register(None)
    assert other.deregister("test-memory") is False
    assert recorder.deregister("test-memory") is True
    assert recorder.deregister("test-memory") is False
    with nf.trace("unseen"):
        pass
    nf._core.flush()
    assert recorder.events == []
    assert "test-memory" not in nf.diagnostics()["exporters"]
    recorder.shutdown()
    with pytest.raises(RuntimeError):
        recorder.register("again")


def test_testing_record(nf, testing):
    with nf.trace("outside-before"):
        pass
    with testing.record() as rec:
        with nf.trace("inside"):
            nf.mark("m")

        def in_thread():
            with nf.trace("from-thread"):
                pass

        t = threading.Thread(target=in_thread)
        t.start()
        t.join()
    # flushed on exit: everything emitted in the block is there, without a force_flush
    # (in emission order per thread; the two threads' events may interleave either way)
    got = [(e.name, getattr(e, "scope_category", None)) for e in rec.events]
    assert [g for g in got if g[0] != "from-thread"] == [
        ("inside", "start"), ("m", None), ("inside", "end")]
    assert [g for g in got if g[0] == "from-thread"] == [
        ("from-thread", "start"), ("from-thread", "end")]
    with nf.trace("outside-after"):
        pass
    nf._core.flush()
    assert len(rec.events) == 5
    assert rows_by_name(rec.to_numpy())["inside"]["status"] == "OK"
    assert nf.diagnostics()["exporters"] == {}


def test_testing_record_exception_and_nesting(nf, testing):
    with pytest.raises(KeyError):
        with testing.record("outer-rec") as outer:
            with testing.record() as inner:
                with nf.trace("both"):
                    pass
            with nf.trace("outer-only"):
                raise KeyError("x")
    assert [e.name for e in inner.events] == ["both", "both"]
    assert [e.name for e in outer.events] == ["both", "both", "outer-only", "outer-only"]
    assert rows_by_name(outer.to_numpy())["outer-only"]["status"] == "ERROR"
    assert nf.diagnostics()["exporters"] == {}
    with testing.record("outer-rec"):  # the name is free again
        pass
