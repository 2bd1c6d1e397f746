"""Soak: everything at once, twice, through small rings and a rotating file.

Threads and asyncio tasks emit scopes and marks with payloads while forked children (bare
``os.fork`` and ``multiprocessing``'s fork start method) trace on their own, subscribers come
and go, one synchronous subscriber raises now and then, a buffered subscriber counts, and the
JSONL file rotates every few hundred kilobytes. Afterwards every file line is valid JSON, the
lines add up exactly to what was emitted (per process), nothing is counted as dropped or lost,
and a second identical round does not grow the process.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import glob
import multiprocessing
import os
import threading
import warnings

import orjson
import pytest

pytestmark = pytest.mark.slow

RING = 1024
DEFAULT_RING = 8192
THREADS = 3
TASKS = 100
DEPTH = 5
RAISE_EVERY = 97                    # the raising subscriber fails on every 97th event it sees
LEAK_ALLOWANCE = 24 * 1024 * 1024   # growth allowed on an identical second round


def _pairs(nf) -> int:
    return 15_000 if nf.BACKEND == "cython" else 1_500


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _emit(nf, tag: str, pairs: int) -> int:
    """Scope pairs with payloads and a mark every tenth pair; returns the events emitted."""
    n = 0
    for i in range(pairs):
        with nf.scope.scope(tag, nf.ScopeType.Function, input={"i": i, "tag": tag}) as h:
            if i % 10 == 0:
                nf.scope.event(f"{tag}.mark", data={"i": i})
                n += 1
            h.uuid  # noqa: B018 - the handle is live inside its block
        n += 2
    return n


def _events_for(pairs: int) -> int:
    return 2 * pairs + (pairs + 9) // 10  # what _emit(pairs) emits


def _task_events() -> int:
    return TASKS * DEPTH * 2


async def _task_tree(nf, i: int) -> None:
    handles = []
    for d in range(DEPTH):
        handles.append(nf.scope.push(f"task{i}.{d}", nf.ScopeType.Agent, data={"d": d}))
        await asyncio.sleep(0)
    for h in reversed(handles):
        nf.scope.pop(h, output={"ok": True})
        await asyncio.sleep(0)


def _child(nf, tag: str, pairs: int) -> None:
    # A forked child: a fresh binding of its own, then work; a bare os._exit does not flush,
    # so the os.fork children flush themselves (multiprocessing children rely on nemoflow).
    token = nf._core.bind(nf._core.new_root())
    try:
        _emit(nf, tag, pairs)
    finally:
        nf._core.unbind(token)


def _round(nf, directory: str, rnd: int, pairs: int) -> dict:
    """One round; returns the number of lines each process should have written."""
    expected: dict = collections.Counter()
    errors: list = []
    seen = collections.Counter()
    stop = threading.Event()

    def raiser(event):
        seen["sync"] += 1
        if seen["sync"] % RAISE_EVERY == 0:
            raise RuntimeError("a subscriber that fails now and then")

    def churn():
        i = 0
        while not stop.is_set():
            name = f"churn-{rnd}-{i}"
            nf.subscribers.register(name, lambda e: None, buffered=bool(i % 2))
            nf.subscribers.deregister(name)
            i += 1

    counted = collections.Counter()
    nf.subscribers.register(f"raiser-{rnd}", raiser)
    nf.subscribers.register(f"counter-{rnd}", lambda e: counted.update(("n",)), buffered=True)
    churner = threading.Thread(target=churn)
    churner.start()

    def worker(w):
        try:
            n = _emit(nf, f"r{rnd}.w{w}", pairs)
            with lock:
                expected[os.getpid()] += n
        except BaseException as exc:
            errors.append(exc)

    def tasks():
        try:
            async def main():
                await asyncio.gather(*[_task_tree(nf, i) for i in range(TASKS)])
            asyncio.run(main())
            with lock:
                expected[os.getpid()] += _task_events()
        except BaseException as exc:
            errors.append(exc)

    lock = threading.Lock()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(THREADS)]
    threads.append(threading.Thread(target=tasks))
    for t in threads:
        t.start()

    child_pairs = pairs // 4
    pids = []
    for c in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _child(nf, f"r{rnd}.fork{c}", child_pairs)
                nf.subscribers.flush()
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
        expected[pid] = _events_for(child_pairs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        proc = multiprocessing.get_context("fork").Process(
            target=_child, args=(nf, f"r{rnd}.mp", child_pairs))
        proc.start()
    expected[proc.pid] = _events_for(child_pairs)

    for t in threads:
        t.join(120)
        assert not t.is_alive()
    stop.set()
    churner.join(30)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    proc.join(60)
    assert proc.exitcode == 0
    nf.subscribers.flush()
    raised = nf.diagnostics()["subscribers"][f"raiser-{rnd}"]["errors"]
    assert raised == seen["sync"] // RAISE_EVERY, (raised, seen["sync"])  # each one counted
    nf.subscribers.deregister(f"raiser-{rnd}")
    nf.subscribers.deregister(f"counter-{rnd}")
    assert not errors, errors
    parent = expected[os.getpid()]
    assert counted["n"] == parent, (counted["n"], parent)  # the buffered subscriber saw all
    assert seen["sync"] == parent
    return dict(expected)


def _lines_by_process(directory: str, parent_pid: int) -> dict:
    """Lines per writing process (the parent's file and one file per forked child), each
    line parsed: a torn or invalid line fails here."""
    per = collections.Counter()
    for path in glob.glob(os.path.join(directory, "soak*.jsonl*")):
        base = os.path.basename(path)
        parts = base.split(".")
        pid = int(parts[1]) if parts[1].isdigit() else parent_pid
        with open(path, "rb") as f:
            data = f.read()
        assert not data or data.endswith(b"\n"), path
        for line in data.splitlines():
            ev = orjson.loads(line)
            assert ev["atof_version"] == "0.1"
            per[pid] += 1
    return dict(per)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_soak(nf, tmp_path):
    pairs = _pairs(nf)
    nf.configure(ring_size=RING)
    ex = nf.AtofExporter(nf.AtofExporterConfig(
        output_directory=str(tmp_path), filename="soak.jsonl", max_bytes=256 * 1024,
        backup_count=100_000))
    ex.register("soak")
    rss = []
    expected: dict = collections.Counter()
    dropped_before = nf.diagnostics()["pipeline"]["dropped"]  # counters are process-wide
    try:
        for rnd in range(2):
            got = _round(nf, str(tmp_path), rnd, pairs)
            for pid, n in got.items():
                expected[pid] += n
            gc.collect()
            rss.append(_rss())
        ex.force_flush()
        diag = nf.diagnostics()
        assert diag["pipeline"]["dropped"] == dropped_before, diag["pipeline"]
        stats = diag["exporters"]["soak"]
        assert stats.get("lost", 0) == 0 and stats["errors"] == 0, stats
        assert stats["events"] == expected[os.getpid()], (stats, expected[os.getpid()])
    finally:
        ex.shutdown()
        nf.configure(ring_size=DEFAULT_RING)
    assert _lines_by_process(str(tmp_path), os.getpid()) == dict(expected)
    growth = rss[1] - rss[0]
    assert growth < LEAK_ALLOWANCE, f"RSS grew {growth / 2**20:.1f} MiB on the second round"
