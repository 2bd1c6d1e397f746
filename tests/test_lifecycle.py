"""The delivery thread's lifecycle: no wait cycles, bounded exit, signals, isolation, children.

Whatever could hang runs in a subprocess with a time limit, on the backend of the test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tests.backends import REPO, backend_env

END = '\nprint("main done", time.time(), flush=True)\n'


def run(nf, script, *args, timeout=20, **env):
    """Run ``script`` on the test's backend; (process, seconds its exit took when the script
    ends with END, else None)."""
    try:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                              env=backend_env(nf, **env), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"did not finish within {timeout} s (hung); stderr: {exc.stderr!r}")
    ended = time.time()
    done = [line for line in proc.stdout.splitlines() if line.startswith("main done ")]
    return proc, (ended - float(done[0].split()[-1]) if done else None)


def abandoned(stderr):
    """The count of the exit report on stderr, or None when there is none."""
    found = re.findall(r"nemoflow: exit gave up on (\d+) events not delivered", stderr)
    assert len(found) <= 1, stderr
    return int(found[0]) if found else None


# ---------------------------------------------------------------------------------------------
# No wait is a cycle.

SYNC_FLOOD_SCRIPT = """
import threading, time, nemoflow as nf
nf.configure(ring_size=16)
got = []
def buffered(ev):
    if ev.name.startswith("x"):
        nf.scope.event("from-buffered")      # delivered to "sync" from the delivery thread
nf.subscribers.register("b", buffered, buffered=True)
def sync(ev):
    if ev.name == "go":                       # holds its own lock while it floods the ring
        for i in range(300):
            nf.scope.event(f"x{i}")
    elif ev.name == "from-buffered":
        got.append(ev)
nf.subscribers.register("sync", sync)
t = threading.Thread(target=lambda: nf.scope.event("go"), daemon=True)
t.start()
t.join(10)
assert not t.is_alive(), "deadlock"
nf.subscribers.flush(timeout=10)
deadline = time.monotonic() + 10
while len(got) < 300 and time.monotonic() < deadline:   # deferred calls: the next passes
    time.sleep(0.01)
assert len(got) == 300, len(got)
pipeline = nf.diagnostics()["pipeline"]
assert pipeline["deferred"] == 0 and pipeline["dropped"] == 0, pipeline
print("ok")
"""


def test_sync_subscriber_flooding_while_buffered_emits_does_not_deadlock(nf):
    # The producer holds the sync subscriber's lock and waits for ring room; the delivery
    # thread, inside the buffered subscriber, needs that lock for the event it emits.
    proc, _ = run(nf, SYNC_FLOOD_SCRIPT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


SYNC_FLUSH_SCRIPT = """
import threading, time, nemoflow as nf
seen = []
def buffered(ev):
    if ev.name == "y":
        nf.scope.event("from-buffered")
nf.subscribers.register("b", buffered, buffered=True)
def sync(ev):
    if ev.name == "go":
        nf.scope.event("y")
        time.sleep(0.05)                      # the delivery thread now waits for our lock
        nf.subscribers.flush(timeout=10)      # and we wait for the delivery thread
    seen.append(ev.name)
nf.subscribers.register("sync", sync)
t = threading.Thread(target=lambda: nf.scope.event("go"), daemon=True)
t.start()
t.join(10)
assert not t.is_alive(), "deadlock"
deadline = time.monotonic() + 10
while "from-buffered" not in seen and time.monotonic() < deadline:
    time.sleep(0.01)
assert sorted(seen) == ["from-buffered", "go", "y"], seen
print("ok")
"""


def test_flush_from_a_sync_subscriber_while_buffered_emits_returns(nf):
    proc, _ = run(nf, SYNC_FLUSH_SCRIPT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


DIAGNOSTICS_GC_SCRIPT = """
import gc, os, tempfile, threading, nemoflow as nf
directory = tempfile.mkdtemp()
nf.configure(ring_size=16)
nf.subscribers.register("b", lambda ev: None, buffered=True)
hold = threading.Event()
def emitter():
    nf.mark("t")
    hold.wait(30)                      # its ring stays listed
# many rings: more dicts than the interpreter keeps for reuse, so building them allocates
threads = [threading.Thread(target=emitter, daemon=True) for _ in range(150)]
for t in threads:
    t.start()
nf.mark("main")
nf.subscribers.flush(timeout=10)
# An AtofExporter is a reference cycle (its sink rotates through a bound method): only the
# collector frees it, and freeing its sink takes the pipeline's lock.
exporters = [nf.AtofExporter(nf.AtofExporterConfig(directory, f"x{i}.jsonl")) for i in range(100)]
busy = []
def during_collection(phase, info):
    if phase == "stop" and not busy:
        busy.append(1)
        try:
            if exporters:
                exporters.pop()         # garbage for the next collection
            nf.diagnostics()            # Python code reading the pipeline, inside a collection
        finally:
            busy.pop()
gc.callbacks.append(during_collection)
gc.set_threshold(1, 1, 1)              # every other allocation collects
for _ in range(30):
    nf.diagnostics()
gc.set_threshold(700, 10, 10)
gc.callbacks.remove(during_collection)
print("ok")
os._exit(0)
"""


def test_diagnostics_while_the_collector_frees_an_exporter(nf):
    # diagnostics() builds its dicts after releasing the pipeline lock: a collection run by
    # those allocations may free an exporter (its sink takes the same lock) or run Python code.
    proc, _ = run(nf, DIAGNOSTICS_GC_SCRIPT, timeout=15)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# ---------------------------------------------------------------------------------------------
# Exit is bounded; what it gives up on is counted and reported.

STUCK_CHROME_SCRIPT = """
import sys, threading, time, nemoflow as nf
from nemoflow.exporters import ChromeTraceExporter
exp = ChromeTraceExporter(sys.argv[1])
exp.register("chrome")
nf.subscribers.register("stuck", lambda ev: threading.Event().wait(), buffered=True)
for i in range(3):
    with nf.trace("step"):
        pass
"""


@pytest.mark.parametrize("how", ["env", "configure"])
def test_exit_with_a_stuck_buffered_subscriber_and_chrome_is_bounded(nf, tmp_path, how):
    path = tmp_path / "trace.json"
    if how == "env":
        proc, took = run(nf, STUCK_CHROME_SCRIPT + END, path, NEMOFLOW_EXIT_TIMEOUT="0.5")
    else:
        proc, took = run(nf, STUCK_CHROME_SCRIPT + "nf.configure(exit_timeout=0.5)" + END, path)
    assert proc.returncode == 0, proc.stderr
    assert took < 0.5 + 1.0, took                     # the limit, for all of exit
    assert abandoned(proc.stderr) >= 1, proc.stderr    # at least what the stuck one holds
    with open(path, "rb") as f:
        assert json.loads(f.read())["traceEvents"]    # the file was still written


def test_atof_shutdown_returns_while_a_buffered_subscriber_is_stuck(nf, tmp_path):
    nf.configure(exit_timeout=0.3)
    release = threading.Event()
    try:
        nf.subscribers.register("stuck", lambda ev: release.wait(10), buffered=True)
        exporter = nf.AtofExporter(nf.AtofExporterConfig(str(tmp_path), "t.jsonl"))
        exporter.register("t")
        nf.mark("first")                 # the delivery thread takes it and stays in "stuck"
        time.sleep(0.1)
        nf.mark("second")
        start = time.monotonic()
        with pytest.warns(RuntimeWarning, match="not delivered"):
            exporter.shutdown()
        assert time.monotonic() - start < 0.3 + 1.0
        assert nf.diagnostics()["pipeline"]["abandoned_at_detach"] >= 1
    finally:
        release.set()
        nf.subscribers.flush(timeout=10)
        nf.configure(exit_timeout=5.0)


SLOW_SCRIPT = """
import sys, time, nemoflow as nf
nf.configure(exit_timeout=0.5)
exporter = nf.AtofExporter(nf.AtofExporterConfig(sys.argv[1], "slow.jsonl"))
exporter.register("jsonl")
calls = open(sys.argv[2], "a")
def slow(ev):
    time.sleep(0.002)
    calls.write("."); calls.flush()
nf.subscribers.register("slow", slow, buffered=True)
for i in range(2000):
    nf.mark("m", data=i)
"""


def test_exit_with_a_slow_buffered_subscriber_reports_what_it_gave_up(nf, tmp_path):
    calls = tmp_path / "calls"
    proc, took = run(nf, SLOW_SCRIPT + END, tmp_path, calls)
    assert proc.returncode == 0, proc.stderr
    assert took < 0.5 + 1.0, took
    n = abandoned(proc.stderr)
    got = len(calls.read_text())
    assert got < 2000 and n is not None and got + n >= 2000, (got, n, proc.stderr)


SPINNING_SCRIPT = """
import sys, threading, time, nemoflow as nf
exporter = nf.AtofExporter(nf.AtofExporterConfig(sys.argv[1], "spin.jsonl"))
exporter.register("jsonl")
for i in range(20000):
    nf.mark("main", data=i)
def spin():
    while True:
        nf.mark("daemon")
threading.Thread(target=spin, daemon=True).start()
"""


def test_exit_with_a_daemon_thread_still_emitting_is_quick(nf, tmp_path):
    # Exit delivers what was emitted before it started, and does not wait for the delivery
    # thread to find the rings empty while a daemon thread keeps filling them.
    proc, took = run(nf, SPINNING_SCRIPT + END, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert took < 1.5, took                           # the default limit is 5 s
    with open(tmp_path / "spin.jsonl") as f:
        names = [json.loads(line)["name"] for line in f]
    assert names.count("main") == 20000


JSONL_SCRIPT = """
import sys, time, nemoflow as nf
exporter = nf.AtofExporter(nf.AtofExporterConfig(sys.argv[1], "all.jsonl"))
exporter.register("jsonl")
for i in range(20000):
    nf.mark("m", data=i)
"""


def test_exit_with_jsonl_alone_is_quick_and_complete(nf, tmp_path):
    proc, took = run(nf, JSONL_SCRIPT + END, tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert took < 1.5, took
    with open(tmp_path / "all.jsonl") as f:
        assert sum(1 for _ in f) == 20000


def test_exit_timeout_is_validated(nf):
    for bad in (-1, float("nan"), float("inf"), "5", True):
        with pytest.raises(ValueError):
            nf.configure(exit_timeout=bad)
    nf.configure(exit_timeout=2)
    assert nf.diagnostics()["pipeline"]["exit_timeout"] == 2.0
    nf.configure(exit_timeout=5.0)


# ---------------------------------------------------------------------------------------------
# multiprocessing children leave through os._exit: their events are flushed all the same.

CHILD_MODULE = """
import os
import nemoflow as nf

def work(directory, n):
    exporter = nf.AtofExporter(nf.AtofExporterConfig(directory, f"child-{os.getpid()}.jsonl"))
    exporter.register("child")
    for i in range(n):
        nf.mark("child", data=i)


def chrome_work(directory, n):
    from nemoflow.exporters import ChromeTraceExporter
    exporter = ChromeTraceExporter(os.path.join(directory, f"child-{os.getpid()}.json"))
    exporter.register("child")
    for i in range(n):
        with nf.trace("step"):
            pass
"""

MP_SCRIPT = """
import multiprocessing, sys
import lifecycle_child
directory, method, target = sys.argv[1], sys.argv[2], getattr(lifecycle_child, sys.argv[3])
ctx = multiprocessing.get_context(method)
procs = [ctx.Process(target=target, args=(directory, 3000)) for _ in range(2)]
for p in procs:
    p.start()
for p in procs:
    p.join(20)
    assert p.exitcode == 0, p.exitcode
print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_multiprocessing_children_deliver_everything(nf, tmp_path, method):
    (tmp_path / "lifecycle_child.py").write_text(CHILD_MODULE)
    out = tmp_path / "out"
    out.mkdir()
    proc, _ = run(nf, MP_SCRIPT, out, method, "work", timeout=60,
                  PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    files = sorted(out.iterdir())
    assert len(files) == 2
    for path in files:
        with open(path) as f:
            assert [json.loads(line)["data"] for line in f] == list(range(3000)), path


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_multiprocessing_fork_children_write_their_chrome_trace(nf, tmp_path):
    (tmp_path / "lifecycle_child.py").write_text(CHILD_MODULE)
    out = tmp_path / "out"
    out.mkdir()
    proc, _ = run(nf, MP_SCRIPT, out, "fork", "chrome_work", timeout=60,
                  PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    files = sorted(out.iterdir())
    assert len(files) == 2
    for path in files:
        with open(path, "rb") as f:
            events = json.loads(f.read())["traceEvents"]
        assert sum(1 for e in events if e.get("name") == "step") == 3000, path


# ---------------------------------------------------------------------------------------------
# A BaseException in one subscriber or exporter costs the others nothing.

def test_buffered_subscriber_raising_system_exit_does_not_cost_the_others(nf):
    got = []

    def exits(ev):
        raise SystemExit(3)

    class Exporter:
        name = "exits"

        def export(self, events):
            raise KeyboardInterrupt

    nf.subscribers.register("exits", exits, buffered=True)
    nf._core.attach(Exporter())
    nf.subscribers.register("keeps", got.append, buffered=True)
    with pytest.warns(RuntimeWarning):
        for i in range(10):
            nf.mark(f"m{i}")
        nf.subscribers.flush(timeout=10)
    assert [ev.name for ev in got] == [f"m{i}" for i in range(10)]
    diag = nf.diagnostics()
    assert diag["subscribers"]["exits"] == {"calls": 10, "errors": 10}
    assert diag["exporters"]["exits"]["errors"] >= 1
    assert "pipeline" not in diag["exporters"]


@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt])
def test_sync_subscriber_base_exception_reaches_the_others_then_the_caller(nf, exc):
    got = []

    def raises(ev):
        raise exc

    nf.subscribers.register("raises", raises)
    nf.subscribers.register("keeps", got.append)
    with pytest.warns(RuntimeWarning), pytest.raises(exc):
        nf.mark("m")
    assert [ev.name for ev in got] == ["m"]
    assert nf.diagnostics()["subscribers"]["raises"] == {"calls": 1, "errors": 1}


# ---------------------------------------------------------------------------------------------
# Waits wake for signals.

SIGNAL_SCRIPT = """
import os, signal, sys, threading, time, nemoflow as nf
where = sys.argv[1]
release = threading.Event()
if where == "room":
    nf.configure(ring_size=16)
nf.subscribers.register("stuck", lambda ev: release.wait(20), buffered=True)
nf.mark("first")
time.sleep(0.1)                               # the delivery thread is inside "stuck" now
sent = []
def interrupt():
    time.sleep(0.3)
    sent.append(time.monotonic())
    os.kill(os.getpid(), signal.SIGINT)
threading.Thread(target=interrupt, daemon=True).start()
emitted = 1
try:
    if where == "flush":
        nf.subscribers.flush()
    else:
        for i in range(100):
            nf.mark("m")
            emitted += 1
    print("not interrupted")
except KeyboardInterrupt:
    print(f"interrupted after {time.monotonic() - sent[0]:.3f}")
release.set()
nf.subscribers.flush(timeout=10)              # the pipeline still works
d = nf.diagnostics()
print(d["subscribers"]["stuck"]["calls"], emitted, d["pipeline"]["dropped"])
"""


@pytest.mark.parametrize("where", ["flush", "room"])
def test_ctrl_c_interrupts_a_wait_promptly(nf, where):
    proc, _ = run(nf, SIGNAL_SCRIPT, where)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.split("\n")[:2]
    assert first.startswith("interrupted after"), proc.stdout
    assert float(first.split()[-1]) < 1.0, first
    calls, emitted, dropped = map(int, second.split())
    assert calls == emitted                           # every event that was recorded arrived
    assert dropped == (1 if where == "room" else 0)   # the interrupted one is counted


# ---------------------------------------------------------------------------------------------
# The delivery thread never waits for room in its own ring.

def test_events_a_buffered_subscriber_emits_grow_its_ring(nf):
    nf.configure(ring_size=16)
    try:
        got = []

        def emits(ev):
            if ev.name == "burst":
                for i in range(100):
                    nf.mark("echo", data=i)

        nf.subscribers.register("emits", emits, buffered=True)
        nf.subscribers.register("keeps", got.append, buffered=True)
        dropped = nf.diagnostics()["pipeline"]["dropped"]
        nf.mark("burst")
        nf.subscribers.flush(timeout=10)
        nf.subscribers.flush(timeout=10)  # the echoes were emitted during the first one
        assert [ev.data for ev in got if ev.name == "echo"] == list(range(100))
        assert nf.diagnostics()["pipeline"]["dropped"] == dropped
    finally:
        nf.configure(ring_size=8192)


BURST_SCRIPT = """
import nemoflow as nf
nf.configure(ring_size=16)
got = []
def emits(ev):
    if ev.name == "burst":
        for i in range(1000):
            nf.mark("echo", data=i)
nf.subscribers.register("emits", emits, buffered=True)
nf.subscribers.register("keeps", got.append, buffered=True)
nf.mark("burst")
nf.subscribers.flush(timeout=10)
nf.subscribers.flush(timeout=10)
echoes = [ev.data for ev in got if ev.name == "echo"]
assert echoes == list(range(len(echoes))), echoes
print(len(echoes), nf.diagnostics()["pipeline"]["dropped"])
"""


def test_past_its_growth_limit_the_delivery_threads_ring_drops_and_counts(nf):
    proc, _ = run(nf, BURST_SCRIPT)
    assert proc.returncode == 0, proc.stderr
    kept, dropped = map(int, proc.stdout.split())
    assert 16 <= kept < 1000 and kept + dropped == 1000   # 8 x ring_size at most, the rest counted


TRACEMALLOC_SCRIPT = """
import sys, threading, time, tracemalloc, nemoflow as nf
exporter = nf.AtofExporter(nf.AtofExporterConfig(sys.argv[1], "tm.jsonl"))
exporter.register("jsonl")
recorder = nf.exporters.InMemoryRecorder()      # a Python consumer: the GIL is taken per batch
recorder.register("memory")

def work(tag, n):
    for i in range(n):
        nf.mark(tag, data={"i": i})

for round in range(2):
    threads = [threading.Thread(target=work, args=(f"t{n}", 5000)) for n in range(3)]
    for t in threads:
        t.start()
    tracemalloc.start(5)         # the delivery thread busy, then idle, without the GIL
    for t in threads:
        t.join()
    nf.subscribers.flush()
    deadline = time.monotonic() + 0.3
    junk = []
    while time.monotonic() < deadline:   # allocate while the idle delivery thread ticks
        junk.append([object() for _ in range(100)])
        if len(junk) > 200:
            junk.clear()
    tracemalloc.stop()
exporter.shutdown()
print("ok")
"""


def test_tracemalloc_started_while_the_delivery_thread_runs(nf, tmp_path):
    # The delivery thread allocates without the GIL; with tracemalloc on, Python's raw
    # allocator hooks walk the thread's frames, which crashed it (SIGSEGV) mid-batch.
    proc, _ = run(nf, TRACEMALLOC_SCRIPT, tmp_path, timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.split() == ["ok"]
    with open(tmp_path / "tm.jsonl", "rb") as f:
        assert sum(1 for _ in f) == 30000
