"""The event pipeline: rings, the delivery thread, buffered subscribers, the JSONL exporter,
and what happens when things go wrong (raising consumers, full disks, thread exit, fork, exit).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def read_lines(path):
    # JSONL is split on "\n" only: str.splitlines() would also split on U+0085, U+2028 …,
    # which JSON strings may contain unescaped.
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    assert text == "" or text.endswith("\n")
    return text.split("\n")[:-1] if text else []


def _backend_env(nf):
    env = dict(os.environ)
    env.pop("NEMOFLOW_NO_EXTENSIONS", None)
    if nf.BACKEND == "python":
        env["NEMOFLOW_NO_EXTENSIONS"] = "1"
    return env


# -- recording and delivery --------------------------------------------------------------------

def test_nothing_attached_records_nothing(nf):
    assert nf.diagnostics()["pipeline"]["recording"] is False
    with nf.scope.scope("s", nf.ScopeType.Agent):
        nf.mark("m")
    assert all(r["high_water"] == 0 or r["pending"] == 0
               for r in nf.diagnostics()["pipeline"]["rings"])


def test_jsonl_lines_are_the_events_to_json(nf, jsonl, events):
    with nf.scope.scope("outer", nf.ScopeType.Agent, input={"q": "hi"}, metadata={"m": 1}):
        nf.mark("checkpoint", data={"step": 1}, data_schema={"name": "s", "version": "1"})
        with nf.trace("inner", input={"x": [1, 2]}) as span:
            span.output = {"y": None}
        with pytest.raises(KeyError):
            with nf.trace("fails"):
                raise KeyError("k")
    nf.subscribers.flush()
    assert read_lines(jsonl.path) == [e.to_json() for e in events]
    assert len(events) == 7


def test_flush_is_a_barrier(nf, jsonl):
    for i in range(5000):
        nf.mark("m", data=i)
    nf.subscribers.flush()
    lines = read_lines(jsonl.path)
    assert len(lines) == 5000
    assert [json.loads(line)["data"] for line in lines] == list(range(5000))


def test_flush_async_is_a_barrier(nf, jsonl):
    import asyncio

    async def main():
        for i in range(1000):
            nf.mark("m", data=i)
        await nf.subscribers.flush_async()
        return len(read_lines(jsonl.path))

    assert asyncio.run(main()) == 1000


def test_buffered_subscriber_runs_on_the_delivery_thread_in_emission_order(nf):
    seen = []
    nf.subscribers.register("buffered", lambda e: seen.append((e.data, threading.get_ident())),
                            buffered=True)

    def emit(tag):
        for i in range(300):
            nf.mark("m", data=[tag, i])

    threads = [threading.Thread(target=emit, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    emit(99)
    nf.subscribers.flush()
    assert len(seen) == 5 * 300
    assert {ident for _, ident in seen} != {threading.get_ident()}
    assert len({ident for _, ident in seen}) == 1  # one delivery thread
    for tag in (0, 1, 2, 3, 99):
        assert [i for (t, i), _ in seen if t == tag] == list(range(300))


def test_buffered_subscriber_sees_full_events(nf):
    seen = []
    nf.subscribers.register("buffered", seen.append, buffered=True)
    with nf.scope.scope("s", nf.ScopeType.Tool, input={"a": 1}, metadata={"m": 1}) as h:
        pass
    nf.subscribers.flush()
    start, end = seen
    assert (start.scope_category, end.scope_category) == ("start", "end")
    assert start.uuid == end.uuid == h.uuid
    assert start.data == {"a": 1} and end.data is None
    assert end.metadata == {"m": 1, "otel.status_code": "OK"}
    assert end.category == "tool"


def test_deregistered_buffered_subscriber_still_gets_what_came_before(nf):
    seen = []
    nf.subscribers.register("buffered", seen.append, buffered=True)
    for i in range(100):
        nf.mark("m", data=i)
    assert nf.subscribers.deregister("buffered") is True
    nf.mark("after")
    nf.subscribers.flush()
    assert [e.data for e in seen] == list(range(100))


# -- failures never reach traced code ----------------------------------------------------------

def test_raising_buffered_subscriber_is_isolated_and_counted(nf, jsonl):
    good = []

    def bad(event):
        raise RuntimeError("boom")

    nf.subscribers.register("bad", bad, buffered=True)
    nf.subscribers.register("good", good.append, buffered=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(50):
            nf.mark("m", data=i)
        nf.subscribers.flush()
    assert len(good) == 50
    assert len(read_lines(jsonl.path)) == 50
    assert nf.diagnostics()["subscribers"]["bad"]["errors"] == 50
    assert sum("subscriber 'bad' raised RuntimeError" in str(w.message) for w in caught) == 1


def test_disk_full_is_counted_and_raised_by_force_flush(nf, jsonl):
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, jsonl._sink.fd)  # the exporter's file now answers ENOSPC
    finally:
        os.close(full)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _i in range(10):
            with nf.scope.scope("work", nf.ScopeType.Function):  # traced code is unaffected
                pass
        nf.subscribers.flush()
    stats = nf.diagnostics()["exporters"]["test-jsonl"]
    assert stats["errors"] >= 1 and stats["events"] == 0
    assert sum("could not write" in str(w.message) for w in caught) == 1
    with pytest.raises(OSError) as info:
        jsonl.force_flush()
    assert info.value.errno == 28  # ENOSPC
    jsonl.force_flush()  # the error was reported once; nothing new since


def test_closed_file_descriptor_is_counted(nf, jsonl):
    os.close(jsonl._sink.fd)
    nf.mark("m")
    nf.subscribers.flush()
    assert nf.diagnostics()["exporters"]["test-jsonl"]["errors"] >= 1
    with pytest.raises(OSError):
        jsonl.force_flush()


def test_raising_exporter_is_counted_not_raised(nf):
    class Broken:
        name = "broken"

        def export(self, events):
            raise ValueError("no")

    broken = Broken()
    nf._core.attach(broken)
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            nf.mark("m")
            nf.subscribers.flush()
        assert nf.diagnostics()["exporters"]["broken"]["errors"] == 1
    finally:
        nf._core.detach(broken)


# -- lifecycle: threads, overflow, fork, exit --------------------------------------------------

def test_thread_exit_with_buffered_events_loses_nothing(nf, jsonl):
    before = nf.diagnostics()["pipeline"]["rings_freed"]

    def work():
        for _i in range(2000):
            with nf.scope.scope("t", nf.ScopeType.Function):
                pass

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()  # the threads are gone, their rings may still hold events
    nf.subscribers.flush()
    assert len(read_lines(jsonl.path)) == 4 * 2000 * 2
    deadline = time.monotonic() + 5
    while nf.diagnostics()["pipeline"]["rings_freed"] < before + 4:
        assert time.monotonic() < deadline, "rings of exited threads were not freed"
        nf.mark("tick")
        nf.subscribers.flush()
        time.sleep(0.01)


def test_lossless_by_default_with_a_tiny_ring(nf, jsonl):
    dropped_at_start = nf.diagnostics()["pipeline"]["dropped"]
    nf.configure(ring_size=16)
    try:
        slow = []
        nf.subscribers.register("slow", lambda e: (slow.append(e), time.sleep(0.0001)),
                                buffered=True)

        def work():
            for i in range(500):
                nf.mark("m", data=i)

        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        nf.subscribers.flush()
    finally:
        nf.configure(ring_size=8192)
    pipeline = nf.diagnostics()["pipeline"]
    assert pipeline["dropped"] == dropped_at_start  # counters are cumulative per process
    assert len(slow) == 1500
    assert len(read_lines(jsonl.path)) == 1500


def test_overflow_drop_counts_what_it_drops(nf):
    dropped_at_start = nf.diagnostics()["pipeline"]["dropped"]  # cumulative per process
    nf.configure(ring_size=16, overflow="drop")
    try:
        gate = threading.Event()
        seen = []

        def slow(event):
            gate.wait(5)
            seen.append(event)

        nf.subscribers.register("slow", slow, buffered=True)

        def work():
            for i in range(200):
                nf.mark("m", data=i)

        t = threading.Thread(target=work)
        t.start()
        t.join()
        dropped_before_release = nf.diagnostics()["pipeline"]["dropped"]
        gate.set()
        nf.subscribers.flush()
        dropped = nf.diagnostics()["pipeline"]["dropped"]
    finally:
        nf.configure(ring_size=8192, overflow="block")
    assert dropped_before_release > dropped_at_start
    assert dropped == dropped_before_release
    assert len(seen) + dropped - dropped_at_start == 200


def test_configure_rejects_bad_values(nf):
    with pytest.raises(ValueError):
        nf.configure(ring_size=1000)
    with pytest.raises(ValueError):
        nf.configure(overflow="sometimes")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_with_buffered_events(nf, jsonl):
    with nf.scope.scope("parent", nf.ScopeType.Agent):
        for i in range(300):
            nf.mark("before-fork", data=i)  # still in the ring when fork() is called
        pid = os.fork()
        if pid == 0:  # the child: traces on its own, into the same file
            code = 1
            try:
                for i in range(100):
                    nf.mark("in-child", data=i)
                nf.subscribers.flush()
                code = 0
            finally:
                os._exit(code)
        for i in range(50):
            nf.mark("in-parent", data=i)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    nf.subscribers.flush()
    lines = [json.loads(line) for line in read_lines(jsonl.path)]
    names = [line["name"] for line in lines]
    assert names.count("before-fork") == 300  # neither lost nor written twice
    assert names.count("in-child") == 100
    assert names.count("in-parent") == 50
    assert len({(line["uuid"], line.get("scope_category")) for line in lines}) == len(lines)


def test_exit_without_flush_writes_everything(nf, tmp_path):
    out = tmp_path / "exit.jsonl"
    script = textwrap.dedent(f"""
        import nemoflow as nf
        ex = nf.AtofExporter(nf.AtofExporterConfig(output_directory={str(tmp_path)!r},
                                                   filename="exit.jsonl"))
        ex.register("exit")
        seen = []
        nf.subscribers.register("buffered", seen.append, buffered=True)
        for i in range(20000):
            with nf.scope.scope("s", nf.ScopeType.Function):
                pass
        # no flush, no shutdown: the interpreter exits with events in the ring
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=_backend_env(nf),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(read_lines(out)) == 40000


# -- the encoder -------------------------------------------------------------------------------

names = st.text(min_size=0, max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names, data=json_values, meta=json_values, description=st.text(max_size=12))
def test_encoder_matches_orjson_for_any_names_and_payloads(nf, jsonl, name, data, meta,
                                                           description):
    captured = []
    nf.subscribers.register("capture", captured.append)
    try:
        nf.mark(name, data=data, metadata=meta)
        with pytest.raises(ValueError):
            with nf.scope.scope(name, nf.ScopeType.Custom, input=data, metadata=meta):
                raise ValueError(description)
        nf.subscribers.flush()
    finally:
        nf.subscribers.deregister("capture")
    lines = read_lines(jsonl.path)[-3:]
    assert lines == [e.to_json() for e in captured]
    for line, event in zip(lines, captured):
        parsed = json.loads(line)
        assert parsed["name"] == name
        assert line == json.dumps(parsed, sort_keys=True, separators=(",", ":"),
                                  ensure_ascii=False) or parsed == event.to_dict()
    end_meta = json.loads(lines[2])["metadata"]
    if meta is None or isinstance(meta, dict):  # status keys go into object metadata only
        assert end_meta["otel.status_description"] == description
    else:
        assert end_meta == meta


def test_exporter_registered_while_busy_gets_everything_after_register(nf, tmp_path):
    # A record published after register() returned must reach the new exporter even when the
    # delivery thread was in the middle of a batch when it was attached.
    stop = threading.Event()
    noise = []
    nf.subscribers.register("noise", noise.append, buffered=True)

    def background():  # keeps the delivery thread busy without saturating it
        while not stop.is_set():
            for _ in range(100):
                nf.mark("noise")
            time.sleep(0.001)

    t = threading.Thread(target=background)
    t.start()
    try:
        for round_ in range(20):
            config = nf.AtofExporterConfig(output_directory=str(tmp_path),
                                           filename=f"late-{round_}.jsonl")
            late = nf.AtofExporter(config)
            late.register(f"late-{round_}")
            for i in range(50):
                nf.mark("mine", data=i)
            late.shutdown()  # flushed and detached: the file no longer grows
            mine = [json.loads(line)["data"] for line in read_lines(late.path)
                    if json.loads(line)["name"] == "mine"]
            assert mine == list(range(50)), f"round {round_}"
    finally:
        stop.set()
        t.join()


def test_decorators_and_trace_blocks_capture_payloads_for_exporters_alone(nf, jsonl):
    # No subscriber at all: an exporter alone must still get inputs and outputs.
    @nf.trace
    def double(x):
        return 2 * x

    @nf.trace
    async def triple(x):
        return 3 * x

    import asyncio
    assert double(2) == 4
    assert asyncio.run(triple(2)) == 6
    with nf.trace("block", input={"a": 1}) as span:
        span.output = {"b": 2}
    nf.subscribers.flush()
    lines = [json.loads(line) for line in read_lines(jsonl.path)]
    data = [(line["name"].rsplit(".", 1)[-1], line["scope_category"], line["data"])
            for line in lines]
    assert data == [("double", "start", {"x": 2}), ("double", "end", 4),
                    ("triple", "start", {"x": 2}), ("triple", "end", 6),
                    ("block", "start", {"a": 1}), ("block", "end", {"b": 2})]
