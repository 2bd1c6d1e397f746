"""Payloads on their way to the delivery thread: copied into the core's per-thread arena,
encoded and merged there without the GIL, within a byte budget.

Every payload size class (small, in the arena, larger than the arena) must reach the file
byte-identical to ``to_json()``; an exhausted arena waits (lossless) or counts drops; fork,
thread exit and interpreter exit with payloads still in the arena lose nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nemoflow import _common
from tests.backends import backend_env

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


class Jsonl:
    """A JSONL exporter and a synchronous recorder, compared line by line."""

    def __init__(self, nf, path):
        self.nf = nf
        config = nf.AtofExporterConfig(output_directory=str(path), filename="a.jsonl",
                                       mode=nf.AtofExporterMode.Overwrite)
        self.exporter = nf.AtofExporter(config)
        self.exporter.register("arena-jsonl")
        self.events: list = []
        nf.subscribers.register("arena-recorder", self.events.append)
        self.offset = 0

    def lines(self) -> list[bytes]:
        self.exporter.force_flush()
        with open(self.exporter.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        return data.split(b"\n")[:-1]

    def close(self):
        self.nf.subscribers.deregister("arena-recorder")
        self.exporter.shutdown()


@pytest.fixture
def jsonl(nf, tmp_path):
    j = Jsonl(nf, tmp_path)
    yield j
    j.close()


@pytest.fixture
def small_arena(nf):
    """Rings made during the test get a 64 KiB arena; the default is restored after."""
    nf.configure(arena_size=64 * 1024)
    yield 64 * 1024
    nf.configure(arena_size=_common.DEFAULT_ARENA, overflow="block")


def _in_thread(fn):
    # A new thread gets a new ring, made with the arena size configured now.
    errors = []

    def run():
        try:
            fn()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the emitting thread hung"
    assert not errors, errors


# --- end metadata: merged in C from the encoded sides, by the same rule as in Python --------

KEYS = (st.sampled_from(["a", "ab", "a\x00", "a\x1f", "b", "otel.status_code",
                         "otel.status_description", "otel.status", "otel", "é", "\u2028",
                         "q\"uote", "back\\slash", "Z", "", "\U0001f600"])
        | st.text(max_size=3))
LEAF = st.none() | st.booleans() | st.integers(-10, 10) | st.text(max_size=3) | st.floats(
    allow_nan=False, allow_infinity=False)
VALUE = LEAF | st.lists(LEAF, max_size=2) | st.dictionaries(KEYS, LEAF, max_size=2)
META = (st.none() | st.dictionaries(KEYS, VALUE, max_size=5) | st.lists(LEAF, max_size=2)
        | LEAF)
STATUS = st.sampled_from([0, 1, 2])
DESC = st.none() | st.text(max_size=4) | st.sampled_from(["boom \"x\"\n", "naïve"])


@SETTINGS
@given(start=META, end=META, status=STATUS, desc=DESC)
def test_end_metadata_is_merged_by_the_rule(nf, jsonl, start, end, status, desc):
    core = nf._core
    frame = core.start("merge", nf.ScopeType.Function, None, 0, None, start, None, None)
    core.end(frame, None, end, None, status, desc if status == 2 else None)
    lines = jsonl.lines()
    assert len(lines) == 2
    end_line = lines[1]
    event = jsonl.events[-1]
    assert end_line.decode() == event.to_json()
    # canonical (sorted keys, orjson's bytes) and equal to the rule applied to the values
    assert orjson.dumps(orjson.loads(end_line), option=orjson.OPT_SORT_KEYS) == end_line
    expected = _common.merge_metadata(
        None if start is None else orjson.dumps(start, option=orjson.OPT_SORT_KEYS),
        None if end is None else orjson.dumps(end, option=orjson.OPT_SORT_KEYS),
        status, desc if status == 2 else None)
    assert orjson.loads(end_line)["metadata"] == (None if expected is None
                                                 else orjson.loads(expected))
    assert event.metadata == orjson.loads(end_line)["metadata"]


# --- the payload fast path: small plain values written in C, orjson's bytes exactly ---------

FAST_LEAF = (st.none() | st.booleans()
             | st.integers(-(2 ** 63), 2 ** 63 - 1)
             | st.sampled_from([2 ** 63, 2 ** 64 - 1, -(2 ** 63) - 1, 0, -1])
             | st.text(st.characters(max_codepoint=127), max_size=6)
             | st.sampled_from(["", "\x00\x07\x1f\x7f", "\"\\/", "naïve", "\u2028", "😀"])
             | st.floats(allow_nan=False, allow_infinity=False))
FAST_KEYS = (st.text(st.characters(max_codepoint=127), max_size=4)
             | st.sampled_from(["a", "ab", "a\x00", "b", "B", "é", ""]))
FAST = st.recursive(FAST_LEAF,
                    lambda inner: (st.lists(inner, max_size=4) | st.tuples(inner, inner)
                                   | st.dictionaries(FAST_KEYS, inner, max_size=6)),
                    max_leaves=12)


@SETTINGS
@given(value=FAST)
def test_payload_encoding_is_orjsons(nf, value):
    if value is None:
        assert nf._core.encode(value) is None  # no payload at all
        return
    try:
        expected = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        with pytest.raises(ValueError):
            nf._core.encode(value)
        return
    assert nf._core.encode(value) == expected
    assert nf._core.encode(value, True) == expected


@pytest.mark.parametrize("value", [
    {f"k{i:02d}": i for i in range(40)},             # more keys than the fast path takes
    {"deep": {"er": {"est": {"still": [1]}}}},       # deeper than the fast path goes
    ["x" * 5000],                                    # longer than its buffer
    {"b": 1, "a": {"d": [True, None, "s"], "c": -7}},
    (1, "two", [3]),
])
def test_payload_encoding_is_orjsons_past_the_fast_path(nf, value):
    assert nf._core.encode(value) == orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


# --- size classes -------------------------------------------------------------------------

def test_every_size_class_reaches_the_file_unchanged(nf, jsonl, small_arena):
    sizes = [0, 10, 1000, 20_000, 60_000, 200_000, 1_000_000]  # the last two: > the arena

    def emit():
        for n in sizes:
            payload = {"blob": "x" * n, "n": n}
            nf.mark("m" * (n % 40 + 1), data=payload, metadata={"size": n})
            h = nf.scope.push("s" * 30, nf.ScopeType.Tool, input=payload,
                              metadata={"size": n, "é": "ü"})
            nf.scope.pop(h, output={"echo": payload["blob"][: n // 2]})
    before = nf.diagnostics()["pipeline"]["oversize_payloads"]
    _in_thread(emit)
    lines = jsonl.lines()
    assert len(lines) == 3 * len(sizes) == len(jsonl.events)
    for line, event in zip(lines, jsonl.events):
        assert line.decode() == event.to_json()
    # two events per oversize payload size carry more than the arena holds
    oversize = nf.diagnostics()["pipeline"]["oversize_payloads"] - before
    assert oversize == 6, oversize


def test_long_and_non_ascii_names_and_texts(nf, jsonl):
    names = ["a" * 23, "a" * 24, "naïve", "名前" * 20, "tab\tname", "\u2028"]
    for name in names:
        nf.mark(name, data={"x": name}, category=name)
        with nf.scope.scope(name, nf.ScopeType.Agent):
            pass
    lines = jsonl.lines()
    assert len(lines) == 3 * len(names)
    for line, event in zip(lines, jsonl.events):
        assert line.decode() == event.to_json()
    assert [json.loads(line)["name"] for line in lines[::3]] == names


# --- exhaustion ---------------------------------------------------------------------------

def test_exhausted_arena_waits_and_loses_nothing(nf, jsonl):
    nf.configure(arena_size=4096)
    try:
        before = nf.diagnostics()["pipeline"]
        mine = []

        def emit():
            for i in range(3000):
                nf.mark("m", data={"i": i, "pad": "p" * 1000})
            nf.subscribers.flush()
            mine.extend(r for r in nf.diagnostics()["pipeline"]["rings"]
                        if r["thread"] == threading.get_ident())
        _in_thread(emit)
        lines = jsonl.lines()
        assert len(lines) == 3000
        assert [json.loads(line)["data"]["i"] for line in lines] == list(range(3000))
        pipeline = nf.diagnostics()["pipeline"]
        assert pipeline["dropped"] == before["dropped"]
        assert pipeline["waits"] > before["waits"]  # the budget held: the producer waited
        assert len(mine) == 1 and mine[0]["arena_size"] == 4096
        assert 0 < mine[0]["arena_high"] <= 4096
    finally:
        nf.configure(arena_size=_common.DEFAULT_ARENA)


def test_exhausted_arena_drops_are_counted(nf, jsonl):
    nf.configure(arena_size=4096, overflow="drop")
    try:
        dropped = nf.diagnostics()["pipeline"]["dropped"]

        def emit():
            for i in range(3000):
                nf.mark("m", data={"i": i, "pad": "p" * 1000})
        _in_thread(emit)
        lines = jsonl.lines()
        lost = nf.diagnostics()["pipeline"]["dropped"] - dropped
        assert lost > 0
        assert len(lines) + lost == 3000
        for line in lines:
            assert json.loads(line)["data"]["pad"] == "p" * 1000
    finally:
        nf.configure(arena_size=_common.DEFAULT_ARENA, overflow="block")


def test_oversize_payloads_one_at_a_time_lossless(nf, jsonl, small_arena):
    big = "b" * (3 * small_arena)
    dropped = nf.diagnostics()["pipeline"]["dropped"]

    def emit():
        for i in range(20):
            nf.mark("big", data={"i": i, "big": big})
    _in_thread(emit)
    lines = jsonl.lines()
    assert [json.loads(line)["data"]["i"] for line in lines] == list(range(20))
    assert nf.diagnostics()["pipeline"]["dropped"] == dropped


def test_threads_exit_with_payloads_still_in_their_arena(nf, jsonl):
    def emit(k):
        for i in range(500):
            nf.mark(f"t{k}", data={"i": i, "pad": "x" * 200})
    threads = [threading.Thread(target=emit, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    lines = jsonl.lines()
    by_thread: dict = {}
    for line in lines:
        ev = json.loads(line)
        by_thread.setdefault(ev["name"], []).append(ev["data"]["i"])
    assert by_thread == {f"t{k}": list(range(500)) for k in range(8)}


FORK_SCRIPT = """
import json, os, sys, threading, nemoflow as nf
out = sys.argv[1]
nf.configure(arena_size=8192)
ex = nf.AtofExporter(nf.AtofExporterConfig(out, "fork.jsonl"))
ex.register("jsonl")
def emit(tag, n):
    for i in range(n):
        nf.mark(tag, data={"i": i, "pid": os.getpid(), "pad": "z" * 300})
t = threading.Thread(target=emit, args=("worker", 2000))
t.start()
emit("main", 1000)              # payloads still in the arenas when fork comes
pid = os.fork()
if pid == 0:
    emit("child", 300)
    sys.exit(0)
t.join()
os.waitpid(pid, 0)
"""


def test_fork_with_payloads_in_the_arena(nf, tmp_path):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(FORK_SCRIPT), str(tmp_path)],
                          env=backend_env(nf), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    counts: dict = {}
    for name in os.listdir(tmp_path):
        with open(tmp_path / name) as f:
            for line in f:
                ev = json.loads(line)
                counts.setdefault(ev["name"], []).append(ev["data"]["i"])
    assert sorted(counts["main"]) == list(range(1000))
    assert sorted(counts["worker"]) == list(range(2000))
    assert sorted(counts["child"]) == list(range(300))


EXIT_SCRIPT = """
import sys, nemoflow as nf
nf.configure(arena_size=4096)
ex = nf.AtofExporter(nf.AtofExporterConfig(sys.argv[1], "exit.jsonl"))
ex.register("jsonl")
for i in range(2000):
    nf.mark("m", data={"i": i, "pad": "q" * 500})
"""


def test_interpreter_exit_with_payloads_in_the_arena(nf, tmp_path):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(EXIT_SCRIPT), str(tmp_path)],
                          env=backend_env(nf), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    with open(tmp_path / "exit.jsonl") as f:
        assert [json.loads(line)["data"]["i"] for line in f] == list(range(2000))


def test_arena_size_is_validated(nf):
    for bad in (0, 4095, 2 ** 31, -1, 1.5, "4096", True):
        with pytest.raises(ValueError, match="arena_size"):
            nf.configure(arena_size=bad)
    assert nf.diagnostics()["pipeline"]["arena_size"] == _common.DEFAULT_ARENA


LOAD_SCRIPT = """
import resource, sys, threading, nemoflow as nf
nf.configure(arena_size=1 << 20)
ex = nf.AtofExporter(nf.AtofExporterConfig(sys.argv[1], "load.jsonl"))
ex.register("jsonl")
payload = {"text": "w" * 2000, "n": 1}
def emit():
    for i in range(int(sys.argv[2])):
        nf.scope.pop(nf.scope.push("step", nf.ScopeType.Tool, input=payload), output=payload)
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) * 1024
emit()  # warm: allocator, ring and arena of the main thread
nf.subscribers.flush()
before = rss()
threads = [threading.Thread(target=emit) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
nf.subscribers.flush()
print(rss() - before)
"""


def test_load_with_payloads_keeps_memory_within_the_arena_budget(nf, tmp_path):
    n = 20_000 if nf.BACKEND == "cython" else 2_000
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(LOAD_SCRIPT), str(tmp_path),
                           str(n)], env=backend_env(nf), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    grown = int(proc.stdout.split()[-1])
    # 4 threads x (1 MiB arena + 1 MiB ring), plus allocator slack; the data written is
    # 4 x 20,000 x 2 events x ~2 KB = 320 MB, which must not be held anywhere
    assert grown < 4 * (2 << 20) + (48 << 20), grown
    with open(tmp_path / "load.jsonl", "rb") as f:
        assert sum(1 for _ in f) == 2 * n * 5


@SETTINGS
@given(z=FAST, a=FAST, m=FAST)
def test_arguments_given_positionally_are_recorded_as_orjson_writes_them(nf, z, a, m):
    # All parameters given positionally: the core writes the object straight from the
    # arguments, keys sorted, instead of building a dict; the bytes must not differ.
    events: list = []
    nf.subscribers.register("args-recorder", events.append)
    try:
        @nf.trace
        def step(z, a, m, _b=None):
            return None

        @nf.trace
        def all_three(z, a, m):
            return None

        step(z, a, m)
        all_three(z, a, m)
        all_three(z, a, m=m)
    finally:
        nf.subscribers.deregister("args-recorder")
    starts = [ev for ev in events if ev.scope_category == "start"]
    try:
        expected = orjson.dumps({"z": z, "a": a, "m": m}, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return  # recorded as text instead (lenient), the same way on every path
    for ev in starts:
        assert orjson.loads(ev.to_json())["data"] == orjson.loads(expected)
        assert f'"data":{expected.decode()}' in ev.to_json()
