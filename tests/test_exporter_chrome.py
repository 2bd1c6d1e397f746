"""The Chrome trace exporter: tracks from the trace tree (asyncio tasks interleaving on one
thread still give properly nested tracks), marks, open scopes, atomic rewrites, error
isolation, and the structural validator the other tests rely on."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest

from tests.backends import backend_env


@pytest.fixture
def chrome(nf):
    """The chrome exporter module of the package loaded on this test's backend."""
    return sys.modules["nemoflow.exporters.chrome"]


@pytest.fixture
def exporter(nf, chrome, tmp_path):
    exp = chrome.ChromeTraceExporter(tmp_path / "trace.json", process_name="test-proc")
    exp.register("test-chrome")
    yield exp
    exp.shutdown()


def load(exp):
    with open(exp.path, "rb") as f:
        return json.loads(f.read())


def written(exp, chrome):
    """force_flush, read the file back, and check it with the validator."""
    exp.force_flush()
    trace = load(exp)
    assert chrome.validate_chrome_trace(trace) == []
    return trace


def slices(trace):
    return [e for e in trace["traceEvents"] if e["ph"] == "X"]


def instants(trace):
    return [e for e in trace["traceEvents"] if e["ph"] == "i"]


def track_names(trace):
    return {e["tid"]: e["args"]["name"] for e in trace["traceEvents"]
            if e["ph"] == "M" and e["name"] == "thread_name"}


def by_name(trace):
    out = {}
    for e in slices(trace):
        out.setdefault(e["name"], []).append(e)
    return out


T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def at(us):
    return T0 + dt.timedelta(microseconds=us)


def explicit(nf, name, start_us, end_us, parent):
    """A scope with explicit start and end times (µs after T0) under ``parent``."""
    with nf.scope.scope(name, nf.ScopeType.Function, handle=parent, timestamp=at(start_us),
                        end_timestamp=at(end_us)) as h:
        return h


# ---------------------------------------------------------------------------------------------
# the file format


def test_file_format_and_fields(nf, chrome, exporter, events):
    with nf.trace.agent("outer", input={"q": 1}, metadata={"m": 1},
                        attributes=nf.ScopeAttributes.PARALLEL) as span:
        with nf.trace("inner"):
            nf.mark("checkpoint", data={"step": 1}, metadata={"k": "v"})
        span.set_output({"a": 2})
    trace = written(exporter, chrome)

    assert trace["displayTimeUnit"] == "ms"
    other = trace["otherData"]
    assert other["exporter"] == "nemoflow" and other["open_scopes"] == 0
    origin = other["time_origin_ns"]
    assert origin == min(e.timestamp_ns for e in events)
    assert other["time_origin"] == nf._core.format_timestamp(origin)

    pid = os.getpid()
    meta = [e for e in trace["traceEvents"] if e["ph"] == "M"]
    assert {"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
            "args": {"name": "test-proc"}} in meta

    start = {e.uuid: e for e in events if getattr(e, "scope_category", None) == "start"}
    end = {e.uuid: e for e in events if getattr(e, "scope_category", None) == "end"}
    outer, inner = by_name(trace)["outer"][0], by_name(trace)["inner"][0]
    assert outer["cat"] == "agent" and inner["cat"] == "function"
    for x in (outer, inner):
        u = x["args"]["uuid"]
        assert x["pid"] == pid
        # microseconds with nanosecond precision, from the time origin
        assert round(x["ts"] * 1000) == start[u].timestamp_ns - origin
        assert round(x["dur"] * 1000) == end[u].timestamp_ns - start[u].timestamp_ns
        assert x["args"]["parent_uuid"] == start[u].parent_uuid
        assert x["args"]["metadata"] == end[u].metadata
    assert outer["args"]["input"] == {"q": 1}
    assert outer["args"]["output"] == {"a": 2}
    assert outer["args"]["attributes"] == ["parallel"]
    assert outer["args"]["metadata"] == {"m": 1, "otel.status_code": "OK"}
    assert inner["args"]["parent_uuid"] == outer["args"]["uuid"]
    assert inner["tid"] == outer["tid"]  # nested in time: same track
    assert track_names(trace)[outer["tid"]].startswith("trace ")

    (mark,) = instants(trace)
    assert mark["name"] == "checkpoint" and mark["s"] == "t" and mark["tid"] == inner["tid"]
    assert mark["args"]["parent_uuid"] == inner["args"]["uuid"]
    assert mark["args"]["data"] == {"step": 1} and mark["args"]["metadata"] == {"k": "v"}
    assert inner["ts"] <= mark["ts"] <= inner["ts"] + inner["dur"]


def test_diagnostics_lists_exporter_stats(nf, chrome, exporter):
    with nf.trace("a"):
        nf.mark("m")
    exporter.force_flush()
    stats = nf.diagnostics()["exporters"]["test-chrome"]
    assert stats["events"] == 3
    assert stats["scopes"] == 1 and stats["marks"] == 1
    assert stats["writes"] == 1 and stats["bytes"] == os.path.getsize(exporter.path)
    assert stats["errors"] == 0


# ---------------------------------------------------------------------------------------------
# tracks from the trace tree


def test_concurrent_tasks_on_one_thread_give_nested_tracks(nf, chrome, exporter, events):
    async def task(i):
        with nf.trace(f"task-{i}"):
            await asyncio.sleep(0.0005 * (i % 4))
            with nf.trace("step"):
                await asyncio.sleep(0)
                nf.mark("progress", data={"i": i})
                with nf.trace("inner"):
                    await asyncio.sleep(0.001)
                await asyncio.sleep(0)
            with nf.trace("after"):
                await asyncio.sleep(0)

    async def main():
        with nf.trace("main"):
            await asyncio.gather(*(task(i) for i in range(50)))

    threads_before = threading.get_ident()
    asyncio.run(main())
    assert threading.get_ident() == threads_before
    trace = written(exporter, chrome)

    started = [e.uuid for e in events if getattr(e, "scope_category", None) == "start"]
    xs = slices(trace)
    assert sorted(x["args"]["uuid"] for x in xs) == sorted(started)  # each exactly once
    assert len(xs) == 1 + 50 * 4
    assert not any(x["args"].get("open") for x in xs)
    x_by_uuid = {x["args"]["uuid"]: x for x in xs}

    main_x = by_name(trace)["main"][0]
    tasks = [x for x in xs if x["name"].startswith("task-")]
    # the tasks overlap each other: one fits on main's track, the others need tracks of their
    # own, named after main
    task_tids = {x["tid"] for x in tasks}
    assert len(task_tids) == 50
    names = track_names(trace)
    assert sum(1 for x in tasks if x["tid"] == main_x["tid"]) == 1
    assert {names[x["tid"]] for x in tasks if x["tid"] != main_x["tid"]} == {
        f"main #{k}" for k in range(2, 51)}
    # what a task does nests in it, so it stays on the task's track
    for x in xs:
        parent = x_by_uuid.get(x["args"]["parent_uuid"])
        if parent is not None and parent["name"] != "main":
            assert x["tid"] == parent["tid"], (x["name"], parent["name"])
    for mark in instants(trace):
        parent = x_by_uuid[mark["args"]["parent_uuid"]]
        assert parent["name"] == "step" and mark["tid"] == parent["tid"]
    assert len(instants(trace)) == 50

    # what the exporter avoids: the same slices on one track per thread do not nest
    naive = {"traceEvents": [dict(x, tid=1) for x in xs]}
    assert any("without nesting" in p for p in chrome.validate_chrome_trace(naive))


def test_sequential_children_share_the_parent_track(nf, chrome, exporter):
    with nf.trace("parent"):
        for i in range(5):
            with nf.trace(f"child-{i}"):
                with nf.trace("grandchild"):
                    pass
    trace = written(exporter, chrome)
    assert len({x["tid"] for x in slices(trace)}) == 1
    assert len(track_names(trace)) == 1


def test_scopes_shorter_than_the_automatic_minimum_stay_on_one_track(nf, chrome, exporter,
                                                                     events):
    # The compiled core is fast enough that these take less than the 1 µs an automatic end is
    # stamped after its start: their recorded ends overshoot the parent and the next sibling.
    with nf.trace("parent"):
        for _ in range(300):
            with nf.trace("child"):
                with nf.trace("leaf"):
                    pass
    for _ in range(300):
        with nf.trace("top-leaf"):
            pass
    trace = written(exporter, chrome)
    assert len(track_names(trace)) == 1
    recorded = {e.uuid: e.timestamp_ns for e in events if e.scope_category == "start"}
    ends = {e.uuid: e.timestamp_ns for e in events if e.scope_category == "end"}
    for x in slices(trace):
        u = x["args"]["uuid"]
        drawn = round(x["dur"] * 1000)
        full = ends[u] - recorded[u]
        # drawn as recorded, or cut by at most the 1 µs an automatic end may overshoot
        assert drawn == full or (0 < drawn < full and full - drawn <= 1000)


def test_track_assignment_first_fit_on_parent_tracks(nf, chrome, exporter):
    h = nf.scope.push("P", nf.ScopeType.Agent, timestamp=at(0))
    explicit(nf, "A", 10, 50, h)
    explicit(nf, "B", 20, 60, h)  # overlaps A: a new track
    explicit(nf, "C", 55, 90, h)  # after A: back on P's track
    explicit(nf, "D", 30, 40, h)  # overlaps A and B: a third track
    explicit(nf, "E", 65, 95, h)  # overlaps C, not B: on B's track
    explicit(nf, "F", 90, 120, h)  # reaches past P, overlaps E: the first free extra track
    nf.scope.pop(h, timestamp=at(100))
    trace = written(exporter, chrome)
    x = {k: v[0] for k, v in by_name(trace).items()}
    names = track_names(trace)
    assert x["A"]["tid"] == x["C"]["tid"] == x["P"]["tid"]
    assert names[x["B"]["tid"]] == "P #2" and x["E"]["tid"] == x["B"]["tid"]
    assert names[x["D"]["tid"]] == "P #3"
    assert x["F"]["tid"] == x["D"]["tid"]
    assert x["B"]["ts"] - x["P"]["ts"] == 20.0 and x["B"]["dur"] == 40.0
    # extra tracks are sorted right below their parent's track
    order = {e["tid"]: e["args"]["sort_index"] for e in trace["traceEvents"]
             if e["name"] == "thread_sort_index"}
    assert order[x["P"]["tid"]] < order[x["B"]["tid"]] < order[x["D"]["tid"]]


def test_child_outliving_its_parent_goes_on_another_track(nf, chrome, exporter):
    async def main():
        with nf.trace("parent"):
            background = asyncio.ensure_future(child())
            await asyncio.sleep(0)
        await background

    async def child():
        with nf.trace("detached"):
            await asyncio.sleep(0.002)

    asyncio.run(main())
    trace = written(exporter, chrome)
    x = {k: v[0] for k, v in by_name(trace).items()}
    assert x["detached"]["args"]["parent_uuid"] == x["parent"]["args"]["uuid"]
    assert x["detached"]["tid"] != x["parent"]["tid"]
    assert track_names(trace)[x["detached"]["tid"]] == "parent #2"


def test_threads_get_separate_tracks(nf, chrome, exporter):
    barrier = threading.Barrier(3)

    def own_trace(i):  # a thread starts with an empty context: its own trace root
        with nf.trace(f"thread-{i}"):
            barrier.wait()
            with nf.trace("work"):
                pass
            barrier.wait()

    threads = [threading.Thread(target=own_trace, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    with nf.trace("shared") as shared:  # worker threads bound under one scope overlap in it
        stack = nf.propagate_scope_to_thread()
        gate = threading.Barrier(2)

        def bound(i):
            nf.set_thread_scope_stack(stack)
            with nf.trace(f"worker-{i}"):
                gate.wait()
                gate.wait()

        workers = [threading.Thread(target=bound, args=(i,)) for i in range(2)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    trace = written(exporter, chrome)
    x = {k: v[0] for k, v in by_name(trace).items()}
    assert len({x[f"thread-{i}"]["tid"] for i in range(3)}) == 3
    names = track_names(trace)
    assert all(names[x[f"thread-{i}"]["tid"]].startswith("trace ") for i in range(3))
    assert x["worker-0"]["tid"] != x["worker-1"]["tid"]
    assert x["worker-0"]["args"]["parent_uuid"] == shared.handle.uuid
    assert {names[x["worker-0"]["tid"]], names[x["worker-1"]["tid"]]} <= {
        names[x["shared"]["tid"]], "shared #2"}


def test_top_level_scopes_of_one_trace_share_tracks_when_sequential(nf, chrome, exporter):
    for i in range(3):
        with nf.trace(f"request-{i}"):
            pass
    trace = written(exporter, chrome)
    assert len({x["tid"] for x in slices(trace)}) == 1


# ---------------------------------------------------------------------------------------------
# marks


def test_marks_on_parent_track_and_top_level(nf, chrome, exporter):
    nf.mark("top-level", data=[1])
    with nf.trace("a") as a:
        with nf.trace("b"):
            nf.mark("in-b")
        nf.scope.event("in-a", category="custom")
    nf.mark("late", handle=a.handle)  # after a ended: outside its span
    trace = written(exporter, chrome)
    x = {k: v[0] for k, v in by_name(trace).items()}
    m = {e["name"]: e for e in instants(trace)}
    assert m["in-b"]["tid"] == x["b"]["tid"] and m["in-b"]["s"] == "t"
    assert m["in-a"]["tid"] == x["a"]["tid"] and m["in-a"]["cat"] == "custom"
    assert m["in-b"]["cat"] == "mark"
    assert m["top-level"]["s"] == "t" and m["top-level"]["args"]["data"] == [1]
    assert m["top-level"]["tid"] in track_names(trace)
    assert m["late"]["s"] == "p"  # not drawn inside an unrelated slice
    assert m["late"]["args"]["parent_uuid"] == x["a"]["args"]["uuid"]


def test_mark_after_its_parent_was_written(nf, chrome, exporter):
    with nf.trace("a") as a:
        pass
    written(exporter, chrome)
    nf.mark("late", handle=a.handle)
    trace = written(exporter, chrome)
    (late,) = instants(trace)
    assert late["tid"] == slices(trace)[0]["tid"] and late["s"] == "p"


# ---------------------------------------------------------------------------------------------
# open scopes, rewrites


def test_open_scopes_at_force_flush_are_open_ended_then_final(nf, chrome, exporter):
    outer = nf.scope.push("outer", nf.ScopeType.Agent)
    with nf.trace("done"):
        pass
    inner = nf.scope.push("running", nf.ScopeType.Function)
    nf.mark("now")
    trace = written(exporter, chrome)
    x = {k: v[0] for k, v in by_name(trace).items()}
    assert x["outer"]["args"]["open"] is True and x["running"]["args"]["open"] is True
    assert "open" not in x["done"]["args"]
    assert x["outer"]["args"]["output"] is None
    assert trace["otherData"]["open_scopes"] == 2
    assert x["done"]["tid"] == x["running"]["tid"] == x["outer"]["tid"]
    # open-ended up to the flush: the running scope reaches at least past the mark
    (mark,) = instants(trace)
    assert x["running"]["ts"] <= mark["ts"] <= x["running"]["ts"] + x["running"]["dur"]
    stats = exporter.stats()  # nothing is laid out for good while its top scope is open
    assert stats["scopes"] == 0 and stats["pending_scopes"] == 3

    nf.scope.pop(inner, output={"r": 1})
    nf.scope.pop(outer)
    trace = written(exporter, chrome)
    final = by_name(trace)
    assert len(final["outer"]) == len(final["running"]) == len(final["done"]) == 1
    assert not any("open" in x["args"] for x in slices(trace))
    assert final["running"][0]["args"]["output"] == {"r": 1}
    assert trace["otherData"]["open_scopes"] == 0
    assert len(slices(trace)) == 3 and len(instants(trace)) == 1


def test_open_scope_with_ended_child_and_open_grandchild(nf, chrome, exporter):
    # A task outlives the scope it started in, which ended inside a still-open scope.
    root = nf.scope.push("root-scope", nf.ScopeType.Agent)
    at_root = nf.capture()
    mid = nf.scope.push("mid", nf.ScopeType.Function)
    at_mid = nf.capture()
    leaf = nf.scope.push("leaf", nf.ScopeType.Function)
    with nf.bind(at_mid):  # end "mid" while "leaf" stays open, as a detached task would
        nf.scope.pop(mid)
    trace = written(exporter, chrome)
    x = {k: v[0] for k, v in by_name(trace).items()}
    assert x["leaf"]["args"]["open"] is True and "open" not in x["mid"]["args"]
    assert x["leaf"]["tid"] != x["mid"]["tid"]  # reaches past mid
    nf.scope.pop(leaf)
    trace = written(exporter, chrome)
    assert {k: len(v) for k, v in by_name(trace).items()} == {
        "root-scope": 1, "mid": 1, "leaf": 1}
    with nf.bind(at_root):
        nf.scope.pop(root)
    trace = written(exporter, chrome)
    assert {k: len(v) for k, v in by_name(trace).items()} == {
        "root-scope": 1, "mid": 1, "leaf": 1}
    assert not any("open" in x["args"] for x in slices(trace))


def test_file_is_complete_valid_json_at_any_time(nf, chrome, exporter, tmp_path):
    stop = threading.Event()
    problems = []

    def produce():
        for _ in range(3000):
            if stop.is_set():
                return
            with nf.trace("loop"):
                with nf.trace("body"):
                    nf.mark("tick")

    def read():
        reads = 0
        while not stop.is_set() or reads == 0:
            try:
                with open(exporter.path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            reads += 1
            try:
                trace = json.loads(data)
            except ValueError as exc:
                problems.append(f"not JSON: {exc}")
                return
            problems.extend(chrome.validate_chrome_trace(trace))

    producer = threading.Thread(target=produce)
    reader = threading.Thread(target=read)
    producer.start()
    exporter.force_flush()
    reader.start()
    for _ in range(20):
        exporter.force_flush()
    stop.set()
    producer.join()
    reader.join()
    assert problems == []
    trace = written(exporter, chrome)
    assert len(by_name(trace)["loop"]) == len(by_name(trace)["body"]) > 0
    assert sorted(os.listdir(tmp_path)) == ["trace.json"]  # no temporary files left behind


def test_register_deregister_shutdown(nf, chrome, tmp_path):
    exp = chrome.ChromeTraceExporter(str(tmp_path / "sub" / "t.json"))
    exp.register("c1")
    exp.register("c2")
    with pytest.raises(nf.AlreadyExistsError):
        exp.register("c1")
    other = chrome.ChromeTraceExporter(tmp_path / "other.json")
    with pytest.raises(nf.AlreadyExistsError):
        other.register("c2")
    with nf.trace("seen"):
        pass
    assert exp.deregister("c1") is True
    assert exp.deregister("c1") is False
    assert exp.name == "c2"
    assert not os.path.exists(exp.path)  # still registered under c2
    assert exp.deregister("c2") is True  # the last name out writes the file
    assert [x["name"] for x in slices(load(exp))] == ["seen"]
    with nf.trace("unseen"):
        pass
    exp.shutdown()
    exp.shutdown()
    assert [x["name"] for x in slices(load(exp))] == ["seen"]
    with pytest.raises(RuntimeError):
        exp.register("c3")
    with pytest.raises(TypeError):
        other.register(1)
    other.force_flush()  # never registered: an empty, valid trace
    assert chrome.validate_chrome_trace(load(other)) == []
    assert slices(load(other)) == []
    other.shutdown()
    assert not {"c1", "c2"} & set(nf.diagnostics()["exporters"])


def test_export_error_is_counted_not_raised(nf, chrome, exporter, monkeypatch):
    def broken(ev, ts):
        raise ValueError("cannot take this start")

    monkeypatch.setattr(exporter, "_take_start", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with nf.trace("a"):  # traced code never sees the exporter's error
            nf.mark("still-recorded")
        with nf.trace("b"):
            pass
        nf._core.flush()
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1 and "test-chrome" in str(runtime[0].message)
    stats = nf.diagnostics()["exporters"]["test-chrome"]
    assert 1 <= stats["errors"] <= 2  # one per failed batch
    assert exporter.stats()["bad_events"] == 2
    monkeypatch.undo()
    with nf.trace("c"):
        pass
    trace = written(exporter, chrome)
    assert [x["name"] for x in slices(trace)] == ["c"]  # the rest of the batches went on
    assert [m["name"] for m in instants(trace)] == ["still-recorded"]


def test_write_error_raised_by_force_flush_and_counted(nf, chrome, tmp_path):
    target = tmp_path / "dir-not-file"
    exp = chrome.ChromeTraceExporter(target / "t.json")
    os.rmdir(target)
    target.write_text("a file where the directory was")
    exp.register("broken-path")
    with nf.trace("x"):
        pass
    with pytest.raises(OSError):
        exp.force_flush()
    assert nf.diagnostics()["exporters"]["broken-path"]["errors"] == 1
    with pytest.warns(RuntimeWarning, match="could not write"):
        assert exp.deregister("broken-path") is True
    assert exp.stats()["errors"] == 2
    with pytest.raises(OSError):
        exp.shutdown()
    exp.shutdown()  # shut down all the same: nothing left to write at exit


def test_written_at_exit_without_shutdown(nf, chrome, tmp_path):
    path = tmp_path / "exit.json"
    script = textwrap.dedent(f"""
        import nemoflow as nf
        from nemoflow.exporters import ChromeTraceExporter
        exp = ChromeTraceExporter({str(path)!r})
        exp.register("exit")
        with nf.trace("run"):
            for i in range(1000):
                with nf.trace("step"):
                    pass
        open_scope = nf.scope.push("never-closed", nf.ScopeType.Agent)
        # no force_flush, no shutdown: the interpreter exits
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=backend_env(nf),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    with open(path, "rb") as f:
        trace = json.loads(f.read())
    assert chrome.validate_chrome_trace(trace) == []
    counts = {k: len(v) for k, v in by_name(trace).items()}
    assert counts == {"run": 1, "step": 1000, "never-closed": 1}
    assert by_name(trace)["never-closed"][0]["args"]["open"] is True


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_writes_its_own_file(nf, chrome, exporter):
    with nf.trace("before-fork"):
        pass
    exporter.force_flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            with nf.trace("in-child"):
                pass
            exporter.force_flush()
            code = 0
        finally:
            os._exit(code)
    with nf.trace("in-parent"):
        pass
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    trace = written(exporter, chrome)
    assert sorted(by_name(trace)) == ["before-fork", "in-parent"]
    stem, ext = os.path.splitext(exporter.path)
    with open(f"{stem}.{pid}{ext}", "rb") as f:
        child = json.loads(f.read())
    assert chrome.validate_chrome_trace(child) == []
    assert sorted(by_name(child)) == ["in-child"]


# ---------------------------------------------------------------------------------------------
# the validator


def good_trace():
    return {"traceEvents": [
        {"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "p"}},
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "t"}},
        {"name": "a", "ph": "X", "ts": 0, "dur": 10.5, "pid": 1, "tid": 1,
         "args": {"uuid": "A", "parent_uuid": "root"}},
        {"name": "b", "ph": "X", "ts": 1.25, "dur": 3, "pid": 1, "tid": 1,
         "args": {"uuid": "B", "parent_uuid": "A"}},
        {"name": "c", "ph": "X", "ts": 4.25, "dur": 6.25, "pid": 1, "tid": 1,
         "args": {"uuid": "C", "parent_uuid": "A"}},  # touches b, ends with a
        {"name": "z", "ph": "X", "ts": 10.5, "dur": 0, "pid": 1, "tid": 1},
        {"name": "other", "ph": "X", "ts": 2, "dur": 100, "pid": 1, "tid": 2},
        {"name": "m", "ph": "i", "s": "t", "ts": 2, "pid": 1, "tid": 1,
         "args": {"parent_uuid": "B"}},
        {"name": "free", "ph": "i", "s": "t", "ts": 500, "pid": 1, "tid": 1,
         "args": {"parent_uuid": "root"}},
        {"name": "proc", "ph": "i", "s": "p", "ts": 700, "pid": 1},
    ], "displayTimeUnit": "ms"}


def test_validator_accepts_a_good_trace(chrome):
    assert chrome.validate_chrome_trace(good_trace()) == []
    assert chrome.validate_chrome_trace(good_trace()["traceEvents"]) == []


def with_event(**event):
    trace = good_trace()
    trace["traceEvents"].append(event)
    return trace


@pytest.mark.parametrize("trace, expected", [
    (with_event(name="x", ph="X", ts=5, dur=10, pid=1, tid=1), "without nesting"),
    (with_event(name="x", ph="X", ts=50, dur=100, pid=1, tid=2), "without nesting"),
    (with_event(name="x", ph="X", ts=5, pid=1, tid=1), "missing dur"),
    (with_event(ph="X", ts=5, dur=1, pid=1, tid=1), "missing name"),
    (with_event(name="x", ph="X", ts=5, dur=1, tid=1), "missing pid"),
    (with_event(name="x", ph="i", pid=1, tid=1), "missing ts"),
    (with_event(name="x", ph="i", s="t", ts=1, pid=1), "missing tid"),
    (with_event(name="x", ph="i", s="x", ts=1, pid=1, tid=1), "s must be"),
    (with_event(name="x", ph="X", ts=-1, dur=1, pid=1, tid=3), "ts must be a number >= 0"),
    (with_event(name="x", ph="X", ts=1, dur=-1, pid=1, tid=3), "dur must be a number >= 0"),
    (with_event(name="x", ph="X", ts="1", dur=1, pid=1, tid=3), "ts must be a number"),
    (with_event(name="x", ph="X", ts=1, dur=True, pid=1, tid=3), "dur must be a number"),
    (with_event(name="x", ph="X", ts=1, dur=1, pid=1.5, tid=3), "pid must be"),
    (with_event(name="m", ph="i", s="t", ts=20, pid=1, tid=1, args={"parent_uuid": "B"}),
     "outside its parent slice"),
    (with_event(name="m", ph="i", s="t", ts=2, pid=1, tid=2, args={"parent_uuid": "B"}),
     "parent slice is on track"),
    (with_event(name="x", ph="X", ts=20, dur=1, pid=1, tid=3, args={"uuid": "A"}), "twice"),
    (with_event(name="thread_name", ph="M", pid=1, args={"name": "t"}), "missing tid"),
    (with_event(name="thread_name", ph="M", pid=1, tid=1, args={}), "args.name"),
    (with_event(name="bogus", ph="M", pid=1, tid=1, args={}), "unknown metadata"),
    (with_event(name="x", ts=1), "missing ph"),
    ({"traceEvents": [1]}, "not an object"),
    ({"traceEvents": [], "displayTimeUnit": "s"}, "displayTimeUnit"),
    ({"events": []}, "traceEvents"),
    ("not a trace", "JSON object or array"),
])
def test_validator_rejects_bad_traces(chrome, trace, expected):
    problems = chrome.validate_chrome_trace(trace)
    assert problems, "a bad trace was accepted"
    assert any(expected in p for p in problems), problems
