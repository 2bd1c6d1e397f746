"""Load: eight threads and 500 asyncio task trees into one JSONL file through small rings.

Rings of 1,024 records make every producer wait for the delivery thread again and again; the
file must still hold every event exactly once, well formed and linked, with no drop counted,
and the process must not grow beyond what the rings can hold (nor at all on a second round).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import threading

import orjson
import pytest

pytestmark = pytest.mark.slow

RING = 1024
DEFAULT_RING = 8192
RECORD_BYTES = 128                  # budget per buffered record (DESIGN: memory)
HEAP_ALLOWANCE = 64 * 1024 * 1024   # Python objects, thread stacks, allocator slack
LEAK_ALLOWANCE = 16 * 1024 * 1024   # growth allowed on an identical second round

THREADS = 8
TASKS = 500
DEPTH = 100
ENVELOPE = {"atof_version", "kind", "uuid", "parent_uuid", "timestamp", "name", "category",
            "scope_category"}


def _pairs_per_thread(nf) -> int:
    # The twin records ~20x slower: fewer pairs keep the test inside its time bound.
    return 250_000 if nf.BACKEND == "cython" else 20_000


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _load_round(nf, directory: str, filename: str, pairs: int) -> str:
    """8 threads doing ``pairs`` scope pairs each, beside a thread running 500 asyncio tasks
    that each open ``DEPTH`` nested scopes (yielding between pushes and between pops)."""
    scope, push, pop, kind = nf.scope.scope, nf.scope.push, nf.scope.pop, nf.ScopeType.Function
    errors = []

    def scope_pairs():
        try:
            for _ in range(pairs):
                with scope("step", kind):
                    pass
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    async def task_tree(i):
        handles = []
        for d in range(DEPTH):
            handles.append(push(f"t{i}.{d}", kind))
            await asyncio.sleep(0)
        for handle in reversed(handles):
            pop(handle)
            await asyncio.sleep(0)

    async def trees():
        await asyncio.gather(*[task_tree(i) for i in range(TASKS)])

    def run_trees():
        try:
            asyncio.run(trees())
        except BaseException as exc:
            errors.append(exc)

    exporter = nf.AtofExporter(nf.AtofExporterConfig(
        output_directory=directory, filename=filename, mode=nf.AtofExporterMode.Overwrite))
    exporter.register("load")
    try:
        workers = [threading.Thread(target=scope_pairs) for _ in range(THREADS)]
        workers.append(threading.Thread(target=run_trees))
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        nf.subscribers.flush()
    finally:
        exporter.shutdown()
    assert not errors, errors
    return exporter.path


def _count_lines(path: str) -> int:
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


def _check_file(path: str, pairs: int) -> None:
    """Every line a well-formed ATOF scope event; every scope started once and ended once with
    the same parent; every parent an open scope of the file or one implicit root per trace."""
    open_scopes = {}  # uuid -> parent_uuid, started and not yet ended
    children_of_roots = collections.Counter()
    lines = 0
    with open(path, "rb") as f:
        for line in f:
            lines += 1
            ev = orjson.loads(line)
            missing = ENVELOPE - ev.keys()
            assert not missing, (lines, missing, line)
            assert ev["atof_version"] == "0.1" and ev["kind"] == "scope", (lines, line)
            uuid, parent = ev["uuid"], ev["parent_uuid"]
            if ev["scope_category"] == "start":
                assert uuid not in open_scopes, ("started twice", lines, line)
                # A thread's (or task's) events are written in emission order, so a child's
                # start follows its parent's start and precedes its parent's end.
                if parent not in open_scopes:
                    children_of_roots[parent] += 1
                open_scopes[uuid] = parent
            else:
                assert ev["scope_category"] == "end", (lines, line)
                assert uuid in open_scopes, ("end without an open start", lines, line)
                assert open_scopes.pop(uuid) == parent, ("parent changed at end", lines, line)
    assert not open_scopes, f"{len(open_scopes)} scopes started and never ended"
    assert lines == 2 * (THREADS * pairs + TASKS * DEPTH)
    # Roots are never written: one per thread (all its pairs hang on it) and one per task.
    assert sorted(children_of_roots.values()) == [1] * TASKS + [pairs] * THREADS, (
        f"{len(children_of_roots)} unresolved parents, expected {THREADS + TASKS}")


def test_threads_and_tasks_through_small_rings(nf, tmp_path):
    pairs = _pairs_per_thread(nf)
    expected = 2 * (THREADS * pairs + TASKS * DEPTH)
    # Producers: the 8 threads and the asyncio thread, each with a ring of its own.
    ring_budget = (THREADS + 1) * RING * RECORD_BYTES
    nf.configure(ring_size=RING)
    try:
        gc.collect()
        before = _rss()
        waits_before = nf.diagnostics()["pipeline"]["waits"]
        dropped_before = nf.diagnostics()["pipeline"]["dropped"]  # cumulative per process
        first = _load_round(nf, str(tmp_path), "load-1.jsonl", pairs)
        gc.collect()
        after_first = _rss()
        pipeline = nf.diagnostics()["pipeline"]
        assert pipeline["dropped"] == dropped_before, pipeline
        # The small rings did fill: this exercised the waiting path, not just the fast one.
        assert pipeline["waits"] > waits_before, pipeline
        try:
            _check_file(first, pairs)
        finally:
            os.remove(first)

        second = _load_round(nf, str(tmp_path), "load-2.jsonl", pairs)
        gc.collect()
        after_second = _rss()
        try:
            assert _count_lines(second) == expected
        finally:
            os.remove(second)
        assert nf.diagnostics()["pipeline"]["dropped"] == dropped_before
    finally:
        nf.configure(ring_size=DEFAULT_RING)
    growth = after_first - before
    assert growth < ring_budget + HEAP_ALLOWANCE, (
        f"RSS grew {growth / 2**20:.1f} MiB over one round of {expected} events; bound "
        f"{(ring_budget + HEAP_ALLOWANCE) / 2**20:.1f} MiB")
    again = after_second - after_first
    assert again < LEAK_ALLOWANCE, (
        f"RSS grew {again / 2**20:.1f} MiB more on an identical second round")
